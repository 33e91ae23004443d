//! Fuzzing of checkpoint loading (issue #24): safetensors files with
//! Espalier's JSON header, mutated from a valid checkpoint (the 8-byte header
//! length, numbers, dtypes, shapes and offsets inside the JSON header, the
//! `espalier` header inside it, the tensor bytes). Every case must load or
//! give an error naming the file; nothing is allocated from an unchecked
//! size (see `espalier_core::fuzz`).
//!
//! `ESPALIER_FUZZ_CASES=1000000 cargo test -p espalier-core --test fuzz --release`
//! runs longer (`results/fuzz/README.md`).

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use espalier_core::checkpoint::{self, MASK_PREFIX, OPTIM_PREFIX};
use espalier_core::fuzz::{self, CappedAlloc};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// A checkpoint like the ones a run writes: weights, masks, optimizer state
/// and a header with a model config and a history.
fn seed_checkpoint() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ck.safetensors");
    let dev = &Device::Cpu;
    let mut t = BTreeMap::new();
    t.insert("fc1.weight".to_string(), Tensor::arange(0f32, 12., dev).unwrap().reshape((3, 4)).unwrap());
    t.insert("fc1.bias".to_string(), Tensor::zeros(3, DType::F32, dev).unwrap());
    t.insert(format!("{MASK_PREFIX}fc1.weight"), Tensor::ones((3, 4), DType::F32, dev).unwrap());
    t.insert(format!("{OPTIM_PREFIX}fc1.weight.m"), Tensor::ones((3, 4), DType::F32, dev).unwrap());
    t.insert("ids".to_string(), Tensor::new(&[1u32, 2, 3], dev).unwrap());
    t.insert("bytes".to_string(), Tensor::new(&[1u8, 0, 1, 1], dev).unwrap());
    let header = serde_json::json!({
        "model": {"kind": "mlp", "hidden": [3], "input_dim": 4, "num_classes": 3},
        "next_epoch": 2, "global_step": 64,
        "history": [{"type": "epoch", "epoch": 0, "train_loss": 0.5}],
        "phase": "dense", "epoch_in_phase": 1,
    });
    checkpoint::save(&path, &t, &header).unwrap();
    std::fs::read(&path).unwrap()
}

#[test]
fn fuzz_checkpoint() {
    let seed = seed_checkpoint();
    fuzz::run(
        "checkpoint",
        10_000,
        |m| {
            let mut b = seed.clone();
            m.safetensors(&mut b);
            vec![("ck.safetensors".to_string(), b)]
        },
        |dir| {
            let r = checkpoint::load(&dir.join("ck.safetensors"), &Device::Cpu);
            if let Ok(ck) = &r {
                for (name, t) in &ck.tensors {
                    t.flatten_all().map_err(|e| format!("accepted tensor `{name}` is unusable: {e}"))?;
                }
                let _ = (ck.params(), ck.masks(), ck.optim());
            }
            fuzz::expect_named(r, "ck.safetensors")
        },
    );
}

/// A compact model file (`espalier export --format sparse`): a CSR weight,
/// an N:M weight and a dense masked one, mutated like a checkpoint
/// (including the `compact` header's shapes and formats and the index
/// tensors). Every case must load (each expanded weight with a mask of its
/// shape) or give an error naming the file.
#[test]
fn fuzz_compact_checkpoint() {
    let dev = &Device::Cpu;
    let mut t = BTreeMap::new();
    let w = |r: usize, c: usize| Tensor::arange(0f32, (r * c) as f32, dev).unwrap().reshape((r, c)).unwrap();
    let m = |r: usize, c: usize, keep: fn(usize) -> bool| {
        let v: Vec<f32> = (0..r * c).map(|i| keep(i) as u8 as f32).collect();
        Tensor::from_vec(v, (r, c), dev).unwrap()
    };
    t.insert("a.weight".to_string(), w(5, 12));
    t.insert(format!("{MASK_PREFIX}a.weight"), m(5, 12, |i| i % 7 == 0));
    t.insert("b.weight".to_string(), w(3, 8));
    t.insert(format!("{MASK_PREFIX}b.weight"), m(3, 8, |i| i % 4 < 2));
    t.insert("c.weight".to_string(), w(2, 3));
    t.insert(format!("{MASK_PREFIX}c.weight"), m(2, 3, |i| i != 4));
    t.insert("c.bias".to_string(), Tensor::zeros(2, DType::F32, dev).unwrap());
    let (tensors, formats, _) = espalier_core::compact::compress(&t).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    checkpoint::save(&path, &tensors, &serde_json::json!({ "compact": formats })).unwrap();
    let seed = std::fs::read(&path).unwrap();
    fuzz::run(
        "compact",
        10_000,
        |m| {
            let mut b = seed.clone();
            m.safetensors(&mut b);
            vec![("model.safetensors".to_string(), b)]
        },
        |dir| {
            let r = checkpoint::load(&dir.join("model.safetensors"), &Device::Cpu);
            if let Ok(ck) = &r {
                // What expand rebuilt has its weight's shape (a dense-stored
                // weight and its mask are checked by the model's loader).
                let header = ck.header["compact"].as_object().cloned().unwrap_or_default();
                for name in header.keys() {
                    let (w, m) = (&ck.tensors[name], &ck.masks()[name]);
                    if w.dims() != m.dims() {
                        return Err(format!("`{name}`: weight {:?} and mask {:?}", w.dims(), m.dims()));
                    }
                }
                for (name, t) in &ck.tensors {
                    t.flatten_all().map_err(|e| format!("accepted tensor `{name}` is unusable: {e}"))?;
                }
            }
            fuzz::expect_named(r, "model.safetensors")
        },
    );
}
