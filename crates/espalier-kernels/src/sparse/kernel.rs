//! The product `Y (m × n) = X (m × k) · Wᵀ + b` for a sparse `W`, tiled over
//! the tokens (rows of `X`): see the module docs of [`super`] for the layout
//! and the measurements that chose it.

use std::ops::Range;

use crate::fused::SharedOut;

/// Inputs per panel: the product runs over panels of this many inputs, so
/// that the transposed activations of one panel (`PANEL × 32` floats,
/// 32 KiB) stay in the L1 cache while every output row reads them.
pub(crate) const PANEL: usize = 256;

/// The stored entries of one row in one panel: `len` entries, entry `e`
/// at input `col(e)` with value `val(e)`.
pub(crate) trait Entries: Copy {
    fn len(&self) -> usize;
    /// # Safety
    /// `e < self.len()`.
    unsafe fn col(&self, e: usize) -> usize;
    /// # Safety
    /// `e < self.len()`.
    unsafe fn val(&self, e: usize) -> f32;
}

/// A sparse weight, row by row and panel by panel: the stored entries of
/// output row `o` among inputs `p·PANEL..(p+1)·PANEL` (roughly, for N:M).
/// Implementations guarantee `col(e) < k` for every entry (checked when
/// they are built), which the tile loops rely on.
pub(crate) trait RowSource: Sync {
    type E<'a>: Entries
    where
        Self: 'a;
    /// Row `o`'s entries in panel `p`.
    fn row(&self, o: usize, p: usize) -> Self::E<'_>;
    /// Stored entries in all (for the decision to use the pool).
    fn stored(&self) -> usize;
}

/// CSR entries: indices and values side by side.
#[derive(Clone, Copy)]
pub(crate) struct CsrEntries<'a> {
    cols: &'a [u32],
    vals: &'a [f32],
}

impl Entries for CsrEntries<'_> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.cols.len().min(self.vals.len())
    }
    #[inline(always)]
    unsafe fn col(&self, e: usize) -> usize {
        // SAFETY: e < len.
        unsafe { *self.cols.get_unchecked(e) as usize }
    }
    #[inline(always)]
    unsafe fn val(&self, e: usize) -> f32 {
        // SAFETY: e < len.
        unsafe { *self.vals.get_unchecked(e) }
    }
}

/// N:M entries: `n` per block of `m` inputs, blocks from `b0` on; `N` is
/// `n` known at compile time (0: read `n` at run time).
#[derive(Clone, Copy)]
pub(crate) struct NmEntries<'a, const N: usize> {
    idx: &'a [u8],
    vals: &'a [f32],
    b0: usize,
    n: usize,
    m: usize,
}

impl<const N: usize> Entries for NmEntries<'_, N> {
    #[inline(always)]
    fn len(&self) -> usize {
        self.idx.len().min(self.vals.len())
    }
    #[inline(always)]
    unsafe fn col(&self, e: usize) -> usize {
        let n = if N == 0 { self.n } else { N };
        // SAFETY: e < len.
        (self.b0 + e / n) * self.m + unsafe { *self.idx.get_unchecked(e) } as usize
    }
    #[inline(always)]
    unsafe fn val(&self, e: usize) -> f32 {
        // SAFETY: e < len.
        unsafe { *self.vals.get_unchecked(e) }
    }
}

/// Compressed sparse rows by panel: the entries of row `o` in panel `p` are
/// `cols/vals[ptr[p·out + o]..ptr[p·out + o + 1]]`.
pub(crate) struct Csr {
    pub(crate) out: usize,
    pub(crate) ptr: Vec<u32>,
    pub(crate) cols: Vec<u32>,
    pub(crate) vals: Vec<f32>,
}

