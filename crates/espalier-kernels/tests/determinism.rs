//! The kernels whose backward passes reduce over workers (the convolution's
//! weight gradient over images, LayerNorm's γ/β gradients over rows) give
//! bit-identical results on every call, however the thread pool schedules
//! the work: a run must resume to exactly the numbers of an uninterrupted one.

use candle_core::{Device, Tensor, Var};
use espalier_core::{Result, Rng};
use espalier_kernels::{conv::conv2d, fused::layer_norm};

fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = Rng::derive(seed, "determinism", &[]);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
    Ok(Tensor::from_vec(v, shape, &Device::Cpu)?)
}

fn bits(t: &Tensor) -> Result<Vec<u32>> {
    Ok(t.flatten_all()?.to_vec1::<f32>()?.into_iter().map(f32::to_bits).collect())
}

#[test]
fn conv_weight_gradient_is_bit_reproducible() -> Result<()> {
    let x = random(&[64, 6, 12, 12], 1)?;
    let w = Var::from_tensor(&random(&[16, 6, 5, 5], 2)?)?;
    let dy = random(&[64, 16, 8, 8], 3)?;
    let grad = || -> Result<Vec<u32>> {
        let y = conv2d(&x, w.as_tensor(), 1, 0)?;
        let g = (y * &dy)?.sum_all()?.backward()?;
        bits(g.get(w.as_tensor()).expect("gradient"))
    };
    let first = grad()?;
    for _ in 0..20 {
        assert_eq!(grad()?, first);
    }
    Ok(())
}

/// Large enough for the pool (LayerNorm's rows are split over the workers).
/// With two workers the two parts add commutatively whatever their order;
/// from three on, the order matters and the test can tell.
#[test]
fn layer_norm_parameter_gradients_are_bit_reproducible() -> Result<()> {
    let x = random(&[2048, 128], 4)?;
    let (gamma, beta) = (Var::from_tensor(&random(&[128], 5)?)?, Var::from_tensor(&random(&[128], 6)?)?);
    let dy = random(&[2048, 128], 7)?;
    let grad = || -> Result<(Vec<u32>, Vec<u32>)> {
        let y = layer_norm(&x, gamma.as_tensor(), beta.as_tensor(), 1e-12)?;
        let g = (y * &dy)?.sum_all()?.backward()?;
        Ok((bits(g.get(gamma.as_tensor()).expect("dγ"))?, bits(g.get(beta.as_tensor()).expect("dβ"))?))
    };
    let first = grad()?;
    for _ in 0..20 {
        assert_eq!(grad()?, first);
    }
    Ok(())
}
