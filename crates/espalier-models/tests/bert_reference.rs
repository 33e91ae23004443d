//! Espalier's BERT against candle-transformers' `BertModel` (the numerical
//! reference; it cannot be trained, but its forward pass follows HF
//! `modeling_bert.py`) on the same weights: final hidden states agree to
//! 1e-4, on a small random BERT and on the real all-MiniLM-L6-v2.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert as reference;
use espalier_core::Rng;
use espalier_models::bert::{Bert, BertConfig, BertTask};
use espalier_models::Model;

fn small_config() -> BertConfig {
    BertConfig {
        vocab_size: 100,
        hidden_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 128,
        max_position_embeddings: 32,
        layer_norm_eps: 1e-5,
        ..BertConfig::base(BertTask::Classification { num_labels: 3 })
    }
}

/// Two sequences of length `t`, the second padded after 3 tokens, with
/// random ids below `vocab` and segment 1 on the second half.
fn tokens(vocab: usize, t: usize, seed: u64) -> (Tensor, Tensor, Tensor) {
    let mut rng = Rng::new(seed);
    let ids: Vec<u32> = (0..2 * t).map(|_| rng.below(vocab) as u32).collect();
    let tt: Vec<u32> = (0..2 * t).map(|i| u32::from(i % t >= t / 2)).collect();
    let mask: Vec<f32> = (0..2 * t).map(|i| if i >= t && i - t >= 3 { 0.0 } else { 1.0 }).collect();
    let dev = Device::Cpu;
    (
        Tensor::from_vec(ids, (2, t), &dev).unwrap(),
        Tensor::from_vec(tt, (2, t), &dev).unwrap(),
        Tensor::from_vec(mask, (2, t), &dev).unwrap(),
    )
}

fn reference_hidden(dir: &Path, ids: &Tensor, tt: &Tensor, mask: &Tensor) -> Tensor {
    let cfg: reference::Config =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let st = dir.join("model.safetensors");
    // SAFETY: the file is not modified while mapped.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[st], DType::F32, &Device::Cpu).unwrap() };
    let model = reference::BertModel::load(vb, &cfg).unwrap();
    model.forward(ids, tt, Some(mask)).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims());
    a.sub(b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn small_random_bert_matches_candle_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let model = Bert::init(small_config(), 11, &Device::Cpu).unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let (ids, tt, mask) = tokens(100, 9, 1);
    let ours = model.encode(&ids, &tt, &mask, None).unwrap();
    let theirs = reference_hidden(dir.path(), &ids, &tt, &mask);
    let d = max_abs_diff(&ours, &theirs);
    eprintln!("max abs diff vs candle-transformers: {d:e}");
    assert!(d < 1e-4, "max |Δ| = {d}");
    // The reloaded model (HF layout, `bert.` prefix) computes the same.
    let reloaded = Bert::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    let again = reloaded.encode(&ids, &tt, &mask, None).unwrap();
    assert_eq!(max_abs_diff(&ours, &again), 0.0);
}

fn shared_dir() -> PathBuf {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared"));
    assert!(dir.is_dir(), "../shared (real checkpoints and data) is missing: expected it at {}", dir.display());
    dir
}

#[test]
#[cfg_attr(not(feature = "shared-data"), ignore = "needs ../shared; run with --features shared-data")]
fn all_minilm_l6_v2_matches_candle_transformers() {
    let dir = shared_dir().join("models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").is_file(), "{} is missing", dir.display());
    let model = Bert::from_pretrained(&dir, Some(BertTask::Classification { num_labels: 2 }), &Device::Cpu).unwrap();
    let cfg = model.bert_config();
    assert_eq!((cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads), (6, 384, 12));
    // "hello, world!" [SEP] [PAD] [PAD] / "the quick brown fox jumps over" (uncased WordPiece ids).
    let dev = Device::Cpu;
    let ids = Tensor::new(
        &[[101u32, 7592, 1010, 2088, 999, 102, 0, 0], [101, 1996, 4248, 2829, 4419, 14523, 2058, 102]],
        &dev,
    )
    .unwrap();
    let tt = ids.zeros_like().unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 1., 1., 0., 0.], [1., 1., 1., 1., 1., 1., 1., 1.]], &dev).unwrap();
    let ours = model.encode(&ids, &tt, &mask, None).unwrap();
    let theirs = reference_hidden(&dir, &ids, &tt, &mask);
    let d = max_abs_diff(&ours, &theirs);
    eprintln!("max abs diff vs candle-transformers: {d:e}");
    assert!(d < 1e-4, "max |Δ| = {d}");
    // The weights are trainable (Vars) and the fresh head is N(0, 0.02²), bias 0.
    let head = model.params().get("classifier.weight").unwrap();
    assert!(head.is_head());
    let std = head.tensor().sqr().unwrap().mean_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    assert!((0.015..0.025).contains(&std), "classifier std {std}");
    let bias = model.params().get("classifier.bias").unwrap().tensor().abs().unwrap().max_all().unwrap();
    assert_eq!(bias.to_scalar::<f32>().unwrap(), 0.0);
}
