//! `espalier bench`: timed training epochs and steps, reported as medians.
//!
//! Workloads (issue #8; `scripts/bench_pytorch.py` has the same ones in
//! PyTorch, `scripts/bench-vs-pytorch.sh` runs both side by side):
//! - `mnist`: one MNIST epoch of LeNet-300-100 at batch 128, with AdamW and
//!   with SGD (momentum), timed back to back in one process after a warm-up
//!   epoch;
//! - `bert`: a training step of a pretrained BERT (all-MiniLM-L6-v2 by
//!   default) at batch 32 × 128;
//! - `bert-base`: a training step of a randomly initialised BERT-base-shaped
//!   encoder (4 layers, hidden 768, 12 heads, FFN 3072) at batch 8 × 128;
//! - `resnet20`, `resnet18`: SGD training steps of a CIFAR ResNet-20 at batch
//!   128 and of a ResNet-18 with the CIFAR stem at batch 32, 3×32×32 inputs;
//! - with `--infer`, the forward pass (inference mode) of the same models
//!   (`mnist`: LeNet-300-100) at each batch size ([`infer`]);
//! - `gemm`: the machine's dense f32 GEMM rate, the yardstick of every
//!   workload's GFLOP/s ([`infer::gemm_peak`]).
//!
//! Training rows carry their achieved GFLOP/s where the model counts its
//! FLOPs: three times the forward pass's (the backward pass costs about
//! two forward passes: the gradients of the inputs and of the weights).
//!
//! Every result carries the process's peak resident memory so far (VmHWM).
//! Machines are noisy: compare medians and ratios from one invocation, not
//! single runs.

use std::time::Instant;

use candle_core::Device;
use espalier_data::mnist::{self, Flavor, Split};
use espalier_data::DataRoot;
use espalier_models::{MlpConfig, ModelConfig};
use espalier_train::trainer::PhasePos;
use espalier_train::{OptimizerConfig, Trainer, TrainerOptions};
use serde::Serialize;

pub mod infer;

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
    /// Peak resident memory of the process when the result was taken, MiB
    /// (`VmHWM`; 0 where /proc is absent).
    pub peak_rss_mib: f64,
    /// Achieved GFLOP/s at the median, where the FLOPs are counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gflops: Option<f64>,
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
            peak_rss_mib: peak_rss_mib().unwrap_or(0.0),
            gflops: None,
        }
    }

    /// With the GFLOP/s of `flops` per repetition at the median.
    pub fn with_flops(mut self, flops: Option<f64>) -> Self {
        self.gflops = flops.map(|f| f / self.median_s / 1e9);
        self
    }
}

/// A training step's FLOPs per forward pass's: the backward pass computes
/// the gradients of the inputs and of the weights, each about one forward.
pub const TRAIN_FLOPS: f64 = 3.0;

/// Peak resident set size of this process in MiB (`VmHWM` in
/// /proc/self/status), `None` where that is not available.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
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

/// A trainer for timing: `optimizer`, a constant rate, no regularizer, no
/// progress output.
fn timing_trainer(
    optimizer: Box<dyn espalier_train::Optimizer>,
    batch_size: usize,
    clip_grad_norm: Option<f64>,
) -> Trainer {
    Trainer::new(optimizer, vec![], TrainerOptions { clip_grad_norm, ..TrainerOptions::constant(batch_size) })
}

