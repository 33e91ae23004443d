//! Optimizers: SGD (momentum, Nesterov, coupled weight decay) and AdamW
//! (decoupled weight decay, Loshchilov & Hutter 2019), both with PyTorch's
//! update rules, and weight decay skipped for selected parameters (by default
//! biases and normalisation parameters).
//!
//! Candle's own `SGD` has no momentum and its `AdamW` one decay for all
//! parameters, hence these. State is kept as tensors by `<param>.<slot>` so a
//! checkpoint can carry it and a resumed run continues bit for bit.
//!
//! On the CPU, when a parameter, its gradient and its state are contiguous
//! f32 tensors, the whole update is one pass over the slices, in place (see
//! [`fused`]); otherwise (other devices or dtypes) it is composed from tensor
//! ops. Both compute the same f32 operations in the same order.

use std::cell::RefCell;
use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, Device, InplaceOp1, InplaceOp2, Layout, Storage, Tensor};
use espalier_core::select::Pattern;
use espalier_core::{Error, Param, ParamKind, ParamStore, Result};
use serde::{Deserialize, Serialize};

/// Optimizer settings as written in experiment configs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum OptimizerConfig {
    /// Stochastic gradient descent.
    Sgd {
        /// Base learning rate.
        lr: f64,
        /// Momentum factor (0 = none).
        #[serde(default)]
        momentum: f64,
        /// Nesterov momentum.
        #[serde(default)]
        nesterov: bool,
        /// L2 weight decay added to the gradient.
        #[serde(default)]
        weight_decay: f64,
        /// Extra name patterns exempt from weight decay.
        #[serde(default)]
        no_decay: Vec<String>,
    },
    /// Adam with decoupled weight decay.
    Adamw {
        /// Base learning rate.
        lr: f64,
        /// β₁.
        #[serde(default = "beta1")]
        beta1: f64,
        /// β₂.
        #[serde(default = "beta2")]
        beta2: f64,
        /// ε.
        #[serde(default = "eps")]
        eps: f64,
        /// Decoupled weight decay.
        #[serde(default)]
        weight_decay: f64,
        /// Extra name patterns exempt from weight decay.
        #[serde(default)]
        no_decay: Vec<String>,
    },
}

fn beta1() -> f64 {
    0.9
}
fn beta2() -> f64 {
    0.999
}
fn eps() -> f64 {
    1e-8
}

impl OptimizerConfig {
    /// The base learning rate.
    pub fn lr(&self) -> f64 {
        match self {
            OptimizerConfig::Sgd { lr, .. } | OptimizerConfig::Adamw { lr, .. } => *lr,
        }
    }

    /// Whether the update is normalised per weight (Adam/AdamW), so that a
    /// term added to the gradient loses its scale.
    pub fn adaptive(&self) -> bool {
        matches!(self, OptimizerConfig::Adamw { .. })
    }

    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        let lr = self.lr();
        if !(lr > 0.0 && lr.is_finite()) {
            return Err(format!("{path}.lr must be a positive number, found {lr}"));
        }
        let (wd, no_decay) = match self {
            OptimizerConfig::Sgd { momentum, nesterov, weight_decay, no_decay, .. } => {
                if !(0.0..1.0).contains(momentum) {
                    return Err(format!("{path}.momentum must be in [0, 1), found {momentum}"));
                }
                if *nesterov && *momentum == 0.0 {
                    return Err(format!("{path}.nesterov needs a momentum > 0"));
                }
                (*weight_decay, no_decay)
            }
            OptimizerConfig::Adamw { beta1, beta2, eps, weight_decay, no_decay, .. } => {
                for (k, v) in [("beta1", beta1), ("beta2", beta2)] {
                    if !(0.0..1.0).contains(v) {
                        return Err(format!("{path}.{k} must be in [0, 1), found {v}"));
                    }
                }
                if *eps <= 0.0 {
                    return Err(format!("{path}.eps must be > 0, found {eps}"));
                }
                (*weight_decay, no_decay)
            }
        };
        if wd < 0.0 {
            return Err(format!("{path}.weight_decay must be >= 0, found {wd}"));
        }
        for (i, p) in no_decay.iter().enumerate() {
            Pattern::parse(p).map_err(|e| format!("{path}.no_decay[{i}]: {e}"))?;
        }
        Ok(())
    }

    /// Builds the optimizer over the trainable parameters of `params`.
    pub fn build(&self, params: &ParamStore) -> Result<Box<dyn Optimizer>> {
        self.build_with(params, true)
    }

    /// The optimizer composed from candle tensor ops only (no fused CPU
    /// path): the baseline that `espalier bench` times the fused path against.
    pub fn build_reference(&self, params: &ParamStore) -> Result<Box<dyn Optimizer>> {
        self.build_with(params, false)
    }

    /// [`OptimizerConfig::build`], with the fused CPU path on or off.
    fn build_with(&self, params: &ParamStore, fused: bool) -> Result<Box<dyn Optimizer>> {
        let no_decay = match self {
            OptimizerConfig::Sgd { no_decay, .. } | OptimizerConfig::Adamw { no_decay, .. } => no_decay,
        };
        let pats = no_decay.iter().map(|s| Pattern::parse(s)).collect::<Result<Vec<_>>>()?;
        let slots: Vec<Slot> = params
            .trainable()
            .map(|p| Slot {
                decay: !matches!(p.kind(), ParamKind::Bias | ParamKind::Norm)
                    && !pats.iter().any(|pat| pat.matches(p.name())),
                param: p.clone(),
                state: Vec::new(),
            })
            .collect();
        Ok(match *self {
            OptimizerConfig::Sgd { lr, momentum, nesterov, weight_decay, .. } => {
                Box::new(Sgd { lr, momentum, nesterov, weight_decay, slots, fused })
            }
            OptimizerConfig::Adamw { lr, beta1, beta2, eps, weight_decay, .. } => {
                Box::new(AdamW { lr, beta1, beta2, eps, weight_decay, step: 0, slots, fused })
            }
        })
    }
}

