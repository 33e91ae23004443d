//! Sparsity accounting over the masks of a [`ParamStore`].
//!
//! Besides the count of pruned weights, each matrix reports its *lines*: the
//! rows (slices along dim 0: output units, filters) and columns (slices along
//! dim 1: inputs, input channels) whose weights are all pruned. Those are what
//! a structured shrink could physically remove, and what SPUR's row and
//! column group lasso (Park & Lee, "Structured Pattern Pruning Using
//! Regularization", 2021, arXiv:2109.08814; as defined by Espalier,
//! `R(W) = λ_r Σ_i ‖W_i,:‖₂ + λ_c Σ_j ‖W_:,j‖₂` on the masked weights) is
//! meant to produce.

use serde::{Deserialize, Serialize};

use crate::{ParamStore, Result, Selector};

/// Sparsity of one parameter.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerSparsity {
    /// Dotted parameter name.
    pub name: String,
    /// Shape.
    pub dims: Vec<usize>,
    /// Number of elements.
    pub numel: usize,
    /// Elements that are not pruned (mask 1, or all when unmasked).
    pub kept: usize,
    /// Rows (slices along dim 0) and how many are entirely pruned; 0 and 0
    /// for parameters of rank < 2.
    #[serde(default)]
    pub rows: usize,
    /// Entirely pruned rows.
    #[serde(default)]
    pub empty_rows: usize,
    /// Columns (slices along dim 1).
    #[serde(default)]
    pub cols: usize,
    /// Entirely pruned columns.
    #[serde(default)]
    pub empty_cols: usize,
    /// Elements in an empty row or an empty column: what a row/column
    /// shrink removes.
    #[serde(default)]
    pub removable: usize,
}

impl LayerSparsity {
    /// Fraction of elements pruned.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.kept as f64 / self.numel.max(1) as f64
    }
}

/// Per-layer and overall sparsity of the selected parameters.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SparsityReport {
    /// One row per selected parameter, in declaration order.
    pub layers: Vec<LayerSparsity>,
}

impl SparsityReport {
    /// Counts kept elements of every parameter `selector` matches.
    pub fn of(store: &ParamStore, selector: &Selector) -> Result<Self> {
        let mut layers = Vec::new();
        for p in store.iter().filter(|p| selector.matches(p)) {
            let dims = p.dims();
            let mut l = LayerSparsity {
                name: p.name().to_string(),
                dims: dims.clone(),
                numel: p.numel(),
                kept: p.numel(),
                rows: 0,
                empty_rows: 0,
                cols: 0,
                empty_cols: 0,
                removable: 0,
            };
            if dims.len() >= 2 {
                l.rows = dims[0];
                l.cols = dims[1];
            }
            if let Some(m) = p.mask() {
                let m = m.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                l.kept = m.iter().filter(|&&x| x != 0.0).count();
                if dims.len() >= 2 {
                    count_lines(&m, &dims, &mut l);
                }
            }
            layers.push(l);
        }
        Ok(SparsityReport { layers })
    }

    /// Fraction of all rows of the selected matrices that are empty.
    pub fn empty_rows_fraction(&self) -> f64 {
        let rows: usize = self.layers.iter().map(|l| l.rows).sum();
        self.layers.iter().map(|l| l.empty_rows).sum::<usize>() as f64 / rows.max(1) as f64
    }
    /// Fraction of all columns of the selected matrices that are empty.
    pub fn empty_cols_fraction(&self) -> f64 {
        let cols: usize = self.layers.iter().map(|l| l.cols).sum();
        self.layers.iter().map(|l| l.empty_cols).sum::<usize>() as f64 / cols.max(1) as f64
    }
    /// Fraction of the selected elements a row/column shrink removes.
    pub fn removable_fraction(&self) -> f64 {
        self.layers.iter().map(|l| l.removable).sum::<usize>() as f64 / self.numel().max(1) as f64
    }

