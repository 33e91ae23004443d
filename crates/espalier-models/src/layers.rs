//! Building blocks whose weights are masked [`Param`]s; the computation is
//! in `espalier-kernels`.
//!
//! Normalisation is [`espalier_kernels::fused::layer_norm`]: candle's own
//! fused `LayerNorm` has no backward pass, so gradients would silently stop
//! there. Convolutions run as im2col + matrix product with their own
//! backward ([`espalier_kernels::conv`]), several times faster to train than
//! candle's `conv2d`. Dropout ([`dropout`], [`dropout_mask`]) has no
//! parameters and lives in [`espalier_kernels::dropout`].

use std::sync::{Arc, RwLock};

use candle_core::{DType, Module, Tensor};
use espalier_core::init::Init;
use espalier_core::{Param, ParamBuilder, ParamKind, Result};
use espalier_kernels::sparse::SparseLinear;
pub use espalier_kernels::sparse::{
    Format, PackOptions, DEFAULT_MAX_DENSITY, DEFAULT_MAX_NM_DENSITY, DEFAULT_SMALL_ROWS,
};

pub use espalier_kernels::dropout::{dropout, dropout_mask};

/// y = x Wᵀ + b, with W of shape `(out, in)` (PyTorch's layout).
///
/// For inference the masked weight can be packed sparse
/// ([`Linear::pack_sparse`]); [`Linear::forward_infer`] then runs the sparse
/// kernel ([`espalier_kernels::sparse`]) while the packed copy is current.
/// On inputs of [`TRANSPOSED_ROWS`] rows it otherwise runs the
/// dense product on a transposed copy of the weight, made at the first such
/// call ([`espalier_kernels::dense::linear_pretransposed`]). Training and
/// evaluation ([`Linear::forward`]) never use either copy.
#[derive(Clone, Debug)]
pub struct Linear {
    /// `(out, in)`.
    pub weight: Param,
    /// `(out,)`.
    pub bias: Option<Param>,
    packed: SparseSlot,
    transposed: TransposedSlot,
}

/// The inputs (rows: batch × tokens) [`Linear::forward_infer`] runs on the
/// transposed copy of the weight. At 128 rows (one BERT sequence) `gemm`
/// spends a large share of each product packing the weight, and packs the
/// transposed layout far faster: the BERT-base-shaped forward pass at batch
/// 1 went from 42.7 to 35.0 ms, MiniLM's from 17.3 to 15.6 (two threads).
/// On a single row (a matrix-vector product) the copy is slower (the
/// LeNet-300-100 forward pass at batch 1: 13 → 23 µs), and from a few
/// hundred rows on `gemm` packs either layout at about the same cost (that
/// forward pass at batch 256: 0.53 → 0.58 ms), so the copy's memory is not
/// spent there.
pub const TRANSPOSED_ROWS: std::ops::RangeInclusive<usize> = 16..=128;

/// The masked weight transposed to `(in, out)`, with the versions it was
/// made from (shared by the clones of the layer).
#[derive(Clone, Default)]
struct TransposedSlot(Arc<RwLock<Option<(Tensor, Versions)>>>);

/// The [`Param::version`]s of a layer's weight and bias.
type Versions = (u64, Option<u64>);

impl std::fmt::Debug for TransposedSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let made = self.0.read().map(|g| g.is_some()).unwrap_or(false);
        write!(f, "{}", if made { "transposed copy" } else { "no transposed copy" })
    }
}

/// A packed sparse copy of a layer's masked weight (shared by the clones of
/// the layer), with the [`Param::version`]s it was made from.
#[derive(Clone, Default)]
pub(crate) struct SparseSlot(Arc<RwLock<Option<Arc<PackedForm>>>>);

struct PackedForm {
    sparse: SparseLinear,
    versions: (u64, Option<u64>),
}

impl std::fmt::Debug for SparseSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.get() {
            Some(p) => write!(f, "{:?}", p.sparse),
            None => write!(f, "dense"),
        }
    }
}

impl SparseSlot {
    fn get(&self) -> Option<Arc<PackedForm>> {
        self.0.read().map(|g| g.clone()).unwrap_or_default()
    }
    fn set(&self, p: Option<PackedForm>) {
        if let Ok(mut g) = self.0.write() {
            *g = p.map(Arc::new);
        }
    }
}

/// What [`Linear::pack_sparse`] (and a model's `pack_sparse`) decided for
/// one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct PackedLayer {
    /// The weight's parameter name.
    pub name: String,
    /// `(out, in)`.
    pub shape: (usize, usize),
    /// Non-zeros / elements of the masked weight.
    pub density: f64,
    /// The format chosen.
    pub format: Format,
    /// Bytes of the packed weight (values and indices; `4·out·in` for dense).
    pub bytes: usize,
    /// The largest input (rows) the packed form serves, when it serves only
    /// small ones (larger inputs take the dense product).
    pub max_rows: Option<usize>,
}