impl Csr {
    /// From a dense row-major `out × k` weight.
    pub(crate) fn from_dense(w: &[f32], out: usize, k: usize) -> Self {
        let panels = k.div_ceil(PANEL).max(1);
        let mut ptr = Vec::with_capacity(panels * out + 1);
        let (mut cols, mut vals) = (Vec::new(), Vec::new());
        ptr.push(0u32);
        for p in 0..panels {
            let r = p * PANEL..((p + 1) * PANEL).min(k);
            for row in w.chunks_exact(k.max(1)).take(out) {
                for (i, &v) in row[r.clone()].iter().enumerate() {
                    if v != 0.0 {
                        cols.push((r.start + i) as u32);
                        vals.push(v);
                    }
                }
                ptr.push(vals.len() as u32);
            }
        }
        if k == 0 {
            ptr.resize(out + 1, 0);
        }
        Csr { out, ptr, cols, vals }
    }
}

impl RowSource for Csr {
    type E<'a> = CsrEntries<'a>;
    #[inline(always)]
    fn row(&self, o: usize, p: usize) -> CsrEntries<'_> {
        let r = self.ptr[p * self.out + o] as usize..self.ptr[p * self.out + o + 1] as usize;
        CsrEntries { cols: &self.cols[r.clone()], vals: &self.vals[r] }
    }
    fn stored(&self) -> usize {
        self.vals.len()
    }
}

/// N:M: every row is `k / m` blocks of `m` inputs, each storing exactly `n`
/// values and their offsets inside the block (unused slots hold 0.0 at
/// offset 0). The offsets become input indices one row at a time.
pub(crate) struct NmRows {
    pub(crate) n: usize,
    pub(crate) m: usize,
    /// Blocks per row (`k / m`).
    pub(crate) blocks: usize,
    pub(crate) idx: Vec<u8>,
    pub(crate) vals: Vec<f32>,
}

/// [`NmRows`] with `n` fixed at compile time (`N`; 0: at run time).
pub(crate) struct NmView<'a, const N: usize>(pub(crate) &'a NmRows);

impl<const N: usize> RowSource for NmView<'_, N> {
    type E<'b>
        = NmEntries<'b, N>
    where
        Self: 'b;
    #[inline(always)]
    fn row(&self, o: usize, p: usize) -> NmEntries<'_, N> {
        let w = self.0;
        // PANEL is a multiple of every m that divides it; for other m a
        // panel boundary may cut a block, which goes to the earlier panel.
        let b0 = (p * PANEL).div_ceil(w.m).min(w.blocks);
        let b1 = ((p + 1) * PANEL).div_ceil(w.m).min(w.blocks);
        let r = (o * w.blocks + b0) * w.n..(o * w.blocks + b1) * w.n;
        NmEntries { idx: &w.idx[r.clone()], vals: &w.vals[r], b0, n: w.n, m: w.m }
    }
    fn stored(&self) -> usize {
        self.0.vals.len()
    }
}

/// Tokens per tile of the wide kernel: a row's accumulators are 32 floats
/// (four AVX2 or two AVX-512 registers).
const WIDE: usize = 32;
/// Tokens per tile of the narrow kernel (short inputs and the remainder).
const NARROW: usize = 16;
/// Below this many multiply-adds the product runs on the calling thread.
const PAR_MIN: usize = 1 << 15;

/// `Y (m × n) = X (m × k) · Wᵀ + b`, every element of `y` written.
pub(crate) fn product<R: RowSource>(
    w: &R,
    bias: Option<&[f32]>,
    x: &[f32],
    y: &mut [f32],
    (m, k, n): (usize, usize, usize),
) {
    debug_assert!(x.len() >= m * k && y.len() >= m * n);
    if m == 0 || n == 0 {
        return;
    }
    // Token tiles: as many wide ones as fit, then narrow ones, then single rows.
    let mut tiles: Vec<(usize, usize)> = Vec::new(); // (first row, width)
    let mut t = 0;
    while m - t >= WIDE || (m - t > 2 * NARROW && m >= WIDE) {
        tiles.push((t, WIDE.min(m - t)));
        t += WIDE.min(m - t);
    }
    while m - t >= 4 {
        tiles.push((t, NARROW.min(m - t)));
        t += NARROW.min(m - t);
    }
    while t < m {
        tiles.push((t, 1));
        t += 1;
    }
    let work = w.stored() * m;
    let threads = crate::fused::num_threads();
    // Split the outputs too when there are fewer tiles than threads.
    let chunks = if threads < 2 || work < PAR_MIN { 1 } else { (2 * threads).div_ceil(tiles.len()).clamp(1, n) };
    let per_chunk = n.div_ceil(chunks);
    let items = tiles.len() * chunks;
    let out = SharedOut::new(y);
    let run = |item: usize| {
        let (t0, width) = tiles[item / chunks];
        let c = item % chunks;
        let outs = c * per_chunk..((c + 1) * per_chunk).min(n);
        if outs.is_empty() {
            return;
        }
        // SAFETY: each item writes the elements (t0..t0+width) × outs of y,
        // disjoint from every other item's.
        unsafe { tile_dispatch(w, bias, x, out, (t0, width), outs, (k, n)) }
    };
    if threads < 2 || work < PAR_MIN || items == 1 {
        (0..items).for_each(run);
    } else {
        candle_core::utils::barrier_pool().execute_chunked(items, |ids| ids.for_each(run));
    }
}