/// An optimizer over a fixed set of parameters.
pub trait Optimizer: Send {
    /// The base learning rate (schedules multiply it).
    fn base_lr(&self) -> f64;
    /// Sets the base learning rate (a phase with a rate of its own).
    fn set_base_lr(&mut self, lr: f64);
    /// One update with learning rate `lr`; parameters without a gradient are
    /// left alone.
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()>;
    /// The state, keyed `<param>.<slot>`.
    fn state(&self) -> BTreeMap<String, Tensor>;
    /// Restores a state saved by [`Optimizer::state`].
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()>;
    /// Forgets all state (fresh moments, step count 0).
    fn reset(&mut self);
}

struct Slot {
    param: Param,
    decay: bool,
    /// Per-slot state tensors (empty until the first step).
    state: Vec<Tensor>,
}

fn grad_of<'a>(grads: &'a GradStore, p: &Param) -> Option<&'a Tensor> {
    grads.get(p.tensor())
}

/// A copy of `t` that shares no storage with it: the fused path updates
/// state in place, so state handed out or taken in must not be shared.
fn owned(t: &Tensor) -> Result<Tensor> {
    Ok(if t.is_contiguous() { t.copy()? } else { t.contiguous()? })
}

fn save_slots(slots: &[Slot], names: &[&str]) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for s in slots {
        for (t, n) in s.state.iter().zip(names) {
            out.insert(format!("{}.{n}", s.param.name()), owned(t).expect("copying optimizer state"));
        }
    }
    out
}

fn load_slots(slots: &mut [Slot], names: &[&str], state: &BTreeMap<String, Tensor>) -> Result<()> {
    for s in slots.iter_mut() {
        let found: Vec<Option<&Tensor>> = names.iter().map(|n| state.get(&format!("{}.{n}", s.param.name()))).collect();
        if found.iter().all(|t| t.is_none()) {
            s.state.clear();
            continue;
        }
        let mut st = Vec::new();
        for (t, n) in found.into_iter().zip(names) {
            let t = t.ok_or_else(|| Error::msg(format!("optimizer state `{}.{n}` missing", s.param.name())))?;
            if t.dims() != s.param.tensor().dims() {
                return Err(Error::Shape {
                    name: format!("{}.{n}", s.param.name()),
                    expected: s.param.dims(),
                    found: t.dims().to_vec(),
                    context: Some("optimizer state".into()),
                });
            }
            st.push(owned(&t.to_device(s.param.tensor().device())?)?);
        }
        s.state = st;
    }
    Ok(())
}

fn scalar(name: &str, v: f64) -> (String, Tensor) {
    (name.to_string(), Tensor::new(&[v as f32], &Device::Cpu).expect("scalar tensor"))
}

/// SGD with PyTorch's rule: g ← ∇ + λw; b ← μb + g (b₀ = g);
/// g ← g + μb (Nesterov) or b; w ← w − η g.
pub struct Sgd {
    lr: f64,
    momentum: f64,
    nesterov: bool,
    weight_decay: f64,
    slots: Vec<Slot>,
    /// Take the fused CPU path where it applies (off only to test it).
    fused: bool,
}

