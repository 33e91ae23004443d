//! BatchNorm, max-pooling, ResNet and VGG: batch statistics against a hand
//! computation, running statistics through a training step and a checkpoint,
//! evaluation independent of the batch, gradients against finite
//! differences, shapes and parameter counts against torchvision's, every
//! parameter learning, masks holding, and a tiny ResNet that learns.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use espalier_core::{checkpoint, Batch, Inputs, ParamBuilder, ParamKind, Result, Rng};
use espalier_models::pool::{max_pool2d, reference};
use espalier_models::{BatchNorm2d, Mode, Model, ModelConfig, ResNetConfig, ShortcutKind, Stem, VggConfig};

const CPU: Device = Device::Cpu;

fn normal(shape: &[usize], seed: u64) -> Result<Tensor> {
    let mut rng = Rng::new(seed);
    let n = shape.iter().product();
    Ok(Tensor::from_vec((0..n).map(|_| rng.normal() as f32).collect::<Vec<_>>(), shape, &CPU)?)
}

fn images(b: usize, c: usize, hw: usize, seed: u64) -> Result<Batch> {
    let x = normal(&[b, c, hw, hw], seed)?;
    let labels = Tensor::from_iter((0..b as u32).map(|i| i % 10), &CPU)?;
    Ok(Batch { inputs: Inputs::Dense(x), labels })
}

