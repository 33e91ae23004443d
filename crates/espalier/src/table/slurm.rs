//! A table as Slurm jobs (`espalier table SPEC --slurm DIR [--submit]`).
//!
//! Writes into `DIR`, for the runs that are not finished yet:
//!
//! - `prereqs.tsv` and `prereqs.sbatch`: the prerequisites as one job
//!   array, a task per line of the manifest;
//! - `cells.tsv` and `cells.sbatch`: the cells as a second array, started
//!   after every prerequisite task succeeded (`--dependency=afterok`);
//! - `report.sbatch`: `espalier table SPEC --report-only` with the same
//!   options, after every cell task ended (`afterany`: a failed cell makes
//!   the report fail naming it);
//! - `submit.sh`: submits the three in order with `sbatch --parsable`,
//!   chaining the dependencies (what `--submit` does from here), and
//!   writes the job ids into `jobs.txt` (`--status --slurm DIR` reads them);
//! - `logs/`: one log per task (`cells-<array job>_<task>.out`, appended to
//!   when a task is requeued).
//!
//! A manifest line is `index TAB id TAB run-dir TAB config TAB set...`
//! (absolute run directory and config). Task `i` of an array runs exactly
//! the cell on line `i`: it writes `slurm-task.txt` (job id, log, host)
//! into the run directory and `exec`s `espalier run CONFIG --set ...
//! --out RUN_DIR` (logs without colours), the command a local table runs, so a requeued or
//! preempted task (`#SBATCH --requeue`) resumes the run from its
//! checkpoint; the run directory's lock refuses a second writer. The jobs
//! run in the directory the scripts were written from (`--chdir`), so the
//! spec's relative paths mean the same there; that directory, the runs
//! root, `DIR` and the `espalier` binary must be on a filesystem every
//! node sees.
//!
//! Resources per task come from the spec's `[slurm]` section, overridden
//! key by key by `[scale.NAME.slurm]` and then by the command line's flags
//! ([`SlurmResources`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use serde::Deserialize;

use super::plan::{is_finished, job_experiment, plan, Job, TableOptions};
use super::spec::load_spec;
use crate::config::ConfigError;

/// A Slurm job count or GPU request: `gpus = 1` or `gpus = "a100:2"`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum CountOrText {
    /// A number.
    Count(u64),
    /// Text passed as is.
    Text(String),
}

impl std::fmt::Display for CountOrText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CountOrText::Count(n) => write!(f, "{n}"),
            CountOrText::Text(t) => f.write_str(t),
        }
    }
}

/// Resources of every array task (`[slurm]` of a spec, or flags).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SlurmResources {
    /// `--cpus-per-task` (also the task's `RAYON_NUM_THREADS` unless set).
    pub cpus_per_task: Option<u64>,
    /// `--mem`, e.g. `"8G"`.
    pub mem: Option<String>,
    /// `--time`, e.g. `"04:00:00"`.
    pub time: Option<String>,
    /// `--gpus` of each task, e.g. `1` or `"a100:1"`.
    pub gpus: Option<CountOrText>,
    /// `--partition`.
    pub partition: Option<String>,
    /// `--account`.
    pub account: Option<String>,
    /// At most this many tasks of an array at once (`--array=0-N%M`).
    pub max_running: Option<u64>,
    /// Further `#SBATCH` lines, e.g. `"--qos=normal"` (the `#SBATCH ` is optional).
    #[serde(default)]
    pub extra: Vec<String>,
}

impl SlurmResources {
    /// Checks the values (`key` names the section in errors).
    pub fn validate(&self, key: &str) -> Result<(), String> {
        let texts =
            [("mem", &self.mem), ("time", &self.time), ("partition", &self.partition), ("account", &self.account)];
        for (name, v) in texts {
            if let Some(v) = v {
                if v.trim().is_empty() || v.chars().any(char::is_whitespace) {
                    return Err(format!("key `{key}.{name}` must be one word without spaces, found `{v}`"));
                }
            }
        }
        if let Some(CountOrText::Text(g)) = &self.gpus {
            if g.is_empty() || g.chars().any(char::is_whitespace) {
                return Err(format!("key `{key}.gpus` must be a count or a word like `a100:1`, found `{g}`"));
            }
        }
        for (name, v) in [("cpus_per_task", self.cpus_per_task), ("max_running", self.max_running)] {
            if v == Some(0) {
                return Err(format!("key `{key}.{name}` must be at least 1"));
            }
        }
        for line in &self.extra {
            let opt = sbatch_option(line);
            if !opt.starts_with('-') || line.contains('\n') {
                return Err(format!(
                    "key `{key}.extra`: `{line}` is not an sbatch option line (expected e.g. `--qos=normal`)"
                ));
            }
        }
        Ok(())
    }

