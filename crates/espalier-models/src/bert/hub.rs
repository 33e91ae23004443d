//! Resolving a Hugging Face repo id to a local snapshot directory, from the
//! cache or downloaded into it (the `hf-hub` crate's blocking client).
//!
//! The Hub cache layout (shared with Python's `huggingface_hub` and the
//! `hf-hub` crate) is
//!
//! ```text
//! <cache>/models--<org>--<name>/refs/<branch>          file holding a commit hash
//! <cache>/models--<org>--<name>/snapshots/<commit>/...  the files (links into blobs/)
//! <cache>/models--<org>--<name>/blobs/<etag>           the bytes
//! ```
//!
//! where `<cache>` is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
//!
//! A snapshot counts as cached when it holds `config.json` and the weights
//! (`model.safetensors`, every shard of `model.safetensors.index.json`, or
//! `pytorch_model.bin`). Otherwise the repo is downloaded from
//! `$HF_ENDPOINT` (default `https://huggingface.co`) with `$HF_TOKEN` (or
//! the token file `huggingface-cli login` wrote): the config, the weights
//! (safetensors preferred, sharded supported) and the tokenizer files. The
//! download goes to a staging area, `<cache>/.espalier-downloads/`, that
//! nothing reads as a model, and only a complete download is moved into the
//! cache (blobs, then the snapshot's links, the config last, then the ref),
//! so an interrupted or failed download leaves the cache as it was; the
//! next attempt resumes the partial file. With `HF_HUB_OFFLINE=1` (or
//! `espalier --offline`) the network is never touched and a repo that is
//! not cached is an error naming it and the cache.

use std::path::{Path, PathBuf};

use espalier_core::{Error, Result};
use hf_hub::{Repo, RepoType};

/// The Hub cache directory from the environment (see the module docs).
pub fn cache_dir() -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(p) = env("HF_HUB_CACHE").or_else(|| env("HUGGINGFACE_HUB_CACHE")) {
        return p;
    }
    if let Some(home) = env("HF_HOME") {
        return home.join("hub");
    }
    if let Some(xdg) = env("XDG_CACHE_HOME") {
        return xdg.join("huggingface").join("hub");
    }
    match env("HOME") {
        Some(home) => home.join(".cache").join("huggingface").join("hub"),
        None => hf_hub::Cache::default().path().clone(),
    }
}

/// Whether `HF_HUB_OFFLINE` (or `TRANSFORMERS_OFFLINE`) asks for offline
/// mode: no download is ever attempted.
pub fn offline_requested() -> bool {
    ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"].iter().any(|k| {
        std::env::var(k)
            .map(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false)
    })
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The snapshot directory of model `repo_id` at `revision` (a branch or tag
/// under `refs/`, or a 40-hex commit; default `main`) in the cache `cache`.
pub fn resolve_in(cache: &Path, repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    let revision = revision.unwrap_or("main");
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let repo_dir = cache.join(repo.folder_name());
    let missing = |what: String| {
        Error::msg(format!(
            "model `{repo_id}` (revision `{revision}`) is not in the Hugging Face cache {}: {what}",
            cache.display()
        ))
    };
    if !repo_dir.is_dir() {
        return Err(missing(format!("{} does not exist", repo_dir.display())));
    }
    let commit = if is_commit_hash(revision) {
        revision.to_string()
    } else {
        let ref_path = repo_dir.join("refs").join(revision);
        let text = std::fs::read_to_string(&ref_path)
            .map_err(|e| missing(format!("cannot read {}: {e}", ref_path.display())))?;
        let commit = text.trim().to_string();
        if commit.is_empty() {
            return Err(Error::format(&ref_path, "empty ref file (expected a commit hash)"));
        }
        commit
    };
    let snap = repo_dir.join("snapshots").join(&commit);
    if !snap.is_dir() {
        return Err(missing(format!("{} does not exist", snap.display())));
    }
    Ok(snap)
}

/// [`resolve_in`] the cache named by the environment ([`cache_dir`]),
/// without downloading.
pub fn resolve(repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    resolve_in(&cache_dir(), repo_id, revision)
}

/// Where models come from: the cache, the endpoint, the token, and whether
/// the network may be used.
#[derive(Clone, Debug)]
pub struct Hub {
    /// The cache directory.
    pub cache: PathBuf,
    /// The Hub's address, e.g. `https://huggingface.co`.
    pub endpoint: String,
    /// Bearer token for gated or private repos.
    pub token: Option<String>,
    /// Never touch the network.
    pub offline: bool,
    /// Draw progress bars (on a terminal).
    pub progress: bool,
}

impl Hub {
    /// From the environment: [`cache_dir`], `HF_ENDPOINT`, `HF_TOKEN` (else
    /// the token file beside the cache), [`offline_requested`].
    pub fn from_env() -> Self {
        use std::io::IsTerminal;
        let cache = cache_dir();
        let token = std::env::var("HF_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .or_else(|| hf_hub::Cache::new(cache.clone()).token());
        let endpoint = std::env::var("HF_ENDPOINT")
            .ok()
            .filter(|e| !e.trim().is_empty())
            .unwrap_or_else(|| "https://huggingface.co".into());
        Hub {
            cache,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            token,
            offline: offline_requested(),
            progress: std::io::stderr().is_terminal(),
        }
    }

    /// The snapshot directory of `repo_id` at `revision` (default `main`):
    /// the cached one when complete, else downloaded (unless offline).
    pub fn resolve(&self, repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
        let cached = resolve_in(&self.cache, repo_id, revision);
        let why = match &cached {
            Ok(snap) => match missing_files(snap) {
                None => return cached,
                Some(m) => format!("its snapshot {} lacks {m}", snap.display()),
            },
            Err(e) => e.to_string(),
        };
        if self.offline {
            return Err(Error::msg(format!(
                "{why}; offline mode (HF_HUB_OFFLINE=1 or --offline) is on, so nothing is downloaded: fetch \
                 `{repo_id}` on a machine with network (or pass a local directory)"
            )));
        }
        crate::bert::download::download(self, repo_id, revision.unwrap_or("main"))
    }
}

/// What a snapshot lacks to be loaded: `config.json` or the weights.
pub fn missing_files(snap: &Path) -> Option<String> {
    use crate::bert::io::{CONFIG_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};
    if !snap.join(CONFIG_FILE).is_file() {
        return Some(CONFIG_FILE.into());
    }
    if snap.join(SAFETENSORS_FILE).is_file() || snap.join("pytorch_model.bin").is_file() {
        return None;
    }
    let index = snap.join(SAFETENSORS_INDEX_FILE);
    match crate::bert::download::shards(&index) {
        Ok(shards) => shards.into_iter().find(|s| !snap.join(s).is_file()),
        Err(_) => Some(format!("{SAFETENSORS_FILE} (or a sharded {SAFETENSORS_INDEX_FILE})")),
    }
}

/// A model directory from `spec`: an existing local directory as it is,
/// else a repo id `org/name` with an optional `@revision`, from the Hub
/// cache or downloaded into it ([`Hub::from_env`]).
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    resolve_model_dir_with(spec, &Hub::from_env())
}

/// [`resolve_model_dir`] with explicit settings.
pub fn resolve_model_dir_with(spec: &str, hub: &Hub) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let (id, rev) = match spec.rsplit_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, Some(rev)),
        _ => (spec, None),
    };
    let valid = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 || !parts.iter().all(|s| valid(s)) || id.starts_with('.') {
        return Err(Error::msg(format!(
            "`{spec}` is neither a local directory nor a Hugging Face repo id (`org/name[@revision]`)"
        )));
    }
    hub.resolve(id, rev)
}
