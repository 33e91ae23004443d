//! `espalier bench`: timed training epochs, reported as medians.
//!
//! The workload of the foundation: one MNIST epoch of LeNet-300-100 at
//! batch 128, with AdamW and with SGD (momentum), timed back to back in one
//! process after a warm-up epoch. Machines are noisy: compare medians and
//! ratios from one invocation, not single runs.

use std::time::Instant;

use candle_core::Device;
use espalier_data::mnist::{self, Flavor, Split};
use espalier_data::DataRoot;
use espalier_models::{MlpConfig, ModelConfig};
use espalier_train::trainer::PhasePos;
use espalier_train::{LrSchedule, OptimizerConfig, Trainer, TrainerOptions};
use serde::Serialize;

/// One benchmark result.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Workload name.
    pub workload: String,
    /// Examples per epoch.
    pub examples: usize,
    /// Timed repetitions.
    pub repeats: usize,
    /// Median seconds per epoch.
    pub median_s: f64,
    /// Fastest epoch.
    pub min_s: f64,
    /// Slowest epoch.
    pub max_s: f64,
    /// Training examples per second at the median.
    pub examples_per_s: f64,
}

impl BenchResult {
    /// Median, min and max of `times` (seconds per repetition of `examples`).
    pub fn from_times(workload: &str, examples: usize, times: &[f64]) -> Self {
        let med = median(times);
        BenchResult {
            workload: workload.to_string(),
            examples,
            repeats: times.len(),
            median_s: med,
            min_s: times.iter().cloned().fold(f64::MAX, f64::min),
            max_s: times.iter().cloned().fold(0.0, f64::max),
            examples_per_s: examples as f64 / med,
        }
    }
}

/// Median of a non-empty slice.
pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

