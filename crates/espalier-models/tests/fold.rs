//! Folding empty units ([`fold_empty_units`]): MLP neurons and BERT
//! feed-forward units whose input weights are all zero become constants in
//! the consumer's bias; the smaller model's logits equal the masked one's.

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

#[test]
fn bert_empty_ffn_units_fold_into_the_output_bias() -> Result<()> {
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
    // Non-zero intermediate biases (HF's init sets them to zero).
    let mut rng = Rng::new(6);
    for l in 0..2 {
        let b: Vec<f32> = (0..24).map(|_| rng.normal() as f32).collect();
        model
            .params()
            .get(&format!("encoder.layer.{l}.intermediate.dense.bias"))?
            .set(&Tensor::new(b, &Device::Cpu)?)?;
    }
    empty_rows(&model, "encoder.layer.0.intermediate.dense.weight", &[0, 3, 10, 23])?;
    // Layer 1 loses its whole feed-forward block.
    empty_rows(&model, "encoder.layer.1.intermediate.dense.weight", &(0..24).collect::<Vec<_>>())?;
    let dev = Device::Cpu;
    let batch = Batch {
        inputs: Inputs::Tokens {
            input_ids: Tensor::new(&[[1u32, 5, 9, 2, 0], [1, 7, 3, 30, 2]], &dev)?,
            token_type_ids: Tensor::new(&[[0u32, 0, 0, 1, 1], [0, 0, 1, 1, 1]], &dev)?,
            attention_mask: Tensor::new(&[[1f32, 1., 1., 1., 0.], [1., 1., 1., 1., 1.]], &dev)?,
        },
        labels: Tensor::new(&[0u32, 2], &dev)?,
    };
    let before = logits(&model, &batch)?;
    let (small, report) = fold_empty_units(&model)?;
    let ModelConfig::Bert(c) = small.config() else { panic!("not BERT") };
    assert_eq!((c.ffn(0), c.ffn(1)), (20, 0));
    assert_eq!(report.iter().map(|r| r.folded.len()).collect::<Vec<_>>(), vec![4, 24]);
    let d = max_diff(&logits(small.as_ref(), &batch)?, &before)?;
    assert!(d < 1e-5, "folded logits differ by {d}");
    Ok(())
}
