//! BERT configuration: the Hugging Face `config.json` fields plus Espalier's
//! per-layer widths and task head.
//!
//! The architecture fields and their defaults are BERT-base (Devlin et al.
//! 2019, §3: L = 12, H = 768, A = 12, feed-forward 4H, 30,522 WordPiece
//! tokens, 512 positions, dropout 0.1), spelled as in Hugging Face's
//! `BertConfig`. A structurally pruned model keeps the head size
//! `hidden_size / num_attention_heads` and records how many heads and
//! feed-forward units each layer kept (`heads_per_layer`, `ffn_per_layer`),
//! optionally with the kept indices of the original model for provenance.
//!
//! Two representations:
//! - Espalier's own ([`BertConfig`] through serde, inside
//!   [`crate::ModelConfig`]): strict (`deny_unknown_fields`), round-trips.
//! - Hugging Face's `config.json` ([`BertConfig::from_hf_json`],
//!   [`BertConfig::to_hf_json`]): unknown keys are ignored when reading; the
//!   file written back holds the HF keys (so `transformers` and
//!   candle-transformers read it) plus Espalier's fields.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The feed-forward nonlinearity (`hidden_act`).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub enum HiddenAct {
    /// GELU, exact erf form (HF `"gelu"`, the BERT default).
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU, tanh approximation (HF `"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_approximate")]
    GeluTanh,
    /// max(0, x).
    #[serde(rename = "relu")]
    Relu,
}

/// The task head on top of the pooled `[CLS]` representation.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum BertTask {
    /// `num_labels`-way classification, cross-entropy loss, u32 labels.
    Classification {
        /// Number of classes (at least 2).
        num_labels: usize,
    },
    /// One real-valued output, MSE loss, f32 labels (e.g. STS-B).
    Regression,
}

impl BertTask {
    /// Width of the classifier's output.
    pub fn num_outputs(&self) -> usize {
        match self {
            BertTask::Classification { num_labels } => *num_labels,
            BertTask::Regression => 1,
        }
    }
}

/// BERT configuration (see the module documentation).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BertConfig {
    /// WordPiece vocabulary size.
    #[serde(default = "d_vocab")]
    pub vocab_size: usize,
    /// Hidden size H.
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    /// Number of encoder layers L.
    #[serde(default = "d_layers")]
    pub num_hidden_layers: usize,
    /// Heads of the unpruned model; the head size is `hidden_size / this`.
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    /// Feed-forward width of the unpruned model.
    #[serde(default = "d_ffn")]
    pub intermediate_size: usize,
    /// Feed-forward nonlinearity.
    #[serde(default)]
    pub hidden_act: HiddenAct,
    /// Dropout after embeddings and after each sublayer.
    #[serde(default = "d_dropout")]
    pub hidden_dropout_prob: f64,
    /// Dropout on attention probabilities.
    #[serde(default = "d_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// Longest sequence (position embeddings).
    #[serde(default = "d_positions")]
    pub max_position_embeddings: usize,
    /// Number of segment (token type) ids.
    #[serde(default = "d_types")]
    pub type_vocab_size: usize,
    /// LayerNorm ε.
    #[serde(default = "d_eps")]
    pub layer_norm_eps: f64,
    /// Std of the N(0, σ²) init of fresh weights.
    #[serde(default = "d_init")]
    pub initializer_range: f64,
    /// Dropout before the classifier (`None`: `hidden_dropout_prob`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    /// Heads kept in each layer (`None`: `num_attention_heads` everywhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heads_per_layer: Option<Vec<usize>>,
    /// Feed-forward units kept in each layer (`None`: `intermediate_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ffn_per_layer: Option<Vec<usize>>,
    /// Provenance: which original heads each layer kept (ascending).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_heads: Option<Vec<Vec<usize>>>,
    /// Provenance: which original feed-forward units each layer kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kept_ffn: Option<Vec<Vec<usize>>>,
    /// The task head.
    pub task: BertTask,
}

