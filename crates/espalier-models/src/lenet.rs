//! LeNet-5 (LeCun et al. 1998) in its common modern form: conv 5×5 (6, padded
//! to keep 28×28) → ReLU → max-pool 2 → conv 5×5 (16) → ReLU → max-pool 2 →
//! fc 400→120 → fc 120→84 → head 84→classes.

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
    /// Widths of the two hidden fully connected layers.
    #[serde(default = "default_fc")]
    pub fc: [usize; 2],
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
fn default_fc() -> [usize; 2] {
    [120, 84]
}

impl Default for LeNet5Config {
    fn default() -> Self {
        LeNet5Config { in_channels: 1, num_classes: 10, conv: default_conv(), fc: default_fc() }
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
        Ok(())
    }
}

/// LeNet-5 on 28×28 inputs.
pub struct LeNet5 {
    cfg: LeNet5Config,
    conv1: Conv2d,
    conv2: Conv2d,
    fc1: Linear,
    fc2: Linear,
    head: Linear,
    params: ParamStore,
}

impl LeNet5 {
    /// Builds LeNet-5: `conv1`, `conv2`, `fc1`, `fc2`, `head`.
    pub fn new(cfg: LeNet5Config, pb: &ParamBuilder) -> Result<Self> {
        let [c1, c2] = cfg.conv;
        let [f1, f2] = cfg.fc;
        let conv1 = Conv2d::new(&pb.pp("conv1"), cfg.in_channels, c1, 5, 1, 2, true)?;
        let conv2 = Conv2d::new(&pb.pp("conv2"), c1, c2, 5, 1, 0, true)?;
        let fc1 = Linear::new(&pb.pp("fc1"), c2 * 5 * 5, f1, true)?;
        let fc2 = Linear::new(&pb.pp("fc2"), f1, f2, true)?;
        let head = Linear::new(&pb.pp("head").head(), f2, cfg.num_classes, true)?;
        let params = pb.clone().finish().0;
        Ok(LeNet5 { cfg, conv1, conv2, fc1, fc2, head, params })
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
        let h = h.flatten_from(1)?;
        let h = espalier_kernels::fused::relu(&self.fc1.forward_mode(&h, infer)?)?;
        let h = espalier_kernels::fused::relu(&self.fc2.forward_mode(&h, infer)?)?;
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
        [&self.fc1, &self.fc2, &self.head].into_iter().map(|l| l.pack_sparse(opts)).collect()
    }
    fn unpack_sparse(&self) {
        [&self.fc1, &self.fc2, &self.head].into_iter().for_each(Linear::unpack_sparse)
    }
}
