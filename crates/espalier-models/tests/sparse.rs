//! Sparse inference: a model whose linear layers are packed sparse
//! ([`Model::pack_sparse`]) gives the masked dense model's logits in
//! [`Mode::Infer`] (MLP, LeNet-5, a small BERT; unstructured 50% and 90%,
//! and 2:4), never touches training or evaluation passes, and runs dense
//! again once a weight changes.

use candle_core::{Device, Tensor};
use espalier_core::{Batch, Inputs, Param, ParamKind, Result, Rng};
use espalier_models::bert::{Bert, BertConfig, BertTask};
use espalier_models::{Format, LeNet5, LeNet5Config, Mlp, MlpConfig, Mode, Model, PackOptions};

/// Every layer packed sparse, whatever its density.
const ALWAYS: PackOptions = PackOptions {
    max_density: 1.0,
    max_nm_density: 1.0,
    detect_nm: true,
    small_rows: 0,
    small_max_density: 0.0,
    small_max_nm_density: 0.0,
};

#[derive(Clone, Copy, Debug)]
enum Pattern {
    /// Each weight kept with this probability.
    Keep(f64),
    /// 2 of every 4 inputs kept.
    TwoFour,
}

/// A random mask of `pattern` for every prunable 2-D weight.
fn mask_model(model: &dyn Model, pattern: Pattern, seed: u64) -> Result<()> {
    let mut rng = Rng::new(seed);
    let weights: Vec<&Param> =
        model.params().iter().filter(|p| p.kind() == ParamKind::Weight && p.dims().len() == 2).collect();
    for p in weights {
        let (out, inp) = (p.dims()[0], p.dims()[1]);
        let mut m = vec![0f32; out * inp];
        match pattern {
            Pattern::Keep(keep) => m.iter_mut().for_each(|v| *v = (rng.uniform() < keep) as u8 as f32),
            Pattern::TwoFour => {
                for block in m.chunks_exact_mut(4) {
                    let mut order = [0, 1, 2, 3];
                    rng.shuffle(&mut order);
                    block[order[0]] = 1.0;
                    block[order[1]] = 1.0;
                }
            }
        }
        p.set_mask(Some(Tensor::from_vec(m, (out, inp), &Device::Cpu)?))?;
    }
    Ok(())
}

fn rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    let (a, b) = (a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
    assert_eq!(a.len(), b.len());
    Ok(a.iter().zip(&b).map(|(x, y)| (x - y).abs() / (1.0 + y.abs())).fold(0.0, f32::max))
}

fn logits(model: &dyn Model, batch: &Batch, mode: &mut Mode) -> Result<Tensor> {
    Ok(model.forward_t(batch, mode)?.logits)
}

/// Masks `model`, packs it with every layer sparse, and compares the
/// inference logits with the masked dense ones; returns the formats chosen.
fn check_model(model: &dyn Model, batch: &Batch, pattern: Pattern, what: &str) -> Result<Vec<Format>> {
    mask_model(model, pattern, 11)?;
    let dense = logits(model, batch, &mut Mode::Eval)?;
    let dense_infer = logits(model, batch, &mut Mode::Infer)?;
    let packed = model.pack_sparse(&ALWAYS)?;
    assert!(!packed.is_empty(), "{what}: nothing packed");
    let sparse = logits(model, batch, &mut Mode::Infer)?;
    let d = rel_diff(&sparse, &dense)?;
    assert!(d < 1e-4, "{what} {pattern:?}: sparse logits differ from the masked dense ones by {d}");
    assert!(rel_diff(&dense_infer, &dense)? < 1e-5, "{what}: dense inference");
    // Evaluation passes do not use the packed copies: bit-identical.
    assert_eq!(rel_diff(&logits(model, batch, &mut Mode::Eval)?, &dense)?, 0.0, "{what}: eval changed");
    for p in &packed {
        match pattern {
            Pattern::TwoFour => assert_eq!(p.format, Format::Nm { n: 2, m: 4 }, "{what}: {}", p.name),
            // (a small, very sparse layer may happen to be 1:4 or 1:8)
            Pattern::Keep(_) => assert_ne!(p.format, Format::Dense, "{what}: {}", p.name),
        }
        assert!(p.bytes > 0 || p.density == 0.0, "{what}: {}", p.name);
    }
    model.unpack_sparse();
    Ok(packed.iter().map(|p| p.format).collect())
}

