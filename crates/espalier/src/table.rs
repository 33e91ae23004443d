//! Paper tables: a table spec (TOML under `configs/tables/`) names a set of
//! ordinary experiment runs (methods × sparsities × seeds at a stated
//! scale), `espalier table SPEC` runs the ones that are missing, and the
//! results are rendered to `results/<table>/`: `README.md` (mean ± std over
//! seeds, the paper's values beside ours, the dense reference, the spec's
//! claims checked as PASS/FAILS), `results.csv`, `plot.png`, `plot.svg` and
//! `command.txt`.
//!
//! Every cell is a plain run directory under `runs/tables/<table>/<scale>/`:
//! a finished cell (its `summary.json` present, its `config.toml` the same
//! experiment) is never run again, an unfinished one resumes from its
//! checkpoint, so a killed table continues where it stopped. Cells are run
//! as child processes (`espalier run CONFIG --set ... --out DIR`), up to
//! `--jobs` at a time. The report is a pure function of the spec and the
//! runs' `summary.json` files: `--report-only` renders the same bytes again.
//!
//! A spec:
//!
//! ```toml
//! [table]
//! name = "imp-lenet300"            # results/<name>/
//! title = "IMP on LeNet-300-100, MNIST"
//! metrics = ["accuracy"]           # the first is plotted and checked
//! scale = "small"                  # the [scale.*] section used by default
//! seeds = [0]
//! x_axis = "sparsity"              # or "weights_left_log" (lottery-ticket plots)
//!
//! [scale.small]                    # --set overrides of every run, stated in the report
//! description = "10k-image MNIST subset, 2 dense epochs"
//! sets = ['data.path="mnist-subset"', "train.epochs=2"]
//! prereq_sets = []                 # only for the [[prereq]] runs (cell_sets: only the cells)
//! vars = { epochs = 3 }            # `${epochs}` in any `sets` entry of the spec
//!
//! [[prereq]]                       # runs the cells start from (per seed)
//! name = "dense"
//! config = "configs/structured/mlp1000-dense.toml"
//! # dir = "runs/mlp1000-dense"     # a run shared with `espalier run` (else under runs/tables/)
//!
//! [[method]]
//! name = "l1"                      # CSV method column and run directory
//! label = "L1 norm"                # column header (default: name)
//! config = "configs/structured/mlp1000-l1.toml"
//! sets = []
//! from = "dense"                   # init_from = that prereq's run directory
//! sweep = { key = "structured.keep", values = [500, 250, 100] }
//!
//! [[reference]]                    # the paper's numbers (method "dense" for the dense one)
//! method = "l1"
//! sparsity = 0.9
//! value = 97.0
//! source = "Paper et al. 2021, Table 1"
//!
//! [[claim]]                        # checked against our numbers: PASS / FAILS
//! text = "L1 beats random at every sparsity"
//! kind = "beats"                   # beats | within_dense | near_paper
//! a = "l1"
//! b = "random"
//! # tolerance = 0.0, min_sparsity / max_sparsity, metric = "accuracy@before-finetune"
//! ```
//!
//! Several tasks (GLUE): `[[task]]` sections (`name`, `sets` such as
//! `data.task="rte"`, optionally `metrics`: the task's own names for
//! `table.metrics`, e.g. `["f1"]` for MRPC) run every prerequisite and cell
//! once per task under `<runs>/<task>/`; `${task}` expands in configs, sets
//! and prerequisite `dir`s; the report has a section per task and, with
//! `table.average = true`, the mean over tasks (GLUE-style). References
//! then name their `task` (or `average`); a claim is checked on every
//! section unless it names one.
//!
//! A swept method reports the last round of each run; an unswept one (IMP)
//! reports every pruning round of its run. Rows are sparsities rounded to
//! 0.1 %. The dense reference is the first prerequisite's result, or else
//! round 0 of the first method's runs. Claims compare the seed means as the
//! report prints them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use espalier_core::checkpoint::write_atomic;
use serde::Deserialize;

use crate::config::{self, ConfigError, Experiment};
use crate::run::{Record, Summary};

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
    /// epoch's, `m@before-finetune` a structured run's before fine-tuning.
    pub metrics: Vec<String>,
    /// The scale used unless `--scale` says otherwise.
    pub scale: String,
    /// Seeds of every cell (a scale may override).
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The plot's x axis.
    #[serde(default)]
    pub x_axis: XAxis,
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
    fn label(&self) -> &str {
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
}

