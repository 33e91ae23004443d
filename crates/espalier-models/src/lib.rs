//! Trainable, maskable models.
//!
//! Every model implements [`Model`]: it owns the step from a [`Batch`] to a
//! loss, reads its weights through [`Param::effective`] so masks apply inside
//! the forward pass, and describes itself by a serde [`ModelConfig`] that a
//! checkpoint header records, so a checkpoint alone rebuilds the model.
//!
//! The layers ([`layers`], [`norm`]) own parameters; the computation they
//! run is `espalier-kernels`' (re-exported here as [`attention`], [`conv`],
//! [`dense`], [`dropout`], [`fused`] and [`pool`] for existing users).
//!
//! [`Param::effective`]: espalier_core::Param::effective

pub mod bert;
pub mod fold;
pub mod layers;
pub mod lenet;
pub mod load;
pub mod loss;
pub mod mlp;
pub mod norm;
pub mod observe;
pub mod resnet;
pub mod vgg;

pub use espalier_kernels::{attention, conv, dense, dropout, fused, pool};

use candle_core::{DType, Device, Tensor};
use espalier_core::{Batch, GroupSet, Keep, ParamBuilder, ParamStore, Result, Rng};
use serde::{Deserialize, Serialize};

pub use bert::{Bert, BertConfig, BertTask};
pub use fold::{fold_empty_units, ConstantUnits, FoldedSet};
pub use layers::{Format, PackOptions, PackedLayer};
pub use lenet::{LeNet5, LeNet5Config};
pub use load::{load_bert, load_model, model_name};
pub use mlp::{Activation, Mlp, MlpConfig};
pub use norm::BatchNorm2d;
pub use resnet::{ResNet, ResNetConfig, ResNetStyle, ShortcutKind, Stem};
pub use vgg::{Vgg, VggConfig};

/// What a forward pass produced.
#[derive(Clone, Debug)]
pub struct StepOutput {
    /// Scalar loss (mean over the batch).
    pub loss: Tensor,
    /// `(B, C)` logits, or `(B,)` predictions for regression.
    pub logits: Tensor,
    /// The batch's labels.
    pub labels: Tensor,
}

/// Training or evaluation, with the dropout stream in training.
pub enum Mode<'a> {
    /// Evaluation: no dropout; BatchNorm uses (and keeps) its running statistics.
    Eval,
    /// Evaluation whose outputs are never differentiated (benchmarks,
    /// validation): as `Eval`, and models may use inference-only kernels
    /// that leave the autograd graph (BatchNorm folded into the preceding
    /// convolution's output pass).
    Infer,
    /// Training; random draws (dropout) come from this stream, BatchNorm
    /// normalises with batch statistics and updates its running ones.
    Train(&'a mut Rng),
}

impl Mode<'_> {
    /// Whether this is a training pass.
    pub fn is_train(&self) -> bool {
        matches!(self, Mode::Train(_))
    }
}

