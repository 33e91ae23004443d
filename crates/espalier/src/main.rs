//! The `espalier` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use espalier::config::{self, ConfigError};
use espalier::run::{self, RunOptions};
use espalier_data::DataRoot;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Espalier: train a model, prune it into shape, and report.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Data root (else $ESPALIER_DATA, else `data/`).
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Only warnings and errors; no progress bars.
    #[arg(long, short, global = true)]
    quiet: bool,
    /// Never download models from the Hugging Face Hub (the same as
    /// HF_HUB_OFFLINE=1): a repo id must be in the cache.
    #[arg(long, global = true)]
    offline: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run (or resume) an experiment config.
    Run {
        /// The experiment config (TOML).
        config: PathBuf,
        /// Override a key: `--set train.epochs=3` (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
        /// Run directory (default: runs/<name or config stem>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Stop after this many epochs; running again resumes.
        #[arg(long)]
        max_epochs: Option<usize>,
        /// `cpu`, `cuda` or `cuda:N` (the same as `--set device=...`).
        #[arg(long)]
        device: Option<String>,
    },
    /// Validate a config and print it resolved, without running it.
    Check {
        /// The experiment config (TOML).
        config: PathBuf,
        /// Override a key (repeatable).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        sets: Vec<String>,
    },
    /// Evaluate the model of a run directory on its test set.
    Eval {
        /// A run directory.
        run_dir: PathBuf,
    },
    /// Write the model's outputs on the run's evaluation examples (JSON
    /// lines: index, label, logits, and the token ids for text).
    Predict {
        /// A run (or `export --format sparse`) directory.
        run_dir: PathBuf,
        /// The output file (JSON lines).
        #[arg(long)]
        out: PathBuf,
        /// Only the first N examples.
        #[arg(long)]
        limit: Option<usize>,
        /// Examples per forward pass.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
    },
    /// Write a run's model for use elsewhere: `sparse` (kept weights only,
    /// reloadable by `eval` and `bench`), `hf` (Hugging Face
    /// `transformers`, pruned widths padded with zeros) or `hf-compact`
    /// (pruned widths kept, `trust_remote_code=True`).
    Export {
        /// A run directory.
        run_dir: PathBuf,
        /// The format.
        #[arg(long, value_enum)]
        format: espalier::export::ExportFormat,
        /// The export directory (default RUN_DIR/export/<format>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Replace an existing export directory (after the new one is complete).
        #[arg(long)]
        force: bool,
        /// With --format sparse: fold units that pruning made constant or
        /// dead (empty input rows or consumer columns: neurons, feed-forward
        /// units, attention heads) into their consumer's bias and remove
        /// them first.
        #[arg(long)]
        fold: bool,
    },
    /// Reproduce a paper table: run the missing cells of a table spec
    /// (configs/tables/*.toml), then write results/<table>/ (README.md,
    /// results.csv, plot.png, plot.svg, command.txt).
    Table {
        /// The table spec (TOML).
        spec: PathBuf,
        /// The spec's scale to run (default: its `table.scale`).
        #[arg(long)]
        scale: Option<String>,
        /// Cells run at once (each its own process; set CANDLE_NUM_THREADS).
        #[arg(long, default_value_t = 1)]
        jobs: usize,
        /// Root of the cells' run directories (default runs/tables/<table>/<scale>).
        #[arg(long)]
        runs: Option<PathBuf>,
        /// Report directory (default results/<table>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Only re-render the report from the existing runs.
        #[arg(long)]
        report_only: bool,
        /// With --report-only: render the finished runs of a table that is
        /// not complete, list the others, and decide no claim.
        #[arg(long, requires = "report_only")]
        partial: bool,
        /// Stop after starting this many runs (the table stays resumable).
        #[arg(long, hide = true)]
        max_cells: Option<usize>,
        /// Show where every run is (done, running, queued, failed, missing)
        /// instead of running; with --slurm DIR, also the job ids of queued tasks.
        #[arg(long, conflicts_with_all = ["report_only", "submit"])]
        status: bool,
        /// Write Slurm job arrays for the unfinished runs into DIR (scripts,
        /// manifests, logs; see README "Tables on a cluster") instead of running.
        #[arg(long, value_name = "DIR", conflicts_with_all = ["report_only", "max_cells"])]
        slurm: Option<PathBuf>,
        /// With --slurm: submit the scripts with sbatch and print the job ids.
        #[arg(long, requires = "slurm")]
        submit: bool,
        #[command(flatten)]
        resources: SlurmFlags,
    },
    /// Re-draw a table's plot.svg and plot.png from the results.csv in its
    /// report directory (no run directories needed).
    Plot {
        /// The table spec (TOML).
        spec: PathBuf,
        /// The spec's scale (default: its `table.scale`).
        #[arg(long)]
        scale: Option<String>,
        /// Report directory (default results/<table>).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Time training (median over repeats): `mnist` epochs of LeNet-300-100
    /// with AdamW and SGD, or `bert` training steps of a pretrained model;
    /// or, given a structured run's directory, the inference latency of its
    /// dense and shrunk models side by side.
    Bench {
        /// `mnist`, `bert`, `bert-base`, `resnet20`, `resnet18`, `gemm` (the
        /// machine's f32 GEMM rate), or a run directory: of a structured run
        /// (dense vs shrunk inference latency) or of an unstructured / N:M
        /// run (its masked model through the dense vs the sparse kernels).
        #[arg(default_value = "mnist")]
        workload: String,
        /// Time the workload's forward pass (inference mode) at
        /// `--batch-sizes` instead of its training steps.
        #[arg(long)]
        infer: bool,
        /// Batch sizes for a run directory's latency and for `--infer`.
        #[arg(long, value_delimiter = ',', default_value = "1,32,256")]
        batch_sizes: Vec<usize>,
        /// Matrix side of `gemm`.
        #[arg(long, default_value_t = 2048)]
        gemm_size: usize,
        /// The pretrained model for `bert`.
        #[arg(long, default_value = "../shared/models/all-MiniLM-L6-v2")]
        model_dir: PathBuf,
        /// Sequence length for `bert`.
        #[arg(long, default_value_t = 128)]
        seq_len: usize,
        /// MNIST directory under the data root.
        #[arg(long, default_value = "mnist")]
        mnist: String,
        /// Batch size (default: 128 for `mnist` and `resnet20`, 32 for
        /// `bert` and `resnet18`, 8 for `bert-base`).
        #[arg(long)]
        batch_size: Option<usize>,
        /// Encoder layers of `bert-base`.
        #[arg(long, default_value_t = 4)]
        layers: usize,
        /// Image side of `resnet20` and `resnet18`.
        #[arg(long, default_value_t = 32)]
        image_size: usize,
        /// Timed epochs (or steps) per workload (after one warm-up).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Leave out the reference rows: `mnist` with composed optimizer
        /// updates, the BERT and ResNet steps with the fused CPU kernels off
        /// (candle's convolution, composed norms and activations).
        #[arg(long)]
        no_reference: bool,
        /// Also write the results as JSON to this file.
        #[arg(long)]
        json: Option<PathBuf>,
        /// A run directory's sparse packing: the densest weight stored as
        /// CSR (non-zeros / elements; denser ones stay dense).
        #[arg(long, default_value_t = espalier_models::layers::DEFAULT_MAX_DENSITY)]
        max_density: f64,
        /// The largest N/M of an N:M weight stored as N:M (0 turns N:M off).
        #[arg(long, default_value_t = espalier_models::layers::DEFAULT_MAX_NM_DENSITY)]
        max_nm_density: f64,
        /// Inputs of at most this many rows (batch × tokens) also run the
        /// sparse kernels on weights up to 50% dense (CSR) and N:M up to 2:4,
        /// where they beat the dense product; larger inputs run those layers
        /// dense (0 turns this off).
        #[arg(long, default_value_t = espalier_models::layers::DEFAULT_SMALL_ROWS)]
        small_rows: usize,
    },
}

