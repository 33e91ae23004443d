//! Structured pruning of an MLP: masking a group and shrinking it compute
//! the same function, the shrunk model survives a save/reload, a layer cannot
//! be pruned to zero width, and i-SpaSP's output residual falls as it keeps
//! more units.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use espalier_core::groups::mask_groups;
use espalier_core::{checkpoint, Keep, ParamBuilder, Result, Rng};
use espalier_core::{Batch, Inputs};
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
        GroupCriterion::FilterL1,
        GroupCriterion::Activation,
        GroupCriterion::Taylor,
        GroupCriterion::Movement,
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

/// `filter_l1` ranks a hidden unit by the mean |w| of its own row of
/// `fc1.weight` only (not its bias, not its column of `fc2.weight`), as GReg's
/// reference does; `l1` sums all three.
#[test]
fn filter_l1_scores_the_producing_row_only() -> Result<()> {
    let model = mlp(vec![24])?;
    let w = model.params().get("fc1.weight")?.effective()?.abs()?.mean(1)?.to_vec1::<f32>()?;
    let mut want: Vec<usize> = (0..w.len()).collect();
    want.sort_by(|&a, &b| w[b].total_cmp(&w[a]).then(a.cmp(&b)));
    let mut want: Vec<usize> = want[..7].to_vec();
    want.sort();
    let got = select(model.as_ref(), &config(GroupCriterion::FilterL1, 7), &[], 0)?.keep["fc1"].clone();
    assert_eq!(got, want);
    let l1 = select(model.as_ref(), &config(GroupCriterion::L1, 7), &[], 0)?.keep["fc1"].clone();
    assert_ne!(l1, got, "the column and bias should change the L1 choice on this seed");
    Ok(())
}

