//! Where datasets live: `--data-dir`, else `$ESPALIER_DATA`, else `data/`.

use std::path::{Path, PathBuf};

/// The resolved data root directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRoot(pub PathBuf);

impl DataRoot {
    /// Resolution order: the explicit flag, then `ESPALIER_DATA`, then `data/`.
    pub fn resolve(flag: Option<&Path>) -> Self {
        if let Some(p) = flag {
            return DataRoot(p.to_path_buf());
        }
        match std::env::var_os("ESPALIER_DATA") {
            Some(v) if !v.is_empty() => DataRoot(PathBuf::from(v)),
            _ => DataRoot(PathBuf::from("data")),
        }
    }

    /// `path` under the root (absolute paths are kept as they are).
    pub fn join(&self, path: impl AsRef<Path>) -> PathBuf {
        self.0.join(path)
    }
}