    /// Elements over all selected parameters.
    pub fn numel(&self) -> usize {
        self.layers.iter().map(|l| l.numel).sum()
    }
    /// Kept elements over all selected parameters.
    pub fn kept(&self) -> usize {
        self.layers.iter().map(|l| l.kept).sum()
    }
    /// Overall fraction pruned.
    pub fn sparsity(&self) -> f64 {
        1.0 - self.kept() as f64 / self.numel().max(1) as f64
    }

    /// A fixed-width text table, one row per layer plus a total.
    pub fn table(&self) -> String {
        let w = self.layers.iter().map(|l| l.name.len()).max().unwrap_or(5).max(5);
        let mut s = format!(
            "{:<w$}  {:>14}  {:>10}  {:>10}  {:>8}  {:>11}  {:>11}\n",
            "layer", "shape", "numel", "kept", "sparsity", "empty rows", "empty cols"
        );
        for l in &self.layers {
            s += &format!(
                "{:<w$}  {:>14}  {:>10}  {:>10}  {:>7.2}%  {:>11}  {:>11}\n",
                l.name,
                format!("{:?}", l.dims),
                l.numel,
                l.kept,
                100.0 * l.sparsity(),
                format!("{}/{}", l.empty_rows, l.rows),
                format!("{}/{}", l.empty_cols, l.cols),
            );
        }
        s += &format!(
            "{:<w$}  {:>14}  {:>10}  {:>10}  {:>7.2}%  {:>10.2}%  {:>10.2}%\n",
            "total",
            "",
            self.numel(),
            self.kept(),
            100.0 * self.sparsity(),
            100.0 * self.empty_rows_fraction(),
            100.0 * self.empty_cols_fraction(),
        );
        s
    }
}

/// Counts the all-zero rows (dim 0) and columns (dim 1) of a mask of shape
/// `dims` (rank ≥ 2; trailing dims, e.g. a kernel window, belong to both).
fn count_lines(mask: &[f32], dims: &[usize], l: &mut LayerSparsity) {
    let (rows, cols) = (dims[0], dims[1]);
    let inner: usize = dims[2..].iter().product();
    let mut row_alive = vec![false; rows];
    let mut col_alive = vec![false; cols];
    for (cell, window) in mask.chunks(inner.max(1)).enumerate() {
        if window.iter().any(|&x| x != 0.0) {
            row_alive[cell / cols] = true;
            col_alive[cell % cols] = true;
        }
    }
    l.empty_rows = row_alive.iter().filter(|a| !**a).count();
    l.empty_cols = col_alive.iter().filter(|a| !**a).count();
    // Elements in an empty row or column, by inclusion-exclusion.
    l.removable = (l.empty_rows * cols + l.empty_cols * rows - l.empty_rows * l.empty_cols) * inner;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Init;
    use crate::{ParamBuilder, ParamKind};
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn empty_rows_and_columns_are_counted_from_the_mask() -> Result<()> {
        let pb = ParamBuilder::from_seed(0, DType::F32, &Device::Cpu);
        let w = pb.pp("fc").param("weight", &[3, 4], ParamKind::Weight, Init::Const(1.0))?;
        // row 1 and columns 0 and 3 empty; (0,2) pruned but its row and column live
        #[rustfmt::skip]
        let m = [0f32, 1., 0., 0.,
                 0., 0., 0., 0.,
                 0., 1., 1., 0.];
        w.set_mask(Some(Tensor::from_vec(m.to_vec(), (3, 4), &Device::Cpu)?))?;
        let store = pb.finish().0;
        let r = SparsityReport::of(&store, &Selector::default())?;
        let l = &r.layers[0];
        assert_eq!((l.kept, l.rows, l.empty_rows, l.cols, l.empty_cols), (3, 3, 1, 4, 2));
        // row 1 (4) + columns 0, 3 (3 each) - their 2 shared cells
        assert_eq!(l.removable, 8);
        assert!((r.empty_rows_fraction() - 1.0 / 3.0).abs() < 1e-12);
        assert!((r.empty_cols_fraction() - 0.5).abs() < 1e-12);
        assert!((r.removable_fraction() - 8.0 / 12.0).abs() < 1e-12);
        Ok(())
    }
}
