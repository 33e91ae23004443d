//! Named parameters with optional masks.
//!
//! A [`Param`] is a candle [`Var`] plus its dotted name, its [`ParamKind`] and
//! an optional 0/1 mask. Model layers hold `Param` handles and read
//! [`Param::effective`] (= w ⊙ m) in their forward pass, so a mask set through
//! the [`ParamStore`] takes effect at once, gradients of pruned weights are
//! zero, and [`ParamStore::enforce_masks`] keeps them exactly zero after every
//! optimizer step (AdamW's moments would otherwise move them).
//!
//! A parameter can instead hold its mask in *straight-through* mode (SR-STE:
//! Zhou et al., "Learning N:M Fine-grained Structured Sparse Neural Networks
//! From Scratch", ICLR 2021, arXiv:2102.04010, whose update is
//! `W ← W − γ(∇_{W⊙M} L + λ_w (1 − M) ⊙ W)`): the forward pass still sees
//! w ⊙ m, but the gradient reaches every weight as if there were no mask
//! (the `∇_{W⊙M} L` term applied to the dense W), and the pruned weights keep
//! their values, so a mask recomputed from the dense weights can change from
//! step to step.
//!
//! Models are built through a [`ParamBuilder`], which either draws initial
//! values from a seeded [`Rng`] stream derived from the parameter's name (so
//! initial weights do not depend on construction order) or takes them from
//! loaded tensors, checking every shape.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use crate::init::Init;
use crate::{Error, Result, Rng};

/// What a parameter is, which decides the defaults of pruning and weight
/// decay (only `Weight`s are pruned by default; biases and norms are excluded
/// from weight decay).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamKind {
    /// A linear or convolution weight matrix.
    Weight,
    /// A bias vector.
    Bias,
    /// A normalisation scale or shift (LayerNorm, BatchNorm).
    Norm,
    /// An embedding table.
    Embedding,
    /// Non-trainable state saved with the model (BatchNorm running stats).
    Buffer,
}

struct ParamInner {
    name: String,
    kind: ParamKind,
    head: bool,
    var: Var,
    mask: RwLock<Option<Tensor>>,
    straight_through: AtomicBool,
    /// Bumped by every write through [`Param`]'s methods (see [`Param::version`]).
    version: AtomicU64,
}

/// A named, optionally masked parameter. Cloning shares the storage.
#[derive(Clone)]
pub struct Param(Arc<ParamInner>);

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Param({}, {:?}, {:?}{})",
            self.name(),
            self.kind(),
            self.dims(),
            if self.has_mask() { ", masked" } else { "" }
        )
    }
}