/// The vector instructions the row kernels use, detected once.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2,
    Portable,
}

fn isa() -> Isa {
    static ISA: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
    *ISA.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    })
}

/// One tile: rows `t0..t0+width` of `x`, outputs `outs`.
///
/// # Safety
/// `y` must point to an `m × n` row-major buffer whose elements
/// `(t0..t0+width) × outs` no one else touches during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_dispatch<R: RowSource>(
    w: &R,
    bias: Option<&[f32]>,
    x: &[f32],
    y: SharedOut,
    (t0, width): (usize, usize),
    outs: Range<usize>,
    (k, n): (usize, usize),
) {
    let b = |o: usize| bias.map_or(0.0, |b| b[o]);
    let panels = k.div_ceil(PANEL).max(1);
    if width == 1 {
        // One token: a gathered dot product per output.
        let xr = &x[t0 * k..(t0 + 1) * k];
        for o in outs {
            let mut acc = [0f32; 4];
            for p in 0..panels {
                let es = w.row(o, p);
                for e in 0..es.len() {
                    // SAFETY: e < len; the column is below k.
                    unsafe { acc[e & 3] += es.val(e) * xr.get_unchecked(es.col(e)) };
                }
            }
            // SAFETY: (t0, o) is this item's element.
            unsafe { *y.ptr().add(t0 * n + o) = (acc[0] + acc[1]) + (acc[2] + acc[3]) + b(o) };
        }
        return;
    }
    let t = if width > NARROW { WIDE } else { NARROW };
    // `x`'s rows transposed to (k, t), zero-padded, 64-byte aligned.
    let mut buf = vec![0f32; k * t + 16];
    let skip = buf.as_ptr().align_offset(64).min(16);
    let xt = &mut buf[skip..skip + k * t];
    let isa = isa();
    transpose_in(isa, &x[t0 * k..(t0 + width) * k], width, k, xt, t);
    let xt = &*xt;
    // The outputs transposed, (outs, t), starting from the bias.
    let mut yt = vec![0f32; outs.len() * t];
    for (o, dst) in outs.clone().zip(yt.chunks_exact_mut(t)) {
        dst.fill(b(o));
    }
    for p in 0..panels {
        for (o, dst) in outs.clone().zip(yt.chunks_exact_mut(t)) {
            let es = w.row(o, p);
            // SAFETY: the features were detected; every index is below k, so
            // each `t`-wide read lies inside `xt` (k × t, aligned), and
            // `dst` holds t.
            unsafe {
                match (isa, t) {
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx512, WIDE) => simd::avx512_32(es, xt.as_ptr(), dst.as_mut_ptr()),
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx512, _) => simd::avx512_16(es, xt.as_ptr(), dst.as_mut_ptr()),
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx2, WIDE) => simd::avx2_32(es, xt.as_ptr(), dst.as_mut_ptr()),
                    #[cfg(target_arch = "x86_64")]
                    (Isa::Avx2, _) => simd::avx2_16(es, xt.as_ptr(), dst.as_mut_ptr()),
                    (_, WIDE) => portable::<WIDE>(es, xt, dst),
                    _ => portable::<NARROW>(es, xt, dst),
                }
            }
        }
    }
    // SAFETY: rows t0.., columns `outs` are this item's elements.
    unsafe { transpose_out(isa, &yt, t, width, outs.len(), y.ptr().add(t0 * n + outs.start), n) };
}

