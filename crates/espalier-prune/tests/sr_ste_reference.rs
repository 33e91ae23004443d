//! Golden test of SR-STE (`espalier_prune::sr_ste`) against the authors'
//! `Sparse` autograd function (aojunzz/NM-sparsity at a557d6b2,
//! `devkit/sparse_ops/sparse_ops.py`), run unchanged by
//! `scripts/reference/sr_ste_reference.py`; its output is committed in
//! `tests/fixtures/sr_ste/`.
//!
//! A bias-free linear layer y = x (W ⊙ M)ᵀ, W 4×8 at 2:4 along the input
//! dimension, loss ½ mean_b ‖y_b − t_b‖², momentum SGD (lr 0.1, momentum
//! 0.9, SR-STE's regime), the reference's decay 2e-4 in the gradient: five
//! steps. After every step the dense weights and the mask of the next
//! forward pass (and the loss of the step) equal the reference's to 1e-9,
//! in f64, through the real path: a straight-through parameter, [`SrSte`]'s
//! `adjust_grads` and `on_step` around the project's SGD step.

use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use espalier_core::init::Init;
use espalier_core::{ParamBuilder, ParamKind, Result, Selector};
use espalier_prune::{DecayForm, Granularity, LayerTargets, Projection, Scope, SrSte, SrSteConfig};
use espalier_train::regularize::{Regularizer, StepInfo};
use espalier_train::OptimizerConfig;
use serde_json::Value;

const TOL: f64 = 1e-9;

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).expect("a matrix of numbers")
}

fn assert_close(what: &str, got: &[Vec<f64>], want: &[Vec<f64>]) {
    assert_eq!(got.iter().flatten().count(), want.iter().flatten().count(), "{what}: size");
    for (i, (g, w)) in got.iter().flatten().zip(want.iter().flatten()).enumerate() {
        assert!((g - w).abs() <= TOL, "{what}[{i}]: {g} vs {w} (difference {:e})", (g - w).abs());
    }
}

#[test]
fn sr_ste_steps_match_the_reference_sparse_op() -> Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sr_ste/sgd_momentum.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let fx: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dev = Device::Cpu;
    let pb = ParamBuilder::from_seed(0, DType::F64, &dev);
    let w = pb.pp("fc").param("weight", &[4, 8], ParamKind::Weight, Init::Const(0.0))?;
    w.set(&Tensor::new(matrix(&fx["w0"]), &dev)?)?;
    let store = pb.finish().0;
    let x = Tensor::new(matrix(&fx["x"]), &dev)?;
    let t = Tensor::new(matrix(&fx["t"]), &dev)?;
    let (lr, momentum) = (fx["lr"].as_f64().unwrap(), fx["momentum"].as_f64().unwrap());
    let cfg = SrSteConfig { decay: fx["decay"].as_f64().unwrap(), decay_form: DecayForm::Gradient };
    let projection = Projection {
        granularity: Granularity::NOfM { n: 2, m: 4 },
        scope: Scope::Layer,
        sparsity: 0.5,
        targets: LayerTargets::NONE,
    };
    let mut sr = SrSte::new(&cfg, Selector::default(), projection);
    // The pruning step: straight-through, the mask from |W₀|.
    w.set_straight_through(true)?;
    sr.on_step(&store, &StepInfo::default())?;
    assert_close("mask 0", &w.mask().unwrap().to_vec2::<f64>()?, &matrix(&fx["mask0"]));
    let sgd = OptimizerConfig::Sgd { lr, momentum, nesterov: false, weight_decay: 0.0, no_decay: vec![] };
    let mut opt = sgd.build(&store)?;
    for (k, want) in fx["steps"].as_array().unwrap().iter().enumerate() {
        let info = StepInfo { epoch: 0, global_step: k as u64, lr, ..Default::default() };
        let y = x.matmul(&w.effective()?.t()?)?;
        let loss = ((y - &t)?.sqr()?.sum(1)?.mean_all()? * 0.5)?;
        let l = loss.to_scalar::<f64>()?;
        assert!((l - want["loss"].as_f64().unwrap()).abs() <= TOL, "step {k}: loss {l} vs {}", want["loss"]);
        let mut grads = loss.backward()?;
        sr.adjust_grads(&store, &mut grads, &info)?;
        opt.step(&grads, lr)?;
        sr.on_step(&store, &StepInfo { global_step: k as u64 + 1, ..info })?;
        assert_close(&format!("step {k}: W"), &w.tensor().to_vec2::<f64>()?, &matrix(&want["w"]));
        assert_close(&format!("step {k}: mask"), &w.mask().unwrap().to_vec2::<f64>()?, &matrix(&want["mask"]));
    }
    assert!(sr.flips() > 0, "the reference's masks change over these steps, and so do ours");
    Ok(())
}