/// Times MNIST epochs of LeNet-300-100 (batch `batch_size`) with each
/// optimizer, interleaved so that drift of the machine hits both alike.
pub fn mnist_epochs(
    root: &DataRoot,
    path: &str,
    batch_size: usize,
    repeats: usize,
    reference: bool,
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
    // `reference = false` leaves them out.
    let optimizers: Vec<_> = [
        ("lenet300-mnist-epoch-adamw", adamw.clone(), true),
        ("lenet300-mnist-epoch-adamw-reference", adamw, false),
        ("lenet300-mnist-epoch-sgd", sgd.clone(), true),
        ("lenet300-mnist-epoch-sgd-reference", sgd, false),
    ]
    .into_iter()
    .filter(|o| reference || o.2)
    .collect();
    let mut trainers: Vec<Trainer> = optimizers
        .iter()
        .map(|(_, o, fused)| {
            let opt = if *fused { o.build(model.params())? } else { o.build_reference(model.params())? };
            Ok(timing_trainer(opt, batch_size, None))
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
    let n = espalier_data::Dataset::len(&data);
    let flops = model.flops(0).map(|f| TRAIN_FLOPS * f * n as f64);
    Ok(optimizers
        .iter()
        .zip(times)
        .map(|(&(name, _, _), t)| BenchResult::from_times(name, n, &t).with_flops(flops))
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
    reference: bool,
) -> anyhow::Result<Vec<BenchResult>> {
    use espalier_models::{Bert, BertTask};
    let model = Bert::from_pretrained(model_dir, Some(BertTask::Classification { num_labels: 2 }), &Device::Cpu)?;
    let vocab = model.bert_config().vocab_size;
    let workload = StepWorkload {
        name: format!("bert-step-{batch_size}x{seq_len}"),
        flops: espalier_models::Model::flops(&model, seq_len),
        model: Box::new(model),
        data: Box::new(SyntheticTokens { n: batch_size, seq_len, vocab }),
        optimizer: bert_adamw(),
        clip_grad_norm: Some(1.0),
    };
    workload.run(repeats, reference)
}

/// Fixed random images (standard normal) with labels `i % classes`, for
/// timing: drawn once, gathered per batch.
struct SyntheticImages {
    n: usize,
    shape: [usize; 3],
    classes: usize,
    pixels: Vec<f32>,
}

impl SyntheticImages {
    fn new(n: usize, shape: [usize; 3], classes: usize) -> Self {
        let mut rng = espalier_core::Rng::derive(7, "bench-images", &[]);
        let pixels = (0..n * shape.iter().product::<usize>()).map(|_| rng.normal() as f32).collect();
        SyntheticImages { n, shape, classes, pixels }
    }
}

impl espalier_data::Dataset for SyntheticImages {
    fn len(&self) -> usize {
        self.n
    }
    fn batch(&self, indices: &[usize], device: &Device) -> espalier_core::Result<espalier_data::Batch> {
        let per: usize = self.shape.iter().product();
        let mut x = Vec::with_capacity(indices.len() * per);
        for &i in indices {
            x.extend_from_slice(&self.pixels[i * per..(i + 1) * per]);
        }
        let [c, h, w] = self.shape;
        Ok(espalier_data::Batch {
            inputs: espalier_data::Inputs::Dense(candle_core::Tensor::from_vec(x, (indices.len(), c, h, w), device)?),
            labels: candle_core::Tensor::from_iter(indices.iter().map(|&i| (i % self.classes) as u32), device)?,
        })
    }
}

/// A training-step workload on synthetic inputs: the model, one batch of
/// data, the optimizer and the clipping norm.
pub struct StepWorkload {
    /// Workload name (`resnet20-step-128`, ...).
    pub name: String,
    model: Box<dyn espalier_models::Model>,
    data: Box<dyn espalier_data::Dataset>,
    optimizer: OptimizerConfig,
    clip_grad_norm: Option<f64>,
    /// Forward FLOPs of one example, where the model counts them at the
    /// workload's input size.
    flops: Option<f64>,
}

/// SGD with momentum as for CIFAR ResNets (He et al. 2016, §4.2).
fn resnet_sgd() -> OptimizerConfig {
    OptimizerConfig::Sgd { lr: 0.1, momentum: 0.9, nesterov: false, weight_decay: 5e-4, no_decay: vec![] }
}

/// AdamW as in the GLUE fine-tuning recipe (lr 2e-5, weight decay 0.01).
fn bert_adamw() -> OptimizerConfig {
    OptimizerConfig::Adamw { lr: 2e-5, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, no_decay: vec![] }
}

impl StepWorkload {
    /// CIFAR ResNet-20 (option A shortcuts), `batch_size` 3×`size`×`size` images, SGD.
    pub fn resnet20(batch_size: usize, size: usize) -> anyhow::Result<Self> {
        let cfg = espalier_models::ResNetConfig::cifar(20);
        Self::resnet(format!("resnet20-step-{batch_size}"), cfg, batch_size, size)
    }

    /// ResNet-18 (basic blocks at 64–512 channels, projection shortcuts)
    /// with the CIFAR stem (3×3/1 convolution, no max-pool), 10 classes, SGD.
    pub fn resnet18(batch_size: usize, size: usize) -> anyhow::Result<Self> {
        let cfg = espalier_models::ResNetConfig {
            stem: Some(espalier_models::Stem::Cifar),
            num_classes: 10,
            ..espalier_models::ResNetConfig::imagenet(18)
        };
        Self::resnet(format!("resnet18-cifar-step-{batch_size}"), cfg, batch_size, size)
    }

    fn resnet(
        name: String,
        cfg: espalier_models::ResNetConfig,
        batch_size: usize,
        size: usize,
    ) -> anyhow::Result<Self> {
        let data = SyntheticImages::new(batch_size, [cfg.in_channels, size, size], cfg.num_classes);
        let model = ModelConfig::Resnet(cfg).init(0, &Device::Cpu)?;
        // The ResNet FLOP count is for 32×32 images.
        let flops = if size == 32 { model.flops(0) } else { None };
        Ok(StepWorkload { name, model, data: Box::new(data), optimizer: resnet_sgd(), clip_grad_norm: None, flops })
    }

    /// A randomly initialised BERT-base-shaped encoder (hidden 768, 12
    /// heads, FFN 3072, vocabulary 30,522) of `layers` layers with a 2-label
    /// classification head, `batch_size` × `seq_len` tokens, AdamW, dropout
    /// on, clipping 1.0 (the settings of `bert`).
    pub fn bert_base(layers: usize, batch_size: usize, seq_len: usize) -> anyhow::Result<Self> {
        Self::bert(
            format!("bert-base-{layers}l-step-{batch_size}x{seq_len}"),
            espalier_models::BertConfig {
                num_hidden_layers: layers,
                ..espalier_models::BertConfig::base(espalier_models::BertTask::Classification { num_labels: 2 })
            },
            batch_size,
            seq_len,
        )
    }

    fn bert(name: String, cfg: espalier_models::BertConfig, batch_size: usize, seq_len: usize) -> anyhow::Result<Self> {
        let vocab = cfg.vocab_size;
        let model = ModelConfig::Bert(cfg).init(0, &Device::Cpu)?;
        Ok(StepWorkload {
            name,
            flops: model.flops(seq_len),
            model,
            data: Box::new(SyntheticTokens { n: batch_size, seq_len, vocab }),
            optimizer: bert_adamw(),
            clip_grad_norm: Some(1.0),
        })
    }

    /// One warm-up step, then `repeats` timed steps (the batch is the whole
    /// dataset, so each `train_epoch` is one step). With `reference`, every
    /// step is also run with the fused CPU kernels switched off (candle's
    /// convolution, BatchNorm/LayerNorm/softmax/GELU/ReLU composed from its
    /// basic ops: the `-composed` row), alternating step by step so that
    /// drift of the machine hits both alike.
    pub fn run(&self, repeats: usize, reference: bool) -> anyhow::Result<Vec<BenchResult>> {
        use espalier_models::fused;
        let device = Device::Cpu;
        let batch_size = self.data.len();
        let mut variants = vec![(self.name.clone(), true), (format!("{}-composed", self.name), false)];
        variants.truncate(if reference { 2 } else { 1 });
        let mut trainers = variants
            .iter()
            .map(|_| Ok(timing_trainer(self.optimizer.build(self.model.params())?, batch_size, self.clip_grad_norm)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let pos = PhasePos { epoch_in_phase: 0, epochs_in_phase: 1 };
        let mut times = vec![Vec::new(); variants.len()];
        let was = fused::enabled();
        for rep in 0..=repeats {
            for (i, trainer) in trainers.iter_mut().enumerate() {
                fused::set_enabled(variants[i].1);
                let start = Instant::now();
                let res = trainer.train_epoch(self.model.as_ref(), self.data.as_ref(), rep, pos, &device, None);
                let s = start.elapsed().as_secs_f64();
                fused::set_enabled(was);
                res?;
                if rep > 0 {
                    times[i].push(s);
                }
                tracing::info!(workload = variants[i].0, rep, seconds = format!("{s:.3}"), "step");
            }
        }
        let flops = self.flops.map(|f| TRAIN_FLOPS * f * batch_size as f64);
        Ok(variants
            .iter()
            .zip(times)
            .map(|((name, _), t)| BenchResult::from_times(name, batch_size, &t).with_flops(flops))
            .collect())
    }
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
pub(crate) fn synthetic_batch(
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

/// Median milliseconds of the forward pass (inference mode) of each model on
/// `batch`, alternating, at least `repeats` times after one warm-up and
/// until every model has [`infer::MIN_TIMED_S`] of timed passes (at most
/// [`infer::MAX_REPEATS`]).
pub(crate) fn median_latencies(
    models: &[&dyn espalier_models::Model],
    batch: &espalier_data::Batch,
    repeats: usize,
) -> anyhow::Result<Vec<f64>> {
    use espalier_models::Mode;
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); models.len()];
    let short = |t: &Vec<Vec<f64>>| {
        t.iter().any(|v| v.iter().sum::<f64>() < 1e3 * infer::MIN_TIMED_S) && t[0].len() < infer::MAX_REPEATS
    };
    let mut rep = 0;
    while rep <= repeats || short(&times) {
        rep += 1;
        for (i, m) in models.iter().enumerate() {
            let start = Instant::now();
            std::hint::black_box(m.forward_t(batch, &mut Mode::Infer)?.logits.flatten_all()?.sum_all()?);
            if rep > 1 {
                times[i].push(start.elapsed().as_secs_f64() * 1e3);
            }
        }
    }
    Ok(times.iter().map(|t| median(t)).collect())
}

/// Inference latency of a masked model, dense vs packed sparse.
#[derive(Clone, Debug, Serialize)]
pub struct SparseLatency {
    /// Examples per forward pass.
    pub batch_size: usize,
    /// Median milliseconds, the masked model through the dense kernels.
    pub dense_ms: f64,
    /// Median milliseconds, the same model with its linear layers packed.
    pub sparse_ms: f64,
    /// `dense_ms / sparse_ms`.
    pub speedup: f64,
    /// Median milliseconds of the same model with every packable linear
    /// layer emptied (packed with no entries): the time spent outside those
    /// layers (attention products, softmax, LayerNorm, GELU, embeddings,
    /// the dense head), plus the empty layers' bias writes.
    pub outside_linear_ms: f64,
    /// `outside_linear_ms / dense_ms`: the share of the dense forward no
    /// sparse kernel can remove.
    pub outside_share: f64,
    /// `dense_ms / outside_linear_ms`: Amdahl's bound on the speedup of
    /// faster linear layers alone.
    pub amdahl_bound: f64,
    /// Median milliseconds of the model with its constant and dead units
    /// folded away ([`espalier_models::fold_empty_units`]) and the rest
    /// packed as `sparse_ms`'s; `None` when nothing folds.
    pub folded_ms: Option<f64>,
    /// `dense_ms / folded_ms`.
    pub folded_speedup: Option<f64>,
}

/// What folding removed from an unstructured run's model before packing.
#[derive(Clone, Debug, Serialize)]
pub struct FoldSummary {
    /// Per group set with something folded: (set, units before, units folded).
    pub sets: Vec<(String, usize, usize)>,
    /// Parameters of the model before and after folding.
    pub parameters: (usize, usize),
    /// Non-zero weights of the packable layers before and after folding
    /// (the folded model stores fewer zeros but the same non-zeros, less
    /// those of the removed units' dead rows or columns).
    pub nonzeros: (usize, usize),
}

/// What `bench RUN_DIR` measured, by the kind of run.
pub enum RunLatency {
    /// A structured run: dense vs shrunk.
    Shrink(Vec<LatencyResult>),
    /// An unstructured or N:M run: masked dense vs sparse kernels (and the
    /// folded model's), what each linear layer was packed as, and what
    /// folding removed.
    Sparse(Vec<SparseLatency>, Vec<espalier_models::PackedLayer>, Option<FoldSummary>),
}

/// Times a run directory's model at each batch size (`repeats` times after
/// a warm-up, medians): a structured run's model against the model before
/// its shrink, any other run's masked model through the dense kernels
/// against the same model with its sparse linear layers packed.
pub fn run_latency(
    run_dir: &std::path::Path,
    batch_sizes: &[usize],
    seq_len: usize,
    repeats: usize,
    pack: &espalier_models::PackOptions,
) -> anyhow::Result<RunLatency> {
    use anyhow::Context;
    let path = run_dir.join("model.safetensors");
    let (model, header) =
        crate::run::load_model(&path, &Device::Cpu).with_context(|| format!("{}: the run's model", path.display()))?;
    Ok(if header.get("structured").is_some() {
        RunLatency::Shrink(shrink_latency(run_dir, model.as_ref(), batch_sizes, seq_len, repeats)?)
    } else {
        let (results, layers, fold) = sparse_latency(run_dir, model.as_ref(), batch_sizes, seq_len, repeats, pack)?;
        RunLatency::Sparse(results, layers, fold)
    })
}

/// A structured run's dense model (`dense.safetensors`, the state before
/// the shrink) against its shrunk `small` model; with the FLOP ratio the
/// speedup is measured against.
fn shrink_latency(
    run_dir: &std::path::Path,
    small: &dyn espalier_models::Model,
    batch_sizes: &[usize],
    seq_len: usize,
    repeats: usize,
) -> anyhow::Result<Vec<LatencyResult>> {
    use anyhow::Context;
    use espalier_models::Model;
    let device = Device::Cpu;
    // The model before the shrink: `dense.safetensors` (runs before it
    // existed kept it as the checkpoint).
    let dense_path = ["dense.safetensors", "checkpoint.safetensors"]
        .iter()
        .map(|f| run_dir.join(f))
        .find(|p| p.exists())
        .with_context(|| format!("{}: no dense.safetensors (the model before the shrink)", run_dir.display()))?;
    let (dense, _) = crate::run::load_model(&dense_path, &device)
        .with_context(|| format!("{}: the dense model", dense_path.display()))?;
    let flops = |m: &dyn Model| m.flops(seq_len).context("this model does not report its FLOPs");
    let (f0, f1) = (flops(dense.as_ref())?, flops(small)?);
    let mut out = Vec::new();
    for &b in batch_sizes {
        let batch = synthetic_batch(dense.as_ref(), b, seq_len, &device)?;
        let [d, s] = median_latencies(&[dense.as_ref(), small], &batch, repeats)?[..] else { unreachable!() };
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

/// Non-zero entries of the model's masked parameters.
fn masked_nonzeros(model: &dyn espalier_models::Model) -> anyhow::Result<usize> {
    let mut n = 0;
    for p in model.params().iter().filter(|p| p.mask().is_some()) {
        n += p.effective()?.ne(0f32)?.to_dtype(candle_core::DType::F32)?.sum_all()?.to_scalar::<f32>()? as usize;
    }
    Ok(n)
}

/// The run's model with its constant and dead units folded away, packed
/// under `pack`, and what was folded; `None` when nothing folds (or the
/// model cannot fold: a warning says why).
fn folded_model(
    model: &dyn espalier_models::Model,
    pack: &espalier_models::PackOptions,
) -> anyhow::Result<Option<(Box<dyn espalier_models::Model>, FoldSummary)>> {
    let (folded, sets) = match espalier_models::fold_empty_units(model) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!("folding skipped: {e}");
            return Ok(None);
        }
    };
    if sets.is_empty() {
        return Ok(None);
    }
    folded.pack_sparse(pack)?;
    let summary = FoldSummary {
        sets: sets.iter().map(|s| (s.set.clone(), s.size, s.folded.len())).collect(),
        parameters: (model.params().numel(), folded.params().numel()),
        nonzeros: (masked_nonzeros(model)?, masked_nonzeros(folded.as_ref())?),
    };
    Ok(Some((folded, summary)))
}

/// An unstructured or N:M run's masked `dense` model against a copy with
/// its linear layers packed ([`espalier_models::Model::pack_sparse`] under
/// `pack`), and against the copy's folded model when folding removes units.
fn sparse_latency(
    run_dir: &std::path::Path,
    dense: &dyn espalier_models::Model,
    batch_sizes: &[usize],
    seq_len: usize,
    repeats: usize,
    pack: &espalier_models::PackOptions,
) -> anyhow::Result<(Vec<SparseLatency>, Vec<espalier_models::PackedLayer>, Option<FoldSummary>)> {
    use espalier_models::{Format, PackOptions};
    let device = Device::Cpu;
    let (sparse, _) = crate::run::load_model(&run_dir.join("model.safetensors"), &device)?;
    pack.validate()?;
    let fold = folded_model(sparse.as_ref(), pack)?;
    let layers = sparse.pack_sparse(pack)?;
    // A model without masks is a dense run (nothing to compare); a masked
    // one whose layers all stay dense is measured as it is: the per-layer
    // choice keeps it at the dense speed.
    if dense.params().iter().all(|p| p.mask().is_none()) {
        anyhow::bail!("{}: neither a structured run nor a pruned one (the model has no masks)", run_dir.display());
    }
    if layers.iter().all(|l| l.format == Format::Dense) {
        tracing::warn!(
            "{}: no linear layer is sparse enough to pack (densest CSR {}, N:M up to {}): sparse = dense",
            run_dir.display(),
            pack.max_density,
            pack.max_nm_density
        );
    }
    // The same model with every packable layer empty: what is left of the
    // forward pass when the linear layers cost nothing.
    let (hollow, _) = crate::run::load_model(&run_dir.join("model.safetensors"), &device)?;
    for l in &layers {
        let p = hollow.params().get(&l.name)?;
        p.set_mask(Some(candle_core::Tensor::zeros(p.dims(), candle_core::DType::F32, &device)?))?;
    }
    hollow.pack_sparse(&PackOptions::default())?;
    let mut out = Vec::new();
    for &b in batch_sizes {
        let batch = synthetic_batch(dense, b, seq_len, &device)?;
        let mut models = vec![dense, sparse.as_ref(), hollow.as_ref()];
        models.extend(fold.as_ref().map(|(m, _)| m.as_ref()));
        let times = median_latencies(&models, &batch, repeats)?;
        let (d, s, h, f) = (times[0], times[1], times[2], times.get(3).copied());
        tracing::info!(
            batch = b,
            dense_ms = format!("{d:.2}"),
            sparse_ms = format!("{s:.2}"),
            outside_linear_ms = format!("{h:.2}"),
            folded_ms = f.map(|f| format!("{f:.2}")),
            "latency"
        );
        out.push(SparseLatency {
            batch_size: b,
            dense_ms: d,
            sparse_ms: s,
            speedup: d / s,
            outside_linear_ms: h,
            outside_share: h / d,
            amdahl_bound: d / h,
            folded_ms: f,
            folded_speedup: f.map(|f| d / f),
        });
    }
    Ok((out, layers, fold.map(|(_, s)| s)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }

    #[test]
    fn peak_rss_is_read() {
        if std::path::Path::new("/proc/self/status").exists() {
            assert!(peak_rss_mib().unwrap() > 0.0);
        }
    }

    /// One step of each step workload at toy shapes (tiny images, one BERT
    /// layer over 8 tokens): the builders produce models the trainer runs.
    #[test]
    fn step_workloads_run_at_toy_shapes() {
        let toy_bert = espalier_models::BertConfig {
            vocab_size: 1100,
            hidden_size: 32,
            num_attention_heads: 2,
            intermediate_size: 64,
            num_hidden_layers: 1,
            ..espalier_models::BertConfig::base(espalier_models::BertTask::Classification { num_labels: 2 })
        };
        let bert = StepWorkload::bert("toy-bert".into(), toy_bert, 2, 8).unwrap();
        for w in [StepWorkload::resnet20(2, 8).unwrap(), bert] {
            let rows = w.run(1, true).unwrap();
            assert_eq!(rows.len(), 2);
            assert!(rows[1].workload.ends_with("-composed"), "{}", rows[1].workload);
            for r in rows {
                assert_eq!((r.repeats, r.examples), (1, 2));
                assert!(r.median_s > 0.0);
            }
        }
    }
}
