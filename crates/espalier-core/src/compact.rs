//! Compact model files: a pruned model's masked weights stored as their
//! kept entries only, so an unstructured or N:M model's file shrinks with
//! its sparsity.
//!
//! A masked parameter `W` (viewed as `rows × cols`, `rows` its first
//! dimension) is stored in one of three ways, chosen per parameter by the
//! bytes each takes:
//!
//! - **N:M** (every block of `M` consecutive entries along a row keeps
//!   exactly `N`): `__nm__.W.values` (f32, `rows·cols·N/M`, block by
//!   block) and `__nm__.W.index` (u8, each value's position in its block);
//! - **CSR**: `__csr__.W.values` (f32, one per kept entry, row by row),
//!   `__csr__.W.cols` (i16 when `cols ≤ 32768`, else u32) and
//!   `__csr__.W.row_ptr` (u32, `rows + 1`);
//! - **dense**: `W` as it is and its mask `__mask__.W` as u8.
//!
//! The header's `compact` object names each compressed parameter's format
//! and shape. Entries are chosen by the mask, not by value, so a kept weight
//! that happens to be zero stays kept, and reading the file back
//! ([`expand`], done by [`crate::checkpoint::load`]) gives the weights
//! `w ⊙ m` and the masks exactly.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The header key of a compact file's per-parameter formats.
pub const HEADER_KEY: &str = "compact";
const CSR: &str = "__csr__.";
const NM: &str = "__nm__.";
const MASK: &str = crate::checkpoint::MASK_PREFIX;
/// The most weights a compact file may expand to per number it stores.
const MAX_EXPANSION: usize = 1024;

/// How one parameter is stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "lowercase")]
pub enum Stored {
    /// Compressed sparse rows.
    Csr {
        /// The parameter's shape.
        shape: Vec<usize>,
    },
    /// `n` of every `m` consecutive entries of a row.
    Nm {
        /// The parameter's shape.
        shape: Vec<usize>,
        /// Kept per block.
        n: usize,
        /// Block length.
        m: usize,
    },
}

/// One parameter of a compact file, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct CompactEntry {
    /// The parameter.
    pub name: String,
    /// `csr`, `n:m` (e.g. `2:4`) or `dense`.
    pub format: String,
    /// Kept fraction of its entries.
    pub density: f64,
    /// Bytes it takes in the compact file (values, indices, mask).
    pub bytes: usize,
    /// Bytes it takes in the training layout (f32 weights and f32 mask).
    pub dense_bytes: usize,
}

/// The mask's `N:M` pattern along rows (the smallest `M` of 4, 8, 16 for
/// which every block keeps the same `N < M`), if it has one.
fn nm_of(mask: &[bool], rows: usize, cols: usize) -> Option<(usize, usize)> {
    [4usize, 8, 16].into_iter().find_map(|m| {
        if !cols.is_multiple_of(m) || rows * cols == 0 {
            return None;
        }
        let mut blocks = mask.chunks_exact(m).map(|b| b.iter().filter(|&&k| k).count());
        let n = blocks.next()?;
        (n < m && blocks.all(|c| c == n)).then_some((n, m))
    })
}

