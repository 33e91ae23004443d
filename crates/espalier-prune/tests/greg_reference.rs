//! Differential test of GReg's `reference` mode against the authors' code
//! (MingSun-Tse/Regularization-Pruning, `pruner/reg_pruner.py`), from the
//! fixtures in `tests/fixtures/greg/` that
//! `scripts/reference/greg_reference.py` produced by running the reference
//! pruner unchanged on a tiny conv-BN-ReLU-conv-BN-ReLU-pool-fc net (see the
//! fixtures' README).
//!
//! Training is not replayed in Rust: the reference's own pre-step weights of
//! every iteration up to its stop are loaded into the same parameter groups,
//! and GReg is driven through the same iterations (`adjust_grads` before
//! each step, `on_step` after it). It must take the same decisions: the
//! pruned filters, the (iteration, λ) sequence of every layer bit for bit
//! (f32), the smoothed magnitude ratios within 1e-5 relative, every layer's
//! finishing iteration, the stop iteration and the iteration after whose
//! step the units are removed (±1), and the penalty on the producing filters
//! only.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use candle_core::{Device, Tensor};
use espalier_core::init::Init;
use espalier_core::{GroupSet, Member, ParamBuilder, ParamKind, ParamStore, Result};
use espalier_prune::greg::reference::{pruned_count, RefState};
use espalier_prune::greg::GReg;
use espalier_prune::{Method, StructuredConfig};
use espalier_train::regularize::{Regularizer, StepInfo};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/greg").join(name)
}

fn err(msg: impl std::fmt::Display) -> espalier_core::Error {
    espalier_core::Error::msg(msg.to_string())
}

struct Fixture {
    json: Value,
    tensors: HashMap<String, Tensor>,
}

fn load(name: &str) -> Result<Fixture> {
    let path = fixture(&format!("{name}.json"));
    let text = std::fs::read_to_string(&path).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| err(format!("{}: {e}", path.display())))?;
    let tensors = candle_core::safetensors::load(fixture(&format!("{name}.safetensors")), &Device::Cpu)?;
    Ok(Fixture { json, tensors })
}

/// The net's parameters from the fixture's initial state, PyTorch names.
fn store(fx: &Fixture) -> Result<ParamStore> {
    let pb = ParamBuilder::from_seed(0, candle_core::DType::F32, &Device::Cpu);
    let specs = [
        ("conv1.weight", ParamKind::Weight),
        ("bn1.weight", ParamKind::Norm),
        ("bn1.bias", ParamKind::Norm),
        ("bn1.running_mean", ParamKind::Buffer),
        ("bn1.running_var", ParamKind::Buffer),
        ("conv2.weight", ParamKind::Weight),
        ("bn2.weight", ParamKind::Norm),
        ("bn2.bias", ParamKind::Norm),
        ("bn2.running_mean", ParamKind::Buffer),
        ("bn2.running_var", ParamKind::Buffer),
        ("fc.weight", ParamKind::Weight),
        ("fc.bias", ParamKind::Bias),
    ];
    for (name, kind) in specs {
        let t = fx.tensors.get(&format!("init.{name}")).ok_or_else(|| err(format!("fixture lacks init.{name}")))?;
        let (module, leaf) = name.split_once('.').expect("dotted");
        let p = pb.pp(module).param(leaf, t.dims(), kind, Init::Const(0.0))?;
        p.set(t)?;
    }
    Ok(pb.finish().0)
}

/// conv1's and conv2's channel groups, as a model would declare them: the
/// filter, BN γ/β and running statistics, and the consumer's columns.
fn sets() -> Vec<GroupSet> {
    let set = |name: &str, size, bn: &str, consumer: &str| GroupSet {
        name: name.into(),
        size,
        block: 1,
        members: vec![
            Member::new(format!("{name}.weight"), 0),
            Member::new(format!("{bn}.weight"), 0),
            Member::new(format!("{bn}.bias"), 0),
            Member::new(format!("{bn}.running_mean"), 0),
            Member::new(format!("{bn}.running_var"), 0),
            Member::new(consumer, 1),
        ],
        consumer: None,
    };
    vec![set("conv1", 4, "bn1", "conv2.weight"), set("conv2", 6, "bn2", "fc.weight")]
}

