//! Invariants of the training loop on real models and real MNIST images
//! (the embedded subset): masked weights stay exactly zero through every
//! optimizer step, every trainable parameter receives a gradient, and a
//! saved checkpoint rebuilds an identical model.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use espalier_core::{checkpoint, ParamBuilder, ParamStore, Result, Rng, Selector};
use espalier_data::mnist::{self, Flavor, Split};
use espalier_data::{Dataset, TensorDataset};
use espalier_models::{LeNet5Config, MlpConfig, Mode, Model, ModelConfig};
use espalier_train::trainer::PhasePos;
use espalier_train::{OptimizerConfig, Regularizer, StepInfo, Trainer, TrainerOptions};

fn subset(n: usize) -> TensorDataset {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist-subset");
    mnist::load(&dir, Split::Train, Flavor::Mnist)
        .unwrap_or_else(|e| panic!("embedded MNIST subset missing at {}: {e}", dir.display()))
        .take(n)
        .unwrap()
}

fn models() -> Vec<ModelConfig> {
    vec![ModelConfig::Mlp(MlpConfig::lenet_300_100()), ModelConfig::Lenet5(LeNet5Config::default())]
}

fn optimizers() -> Vec<OptimizerConfig> {
    vec![
        OptimizerConfig::Adamw { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1, no_decay: vec![] },
        OptimizerConfig::Sgd { lr: 0.05, momentum: 0.9, nesterov: true, weight_decay: 1e-3, no_decay: vec![] },
    ]
}

/// Half of every prunable weight masked, at random positions.
fn random_masks(model: &dyn Model) -> Result<BTreeMap<String, Tensor>> {
    let selector = Selector::default();
    let mut rng = Rng::derive(11, "test-masks", &[]);
    let mut masks = BTreeMap::new();
    for p in model.params().iter().filter(|p| selector.matches(p)) {
        let m: Vec<f32> = (0..p.numel()).map(|_| if rng.uniform() < 0.5 { 0.0 } else { 1.0 }).collect();
        masks.insert(p.name().to_string(), Tensor::from_vec(m, p.dims(), &Device::Cpu)?);
    }
    Ok(masks)
}

/// A step hook that checks, after every optimizer step, that the masked
/// weights are exactly zero.
struct MaskCheck {
    masks: BTreeMap<String, Tensor>,
    checked: usize,
}

impl Regularizer for MaskCheck {
    fn name(&self) -> &str {
        "mask-check"
    }
    fn on_step(&mut self, params: &ParamStore, _: &StepInfo) -> Result<()> {
        for (name, mask) in &self.masks {
            let w = params.get(name)?.tensor().flatten_all()?.to_vec1::<f32>()?;
            let k = mask.flatten_all()?.to_vec1::<f32>()?;
            let bad = w.iter().zip(&k).filter(|(w, k)| **k == 0.0 && **w != 0.0).count();
            assert_eq!(bad, 0, "{name}: {bad} masked weights are non-zero after a step");
        }
        self.checked += 1;
        Ok(())
    }
}

#[test]
fn masked_weights_stay_exactly_zero_after_every_step() -> Result<()> {
    let data = subset(512);
    for cfg in models() {
        for opt in optimizers() {
            let model = cfg.init(1, &Device::Cpu)?;
            // Warm the optimizer's moments first, so that pruning happens with
            // non-zero momentum on the weights it removes (the hard case).
            let mut trainer = Trainer::new(
                opt.build(model.params())?,
                vec![],
                TrainerOptions { clip_grad_norm: Some(5.0), ..TrainerOptions::constant(64) },
            );
            let pos = PhasePos { epoch_in_phase: 0, epochs_in_phase: 1 };
            trainer.train_epoch(model.as_ref(), &data, 0, pos, &Device::Cpu, None)?;
            let masks = random_masks(model.as_ref())?;
            model.params().set_masks(&masks)?;
            let mut check = MaskCheck { masks, checked: 0 };
            trainer.train_epoch(model.as_ref(), &data, 1, pos, &Device::Cpu, Some(&mut check))?;
            assert_eq!(check.checked, 8);
        }
    }
    Ok(())
}

#[test]
fn every_trainable_parameter_gets_a_gradient() -> Result<()> {
    let data = subset(64);
    let batch = data.batch(&(0..64).collect::<Vec<_>>(), &Device::Cpu)?;
    for cfg in models() {
        let model = cfg.init(2, &Device::Cpu)?;
        // Masked weights must still let the rest of the tensor learn.
        model.params().set_masks(&random_masks(model.as_ref())?)?;
        let out = model.forward_t(&batch, &mut Mode::Eval)?;
        let grads = out.loss.backward()?;
        for p in model.params().trainable() {
            let g = grads.get(p.tensor()).unwrap_or_else(|| panic!("{cfg:?}: no gradient for {}", p.name()));
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm > 0.0 && norm.is_finite(), "{}: gradient norm {norm}", p.name());
            if let Some(m) = p.mask() {
                // Pruned entries get exactly zero gradient.
                let pruned = g.mul(&m.affine(-1.0, 1.0)?)?.abs()?.sum_all()?.to_scalar::<f32>()?;
                assert_eq!(pruned, 0.0, "{}", p.name());
            }
        }
    }
    Ok(())
}

#[test]
fn a_checkpoint_rebuilds_an_identical_model() -> Result<()> {
    let data = subset(256);
    let batch = data.batch(&(0..256).collect::<Vec<_>>(), &Device::Cpu)?;
    let tmpdir = tempfile::tempdir().unwrap();
    let tmp = tmpdir.path();
    for cfg in models() {
        let model = cfg.init(5, &Device::Cpu)?;
        let mut trainer = Trainer::new(optimizers()[0].build(model.params())?, vec![], TrainerOptions::constant(32));
        model.params().set_masks(&random_masks(model.as_ref())?)?;
        trainer.train_epoch(
            model.as_ref(),
            &data,
            0,
            PhasePos { epoch_in_phase: 0, epochs_in_phase: 1 },
            &Device::Cpu,
            None,
        )?;
        let mut tensors = model.params().snapshot()?;
        for (k, v) in model.params().masks() {
            tensors.insert(format!("{}{k}", checkpoint::MASK_PREFIX), v);
        }
        let path = tmp.join("ck.safetensors");
        checkpoint::save(&path, &tensors, &serde_json::json!({ "model": model.config() }))?;

        let ck = checkpoint::load(&path, &Device::Cpu)?;
        let cfg2: ModelConfig = serde_json::from_value(ck.header["model"].clone()).unwrap();
        assert_eq!(cfg2, cfg);
        let pb = ParamBuilder::from_tensors(ck.params(), path.display().to_string(), DType::F32, &Device::Cpu);
        let copy = cfg2.build(&pb)?;
        assert!(pb.finish().1.is_empty());
        copy.params().set_masks(&ck.masks())?;
        let a = model.forward_t(&batch, &mut Mode::Eval)?.logits.flatten_all()?.to_vec1::<f32>()?;
        let b = copy.forward_t(&batch, &mut Mode::Eval)?.logits.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(a, b);
    }
    Ok(())
}
