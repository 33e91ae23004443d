//! Folding empty units ([`fold_empty_units`]): MLP neurons and BERT
//! feed-forward units whose input weights are all zero, and attention heads
//! whose value weights are all zero, become constants in the consumer's
//! bias; the smaller model's logits equal the masked one's.

use candle_core::{DType, Device, Tensor};
use espalier_core::{Batch, Inputs, ParamBuilder, Result, Rng};
use espalier_models::bert::{Bert, BertConfig, BertTask};
use espalier_models::{fold_empty_units, Activation, Mlp, MlpConfig, Mode, Model, ModelConfig};

/// Zeroes (by mask) the rows `rows` of the 2-D parameter `name`.
fn empty_rows(model: &dyn Model, name: &str, rows: &[usize]) -> Result<()> {
    let p = model.params().get(name)?;
    let (out, inp) = (p.dims()[0], p.dims()[1]);
    let m: Vec<f32> = (0..out * inp).map(|e| if rows.contains(&(e / inp)) { 0.0 } else { 1.0 }).collect();
    p.set_mask(Some(Tensor::from_vec(m, (out, inp), &Device::Cpu)?))
}

/// Zeroes (by mask) the columns `cols` of the 2-D parameter `name`.
fn empty_cols(model: &dyn Model, name: &str, cols: &[usize]) -> Result<()> {
    let p = model.params().get(name)?;
    let (out, inp) = (p.dims()[0], p.dims()[1]);
    let m: Vec<f32> = (0..out * inp).map(|e| if cols.contains(&(e % inp)) { 0.0 } else { 1.0 }).collect();
    p.set_mask(Some(Tensor::from_vec(m, (out, inp), &Device::Cpu)?))
}

fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?)
}

fn logits(model: &dyn Model, batch: &Batch) -> Result<Tensor> {
    Ok(model.forward_t(batch, &mut Mode::Eval)?.logits)
}

#[test]
fn mlp_empty_neurons_fold_into_the_next_bias() -> Result<()> {
    let mut rng = Rng::new(1);
    let x: Vec<f32> = (0..6 * 20).map(|_| rng.normal() as f32).collect();
    let batch = Batch {
        inputs: Inputs::Dense(Tensor::from_vec(x, (6, 20), &Device::Cpu)?),
        labels: Tensor::new(&[0u32, 1, 2, 0, 1, 2], &Device::Cpu)?,
    };
    for activation in [Activation::Relu, Activation::Sigmoid, Activation::Gelu] {
        let cfg = MlpConfig { input_dim: 20, hidden: vec![16, 8], num_classes: 3, activation };
        let model = Mlp::new(cfg, &ParamBuilder::from_seed(2, DType::F32, &Device::Cpu))?;
        // Some biases positive, some negative (ReLU(b) zero or not).
        model.params().get("fc1.bias")?.set(&Tensor::new(
            &[0.5f32, -0.3, 0.2, 0.7, -0.1, 0.4, 0.9, -0.6, 0.3, 0.1, 0.2, 0.3, -0.4, 0.5, 0.6, 0.7],
            &Device::Cpu,
        )?)?;
        empty_rows(&model, "fc1.weight", &[1, 4, 6, 7])?;
        empty_rows(&model, "fc2.weight", &[2, 5])?;
        let before = logits(&model, &batch)?;
        let (small, report) = fold_empty_units(&model)?;
        let ModelConfig::Mlp(c) = small.config() else { panic!("not an MLP") };
        assert_eq!(c.hidden, vec![12, 6], "{activation:?}");
        assert_eq!(report.len(), 2);
        assert_eq!(report[0].folded, vec![1, 4, 6, 7]);
        assert_eq!(report[1].folded, vec![2, 5]);
        let d = max_diff(&logits(small.as_ref(), &batch)?, &before)?;
        assert!(d < 1e-5, "{activation:?}: folded logits differ by {d}");
    }
    Ok(())
}

#[test]
fn mlp_keeps_one_unit_of_an_empty_layer() -> Result<()> {
    let cfg = MlpConfig { input_dim: 6, hidden: vec![4], num_classes: 2, activation: Activation::Relu };
    let model = Mlp::new(cfg, &ParamBuilder::from_seed(3, DType::F32, &Device::Cpu))?;
    empty_rows(&model, "fc1.weight", &[0, 1, 2, 3])?;
    let x = Tensor::ones((2, 6), DType::F32, &Device::Cpu)?;
    let batch = Batch { inputs: Inputs::Dense(x), labels: Tensor::new(&[0u32, 1], &Device::Cpu)? };
    let before = logits(&model, &batch)?;
    let (small, report) = fold_empty_units(&model)?;
    assert_eq!(report[0].folded, vec![1, 2, 3]);
    assert!(max_diff(&logits(small.as_ref(), &batch)?, &before)? < 1e-5);
    Ok(())
}

/// A 2-layer BERT (hidden 16, 2 heads, FFN 24) with non-zero intermediate
/// and value biases (HF's init sets biases to zero), and two sequences.
fn small_bert() -> Result<(Bert, Batch)> {
    let cfg = BertConfig {
        vocab_size: 40,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 24,
        max_position_embeddings: 10,
        ..BertConfig::base(BertTask::Classification { num_labels: 3 })
    };
    let model = Bert::init(cfg, 5, &Device::Cpu)?;
    let mut rng = Rng::new(6);
    for l in 0..2 {
        for (name, n) in [("intermediate.dense.bias", 24), ("attention.self.value.bias", 16)] {
            let b: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
            model.params().get(&format!("encoder.layer.{l}.{name}"))?.set(&Tensor::new(b, &Device::Cpu)?)?;
        }
    }
    let dev = Device::Cpu;
    let batch = Batch {
        inputs: Inputs::Tokens {
            input_ids: Tensor::new(&[[1u32, 5, 9, 2, 0], [1, 7, 3, 30, 2]], &dev)?,
            token_type_ids: Tensor::new(&[[0u32, 0, 0, 1, 1], [0, 0, 1, 1, 1]], &dev)?,
            attention_mask: Tensor::new(&[[1f32, 1., 1., 1., 0.], [1., 1., 1., 1., 1.]], &dev)?,
        },
        labels: Tensor::new(&[0u32, 2], &dev)?,
    };
    Ok((model, batch))
}

