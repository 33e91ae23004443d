//! Optimizers: SGD (momentum, Nesterov, coupled weight decay) and AdamW
//! (decoupled weight decay, Loshchilov & Hutter 2019), both with PyTorch's
//! update rules, and weight decay skipped for selected parameters (by default
//! biases and normalisation parameters).
//!
//! Candle's own `SGD` has no momentum and its `AdamW` one decay for all
//! parameters, hence these. State is kept as tensors by `<param>.<slot>` so a
//! checkpoint can carry it and a resumed run continues bit for bit.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{Device, Tensor};
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
                Box::new(Sgd { lr, momentum, nesterov, weight_decay, slots })
            }
            OptimizerConfig::Adamw { lr, beta1, beta2, eps, weight_decay, .. } => {
                Box::new(AdamW { lr, beta1, beta2, eps, weight_decay, step: 0, slots })
            }
        })
    }
}

/// An optimizer over a fixed set of parameters.
pub trait Optimizer: Send {
    /// The base learning rate (schedules multiply it).
    fn base_lr(&self) -> f64;
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

fn save_slots(slots: &[Slot], names: &[&str]) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for s in slots {
        for (t, n) in s.state.iter().zip(names) {
            out.insert(format!("{}.{n}", s.param.name()), t.clone());
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
            st.push(t.to_device(s.param.tensor().device())?);
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
}

impl Optimizer for Sgd {
    fn base_lr(&self) -> f64 {
        self.lr
    }
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        for s in &mut self.slots {
            let Some(g) = grad_of(grads, &s.param) else { continue };
            let w = s.param.tensor();
            let mut g = if s.decay && self.weight_decay > 0.0 { (g + (w * self.weight_decay)?)? } else { g.clone() };
            if self.momentum > 0.0 {
                let buf = match s.state.first() {
                    Some(b) => ((b * self.momentum)? + &g)?,
                    None => g.clone(),
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
}

impl Optimizer for AdamW {
    fn base_lr(&self) -> f64 {
        self.lr
    }
    fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        self.step += 1;
        let t = self.step as i32;
        let bc1 = 1.0 - self.beta1.powi(t);
        let bc2 = 1.0 - self.beta2.powi(t);
        for s in &mut self.slots {
            let Some(g) = grad_of(grads, &s.param) else { continue };
            let (m, v) = match s.state.as_slice() {
                [m, v] => (m.clone(), v.clone()),
                _ => (g.zeros_like()?, g.zeros_like()?),
            };
            let m = ((m * self.beta1)? + (g * (1.0 - self.beta1))?)?;
            let v = ((v * self.beta2)? + (g.sqr()? * (1.0 - self.beta2))?)?;
            let w = s.param.tensor();
            let w = if s.decay && self.weight_decay > 0.0 { (w * (1.0 - lr * self.weight_decay))? } else { w.clone() };
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
}
