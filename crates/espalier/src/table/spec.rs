//! The table spec: the TOML types of `configs/tables/*.toml` (`[table]`,
//! `[scale.*]`, `[[task]]`, `[[prereq]]`, `[[method]]`, `[[reference]]`,
//! `[[claim]]`), parsing and validation, and the `${name}` expansion of a
//! scale's variables.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::slurm::SlurmResources;
use crate::config::ConfigError;

/// A table spec.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// What the table is.
    pub table: TableMeta,
    /// Named scales: `--set` overrides of every run.
    pub scale: BTreeMap<String, Scale>,
    /// Tasks (e.g. GLUE tasks): the whole table is run once per task.
    #[serde(default)]
    pub task: Vec<Task>,
    /// Runs the cells start from (one per seed and task).
    #[serde(default)]
    pub prereq: Vec<Prereq>,
    /// The methods (columns of the table).
    pub method: Vec<Method>,
    /// The paper's numbers.
    #[serde(default)]
    pub reference: Vec<Reference>,
    /// Claims checked against our numbers.
    #[serde(default)]
    pub claim: Vec<Claim>,
    /// Resources of the Slurm jobs (`--slurm`); a scale's own `[scale.NAME.slurm]` wins key by key.
    #[serde(default)]
    pub slurm: Option<SlurmResources>,
}

/// The `[table]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableMeta {
    /// Directory name under `results/` and `runs/tables/`.
    pub name: String,
    /// Title of the report.
    pub title: String,
    /// Free text under the title (protocol, what the paper did).
    #[serde(default)]
    pub description: String,
    /// Metrics reported; the first is plotted and checked by the claims.
    /// `m` is the last epoch's metric of a round, `m@best-epoch` its best
    /// epoch's, `m@before-finetune` a structured run's before fine-tuning;
    /// `select_seconds` a structured run's time to choose its units.
    pub metrics: Vec<String>,
    /// The scale used unless `--scale` says otherwise.
    pub scale: String,
    /// Seeds of every cell (a scale may override).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The plot's x axis.
    #[serde(default)]
    pub x_axis: XAxis,
    /// What a row's sparsity counts.
    #[serde(default)]
    pub sparsity: SparsityMeasure,
    /// With several `[[task]]`s: also report each method's mean over the
    /// tasks (the GLUE-style average of every task's own metric).
    #[serde(default)]
    pub average: bool,
}

/// A `[[task]]`: every prerequisite and cell is run once per task, under
/// `<runs>/<task>/`, with the task's `sets` first among its overrides;
/// `${task}` expands to the task's name in configs, directories and sets.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Run directory component, CSV and claims (`average` is reserved).
    pub name: String,
    /// Section header (default: the name).
    #[serde(default)]
    pub label: Option<String>,
    /// `--set` overrides of every run of this task (e.g. `data.task="rte"`).
    #[serde(default)]
    pub sets: Vec<String>,
    /// This task's names for `table.metrics`, position by position (e.g.
    /// `f1` for MRPC where the table's first metric is `accuracy`).
    #[serde(default)]
    pub metrics: Option<Vec<String>>,
}

impl Task {
    pub(super) fn label(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.name)
    }
}

fn default_seeds() -> Vec<u64> {
    vec![0]
}

/// The plot's x axis.
#[derive(Clone, Copy, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum XAxis {
    /// Sparsity in percent, linear.
    #[default]
    Sparsity,
    /// Weights left in percent, log scale (lottery-ticket plots).
    WeightsLeftLog,
}

/// What the sparsity of a row counts (`table.sparsity`).
#[derive(Clone, Copy, Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SparsityMeasure {
    /// Each run's own measure: the masked fraction of the method's weights
    /// (unstructured pruning), or the fraction of the model's parameters a
    /// structured shrink removed.
    #[default]
    Run,
    /// The fraction of all the model's trainable parameters that the run
    /// removed (a structured shrink) or zeroed (masks): the measure under
    /// which structured and unstructured methods share rows.
    Parameters,
}

