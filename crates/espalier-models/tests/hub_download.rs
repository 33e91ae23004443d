//! Downloads from a real HTTP server on 127.0.0.1, started by the test, that
//! answers the Hub's paths (`/api/models/<id>/revision/<rev>` and
//! `/<id>/resolve/<rev>/<file>` with ranges, ETag and X-Repo-Commit) for a
//! tiny BERT the test writes: a download, a cache hit without network,
//! revision pinning, a 404, a connection dropped mid-file (the cache left as
//! it was, the next attempt resuming), and offline mode.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use espalier_models::bert::hub::{missing_files, resolve_model_dir_with, Hub};
use espalier_models::bert::{Bert, BertConfig, BertTask};

const MAIN: &str = "1111111111111111111111111111111111111111";
const V1: &str = "2222222222222222222222222222222222222222";

/// One commit's files.
type Files = BTreeMap<String, Vec<u8>>;

struct Server {
    addr: String,
    /// Requests answered so far.
    requests: Arc<AtomicUsize>,
    /// Cut the next full download of `model.safetensors` half-way.
    drop_next: Arc<AtomicBool>,
}

fn tiny(seed: u64) -> (Bert, Files) {
    let cfg = BertConfig {
        vocab_size: 30,
        hidden_size: 8,
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 12,
        max_position_embeddings: 8,
        ..BertConfig::base(BertTask::Classification { num_labels: 2 })
    };
    let model = Bert::init(cfg, seed, &Device::Cpu).unwrap();
    let dir = tempfile::tempdir().unwrap();
    model.save_pretrained(dir.path()).unwrap();
    let mut files = Files::new();
    for f in ["config.json", "model.safetensors"] {
        files.insert(f.into(), std::fs::read(dir.path().join(f)).unwrap());
    }
    let vocab: Vec<String> = (0..30).map(|i| format!("tok{i}")).collect();
    files.insert("vocab.txt".into(), vocab.join("\n").into_bytes());
    (model, files)
}

fn etag(bytes: &[u8]) -> String {
    // FNV-1a: any stable content hash does for the test.
    let h = bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3));
    format!("{h:016x}")
}

fn serve(repos: BTreeMap<(String, String), (String, Files)>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let requests = Arc::new(AtomicUsize::new(0));
    let drop_next = Arc::new(AtomicBool::new(false));
    let (r, d) = (requests.clone(), drop_next.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            r.fetch_add(1, Ordering::SeqCst);
            let _ = answer(stream, &repos, &d);
        }
    });
    Server { addr, requests, drop_next }
}

fn answer(
    mut stream: TcpStream,
    repos: &BTreeMap<(String, String), (String, Files)>,
    drop_next: &AtomicBool,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut range_start = None;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
            range_start =
                v.trim().split('-').next().and_then(|s| s.parse::<usize>().ok()).map(|a| (a, v.trim().to_string()));
        }
    }
    let reply = |stream: &mut TcpStream, status: &str, headers: &[(String, String)], body: &[u8], len: usize| {
        let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {len}\r\n");
        for (k, v) in headers {
            head += &format!("{k}: {v}\r\n");
        }
        head += "\r\n";
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        stream.flush()
    };
    let not_found = |stream: &mut TcpStream| reply(stream, "404 Not Found", &[], b"Repository not found", 20);
    if let Some(rest) = path.strip_prefix("/api/models/") {
        // org/name/revision/rev
        let parts: Vec<&str> = rest.split('/').collect();
        let key = (format!("{}/{}", parts[0], parts.get(1).unwrap_or(&"")), parts.get(3).unwrap_or(&"").to_string());
        let Some((sha, files)) = repos.get(&key) else { return not_found(&mut stream) };
        let siblings: Vec<_> = files.keys().map(|f| serde_json::json!({ "rfilename": f })).collect();
        let body = serde_json::json!({ "sha": sha, "siblings": siblings }).to_string();
        let h = [("Content-Type".to_string(), "application/json".to_string())];
        return reply(&mut stream, "200 OK", &h, body.as_bytes(), body.len());
    }
    // /org/name/resolve/rev/file
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if parts.len() != 5 || parts[2] != "resolve" {
        return not_found(&mut stream);
    }
    let key = (format!("{}/{}", parts[0], parts[1]), parts[3].to_string());
    let Some((sha, files)) = repos.get(&key) else { return not_found(&mut stream) };
    let Some(bytes) = files.get(parts[4]) else { return not_found(&mut stream) };
    let total = bytes.len();
    let (start, end) = match &range_start {
        Some((_, r)) if r == "0-0" => (0, 0),
        Some((a, _)) => (*a, total - 1),
        None => (0, total - 1),
    };
    let headers = vec![
        ("ETag".to_string(), format!("\"{}\"", etag(bytes))),
        ("X-Repo-Commit".to_string(), sha.clone()),
        ("Content-Range".to_string(), format!("bytes {start}-{end}/{total}")),
    ];
    let body = &bytes[start..=end];
    let full = end + 1 - start > 1;
    if full && parts[4] == "model.safetensors" && drop_next.swap(false, Ordering::SeqCst) {
        // Promise the whole body, send half, hang up.
        return reply(&mut stream, "206 Partial Content", &headers, &body[..body.len() / 2], body.len());
    }
    reply(&mut stream, "206 Partial Content", &headers, body, body.len())
}

fn hub(cache: &Path, server: &Server, offline: bool) -> Hub {
    Hub { cache: cache.to_path_buf(), endpoint: server.addr.clone(), token: None, offline, progress: false }
}

