//! Multi-layer perceptron; `hidden = [300, 100]` is LeNet-300-100
//! (LeCun et al. 1998; the network of Han et al. 2015, Table 1).

use candle_core::Tensor;
use espalier_core::{Batch, GroupSet, Inputs, Keep, Member, ParamBuilder, ParamStore, Result};
use serde::{Deserialize, Serialize};

use crate::layers::{Linear, PackOptions, PackedLayer};
use crate::{loss, Mode, Model, ModelConfig, StepOutput};

/// Hidden-layer nonlinearity.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// max(0, x).
    #[default]
    Relu,
    /// tanh(x).
    Tanh,
    /// 1/(1 + e^−x).
    Sigmoid,
    /// Gaussian error linear unit (erf form).
    Gelu,
}

impl Activation {
    /// Applies the nonlinearity.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Relu => espalier_kernels::fused::relu(x)?,
            Activation::Tanh => x.tanh()?,
            Activation::Sigmoid => candle_nn::ops::sigmoid(x)?,
            Activation::Gelu => espalier_kernels::fused::gelu(x, espalier_kernels::fused::Gelu::Erf)?,
        })
    }
}

/// MLP configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct MlpConfig {
    /// Input features (784 for 28×28 images; inputs are flattened).
    #[serde(default = "default_input")]
    pub input_dim: usize,
    /// Hidden widths, e.g. `[300, 100]`.
    pub hidden: Vec<usize>,
    /// Output classes.
    #[serde(default = "default_classes")]
    pub num_classes: usize,
    /// Hidden nonlinearity.
    #[serde(default)]
    pub activation: Activation,
}

fn default_input() -> usize {
    784
}
fn default_classes() -> usize {
    10
}

impl MlpConfig {
    /// LeNet-300-100.
    pub fn lenet_300_100() -> Self {
        MlpConfig { input_dim: 784, hidden: vec![300, 100], num_classes: 10, activation: Activation::Relu }
    }

    pub(crate) fn validate(&self, path: &str) -> std::result::Result<(), String> {
        if self.input_dim == 0 {
            return Err(format!("{path}.input_dim must be at least 1"));
        }
        if self.num_classes < 2 {
            return Err(format!("{path}.num_classes must be at least 2, found {}", self.num_classes));
        }
        if let Some(i) = self.hidden.iter().position(|&h| h == 0) {
            return Err(format!("{path}.hidden[{i}] must be at least 1"));
        }
        Ok(())
    }
}

/// The MLP: `fc1 … fcN` hidden layers, then the `head` layer.
pub struct Mlp {
    cfg: MlpConfig,
    layers: Vec<Linear>,
    head: Linear,
    params: ParamStore,
}

impl Mlp {
    /// Builds the MLP; parameters are named `fc1.weight`, …, `head.weight`.
    pub fn new(cfg: MlpConfig, pb: &ParamBuilder) -> Result<Self> {
        let mut layers = Vec::new();
        let mut d = cfg.input_dim;
        for (i, &h) in cfg.hidden.iter().enumerate() {
            layers.push(Linear::new(&pb.pp(format!("fc{}", i + 1)), d, h, true)?);
            d = h;
        }
        let head = Linear::new(&pb.pp("head").head(), d, cfg.num_classes, true)?;
        let params = pb.clone().finish().0;
        Ok(Mlp { cfg, layers, head, params })
    }

    /// Logits for `(B, ...)` inputs (flattened to `(B, input_dim)`).
    pub fn logits(&self, x: &Tensor) -> Result<Tensor> {
        self.logits_mode(x, false)
    }

    /// [`Mlp::logits`], through the packed sparse layers when `infer`
    /// ([`Model::pack_sparse`]).
    pub fn logits_mode(&self, x: &Tensor, infer: bool) -> Result<Tensor> {
        let mut h = x.flatten_from(1)?;
        for l in &self.layers {
            h = self.cfg.activation.apply(&l.forward_mode(&h, infer)?)?;
        }
        self.head.forward_mode(&h, infer)
    }