/// A `[scale.NAME]` section.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scale {
    /// Stated in the report: data, epochs, what differs from the paper.
    pub description: String,
    /// `--set` overrides of every run (prerequisites and cells).
    #[serde(default)]
    pub sets: Vec<String>,
    /// `--set` overrides of the prerequisite runs only.
    #[serde(default)]
    pub prereq_sets: Vec<String>,
    /// `--set` overrides of the cells only.
    #[serde(default)]
    pub cell_sets: Vec<String>,
    /// Seeds at this scale (default: `table.seeds`).
    #[serde(default)]
    pub seeds: Option<Vec<u64>>,
    /// Values substituted for `${name}` in every `sets` entry of the spec
    /// (e.g. `epochs = 3` and a method's `"prune.schedule.finetune_epochs=${epochs}"`).
    #[serde(default)]
    pub vars: BTreeMap<String, toml::Value>,
    /// Resources of the Slurm jobs at this scale (over the spec's `[slurm]`).
    #[serde(default)]
    pub slurm: Option<SlurmResources>,
}

impl Scale {
    /// `set` with every `${name}` replaced by the built-in value of that
    /// name (`task`, `seed`) or else this scale's (whose own `${task}` and
    /// `${seed}` expand in turn, e.g. `dense_dir = "runs/dense-${seed}"`).
    pub(super) fn expand(
        &self,
        set: &str,
        scale_name: &str,
        builtins: &[(&str, String)],
    ) -> Result<String, ConfigError> {
        self.expand_with(set, scale_name, builtins, true)
    }

    fn expand_with(
        &self,
        set: &str,
        scale_name: &str,
        builtins: &[(&str, String)],
        vars: bool,
    ) -> Result<String, ConfigError> {
        let mut out = String::new();
        let mut rest = set;
        while let Some(i) = rest.find("${") {
            out += &rest[..i];
            let end = rest[i..].find('}').ok_or_else(|| ConfigError(format!("--set `{set}`: unclosed `${{`")))?;
            let name = &rest[i + 2..i + end];
            if let Some((_, v)) = builtins.iter().find(|(n, _)| *n == name) {
                out += v;
            } else {
                let v = self
                    .vars
                    .get(name)
                    .filter(|_| vars)
                    .ok_or_else(|| ConfigError(format!("`{set}`: no `{name}` in [scale.{scale_name}.vars]")))?;
                out += &self.expand_with(&value_text(v), scale_name, builtins, false)?;
            }
            rest = &rest[i + end + 1..];
        }
        out += rest;
        Ok(out)
    }
}

/// A `[[prereq]]`: a run that cells start from (`init_from`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prereq {
    /// Referred to by a method's `from`.
    pub name: String,
    /// Experiment config.
    pub config: PathBuf,
    /// `--set` overrides.
    #[serde(default)]
    pub sets: Vec<String>,
    /// A fixed run directory (`${task}` and `${seed}` expand) instead of
    /// `<runs>/[<task>/]prereq/<name>/seed<s>`: shares a run made outside
    /// the table (e.g. `runs/glue-${task}-minilm` from `espalier run
    /// configs/glue/${task}.toml`). Like any run of the table it is run when
    /// missing, resumed when unfinished and refused when it holds another
    /// experiment.
    #[serde(default)]
    pub dir: Option<String>,
    /// One run at this seed, shared by the cells of every seed (their
    /// spread is then their own: calibration sample, fine-tuning order),
    /// instead of one run per seed.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// A `[[method]]`: one column of the table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Method {
    /// Short name (CSV, run directory, claims).
    pub name: String,
    /// Column header (default: the name).
    #[serde(default)]
    pub label: Option<String>,
    /// Experiment config.
    pub config: PathBuf,
    /// `--set` overrides.
    #[serde(default)]
    pub sets: Vec<String>,
    /// Start from this prerequisite's run (`init_from`).
    #[serde(default)]
    pub from: Option<String>,
    /// One run per value of a key (else one run per seed, every pruning
    /// round of which is a point, as in IMP).
    #[serde(default)]
    pub sweep: Option<Sweep>,
}

