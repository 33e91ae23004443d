//! Residual networks (He et al. 2016, "Deep Residual Learning for Image
//! Recognition"): every block computes `relu(F(x) + shortcut(x))` (eq. 1;
//! eq. 2 where the shape changes).
//!
//! Two families, chosen by `style`:
//!
//! - `cifar` (§4.2): a 3×3 convolution of 16 channels, three stages of `n`
//!   basic blocks at 16, 32 and 64 channels (the last two start with stride
//!   2), global average pooling and the classifier; depth `6n + 2`
//!   (ResNet-20/32/44/56/110). Where the shape changes the shortcut is option
//!   A by default (§3.3: the identity subsampled by 2 and zero-padded in the
//!   channels, half the new channels on each side; no parameters) or option
//!   B (a 1×1 convolution with stride and BN, `shortcut.0`/`shortcut.1`).
//! - `imagenet` (Table 1): a 7×7/2 convolution of 64 channels and a 3×3/2
//!   max-pool, four stages at 64, 128, 256 and 512 channels of basic blocks
//!   (ResNet-18: 2-2-2-2, ResNet-34: 3-4-6-3) or bottleneck blocks of 1×1,
//!   3×3 and 1×1 (4× wider) convolutions (ResNet-50: 3-4-6-3, 101: 3-4-23-3,
//!   152: 3-8-36-3), projection shortcuts (B, `downsample.0`/`downsample.1`)
//!   by default; a bottleneck strides on its 3×3 convolution (torchvision's
//!   "v1.5"). For small images `stem = "cifar"` replaces the 7×7/2
//!   convolution and the max-pool by a 3×3/1 convolution.
//!
//! Basic block: conv3×3(stride)–BN–ReLU–conv3×3–BN; bottleneck:
//! conv1×1–BN–ReLU–conv3×3(stride)–BN–ReLU–conv1×1–BN. Convolutions have no
//! bias and start from He et al. (2015) normal init in fan-out mode, BN from
//! γ = 1, β = 0, and the classifier `fc` (the head) from PyTorch's default,
//! as torchvision does. Names follow torchvision: `conv1.weight`,
//! `bn1.running_mean`, `layer1.0.conv1.weight`, `layer2.0.bn2.bias`, `fc.weight`.

use candle_core::{Tensor, D};
use espalier_core::{Batch, GroupSet, Inputs, Keep, Member, ParamBuilder, ParamStore, Result};
use serde::{Deserialize, Serialize};

use crate::layers::{Conv2d, Linear};
use crate::norm::BatchNorm2d;
use crate::{loss, BlockPos, Mode, Model, ModelConfig, StepOutput};
use espalier_kernels::fused::add_relu;
use espalier_kernels::pool::{global_avg_pool, max_pool2d};

/// Which ResNet family.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ResNetStyle {
    /// Three stages of basic blocks at 16/32/64 channels, depth 6n + 2.
    #[default]
    Cifar,
    /// Four stages at 64–512 channels, depth 18, 34, 50, 101 or 152.
    Imagenet,
}

/// The first layers, before the stages.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stem {
    /// 3×3 convolution, stride 1, no pooling.
    Cifar,
    /// 7×7 convolution, stride 2, then a 3×3 max-pool with stride 2.
    Imagenet,
}

/// Shortcut where a block changes the shape (He et al. 2016, §3.3).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ShortcutKind {
    /// Identity, subsampled and zero-padded in the channels (no parameters).
    A,
    /// 1×1 convolution with stride, then BN (a projection).
    B,
}

/// ResNet configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// Number of weighted layers: 6n + 2 for `cifar`; 18, 34, 50, 101 or 152 for `imagenet`.
    pub depth: usize,
    /// Family.
    #[serde(default)]
    pub style: ResNetStyle,
    /// The stem (default: the family's own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stem: Option<Stem>,
    /// Shortcut where the shape changes (default: A for `cifar`, B for `imagenet`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shortcut: Option<ShortcutKind>,
    /// Input channels (3 for CIFAR, 1 for MNIST).
    #[serde(default = "three")]
    pub in_channels: usize,
    /// Output classes.
    #[serde(default = "ten")]
    pub num_classes: usize,
    /// Inner widths of each block after structured pruning, in block order
    /// (`layer1.0`, `layer1.1`, …): the output channels of every convolution
    /// but the last (one for basic blocks, two for bottlenecks). Absent: the
    /// stage width everywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inner_widths: Option<Vec<Vec<usize>>>,
}

