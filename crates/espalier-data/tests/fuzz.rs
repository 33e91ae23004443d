//! Fuzzing of the data parsers (issue #24): IDX (raw and gzipped), CIFAR-10
//! and CIFAR-100 binaries, GLUE and XNLI TSV files (read and tokenized), and
//! the tokenizer files (`tokenizer.json`; `vocab.txt` with
//! `tokenizer_config.json`). Each target mutates valid seed files
//! (see `espalier_core::fuzz`) and requires `Ok` or an error naming the
//! file: no panic, no allocation over the cap (a header is checked against
//! the file length before anything is allocated from it).
//!
//! `ESPALIER_FUZZ_CASES=1000000 cargo test -p espalier-data --test fuzz --release`
//! runs longer (`results/fuzz/README.md`).

use std::io::Write;
use std::path::Path;

use candle_core::Device;
use espalier_core::fuzz::{self, CappedAlloc, Mutator};
use espalier_data::cifar::{self, CifarDataset, Labels, Variant};
use espalier_data::glue::{self, GlueDataset, GlueTask, Split};
use espalier_data::mnist::{self, Flavor};
use espalier_data::tokenize::Tokenizer;
use espalier_data::xnli::{self, Language, XnliDataset, XnliSplit};
use espalier_data::Dataset;

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// Cases per target in CI.
const CI_CASES: usize = 10_000;

const VOCAB: &[&str] = &[
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "cat", "sat", "on", "mat", ",", ".", "!",
    "un", "##aff", "##able", "a", "dog", "café", "cafe",
];

fn vocab_txt() -> Vec<u8> {
    (VOCAB.join("\n") + "\n").into_bytes()
}

/// The tiny tokenizer every text target tokenizes with.
fn tokenizer() -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vocab.txt");
    std::fs::write(&p, vocab_txt()).unwrap();
    let tok = Tokenizer::from_vocab(&p, true).unwrap();
    (dir, tok)
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut b = vec![0u8, 0, 0x08, dims.len() as u8];
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(data);
    b
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// IDX-aware mutation: a header field (element type, rank, a dimension) set
/// to an extreme value, or byte mutations.
fn mutate_idx(m: &mut Mutator, b: &mut Vec<u8>) {
    match m.below(4) {
        0 => {
            let nd = b.get(3).copied().unwrap_or(0) as usize;
            let at = 4 + 4 * m.below(nd.max(1));
            m.set_u32_be(b, at);
        }
        1 => {
            // The element type or the rank.
            let i = 2 + m.below(2);
            let v = *m.pick(&[0u8, 1, 2, 3, 4, 8, 9, 0x0d, 0xff]);
            if let Some(x) = b.get_mut(i) {
                *x = v;
            }
        }
        _ => m.bytes(b),
    }
}

#[test]
fn fuzz_idx() {
    let (n, h, w) = (3u32, 28u32, 28u32);
    let px: Vec<u8> = (0..n * h * w).map(|i| (i % 251) as u8).collect();
    let images = idx(&[n, h, w], &px);
    let labels = idx(&[n], &[7, 0, 9]);
    fuzz::run(
        "idx",
        CI_CASES,
        |m| {
            let (mut im, mut lb) = (images.clone(), labels.clone());
            match m.below(10) {
                0..=5 => mutate_idx(m, &mut im),
                6..=8 => mutate_idx(m, &mut lb),
                _ => {
                    mutate_idx(m, &mut im);
                    mutate_idx(m, &mut lb);
                }
            }
            // Gzipped files: the mutation applied before compression (it
            // reaches the IDX parser) or, sometimes, to the gzip stream.
            let gz = m.chance(0.2);
            let ext = if gz { ".gz" } else { "" };
            let (mut im, lb) = if gz { (gzip(&im), gzip(&lb)) } else { (im, lb) };
            if gz && m.chance(0.2) {
                m.bytes(&mut im);
            }
            vec![(format!("t10k-images-idx3-ubyte{ext}"), im), (format!("t10k-labels-idx1-ubyte{ext}"), lb)]
        },
        |dir| {
            let r = mnist::load(dir, mnist::Split::Test, Flavor::Mnist);
            if let Ok(ds) = &r {
                // Accepted data is usable as it claims.
                let n = ds.labels.dims1().map_err(|e| e.to_string())?;
                if ds.inputs.dims()[0] != n || n == 0 {
                    return Err(format!("accepted {:?} images for {n} labels", ds.inputs.dims()));
                }
            }
            fuzz::expect_named(r, "t10k-")
        },
    );
}