fn d_vocab() -> usize {
    30522
}
fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_ffn() -> usize {
    3072
}
fn d_dropout() -> f64 {
    0.1
}
fn d_positions() -> usize {
    512
}
fn d_types() -> usize {
    2
}
fn d_eps() -> f64 {
    1e-12
}
fn d_init() -> f64 {
    0.02
}

/// HF `config.json`, read leniently (unknown keys ignored).
#[derive(Deserialize)]
struct HfConfig {
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_hidden")]
    hidden_size: usize,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_ffn")]
    intermediate_size: usize,
    #[serde(default)]
    hidden_act: HiddenAct,
    #[serde(default = "d_dropout")]
    hidden_dropout_prob: f64,
    #[serde(default = "d_dropout")]
    attention_probs_dropout_prob: f64,
    #[serde(default = "d_positions")]
    max_position_embeddings: usize,
    #[serde(default = "d_types")]
    type_vocab_size: usize,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
    #[serde(default = "d_init")]
    initializer_range: f64,
    #[serde(default)]
    classifier_dropout: Option<f64>,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    architectures: Option<Vec<String>>,
    #[serde(default)]
    id2label: Option<BTreeMap<String, String>>,
    #[serde(default)]
    num_labels: Option<usize>,
    #[serde(default)]
    problem_type: Option<String>,
    // Espalier's own keys, written by `to_hf_json`.
    #[serde(default)]
    heads_per_layer: Option<Vec<usize>>,
    #[serde(default)]
    ffn_per_layer: Option<Vec<usize>>,
    #[serde(default)]
    kept_heads: Option<Vec<Vec<usize>>>,
    #[serde(default)]
    kept_ffn: Option<Vec<Vec<usize>>>,
    #[serde(default)]
    task: Option<BertTask>,
    /// `transformers` 4.x's `prune_heads` record: layer → removed heads.
    #[serde(default)]
    pruned_heads: Option<BTreeMap<String, Vec<usize>>>,
}

/// Per-layer head counts and kept heads from `transformers` 4.x's
/// `pruned_heads` (`{"layer": [removed head, …]}`; its weights hold the
/// remaining heads in ascending order).
fn heads_from_pruned(
    pruned: &BTreeMap<String, Vec<usize>>,
    layers: usize,
    heads: usize,
) -> std::result::Result<(Vec<usize>, Vec<Vec<usize>>), String> {
    let mut kept: Vec<Vec<usize>> = vec![(0..heads).collect(); layers];
    for (layer, removed) in pruned {
        let l: usize = layer
            .parse()
            .ok()
            .filter(|&l| l < layers)
            .ok_or_else(|| format!("pruned_heads: key `{layer}` is not a layer index below {layers}"))?;
        if let Some(h) = removed.iter().find(|&&h| h >= heads) {
            return Err(format!("pruned_heads[{layer}]: head {h} is not below num_attention_heads ({heads})"));
        }
        kept[l].retain(|h| !removed.contains(h));
    }
    Ok((kept.iter().map(Vec::len).collect(), kept))
}

impl BertConfig {
    /// BERT-base (Devlin et al. 2019) with the given task head.
    pub fn base(task: BertTask) -> Self {
        BertConfig {
            vocab_size: d_vocab(),
            hidden_size: d_hidden(),
            num_hidden_layers: d_layers(),
            num_attention_heads: d_heads(),
            intermediate_size: d_ffn(),
            hidden_act: HiddenAct::Gelu,
            hidden_dropout_prob: d_dropout(),
            attention_probs_dropout_prob: d_dropout(),
            max_position_embeddings: d_positions(),
            type_vocab_size: d_types(),
            layer_norm_eps: d_eps(),
            initializer_range: d_init(),
            classifier_dropout: None,
            heads_per_layer: None,
            ffn_per_layer: None,
            kept_heads: None,
            kept_ffn: None,
            task,
        }
    }

