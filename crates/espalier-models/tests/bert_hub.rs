//! Resolving a repo id through a Hugging Face cache directory that the test
//! lays out itself (the Hub cannot be reached here, and no test downloads).
//! In its own test binary because it sets `HF_HOME`.

use std::path::Path;

use candle_core::{Device, Tensor};
use espalier_models::bert::{hub, Bert, BertConfig, BertTask};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn tiny() -> BertConfig {
    BertConfig {
        vocab_size: 30,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 12,
        max_position_embeddings: 8,
        ..BertConfig::base(BertTask::Classification { num_labels: 2 })
    }
}

/// `<cache>/models--org--tiny-bert/{refs/main, snapshots/<commit>/…}`.
fn lay_out_cache(cache: &Path, model: &Bert) {
    let repo = cache.join("models--org--tiny-bert");
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    // Python's huggingface_hub writes no newline; tolerate one anyway.
    std::fs::write(repo.join("refs/main"), format!("{COMMIT}\n")).unwrap();
    model.save_pretrained(repo.join("snapshots").join(COMMIT)).unwrap();
}

#[test]
fn resolves_from_a_test_made_cache() {
    let home = tempfile::tempdir().unwrap();
    let cache = home.path().join("hub");
    let model = Bert::init(tiny(), 1, &Device::Cpu).unwrap();
    lay_out_cache(&cache, &model);
    let snap = cache.join("models--org--tiny-bert/snapshots").join(COMMIT);

    assert_eq!(hub::resolve_in(&cache, "org/tiny-bert", None).unwrap(), snap);
    assert_eq!(hub::resolve_in(&cache, "org/tiny-bert", Some(COMMIT)).unwrap(), snap);
    let err = hub::resolve_in(&cache, "org/other", None).unwrap_err().to_string();
    assert!(err.contains("org/other") && err.contains("not in the Hugging Face cache"), "{err}");
    let err = hub::resolve_in(&cache, "org/tiny-bert", Some("v2")).unwrap_err().to_string();
    assert!(err.contains("refs/v2"), "{err}");

    // Through the environment: HF_HOME/hub, offline.
    std::env::remove_var("HF_HUB_CACHE");
    std::env::remove_var("HUGGINGFACE_HUB_CACHE");
    std::env::set_var("HF_HOME", home.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(hub::cache_dir(), cache);
    assert_eq!(hub::resolve_model_dir("org/tiny-bert").unwrap(), snap);
    assert_eq!(hub::resolve_model_dir(&format!("org/tiny-bert@{COMMIT}")).unwrap(), snap);
    // A local directory is taken as it is.
    assert_eq!(hub::resolve_model_dir(snap.to_str().unwrap()).unwrap(), snap);
    let err = hub::resolve_model_dir("org/missing").unwrap_err().to_string();
    assert!(err.contains("offline mode"), "{err}");

    let loaded = Bert::from_hub("org/tiny-bert", None, None, &Device::Cpu).unwrap();
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[1u32, 4, 7, 2]], &dev).unwrap();
    let tt = ids.zeros_like().unwrap();
    let mask = Tensor::ones((1, 4), candle_core::DType::F32, &dev).unwrap();
    let a = model.logits(&ids, &tt, &mask, None).unwrap();
    let b = loaded.logits(&ids, &tt, &mask, None).unwrap();
    assert_eq!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());

    // HF_HUB_CACHE takes precedence over HF_HOME.
    std::env::set_var("HF_HUB_CACHE", home.path().join("elsewhere"));
    assert_eq!(hub::cache_dir(), home.path().join("elsewhere"));
    std::env::remove_var("HF_HUB_CACHE");
}
