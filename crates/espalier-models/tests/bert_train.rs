//! Training behaviour of Espalier's BERT: gradients reach every parameter,
//! a pruned (per-layer widths) BERT trains and round-trips through
//! `save_pretrained`, dropout is seeded and off in evaluation, and a
//! shrunk model computes exactly what the masked full model computes.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::optim::{AdamW, Optimizer, ParamsAdamW};
use espalier_core::{Batch, Inputs, ParamBuilder, Rng};
use espalier_models::bert::{Bert, BertConfig, BertTask};
use espalier_models::{Mode, Model, ModelConfig};

fn config(task: BertTask) -> BertConfig {
    BertConfig {
        vocab_size: 50,
        hidden_size: 32,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 16,
        ..BertConfig::base(task)
    }
}

fn pruned_config() -> BertConfig {
    BertConfig {
        heads_per_layer: Some(vec![4, 2, 0]),
        ffn_per_layer: Some(vec![64, 32, 16]),
        ..config(BertTask::Classification { num_labels: 2 })
    }
}

/// `n` sequences of length 6 (the odd ones padded after 4 tokens); the
/// label is whether token 1 is below half the vocabulary.
fn batch(n: usize, regression: bool, seed: u64) -> Batch {
    let t = 6;
    let mut rng = Rng::new(seed);
    let mut ids = Vec::new();
    let mut mask = Vec::new();
    for i in 0..n {
        for j in 0..t {
            ids.push(if j == 0 { 1 } else { 2 + rng.below(48) as u32 });
            mask.push(if i % 2 == 1 && j >= 4 { 0f32 } else { 1.0 });
        }
    }
    let dev = Device::Cpu;
    let labels = if regression {
        let y: Vec<f32> = (0..n).map(|i| ids[i * t + 1] as f32 / 50.0).collect();
        Tensor::new(y, &dev).unwrap()
    } else {
        let y: Vec<u32> = (0..n).map(|i| u32::from(ids[i * t + 1] < 25)).collect();
        Tensor::new(y, &dev).unwrap()
    };
    let input_ids = Tensor::from_vec(ids, (n, t), &dev).unwrap();
    Batch {
        inputs: Inputs::Tokens {
            token_type_ids: input_ids.zeros_like().unwrap(),
            attention_mask: Tensor::from_vec(mask, (n, t), &dev).unwrap(),
            input_ids,
        },
        labels,
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn assert_all_grads_nonzero(model: &dyn Model, batch: &Batch) {
    let mut rng = Rng::new(3);
    let out = model.forward_t(batch, &mut Mode::Train(&mut rng)).unwrap();
    let grads = out.loss.backward().unwrap();
    let mut n = 0;
    for p in model.params().trainable() {
        let g = grads.get(p.var()).unwrap_or_else(|| panic!("no gradient for {}", p.name()));
        let m = g.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(m > 0.0, "zero gradient for {}", p.name());
        n += 1;
    }
    assert_eq!(n, model.params().len());
}

#[test]
fn every_parameter_gets_a_gradient() {
    let cfg = config(BertTask::Classification { num_labels: 3 });
    let model = ModelConfig::Bert(cfg).init(1, &Device::Cpu).unwrap();
    let mut b = batch(4, false, 1);
    b.labels = Tensor::new(&[0u32, 1, 2, 1], &Device::Cpu).unwrap();
    // Use both segment ids so that both token-type rows are reached.
    if let Inputs::Tokens { token_type_ids, .. } = &mut b.inputs {
        *token_type_ids = Tensor::new(&[[0u32, 0, 0, 1, 1, 1]; 4], &Device::Cpu).unwrap();
    }
    assert_all_grads_nonzero(model.as_ref(), &b);
    // 5 embedding + 16 per layer + 2 pooler + 2 classifier tensors.
    assert_eq!(model.params().len(), 5 + 3 * 16 + 4);

    // The pruned model (including a layer without heads) and regression.
    let pruned = ModelConfig::Bert(pruned_config()).init(1, &Device::Cpu).unwrap();
    b.labels = Tensor::new(&[0u32, 1, 1, 0], &Device::Cpu).unwrap();
    assert_all_grads_nonzero(pruned.as_ref(), &b);
    // Layer 2 has no attention weights: only the output bias and LayerNorm.
    assert!(pruned.params().get("encoder.layer.2.attention.self.query.weight").is_err());
    assert!(pruned.params().get("encoder.layer.2.attention.output.dense.weight").is_err());
    assert!(pruned.params().get("encoder.layer.2.attention.output.dense.bias").is_ok());
    let reg = ModelConfig::Bert(config(BertTask::Regression)).init(1, &Device::Cpu).unwrap();
    let rb = batch(4, true, 1);
    let out = reg.forward_t(&rb, &mut Mode::Eval).unwrap();
    assert_eq!(out.logits.dims(), &[4]);
    assert_all_grads_nonzero(reg.as_ref(), &rb);
}

#[test]
fn pruned_bert_trains_saves_and_reloads() {
    let dev = Device::Cpu;
    let model = Bert::init(pruned_config(), 5, &dev).unwrap();
    let p = model.params();
    assert_eq!(p.get("encoder.layer.1.attention.self.query.weight").unwrap().dims(), [16, 32]);
    assert_eq!(p.get("encoder.layer.1.attention.output.dense.weight").unwrap().dims(), [32, 16]);
    assert_eq!(p.get("encoder.layer.2.intermediate.dense.weight").unwrap().dims(), [16, 32]);
    assert_eq!(p.get("encoder.layer.2.output.dense.weight").unwrap().dims(), [32, 16]);

    let b = batch(16, false, 2);
    let eval_loss = |m: &Bert| m.forward_t(&b, &mut Mode::Eval).unwrap().loss.to_scalar::<f32>().unwrap();
    let before = eval_loss(&model);
    let vars = model.params().trainable().map(|p| p.var().clone()).collect();
    let mut opt = AdamW::new(vars, ParamsAdamW { lr: 1e-2, weight_decay: 0.0, ..Default::default() }).unwrap();
    let mut losses = Vec::new();
    for step in 0..20 {
        let mut rng = Rng::derive(5, "dropout", &[step]);
        let out = model.forward_t(&b, &mut Mode::Train(&mut rng)).unwrap();
        losses.push(out.loss.to_scalar::<f32>().unwrap());
        opt.backward_step(&out.loss).unwrap();
    }
    let after = eval_loss(&model);
    eprintln!("pruned BERT eval loss {before} -> {after}");
    assert!(after < 0.8 * before, "eval loss {before} -> {after} (train losses {losses:?})");

    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("config.json")).unwrap()).unwrap();
    assert_eq!(json["heads_per_layer"], serde_json::json!([4, 2, 0]));
    assert_eq!(json["ffn_per_layer"], serde_json::json!([64, 32, 16]));
    let reloaded = Bert::from_pretrained(dir.path(), None, &dev).unwrap();
    assert_eq!(reloaded.bert_config(), model.bert_config());
    let a = model.forward_t(&b, &mut Mode::Eval).unwrap().logits;
    let c = reloaded.forward_t(&b, &mut Mode::Eval).unwrap().logits;
    assert_eq!(max_abs_diff(&a, &c), 0.0);
}