/// A model Espalier can train, prune and checkpoint.
pub trait Model: Send + Sync {
    /// Forward pass and loss.
    fn forward_t(&self, batch: &Batch, mode: &mut Mode) -> Result<StepOutput>;
    /// The model's parameters.
    fn params(&self) -> &ParamStore;
    /// The configuration that rebuilds this model.
    fn config(&self) -> ModelConfig;
    /// The coupled groups structured pruning can remove, in forward order
    /// (none by default).
    fn group_sets(&self) -> Vec<GroupSet> {
        Vec::new()
    }
    /// The activations of group set `set` on `batch` (evaluation mode):
    /// `(rows, size·block)`, one row per example (per real token for
    /// sequence models), the inputs of the set's consumer weight.
    fn probe(&self, _batch: &Batch, set: &str) -> Result<Tensor> {
        espalier_core::bail!("this model has no activation probe for group set `{set}`")
    }
    /// The activations of group set `set` on `batch` as its consumer takes
    /// them, units on axis 1: [`Model::probe`]'s rows by default; the
    /// `(B, C, H, W)` maps where the consumer is a convolution.
    fn consumer_input(&self, batch: &Batch, set: &str) -> Result<Tensor> {
        self.probe(batch, set)
    }
    /// The consumer of group set `set` as a linear map of
    /// [`Model::consumer_input`]'s activations (no bias): by default `h·Aᵀ`
    /// with `A` the set's [`GroupSet::consumer`] matrix. Evaluation mode, no
    /// gradient into the weights.
    fn consume(&self, set: &str, h: &Tensor) -> Result<Tensor> {
        let name = self
            .group_sets()
            .into_iter()
            .find(|g| g.name == set)
            .and_then(|g| g.consumer)
            .ok_or_else(|| espalier_core::Error::msg(format!("group set `{set}` declares no consumer weight")))?;
        let a = self.params().get(&name)?.effective()?.detach().to_dtype(h.dtype())?;
        Ok(h.matmul(&a.t()?)?)
    }
    /// The constant term of group set `set`'s consumer, broadcastable to
    /// [`Model::consume`]'s output, so that `consume(h) + offset` is what the
    /// consumer computes (evaluation mode): by default the bias next to the
    /// [`GroupSet::consumer`] weight (`….weight` → `….bias`), `None` where
    /// there is none.
    fn consume_offset(&self, set: &str) -> Result<Option<Tensor>> {
        let Some(weight) = self.group_sets().into_iter().find(|g| g.name == set).and_then(|g| g.consumer) else {
            espalier_core::bail!("group set `{set}` declares no consumer weight");
        };
        let Some(bias) = weight.strip_suffix(".weight").map(|p| format!("{p}.bias")) else {
            return Ok(None);
        };
        match self.params().get(&bias) {
            Ok(b) => Ok(Some(b.effective()?.detach())),
            Err(_) => Ok(None),
        }
    }
    /// The consumer of group set `set` followed by the normalisation after
    /// it, as a freshly built layer in training mode computes it: each
    /// channel normalised with the statistics of this `h`'s output (biased
    /// variance), the layer's γ and β kept, no running statistic touched.
    /// `None` (the default) where the consumer is not normalised.
    fn consume_batch_stats(&self, _set: &str, _h: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Where group set `set` sits among the model's residual blocks (its
    /// stage, its place in the stage, the stage's length); `None` (the
    /// default) for sets outside such blocks.
    fn block_of(&self, _set: &str) -> Option<BlockPos> {
        None
    }
    /// Floating-point operations of one example's forward pass (a
    /// multiply-add counts 2; sequence models at `seq_len` tokens), or
    /// `None` when the model does not count them.
    fn flops(&self, _seq_len: usize) -> Option<f64> {
        None
    }
    /// The configuration of the model with only the units in `keep` (set
    /// name → kept unit indices); sets not named keep all their units.
    fn shrunk_config(&self, _keep: &Keep) -> Result<ModelConfig> {
        espalier_core::bail!("this model cannot be shrunk structurally")
    }
    /// Packs the masked weights of the model's prunable linear layers for
    /// sparse inference, each in the format
    /// [`espalier_kernels::sparse::choose`] picks under `opts`; returns one
    /// entry per layer. Forward passes in [`Mode::Infer`] then run the
    /// sparse kernels; [`Mode::Train`] and [`Mode::Eval`] never do, and a
    /// layer whose weight, bias or mask changes after packing runs dense
    /// again (pack anew to pick up the change).
    fn pack_sparse(&self, _opts: &PackOptions) -> Result<Vec<PackedLayer>> {
        espalier_core::bail!("this model has no sparse inference path")
    }
    /// Drops every packed copy made by [`Model::pack_sparse`].
    fn unpack_sparse(&self) {}
    /// The outputs of group set `set`'s units given their pre-activations
    /// `pre` (`(size,)`), when each unit is an element-wise function of its
    /// own pre-activation (what [`fold::fold_empty_units`] needs); `None`
    /// otherwise (the default).
    fn unit_activation(&self, _set: &str, _pre: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Which units of group set `set` output a constant whatever the
    /// input, and that constant ([`ConstantUnits`]); `None` when the set
    /// does not fold. The default ([`fold::activation_constants`]): a unit
    /// that is an element-wise function of its own pre-activation
    /// ([`Model::unit_activation`]) and whose input rows are all zero
    /// outputs `act(b_j)`.
    fn constant_units(&self, set: &GroupSet) -> Result<Option<ConstantUnits>> {
        fold::activation_constants(self, set)
    }
    /// Whether group set `set` may lose all its units (false by default).
    fn allows_empty_set(&self, _set: &str) -> bool {
        false
    }
}

/// A group set's residual block ([`Model::block_of`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockPos {
    /// Stage, from 0.
    pub stage: usize,
    /// The block's place in its stage, from 0.
    pub index: usize,
    /// Blocks in the stage.
    pub blocks: usize,
}

impl BlockPos {
    /// The first block of its stage.
    pub fn first(&self) -> bool {
        self.index == 0
    }
    /// The last block of its stage.
    pub fn last(&self) -> bool {
        self.index + 1 == self.blocks
    }
}

/// The physically smaller model: every group set's removed units cut out of
/// its member tensors (masks included), rebuilt from the shrunk config. It
/// computes what `model` computes with those units masked.
pub fn shrink(model: &dyn Model, keep: &Keep) -> Result<Box<dyn Model>> {
    let sets = model.group_sets();
    for name in keep.keys() {
        if !sets.iter().any(|s| &s.name == name) {
            let known: Vec<&str> = sets.iter().map(|s| s.name.as_str()).collect();
            espalier_core::bail!("no group set `{name}` in this model (it has: {})", known.join(", "));
        }
    }
    let cfg = model.shrunk_config(keep)?;
    let (weights, masks) = espalier_core::groups::slice_groups(model.params(), &sets, keep)?;
    let device = model.params().device();
    let dtype = model.params().iter().next().map(|p| p.tensor().dtype()).unwrap_or(DType::F32);
    let pb = ParamBuilder::from_tensors(weights, "shrunk model", dtype, &device);
    let small = cfg.build(&pb)?;
    // A mask sliced to nothing belongs to a tensor the smaller model no
    // longer declares (a BERT sublayer left with no units).
    let masks = masks.into_iter().filter(|(name, m)| m.elem_count() > 0 || small.params().get(name).is_ok()).collect();
    small.params().set_masks(&masks)?;
    Ok(small)
}

/// Every model Espalier knows, tagged by `kind` in TOML and JSON.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ModelConfig {
    /// Multi-layer perceptron (LeNet-300-100 with `hidden = [300, 100]`).
    Mlp(MlpConfig),
    /// LeNet-5 (LeCun et al. 1998), conv 6 → conv 16 → 120 → 84 → classes.
    Lenet5(LeNet5Config),
    /// BERT (Devlin et al. 2019) with a classification or regression head;
    /// per-layer head counts and feed-forward widths for pruned models.
    Bert(BertConfig),
    /// ResNet (He et al. 2016): CIFAR (depth 6n + 2) or ImageNet (18–152) style.
    Resnet(ResNetConfig),
    /// VGG-11/13/16/19 (Simonyan & Zisserman 2015) with BN, for 32×32 images.
    Vgg(VggConfig),
}

