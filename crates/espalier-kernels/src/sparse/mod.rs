//! Sparse-weight × dense-activation products for inference: the linear layer
//! `y = x Wᵀ + b` (`W` `(out, in)`, PyTorch's layout as in
//! [`crate::dense::linear`]) when pruning left most of `W` zero.
//!
//! Two storage formats, both built by [`SparseLinear::pack`] from a dense
//! (masked) weight:
//!
//! - **CSR** (unstructured masks), blocked by input panels: the inputs are
//!   cut into panels of 256, and for every panel and output row the input
//!   indices (u32) and values of its non-zeros are stored, panel-major;
//! - **N:M** (semi-structured masks, e.g. 1:4, 2:4, 4:8): every row is
//!   `in / M` blocks of `M` inputs, each storing exactly `N` values and
//!   their offsets inside the block (u8); a block with fewer non-zeros is
//!   padded with zeros. The kernel computes the input index from the block
//!   number and the offset (`N` a compile-time constant for 1, 2 and 4).
//!
//! The product is tiled over the tokens (rows of `x`): a tile of up to 32
//! tokens is transposed to `(in, 32)` (8 × 8 AVX2 transposes) so that each
//! stored `w[o, i]` is one broadcast multiply-add with 32 contiguous
//! activations into accumulators held in registers (two AVX-512 or four
//! AVX2 registers per set, four or two sets so that eight FMAs are in
//! flight; detected at run time, a portable loop elsewhere). The outputs of
//! a tile accumulate panel by panel, so the panel's transposed activations
//! (32 KiB) stay in L1 while every output row reads them, and are
//! transposed back at the end. Tiles of 16 tokens take short inputs and
//! remainders; a single token is a gathered dot product per output. Work
//! items are (tile, range of outputs), spread over candle's thread pool;
//! when there are fewer tiles than threads the outputs are split too.
//!
//! [`choose`] picks the format of a layer from the density of its weight
//! (and whether it is N:M): N:M when the pattern holds, `N/M ≤`
//! [`PackOptions::max_nm_density`] and the blocks are mostly filled
//! (density ≥ ¾·N/M); otherwise CSR up to [`PackOptions::max_density`],
//! dense above. Outputs equal the dense product's up to the order of the
//! f32 additions (the tests hold them to 1e-4 relative).
//!
//! ## Measurements
//!
//! `cargo bench -p espalier-kernels --bench kernels -- sparse`: the median
//! of 15 runs (51 at 128 tokens) of [`crate::dense::linear`] and of
//! [`SparseLinear::forward`] on the same masked weight, alternating in one
//! process; speed-up = dense / sparse (medians), on a 2-core Xeon with
//! AVX-512 shared with other builds (load average 6–11: the ratios carry
//! ±20% noise, more at 1 × 128 where a product takes 0.05–0.3 ms and a
//! preempted thread at the pool's barrier costs milliseconds):
//!
//! | tokens | W (out, in) | 50%  | 70%  | 80%  | 90%  | 95%  | 2:4  | 1:4  |
//! |--------|-------------|------|------|------|------|------|------|------|
//! | 4096   | 384 × 384   | 0.96 | 1.31 | 1.20 | 2.54 | 1.95 | 0.87 | 1.28 |
//! | 4096   | 1536 × 384  | 1.17 | 1.49 | 2.13 | 2.70 | 2.95 | 1.05 | 1.65 |
//! | 4096   | 384 × 1536  | 1.03 | 1.50 | 2.12 | 2.75 | 2.83 | 0.90 | 1.57 |
//! | 128    | 384 × 384   | 1.25 | 1.79 | 2.08 | 2.92 | 3.79 | 1.01 | 1.71 |
//!
//! (dense 384 × 384 at 4096 tokens: 17.6 ms, about 70 GFLOP/s; the sparse
//! kernel ran at 25–35 GFLOP/s on the stored values at 50–70% sparsity,
//! 6–15 at 90–95%, where the transposes and the per-row work weigh more;
//! at 128 tokens 40–115 GFLOP/s.) An earlier run on one thread under
//! heavier load gave 0.83–0.93 at 50%, 1.07–1.45 at 70%, 2.1–3.0 at 90%
//! and 0.70–0.76 for 2:4 at 4096 tokens. These need re-measuring on a quiet
//! machine.
//!
//! The defaults follow: unstructured weights go sparse at ≤ 30% density
//! (70% sparsity and beyond, where the sparse kernel won in every shape),
//! N:M at `N/M ≤ 1/4` (1:4, 1:8, 2:8); 2:4 and 4:8 stay dense, since at 50%
//! density the kernel (which reaches a fraction of the dense GEMM's rate
//! per multiply-add: every stored value is a broadcast and a load of the
//! activations, where the GEMM reuses registers) is slower than dense.
//! Both are [`PackOptions`] fields for other machines.
//!
//! On few rows the picture changes: the dense GEMM is least efficient
//! there (MiniLM's dense forward takes 24 ms for one sequence of 128 tokens
//! and 36 ms for two), and the whole-model forward of all-MiniLM-L6-v2
//! (`espalier bench RUN_DIR` with the thresholds forced, length 128, 2
//! threads, a quiet machine) gave, sparse over dense:
//!
//! | sequences (rows)      | 1 (128) | 2 (256) | 4 (512) | 8 (1024) | 16 (2048) | 32 (4096) |
//! |-----------------------|---------|---------|---------|----------|-----------|-----------|
//! | CSR, 50% density      | 1.66    | 1.31    | 1.15    | 1.08     | 1.01      | 0.99      |
//! | 2:4                   | 1.52    | 1.20    | 1.05    | 1.00     | 0.92      | 0.90      |
//! | CSR, 30% density      | 2.26    |         | 1.48    |          | 1.34      | 1.29      |
//!
//! Hence [`PackOptions::small_rows`] (512): weights up to 50% density (CSR)
//! and N/M up to ½ (2:4, 4:8, 1:2) are packed as well, and run the sparse
//! kernels on inputs of at most 512 rows; larger inputs take the dense
//! product ([`SparseLinear::serves`]).