fn three() -> usize {
    3
}
fn ten() -> usize {
    10
}

/// Basic (two 3×3 convolutions) or bottleneck (1×1, 3×3, 1×1 ×4) blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BlockKind {
    Basic,
    Bottleneck,
}

impl BlockKind {
    /// Convolutions whose outputs stay inside the block.
    fn inner_convs(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 2,
        }
    }

    /// Output channels per unit of block width.
    fn expansion(self) -> usize {
        match self {
            BlockKind::Basic => 1,
            BlockKind::Bottleneck => 4,
        }
    }
}

/// Block kind, blocks per stage and stage widths of a configuration.
struct Layout {
    kind: BlockKind,
    blocks: Vec<usize>,
    widths: Vec<usize>,
}

impl ResNetConfig {
    /// A CIFAR ResNet of depth 6n + 2 (option A shortcuts), 3 input channels, 10 classes.
    pub fn cifar(depth: usize) -> Self {
        ResNetConfig {
            depth,
            style: ResNetStyle::Cifar,
            stem: None,
            shortcut: None,
            in_channels: 3,
            num_classes: 10,
            inner_widths: None,
        }
    }

    /// An ImageNet ResNet (18, 34, 50, 101, 152) with its 7×7 stem, 1000 classes.
    pub fn imagenet(depth: usize) -> Self {
        ResNetConfig { style: ResNetStyle::Imagenet, num_classes: 1000, ..Self::cifar(depth) }
    }

    /// The stem in effect.
    pub fn stem(&self) -> Stem {
        self.stem.unwrap_or(match self.style {
            ResNetStyle::Cifar => Stem::Cifar,
            ResNetStyle::Imagenet => Stem::Imagenet,
        })
    }

    /// The shortcut in effect.
    pub fn shortcut(&self) -> ShortcutKind {
        self.shortcut.unwrap_or(match self.style {
            ResNetStyle::Cifar => ShortcutKind::A,
            ResNetStyle::Imagenet => ShortcutKind::B,
        })
    }

    fn layout(&self) -> std::result::Result<Layout, String> {
        match self.style {
            ResNetStyle::Cifar => {
                if self.depth < 8 || self.depth % 6 != 2 {
                    return Err(format!(
                        "a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110, ...), found {}",
                        self.depth
                    ));
                }
                let n = (self.depth - 2) / 6;
                Ok(Layout { kind: BlockKind::Basic, blocks: vec![n; 3], widths: vec![16, 32, 64] })
            }
            ResNetStyle::Imagenet => {
                let (kind, blocks) = match self.depth {
                    18 => (BlockKind::Basic, vec![2, 2, 2, 2]),
                    34 => (BlockKind::Basic, vec![3, 4, 6, 3]),
                    50 => (BlockKind::Bottleneck, vec![3, 4, 6, 3]),
                    101 => (BlockKind::Bottleneck, vec![3, 4, 23, 3]),
                    152 => (BlockKind::Bottleneck, vec![3, 8, 36, 3]),
                    d => return Err(format!("an ImageNet ResNet has depth 18, 34, 50, 101 or 152, found {d}")),
                };
                Ok(Layout { kind, blocks, widths: vec![64, 128, 256, 512] })
            }
        }
    }