fn fuzz_cifar(variant: Variant, target: &str) {
    let rec = variant.record_len();
    let lb = variant.label_bytes();
    let mut seed = Vec::new();
    for r in 0..3u8 {
        seed.extend_from_slice(&[r + 1, r * 3][..lb]);
        seed.extend((0..cifar::PIXELS).map(|i| (i as u8).wrapping_mul(r + 1)));
    }
    let file = variant.files(cifar::Split::Test).remove(0);
    fuzz::run(
        target,
        CI_CASES,
        |m| {
            let mut b = seed.clone();
            match m.below(4) {
                // A label byte of some record set to an edge value.
                0 => {
                    let i = m.below(3) * rec + m.below(lb);
                    b[i] = *m.pick(&[0u8, 9, 10, 19, 20, 99, 100, 0xff]);
                }
                // A length near a record boundary.
                1 => {
                    let n = (m.below(4) * rec).saturating_add_signed(m.below(3) as isize - 1);
                    b.resize(n, 0);
                }
                _ => m.bytes(&mut b),
            }
            vec![(file.clone(), b)]
        },
        |dir| {
            let labels = if variant == Variant::Cifar100 && m_coarse(dir) { Labels::Coarse } else { Labels::Fine };
            let r = CifarDataset::load(dir, variant, cifar::Split::Test, labels);
            if let Ok(ds) = &r {
                let n = ds.len();
                ds.batch(&[0, n - 1], &Device::Cpu).map_err(|e| format!("accepted data cannot be batched: {e}"))?;
                let classes = labels.num_classes(variant) as u32;
                if ds.labels().iter().any(|&l| l >= classes) {
                    return Err(format!("accepted a label outside the {classes} classes"));
                }
            }
            fuzz::expect_named(r, &file)
        },
    );
}

/// Half the CIFAR-100 cases train on the coarse labels (decided by the path
/// so that the check stays a pure function of the case).
fn m_coarse(dir: &Path) -> bool {
    std::fs::read(dir.join("test.bin")).map(|b| b.len() % 2 == 0).unwrap_or(false)
}

#[test]
fn fuzz_cifar10() {
    fuzz_cifar(Variant::Cifar10, "cifar10");
}

#[test]
fn fuzz_cifar100() {
    fuzz_cifar(Variant::Cifar100, "cifar100");
}

/// Seed files of GLUE tasks: (task, split, file name, contents).
fn glue_seeds() -> Vec<(GlueTask, Split, &'static str, String)> {
    vec![
        (GlueTask::Sst2, Split::Dev, "dev.tsv", "sentence\tlabel\nhello world !\t1\nthe cat sat .\t0\n".into()),
        (GlueTask::Cola, Split::Dev, "dev.tsv", "gj04\t1\t\tthe cat sat on the mat .\nr-67\t0\t*\tcat the .\n".into()),
        (GlueTask::Cola, Split::Test, "test.tsv", "index\tsentence\n0\tthe dog .\n1\tun aff able\n".into()),
        (
            GlueTask::Mrpc,
            Split::Dev,
            "dev.tsv",
            "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tthe cat\ta cat\n0\t3\t4\thello\tworld\n".into(),
        ),
        (
            GlueTask::Stsb,
            Split::Dev,
            "dev.tsv",
            "index\tgenre\tsentence1\tsentence2\tscore\n0\tx\tthe cat\tthe dog\t3.800\n1\ty\ta\tb\t0.0\n".into(),
        ),
        (
            GlueTask::Mnli,
            Split::Dev,
            "dev_matched.tsv",
            "index\tpromptID\tsentence1\tsentence2\tlabel1\tgold_label\n0\t1\tthe cat sat\tcat\tneutral\tentailment\n\
             1\t2\thello\tworld\tx\tcontradiction\n"
                .into(),
        ),
        (GlueTask::Qnli, Split::Test, "test.tsv", "index\tquestion\tsentence\n0\twho ?\tthe cat .\n".into()),
    ]
}