fn logits(model: &Bert) -> Vec<Vec<f32>> {
    let dev = Device::Cpu;
    let ids = Tensor::new(&[[1u32, 4, 7, 2]], &dev).unwrap();
    let tt = ids.zeros_like().unwrap();
    let mask = Tensor::ones((1, 4), DType::F32, &dev).unwrap();
    model.logits(&ids, &tt, &mask, None).unwrap().to_vec2().unwrap()
}

fn load(dir: &Path) -> Bert {
    Bert::from_pretrained(dir, None, &Device::Cpu).unwrap()
}

/// Every file under `dir` with its bytes (links followed), sorted.
fn tree(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(tree(&p));
            } else {
                out.push((p.clone(), std::fs::read(&p).unwrap_or_default()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn downloads_caches_pins_revisions_and_survives_failures() {
    let (main_model, main_files) = tiny(1);
    let (v1_model, v1_files) = tiny(2);
    assert_ne!(logits(&main_model), logits(&v1_model));
    let repos = BTreeMap::from([
        (("org/tiny-bert".to_string(), "main".to_string()), (MAIN.to_string(), main_files.clone())),
        (("org/tiny-bert".to_string(), "v1".to_string()), (V1.to_string(), v1_files)),
    ]);
    let server = serve(repos);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("hub");

    // Download: config, weights and tokenizer, as a complete snapshot.
    let snap = resolve_model_dir_with("org/tiny-bert", &hub(&cache, &server, false)).unwrap();
    assert_eq!(snap, cache.join("models--org--tiny-bert/snapshots").join(MAIN));
    assert_eq!(missing_files(&snap), None);
    assert_eq!(std::fs::read(snap.join("vocab.txt")).unwrap(), main_files["vocab.txt"]);
    assert_eq!(std::fs::read_to_string(cache.join("models--org--tiny-bert/refs/main")).unwrap(), MAIN);
    assert!(!cache.join(".espalier-downloads/models--org--tiny-bert@main").exists(), "staging left behind");
    assert_eq!(logits(&load(&snap)), logits(&main_model));

    // A cache hit touches no network, even with the server unreachable.
    let before = server.requests.load(Ordering::SeqCst);
    let unreachable = Hub { endpoint: "http://127.0.0.1:9".into(), ..hub(&cache, &server, false) };
    assert_eq!(resolve_model_dir_with("org/tiny-bert", &unreachable).unwrap(), snap);
    assert_eq!(resolve_model_dir_with("org/tiny-bert", &hub(&cache, &server, true)).unwrap(), snap);
    assert_eq!(server.requests.load(Ordering::SeqCst), before);

    // Revision pinning: `@v1` is another commit with other weights.
    let v1 = resolve_model_dir_with("org/tiny-bert@v1", &hub(&cache, &server, false)).unwrap();
    assert_eq!(v1, cache.join("models--org--tiny-bert/snapshots").join(V1));
    assert_eq!(logits(&load(&v1)), logits(&v1_model));
    assert_eq!(resolve_model_dir_with(&format!("org/tiny-bert@{V1}"), &hub(&cache, &server, true)).unwrap(), v1);

    // A 404 names the repo, and the cache is unchanged.
    let cached = tree(&cache);
    let err = resolve_model_dir_with("org/missing", &hub(&cache, &server, false)).unwrap_err().to_string();
    assert!(err.contains("org/missing") && err.contains("404"), "{err}");
    assert!(!cache.join("models--org--missing/snapshots").exists());
    let err = resolve_model_dir_with("org/tiny-bert@v9", &hub(&cache, &server, false)).unwrap_err().to_string();
    assert!(err.contains("v9") && err.contains("404"), "{err}");
    assert_eq!(
        tree(&cache.join("models--org--tiny-bert")),
        cached.iter().filter(|(p, _)| p.starts_with(cache.join("models--org--tiny-bert"))).cloned().collect::<Vec<_>>()
    );

    // Offline, a repo that is not cached is an error naming it and the cache,
    // with no request made.
    let fresh = tmp.path().join("fresh");
    let before = server.requests.load(Ordering::SeqCst);
    let err = resolve_model_dir_with("org/tiny-bert", &hub(&fresh, &server, true)).unwrap_err().to_string();
    assert!(err.contains("org/tiny-bert") && err.contains(&fresh.display().to_string()), "{err}");
    assert!(err.contains("offline"), "{err}");
    assert_eq!(server.requests.load(Ordering::SeqCst), before);

    // The connection drops half-way through the weights: an error, and the
    // cache holds no snapshot or ref of the repo (only the staging area
    // does); the next attempt resumes and ends with the right weights.
    server.drop_next.store(true, Ordering::SeqCst);
    let err = resolve_model_dir_with("org/tiny-bert", &hub(&fresh, &server, false)).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("unchanged"), "{err}");
    let repo = fresh.join("models--org--tiny-bert");
    assert!(!repo.join("refs").exists() && !repo.join("snapshots").exists(), "{:?}", tree(&repo));
    let snap = resolve_model_dir_with("org/tiny-bert", &hub(&fresh, &server, false)).unwrap();
    assert_eq!(std::fs::read(snap.join("model.safetensors")).unwrap(), main_files["model.safetensors"]);
    assert_eq!(logits(&load(&snap)), logits(&main_model));

    // Not a repo id.
    let err = resolve_model_dir_with("org/a/b", &hub(&cache, &server, true)).unwrap_err().to_string();
    assert!(err.contains("neither a local directory nor"), "{err}");
}