impl Optimizer for Sgd {
    fn base_lr(&self) -> f64 {
        self.lr
    }
    fn set_base_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for s in &mut self.slots {
            let Some(g) = grad_of(grads, &s.param) else { continue };
            // The values change below, in place or not: derived copies
            // (packed sparse weights) go stale.
            s.param.mark_changed();
            let wd = if s.decay { self.weight_decay } else { 0.0 };
            let h = fused::SgdHyper {
                lr: lr as f32,
                weight_decay: wd as f32,
                momentum: self.momentum as f32,
                nesterov: self.nesterov,
            };
            if self.fused && fused::sgd(s.param.tensor(), g, &mut s.state, &h)? {
                continue;
            }
            let w = s.param.tensor();
            let mut g = if wd > 0.0 { (g + (w * wd)?)? } else { g.clone() };
            if self.momentum > 0.0 {
                let buf = match s.state.first() {
                    Some(b) => ((b * self.momentum)? + &g)?,
                    // A copy: the buffer is updated in place by the fused path.
                    None => owned(&g)?,
                };
                g = if self.nesterov { (&g + (&buf * self.momentum)?)? } else { buf.clone() };
                s.state = vec![buf];
            }
            s.param.var().set(&(w - (g * lr)?)?)?;
        }
        Ok(())
    }
    fn state(&self) -> BTreeMap<String, Tensor> {
        save_slots(&self.slots, &["momentum_buffer"])
    }
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        load_slots(&mut self.slots, &["momentum_buffer"], state)
    }
    fn reset(&mut self) {
        self.slots.iter_mut().for_each(|s| s.state.clear());
    }
}

/// AdamW with PyTorch's rule: w ← w(1 − ηλ); m ← β₁m + (1−β₁)g;
/// v ← β₂v + (1−β₂)g²; w ← w − η m̂ / (√v̂ + ε).
pub struct AdamW {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    step: u64,
    slots: Vec<Slot>,
    /// Take the fused CPU path where it applies (off only to test it).
    fused: bool,
}

impl Optimizer for AdamW {
    fn base_lr(&self) -> f64 {
        self.lr
    }
    fn set_base_lr(&mut self, lr: f64) {
        self.lr = lr;
    }
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grad_of(grads, &s.param) else { continue };
            s.param.mark_changed();
            let decay = if s.decay && self.weight_decay > 0.0 { 1.0 - lr * self.weight_decay } else { 1.0 };
            let h = fused::AdamHyper {
                lr: lr as f32,
                beta1: self.beta1 as f32,
                beta2: self.beta2 as f32,
                one_minus_beta1: (1.0 - self.beta1) as f32,
                one_minus_beta2: (1.0 - self.beta2) as f32,
                inv_bc1: (1.0 / bc1) as f32,
                inv_bc2: (1.0 / bc2) as f32,
                eps: self.eps as f32,
                decay: decay as f32,
            };
            if self.fused && fused::adamw(s.param.tensor(), g, &mut s.state, &h)? {
                continue;
            }
            let (m, v) = match s.state.as_slice() {
                [m, v] => (m.clone(), v.clone()),
                _ => (g.zeros_like()?, g.zeros_like()?),
            };
            let m = ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let w = s.param.tensor();
            let w = if decay != 1.0 { (w * decay)? } else { w.clone() };
            let denom = ((&v / bc2)?.sqrt()? + self.eps)?;
            let upd = ((&m / bc1)? / denom)?;
            s.param.var().set(&(w - (upd * lr)?)?)?;
            s.state = vec![m, v];
        }
        Ok(())
    }
    fn state(&self) -> BTreeMap<String, Tensor> {
        let mut st = save_slots(&self.slots, &["exp_avg", "exp_avg_sq"]);
        st.extend([scalar("__step__", self.step as f64)]);
        st
    }
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        load_slots(&mut self.slots, &["exp_avg", "exp_avg_sq"], state)?;
        self.step = match state.get("__step__") {
            Some(t) => t.flatten_all()?.to_vec1::<f32>()?[0] as u64,
            None => 0,
        };
        Ok(())
    }
    fn reset(&mut self) {
        self.step = 0;
        self.slots.iter_mut().for_each(|s| s.state.clear());
    }
}

/// The fused CPU updates: one pass over contiguous f32 slices, in place.
///
/// Soundness: every slice is borrowed from storage under candle's own lock
/// for it. The parameter is written through `Tensor::inplace_op2`, which
/// holds the parameter's write lock and the gradient's read lock; inside it
/// each state tensor is written through a nested `Tensor::inplace_op1`, under
/// its write lock. Nothing is cast from `&` to `&mut`; the closures reach the
/// outer slices through the op's `RefCell`. The locks are taken in the order
/// parameter, state, so no two steps can deadlock, and the tensors are
/// checked to be pairwise distinct storages first (a write lock taken twice
/// would deadlock), else the caller falls back to tensor ops.
///
/// The arithmetic is the fallback's, operation for operation, in f32 (candle
/// computes `t * s` for an f64 scalar `s` as `t · (s as f32) + 0`).
pub(crate) mod fused {
    use super::*;

    type CResult<T> = candle_core::Result<T>;

    /// SGD scalars, as f32.
    pub struct SgdHyper {
        pub lr: f32,
        /// 0 where the parameter is exempt.
        pub weight_decay: f32,
        pub momentum: f32,
        pub nesterov: bool,
    }

