//! Entry points into kernel variants that are not part of the public API,
//! for the crate's benchmark (`benches/kernels.rs`) only: the convolution
//! with the shifted-row forward pass allowed or not, and the three products
//! of a linear layer with `gemm`'s own threading or split by hand.

use candle_core::Tensor;
use espalier_core::Result;

use crate::conv::{ConvOp, Geom};
use crate::dense::{matmul, matmul_rows, parallelism, weight_grad, Init, Mat};

/// The fused forward pass of `conv2d(x, w)` (`x` `(B, C, H, W)`, `w`
/// `(Cout, C, k, k)`), by shifted rows where they apply when `rows`, by
/// im2col otherwise.
pub fn conv2d_forward(x: &Tensor, w: &Tensor, stride: usize, padding: usize, rows: bool) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4()?;
    let k = w.dims4()?.2;
    let g = Geom { b, c, h, w: wd, k, stride, pad: padding };
    Ok(x.apply_op2(w, ConvOp(g, rows))?)
}

/// `y (m × n) = x (m × k) · wᵀ` (`w`: `n × k`), over the rows split by hand
/// (`split`) or with `gemm`'s threading.
pub fn linear_y(y: &mut [f32], x: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), split: bool) {
    let wt = Mat::new(w, k).t();
    if split {
        matmul_rows(y, Init::Zero, x, k, wt, (m, k, n));
    } else {
        matmul(y, false, Mat::new(x, k), wt, (m, k, n), parallelism(m * k * n));
    }
}

/// `dx (m × k) = g (m × n) · w` (`w`: `n × k`), as [`linear_y`].
pub fn linear_dx(dx: &mut [f32], g: &[f32], w: &[f32], (m, k, n): (usize, usize, usize), split: bool) {
    let wm = Mat::new(w, k);
    if split {
        matmul_rows(dx, Init::Zero, g, n, wm, (m, n, k));
    } else {
        matmul(dx, false, Mat::new(g, n), wm, (m, n, k), parallelism(m * k * n));
    }
}

/// `dw (n × k) = gᵀ · x` (`g`: `m × n`, `x`: `m × k`), as [`linear_y`].
pub fn linear_dw(dw: &mut [f32], g: &[f32], x: &[f32], (m, k, n): (usize, usize, usize), split: bool) {
    if split {
        weight_grad(dw, g, x, (m, n, k));
    } else {
        matmul(dw, false, Mat::new(g, n).t(), Mat::new(x, k), (n, m, k), parallelism(m * k * n));
    }
}
