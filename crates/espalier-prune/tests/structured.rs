//! Structured pruning of an MLP: masking a group and shrinking it compute
//! the same function, the shrunk model survives a save/reload, a layer cannot
//! be pruned to zero width, and i-SpaSP's output residual falls as it keeps
//! more units.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use espalier_core::groups::mask_groups;
use espalier_core::{checkpoint, Keep, ParamBuilder, Result, Rng};
use espalier_data::{Batch, Inputs};
use espalier_models::{shrink, MlpConfig, Mode, Model, ModelConfig};
use espalier_prune::structured::{select, GroupCriterion, StructuredConfig};

fn mlp(hidden: Vec<usize>) -> Result<Box<dyn Model>> {
    let cfg = ModelConfig::Mlp(MlpConfig { input_dim: 20, hidden, num_classes: 5, ..MlpConfig::lenet_300_100() });
    cfg.init(3, &Device::Cpu)
}

fn batch(n: usize, seed: u64) -> Result<Batch> {
    let mut rng = Rng::new(seed);
    let x: Vec<f32> = (0..n * 20).map(|_| rng.normal() as f32).collect();
    let y: Vec<u32> = (0..n).map(|_| rng.below(5) as u32).collect();
    Ok(Batch {
        inputs: Inputs::Dense(Tensor::from_vec(x, (n, 20), &Device::Cpu)?),
        labels: Tensor::from_vec(y, n, &Device::Cpu)?,
    })
}

