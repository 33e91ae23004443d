//! BERT (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional
//! Transformers for Language Understanding", arXiv:1810.04805), trainable
//! and prunable, with Hugging Face's parameter names and checkpoint layout.
//!
//! The computation is the Transformer encoder of Vaswani et al. (2017,
//! "Attention Is All You Need", arXiv:1706.03762; eq. 1 for the attention)
//! as BERT uses it (post-LayerNorm), following Hugging Face Transformers'
//! `BertModel`:
//!
//! - embeddings: `LN(word[ids] + position[0..T] + token_type[tt])`, dropout;
//! - per layer, self-attention with `h` heads of size `d = H / A`:
//!   `softmax(QKᵀ/√d + bias) V` with `bias = (1 − mask)·min_f32`, attention
//!   dropout, then `LN(x + dropout(Wₒ ctx + bₒ))`;
//! - feed-forward: `LN(a + dropout(W₂ GELU(W₁ a + b₁) + b₂))`;
//! - pooler `tanh(W_p h_[CLS] + b_p)`, dropout, `classifier`.
//!
//! Structural pruning is represented by per-layer widths
//! ([`BertConfig::heads_per_layer`], [`BertConfig::ffn_per_layer`]). A layer
//! with 0 heads (or 0 feed-forward units) has no Q/K/V and no `Wₒ` (no `W₁`,
//! `W₂`): its sublayer computes nothing and only the residual path remains,
//! `LN(x + bₒ)` (`LN(a + b₂)`). The output bias and LayerNorm stay because
//! they are what a fully masked sublayer still computes, so shrinking a
//! masked model is exact (as HF's `prune_heads` does).
//!
//! Parameter names are HF's without the `bert.` prefix
//! (`embeddings.word_embeddings.weight`,
//! `encoder.layer.3.attention.self.query.weight`, `pooler.dense.weight`,
//! `classifier.weight`); the classifier is the task head (excluded from
//! pruning). [`Bert::save_pretrained`] writes HF's
//! `BertForSequenceClassification` layout (`bert.` + name, `classifier.*`);
//! [`Bert::from_pretrained`] reads it, a bare `BertModel` (no prefix, e.g.
//! sentence-transformers' MiniLM), old `gamma`/`beta` LayerNorm names,
//! `model.safetensors` (also sharded) or `pytorch_model.bin`.
//!
//! LayerNorm, the scaled and masked attention softmax and GELU are
//! Espalier's fused kernels with their own backward
//! ([`espalier_kernels::fused`]; candle's fused versions have no backward),
//! and dropout masks come from the project's seeded [`Rng`] in
//! [`Mode::Train`] only.

pub mod config;
pub mod download;
pub mod export;
pub mod hub;
mod io;

use candle_core::{DType, Device, Tensor};
use espalier_core::init::Init;
use espalier_core::{Batch, GroupSet, Inputs, Keep, Member, Param, ParamBuilder, ParamKind, ParamStore, Result, Rng};

use crate::layers::{dropout, dropout_mask, Embedding, LayerNorm, Linear, PackOptions, PackedLayer};
use crate::{loss, ConstantUnits, Mode, Model, ModelConfig, StepOutput};
use espalier_kernels::fused::{self, Gelu};

pub use config::{BertConfig, BertTask, HiddenAct};
pub use espalier_kernels::attention::attention_bias;
pub use io::{normalize_hf_names, read_weights, CONFIG_FILE, PYTORCH_FILE, SAFETENSORS_FILE, SAFETENSORS_INDEX_FILE};

/// A dense layer with HF's init: W ~ N(0, σ²), b = 0.
fn dense(pb: &ParamBuilder, in_dim: usize, out_dim: usize, std: f64) -> Result<Linear> {
    let weight = pb.param("weight", &[out_dim, in_dim], ParamKind::Weight, Init::Normal { std })?;
    let bias = pb.param("bias", &[out_dim], ParamKind::Bias, Init::Const(0.0))?;
    Ok(Linear::from_params(weight, Some(bias)))
}

/// Word, position and token-type embeddings, LayerNorm.
#[derive(Clone, Debug)]
pub struct BertEmbeddings {
    /// `word_embeddings`.
    pub word: Embedding,
    /// `position_embeddings`.
    pub position: Embedding,
    /// `token_type_embeddings`.
    pub token_type: Embedding,
    /// `LayerNorm`.
    pub norm: LayerNorm,
}

