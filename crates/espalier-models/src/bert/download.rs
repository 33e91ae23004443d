//! Downloading a model repo from the Hub into the cache, all or nothing
//! (see [`crate::bert::hub`] for the layout and the guarantees).
//!
//! `hf-hub` downloads each file into a cache of its own, the staging area
//! `<cache>/.espalier-downloads/<repo>@<revision>/`, resuming a partial
//! file left by an earlier attempt. Once every file is there and all of
//! them come from one commit, the files are published into the real cache:
//! blobs first, then the snapshot's links (the weights before
//! `config.json`, which a reader checks for), then `refs/<revision>`,
//! written atomically. A reader of the cache sees either no snapshot, or an
//! incomplete one that [`crate::bert::hub::missing_files`] rejects, or the
//! complete one.

use std::path::{Path, PathBuf};

use espalier_core::checkpoint::write_atomic;
use espalier_core::{Error, Result};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::bert::hub::Hub;
use crate::bert::io::{CONFIG_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};

/// Tokenizer files fetched when the repo has them.
const TOKENIZER_FILES: [&str; 4] = ["tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"];

/// The shard files named by a `model.safetensors.index.json`.
pub fn shards(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(index, e.to_string()))?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "no `weight_map` object"))?;
    let mut files: Vec<String> = map.values().filter_map(|f| f.as_str().map(str::to_string)).collect();
    files.sort();
    files.dedup();
    if let Some(bad) = files.iter().find(|f| f.contains('/') || f.contains("..") || f.is_empty()) {
        return Err(Error::format(index, format!("shard name `{bad}` is not a plain file name")));
    }
    Ok(files)
}

/// Downloads `repo_id` at `revision` into `hub.cache`; returns the snapshot.
pub fn download(hub: &Hub, repo_id: &str, revision: &str) -> Result<PathBuf> {
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let what = format!("downloading `{repo_id}` (revision `{revision}`) from {}", hub.endpoint);
    let fail = |e: String| Error::msg(format!("{what}: {e}; the cache {} is unchanged", hub.cache.display()));
    let staging = hub.cache.join(".espalier-downloads").join(format!(
        "{}@{}",
        repo.folder_name(),
        revision.replace(['/', '\\'], "%2F")
    ));
    std::fs::create_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    let api = ApiBuilder::from_cache(Cache::new(staging.clone()))
        .with_endpoint(hub.endpoint.clone())
        .with_token(hub.token.clone())
        .with_progress(hub.progress)
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let api = api.repo(repo.clone());
    let info = api.info().map_err(|e| fail(describe(&e.to_string())))?;
    let listed: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let has = |f: &str| listed.contains(&f);
    if !has(CONFIG_FILE) {
        return Err(fail(format!("the repo has no {CONFIG_FILE}")));
    }
    tracing::info!("{what} into {}", hub.cache.display());
    let get = |f: &str| -> Result<PathBuf> {
        tracing::info!(file = f, "downloading");
        api.get(f).map_err(|e| fail(format!("{f}: {}", describe(&e.to_string()))))
    };
    let mut files: Vec<String> = Vec::new();
    if has(SAFETENSORS_FILE) {
        files.push(SAFETENSORS_FILE.into());
    } else if has(SAFETENSORS_INDEX_FILE) {
        let index = get(SAFETENSORS_INDEX_FILE)?;
        files.push(SAFETENSORS_INDEX_FILE.into());
        files.extend(shards(&index)?);
    } else if has("pytorch_model.bin") {
        files.push("pytorch_model.bin".into());
    } else {
        return Err(fail(format!(
            "the repo has no weights Espalier reads ({SAFETENSORS_FILE}, {SAFETENSORS_INDEX_FILE} or pytorch_model.bin)"
        )));
    }
    files.extend(TOKENIZER_FILES.iter().filter(|f| has(f)).map(|f| f.to_string()));
    files.push(CONFIG_FILE.into());
    let mut pointers = Vec::with_capacity(files.len());
    for f in &files {
        pointers.push(get(f)?);
    }
    // Every file from the commit the listing named (a branch that moved
    // during the download would mix two commits).
    for p in &pointers {
        let commit = p.parent().and_then(|d| d.file_name()).map(|c| c.to_string_lossy().into_owned());
        if commit.as_deref() != Some(info.sha.as_str()) {
            return Err(fail(format!(
                "{} is not of commit {} (the revision moved during the download); run again",
                p.display(),
                info.sha
            )));
        }
    }
    let snap = publish(&hub.cache, &repo, revision, &info.sha, &files, &staging)?;
    std::fs::remove_dir_all(&staging).map_err(|e| Error::io(&staging, e))?;
    tracing::info!("downloaded `{repo_id}` to {}", snap.display());
    Ok(snap)
}

/// The Hub's answer in words a user can act on.
fn describe(err: &str) -> String {
    if err.contains("status code 404") {
        format!("{err} (no such repo, revision or file)")
    } else if err.contains("status code 401") || err.contains("status code 403") {
        format!("{err} (a gated or private repo: set HF_TOKEN)")
    } else {
        err.to_string()
    }
}

/// Moves the staged `files` of `commit` into the cache; returns the snapshot.
fn publish(
    cache: &Path,
    repo: &Repo,
    revision: &str,
    commit: &str,
    files: &[String],
    staging: &Path,
) -> Result<PathBuf> {
    let from = staging.join(repo.folder_name());
    let to = cache.join(repo.folder_name());
    let snap = to.join("snapshots").join(commit);
    for dir in [to.join("blobs"), snap.clone(), to.join("refs")] {
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    }
    for f in files {
        let (src, dst) = (from.join("snapshots").join(commit).join(f), snap.join(f));
        if dst.exists() {
            continue;
        }
        match std::fs::read_link(&src) {
            Ok(target) => {
                // `../../blobs/<etag>`: move the blob, then link to it.
                let blob = src.parent().map(|d| d.join(&target)).unwrap_or_default();
                let name = target.file_name().ok_or_else(|| Error::format(&src, "link without a blob name"))?;
                let kept = to.join("blobs").join(name);
                if !kept.exists() {
                    std::fs::rename(&blob, &kept).map_err(|e| Error::io(&kept, e))?;
                }
                link(&target, &dst)?;
            }
            // hf-hub renames instead of linking where links are impossible.
            Err(_) => std::fs::rename(&src, &dst).map_err(|e| Error::io(&dst, e))?,
        }
    }
    let is_commit = revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit());
    if !is_commit {
        let r = to.join("refs").join(revision);
        if let Some(parent) = r.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        write_atomic(&r, commit.as_bytes())?;
    }
    Ok(snap)
}

#[cfg(unix)]
fn link(target: &Path, at: &Path) -> Result<()> {
    std::os::unix::fs::symlink(target, at).map_err(|e| Error::io(at, e))
}

#[cfg(not(unix))]
fn link(target: &Path, at: &Path) -> Result<()> {
    let blob = at.parent().map(|d| d.join(target)).unwrap_or_default();
    std::fs::copy(&blob, at).map(|_| ()).map_err(|e| Error::io(at, e))
}