fn vec1(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
    Ok((a - b)?.abs()?.flatten_all()?.max(0)?.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

/// One plain SGD step on the trainable parameters; returns the loss.
fn sgd_step(model: &dyn Model, batch: &Batch, lr: f64, seed: u64) -> Result<f32> {
    let mut rng = Rng::new(seed);
    let out = model.forward_t(batch, &mut Mode::Train(&mut rng))?;
    let grads = out.loss.backward()?;
    for p in model.params().trainable() {
        if let Some(g) = grads.get(p.tensor()) {
            p.set(&(p.tensor() - (g * lr)?)?)?;
        }
    }
    model.params().enforce_masks()?;
    Ok(out.loss.to_scalar::<f32>()?)
}

// ---------------------------------------------------------------------------
// BatchNorm2d

#[test]
fn batchnorm_train_mode_normalises_with_batch_statistics() -> Result<()> {
    let pb = ParamBuilder::from_seed(0, DType::F32, &CPU);
    let bn = BatchNorm2d::new(&pb.pp("bn"), 2)?;
    bn.weight.set(&Tensor::new(&[2f32, 0.5], &CPU)?)?;
    bn.bias.set(&Tensor::new(&[1f32, -1.0], &CPU)?)?;
    // (B=2, C=2, H=1, W=3): channel 0 holds 1..6, channel 1 holds squares.
    let vals = [[1f32, 2., 3.], [0., 1., 4.], [4., 5., 6.], [9., 16., 25.]];
    let x = Tensor::new(&vals, &CPU)?.reshape((2, 2, 1, 3))?;
    let y = vec1(&bn.forward(&x, true)?.permute((1, 0, 2, 3))?)?;
    // By hand, per channel over its 6 values: biased variance for y,
    // unbiased for the running estimate.
    let channels = [[1f64, 2., 3., 4., 5., 6.], [0., 1., 4., 9., 16., 25.]];
    let (gamma, beta) = ([2f64, 0.5], [1f64, -1.0]);
    let mut expected = Vec::new();
    let mut running = (Vec::new(), Vec::new());
    for (c, v) in channels.iter().enumerate() {
        let mean = v.iter().sum::<f64>() / 6.0;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 6.0;
        expected.extend(v.iter().map(|x| (x - mean) / (var + 1e-5).sqrt() * gamma[c] + beta[c]));
        running.0.push(0.1 * mean);
        running.1.push(0.9 + 0.1 * var * 6.0 / 5.0);
    }
    for (a, e) in y.iter().zip(&expected) {
        assert!((*a as f64 - e).abs() < 1e-5, "y {y:?}\nexpected {expected:?}");
    }
    for (buf, exp) in [(&bn.running_mean, &running.0), (&bn.running_var, &running.1)] {
        let got = vec1(buf.tensor())?;
        for (a, e) in got.iter().zip(exp.iter()) {
            assert!((*a as f64 - e).abs() < 1e-5, "{}: {got:?} vs {exp:?}", buf.name());
        }
        assert_eq!(buf.kind(), ParamKind::Buffer);
        assert!(!buf.trainable());
    }
    // Eval mode with the updated running statistics: (x − r_μ)/√(r_σ² + ε)·γ + β.
    let y_eval = vec1(&bn.forward(&x, false)?.permute((1, 0, 2, 3))?)?;
    for (c, v) in channels.iter().enumerate() {
        for (i, x) in v.iter().enumerate() {
            let e = (x - running.0[c]) / (running.1[c] + 1e-5).sqrt() * gamma[c] + beta[c];
            assert!((y_eval[c * 6 + i] as f64 - e).abs() < 1e-4, "eval c{c} i{i}: {} vs {e}", y_eval[c * 6 + i]);
        }
    }
    // Eval mode leaves the running statistics alone.
    assert_eq!(vec1(bn.running_mean.tensor())?.len(), 2);
    let before = vec1(bn.running_var.tensor())?;
    bn.forward(&x, false)?;
    assert_eq!(vec1(bn.running_var.tensor())?, before);
    Ok(())
}

/// Train-mode BN differentiated through its batch statistics, against central
/// differences in f64 (detaching μ or σ² would break the agreement).
#[test]
fn batchnorm_gradient_flows_through_the_batch_statistics() -> Result<()> {
    let pb = ParamBuilder::from_seed(3, DType::F64, &CPU);
    let bn = BatchNorm2d::new(&pb.pp("bn"), 2)?;
    bn.weight.set(&Tensor::new(&[1.5f64, -0.7], &CPU)?)?;
    let x0 = normal(&[3, 2, 2, 2], 4)?.to_dtype(DType::F64)?;
    let r = normal(&[3, 2, 2, 2], 5)?.to_dtype(DType::F64)?;
    let f = |x: &Tensor| -> Result<Tensor> { Ok(bn.forward(x, true)?.mul(&r)?.sum_all()?) };
    let x = Var::from_tensor(&x0)?;
    let grads = f(x.as_tensor())?.backward()?;
    let analytic = grads.get(x.as_tensor()).expect("dx").flatten_all()?.to_vec1::<f64>()?;
    let gamma_grad = grads.get(bn.weight.tensor()).expect("dγ");
    assert!(gamma_grad.abs()?.sum_all()?.to_scalar::<f64>()? > 0.0);
    let flat = x0.flatten_all()?.to_vec1::<f64>()?;
    let eps = 1e-5;
    for i in 0..flat.len() {
        let at = |d: f64| -> Result<f64> {
            let mut v = flat.clone();
            v[i] += d;
            f(&Tensor::from_vec(v, x0.shape(), &CPU)?)?.to_scalar::<f64>().map_err(Into::into)
        };
        let numeric = (at(eps)? - at(-eps)?) / (2.0 * eps);
        assert!((numeric - analytic[i]).abs() < 1e-6, "dx[{i}]: {} vs {numeric}", analytic[i]);
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Max-pooling

/// Inputs whose values are at least 0.1 apart, so a perturbation of 0.01
/// never changes which element wins a window: central differences are exact.
fn spaced(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let perm = Rng::new(seed).permutation(n);
    Ok(Tensor::from_vec(perm.iter().map(|&i| i as f32 * 0.1 - 3.0).collect::<Vec<_>>(), shape, &CPU)?)
}

#[test]
fn max_pool_gradient_matches_finite_differences() -> Result<()> {
    let shape = [2, 2, 7, 6];
    let x0 = spaced(&shape, 1)?;
    for (k, s, p) in [(3, 2, 1), (2, 2, 0), (3, 1, 1), (2, 2, 1)] {
        type Pool = fn(&Tensor, usize, usize, usize) -> Result<Tensor>;
        for (name, pool) in [("kernel", max_pool2d as Pool), ("reference", reference::max_pool2d as Pool)] {
            let out_shape = pool(&x0, k, s, p)?.dims().to_vec();
            let r = normal(&out_shape, 7)?;
            // The sum in f64, so that central differences see no rounding.
            let r64 = r.to_dtype(DType::F64)?;
            let f = |x: &Tensor| -> Result<f64> {
                Ok(pool(x, k, s, p)?.to_dtype(DType::F64)?.mul(&r64)?.sum_all()?.to_scalar::<f64>()?)
            };
            let x = Var::from_tensor(&x0)?;
            let loss = pool(x.as_tensor(), k, s, p)?.mul(&r)?.sum_all()?;
            let analytic = vec1(loss.backward()?.get(x.as_tensor()).expect("dx"))?;
            let flat = vec1(&x0)?;
            let eps = 0.01f32;
            for i in 0..flat.len() {
                let at = |d: f32| -> Result<f64> {
                    let mut v = flat.clone();
                    v[i] += d;
                    f(&Tensor::from_vec(v, &shape, &CPU)?)
                };
                let numeric = ((at(eps)? - at(-eps)?) / (2.0 * eps as f64)) as f32;
                assert!(
                    (numeric - analytic[i]).abs() < 1e-3,
                    "{name} k={k} s={s} p={p} dx[{i}]: {} vs {numeric}",
                    analytic[i]
                );
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// ResNet and VGG

fn count(cfg: &ModelConfig) -> Result<usize> {
    Ok(cfg.init(0, &CPU)?.params().numel())
}

#[test]
fn resnet20_shapes_names_and_parameter_count() -> Result<()> {
    let cfg = ModelConfig::Resnet(ResNetConfig::cifar(20));
    cfg.validate("model").map_err(espalier_core::Error::msg)?;
    let model = cfg.init(0, &CPU)?;
    // He et al. 2016, Table 6: 0.27M parameters (option A adds none).
    assert_eq!(model.params().numel(), 269_722);
    let out = model.forward_t(&images(4, 3, 32, 1)?, &mut Mode::Eval)?;
    assert_eq!(out.logits.dims(), [4, 10]);
    for name in [
        "conv1.weight",
        "bn1.weight",
        "bn1.running_mean",
        "layer1.0.conv1.weight",
        "layer1.0.bn1.running_mean",
        "layer2.0.conv1.weight",
        "layer3.2.bn2.running_var",
        "fc.weight",
        "fc.bias",
    ] {
        model.params().get(name)?;
    }
    assert_eq!(model.params().get("layer2.0.conv1.weight")?.dims(), [32, 16, 3, 3]);
    assert!(model.params().get("layer2.0.shortcut.0.weight").is_err(), "option A has no projection");
    assert!(model.params().get("fc.weight")?.is_head());
    assert!(!model.params().get("layer3.2.conv2.weight")?.is_head());
    // 18 + 1 convolutions with BN, 4 tensors each (2 trainable + 2 buffers), and fc.
    assert_eq!(model.params().len(), 19 * 5 + 2);
    assert_eq!(model.params().iter().filter(|p| p.kind() == ParamKind::Buffer).count(), 19 * 2);

    // Option B: 1×1 projections where the shape changes.
    let b = ResNetConfig { shortcut: Some(ShortcutKind::B), ..ResNetConfig::cifar(20) };
    let model_b = ModelConfig::Resnet(b).init(0, &CPU)?;
    assert_eq!(model_b.params().numel(), 272_474);
    assert_eq!(model_b.params().get("layer2.0.shortcut.0.weight")?.dims(), [32, 16, 1, 1]);
    model_b.params().get("layer3.0.shortcut.1.running_mean")?;

    // MNIST: one input channel, 28×28.
    let mnist = ResNetConfig { in_channels: 1, ..ResNetConfig::cifar(20) };
    let m = ModelConfig::Resnet(mnist).init(0, &CPU)?;
    assert_eq!(m.forward_t(&images(2, 1, 28, 2)?, &mut Mode::Eval)?.logits.dims(), [2, 10]);
    let e = m.forward_t(&images(2, 3, 28, 2)?, &mut Mode::Eval).unwrap_err().to_string();
    assert!(e.contains("in_channels = 1"), "{e}");

    // Depths of the paper: 56 and 110 (0.85M and 1.7M).
    assert_eq!(count(&ModelConfig::Resnet(ResNetConfig::cifar(56)))?, 853_018);
    assert_eq!(count(&ModelConfig::Resnet(ResNetConfig::cifar(110)))?, 1_727_962);
    Ok(())
}

#[test]
fn imagenet_resnets_match_torchvision_counts_and_run_both_stems() -> Result<()> {
    // torchvision's resnet18/34/50 parameter counts (1000 classes).
    for (depth, n) in [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)] {
        assert_eq!(count(&ModelConfig::Resnet(ResNetConfig::imagenet(depth)))?, n, "ResNet-{depth}");
    }
    let r50 = ResNetConfig { num_classes: 10, ..ResNetConfig::imagenet(50) };
    let m = ModelConfig::Resnet(r50.clone()).init(0, &CPU)?;
    assert_eq!(m.params().get("layer1.0.downsample.0.weight")?.dims(), [256, 64, 1, 1]);
    assert_eq!(m.params().get("layer2.0.conv2.weight")?.dims(), [128, 128, 3, 3]);
    assert_eq!(m.params().get("conv1.weight")?.dims(), [64, 3, 7, 7]);
    // 7×7/2 stem + max-pool: 32 → 16 → 8, then 8 → 4 → 2 → 1.
    assert_eq!(m.forward_t(&images(2, 3, 32, 3)?, &mut Mode::Eval)?.logits.dims(), [2, 10]);
    let small = ResNetConfig { stem: Some(Stem::Cifar), num_classes: 10, ..ResNetConfig::imagenet(18) };
    let m = ModelConfig::Resnet(small).init(0, &CPU)?;
    assert_eq!(m.params().get("conv1.weight")?.dims(), [64, 3, 3, 3]);
    assert_eq!(m.forward_t(&images(2, 3, 16, 3)?, &mut Mode::Eval)?.logits.dims(), [2, 10]);
    Ok(())
}

#[test]
fn vgg_counts_names_and_shapes() -> Result<()> {
    // The CIFAR VGG-16/19 with BN and one linear classifier.
    assert_eq!(count(&ModelConfig::Vgg(VggConfig::cifar(16)))?, 14_728_266);
    let v19 = VggConfig { num_classes: 100, ..VggConfig::cifar(19) };
    let m = ModelConfig::Vgg(v19).init(0, &CPU)?;
    assert_eq!(m.params().numel(), 20_086_692);
    // torchvision's Sequential indices: conv 0, bn 1, relu 2, conv 3, bn 4, relu 5, pool 6, conv 7.
    assert_eq!(m.params().get("features.0.weight")?.dims(), [64, 3, 3, 3]);
    m.params().get("features.1.running_var")?;
    assert_eq!(m.params().get("features.7.weight")?.dims(), [128, 64, 3, 3]);
    assert_eq!(m.params().get("classifier.weight")?.dims(), [100, 512]);
    assert!(m.params().get("classifier.weight")?.is_head());
    assert_eq!(m.forward_t(&images(2, 3, 32, 4)?, &mut Mode::Eval)?.logits.dims(), [2, 100]);
    let e = m.forward_t(&images(2, 3, 28, 4)?, &mut Mode::Eval).unwrap_err().to_string();
    assert!(e.contains("32×32"), "{e}");
    Ok(())
}

#[test]
fn configs_validate_with_the_key_path() {
    let bad = |text: &str| -> String {
        let cfg: ModelConfig = toml::from_str(text).unwrap();
        cfg.validate("model").unwrap_err()
    };
    let e = bad("kind = \"resnet\"\ndepth = 21");
    assert!(e.contains("model.depth") && e.contains("6n + 2"), "{e}");
    let e = bad("kind = \"resnet\"\ndepth = 20\nstyle = \"imagenet\"");
    assert!(e.contains("model.depth") && e.contains("18, 34, 50"), "{e}");
    let e = bad("kind = \"vgg\"\ndepth = 17");
    assert!(e.contains("model.depth") && e.contains("16 or 19"), "{e}");
    let e = bad("kind = \"resnet\"\ndepth = 20\nnum_classes = 1");
    assert!(e.contains("model.num_classes"), "{e}");
    let e = toml::from_str::<ModelConfig>("kind = \"resnet\"\ndepth = 20\nshortcut = \"c\"").unwrap_err().to_string();
    assert!(e.contains("`a` or `b`"), "{e}");
    let e = toml::from_str::<ModelConfig>("kind = \"resnet\"\ndepth = 20\nwidht = 3").unwrap_err().to_string();
    assert!(e.contains("widht"), "{e}");
    let ok: ModelConfig =
        toml::from_str("kind = \"resnet\"\ndepth = 56\nshortcut = \"b\"\nin_channels = 1\nnum_classes = 100").unwrap();
    assert!(ok.validate("model").is_ok());
}

/// Random 0/1 masks (half kept) on every convolution and linear weight outside the head.
fn half_masks(model: &dyn Model, seed: u64) -> Result<BTreeMap<String, Tensor>> {
    let mut rng = Rng::new(seed);
    let mut masks = BTreeMap::new();
    for p in model.params().iter().filter(|p| p.kind() == ParamKind::Weight && !p.is_head()) {
        let keep: Vec<f32> = (0..p.numel()).map(|_| (rng.uniform() < 0.5) as u8 as f32).collect();
        masks.insert(p.name().to_string(), Tensor::from_vec(keep, p.dims(), &CPU)?);
    }
    Ok(masks)
}

#[test]
fn every_parameter_gets_a_gradient_and_masks_hold() -> Result<()> {
    for cfg in [
        ModelConfig::Resnet(ResNetConfig::cifar(20)),
        ModelConfig::Resnet(ResNetConfig { shortcut: Some(ShortcutKind::B), ..ResNetConfig::cifar(8) }),
        ModelConfig::Resnet(ResNetConfig { num_classes: 10, ..ResNetConfig::imagenet(50) }),
    ] {
        let model = cfg.init(1, &CPU)?;
        let masks = half_masks(model.as_ref(), 2)?;
        model.params().set_masks(&masks)?;
        let batch = images(4, 3, 32, 3)?;
        let mut rng = Rng::new(0);
        let out = model.forward_t(&batch, &mut Mode::Train(&mut rng))?;
        let grads = out.loss.backward()?;
        for p in model.params().iter() {
            let g = grads.get(p.tensor());
            if !p.trainable() {
                assert!(g.is_none(), "{cfg:?}: buffer {} got a gradient", p.name());
                continue;
            }
            let g = g.unwrap_or_else(|| panic!("{cfg:?}: no gradient for {}", p.name()));
            let norm = g.sqr()?.sum_all()?.to_scalar::<f32>()?;
            assert!(norm > 0.0 && norm.is_finite(), "{}: gradient norm {norm}", p.name());
            if let Some(m) = p.mask() {
                let pruned = g.mul(&m.affine(-1.0, 1.0)?)?.abs()?.sum_all()?.to_scalar::<f32>()?;
                assert_eq!(pruned, 0.0, "{}: pruned weights got a gradient", p.name());
            }
        }
    }
    // A mask takes effect in the forward pass: masking all of a block's
    // second convolution leaves that block an identity plus ReLU.
    let model = ModelConfig::Resnet(ResNetConfig::cifar(8)).init(4, &CPU)?;
    let batch = images(2, 3, 16, 5)?;
    let before = model.forward_t(&batch, &mut Mode::Eval)?.logits;
    let w = model.params().get("layer2.0.conv2.weight")?;
    w.set_mask(Some(Tensor::zeros(w.dims(), DType::F32, &CPU)?))?;
    assert_eq!(w.tensor().abs()?.sum_all()?.to_scalar::<f32>()?, 0.0);
    let after = model.forward_t(&batch, &mut Mode::Eval)?.logits;
    assert!(max_abs_diff(&before, &after)? > 1e-4);
    Ok(())
}

#[test]
fn running_statistics_update_in_training_and_survive_a_checkpoint() -> Result<()> {
    let cfg = ModelConfig::Resnet(ResNetConfig::cifar(8));
    let model = cfg.init(6, &CPU)?;
    let batch = images(8, 3, 16, 7)?;
    let rm = model.params().get("layer1.0.bn1.running_mean")?;
    let rv = model.params().get("layer1.0.bn1.running_var")?;
    assert!(vec1(rm.tensor())?.iter().all(|&v| v == 0.0));
    assert!(vec1(rv.tensor())?.iter().all(|&v| v == 1.0));
    model.forward_t(&batch, &mut Mode::Eval)?;
    assert!(vec1(rm.tensor())?.iter().all(|&v| v == 0.0), "eval must not update running statistics");
    for step in 0..3 {
        sgd_step(model.as_ref(), &batch, 0.05, step)?;
    }
    assert!(vec1(rm.tensor())?.iter().any(|&v| v != 0.0), "running mean not updated");
    assert!(vec1(rv.tensor())?.iter().any(|&v| v != 1.0), "running var not updated");

    // Save as the run loop does (every parameter, buffers included), rebuild
    // from the file alone, and compare buffers and evaluation outputs.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    checkpoint::save(&path, &model.params().snapshot()?, &serde_json::json!({ "model": model.config() }))?;
    let ck = checkpoint::load(&path, &CPU)?;
    let cfg2: ModelConfig = serde_json::from_value(ck.header["model"].clone()).unwrap();
    assert_eq!(cfg2, cfg);
    let pb = ParamBuilder::from_tensors(ck.params(), path.display().to_string(), DType::F32, &CPU);
    let again = cfg2.build(&pb)?;
    assert!(pb.finish().1.is_empty(), "unused tensors in the checkpoint");
    for name in
        ["layer1.0.bn1.running_mean", "layer1.0.bn1.running_var", "bn1.running_var", "layer3.0.bn2.running_mean"]
    {
        assert_eq!(vec1(again.params().get(name)?.tensor())?, vec1(model.params().get(name)?.tensor())?, "{name}");
    }
    let a = model.forward_t(&batch, &mut Mode::Eval)?.logits;
    let b = again.forward_t(&batch, &mut Mode::Eval)?.logits;
    assert_eq!(vec1(&a)?, vec1(&b)?);
    // Back to the initial running statistics, the same weights evaluate differently.
    for p in again.params().iter().filter(|p| p.kind() == ParamKind::Buffer) {
        let init = if p.name().ends_with("running_var") { 1f32 } else { 0.0 };
        p.set(&Tensor::full(init, p.dims(), &CPU)?)?;
    }
    assert!(max_abs_diff(&a, &again.forward_t(&batch, &mut Mode::Eval)?.logits)? > 1e-4);
    Ok(())
}

#[test]
fn eval_output_of_an_example_does_not_depend_on_its_batch() -> Result<()> {
    for cfg in [ModelConfig::Resnet(ResNetConfig::cifar(8)), ModelConfig::Vgg(VggConfig::cifar(11))] {
        let model = cfg.init(8, &CPU)?;
        let batch = images(6, 3, 32, 9)?;
        sgd_step(model.as_ref(), &batch, 0.01, 0)?;
        let Inputs::Dense(x) = &batch.inputs else { unreachable!() };
        let one = |x: Tensor| Batch { inputs: Inputs::Dense(x), labels: Tensor::new(&[0u32], &CPU).unwrap() };
        let alone = model.forward_t(&one(x.narrow(0, 0, 1)?), &mut Mode::Eval)?.logits;
        let full = model.forward_t(&batch, &mut Mode::Eval)?.logits.narrow(0, 0, 1)?;
        assert!(max_abs_diff(&alone, &full)? < 1e-5, "{cfg:?}");
        // Other company, same output.
        let other = images(6, 3, 32, 10)?;
        let Inputs::Dense(y) = &other.inputs else { unreachable!() };
        let mixed = Tensor::cat(&[&x.narrow(0, 0, 1)?, &y.narrow(0, 1, 5)?], 0)?;
        let labels = Tensor::zeros(6, DType::U32, &CPU)?;
        let in_other = model
            .forward_t(&Batch { inputs: Inputs::Dense(mixed.clone()), labels: labels.clone() }, &mut Mode::Eval)?;
        assert!(max_abs_diff(&alone, &in_other.logits.narrow(0, 0, 1)?)? < 1e-5, "{cfg:?}");
        // In training the batch statistics do depend on the company.
        let mut rng = Rng::new(0);
        let t1 = model.forward_t(&batch, &mut Mode::Train(&mut rng))?.logits.narrow(0, 0, 1)?;
        let t2 = model.forward_t(&Batch { inputs: Inputs::Dense(mixed), labels }, &mut Mode::Train(&mut rng))?;
        assert!(max_abs_diff(&t1, &t2.logits.narrow(0, 0, 1)?)? > 1e-4, "{cfg:?}");
    }
    Ok(())
}

/// Four classes, each a bright quadrant on noise: a tiny ResNet learns them
/// in a few SGD steps on one batch.
#[test]
fn a_tiny_resnet_learns_synthetic_images() -> Result<()> {
    let (n, hw) = (32, 12);
    let mut rng = Rng::new(11);
    let mut px = Vec::with_capacity(n * 3 * hw * hw);
    let labels: Vec<u32> = (0..n as u32).map(|i| i % 4).collect();
    for &l in &labels {
        for _c in 0..3 {
            for r in 0..hw {
                for col in 0..hw {
                    let quadrant = (r >= hw / 2) as u32 * 2 + (col >= hw / 2) as u32;
                    px.push(rng.normal() as f32 * 0.5 + if quadrant == l { 1.5 } else { 0.0 });
                }
            }
        }
    }
    let batch = Batch {
        inputs: Inputs::Dense(Tensor::from_vec(px, (n, 3, hw, hw), &CPU)?),
        labels: Tensor::new(labels.as_slice(), &CPU)?,
    };
    let model = ModelConfig::Resnet(ResNetConfig { num_classes: 4, ..ResNetConfig::cifar(8) }).init(12, &CPU)?;
    let losses: Vec<f32> = (0..12).map(|s| sgd_step(model.as_ref(), &batch, 0.1, s)).collect::<Result<_>>()?;
    let last = model.forward_t(&batch, &mut Mode::Eval)?.loss.to_scalar::<f32>()?;
    assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
    assert!(losses[11] < 0.5 * losses[0], "training loss did not fall: {losses:?}");
    assert!(last < 0.7 * losses[0], "eval loss {last} after {losses:?}");
    Ok(())
}

/// The inference pass (BatchNorm, shortcut and ReLU folded into each
/// convolution's output pass) gives the evaluation pass's logits: ResNets
/// with option A and B shortcuts, halved inner widths (the shifted-row
/// convolutions), trained running statistics and a mask; VGG with and
/// without BatchNorm.
#[test]
fn inference_pass_gives_the_evaluation_logits() -> Result<()> {
    let halved = ResNetConfig { inner_widths: Some(vec![vec![8], vec![16], vec![32]]), ..ResNetConfig::cifar(8) };
    let projected = ResNetConfig { shortcut: Some(ShortcutKind::B), ..ResNetConfig::cifar(8) };
    let resnet18 = ResNetConfig { num_classes: 10, ..ResNetConfig::imagenet(18) };
    for (i, cfg) in [ResNetConfig::cifar(8), halved, projected, resnet18].into_iter().enumerate() {
        let model = ModelConfig::Resnet(cfg.clone()).init(i as u64, &CPU)?;
        let batch = images(4, 3, 32, 20 + i as u64)?;
        for step in 0..2 {
            sgd_step(model.as_ref(), &batch, 0.05, step)?;
        }
        let w = model.params().get("layer1.0.conv1.weight")?;
        let mask = Tensor::from_iter((0..w.numel()).map(|j| (j % 3 != 0) as u8 as f32), &CPU)?.reshape(w.dims())?;
        w.set_mask(Some(mask))?;
        let eval = model.forward_t(&batch, &mut Mode::Eval)?.logits;
        let infer = model.forward_t(&batch, &mut Mode::Infer)?.logits;
        let scale = eval.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let diff = max_abs_diff(&eval, &infer)?;
        assert!(diff <= 1e-5 * scale.max(1.0), "{cfg:?}: inference differs from evaluation by {diff} (scale {scale})");
    }
    // VGG with and without BatchNorm (convolutions with a bias).
    for (i, cfg) in
        [VggConfig::cifar(11), VggConfig { batch_norm: false, ..VggConfig::cifar(11) }].into_iter().enumerate()
    {
        let model = ModelConfig::Vgg(cfg.clone()).init(10 + i as u64, &CPU)?;
        let batch = images(2, 3, 32, 30 + i as u64)?;
        sgd_step(model.as_ref(), &batch, 0.01, 0)?;
        let eval = model.forward_t(&batch, &mut Mode::Eval)?.logits;
        let infer = model.forward_t(&batch, &mut Mode::Infer)?.logits;
        let scale = eval.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let diff = max_abs_diff(&eval, &infer)?;
        assert!(diff <= 1e-5 * scale.max(1.0), "{cfg:?}: inference differs from evaluation by {diff} (scale {scale})");
    }
    Ok(())
}