/// A sublayer's output projection, dropout, residual and LayerNorm. With a
/// width of 0 the weight is absent and only the bias remains.
#[derive(Clone, Debug)]
pub struct ResidualOut {
    /// `dense.weight` `(H, width)`, absent when the width is 0.
    pub weight: Option<Param>,
    /// `dense.bias` `(H,)`.
    pub bias: Param,
    /// `LayerNorm`.
    pub norm: LayerNorm,
    /// `weight` and `bias` as a layer (what runs, and holds the packed copy).
    linear: Option<Linear>,
}

impl ResidualOut {
    fn new(pb: &ParamBuilder, width: usize, hidden: usize, std: f64, eps: f64) -> Result<Self> {
        let d = pb.pp("dense");
        let weight = if width > 0 {
            Some(d.param("weight", &[hidden, width], ParamKind::Weight, Init::Normal { std })?)
        } else {
            None
        };
        let bias = d.param("bias", &[hidden], ParamKind::Bias, Init::Const(0.0))?;
        let linear = weight.clone().map(|w| Linear::from_params(w, Some(bias.clone())));
        Ok(ResidualOut { weight, bias, norm: LayerNorm::new(&pb.pp("LayerNorm"), hidden, eps)?, linear })
    }

    /// `LN(residual + dropout(W inner + b))`, or `LN(residual + dropout(b))`
    /// when the sublayer is empty; the packed sparse `W` when `infer`.
    fn forward(
        &self,
        inner: Option<&Tensor>,
        residual: &Tensor,
        p: f64,
        rng: Option<&mut Rng>,
        infer: bool,
    ) -> Result<Tensor> {
        let y = match (inner, &self.linear) {
            (Some(h), Some(l)) => l.forward_mode(h, infer)?,
            _ => self.bias.effective()?.broadcast_as(residual.shape())?,
        };
        let y = dropout(&y, p, rng)?;
        self.norm.forward(&(y + residual)?)
    }
}

/// Multi-head self-attention with `heads` heads (Q, K, V absent when 0).
#[derive(Clone, Debug)]
pub struct BertAttention {
    /// Number of heads of this layer.
    pub heads: usize,
    /// Size of each head.
    pub head_size: usize,
    /// `self.query`, `self.key`, `self.value`.
    pub qkv: Option<[Linear; 3]>,
    /// `output`.
    pub output: ResidualOut,
}

/// Intermediate dense + activation and its output projection.
#[derive(Clone, Debug)]
pub struct BertFeedForward {
    /// Number of feed-forward units of this layer.
    pub width: usize,
    /// `intermediate.dense`, absent when the width is 0.
    pub intermediate: Option<Linear>,
    /// `output`.
    pub output: ResidualOut,
}

/// One encoder layer.
#[derive(Clone, Debug)]
pub struct BertLayer {
    /// Self-attention block.
    pub attention: BertAttention,
    /// Feed-forward block.
    pub ffn: BertFeedForward,
}

/// BERT with a sequence-classification (or regression) head.
pub struct Bert {
    cfg: BertConfig,
    /// Embeddings.
    pub embeddings: BertEmbeddings,
    /// Encoder layers.
    pub layers: Vec<BertLayer>,
    /// `pooler.dense`.
    pub pooler: Linear,
    /// `classifier` (the task head).
    pub classifier: Linear,
    params: ParamStore,
}

impl std::fmt::Debug for Bert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bert").field("config", &self.cfg).finish_non_exhaustive()
    }
}

