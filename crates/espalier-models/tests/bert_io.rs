//! Loading and saving Hugging Face BERT checkpoints: `bert.` prefix or not,
//! old `gamma`/`beta` names, `pytorch_model.bin`, errors that name the file
//! and tensor, a fresh task head, and the configuration representations.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};
use espalier_core::Rng;
use espalier_models::bert::{Bert, BertConfig, BertTask, HiddenAct};
use espalier_models::{Model, ModelConfig};

fn tiny(task: BertTask) -> BertConfig {
    BertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 24,
        max_position_embeddings: 10,
        ..BertConfig::base(task)
    }
}

fn inputs() -> (Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[1u32, 5, 9, 2, 0], [1, 7, 3, 30, 2]], &dev).unwrap();
    let tt = Tensor::new(&[[0u32, 0, 0, 1, 1], [0, 0, 1, 1, 1]], &dev).unwrap();
    let mask = Tensor::new(&[[1f32, 1., 1., 1., 0.], [1., 1., 1., 1., 1.]], &dev).unwrap();
    (ids, tt, mask)
}

fn logits(m: &Bert) -> Tensor {
    let (ids, tt, mask) = inputs();
    m.logits(&ids, &tt, &mask, None).unwrap()
}

fn same(a: &Tensor, b: &Tensor) -> bool {
    a.sub(b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() == 0.0
}

fn read(dir: &Path) -> BTreeMap<String, Tensor> {
    candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap().into_iter().collect()
}

/// Rewrites `dir/model.safetensors` with the keys and tensors `f` returns.
fn rewrite(dir: &Path, f: impl Fn(BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor>) {
    let t = f(read(dir));
    candle_core::safetensors::save(&t.into_iter().collect(), dir.join("model.safetensors")).unwrap();
}

/// A saved tiny 3-class model and its eval logits.
fn saved() -> (tempfile::TempDir, Tensor) {
    let dir = tempfile::tempdir().unwrap();
    let m = Bert::init(tiny(BertTask::Classification { num_labels: 3 }), 3, &Device::Cpu).unwrap();
    m.save_pretrained(dir.path()).unwrap();
    (dir, logits(&m))
}

#[test]
fn loads_with_and_without_the_bert_prefix_and_old_layernorm_names() {
    let (dir, expected) = saved();
    let keys: Vec<String> = read(dir.path()).into_keys().collect();
    assert!(keys.contains(&"bert.encoder.layer.1.attention.output.LayerNorm.weight".to_string()));
    assert!(keys.contains(&"classifier.weight".to_string()));
    let m = Bert::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    assert!(same(&logits(&m), &expected));
    // Trainable: the loaded weights are Vars the optimizer can update.
    assert!(m.params().trainable().count() == m.params().len());

    // Without the prefix (a bare BertModel layout), with gamma/beta names.
    rewrite(dir.path(), |t| {
        t.into_iter()
            .map(|(k, v)| {
                let k = k.strip_prefix("bert.").unwrap_or(&k).to_string();
                let k = k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta");
                (k, v)
            })
            .collect()
    });
    assert!(read(dir.path()).contains_key("embeddings.LayerNorm.gamma"));
    let m = Bert::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    assert!(same(&logits(&m), &expected));
}

#[test]
fn wrong_shape_and_missing_tensors_name_the_tensor_and_file() {
    let (dir, _) = saved();
    let name = "encoder.layer.1.attention.self.query.weight";
    rewrite(dir.path(), |mut t| {
        t.insert(format!("bert.{name}"), Tensor::zeros((8, 16), candle_core::DType::F32, &Device::Cpu).unwrap());
        t
    });
    let err = Bert::from_pretrained(dir.path(), None, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains("model.safetensors") && err.contains("[16, 16]"), "{err}");

    let (dir, _) = saved();
    let name = "encoder.layer.0.output.dense.weight";
    rewrite(dir.path(), |mut t| {
        t.remove(&format!("bert.{name}"));
        t
    });
    let err = Bert::from_pretrained(dir.path(), None, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains(name) && err.contains("model.safetensors"), "{err}");

    // A task whose head does not fit the saved classifier.
    let (dir, _) = saved();
    let err = Bert::from_pretrained(dir.path(), Some(BertTask::Classification { num_labels: 5 }), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("classifier.weight"), "{err}");

    // No weights file at all.
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    let err = Bert::from_pretrained(dir.path(), None, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("no model.safetensors"), "{err}");
}

#[test]
fn a_missing_head_starts_fresh_and_unused_tensors_are_ignored() {
    let (dir, _) = saved();
    rewrite(dir.path(), |mut t| {
        t.remove("classifier.weight");
        t.remove("classifier.bias");
        t.insert("cls.predictions.bias".into(), Tensor::zeros(40, candle_core::DType::F32, &Device::Cpu).unwrap());
        t.insert("bert.embeddings.position_ids".into(), Tensor::arange(0i64, 10, &Device::Cpu).unwrap());
        t
    });
    let task = BertTask::Regression;
    let a = Bert::from_pretrained_with_seed(dir.path(), Some(task), 1, &Device::Cpu).unwrap();
    let b = Bert::from_pretrained_with_seed(dir.path(), Some(task), 1, &Device::Cpu).unwrap();
    let c = Bert::from_pretrained_with_seed(dir.path(), Some(task), 2, &Device::Cpu).unwrap();
    assert_eq!(a.params().get("classifier.weight").unwrap().dims(), [1, 16]);
    assert!(same(&logits(&a), &logits(&b)));
    assert!(!same(&logits(&a), &logits(&c)));
    assert_eq!(logits(&a).dims(), [2]);
    let bias = a.params().get("classifier.bias").unwrap().tensor().to_vec1::<f32>().unwrap();
    assert_eq!(bias, [0.0]);
}

// --- pytorch_model.bin -----------------------------------------------------

/// A minimal PyTorch zip checkpoint (`torch.save(state_dict)` layout:
/// `archive/data.pkl` + `archive/data/<key>`), pickle protocol 2, written
/// opcode by opcode: enough for candle's reader, which is what we test.
fn write_pytorch_bin(path: &Path, tensors: &BTreeMap<String, Tensor>) {
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        p.push(b'J');
        p.extend((v as i32).to_le_bytes());
    }
    fn tuple(p: &mut Vec<u8>, vs: &[usize]) {
        p.push(b'(');
        for &v in vs {
            int(p, v);
        }
        p.push(b't');
    }
    let mut p = vec![0x80, 2, b'}', b'('];
    let mut blobs = Vec::new();
    for (i, (name, t)) in tensors.iter().enumerate() {
        let dims = t.dims().to_vec();
        let mut strides = vec![1usize; dims.len()];
        for d in (0..dims.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * dims[d + 1];
        }
        unicode(&mut p, name);
        p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
        p.push(b'(');
        unicode(&mut p, "storage");
        p.extend(b"ctorch\nFloatStorage\n");
        unicode(&mut p, &i.to_string());
        unicode(&mut p, "cpu");
        int(&mut p, t.elem_count());
        p.extend(b"tQ");
        int(&mut p, 0);
        tuple(&mut p, &dims);
        tuple(&mut p, &strides);
        p.extend([0x89]);
        p.extend(b"ccollections\nOrderedDict\n)R");
        p.extend(b"tR");
        let vals = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        blobs.push(vals.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>());
    }
    p.extend(b"u.");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("archive/data.pkl", opts).unwrap();
    zip.write_all(&p).unwrap();
    for (i, b) in blobs.iter().enumerate() {
        zip.start_file(format!("archive/data/{i}"), opts).unwrap();
        zip.write_all(b).unwrap();
    }
    zip.start_file("archive/version", opts).unwrap();
    zip.write_all(b"3\n").unwrap();
    zip.finish().unwrap();
}

#[test]
fn loads_pytorch_model_bin() {
    let (dir, expected) = saved();
    let tensors = read(dir.path());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    write_pytorch_bin(&dir.path().join("pytorch_model.bin"), &tensors);
    let m = Bert::from_pretrained(dir.path(), None, &Device::Cpu).unwrap();
    assert!(same(&logits(&m), &expected));
}

// --- configuration -----------------------------------------------------------

#[test]
fn config_round_trips_and_reads_hf_json() {
    let cfg = BertConfig {
        heads_per_layer: Some(vec![2, 0]),
        ffn_per_layer: Some(vec![5, 24]),
        kept_heads: Some(vec![vec![0, 1], vec![]]),
        kept_ffn: Some(vec![vec![1, 2, 3, 8, 20], (0..24).collect()]),
        hidden_act: HiddenAct::GeluTanh,
        classifier_dropout: Some(0.2),
        ..tiny(BertTask::Classification { num_labels: 3 })
    };
    let mc = ModelConfig::Bert(cfg.clone());
    mc.validate("model").unwrap();
    let json = serde_json::to_string(&mc).unwrap();
    assert_eq!(serde_json::from_str::<ModelConfig>(&json).unwrap(), mc);
    let toml_text = toml::to_string(&mc).unwrap();
    assert_eq!(toml::from_str::<ModelConfig>(&toml_text).unwrap(), mc, "{toml_text}");
    // Espalier's representation is strict; a TOML user writes only what differs from BERT-base.
    let bad = json.replace("\"vocab_size\"", "\"vocab_sise\"");
    assert!(serde_json::from_str::<ModelConfig>(&bad).unwrap_err().to_string().contains("vocab_sise"));
    let minimal: ModelConfig = toml::from_str("kind = \"bert\"\ntask = { kind = \"regression\" }\n").unwrap();
    assert_eq!(minimal, ModelConfig::Bert(BertConfig::base(BertTask::Regression)));

    // The HF config.json written on save reads back to the same config.
    let hf = cfg.to_hf_json().to_string();
    assert_eq!(BertConfig::from_hf_json(&hf, None).unwrap(), cfg);

    // A real HF file with keys Espalier does not know, and no task.
    let text = r#"{"_name_or_path": "x", "architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1,
        "gradient_checkpointing": false, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 384,
        "initializer_range": 0.02, "intermediate_size": 1536, "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
        "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute",
        "transformers_version": "4.8.2", "type_vocab_size": 2, "use_cache": true, "vocab_size": 30522}"#;
    let err = BertConfig::from_hf_json(text, None).unwrap_err();
    assert!(err.contains("no task head"), "{err}");
    let c = BertConfig::from_hf_json(text, Some(BertTask::Classification { num_labels: 2 })).unwrap();
    assert_eq!((c.hidden_size, c.num_hidden_layers, c.intermediate_size), (384, 6, 1536));
    // HF's BertForSequenceClassification configs imply the task.
    let cls = text.replace("[\"BertModel\"]", "[\"BertForSequenceClassification\"]");
    let with_labels =
        cls.replace("\"use_cache\"", "\"id2label\": {\"0\": \"neg\", \"1\": \"pos\", \"2\": \"x\"}, \"use_cache\"");
    assert_eq!(BertConfig::from_hf_json(&with_labels, None).unwrap().task, BertTask::Classification { num_labels: 3 });
    let reg = cls.replace("\"use_cache\"", "\"problem_type\": \"regression\", \"num_labels\": 1, \"use_cache\"");
    assert_eq!(BertConfig::from_hf_json(&reg, None).unwrap().task, BertTask::Regression);
    let roberta = text.replace("\"model_type\": \"bert\"", "\"model_type\": \"roberta\"");
    assert!(BertConfig::from_hf_json(&roberta, Some(BertTask::Regression)).unwrap_err().contains("roberta"));
}