mod kernel;

use candle_core::{DType, Tensor};
use espalier_core::Result;

use kernel::{Csr, Entries, NmRows, NmView, RowSource};

/// How a linear layer's weight is stored for inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The dense product ([`crate::dense::linear`]).
    Dense,
    /// Compressed sparse rows.
    Csr,
    /// `n` of every `m` consecutive inputs kept, per row.
    Nm {
        /// Kept per block.
        n: usize,
        /// Block length.
        m: usize,
    },
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Format::Dense => write!(f, "dense"),
            Format::Csr => write!(f, "csr"),
            Format::Nm { n, m } => write!(f, "{n}:{m}"),
        }
    }
}

/// The N:M patterns [`nm_pattern`] recognises, sparsest first.
pub const NM_PATTERNS: [(usize, usize); 6] = [(1, 8), (1, 4), (2, 8), (1, 2), (2, 4), (4, 8)];

/// When a layer is packed sparse: the thresholds of [`choose`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PackOptions {
    /// The densest weight (non-zeros / elements) stored as CSR; denser ones
    /// stay dense.
    pub max_density: f64,
    /// The largest `N/M` stored as N:M (when the weight has the pattern);
    /// denser patterns go to the CSR rule.
    pub max_nm_density: f64,
    /// Whether N:M patterns are looked for at all.
    pub detect_nm: bool,
    /// Inputs of at most this many rows (tokens × batch) run the sparse
    /// kernels on denser weights too, up to `small_max_density` (CSR) and
    /// `small_max_nm_density` (N:M): on few rows the dense GEMM is least
    /// efficient and the sparse kernels win at 50% density (measured, see
    /// the module docs). Such a layer is packed, and larger inputs take the
    /// dense product. 0 turns this off.
    pub small_rows: usize,
    /// The densest weight stored as CSR for inputs of at most `small_rows`.
    pub small_max_density: f64,
    /// The largest `N/M` stored as N:M for inputs of at most `small_rows`.
    pub small_max_nm_density: f64,
}

impl Default for PackOptions {
    /// The crossovers measured on MiniLM's shapes (see the module docs).
    fn default() -> Self {
        PackOptions {
            max_density: DEFAULT_MAX_DENSITY,
            max_nm_density: DEFAULT_MAX_NM_DENSITY,
            detect_nm: true,
            small_rows: DEFAULT_SMALL_ROWS,
            small_max_density: DEFAULT_SMALL_MAX_DENSITY,
            small_max_nm_density: DEFAULT_SMALL_MAX_NM_DENSITY,
        }
    }
}

