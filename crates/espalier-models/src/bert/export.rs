//! Hugging Face export of a (pruned) BERT: a directory that `transformers`
//! loads with `AutoModelForSequenceClassification.from_pretrained` and that
//! computes the same logits.
//!
//! Structured pruning leaves each layer with its own number of heads and
//! feed-forward units ([`BertConfig::heads_per_layer`],
//! [`BertConfig::ffn_per_layer`]); `transformers` (v5 has no `prune_heads`
//! any more) builds every layer at the config's full widths. Two layouts:
//!
//! - [`HfLayout::Padded`]: stock `BertForSequenceClassification`. Removed
//!   heads and units are put back as zeros, at their original positions when
//!   the model records them ([`BertConfig::kept_heads`],
//!   [`BertConfig::kept_ffn`]). This is exact: a zero head has zero Q, K, V
//!   rows, so its context vector is `softmax(0)·0 = 0`, and its columns of
//!   `Wₒ` are zero; a zero unit has a zero row and bias in `W₁`, so its
//!   activation is `GELU(0) = 0`, and its column of `W₂` is zero.
//! - [`HfLayout::Compact`]: the per-layer widths kept, with a small modeling
//!   file (`modeling_espalier_bert.py`, Espalier's own, written beside the
//!   weights) that `transformers` loads with `trust_remote_code=True`; it
//!   builds `BertForSequenceClassification` and resizes each layer's linear
//!   maps, so the pruned model is faster there too. A layer left with no head
//!   or no unit keeps one zero head or unit (exact by the argument above;
//!   PyTorch cannot view an empty tensor into heads).
//!
//! Weights are written as `w ⊙ m` (masks applied), in HF's names
//! (`bert.` + name; `classifier.*`).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use candle_core::{Device, Tensor};
use espalier_core::checkpoint::write_atomic;
use espalier_core::{Error, Result};

use super::{Bert, BertConfig, BertTask, CONFIG_FILE, SAFETENSORS_FILE};

/// The custom `transformers` configuration class of the compact layout.
pub const REMOTE_CONFIG_FILE: &str = "configuration_espalier_bert.py";
/// The custom `transformers` model class of the compact layout.
pub const REMOTE_MODELING_FILE: &str = "modeling_espalier_bert.py";
/// The compact layout's `model_type`.
pub const COMPACT_MODEL_TYPE: &str = "espalier_bert";

const REMOTE_CONFIG: &str = include_str!("remote/configuration_espalier_bert.py");
const REMOTE_MODELING: &str = include_str!("remote/modeling_espalier_bert.py");

/// How per-layer widths are written for `transformers`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HfLayout {
    /// Stock BERT at the full widths, removed heads and units zero.
    Padded,
    /// The pruned widths, loaded through Espalier's modeling file
    /// (`trust_remote_code=True`).
    Compact,
}

/// What [`Bert::export_hf`] wrote.
#[derive(Clone, Debug)]
pub struct HfExport {
    /// Heads per layer in the written model.
    pub heads: Vec<usize>,
    /// Feed-forward units per layer in the written model.
    pub ffn: Vec<usize>,
    /// Parameters in the written weights.
    pub parameters: usize,
    /// Files written (names inside the directory).
    pub files: Vec<String>,
}

/// `rows` of a `(k, c)` matrix (or `k`-vector) scattered to `positions` of
/// a zero `(total, c)` matrix (or `total`-vector).
fn scatter_rows(t: &Tensor, positions: &[usize], total: usize) -> Result<Tensor> {
    let dims = t.dims().to_vec();
    let cols: usize = dims[1..].iter().product();
    debug_assert_eq!(dims[0], positions.len());
    let src = t.flatten_all()?.to_vec1::<f32>()?;
    let mut out = vec![0f32; total * cols];
    for (r, &p) in positions.iter().enumerate() {
        out[p * cols..(p + 1) * cols].copy_from_slice(&src[r * cols..(r + 1) * cols]);
    }
    let mut shape = dims;
    shape[0] = total;
    Ok(Tensor::from_vec(out, shape, &Device::Cpu)?)
}