/// Resources of every Slurm array task (over the spec's `[slurm]`).
#[derive(clap::Args)]
struct SlurmFlags {
    /// With --slurm: CPUs per task (also the task's RAYON_NUM_THREADS).
    #[arg(long, requires = "slurm")]
    cpus_per_task: Option<u64>,
    /// With --slurm: memory per task (sbatch --mem, e.g. 8G).
    #[arg(long, requires = "slurm")]
    mem: Option<String>,
    /// With --slurm: time limit per task (sbatch --time, e.g. 04:00:00).
    #[arg(long, requires = "slurm")]
    time: Option<String>,
    /// With --slurm: GPUs per task (sbatch --gpus, e.g. 1 or a100:1).
    #[arg(long, requires = "slurm")]
    gpus: Option<String>,
    /// With --slurm: partition.
    #[arg(long, requires = "slurm")]
    partition: Option<String>,
    /// With --slurm: account.
    #[arg(long, requires = "slurm")]
    account: Option<String>,
    /// With --slurm: at most this many tasks of an array at once.
    #[arg(long, requires = "slurm")]
    max_running: Option<u64>,
    /// With --slurm: an extra `#SBATCH` option line, e.g. --sbatch=--qos=low (repeatable).
    #[arg(long = "sbatch", value_name = "OPTION", requires = "slurm", allow_hyphen_values = true)]
    sbatch: Vec<String>,
}

