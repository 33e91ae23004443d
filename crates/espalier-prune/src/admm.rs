//! ADMM pruning towards a sparsity pattern (Zhang, Ye, Zhang, Tang, Wen,
//! Fardad & Wang, "A Systematic DNN Weight Pruning Framework using
//! Alternating Direction Method of Multipliers", ECCV 2018, arXiv 1804.03294,
//! eqs. 4–9; applied to N:M patterns of transformers in the 2024
//! semi-structured pruning work). It solves min f(W) s.t. W ∈ S, where S is the set of
//! weights that obey the pattern, by splitting W = Z:
//! - W-step: train on f(W) + ρ/2 Σ_l ‖W_l − Z_l + U_l‖², i.e. the gradient
//!   gets ρ(W − Z + U) ([`Admm::adjust_grads`]);
//! - Z-step, every E steps or epochs: Z = Π_S(W + U), the N largest |·| of
//!   every block (or the largest to the target sparsity, unstructured);
//! - U-step: U ← U + W − Z.
//!
//! ρ may grow by a factor per Z/U update (ρ ← min(1.3ρ, ρ_max), ρ_max = 1 by
//! default as in the reference implementations). The relative primal gap
//! ‖W − Z‖/‖W‖ is logged at every update and kept in the trace. After the
//! ADMM phase the schedule's pruning step projects W hard (W ← Π_S(W)) and
//! masked retraining follows.

use std::collections::BTreeMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor};
use espalier_core::{ParamStore, Result, Selector};
use espalier_train::regularize::{Regularizer, StepInfo};
use serde::{Deserialize, Serialize};

use crate::magnitude::Scope;
use crate::pattern::{keep_masks, Granularity, Scored};

/// ADMM settings (`[prune.admm]`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdmmConfig {
    /// Penalty ρ at the start.
    #[serde(default = "default_rho")]
    pub rho: f64,
    /// ρ is multiplied by this at every Z/U update (1 = constant) ...
    #[serde(default = "default_growth")]
    pub rho_growth: f64,
    /// ... up to this value (the reference implementations cap ρ at 1; an
    /// uncapped ρ ×1.3 per update overflows f32 within a few hundred updates).
    #[serde(default = "default_rho_max")]
    pub rho_max: f64,
    /// Z/U update every this many optimizer steps ...
    #[serde(default)]
    pub every_steps: Option<usize>,
    /// ... or every this many epochs (the default: 1 epoch).
    #[serde(default)]
    pub every_epochs: Option<usize>,
}

fn default_rho() -> f64 {
    1e-3
}
fn default_growth() -> f64 {
    1.0
}
fn default_rho_max() -> f64 {
    1.0
}

impl AdmmConfig {
    /// Checks the values; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        if !(self.rho > 0.0 && self.rho.is_finite()) {
            return Err(format!("{path}.rho must be a finite number > 0, found {}", self.rho));
        }
        if !(self.rho_growth >= 1.0 && self.rho_growth.is_finite()) {
            return Err(format!("{path}.rho_growth must be >= 1, found {}", self.rho_growth));
        }
        if !(self.rho_max >= self.rho && self.rho_max.is_finite()) {
            return Err(format!("{path}.rho_max must be finite and >= rho ({}), found {}", self.rho, self.rho_max));
        }
        match (self.every_steps, self.every_epochs) {
            (Some(_), Some(_)) => Err(format!("{path}: give every_steps or every_epochs, not both")),
            (Some(0), _) | (_, Some(0)) => Err(format!("{path}: the update interval must be >= 1")),
            _ => Ok(()),
        }
    }
}

/// What a projection keeps: the pattern, the scope and the sparsity.
#[derive(Clone, Copy, Debug)]
pub struct Projection {
    /// Granularity of the constraint set.
    pub granularity: Granularity,
    /// Scope of an unstructured or block target.
    pub scope: Scope,
    /// Target sparsity (N:M implies its own).
    pub sparsity: f64,
}