fn greg(fx: &Fixture, params: &ParamStore) -> Result<GReg> {
    let a = &fx.json["args"];
    let f = |k: &str| a[k].as_f64().ok_or_else(|| err(format!("fixture args lack {k}")));
    let method = match fx.json["method"].as_str() {
        Some("GReg-1") => "greg1",
        Some("GReg-2") => "greg2",
        m => return Err(err(format!("unknown method {m:?}"))),
    };
    let cfg = serde_json::json!({
        "method": method,
        "keep": 1,
        "greg": {
            "mode": "reference",
            "interval": f("update_reg_interval")? as usize,
            "delta": f("reg_granularity_prune")?,
            "ceiling": f("reg_upper_limit")?,
            "ratio_stop": f("mag_ratio_limit")?,
            "uniform_delta": f("reg_granularity_pick")?,
            "uniform_ceiling": f("reg_upper_limit_pick")?,
            "kept_penalty": f("reg_granularity_recover")?,
            "stabilize_steps": f("stabilize_reg_interval")? as usize,
        }
    });
    let cfg: StructuredConfig = serde_json::from_value(cfg).map_err(err)?;
    cfg.validate("structured").map_err(err)?;
    let mut g = GReg::new(cfg);
    let mut kept = BTreeMap::new();
    for set in sets() {
        let pr = fx.json["layers"][&set.name]["pr"].as_f64().ok_or_else(|| err("fixture lacks pr"))?;
        kept.insert(set.name.clone(), set.size - pruned_count(pr, set.size));
    }
    g.begin(sets(), kept, params)?;
    Ok(g)
}

fn zero_grads(params: &ParamStore) -> Result<candle_core::backprop::GradStore> {
    let w = params.get("conv1.weight")?;
    let mut grads = w.tensor().zeros_like()?.sum_all()?.backward()?;
    for name in ["conv1.weight", "conv2.weight", "bn1.weight", "bn1.bias", "fc.weight"] {
        let p = params.get(name)?;
        grads.insert(p.tensor(), p.tensor().zeros_like()?);
    }
    Ok(grads)
}

fn reference_state(g: &GReg) -> &RefState {
    g.state().reference.as_ref().expect("reference mode")
}