impl Scale {
    /// `set` with every `${name}` replaced by the built-in value of that
    /// name (`task`, `seed`) or else this scale's (whose own `${task}` and
    /// `${seed}` expand in turn, e.g. `dense_dir = "runs/dense-${seed}"`).
    fn expand(&self, set: &str, scale_name: &str, builtins: &[(&str, String)]) -> Result<String, ConfigError> {
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
    fn label(&self) -> &str {
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
    fn metrics_of(&self, task: Option<usize>) -> &[String] {
        task.and_then(|i| self.task[i].metrics.as_deref()).unwrap_or(&self.table.metrics)
    }

    /// A task's name (empty when the spec has no tasks).
    fn task_name(&self, task: Option<usize>) -> &str {
        task.map_or("", |i| &self.task[i].name)
    }

    /// The tasks to run: each `[[task]]`, or one implicit task (`None`).
    fn task_indices(&self) -> Vec<Option<usize>> {
        if self.task.is_empty() {
            vec![None]
        } else {
            (0..self.task.len()).map(Some).collect()
        }
    }

    /// The built-in `${task}` and `${seed}` values of a run.
    fn builtins(&self, task: Option<usize>, seed: u64) -> [(&'static str, String); 2] {
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

/// How to run a table.
#[derive(Clone, Debug)]
pub struct TableOptions {
    /// The spec file (as given: it is written into the command).
    pub spec_path: PathBuf,
    /// The scale (default: the spec's).
    pub scale: Option<String>,
    /// `--data-dir` passed to every run.
    pub data_dir: Option<PathBuf>,
    /// Root of the cells' run directories (default `runs/tables/<name>/<scale>`).
    pub runs: Option<PathBuf>,
    /// Where the report goes (default `results/<name>`, or
    /// `results/<name>-<scale>` for another scale than the spec's).
    pub out: Option<PathBuf>,
    /// Cells run at once.
    pub jobs: usize,
    /// Stop after this many newly started runs (the table stays resumable).
    pub max_cells: Option<usize>,
    /// Only re-render the report from existing runs.
    pub report_only: bool,
    /// Quiet children.
    pub quiet: bool,
}

/// One run of the table: a prerequisite or a cell.
#[derive(Clone, Debug)]
pub struct Job {
    /// `prereq/<name>/seed<s>` or `<method>/<setting>/seed<s>`: for logs.
    pub id: String,
    /// Experiment config.
    pub config: PathBuf,
    /// All overrides, in order.
    pub sets: Vec<String>,
    /// Run directory.
    pub dir: PathBuf,
    /// The task (index into `spec.task`; None when the spec has none).
    pub task: Option<usize>,
    /// The method (None for prerequisites).
    pub method: Option<usize>,
    /// The sweep value's text (`keep=250`), if any.
    pub setting: Option<String>,
    /// Seed.
    pub seed: u64,
}

/// The resolved plan of a table at one scale.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Scale name.
    pub scale: String,
    /// Seeds.
    pub seeds: Vec<u64>,
    /// Prerequisite runs (run first).
    pub prereqs: Vec<Job>,
    /// The cells.
    pub cells: Vec<Job>,
    /// Root of the run directories.
    pub runs: PathBuf,
    /// Report directory.
    pub out: PathBuf,
    /// The command that produces the table.
    pub command: String,
}

fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn slug(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '=' => '-',
            c if c.is_ascii_alphanumeric() || c == '.' || c == '-' => c,
            _ => '_',
        })
        .collect()
}

fn toml_string(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

/// Resolves the spec into runs: directories, overrides, the command.
pub fn plan(spec: &Spec, opts: &TableOptions) -> Result<Plan, ConfigError> {
    let scale_name = opts.scale.clone().unwrap_or_else(|| spec.table.scale.clone());
    let scale = spec.scale.get(&scale_name).ok_or_else(|| {
        ConfigError(format!(
            "{}: no [scale.{scale_name}] (scales: {})",
            opts.spec_path.display(),
            spec.scale.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })?;
    let seeds = scale.seeds.clone().unwrap_or_else(|| spec.table.seeds.clone());
    let runs =
        opts.runs.clone().unwrap_or_else(|| PathBuf::from("runs/tables").join(&spec.table.name).join(&scale_name));
    let out = opts.out.clone().unwrap_or_else(|| {
        let name = if scale_name == spec.table.scale {
            spec.table.name.clone()
        } else {
            format!("{}-{scale_name}", spec.table.name)
        };
        PathBuf::from("results").join(name)
    });
    let expand_all = |sets: &[String], builtins: &[(&str, String)]| {
        sets.iter().map(|x| scale.expand(x, &scale_name, builtins)).collect::<Result<Vec<_>, _>>()
    };
    let expand_path = |p: &Path, builtins: &[(&str, String)]| {
        scale.expand(&p.to_string_lossy(), &scale_name, builtins).map(PathBuf::from)
    };
    let tasks = spec.task_indices();
    let mut prereqs: Vec<Job> = Vec::new();
    let mut prereq_dirs = BTreeMap::new();
    let mut cells = Vec::new();
    for &ti in &tasks {
        let task = ti.map(|i| &spec.task[i]);
        let task_sets = task.map_or(&[][..], |t| &t.sets[..]);
        let root = task.map_or_else(|| runs.clone(), |t| runs.join(&t.name));
        let prefix = task.map_or(String::new(), |t| format!("{}/", t.name));
        for p in &spec.prereq {
            for &seed in &seeds {
                let builtins = spec.builtins(ti, seed);
                let dir = match &p.dir {
                    Some(d) => expand_path(Path::new(d), &builtins)?,
                    None => root.join("prereq").join(&p.name).join(format!("seed{seed}")),
                };
                let id = format!("{prefix}prereq/{}/seed{seed}", p.name);
                if let Some(other) = prereqs.iter().find(|j| j.dir == dir) {
                    return Err(ConfigError(format!(
                        "{}: prerequisites {} and {id} share the run directory {}; put `${{seed}}` or `${{task}}` \
                         in its `dir`",
                        opts.spec_path.display(),
                        other.id,
                        dir.display()
                    )));
                }
                let mut sets = task_sets.to_vec();
                sets.extend(p.sets.iter().cloned());
                sets.extend(scale.sets.iter().cloned());
                sets.extend(scale.prereq_sets.iter().cloned());
                sets.push(format!("seed={seed}"));
                prereq_dirs.insert((ti, p.name.clone(), seed), dir.clone());
                prereqs.push(Job {
                    id,
                    config: expand_path(&p.config, &builtins)?,
                    sets: expand_all(&sets, &builtins)?,
                    dir,
                    task: ti,
                    method: None,
                    setting: None,
                    seed,
                });
            }
        }
        for (mi, m) in spec.method.iter().enumerate() {
            let points: Vec<Option<(String, String)>> = match &m.sweep {
                Some(s) => s
                    .values
                    .iter()
                    .map(|v| {
                        let short = s.key.rsplit('.').next().unwrap_or(&s.key);
                        Some((format!("{}={}", s.key, v), format!("{short}={}", value_text(v))))
                    })
                    .collect(),
                None => vec![None],
            };
            for point in &points {
                for &seed in &seeds {
                    let builtins = spec.builtins(ti, seed);
                    let mut sets = task_sets.to_vec();
                    sets.extend(m.sets.iter().cloned());
                    sets.extend(scale.sets.iter().cloned());
                    sets.extend(scale.cell_sets.iter().cloned());
                    if let Some(f) = &m.from {
                        let dir = &prereq_dirs[&(ti, f.clone(), seed)];
                        sets.push(format!("init_from={}", toml_string(dir)));
                    }
                    let mut dir = root.join(&m.name);
                    if let Some((set, setting)) = point {
                        sets.push(set.clone());
                        dir = dir.join(slug(setting));
                    }
                    sets.push(format!("seed={seed}"));
                    let dir = dir.join(format!("seed{seed}"));
                    let setting = point.as_ref().map(|(_, s)| s.clone());
                    let id = format!(
                        "{prefix}{}/{}seed{seed}",
                        m.name,
                        setting.as_ref().map(|s| format!("{s}/")).unwrap_or_default()
                    );
                    cells.push(Job {
                        id,
                        config: expand_path(&m.config, &builtins)?,
                        sets: expand_all(&sets, &builtins)?,
                        dir,
                        task: ti,
                        method: Some(mi),
                        setting,
                        seed,
                    });
                }
            }
        }
    }
    let mut command = format!("espalier table {}", opts.spec_path.display());
    if opts.scale.as_ref().is_some_and(|s| s != &spec.table.scale) {
        command += &format!(" --scale {scale_name}");
    }
    if let Some(d) = &opts.data_dir {
        command += &format!(" --data-dir {}", d.display());
    }
    if let Some(r) = &opts.runs {
        command += &format!(" --runs {}", r.display());
    }
    if let Some(o) = &opts.out {
        command += &format!(" --out {}", o.display());
    }
    Ok(Plan { scale: scale_name, seeds, prereqs, cells, runs, out, command })
}

/// The experiment a job runs (checked before anything runs).
fn job_experiment(job: &Job) -> Result<Experiment, ConfigError> {
    config::load(&job.config, &job.sets).map_err(|e| ConfigError(format!("table cell {}: {}", job.id, e.0)))
}

/// Whether a job's run directory holds its finished run. A directory that
/// holds another experiment is an error (the spec changed under it).
fn is_finished(job: &Job, exp: &Experiment) -> Result<bool, ConfigError> {
    let cfg = job.dir.join("config.toml");
    if !cfg.exists() {
        return Ok(false);
    }
    let old = config::load(&cfg, &[])?;
    if &old != exp {
        return Err(ConfigError(format!(
            "table cell {}: {} holds a different experiment than the spec now asks for; remove it or use --runs",
            job.id,
            job.dir.display()
        )));
    }
    Ok(job.dir.join("summary.json").exists())
}

/// What `run_table` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Runs started (and finished) by this invocation.
    pub ran: usize,
    /// Runs found finished and skipped.
    pub skipped: usize,
    /// Whether every run is finished.
    pub complete: bool,
}

/// The command line of a job.
fn job_command(exe: &Path, job: &Job, opts: &TableOptions) -> Command {
    let mut c = Command::new(exe);
    c.arg("run").arg(&job.config);
    for s in &job.sets {
        c.arg("--set").arg(s);
    }
    c.arg("--out").arg(&job.dir);
    if let Some(d) = &opts.data_dir {
        c.arg("--data-dir").arg(d);
    }
    if opts.quiet || opts.jobs > 1 {
        c.arg("--quiet");
    }
    c.stdout(Stdio::null());
    c
}

/// Runs the jobs that are not finished, `opts.jobs` at a time, until
/// `budget` new runs have started. Returns (ran, skipped, all finished).
fn run_jobs(jobs: &[Job], opts: &TableOptions, budget: &mut Option<usize>) -> anyhow::Result<Progress> {
    let exe = std::env::current_exe().context("locating the espalier binary")?;
    let mut todo = Vec::new();
    let mut skipped = 0;
    for job in jobs {
        let exp = job_experiment(job)?;
        if is_finished(job, &exp)? {
            tracing::info!("{}: finished, skipped", job.id);
            skipped += 1;
        } else {
            todo.push(job);
        }
    }
    let mut running: Vec<(&Job, Child)> = Vec::new();
    let mut ran = 0;
    let mut failed: Option<anyhow::Error> = None;
    let mut queue = todo.iter().copied().peekable();
    loop {
        while failed.is_none() && running.len() < opts.jobs.max(1) && budget.is_none_or(|b| b > 0) {
            let Some(job) = queue.next() else { break };
            if let Some(b) = budget.as_mut() {
                *b -= 1;
            }
            tracing::info!("{}: running into {}", job.id, job.dir.display());
            let child = job_command(&exe, job, opts)
                .spawn()
                .with_context(|| format!("{}: starting {}", job.id, exe.display()))?;
            running.push((job, child));
        }
        if running.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut i = 0;
        while i < running.len() {
            match running[i].1.try_wait().context("waiting for a table cell")? {
                None => i += 1,
                Some(status) => {
                    let (job, _) = running.swap_remove(i);
                    if status.success() {
                        ran += 1;
                        tracing::info!("{}: done", job.id);
                    } else if failed.is_none() {
                        failed = Some(anyhow::anyhow!(
                            "table cell {} failed ({status}); rerun it alone with: espalier run {} {}--out {}",
                            job.id,
                            job.config.display(),
                            job.sets.iter().map(|s| format!("--set '{s}' ")).collect::<String>(),
                            job.dir.display()
                        ));
                    }
                }
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Progress { ran, skipped, complete: queue.peek().is_none() })
}

/// Runs the missing runs of a plan (prerequisites first). Stops early,
/// resumable, when `opts.max_cells` runs have started.
pub fn run_plan(plan: &Plan, opts: &TableOptions) -> anyhow::Result<Progress> {
    let mut budget = opts.max_cells;
    let pre = run_jobs(&plan.prereqs, opts, &mut budget)?;
    if !pre.complete {
        return Ok(Progress { complete: false, ..pre });
    }
    let cells = run_jobs(&plan.cells, opts, &mut budget)?;
    Ok(Progress { ran: pre.ran + cells.ran, skipped: pre.skipped + cells.skipped, complete: cells.complete })
}

/// One reported number: a run's metric at a sparsity.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// Task name (empty when the spec has no tasks).
    pub task: String,
    /// Method name (`dense` for the dense reference).
    pub method: String,
    /// Model name from the run.
    pub model: String,
    /// Data name from the run.
    pub data: String,
    /// Sparsity of the run's round.
    pub sparsity: f64,
    /// The sweep setting that produced it.
    pub setting: Option<String>,
    /// Metric name.
    pub metric: String,
    /// Value.
    pub value: f64,
    /// Seed.
    pub seed: u64,
}

fn read_summary(dir: &Path) -> anyhow::Result<Summary> {
    let p = dir.join("summary.json");
    let bytes = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", p.display()))
}

/// The value of `metric` in a round of `s`; `None` where the run lacks it.
/// Besides the evaluation metrics: `empty_rows`, `empty_cols` and
/// `removable` (percent, unstructured pruning's row/column statistics).
fn metric_of(s: &Summary, round: &Record, metric: &str, last: bool) -> Option<f64> {
    let Record::Round { metrics, best, lines, .. } = round else { return None };
    if let Some(l) = lines {
        match metric {
            "empty_rows" => return Some(l.empty_rows),
            "empty_cols" => return Some(l.empty_cols),
            "removable" => return Some(l.removable),
            _ => {}
        }
    }
    if let Some(m) = metric.strip_suffix("@best-epoch") {
        return best.as_ref().and_then(|b| b.metrics.get(m).copied());
    }
    if let Some(m) = metric.strip_suffix("@before-finetune") {
        return s.structured.as_ref().filter(|_| last).and_then(|st| st.metrics_before_finetune.get(m).copied());
    }
    metrics.get(metric).copied()
}

/// The points of a finished run: its pruned rounds (all of them, or the
/// last for a swept method), and its round 0 as the dense reference when
/// `dense` is set.
fn points_of(spec: &Spec, job: &Job, s: &Summary, method: &str, dense: bool) -> Vec<Point> {
    let rounds: Vec<&Record> = s.rounds.iter().collect();
    let mut out = Vec::new();
    let swept = job.method.is_some_and(|m| spec.method[m].sweep.is_some());
    for (i, r) in rounds.iter().enumerate() {
        let Record::Round { round, sparsity, .. } = r else { continue };
        let last = i + 1 == rounds.len();
        let (name, keep) = if *round == 0 { ("dense", dense) } else { (method, !swept || last) };
        if !keep {
            continue;
        }
        for metric in spec.metrics_of(job.task) {
            if let Some(value) = metric_of(s, r, metric, last) {
                out.push(Point {
                    task: spec.task_name(job.task).to_string(),
                    method: name.to_string(),
                    model: s.model.clone(),
                    data: s.data.clone(),
                    sparsity: if *round == 0 { 0.0 } else { *sparsity },
                    setting: if *round == 0 { None } else { job.setting.clone() },
                    metric: metric.clone(),
                    value,
                    seed: s.seed,
                });
            }
        }
    }
    out
}

/// Every point of a finished plan, in plan order; the dense reference comes
/// from the first prerequisite (its final round) or else the first
/// method's round 0, once per seed.
pub fn collect(spec: &Spec, plan: &Plan) -> anyhow::Result<Vec<Point>> {
    let missing: Vec<&str> = plan
        .prereqs
        .iter()
        .chain(&plan.cells)
        .filter(|j| !j.dir.join("summary.json").exists())
        .map(|j| j.id.as_str())
        .collect();
    if !missing.is_empty() {
        bail!(
            "{} of {} runs are not finished ({}); run `{}` first",
            missing.len(),
            plan.prereqs.len() + plan.cells.len(),
            missing.iter().take(5).copied().collect::<Vec<_>>().join(", "),
            plan.command
        );
    }
    let mut points = Vec::new();
    let first_prereq = spec.prereq.first().map(|p| p.name.as_str());
    let is_first = |j: &&Job| first_prereq.is_some_and(|n| j.id.ends_with(&format!("prereq/{n}/seed{}", j.seed)));
    for job in plan.prereqs.iter().filter(is_first) {
        let s = read_summary(&job.dir)?;
        let Some(last) = s.rounds.last() else { continue };
        for metric in spec.metrics_of(job.task) {
            if let Some(value) = metric_of(&s, last, metric, false) {
                points.push(Point {
                    task: spec.task_name(job.task).to_string(),
                    method: "dense".into(),
                    model: s.model.clone(),
                    data: s.data.clone(),
                    sparsity: 0.0,
                    setting: None,
                    metric: metric.clone(),
                    value,
                    seed: s.seed,
                });
            }
        }
    }
    let mut dense_seen: Vec<(Option<usize>, u64)> = Vec::new();
    for job in &plan.cells {
        let s = read_summary(&job.dir)?;
        let m = &spec.method[job.method.unwrap_or(0)];
        let dense = spec.prereq.is_empty() && job.method == Some(0) && !dense_seen.contains(&(job.task, job.seed));
        if dense {
            dense_seen.push((job.task, job.seed));
        }
        points.extend(points_of(spec, job, &s, &m.name, dense));
    }
    Ok(points)
}

/// The CSV: one row per run, sparsity and metric (the columns of a run's
/// `results.csv`, with the table's method names).
pub fn csv(points: &[Point]) -> String {
    let mut out = String::from("model,data,method,sparsity,metric,value,seed\n");
    for p in points {
        out +=
            &format!("{},{},{},{:.6},{},{:.4},{}\n", p.model, p.data, p.method, p.sparsity, p.metric, p.value, p.seed);
    }
    out
}

/// Mean, sample standard deviation (0 for one value) and count.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    /// Mean over seeds.
    pub mean: f64,
    /// Sample standard deviation (n − 1).
    pub std: f64,
    /// Number of seeds.
    pub n: usize,
}

impl Stat {
    fn of(v: &[f64]) -> Stat {
        let n = v.len();
        let mean = v.iter().sum::<f64>() / n.max(1) as f64;
        let std = if n > 1 { (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64).sqrt() } else { 0.0 };
        Stat { mean, std, n }
    }

    fn text(&self) -> String {
        if self.n > 1 {
            format!("{:.2} ± {:.2}", self.mean, self.std)
        } else {
            format!("{:.2}", self.mean)
        }
    }
}

/// Sparsity rounded to 0.1 % (the rows of the table): runs that reach
/// the same sparsity by different routes share a row.
fn key(sparsity: f64) -> i64 {
    (sparsity * 1000.0).round() as i64
}

/// The aggregated table of one metric: (method, sparsity key) → stat.
#[derive(Clone, Debug)]
pub struct Aggregate {
    /// Task name (empty without tasks, `average` for the mean over tasks).
    pub task: String,
    /// The entry of `table.metrics` it stands for (claims and references name these).
    pub column: String,
    /// Metric name (the task's own: `f1` where the column is `accuracy`).
    pub metric: String,
    /// Per method, per sparsity key.
    pub cells: BTreeMap<String, BTreeMap<i64, Stat>>,
    /// Sweep settings seen per sparsity key.
    pub settings: BTreeMap<i64, Vec<String>>,
    /// The dense reference.
    pub dense: Option<Stat>,
}

/// Aggregates the points of one task's metric over seeds; `column` is the
/// entry of `table.metrics` the metric stands for.
pub fn aggregate(points: &[Point], task: &str, metric: &str, column: &str) -> Aggregate {
    let mut values: BTreeMap<(String, i64), Vec<f64>> = BTreeMap::new();
    let mut settings: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    let mut dense = Vec::new();
    for p in points.iter().filter(|p| p.metric == metric && p.task == task) {
        if p.method == "dense" {
            dense.push(p.value);
            continue;
        }
        values.entry((p.method.clone(), key(p.sparsity))).or_default().push(p.value);
        if let Some(s) = &p.setting {
            let v = settings.entry(key(p.sparsity)).or_default();
            if !v.contains(s) {
                v.push(s.clone());
            }
        }
    }
    let mut cells: BTreeMap<String, BTreeMap<i64, Stat>> = BTreeMap::new();
    for ((m, k), v) in values {
        cells.entry(m).or_default().insert(k, Stat::of(&v));
    }
    Aggregate {
        task: task.into(),
        column: column.into(),
        metric: metric.into(),
        cells,
        settings,
        dense: (!dense.is_empty()).then(|| Stat::of(&dense)),
    }
}

/// The mean over tasks of each method's (seed-mean) value, where every task
/// has one at that sparsity: the GLUE-style average. Its cells carry no
/// standard deviation (n = 1).
pub fn average(per_task: &[&Aggregate], column: &str) -> Aggregate {
    let mean_of = |v: Vec<f64>| Stat { mean: v.iter().sum::<f64>() / v.len() as f64, std: 0.0, n: 1 };
    let mut cells: BTreeMap<String, BTreeMap<i64, Stat>> = BTreeMap::new();
    if let Some(first) = per_task.first() {
        for (m, by_key) in &first.cells {
            for k in by_key.keys() {
                let v: Option<Vec<f64>> =
                    per_task.iter().map(|a| a.cells.get(m).and_then(|c| c.get(k)).map(|s| s.mean)).collect();
                if let Some(v) = v {
                    cells.entry(m.clone()).or_default().insert(*k, mean_of(v));
                }
            }
        }
    }
    let dense: Option<Vec<f64>> = per_task.iter().map(|a| a.dense.map(|d| d.mean)).collect();
    let mut names: Vec<&str> = Vec::new();
    for a in per_task {
        if !names.contains(&a.metric.as_str()) {
            names.push(&a.metric);
        }
    }
    Aggregate {
        task: "average".into(),
        column: column.into(),
        metric: format!("average of {}", names.join(" / ")),
        cells,
        settings: BTreeMap::new(),
        dense: dense.filter(|v| !v.is_empty()).map(mean_of),
    }
}

/// One section of the report: a task's aggregates (one per entry of
/// `table.metrics`), or the average over tasks.
#[derive(Clone, Debug)]
pub struct Section {
    /// The task's label (empty without tasks).
    pub label: String,
    /// One aggregate per reported metric.
    pub aggs: Vec<Aggregate>,
}

/// The report's sections: one per task (one in all without tasks), then
/// the average over tasks when the spec asks for it.
pub fn sections(spec: &Spec, points: &[Point]) -> Vec<Section> {
    let tasks = spec.task_indices();
    let mut out: Vec<Section> = tasks
        .iter()
        .map(|&ti| Section {
            label: ti.map_or(String::new(), |i| spec.task[i].label().to_string()),
            aggs: spec
                .metrics_of(ti)
                .iter()
                .zip(&spec.table.metrics)
                .map(|(m, col)| aggregate(points, spec.task_name(ti), m, col))
                .collect(),
        })
        .collect();
    if spec.table.average {
        let aggs = (0..spec.table.metrics.len())
            .map(|i| average(&out.iter().map(|s| &s.aggs[i]).collect::<Vec<_>>(), &spec.table.metrics[i]))
            .collect();
        out.push(Section { label: "Average over tasks".into(), aggs });
    }
    out
}

fn pct(k: i64) -> String {
    format!("{:.1}%", k as f64 / 10.0)
}

/// Whether a paper value belongs to an aggregate's task and metric.
fn reference_for(spec: &Spec, r: &Reference, agg: &Aggregate) -> bool {
    r.task.as_deref().unwrap_or("") == agg.task && r.metric.as_deref().unwrap_or(&spec.table.metrics[0]) == agg.column
}

/// The paper's value for (method, sparsity key) of an aggregate, if the spec has one there.
fn reference_at<'a>(spec: &'a Spec, agg: &Aggregate, method: &str, k: i64) -> Option<&'a Reference> {
    spec.reference.iter().find(|r| r.method == method && key(r.sparsity) == k && reference_for(spec, r, agg))
}

fn markdown_table(spec: &Spec, agg: &Aggregate) -> String {
    let keys: Vec<i64> = {
        let mut k: Vec<i64> = agg.cells.values().flat_map(|m| m.keys().copied()).collect();
        k.sort_unstable();
        k.dedup();
        k
    };
    let with_setting = !agg.settings.is_empty();
    let mut md = String::from("| sparsity | weights left |");
    let mut rule = String::from("|---:|---:|");
    if with_setting {
        md += " setting |";
        rule += "---|";
    }
    for m in &spec.method {
        md += &format!(" {} |", m.label());
        rule += "---:|";
    }
    md += &format!("\n{rule}\n");
    for k in keys {
        md += &format!("| {} | {} |", pct(k), pct(1000 - k));
        if with_setting {
            md += &format!(" {} |", agg.settings.get(&k).map(|v| v.join(", ")).unwrap_or_default());
        }
        for m in &spec.method {
            let ours = agg.cells.get(&m.name).and_then(|c| c.get(&k)).map_or("–".to_string(), Stat::text);
            match reference_at(spec, agg, &m.name, k) {
                Some(r) => md += &format!(" {ours} (paper {:.2}) |", r.value),
                None => md += &format!(" {ours} |"),
            }
        }
        md.push('\n');
    }
    md
}

/// Our value nearest to a reference: (sparsity key, stat).
fn nearest(agg: &Aggregate, method: &str, sparsity: f64) -> Option<(i64, Stat)> {
    if method == "dense" {
        return agg.dense.map(|d| (0, d));
    }
    let cells = agg.cells.get(method)?;
    let k = key(sparsity);
    cells.iter().min_by_key(|(kk, _)| (**kk - k).abs()).map(|(kk, s)| (*kk, *s))
}

fn references_markdown(spec: &Spec, sections: &[Section]) -> String {
    if spec.reference.is_empty() {
        return String::new();
    }
    let mut md = String::from(
        "\n## The paper's numbers beside ours\n\n| method | metric | paper sparsity | paper | source | our nearest sparsity | ours | ours − paper |\n|---|---|---:|---:|---|---:|---:|---:|\n",
    );
    for r in &spec.reference {
        let label = spec.method.iter().find(|m| m.name == r.method).map_or("dense", |m| m.label());
        let agg = sections.iter().flat_map(|s| &s.aggs).find(|a| reference_for(spec, r, a));
        let metric = match (agg, &r.task) {
            // The average's metric name already says so.
            (Some(a), Some(t)) if t == "average" => a.metric.clone(),
            (Some(a), Some(t)) => format!("{t} {}", a.metric),
            (Some(a), None) => a.metric.clone(),
            (None, _) => r.metric.clone().unwrap_or_else(|| spec.table.metrics[0].clone()),
        };
        let ours = agg.and_then(|a| nearest(a, &r.method, r.sparsity));
        let (at, v, diff) = match ours {
            Some((k, s)) => (pct(k), s.text(), format!("{:+.2}", s.mean - r.value)),
            None => ("–".into(), "–".into(), "–".into()),
        };
        md += &format!(
            "| {label} | {metric} | {} | {:.2} | {} | {at} | {v} | {diff} |\n",
            pct(key(r.sparsity)),
            r.value,
            r.source
        );
    }
    md
}

/// The verdict on a claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Holds at every point checked.
    Pass,
    /// Fails somewhere.
    Fails,
    /// No point to check.
    NoData,
}

impl Verdict {
    fn word(&self) -> &'static str {
        match self {
            Verdict::Pass => "PASS",
            Verdict::Fails => "FAILS",
            Verdict::NoData => "NO DATA",
        }
    }
}