impl Projection {
    /// Keep masks (same shapes as `values`) of the largest |·| under the
    /// constraint.
    pub fn masks(&self, names: &[String], values: &[Tensor]) -> Result<Vec<Tensor>> {
        let dims: Vec<Vec<usize>> = values.iter().map(|v| v.dims().to_vec()).collect();
        let scored: Vec<Scored> = names
            .iter()
            .zip(values)
            .zip(&dims)
            .map(|((n, v), d)| {
                let s = v.abs()?.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
                Ok(Scored { name: n, dims: d, scores: s })
            })
            .collect::<Result<_>>()?;
        let keep = keep_masks(&scored, self.granularity, self.scope, self.sparsity)?;
        keep.into_iter()
            .zip(values)
            .map(|(k, v)| Ok(Tensor::from_vec(k, v.dims(), v.device())?.to_dtype(v.dtype())?))
            .collect()
    }
}

/// One Z/U update in the ADMM trace.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AdmmPoint {
    /// Optimizer steps so far.
    pub step: u64,
    /// ρ used up to this update.
    pub rho: f64,
    /// ‖W − Z‖ / ‖W‖ after the update.
    pub primal_gap: f64,
}

/// The ADMM W-step penalty and its Z/U updates, active while the epoch is
/// below `until_epoch` (the dense phase of the schedule).
pub struct Admm {
    cfg: AdmmConfig,
    selector: Selector,
    projection: Projection,
    until_epoch: usize,
    rho: f64,
    z: BTreeMap<String, Tensor>,
    u: BTreeMap<String, Tensor>,
    trace: Vec<AdmmPoint>,
}

impl Admm {
    /// ADMM on the selected parameters towards `projection`'s pattern,
    /// while the epoch is below `until_epoch`.
    pub fn new(cfg: AdmmConfig, selector: Selector, projection: Projection, until_epoch: usize) -> Self {
        let rho = cfg.rho;
        Admm { cfg, selector, projection, until_epoch, rho, z: BTreeMap::new(), u: BTreeMap::new(), trace: Vec::new() }
    }

    /// ρ and the primal gap at every Z/U update (since the run started; the
    /// trace is checkpointed with the run).
    pub fn trace(&self) -> &[AdmmPoint] {
        &self.trace
    }

    /// Restores a trace saved with [`Admm::trace`].
    pub fn set_trace(&mut self, trace: Vec<AdmmPoint>) {
        self.trace = trace;
    }

    /// Current ρ.
    pub fn rho(&self) -> f64 {
        self.rho
    }

    fn selected(&self, params: &ParamStore) -> (Vec<String>, Vec<Tensor>) {
        // Detached from the variables: Z and U must not carry autograd
        // history from one update to the next.
        params.iter().filter(|p| self.selector.matches(p)).map(|p| (p.name().to_string(), p.tensor().detach())).unzip()
    }

    /// Z = Π(W + U), U ← U + W − Z; returns the relative primal gap. The
    /// first call initialises instead: Z = Π(W), U = 0 (ρ unchanged).
    pub fn update(&mut self, params: &ParamStore, step: u64) -> Result<f64> {
        let (names, ws) = self.selected(params);
        let first = self.z.is_empty();
        if first {
            for (n, w) in names.iter().zip(&ws) {
                self.u.insert(n.clone(), w.zeros_like()?);
            }
        }
        let v: Vec<Tensor> = names.iter().zip(&ws).map(|(n, w)| w + &self.u[n]).collect::<candle_core::Result<_>>()?;
        let masks = self.projection.masks(&names, &v)?;
        let (mut gap, mut norm) = (0.0, 0.0);
        for (((n, w), v), m) in names.iter().zip(&ws).zip(&v).zip(masks) {
            let z = (v * m)?;
            let r = (w - &z)?;
            gap += r.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            norm += w.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !first {
                let u = (&self.u[n] + r)?;
                self.u.insert(n.clone(), u);
            }
            self.z.insert(n.clone(), z);
        }
        let gap = (gap / norm.max(f64::MIN_POSITIVE)).sqrt();
        self.trace.push(AdmmPoint { step, rho: self.rho, primal_gap: gap });
        tracing::info!(step, rho = self.rho, primal_gap = format!("{gap:.4}"), "ADMM Z/U update");
        if !first {
            self.rho = (self.rho * self.cfg.rho_growth).min(self.cfg.rho_max);
        }
        Ok(gap)
    }
}