#[test]
fn dropout_is_seeded_and_off_in_eval() {
    let dev = Device::Cpu;
    let cfg = config(BertTask::Classification { num_labels: 2 });
    let model = Bert::init(cfg.clone(), 9, &dev).unwrap();
    let b = batch(4, false, 3);
    let train = |seed: u64| {
        let mut rng = Rng::new(seed);
        model.forward_t(&b, &mut Mode::Train(&mut rng)).unwrap().logits
    };
    assert_eq!(max_abs_diff(&train(7), &train(7)), 0.0);
    assert!(max_abs_diff(&train(7), &train(8)) > 1e-4);
    let eval = model.forward_t(&b, &mut Mode::Eval).unwrap().logits;
    assert_eq!(max_abs_diff(&eval, &model.forward_t(&b, &mut Mode::Eval).unwrap().logits), 0.0);
    assert!(max_abs_diff(&eval, &train(7)) > 1e-4);
    // Same weights with every dropout probability 0: training = evaluation.
    let no_drop = BertConfig {
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        classifier_dropout: Some(0.0),
        ..cfg
    };
    let m0 = Bert::init(no_drop, 9, &dev).unwrap();
    let mut rng = Rng::new(7);
    let t0 = m0.forward_t(&b, &mut Mode::Train(&mut rng)).unwrap().logits;
    assert_eq!(max_abs_diff(&eval, &t0), 0.0);
}

