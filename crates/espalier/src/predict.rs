//! `espalier predict RUN_DIR`: the model's outputs on each example of the
//! run's evaluation split, one JSON line per example, with the token ids it
//! saw (so another framework can be fed exactly the same inputs: this is
//! how `scripts/hf_roundtrip.py` compares an export's logits in
//! `transformers` with Espalier's).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use espalier_core::Inputs;
use espalier_data::DataRoot;
use espalier_models::Mode;

/// Rows of `t` (`(B, …)`) as vectors, the last dimensions flattened.
fn rows<T: candle_core::WithDType>(t: &Tensor) -> anyhow::Result<Vec<Vec<T>>> {
    let b = t.dims().first().copied().unwrap_or(0);
    Ok(t.reshape((b, ()))?.to_vec2::<T>()?)
}

/// Writes the predictions of the first `limit` evaluation examples (all
/// when `None`) of the model in `run_dir` to `out` (JSON lines: `index`,
/// `label`, `logits`, and for text the unpadded `input_ids` and
/// `token_type_ids`); returns how many were written. The file is written
/// atomically.
pub fn predict(
    run_dir: &Path,
    data_root: &DataRoot,
    out: &Path,
    limit: Option<usize>,
    batch_size: usize,
) -> anyhow::Result<usize> {
    let exp = espalier_experiment::config::load(&run_dir.join("config.toml"), &[])
        .with_context(|| format!("{}: the run's config", run_dir.display()))?;
    let path = run_dir.join("model.safetensors");
    let (model, _) = espalier_models::load_model(&path, &Device::Cpu).with_context(|| format!("{}", path.display()))?;
    let model_dir = espalier_experiment::model::pretrained_dir(&exp)?;
    let data = exp.data.load(data_root, model_dir.as_deref())?;
    let test = data.test.as_ref();
    let n = limit.map_or(test.len(), |l| l.min(test.len()));
    let mut text = Vec::new();
    let idx: Vec<usize> = (0..n).collect();
    for chunk in idx.chunks(batch_size.max(1)) {
        let batch = test.batch(chunk, &Device::Cpu)?;
        let logits = model.forward_t(&batch, &mut Mode::Infer)?.logits;
        let logits: Vec<Vec<f32>> = rows(&logits.to_dtype(DType::F32)?)?;
        let labels = batch.labels.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        let tokens = match &batch.inputs {
            Inputs::Tokens { input_ids, token_type_ids, attention_mask } => Some((
                rows::<u32>(&input_ids.to_dtype(DType::U32)?)?,
                rows::<u32>(&token_type_ids.to_dtype(DType::U32)?)?,
                rows::<f32>(&attention_mask.to_dtype(DType::F32)?)?,
            )),
            _ => None,
        };
        for (j, &i) in chunk.iter().enumerate() {
            let mut line = serde_json::json!({ "index": i, "label": labels[j], "logits": logits[j] });
            if let Some((ids, types, mask)) = &tokens {
                let len = mask[j].iter().filter(|&&m| m > 0.0).count();
                line["input_ids"] = serde_json::json!(ids[j][..len]);
                line["token_type_ids"] = serde_json::json!(types[j][..len]);
            }
            writeln!(text, "{line}")?;
        }
    }
    espalier_core::checkpoint::write_atomic(out, &text)?;
    Ok(n)
}
