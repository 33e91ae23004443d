//! Espalier's hand-written CPU ops, each with its own backward pass.
//!
//! Every op here is a candle `CustomOp` (or a plain function over one) that
//! runs for f32 tensors on the CPU while [`fused::set_enabled`] is on, and
//! falls back to a composition of candle's differentiable ops elsewhere (the
//! `reference` modules, which are also what the kernels are tested against):
//!
//! - [`conv`]: 2-D convolution as im2col + `gemm`, and its inference variant
//!   with a folded BatchNorm/residual/ReLU output pass;
//! - [`dense`]: the fully connected layer `x Wᵀ + b` and the strided `gemm`
//!   helper the convolution and attention share;
//! - [`attention`]: multi-head scaled dot-product attention;
//! - [`fused`]: LayerNorm, the masked attention softmax, GELU, ReLU, and the
//!   plumbing (thread pool loops, SIMD dispatch) the other kernels use;
//! - [`norm`]: BatchNorm over `(B, C, H, W)`, training and evaluation;
//! - [`pool`]: max pooling, global average pooling, the strided
//!   subsample-and-pad of ResNet's option-A shortcut;
//! - [`dropout`]: dropout masks from the project's seeded RNG;
//! - [`sparse`]: inference-only sparse (CSR) and N:M linear layers for
//!   pruned weights, and the per-layer choice between them and dense;
//! - [`denormal`]: flush-to-zero for subnormal floats (set by the binary).
//!
//! Nothing here owns parameters: the layers and architectures that do are
//! in `espalier-models`.

pub mod attention;
pub mod conv;
pub mod denormal;
pub mod dense;
pub mod dropout;
pub mod fused;
pub mod norm;
pub mod pool;
mod reduce;
pub mod sparse;

#[doc(hidden)]
pub mod bench;