impl Regularizer for Admm {
    fn name(&self) -> &str {
        "admm"
    }
    fn adjust_grads(&mut self, params: &ParamStore, grads: &mut GradStore, step: &StepInfo) -> Result<()> {
        if step.epoch >= self.until_epoch {
            return Ok(());
        }
        if self.z.is_empty() {
            self.update(params, step.global_step)?;
        }
        for p in params.iter().filter(|p| self.selector.matches(p)) {
            let (Some(g), Some(z), Some(u)) = (grads.get(p.tensor()), self.z.get(p.name()), self.u.get(p.name()))
            else {
                continue;
            };
            let extra = ((((p.tensor() - z)? + u)?) * self.rho)?;
            let g = (g + extra)?;
            grads.insert(p.tensor(), g);
        }
        Ok(())
    }
    fn on_step(&mut self, params: &ParamStore, step: &StepInfo) -> Result<()> {
        if let Some(e) = self.cfg.every_steps {
            if step.epoch < self.until_epoch && step.global_step.is_multiple_of(e as u64) {
                self.update(params, step.global_step)?;
            }
        }
        Ok(())
    }
    fn on_epoch(&mut self, params: &ParamStore, step: &StepInfo) -> Result<()> {
        if self.cfg.every_steps.is_none() && step.epoch < self.until_epoch {
            let e = self.cfg.every_epochs.unwrap_or(1);
            if (step.epoch + 1).is_multiple_of(e) {
                self.update(params, step.global_step)?;
            }
        }
        Ok(())
    }
    fn state(&self) -> Result<BTreeMap<String, Tensor>> {
        let mut s = BTreeMap::new();
        for (n, z) in &self.z {
            s.insert(format!("z.{n}"), z.clone());
            s.insert(format!("u.{n}"), self.u[n].clone());
        }
        s.insert("rho".into(), Tensor::new(self.rho, &candle_core::Device::Cpu)?);
        Ok(s)
    }
    fn load_state(&mut self, state: &BTreeMap<String, Tensor>) -> Result<()> {
        for (k, v) in state {
            if let Some(n) = k.strip_prefix("z.") {
                self.z.insert(n.to_string(), v.clone());
            } else if let Some(n) = k.strip_prefix("u.") {
                self.u.insert(n.to_string(), v.clone());
            } else if k == "rho" {
                self.rho = v.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use candle_core::Device;
    use espalier_core::init::Init;
    use espalier_core::{ParamBuilder, ParamKind};

    pub(crate) fn one_weight(values: &[f32]) -> Result<(ParamStore, espalier_core::Param)> {
        let pb = ParamBuilder::from_seed(0, DType::F32, &Device::Cpu);
        let w = pb.pp("fc").param("weight", &[1, values.len()], ParamKind::Weight, Init::Const(0.0))?;
        w.set(&Tensor::new(values, &Device::Cpu)?.reshape((1, values.len()))?)?;
        Ok((pb.finish().0, w))
    }

    pub(crate) const TWO_FOUR: Projection =
        Projection { granularity: Granularity::NOfM { n: 2, m: 4 }, scope: Scope::Layer, sparsity: 0.5 };

    #[test]
    fn admm_updates_match_a_hand_computed_example() -> Result<()> {
        let (store, w) = one_weight(&[4.0, -1.0, 3.0, 0.5])?;
        let cfg = AdmmConfig { rho: 0.1, rho_growth: 2.0, rho_max: 0.3, every_steps: Some(1), every_epochs: None };
        let mut admm = Admm::new(cfg, Selector::default(), TWO_FOUR, 1);
        // initialisation: Z = Π(W) = [4, 0, 3, 0], U = 0, ρ unchanged
        let gap = admm.update(&store, 0)?;
        assert_eq!(admm.z["fc.weight"].to_vec2::<f32>()?, [[4., 0., 3., 0.]]);
        assert_eq!(admm.u["fc.weight"].to_vec2::<f32>()?, [[0.; 4]]);
        assert!((gap - (1.25f64 / 26.25).sqrt()).abs() < 1e-6, "{gap}");
        assert_eq!(admm.rho(), 0.1);
        // first Z/U update with W unchanged: Z = Π(W + 0) = [4, 0, 3, 0], U = W - Z = [0, -1, 0, 0.5],
        // then ρ grows to 0.2
        admm.update(&store, 1)?;
        assert_eq!(admm.u["fc.weight"].to_vec2::<f32>()?, [[0., -1., 0., 0.5]]);
        assert_eq!(admm.rho(), 0.2);
        // the W-step gradient: g + ρ(W - Z + U) = 0 + 0.2·[0, -2, 0, 1]
        let mut grads = (w.effective()? * 0.0)?.sum_all()?.backward()?;
        grads.insert(w.tensor(), w.tensor().zeros_like()?);
        admm.adjust_grads(&store, &mut grads, &StepInfo { epoch: 0, global_step: 1, lr: 0.0, ..Default::default() })?;
        let g = grads.get(w.tensor()).unwrap().to_vec2::<f32>()?;
        for (a, b) in g[0].iter().zip([0f32, -0.4, 0., 0.2]) {
            assert!((a - b).abs() < 1e-6, "{g:?}");
        }
        // second update from W = [1, -3, 2, 0.5]: W + U = [1, -4, 2, 1] -> Z = [0, -4, 2, 0],
        // U = U + W - Z = [0, -1, 0, 0.5] + [1, 1, 0, 0.5] = [1, 0, 0, 1]
        w.set(&Tensor::new(&[[1f32, -3.0, 2.0, 0.5]], &Device::Cpu)?)?;
        admm.update(&store, 2)?;
        assert_eq!(admm.z["fc.weight"].to_vec2::<f32>()?, [[0., -4., 2., 0.]]);
        assert_eq!(admm.u["fc.weight"].to_vec2::<f32>()?, [[1., 0., 0., 1.]]);
        assert_eq!(admm.trace().len(), 3);
        // ρ doubles again, but rho_max caps it: 0.2 → 0.3, not 0.4; and stays.
        assert_eq!(admm.rho(), 0.3);
        admm.update(&store, 3)?;
        assert_eq!(admm.rho(), 0.3);
        // Z and U carry no autograd history from one update to the next.
        assert!(!admm.z["fc.weight"].track_op() && !admm.u["fc.weight"].track_op());
        // after the ADMM phase (epoch >= until_epoch) the gradient is untouched
        let mut grads = (w.effective()? * 0.0)?.sum_all()?.backward()?;
        grads.insert(w.tensor(), w.tensor().zeros_like()?);
        admm.adjust_grads(&store, &mut grads, &StepInfo { epoch: 1, global_step: 3, lr: 0.0, ..Default::default() })?;
        assert_eq!(grads.get(w.tensor()).unwrap().to_vec2::<f32>()?, [[0.; 4]]);
        // state round-trip
        let mut again = Admm::new(admm.cfg.clone(), Selector::default(), TWO_FOUR, 1);
        again.load_state(&admm.state()?)?;
        assert_eq!(again.rho(), admm.rho());
        assert_eq!(again.u["fc.weight"].to_vec2::<f32>()?, admm.u["fc.weight"].to_vec2::<f32>()?);
        Ok(())
    }
}