    /// Size of one attention head, `hidden_size / num_attention_heads`.
    pub fn head_size(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Heads in layer `layer`.
    pub fn heads(&self, layer: usize) -> usize {
        self.heads_per_layer.as_ref().and_then(|v| v.get(layer).copied()).unwrap_or(self.num_attention_heads)
    }

    /// Feed-forward units in layer `layer`.
    pub fn ffn(&self, layer: usize) -> usize {
        self.ffn_per_layer.as_ref().and_then(|v| v.get(layer).copied()).unwrap_or(self.intermediate_size)
    }

    /// Dropout before the classifier.
    pub fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }

    /// Checks values a user can get wrong; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        let p = |k: &str| {
            if path.is_empty() {
                k.to_string()
            } else {
                format!("{path}.{k}")
            }
        };
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ] {
            if v == 0 {
                return Err(format!("{} must be at least 1", p(k)));
            }
        }
        if self.head_size() * self.num_attention_heads != self.hidden_size {
            return Err(format!(
                "{} ({}) must be a multiple of {} ({})",
                p("hidden_size"),
                self.hidden_size,
                p("num_attention_heads"),
                self.num_attention_heads
            ));
        }
        for (k, v) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            ("attention_probs_dropout_prob", self.attention_probs_dropout_prob),
            ("classifier_dropout", self.classifier_dropout_prob()),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(format!("{} must be in [0, 1), found {v}", p(k)));
            }
        }
        if self.layer_norm_eps.is_nan() || self.layer_norm_eps <= 0.0 {
            return Err(format!("{} must be positive", p("layer_norm_eps")));
        }
        if self.initializer_range.is_nan() || self.initializer_range < 0.0 {
            return Err(format!("{} must be non-negative", p("initializer_range")));
        }
        let layers = self.num_hidden_layers;
        let widths = [
            ("heads_per_layer", &self.heads_per_layer, self.num_attention_heads, "num_attention_heads"),
            ("ffn_per_layer", &self.ffn_per_layer, self.intermediate_size, "intermediate_size"),
        ];
        for (k, v, max, max_key) in widths {
            if let Some(v) = v {
                if v.len() != layers {
                    return Err(format!(
                        "{} has {} entries, expected one per layer ({} = {layers})",
                        p(k),
                        v.len(),
                        p("num_hidden_layers")
                    ));
                }
                if let Some(i) = v.iter().position(|&w| w > max) {
                    return Err(format!("{}[{i}] = {} exceeds {} ({max})", p(k), v[i], p(max_key)));
                }
            }
        }
        let kept = [
            ("kept_heads", &self.kept_heads, self.num_attention_heads, "heads"),
            ("kept_ffn", &self.kept_ffn, self.intermediate_size, "ffn"),
        ];
        for (k, v, max, what) in kept {
            if let Some(v) = v {
                if v.len() != layers {
                    return Err(format!("{} has {} entries, expected {layers}", p(k), v.len()));
                }
                for (l, idx) in v.iter().enumerate() {
                    let width = if what == "heads" { self.heads(l) } else { self.ffn(l) };
                    if idx.len() != width {
                        return Err(format!(
                            "{}[{l}] lists {} indices but layer {l} has width {width}",
                            p(k),
                            idx.len()
                        ));
                    }
                    if idx.windows(2).any(|w| w[0] >= w[1]) || idx.last().is_some_and(|&i| i >= max) {
                        return Err(format!("{}[{l}] must be strictly increasing indices below {max}", p(k)));
                    }
                }
            }
        }
        if let BertTask::Classification { num_labels } = self.task {
            if num_labels < 2 {
                return Err(format!(
                    "{} must be at least 2 (use task.kind = \"regression\" for one output), found {num_labels}",
                    p("task.num_labels")
                ));
            }
        }
        Ok(())
    }

    /// Reads a Hugging Face `config.json` (unknown keys ignored).
    ///
    /// The task is `task` when given, else the one Espalier wrote into the
    /// file (`"task"`), else the one HF's `BertForSequenceClassification`
    /// implies (`problem_type`, `id2label` / `num_labels`).
    pub fn from_hf_json(text: &str, task: Option<BertTask>) -> std::result::Result<Self, String> {
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| format!("invalid BERT config.json: {e}"))?;
        if let Some(mt) = hf.model_type.as_deref() {
            if mt != "bert" && mt != super::export::COMPACT_MODEL_TYPE {
                return Err(format!(
                    "model_type `{mt}` is not supported (expected `bert`, or `{}` as Espalier exports it)",
                    super::export::COMPACT_MODEL_TYPE
                ));
            }
        }
        if let Some(pe) = hf.position_embedding_type.as_deref() {
            if pe != "absolute" {
                return Err(format!("position_embedding_type `{pe}` is not supported (expected `absolute`)"));
            }
        }
        let task = match (task, hf.task) {
            (Some(t), _) | (None, Some(t)) => t,
            (None, None) => {
                let is_cls = hf.architectures.iter().flatten().any(|a| a.ends_with("ForSequenceClassification"));
                let n = hf.num_labels.or(hf.id2label.as_ref().map(|m| m.len()));
                match (is_cls, hf.problem_type.as_deref(), n) {
                    (true, Some("regression"), _) | (true, _, Some(1)) => BertTask::Regression,
                    (true, _, Some(n)) => BertTask::Classification { num_labels: n },
                    _ => {
                        return Err("config.json names no task head: pass a task (classification with \
                                    num_labels, or regression)"
                            .into())
                    }
                }
            }
        };
        let (mut heads_per_layer, mut kept_heads) = (hf.heads_per_layer, hf.kept_heads);
        if let Some(pruned) = hf.pruned_heads.as_ref().filter(|p| !p.is_empty()) {
            if heads_per_layer.is_some() {
                return Err("config.json has both `pruned_heads` and `heads_per_layer`".into());
            }
            let (heads, kept) = heads_from_pruned(pruned, hf.num_hidden_layers, hf.num_attention_heads)?;
            heads_per_layer = Some(heads);
            kept_heads = Some(kept);
        }
        let cfg = BertConfig {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            intermediate_size: hf.intermediate_size,
            hidden_act: hf.hidden_act,
            hidden_dropout_prob: hf.hidden_dropout_prob,
            attention_probs_dropout_prob: hf.attention_probs_dropout_prob,
            max_position_embeddings: hf.max_position_embeddings,
            type_vocab_size: hf.type_vocab_size,
            layer_norm_eps: hf.layer_norm_eps,
            initializer_range: hf.initializer_range,
            classifier_dropout: hf.classifier_dropout,
            heads_per_layer,
            ffn_per_layer: hf.ffn_per_layer,
            kept_heads,
            kept_ffn: hf.kept_ffn,
            task,
        };
        cfg.validate("")?;
        Ok(cfg)
    }

    /// The `config.json` Espalier writes: HF's `BertForSequenceClassification`
    /// keys (read by `transformers` and candle-transformers) plus Espalier's
    /// `task` and per-layer widths.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).expect("BertConfig serializes");
        let m = v.as_object_mut().expect("a JSON object");
        let n = self.task.num_outputs();
        let id2label: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (i.to_string(), format!("LABEL_{i}").into())).collect();
        let label2id: serde_json::Map<String, serde_json::Value> =
            (0..n).map(|i| (format!("LABEL_{i}"), i.into())).collect();
        let problem_type = match self.task {
            BertTask::Classification { .. } => "single_label_classification",
            BertTask::Regression => "regression",
        };
        let extra = serde_json::json!({
            "architectures": ["BertForSequenceClassification"],
            "model_type": "bert",
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "problem_type": problem_type,
            "id2label": id2label,
            "label2id": label2id,
            "classifier_dropout": self.classifier_dropout,
        });
        for (k, x) in extra.as_object().expect("object") {
            m.insert(k.clone(), x.clone());
        }
        v
    }
}