    pub(crate) fn validate(&self, path: &str) -> std::result::Result<(), String> {
        let layout = self.layout().map_err(|e| format!("{path}.depth: {e}"))?;
        if let Some(inner) = &self.inner_widths {
            let blocks: usize = layout.blocks.iter().sum();
            let per = layout.kind.inner_convs();
            if inner.len() != blocks {
                return Err(format!(
                    "{path}.inner_widths has {} entries, the network has {blocks} blocks",
                    inner.len()
                ));
            }
            if let Some((i, w)) = inner.iter().enumerate().find(|(_, w)| w.len() != per || w.contains(&0)) {
                return Err(format!("{path}.inner_widths[{i}] = {w:?}: expected {per} widths of at least 1"));
            }
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

/// How a forward pass normalises: batch statistics (`Train`), running
/// statistics (`Eval`), or running statistics folded into each
/// convolution's output pass with no gradient ([`Mode::Infer`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Pass {
    Train,
    Eval,
    Infer,
}

impl Pass {
    pub(crate) fn of(mode: &Mode) -> Self {
        match mode {
            Mode::Train(_) => Pass::Train,
            Mode::Eval => Pass::Eval,
            Mode::Infer => Pass::Infer,
        }
    }

    fn train(train: bool) -> Self {
        if train {
            Pass::Train
        } else {
            Pass::Eval
        }
    }
}

/// A block's shortcut.
enum Shortcut {
    /// Same shape: x.
    Identity,
    /// Option A: every `stride`-th pixel, `lo` and `hi` zero channels added.
    Pad { stride: usize, lo: usize, hi: usize },
    /// Option B: 1×1 convolution with stride, then BN.
    Projection(Conv2d, BatchNorm2d),
}

impl Shortcut {
    fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        match self {
            Shortcut::Identity => Ok(x.clone()),
            Shortcut::Pad { stride, lo, hi } => espalier_kernels::pool::subsample_pad(x, *stride, *lo, *hi),
            Shortcut::Projection(conv, bn) if pass == Pass::Infer => conv.forward_infer(Some(bn), x, None, false),
            Shortcut::Projection(conv, bn) => bn.forward(&conv.forward(x)?, pass == Pass::Train),
        }
    }
}

/// A residual block: convolutions with their BNs, and the shortcut.
struct Block {
    convs: Vec<(Conv2d, BatchNorm2d)>,
    shortcut: Shortcut,
}

/// How a block is built.
struct BlockSpec {
    kind: BlockKind,
    cin: usize,
    width: usize,
    stride: usize,
    shortcut: ShortcutKind,
    /// `shortcut` (CIFAR) or `downsample` (torchvision).
    proj_name: &'static str,
    /// Output channels of the inner convolutions (`width` unless pruned).
    inner: Vec<usize>,
}

impl Block {
    fn new(pb: &ParamBuilder, s: &BlockSpec) -> Result<Self> {
        let w = s.width;
        let shapes = match (s.kind, s.inner.as_slice()) {
            (BlockKind::Basic, &[a]) => vec![(s.cin, a, 3, s.stride, 1), (a, w, 3, 1, 1)],
            (BlockKind::Bottleneck, &[a, b]) => vec![(s.cin, a, 1, 1, 0), (a, b, 3, s.stride, 1), (b, 4 * w, 1, 1, 0)],
            _ => espalier_core::bail!("inner widths {:?} do not fit a {:?} block", s.inner, s.kind),
        };
        let mut convs = Vec::with_capacity(shapes.len());
        for (i, (cin, cout, k, stride, pad)) in shapes.into_iter().enumerate() {
            let conv = Conv2d::he(&pb.pp(format!("conv{}", i + 1)), cin, cout, k, stride, pad, false)?;
            convs.push((conv, BatchNorm2d::new(&pb.pp(format!("bn{}", i + 1)), cout)?));
        }
        let cout = w * s.kind.expansion();
        let shortcut = if s.stride == 1 && s.cin == cout {
            Shortcut::Identity
        } else {
            match s.shortcut {
                ShortcutKind::A if cout >= s.cin => {
                    let lo = (cout - s.cin) / 2;
                    Shortcut::Pad { stride: s.stride, lo, hi: cout - s.cin - lo }
                }
                ShortcutKind::A => {
                    espalier_core::bail!("option A shortcuts cannot narrow {} to {cout} channels", s.cin)
                }
                ShortcutKind::B => {
                    let p = pb.pp(s.proj_name);
                    let conv = Conv2d::he(&p.pp("0"), s.cin, cout, 1, s.stride, 0, false)?;
                    Shortcut::Projection(conv, BatchNorm2d::new(&p.pp("1"), cout)?)
                }
            }
        };
        Ok(Block { convs, shortcut })
    }

