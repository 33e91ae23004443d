//! Hugging Face checkpoint directories: `config.json` + `model.safetensors`
//! (or a sharded `model.safetensors.index.json`, or `pytorch_model.bin`).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use espalier_core::checkpoint::write_atomic;
use espalier_core::init::Init;
use espalier_core::{Error, ParamBuilder, Result, Rng};

use super::{hub, Bert, BertConfig, BertTask};

/// The configuration file of a model directory.
pub const CONFIG_FILE: &str = "config.json";
/// The weights file Espalier writes and reads first.
pub const SAFETENSORS_FILE: &str = "model.safetensors";
/// The index of a sharded safetensors checkpoint.
pub const SAFETENSORS_INDEX_FILE: &str = "model.safetensors.index.json";
/// PyTorch's pickled weights, read when no safetensors file exists.
pub const PYTORCH_FILE: &str = "pytorch_model.bin";

/// HF's prefix of the encoder inside `BertFor*` models.
const BERT_PREFIX: &str = "bert.";

/// Renames HF checkpoint keys to Espalier's parameter names: strips the
/// `bert.` prefix (present in `BertForSequenceClassification` checkpoints,
/// absent in bare `BertModel` ones) and maps old TensorFlow-era LayerNorm
/// names `gamma`/`beta` to `weight`/`bias`. Two keys mapping to the same
/// name is an error.
pub fn normalize_hf_names(tensors: BTreeMap<String, Tensor>, context: &str) -> Result<BTreeMap<String, Tensor>> {
    let mut out = BTreeMap::new();
    for (k, t) in tensors {
        let mut name = k.strip_prefix(BERT_PREFIX).unwrap_or(&k).to_string();
        if let Some(stem) = name.strip_suffix(".gamma") {
            name = format!("{stem}.weight");
        } else if let Some(stem) = name.strip_suffix(".beta") {
            name = format!("{stem}.bias");
        }
        if out.insert(name.clone(), t).is_some() {
            return Err(Error::msg(format!(
                "{context}: two tensors map to parameter `{name}` (with and without the `bert.` prefix, \
                 or both `weight` and `gamma`)"
            )));
        }
    }
    Ok(out)
}

fn read_safetensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    Ok(espalier_core::checkpoint::load(path, &Device::Cpu)?.tensors)
}

/// Reads the weights of a model directory and names the file they came from.
pub fn read_weights(dir: &Path) -> Result<(BTreeMap<String, Tensor>, String)> {
    let st = dir.join(SAFETENSORS_FILE);
    if st.is_file() {
        return Ok((read_safetensors(&st)?, st.display().to_string()));
    }
    let index = dir.join(SAFETENSORS_INDEX_FILE);
    if index.is_file() {
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&index, format!("invalid JSON: {e}")))?;
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| Error::format(&index, "no `weight_map` object"))?;
        let mut files: Vec<&str> = map.values().filter_map(|f| f.as_str()).collect();
        files.sort_unstable();
        files.dedup();
        let mut all = BTreeMap::new();
        for f in files {
            all.extend(read_safetensors(&dir.join(f))?);
        }
        return Ok((all, index.display().to_string()));
    }
    let pt = dir.join(PYTORCH_FILE);
    if pt.is_file() {
        let tensors = candle_core::pickle::read_all(&pt)
            .map_err(|e| Error::format(&pt, format!("cannot read PyTorch checkpoint: {e}")))?;
        return Ok((tensors.into_iter().collect(), pt.display().to_string()));
    }
    Err(Error::msg(format!("{}: no {SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or {PYTORCH_FILE}", dir.display())))
}

/// Adds freshly initialised `prefix.weight` (N(0, std²)) and `prefix.bias`
/// (0) when the checkpoint has neither (a new task head, or a missing
/// pooler). A checkpoint with only one of the two is left as it is, so
/// loading reports the missing one.
fn init_if_absent(
    tensors: &mut BTreeMap<String, Tensor>,
    prefix: &str,
    out_dim: usize,
    in_dim: usize,
    std: f64,
    seed: u64,
) -> Result<bool> {
    let (w, b) = (format!("{prefix}.weight"), format!("{prefix}.bias"));
    if tensors.contains_key(&w) || tensors.contains_key(&b) {
        return Ok(false);
    }
    let mut rng = Rng::derive(seed, &w, &[]);
    let vals = Init::Normal { std }.sample(out_dim * in_dim, &mut rng);
    tensors.insert(w, Tensor::from_vec(vals, (out_dim, in_dim), &Device::Cpu)?);
    tensors.insert(b, Tensor::zeros(out_dim, DType::F32, &Device::Cpu)?);
    Ok(true)
}