impl Bert {
    /// Builds the model, declaring HF-named parameters through `pb` (seeded
    /// N(0, initializer_range²) init, or loaded tensors).
    pub fn new(cfg: BertConfig, pb: &ParamBuilder) -> Result<Self> {
        cfg.validate("model").map_err(espalier_core::Error::Msg)?;
        let h = cfg.hidden_size;
        let std = cfg.initializer_range;
        let eps = cfg.layer_norm_eps;
        let e = pb.pp("embeddings");
        let embeddings = BertEmbeddings {
            word: Embedding::new(&e.pp("word_embeddings"), cfg.vocab_size, h, std)?,
            position: Embedding::new(&e.pp("position_embeddings"), cfg.max_position_embeddings, h, std)?,
            token_type: Embedding::new(&e.pp("token_type_embeddings"), cfg.type_vocab_size, h, std)?,
            norm: LayerNorm::new(&e.pp("LayerNorm"), h, eps)?,
        };
        let hs = cfg.head_size();
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let lp = pb.pp("encoder.layer").pp(l);
            let heads = cfg.heads(l);
            let ap = lp.pp("attention");
            let qkv = if heads > 0 {
                let sp = ap.pp("self");
                Some([
                    dense(&sp.pp("query"), h, heads * hs, std)?,
                    dense(&sp.pp("key"), h, heads * hs, std)?,
                    dense(&sp.pp("value"), h, heads * hs, std)?,
                ])
            } else {
                None
            };
            let attention = BertAttention {
                heads,
                head_size: hs,
                qkv,
                output: ResidualOut::new(&ap.pp("output"), heads * hs, h, std, eps)?,
            };
            let width = cfg.ffn(l);
            let intermediate = if width > 0 { Some(dense(&lp.pp("intermediate.dense"), h, width, std)?) } else { None };
            let ffn = BertFeedForward {
                width,
                intermediate,
                output: ResidualOut::new(&lp.pp("output"), width, h, std, eps)?,
            };
            layers.push(BertLayer { attention, ffn });
        }
        let pooler = dense(&pb.pp("pooler.dense"), h, h, std)?;
        let classifier = dense(&pb.pp("classifier").head(), h, cfg.task.num_outputs(), std)?;
        let params = pb.clone().finish().0;
        Ok(Bert { cfg, embeddings, layers, pooler, classifier, params })
    }

    /// A freshly initialised model from `seed`.
    pub fn init(cfg: BertConfig, seed: u64, device: &Device) -> Result<Self> {
        Self::new(cfg, &ParamBuilder::from_seed(seed, DType::F32, device))
    }

    /// The encoder's linear layers, in forward order.
    fn encoder_linears(&self) -> impl Iterator<Item = &Linear> {
        self.layers.iter().flat_map(|l| {
            let qkv = l.attention.qkv.iter().flatten();
            qkv.chain(&l.attention.output.linear).chain(&l.ffn.intermediate).chain(&l.ffn.output.linear)
        })
    }

    /// The configuration.
    pub fn bert_config(&self) -> &BertConfig {
        &self.cfg
    }

    fn embed(&self, input_ids: &Tensor, token_type_ids: &Tensor, rng: Option<&mut Rng>) -> Result<Tensor> {
        let (_, t) = input_ids.dims2()?;
        if t > self.cfg.max_position_embeddings {
            espalier_core::bail!(
                "sequence length {t} exceeds max_position_embeddings ({})",
                self.cfg.max_position_embeddings
            );
        }
        let e = &self.embeddings;
        let pos = Tensor::arange(0u32, t as u32, input_ids.device())?;
        let x = e
            .word
            .forward(input_ids)?
            .add(&e.token_type.forward(token_type_ids)?)?
            .broadcast_add(&e.position.forward(&pos)?)?;
        let x = e.norm.forward(&x)?;
        dropout(&x, self.cfg.hidden_dropout_prob, rng)
    }

    /// The heads' context vectors `(B, T, heads·d)` (the input of the
    /// attention output projection), or `None` for a layer without heads.
    fn attention_context(
        &self,
        a: &BertAttention,
        x: &Tensor,
        bias: &Tensor,
        rng: Option<&mut Rng>,
        infer: bool,
    ) -> Result<Option<Tensor>> {
        let Some([q, k, v]) = &a.qkv else { return Ok(None) };
        let (b, t, _) = x.dims3()?;
        let mask = dropout_mask(b * a.heads * t * t, self.cfg.attention_probs_dropout_prob, rng);
        Ok(Some(espalier_kernels::attention::attention(
            &q.forward_mode(x, infer)?,
            &k.forward_mode(x, infer)?,
            &v.forward_mode(x, infer)?,
            bias,
            a.heads,
            mask,
        )?))
    }

    fn attention(
        &self,
        a: &BertAttention,
        x: &Tensor,
        bias: &Tensor,
        mut rng: Option<&mut Rng>,
        infer: bool,
    ) -> Result<Tensor> {
        let ctx = self.attention_context(a, x, bias, rng.as_deref_mut(), infer)?;
        a.output.forward(ctx.as_ref(), x, self.cfg.hidden_dropout_prob, rng, infer)
    }

    /// The feed-forward units' activations `GELU(W₁ a + b₁)`, `(B, T, width)`.
    fn ffn_activations(&self, f: &BertFeedForward, x: &Tensor, infer: bool) -> Result<Option<Tensor>> {
        let Some(inter) = &f.intermediate else { return Ok(None) };
        let h = inter.forward_mode(x, infer)?;
        Ok(Some(match self.cfg.hidden_act {
            HiddenAct::Gelu => fused::gelu(&h, Gelu::Erf)?,
            HiddenAct::GeluTanh => fused::gelu(&h, Gelu::Tanh)?,
            HiddenAct::Relu => h.relu()?,
        }))
    }

    /// Group-set activations (see [`Model::probe`]): layer `l`'s head
    /// contexts or feed-forward activations on the real tokens of `batch`.
    fn probe_layer(&self, batch: &Batch, layer: usize, heads: bool) -> Result<Tensor> {
        let Inputs::Tokens { input_ids, token_type_ids, attention_mask } = &batch.inputs else {
            espalier_core::bail!("BERT takes token sequences, not dense inputs");
        };
        let mut x = self.embed(input_ids, token_type_ids, None)?;
        let bias = attention_bias(attention_mask, x.dtype())?;
        for l in &self.layers[..layer] {
            x = self.attention(&l.attention, &x, &bias, None, false)?;
            x = self.feed_forward(&l.ffn, &x, None, false)?;
        }
        let l = &self.layers[layer];
        let h = if heads {
            self.attention_context(&l.attention, &x, &bias, None, false)?
        } else {
            let a = self.attention(&l.attention, &x, &bias, None, false)?;
            self.ffn_activations(&l.ffn, &a, false)?
        };
        let h = h.ok_or_else(|| espalier_core::Error::msg(format!("layer {layer} has no units left to probe")))?;
        // Rows of the real (unpadded) tokens only.
        let (b, t, w) = h.dims3()?;
        let mask = attention_mask.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let rows: Vec<u32> = (0..b * t).filter(|&i| mask[i] > 0.5).map(|i| i as u32).collect();
        let rows = Tensor::from_vec(rows.clone(), rows.len(), h.device())?;
        Ok(h.reshape((b * t, w))?.index_select(&rows, 0)?)
    }

    fn feed_forward(&self, f: &BertFeedForward, x: &Tensor, rng: Option<&mut Rng>, infer: bool) -> Result<Tensor> {
        let h = self.ffn_activations(f, x, infer)?;
        f.output.forward(h.as_ref(), x, self.cfg.hidden_dropout_prob, rng, infer)
    }

    /// The final hidden states `(B, T, H)` (what HF's `BertModel` returns as
    /// `last_hidden_state`). `input_ids` and `token_type_ids` are `(B, T)`
    /// u32, `attention_mask` `(B, T)` with 1 for real tokens. Dropout is
    /// applied when `rng` is given.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        self.encode_mode(input_ids, token_type_ids, attention_mask, rng, false)
    }

    /// [`Bert::encode`], through the packed sparse layers when `infer`.
    fn encode_mode(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mut rng: Option<&mut Rng>,
        infer: bool,
    ) -> Result<Tensor> {
        let mut x = self.embed(input_ids, token_type_ids, rng.as_deref_mut())?;
        let bias = attention_bias(attention_mask, x.dtype())?;
        for layer in &self.layers {
            x = self.attention(&layer.attention, &x, &bias, rng.as_deref_mut(), infer)?;
            x = self.feed_forward(&layer.ffn, &x, rng.as_deref_mut(), infer)?;
            if infer {
                // The weights are variables, so every output holds the graph
                // of its inputs: without the cut, the activations of every
                // layer stay alive until the logits are dropped (the
                // BERT-base-shaped forward at batch 32 × 128 peaked at 1.25
                // GB with 4 layers, 0.48 with 1).
                x = x.detach();
            }
        }
        Ok(x)
    }

    /// The pooled `[CLS]` representation `tanh(W_p h₀ + b_p)`, `(B, H)`.
    pub fn pool(&self, hidden: &Tensor) -> Result<Tensor> {
        Ok(self.pooler.forward(&hidden.narrow(1, 0, 1)?.squeeze(1)?)?.tanh()?)
    }

    /// Task outputs: `(B, num_labels)` logits, or `(B,)` for regression.
    pub fn logits(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        rng: Option<&mut Rng>,
    ) -> Result<Tensor> {
        self.logits_mode(input_ids, token_type_ids, attention_mask, rng, false)
    }

    /// [`Bert::logits`], through the packed sparse layers when `infer`
    /// ([`Model::pack_sparse`]; the pooler and classifier stay dense).
    fn logits_mode(
        &self,
        input_ids: &Tensor,
        token_type_ids: &Tensor,
        attention_mask: &Tensor,
        mut rng: Option<&mut Rng>,
        infer: bool,
    ) -> Result<Tensor> {
        let hidden = self.encode_mode(input_ids, token_type_ids, attention_mask, rng.as_deref_mut(), infer)?;
        let pooled = dropout(&self.pool(&hidden)?, self.cfg.classifier_dropout_prob(), rng)?;
        let out = self.classifier.forward(&pooled)?;
        Ok(match self.cfg.task {
            BertTask::Regression => out.squeeze(1)?,
            BertTask::Classification { .. } => out,
        })
    }

    /// Logits of a token batch.
    pub fn batch_logits(&self, batch: &Batch, mode: &mut Mode) -> Result<Tensor> {
        let Inputs::Tokens { input_ids, token_type_ids, attention_mask } = &batch.inputs else {
            espalier_core::bail!("BERT takes token sequences, not dense inputs");
        };
        let infer = matches!(mode, Mode::Infer);
        let rng = match mode {
            Mode::Train(r) => Some(&mut **r),
            Mode::Eval | Mode::Infer => None,
        };
        self.logits_mode(input_ids, token_type_ids, attention_mask, rng, infer)
    }
}