    fn forward(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let mut h = x.clone();
        let last = self.convs.len() - 1;
        if pass == Pass::Infer {
            // The last convolution's pass also adds the shortcut and applies the ReLU.
            let shortcut = self.shortcut.forward(x, pass)?;
            for (i, (conv, bn)) in self.convs.iter().enumerate() {
                h = conv.forward_infer(Some(bn), &h, (i == last).then_some(&shortcut), true)?;
            }
            return Ok(h);
        }
        let train = pass == Pass::Train;
        for (i, (conv, bn)) in self.convs.iter().enumerate() {
            let z = conv.forward(&h)?;
            h = if i < last { bn.forward_relu(&z, train)? } else { bn.forward(&z, train)? };
        }
        add_relu(&h, &self.shortcut.forward(x, pass)?)
    }
}

/// A ResNet: `conv1`, `bn1`, `layer1` … `layerN`, `fc`.
pub struct ResNet {
    cfg: ResNetConfig,
    conv1: Conv2d,
    bn1: BatchNorm2d,
    stem_pool: bool,
    stages: Vec<Vec<Block>>,
    fc: Linear,
    params: ParamStore,
}

impl ResNet {
    /// Builds the network described by `cfg`.
    pub fn new(cfg: ResNetConfig, pb: &ParamBuilder) -> Result<Self> {
        let layout = cfg.layout().map_err(espalier_core::Error::msg)?;
        let c0 = layout.widths[0];
        let (conv1, stem_pool) = match cfg.stem() {
            Stem::Cifar => (Conv2d::he(&pb.pp("conv1"), cfg.in_channels, c0, 3, 1, 1, false)?, false),
            Stem::Imagenet => (Conv2d::he(&pb.pp("conv1"), cfg.in_channels, c0, 7, 2, 3, false)?, true),
        };
        let bn1 = BatchNorm2d::new(&pb.pp("bn1"), c0)?;
        let proj_name = match cfg.style {
            ResNetStyle::Cifar => "shortcut",
            ResNetStyle::Imagenet => "downsample",
        };
        let mut cin = c0;
        let mut stages = Vec::new();
        let mut index = 0;
        for (s, (&n, &width)) in layout.blocks.iter().zip(&layout.widths).enumerate() {
            let stage = pb.pp(format!("layer{}", s + 1));
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                let stride = if s > 0 && i == 0 { 2 } else { 1 };
                let inner = match &cfg.inner_widths {
                    Some(w) => w[index].clone(),
                    None => vec![width; layout.kind.inner_convs()],
                };
                index += 1;
                let spec =
                    BlockSpec { kind: layout.kind, cin, width, stride, shortcut: cfg.shortcut(), proj_name, inner };
                blocks.push(Block::new(&stage.pp(i), &spec)?);
                cin = width * layout.kind.expansion();
            }
            stages.push(blocks);
        }
        let fc = Linear::new(&pb.pp("fc").head(), cin, cfg.num_classes, true)?;
        let params = pb.clone().finish().0;
        Ok(ResNet { cfg, conv1, bn1, stem_pool, stages, fc, params })
    }

    /// `(B, classes)` logits of `(B, C, H, W)` images.
    pub fn logits(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        self.logits_pass(x, Pass::train(train))
    }

    fn logits_pass(&self, x: &Tensor, pass: Pass) -> Result<Tensor> {
        let h = self.features(x, pass, self.stages.iter().map(Vec::len).sum())?;
        self.fc.forward(&global_avg_pool(&h)?)
    }

    /// The stem and the first `blocks` blocks.
    fn features(&self, x: &Tensor, pass: Pass, blocks: usize) -> Result<Tensor> {
        check_images(x, self.cfg.in_channels, "ResNet")?;
        let mut h = if pass == Pass::Infer {
            self.conv1.forward_infer(Some(&self.bn1), x, None, true)?
        } else {
            self.bn1.forward_relu(&self.conv1.forward(x)?, pass == Pass::Train)?
        };
        if self.stem_pool {
            h = max_pool2d(&h, 3, 2, 1)?;
        }
        for block in self.stages.iter().flatten().take(blocks) {
            h = block.forward(&h, pass)?;
        }
        Ok(h)
    }

    /// `(stage, block, conv)` of the inner set named `set`.
    fn inner_set(&self, set: &str) -> Result<(usize, usize, usize)> {
        self.inner_sets()
            .into_iter()
            .find(|(_, _, _, n)| n == set)
            .map(|(s, b, j, _)| (s, b, j))
            .ok_or_else(|| espalier_core::Error::msg(format!("no group set `{set}` in this ResNet")))
    }

