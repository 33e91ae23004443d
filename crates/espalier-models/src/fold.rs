//! Folding empty units: a unit of a group set (an MLP hidden neuron, a BERT
//! feed-forward unit) whose input weights pruning left all zero outputs the
//! constant `act(b_j)` whatever the input, so its contribution to the
//! consumer layer is the constant vector `W_c[:, j]·act(b_j)`. Adding that to
//! the consumer's bias and removing the unit ([`crate::shrink`]) gives a
//! smaller dense model that computes exactly what the masked one computes
//! (up to the order of the f32 additions).
//!
//! A set takes part when its model reports an element-wise activation for
//! it ([`Model::unit_activation`]) and its consumer has a bias named like
//! its weight (`….weight` → `….bias`). A unit is empty when every 2-D member
//! sliced along its rows (axis 0) is zero in the unit's rows (masks
//! applied). An MLP layer keeps at least one unit (it cannot have width 0);
//! a BERT layer may lose its whole feed-forward block.

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use espalier_core::{Keep, Result};

use crate::Model;

/// What [`fold_empty_units`] removed from one group set.
#[derive(Clone, Debug, PartialEq)]
pub struct FoldedSet {
    /// The group set.
    pub set: String,
    /// Its units before folding.
    pub size: usize,
    /// The units folded into the consumer's bias.
    pub folded: Vec<usize>,
}

/// The model with every empty unit folded into its consumer's bias and
/// removed, and what was folded per set (sets with nothing to fold are not
/// listed).
pub fn fold_empty_units(model: &dyn Model) -> Result<(Box<dyn Model>, Vec<FoldedSet>)> {
    let params = model.params();
    let mut keep = Keep::new();
    let mut report = Vec::new();
    // Consumer bias name → the constant to add.
    let mut shifts: BTreeMap<String, Tensor> = BTreeMap::new();
    for set in model.group_sets() {
        let Some(consumer) = &set.consumer else { continue };
        let Some(bias_name) = consumer.strip_suffix(".weight").map(|c| format!("{c}.bias")) else { continue };
        if params.get(&bias_name).is_err() || set.block != 1 {
            continue;
        }
        // The units' pre-activation bias (zero without one) and activation.
        let rows: Vec<&espalier_core::Member> = set.members.iter().filter(|m| m.axis == 0).collect();
        let mut empty = vec![true; set.size];
        let mut b = Tensor::zeros(set.size, DType::F32, &params.device())?;
        for m in &rows {
            let t = params.get(&m.param)?.effective()?.detach().to_dtype(DType::F32)?;
            match t.rank() {
                1 => b = t,
                2 => {
                    let nz = t.abs()?.sum(1)?.to_vec1::<f32>()?;
                    empty.iter_mut().zip(&nz).for_each(|(e, s)| *e &= *s == 0.0);
                }
                _ => empty.iter_mut().for_each(|e| *e = false),
            }
        }
        let Some(act) = model.unit_activation(&set.name, &b)? else { continue };
        let mut folded: Vec<usize> = (0..set.size).filter(|&j| empty[j]).collect();
        if folded.len() == set.size && !model.allows_empty_set(&set.name) {
            folded.remove(0);
        }
        if folded.is_empty() {
            continue;
        }
        // Σ_j W_c[:, j]·act(b_j) over the folded units.
        let idx = Tensor::new(folded.iter().map(|&j| j as u32).collect::<Vec<_>>(), &params.device())?;
        let wc = params.get(consumer)?.effective()?.detach().to_dtype(DType::F32)?;
        if wc.rank() != 2 || wc.dims()[1] != set.size {
            continue;
        }
        let shift = wc.index_select(&idx, 1)?.matmul(&act.index_select(&idx, 0)?.unsqueeze(1)?)?.squeeze(1)?;
        let shift = match shifts.remove(&bias_name) {
            Some(s) => (s + shift)?,
            None => shift,
        };
        shifts.insert(bias_name, shift);
        keep.insert(set.name.clone(), (0..set.size).filter(|j| !folded.contains(j)).collect());
        report.push(FoldedSet { set: set.name.clone(), size: set.size, folded });
    }
    let small = crate::shrink(model, &keep)?;
    for (name, shift) in shifts {
        // The bias may itself lose units (the next layer's folded ones).
        let owner = model.group_sets().into_iter().find(|s| s.members.iter().any(|m| m.param == name && m.axis == 0));
        let shift = match owner.and_then(|s| keep.get(&s.name).cloned()) {
            Some(kept) => {
                let idx = Tensor::new(kept.iter().map(|&j| j as u32).collect::<Vec<_>>(), &params.device())?;
                shift.index_select(&idx, 0)?
            }
            None => shift,
        };
        let p = small.params().get(&name)?;
        if p.has_mask() {
            espalier_core::bail!("folding: the consumer bias `{name}` is masked; unmask it first");
        }
        let b = p.tensor();
        p.set(&(b + shift.to_dtype(b.dtype())?)?)?;
    }
    Ok((small, report))
}