impl Method {
    pub(super) fn label(&self) -> &str {
        self.label.as_deref().unwrap_or(&self.name)
    }
}

/// A sweep: one run per value, reporting its last round.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sweep {
    /// The key, e.g. `prune.schedule.sparsity` or `structured.keep`.
    pub key: String,
    /// Its values (TOML numbers or strings).
    pub values: Vec<toml::Value>,
}

/// A `[[reference]]`: one of the paper's numbers.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reference {
    /// A method name, or `dense`.
    pub method: String,
    /// Sparsity in [0, 1) (0 for dense).
    #[serde(default)]
    pub sparsity: f64,
    /// Metric (default: the table's first).
    #[serde(default)]
    pub metric: Option<String>,
    /// The paper's value.
    pub value: f64,
    /// Where it comes from.
    pub source: String,
    /// The task (or `average`) it belongs to; required when the spec has tasks.
    #[serde(default)]
    pub task: Option<String>,
}

/// What a claim asserts.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClaimKind {
    /// Method `a` is above method `b` (by more than `tolerance`) at every
    /// sparsity both have in the range.
    Beats,
    /// Method `a` is at most `tolerance` below the dense reference at every
    /// sparsity in the range.
    WithinDense,
    /// Every paper value of method `a` (or `dense`) is matched within
    /// `tolerance` at the nearest sparsity we ran.
    NearPaper,
}

/// A `[[claim]]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// The claim in words.
    pub text: String,
    /// What is checked.
    pub kind: ClaimKind,
    /// The method the claim is about.
    pub a: String,
    /// The other method (`beats`).
    #[serde(default)]
    pub b: Option<String>,
    /// Slack in metric points (a margin for `beats`).
    #[serde(default)]
    pub tolerance: f64,
    /// Only sparsities ≥ this.
    #[serde(default)]
    pub min_sparsity: Option<f64>,
    /// Only sparsities ≤ this.
    #[serde(default)]
    pub max_sparsity: Option<f64>,
    /// The metric checked (default: the table's first).
    #[serde(default)]
    pub metric: Option<String>,
    /// Only this task (or `average`); default: every task and the average,
    /// each checked on its own.
    #[serde(default)]
    pub task: Option<String>,
}

/// Reads and checks a spec.
pub fn load_spec(path: &Path) -> Result<Spec, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("{}: cannot read table spec: {e}", path.display())))?;
    parse_spec(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
}

/// Parses and checks spec text (errors without the file name).
pub fn parse_spec(text: &str) -> Result<Spec, ConfigError> {
    let de = toml::Deserializer::parse(text).map_err(|e| ConfigError(format!("invalid TOML: {e}")))?;
    let spec: Spec = serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        ConfigError(format!("key `{path}`: {}", e.into_inner()))
    })?;
    spec.validate().map_err(ConfigError)?;
    Ok(spec)
}

fn plain_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        && s != "."
        && s != ".."
}

impl Spec {
    /// The metric names of a task, position by position with `table.metrics`.
    pub(super) fn metrics_of(&self, task: Option<usize>) -> &[String] {
        task.and_then(|i| self.task[i].metrics.as_deref()).unwrap_or(&self.table.metrics)
    }

    /// A task's name (empty when the spec has no tasks).
    pub(super) fn task_name(&self, task: Option<usize>) -> &str {
        task.map_or("", |i| &self.task[i].name)
    }

    /// The tasks to run: each `[[task]]`, or one implicit task (`None`).
    pub(super) fn task_indices(&self) -> Vec<Option<usize>> {
        if self.task.is_empty() {
            vec![None]
        } else {
            (0..self.task.len()).map(Some).collect()
        }
    }

