//! Hugging Face export of pruned BERTs: the padded layout (stock
//! `transformers`) and the compact one (Espalier's modeling file) compute
//! the pruned model's logits; and `transformers` 4.x `pruned_heads`
//! checkpoints load with the logits `transformers` computed for them.

use std::path::Path;

use candle_core::{Device, Tensor};
use espalier_models::bert::export::{HfLayout, REMOTE_MODELING_FILE};
use espalier_models::bert::{Bert, BertConfig, BertTask};

/// A pruned tiny BERT: layer 0 keeps heads 1 and 3 of 4 and 5 of 12 units,
/// layer 1 nothing (no head, no unit), layer 2 one head and every unit.
fn pruned() -> BertConfig {
    BertConfig {
        vocab_size: 50,
        hidden_size: 16,
        num_hidden_layers: 3,
        num_attention_heads: 4,
        intermediate_size: 12,
        max_position_embeddings: 12,
        heads_per_layer: Some(vec![2, 0, 1]),
        ffn_per_layer: Some(vec![5, 0, 12]),
        kept_heads: Some(vec![vec![1, 3], vec![], vec![2]]),
        kept_ffn: Some(vec![vec![0, 2, 3, 7, 11], vec![], (0..12).collect()]),
        ..BertConfig::base(BertTask::Classification { num_labels: 3 })
    }
}

fn logits(m: &Bert) -> Tensor {
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[1u32, 5, 9, 2, 0, 0], [1, 7, 3, 30, 44, 2]], &dev).unwrap();
    let tt = Tensor::new(&[[0u32, 0, 0, 1, 0, 0], [0, 0, 1, 1, 1, 1]], &dev).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 0., 0.], [1., 1., 1., 1., 1., 1.]], &dev).unwrap();
    m.logits(&ids, &tt, &mask, None).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    a.sub(b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

fn config_json(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap()
}

#[test]
fn the_padded_export_is_stock_bert_with_the_pruned_models_logits() {
    let model = Bert::init(pruned(), 7, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let labels: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
    let e = model.export_hf(dir.path(), HfLayout::Padded, Some(&labels)).unwrap();
    assert_eq!((e.heads, e.ffn), (vec![4, 4, 4], vec![12, 12, 12]));
    let cfg = config_json(dir.path());
    // Nothing a stock `transformers` would not read as BERT at full width.
    for k in ["heads_per_layer", "ffn_per_layer", "kept_heads", "kept_ffn", "task", "auto_map"] {
        assert!(cfg.get(k).is_none(), "{k} in {cfg}");
    }
    assert_eq!(cfg["model_type"], "bert");
    assert_eq!(cfg["id2label"]["2"], "c");
    assert_eq!(cfg["label2id"]["b"], 1);
    let back = Bert::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    assert_eq!(back.bert_config().heads_per_layer, None);
    let d = max_diff(&logits(&model), &logits(&back));
    assert!(d < 1e-5, "padded logits differ by {d}");
    // Kept heads sit at their original positions: head 0 of layer 0 is zero.
    let t = candle_core::safetensors::load(dir.path().join("model.safetensors"), &Device::Cpu).unwrap();
    let q = &t["bert.encoder.layer.0.attention.self.query.weight"];
    assert_eq!(q.dims(), &[16, 16]);
    let head = |h: usize| q.narrow(0, h * 4, 4).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert_eq!((head(0), head(2)), (0.0, 0.0));
    assert!(head(1) > 0.0 && head(3) > 0.0);
}

#[test]
fn the_compact_export_keeps_the_widths_and_the_logits() {
    let model = Bert::init(pruned(), 8, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = model.export_hf(dir.path(), HfLayout::Compact, None).unwrap();
    // An empty layer keeps one zero head and one zero unit.
    assert_eq!((e.heads.clone(), e.ffn.clone()), (vec![2, 1, 1], vec![5, 1, 12]));
    assert!(dir.path().join(REMOTE_MODELING_FILE).is_file());
    let cfg = config_json(dir.path());
    assert_eq!(cfg["model_type"], "espalier_bert");
    assert_eq!(cfg["heads_per_layer"], serde_json::json!([2, 1, 1]));
    assert_eq!(
        cfg["auto_map"]["AutoModelForSequenceClassification"].as_str().unwrap().split('.').next(),
        Some("modeling_espalier_bert")
    );
    let back = Bert::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    assert_eq!(back.bert_config().ffn_per_layer, Some(vec![5, 1, 12]));
    let d = max_diff(&logits(&model), &logits(&back));
    assert!(d < 1e-5, "compact logits differ by {d}");
    assert!(e.parameters < model_parameters_padded(&model));
}

fn model_parameters_padded(model: &Bert) -> usize {
    let dir = tempfile::tempdir().unwrap();
    model.export_hf(dir.path(), HfLayout::Padded, None).unwrap().parameters
}

#[test]
fn wrong_label_counts_are_refused() {
    let model = Bert::init(pruned(), 9, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let e = model.export_hf(dir.path(), HfLayout::Padded, Some(&["x".to_string()])).unwrap_err().to_string();
    assert!(e.contains("1 label names") && e.contains("3 outputs"), "{e}");
}

/// A checkpoint that `transformers` 4.x wrote after `prune_heads`, and the
/// logits it computed (`scripts/hf_roundtrip.py fixture`).
#[test]
fn transformers_4_pruned_heads_checkpoints_load_with_their_logits() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pruned_heads");
    assert!(dir.join("config.json").is_file(), "fixture missing: {}", dir.display());
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let model = Bert::from_pretrained(&dir, None, &Device::Cpu).unwrap();
    let cfg = model.bert_config();
    let want_heads: Vec<usize> = serde_json::from_value(expected["heads_per_layer"].clone()).unwrap();
    assert_eq!(cfg.heads_per_layer.as_ref(), Some(&want_heads));
    let matrix = |k: &str| -> Tensor {
        let rows: Vec<Vec<f32>> = serde_json::from_value(expected[k].clone()).unwrap();
        let shape = (rows.len(), rows[0].len());
        Tensor::from_vec(rows.concat(), shape, &Device::Cpu).unwrap()
    };
    let ids = matrix("input_ids").to_dtype(candle_core::DType::U32).unwrap();
    let tt = matrix("token_type_ids").to_dtype(candle_core::DType::U32).unwrap();
    let got = model.logits(&ids, &tt, &matrix("attention_mask"), None).unwrap();
    let want = matrix("logits");
    let d = max_diff(&got, &want);
    assert!(d < 1e-5, "logits differ from transformers' by {d}");
}