/// Columns of `(r, k)` scattered to `positions` of a zero `(r, total)`.
fn scatter_cols(t: &Tensor, positions: &[usize], total: usize) -> Result<Tensor> {
    Ok(scatter_rows(&t.t()?.contiguous()?, positions, total)?.t()?.contiguous()?)
}

/// Row positions of `heads` (of size `d`) in the written layout.
fn head_rows(heads: &[usize], d: usize) -> Vec<usize> {
    heads.iter().flat_map(|&h| h * d..(h + 1) * d).collect()
}

/// The positions of a layer's kept units in the written layout and the
/// written width.
fn placement(layout: HfLayout, kept: usize, full: usize, recorded: Option<&Vec<usize>>) -> (Vec<usize>, usize) {
    match layout {
        HfLayout::Padded => (recorded.cloned().unwrap_or_else(|| (0..kept).collect()), full),
        HfLayout::Compact => ((0..kept).collect(), kept.max(1)),
    }
}

impl Bert {
    /// Writes `dir/config.json` and `dir/model.safetensors` that
    /// `transformers` loads as `BertForSequenceClassification` (see the
    /// module documentation for the two layouts); the compact layout also
    /// writes its modeling files. `labels` names the classes (`id2label`);
    /// `None` writes `LABEL_i`. Each file is written atomically; `dir` must
    /// exist.
    pub fn export_hf(&self, dir: &Path, layout: HfLayout, labels: Option<&[String]>) -> Result<HfExport> {
        let cfg = &self.cfg;
        let d = cfg.head_size();
        let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
        for p in self.params.iter() {
            tensors.insert(p.name().to_string(), p.effective()?.to_device(&Device::Cpu)?.contiguous()?);
        }
        let (mut heads_out, mut ffn_out) = (Vec::new(), Vec::new());
        for l in 0..cfg.num_hidden_layers {
            let pre = format!("encoder.layer.{l}");
            let (heads, width) =
                placement(layout, cfg.heads(l), cfg.num_attention_heads, cfg.kept_heads.as_ref().map(|k| &k[l]));
            let rows = head_rows(&heads, d);
            for m in ["query", "key", "value"] {
                for (suffix, zero_shape) in [("weight", vec![0, cfg.hidden_size]), ("bias", vec![0])] {
                    let name = format!("{pre}.attention.self.{m}.{suffix}");
                    let t = match tensors.remove(&name) {
                        Some(t) => t,
                        None => Tensor::zeros(zero_shape, candle_core::DType::F32, &Device::Cpu)?,
                    };
                    tensors.insert(name, scatter_rows(&t, &rows, width * d)?);
                }
            }
            let out = format!("{pre}.attention.output.dense.weight");
            let w = match tensors.remove(&out) {
                Some(w) => w,
                None => Tensor::zeros((cfg.hidden_size, 0), candle_core::DType::F32, &Device::Cpu)?,
            };
            tensors.insert(out, scatter_cols(&w, &rows, width * d)?);
            heads_out.push(width);

            let (units, width) =
                placement(layout, cfg.ffn(l), cfg.intermediate_size, cfg.kept_ffn.as_ref().map(|k| &k[l]));
            for (suffix, zero_shape) in [("weight", vec![0, cfg.hidden_size]), ("bias", vec![0])] {
                let name = format!("{pre}.intermediate.dense.{suffix}");
                let t = match tensors.remove(&name) {
                    Some(t) => t,
                    None => Tensor::zeros(zero_shape, candle_core::DType::F32, &Device::Cpu)?,
                };
                tensors.insert(name, scatter_rows(&t, &units, width)?);
            }
            let out = format!("{pre}.output.dense.weight");
            let w = match tensors.remove(&out) {
                Some(w) => w,
                None => Tensor::zeros((cfg.hidden_size, 0), candle_core::DType::F32, &Device::Cpu)?,
            };
            tensors.insert(out, scatter_cols(&w, &units, width)?);
            ffn_out.push(width);
        }
        let parameters = tensors.values().map(|t| t.elem_count()).sum();
        let named: Vec<(String, &Tensor)> = tensors
            .iter()
            .map(|(k, t)| (if k.starts_with("classifier.") { k.clone() } else { format!("bert.{k}") }, t))
            .collect();
        let st = dir.join(SAFETENSORS_FILE);
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(named.iter().map(|(k, t)| (k.as_str(), *t)), Some(meta))
            .map_err(|e| Error::format(&st, format!("cannot serialize: {e}")))?;
        write_atomic(&st, &bytes)?;

        let config = hf_config(cfg, layout, &heads_out, &ffn_out, labels)?;
        let json = serde_json::to_string_pretty(&config).map_err(|e| Error::msg(format!("config.json: {e}")))?;
        write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())?;
        let mut files = vec![CONFIG_FILE.to_string(), SAFETENSORS_FILE.to_string()];
        if layout == HfLayout::Compact {
            for (name, text) in [(REMOTE_CONFIG_FILE, REMOTE_CONFIG), (REMOTE_MODELING_FILE, REMOTE_MODELING)] {
                write_atomic(&dir.join(name), text.as_bytes())?;
                files.push(name.to_string());
            }
        }
        Ok(HfExport { heads: heads_out, ffn: ffn_out, parameters, files })
    }
}