/// TSV-aware mutation: lines, fields and values, or bytes.
fn mutate_text(m: &mut Mutator, b: &mut Vec<u8>) {
    for _ in 0..1 + m.below(3) {
        match m.below(6) {
            0..=2 => m.lines(b),
            3 => {
                let i = m.below(b.len() + 1);
                let opts: [&[u8]; 8] = [b"\t", b"\n", b"\r\n", b"\xef\xbb\xbf", b"\xff", b"\xc3", b"\0", b"[SEP]"];
                let s = *m.pick(&opts);
                b.splice(i..i, s.iter().copied());
            }
            _ => m.byte_op(b),
        }
    }
}

#[test]
fn fuzz_glue() {
    let (_d, tok) = tokenizer();
    let seeds = glue_seeds();
    let pick = std::cell::Cell::new(0);
    fuzz::run(
        "glue",
        CI_CASES,
        |m| {
            let i = m.below(seeds.len());
            pick.set(i);
            let (_, _, name, text) = &seeds[i];
            let mut b = text.clone().into_bytes();
            mutate_text(m, &mut b);
            vec![(name.to_string(), b)]
        },
        |dir| {
            let (task, split, name, _) = seeds[pick.get()];
            let path = dir.join(name);
            let r = glue::read_file(&path, task, split).and_then(|ex| {
                let max_len = 3 + ex.len() % 8;
                GlueDataset::from_examples(task, split, &ex, &tok, max_len).map(|ds| (ds, max_len))
            });
            if let Ok((ds, max_len)) = &r {
                if ds.lengths().iter().any(|l| l > max_len) {
                    return Err(format!("an example is longer than max_seq_len {max_len}"));
                }
                if !ds.data().is_empty() {
                    let idx: Vec<usize> = (0..ds.data().len()).collect();
                    ds.data().batch(&idx, &Device::Cpu).map_err(|e| format!("accepted data cannot be batched: {e}"))?;
                }
            }
            fuzz::expect_named(r, name)
        },
    );
}

#[test]
fn fuzz_xnli() {
    let (_d, tok) = tokenizer();
    let seed = "language\tgold_label\tsentence1_binary_parse\tsentence1\tsentence2\tpromptID\n\
                en\tentailment\t( a )\tthe cat sat .\ta cat sat\t1\n\
                fr\tneutral\t( b )\tle chat\tun chat\t2\n\
                de\tcontradiction\t( c )\tdie Katze\tder Hund\t3\n";
    fuzz::run(
        "xnli",
        CI_CASES,
        |m| {
            let mut b = seed.as_bytes().to_vec();
            mutate_text(m, &mut b);
            vec![("xnli.dev.tsv".to_string(), b)]
        },
        |dir| {
            let path = dir.join("xnli.dev.tsv");
            let langs = [Language::En, Language::Fr];
            let only = std::fs::metadata(&path).map(|m| m.len() % 2 == 0).unwrap_or(false);
            let r = xnli::read_file(&path, only.then_some(&langs[..])).and_then(|ex| {
                XnliDataset::from_examples(XnliSplit::Dev, None, &ex, &tok, 6)
                    .map_err(|e| espalier_core::Error::format(&path, e.to_string()))
            });
            if let Ok(ds) = &r {
                if ds.lengths().iter().any(|&l| l > 6) {
                    return Err("an example is longer than max_seq_len 6".into());
                }
            }
            fuzz::expect_named(r, "xnli.dev.tsv")
        },
    );
}