/// The versions of `w` and `b` (what a packed copy compares).
fn versions(w: &Param, b: Option<&Param>) -> (u64, Option<u64>) {
    (w.version(), b.map(Param::version))
}

impl Linear {
    /// Declares `weight` and `bias` under `pb`, PyTorch's default init.
    pub fn new(pb: &ParamBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let init = Init::KaimingUniform { fan_in: in_dim };
        let weight = pb.param("weight", &[out_dim, in_dim], ParamKind::Weight, init)?;
        let bias = if bias { Some(pb.param("bias", &[out_dim], ParamKind::Bias, init)?) } else { None };
        Ok(Self::from_params(weight, bias))
    }

    /// The layer over existing parameters (not packed).
    pub fn from_params(weight: Param, bias: Option<Param>) -> Self {
        Linear { weight, bias, packed: SparseSlot::default(), transposed: TransposedSlot::default() }
    }

    /// Packs the masked weight `w ⊙ m` (and the bias) for inference in the
    /// format [`espalier_kernels::sparse::choose`] picks under `opts` (dense:
    /// nothing is packed). The copy is used by [`Linear::forward_infer`]
    /// until the weight, bias or mask change (any write through [`Param`]'s
    /// methods or an optimizer step); then it is ignored. CPU models only.
    pub fn pack_sparse(&self, opts: &PackOptions) -> Result<PackedLayer> {
        if !self.weight.tensor().device().is_cpu() {
            espalier_core::bail!("{}: sparse inference runs on the CPU only", self.weight.name());
        }
        let versions = versions(&self.weight, self.bias.as_ref());
        let w = self.weight.effective()?.detach();
        let b = self.bias.as_ref().map(|b| b.effective()).transpose()?;
        let (out, inp) = w.dims2()?;
        let density = espalier_kernels::sparse::density(&w.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?);
        let sparse = SparseLinear::pack(&w, b.as_ref(), opts)
            .map_err(|e| espalier_core::Error::msg(format!("{}: {e}", self.weight.name())))?;
        let (format, bytes, max_rows) = match &sparse {
            Some(s) => (s.format(), s.bytes(), s.max_rows()),
            None => (Format::Dense, 4 * out * inp, None),
        };
        self.packed.set(sparse.map(|sparse| PackedForm { sparse, versions }));
        Ok(PackedLayer { name: self.weight.name().to_string(), shape: (out, inp), density, format, bytes, max_rows })
    }

    /// Drops the packed copy.
    pub fn unpack_sparse(&self) {
        self.packed.set(None);
    }

    /// The format [`Linear::forward_infer`] runs: that of a current packed
    /// copy, dense otherwise.
    pub fn inference_format(&self) -> Format {
        match self.packed.get() {
            Some(p) if p.versions == versions(&self.weight, self.bias.as_ref()) => p.sparse.format(),
            _ => Format::Dense,
        }
    }

    /// Inference only (no gradient flows back): the packed sparse copy when
    /// there is a current one that serves an input of this size,
    /// [`Linear::forward`] otherwise.
    pub fn forward_infer(&self, x: &Tensor) -> Result<Tensor> {
        let rows = x.dims().split_last().map_or(0, |(_, lead)| lead.iter().product());
        let cpu_f32 = x.device().is_cpu() && x.dtype() == DType::F32 && !crate::observe::active();
        let current = versions(&self.weight, self.bias.as_ref());
        if let Some(p) = self.packed.get() {
            if p.versions == current && p.sparse.serves(rows) && cpu_f32 {
                return p.sparse.forward(x);
            }
        }
        if cpu_f32 && TRANSPOSED_ROWS.contains(&rows) && espalier_kernels::fused::enabled() {
            let wt = self.transposed_weight(current)?;
            let b = self.bias.as_ref().map(|b| b.effective()).transpose()?;
            return espalier_kernels::dense::linear_pretransposed(x, &wt, b.as_ref());
        }
        self.forward(x)
    }

    /// The masked weight as `(in, out)`: the current copy, or a new one.
    fn transposed_weight(&self, current: Versions) -> Result<Tensor> {
        if let Ok(g) = self.transposed.0.read() {
            if let Some((wt, _)) = g.as_ref().filter(|(_, v)| *v == current) {
                return Ok(wt.clone());
            }
        }
        let wt = self.weight.effective()?.detach().t()?.contiguous()?;
        if let Ok(mut g) = self.transposed.0.write() {
            *g = Some((wt.clone(), current));
        }
        Ok(wt)
    }

    /// [`Linear::forward_infer`] when `infer`, [`Linear::forward`] otherwise.
    pub fn forward_mode(&self, x: &Tensor, infer: bool) -> Result<Tensor> {
        if infer {
            self.forward_infer(x)
        } else {
            self.forward(x)
        }
    }

    /// Applies the layer to `(..., in)`.
    /// One fused op on the CPU ([`espalier_kernels::dense::linear`]).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if crate::observe::active() {
            crate::observe::record(self.weight.name(), x)?;
        }
        let b = self.bias.as_ref().map(|b| b.effective()).transpose()?;
        espalier_kernels::dense::linear(x, &self.weight.effective()?, b.as_ref())
    }
}