/// Removing heads and feed-forward units (slicing the tensors, recording
/// the widths) gives exactly the outputs of the full model with those
/// heads' and units' output columns masked, including a layer whose heads
/// are all removed (its output bias and LayerNorm remain).
#[test]
fn shrunk_model_equals_masked_model() {
    let dev = Device::Cpu;
    let cfg = config(BertTask::Classification { num_labels: 2 });
    let full = Bert::init(cfg.clone(), 4, &dev).unwrap();
    let kept_heads = vec![vec![0, 1, 2, 3], vec![1, 3], vec![]];
    let kept_ffn: Vec<Vec<usize>> = vec![(0..64).collect(), (0..64).filter(|i| i % 2 == 0).collect(), vec![3, 10, 40]];
    let hs = cfg.head_size();
    let idx = |v: &[usize]| Tensor::new(v.iter().map(|&i| i as u32).collect::<Vec<_>>(), &dev).unwrap();
    let head_units = |heads: &[usize]| -> Vec<usize> { heads.iter().flat_map(|h| h * hs..(h + 1) * hs).collect() };

    let b = batch(4, false, 6);
    let unmasked = full.forward_t(&b, &mut Mode::Eval).unwrap().logits;
    let mut tensors: BTreeMap<String, Tensor> = full.params().snapshot().unwrap();
    for l in 0..3 {
        let pre = format!("encoder.layer.{l}");
        let units = head_units(&kept_heads[l]);
        let mut keep_col = vec![0f32; 32];
        for &u in &units {
            keep_col[u] = 1.0;
        }
        let col_mask = Tensor::new(keep_col, &dev).unwrap().unsqueeze(0).unwrap().broadcast_as((32, 32)).unwrap();
        full.params()
            .get(&format!("{pre}.attention.output.dense.weight"))
            .unwrap()
            .set_mask(Some(col_mask.contiguous().unwrap()))
            .unwrap();
        let mut keep_ffn = vec![0f32; 64];
        for &u in &kept_ffn[l] {
            keep_ffn[u] = 1.0;
        }
        let ffn_mask = Tensor::new(keep_ffn, &dev).unwrap().unsqueeze(0).unwrap().broadcast_as((32, 64)).unwrap();
        full.params()
            .get(&format!("{pre}.output.dense.weight"))
            .unwrap()
            .set_mask(Some(ffn_mask.contiguous().unwrap()))
            .unwrap();

        for name in ["query", "key", "value"] {
            for suffix in ["weight", "bias"] {
                let k = format!("{pre}.attention.self.{name}.{suffix}");
                let t = tensors.remove(&k).unwrap();
                if !units.is_empty() {
                    tensors.insert(k, t.index_select(&idx(&units), 0).unwrap());
                }
            }
        }
        let k = format!("{pre}.attention.output.dense.weight");
        let t = tensors.remove(&k).unwrap();
        if !units.is_empty() {
            tensors.insert(k, t.index_select(&idx(&units), 1).unwrap());
        }
        for k in [format!("{pre}.intermediate.dense.weight"), format!("{pre}.intermediate.dense.bias")] {
            let t = tensors.remove(&k).unwrap();
            tensors.insert(k, t.index_select(&idx(&kept_ffn[l]), 0).unwrap());
        }
        let k = format!("{pre}.output.dense.weight");
        let t = tensors.remove(&k).unwrap();
        tensors.insert(k, t.index_select(&idx(&kept_ffn[l]), 1).unwrap());
    }
    let small_cfg = BertConfig {
        heads_per_layer: Some(kept_heads.iter().map(Vec::len).collect()),
        ffn_per_layer: Some(kept_ffn.iter().map(Vec::len).collect()),
        kept_heads: Some(kept_heads),
        kept_ffn: Some(kept_ffn),
        ..cfg
    };
    let pb = ParamBuilder::from_tensors(tensors, "shrunk", DType::F32, &dev);
    let small = Bert::new(small_cfg, &pb).unwrap();
    let (_, unused) = pb.finish();
    assert!(unused.is_empty(), "{unused:?}");
    let a = full.forward_t(&b, &mut Mode::Eval).unwrap().logits;
    let s = small.forward_t(&b, &mut Mode::Eval).unwrap().logits;
    let d = max_abs_diff(&a, &s);
    assert!(d < 1e-5, "max |Δ| = {d}");
    // The masks did change the function.
    assert!(max_abs_diff(&a, &unmasked) > 1e-4);
}