    /// AdamW scalars for one step, as f32.
    pub struct AdamHyper {
        pub lr: f32,
        pub beta1: f32,
        pub beta2: f32,
        pub one_minus_beta1: f32,
        pub one_minus_beta2: f32,
        /// 1 / (1 − β₁ᵗ).
        pub inv_bc1: f32,
        /// 1 / (1 − β₂ᵗ).
        pub inv_bc2: f32,
        pub eps: f32,
        /// 1 − ηλ, or 1 where the parameter is exempt.
        pub decay: f32,
    }

    /// Whether `t` is a contiguous f32 tensor on the CPU.
    fn fusable(t: &Tensor) -> bool {
        t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous()
    }

    /// The address of `t`'s storage (equal for tensors that share it).
    fn storage_addr(t: &Tensor) -> usize {
        let (s, _) = t.storage_and_layout();
        &*s as *const Storage as usize
    }

    fn distinct(ts: &[&Tensor]) -> bool {
        let addrs: Vec<usize> = ts.iter().map(|t| storage_addr(t)).collect();
        addrs.iter().enumerate().all(|(i, a)| !addrs[..i].contains(a))
    }

    /// The gradient as a contiguous f32 CPU tensor of `w`'s shape, if it can be.
    fn prepare_grad(w: &Tensor, g: &Tensor) -> Result<Option<Tensor>> {
        if !fusable(w) || !g.device().is_cpu() || g.dtype() != DType::F32 || g.dims() != w.dims() {
            return Ok(None);
        }
        Ok(Some(if g.is_contiguous() { g.clone() } else { g.contiguous()? }))
    }

    /// Whether `state` holds `n` usable tensors for `w` (empty = first step).
    fn state_ready(w: &Tensor, g: &Tensor, state: &[Tensor], n: usize) -> bool {
        if state.is_empty() {
            return true;
        }
        state.len() == n && state.iter().all(|t| fusable(t) && t.dims() == w.dims()) && {
            let mut all = vec![w, g];
            all.extend(state.iter());
            distinct(&all)
        }
    }

    fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout, name: &str) -> CResult<&'a mut [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
            _ => Err(candle_core::Error::Msg(format!("{name}: expected a contiguous f32 tensor"))),
        }
    }

    fn slice<'a>(s: &'a CpuStorage, l: &Layout, name: &str) -> CResult<&'a [f32]> {
        match (s, l.contiguous_offsets()) {
            (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
            _ => Err(candle_core::Error::Msg(format!("{name}: expected a contiguous f32 tensor"))),
        }
    }

    /// Runs a closure on a tensor's elements, mutably, under its write lock.
    struct WithMut<F>(RefCell<Option<F>>);

    impl<F: FnOnce(&mut [f32]) -> CResult<()>> InplaceOp1 for WithMut<F> {
        fn name(&self) -> &'static str {
            "espalier-optim-state"
        }
        fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> CResult<()> {
            let f = self.0.borrow_mut().take().expect("the op runs once");
            f(slice_mut(s, l, "optimizer state")?)
        }
    }

    fn with_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> CResult<()>) -> CResult<()> {
        t.inplace_op1(&WithMut(RefCell::new(Some(f))))
    }

    /// Runs a closure on a parameter's elements (mutably) and its gradient's.
    struct WithParam<F>(RefCell<Option<F>>);

    impl<F: FnOnce(&mut [f32], &[f32]) -> CResult<()>> InplaceOp2 for WithParam<F> {
        fn name(&self) -> &'static str {
            "espalier-optim-param"
        }
        fn cpu_fwd(&self, w: &mut CpuStorage, wl: &Layout, g: &CpuStorage, gl: &Layout) -> CResult<()> {
            let f = self.0.borrow_mut().take().expect("the op runs once");
            f(slice_mut(w, wl, "parameter")?, slice(g, gl, "gradient")?)
        }
    }

    fn with_param(w: &Tensor, g: &Tensor, f: impl FnOnce(&mut [f32], &[f32]) -> CResult<()>) -> CResult<()> {
        w.inplace_op2(g, &WithParam(RefCell::new(Some(f))))
    }

    /// Parameters smaller than this are updated on the calling thread: waking
    /// candle's pool costs more than the loop (candle's element-wise ops use
    /// the same threshold).
    const PAR_MIN: usize = 1 << 16;
    /// Elements per chunk handed to a worker.
    const CHUNK: usize = 1 << 14;

    /// Base pointers of the slices one update reads and writes.
    struct Bufs {
        w: *mut f32,
        g: *const f32,
        a: *mut f32,
        b: *mut f32,
    }
    // SAFETY: the workers touch disjoint ranges of the buffers, which outlive
    // the (blocking) pool call.
    unsafe impl Sync for Bufs {}

    /// Runs the element-wise `kernel(w, g, a, b)` over `w`, its gradient and
    /// up to two state buffers (`a`, `b`: each as long as `w`, or empty when
    /// unused), in chunks spread over candle's pool for big parameters. The
    /// update of an element depends on that element alone, so the result is
    /// bit for bit the one of a single call. (A single-threaded update was a
    /// fifth of an MNIST MLP epoch with AdamW: its loop is bound by memory
    /// traffic and one core's share of it.)
    fn par_update(
        w: &mut [f32],
        g: &[f32],
        a: &mut [f32],
        b: &mut [f32],
        kernel: impl Fn(&mut [f32], &[f32], &mut [f32], &mut [f32]) + Sync,
    ) {
        let n = w.len();
        assert!(g.len() == n && (a.is_empty() || a.len() == n) && (b.is_empty() || b.len() == n));
        if n < PAR_MIN || espalier_models::fused::num_threads() < 2 {
            return kernel(w, g, a, b);
        }
        let bufs = Bufs { w: w.as_mut_ptr(), g: g.as_ptr(), a: a.as_mut_ptr(), b: b.as_mut_ptr() };
        let (has_a, has_b) = (!a.is_empty(), !b.is_empty());
        candle_core::utils::barrier_pool().execute_chunked(n.div_ceil(CHUNK), |chunks| {
            let start = chunks.start * CHUNK;
            let len = (chunks.end * CHUNK).min(n) - start;
            let bufs = &bufs;
            // SAFETY: `start..start + len` lies inside every buffer that is
            // used, and the pool hands each range to one worker only.
            unsafe {
                let part = |p: *mut f32, used: bool| {
                    if used {
                        std::slice::from_raw_parts_mut(p.add(start), len)
                    } else {
                        &mut []
                    }
                };
                kernel(
                    std::slice::from_raw_parts_mut(bufs.w.add(start), len),
                    std::slice::from_raw_parts(bufs.g.add(start), len),
                    part(bufs.a, has_a),
                    part(bufs.b, has_b),
                )
            }
        });
    }

    /// One SGD step of `w` in place; `Ok(false)` when the fused path does not
    /// apply (nothing was changed).
    pub fn sgd(w: &Tensor, g: &Tensor, state: &mut Vec<Tensor>, h: &SgdHyper) -> Result<bool> {
        let Some(g) = prepare_grad(w, g)? else { return Ok(false) };
        if h.momentum == 0.0 {
            if !distinct(&[w, &g]) {
                return Ok(false);
            }
            with_param(w, &g, |w, g| {
                par_update(w, g, &mut [], &mut [], |w, g, _, _| sgd_plain(w, g, h));
                Ok(())
            })?;
            return Ok(true);
        }
        if !state_ready(w, &g, state, 1) {
            return Ok(false);
        }
        let first = state.is_empty();
        if first {
            if !distinct(&[w, &g]) {
                return Ok(false);
            }
            state.push(Tensor::zeros(w.shape(), DType::F32, &Device::Cpu)?);
        }
        let b = &state[0];
        with_param(w, &g, |w, g| {
            with_mut(b, |b| {
                par_update(w, g, b, &mut [], |w, g, b, _| sgd_momentum(w, g, b, first, h));
                Ok(())
            })
        })?;
        Ok(true)
    }

    espalier_core::simd_fn! {
        fn sgd_plain(w: &mut [f32], g: &[f32], h: &SgdHyper) {
            let (lr, wd) = (h.lr, h.weight_decay);
            if wd > 0.0 {
                for (w, &g) in w.iter_mut().zip(g) {
                    *w -= (g + *w * wd) * lr;
                }
            } else {
                for (w, &g) in w.iter_mut().zip(g) {
                    *w -= g * lr;
                }
            }
        }
    }

    espalier_core::simd_fn! {
        /// d = ∇ + λw; b = μb + d (b₀ = d); d = d + μb (Nesterov) or b; w −= ηd.
        fn sgd_momentum(w: &mut [f32], g: &[f32], b: &mut [f32], first: bool, h: &SgdHyper) {
            // Monomorphised per case so that each loop is branch-free and vectorises.
            #[inline(always)]
            fn run<const DECAY: bool, const FIRST: bool, const NESTEROV: bool>(
                w: &mut [f32],
                g: &[f32],
                b: &mut [f32],
                h: &SgdHyper,
            ) {
                let (lr, wd, mu) = (h.lr, h.weight_decay, h.momentum);
                for ((w, &g), b) in w.iter_mut().zip(g).zip(b.iter_mut()) {
                    let d = if DECAY { g + *w * wd } else { g };
                    *b = if FIRST { d } else { *b * mu + d };
                    let d = if NESTEROV { d + *b * mu } else { *b };
                    *w -= d * lr;
                }
            }
            match (h.weight_decay > 0.0, first, h.nesterov) {
                (false, false, false) => run::<false, false, false>(w, g, b, h),
                (false, false, true) => run::<false, false, true>(w, g, b, h),
                (false, true, false) => run::<false, true, false>(w, g, b, h),
                (false, true, true) => run::<false, true, true>(w, g, b, h),
                (true, false, false) => run::<true, false, false>(w, g, b, h),
                (true, false, true) => run::<true, false, true>(w, g, b, h),
                (true, true, false) => run::<true, true, false>(w, g, b, h),
                (true, true, true) => run::<true, true, true>(w, g, b, h),
            }
        }
    }

    /// One AdamW step of `w` in place; `Ok(false)` when the fused path does
    /// not apply (nothing was changed).
    pub fn adamw(w: &Tensor, g: &Tensor, state: &mut Vec<Tensor>, h: &AdamHyper) -> Result<bool> {
        let Some(g) = prepare_grad(w, g)? else { return Ok(false) };
        if !state_ready(w, &g, state, 2) {
            return Ok(false);
        }
        if state.is_empty() {
            if !distinct(&[w, &g]) {
                return Ok(false);
            }
            *state = vec![
                Tensor::zeros(w.shape(), DType::F32, &Device::Cpu)?,
                Tensor::zeros(w.shape(), DType::F32, &Device::Cpu)?,
            ];
        }
        let (m, v) = (&state[0], &state[1]);
        with_param(w, &g, |w, g| {
            with_mut(m, |m| {
                with_mut(v, |v| {
                    par_update(w, g, m, v, |w, g, m, v| adamw_kernel(w, g, m, v, h));
                    Ok(())
                })
            })
        })?;
        Ok(true)
    }

    espalier_core::simd_fn! {
        /// m = β₁m + (1−β₁)g; v = β₂v + (1−β₂)g²; w = w(1 − ηλ) − η (m/bc₁) / (√(v/bc₂) + ε).
        fn adamw_kernel(w: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], h: &AdamHyper) {
            let AdamHyper { lr, beta1, beta2, one_minus_beta1, one_minus_beta2, inv_bc1, inv_bc2, eps, decay } = *h;
            for (((w, &g), m), v) in w.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                *m = *m * beta1 + g * one_minus_beta1;
                *v = *v * beta2 + (g * g) * one_minus_beta2;
                let denom = (*v * inv_bc2).sqrt() + eps;
                let upd = (*m * inv_bc1) / denom;
                *w = *w * decay - upd * lr;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;
    use espalier_core::init::Init;
    use espalier_core::ParamBuilder;

    fn store() -> Result<ParamStore> {
        let pb = ParamBuilder::from_seed(0, DType::F32, &Device::Cpu);
        pb.param("w", &[2], ParamKind::Weight, Init::Const(1.0))?;
        pb.param("b", &[2], ParamKind::Bias, Init::Const(1.0))?;
        Ok(pb.finish().0)
    }

    // Reference values from the update rules of torch.optim.SGD / AdamW
    // (PyTorch 2.x) with loss = sum(3·w + 3·b), evaluated by hand.
    #[test]
    fn sgd_nesterov_matches_pytorch_rule() -> Result<()> {
        let ps = store()?;
        let cfg = OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, nesterov: true, weight_decay: 0.5, no_decay: vec![] };
        let mut opt = cfg.build(&ps)?;
        for _ in 0..2 {
            let loss = ((ps.get("w")?.tensor() * 3.0)?.sum_all()? + (ps.get("b")?.tensor() * 3.0)?.sum_all()?)?;
            opt.step(&loss.backward()?, 0.1)?;
        }
        // w: g1 = 3 + 0.5 = 3.5, b1 = 3.5, d = 3.5 + 3.15 = 6.65, w = 0.335;
        //    g2 = 3 + 0.1675 = 3.1675, b2 = 3.15 + 3.1675 = 6.3175,
        //    d = 3.1675 + 5.68575 = 8.85325, w = 0.335 - 0.885325 = -0.550325
        // b (no decay): d1 = 3 + 2.7 = 5.7, b = 0.43; b2 = 5.7, d2 = 3 + 5.13 = 8.13, b = -0.383
        let w = ps.get("w")?.tensor().to_vec1::<f32>()?;
        let b = ps.get("b")?.tensor().to_vec1::<f32>()?;
        assert!((w[0] + 0.550325).abs() < 1e-5, "{w:?}");
        assert!((b[0] + 0.383).abs() < 1e-5, "{b:?}");
        Ok(())
    }

    #[test]
    fn adamw_first_step_and_state_roundtrip() -> Result<()> {
        let ps = store()?;
        let cfg = OptimizerConfig::Adamw {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            no_decay: vec![],
        };
        let mut opt = cfg.build(&ps)?;
        let loss = (ps.get("w")?.tensor() * 3.0)?.sum_all()?;
        opt.step(&loss.backward()?, 0.01)?;
        // First Adam step moves by lr·sign(g) (≈ 1 − 1e-8 relative): w = 1·(1 − 0.001) − 0.01.
        let w = ps.get("w")?.tensor().to_vec1::<f32>()?;
        assert!((w[0] - 0.989).abs() < 1e-6, "{w:?}");
        // b got no gradient: untouched.
        assert_eq!(ps.get("b")?.tensor().to_vec1::<f32>()?, [1.0, 1.0]);
        let st = opt.state();
        assert!(st.contains_key("w.exp_avg") && st.contains_key("__step__"));
        let mut opt2 = cfg.build(&ps)?;
        opt2.load_state(&st)?;
        assert_eq!(opt2.state()["w.exp_avg_sq"].to_vec1::<f32>()?, st["w.exp_avg_sq"].to_vec1::<f32>()?);
        Ok(())
    }

    /// Parameters of three kinds: weights with decay, a weight exempted by
    /// pattern, a bias (exempt by kind).
    fn mixed_store() -> Result<ParamStore> {
        let pb = ParamBuilder::from_seed(3, DType::F32, &Device::Cpu);
        pb.param("l1.weight", &[16, 24], ParamKind::Weight, Init::Normal { std: 0.5 })?;
        pb.param("l1.bias", &[16], ParamKind::Bias, Init::Normal { std: 0.5 })?;
        pb.param("emb.weight", &[8, 16], ParamKind::Weight, Init::Normal { std: 0.5 })?;
        pb.param("l2.weight", &[24, 8], ParamKind::Weight, Init::Normal { std: 0.5 })?;
        Ok(pb.finish().0)
    }

    /// A loss whose gradients change from step to step.
    fn loss(ps: &ParamStore, step: usize) -> Result<Tensor> {
        let x = Tensor::new(&[[0.3f32, -1.2, 0.7, 2.0], [1.5, 0.1, -0.4, 0.9]][step % 2], &Device::Cpu)?;
        let x = (x * (1.0 + 0.2 * step as f64))?.broadcast_as((6, 4))?.reshape((4, 6))?.repeat((1, 4))?; // (4, 24)
        let h = x.matmul(&ps.get("l1.weight")?.tensor().t()?)?.broadcast_add(ps.get("l1.bias")?.tensor())?;
        let h = h.tanh()?.matmul(&ps.get("emb.weight")?.tensor().t()?)?; // (4, 8)
        let y = h.matmul(&ps.get("l2.weight")?.tensor().t()?)?; // (4, 24)
        Ok((y - x.tanh()?)?.sqr()?.mean_all()?)
    }

    fn assert_close(a: &Tensor, b: &Tensor, what: &str) -> Result<()> {
        let (a, b) = (a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            assert!(x.is_finite(), "{what}[{i}] = {x}");
            assert!((x - y).abs() <= 1e-6 * x.abs().max(y.abs()).max(1e-3), "{what}[{i}]: fused {x} vs fallback {y}");
        }
        Ok(())
    }

    /// One configuration per fused update loop: SGD with Nesterov, with
    /// plain momentum, without momentum (weight decay on every parameter),
    /// and AdamW; `no_decay` exempts parameters from decay in all but the
    /// third.
    fn fused_test_configs(no_decay: &[String]) -> [OptimizerConfig; 4] {
        let no_decay = no_decay.to_vec();
        [
            OptimizerConfig::Sgd {
                lr: 0.05,
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.01,
                no_decay: no_decay.clone(),
            },
            OptimizerConfig::Sgd {
                lr: 0.05,
                momentum: 0.8,
                nesterov: false,
                weight_decay: 0.01,
                no_decay: no_decay.clone(),
            },
            OptimizerConfig::Sgd { lr: 0.05, momentum: 0.0, nesterov: false, weight_decay: 0.1, no_decay: vec![] },
            OptimizerConfig::Adamw { lr: 0.01, beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1, no_decay },
        ]
    }

    #[test]
    fn fused_matches_tensor_ops() -> Result<()> {
        let no_decay = vec!["emb.*".to_string()];
        let configs = fused_test_configs(&no_decay);
        for cfg in &configs {
            let (pf, pt) = (mixed_store()?, mixed_store()?);
            let (mut of, mut ot) = (cfg.build_with(&pf, true)?, cfg.build_with(&pt, false)?);
            for step in 0..6 {
                let (mut gf, gt) = (loss(&pf, step)?.backward()?, loss(&pt, step)?.backward()?);
                // A transposed (non-contiguous) gradient, as a regularizer could leave.
                let w = pf.get("l2.weight")?;
                let g = gf.get(w.tensor()).expect("gradient").t()?.contiguous()?.t()?;
                assert!(!g.is_contiguous());
                gf.insert(w.tensor(), g);
                let lr = cfg.lr() * (1.0 - 0.1 * step as f64);
                of.step(&gf, lr)?;
                ot.step(&gt, lr)?;
            }
            for p in pf.trainable() {
                assert_close(p.tensor(), pt.get(p.name())?.tensor(), p.name())?;
            }
            let (sf, st) = (of.state(), ot.state());
            assert_eq!(sf.keys().collect::<Vec<_>>(), st.keys().collect::<Vec<_>>());
            for (k, t) in &sf {
                assert_close(t, &st[k], k)?;
            }
        }
        Ok(())
    }

    /// A parameter big enough for the update to be spread over the pool
    /// (and not a whole number of chunks): the same as the composed update.
    #[test]
    fn fused_matches_tensor_ops_on_big_parameters() -> Result<()> {
        let store = || -> Result<ParamStore> {
            let pb = ParamBuilder::from_seed(5, DType::F32, &Device::Cpu);
            pb.param("big.weight", &[333, 301], ParamKind::Weight, Init::Normal { std: 0.5 })?;
            Ok(pb.finish().0)
        };
        let loss = |ps: &ParamStore, step: usize| -> Result<Tensor> {
            let w = ps.get("big.weight")?.tensor();
            Ok(((w.sqr()? * 0.5)? + (w.sin()? * (1.0 + step as f64))?)?.sum_all()?)
        };
        // The shared configurations, and plain SGD without any decay.
        let plain =
            OptimizerConfig::Sgd { lr: 0.05, momentum: 0.0, nesterov: false, weight_decay: 0.0, no_decay: vec![] };
        for cfg in fused_test_configs(&[]).into_iter().chain([plain]) {
            let (pf, pt) = (store()?, store()?);
            let (mut of, mut ot) = (cfg.build_with(&pf, true)?, cfg.build_with(&pt, false)?);
            for step in 0..3 {
                of.step(&loss(&pf, step)?.backward()?, cfg.lr())?;
                ot.step(&loss(&pt, step)?.backward()?, cfg.lr())?;
            }
            assert_close(pf.get("big.weight")?.tensor(), pt.get("big.weight")?.tensor(), "big.weight")?;
        }
        Ok(())
    }

    #[test]
    fn fused_state_is_not_shared() -> Result<()> {
        let ps = mixed_store()?;
        let cfg = OptimizerConfig::Adamw {
            lr: 0.01,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
            no_decay: vec![],
        };
        let mut opt = cfg.build(&ps)?;
        opt.step(&loss(&ps, 0)?.backward()?, 0.01)?;
        let saved = opt.state();
        let before = saved["l1.weight.exp_avg"].to_vec2::<f32>()?;
        // A second optimizer resumed from the saved state, and both stepped:
        // the saved tensors stay as they were.
        let mut resumed = cfg.build(&ps)?;
        resumed.load_state(&saved)?;
        opt.step(&loss(&ps, 1)?.backward()?, 0.01)?;
        resumed.step(&loss(&ps, 1)?.backward()?, 0.01)?;
        assert_eq!(saved["l1.weight.exp_avg"].to_vec2::<f32>()?, before);
        assert_ne!(opt.state()["l1.weight.exp_avg"].to_vec2::<f32>()?, before);
        Ok(())
    }

    #[test]
    fn fused_path_applies_only_where_sound() -> Result<()> {
        let dev = &Device::Cpu;
        let h = fused::SgdHyper { lr: 0.1, weight_decay: 0.0, momentum: 0.9, nesterov: false };
        let w = Tensor::ones(4, DType::F32, dev)?;
        let g = Tensor::new(&[1f32, 2., 3., 4.], dev)?;
        let mut state = Vec::new();
        assert!(fused::sgd(&w, &g, &mut state, &h)?);
        assert!(fused::sgd(&w, &g, &mut state, &h)?);
        // b = 0.9·g + g = 1.9g; w = 1 − 0.1·g − 0.1·1.9g = 1 − 0.29g.
        assert_close(&w, &Tensor::new(&[0.71f32, 0.42, 0.13, -0.16], dev)?, "w")?;
        assert_close(&state[0], &(&g * 1.9)?, "momentum_buffer")?;
        // Other dtypes, a gradient that is the parameter, shared state: not fused, untouched.
        let w64 = w.to_dtype(DType::F64)?;
        assert!(!fused::sgd(&w64, &g.to_dtype(DType::F64)?, &mut Vec::new(), &h)?);
        assert!(!fused::sgd(&w, &w.clone(), &mut Vec::new(), &h)?);
        assert!(!fused::sgd(&w, &g, &mut vec![g.clone()], &h)?);
        let a = fused::AdamHyper {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.99,
            one_minus_beta1: 0.1,
            one_minus_beta2: 0.01,
            inv_bc1: 10.0,
            inv_bc2: 100.0,
            eps: 1e-8,
            decay: 1.0,
        };
        let m = Tensor::zeros(4, DType::F32, dev)?;
        assert!(!fused::adamw(&w, &g, &mut vec![m.clone(), m.clone()], &a)?);
        assert_close(&w, &Tensor::new(&[0.71f32, 0.42, 0.13, -0.16], dev)?, "w untouched")?;
        // First AdamW step: w −= lr·sign(g).
        let mut state = Vec::new();
        assert!(fused::adamw(&w, &g, &mut state, &a)?);
        assert_close(&w, &Tensor::new(&[0.61f32, 0.32, 0.03, -0.26], dev)?, "w")?;
        Ok(())
    }
}