/// 2-D convolution, weight `(out, in, k, k)`.
#[derive(Clone, Debug)]
pub struct Conv2d {
    /// `(out, in, k, k)`.
    pub weight: Param,
    /// `(out,)`.
    pub bias: Option<Param>,
    /// Zero padding on each side.
    pub padding: usize,
    /// Stride.
    pub stride: usize,
}

impl Conv2d {
    /// Declares a `k × k` convolution with PyTorch's default init.
    pub fn new(
        pb: &ParamBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let init = Init::KaimingUniform { fan_in: cin * k * k };
        Self::declare(pb, [cin, cout, k, stride, padding], init, bias.then_some(init))
    }

    /// A `k × k` convolution with He et al.'s (2015) normal init in fan-out
    /// mode, N(0, 2/(cout·k²)), and a zero bias if any: torchvision's ResNet
    /// and VGG (`kaiming_normal_(mode="fan_out", nonlinearity="relu")`).
    pub fn he(
        pb: &ParamBuilder,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let init = Init::KaimingNormal { fan_out: cout * k * k };
        Self::declare(pb, [cin, cout, k, stride, padding], init, bias.then_some(Init::Const(0.0)))
    }

    /// `weight` `(cout, cin, k, k)` and an optional `bias`, with their inits.
    fn declare(
        pb: &ParamBuilder,
        [cin, cout, k, stride, padding]: [usize; 5],
        w: Init,
        b: Option<Init>,
    ) -> Result<Self> {
        let weight = pb.param("weight", &[cout, cin, k, k], ParamKind::Weight, w)?;
        let bias = b.map(|init| pb.param("bias", &[cout], ParamKind::Bias, init)).transpose()?;
        Ok(Conv2d { weight, bias, padding, stride })
    }

    /// Inference only: `bn(conv(x))` with `bn` (if any) in evaluation mode,
    /// plus `residual`, then ReLU if `relu`, in one pass
    /// ([`espalier_kernels::conv::conv2d_infer`]); no gradient flows back through it.
    pub fn forward_infer(
        &self,
        bn: Option<&crate::norm::BatchNorm2d>,
        x: &Tensor,
        residual: Option<&Tensor>,
        relu: bool,
    ) -> Result<Tensor> {
        let cout = self.weight.dims()[0];
        let (scale, mut shift) = match bn {
            Some(bn) => bn.eval_affine()?,
            None => (vec![1.0; cout], vec![0.0; cout]),
        };
        if let Some(b) = &self.bias {
            let b: Vec<f32> = b.effective()?.detach().to_dtype(candle_core::DType::F32)?.to_vec1()?;
            shift.iter_mut().zip(&b).zip(&scale).for_each(|((s, b), a)| *s += b * a);
        }
        let epi = espalier_kernels::conv::Epilogue { scale: &scale, shift: &shift, residual, relu };
        espalier_kernels::conv::conv2d_infer(x, &self.weight.effective()?, self.stride, self.padding, &epi)
    }

    /// Applies the convolution to `(B, C, H, W)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = espalier_kernels::conv::conv2d(x, &self.weight.effective()?, self.stride, self.padding)?;
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(&b.effective()?.reshape((1, (), 1, 1))?)?,
            None => y,
        })
    }
}

/// Layer normalisation over the last dimension (a fused kernel with its own
/// backward on the CPU, basic ops elsewhere).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    /// Scale γ.
    pub weight: Param,
    /// Shift β.
    pub bias: Param,
    /// ε added to the variance.
    pub eps: f64,
}

impl LayerNorm {
    /// Declares `weight` (ones) and `bias` (zeros) of size `dim`.
    pub fn new(pb: &ParamBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(LayerNorm {
            weight: pb.param("weight", &[dim], ParamKind::Norm, Init::Const(1.0))?,
            bias: pb.param("bias", &[dim], ParamKind::Norm, Init::Const(0.0))?,
            eps,
        })
    }

    /// (x − μ)/√(σ² + ε) · γ + β over the last dimension.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        espalier_kernels::fused::layer_norm(x, self.weight.tensor(), self.bias.tensor(), self.eps)
    }
}

/// A lookup table `(vocab, dim)`.
#[derive(Clone, Debug)]
pub struct Embedding {
    /// `(vocab, dim)`.
    pub weight: Param,
}

impl Embedding {
    /// Declares `weight` with N(0, std²) init.
    pub fn new(pb: &ParamBuilder, vocab: usize, dim: usize, std: f64) -> Result<Self> {
        Ok(Embedding { weight: pb.param("weight", &[vocab, dim], ParamKind::Embedding, Init::Normal { std })? })
    }

    /// Looks up u32 ids of any shape.
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let w = self.weight.effective()?;
        Ok(candle_nn::Embedding::new(w, self.weight.dims()[1]).forward(ids)?)
    }
}