impl Param {
    /// Dotted name, e.g. `fc1.weight`.
    pub fn name(&self) -> &str {
        &self.0.name
    }
    /// The parameter's kind.
    pub fn kind(&self) -> ParamKind {
        self.0.kind
    }
    /// Whether this parameter belongs to the task head (output layer).
    pub fn is_head(&self) -> bool {
        self.0.head
    }
    /// Whether the optimizer updates it.
    pub fn trainable(&self) -> bool {
        self.0.kind != ParamKind::Buffer
    }
    /// The underlying variable. Writing through it directly does not bump
    /// [`Param::version`]: use [`Param::set`], or call
    /// [`Param::mark_changed`] after.
    pub fn var(&self) -> &Var {
        &self.0.var
    }
    /// The raw (unmasked) values.
    pub fn tensor(&self) -> &Tensor {
        self.0.var.as_tensor()
    }
    /// Shape.
    pub fn dims(&self) -> Vec<usize> {
        self.0.var.dims().to_vec()
    }
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.0.var.elem_count()
    }
    /// The current mask, if any.
    pub fn mask(&self) -> Option<Tensor> {
        self.0.mask.read().expect("mask lock").clone()
    }
    /// Whether a mask is set.
    pub fn has_mask(&self) -> bool {
        self.0.mask.read().expect("mask lock").is_some()
    }
    /// The values used in the forward pass: w ⊙ m when masked, else w. In
    /// straight-through mode the value is the same but the gradient is that
    /// of w: w + stop_gradient(w ⊙ m − w).
    pub fn effective(&self) -> Result<Tensor> {
        let w = self.0.var.as_tensor();
        Ok(match &*self.0.mask.read().expect("mask lock") {
            Some(m) if self.straight_through() => (w + (w.mul(m)? - w)?.detach())?,
            Some(m) => w.mul(m)?,
            None => w.clone(),
        })
    }
    /// A counter bumped by every change of the values or the mask made
    /// through this handle ([`Param::set`], [`Param::set_mask`],
    /// [`Param::enforce_mask`], [`Param::set_straight_through`]): what a
    /// derived form of the weights (a packed sparse copy) compares to know
    /// it is stale.
    pub fn version(&self) -> u64 {
        self.0.version.load(Ordering::Acquire)
    }
    /// Bumps [`Param::version`]: for code that writes the values in place
    /// (the fused optimizers) or through [`Param::var`].
    pub fn mark_changed(&self) {
        self.bump();
    }
    fn bump(&self) {
        self.0.version.fetch_add(1, Ordering::AcqRel);
    }
    /// Whether the mask is applied straight-through (see the module docs).
    pub fn straight_through(&self) -> bool {
        self.0.straight_through.load(Ordering::Relaxed)
    }
    /// Switches straight-through mode on or off; switching it off zeroes
    /// the masked weights (the mask becomes hard again).
    pub fn set_straight_through(&self, on: bool) -> Result<()> {
        self.0.straight_through.store(on, Ordering::Relaxed);
        self.bump();
        if !on {
            self.enforce_mask()?;
        }
        Ok(())
    }
    /// Sets (or clears) the mask, and zeroes the masked weights at once
    /// (not in straight-through mode, where the pruned weights live on).
    pub fn set_mask(&self, mask: Option<Tensor>) -> Result<()> {
        if let Some(m) = &mask {
            if m.dims() != self.0.var.dims() {
                return Err(Error::Shape {
                    name: self.0.name.clone(),
                    expected: self.dims(),
                    found: m.dims().to_vec(),
                    context: Some("mask".into()),
                });
            }
            let m = m.to_dtype(self.0.var.dtype())?.to_device(self.0.var.device())?;
            if !self.straight_through() {
                self.0.var.set(&self.0.var.as_tensor().mul(&m)?)?;
            }
            *self.0.mask.write().expect("mask lock") = Some(m);
        } else {
            *self.0.mask.write().expect("mask lock") = None;
        }
        self.bump();
        Ok(())
    }
    /// Re-applies the mask to the stored values (w ← w ⊙ m); nothing in
    /// straight-through mode.
    pub fn enforce_mask(&self) -> Result<()> {
        if self.straight_through() {
            return Ok(());
        }
        if let Some(m) = &*self.0.mask.read().expect("mask lock") {
            self.0.var.set(&self.0.var.as_tensor().mul(m)?)?;
            self.bump();
        }
        Ok(())
    }
    /// Overwrites the values, checking the shape.
    pub fn set(&self, t: &Tensor) -> Result<()> {
        if t.dims() != self.0.var.dims() {
            return Err(Error::Shape {
                name: self.0.name.clone(),
                expected: self.dims(),
                found: t.dims().to_vec(),
                context: None,
            });
        }
        let t = t.to_dtype(self.0.var.dtype())?.to_device(self.0.var.device())?;
        self.0.var.set(&t)?;
        self.bump();
        Ok(())
    }
}

/// All parameters of a model, in declaration order, addressable by name.
#[derive(Clone, Default)]
pub struct ParamStore {
    params: Vec<Param>,
    index: HashMap<String, usize>,
}

impl std::fmt::Debug for ParamStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.params.iter()).finish()
    }
}

impl ParamStore {
    fn push(&mut self, p: Param) -> Result<()> {
        if self.index.contains_key(p.name()) {
            crate::bail!("parameter `{}` declared twice", p.name());
        }
        self.index.insert(p.name().to_string(), self.params.len());
        self.params.push(p);
        Ok(())
    }