fn in_range(c: &Claim, k: i64) -> bool {
    c.min_sparsity.is_none_or(|m| k >= key(m)) && c.max_sparsity.is_none_or(|m| k <= key(m))
}

/// The value a claim compares: the mean as the report prints it (two
/// decimals), so a verdict never hinges on a difference the table hides.
fn shown(s: &Stat) -> f64 {
    format!("{:.2}", s.mean).parse().unwrap_or(s.mean)
}

/// Checks a claim on its metric (default: the primary one) over the
/// aggregates of every metric: the verdict and the evidence.
pub fn check_claim(spec: &Spec, aggs: &[Aggregate], c: &Claim) -> (Verdict, String) {
    let metric = c.metric.as_deref().unwrap_or(&spec.table.metrics[0]);
    let Some(agg) = aggs.iter().find(|a| a.column == metric) else {
        return (Verdict::NoData, format!("no `{metric}` values"));
    };
    let empty = BTreeMap::new();
    let a = agg.cells.get(&c.a).unwrap_or(&empty);
    let mut held = Vec::new();
    let mut failed = Vec::new();
    match c.kind {
        ClaimKind::Beats => {
            let b_name = c.b.clone().unwrap_or_default();
            let b = agg.cells.get(&b_name).unwrap_or(&empty);
            for (k, sa) in a.iter().filter(|(k, _)| in_range(c, **k)) {
                let Some(sb) = b.get(k) else { continue };
                let line = format!("{}: {:.2} vs {:.2}", pct(*k), sa.mean, sb.mean);
                if shown(sa) > shown(sb) + c.tolerance {
                    held.push(line);
                } else {
                    failed.push(line);
                }
            }
        }
        ClaimKind::WithinDense => {
            if let Some(d) = agg.dense {
                for (k, sa) in a.iter().filter(|(k, _)| in_range(c, **k)) {
                    let line = format!("{}: {:.2} vs dense {:.2}", pct(*k), sa.mean, d.mean);
                    if shown(sa) >= shown(&d) - c.tolerance {
                        held.push(line);
                    } else {
                        failed.push(line);
                    }
                }
            }
        }
        ClaimKind::NearPaper => {
            for r in spec.reference.iter().filter(|r| r.method == c.a && reference_for(spec, r, agg)) {
                let Some((k, s)) = nearest(agg, &c.a, r.sparsity) else { continue };
                let line =
                    format!("paper {:.2} at {}, ours {:.2} at {}", r.value, pct(key(r.sparsity)), s.mean, pct(k));
                if (shown(&s) - r.value).abs() <= c.tolerance + 1e-9 {
                    held.push(line);
                } else {
                    failed.push(line);
                }
            }
        }
    }
    let verdict = if held.is_empty() && failed.is_empty() {
        Verdict::NoData
    } else if failed.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fails
    };
    let evidence = match verdict {
        Verdict::NoData => "no sparsity to compare at".to_string(),
        Verdict::Pass => format!("holds at all {} points ({})", held.len(), held.join("; ")),
        Verdict::Fails => format!(
            "fails at {} of {} points: {}{}",
            failed.len(),
            held.len() + failed.len(),
            failed.join("; "),
            if held.is_empty() { String::new() } else { format!("; holds at {}", held.join("; ")) }
        ),
    };
    (verdict, evidence)
}

