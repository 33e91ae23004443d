//! Sparsity accounting over the masks of a [`ParamStore`].

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
            let kept = match p.mask() {
                Some(m) => m.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()? as usize,
                None => p.numel(),
            };
            layers.push(LayerSparsity { name: p.name().to_string(), dims: p.dims(), numel: p.numel(), kept });
        }
        Ok(SparsityReport { layers })
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
        let mut s = format!("{:<w$}  {:>14}  {:>10}  {:>10}  {:>8}\n", "layer", "shape", "numel", "kept", "sparsity");
        for l in &self.layers {
            s += &format!(
                "{:<w$}  {:>14}  {:>10}  {:>10}  {:>7.2}%\n",
                l.name,
                format!("{:?}", l.dims),
                l.numel,
                l.kept,
                100.0 * l.sparsity()
            );
        }
        s += &format!(
            "{:<w$}  {:>14}  {:>10}  {:>10}  {:>7.2}%\n",
            "total",
            "",
            self.numel(),
            self.kept(),
            100.0 * self.sparsity()
        );
        s
    }
}