    /// Parameters in declaration order.
    pub fn iter(&self) -> impl Iterator<Item = &Param> {
        self.params.iter()
    }
    /// Number of parameters (tensors).
    pub fn len(&self) -> usize {
        self.params.len()
    }
    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.params.is_empty()
    }
    /// Total number of scalar values in trainable parameters.
    pub fn numel(&self) -> usize {
        self.params.iter().filter(|p| p.trainable()).map(|p| p.numel()).sum()
    }
    /// The parameter named `name`.
    pub fn get(&self, name: &str) -> Result<&Param> {
        self.index
            .get(name)
            .map(|&i| &self.params[i])
            .ok_or_else(|| Error::UnknownParam { name: name.to_string(), hint: None })
    }
    /// The trainable parameters.
    pub fn trainable(&self) -> impl Iterator<Item = &Param> {
        self.params.iter().filter(|p| p.trainable())
    }
    /// The device of the parameters (CPU for an empty store).
    pub fn device(&self) -> Device {
        self.params.first().map(|p| p.tensor().device().clone()).unwrap_or(Device::Cpu)
    }

    /// A snapshot of every value (a deep copy: later training does not
    /// change it).
    pub fn snapshot(&self) -> Result<BTreeMap<String, Tensor>> {
        self.params.iter().map(|p| Ok((p.name().to_string(), p.tensor().copy()?))).collect()
    }
    /// Overwrites values from `tensors`; every parameter must be present
    /// with its shape.
    pub fn load(&self, tensors: &BTreeMap<String, Tensor>, context: &str) -> Result<()> {
        for p in &self.params {
            let t = tensors.get(p.name()).ok_or_else(|| Error::UnknownParam {
                name: p.name().to_string(),
                hint: Some(format!("missing from {context}")),
            })?;
            if t.dims() != p.tensor().dims() {
                return Err(Error::Shape {
                    name: p.name().to_string(),
                    expected: p.dims(),
                    found: t.dims().to_vec(),
                    context: Some(context.to_string()),
                });
            }
            p.set(t)?;
        }
        Ok(())
    }

    /// The masks that are set, by parameter name.
    pub fn masks(&self) -> BTreeMap<String, Tensor> {
        self.params.iter().filter_map(|p| p.mask().map(|m| (p.name().to_string(), m))).collect()
    }
    /// Replaces all masks: parameters absent from `masks` become unmasked.
    pub fn set_masks(&self, masks: &BTreeMap<String, Tensor>) -> Result<()> {
        for name in masks.keys() {
            self.get(name)?;
        }
        for p in &self.params {
            p.set_mask(masks.get(p.name()).cloned())?;
        }
        Ok(())
    }
    /// w ← w ⊙ m for every masked parameter (call after each optimizer step).
    pub fn enforce_masks(&self) -> Result<()> {
        for p in &self.params {
            p.enforce_mask()?;
        }
        Ok(())
    }
}

/// Where a [`ParamBuilder`] takes its values from.
enum Source {
    /// Draw fresh values from `Rng::derive(seed, name)`.
    Init { seed: u64 },
    /// Take them from loaded tensors (`context` names the file for errors).
    Tensors { tensors: BTreeMap<String, Tensor>, context: String },
}

struct BuilderState {
    store: ParamStore,
    source: Source,
    used: Vec<String>,
}

/// Declares parameters while a model is built, under a dotted prefix.
#[derive(Clone)]
pub struct ParamBuilder {
    state: Arc<Mutex<BuilderState>>,
    prefix: String,
    head: bool,
    device: Device,
    dtype: DType,
}

impl ParamBuilder {
    /// A builder that initialises parameters from `seed`.
    pub fn from_seed(seed: u64, dtype: DType, device: &Device) -> Self {
        Self::new(Source::Init { seed }, dtype, device)
    }

    /// A builder that takes every parameter from `tensors`. `context` (a file
    /// name) is quoted in errors about missing or misshapen tensors.
    pub fn from_tensors(
        tensors: BTreeMap<String, Tensor>,
        context: impl Into<String>,
        dtype: DType,
        device: &Device,
    ) -> Self {
        Self::new(Source::Tensors { tensors, context: context.into() }, dtype, device)
    }

    fn new(source: Source, dtype: DType, device: &Device) -> Self {
        ParamBuilder {
            state: Arc::new(Mutex::new(BuilderState { store: ParamStore::default(), source, used: Vec::new() })),
            prefix: String::new(),
            head: false,
            device: device.clone(),
            dtype,
        }
    }

