//! Inference latency of the benchmark models, and the machine's GEMM rate.
//!
//! `espalier bench WORKLOAD --infer --batch-sizes 1,32` times the forward
//! pass (inference mode: no autograd graph, dropout off, BatchNorm on its
//! running statistics) of the workload's model on synthetic inputs, one
//! warm-up then at least `repeats` timed passes per batch size (and at least
//! [`MIN_TIMED_S`] of them), and reports the median
//! with the achieved GFLOP/s (the model's own forward FLOP count). The models
//! are those of the training workloads: `mnist` LeNet-300-100, `bert` the
//! pretrained MiniLM (or `--model-dir`), `bert-base` the BERT-base shape,
//! `resnet20` and `resnet18` on 32×32 images; BERT at `--seq-len` tokens.
//!
//! `espalier bench gemm` times `Y = X·Wᵀ` for square f32 matrices through
//! the kernel every linear layer and convolution of Espalier runs
//! ([`espalier_kernels::dense::linear`]) and through candle's `matmul`; the
//! faster of the two is the peak the suite reports beside every workload.

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use espalier_models::{Mode, Model, ModelConfig};

use super::{median, synthetic_batch, BenchResult};

/// The model of an inference workload, and the name of its rows.
pub fn model(workload: &str, model_dir: &std::path::Path, layers: usize) -> anyhow::Result<(String, Box<dyn Model>)> {
    use espalier_models::{Bert, BertConfig, BertTask, MlpConfig, ResNetConfig, Stem};
    let dev = Device::Cpu;
    let task = BertTask::Classification { num_labels: 2 };
    Ok(match workload {
        "mnist" | "mlp" => ("lenet300".into(), ModelConfig::Mlp(MlpConfig::lenet_300_100()).init(0, &dev)?),
        "bert" => ("bert".into(), Box::new(Bert::from_pretrained(model_dir, Some(task), &dev)?)),
        "bert-base" => (
            format!("bert-base-{layers}l"),
            ModelConfig::Bert(BertConfig { num_hidden_layers: layers, ..BertConfig::base(task) }).init(0, &dev)?,
        ),
        "resnet20" => ("resnet20".into(), ModelConfig::Resnet(ResNetConfig::cifar(20)).init(0, &dev)?),
        "resnet18" => (
            "resnet18-cifar".into(),
            ModelConfig::Resnet(ResNetConfig {
                stem: Some(Stem::Cifar),
                num_classes: 10,
                ..ResNetConfig::imagenet(18)
            })
            .init(0, &dev)?,
        ),
        other => anyhow::bail!(
            "no inference workload `{other}`: expected `mnist`, `bert`, `bert-base`, `resnet20` or `resnet18`"
        ),
    })
}

/// Forward passes are timed at least `repeats` times and until they add up
/// to this many seconds (at most [`MAX_REPEATS`]): a median of 3 passes of
/// 0.1 ms swung 3× with the pool threads' wake-ups.
pub const MIN_TIMED_S: f64 = 0.25;
/// The most forward passes timed per batch size.
pub const MAX_REPEATS: usize = 5000;

/// The forward pass of `model` at each batch size: one row per batch size,
/// named `<name>-infer-<b>[x<seq_len>]`, with its GFLOP/s.
pub fn latency(
    name: &str,
    model: &dyn Model,
    batch_sizes: &[usize],
    seq_len: usize,
    repeats: usize,
) -> anyhow::Result<Vec<BenchResult>> {
    let tokens = matches!(model.config(), ModelConfig::Bert(_));
    let mut out = Vec::with_capacity(batch_sizes.len());
    for &b in batch_sizes {
        let batch = synthetic_batch(model, b, seq_len, &Device::Cpu)?;
        let mut times = Vec::with_capacity(repeats);
        let mut rep = 0;
        while rep <= repeats || (times.iter().sum::<f64>() < MIN_TIMED_S && times.len() < MAX_REPEATS) {
            let start = Instant::now();
            std::hint::black_box(model.forward_t(&batch, &mut Mode::Infer)?.logits.flatten_all()?.sum_all()?);
            if rep > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
            rep += 1;
        }
        let row = if tokens { format!("{name}-infer-{b}x{seq_len}") } else { format!("{name}-infer-{b}") };
        tracing::info!(workload = row, median_ms = format!("{:.3}", 1e3 * median(&times)), "forward");
        out.push(BenchResult::from_times(&row, b, &times).with_flops(model.flops(seq_len).map(|f| f * b as f64)));
    }
    Ok(out)
}

/// `Y = X·Wᵀ` for `n × n` f32 matrices: one row through Espalier's dense
/// kernel (`gemm-<n>`), one through candle's `matmul` (`gemm-<n>-candle`),
/// alternating, `repeats` timed products each after a warm-up.
pub fn gemm_peak(n: usize, repeats: usize) -> anyhow::Result<Vec<BenchResult>> {
    anyhow::ensure!(n > 0, "the GEMM size must be at least 1");
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (n, n), &dev)?;
    let wt = w.t()?;
    let flops = 2.0 * (n as f64).powi(3);
    let mut times = [Vec::new(), Vec::new()];
    for rep in 0..=repeats {
        for (i, t) in times.iter_mut().enumerate() {
            let start = Instant::now();
            let y = if i == 0 { espalier_kernels::dense::linear(&x, &w, None)? } else { x.matmul(&wt)? };
            std::hint::black_box(y.to_dtype(DType::F32)?);
            if rep > 0 {
                t.push(start.elapsed().as_secs_f64());
            }
        }
    }
    let [ours, candle] = times;
    Ok(vec![
        BenchResult::from_times(&format!("gemm-{n}"), n, &ours).with_flops(Some(flops)),
        BenchResult::from_times(&format!("gemm-{n}-candle"), n, &candle).with_flops(Some(flops)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The inference rows run at toy shapes, carry their FLOP rate, and the
    /// GEMM rows agree with the matrix product.
    #[test]
    fn inference_and_gemm_rows_at_toy_shapes() {
        let (name, m) = model("mnist", std::path::Path::new("unused"), 1).unwrap();
        let rows = latency(&name, m.as_ref(), &[1, 3], 0, 2).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.workload.as_str()).collect::<Vec<_>>(),
            ["lenet300-infer-1", "lenet300-infer-3"]
        );
        // At least 2 passes, and at least MIN_TIMED_S of them (a toy pass
        // takes microseconds: many more).
        assert!(rows.iter().all(|r| r.repeats > 2 && r.repeats <= MAX_REPEATS && r.gflops.is_some_and(|g| g > 0.0)));
        let g = gemm_peak(64, 2).unwrap();
        assert_eq!((g[0].workload.as_str(), g[1].workload.as_str()), ("gemm-64", "gemm-64-candle"));
        assert!(g.iter().all(|r| r.gflops.is_some_and(|v| v > 0.0)));
        assert!(model("vgg", std::path::Path::new("unused"), 1).is_err());

        let x = Tensor::randn(0f32, 1.0, (5, 7), &Device::Cpu).unwrap();
        let w = Tensor::randn(0f32, 1.0, (3, 7), &Device::Cpu).unwrap();
        let a = espalier_kernels::dense::linear(&x, &w, None).unwrap();
        let b = x.matmul(&w.t().unwrap()).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
    }
}