#[test]
fn bert_empty_ffn_units_fold_into_the_output_bias() -> Result<()> {
    let (model, batch) = small_bert()?;
    empty_rows(&model, "encoder.layer.0.intermediate.dense.weight", &[0, 3, 10, 23])?;
    // Layer 1 loses its whole feed-forward block.
    empty_rows(&model, "encoder.layer.1.intermediate.dense.weight", &(0..24).collect::<Vec<_>>())?;
    let before = logits(&model, &batch)?;
    let (small, report) = fold_empty_units(&model)?;
    let ModelConfig::Bert(c) = small.config() else { panic!("not BERT") };
    assert_eq!((c.ffn(0), c.ffn(1)), (20, 0));
    assert_eq!(report.iter().map(|r| r.folded.len()).collect::<Vec<_>>(), vec![4, 24]);
    let d = max_diff(&logits(small.as_ref(), &batch)?, &before)?;
    assert!(d < 1e-5, "folded logits differ by {d}");
    Ok(())
}

#[test]
fn bert_heads_with_empty_values_fold_into_the_attention_output_bias() -> Result<()> {
    let (model, batch) = small_bert()?;
    // Head 1 of layer 0 (value rows 8..16) and both heads of layer 1 lose
    // their value weights; their query and key weights stay, and do not
    // matter: softmax rows sum to one, so each such head outputs b_v.
    // Head 0 of layer 0 loses only three of its value rows: not constant.
    empty_rows(&model, "encoder.layer.0.attention.self.value.weight", &[0, 1, 2, 8, 9, 10, 11, 12, 13, 14, 15])?;
    empty_rows(&model, "encoder.layer.1.attention.self.value.weight", &(0..16).collect::<Vec<_>>())?;
    let before = logits(&model, &batch)?;
    let (small, report) = fold_empty_units(&model)?;
    let ModelConfig::Bert(c) = small.config() else { panic!("not BERT") };
    assert_eq!((c.heads(0), c.heads(1)), (1, 0));
    let heads: Vec<_> = report.iter().filter(|r| r.set.ends_with("heads")).map(|r| r.folded.clone()).collect();
    assert_eq!(heads, vec![vec![1], vec![0, 1]]);
    let d = max_diff(&logits(small.as_ref(), &batch)?, &before)?;
    assert!(d < 1e-5, "folded logits differ by {d}");
    // A head's value bias matters: without the fold's shift the logits move.
    let plain = espalier_models::shrink(
        &model,
        &report.iter().map(|r| (r.set.clone(), (0..r.size).filter(|j| !r.folded.contains(j)).collect())).collect(),
    )?;
    assert!(max_diff(&logits(plain.as_ref(), &batch)?, &before)? > 1e-3);
    Ok(())
}

#[test]
fn units_whose_consumer_columns_are_empty_are_removed() -> Result<()> {
    // MLP: hidden neurons 0 and 5 of fc1 feed nothing (fc2's columns).
    let cfg = MlpConfig { input_dim: 10, hidden: vec![8, 6], num_classes: 3, activation: Activation::Gelu };
    let model = Mlp::new(cfg, &ParamBuilder::from_seed(4, DType::F32, &Device::Cpu))?;
    empty_cols(&model, "fc2.weight", &[0, 5])?;
    let mut rng = Rng::new(7);
    let x: Vec<f32> = (0..4 * 10).map(|_| rng.normal() as f32).collect();
    let batch = Batch {
        inputs: Inputs::Dense(Tensor::from_vec(x, (4, 10), &Device::Cpu)?),
        labels: Tensor::new(&[0u32, 1, 2, 0], &Device::Cpu)?,
    };
    let before = logits(&model, &batch)?;
    let (small, report) = fold_empty_units(&model)?;
    assert_eq!(report.len(), 1);
    assert_eq!(report[0].folded, vec![0, 5]);
    assert!(max_diff(&logits(small.as_ref(), &batch)?, &before)? < 1e-5);

    // BERT: head 0 of layer 1 feeds nothing (its 8 columns of the attention
    // output), FFN units 2 and 7 of layer 0 likewise.
    let (bert, batch) = small_bert()?;
    empty_cols(&bert, "encoder.layer.1.attention.output.dense.weight", &(0..8).collect::<Vec<_>>())?;
    empty_cols(&bert, "encoder.layer.0.output.dense.weight", &[2, 7])?;
    let before = logits(&bert, &batch)?;
    let (small, report) = fold_empty_units(&bert)?;
    let ModelConfig::Bert(c) = small.config() else { panic!("not BERT") };
    assert_eq!((c.heads(0), c.heads(1), c.ffn(0), c.ffn(1)), (2, 1, 22, 24));
    assert_eq!(report.iter().map(|r| r.folded.clone()).collect::<Vec<_>>(), vec![vec![2, 7], vec![0]]);
    assert!(max_diff(&logits(small.as_ref(), &batch)?, &before)? < 1e-5);
    Ok(())
}
