//! `espalier export RUN_DIR --format …`: a run's model in a form to take
//! elsewhere.
//!
//! - `sparse`: the model file with its masked weights stored as their kept
//!   entries ([`espalier_core::compact`]: CSR, or values and in-block
//!   indices for N:M), beside the run's `config.toml`, so `espalier eval`
//!   and `espalier bench` take the export directory as they take a run
//!   directory. With `--fold`, units that pruning made constant or dead
//!   (empty input rows or consumer columns: MLP neurons, feed-forward
//!   units, attention heads) are first folded into their consumer's bias
//!   and removed ([`espalier_models::fold_empty_units`]), so the export is a
//!   smaller dense architecture plus sparse remainders.
//! - `hf`: a BERT that stock `transformers` loads
//!   (`AutoModelForSequenceClassification`), pruned heads and units padded
//!   back with zeros ([`espalier_models::bert::export`]).
//! - `hf-compact`: the same at the pruned widths, with Espalier's modeling
//!   file (`trust_remote_code=True`).
//!
//! The export is written into a staging directory beside the target and
//! renamed into place when complete; an existing target is refused unless
//! `--force`, and then replaced only after the new export is complete.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use espalier_core::checkpoint;
use espalier_data::DataConfig;
use espalier_experiment::config::Experiment;
use espalier_models::bert::export::HfLayout;

/// What to export.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// Masked weights as their kept entries (CSR, N:M); reloadable by
    /// `espalier eval` and `bench`.
    Sparse,
    /// Hugging Face `BertForSequenceClassification`, pruned widths padded
    /// with zeros.
    Hf,
    /// Hugging Face, pruned widths kept (`trust_remote_code=True`).
    HfCompact,
}

impl ExportFormat {
    fn dir_name(self) -> &'static str {
        match self {
            ExportFormat::Sparse => "sparse",
            ExportFormat::Hf => "hf",
            ExportFormat::HfCompact => "hf-compact",
        }
    }
}

/// What was written.
#[derive(Debug)]
pub struct Exported {
    /// The export directory.
    pub dir: PathBuf,
    /// Files written and their sizes in bytes.
    pub files: Vec<(String, u64)>,
    /// The run's `model.safetensors` size in bytes.
    pub run_model_bytes: u64,
    /// The model's parameters at 4 bytes each, without masks.
    pub dense_bytes: u64,
    /// Per masked parameter (sparse export).
    pub entries: Vec<espalier_core::compact::CompactEntry>,
    /// Heads and feed-forward units per layer (HF exports).
    pub widths: Option<(Vec<usize>, Vec<usize>)>,
    /// What `--fold` removed, per group set with something folded.
    pub folded: Vec<espalier_models::FoldedSet>,
    /// What the export could not include (e.g. no tokenizer found).
    pub warnings: Vec<String>,
}

/// Tokenizer files copied beside a Hugging Face export, when present.
const TOKENIZER_FILES: [&str; 5] =
    ["tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json", "added_tokens.json"];