    /// `(stage, block, conv)` of every block's inner convolutions, in order,
    /// with the group-set name `layer{s}.{b}.conv{j}`.
    fn inner_sets(&self) -> Vec<(usize, usize, usize, String)> {
        let mut out = Vec::new();
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                for j in 0..block.convs.len() - 1 {
                    out.push((s, b, j, format!("layer{}.{b}.conv{}", s + 1, j + 1)));
                }
            }
        }
        out
    }
}

/// Checks that `x` is a `(B, C, H, W)` batch with `channels` channels.
pub(crate) fn check_images(x: &Tensor, channels: usize, model: &str) -> Result<()> {
    match x.dims() {
        [_, c, _, _] if *c == channels => Ok(()),
        dims => espalier_core::bail!(
            "{model} takes (batch, {channels}, height, width) images (model.in_channels = {channels}), got {dims:?}"
        ),
    }
}

impl Model for ResNet {
    fn forward_t(&self, batch: &Batch, mode: &mut Mode) -> Result<StepOutput> {
        let Inputs::Dense(x) = &batch.inputs else {
            espalier_core::bail!("ResNet takes image inputs, not token sequences");
        };
        let logits = self.logits_pass(x, Pass::of(mode))?;
        Ok(StepOutput { loss: loss::cross_entropy(&logits, &batch.labels)?, logits, labels: batch.labels.clone() })
    }
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn config(&self) -> ModelConfig {
        ModelConfig::Resnet(self.cfg.clone())
    }
    /// The inner channels of every block (`layer{s}.{b}.conv{j}`): output
    /// channel c of `conv{j}` with its BN entries (weight, bias and running
    /// statistics) and input channel c of `conv{j+1}`. The channels the
    /// residual path ties together (block outputs) are not grouped.
    fn group_sets(&self) -> Vec<GroupSet> {
        self.inner_sets()
            .into_iter()
            .map(|(s, b, j, name)| {
                let pre = format!("layer{}.{b}", s + 1);
                let mut members: Vec<Member> = ["weight", "bias", "running_mean", "running_var"]
                    .iter()
                    .map(|p| Member::new(format!("{pre}.bn{}.{p}", j + 1), 0))
                    .collect();
                members.insert(0, Member::new(format!("{pre}.conv{}.weight", j + 1), 0));
                members.push(Member::new(format!("{pre}.conv{}.weight", j + 2), 1));
                let size = self.stages[s][b].convs[j].1.weight.dims()[0];
                let consumer = Some(format!("{pre}.conv{}.weight", j + 2));
                GroupSet { name, size, block: 1, members, consumer }
            })
            .collect()
    }
    /// `layer{s}.{b}.conv{j}`: the spatial mean of the channel's activation
    /// (after BN and ReLU) per image, `(B, C)`.
    fn probe(&self, batch: &Batch, set: &str) -> Result<Tensor> {
        Ok(self.consumer_input(batch, set)?.mean(D::Minus1)?.mean(D::Minus1)?)
    }
    /// `layer{s}.{b}.conv{j}`: the channel's activation maps (after BN and
    /// ReLU), `(B, C, H, W)`, the input of `conv{j+1}`.
    fn consumer_input(&self, batch: &Batch, set: &str) -> Result<Tensor> {
        let Inputs::Dense(x) = &batch.inputs else {
            espalier_core::bail!("ResNet takes image inputs, not token sequences");
        };
        let (s, b, j) = self.inner_set(set)?;
        let before: usize = self.stages[..s].iter().map(Vec::len).sum::<usize>() + b;
        let mut h = self.features(x, Pass::Eval, before)?;
        for (conv, bn) in &self.stages[s][b].convs[..=j] {
            h = bn.forward_relu(&conv.forward(&h)?, false)?;
        }
        Ok(h)
    }
    /// `layer{s}.{b}.conv{j}`'s consumer: `conv{j+1}` followed by the scale
    /// of `bn{j+1}` in evaluation mode (`γ/√(running_var + ε)`; its shift is
    /// not linear in `h`).
    fn consume(&self, set: &str, h: &Tensor) -> Result<Tensor> {
        let (s, b, j) = self.inner_set(set)?;
        let (conv, bn) = &self.stages[s][b].convs[j + 1];
        let y = conv.forward(h)?;
        let c = bn.channels();
        let var = bn.running_var.tensor().detach();
        let scale = (bn.weight.effective()?.detach() / (var + bn.eps)?.sqrt()?)?.reshape((1, c, 1, 1))?;
        Ok(y.broadcast_mul(&scale.to_dtype(y.dtype())?)?)
    }
    /// `layer{s}.{b}.conv{j}`: the shift of `bn{j+1}` in evaluation mode,
    /// `β − running_mean·γ/√(running_var + ε)`, as `(1, C, 1, 1)`.
    fn consume_offset(&self, set: &str) -> Result<Option<Tensor>> {
        let (s, b, j) = self.inner_set(set)?;
        let bn = &self.stages[s][b].convs[j + 1].1;
        let (_, shift) = bn.eval_affine()?;
        let c = shift.len();
        Ok(Some(Tensor::from_vec(shift, (1, c, 1, 1), bn.weight.tensor().device())?))
    }
    /// `layer{s}.{b}.conv{j}`: `conv{j+1}`, then `bn{j+1}`'s γ and β with
    /// the output's own batch statistics (no running statistic updated).
    fn consume_batch_stats(&self, set: &str, h: &Tensor) -> Result<Option<Tensor>> {
        let (s, b, j) = self.inner_set(set)?;
        let (conv, bn) = &self.stages[s][b].convs[j + 1];
        let y = conv.forward(h)?;
        let (gamma, beta) = (bn.weight.effective()?.detach(), bn.bias.effective()?.detach());
        let (out, _, _) =
            crate::norm::train_composed(&y, &gamma.to_dtype(y.dtype())?, &beta.to_dtype(y.dtype())?, bn.eps)?;
        Ok(Some(out))
    }
    /// `layer{s}.{b}.conv{j}` sits in block `b` of stage `s`.
    fn block_of(&self, set: &str) -> Option<BlockPos> {
        let (s, b, _) = self.inner_set(set).ok()?;
        Some(BlockPos { stage: s, index: b, blocks: self.stages[s].len() })
    }
    fn shrunk_config(&self, keep: &Keep) -> Result<ModelConfig> {
        let mut cfg = self.cfg.clone();
        let mut inner: Vec<Vec<usize>> = self
            .stages
            .iter()
            .flatten()
            .map(|blk| blk.convs[..blk.convs.len() - 1].iter().map(|(_, bn)| bn.weight.dims()[0]).collect())
            .collect();
        let mut index = 0;
        for (s, stage) in self.stages.iter().enumerate() {
            for (b, block) in stage.iter().enumerate() {
                for (j, w) in inner[index].iter_mut().enumerate().take(block.convs.len() - 1) {
                    if let Some(k) = keep.get(&format!("layer{}.{b}.conv{}", s + 1, j + 1)) {
                        if k.is_empty() {
                            espalier_core::bail!("layer{}.{b}.conv{} would keep no channels", s + 1, j + 1);
                        }
                        *w = k.len();
                    }
                }
                index += 1;
            }
        }
        cfg.inner_widths = Some(inner);
        Ok(ModelConfig::Resnet(cfg))
    }
    /// Multiply-adds ×2 of every convolution and the head for a 32×32 image
    /// (CIFAR; the input size is not part of the config).
    fn flops(&self, _seq_len: usize) -> Option<f64> {
        let x = Tensor::zeros((1, self.cfg.in_channels, 32, 32), candle_core::DType::F32, &candle_core::Device::Cpu)
            .ok()?;
        let mut total = 0.0;
        let mut conv = |c: &Conv2d, out: &Tensor| {
            let w = c.weight.dims();
            let (_, _, oh, ow) = out.dims4().unwrap_or((0, 0, 0, 0));
            total += 2.0 * (w.iter().product::<usize>() * oh * ow) as f64;
        };
        let mut h = self.conv1.forward(&x).ok()?;
        conv(&self.conv1, &h);
        if self.stem_pool {
            h = max_pool2d(&h, 3, 2, 1).ok()?;
        }
        for block in self.stages.iter().flatten() {
            let mut y = h.clone();
            for (c, _) in &block.convs {
                y = c.forward(&y).ok()?;
                conv(c, &y);
            }
            if let Shortcut::Projection(c, _) = &block.shortcut {
                conv(c, &y);
            }
            h = y;
        }
        let fc = self.fc.weight.dims();
        Some(total + 2.0 * (fc[0] * fc[1]) as f64)
    }
}