fn flat_f32(t: &Tensor) -> Result<Vec<f32>> {
    Ok(t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
}

fn rows_cols(shape: &[usize]) -> (usize, usize) {
    match shape {
        [] => (1, 1),
        [r, rest @ ..] => (*r, rest.iter().product()),
    }
}

/// Compresses the masked parameters of a model file's tensors (parameters
/// plus `__mask__.` masks; anything else is kept as it is). Returns the
/// tensors to write, the header's `compact` object and one entry per masked
/// parameter.
pub fn compress(
    tensors: &BTreeMap<String, Tensor>,
) -> Result<(BTreeMap<String, Tensor>, serde_json::Value, Vec<CompactEntry>)> {
    let cpu = Device::Cpu;
    let mut out = BTreeMap::new();
    let mut formats = serde_json::Map::new();
    let mut entries = Vec::new();
    for (name, t) in tensors {
        if name.starts_with(MASK) {
            continue;
        }
        let Some(mask) = tensors.get(&format!("{MASK}{name}")) else {
            out.insert(name.clone(), t.clone());
            continue;
        };
        let shape = t.dims().to_vec();
        let (rows, cols) = rows_cols(&shape);
        let w = flat_f32(t)?;
        let keep: Vec<bool> = flat_f32(mask)?.iter().map(|&m| m != 0.0).collect();
        let nnz = keep.iter().filter(|&&k| k).count();
        let numel = w.len();
        let wide = cols > 1 << 15;
        let csr_bytes = nnz * (4 + if wide { 4 } else { 2 }) + (rows + 1) * 4;
        let nm = nm_of(&keep, rows, cols);
        let nm_bytes = nm.map(|(n, m)| numel / m * n * 5);
        let dense_bytes = numel * 5;
        let density = if numel == 0 { 1.0 } else { nnz as f64 / numel as f64 };
        let (format, bytes) = match nm_bytes {
            Some(b) if b <= csr_bytes && b < dense_bytes => {
                let (n, m) = nm.expect("nm bytes imply a pattern");
                let (mut values, mut index) = (Vec::with_capacity(numel / m * n), Vec::with_capacity(numel / m * n));
                for (b, block) in keep.chunks_exact(m).enumerate() {
                    for (j, _) in block.iter().enumerate().filter(|(_, &k)| k) {
                        values.push(w[b * m + j]);
                        index.push(j as u8);
                    }
                }
                let len = values.len();
                out.insert(format!("{NM}{name}.values"), Tensor::from_vec(values, len, &cpu)?);
                out.insert(format!("{NM}{name}.index"), Tensor::from_vec(index, len, &cpu)?);
                formats.insert(name.clone(), serde_json::to_value(Stored::Nm { shape, n, m }).expect("serializes"));
                (format!("{n}:{m}"), b)
            }
            _ if csr_bytes < dense_bytes => {
                let mut values = Vec::with_capacity(nnz);
                let mut col_idx = Vec::with_capacity(nnz);
                let mut row_ptr = Vec::with_capacity(rows + 1);
                row_ptr.push(0u32);
                for r in 0..rows {
                    for c in 0..cols {
                        if keep[r * cols + c] {
                            values.push(w[r * cols + c]);
                            col_idx.push(c);
                        }
                    }
                    row_ptr.push(values.len() as u32);
                }
                let cols_t = if wide {
                    Tensor::from_vec(col_idx.iter().map(|&c| c as u32).collect::<Vec<_>>(), nnz, &cpu)?
                } else {
                    Tensor::from_vec(col_idx.iter().map(|&c| c as i16).collect::<Vec<_>>(), nnz, &cpu)?
                };
                out.insert(format!("{CSR}{name}.values"), Tensor::from_vec(values, nnz, &cpu)?);
                out.insert(format!("{CSR}{name}.cols"), cols_t);
                out.insert(format!("{CSR}{name}.row_ptr"), Tensor::from_vec(row_ptr, rows + 1, &cpu)?);
                formats.insert(name.clone(), serde_json::to_value(Stored::Csr { shape }).expect("serializes"));
                ("csr".to_string(), csr_bytes)
            }
            _ => {
                out.insert(name.clone(), t.clone());
                let m: Vec<u8> = keep.iter().map(|&k| k as u8).collect();
                out.insert(format!("{MASK}{name}"), Tensor::from_vec(m, shape, &cpu)?);
                ("dense".to_string(), dense_bytes)
            }
        };
        entries.push(CompactEntry { name: name.clone(), format, density, bytes, dense_bytes: numel * 8 });
    }
    Ok((out, serde_json::Value::Object(formats), entries))
}

/// Takes the tensor `key` out of `tensors` (an error naming `context` when
/// it is missing).
fn take(tensors: &mut BTreeMap<String, Tensor>, key: &str, context: &str) -> Result<Tensor> {
    tensors.remove(key).ok_or_else(|| Error::msg(format!("{context}: the compact file has no tensor `{key}`")))
}

fn indices(t: &Tensor, key: &str, context: &str) -> Result<Vec<usize>> {
    let t = t.flatten_all()?;
    Ok(match t.dtype() {
        DType::I16 => t.to_dtype(DType::I64)?.to_vec1::<i64>()?.into_iter().map(|i| i as usize).collect(),
        DType::U32 => t.to_vec1::<u32>()?.into_iter().map(|i| i as usize).collect(),
        DType::U8 => t.to_vec1::<u8>()?.into_iter().map(usize::from).collect(),
        other => return Err(Error::msg(format!("{context}: `{key}` has dtype {other:?}, expected an index type"))),
    })
}

/// Reads a compact file's tensors back into dense parameters and masks
/// (`__mask__.` + name, f32), checking every index. `context` names the
/// file for errors.
pub fn expand(
    mut tensors: BTreeMap<String, Tensor>,
    formats: &serde_json::Value,
    context: &str,
) -> Result<BTreeMap<String, Tensor>> {
    let formats = formats
        .as_object()
        .ok_or_else(|| Error::msg(format!("{context}: the header's `{HEADER_KEY}` is not an object")))?;
    let cpu = Device::Cpu;
    let mut all = Vec::with_capacity(formats.len());
    for (name, f) in formats {
        let stored: Stored = serde_json::from_value(f.clone())
            .map_err(|e| Error::msg(format!("{context}: `{HEADER_KEY}.{name}`: {e}")))?;
        all.push((name, stored));
    }
    // The dense sizes come from the header, not from the data: bounded
    // before anything is allocated (a model 99.9% sparse still passes).
    let stored_numbers: usize = tensors.values().map(|t| t.elem_count()).sum();
    let mut dense_numbers = 0usize;
    for (name, s) in &all {
        let (Stored::Csr { shape } | Stored::Nm { shape, .. }) = s;
        dense_numbers = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .and_then(|n| n.checked_add(dense_numbers))
            .ok_or_else(|| Error::msg(format!("{context}: parameter `{name}`: shape {shape:?} overflows")))?;
    }
    if dense_numbers > MAX_EXPANSION * stored_numbers + (1 << 20) {
        return Err(Error::msg(format!(
            "{context}: the `{HEADER_KEY}` header expands {stored_numbers} stored numbers to {dense_numbers} \
             weights (more than {MAX_EXPANSION}×: a damaged header?)"
        )));
    }
    for (name, stored) in all {
        let bad = |what: String| Error::msg(format!("{context}: parameter `{name}`: {what}"));
        let (shape, dense, mask) = match stored {
            Stored::Csr { shape } => {
                let (rows, cols) = rows_cols(&shape);
                let values = flat_f32(&take(&mut tensors, &format!("{CSR}{name}.values"), context)?)?;
                let key = format!("{CSR}{name}.cols");
                let col_idx = indices(&take(&mut tensors, &key, context)?, &key, context)?;
                let key = format!("{CSR}{name}.row_ptr");
                let row_ptr = indices(&take(&mut tensors, &key, context)?, &key, context)?;
                if row_ptr.len() != rows + 1
                    || row_ptr[0] != 0
                    || row_ptr.windows(2).any(|w| w[0] > w[1])
                    || row_ptr[rows] != values.len()
                    || col_idx.len() != values.len()
                {
                    return Err(bad(format!(
                        "inconsistent CSR ({} row pointers for {rows} rows, {} values, {} column indices)",
                        row_ptr.len(),
                        values.len(),
                        col_idx.len()
                    )));
                }
                let (mut w, mut m) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
                for r in 0..rows {
                    for k in row_ptr[r]..row_ptr[r + 1] {
                        let c = col_idx[k];
                        if c >= cols {
                            return Err(bad(format!("column index {c} in row {r} is not below {cols}")));
                        }
                        w[r * cols + c] = values[k];
                        m[r * cols + c] = 1.0;
                    }
                }
                (shape, w, m)
            }
            Stored::Nm { shape, n, m: block } => {
                let (rows, cols) = rows_cols(&shape);
                if block == 0 || n > block || !cols.is_multiple_of(block) {
                    return Err(bad(format!("{n}:{block} does not fit rows of {cols}")));
                }
                let values = flat_f32(&take(&mut tensors, &format!("{NM}{name}.values"), context)?)?;
                let key = format!("{NM}{name}.index");
                let index = indices(&take(&mut tensors, &key, context)?, &key, context)?;
                let blocks = rows * cols / block;
                if values.len() != blocks * n || index.len() != values.len() {
                    return Err(bad(format!(
                        "{} values and {} indices, expected {} ({blocks} blocks of {n}:{block})",
                        values.len(),
                        index.len(),
                        blocks * n
                    )));
                }
                let (mut w, mut m) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
                for (k, (&v, &j)) in values.iter().zip(&index).enumerate() {
                    let at = (k / n) * block + j;
                    if j >= block || m[at] != 0.0 {
                        return Err(bad(format!("block {} has an index {j} out of range or twice", k / n)));
                    }
                    w[at] = v;
                    m[at] = 1.0;
                }
                (shape, w, m)
            }
        };
        if tensors.contains_key(name) {
            return Err(bad("stored both dense and compressed".into()));
        }
        tensors.insert(name.clone(), Tensor::from_vec(dense, shape.clone(), &cpu)?);
        tensors.insert(format!("{MASK}{name}"), Tensor::from_vec(mask, shape, &cpu)?);
    }
    if let Some(k) = tensors.keys().find(|k| k.starts_with(CSR) || k.starts_with(NM)) {
        return Err(Error::msg(format!("{context}: `{k}` belongs to no parameter of the `{HEADER_KEY}` header")));
    }
    Ok(tensors)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(rows: usize, cols: usize, keep: impl Fn(usize, usize) -> bool) -> BTreeMap<String, Tensor> {
        let w: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        let m: Vec<f32> = (0..rows * cols).map(|i| keep(i / cols, i % cols) as u8 as f32).collect();
        let wm: Vec<f32> = w.iter().zip(&m).map(|(a, b)| a * b).collect();
        BTreeMap::from([
            ("l.weight".to_string(), Tensor::from_vec(wm, (rows, cols), &Device::Cpu).unwrap()),
            (format!("{MASK}l.weight"), Tensor::from_vec(m, (rows, cols), &Device::Cpu).unwrap()),
            ("l.bias".to_string(), Tensor::ones(rows, DType::F32, &Device::Cpu).unwrap()),
        ])
    }

    fn round_trip(t: &BTreeMap<String, Tensor>) -> (String, usize) {
        let (c, header, entries) = compress(t).unwrap();
        let back = expand(c, &header, "test").unwrap();
        assert_eq!(back.len(), t.len());
        for (k, v) in t {
            let (a, b) = (flat_f32(v).unwrap(), flat_f32(&back[k]).unwrap());
            assert_eq!(a, b, "{k}");
            assert_eq!(back[k].dims(), v.dims());
        }
        (entries[0].format.clone(), entries[0].bytes)
    }

    #[test]
    fn each_format_round_trips_exactly() {
        // 10% random-ish: CSR; 2:4 and 1:8: N:M; 90%: dense.
        assert_eq!(round_trip(&masked(7, 40, |r, c| (r * 13 + c * 7) % 10 == 0)).0, "csr");
        assert_eq!(round_trip(&masked(6, 16, |r, c| (c + r) % 4 < 2)).0, "2:4");
        assert_eq!(round_trip(&masked(3, 16, |_, c| c % 8 == 5)).0, "1:8");
        assert_eq!(round_trip(&masked(5, 9, |r, c| (r + c) % 10 != 0)).0, "dense");
        // Empty rows, an all-zero mask, an empty tensor.
        assert_eq!(round_trip(&masked(4, 12, |r, c| r == 2 && c < 3)).0, "csr");
        round_trip(&masked(4, 12, |_, _| false));
        round_trip(&masked(0, 12, |_, _| false));
    }

    #[test]
    fn damaged_files_are_errors_naming_the_parameter() {
        let (mut c, header, _) = compress(&masked(7, 40, |r, c| (r + c) % 9 == 0)).unwrap();
        let cols = c.get("__csr__.l.weight.cols").unwrap().clone();
        let n = cols.elem_count();
        c.insert("__csr__.l.weight.cols".into(), Tensor::full(99i16, n, &Device::Cpu).unwrap());
        let e = expand(c.clone(), &header, "f.safetensors").unwrap_err().to_string();
        assert!(e.contains("f.safetensors") && e.contains("l.weight") && e.contains("column index 99"), "{e}");
        c.remove("__csr__.l.weight.row_ptr");
        let e = expand(c, &header, "f.safetensors").unwrap_err().to_string();
        assert!(e.contains("row_ptr"), "{e}");
    }
}