/// Every claim checked on every section it applies to: (claim, section
/// label, verdict, evidence).
pub fn check_claims<'a>(spec: &'a Spec, sections: &'a [Section]) -> Vec<(&'a Claim, &'a str, Verdict, String)> {
    let mut out = Vec::new();
    for c in &spec.claim {
        for s in sections {
            let task = s.aggs.first().map_or("", |a| a.task.as_str());
            if c.task.as_deref().is_some_and(|t| t != task) {
                continue;
            }
            let (v, evidence) = check_claim(spec, &s.aggs, c);
            out.push((c, s.label.as_str(), v, evidence));
        }
    }
    out
}

fn claims_markdown(spec: &Spec, sections: &[Section]) -> String {
    if spec.claim.is_empty() {
        return String::new();
    }
    let mut md = String::from("\n## Claims checked against our numbers (means over seeds)\n\n");
    for (c, label, v, evidence) in check_claims(spec, sections) {
        let column = c.metric.as_deref().unwrap_or(&spec.table.metrics[0]);
        // The section's own name for the column (`f1` where it is `accuracy`).
        let metric = sections
            .iter()
            .find(|s| s.label == label)
            .and_then(|s| s.aggs.iter().find(|a| a.column == column))
            .map_or(column, |a| a.metric.as_str());
        let tol = if c.tolerance != 0.0 { format!(", tolerance {} points", c.tolerance) } else { String::new() };
        let on = if label.is_empty() { String::new() } else { format!("{label}, ") };
        md += &format!("- **{}** — {} ({on}{metric}{tol}): {evidence}.\n", v.word(), c.text);
    }
    md
}