    /// Every linear layer, the head last.
    fn linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers.iter().chain(std::iter::once(&self.head))
    }

    /// The name of the layer after hidden layer `i` (0-based).
    fn consumer(&self, i: usize) -> String {
        if i + 1 < self.layers.len() {
            format!("fc{}.weight", i + 2)
        } else {
            "head.weight".into()
        }
    }
}

impl Model for Mlp {
    fn forward_t(&self, batch: &Batch, mode: &mut Mode) -> Result<StepOutput> {
        let Inputs::Dense(x) = &batch.inputs else {
            espalier_core::bail!("the MLP takes dense inputs, not token sequences");
        };
        let logits = self.logits_mode(x, matches!(mode, Mode::Infer))?;
        Ok(StepOutput { loss: loss::cross_entropy(&logits, &batch.labels)?, logits, labels: batch.labels.clone() })
    }
    fn params(&self) -> &ParamStore {
        &self.params
    }
    fn config(&self) -> ModelConfig {
        ModelConfig::Mlp(self.cfg.clone())
    }
    /// Hidden layer `fc{i}`'s neurons: its weight rows and bias, and the
    /// next layer's weight columns.
    fn group_sets(&self) -> Vec<GroupSet> {
        (0..self.layers.len())
            .map(|i| {
                let name = format!("fc{}", i + 1);
                GroupSet {
                    members: vec![
                        Member::new(format!("{name}.weight"), 0),
                        Member::new(format!("{name}.bias"), 0),
                        Member::new(self.consumer(i), 1),
                    ],
                    consumer: Some(self.consumer(i)),
                    size: self.cfg.hidden[i],
                    block: 1,
                    name,
                }
            })
            .collect()
    }
    /// `fc{i}`: the activations of hidden layer i, `(B, width)`.
    fn probe(&self, batch: &Batch, set: &str) -> Result<Tensor> {
        let Inputs::Dense(x) = &batch.inputs else {
            espalier_core::bail!("the MLP takes dense inputs, not token sequences");
        };
        let depth = set
            .strip_prefix("fc")
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&n| (1..=self.layers.len()).contains(&n))
            .ok_or_else(|| espalier_core::Error::msg(format!("no hidden layer `{set}` in this MLP")))?;
        let mut h = x.flatten_from(1)?;
        for l in &self.layers[..depth] {
            h = self.cfg.activation.apply(&l.forward(&h)?)?;
        }
        Ok(h)
    }
    /// `2·in·out` per layer (head included).
    fn flops(&self, _seq_len: usize) -> Option<f64> {
        let mut dims = vec![self.cfg.input_dim];
        dims.extend(&self.cfg.hidden);
        dims.push(self.cfg.num_classes);
        Some(dims.windows(2).map(|w| 2.0 * (w[0] * w[1]) as f64).sum())
    }
    /// The hidden layers' activation (sets `fc1`, `fc2`, …).
    fn unit_activation(&self, set: &str, pre: &Tensor) -> Result<Option<Tensor>> {
        let hidden = set.strip_prefix("fc").and_then(|n| n.parse::<usize>().ok());
        Ok(match hidden {
            Some(n) if (1..=self.layers.len()).contains(&n) => Some(self.cfg.activation.apply(pre)?),
            _ => None,
        })
    }
    /// Every layer, the head included.
    fn pack_sparse(&self, opts: &PackOptions) -> Result<Vec<PackedLayer>> {
        self.linears().map(|l| l.pack_sparse(opts)).collect()
    }
    fn unpack_sparse(&self) {
        self.linears().for_each(Linear::unpack_sparse)
    }
    fn shrunk_config(&self, keep: &Keep) -> Result<ModelConfig> {
        let mut cfg = self.cfg.clone();
        for (i, h) in cfg.hidden.iter_mut().enumerate() {
            if let Some(units) = keep.get(&format!("fc{}", i + 1)) {
                if units.is_empty() {
                    espalier_core::bail!("fc{} would keep no units: an MLP layer cannot have width 0", i + 1);
                }
                *h = units.len();
            }
        }
        Ok(ModelConfig::Mlp(cfg))
    }
}