fn image_batch(shape: &[usize], classes: u32, seed: u64) -> Result<Batch> {
    let mut rng = Rng::new(seed);
    let n: usize = shape.iter().product();
    let x = Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), shape, &Device::Cpu)?;
    let labels: Vec<u32> = (0..shape[0] as u32).map(|i| i % classes).collect();
    Ok(Batch { inputs: Inputs::Dense(x), labels: Tensor::new(labels, &Device::Cpu)? })
}

fn mlp() -> Result<Mlp> {
    let cfg = MlpConfig { input_dim: 40, hidden: vec![64, 32], num_classes: 5, ..MlpConfig::lenet_300_100() };
    Mlp::new(cfg, &espalier_core::ParamBuilder::from_seed(1, candle_core::DType::F32, &Device::Cpu))
}

#[test]
fn mlp_sparse_logits_match_masked_dense() -> Result<()> {
    for pattern in [Pattern::Keep(0.5), Pattern::Keep(0.1), Pattern::TwoFour] {
        // One example and a batch (the single-row and tiled kernels).
        for rows in [1, 70] {
            check_model(&mlp()?, &image_batch(&[rows, 40], 5, 2)?, pattern, &format!("mlp, {rows} rows"))?;
        }
    }
    Ok(())
}

#[test]
fn lenet_sparse_logits_match_masked_dense() -> Result<()> {
    for pattern in [Pattern::Keep(0.5), Pattern::Keep(0.1), Pattern::TwoFour] {
        // A fresh model each time: masking zeroes the stored weights.
        let model = LeNet5::new(
            LeNet5Config::default(),
            &espalier_core::ParamBuilder::from_seed(2, candle_core::DType::F32, &Device::Cpu),
        )?;
        let formats = check_model(&model, &image_batch(&[9, 1, 28, 28], 10, 3)?, pattern, "lenet")?;
        assert_eq!(formats.len(), 3, "fc1, fc2, head");
    }
    Ok(())
}

fn tiny_bert() -> Result<Bert> {
    let cfg = BertConfig {
        vocab_size: 40,
        hidden_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        intermediate_size: 48,
        max_position_embeddings: 80,
        ..BertConfig::base(BertTask::Classification { num_labels: 3 })
    };
    Bert::init(cfg, 4, &Device::Cpu)
}

fn token_batch(b: usize, t: usize, seed: u64) -> Result<Batch> {
    let mut rng = Rng::new(seed);
    let ids: Vec<u32> = (0..b * t).map(|_| rng.below(40) as u32).collect();
    let tt: Vec<u32> = (0..b * t).map(|i| ((i % t) >= t / 2) as u32).collect();
    // The last example is padded.
    let mask: Vec<f32> = (0..b * t).map(|i| if i / t == b - 1 && i % t >= t - 3 { 0.0 } else { 1.0 }).collect();
    let dev = Device::Cpu;
    Ok(Batch {
        inputs: Inputs::Tokens {
            input_ids: Tensor::from_vec(ids, (b, t), &dev)?,
            token_type_ids: Tensor::from_vec(tt, (b, t), &dev)?,
            attention_mask: Tensor::from_vec(mask, (b, t), &dev)?,
        },
        labels: Tensor::new((0..b as u32).map(|i| i % 3).collect::<Vec<_>>(), &dev)?,
    })
}

#[test]
fn bert_sparse_logits_match_masked_dense() -> Result<()> {
    for pattern in [Pattern::Keep(0.5), Pattern::Keep(0.1), Pattern::TwoFour] {
        // 2 × 9 tokens (narrow tiles and single rows) and 3 × 70 (wide tiles).
        for (b, t) in [(2, 9), (3, 70)] {
            let model = tiny_bert()?;
            let formats = check_model(&model, &token_batch(b, t, 5)?, pattern, &format!("bert {b}×{t}"))?;
            // Q, K, V, attention output, intermediate, output per layer.
            assert_eq!(formats.len(), 2 * 6);
        }
    }
    Ok(())
}