/// The report: title, scale, dense reference, one table per metric, the
/// paper's numbers, the claims, the plot and the command.
pub fn report_markdown(spec: &Spec, plan: &Plan, sections: &[Section]) -> String {
    let scale = &spec.scale[&plan.scale];
    let mut md = format!("# {}\n\n", spec.table.title);
    if !spec.table.description.trim().is_empty() {
        md += &format!("{}\n\n", spec.table.description.trim());
    }
    md += &format!("**Scale `{}`:** {}\n\n", plan.scale, scale.description.trim());
    let seeds = plan.seeds.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(", ");
    md += &format!(
        "Seeds: {seeds}{}. Every cell is an ordinary run directory under `{}` (`--report-only` re-renders \
         this report from them).\n",
        if plan.seeds.len() > 1 { " (mean ± sample standard deviation over seeds)" } else { " (one run per cell)" },
        plan.runs.display()
    );
    for section in sections {
        for agg in &section.aggs {
            match section.label.as_str() {
                "" => md += &format!("\n## {}\n\n", agg.metric),
                label => md += &format!("\n## {label}: {}\n\n", agg.metric),
            }
            if let Some(d) = agg.dense {
                let paper = reference_at(spec, agg, "dense", 0)
                    .map_or(String::new(), |r| format!(" (paper {:.2}, {})", r.value, r.source));
                md += &format!("Dense reference: {}{paper}.\n\n", d.text());
            }
            md += &markdown_table(spec, agg);
        }
    }
    md += &references_markdown(spec, sections);
    md += &claims_markdown(spec, sections);
    let plotted = plotted(sections);
    md += &format!(
        "\n![{}{} vs sparsity](plot.svg)\n\n`results.csv`: one row per run, sparsity and metric \
         (model,data,method,sparsity,metric,value,seed).\n\nProduced by:\n\n```\n{}\n```\n",
        plotted.map_or("", |(l, _)| l),
        plotted.map_or(" metric".to_string(), |(l, a)| format!("{}{}", if l.is_empty() { "" } else { ": " }, a.metric)),
        plan.command
    );
    md
}