/// A JSON-aware mutation: a number, a string value, a line, or bytes.
fn mutate_json(m: &mut Mutator, b: &mut Vec<u8>) {
    for _ in 0..1 + m.below(2) {
        match m.below(6) {
            0 | 1 => m.number(b),
            2 | 3 => m.lines(b),
            _ => m.byte_op(b),
        }
    }
}

/// Encodes a few texts with an accepted tokenizer: no panic, lengths bounded.
fn exercise(tok: &Tokenizer) -> Result<(), String> {
    for (a, b) in [("hello, World!", None), ("unaffable café [MASK] zebra", Some("the cat . sat"))] {
        match tok.encode(a, b, 6) {
            Ok(e) if e.len() > 6 || e.token_type_ids.len() != e.len() => {
                return Err(format!("encoded {a:?} into {} tokens (max 6)", e.len()))
            }
            _ => {}
        }
    }
    Ok(())
}

#[test]
fn fuzz_tokenizer_json() {
    let (_d, tok) = tokenizer();
    // A real tokenizer.json as `tokenizers` writes it, pretty-printed (one
    // value per line for the line mutations).
    let seed = tok.inner().to_string(true).unwrap().into_bytes();
    fuzz::run(
        "tokenizer_json",
        CI_CASES,
        |m| {
            let mut b = seed.clone();
            mutate_json(m, &mut b);
            vec![("tokenizer.json".to_string(), b)]
        },
        |dir| {
            let r = Tokenizer::from_dir(dir);
            if let Ok(t) = &r {
                exercise(t)?;
            }
            fuzz::expect_named(r, "tokenizer.json")
        },
    );
}

#[test]
fn fuzz_vocab_txt() {
    let seed = vocab_txt();
    let config = b"{\n  \"do_lower_case\": true,\n  \"model_max_length\": 512\n}\n".to_vec();
    fuzz::run(
        "vocab_txt",
        CI_CASES,
        |m| {
            let (mut v, mut c) = (seed.clone(), config.clone());
            if m.chance(0.8) {
                mutate_text(m, &mut v);
            } else {
                mutate_json(m, &mut c);
            }
            vec![("vocab.txt".to_string(), v), ("tokenizer_config.json".to_string(), c)]
        },
        |dir| {
            let r = Tokenizer::from_dir(dir);
            if let Ok(t) = &r {
                exercise(t)?;
            }
            match r {
                Ok(_) => Ok(true),
                Err(e) => {
                    let msg = e.to_string();
                    if msg.contains("vocab.txt") || msg.contains("tokenizer_config.json") {
                        Ok(false)
                    } else {
                        Err(format!("the error names neither file: {msg}"))
                    }
                }
            }
        },
    );
}

/// The inputs the fuzz targets found crashing, kept under `tests/fixtures/`
/// (one directory per input, named after its target): each is now an error
/// naming the file.
#[test]
fn fuzz_regression_fixtures_are_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut dirs: Vec<_> = std::fs::read_dir(&root).unwrap().map(|e| e.unwrap().path()).collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no fixtures in {}", root.display());
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let err = if name.starts_with("idx-") {
            mnist::load(&dir, mnist::Split::Test, Flavor::Mnist).map(|_| ()).unwrap_err()
        } else if name.starts_with("tokenizer-") {
            Tokenizer::from_dir(&dir).map(|_| ()).unwrap_err()
        } else {
            panic!("{}: a fixture of which target? (name it idx-… or tokenizer-…)", dir.display())
        };
        assert!(err.to_string().contains(&dir.display().to_string()), "{name}: {err}");
    }
}