    /// `self` with every key that `over` sets taken from `over` (extra lines appended).
    pub fn merged(&self, over: &SlurmResources) -> SlurmResources {
        let mut extra = self.extra.clone();
        extra.extend(over.extra.iter().cloned());
        SlurmResources {
            cpus_per_task: over.cpus_per_task.or(self.cpus_per_task),
            mem: over.mem.clone().or_else(|| self.mem.clone()),
            time: over.time.clone().or_else(|| self.time.clone()),
            gpus: over.gpus.clone().or_else(|| self.gpus.clone()),
            partition: over.partition.clone().or_else(|| self.partition.clone()),
            account: over.account.clone().or_else(|| self.account.clone()),
            max_running: over.max_running.or(self.max_running),
            extra,
        }
    }

    /// The `#SBATCH` lines of an array task (`array`) or of the report job.
    fn lines(&self, array: bool) -> String {
        let mut s = String::new();
        if array {
            if let Some(n) = self.cpus_per_task {
                let _ = writeln!(s, "#SBATCH --cpus-per-task={n}");
            }
            if let Some(g) = &self.gpus {
                let _ = writeln!(s, "#SBATCH --gpus={g}");
            }
        } else {
            s += "#SBATCH --cpus-per-task=1\n";
        }
        for (flag, v) in
            [("mem", &self.mem), ("time", &self.time), ("partition", &self.partition), ("account", &self.account)]
        {
            if let Some(v) = v {
                let _ = writeln!(s, "#SBATCH --{flag}={v}");
            }
        }
        for line in &self.extra {
            let _ = writeln!(s, "#SBATCH {}", sbatch_option(line));
        }
        s
    }
}

/// An extra line without its `#SBATCH` prefix.
fn sbatch_option(line: &str) -> &str {
    line.trim().strip_prefix("#SBATCH").unwrap_or(line.trim()).trim()
}

/// `espalier table --slurm`: where and how.
#[derive(Clone, Debug)]
pub struct SlurmArgs {
    /// The directory of the scripts, manifests and logs.
    pub dir: PathBuf,
    /// Submit with `sbatch` after writing.
    pub submit: bool,
    /// Resources from the command line (over the spec's).
    pub resources: SlurmResources,
    /// The `espalier` binary the tasks run (default: this one).
    pub exe: Option<PathBuf>,
}

/// What [`write_slurm`] wrote (and submitted).
#[derive(Clone, Debug)]
pub struct SlurmJobs {
    /// The scripts' directory (absolute).
    pub dir: PathBuf,
    /// Prerequisite tasks (unfinished prerequisites).
    pub prereqs: usize,
    /// Cell tasks (unfinished cells).
    pub cells: usize,
    /// Runs left out because they are finished.
    pub finished: usize,
    /// `(stage, job id)` of the submitted jobs (empty without `--submit`).
    pub job_ids: Vec<(String, String)>,
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        cwd.join(p)
    }
}

/// Single-quoted for bash.
fn sh(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn sh_path(p: &Path) -> String {
    sh(&p.to_string_lossy())
}

/// The manifest of a stage: `index id dir config sets...`, tab-separated.
fn manifest(jobs: &[&Job], cwd: &Path) -> anyhow::Result<String> {
    let mut s = String::new();
    for (i, job) in jobs.iter().enumerate() {
        let mut fields = vec![
            i.to_string(),
            job.id.clone(),
            absolute(cwd, &job.dir).to_string_lossy().into_owned(),
            absolute(cwd, &job.config).to_string_lossy().into_owned(),
        ];
        fields.extend(job.sets.iter().cloned());
        if let Some(f) = fields.iter().find(|f| f.is_empty() || f.contains(['\t', '\n'])) {
            return Err(ConfigError(format!(
                "table cell {}: `{f}` cannot go into a Slurm manifest (empty, or holds a tab or a newline)",
                job.id
            ))
            .into());
        }
        s += &fields.join("\t");
        s.push('\n');
    }
    Ok(s)
}

/// Everything a script needs to know.
struct Ctx<'a> {
    dir: &'a Path,
    cwd: &'a Path,
    exe: &'a Path,
    name: &'a str,
    data_dir: Option<PathBuf>,
    res: &'a SlurmResources,
}

