//! LeNet-5 (LeCun et al. 1998) in its common modern form: conv 5×5 (6, padded
//! to keep 28×28) → ReLU → max-pool 2 → conv 5×5 (16) → ReLU → max-pool 2 →
//! fc 400→120 → fc 120→84 → head 84→classes.
//!
//! The widths, the first convolution's padding and the number of hidden fully
//! connected layers are configurable, so the same module is also Caffe's
//! LeNet that the pruning literature calls LeNet-5 (Han et al. 2015; Zhang et
//! al. 2018): `conv = [20, 50]`, `padding = 0`, `fc = [500]`, i.e. conv 5×5
//! (20) → pool → conv 5×5 (50) → pool → fc 800→500 → head 500→10.

use espalier_core::{Batch, Inputs, ParamBuilder, ParamStore, Result};
use serde::{Deserialize, Serialize};

use crate::layers::{Conv2d, Linear, PackOptions, PackedLayer};
use crate::{loss, Mode, Model, ModelConfig, StepOutput};

/// LeNet-5 configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeNet5Config {
    /// Input channels.
    #[serde(default = "one")]
    pub in_channels: usize,
    /// Output classes.
    #[serde(default = "ten")]
    pub num_classes: usize,
    /// Channels of the two convolutions.
    #[serde(default = "default_conv")]
    pub conv: [usize; 2],
    /// Widths of the hidden fully connected layers (`fc1`, `fc2`, …; at
    /// least one).
    #[serde(default = "default_fc")]
    pub fc: Vec<usize>,
    /// Zero padding of the first convolution: 2 keeps 28×28 (the modern
    /// form), 0 is Caffe's LeNet.
    #[serde(default = "two")]
    pub padding: usize,
    /// Dropout before the head, in training (0.5 in Zhang et al.'s reference
    /// code, 0 by default).
    #[serde(default)]
    pub dropout: f64,
}

fn one() -> usize {
    1
}
fn ten() -> usize {
    10
}
fn default_conv() -> [usize; 2] {
    [6, 16]
}
fn default_fc() -> Vec<usize> {
    vec![120, 84]
}
fn two() -> usize {
    2
}

impl Default for LeNet5Config {
    fn default() -> Self {
        LeNet5Config {
            in_channels: 1,
            num_classes: 10,
            conv: default_conv(),
            fc: default_fc(),
            padding: two(),
            dropout: 0.0,
        }
    }
}

impl LeNet5Config {
    pub(crate) fn validate(&self, path: &str) -> std::result::Result<(), String> {
        if self.num_classes < 2 {
            return Err(format!("{path}.num_classes must be at least 2"));
        }
        if self.in_channels == 0 || self.conv.contains(&0) || self.fc.contains(&0) {
            return Err(format!("{path}: in_channels, conv and fc widths must be at least 1"));
        }
        if self.fc.is_empty() || self.fc.len() > 4 {
            return Err(format!("{path}.fc must list 1 to 4 hidden widths, not {}", self.fc.len()));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(format!("{path}.dropout must be in [0, 1), found {}", self.dropout));
        }
        if self.padding > 2 {
            return Err(format!("{path}.padding must be 0, 1 or 2, not {}", self.padding));
        }
        Ok(())
    }

    /// Side of the second pooling's output on 28×28 inputs.
    fn pooled_side(&self) -> usize {
        ((28 + 2 * self.padding - 4) / 2 - 4) / 2
    }
}

/// LeNet-5 on 28×28 inputs.
pub struct LeNet5 {
    cfg: LeNet5Config,
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Vec<Linear>,
    head: Linear,
    params: ParamStore,
}

impl LeNet5 {
    /// Builds LeNet-5: `conv1`, `conv2`, `fc1`, `fc2`, …, `head`.
    pub fn new(cfg: LeNet5Config, pb: &ParamBuilder) -> Result<Self> {
        let [c1, c2] = cfg.conv;
        let conv1 = Conv2d::new(&pb.pp("conv1"), cfg.in_channels, c1, 5, 1, cfg.padding, true)?;
        let conv2 = Conv2d::new(&pb.pp("conv2"), c1, c2, 5, 1, 0, true)?;
        let side = cfg.pooled_side();
        let mut width = c2 * side * side;
        let mut fc = Vec::with_capacity(cfg.fc.len());
        for (i, &f) in cfg.fc.iter().enumerate() {
            fc.push(Linear::new(&pb.pp(format!("fc{}", i + 1)), width, f, true)?);
            width = f;
        }
        let head = Linear::new(&pb.pp("head").head(), width, cfg.num_classes, true)?;
        let params = pb.clone().finish().0;
        Ok(LeNet5 { cfg, conv1, conv2, fc, head, params })
    }