#[test]
fn packed_layers_go_stale_when_weights_change() -> Result<()> {
    let model = mlp()?;
    let batch = image_batch(&[8, 40], 5, 6)?;
    mask_model(&model, Pattern::Keep(0.2), 7)?;
    let packed = model.pack_sparse(&ALWAYS)?;
    assert!(packed.iter().all(|p| p.format == Format::Csr));
    // A new value of one weight (through the parameter): that layer runs dense.
    let p = model.params().get("fc1.weight")?;
    p.set(&(p.tensor() * 2.0)?)?;
    let sparse = logits(&model, &batch, &mut Mode::Infer)?;
    let dense = logits(&model, &batch, &mut Mode::Eval)?;
    assert!(rel_diff(&sparse, &dense)? < 1e-5, "a stale packed copy was used");
    // A new mask, too.
    mask_model(&model, Pattern::Keep(0.5), 8)?;
    let dense = logits(&model, &batch, &mut Mode::Eval)?;
    assert!(rel_diff(&logits(&model, &batch, &mut Mode::Infer)?, &dense)? < 1e-5, "stale after a new mask");
    // Packing again picks the change up.
    model.pack_sparse(&ALWAYS)?;
    assert!(rel_diff(&logits(&model, &batch, &mut Mode::Infer)?, &dense)? < 1e-4);
    Ok(())
}

#[test]
fn default_options_keep_dense_layers_dense() -> Result<()> {
    let model = tiny_bert()?;
    // Unmasked: every layer stays dense.
    let packed = model.pack_sparse(&PackOptions::default())?;
    assert!(packed.iter().all(|p| p.format == Format::Dense && p.density > 0.9), "{packed:?}");
    // 90% sparse: every layer packed.
    mask_model(&model, Pattern::Keep(0.1), 9)?;
    let packed = model.pack_sparse(&PackOptions::default())?;
    assert!(packed.iter().all(|p| p.format == Format::Csr), "{packed:?}");
    assert!(packed[0].name.ends_with("attention.self.query.weight"), "{}", packed[0].name);
    Ok(())
}

/// A dense layer in [`Mode::Infer`] on 16–128 rows runs on a transposed copy
/// of its masked weight: the same outputs as the training-layout product on
/// every row count, and a new copy once the weight or its mask changes.
#[test]
fn the_transposed_inference_copy_follows_the_weight() -> Result<()> {
    use espalier_core::ParamBuilder;
    use espalier_models::layers::{Linear, TRANSPOSED_ROWS};
    let pb = ParamBuilder::from_seed(8, candle_core::DType::F32, &Device::Cpu);
    let layer = Linear::new(&pb, 40, 70, true)?;
    let mut rng = Rng::new(9);
    for rows in [1, *TRANSPOSED_ROWS.start(), 50, *TRANSPOSED_ROWS.end(), 300] {
        let x: Vec<f32> = (0..rows * 40).map(|_| rng.normal() as f32).collect();
        let x = Tensor::from_vec(x, (rows, 40), &Device::Cpu)?;
        assert!(rel_diff(&layer.forward_infer(&x)?, &layer.forward(&x)?)? < 1e-5, "{rows} rows");
        // A new weight, then a mask: the copy is remade.
        let w = (layer.weight.tensor() * 0.5)?;
        layer.weight.set(&w)?;
        assert!(rel_diff(&layer.forward_infer(&x)?, &layer.forward(&x)?)? < 1e-5, "{rows} rows, new weight");
        let m: Vec<f32> = (0..70 * 40).map(|i| (i % 3 != 0) as u8 as f32).collect();
        layer.weight.set_mask(Some(Tensor::from_vec(m, (70, 40), &Device::Cpu)?))?;
        assert!(rel_diff(&layer.forward_infer(&x)?, &layer.forward(&x)?)? < 1e-5, "{rows} rows, masked");
        layer.weight.set_mask(None)?;
    }
    Ok(())
}
