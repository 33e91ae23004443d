//! Multi-head scaled dot-product attention (Vaswani et al. 2017, "Attention
//! Is All You Need", arXiv:1706.03762, eq. 1 and §3.2.2) as one fused CPU op
//! with its own backward pass.
//!
//! For each sequence `b` and head `h`, with `Q, K, V` the head's `T × d`
//! blocks of the `(B, T, H·d)` projections (read in place, strided), the
//! additive mask bias `m_b` of the sequence's keys, the scale `c = 1/√d` and
//! the optional dropout mask `D` (kept entries `1/(1 − p)`, dropped 0):
//!
//! - forward: `S = Q Kᵀ`, `P = softmax(c·S + m_b)` by rows, `P̃ = P ⊙ D`,
//!   `O = P̃ V`, written into the head's columns of the `(B, T, H·d)`
//!   context (no transposes, no head-major copies);
//! - backward, with `G = ∂L/∂O`: `∂V = P̃ᵀ G`, `∂P = (G Vᵀ) ⊙ D`,
//!   `∂S = c·P ⊙ (∂P − rowsum(∂P ⊙ P))`, `∂Q = ∂S K`, `∂K = ∂Sᵀ Q`.
//!
//! `S` and `P` are recomputed in the backward pass instead of being kept
//! (two `T × d × T` products per head, a few percent of a BERT layer's
//! FLOPs) — the `(B, H, T, T)` probabilities are the largest activations of
//! a BERT layer at sequence length 128. Composed from candle's ops the same
//! attention is about twelve autograd nodes, each with its own allocation
//! and, in the backward pass, a zero-filled gradient buffer and an addition
//! (candle's gradient store). (B, H) pairs are spread over candle's pool with
//! single-threaded GEMMs on per-worker scratch. The fused path runs for f32
//! tensors on the CPU while [`crate::fused::set_enabled`] is on; otherwise
//! [`reference::attention`] composes candle's ops (and the fused softmax).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Shape, Tensor};
use espalier_core::Result;
use gemm::Parallelism;

use crate::dense::{matmul, matmul_to, Mat};
use crate::fused::{cpu_slice, fusable, softmax_bwd_rows, softmax_rows, with_data, CResult, SharedOut};

/// Attention over `(B, T, H·d)` projections `q`, `k`, `v` with `heads` heads;
/// `bias` is the additive key mask `(B, T)` (or `(B, 1, 1, T)`); `dropout`
/// the scaled keep mask of the probabilities, `(B, H, T, T)` values, if
/// training. Returns the context `(B, T, H·d)`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    heads: usize,
    dropout: Option<Vec<f32>>,
) -> Result<Tensor> {
    let (b, t, hd) = q.dims3()?;
    if k.dims() != q.dims() || v.dims() != q.dims() || heads == 0 || hd % heads != 0 {
        espalier_core::bail!(
            "attention: q {:?}, k {:?} and v {:?} must be equal (B, T, H·d) with H = {heads} dividing the width",
            q.dims(),
            k.dims(),
            v.dims()
        );
    }
    if bias.elem_count() != b * t {
        espalier_core::bail!("attention bias {:?} does not match {b} sequences of {t}", bias.shape());
    }
    if let Some(m) = &dropout {
        if m.len() != b * heads * t * t {
            espalier_core::bail!("attention dropout mask has {} values, expected {b}×{heads}×{t}×{t}", m.len());
        }
    }
    if !fusable(q) {
        return reference::attention(q, k, v, bias, heads, dropout);
    }
    let bias = bias.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
    let op = AttentionOp { heads, bias: Arc::new(bias), dropout: dropout.map(Arc::new) };
    Ok(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?)
}

/// The additive attention bias `(1 − mask)·min` of shape `(B, 1, 1, T)`
/// from a `(B, T)` 0/1 mask (HF's extended attention mask).
pub fn attention_bias(mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    let min = match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.3895313892515355e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    };
    let m = mask.to_dtype(dtype)?;
    Ok((m.ones_like()? - m)?.affine(min, 0.0)?.reshape((b, 1, 1, t))?)
}

/// The same attention composed from candle's (differentiable) ops: the
/// fallback off the CPU and the baseline the fused op is tested against.
pub mod reference {
    use candle_core::Tensor;
    use espalier_core::Result;