#[test]
fn invalid_configs_name_the_key() {
    let base = tiny(BertTask::Classification { num_labels: 2 });
    let cases: Vec<(BertConfig, &str)> = vec![
        (BertConfig { heads_per_layer: Some(vec![2]), ..base.clone() }, "model.heads_per_layer has 1 entries"),
        (BertConfig { heads_per_layer: Some(vec![2, 3]), ..base.clone() }, "model.heads_per_layer[1] = 3"),
        (BertConfig { ffn_per_layer: Some(vec![24, 25]), ..base.clone() }, "model.ffn_per_layer[1]"),
        (BertConfig { num_attention_heads: 3, ..base.clone() }, "model.hidden_size (16) must be a multiple"),
        (BertConfig { hidden_dropout_prob: 1.0, ..base.clone() }, "model.hidden_dropout_prob"),
        (
            BertConfig { kept_heads: Some(vec![vec![0], vec![0, 1]]), ..base.clone() },
            "model.kept_heads[0] lists 1 indices",
        ),
        (BertConfig { task: BertTask::Classification { num_labels: 1 }, ..base.clone() }, "model.task.num_labels"),
    ];
    for (cfg, msg) in cases {
        let err = ModelConfig::Bert(cfg.clone()).validate("model").unwrap_err();
        assert!(err.contains(msg), "expected `{msg}` in `{err}`");
        // Building refuses it too, with the same message.
        let built = Bert::init(cfg, 0, &Device::Cpu);
        assert!(built.unwrap_err().to_string().contains(msg));
    }
    // Sequences longer than the position table are an error, not a panic.
    let m = Bert::init(base, 0, &Device::Cpu).unwrap();
    let ids = Tensor::zeros((1, 11), candle_core::DType::U32, &Device::Cpu).unwrap();
    let mask = Tensor::ones((1, 11), candle_core::DType::F32, &Device::Cpu).unwrap();
    let err = m.logits(&ids, &ids, &mask, None::<&mut Rng>).unwrap_err().to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
}