/// `xt[i·t + j] = x[j·k + i]` for the `width` rows of `x` (`width ≤ t`;
/// the other columns of `xt` are left as they are).
fn transpose_in(isa: Isa, x: &[f32], width: usize, k: usize, xt: &mut [f32], t: usize) {
    let (j8, i8) = (width / 8 * 8, k / 8 * 8);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        for j in (0..j8).step_by(8) {
            for i in (0..i8).step_by(8) {
                // SAFETY: AVX2 is available (detected); the 8 × 8 block lies
                // inside `x` (rows j..j+8 < width, columns i..i+8 ≤ k) and
                // inside `xt` (rows i..i+8 < k, columns j..j+8 ≤ t).
                unsafe { simd::transpose8(x.as_ptr().add(j * k + i), k, xt.as_mut_ptr().add(i * t + j), t) }
            }
        }
    }
    let done = if isa != Isa::Portable && cfg!(target_arch = "x86_64") { (j8, i8) } else { (0, 0) };
    for (j, row) in x.chunks_exact(k).enumerate().take(width) {
        let from = if j < done.0 { done.1 } else { 0 };
        for (i, &v) in row.iter().enumerate().skip(from) {
            xt[i * t + j] = v;
        }
    }
}

/// `y[j·n + o] = yt[o·t + j]` for `j < width`, `o < outs`.
///
/// # Safety
/// `y` valid for writes of those elements.
unsafe fn transpose_out(isa: Isa, yt: &[f32], t: usize, width: usize, outs: usize, y: *mut f32, n: usize) {
    let (j8, o8) = (width / 8 * 8, outs / 8 * 8);
    let mut done = (0, 0);
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Portable {
        for o in (0..o8).step_by(8) {
            for j in (0..j8).step_by(8) {
                // SAFETY: AVX2 is available; the block lies inside `yt`
                // (rows o..o+8 ≤ outs, columns j..j+8 ≤ t) and inside this
                // item's part of `y` (rows j..j+8 ≤ width, columns o..o+8).
                unsafe { simd::transpose8(yt.as_ptr().add(o * t + j), t, y.add(j * n + o), n) }
            }
        }
        done = (j8, o8);
    }
    let _ = isa;
    for j in 0..width {
        let from = if j < done.0 { done.1 } else { 0 };
        for o in from..outs {
            // SAFETY: the caller's contract.
            unsafe { *y.add(j * n + o) = yt[o * t + j] };
        }
    }
}

/// `dst[0..T] += Σ_e vals[e] · xt[cols[e]·T..][..T]`, portable.
fn portable<const T: usize>(es: impl Entries, xt: &[f32], dst: &mut [f32]) {
    let mut acc = [0f32; T];
    acc.copy_from_slice(dst);
    for e in 0..es.len() {
        // SAFETY: e < len.
        let (i, v) = unsafe { (es.col(e), es.val(e)) };
        for (a, &xv) in acc.iter_mut().zip(&xt[i * T..(i + 1) * T]) {
            *a += v * xv;
        }
    }
    dst.copy_from_slice(&acc);
}

/// The row kernels in AVX-512 and AVX2 with FMA: the `T` accumulators of a
/// row live in registers; every stored value is broadcast and multiplied
/// into them with the transposed activations of its input.
#[cfg(target_arch = "x86_64")]
// The accumulator sets are summed lane by lane: indices read clearer here.
#[allow(clippy::needless_range_loop)]
mod simd {
    use super::Entries;
    use std::arch::x86_64::*;