/// What the plot shows: the primary metric of the average over tasks if
/// there is one, else of the first section; with its section's label.
fn plotted(sections: &[Section]) -> Option<(&str, &Aggregate)> {
    let s = sections.iter().rev().find(|s| s.label == "Average over tasks").or(sections.first())?;
    s.aggs.first().map(|a| (s.label.as_str(), a))
}

/// The plot's data: one series per method of the primary metric.
pub fn plot_data(spec: &Spec, agg: &Aggregate) -> crate::plot::PlotData {
    let series = spec
        .method
        .iter()
        .map(|m| crate::plot::Series {
            label: m.label().to_string(),
            points: agg
                .cells
                .get(&m.name)
                .map(|c| c.iter().map(|(k, s)| (*k as f64 / 10.0, s.mean, s.std)).collect())
                .unwrap_or_default(),
        })
        .collect();
    crate::plot::PlotData {
        title: match agg.task.as_str() {
            "" => spec.table.title.clone(),
            "average" => format!("{} (average over tasks)", spec.table.title),
            t => format!("{} ({t})", spec.table.title),
        },
        y_label: agg.metric.clone(),
        log_weights_left: spec.table.x_axis == XAxis::WeightsLeftLog,
        series,
        dense: agg.dense.map(|d| d.mean),
    }
}