/// Exports the model of `run_dir` as `format` into `out` (default
/// `RUN_DIR/export/<format>`).
pub fn export(
    run_dir: &Path,
    format: ExportFormat,
    out: Option<PathBuf>,
    force: bool,
    fold: bool,
) -> anyhow::Result<Exported> {
    if fold && format != ExportFormat::Sparse {
        return Err(crate::config::ConfigError("--fold applies to --format sparse only".into()).into());
    }
    let model_path = run_dir.join("model.safetensors");
    if !model_path.is_file() {
        bail!("{}: no model.safetensors (is it a finished run directory?)", run_dir.display());
    }
    let config_path = run_dir.join("config.toml");
    let exp = espalier_experiment::config::load(&config_path, &[])
        .with_context(|| format!("{}: the run's config", config_path.display()))?;
    let out = out.unwrap_or_else(|| run_dir.join("export").join(format.dir_name()));
    if out.exists() && !force {
        return Err(crate::config::ConfigError(format!(
            "{} exists: pass --force to replace it (the new export is written first, then swapped in)",
            out.display()
        ))
        .into());
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    let name = out.file_name().context("the export path has no file name")?.to_string_lossy().into_owned();
    let staging = parent.join(format!(".{name}.partial-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
    let result = write_export(run_dir, &exp, &model_path, format, fold, &staging);
    let mut exported = match result {
        Ok(e) => e,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    swap_in(&staging, &out)?;
    exported.dir = out;
    Ok(exported)
}

/// Renames the complete `staging` directory to `out`, replacing an
/// existing `out` only once the new one is in place.
fn swap_in(staging: &Path, out: &Path) -> anyhow::Result<()> {
    if out.exists() {
        let old = staging.with_extension("old");
        std::fs::rename(out, &old).with_context(|| format!("moving the old {} aside", out.display()))?;
        std::fs::rename(staging, out).with_context(|| format!("renaming the export to {}", out.display()))?;
        std::fs::remove_dir_all(&old).with_context(|| format!("removing the old export {}", old.display()))?;
    } else {
        std::fs::rename(staging, out).with_context(|| format!("renaming the export to {}", out.display()))?;
    }
    Ok(())
}

fn file_size(p: &Path) -> anyhow::Result<u64> {
    Ok(std::fs::metadata(p).with_context(|| format!("{}", p.display()))?.len())
}

fn write_export(
    run_dir: &Path,
    exp: &Experiment,
    model_path: &Path,
    format: ExportFormat,
    fold: bool,
    dir: &Path,
) -> anyhow::Result<Exported> {
    let run_model_bytes = file_size(model_path)?;
    let ck = checkpoint::load(model_path, &candle_core::Device::Cpu)?;
    let dense_bytes = 4 * ck.params().values().map(|t| t.elem_count() as u64).sum::<u64>();
    let (ck, folded) = if fold { folded_checkpoint(model_path, ck)? } else { (ck, Vec::new()) };
    let mut warnings = Vec::new();
    let (entries, widths) = match format {
        ExportFormat::Sparse => {
            let (tensors, formats, entries) = espalier_core::compact::compress(&ck.tensors)?;
            let mut header = ck.header.clone();
            let h = header.as_object_mut().context("the model file's header is not an object")?;
            h.insert(espalier_core::compact::HEADER_KEY.into(), formats);
            checkpoint::save(&dir.join("model.safetensors"), &tensors, &header)?;
            let config = std::fs::read(run_dir.join("config.toml"))?;
            checkpoint::write_atomic(&dir.join("config.toml"), &config)?;
            (entries, None)
        }
        ExportFormat::Hf | ExportFormat::HfCompact => {
            let layout = if format == ExportFormat::Hf { HfLayout::Padded } else { HfLayout::Compact };
            let (bert, _) = espalier_models::load_bert(model_path, &candle_core::Device::Cpu)
                .with_context(|| format!("{}: a Hugging Face export needs a BERT run", model_path.display()))?;
            let labels = label_names(&exp.data);
            let e = bert.export_hf(dir, layout, labels.as_deref())?;
            match tokenizer_dir(exp)? {
                Some(src) => {
                    let mut copied = 0;
                    for f in TOKENIZER_FILES {
                        let p = src.join(f);
                        if p.is_file() {
                            checkpoint::write_atomic(&dir.join(f), &std::fs::read(&p)?)?;
                            copied += 1;
                        }
                    }
                    if copied == 0 {
                        warnings.push(format!("no tokenizer files in {}", src.display()));
                    }
                }
                None => warnings.push("the run names no tokenizer; none copied".into()),
            }
            checkpoint::write_atomic(&dir.join("README.md"), hf_readme(run_dir, layout).as_bytes())?;
            (Vec::new(), Some((e.heads, e.ffn)))
        }
    };
    let mut files = Vec::new();
    let mut names: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<Vec<_>, _>>()?;
    names.sort_by_key(|e| e.file_name());
    for e in names {
        files.push((e.file_name().to_string_lossy().into_owned(), e.metadata()?.len()));
    }
    Ok(Exported { dir: dir.to_path_buf(), files, run_model_bytes, dense_bytes, entries, widths, folded, warnings })
}

/// The checkpoint of the model at `model_path` with its constant and dead
/// units folded away: the folded architecture under the header's `model`,
/// what was folded under `folded`, every other header key kept.
fn folded_checkpoint(
    model_path: &Path,
    ck: checkpoint::Checkpoint,
) -> anyhow::Result<(checkpoint::Checkpoint, Vec<espalier_models::FoldedSet>)> {
    let (model, _) = espalier_models::load_model(model_path, &candle_core::Device::Cpu)
        .with_context(|| format!("{}: the model to fold", model_path.display()))?;
    let (small, sets) = espalier_models::fold_empty_units(model.as_ref())
        .with_context(|| format!("{}: folding its empty units", model_path.display()))?;
    let mut header = ck.header;
    let h = header.as_object_mut().context("the model file's header is not an object")?;
    h.insert("model".into(), serde_json::to_value(small.config())?);
    let summary: Vec<_> =
        sets.iter().map(|s| serde_json::json!({ "set": s.set, "units": s.size, "folded": s.folded })).collect();
    h.insert("folded".into(), summary.into());
    let tensors = espalier_experiment::rundir::weights_and_masks(small.as_ref())?;
    Ok((checkpoint::Checkpoint { tensors, header }, sets))
}

/// Class names of the run's task (`id2label`), when the data names them.
fn label_names(data: &DataConfig) -> Option<Vec<String>> {
    match data {
        DataConfig::Glue(g) if !g.task.is_regression() => {
            Some(g.task.label_names().iter().map(|s| s.to_string()).collect())
        }
        DataConfig::Xnli(_) => Some(espalier_data::glue::NLI_LABELS.iter().map(|s| s.to_string()).collect()),
        _ => None,
    }
}

/// Where the run's tokenizer files are: the data's `tokenizer`, else the
/// pretrained model's directory, following `init_from` back to the run
/// that started from one.
fn tokenizer_dir(exp: &Experiment) -> anyhow::Result<Option<PathBuf>> {
    let tokenizer = match &exp.data {
        DataConfig::Glue(g) => g.tokenizer.as_ref(),
        DataConfig::Xnli(x) => x.tokenizer.as_ref(),
        _ => None,
    };
    {
        if let Some(t) = tokenizer {
            return Ok(Some(if t.is_file() {
                t.parent().map(Path::to_path_buf).unwrap_or_default()
            } else {
                t.clone()
            }));
        }
    }
    if let Some(dir) = espalier_experiment::model::pretrained_dir(exp)? {
        return Ok(Some(dir));
    }
    match exp.init_from.as_ref().filter(|d| d.is_dir()) {
        Some(from) => {
            let cfg = from.join("config.toml");
            let prev = espalier_experiment::config::load(&cfg, &[])
                .with_context(|| format!("{}: the config of the run this one started from", cfg.display()))?;
            tokenizer_dir(&prev)
        }
        None => Ok(None),
    }
}

fn hf_readme(run_dir: &Path, layout: HfLayout) -> String {
    let (how, note) = match layout {
        HfLayout::Padded => (
            "AutoModelForSequenceClassification.from_pretrained(path)",
            "Removed heads and feed-forward units are zeros at full width (exact; not faster).",
        ),
        HfLayout::Compact => (
            "AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=True)",
            "Each layer keeps its pruned widths (`heads_per_layer`, `ffn_per_layer`); the modeling file is \
             Espalier's own (`modeling_espalier_bert.py`).",
        ),
    };
    format!(
        "# Exported by Espalier\n\nFrom the run `{}`.\n\n```python\nfrom transformers import \
         AutoModelForSequenceClassification, AutoTokenizer\nmodel = {how}\ntokenizer = \
         AutoTokenizer.from_pretrained(path)\n```\n\n{note}\n",
        run_dir.display()
    )
}
