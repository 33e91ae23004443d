//! Models saved by Espalier: a checkpoint alone rebuilds its model (the
//! config is in the safetensors header, a shrunk model's widths included).

use std::path::Path;

use candle_core::{DType, Device};
use espalier_core::{bail, checkpoint, ParamBuilder, Result};

use crate::{Model, ModelConfig};

/// Short names for reports (`lenet-300-100`, `resnet-20`, `bert-L6-H384-A12`).
pub fn model_name(m: &ModelConfig) -> String {
    match m {
        ModelConfig::Mlp(c) if c.hidden == [300, 100] && c.input_dim == 784 => "lenet-300-100".into(),
        ModelConfig::Mlp(c) => format!("mlp-{}", c.hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join("-")),
        ModelConfig::Lenet5(_) => "lenet-5".into(),
        ModelConfig::Bert(c) => format!("bert-L{}-H{}-A{}", c.num_hidden_layers, c.hidden_size, c.num_attention_heads),
        ModelConfig::Resnet(c) => format!("resnet-{}", c.depth),
        ModelConfig::Vgg(c) => format!("vgg-{}{}", c.depth, if c.batch_norm { "-bn" } else { "" }),
    }
}

/// The largest integer anywhere in `v`.
fn max_integer(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::Array(xs) => xs.iter().filter_map(max_integer).max(),
        serde_json::Value::Object(m) => m.values().filter_map(max_integer).max(),
        _ => None,
    }
}

/// Rebuilds a model from a checkpoint file alone (config from its header,
/// masks restored); returns it with the header.
pub fn load_model(path: &Path, device: &Device) -> Result<(Box<dyn Model>, serde_json::Value)> {
    let (cfg, ck) = read_checked(path, device)?;
    let pb = ParamBuilder::from_tensors(ck.params(), path.display().to_string(), DType::F32, device);
    let model = cfg.build(&pb)?;
    finish(path, &cfg, &pb, model.params(), &ck)?;
    Ok((model, ck.header))
}

/// [`load_model`] for a checkpoint that must hold a BERT, as the concrete
/// type (for what only BERT has, such as its Hugging Face export).
pub fn load_bert(path: &Path, device: &Device) -> Result<(crate::Bert, serde_json::Value)> {
    let (cfg, ck) = read_checked(path, device)?;
    let ModelConfig::Bert(bert_cfg) = &cfg else {
        return Err(espalier_core::Error::format(path, format!("holds a {}, not a BERT", model_name(&cfg))));
    };
    let pb = ParamBuilder::from_tensors(ck.params(), path.display().to_string(), DType::F32, device);
    let model = crate::Bert::new(bert_cfg.clone(), &pb)?;
    finish(path, &cfg, &pb, model.params(), &ck)?;
    Ok((model, ck.header))
}

/// The checkpoint and the model config in its header, checked.
fn read_checked(path: &Path, device: &Device) -> Result<(ModelConfig, checkpoint::Checkpoint)> {
    let ck = checkpoint::load(path, device)?;
    let cfg: ModelConfig = serde_json::from_value(ck.header["model"].clone())
        .map_err(|e| espalier_core::Error::format(path, format!("the header has no valid model config ({e})")))?;
    // A size in the header is checked against the numbers the file holds
    // before anything is computed or allocated from it (a width of 2^40
    // overflowed the fan-in computation).
    let numel: usize = ck.tensors.values().map(|t| t.elem_count()).sum();
    if let Some(n) = max_integer(&ck.header["model"]).filter(|&n| n > numel.max(1) as u64) {
        return Err(espalier_core::Error::format(
            path,
            format!("the header's model config claims a size of {n}, more than the {numel} numbers the file holds"),
        ));
    }
    cfg.validate("model").map_err(|e| espalier_core::Error::format(path, format!("the header's model config: {e}")))?;
    Ok((cfg, ck))
}

/// Refuses tensors the model did not use and restores the masks.
fn finish(
    path: &Path,
    cfg: &ModelConfig,
    pb: &ParamBuilder,
    params: &espalier_core::ParamStore,
    ck: &checkpoint::Checkpoint,
) -> Result<()> {
    let (_, unused) = pb.clone().finish();
    if !unused.is_empty() {
        bail!("{}: tensors not used by the {} model: {}", path.display(), model_name(cfg), unused.join(", "));
    }
    params.set_masks(&ck.masks())
}