    /// A builder one level down: `pb.pp("fc1")` declares `fc1.*`.
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let mut b = self.clone();
        b.prefix = self.path(&name.to_string());
        b
    }

    /// Marks everything declared through the returned builder as part of the
    /// task head (excluded from pruning by default).
    pub fn head(&self) -> Self {
        let mut b = self.clone();
        b.head = true;
        b
    }

    /// The device parameters are created on.
    pub fn device(&self) -> &Device {
        &self.device
    }
    /// The dtype parameters are created with.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// Declares the parameter `name` (below the prefix) of the given shape.
    pub fn param(&self, name: &str, dims: &[usize], kind: ParamKind, init: Init) -> Result<Param> {
        let full = self.path(name);
        let mut st = self.state.lock().expect("builder lock");
        let tensor = match &st.source {
            Source::Init { seed } => {
                let mut rng = Rng::derive(*seed, &full, &[]);
                let n: usize = dims.iter().product();
                Tensor::from_vec(init.sample(n, &mut rng), dims, &self.device)?.to_dtype(self.dtype)?
            }
            Source::Tensors { tensors, context } => {
                let t = tensors.get(&full).ok_or_else(|| Error::UnknownParam {
                    name: full.clone(),
                    hint: Some(format!("not found in {context}")),
                })?;
                if t.dims() != dims {
                    return Err(Error::Shape {
                        name: full,
                        expected: dims.to_vec(),
                        found: t.dims().to_vec(),
                        context: Some(context.clone()),
                    });
                }
                t.to_dtype(self.dtype)?.to_device(&self.device)?
            }
        };
        let p = Param(Arc::new(ParamInner {
            name: full.clone(),
            kind,
            head: self.head,
            var: Var::from_tensor(&tensor)?,
            mask: RwLock::new(None),
            straight_through: AtomicBool::new(false),
            version: AtomicU64::new(0),
        }));
        st.store.push(p.clone())?;
        st.used.push(full);
        Ok(p)
    }

    /// The finished store. When building from tensors, names present in the
    /// source but never declared are returned too (callers decide whether an
    /// unused tensor is an error).
    pub fn finish(self) -> (ParamStore, Vec<String>) {
        let st = self.state.lock().expect("builder lock");
        let unused = match &st.source {
            Source::Init { .. } => Vec::new(),
            Source::Tensors { tensors, .. } => tensors.keys().filter(|k| !st.used.contains(k)).cloned().collect(),
        };
        (st.store.clone(), unused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_deterministic_and_order_independent() -> Result<()> {
        let dev = Device::Cpu;
        let a = ParamBuilder::from_seed(1, DType::F32, &dev);
        let wa = a.pp("fc1").param("weight", &[3, 4], ParamKind::Weight, Init::KaimingUniform { fan_in: 4 })?;
        let b = ParamBuilder::from_seed(1, DType::F32, &dev);
        b.pp("fc0").param("weight", &[2, 2], ParamKind::Weight, Init::Const(0.0))?;
        let wb = b.pp("fc1").param("weight", &[3, 4], ParamKind::Weight, Init::KaimingUniform { fan_in: 4 })?;
        assert_eq!(wa.tensor().to_vec2::<f32>()?, wb.tensor().to_vec2::<f32>()?);
        assert_eq!(wa.name(), "fc1.weight");
        Ok(())
    }

    #[test]
    fn mask_zeroes_and_persists() -> Result<()> {
        let dev = Device::Cpu;
        let pb = ParamBuilder::from_seed(0, DType::F32, &dev);
        let w = pb.param("w", &[4], ParamKind::Weight, Init::Const(2.0))?;
        let m = Tensor::new(&[1f32, 0., 1., 0.], &dev)?;
        w.set_mask(Some(m))?;
        assert_eq!(w.tensor().to_vec1::<f32>()?, [2., 0., 2., 0.]);
        w.set(&Tensor::new(&[3f32, 3., 3., 3.], &dev)?)?;
        w.enforce_mask()?;
        assert_eq!(w.tensor().to_vec1::<f32>()?, [3., 0., 3., 0.]);
        let bad = w.set_mask(Some(Tensor::ones(3, DType::F32, &dev)?));
        assert!(matches!(bad, Err(Error::Shape { .. })));
        Ok(())
    }

    #[test]
    fn straight_through_masks_forward_but_not_gradient_or_storage() -> Result<()> {
        let dev = Device::Cpu;
        let pb = ParamBuilder::from_seed(0, DType::F32, &dev);
        let w = pb.param("w", &[4], ParamKind::Weight, Init::Const(2.0))?;
        w.set_straight_through(true)?;
        w.set_mask(Some(Tensor::new(&[1f32, 0., 1., 0.], &dev)?))?;
        // the pruned weights keep their values, the forward pass does not see them
        assert_eq!(w.tensor().to_vec1::<f32>()?, [2.; 4]);
        let eff = w.effective()?;
        assert_eq!(eff.to_vec1::<f32>()?, [2., 0., 2., 0.]);
        w.enforce_mask()?;
        assert_eq!(w.tensor().to_vec1::<f32>()?, [2.; 4]);
        // d/dw sum(3 * w_eff) = 3 everywhere (straight through), not 3 ⊙ m
        let g = (eff * 3.0)?.sum_all()?.backward()?;
        assert_eq!(g.get(w.tensor()).unwrap().to_vec1::<f32>()?, [3.; 4]);
        // back to a hard mask: the pruned weights are zeroed
        w.set_straight_through(false)?;
        assert_eq!(w.tensor().to_vec1::<f32>()?, [2., 0., 2., 0.]);
        Ok(())
    }

    #[test]
    fn loading_checks_names_and_shapes() -> Result<()> {
        let dev = Device::Cpu;
        let mut src = BTreeMap::new();
        src.insert("w".to_string(), Tensor::zeros((2, 3), DType::F32, &dev)?);
        let pb = ParamBuilder::from_tensors(src, "ckpt.safetensors", DType::F32, &dev);
        let err = pb.param("w", &[3, 2], ParamKind::Weight, Init::Const(0.0)).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("`w`") && msg.contains("[3, 2]") && msg.contains("ckpt.safetensors"), "{msg}");
        let err = pb.param("v", &[1], ParamKind::Bias, Init::Const(0.0)).unwrap_err();
        assert!(err.to_string().contains("not found in ckpt.safetensors"));
        Ok(())
    }
}
