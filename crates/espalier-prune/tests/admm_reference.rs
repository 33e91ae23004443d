//! Golden tests of ADMM (`espalier_prune::admm`) against
//! `scripts/reference/admm_reference.py`, Espalier's own float64 NumPy
//! reference, whose output is committed in `tests/fixtures/admm/`:
//!
//! - ADMM towards 2:4 on f(W) = ½‖W − A‖² with plain SGD, the penalty in the
//!   gradient and as its proximal step: W, Z and U at the recorded updates
//!   and the whole trace (ρ, primal gap, dual residual, support change,
//!   stall warnings) equal to 1e-9. The Rust side runs the real path in f64:
//!   [`Admm`] as the step loop drives it (`adjust_grads` → the project's SGD
//!   step → `on_step`), with autograd's gradient of f.
//! - The frozen-W pathology: W = [4, −1, 3, 0.5] never moves; the gap goes
//!   0.2182, 0.2182, 0.2182, 0.7105 and the warning is logged at that update.
//! - ρ ×1.3 per update for 3,000 updates (f32, as runs train) stops at
//!   `rho_max`, and every gradient stays finite.

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Tensor};
use espalier_core::init::Init;
use espalier_core::{Param, ParamBuilder, ParamKind, ParamStore, Result, Selector};
use espalier_prune::{Admm, AdmmConfig, AdmmLr, AdmmPenalty, Granularity, LayerTargets, Projection, Scope};
use espalier_train::regularize::{Regularizer, StepInfo};
use espalier_train::OptimizerConfig;
use serde_json::Value;

const TOL: f64 = 1e-9;
const TWO_FOUR: Projection = Projection {
    granularity: Granularity::NOfM { n: 2, m: 4 },
    scope: Scope::Layer,
    sparsity: 0.5,
    targets: LayerTargets::NONE,
};

fn fixture(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/admm").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).expect("a matrix of numbers")
}

/// One f64 weight `fc.weight` with the given values.
fn weight(values: &[Vec<f64>], dtype: DType) -> Result<(ParamStore, Param)> {
    let pb = ParamBuilder::from_seed(0, dtype, &Device::Cpu);
    let dims = [values.len(), values[0].len()];
    let w = pb.pp("fc").param("weight", &dims, ParamKind::Weight, Init::Const(0.0))?;
    w.set(&Tensor::new(values.to_vec(), &Device::Cpu)?.to_dtype(dtype)?)?;
    Ok((pb.finish().0, w))
}

fn assert_close(what: &str, got: &[Vec<f64>], want: &[Vec<f64>]) {
    for (i, (g, w)) in got.iter().flatten().zip(want.iter().flatten()).enumerate() {
        assert!((g - w).abs() <= TOL, "{what}[{i}]: {g} vs {w} (difference {:e})", (g - w).abs());
    }
    assert_eq!(got.iter().flatten().count(), want.iter().flatten().count(), "{what}: size");
}

fn assert_opt(what: &str, got: Option<f64>, want: &Value) {
    match (got, want.as_f64()) {
        (Some(g), Some(w)) => assert!((g - w).abs() <= TOL, "{what}: {g} vs {w}"),
        (None, None) => {}
        (g, _) => panic!("{what}: {g:?} vs {want}"),
    }
}

/// The Rust trace against the fixture's, point by point.
fn assert_trace(admm: &Admm, want: &Value) {
    let want = want.as_array().expect("trace");
    let got = admm.trace();
    assert_eq!(got.len(), want.len(), "trace length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.step, w["step"].as_u64().unwrap(), "point {i}: step");
        assert!((g.rho - w["rho"].as_f64().unwrap()).abs() <= TOL, "point {i}: rho {} vs {}", g.rho, w["rho"]);
        assert_opt(&format!("point {i}: primal gap"), Some(g.primal_gap), &w["primal_gap"]);
        assert_opt(&format!("point {i}: dual residual"), g.dual_residual, &w["dual_residual"]);
        assert_opt(&format!("point {i}: support change"), g.support_change, &w["support_change"]);
        assert_eq!(g.stalled, w["stalled"].as_bool().unwrap(), "point {i}: stalled");
    }
}

fn quadratic(name: &str, penalty: AdmmPenalty) -> Result<()> {
    let fx = fixture(name);
    let num = |k: &str| fx[k].as_f64().unwrap();
    let lr = num("lr");
    let every = fx["every_steps"].as_u64().unwrap();
    let (store, w) = weight(&matrix(&fx["w0"]), DType::F64)?;
    let a = Tensor::new(matrix(&fx["a"]), &Device::Cpu)?;
    let cfg = AdmmConfig {
        rho: num("rho"),
        rho_growth: num("rho_growth"),
        rho_max: num("rho_max"),
        every_steps: Some(every as usize),
        lr: AdmmLr::Constant,
        penalty,
        ..Default::default()
    };
    let mut admm = Admm::new(cfg, Selector::default(), TWO_FOUR, 1);
    let sgd = OptimizerConfig::Sgd { lr, momentum: 0.0, nesterov: false, weight_decay: 0.0, no_decay: vec![] };
    let mut opt = sgd.build(&store)?;
    let snapshots = fx["snapshots"].as_array().unwrap();
    let mut next = snapshots.iter().peekable();
    for k in 0..fx["steps"].as_u64().unwrap() {
        let info = StepInfo { epoch: 0, global_step: k, lr, ..Default::default() };
        let loss = ((w.effective()? - &a)?.sqr()?.sum_all()? * 0.5)?;
        let mut grads = loss.backward()?;
        admm.adjust_grads(&store, &mut grads, &info)?;
        opt.step(&grads, lr)?;
        admm.on_step(&store, &StepInfo { global_step: k + 1, ..info })?;
        if let Some(s) = next.next_if(|s| s["step"].as_u64() == Some(k + 1)) {
            let at = format!("{name}, step {}", k + 1);
            assert_close(&format!("{at}: W"), &w.tensor().to_vec2::<f64>()?, &matrix(&s["w"]));
            assert_close(&format!("{at}: Z"), &admm.z()["fc.weight"].to_vec2::<f64>()?, &matrix(&s["z"]));
            assert_close(&format!("{at}: U"), &admm.u()["fc.weight"].to_vec2::<f64>()?, &matrix(&s["u"]));
        }
    }
    assert!(next.next().is_none(), "{name}: every snapshot was compared");
    assert_trace(&admm, &fx["trace"]);
    // ρ reached its cap and ADMM converged: W is in the 2:4 set.
    assert_eq!(admm.rho(), num("rho_max"));
    assert!(admm.trace().last().unwrap().primal_gap < 1e-6);
    Ok(())
}