fn replay(name: &str) -> Result<()> {
    let fx = load(name)?;
    let params = store(&fx)?;
    let mut g = greg(&fx, &params)?;
    let stop = fx.json["stop_step"].as_u64().ok_or_else(|| err("stop_step"))?;
    let ret = fx.json["return_step"].as_u64().ok_or_else(|| err("return_step"))?;
    let mut removed_after = None;
    for t in 0..=ret + 2 {
        for conv in ["conv1", "conv2"] {
            if let Some(w) = fx.tensors.get(&format!("w.{t}.{conv}.weight")) {
                params.get(&format!("{conv}.weight"))?.set(w)?;
            }
        }
        let info = StepInfo { global_step: 1000 + t, ..StepInfo::default() };
        let mut grads = zero_grads(&params)?;
        g.adjust_grads(&params, &mut grads, &info)?;
        if t <= stop {
            // The penalty: λ·W on the producing filters, nothing on BN or the
            // consumer's columns beyond conv2's own rows.
            let st = reference_state(&g);
            for (i, conv) in ["conv1", "conv2"].iter().enumerate() {
                let l = &st.layers[i];
                let w = params.get(&format!("{conv}.weight"))?.tensor().clone();
                let coef: Vec<f32> = (0..l.size)
                    .map(|u| if l.pruned.binary_search(&u).is_ok() { l.lambda } else { l.kept_lambda })
                    .collect();
                let c = Tensor::from_vec(coef, (l.size, 1, 1, 1), &Device::Cpu)?;
                let want = w.broadcast_mul(&c)?;
                let got = grads.get(&w).expect("grad").clone();
                let diff = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert_eq!(diff, 0.0, "{name}: penalty on {conv} at iteration {t}");
            }
            for other in ["bn1.weight", "bn1.bias", "fc.weight"] {
                let p = params.get(other)?;
                let g = grads.get(p.tensor()).expect("grad");
                let m = g.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
                assert_eq!(m, 0.0, "{name}: {other} got a penalty at iteration {t}");
            }
        }
        g.on_step(&params, &info)?;
        if removed_after.is_none() && g.done() {
            removed_after = Some(t);
        }
    }
    let st = reference_state(&g);

    for (i, conv) in ["conv1", "conv2"].iter().enumerate() {
        let want = &fx.json["layers"][conv];
        let l = &st.layers[i];
        let pruned: Vec<usize> =
            want["pruned"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(l.pruned, pruned, "{name}: pruned filters of {conv}");
        assert_eq!(l.finish_step, want["finish_step"].as_u64(), "{name}: finishing iteration of {conv}");
        assert_eq!(l.pick_step, want["pick_step"].as_u64(), "{name}: GReg-2's pick iteration of {conv}");
        let ours: Vec<_> = st.trace.iter().filter(|p| p.layer == *conv).collect();
        let theirs = want["trace"].as_array().unwrap();
        assert_eq!(ours.len(), theirs.len(), "{name}: number of λ updates of {conv}");
        for (a, b) in ours.iter().zip(theirs) {
            let step = b["step"].as_u64().unwrap();
            assert_eq!(a.step, step, "{name}: {conv} update iteration");
            // λ in f32, bit for bit (the dump holds the f32 value as a
            // decimal, which serde_json may read 1 ulp off in f64).
            let f32_of = |k: &str| b[k].as_f64().unwrap() as f32;
            assert_eq!(a.lambda as f32, f32_of("lambda_max"), "{name}: {conv} λ at iteration {step}");
            assert_eq!(a.kept_lambda as f32, f32_of("lambda_min"), "{name}: {conv} kept λ at {step}");
            let r = b["ratio"].as_f64().unwrap();
            assert!((a.ratio - r).abs() <= 1e-5 * r.abs(), "{name}: {conv} ratio at {step}: {} vs {r}", a.ratio);
            assert_eq!(a.finished, b["finished"].as_bool().unwrap(), "{name}: {conv} finished at {step}");
        }
    }
    let got_stop = st.stop_step.expect("the penalty stopped");
    assert!(got_stop.abs_diff(stop) <= 1, "{name}: stop iteration {got_stop} vs the reference's {stop}");
    let removed = removed_after.expect("stabilisation ended");
    assert!(removed.abs_diff(ret) <= 1, "{name}: units removed after iteration {removed} vs {ret}");
    // The shrunk widths.
    let widths: Vec<u64> = st.layers.iter().map(|l| (l.size - l.pruned.len()) as u64).collect();
    let want: Vec<u64> = fx.json["shrunk_widths"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(widths, want, "{name}: widths after the shrink");
    Ok(())
}

#[test]
fn greg1_stops_at_its_f32_lambda_ceiling_as_the_reference() -> Result<()> {
    replay("greg1_ceiling")
}

#[test]
fn greg1_stops_when_every_layers_smoothed_ratio_passes_as_the_reference() -> Result<()> {
    replay("greg1_ratio")
}

#[test]
fn greg2_picks_after_its_uniform_phase_and_carries_on_as_the_reference() -> Result<()> {
    replay("greg2")
}

/// A keep ratio gives the reference's counts: `n − min(ceil(pr·n), n − 1)`.
#[test]
fn reference_mode_keeps_the_references_counts() -> Result<()> {
    let cfg: StructuredConfig =
        serde_json::from_value(serde_json::json!({ "method": "greg1", "keep_ratio": 0.7 })).map_err(err)?;
    let g = GReg::new(cfg);
    assert_eq!(g.kept(6), 4);
    assert_eq!(g.kept(10), 7);
    assert_eq!(g.kept(16), 11);
    assert_eq!(g.kept(1), 1);
    Ok(())
}