    /// The fully connected layers, the head last.
    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.fc.iter().chain([&self.head])
    }
}

impl Model for LeNet5 {
    fn forward_t(&self, batch: &Batch, mode: &mut Mode) -> Result<StepOutput> {
        let Inputs::Dense(x) = &batch.inputs else {
            espalier_core::bail!("LeNet-5 takes image inputs, not token sequences");
        };
        let infer = matches!(mode, Mode::Infer);
        let h = espalier_kernels::fused::relu(&self.conv1.forward(x)?)?.max_pool2d(2)?;
        let h = espalier_kernels::fused::relu(&self.conv2.forward(&h)?)?.max_pool2d(2)?;
        let mut h = h.flatten_from(1)?;
        for fc in &self.fc {
            h = espalier_kernels::fused::relu(&fc.forward_mode(&h, infer)?)?;
        }
        if let Mode::Train(rng) = mode {
            if self.cfg.dropout > 0.0 {
                h = espalier_kernels::dropout::dropout(&h, self.cfg.dropout, Some(&mut **rng))?;
            }
        }
        let logits = self.head.forward_mode(&h, infer)?;
        Ok(StepOutput { loss: loss::cross_entropy(&logits, &batch.labels)?, logits, labels: batch.labels.clone() })
    }
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn config(&self) -> ModelConfig {
        ModelConfig::Lenet5(self.cfg.clone())
    }
    /// The fully connected layers (the head included); the convolutions
    /// stay dense.
    fn pack_sparse(&self, opts: &PackOptions) -> Result<Vec<PackedLayer>> {
        self.linears().map(|l| l.pack_sparse(opts)).collect()
    }
    fn unpack_sparse(&self) {
        self.linears().for_each(Linear::unpack_sparse)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Tensor};
    use espalier_core::Batch;

    /// Caffe's LeNet (Zhang et al.'s LeNet-5): 431,080 parameters, of which
    /// 430,500 weights, with the layer shapes of the reference code.
    #[test]
    fn caffe_lenet_has_the_reference_shapes() -> Result<()> {
        let cfg = LeNet5Config { conv: [20, 50], fc: vec![500], padding: 0, ..Default::default() };
        cfg.validate("model").unwrap();
        let pb = ParamBuilder::from_seed(0, DType::F32, &Device::Cpu);
        let model = LeNet5::new(cfg, &pb)?;
        let dims: Vec<(String, Vec<usize>)> = model.params().iter().map(|p| (p.name().to_string(), p.dims())).collect();
        let get = |n: &str| dims.iter().find(|d| d.0 == n).map(|d| d.1.clone()).unwrap();
        assert_eq!(get("conv1.weight"), [20, 1, 5, 5]);
        assert_eq!(get("conv2.weight"), [50, 20, 5, 5]);
        assert_eq!(get("fc1.weight"), [500, 800]);
        assert_eq!(get("head.weight"), [10, 500]);
        assert!(dims.iter().all(|d| d.0 != "fc2.weight"));
        assert_eq!(model.params().iter().map(|p| p.numel()).sum::<usize>(), 431_080);
        let x = Tensor::zeros((3, 1, 28, 28), DType::F32, &Device::Cpu)?;
        let batch = Batch { inputs: Inputs::Dense(x), labels: Tensor::new(&[0u32, 1, 2], &Device::Cpu)? };
        let out = model.forward_t(&batch, &mut Mode::Eval)?;
        assert_eq!(out.logits.dims(), [3, 10]);
        // The default is the modern form, with two hidden layers.
        assert!(LeNet5Config { fc: vec![], ..Default::default() }.validate("model").is_err());
        assert!(LeNet5Config { padding: 3, ..Default::default() }.validate("model").is_err());
        Ok(())
    }
}
