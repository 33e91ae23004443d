//! The unit of data every model consumes: a [`Batch`] of [`Inputs`] and
//! labels. Datasets (`espalier-data`) produce batches; models
//! (`espalier-models`) read them; neither needs the other's crate.

use candle_core::Tensor;

/// The inputs of one batch.
#[derive(Clone, Debug)]
pub enum Inputs {
    /// A dense float tensor (images: `(B, C, H, W)` or flattened `(B, D)`).
    Dense(Tensor),
    /// Token sequences, padded to the longest in the batch.
    Tokens {
        /// `(B, T)` u32 token ids.
        input_ids: Tensor,
        /// `(B, T)` u32 segment ids.
        token_type_ids: Tensor,
        /// `(B, T)` f32, 1 for real tokens and 0 for padding.
        attention_mask: Tensor,
    },
}

/// One mini-batch.
#[derive(Clone, Debug)]
pub struct Batch {
    /// Model inputs.
    pub inputs: Inputs,
    /// `(B,)` u32 class ids, or `(B,)` f32 targets for regression.
    pub labels: Tensor,
}

impl Batch {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.dims().first().copied().unwrap_or(0)
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