/// Times MNIST epochs of LeNet-300-100 (batch `batch_size`) with each
/// optimizer, interleaved so that drift of the machine hits both alike.
pub fn mnist_epochs(
    root: &DataRoot,
    path: &str,
    batch_size: usize,
    repeats: usize,
) -> anyhow::Result<Vec<BenchResult>> {
    let dir = root.join(path);
    let data = mnist::load(&dir, Split::Train, Flavor::Mnist)
        .map_err(|e| anyhow::anyhow!("{e} (bench reads MNIST from the data root: --data-dir)"))?;
    let device = Device::Cpu;
    let model = ModelConfig::Mlp(MlpConfig::lenet_300_100()).init(0, &device)?;
    let adamw =
        OptimizerConfig::Adamw { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-4, no_decay: vec![] };
    let sgd = OptimizerConfig::Sgd { lr: 0.05, momentum: 0.9, nesterov: false, weight_decay: 1e-4, no_decay: vec![] };
    // (name, optimizer, fused CPU update?): the reference rows are the same
    // update composed from candle tensor ops, timed in the same process.
    let optimizers = [
        ("lenet300-mnist-epoch-adamw", adamw.clone(), true),
        ("lenet300-mnist-epoch-adamw-reference", adamw, false),
        ("lenet300-mnist-epoch-sgd", sgd.clone(), true),
        ("lenet300-mnist-epoch-sgd-reference", sgd, false),
    ];
    let mut trainers: Vec<Trainer> = optimizers
        .iter()
        .map(|(_, o, fused)| {
            Ok(Trainer {
                optimizer: if *fused { o.build(model.params())? } else { o.build_reference(model.params())? },
                regularizers: vec![],
                opts: TrainerOptions {
                    batch_size,
                    clip_grad_norm: None,
                    lr_schedule: LrSchedule::Constant,
                    seed: 0,
                    progress: false,
                },
                global_step: 0,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let pos = PhasePos { epoch_in_phase: 0, epochs_in_phase: 1 };
    let mut times = vec![Vec::new(); trainers.len()];
    for rep in 0..=repeats {
        for (i, t) in trainers.iter_mut().enumerate() {
            let start = Instant::now();
            t.train_epoch(model.as_ref(), &data, rep, pos, &device, None)?;
            let s = start.elapsed().as_secs_f64();
            if rep > 0 {
                times[i].push(s);
            }
            tracing::info!(workload = optimizers[i].0, rep, seconds = format!("{s:.3}"), "epoch");
        }
    }
    Ok(optimizers
        .iter()
        .zip(times)
        .map(|(&(name, _, _), t)| BenchResult::from_times(name, espalier_data::Dataset::len(&data), &t))
        .collect())
}

/// Random token sequences of a fixed length (all tokens real), for timing.
struct SyntheticTokens {
    n: usize,
    seq_len: usize,
    vocab: usize,
}

impl espalier_data::Dataset for SyntheticTokens {
    fn len(&self) -> usize {
        self.n
    }
    fn batch(&self, indices: &[usize], device: &Device) -> espalier_core::Result<espalier_data::Batch> {
        let b = indices.len();
        let mut ids = Vec::with_capacity(b * self.seq_len);
        for &i in indices {
            let mut rng = espalier_core::Rng::derive(7, "bench-tokens", &[i as u64]);
            ids.push(101u32);
            ids.extend((1..self.seq_len).map(|_| 1000 + rng.below(self.vocab - 1000) as u32));
        }
        let input_ids = candle_core::Tensor::from_vec(ids, (b, self.seq_len), device)?;
        Ok(espalier_data::Batch {
            inputs: espalier_data::Inputs::Tokens {
                token_type_ids: input_ids.zeros_like()?,
                attention_mask: candle_core::Tensor::ones((b, self.seq_len), candle_core::DType::F32, device)?,
                input_ids,
            },
            labels: candle_core::Tensor::from_iter(indices.iter().map(|&i| (i % 2) as u32), device)?,
        })
    }
}

/// Times training steps of a pretrained BERT (sequence classification, 2
/// labels) at `batch_size` × `seq_len`, AdamW, dropout on: one warm-up step,
/// then `repeats` timed steps with Espalier's fused kernels (LayerNorm,
/// attention softmax, GELU), each followed by a step with the same ops
/// composed from candle's basic ops (the `-composed` row), so that drift of
/// the machine hits both alike.
pub fn bert_steps(
    model_dir: &std::path::Path,
    batch_size: usize,
    seq_len: usize,
    repeats: usize,
) -> anyhow::Result<Vec<BenchResult>> {
    use espalier_models::{fused, Bert, BertTask, Model};
    let device = Device::Cpu;
    let model = Bert::from_pretrained(model_dir, Some(BertTask::Classification { num_labels: 2 }), &device)?;
    let vocab = model.bert_config().vocab_size;
    // One batch per "epoch": each `train_epoch` call below is one step.
    let data = SyntheticTokens { n: batch_size, seq_len, vocab };
    let opt =
        OptimizerConfig::Adamw { lr: 2e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, no_decay: vec![] };
    let name = format!("bert-step-{batch_size}x{seq_len}");
    let variants = [(name.clone(), true), (format!("{name}-composed"), false)];
    let mut trainers: Vec<Trainer> = variants
        .iter()
        .map(|_| {
            Ok(Trainer {
                optimizer: opt.build(model.params())?,
                regularizers: vec![],
                opts: TrainerOptions {
                    batch_size,
                    clip_grad_norm: Some(1.0),
                    lr_schedule: LrSchedule::Constant,
                    seed: 0,
                    progress: false,
                },
                global_step: 0,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let pos = PhasePos { epoch_in_phase: 0, epochs_in_phase: 1 };
    let mut times = vec![Vec::new(); variants.len()];
    let was = fused::enabled();
    for rep in 0..=repeats {
        for (i, t) in trainers.iter_mut().enumerate() {
            fused::set_enabled(variants[i].1);
            let start = Instant::now();
            let res = t.train_epoch(&model, &data, rep, pos, &device, None);
            let s = start.elapsed().as_secs_f64();
            fused::set_enabled(was);
            res?;
            if rep > 0 {
                times[i].push(s);
            }
            tracing::info!(workload = variants[i].0, rep, seconds = format!("{s:.3}"), "bert step");
        }
    }
    Ok(variants.iter().zip(times).map(|((name, _), t)| BenchResult::from_times(name, batch_size, &t)).collect())
}

/// Inference latency of a structured run's dense model against its shrunk
/// model, at one batch size.
#[derive(Clone, Debug, Serialize)]
pub struct LatencyResult {
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Median milliseconds of the dense model's forward pass.
    pub dense_ms: f64,
    /// Median milliseconds of the shrunk model's forward pass.
    pub shrunk_ms: f64,
    /// `dense_ms / shrunk_ms`.
    pub speedup: f64,
    /// Forward FLOPs per example, dense and shrunk.
    pub flops: (f64, f64),
    /// `flops.0 / flops.1`: the speedup the FLOP count promises.
    pub flop_ratio: f64,
    /// Parameters, dense and shrunk.
    pub parameters: (usize, usize),
}

/// A synthetic batch the model takes: dense inputs for an MLP, token
/// sequences (all tokens real) for BERT.
fn synthetic_batch(
    model: &dyn espalier_models::Model,
    n: usize,
    seq_len: usize,
    device: &Device,
) -> anyhow::Result<espalier_data::Batch> {
    use espalier_data::Dataset as _;
    use espalier_models::ModelConfig;
    let mut rng = espalier_core::Rng::new(0);
    Ok(match model.config() {
        ModelConfig::Mlp(c) => {
            let x: Vec<f32> = (0..n * c.input_dim).map(|_| rng.uniform() as f32).collect();
            espalier_data::Batch {
                inputs: espalier_data::Inputs::Dense(candle_core::Tensor::from_vec(x, (n, c.input_dim), device)?),
                labels: candle_core::Tensor::zeros(n, candle_core::DType::U32, device)?,
            }
        }
        ModelConfig::Bert(c) => {
            SyntheticTokens { n, seq_len, vocab: c.vocab_size }.batch(&(0..n).collect::<Vec<_>>(), device)?
        }
        // 32×32 images: the size the ResNet FLOP count assumes.
        ModelConfig::Resnet(c) => {
            let x: Vec<f32> = (0..n * c.in_channels * 32 * 32).map(|_| rng.normal() as f32).collect();
            espalier_data::Batch {
                inputs: espalier_data::Inputs::Dense(candle_core::Tensor::from_vec(
                    x,
                    (n, c.in_channels, 32, 32),
                    device,
                )?),
                labels: candle_core::Tensor::zeros(n, candle_core::DType::U32, device)?,
            }
        }
        other => anyhow::bail!("bench RUN_DIR times MLP, ResNet and BERT runs, not {}", crate::run::model_name(&other)),
    })
}

/// Times the forward pass (evaluation mode) of a structured run's dense
/// model (`checkpoint.safetensors`, the state before the shrink) and of its
/// shrunk model (`model.safetensors`), alternating, `repeats` times per
/// batch size after a warm-up; reports median latencies, the speedup and
/// the FLOP ratio it is measured against.
pub fn shrink_latency(
    run_dir: &std::path::Path,
    batch_sizes: &[usize],
    seq_len: usize,
    repeats: usize,
) -> anyhow::Result<Vec<LatencyResult>> {
    use anyhow::Context;
    use espalier_models::{Mode, Model};
    let device = Device::Cpu;
    let (dense, _) = crate::run::load_model(&run_dir.join("checkpoint.safetensors"), &device)
        .with_context(|| format!("{}: the dense model (checkpoint.safetensors)", run_dir.display()))?;
    let (small, header) = crate::run::load_model(&run_dir.join("model.safetensors"), &device)
        .with_context(|| format!("{}: the shrunk model (model.safetensors)", run_dir.display()))?;
    if header.get("structured").is_none() {
        anyhow::bail!("{}: not a structured run (its model.safetensors records no shrink)", run_dir.display());
    }
    let flops = |m: &dyn Model| m.flops(seq_len).context("this model does not report its FLOPs");
    let (f0, f1) = (flops(dense.as_ref())?, flops(small.as_ref())?);
    let mut out = Vec::new();
    for &b in batch_sizes {
        let batch = synthetic_batch(dense.as_ref(), b, seq_len, &device)?;
        let models: [&dyn Model; 2] = [dense.as_ref(), small.as_ref()];
        let mut times = [Vec::new(), Vec::new()];
        for rep in 0..=repeats {
            for (i, m) in models.iter().enumerate() {
                let start = Instant::now();
                std::hint::black_box(m.forward_t(&batch, &mut Mode::Eval)?.logits.flatten_all()?.sum_all()?);
                if rep > 0 {
                    times[i].push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        let (d, s) = (median(&times[0]), median(&times[1]));
        tracing::info!(batch = b, dense_ms = format!("{d:.2}"), shrunk_ms = format!("{s:.2}"), "latency");
        out.push(LatencyResult {
            batch_size: b,
            dense_ms: d,
            shrunk_ms: s,
            speedup: d / s,
            flops: (f0, f1),
            flop_ratio: f0 / f1,
            parameters: (dense.params().numel(), small.params().numel()),
        });
    }
    Ok(out)
}
