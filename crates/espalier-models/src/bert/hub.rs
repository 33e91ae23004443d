//! Resolving a Hugging Face repo id to a local snapshot directory, offline.
//!
//! The Hub cache layout (shared with Python's `huggingface_hub` and the
//! `hf-hub` crate) is
//!
//! ```text
//! <cache>/models--<org>--<name>/refs/<branch>          file holding a commit hash
//! <cache>/models--<org>--<name>/snapshots/<commit>/...  the files (links into blobs/)
//! ```
//!
//! where `<cache>` is `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
//! `$XDG_CACHE_HOME/huggingface/hub`, else `~/.cache/huggingface/hub`.
//! Espalier never downloads: it behaves as if `HF_HUB_OFFLINE=1` were always
//! set, and a repo that is not in the cache is an error that says how to get
//! it (`huggingface-cli download <repo>`).

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
/// mode. Espalier is offline either way; this only words error messages.
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
    let how = if offline_requested() {
        "offline mode (HF_HUB_OFFLINE) is on and Espalier never downloads"
    } else {
        "Espalier never downloads"
    };
    let missing = |what: String| {
        Error::msg(format!(
            "model `{repo_id}` (revision `{revision}`) is not in the Hugging Face cache: {what}; \
             {how}: fetch it first with `huggingface-cli download {repo_id}`, or pass a local directory"
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

/// [`resolve_in`] the cache named by the environment ([`cache_dir`]).
pub fn resolve(repo_id: &str, revision: Option<&str>) -> Result<PathBuf> {
    resolve_in(&cache_dir(), repo_id, revision)
}

/// A model directory from `spec`: an existing local directory as it is,
/// else a repo id `org/name` with an optional `@revision`, resolved in the
/// Hub cache.
pub fn resolve_model_dir(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    if p.is_dir() {
        return Ok(p.to_path_buf());
    }
    let (id, rev) = match spec.rsplit_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, Some(rev)),
        _ => (spec, None),
    };
    if id.is_empty() || id.starts_with('/') || id.starts_with('.') || id.split('/').count() > 2 {
        return Err(Error::msg(format!(
            "`{spec}` is neither a local directory nor a Hugging Face repo id (`org/name[@revision]`)"
        )));
    }
    resolve(id, rev)
}