#[test]
fn admm_with_sgd_on_a_quadratic_matches_the_reference() -> Result<()> {
    quadratic("quadratic_sgd.json", AdmmPenalty::Gradient)
}

#[test]
fn proximal_admm_on_a_quadratic_matches_the_reference() -> Result<()> {
    quadratic("quadratic_proximal.json", AdmmPenalty::Proximal)
}

/// Collects what a `tracing` subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log buffer").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Captured {
        self.clone()
    }
}

/// W never moves (no W-steps between the updates): Π(W + U) only swaps the
/// support as U accumulates, and the gap goes 0.2182 ×3, then 0.7105, where
/// the warning fires (three updates without a fall, above 0.05).
#[test]
fn a_frozen_w_raises_the_stalled_gap_warning() -> Result<()> {
    let fx = fixture("frozen.json");
    let (store, _w) = weight(&matrix(&fx["w"]), DType::F64)?;
    let cfg = AdmmConfig { rho: 1.0, every_steps: Some(1), ..Default::default() };
    let mut admm = Admm::new(cfg, Selector::default(), TWO_FOUR, 1);
    let log = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(log.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    let updates = fx["trace"].as_array().unwrap().len() as u64;
    let mut warnings_after = Vec::new();
    tracing::subscriber::with_default(subscriber, || -> Result<()> {
        for step in 0..updates {
            admm.update(&store, step)?;
            warnings_after.push(String::from_utf8_lossy(&log.0.lock().unwrap()).matches("has not fallen").count());
        }
        Ok(())
    })?;
    assert_trace(&admm, &fx["trace"]);
    let gaps: Vec<f64> = admm.trace().iter().map(|p| (p.primal_gap * 1e4).round() / 1e4).collect();
    assert_eq!(gaps[..4], [0.2182, 0.2182, 0.2182, 0.7105]);
    // Warned once, at the fourth point (the third update after the initialisation).
    assert_eq!(warnings_after[..5], [0, 0, 0, 1, 1], "{}", String::from_utf8_lossy(&log.0.lock().unwrap()));
    let text = String::from_utf8_lossy(&log.0.lock().unwrap()).into_owned();
    assert!(text.contains("WARN") && text.contains("has not fallen for 3 consecutive Z/U updates"), "{text}");
    Ok(())
}

/// ρ from 1e-4 growing ×1.3 per update would pass f32's range after ~370
/// updates (and f64's after ~2,700); capped, it stops at `rho_max` = 1 and
/// 3,000 updates of ADMM with SGD on ½‖W − A‖² keep every gradient finite.
#[test]
fn rho_is_capped_after_3000_updates_and_every_gradient_is_finite() -> Result<()> {
    let a_values: Vec<Vec<f64>> = (0..4).map(|r| (0..8).map(|c| ((r * 8 + c) as f64 * 0.37).sin()).collect()).collect();
    let (store, w) =
        weight(&a_values.iter().map(|r| r.iter().map(|v| v * 0.5).collect()).collect::<Vec<_>>(), DType::F32)?;
    let a = Tensor::new(a_values, &Device::Cpu)?.to_dtype(DType::F32)?;
    let cfg = AdmmConfig { rho: 1e-4, rho_growth: 1.3, every_steps: Some(1), ..Default::default() };
    assert_eq!(cfg.rho_max, 1.0, "the default cap");
    let mut admm = Admm::new(cfg, Selector::default(), TWO_FOUR, 1);
    let lr = 0.1;
    let mut opt = OptimizerConfig::Sgd { lr, momentum: 0.0, nesterov: false, weight_decay: 0.0, no_decay: vec![] }
        .build(&store)?;
    for k in 0..3000u64 {
        let info = StepInfo { epoch: 0, global_step: k, lr, ..Default::default() };
        let loss = ((w.effective()? - &a)?.sqr()?.sum_all()? * 0.5)?;
        let mut grads = loss.backward()?;
        admm.adjust_grads(&store, &mut grads, &info)?;
        let g = grads.get(w.tensor()).expect("a gradient").flatten_all()?.to_vec1::<f32>()?;
        assert!(g.iter().all(|v| v.is_finite()), "step {k}: {g:?}");
        opt.step(&grads, lr)?;
        admm.on_step(&store, &StepInfo { global_step: k + 1, ..info })?;
    }
    assert_eq!(admm.trace().len(), 3001);
    assert_eq!(admm.rho(), 1.0);
    assert!(admm.trace().iter().all(|p| p.rho <= 1.0 && p.primal_gap.is_finite()));
    assert!(w.tensor().flatten_all()?.to_vec1::<f32>()?.iter().all(|v| v.is_finite()));
    Ok(())
}