/// The generic path: the model's own group sets (heads, feed-forward units),
/// `mask_groups` on the full model and `shrink` to the smaller one agree
/// (a layer may lose every head); the probes have one row per real token;
/// the shrunk model reloads from `save_pretrained`.
#[test]
fn group_sets_mask_and_shrink_agree() {
    use espalier_core::groups::mask_groups;
    use espalier_core::Keep;
    let dev = Device::Cpu;
    let full = Bert::init(config(BertTask::Classification { num_labels: 2 }), 5, &dev).unwrap();
    let sets = full.group_sets();
    let names: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names.len(), 6, "{names:?}");
    assert!(names.contains(&"encoder.layer.1.attention.heads") && names.contains(&"encoder.layer.2.intermediate"));
    let b = batch(4, false, 9);
    // Two sequences of 6 tokens and two of 4: 20 real tokens.
    assert_eq!(full.probe(&b, "encoder.layer.1.attention.heads").unwrap().dims(), &[20, 32]);
    assert_eq!(full.probe(&b, "encoder.layer.2.intermediate").unwrap().dims(), &[20, 64]);
    assert!(full.probe(&b, "encoder.layer.7.intermediate").is_err());
    let keep: Keep = BTreeMap::from([
        ("encoder.layer.0.attention.heads".to_string(), vec![1, 3]),
        ("encoder.layer.1.attention.heads".to_string(), vec![]),
        ("encoder.layer.0.intermediate".to_string(), (0..64).filter(|i| i % 3 == 0).collect()),
        ("encoder.layer.2.intermediate".to_string(), vec![5, 6, 60]),
    ]);
    let small = espalier_models::shrink(&full, &keep).unwrap();
    let ModelConfig::Bert(c) = small.config() else { panic!("not a BERT") };
    assert_eq!(c.heads_per_layer, Some(vec![2, 0, 4]));
    assert_eq!(c.ffn_per_layer, Some(vec![22, 64, 3]));
    mask_groups(full.params(), &sets, &keep).unwrap();
    let masked = full.forward_t(&b, &mut Mode::Eval).unwrap().logits;
    let shrunk = small.forward_t(&b, &mut Mode::Eval).unwrap().logits;
    let d = (masked - &shrunk).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-5, "masked and shrunk BERT differ by {d}");
    // Save in the Hugging Face layout and reload from the directory alone.
    let ModelConfig::Bert(cfg) = small.config() else { unreachable!() };
    let pb = ParamBuilder::from_tensors(small.params().snapshot().unwrap(), "small", DType::F32, &dev);
    let small = Bert::new(cfg, &pb).unwrap();
    let dir = tempfile::tempdir().unwrap();
    small.save_pretrained(dir.path()).unwrap();
    let back = Bert::from_pretrained(dir.path(), None, &dev).unwrap();
    let again = back.forward_t(&b, &mut Mode::Eval).unwrap().logits;
    let d = (shrunk - again).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(d < 1e-6, "reloaded BERT differs by {d}");
}