/// The array script of a stage (`prereqs` or `cells`) of `n` tasks.
fn array_script(cx: &Ctx, stage: &str, n: usize) -> String {
    let limit = cx.res.max_running.map(|m| format!("%{m}")).unwrap_or_default();
    let logs = cx.dir.join("logs");
    let data = cx.data_dir.as_ref().map(|d| format!(" --data-dir {}", sh_path(d))).unwrap_or_default();
    format!(
        r#"#!/bin/bash
# Written by `espalier table --slurm`: the {stage} of table {name}, one array
# task per line of {stage}.tsv (index, id, run directory, config, --set values).
# A requeued task runs the same command, which resumes the run directory.
#SBATCH --job-name={name}-{stage}
#SBATCH --array=0-{last}{limit}
#SBATCH --output={logs}/{stage}-%A_%a.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --chdir={cwd}
{resources}set -euo pipefail
ESPALIER=${{ESPALIER:-{exe}}}
MANIFEST={manifest}
LOG={logs_q}/{stage}-${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}.out
line=$(awk -F'\t' -v i="$SLURM_ARRAY_TASK_ID" '$1 == i' "$MANIFEST")
if [ -z "$line" ]; then
    echo "error: no task $SLURM_ARRAY_TASK_ID in $MANIFEST" >&2
    exit 2
fi
IFS=$'\t' read -r -a f <<< "$line"
id=${{f[1]}}
out=${{f[2]}}
config=${{f[3]}}
sets=()
for s in "${{f[@]:4}}"; do sets+=(--set "$s"); done
mkdir -p "$out"
printf 'job=%s_%s\nlog=%s\nhost=%s\n' "$SLURM_ARRAY_JOB_ID" "$SLURM_ARRAY_TASK_ID" "$LOG" "$(hostname)" > "$out/slurm-task.txt"
export RAYON_NUM_THREADS=${{RAYON_NUM_THREADS:-${{SLURM_CPUS_PER_TASK:-1}}}}
export NO_COLOR=${{NO_COLOR:-1}}
echo "espalier: $id into $out (job ${{SLURM_ARRAY_JOB_ID}}_${{SLURM_ARRAY_TASK_ID}}, restart ${{SLURM_RESTART_COUNT:-0}}, $(date -u +%FT%TZ))"
exec "$ESPALIER"{data} run "$config" "${{sets[@]}}" --out "$out"
"#,
        name = cx.name,
        last = n - 1,
        logs = logs.display(),
        logs_q = sh_path(&logs),
        cwd = cx.cwd.display(),
        resources = cx.res.lines(true),
        exe = sh_path(cx.exe),
        manifest = sh_path(&cx.dir.join(format!("{stage}.tsv"))),
    )
}

/// The report job: `espalier table SPEC --report-only` with the options given.
fn report_script(cx: &Ctx, opts: &TableOptions) -> String {
    let mut args = vec![sh_path(&opts.spec_path)];
    let mut flag = |f: &str, v: &Option<PathBuf>| {
        if let Some(v) = v {
            args.push(f.into());
            args.push(sh_path(v));
        }
    };
    flag("--scale", &opts.scale.as_ref().map(PathBuf::from));
    flag("--runs", &opts.runs);
    flag("--out", &opts.out);
    let data = opts.data_dir.as_ref().map(|d| format!(" --data-dir {}", sh_path(d))).unwrap_or_default();
    format!(
        r#"#!/bin/bash
# Written by `espalier table --slurm`: the report of table {name}, from the
# finished runs (fails naming the runs that are not finished).
#SBATCH --job-name={name}-report
#SBATCH --output={logs}/report-%j.out
#SBATCH --kill-on-invalid-dep=yes
#SBATCH --chdir={cwd}
{resources}set -euo pipefail
ESPALIER=${{ESPALIER:-{exe}}}
export NO_COLOR=${{NO_COLOR:-1}}
exec "$ESPALIER"{data} table {args} --report-only
"#,
        name = cx.name,
        logs = cx.dir.join("logs").display(),
        cwd = cx.cwd.display(),
        resources = cx.res.lines(false),
        exe = sh_path(cx.exe),
        args = args.join(" "),
    )
}

