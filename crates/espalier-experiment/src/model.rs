//! The experiment's model: from scratch (`[model]`), from a Hugging Face
//! checkpoint with a fresh task head (`[pretrained]`), or from an Espalier
//! model (`init_from`).

use std::path::{Path, PathBuf};

use candle_core::Device;
use espalier_data::DataConfig;
use espalier_models::{load_model, model_name, Bert, BertTask, Model, ModelConfig};

use crate::config::Experiment;
use crate::error::{Context, Error, Result};

/// The name reports use for the experiment's model: the pretrained
/// checkpoint's directory or repo name, else the model's short name.
pub fn experiment_model_name(exp: &Experiment, model: &ModelConfig) -> String {
    match &exp.pretrained {
        Some(p) => p.path.trim_end_matches('/').rsplit(['/', '\\']).next().unwrap_or(&p.path).to_string(),
        None => model_name(model),
    }
}

/// The directory of the pretrained model, resolved (local or Hub cache).
pub fn pretrained_dir(exp: &Experiment) -> Result<Option<PathBuf>> {
    exp.pretrained
        .as_ref()
        .map(|p| {
            espalier_models::bert::hub::resolve_model_dir(&p.path)
                .with_context(|| format!("key `pretrained.path`: cannot find the model `{}`", p.path))
        })
        .transpose()
}

/// The task head a dataset needs.
fn bert_task(data: &DataConfig) -> Result<BertTask> {
    match data {
        DataConfig::Glue(g) if g.task.is_regression() => Ok(BertTask::Regression),
        DataConfig::Glue(g) => Ok(BertTask::Classification { num_labels: g.task.num_labels() }),
        other => Err(Error::msg(format!("a pretrained BERT needs text data, not {}", other.name()))),
    }
}

/// Builds the experiment's model.
pub fn build_model(exp: &Experiment, model_dir: Option<&Path>, device: &Device) -> Result<Box<dyn Model>> {
    if let Some(m) = &exp.model {
        return Ok(m.init(exp.seed, device)?);
    }
    if let Some(from) = &exp.init_from {
        let path = if from.is_dir() { from.join("model.safetensors") } else { from.clone() };
        let (model, _) = load_model(&path, device).with_context(|| format!("key `init_from`: {}", from.display()))?;
        return Ok(model);
    }
    let (Some(p), Some(dir)) = (exp.pretrained.as_ref(), model_dir) else {
        return Err(Error::msg("no model: give [model] or [pretrained]"));
    };
    let task = bert_task(&exp.data)?;
    let mut cfg = Bert::read_config(dir, Some(task))?;
    if let Some(v) = p.hidden_dropout_prob {
        cfg.hidden_dropout_prob = v;
    }
    if let Some(v) = p.attention_probs_dropout_prob {
        cfg.attention_probs_dropout_prob = v;
    }
    let (tensors, context) = espalier_models::bert::read_weights(dir)?;
    Ok(Box::new(Bert::from_tensors(cfg, tensors, &context, exp.seed, device)?))
}