    /// The built-in `${task}` and `${seed}` values of a run.
    pub(super) fn builtins(&self, task: Option<usize>, seed: u64) -> [(&'static str, String); 2] {
        [("task", self.task_name(task).to_string()), ("seed", seed.to_string())]
    }

    /// Checks what types cannot: names, references between sections.
    pub fn validate(&self) -> Result<(), String> {
        let t = &self.table;
        if !plain_name(&t.name) {
            return Err(format!("key `table.name` must be a plain name (letters, digits, - _ .), found `{}`", t.name));
        }
        if t.metrics.is_empty() {
            return Err("key `table.metrics` must name at least one metric".into());
        }
        if !self.scale.contains_key(&t.scale) {
            return Err(format!("key `table.scale`: no [scale.{}] section", t.scale));
        }
        for (name, s) in &self.scale {
            if s.seeds.as_ref().is_some_and(|v| v.is_empty()) || t.seeds.is_empty() {
                return Err(format!("key `scale.{name}.seeds` (or `table.seeds`) must not be empty"));
            }
            if let Some(r) = &s.slurm {
                r.validate(&format!("scale.{name}.slurm"))?;
            }
        }
        if let Some(r) = &self.slurm {
            r.validate("slurm")?;
        }
        if self.method.is_empty() {
            return Err("the spec needs at least one [[method]]".into());
        }
        let mut tasks: Vec<&str> = Vec::new();
        for (i, task) in self.task.iter().enumerate() {
            if !plain_name(&task.name) || task.name == "average" || tasks.contains(&task.name.as_str()) {
                return Err(format!(
                    "key `task[{i}].name` must be a plain name used once (not `average`), found `{}`",
                    task.name
                ));
            }
            tasks.push(&task.name);
            if task.metrics.as_ref().is_some_and(|m| m.len() != t.metrics.len()) {
                return Err(format!(
                    "key `task[{i}].metrics` must name one metric per entry of `table.metrics` ({})",
                    t.metrics.len()
                ));
            }
        }
        if t.average && self.task.len() < 2 {
            return Err("key `table.average` needs at least two [[task]] sections".into());
        }
        let task_ok = |what: String, task: &Option<String>| -> Result<(), String> {
            match task {
                None => Ok(()),
                Some(n) if tasks.contains(&n.as_str()) || (n == "average" && t.average) => Ok(()),
                Some(n) => Err(format!(
                    "key `{what}.task`: no task `{n}` (tasks: {}{})",
                    tasks.join(", "),
                    if t.average { ", average" } else { "" }
                )),
            }
        };
        let mut names = vec!["dense".to_string()];
        for (i, p) in self.prereq.iter().enumerate() {
            if !plain_name(&p.name) {
                return Err(format!("key `prereq[{i}].name` must be a plain name, found `{}`", p.name));
            }
        }
        for (i, m) in self.method.iter().enumerate() {
            if !plain_name(&m.name) || names.contains(&m.name) {
                return Err(format!(
                    "key `method[{i}].name` must be a plain name used once (not `dense`), found `{}`",
                    m.name
                ));
            }
            names.push(m.name.clone());
            if let Some(f) = &m.from {
                if !self.prereq.iter().any(|p| &p.name == f) {
                    return Err(format!("key `method[{i}].from`: no [[prereq]] named `{f}`"));
                }
            }
            if let Some(s) = &m.sweep {
                if s.values.is_empty() {
                    return Err(format!("key `method[{i}].sweep.values` must not be empty"));
                }
            }
        }
        for (i, r) in self.reference.iter().enumerate() {
            if !names.contains(&r.method) {
                return Err(format!("key `reference[{i}].method`: no method `{}` (nor `dense`)", r.method));
            }
            if !self.task.is_empty() && r.task.is_none() {
                return Err(format!("key `reference[{i}].task`: the spec has tasks; name the one this value is for"));
            }
            task_ok(format!("reference[{i}]"), &r.task)?;
        }
        for (i, c) in self.claim.iter().enumerate() {
            for m in std::iter::once(&c.a).chain(c.b.as_ref()) {
                if !names.contains(m) {
                    return Err(format!("key `claim[{i}]`: no method `{m}`"));
                }
            }
            if let Some(m) = c.metric.as_ref().filter(|m| !t.metrics.contains(m)) {
                return Err(format!("key `claim[{i}].metric`: `{m}` is not in `table.metrics`"));
            }
            if c.kind == ClaimKind::Beats && c.b.is_none() {
                return Err(format!("key `claim[{i}].b`: a `beats` claim needs the other method"));
            }
            task_ok(format!("claim[{i}]"), &c.task)?;
        }
        Ok(())
    }
}

pub(super) fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::table::fixtures::{opts, SPEC, TASKS};
    use crate::table::plan::{job_experiment, plan, TableOptions};