/// Writes the report files of a finished plan into `plan.out`.
pub fn write_report(spec: &Spec, plan: &Plan) -> anyhow::Result<Vec<Section>> {
    let points = collect(spec, plan)?;
    let sections = sections(spec, &points);
    let (_, agg) = plotted(&sections).context("no metric to plot")?;
    let data = plot_data(spec, agg);
    let out = &plan.out;
    write_atomic(&out.join("results.csv"), csv(&points).as_bytes())?;
    write_atomic(&out.join("plot.svg"), crate::plot::svg(&data).as_bytes())?;
    write_atomic(&out.join("plot.png"), &crate::plot::png(&data)?)?;
    write_atomic(&out.join("command.txt"), format!("{}\n", plan.command).as_bytes())?;
    write_atomic(&out.join("README.md"), report_markdown(spec, plan, &sections).as_bytes())?;
    Ok(sections)
}

/// `espalier table`: runs what is missing (unless `report_only`), then
/// writes the report. Returns whether the table is complete.
pub fn table(opts: &TableOptions) -> anyhow::Result<bool> {
    let spec = load_spec(&opts.spec_path)?;
    let plan = plan(&spec, opts)?;
    for job in plan.prereqs.iter().chain(&plan.cells) {
        job_experiment(job)?;
    }
    if !opts.report_only {
        let p = run_plan(&plan, opts)?;
        println!("table {}: ran {} runs, skipped {} finished runs", spec.table.name, p.ran, p.skipped);
        if !p.complete {
            println!("stopped early (--max-cells); run the same command again to continue");
            return Ok(false);
        }
    }
    let sections = write_report(&spec, &plan)?;
    for (c, label, v, evidence) in check_claims(&spec, &sections) {
        let on = if label.is_empty() { String::new() } else { format!(" ({label})") };
        println!("{:<7} {}{on}: {evidence}", v.word(), c.text);
    }
    println!("wrote {}", plan.out.display());
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC: &str = r#"
        [table]
        name = "t"
        title = "T"
        metrics = ["accuracy"]
        scale = "small"
        [scale.small]
        description = "tiny"
        sets = ["train.epochs=${e}"]
        vars = { e = 2 }
        [[prereq]]
        name = "dense"
        config = "a.toml"
        [[method]]
        name = "a"
        config = "a.toml"
        from = "dense"
        sweep = { key = "structured.keep", values = [10, 20] }
        [[method]]
        name = "b"
        config = "b.toml"
        [[claim]]
        text = "a beats b"
        kind = "beats"
        a = "a"
        b = "b"
    "#;

    fn opts() -> TableOptions {
        TableOptions {
            spec_path: "t.toml".into(),
            scale: None,
            data_dir: None,
            runs: None,
            out: None,
            jobs: 1,
            max_cells: None,
            report_only: false,
            quiet: true,
        }
    }

    #[test]
    fn plans_cells_with_overrides_in_order() {
        let spec = parse_spec(SPEC).unwrap();
        let p = plan(&spec, &opts()).unwrap();
        assert_eq!(p.prereqs.len(), 1);
        assert_eq!(p.cells.len(), 3);
        let c = &p.cells[1];
        assert_eq!(c.dir, Path::new("runs/tables/t/small/a/keep-20/seed0"));
        assert_eq!(
            c.sets,
            ["train.epochs=2", "init_from=\"runs/tables/t/small/prereq/dense/seed0\"", "structured.keep=20", "seed=0"]
        );
        assert_eq!(p.out, Path::new("results/t"));
        assert_eq!(p.command, "espalier table t.toml");
    }

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

    fn point(method: &str, sparsity: f64, value: f64, seed: u64) -> Point {
        Point {
            task: String::new(),
            method: method.into(),
            model: "m".into(),
            data: "d".into(),
            sparsity,
            setting: None,
            metric: "accuracy".into(),
            value,
            seed,
        }
    }

    #[test]
    fn claims_are_checked_on_seed_means() {
        let mut spec = parse_spec(SPEC).unwrap();
        let points = vec![
            point("dense", 0.0, 98.0, 0),
            point("dense", 0.0, 98.2, 1),
            point("a", 0.5, 97.0, 0),
            point("a", 0.5, 97.4, 1),
            point("b", 0.5, 96.0, 0),
            point("a", 0.9, 90.0, 0),
            point("b", 0.9, 91.0, 0),
        ];
        let agg = aggregate(&points, "", "accuracy", "accuracy");
        let s = agg.cells["a"][&500];
        assert!((s.mean - 97.2).abs() < 1e-9 && (s.std - 0.2828427).abs() < 1e-6 && s.n == 2);
        assert_eq!(s.text(), "97.20 ± 0.28");
        assert!((agg.dense.unwrap().mean - 98.1).abs() < 1e-9);
        let (v, why) = check_claim(&spec, std::slice::from_ref(&agg), &spec.claim[0]);
        assert_eq!(v, Verdict::Fails, "{why}");
        assert!(why.contains("90.0%: 90.00 vs 91.00"), "{why}");
        spec.claim[0].max_sparsity = Some(0.6);
        assert_eq!(check_claim(&spec, std::slice::from_ref(&agg), &spec.claim[0]).0, Verdict::Pass);
        spec.claim[0].min_sparsity = Some(0.95);
        assert_eq!(check_claim(&spec, std::slice::from_ref(&agg), &spec.claim[0]).0, Verdict::NoData);
        let within = Claim {
            text: "a within 1 of dense".into(),
            kind: ClaimKind::WithinDense,
            a: "a".into(),
            b: None,
            tolerance: 1.0,
            min_sparsity: None,
            max_sparsity: Some(0.6),
            metric: None,
            task: None,
        };
        assert_eq!(check_claim(&spec, std::slice::from_ref(&agg), &within).0, Verdict::Pass);
        spec.reference.push(Reference {
            method: "a".into(),
            sparsity: 0.88,
            metric: None,
            value: 92.0,
            source: "x".into(),
            task: None,
        });
        let near = Claim { kind: ClaimKind::NearPaper, tolerance: 1.0, max_sparsity: None, ..within };
        let (v, why) = check_claim(&spec, std::slice::from_ref(&agg), &near);
        assert_eq!(v, Verdict::Fails);
        assert!(why.contains("paper 92.00 at 88.0%, ours 90.00 at 90.0%"), "{why}");
    }

    const TASKS: &str = r#"
        [table]
        name = "g"
        title = "G"
        metrics = ["accuracy"]
        scale = "small"
        average = true
        seeds = [42]
        [scale.small]
        description = "tiny"
        cell_sets = ["data.limit_train=${n}"]
        vars = { n = 100, dense = "runs/glue-${task}-minilm" }
        [[task]]
        name = "rte"
        sets = ['data.task="rte"']
        [[task]]
        name = "mrpc"
        label = "MRPC"
        sets = ['data.task="mrpc"', 'data.eval_split="test"']
        metrics = ["f1"]
        [[prereq]]
        name = "dense"
        config = "configs/glue/${task}.toml"
        dir = "${dense}"
        [[method]]
        name = "mi"
        config = "mi.toml"
        from = "dense"
        [[method]]
        name = "l1"
        config = "l1.toml"
        from = "dense"
        [[reference]]
        method = "mi"
        task = "mrpc"
        sparsity = 0.5
        value = 80.0
        source = "p"
        [[claim]]
        text = "mi beats l1"
        kind = "beats"
        a = "mi"
        b = "l1"
    "#;

    #[test]
    fn tasks_multiply_the_runs_and_are_averaged() {
        let spec = parse_spec(TASKS).unwrap();
        let p = plan(&spec, &opts()).unwrap();
        let ids: Vec<&str> = p.prereqs.iter().chain(&p.cells).map(|j| j.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "rte/prereq/dense/seed42",
                "mrpc/prereq/dense/seed42",
                "rte/mi/seed42",
                "rte/l1/seed42",
                "mrpc/mi/seed42",
                "mrpc/l1/seed42"
            ]
        );
        let pre = &p.prereqs[1];
        assert_eq!(pre.config, Path::new("configs/glue/mrpc.toml"));
        assert_eq!(pre.dir, Path::new("runs/glue-mrpc-minilm"));
        assert_eq!(pre.sets, ["data.task=\"mrpc\"", "data.eval_split=\"test\"", "seed=42"]);
        let cell = &p.cells[2];
        assert_eq!(cell.dir, Path::new("runs/tables/g/small/mrpc/mi/seed42"));
        assert_eq!(
            cell.sets,
            [
                "data.task=\"mrpc\"",
                "data.eval_split=\"test\"",
                "data.limit_train=100",
                "init_from=\"runs/glue-mrpc-minilm\"",
                "seed=42"
            ]
        );

        let pt = |task: &str, method: &str, metric: &str, sparsity: f64, value: f64| Point {
            task: task.into(),
            metric: metric.into(),
            ..point(method, sparsity, value, 42)
        };
        let points = vec![
            pt("rte", "dense", "accuracy", 0.0, 60.0),
            pt("rte", "mi", "accuracy", 0.5, 58.0),
            pt("rte", "l1", "accuracy", 0.5, 57.0),
            pt("mrpc", "dense", "f1", 0.0, 82.0),
            pt("mrpc", "mi", "f1", 0.5, 80.0),
            pt("mrpc", "l1", "f1", 0.5, 81.0),
            // Another task's metric name in a task is not reported.
            pt("mrpc", "mi", "accuracy", 0.5, 1.0),
        ];
        let sections = sections(&spec, &points);
        assert_eq!(
            sections.iter().map(|s| s.label.as_str()).collect::<Vec<_>>(),
            ["rte", "MRPC", "Average over tasks"]
        );
        assert_eq!(sections[1].aggs[0].metric, "f1");
        assert_eq!(sections[1].aggs[0].cells["mi"][&500].mean, 80.0);
        let avg = &sections[2].aggs[0];
        assert_eq!(
            (avg.cells["mi"][&500].mean, avg.cells["l1"][&500].mean, avg.dense.unwrap().mean),
            (69.0, 69.0, 71.0)
        );
        let verdicts: Vec<(&str, Verdict)> =
            check_claims(&spec, &sections).into_iter().map(|(_, l, v, _)| (l, v)).collect();
        assert_eq!(
            verdicts,
            [("rte", Verdict::Pass), ("MRPC", Verdict::Fails), ("Average over tasks", Verdict::Fails)]
        );
        let md = report_markdown(&spec, &plan(&spec, &opts()).unwrap(), &sections);
        assert!(md.contains("## MRPC: f1") && md.contains("80.00 (paper 80.00)"), "{md}");
        assert!(md.contains("## Average over tasks: average of accuracy / f1"), "{md}");
        assert!(md.contains("| mi | mrpc f1 | 50.0% | 80.00 |"), "{md}");
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