/// The default [`PackOptions::max_density`] (measured, see the module docs).
pub const DEFAULT_MAX_DENSITY: f64 = 0.3;
/// The default [`PackOptions::max_nm_density`] (measured, see the module docs).
pub const DEFAULT_MAX_NM_DENSITY: f64 = 0.25;
/// The default [`PackOptions::small_rows`] (measured, see the module docs).
pub const DEFAULT_SMALL_ROWS: usize = 512;
/// The default [`PackOptions::small_max_density`].
pub const DEFAULT_SMALL_MAX_DENSITY: f64 = 0.5;
/// The default [`PackOptions::small_max_nm_density`].
pub const DEFAULT_SMALL_MAX_NM_DENSITY: f64 = 0.5;

impl PackOptions {
    /// Checks the thresholds.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [
            ("max_density", self.max_density),
            ("max_nm_density", self.max_nm_density),
            ("small_max_density", self.small_max_density),
            ("small_max_nm_density", self.small_max_nm_density),
        ] {
            if !(0.0..=1.0).contains(&v) {
                espalier_core::bail!("sparse packing: {name} must lie in [0, 1], found {v}");
            }
        }
        Ok(())
    }

    /// The thresholds that apply to inputs of at most `small_rows` rows.
    fn for_small_inputs(&self) -> PackOptions {
        PackOptions {
            max_density: self.max_density.max(self.small_max_density),
            max_nm_density: self.max_nm_density.max(self.small_max_nm_density),
            ..*self
        }
    }
}

/// The format for a weight of `shape` `(out, in)` with `density` (non-zeros
/// / elements) and N:M pattern `nm` (from [`nm_pattern`]), under `opts`.
pub fn choose(density: f64, nm: Option<(usize, usize)>, shape: (usize, usize), opts: &PackOptions) -> Format {
    let (out, inp) = shape;
    if out == 0 || inp == 0 {
        return Format::Dense;
    }
    if let Some((n, m)) = nm.filter(|_| opts.detect_nm) {
        // N:M when the pattern is mostly filled: a 5% dense weight that
        // happens to be 2:4 stores fewer values as CSR.
        let r = n as f64 / m as f64;
        if r <= opts.max_nm_density && density >= 0.75 * r {
            return Format::Nm { n, m };
        }
    }
    // Compared in stored values: 70% sparsity rounds to a kept count a hair
    // above 0.3·n, which is still the 30% density the threshold means.
    let n = (out * inp) as f64;
    if (density * n).round() <= (opts.max_density * n).ceil() {
        Format::Csr
    } else {
        Format::Dense
    }
}

/// Non-zeros / elements of `w` (1 for an empty slice).
pub fn density(w: &[f32]) -> f64 {
    if w.is_empty() {
        return 1.0;
    }
    w.iter().filter(|v| **v != 0.0).count() as f64 / w.len() as f64
}

/// The sparsest pattern of [`NM_PATTERNS`] that every row of `w` (`out × in`,
/// row-major) follows: at most `n` non-zeros in every block of `m`
/// consecutive inputs, `in` a multiple of `m`. `None` if none holds.
pub fn nm_pattern(w: &[f32], (out, inp): (usize, usize)) -> Option<(usize, usize)> {
    if out == 0 || inp == 0 || w.len() != out * inp {
        return None;
    }
    NM_PATTERNS
        .into_iter()
        .find(|&(n, m)| inp % m == 0 && w.chunks_exact(m).all(|block| block.iter().filter(|v| **v != 0.0).count() <= n))
}

enum Weights {
    Csr(Csr),
    Nm(NmRows),
}

/// A linear layer's weight (and bias) packed sparse for inference: no
/// autograd, f32 on the CPU.
pub struct SparseLinear {
    out: usize,
    inp: usize,
    bias: Option<Vec<f32>>,
    weights: Weights,
    /// The largest input (rows) this packing serves; larger ones take the
    /// dense product (`None`: any).
    max_rows: Option<usize>,
}

impl std::fmt::Debug for SparseLinear {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SparseLinear({} × {}, {}, {} stored)", self.out, self.inp, self.format(), self.stored())
    }
}

/// The f32 values of a 2-D weight and 1-D bias, on the CPU.
/// `(out, in)`, the weight's values (row-major) and the bias's.
type WeightData = ((usize, usize), Vec<f32>, Option<Vec<f32>>);