/// `submit.sh`: the stages in order, each after the one before; the job
/// ids go to stdout and `jobs.txt`.
fn submit_script(prereqs: bool, cells: bool) -> String {
    let mut s = String::from(
        r#"#!/bin/bash
# Written by `espalier table --slurm`: submits the table's jobs in order.
set -euo pipefail
cd "$(dirname "$0")"
jobid() { local j; j=$(sbatch --parsable "$@"); echo "${j%%;*}"; }
: > jobs.txt
"#,
    );
    let mut dep = String::new();
    let stages = [("p", "prereqs", prereqs, "afterok"), ("c", "cells", cells, "afterany"), ("r", "report", true, "")];
    for (var, stage, present, next) in stages {
        if !present {
            continue;
        }
        let _ = writeln!(s, "{var}=$(jobid{dep} {stage}.sbatch)");
        let _ = writeln!(s, "echo \"{stage}: ${var}\"");
        let _ = writeln!(s, "printf '{stage}\\t%s\\n' \"${var}\" >> jobs.txt");
        // The report waits for the prerequisites when there are no cells.
        dep = format!(" --dependency={}:${var}", if cells { next } else { "afterany" });
    }
    s
}

/// Runs `sbatch --parsable ARGS SCRIPT` and returns the job id.
fn sbatch(dir: &Path, args: &[String], script: &str) -> anyhow::Result<String> {
    let out =
        Command::new("sbatch").arg("--parsable").args(args).arg(script).current_dir(dir).output().with_context(
            || format!("running sbatch for {} (is Slurm's sbatch on PATH?)", dir.join(script).display()),
        )?;
    if !out.status.success() {
        anyhow::bail!(
            "sbatch {} failed ({}): {}",
            dir.join(script).display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let id = text.trim().split(';').next().unwrap_or("").to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        anyhow::bail!("sbatch {}: expected a job id on stdout, found `{}`", dir.join(script).display(), text.trim());
    }
    Ok(id)
}

/// Writes the table's Slurm scripts for its unfinished runs into
/// `args.dir` and, with `args.submit`, submits them.
pub fn write_slurm(opts: &TableOptions, args: &SlurmArgs) -> anyhow::Result<SlurmJobs> {
    let spec = load_spec(&opts.spec_path)?;
    let plan = plan(&spec, opts)?;
    let cwd = std::env::current_dir().context("reading the current directory")?;
    let dir = absolute(&cwd, &args.dir);
    let exe = match &args.exe {
        Some(e) => absolute(&cwd, e),
        None => std::env::current_exe().context("locating the espalier binary")?,
    };
    let mut finished = 0;
    let mut todo = |jobs: &[Job]| -> anyhow::Result<Vec<Job>> {
        let mut v = Vec::new();
        for job in jobs {
            let exp = job_experiment(job)?;
            if is_finished(job, &exp)? {
                finished += 1;
            } else {
                v.push(job.clone());
            }
        }
        Ok(v)
    };
    let prereqs = todo(&plan.prereqs)?;
    let cells = todo(&plan.cells)?;
    let scale = spec.scale.get(&plan.scale).and_then(|s| s.slurm.clone()).unwrap_or_default();
    let res = spec.slurm.clone().unwrap_or_default().merged(&scale).merged(&args.resources);
    res.validate("slurm").map_err(|e| ConfigError(format!("{}: {e}", opts.spec_path.display())))?;

    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.join("logs").display()))?;
    for f in ["prereqs.tsv", "prereqs.sbatch", "cells.tsv", "cells.sbatch", "report.sbatch", "submit.sh", "jobs.txt"] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing the earlier {}", p.display()))?;
        }
    }
    let cx = Ctx {
        dir: &dir,
        cwd: &cwd,
        exe: &exe,
        name: &spec.table.name,
        data_dir: opts.data_dir.as_ref().map(|d| absolute(&cwd, d)),
        res: &res,
    };
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    };
    for (stage, jobs) in [("prereqs", &prereqs), ("cells", &cells)] {
        if !jobs.is_empty() {
            write(&format!("{stage}.tsv"), &manifest(&jobs.iter().collect::<Vec<_>>(), &cwd)?)?;
            write(&format!("{stage}.sbatch"), &array_script(&cx, stage, jobs.len()))?;
        }
    }
    write("report.sbatch", &report_script(&cx, opts))?;
    write("submit.sh", &submit_script(!prereqs.is_empty(), !cells.is_empty()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("submit.sh");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("making {} executable", p.display()))?;
    }

    let mut job_ids = Vec::new();
    if args.submit {
        let mut dep: Option<String> = None;
        for (stage, n) in [("prereqs", prereqs.len()), ("cells", cells.len())] {
            if n == 0 {
                continue;
            }
            let a: Vec<String> = dep.iter().map(|p| format!("--dependency=afterok:{p}")).collect();
            let id = sbatch(&dir, &a, &format!("{stage}.sbatch"))?;
            job_ids.push((stage.to_string(), id.clone()));
            dep = Some(id);
        }
        let a: Vec<String> = job_ids.last().map(|(_, id)| format!("--dependency=afterany:{id}")).into_iter().collect();
        let id = sbatch(&dir, &a, "report.sbatch")?;
        job_ids.push(("report".into(), id));
        let text: String = job_ids.iter().map(|(s, id)| format!("{s}\t{id}\n")).collect();
        write("jobs.txt", &text)?;
    }
    Ok(SlurmJobs { dir, prereqs: prereqs.len(), cells: cells.len(), finished, job_ids })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::table::fixtures::{opts, SPEC};
    use crate::table::spec::parse_spec;

    #[test]
    fn resources_merge_key_by_key_and_render_as_sbatch_lines() {
        let spec = parse_spec(&format!(
            "{SPEC}\n[slurm]\ncpus_per_task = 4\nmem = \"8G\"\nextra = [\"--qos=low\"]\n[scale.small.slurm]\nmem = \
             \"16G\"\ngpus = \"a100:1\"\nextra = [\"#SBATCH --constraint=x\"]\n"
        ))
        .unwrap();
        let flags = SlurmResources { time: Some("01:00:00".into()), ..Default::default() };
        let r = spec.slurm.clone().unwrap().merged(spec.scale["small"].slurm.as_ref().unwrap()).merged(&flags);
        assert_eq!(
            r.lines(true),
            "#SBATCH --cpus-per-task=4\n#SBATCH --gpus=a100:1\n#SBATCH --mem=16G\n#SBATCH --time=01:00:00\n#SBATCH \
             --qos=low\n#SBATCH --constraint=x\n"
        );
        assert!(r.lines(false).starts_with("#SBATCH --cpus-per-task=1\n#SBATCH --mem=16G\n"));
    }

    #[test]
    fn bad_resources_are_refused_naming_the_key() {
        for (section, want) in [
            ("mem = \"8 G\"", "key `slurm.mem` must be one word"),
            ("cpus_per_task = 0", "key `slurm.cpus_per_task` must be at least 1"),
            ("extra = [\"qos=low\"]", "key `slurm.extra`: `qos=low` is not an sbatch option"),
            ("nodes = 2", "unknown field `nodes`"),
        ] {
            let e = parse_spec(&format!("{SPEC}\n[slurm]\n{section}\n")).unwrap_err();
            assert!(e.0.contains(want), "{section}: {}", e.0);
        }
    }

    #[test]
    fn scripts_chain_the_stages_and_read_their_manifest() {
        let spec = parse_spec(SPEC).unwrap();
        let p = plan(&spec, &opts()).unwrap();
        let cwd = Path::new("/work/x");
        let m = manifest(&p.cells.iter().collect::<Vec<_>>(), cwd).unwrap();
        let first = m.lines().nth(1).unwrap();
        assert_eq!(
            first,
            "1\ta/keep=20/seed0\t/work/x/runs/tables/t/small/a/keep-20/seed0\t/work/x/a.toml\ttrain.epochs=2\t\
             init_from=\"runs/tables/t/small/prereq/dense/seed0\"\tstructured.keep=20\tseed=0"
        );
        let res = SlurmResources { max_running: Some(2), ..Default::default() };
        let cx =
            Ctx { dir: Path::new("/s"), cwd, exe: Path::new("/bin/espalier"), name: "t", data_dir: None, res: &res };
        let a = array_script(&cx, "cells", 3);
        for want in
            ["#SBATCH --array=0-2%2\n", "#SBATCH --requeue\n", "#SBATCH --chdir=/work/x\n", "MANIFEST='/s/cells.tsv'"]
        {
            assert!(a.contains(want), "{want}: {a}");
        }
        let r = report_script(&cx, &opts());
        assert!(r.contains("exec \"$ESPALIER\" table 't.toml' --report-only"), "{r}");
        let s = submit_script(true, true);
        assert!(s.contains("c=$(jobid --dependency=afterok:$p cells.sbatch)"), "{s}");
        assert!(s.contains("r=$(jobid --dependency=afterany:$c report.sbatch)"), "{s}");
        assert!(submit_script(false, false).contains("r=$(jobid report.sbatch)"));
    }
}
