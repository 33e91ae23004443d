//! Coupled groups: the units that structured pruning removes together.
//!
//! A [`GroupSet`] is one layer's worth of units (the hidden neurons of an MLP
//! layer, the heads or the feed-forward units of a BERT layer, the inner
//! channels of a residual block). Unit `j` owns, in every [`Member`]
//! tensor, the `block` consecutive indices `j·block .. (j+1)·block` along
//! the member's axis: the producing rows (axis 0 of a weight and its bias)
//! and the consuming columns (axis 1 of the next weight). Removing a unit
//! removes all of them at once (a neuron: row `j` of the layer that
//! produces it, its bias, and column `j` of every layer that consumes it; a
//! convolution channel likewise with its BatchNorm entries; a BERT attention
//! head: its rows of Q, K and V and its columns of the output projection),
//! so masking a unit and slicing it out compute the same function.
//!
//! [`mask_groups`] zeroes removed units through the masks (the model keeps
//! its shape); [`slice_groups`] cuts them out (the shapes shrink; the model
//! builds its smaller config from the kept counts).

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};

use crate::{bail, ParamStore, Result};

/// One tensor's share of a group set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Parameter name.
    pub param: String,
    /// The axis the units index (0: rows/outputs, 1: columns/inputs).
    pub axis: usize,
}

impl Member {
    /// A member indexed along `axis`.
    pub fn new(param: impl Into<String>, axis: usize) -> Self {
        Member { param: param.into(), axis }
    }
}

/// A set of coupled units.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupSet {
    /// Name (e.g. `fc1`, `encoder.layer.3.attention.heads`).
    pub name: String,
    /// Number of units.
    pub size: usize,
    /// Indices per unit along each member's axis (the head size for heads).
    pub block: usize,
    /// Every tensor a unit owns a slice of.
    pub members: Vec<Member>,
    /// The weight that consumes the units' activations (what i-SpaSP's
    /// residual goes through): a matrix `(out, size·block)`, or a
    /// convolution whose model applies it in `Model::consume`.
    pub consumer: Option<String>,
}

/// Kept unit indices (sorted, distinct) per group-set name.
pub type Keep = BTreeMap<String, Vec<usize>>;

impl GroupSet {
    /// Element indices along a member's axis for the units `units`.
    pub fn expand(&self, units: &[usize]) -> Vec<u32> {
        units.iter().flat_map(|&u| (u * self.block..(u + 1) * self.block).map(|i| i as u32)).collect()
    }

    /// Checks `units` against the set: sorted, distinct, in range.
    pub fn check(&self, units: &[usize]) -> Result<()> {
        if let Some(w) = units.windows(2).find(|w| w[0] >= w[1]) {
            bail!("group set `{}`: kept units must be sorted and distinct ({} then {})", self.name, w[0], w[1]);
        }
        if let Some(&u) = units.iter().find(|&&u| u >= self.size) {
            bail!("group set `{}` has {} units; kept index {u} is out of range", self.name, self.size);
        }
        Ok(())
    }

    /// A per-unit reduction of a member tensor: `(size, rest)` where row `j`
    /// holds every element unit `j` owns in `t`.
    pub fn unit_rows(&self, t: &Tensor, axis: usize) -> Result<Tensor> {
        let t = if axis == 0 { t.clone() } else { t.transpose(0, axis)?.contiguous()? };
        Ok(t.reshape((self.size, ()))?)
    }
}

/// Multiplies the masks of every member by a 0/1 mask that zeroes the units
/// not in `keep` (sets absent from `keep` are left alone).
pub fn mask_groups(store: &ParamStore, sets: &[GroupSet], keep: &Keep) -> Result<()> {
    for set in sets {
        let Some(units) = keep.get(&set.name) else { continue };
        set.check(units)?;
        let mut on = vec![0f32; set.size * set.block];
        for i in set.expand(units) {
            on[i as usize] = 1.0;
        }
        for m in &set.members {
            let p = store.get(&m.param)?;
            let dims = p.dims();
            let mut shape = vec![1; dims.len()];
            shape[m.axis] = dims[m.axis];
            let unit_mask = Tensor::from_vec(on.clone(), shape, &p.tensor().device().clone())?
                .to_dtype(p.tensor().dtype())?
                .broadcast_as(dims.as_slice())?;
            let mask = match p.mask() {
                Some(old) => old.mul(&unit_mask)?,
                None => unit_mask.contiguous()?,
            };
            p.set_mask(Some(mask))?;
        }
    }
    Ok(())
}

/// The weights and masks of `store` with the units outside `keep` cut out of
/// every member (other tensors copied as they are). Masks are keyed by
/// parameter name like the weights.
pub fn slice_groups(
    store: &ParamStore,
    sets: &[GroupSet],
    keep: &Keep,
) -> Result<(BTreeMap<String, Tensor>, BTreeMap<String, Tensor>)> {
    let mut weights = store.snapshot()?;
    let mut masks = store.masks();
    for set in sets {
        let Some(units) = keep.get(&set.name) else { continue };
        set.check(units)?;
        let idx = set.expand(units);
        for m in &set.members {
            let cut = |t: &Tensor, dev: &Device| -> Result<Tensor> {
                if t.dims().get(m.axis) != Some(&(set.size * set.block)) {
                    bail!(
                        "group set `{}`: `{}` has shape {:?}, expected {} along axis {}",
                        set.name,
                        m.param,
                        t.dims(),
                        set.size * set.block,
                        m.axis
                    );
                }
                let ids = Tensor::from_vec(idx.clone(), idx.len(), dev)?;
                Ok(t.index_select(&ids, m.axis)?.contiguous()?)
            };
            let w = weights.get(&m.param).ok_or_else(|| crate::Error::msg(format!("no parameter `{}`", m.param)))?;
            let dev = w.device().clone();
            let new = cut(w, &dev)?;
            weights.insert(m.param.clone(), new);
            if let Some(mask) = masks.get(&m.param) {
                let new = cut(mask, &dev)?;
                masks.insert(m.param.clone(), new);
            }
        }
    }
    Ok((weights, masks))
}