/// Taylor and movement rank units by the same per-unit sum
/// `s_u = Σ_{w ∈ u} w·∂L/∂w` (gradients summed over the calibration
/// batches): Taylor keeps the largest `s²`, movement the largest `−s`.
#[test]
fn taylor_and_movement_rank_by_the_first_order_sum() -> Result<()> {
    let model = mlp(vec![24])?;
    let calib = vec![batch(40, 5)?, batch(40, 6)?];
    let set = model.group_sets().into_iter().find(|s| s.name == "fc1").expect("fc1");
    let mut s = vec![0f64; set.size];
    for b in &calib {
        let grads = model.forward_t(b, &mut Mode::Eval)?.loss.backward()?;
        for m in &set.members {
            let p = model.params().get(&m.param)?;
            let wg = (p.effective()? * grads.get(p.tensor()).expect("gradient"))?;
            for (a, v) in s.iter_mut().zip(set.unit_rows(&wg, m.axis)?.sum(1)?.to_vec1::<f32>()?) {
                *a += v as f64;
            }
        }
    }
    let top = |score: &dyn Fn(f64) -> f64| {
        let mut idx: Vec<usize> = (0..s.len()).collect();
        idx.sort_by(|&a, &b| score(s[b]).total_cmp(&score(s[a])));
        let mut k = idx[..8].to_vec();
        k.sort_unstable();
        k
    };
    let taylor = select(model.as_ref(), &config(GroupCriterion::Taylor, 8), &calib, 0)?.keep["fc1"].clone();
    let movement = select(model.as_ref(), &config(GroupCriterion::Movement, 8), &calib, 0)?.keep["fc1"].clone();
    assert_eq!(taylor, top(&|x| x * x));
    assert_eq!(movement, top(&|x| -x));
    assert_ne!(taylor, movement, "the sign should matter on this model (s = {s:?})");
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

/// A CIFAR ResNet-8 (4 classes) whose parameters named like `pattern` are
/// drawn from U(0.5, 1.5) (BN statistics or affine terms away from their
/// identity initialisation).
fn resnet8(seed: u64, pattern: &str) -> Result<Box<dyn Model>> {
    use espalier_models::resnet::ResNetConfig;
    let model =
        ModelConfig::Resnet(ResNetConfig { num_classes: 4, ..ResNetConfig::cifar(8) }).init(seed, &Device::Cpu)?;
    let mut rng = Rng::new(seed + 3);
    for p in model.params().iter().filter(|p| p.name().contains(pattern)) {
        let n = p.numel();
        let v: Vec<f32> = (0..n).map(|_| 0.5 + rng.uniform() as f32).collect();
        p.set(&Tensor::from_vec(v, n, &Device::Cpu)?)?;
    }
    Ok(model)
}

/// ResNet inner channels: masking (conv rows, BN entries, next conv's
/// columns) and shrinking agree in evaluation mode, BN running statistics are
/// sliced with their channels, criteria that probe activations run, and a
/// block cannot lose every inner channel.
#[test]
fn resnet_inner_channels_mask_and_shrink_agree() -> Result<()> {
    // Non-trivial running statistics, so BN's evaluation path matters.
    let model = resnet8(5, "running_")?;
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
    for method in [
        GroupCriterion::Activation,
        GroupCriterion::L1,
        GroupCriterion::Mi,
        GroupCriterion::Taylor,
        GroupCriterion::Ispasp,
    ] {
        let sel = select(small.as_ref(), &config(method, 4), std::slice::from_ref(&b), 0)?;
        assert!(sel.keep.values().all(|k| k.len() == 4), "{method:?}");
    }
    let err = shrink(small.as_ref(), &BTreeMap::from([("layer1.0.conv1".to_string(), vec![])])).err().expect("refused");
    assert!(err.to_string().contains("no channels"), "{err}");
    Ok(())
}

/// i-SpaSP on a ResNet basic block (as Espalier defines it for ResNets: "a ResNet basic block
/// conv1/bn1 → conv2/bn2"): the consumer map is conv2 with bn2's evaluation
/// scale, so what it loses when channels are dropped is exactly what the
/// block's `bn2(conv2(·))` loses; and the output residual falls as the block
/// keeps more channels, to zero with all of them.
#[test]
fn resnet_ispasp_goes_through_the_block_convolution() -> Result<()> {
    let model = resnet8(6, "bn")?;
    let mut rng = Rng::new(10);
    let x: Vec<f32> = (0..16 * 3 * 8 * 8).map(|_| rng.normal() as f32).collect();
    let b = Batch {
        inputs: Inputs::Dense(Tensor::from_vec(x, (16, 3, 8, 8), &Device::Cpu)?),
        labels: Tensor::from_vec((0..16u32).map(|i| i % 4).collect::<Vec<_>>(), 16, &Device::Cpu)?,
    };
    let set = "layer2.0.conv1";
    let h = model.consumer_input(&b, set)?;
    assert_eq!(h.dims(), &[16, 32, 4, 4]);
    // consume(h) − consume(h ⊙ m) against bn2(conv2(h)) − bn2(conv2(h ⊙ m)) in eval mode.
    let m: Vec<f32> = (0..32).map(|i| (i % 3 == 0) as u8 as f32).collect();
    let hm = h.broadcast_mul(&Tensor::from_vec(m, (1, 32, 1, 1), &Device::Cpu)?)?;
    let ours = (model.consume(set, &h)? - model.consume(set, &hm)?)?;
    let block = |t: &Tensor| -> Result<Tensor> {
        let w = model.params().get("layer2.0.conv2.weight")?.tensor();
        let y = t.conv2d(w, 1, 1, 1, 1)?;
        let p = |n: &str| -> Result<Tensor> {
            Ok(model.params().get(&format!("layer2.0.bn2.{n}"))?.tensor().reshape((1, 32, 1, 1))?)
        };
        let scale = (p("weight")? / (p("running_var")? + 1e-5)?.sqrt()?)?;
        Ok(y.broadcast_sub(&p("running_mean")?)?.broadcast_mul(&scale)?.broadcast_add(&p("bias")?)?)
    };
    let theirs = (block(&h)? - block(&hm)?)?;
    let d = max_diff(&ours, &theirs)?;
    assert!(d < 1e-4, "consumer map and block differ by {d}");
    let calib = vec![b];
    let mut last = f64::INFINITY;
    for s in [2, 4, 8, 16, 32] {
        let mut c = config(GroupCriterion::Ispasp, s);
        c.groups = vec![set.to_string()];
        let r = select(model.as_ref(), &c, &calib, 0)?.residual[set];
        assert!(r < last, "residual {r} at s={s} is not below {last}");
        last = r;
    }
    assert!(last < 1e-6, "keeping every channel leaves residual {last}");
    Ok(())
}

/// Golden: MI visits BERT's group sets from the output down (layer 1's FFN,
/// layer 1's heads, layer 0's FFN, layer 0's heads), each after the set
/// above it is chosen; model-order criteria visit them the other way.
#[test]
fn mi_visits_bert_from_the_output_down() -> Result<()> {
    use espalier_models::bert::{BertConfig, BertTask};
    let cfg = BertConfig {
        vocab_size: 40,
        hidden_size: 8,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 12,
        max_position_embeddings: 8,
        ..BertConfig::base(BertTask::Classification { num_labels: 2 })
    };
    let pb = ParamBuilder::from_seed(4, DType::F32, &Device::Cpu);
    let model = ModelConfig::Bert(cfg).build(&pb)?;
    let mut rng = Rng::new(9);
    let calib: Vec<Batch> = (0..4)
        .map(|_| -> Result<Batch> {
            let ids: Vec<u32> = (0..8 * 6).map(|_| 1 + rng.below(39) as u32).collect();
            let labels: Vec<u32> = (0..8).map(|_| rng.below(2) as u32).collect();
            let dev = Device::Cpu;
            Ok(Batch {
                inputs: Inputs::Tokens {
                    input_ids: Tensor::from_vec(ids, (8, 6), &dev)?,
                    token_type_ids: Tensor::zeros((8, 6), DType::U32, &dev)?,
                    attention_mask: Tensor::ones((8, 6), DType::F32, &dev)?,
                },
                labels: Tensor::from_vec(labels, 8, &dev)?,
            })
        })
        .collect::<Result<_>>()?;
    let top_down = [
        "encoder.layer.1.intermediate",
        "encoder.layer.1.attention.heads",
        "encoder.layer.0.intermediate",
        "encoder.layer.0.attention.heads",
    ];
    let mi = StructuredConfig { keep_ratio: Some(0.5), ..config(GroupCriterion::Mi, 1) };
    let sel = select(model.as_ref(), &StructuredConfig { keep: None, ..mi }, &calib, 0)?;
    assert_eq!(sel.order, top_down);
    assert_eq!(sel.keep["encoder.layer.1.attention.heads"].len(), 1);
    assert_eq!(sel.keep["encoder.layer.0.intermediate"].len(), 6);
    let l1 = StructuredConfig { keep_ratio: Some(0.5), ..config(GroupCriterion::L1, 1) };
    let sel = select(model.as_ref(), &StructuredConfig { keep: None, ..l1 }, &calib, 0)?;
    assert_eq!(sel.order, top_down.into_iter().rev().collect::<Vec<_>>());
    Ok(())
}

/// The loss of the subnetwork that keeps `keep` of `fc1`'s units with the
/// head scaled by `scale`, computed by shrinking a fresh copy of the model
/// and running it: an implementation independent of the criterion's.
fn subnetwork_loss(keep: &[usize], scale: f64, b: &Batch) -> Result<f32> {
    let model = mlp(vec![24])?;
    let head = model.params().get("head.weight")?;
    head.set(&head.tensor().affine(scale, 0.0)?)?;
    let small = shrink(model.as_ref(), &BTreeMap::from([("fc1".to_string(), keep.to_vec())]))?;
    Ok(small.forward_t(b, &mut Mode::Eval)?.loss.to_scalar::<f32>()?)
}

/// Greedy forward selection (Ye et al. 2020) adds, at step m + 1, the unit
/// whose subnetwork (the kept units weighted N/(m + 1)) has the lowest
/// loss; with `rescale` the shrunk model is that subnetwork.
#[test]
fn greedy_forward_selection_adds_the_unit_that_lowers_the_loss_most() -> Result<()> {
    let calib = vec![batch(60, 11)?];
    let (n, k) = (24usize, 4usize);
    let mut want: Vec<usize> = Vec::new();
    for m in 0..k {
        let mut best = (f32::INFINITY, 0);
        for j in (0..n).filter(|j| !want.contains(j)) {
            let mut s = want.clone();
            s.push(j);
            s.sort_unstable();
            let l = subnetwork_loss(&s, n as f64 / (m + 1) as f64, &calib[0])?;
            if l < best.0 {
                best = (l, j);
            }
        }
        want.push(best.1);
    }
    want.sort_unstable();

    let model = mlp(vec![n])?;
    let got = select(model.as_ref(), &config(GroupCriterion::GreedyFs, k), &calib, 0)?.keep["fc1"].clone();
    assert_eq!(got, want);
    // The head now carries N/k: the shrunk model is the selected subnetwork.
    let small = shrink(model.as_ref(), &BTreeMap::from([("fc1".to_string(), got.clone())]))?;
    let loss = small.forward_t(&calib[0], &mut Mode::Eval)?.loss.to_scalar::<f32>()?;
    assert!((loss - subnetwork_loss(&got, (n / k) as f64, &calib[0])?).abs() < 1e-5);

    // Without rescale the weights stay as they are.
    let mut c = config(GroupCriterion::GreedyFs, k);
    c.greedy.rescale = false;
    let model = mlp(vec![n])?;
    let before = model.params().get("head.weight")?.tensor().clone();
    select(model.as_ref(), &c, &calib, 0)?;
    assert_eq!(max_diff(&before, model.params().get("head.weight")?.tensor())?, 0.0);
    Ok(())
}

/// The loss objective needs the consumer to produce the logits: a first
/// hidden layer of a deeper network is refused with the way out named, and
/// the layer-wise reconstruction objective runs there.
#[test]
fn greedy_forward_selection_needs_the_logits_for_the_loss_objective() -> Result<()> {
    let calib = vec![batch(40, 12)?];
    let mut c = config(GroupCriterion::GreedyFs, 5);
    c.groups = vec!["fc1".into()];
    let err = select(mlp(vec![16, 12])?.as_ref(), &c, &calib, 0).expect_err("refused");
    assert!(err.to_string().contains("reconstruction") && err.to_string().contains("fc1"), "{err}");
    c.greedy.objective = espalier_prune::structured::greedy::Objective::Reconstruction;
    let sel = select(mlp(vec![16, 12])?.as_ref(), &c, &calib, 0)?;
    assert_eq!(sel.keep["fc1"].len(), 5);
    Ok(())
}
