//! Dropout masks (Srivastava et al. 2014, "Dropout: A Simple Way to Prevent
//! Neural Networks from Overfitting", JMLR 15:1929–1958, §4: `ỹ = r ⊙ y`
//! with `r_j ~ Bernoulli(1 − p)`), in the inverted form: the kept elements
//! are scaled by 1/(1 − p) at training time instead of the weights by 1 − p
//! at test time, so evaluation is the identity. The masks come from the
//! project's seeded [`Rng`], four streams side by side.

use candle_core::Tensor;
use espalier_core::{Result, Rng};

/// Inverted dropout with masks drawn from the project's seeded RNG: each
/// element is kept with probability 1 − p and scaled by 1/(1 − p).
///
/// The mask comes from four generators seeded by four draws of `rng`: four
/// independent streams, which the CPU runs side by side, are several times
/// faster than one. Each 64-bit draw decides two elements (its low, then its
/// high 32 bits): an element is kept when its 32-bit draw is at least p·2³²,
/// so the keep probability is 1 − p to within 2⁻³³. The mask depends only on
/// the state of `rng` and the element count; `rng` advances by four draws.
pub fn dropout(x: &Tensor, p: f64, rng: Option<&mut Rng>) -> Result<Tensor> {
    match dropout_mask(x.elem_count(), p, rng) {
        None => Ok(x.clone()),
        Some(mask) => Ok(x.mul(&Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?)?),
    }
}

/// The scaled keep mask of [`dropout`] for `n` elements (`1/(1 − p)` where
/// kept, 0 where dropped), or `None` when nothing is dropped (no `rng`, or
/// `p ≤ 0`).
pub fn dropout_mask(n: usize, p: f64, rng: Option<&mut Rng>) -> Option<Vec<f32>> {
    let rng = rng?;
    if p <= 0.0 {
        return None;
    }
    let scale = ((1.0 / (1.0 - p)) as f32).to_bits();
    // At p ≥ 1 the threshold exceeds every 32-bit draw: everything is dropped.
    let threshold = (p * 4_294_967_296.0).round() as u64;
    // Branch-free: the bits of 1/(1 − p) where kept, of 0.0 where dropped.
    let keep = |r: u64| f32::from_bits(scale & ((r >= threshold) as u32).wrapping_neg());
    let mut lanes: [Rng; 4] = std::array::from_fn(|_| Rng::new(rng.next_u64()));
    let mut mask = vec![0f32; n];
    let mut blocks = mask.chunks_exact_mut(8);
    for block in &mut blocks {
        for (pair, lane) in block.chunks_exact_mut(2).zip(&mut lanes) {
            let r = lane.next_u64();
            pair[0] = keep(r & 0xFFFF_FFFF);
            pair[1] = keep(r >> 32);
        }
    }
    for (pair, lane) in blocks.into_remainder().chunks_mut(2).zip(&mut lanes) {
        let r = lane.next_u64();
        pair[0] = keep(r & 0xFFFF_FFFF);
        if let Some(second) = pair.get_mut(1) {
            *second = keep(r >> 32);
        }
    }
    Some(mask)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn dropout_keep_rate_scale_and_determinism() -> Result<()> {
        let n = 1 << 20;
        let x = Tensor::ones(n, DType::F32, &Device::Cpu)?;
        for p in [0.1, 0.5, 0.9] {
            let y = dropout(&x, p, Some(&mut Rng::new(7)))?.to_vec1::<f32>()?;
            let scale = (1.0 / (1.0 - p)) as f32;
            assert!(y.iter().all(|&v| v == 0.0 || v == scale), "p={p}: values other than 0 and 1/(1-p)");
            let kept = y.iter().filter(|&&v| v != 0.0).count() as f64 / n as f64;
            // Binomial standard deviation on 2^20 draws is at most 5e-4.
            assert!((kept - (1.0 - p)).abs() < 3e-3, "p={p}: keep rate {kept}");
            let again = dropout(&x, p, Some(&mut Rng::new(7)))?.to_vec1::<f32>()?;
            assert_eq!(y, again, "p={p}: same Rng state, same mask");
            let other = dropout(&x, p, Some(&mut Rng::new(8)))?.to_vec1::<f32>()?;
            assert_ne!(y, other, "p={p}: another seed, another mask");
        }
        // Sizes that leave a partial block of eight (and an odd last element).
        for n in [1, 7, 13, 8 * 1000 + 5] {
            let x = Tensor::ones(n, DType::F32, &Device::Cpu)?;
            let y = dropout(&x, 0.5, Some(&mut Rng::new(3)))?.to_vec1::<f32>()?;
            assert!(y.iter().all(|&v| v == 0.0 || v == 2.0), "n={n}");
            assert_eq!(y, dropout(&x, 0.5, Some(&mut Rng::new(3)))?.to_vec1::<f32>()?, "n={n}");
        }
        assert!(dropout(&x, 1.0, Some(&mut Rng::new(1)))?.to_vec1::<f32>()?.iter().all(|&v| v == 0.0));
        // Off without an Rng or at p = 0.
        assert_eq!(dropout(&x, 0.5, None)?.to_vec1::<f32>()?, x.to_vec1::<f32>()?);
        assert_eq!(dropout(&x, 0.0, Some(&mut Rng::new(1)))?.to_vec1::<f32>()?, x.to_vec1::<f32>()?);
        Ok(())
    }
}