impl Model for Bert {
    fn forward_t(&self, batch: &Batch, mode: &mut Mode) -> Result<StepOutput> {
        let logits = self.batch_logits(batch, mode)?;
        let loss = match self.cfg.task {
            BertTask::Classification { .. } => loss::cross_entropy(&logits, &batch.labels)?,
            BertTask::Regression => loss::mse(&logits, &batch.labels)?,
        };
        Ok(StepOutput { loss, logits, labels: batch.labels.clone() })
    }
    fn params(&self) -> &ParamStore {
        &self.params
    }
    /// The feed-forward units' activation (sets `encoder.layer.{l}.intermediate`).
    fn unit_activation(&self, set: &str, pre: &Tensor) -> Result<Option<Tensor>> {
        if !set.ends_with(".intermediate") {
            return Ok(None);
        }
        Ok(Some(match self.cfg.hidden_act {
            HiddenAct::Gelu => fused::gelu(pre, Gelu::Erf)?,
            HiddenAct::GeluTanh => fused::gelu(pre, Gelu::Tanh)?,
            HiddenAct::Relu => pre.relu()?,
        }))
    }
    /// Feed-forward units as the default has them (`act(b_j)` when their
    /// rows of the intermediate weight are empty); a head whose rows of the
    /// value weight are all zero outputs its value bias whatever its
    /// queries and keys, because every row of the attention softmax sums
    /// to one.
    fn constant_units(&self, set: &GroupSet) -> Result<Option<ConstantUnits>> {
        let Some(pre) = set.name.strip_suffix(".attention.heads") else {
            return crate::fold::activation_constants(self, set);
        };
        let (w, b) = (format!("{pre}.attention.self.value.weight"), format!("{pre}.attention.self.value.bias"));
        let params = self.params();
        let w = params.get(&w)?.effective()?.detach().to_dtype(DType::F32)?;
        let constant = crate::fold::empty_row_blocks(&w, set.block)?;
        let values = params.get(&b)?.effective()?.detach().to_dtype(DType::F32)?;
        Ok(Some(ConstantUnits { constant, values }))
    }
    /// A feed-forward block may lose all its units (only `LN(a + b₂)`
    /// remains), and an attention block all its heads (`LN(x + b_o)`).
    fn allows_empty_set(&self, set: &str) -> bool {
        set.ends_with(".intermediate") || set.ends_with(".attention.heads")
    }
    /// The encoder's Q, K, V, attention output, FFN intermediate and output
    /// layers; the pooler and classifier stay dense.
    fn pack_sparse(&self, opts: &PackOptions) -> Result<Vec<PackedLayer>> {
        self.encoder_linears().map(|l| l.pack_sparse(opts)).collect()
    }
    fn unpack_sparse(&self) {
        self.encoder_linears().for_each(Linear::unpack_sparse)
    }
    fn config(&self) -> ModelConfig {
        ModelConfig::Bert(self.cfg.clone())
    }
    /// Per layer `l` (layers with units left): `encoder.layer.l.attention.heads`
    /// (each head its `d` rows of Q, K, V and their biases, and its `d`
    /// columns of the attention output projection) and
    /// `encoder.layer.l.intermediate` (each feed-forward unit a row of the
    /// intermediate dense and its bias, and a column of the output dense).
    fn group_sets(&self) -> Vec<GroupSet> {
        let mut sets = Vec::new();
        for (l, layer) in self.layers.iter().enumerate() {
            let pre = format!("encoder.layer.{l}");
            if layer.attention.heads > 0 {
                let out = format!("{pre}.attention.output.dense.weight");
                let mut members: Vec<Member> = ["query", "key", "value"]
                    .iter()
                    .flat_map(|n| ["weight", "bias"].map(|s| Member::new(format!("{pre}.attention.self.{n}.{s}"), 0)))
                    .collect();
                members.push(Member::new(out.clone(), 1));
                sets.push(GroupSet {
                    name: format!("{pre}.attention.heads"),
                    size: layer.attention.heads,
                    block: layer.attention.head_size,
                    members,
                    consumer: Some(out),
                });
            }
            if layer.ffn.width > 0 {
                let out = format!("{pre}.output.dense.weight");
                sets.push(GroupSet {
                    name: format!("{pre}.intermediate"),
                    size: layer.ffn.width,
                    block: 1,
                    members: vec![
                        Member::new(format!("{pre}.intermediate.dense.weight"), 0),
                        Member::new(format!("{pre}.intermediate.dense.bias"), 0),
                        Member::new(out.clone(), 1),
                    ],
                    consumer: Some(out),
                });
            }
        }
        sets
    }
    fn probe(&self, batch: &Batch, set: &str) -> Result<Tensor> {
        let parsed = set.strip_prefix("encoder.layer.").and_then(|rest| {
            let (l, kind) = rest.split_once('.')?;
            let l: usize = l.parse().ok().filter(|&l| l < self.layers.len())?;
            match kind {
                "attention.heads" => Some((l, true)),
                "intermediate" => Some((l, false)),
                _ => None,
            }
        });
        let (layer, heads) =
            parsed.ok_or_else(|| espalier_core::Error::msg(format!("no group set `{set}` in this BERT")))?;
        self.probe_layer(batch, layer, heads)
    }
    /// Per token and layer: Q, K, V and output projections `2·4·H·(A·d)`,
    /// scores and context `2·2·T·(A·d)`, feed-forward `2·2·H·F`; plus the
    /// pooler and classifier once per example (embedding lookups are free).
    fn flops(&self, seq_len: usize) -> Option<f64> {
        let (h, t) = (self.cfg.hidden_size as f64, seq_len as f64);
        let per_token: f64 = (0..self.cfg.num_hidden_layers)
            .map(|l| {
                let ad = (self.cfg.heads(l) * self.cfg.head_size()) as f64;
                8.0 * h * ad + 4.0 * t * ad + 4.0 * h * self.cfg.ffn(l) as f64
            })
            .sum();
        Some(t * per_token + 2.0 * h * h + 2.0 * h * self.cfg.task.num_outputs() as f64)
    }
    /// Per-layer head counts and feed-forward widths of the kept units; a
    /// layer may keep none (only its residual path and LayerNorm remain).
    fn shrunk_config(&self, keep: &Keep) -> Result<ModelConfig> {
        let mut cfg = self.cfg.clone();
        let n = cfg.num_hidden_layers;
        let mut heads: Vec<usize> = (0..n).map(|l| self.cfg.heads(l)).collect();
        let mut ffn: Vec<usize> = (0..n).map(|l| self.cfg.ffn(l)).collect();
        for l in 0..n {
            if let Some(k) = keep.get(&format!("encoder.layer.{l}.attention.heads")) {
                heads[l] = k.len();
            }
            if let Some(k) = keep.get(&format!("encoder.layer.{l}.intermediate")) {
                ffn[l] = k.len();
            }
        }
        cfg.heads_per_layer = Some(heads);
        cfg.ffn_per_layer = Some(ffn);
        Ok(ModelConfig::Bert(cfg))
    }
}