impl Bert {
    /// Builds a model of configuration `cfg` from HF-named tensors (with or
    /// without the `bert.` prefix). A missing task head (`classifier.*`) or
    /// pooler is initialised fresh from `seed` (weights N(0,
    /// initializer_range²), biases 0); any other missing tensor, or a shape
    /// mismatch, is an error naming the tensor and `context` (the file).
    /// Tensors the model does not use (an MLM head, `position_ids`) are
    /// ignored. The parameters are trainable `Var`s.
    pub fn from_tensors(
        cfg: BertConfig,
        tensors: BTreeMap<String, Tensor>,
        context: &str,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let mut tensors = normalize_hf_names(tensors, context)?;
        let h = cfg.hidden_size;
        let std = cfg.initializer_range;
        init_if_absent(&mut tensors, "pooler.dense", h, h, std, seed)?;
        init_if_absent(&mut tensors, "classifier", cfg.task.num_outputs(), h, std, seed)?;
        let pb = ParamBuilder::from_tensors(tensors, context, DType::F32, device);
        Bert::new(cfg, &pb)
    }

    /// Loads a Hugging Face model directory (`config.json` +
    /// `model.safetensors` / `pytorch_model.bin`). `task` overrides the task
    /// the config names (see [`BertConfig::from_hf_json`]); a task head
    /// absent from the weights starts fresh from seed 0.
    pub fn from_pretrained(dir: impl AsRef<Path>, task: Option<BertTask>, device: &Device) -> Result<Self> {
        Self::from_pretrained_with_seed(dir, task, 0, device)
    }

    /// [`Bert::from_pretrained`] with the seed of a fresh task head.
    pub fn from_pretrained_with_seed(
        dir: impl AsRef<Path>,
        task: Option<BertTask>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = Self::read_config(dir, task)?;
        let (tensors, context) = read_weights(dir)?;
        Self::from_tensors(cfg, tensors, &context, seed, device)
    }

    /// Reads `dir/config.json` ([`BertConfig::from_hf_json`]).
    pub fn read_config(dir: &Path, task: Option<BertTask>) -> Result<BertConfig> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        BertConfig::from_hf_json(&text, task).map_err(|e| Error::format(&path, e))
    }

    /// Loads `repo_id` (`org/name`, at `revision`, default `main`) from the
    /// Hugging Face cache, downloading it there first when it is missing
    /// and offline mode is off (see [`hub`]).
    pub fn from_hub(repo_id: &str, revision: Option<&str>, task: Option<BertTask>, device: &Device) -> Result<Self> {
        Self::from_pretrained(hub::Hub::from_env().resolve(repo_id, revision)?, task, device)
    }

    /// Writes `dir/config.json` (HF keys plus the per-layer widths and task)
    /// and `dir/model.safetensors` in HF's `BertForSequenceClassification`
    /// layout (`bert.` + name; `classifier.*` unprefixed), each atomically.
    /// Masked weights are written as w ⊙ m; masks themselves are not saved
    /// (that is the training checkpoint's job).
    pub fn save_pretrained(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut owned = Vec::with_capacity(self.params.len());
        for p in self.params.iter() {
            let key = if p.is_head() { p.name().to_string() } else { format!("{BERT_PREFIX}{}", p.name()) };
            owned.push((key, p.effective()?.to_device(&Device::Cpu)?.contiguous()?));
        }
        let st = dir.join(SAFETENSORS_FILE);
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let bytes = safetensors::serialize(owned.iter().map(|(k, t)| (k.as_str(), t)), Some(meta))
            .map_err(|e| Error::format(&st, format!("cannot serialize: {e}")))?;
        write_atomic(&st, &bytes)?;
        let json = serde_json::to_string_pretty(&self.cfg.to_hf_json())
            .map_err(|e| Error::msg(format!("cannot serialize config: {e}")))?;
        write_atomic(&dir.join(CONFIG_FILE), json.as_bytes())?;
        Ok(dir.to_path_buf())
    }
}