impl ModelConfig {
    /// Checks values a user can get wrong; `path` prefixes key names.
    pub fn validate(&self, path: &str) -> std::result::Result<(), String> {
        match self {
            ModelConfig::Mlp(c) => c.validate(path),
            ModelConfig::Lenet5(c) => c.validate(path),
            ModelConfig::Bert(c) => c.validate(path),
            ModelConfig::Resnet(c) => c.validate(path),
            ModelConfig::Vgg(c) => c.validate(path),
        }
    }

    /// Builds the model; parameters come from `pb` (seeded init or tensors).
    pub fn build(&self, pb: &ParamBuilder) -> Result<Box<dyn Model>> {
        Ok(match self {
            ModelConfig::Mlp(c) => Box::new(Mlp::new(c.clone(), pb)?),
            ModelConfig::Lenet5(c) => Box::new(LeNet5::new(c.clone(), pb)?),
            ModelConfig::Bert(c) => Box::new(Bert::new(c.clone(), pb)?),
            ModelConfig::Resnet(c) => Box::new(ResNet::new(c.clone(), pb)?),
            ModelConfig::Vgg(c) => Box::new(Vgg::new(c.clone(), pb)?),
        })
    }

    /// A freshly initialised model from `seed`.
    pub fn init(&self, seed: u64, device: &Device) -> Result<Box<dyn Model>> {
        let pb = ParamBuilder::from_seed(seed, DType::F32, device);
        self.build(&pb)
    }
}
