//! Checkpoint files: one safetensors file holding tensors and a JSON header.
//!
//! Keys are dotted names. A checkpoint of a model in training holds the
//! parameters under their own names, masks under `__mask__.<name>` and
//! optimizer state under `__optim__.<name>.<slot>`; the safetensors metadata
//! entry `espalier` holds a JSON header (format version, model config, run
//! state). Every write is atomic: the bytes go to a temporary file in the
//! same directory, are synced, then renamed over the target, so a crash
//! never leaves a half-written checkpoint and never damages the previous one.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::{Error, Result};

/// Version of the header layout written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Key prefix of masks inside a checkpoint.
pub const MASK_PREFIX: &str = "__mask__.";
/// Key prefix of optimizer state inside a checkpoint.
pub const OPTIM_PREFIX: &str = "__optim__.";
/// Key prefix of the rewind snapshot inside a checkpoint.
pub const REWIND_PREFIX: &str = "__rewind__.";
/// Key prefix of regularizer state (ADMM's Z/U/ρ, movement scores).
pub const REGULARIZER_PREFIX: &str = "__reg__.";
const HEADER_KEY: &str = "espalier";

/// Writes `bytes` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = path.file_name().ok_or_else(|| Error::msg(format!("{}: not a file path", path.display())))?;
    let tmp = dir.join(format!(".{}.tmp-{}", file_name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// A loaded checkpoint: tensors by name and the JSON header.
#[derive(Debug)]
pub struct Checkpoint {
    /// Every tensor in the file.
    pub tensors: BTreeMap<String, Tensor>,
    /// The `espalier` header (null if the file has none, e.g. a plain
    /// safetensors file from elsewhere).
    pub header: serde_json::Value,
}

impl Checkpoint {
    /// The model parameters (every key without a `__…__.` prefix).
    pub fn params(&self) -> BTreeMap<String, Tensor> {
        self.tensors.iter().filter(|(k, _)| !k.starts_with("__")).map(|(k, v)| (k.clone(), v.clone())).collect()
    }
    /// The masks, by parameter name.
    pub fn masks(&self) -> BTreeMap<String, Tensor> {
        self.with_prefix(MASK_PREFIX)
    }
    /// The optimizer state, by `<param>.<slot>`.
    pub fn optim(&self) -> BTreeMap<String, Tensor> {
        self.with_prefix(OPTIM_PREFIX)
    }
    /// The rewind snapshot, by parameter name.
    pub fn rewind(&self) -> BTreeMap<String, Tensor> {
        self.with_prefix(REWIND_PREFIX)
    }
    /// Tensors under `prefix`, with the prefix removed.
    pub fn with_prefix(&self, prefix: &str) -> BTreeMap<String, Tensor> {
        self.tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|k| (k.to_string(), v.clone()))).collect()
    }
}

/// Saves tensors and a JSON header to `path` atomically.
pub fn save(path: &Path, tensors: &BTreeMap<String, Tensor>, header: &serde_json::Value) -> Result<()> {
    let mut info = HashMap::new();
    let mut h = header.clone();
    if let serde_json::Value::Object(m) = &mut h {
        m.insert("format_version".into(), FORMAT_VERSION.into());
    }
    info.insert(HEADER_KEY.to_string(), h.to_string());
    // Contiguous copies: safetensors writes raw row-major bytes.
    let owned: Vec<(String, Tensor)> =
        tensors.iter().map(|(k, t)| Ok((k.clone(), t.contiguous()?))).collect::<Result<_>>()?;
    let bytes = safetensors::serialize(owned.iter().map(|(k, t)| (k.as_str(), t)), Some(info))
        .map_err(|e| Error::format(path, format!("cannot serialize checkpoint: {e}")))?;
    write_atomic(path, &bytes)
}

/// Loads a safetensors file (with or without an Espalier header) onto `device`.
pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file (truncated or corrupt?): {e}")))?;
    let header = match meta.metadata().as_ref().and_then(|m| m.get(HEADER_KEY)) {
        Some(s) => {
            serde_json::from_str(s).map_err(|e| Error::format(path, format!("invalid `espalier` header: {e}")))?
        }
        None => serde_json::Value::Null,
    };
    let tensors = candle_core::safetensors::load_buffer(&bytes, device)
        .map_err(|e| Error::format(path, format!("cannot read tensors: {e}")))?;
    let mut tensors: BTreeMap<String, Tensor> = tensors.into_iter().collect();
    // A compact file (`espalier export --format sparse`) reads back as the
    // dense weights and masks it was written from.
    if let Some(formats) = header.get(crate::compact::HEADER_KEY) {
        tensors = crate::compact::expand(tensors, formats, &path.display().to_string())?;
        if !device.is_cpu() {
            tensors = tensors.into_iter().map(|(k, t)| Ok((k, t.to_device(device)?))).collect::<Result<_>>()?;
        }
    }
    Ok(Checkpoint { tensors, header })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    #[test]
    fn roundtrip_and_truncation() -> Result<()> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ck.safetensors");
        let mut t = BTreeMap::new();
        t.insert("fc1.weight".to_string(), Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((2, 3))?);
        t.insert(format!("{MASK_PREFIX}fc1.weight"), Tensor::ones((2, 3), DType::F32, &Device::Cpu)?);
        save(&path, &t, &serde_json::json!({"model": {"kind": "mlp"}}))?;
        let ck = load(&path, &Device::Cpu)?;
        assert_eq!(ck.header["model"]["kind"], "mlp");
        assert_eq!(ck.header["format_version"], FORMAT_VERSION);
        assert_eq!(ck.params().len(), 1);
        assert_eq!(ck.masks().len(), 1);
        assert_eq!(ck.params()["fc1.weight"].to_vec2::<f32>()?, vec![vec![0., 1., 2.], vec![3., 4., 5.]]);

        let bytes = std::fs::read(&path).unwrap();
        let cut = dir.path().join("cut.safetensors");
        std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
        let err = load(&cut, &Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("cut.safetensors"), "{err}");
        // No temporary file is left behind.
        let n = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(n, 2);
        Ok(())
    }
}
