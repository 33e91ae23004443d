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
/// checkpoint's directory or repo name (also when starting from an Espalier
/// run that was), else the model's short name.
pub fn experiment_model_name(exp: &Experiment, model: &ModelConfig) -> String {
    if let Some(p) = &exp.pretrained {
        return p.path.trim_end_matches('/').rsplit(['/', '\\']).next().unwrap_or(&p.path).to_string();
    }
    let source = exp.init_from.as_ref().filter(|d| d.is_dir()).map(|d| d.join("config.toml"));
    match source.and_then(|c| crate::config::load(&c, &[]).ok()) {
        Some(from) if from.pretrained.is_some() => experiment_model_name(&from, model),
        _ => model_name(model),
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
        DataConfig::Xnli(_) => Ok(BertTask::Classification { num_labels: espalier_data::xnli::NUM_LABELS }),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A run started from an Espalier run of a Hugging Face checkpoint is
    /// named after the checkpoint, like the run it came from.
    #[test]
    fn runs_from_a_pretrained_run_keep_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let glue = |head: &str| {
            format!(
                "{head}\n[data]\ndataset = \"glue\"\ntask = \"rte\"\ntokenizer = \"tok\"\n[train]\nepochs = 0\n\
                 batch_size = 8\noptimizer = {{ kind = \"adamw\", lr = 2e-5 }}\n"
            )
        };
        let dense = crate::config::parse(&glue("[pretrained]\npath = \"models/all-MiniLM-L6-v2\""), &[]).unwrap();
        std::fs::write(tmp.path().join("config.toml"), toml::to_string(&dense).unwrap()).unwrap();
        let from = format!("init_from = {:?}", tmp.path().display().to_string());
        let pruned = crate::config::parse(&glue(&from), &[]).unwrap();
        let cfg: ModelConfig = serde_json::from_value(serde_json::json!({ "kind": "mlp", "hidden": [4] })).unwrap();
        assert_eq!(experiment_model_name(&pruned, &cfg), "all-MiniLM-L6-v2");
        assert_eq!(experiment_model_name(&dense, &cfg), "all-MiniLM-L6-v2");
        let elsewhere = crate::config::parse(&glue("init_from = \"no/such/run\""), &[]).unwrap();
        assert_eq!(experiment_model_name(&elsewhere, &cfg), "mlp-4");
        let empty = crate::config::parse(&glue("init_from = \"\""), &[]).unwrap_err().to_string();
        assert!(empty.contains("key `init_from` is empty"), "{empty}");
    }
}