    /// Heads split into `(B, H, T, d)`, `softmax(QKᵀ/√d + bias)`, dropout,
    /// times `V`, merged back to `(B, T, H·d)`.
    pub fn attention(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        bias: &Tensor,
        heads: usize,
        dropout: Option<Vec<f32>>,
    ) -> Result<Tensor> {
        let (b, t, hd) = q.dims3()?;
        let d = hd / heads;
        let split = |x: &Tensor| -> Result<Tensor> { Ok(x.reshape((b, t, heads, d))?.transpose(1, 2)?.contiguous()?) };
        let (q, k, v) = (split(q)?, split(k)?, split(v)?);
        let mut probs = crate::fused::masked_softmax(&q.matmul(&k.t()?)?, bias, 1.0 / (d as f64).sqrt())?;
        if let Some(m) = dropout {
            probs = probs.mul(&Tensor::from_vec(m, probs.shape(), probs.device())?.to_dtype(probs.dtype())?)?;
        }
        Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, hd))?)
    }
}

struct AttentionOp {
    heads: usize,
    /// `(B, T)` additive key mask.
    bias: Arc<Vec<f32>>,
    /// `(B, H, T, T)` scaled keep mask.
    dropout: Option<Arc<Vec<f32>>>,
}

/// Sizes of one call: sequences, length, heads, head size.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    h: usize,
    d: usize,
}

impl Dims {
    fn of(l: &Layout, heads: usize) -> CResult<Self> {
        let (b, t, hd) = l.shape().dims3()?;
        Ok(Dims { b, t, h: heads, d: hd / heads })
    }
    /// Offset of head `h` of sequence `b` in a `(B, T, H·d)` buffer.
    fn offset(&self, pair: usize) -> usize {
        let (b, h) = (pair / self.h, pair % self.h);
        b * self.t * self.h * self.d + h * self.d
    }
    /// Row stride of a head block.
    fn rs(&self) -> usize {
        self.h * self.d
    }
}

impl AttentionOp {
    fn scale(&self, dm: Dims) -> f32 {
        1.0 / (dm.d as f32).sqrt()
    }

    /// `P = softmax(c·Q Kᵀ + m_b)` of one (sequence, head) pair into `p`.
    fn probs(&self, dm: Dims, pair: usize, q: &[f32], k: &[f32], s: &mut [f32], p: &mut [f32]) {
        let (t, off, rs) = (dm.t, dm.offset(pair), dm.rs());
        let qm = Mat::strided(&q[off..], rs);
        let km = Mat::strided(&k[off..], rs);
        matmul(s, false, qm, km.t(), (t, dm.d, t), Parallelism::None);
        let seq = pair / dm.h;
        softmax_rows(&s[..t * t], &self.bias[seq * t..(seq + 1) * t], &mut p[..t * t], self.scale(dm));
    }

    /// `P ⊙ D` (in place) for a pair, when training with dropout.
    fn apply_dropout(&self, dm: Dims, pair: usize, p: &mut [f32]) {
        if let Some(m) = &self.dropout {
            let tt = dm.t * dm.t;
            p[..tt].iter_mut().zip(&m[pair * tt..(pair + 1) * tt]).for_each(|(x, k)| *x *= k);
        }
    }
}