/// The exported `config.json`: HF's keys, without Espalier's per-layer keys
/// in the padded layout (stock `transformers` builds full widths from
/// `num_attention_heads` and `intermediate_size`); with them, `model_type`
/// `espalier_bert` and the `auto_map` of the modeling files in the compact
/// one.
fn hf_config(
    cfg: &BertConfig,
    layout: HfLayout,
    heads: &[usize],
    ffn: &[usize],
    labels: Option<&[String]>,
) -> Result<serde_json::Value> {
    let mut v = cfg.to_hf_json();
    let m = v.as_object_mut().expect("a JSON object");
    for k in ["heads_per_layer", "ffn_per_layer", "kept_heads", "kept_ffn", "task"] {
        m.remove(k);
    }
    let n = cfg.task.num_outputs();
    if let Some(labels) = labels {
        if labels.len() != n {
            return Err(Error::msg(format!(
                "{} label names ({}) for a task head with {n} outputs",
                labels.len(),
                labels.join(", ")
            )));
        }
        let id2label: serde_json::Map<String, serde_json::Value> =
            labels.iter().enumerate().map(|(i, l)| (i.to_string(), l.clone().into())).collect();
        let label2id: serde_json::Map<String, serde_json::Value> =
            labels.iter().enumerate().map(|(i, l)| (l.clone(), i.into())).collect();
        m.insert("id2label".into(), id2label.into());
        m.insert("label2id".into(), label2id.into());
    }
    if matches!(cfg.task, BertTask::Regression) {
        m.insert("num_labels".into(), 1.into());
    }
    if layout == HfLayout::Compact {
        m.insert("model_type".into(), COMPACT_MODEL_TYPE.into());
        m.insert("architectures".into(), serde_json::json!(["EspalierBertForSequenceClassification"]));
        m.insert(
            "auto_map".into(),
            serde_json::json!({
                "AutoConfig": "configuration_espalier_bert.EspalierBertConfig",
                "AutoModel": "modeling_espalier_bert.EspalierBertModel",
                "AutoModelForSequenceClassification": "modeling_espalier_bert.EspalierBertForSequenceClassification",
            }),
        );
        m.insert("heads_per_layer".into(), serde_json::json!(heads));
        m.insert("ffn_per_layer".into(), serde_json::json!(ffn));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_columns_land_at_their_positions() {
        let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &Device::Cpu).unwrap();
        let r = scatter_rows(&t, &[2, 0], 3).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(r, vec![vec![3., 4.], vec![0., 0.], vec![1., 2.]]);
        let c = scatter_cols(&t, &[1, 3], 4).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(c, vec![vec![0., 1., 0., 2.], vec![0., 3., 0., 4.]]);
        assert_eq!(head_rows(&[1, 3], 2), vec![2, 3, 6, 7]);
    }

    #[test]
    fn compact_layers_keep_at_least_one_unit() {
        assert_eq!(placement(HfLayout::Compact, 0, 12, None), (vec![], 1));
        assert_eq!(placement(HfLayout::Padded, 2, 4, Some(&vec![1, 3])), (vec![1, 3], 4));
        assert_eq!(placement(HfLayout::Padded, 2, 4, None), (vec![0, 1], 4));
    }
}