fn weight_data(w: &Tensor, b: Option<&Tensor>) -> Result<WeightData> {
    let (out, inp) = w.dims2().map_err(|e| espalier_core::Error::msg(format!("sparse packing: weight: {e}")))?;
    let to_cpu =
        |t: &Tensor| -> Result<Tensor> { Ok(t.detach().to_device(&candle_core::Device::Cpu)?.to_dtype(DType::F32)?) };
    let wv = to_cpu(w)?.flatten_all()?.to_vec1::<f32>()?;
    let bv = match b {
        Some(b) => {
            if b.dims() != [out] {
                espalier_core::bail!("sparse packing: bias {:?} does not match weight ({out}, {inp})", b.dims());
            }
            Some(to_cpu(b)?.to_vec1::<f32>()?)
        }
        None => None,
    };
    Ok(((out, inp), wv, bv))
}

impl SparseLinear {
    /// Packs `w` `(out, in)` (zeros where pruned) and `b` `(out,)` in the
    /// format [`choose`] picks under `opts`, or `None` when that is dense.
    pub fn pack(w: &Tensor, b: Option<&Tensor>, opts: &PackOptions) -> Result<Option<Self>> {
        opts.validate()?;
        let (shape, wv, bv) = weight_data(w, b)?;
        let nm = if opts.detect_nm { nm_pattern(&wv, shape) } else { None };
        let d = density(&wv);
        let (format, max_rows) = match choose(d, nm, shape, opts) {
            Format::Dense if opts.small_rows > 0 => {
                (choose(d, nm, shape, &opts.for_small_inputs()), Some(opts.small_rows))
            }
            f => (f, None),
        };
        let packed = match format {
            Format::Dense => return Ok(None),
            Format::Csr => Self::csr_from(shape, &wv, bv),
            Format::Nm { n, m } => Self::nm_from(shape, &wv, bv, (n, m))?,
        };
        Ok(Some(SparseLinear { max_rows, ..packed }))
    }

    /// The largest input (rows: tokens × batch) this packing is for, when
    /// it serves only small ones ([`PackOptions::small_rows`]).
    pub fn max_rows(&self) -> Option<usize> {
        self.max_rows
    }

    /// Whether an input of `rows` rows should run this packing (else the
    /// dense product).
    pub fn serves(&self, rows: usize) -> bool {
        self.max_rows.is_none_or(|m| rows <= m)
    }

    /// Packs `w` as CSR whatever its density.
    pub fn pack_csr(w: &Tensor, b: Option<&Tensor>) -> Result<Self> {
        let (shape, wv, bv) = weight_data(w, b)?;
        Ok(Self::csr_from(shape, &wv, bv))
    }

    /// Packs `w` as `n:m`; an error if a block of `w` holds more than `n`
    /// non-zeros or `in` is not a multiple of `m`.
    pub fn pack_nm(w: &Tensor, b: Option<&Tensor>, (n, m): (usize, usize)) -> Result<Self> {
        let (shape, wv, bv) = weight_data(w, b)?;
        Self::nm_from(shape, &wv, bv, (n, m))
    }

    fn csr_from((out, inp): (usize, usize), w: &[f32], bias: Option<Vec<f32>>) -> Self {
        SparseLinear { out, inp, bias, weights: Weights::Csr(Csr::from_dense(w, out, inp)), max_rows: None }
    }

    fn nm_from((out, inp): (usize, usize), w: &[f32], bias: Option<Vec<f32>>, (n, m): (usize, usize)) -> Result<Self> {
        if n == 0 || n > m || m > 256 {
            espalier_core::bail!("sparse packing: {n}:{m} is not an N:M pattern (0 < N ≤ M ≤ 256)");
        }
        if inp % m != 0 {
            espalier_core::bail!("sparse packing: {n}:{m} needs the input width ({inp}) to be a multiple of {m}");
        }
        let blocks = inp / m;
        let (mut idx, mut vals) = (Vec::with_capacity(out * blocks * n), Vec::with_capacity(out * blocks * n));
        for (b, block) in w.chunks_exact(m).enumerate() {
            let mut kept = 0;
            for (i, &v) in block.iter().enumerate() {
                if v != 0.0 {
                    kept += 1;
                    if kept > n {
                        let (o, j) = (b / blocks, b % blocks);
                        espalier_core::bail!(
                            "sparse packing: row {o}, inputs {}..{} hold more than {n} non-zeros: not {n}:{m}",
                            j * m,
                            (j + 1) * m
                        );
                    }
                    idx.push(i as u8);
                    vals.push(v);
                }
            }
            for _ in kept..n {
                idx.push(0);
                vals.push(0.0);
            }
        }
        Ok(SparseLinear { out, inp, bias, weights: Weights::Nm(NmRows { n, m, blocks, idx, vals }), max_rows: None })
    }

