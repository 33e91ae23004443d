//! VGG (Simonyan & Zisserman 2015, Table 1, configurations A, B, D, E =
//! VGG-11/13/16/19) for 32×32 images, with batch normalisation after every
//! convolution (Ioffe & Szegedy 2015) as in the CIFAR networks used by the
//! pruning literature.
//!
//! `features`: 3×3 convolutions (padding 1) with BN and ReLU, and a 2×2
//! max-pool after each of the five blocks, so 32×32 inputs end at 1×1×512;
//! then global average pooling (the identity at 1×1, and defined for larger
//! inputs) and one linear `classifier` (the head). Names follow torchvision's
//! `nn.Sequential` indices: with BN, a convolution at `features.i` has its BN
//! at `features.{i+1}` (`features.0.weight`, `features.1.running_var`,
//! `features.3.weight`, …), then `classifier.weight`. Convolutions start from
//! He et al. (2015) normal init in fan-out mode with zero bias, BN from γ = 1,
//! β = 0, the classifier from N(0, 0.01²) with zero bias (torchvision's init).

use candle_core::Tensor;
use espalier_core::init::Init;
use espalier_core::{Batch, Inputs, ParamBuilder, ParamKind, ParamStore, Result};
use serde::{Deserialize, Serialize};

use crate::layers::{Conv2d, Linear};
use crate::norm::BatchNorm2d;
use crate::resnet::{check_images, Pass};
use crate::{loss, Mode, Model, ModelConfig, StepOutput};
use espalier_kernels::fused::relu;
use espalier_kernels::pool::{global_avg_pool, max_pool2d};

/// VGG configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VggConfig {
    /// 11, 13, 16 or 19 weighted layers.
    pub depth: usize,
    /// BN after every convolution.
    #[serde(default = "yes")]
    pub batch_norm: bool,
    /// Input channels.
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Output classes.
    #[serde(default = "ten")]
    pub num_classes: usize,
}

fn yes() -> bool {
    true
}
fn three() -> usize {
    3
}
fn ten() -> usize {
    10
}

/// Widths of the convolutions of each of the five blocks (each block ends in a max-pool).
fn blocks(depth: usize) -> Option<[&'static [usize]; 5]> {
    Some(match depth {
        11 => [&[64], &[128], &[256, 256], &[512, 512], &[512, 512]],
        13 => [&[64, 64], &[128, 128], &[256, 256], &[512, 512], &[512, 512]],
        16 => [&[64, 64], &[128, 128], &[256, 256, 256], &[512, 512, 512], &[512, 512, 512]],
        19 => [&[64, 64], &[128, 128], &[256, 256, 256, 256], &[512, 512, 512, 512], &[512, 512, 512, 512]],
        _ => return None,
    })
}

impl VggConfig {
    /// VGG-`depth` with BN for CIFAR-10.
    pub fn cifar(depth: usize) -> Self {
        VggConfig { depth, batch_norm: true, in_channels: 3, num_classes: 10 }
    }

    pub(crate) fn validate(&self, path: &str) -> std::result::Result<(), String> {
        if blocks(self.depth).is_none() {
            return Err(format!("{path}.depth must be 11, 13, 16 or 19, found {}", self.depth));
        }
        if self.in_channels == 0 {
            return Err(format!("{path}.in_channels must be at least 1"));
        }
        if self.num_classes < 2 {
            return Err(format!("{path}.num_classes must be at least 2, found {}", self.num_classes));
        }
        Ok(())
    }
}

/// One step of `features`.
enum Layer {
    Conv(Conv2d, Option<BatchNorm2d>),
    Pool,
}

/// VGG: `features.*`, `classifier`.
pub struct Vgg {
    cfg: VggConfig,
    features: Vec<Layer>,
    classifier: Linear,
    params: ParamStore,
}

impl Vgg {
    /// Builds the network described by `cfg`.
    pub fn new(cfg: VggConfig, pb: &ParamBuilder) -> Result<Self> {
        let Some(spec) = blocks(cfg.depth) else {
            espalier_core::bail!("VGG depth must be 11, 13, 16 or 19, found {}", cfg.depth);
        };
        let features_pb = pb.pp("features");
        let (mut features, mut index, mut cin) = (Vec::new(), 0, cfg.in_channels);
        for widths in spec {
            for &cout in widths {
                let conv = Conv2d::he(&features_pb.pp(index), cin, cout, 3, 1, 1, true)?;
                let bn = if cfg.batch_norm { Some(BatchNorm2d::new(&features_pb.pp(index + 1), cout)?) } else { None };
                // conv, [bn], relu
                index += if cfg.batch_norm { 3 } else { 2 };
                features.push(Layer::Conv(conv, bn));
                cin = cout;
            }
            features.push(Layer::Pool);
            index += 1;
        }
        let head = pb.pp("classifier").head();
        let classifier = Linear::from_params(
            head.param("weight", &[cfg.num_classes, cin], ParamKind::Weight, Init::Normal { std: 0.01 })?,
            Some(head.param("bias", &[cfg.num_classes], ParamKind::Bias, Init::Const(0.0))?),
        );
        let params = pb.clone().finish().0;
        Ok(Vgg { cfg, features, classifier, params })
    }

    /// `(B, classes)` logits of `(B, C, H, W)` images (at least 32×32).
    pub fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.logits_mode(x, if train { Pass::Train } else { Pass::Eval })
    }

    fn logits_mode(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let train = pass == Pass::Train;
        check_images(x, self.cfg.in_channels, "VGG")?;
        let (_, _, h, w) = x.dims4()?;
        if h < 32 || w < 32 {
            espalier_core::bail!("VGG halves its input five times: it needs images of at least 32×32, got {h}×{w}");
        }
        let mut h = x.clone();
        for layer in &self.features {
            h = match layer {
                Layer::Conv(conv, bn) if pass == Pass::Infer => conv.forward_infer(bn.as_ref(), &h, None, true)?,
                Layer::Conv(conv, Some(bn)) => bn.forward_relu(&conv.forward(&h)?, train)?,
                Layer::Conv(conv, None) => relu(&conv.forward(&h)?)?,
                Layer::Pool => max_pool2d(&h, 2, 2, 0)?,
            };
        }
        self.classifier.forward(&global_avg_pool(&h)?)
    }
}

impl Model for Vgg {
    fn forward_t(&self, batch: &Batch, mode: &mut Mode) -> Result<StepOutput> {
        let Inputs::Dense(x) = &batch.inputs else {
            espalier_core::bail!("VGG takes image inputs, not token sequences");
        };
        let logits = self.logits_mode(x, Pass::of(mode))?;
        Ok(StepOutput { loss: loss::cross_entropy(&logits, &batch.labels)?, logits, labels: batch.labels.clone() })
    }
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn config(&self) -> ModelConfig {
        ModelConfig::Vgg(self.cfg.clone())
    }
}