    /// `dst[c·ds + r] = src[r·ss + c]` for an 8 × 8 block.
    ///
    /// # Safety
    /// AVX2 available; the block valid for reads at `src` and writes at `dst`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn transpose8(src: *const f32, ss: usize, dst: *mut f32, ds: usize) {
        // SAFETY: the caller's contract.
        unsafe {
            let r: [__m256; 8] = std::array::from_fn(|i| _mm256_loadu_ps(src.add(i * ss)));
            let t0 = _mm256_unpacklo_ps(r[0], r[1]);
            let t1 = _mm256_unpackhi_ps(r[0], r[1]);
            let t2 = _mm256_unpacklo_ps(r[2], r[3]);
            let t3 = _mm256_unpackhi_ps(r[2], r[3]);
            let t4 = _mm256_unpacklo_ps(r[4], r[5]);
            let t5 = _mm256_unpackhi_ps(r[4], r[5]);
            let t6 = _mm256_unpacklo_ps(r[6], r[7]);
            let t7 = _mm256_unpackhi_ps(r[6], r[7]);
            let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let out = [
                _mm256_permute2f128_ps::<0x20>(u0, u4),
                _mm256_permute2f128_ps::<0x20>(u1, u5),
                _mm256_permute2f128_ps::<0x20>(u2, u6),
                _mm256_permute2f128_ps::<0x20>(u3, u7),
                _mm256_permute2f128_ps::<0x31>(u0, u4),
                _mm256_permute2f128_ps::<0x31>(u1, u5),
                _mm256_permute2f128_ps::<0x31>(u2, u6),
                _mm256_permute2f128_ps::<0x31>(u3, u7),
            ];
            for (c, v) in out.iter().enumerate() {
                _mm256_storeu_ps(dst.add(c * ds), *v);
            }
        }
    }

    /// `dst[0..32] += Σ_e vals[e] · xt[32·cols[e]..][..32]`: 32 tokens in
    /// 2 zmm registers, four sets of accumulators (entries e mod 4) so that
    /// eight multiply-adds are in flight.
    ///
    /// # Safety
    /// AVX-512F available; `xt` 64-byte aligned and valid for reads of
    /// `32·(max(cols) + 1)` floats; `dst` valid for 32 reads and writes.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_32<E: Entries>(es: E, xt: *const f32, dst: *mut f32) {
        let n = es.len();
        // SAFETY (all accesses): the caller's contract.
        unsafe {
            let mut a = [[_mm512_setzero_ps(); 2]; 4];
            a[0] = [_mm512_loadu_ps(dst), _mm512_loadu_ps(dst.add(16))];
            let mut e = 0;
            while e + 4 <= n {
                for (u, acc) in a.iter_mut().enumerate() {
                    let p = xt.add(es.col(e + u) * 32);
                    let v = _mm512_set1_ps(es.val(e + u));
                    acc[0] = _mm512_fmadd_ps(v, _mm512_load_ps(p), acc[0]);
                    acc[1] = _mm512_fmadd_ps(v, _mm512_load_ps(p.add(16)), acc[1]);
                }
                e += 4;
            }
            while e < n {
                let p = xt.add(es.col(e) * 32);
                let v = _mm512_set1_ps(es.val(e));
                a[0][0] = _mm512_fmadd_ps(v, _mm512_load_ps(p), a[0][0]);
                a[0][1] = _mm512_fmadd_ps(v, _mm512_load_ps(p.add(16)), a[0][1]);
                e += 1;
            }
            for h in 0..2 {
                let s = _mm512_add_ps(_mm512_add_ps(a[0][h], a[1][h]), _mm512_add_ps(a[2][h], a[3][h]));
                _mm512_storeu_ps(dst.add(16 * h), s);
            }
        }
    }

    /// As [`avx512_32`] for 16 tokens (one zmm register, eight accumulators).
    ///
    /// # Safety
    /// As [`avx512_32`] with 16 for 32.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn avx512_16<E: Entries>(es: E, xt: *const f32, dst: *mut f32) {
        let n = es.len();
        // SAFETY (all accesses): the caller's contract.
        unsafe {
            let mut a = [_mm512_setzero_ps(); 8];
            a[0] = _mm512_loadu_ps(dst);
            let mut e = 0;
            while e + 8 <= n {
                for (u, acc) in a.iter_mut().enumerate() {
                    let p = xt.add(es.col(e + u) * 16);
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(es.val(e + u)), _mm512_load_ps(p), *acc);
                }
                e += 8;
            }
            while e < n {
                let p = xt.add(es.col(e) * 16);
                a[0] = _mm512_fmadd_ps(_mm512_set1_ps(es.val(e)), _mm512_load_ps(p), a[0]);
                e += 1;
            }
            let s0 = _mm512_add_ps(_mm512_add_ps(a[0], a[1]), _mm512_add_ps(a[2], a[3]));
            let s1 = _mm512_add_ps(_mm512_add_ps(a[4], a[5]), _mm512_add_ps(a[6], a[7]));
            _mm512_storeu_ps(dst, _mm512_add_ps(s0, s1));
        }
    }

    /// As [`avx512_32`] in AVX2: 32 tokens in 4 ymm registers, two sets.
    ///
    /// # Safety
    /// AVX2 and FMA available; otherwise as [`avx512_32`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_32<E: Entries>(es: E, xt: *const f32, dst: *mut f32) {
        let n = es.len();
        // SAFETY (all accesses): the caller's contract.
        unsafe {
            let mut a = [[_mm256_setzero_ps(); 4]; 2];
            for (r, acc) in a[0].iter_mut().enumerate() {
                *acc = _mm256_loadu_ps(dst.add(8 * r));
            }
            let mut e = 0;
            while e + 2 <= n {
                for (u, set) in a.iter_mut().enumerate() {
                    let p = xt.add(es.col(e + u) * 32);
                    let v = _mm256_set1_ps(es.val(e + u));
                    for (r, acc) in set.iter_mut().enumerate() {
                        *acc = _mm256_fmadd_ps(v, _mm256_load_ps(p.add(8 * r)), *acc);
                    }
                }
                e += 2;
            }
            if e < n {
                let p = xt.add(es.col(e) * 32);
                let v = _mm256_set1_ps(es.val(e));
                for (r, acc) in a[0].iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(v, _mm256_load_ps(p.add(8 * r)), *acc);
                }
            }
            for r in 0..4 {
                _mm256_storeu_ps(dst.add(8 * r), _mm256_add_ps(a[0][r], a[1][r]));
            }
        }
    }

    /// As [`avx2_32`] for 16 tokens (2 ymm registers, four sets).
    ///
    /// # Safety
    /// As [`avx2_32`] with 16 for 32.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn avx2_16<E: Entries>(es: E, xt: *const f32, dst: *mut f32) {
        let n = es.len();
        // SAFETY (all accesses): the caller's contract.
        unsafe {
            let mut a = [[_mm256_setzero_ps(); 2]; 4];
            a[0] = [_mm256_loadu_ps(dst), _mm256_loadu_ps(dst.add(8))];
            let mut e = 0;
            while e + 4 <= n {
                for (u, acc) in a.iter_mut().enumerate() {
                    let p = xt.add(es.col(e + u) * 16);
                    let v = _mm256_set1_ps(es.val(e + u));
                    acc[0] = _mm256_fmadd_ps(v, _mm256_load_ps(p), acc[0]);
                    acc[1] = _mm256_fmadd_ps(v, _mm256_load_ps(p.add(8)), acc[1]);
                }
                e += 4;
            }
            while e < n {
                let p = xt.add(es.col(e) * 16);
                let v = _mm256_set1_ps(es.val(e));
                a[0][0] = _mm256_fmadd_ps(v, _mm256_load_ps(p), a[0][0]);
                a[0][1] = _mm256_fmadd_ps(v, _mm256_load_ps(p.add(8)), a[0][1]);
                e += 1;
            }
            for h in 0..2 {
                let s = _mm256_add_ps(_mm256_add_ps(a[0][h], a[1][h]), _mm256_add_ps(a[2][h], a[3][h]));
                _mm256_storeu_ps(dst.add(8 * h), s);
            }
        }
    }
}