    /// `(out, in)`.
    pub fn shape(&self) -> (usize, usize) {
        (self.out, self.inp)
    }

    /// The storage format.
    pub fn format(&self) -> Format {
        match &self.weights {
            Weights::Csr(_) => Format::Csr,
            Weights::Nm(w) => Format::Nm { n: w.n, m: w.m },
        }
    }

    /// Stored values (non-zeros, plus an N:M format's padding).
    pub fn stored(&self) -> usize {
        match &self.weights {
            Weights::Csr(w) => w.stored(),
            Weights::Nm(w) => w.vals.len(),
        }
    }

    /// Bytes of the packed weight (values and indices, bias excluded).
    pub fn bytes(&self) -> usize {
        match &self.weights {
            Weights::Csr(w) => 4 * (w.ptr.len() + w.cols.len() + w.vals.len()),
            Weights::Nm(w) => w.idx.len() + 4 * w.vals.len(),
        }
    }

    /// The weight as a dense `(out, in)` tensor (zeros where not stored).
    pub fn to_dense(&self) -> Result<Tensor> {
        let mut w = vec![0f32; self.out * self.inp];
        for o in 0..self.out {
            let row = &mut w[o * self.inp..(o + 1) * self.inp];
            let mut put =
                |es: &dyn Fn(usize) -> (usize, f32), len: usize| (0..len).map(es).for_each(|(i, v)| row[i] += v);
            for p in 0..self.inp.div_ceil(kernel::PANEL).max(1) {
                match &self.weights {
                    // SAFETY (both): e < len.
                    Weights::Csr(s) => {
                        let es = s.row(o, p);
                        put(&|e| unsafe { (es.col(e), es.val(e)) }, es.len())
                    }
                    Weights::Nm(s) => {
                        let view = NmView::<0>(s);
                        let es = view.row(o, p);
                        put(&|e| unsafe { (es.col(e), es.val(e)) }, es.len())
                    }
                }
            }
        }
        Ok(Tensor::from_vec(w, (self.out, self.inp), &candle_core::Device::Cpu)?)
    }

    /// `y = x Wᵀ + b` for `x` `(..., in)` (f32, on the CPU); outside the
    /// autograd graph.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let k = x.dims().last().copied().unwrap_or(0);
        if k != self.inp || x.rank() < 1 {
            espalier_core::bail!(
                "sparse linear: input {:?} does not match weight ({}, {})",
                x.dims(),
                self.out,
                self.inp
            );
        }
        if !x.device().is_cpu() || x.dtype() != DType::F32 {
            espalier_core::bail!("sparse linear: runs on f32 CPU tensors, got {:?} on {:?}", x.dtype(), x.device());
        }
        let m: usize = x.dims()[..x.rank() - 1].iter().product();
        let n = self.out;
        let mut shape = x.dims().to_vec();
        if let Some(last) = shape.last_mut() {
            *last = n;
        }
        if self.stored() == 0 {
            // A fully pruned layer computes its bias (or zeros).
            let y = match &self.bias {
                Some(b) => b.iter().copied().cycle().take(m * n).collect(),
                None => vec![0f32; m * n],
            };
            return Ok(Tensor::from_vec(y, shape, x.device())?);
        }
        let y = crate::fused::with_data(&[&x.detach()], "sparse linear", |d| {
            let xs = d[0];
            let bias = self.bias.as_deref();
            // SAFETY: `product` writes every element of `y` (m, n > 0; for
            // an empty product the buffer is empty).
            Ok(unsafe {
                crate::fused::output(m * n, |y| match &self.weights {
                    Weights::Csr(w) => kernel::product(w, bias, xs, y, (m, k, n)),
                    Weights::Nm(w) => match w.n {
                        1 => kernel::product(&NmView::<1>(w), bias, xs, y, (m, k, n)),
                        2 => kernel::product(&NmView::<2>(w), bias, xs, y, (m, k, n)),
                        4 => kernel::product(&NmView::<4>(w), bias, xs, y, (m, k, n)),
                        _ => kernel::product(&NmView::<0>(w), bias, xs, y, (m, k, n)),
                    },
                })
            })
        })?;
        Ok(Tensor::from_vec(y, shape, x.device())?)
    }
}