fn logits(m: &dyn Model, b: &Batch) -> Result<Tensor> {
    Ok(m.forward_t(b, &mut Mode::Eval)?.logits)
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

#[test]
fn masking_and_shrinking_agree_and_the_shrunk_model_reloads() -> Result<()> {
    let model = mlp(vec![32, 16])?;
    let keep: Keep = BTreeMap::from([
        ("fc1".to_string(), vec![0, 3, 4, 9, 10, 17, 20, 31]),
        ("fc2".to_string(), vec![1, 2, 5, 8, 15]),
    ]);
    let b = batch(64, 1)?;
    let small = shrink(model.as_ref(), &keep)?;
    assert_eq!(
        small.config(),
        ModelConfig::Mlp(MlpConfig { input_dim: 20, hidden: vec![8, 5], num_classes: 5, ..MlpConfig::lenet_300_100() })
    );
    assert_eq!(small.params().get("fc2.weight")?.dims(), vec![5, 8]);
    mask_groups(model.params(), &model.group_sets(), &keep)?;
    let (masked, shrunk) = (logits(model.as_ref(), &b)?, logits(small.as_ref(), &b)?);
    let d = max_diff(&masked, &shrunk)?;
    assert!(d < 1e-5, "masked and shrunk outputs differ by {d}");
    // Save → reload from the checkpoint alone → same outputs.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("model.safetensors");
    checkpoint::save(&path, &small.params().snapshot()?, &serde_json::json!({ "model": small.config() }))?;
    let ck = checkpoint::load(&path, &Device::Cpu)?;
    let cfg: ModelConfig = serde_json::from_value(ck.header["model"].clone()).expect("config in header");
    let reloaded = cfg.build(&ParamBuilder::from_tensors(ck.params(), "reload", DType::F32, &Device::Cpu))?;
    assert_eq!(max_diff(&shrunk, &logits(reloaded.as_ref(), &b)?)?, 0.0);
    Ok(())
}

#[test]
fn a_layer_cannot_be_pruned_to_zero_width_and_bad_indices_are_refused() -> Result<()> {
    let model = mlp(vec![8])?;
    let err = shrink(model.as_ref(), &BTreeMap::from([("fc1".to_string(), vec![])])).err().expect("refused");
    assert!(err.to_string().contains("width 0"), "{err}");
    let err = shrink(model.as_ref(), &BTreeMap::from([("fc1".to_string(), vec![2, 8])])).err().expect("refused");
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = shrink(model.as_ref(), &BTreeMap::from([("fc1".to_string(), vec![3, 1])])).err().expect("refused");
    assert!(err.to_string().contains("sorted"), "{err}");
    let err = shrink(model.as_ref(), &BTreeMap::from([("fc9".to_string(), vec![0])])).err().expect("refused");
    assert!(err.to_string().contains("fc9") && err.to_string().contains("fc1"), "{err}");
    Ok(())
}

fn config(method: GroupCriterion, keep: usize) -> StructuredConfig {
    let mut c: StructuredConfig = serde_json::from_value(serde_json::json!({ "keep": keep })).expect("config");
    c.method = method;
    c
}

#[test]
fn every_criterion_keeps_the_requested_units() -> Result<()> {
    let model = mlp(vec![24, 12])?;
    let calib = vec![batch(50, 2)?, batch(50, 3)?];
    for method in [
        GroupCriterion::Random,
        GroupCriterion::L1,
        GroupCriterion::L2,
        GroupCriterion::Activation,
        GroupCriterion::Taylor,
        GroupCriterion::Ispasp,
        GroupCriterion::Mi,
    ] {
        let sel = select(model.as_ref(), &config(method, 6), &calib, 0)?;
        for (set, size) in [("fc1", 24), ("fc2", 12)] {
            let k = &sel.keep[set];
            assert_eq!(k.len(), 6, "{method:?} {set}");
            assert!(k.windows(2).all(|w| w[0] < w[1]) && k.iter().all(|&u| u < size), "{method:?} {set}: {k:?}");
        }
        assert!(sel.residual.contains_key("fc1") && sel.residual.contains_key("fc2"), "{method:?}");
        let small = shrink(model.as_ref(), &sel.keep)?;
        assert_eq!(small.params().get("fc2.weight")?.dims(), vec![6, 6]);
    }
    Ok(())
}

#[test]
fn ispasp_residual_falls_as_it_keeps_more_units() -> Result<()> {
    let model = mlp(vec![64])?;
    let calib = vec![batch(200, 4)?];
    let mut last = f64::INFINITY;
    for s in [4, 8, 16, 32, 64] {
        let r = select(model.as_ref(), &config(GroupCriterion::Ispasp, s), &calib, 0)?.residual["fc1"];
        assert!(r < last, "residual {r} at s={s} is not below {last}");
        last = r;
    }
    assert!(last < 1e-6, "keeping every unit leaves residual {last}");
    Ok(())
}

/// ResNet inner channels: masking (conv rows, BN entries, next conv's
/// columns) and shrinking agree in evaluation mode, BN running statistics are
/// sliced with their channels, criteria that probe activations run, and a
/// block cannot lose every inner channel.
#[test]
fn resnet_inner_channels_mask_and_shrink_agree() -> Result<()> {
    use espalier_models::resnet::ResNetConfig;
    let cfg = ModelConfig::Resnet(ResNetConfig { num_classes: 4, ..ResNetConfig::cifar(8) });
    let model = cfg.init(5, &Device::Cpu)?;
    // Non-trivial running statistics, so BN's evaluation path matters.
    let mut rng = Rng::new(8);
    for p in model.params().iter().filter(|p| p.name().contains("running_")) {
        let n = p.numel();
        let v: Vec<f32> = (0..n).map(|_| 0.5 + rng.uniform() as f32).collect();
        p.set(&Tensor::from_vec(v, n, &Device::Cpu)?)?;
    }
    let sets = model.group_sets();
    let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["layer1.0.conv1", "layer2.0.conv1", "layer3.0.conv1"]);
    let mut rng = Rng::new(9);
    let x: Vec<f32> = (0..6 * 3 * 8 * 8).map(|_| rng.normal() as f32).collect();
    let b = Batch {
        inputs: Inputs::Dense(Tensor::from_vec(x, (6, 3, 8, 8), &Device::Cpu)?),
        labels: Tensor::from_vec(vec![0u32, 1, 2, 3, 0, 1], 6, &Device::Cpu)?,
    };
    assert_eq!(model.probe(&b, "layer2.0.conv1")?.dims(), &[6, 32]);
    let keep: Keep = sets.iter().map(|s| (s.name.clone(), (0..s.size).filter(|i| i % 2 == 1).collect())).collect();
    let small = shrink(model.as_ref(), &keep)?;
    assert_eq!(small.params().get("layer3.0.bn1.running_var")?.dims(), vec![32]);
    assert_eq!(small.params().get("layer3.0.conv2.weight")?.dims(), vec![64, 32, 3, 3]);
    let ratio = model.flops(0).unwrap() / small.flops(0).unwrap();
    assert!(ratio > 1.5 && ratio < 2.0, "FLOP ratio {ratio}");
    mask_groups(model.params(), &sets, &keep)?;
    let d = max_diff(&logits(model.as_ref(), &b)?, &logits(small.as_ref(), &b)?)?;
    assert!(d < 1e-5, "masked and shrunk ResNet differ by {d}");
    for method in [GroupCriterion::Activation, GroupCriterion::L1, GroupCriterion::Mi, GroupCriterion::Taylor] {
        let sel = select(small.as_ref(), &config(method, 4), std::slice::from_ref(&b), 0)?;
        assert!(sel.keep.values().all(|k| k.len() == 4), "{method:?}");
    }
    let err = shrink(small.as_ref(), &BTreeMap::from([("layer1.0.conv1".to_string(), vec![])])).err().expect("refused");
    assert!(err.to_string().contains("no channels"), "{err}");
    Ok(())
}