impl SlurmFlags {
    fn resources(self) -> espalier::table::SlurmResources {
        use espalier::table::CountOrText;
        espalier::table::SlurmResources {
            cpus_per_task: self.cpus_per_task,
            mem: self.mem,
            time: self.time,
            gpus: self.gpus.map(|g| g.parse().map_or(CountOrText::Text(g), CountOrText::Count)),
            partition: self.partition,
            account: self.account,
            max_running: self.max_running,
            extra: self.sbatch,
        }
    }
}

/// Keeps freed memory instead of returning it to the OS after 10 ms
/// (mimalloc's default): a training step frees and re-allocates the same
/// large activation and gradient buffers every step, and re-faulting them
/// (the kernel zeroing fresh pages) cost 40% of a BERT step. An explicit
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_memory() {
    // `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (mimalloc.h);
    // libmimalloc-sys 0.1 does not export the v3 constant.
    const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a process-wide allocator option; no memory is touched.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

/// Pins candle's thread count in `RAYON_NUM_THREADS` when it is not set:
/// `candle_core::utils::get_num_threads`, which candle's CPU ops call per
/// op, otherwise parses `/proc/cpuinfo` for the physical core count on every
/// call (15% of a batch-1 ResNet-20 forward pass on two threads). The value
/// is the one candle would compute, so nothing else changes.
fn pin_thread_count() {
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        let n = candle_core::utils::get_num_threads();
        // Called first thing in `main`, before any other thread exists.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
}

fn main() -> ExitCode {
    // Before any thread exists: the pools inherit the mode.
    espalier_kernels::denormal::flush_denormals();
    pin_thread_count();
    keep_freed_memory();
    let cli = Cli::parse();
    if cli.offline {
        // Read by the hub resolver; set before any thread starts.
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let level = if cli.quiet { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("ESPALIER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level)),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code of a failed command: 2 for a config or input error, 3 for
/// a diverging run, 130 for a run stopped by a signal, 1 otherwise.
fn exit_code(e: &anyhow::Error) -> u8 {
    for c in e.chain() {
        if c.is::<ConfigError>() {
            return 2;
        }
        let core = match c.downcast_ref::<espalier_experiment::Error>() {
            Some(x) if x.is_config() => return 2,
            Some(espalier_experiment::Error::Lib(l)) => Some(l),
            _ => c.downcast_ref::<espalier_core::Error>(),
        };
        match core {
            Some(espalier_core::Error::Diverged { .. }) => return 3,
            Some(espalier_core::Error::Interrupted { .. }) => return 130,
            _ => {}
        }
    }
    1
}

/// What `export` prints: each file, each compressed parameter and the sizes.
/// Seconds to 5 significant digits, in plain decimals (a 13 µs forward
/// pass is 0.000013000, not 0.000013).
fn seconds(s: f64) -> String {
    let digits = if s > 0.0 { (4 - s.log10().floor() as i32).max(0) as usize } else { 6 };
    format!("{s:.digits$}")
}

fn export_text(e: &espalier::export::Exported) -> String {
    use std::fmt::Write;
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let mut s = String::new();
    for p in &e.entries {
        let _ = writeln!(
            s,
            "{:<48} {:>6} density {:>6.2}% {:>10} bytes (training layout {})",
            p.name,
            p.format,
            100.0 * p.density,
            p.bytes,
            p.dense_bytes
        );
    }
    for f in &e.folded {
        let _ = writeln!(s, "folded {} of {} units of {}", f.folded.len(), f.size, f.set);
    }
    if let Some((heads, ffn)) = &e.widths {
        let _ = writeln!(s, "heads per layer {heads:?}, feed-forward units per layer {ffn:?}");
    }
    let total: u64 = e.files.iter().map(|f| f.1).sum();
    for (f, b) in &e.files {
        let _ = writeln!(s, "  {f:<40} {:>10.3} MiB", mib(*b));
    }
    let _ = writeln!(
        s,
        "wrote {}: {:.3} MiB (the run's model.safetensors: {:.3} MiB; its parameters dense in f32: {:.3} MiB)",
        e.dir.display(),
        mib(total),
        mib(e.run_model_bytes),
        mib(e.dense_bytes)
    );
    for w in &e.warnings {
        let _ = writeln!(s, "warning: {w}");
    }
    s
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let data_root = DataRoot::resolve(cli.data_dir.as_deref());
    let progress = !cli.quiet;
    match cli.command {
        Command::Run { config, mut sets, out, max_epochs, device } => {
            if let Some(d) = device {
                sets.push(format!("device={d:?}"));
            }
            let exp = config::load(&config, &sets)?;
            let name = exp
                .name
                .clone()
                .or_else(|| config.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "run".into());
            let out = out.unwrap_or_else(|| PathBuf::from("runs").join(name));
            let opts = RunOptions { out: out.clone(), data_root, progress, max_epochs };
            // SIGINT/SIGTERM: finish the current step, checkpoint, stop; a
            // second signal stops at once.
            ctrlc::set_handler(|| {
                if espalier_core::interrupt::requested() {
                    eprintln!("second signal: stopping now (the last checkpoint is intact)");
                    std::process::exit(130);
                }
                eprintln!("stopping after the current step and writing a checkpoint (again to stop at once)");
                espalier_core::interrupt::request();
            })
            .map_err(|e| anyhow::anyhow!("installing the SIGINT/SIGTERM handler: {e}"))?;
            match run::run(&exp, &opts)? {
                Some(summary) => {
                    println!("{}", run::rounds_table(&summary));
                    println!("run directory: {}", out.display());
                }
                None => println!("stopped early; resume with the same command (run directory: {})", out.display()),
            }
        }
        Command::Table {
            spec,
            scale,
            jobs,
            runs,
            out,
            report_only,
            partial,
            max_cells,
            status,
            slurm,
            submit,
            resources,
        } => {
            let opts = espalier::table::TableOptions {
                spec_path: spec,
                scale,
                data_dir: cli.data_dir.clone(),
                runs,
                out,
                jobs: jobs.max(1),
                max_cells,
                report_only,
                partial,
                quiet: cli.quiet,
            };
            if status {
                let runs = espalier::table::status(&opts, slurm.as_deref())?;
                print!("{}", espalier::table::status_text(&runs));
            } else if let Some(dir) = slurm {
                let args = espalier::table::SlurmArgs { dir, submit, resources: resources.resources(), exe: None };
                let w = espalier::table::write_slurm(&opts, &args)?;
                println!(
                    "wrote {}: {} prerequisite tasks, {} cell tasks, a report job ({} finished runs left out)",
                    w.dir.display(),
                    w.prereqs,
                    w.cells,
                    w.finished
                );
                if w.job_ids.is_empty() {
                    println!("submit with: {}", w.dir.join("submit.sh").display());
                }
                for (stage, id) in &w.job_ids {
                    println!("submitted {stage}: job {id}");
                }
            } else {
                espalier::table::table(&opts)?;
            }
        }
        Command::Plot { spec, scale, out } => {
            let opts = espalier::table::TableOptions {
                spec_path: spec,
                scale,
                data_dir: None,
                runs: None,
                out,
                jobs: 1,
                max_cells: None,
                report_only: true,
                partial: false,
                quiet: cli.quiet,
            };
            let dir = espalier::table::replot(&opts)?;
            println!("wrote {}", dir.display());
        }
        Command::Predict { run_dir, out, limit, batch_size } => {
            let n = espalier::predict::predict(&run_dir, &data_root, &out, limit, batch_size)?;
            println!("wrote {n} predictions to {}", out.display());
        }
        Command::Export { run_dir, format, out, force, fold } => {
            let e = espalier::export::export(&run_dir, format, out, force, fold)?;
            print!("{}", export_text(&e));
        }
        Command::Check { config, sets } => {
            let exp = config::load(&config, &sets)?;
            print!("{}", toml::to_string_pretty(&exp)?);
        }
        Command::Eval { run_dir } => {
            let (eval, sparsity) = run::eval_run(&run_dir, &data_root)?;
            print!("{}", sparsity.table());
            println!("test loss {:.4}", eval.loss);
            for (m, v) in &eval.metrics {
                println!("{} {:.2}", m.name(), v);
            }
            for (group, metrics) in &eval.groups {
                for (m, v) in metrics {
                    println!("{}.{group} {:.2}", m.name(), v);
                }
            }
        }
        Command::Bench {
            workload,
            infer,
            batch_sizes,
            gemm_size,
            model_dir,
            seq_len,
            mnist,
            batch_size,
            layers,
            image_size,
            repeats,
            no_reference,
            json,
            max_density,
            max_nm_density,
            small_rows,
        } => {
            let dir = std::path::Path::new(&workload);
            if dir.is_dir() {
                use espalier::bench::RunLatency;
                let json_text = match espalier::bench::run_latency(
                    dir,
                    &batch_sizes,
                    seq_len,
                    repeats.max(1),
                    &espalier_models::PackOptions {
                        max_density,
                        max_nm_density,
                        detect_nm: max_nm_density > 0.0,
                        small_rows,
                        ..Default::default()
                    },
                )? {
                    RunLatency::Shrink(results) => {
                        println!(
                            "{:>6} {:>11} {:>11} {:>8} {:>10} {:>10} {:>12}",
                            "batch", "dense ms", "shrunk ms", "speedup", "FLOP ratio", "speedup/ideal", "params"
                        );
                        for r in &results {
                            println!(
                                "{:>6} {:>11.3} {:>11.3} {:>7.2}x {:>9.2}x {:>13.2} {:>12}",
                                r.batch_size,
                                r.dense_ms,
                                r.shrunk_ms,
                                r.speedup,
                                r.flop_ratio,
                                r.speedup / r.flop_ratio,
                                format!("{} -> {}", r.parameters.0, r.parameters.1)
                            );
                        }
                        serde_json::to_string_pretty(&results)?
                    }
                    RunLatency::Sparse(results, layers, fold) => {
                        for l in &layers {
                            println!(
                                "{:<40} {:>11} density {:>6.2}% {:>16} {:>10} bytes{}",
                                l.name,
                                format!("{}x{}", l.shape.0, l.shape.1),
                                100.0 * l.density,
                                format!("{:?}", l.format),
                                l.bytes,
                                l.max_rows.map(|r| format!(" (inputs of ≤ {r} rows; dense above)")).unwrap_or_default()
                            );
                        }
                        if let Some(f) = &fold {
                            for (set, size, n) in &f.sets {
                                println!("folded {n} of {size} units of {set}");
                            }
                            println!(
                                "folded model: {} -> {} parameters, {} -> {} non-zero weights in masked layers",
                                f.parameters.0, f.parameters.1, f.nonzeros.0, f.nonzeros.1
                            );
                        }
                        println!(
                            "{:>6} {:>11} {:>11} {:>8} {:>17} {:>13} {:>14} {:>15}",
                            "batch",
                            "dense ms",
                            "sparse ms",
                            "speedup",
                            "outside-linear ms",
                            "Amdahl bound",
                            "folded ms",
                            "folded speedup"
                        );
                        for r in &results {
                            println!(
                                "{:>6} {:>11.3} {:>11.3} {:>7.2}x {:>17.3} {:>12.2}x {:>14} {:>15}",
                                r.batch_size,
                                r.dense_ms,
                                r.sparse_ms,
                                r.speedup,
                                r.outside_linear_ms,
                                r.amdahl_bound,
                                r.folded_ms.map_or("–".into(), |f| format!("{f:.3}")),
                                r.folded_speedup.map_or("–".into(), |f| format!("{f:.2}x"))
                            );
                        }
                        serde_json::to_string_pretty(&serde_json::json!({ "latency": results, "fold": fold }))?
                    }
                };
                if let Some(p) = json {
                    espalier_core::checkpoint::write_atomic(&p, json_text.as_bytes())?;
                }
                return Ok(());
            }
            use espalier::bench::StepWorkload;
            let (reps, reference) = (repeats.max(1), !no_reference);
            let results = match workload.as_str() {
                "gemm" => espalier::bench::infer::gemm_peak(gemm_size, reps)?,
                w if infer => {
                    let (name, model) = espalier::bench::infer::model(w, &model_dir, layers)
                        .map_err(|e| ConfigError(format!("bench --infer: {e:#}")))?;
                    espalier::bench::infer::latency(&name, model.as_ref(), &batch_sizes, seq_len, reps)?
                }
                "mnist" => {
                    espalier::bench::mnist_epochs(&data_root, &mnist, batch_size.unwrap_or(128), reps, reference)?
                }
                "bert" => espalier::bench::bert_steps(&model_dir, batch_size.unwrap_or(32), seq_len, reps, reference)?,
                "bert-base" => {
                    StepWorkload::bert_base(layers, batch_size.unwrap_or(8), seq_len)?.run(reps, reference)?
                }
                "resnet20" => StepWorkload::resnet20(batch_size.unwrap_or(128), image_size)?.run(reps, reference)?,
                "resnet18" => StepWorkload::resnet18(batch_size.unwrap_or(32), image_size)?.run(reps, reference)?,
                other => {
                    return Err(ConfigError(format!(
                        "unknown bench workload `{other}`: expected `mnist`, `bert`, `bert-base`, `resnet20`, \
                         `resnet18`, `gemm` or a run directory"
                    ))
                    .into())
                }
            };
            println!(
                "{:<38} {:>8} {:>10} {:>9} {:>9} {:>12} {:>14} {:>9}",
                "workload", "repeats", "median s", "min s", "max s", "examples/s", "peak RSS MiB", "GFLOP/s"
            );
            for r in &results {
                println!(
                    "{:<38} {:>8} {:>10} {:>9} {:>9} {:>12.0} {:>14.0} {:>9}",
                    r.workload,
                    r.repeats,
                    seconds(r.median_s),
                    seconds(r.min_s),
                    seconds(r.max_s),
                    r.examples_per_s,
                    r.peak_rss_mib,
                    r.gflops.map_or("–".to_string(), |g| format!("{g:.1}"))
                );
            }
            if let Some(p) = json {
                espalier_core::checkpoint::write_atomic(&p, serde_json::to_string_pretty(&results)?.as_bytes())?;
            }
        }
    }
    Ok(())
}
