//! Folding empty units: a unit of a group set whose output pruning made
//! independent of the input (an MLP hidden neuron or a BERT feed-forward
//! unit whose input weights are all zero outputs `act(b_j)`; an attention
//! head whose value rows are all zero outputs its value bias `b_v`, since
//! every row of the attention softmax sums to one) contributes the constant
//! vector `W_c[:, j]·c_j` to its consumer layer; a unit whose consumer
//! columns `W_c[:, j]` are all zero contributes nothing. Adding the
//! constants to the consumer's bias and removing those units
//! ([`crate::shrink`]) gives a smaller dense model that computes exactly what
//! the masked one computes (up to the order of the f32 additions). This is
//! how the empty rows and columns a group lasso leaves (SPUR) become a
//! physically smaller model.
//!
//! A set takes part when its model reports its constant units
//! ([`Model::constant_units`]) and its consumer has a bias named like its
//! weight (`….weight` → `….bias`). An MLP layer keeps at least one unit (it
//! cannot have width 0); a BERT layer may lose its whole feed-forward block
//! or all its heads ([`Model::allows_empty_set`]).

use std::collections::BTreeMap;

use candle_core::{DType, Tensor};
use espalier_core::{GroupSet, Keep, Result};

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

/// The units of a group set whose output does not depend on the input
/// ([`Model::constant_units`]).
#[derive(Clone, Debug)]
pub struct ConstantUnits {
    /// Per unit: whether its output is constant.
    pub constant: Vec<bool>,
    /// The outputs, `size·block` values unit by unit (what the consumer's
    /// columns multiply); only the constant units' entries are used.
    pub values: Tensor,
}

/// Whether each of the `rows / block` blocks of rows of the 2-D tensor `t`
/// is all zero.
pub fn empty_row_blocks(t: &Tensor, block: usize) -> Result<Vec<bool>> {
    let nz = t.abs()?.sum(1)?.to_vec1::<f32>()?;
    Ok(nz.chunks(block).map(|c| c.iter().all(|&s| s == 0.0)).collect())
}

/// [`Model::constant_units`]' default: with the units' activation from
/// [`Model::unit_activation`] (`None` without one), a unit is constant when
/// every 2-D member sliced along its rows (axis 0) is zero in the unit's
/// rows (masks applied), and outputs the activation of its bias (of zero
/// without a bias member).
pub fn activation_constants<M: Model + ?Sized>(model: &M, set: &GroupSet) -> Result<Option<ConstantUnits>> {
    if set.block != 1 {
        return Ok(None);
    }
    let params = model.params();
    let mut constant = vec![true; set.size];
    let mut b = Tensor::zeros(set.size, DType::F32, &params.device())?;
    for m in set.members.iter().filter(|m| m.axis == 0) {
        let t = params.get(&m.param)?.effective()?.detach().to_dtype(DType::F32)?;
        match t.rank() {
            1 => b = t,
            2 => constant.iter_mut().zip(empty_row_blocks(&t, 1)?).for_each(|(c, e)| *c &= e),
            _ => return Ok(None),
        }
    }
    Ok(model.unit_activation(&set.name, &b)?.map(|values| ConstantUnits { constant, values }))
}

/// The model with every constant unit folded into its consumer's bias and
/// removed, every unit with empty consumer columns removed, and what was folded per set (sets with nothing to fold are not
/// listed).
pub fn fold_empty_units(model: &dyn Model) -> Result<(Box<dyn Model>, Vec<FoldedSet>)> {
    let params = model.params();
    let dev = params.device();
    let mut keep = Keep::new();
    let mut report = Vec::new();
    // Consumer bias name → the constant to add.
    let mut shifts: BTreeMap<String, Tensor> = BTreeMap::new();
    for set in model.group_sets() {
        let Some(consumer) = &set.consumer else { continue };
        let Some(bias_name) = consumer.strip_suffix(".weight").map(|c| format!("{c}.bias")) else { continue };
        if params.get(&bias_name).is_err() {
            continue;
        }
        let Some(units) = model.constant_units(&set)? else { continue };
        let wc = params.get(consumer)?.effective()?.detach().to_dtype(DType::F32)?;
        if wc.rank() != 2 || wc.dims()[1] != set.size * set.block {
            continue;
        }
        // A unit whose consumer columns are all zero contributes nothing.
        let dead = empty_row_blocks(&wc.t()?, set.block)?;
        let mut folded: Vec<usize> = (0..set.size).filter(|&j| units.constant[j] || dead[j]).collect();
        if folded.len() == set.size && !model.allows_empty_set(&set.name) {
            folded.remove(0);
        }
        if folded.is_empty() {
            continue;
        }
        // Σ_j W_c[:, cols(j)]·c_j over the folded units' columns.
        let cols: Vec<u32> =
            folded.iter().flat_map(|&j| (j * set.block..(j + 1) * set.block).map(|c| c as u32)).collect();
        let idx = Tensor::new(cols, &dev)?;
        let c = units.values.to_dtype(DType::F32)?.index_select(&idx, 0)?;
        let shift = wc.index_select(&idx, 1)?.matmul(&c.unsqueeze(1)?)?.squeeze(1)?;
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
        let shift = match owner.and_then(|s| keep.get(&s.name).map(|k| (k.clone(), s.block))) {
            Some((kept, block)) => {
                let rows: Vec<u32> =
                    kept.iter().flat_map(|&j| (j * block..(j + 1) * block).map(|r| r as u32)).collect();
                shift.index_select(&Tensor::new(rows, &dev)?, 0)?
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