    #[test]
    fn spec_errors_name_the_key() {
        let e = parse_spec(&SPEC.replace("title = \"T\"", "title = \"T\"\ntitel = 1")).unwrap_err().0;
        assert!(e.contains("titel"), "{e}");
        let e = parse_spec(&SPEC.replace("from = \"dense\"", "from = \"dens\"")).unwrap_err().0;
        assert!(e.contains("method[0].from") && e.contains("dens"), "{e}");
        let e = parse_spec(&SPEC.replace("b = \"b\"", "b = \"c\"")).unwrap_err().0;
        assert!(e.contains("claim[0]") && e.contains("`c`"), "{e}");
        let e = parse_spec(&SPEC.replace("scale = \"small\"", "scale = \"big\"")).unwrap_err().0;
        assert!(e.contains("table.scale") && e.contains("big"), "{e}");
        let spec = parse_spec(&SPEC.replace("${e}", "${f}")).unwrap();
        let e = plan(&spec, &opts()).unwrap_err().0;
        assert!(e.contains("`f`") && e.contains("scale.small.vars"), "{e}");
    }

    #[test]
    fn task_errors_name_the_key() {
        let e = parse_spec(&TASKS.replace("metrics = [\"f1\"]", "metrics = [\"f1\", \"acc\"]")).unwrap_err().0;
        assert!(e.contains("task[1].metrics"), "{e}");
        let e = parse_spec(&TASKS.replace("task = \"mrpc\"\n", "task = \"sst2\"\n")).unwrap_err().0;
        assert!(e.contains("reference[0].task") && e.contains("sst2"), "{e}");
        let e = parse_spec(&TASKS.replace("name = \"mrpc\"", "name = \"rte\"")).unwrap_err().0;
        assert!(e.contains("task[1].name"), "{e}");
        let spec = parse_spec(&TASKS.replace("runs/glue-${task}-minilm", "runs/dense")).unwrap();
        let e = plan(&spec, &opts()).unwrap_err().0;
        assert!(e.contains("share the run directory runs/dense"), "{e}");
    }

    /// Every spec under configs/tables parses, and at every scale every run
    /// it would start is a valid experiment.
    #[test]
    fn shipped_specs_are_valid() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let mut n = 0;
        for entry in std::fs::read_dir(root.join("configs/tables")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "toml") {
                continue;
            }
            let mut spec = load_spec(&path).unwrap_or_else(|e| panic!("{e}"));
            for p in &mut spec.prereq {
                p.config = root.join(&p.config);
            }
            for m in &mut spec.method {
                m.config = root.join(&m.config);
            }
            for scale in spec.scale.keys() {
                let o = TableOptions { spec_path: path.clone(), scale: Some(scale.clone()), ..opts() };
                let p = plan(&spec, &o).unwrap_or_else(|e| panic!("{e}"));
                for job in p.prereqs.iter().chain(&p.cells) {
                    job_experiment(job).unwrap_or_else(|e| panic!("{}, scale {scale}: {e}", path.display()));
                }
            }
            n += 1;
        }
        assert!(n >= 1, "no table specs found");
    }
}