/// Runs `f(pair, scratch)` for every (sequence, head) pair over candle's
/// pool; `scratch` holds `n` buffers of `T × T` per worker.
fn for_pairs(dm: Dims, n: usize, f: impl Fn(usize, &mut [Vec<f32>]) + Sync) {
    candle_core::utils::barrier_pool().execute_chunked(dm.b * dm.h, |pairs| {
        let mut scratch: Vec<Vec<f32>> = (0..n).map(|_| vec![0f32; dm.t * dm.t]).collect();
        for pair in pairs {
            f(pair, &mut scratch);
        }
    });
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "espalier-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (q, k, v) =
            (cpu_slice(s1, l1, "attention")?, cpu_slice(s2, l2, "attention")?, cpu_slice(s3, l3, "attention")?);
        let dm = Dims::of(l1, self.heads)?;
        let mut out = vec![0f32; q.len()];
        let o = SharedOut::new(&mut out);
        for_pairs(dm, 2, |pair, sc| {
            let [s, p] = sc else { unreachable!("two scratch buffers") };
            self.probs(dm, pair, q, k, s, p);
            self.apply_dropout(dm, pair, p);
            let off = dm.offset(pair);
            // SAFETY: each pair writes only its own head block of `out`
            // (rows `b·T..(b+1)·T`, columns `h·d..(h+1)·d`).
            unsafe {
                matmul_to(
                    o.ptr().add(off),
                    dm.rs(),
                    false,
                    Mat::new(p, dm.t),
                    Mat::strided(&v[off..], dm.rs()),
                    (dm.t, dm.t, dm.d),
                    Parallelism::None,
                )
            };
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dm = Dims::of(q.layout(), self.heads)?;
        let (dq, dk, dv) = with_data(&[q, k, v, grad], "attention backward", |x| {
            let (q, k, v, g) = (x[0], x[1], x[2], x[3]);
            let (mut dq, mut dk, mut dv) = (vec![0f32; q.len()], vec![0f32; q.len()], vec![0f32; q.len()]);
            let (oq, ok, ov) = (SharedOut::new(&mut dq), SharedOut::new(&mut dk), SharedOut::new(&mut dv));
            let (t, d, rs) = (dm.t, dm.d, dm.rs());
            let scale = self.scale(dm);
            for_pairs(dm, 4, |pair, sc| {
                let [s, p, pd, dp] = sc else { unreachable!("four scratch buffers") };
                self.probs(dm, pair, q, k, s, p);
                pd.copy_from_slice(p);
                self.apply_dropout(dm, pair, pd);
                let off = dm.offset(pair);
                let gm = Mat::strided(&g[off..], rs);
                // ∂P̃ = G Vᵀ, then ∂P = ∂P̃ ⊙ D and ∂S (into `s`).
                matmul(dp, false, gm, Mat::strided(&v[off..], rs).t(), (t, d, t), Parallelism::None);
                self.apply_dropout(dm, pair, dp);
                softmax_bwd_rows(p, dp, s, t, scale);
                // SAFETY: each pair writes only its own head blocks of dq, dk, dv.
                unsafe {
                    matmul_to(ov.ptr().add(off), rs, false, Mat::new(pd, t).t(), gm, (t, t, d), Parallelism::None);
                    let km = Mat::strided(&k[off..], rs);
                    matmul_to(oq.ptr().add(off), rs, false, Mat::new(s, t), km, (t, t, d), Parallelism::None);
                    let qm = Mat::strided(&q[off..], rs);
                    matmul_to(ok.ptr().add(off), rs, false, Mat::new(s, t).t(), qm, (t, t, d), Parallelism::None);
                }
            });
            Ok((dq, dk, dv))
        })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, q.shape(), dev)?),
            Some(Tensor::from_vec(dv, q.shape(), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fused::testing::{compare, randn};
    use candle_core::Device;

    fn bias(lens: &[usize], t: usize) -> Result<Tensor> {
        let mask: Vec<f32> = lens.iter().flat_map(|&len| (0..t).map(move |j| (j < len) as u8 as f32)).collect();
        attention_bias(&Tensor::from_vec(mask, (lens.len(), t), &Device::Cpu)?, candle_core::DType::F32)
    }

    #[test]
    fn attention_matches_composition_with_and_without_dropout() -> Result<()> {
        // Three sequences (one of length 1: every other key masked), 3 heads
        // of size 8, a length that is not a multiple of the vector width.
        let (b, t, h, d) = (3, 19, 3, 8);
        let bias = bias(&[19, 7, 1], t)?;
        let inputs: Vec<Tensor> = (0..3).map(|i| randn(&[b, t, h * d], 1.0, 10 + i)).collect::<Result<_>>()?;
        let mut rng = espalier_core::Rng::new(5);
        let keep: Vec<f32> = (0..b * h * t * t).map(|_| if rng.uniform() < 0.1 { 0.0 } else { 1.0 / 0.9 }).collect();
        for mask in [None, Some(keep)] {
            let (dy, dg) = compare(&inputs, &|x| attention(&x[0], &x[1], &x[2], &bias, h, mask.clone()), &|x| {
                reference::attention(&x[0], &x[1], &x[2], &bias, h, mask.clone())
            })?;
            assert!(dy < 1e-5 && dg.iter().all(|g| *g < 1e-4), "dropout {}: {dy} {dg:?}", mask.is_some());
        }
        Ok(())
    }

    #[test]
    fn attention_refuses_mismatched_inputs() -> Result<()> {
        let x = randn(&[2, 5, 12], 1.0, 1)?;
        let bias = bias(&[5, 3], 5)?;
        let err = attention(&x, &x, &x, &bias, 5, None).expect_err("5 heads do not divide 12").to_string();
        assert!(err.contains("H = 5"), "{err}");
        let err = attention(&x, &x, &x, &bias, 3, Some(vec![1.0; 7])).expect_err("mask").to_string();
        assert!(err.contains("dropout mask has 7"), "{err}");
        Ok(())
    }
}
