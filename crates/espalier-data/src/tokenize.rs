//! Tokenization for the text tasks (GLUE, XNLI): BERT WordPiece through the
//! `tokenizers` crate, Espalier's own truncation and dynamic padding.
//!
//! # Sources
//! - `tokenizer.json` (Hugging Face `tokenizers` serialisation), loaded with
//!   [`Tokenizer::from_file`]. Padding and truncation settings stored in the
//!   file (e.g. `all-MiniLM-L6-v2` pads every sequence to 128 and truncates
//!   at 128) are **removed at load time**: Espalier truncates to its own
//!   `max_seq_len` and pads each batch only to its longest sequence. The file's
//!   post-processor is not used either; special tokens are added here.
//! - `vocab.txt` (one WordPiece token per line, id = 0-based line number),
//!   loaded with [`Tokenizer::from_vocab`]: the BERT pipeline of Devlin et al.
//!   (2019), i.e. `BertNormalizer` (clean text, CJK spacing, optional
//!   lowercasing with accent stripping), `BertPreTokenizer` (whitespace and
//!   punctuation splits) and greedy longest-match-first WordPiece with
//!   `[UNK]` and the `##` continuation prefix.
//!
//! # Encoding
//! A single sentence becomes `[CLS] a [SEP]` with segment ids all 0; a pair
//! becomes `[CLS] a [SEP] b [SEP]` with segment ids 0 up to and including the
//! first `[SEP]` and 1 after it. Sequences longer than `max_seq_len` are
//! truncated from the end; pairs with the longest-first strategy of BERT's
//! `_truncate_seq_pair` (one token at a time from the longer sequence, from
//! `b` on ties; see [`truncate_pair`]).
//!
//! # Batching
//! [`collate`] pads to the longest sequence of the batch with the vocab's
//! `[PAD]` id (segment id 0, attention mask 0); [`bucket_by_length`] groups
//! examples of similar length into batches so that little padding is needed.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use espalier_core::{Error, Result, Rng};
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::{AddedToken, DecoderWrapper};

use crate::{Batch, Dataset, Inputs};

/// The special tokens a BERT vocabulary must contain.
const SPECIAL_TOKENS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// A BERT WordPiece tokenizer with Espalier's truncation and padding.
#[derive(Clone, Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    cls_id: u32,
    sep_id: u32,
    pad_id: u32,
    source: PathBuf,
}

/// One encoded example, unpadded: `[CLS] a [SEP] (b [SEP])`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub input_ids: Vec<u32>,
    /// Segment ids: 0 for `[CLS] a [SEP]`, 1 for `b [SEP]`.
    pub token_type_ids: Vec<u32>,
}

impl Encoded {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.input_ids.len()
    }
    /// Whether there are no tokens (never true for an encoded example).
    pub fn is_empty(&self) -> bool {
        self.input_ids.is_empty()
    }
}

fn tok_err(path: &Path, what: &str, e: impl std::fmt::Display) -> Error {
    Error::format(path, format!("{what}: {e}"))
}

impl Tokenizer {
    /// Loads a `tokenizer.json`, removing its padding and truncation settings.
    /// The vocabulary must contain `[CLS]`, `[SEP]` and `[PAD]`.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // `tokenizers` panics on some malformed sections (an unknown decoder
        // `type` is an `expect`): such a file is an error like the others.
        let parsed = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes)).map_err(|p| {
            let why = p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            tok_err(
                path,
                "not a valid tokenizer.json (the tokenizers library failed reading it)",
                why.unwrap_or_default(),
            )
        })?;
        let mut inner = parsed.map_err(|e| tok_err(path, "not a valid tokenizer.json", e))?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| tok_err(path, "cannot disable truncation", e))?;
        Self::wrap(inner, path)
    }

    /// Builds the BERT WordPiece tokenizer from a `vocab.txt` (one token per
    /// line). `lowercase` selects the uncased pipeline (lowercasing and accent
    /// stripping), as `do_lower_case` in BERT's `tokenizer_config.json`.
    pub fn from_vocab(path: impl AsRef<Path>, lowercase: bool) -> Result<Self> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(Error::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "vocab file not found")));
        }
        let path_str = path.to_str().ok_or_else(|| Error::format(path, "path is not valid UTF-8"))?;
        let model = WordPiece::from_file(path_str)
            .unk_token("[UNK]".to_string())
            .continuing_subword_prefix("##".to_string())
            .build()
            .map_err(|e| tok_err(path, "cannot read the WordPiece vocabulary", e))?;
        let mut inner = tokenizers::Tokenizer::new(model);
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, lowercase)))
            .map_err(|e| tok_err(path, "cannot set the normalizer", e))?;
        inner.with_pre_tokenizer(Some(BertPreTokenizer));
        inner.with_decoder(Some(DecoderWrapper::WordPiece(tokenizers::decoders::wordpiece::WordPiece::default())));
        // Special tokens present in the vocabulary are matched whole in text,
        // as Hugging Face's BertTokenizerFast does.
        let specials: Vec<AddedToken> = SPECIAL_TOKENS
            .iter()
            .filter(|t| inner.token_to_id(t).is_some())
            .map(|t| AddedToken::from(*t, true))
            .collect();
        inner.add_special_tokens(specials).map_err(|e| tok_err(path, "cannot register the special tokens", e))?;
        Self::wrap(inner, path)
    }

    /// A tokenizer from a model directory: `tokenizer.json` if present, else
    /// `vocab.txt` with `do_lower_case` from `tokenizer_config.json` (default
    /// true, as for uncased BERT).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let json = dir.join("tokenizer.json");
        if json.is_file() {
            return Self::from_file(json);
        }
        let vocab = dir.join("vocab.txt");
        if !vocab.is_file() {
            return Err(Error::format(
                dir,
                "no tokenizer found: expected tokenizer.json or vocab.txt in this directory",
            ));
        }
        let config = dir.join("tokenizer_config.json");
        let lowercase = if config.is_file() {
            let text = std::fs::read_to_string(&config).map_err(|e| Error::io(&config, e))?;
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| tok_err(&config, "not valid JSON", e))?;
            match value.get("do_lower_case") {
                None | Some(serde_json::Value::Null) => true,
                Some(serde_json::Value::Bool(b)) => *b,
                Some(other) => {
                    return Err(Error::format(&config, format!("`do_lower_case` must be true or false, found {other}")))
                }
            }
        } else {
            true
        };
        Self::from_vocab(vocab, lowercase)
    }

    fn wrap(inner: tokenizers::Tokenizer, path: &Path) -> Result<Self> {
        let id = |t: &str| {
            inner.token_to_id(t).ok_or_else(|| {
                Error::format(
                    path,
                    format!("the vocabulary has no `{t}` token (a BERT vocabulary needs [CLS], [SEP] and [PAD])"),
                )
            })
        };
        Ok(Tokenizer {
            cls_id: id("[CLS]")?,
            sep_id: id("[SEP]")?,
            pad_id: id("[PAD]")?,
            source: path.to_path_buf(),
            inner,
        })
    }

    /// The file this tokenizer was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }
    /// Id of `[PAD]`.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    /// Id of `[CLS]`.
    pub fn cls_id(&self) -> u32 {
        self.cls_id
    }
    /// Id of `[SEP]`.
    pub fn sep_id(&self) -> u32 {
        self.sep_id
    }
    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
    /// The id of a token, if it is in the vocabulary.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }
    /// The token of an id, if it is in the vocabulary.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }
    /// The underlying `tokenizers` tokenizer (no padding, no truncation).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// WordPiece ids of `text`, without special tokens and untruncated.
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode_fast(text, false).map_err(|e| Error::msg(format!("tokenizing {text:?}: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Encodes one sentence or a sentence pair, truncated to `max_seq_len`
    /// tokens (special tokens included).
    pub fn encode(&self, a: &str, b: Option<&str>, max_seq_len: usize) -> Result<Encoded> {
        check_max_len(max_seq_len, b.is_some())?;
        let ids_a = self.tokenize(a)?;
        let ids_b = b.map(|b| self.tokenize(b)).transpose()?;
        Ok(self.assemble(ids_a, ids_b, max_seq_len))
    }

    /// Encodes many examples in parallel; see [`Tokenizer::encode`].
    pub fn encode_all(&self, items: &[(&str, Option<&str>)], max_seq_len: usize) -> Result<Vec<Encoded>> {
        let pair = items.iter().any(|(_, b)| b.is_some());
        check_max_len(max_seq_len, pair)?;
        let mut texts: Vec<&str> = Vec::with_capacity(items.len() * 2);
        for (a, b) in items {
            texts.push(a);
            if let Some(b) = b {
                texts.push(b);
            }
        }
        let encs = self
            .inner
            .encode_batch_fast(texts, false)
            .map_err(|e| Error::msg(format!("tokenizing a batch of {} texts: {e}", items.len())))?;
        let mut it = encs.into_iter().map(|e| e.get_ids().to_vec());
        let mut out = Vec::with_capacity(items.len());
        for (_, b) in items {
            let ids_a = it.next().unwrap_or_default();
            let ids_b = b.map(|_| it.next().unwrap_or_default());
            out.push(self.assemble(ids_a, ids_b, max_seq_len));
        }
        Ok(out)
    }

    fn assemble(&self, mut a: Vec<u32>, b: Option<Vec<u32>>, max_seq_len: usize) -> Encoded {
        match b {
            None => {
                a.truncate(max_seq_len.saturating_sub(2));
                let mut ids = Vec::with_capacity(a.len() + 2);
                ids.push(self.cls_id);
                ids.extend_from_slice(&a);
                ids.push(self.sep_id);
                let token_type_ids = vec![0; ids.len()];
                Encoded { input_ids: ids, token_type_ids }
            }
            Some(mut b) => {
                let (la, lb) = truncate_pair(a.len(), b.len(), max_seq_len.saturating_sub(3));
                a.truncate(la);
                b.truncate(lb);
                let mut ids = Vec::with_capacity(la + lb + 3);
                ids.push(self.cls_id);
                ids.extend_from_slice(&a);
                ids.push(self.sep_id);
                let first = ids.len();
                ids.extend_from_slice(&b);
                ids.push(self.sep_id);
                let mut token_type_ids = vec![0; first];
                token_type_ids.resize(ids.len(), 1);
                Encoded { input_ids: ids, token_type_ids }
            }
        }
    }
}

fn check_max_len(max_seq_len: usize, pair: bool) -> Result<()> {
    let need = if pair { 3 } else { 2 };
    if max_seq_len < need {
        return Err(Error::msg(format!(
            "max_seq_len = {max_seq_len} is too small: {} needs at least {need} tokens for its special tokens",
            if pair { "a sentence pair" } else { "a sentence" }
        )));
    }
    Ok(())
}

/// Longest-first truncation of a pair of lengths to at most `budget` tokens
/// in total: remove one token at a time from the longer sequence, from the
/// second on ties (BERT's `_truncate_seq_pair`, `run_classifier.py`).
/// Returns the kept lengths.
pub fn truncate_pair(mut la: usize, mut lb: usize, budget: usize) -> (usize, usize) {
    if la + lb <= budget {
        return (la, lb);
    }
    // Shorten the longer one down to the shorter (or until it fits) ...
    let excess = la + lb - budget;
    if la > lb {
        let d = (la - lb).min(excess);
        la -= d;
    } else {
        let d = (lb - la).min(excess);
        lb -= d;
    }
    // ... then alternate, starting with `b` (equal lengths pop from `b`).
    let rest = (la + lb).saturating_sub(budget);
    lb -= rest.div_ceil(2);
    la -= rest / 2;
    (la, lb)
}

/// Pads `examples` to the longest among them: `input_ids` with `pad_id`,
/// `token_type_ids` with 0, `attention_mask` 1 for tokens and 0 for padding.
pub fn collate(examples: &[&Encoded], pad_id: u32, device: &Device) -> Result<Inputs> {
    let b = examples.len();
    let t = examples.iter().map(|e| e.len()).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(b * t);
    let mut types = Vec::with_capacity(b * t);
    let mut mask = Vec::with_capacity(b * t);
    for e in examples {
        let pad = t - e.len();
        ids.extend_from_slice(&e.input_ids);
        ids.extend(std::iter::repeat_n(pad_id, pad));
        types.extend_from_slice(&e.token_type_ids);
        types.extend(std::iter::repeat_n(0u32, pad));
        mask.extend(std::iter::repeat_n(1f32, e.len()));
        mask.extend(std::iter::repeat_n(0f32, pad));
    }
    Ok(Inputs::Tokens {
        input_ids: Tensor::from_vec(ids, (b, t), device)?,
        token_type_ids: Tensor::from_vec(types, (b, t), device)?,
        attention_mask: Tensor::from_vec(mask, (b, t), device)?,
    })
}

/// Batches of indices grouped by similar length: the epoch's seeded
/// permutation (`Rng::derive(seed, "length-buckets", [epoch])`) is cut into
/// pools of `pool_batches × batch_size` examples, each pool is sorted by
/// length and cut into batches, and the order of all batches is shuffled.
/// Every index appears exactly once; only the very last batch of the
/// permutation may be smaller than `batch_size`.
pub fn bucket_by_length(
    lengths: &[usize],
    batch_size: usize,
    pool_batches: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let bs = batch_size.max(1);
    let pool = bs * pool_batches.max(1);
    let mut rng = Rng::derive(seed, "length-buckets", &[epoch]);
    let order = rng.permutation(lengths.len());
    let mut batches: Vec<Vec<usize>> = Vec::with_capacity(lengths.len().div_ceil(bs));
    for chunk in order.chunks(pool) {
        let mut chunk = chunk.to_vec();
        chunk.sort_by_key(|&i| lengths[i]);
        batches.extend(chunk.chunks(bs).map(|c| c.to_vec()));
    }
    rng.shuffle(&mut batches);
    batches
}

/// A single label.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Label {
    /// A class id.
    Class(u32),
    /// A regression target (STS-B: a similarity score in [0, 5]).
    Score(f32),
}

/// The labels of a whole dataset.
#[derive(Clone, Debug, PartialEq)]
pub enum Labels {
    /// Class ids, batched as `(B,)` u32.
    Class(Vec<u32>),
    /// Regression targets, batched as `(B,)` f32.
    Score(Vec<f32>),
}

impl Labels {
    /// Number of labels.
    pub fn len(&self) -> usize {
        match self {
            Labels::Class(v) => v.len(),
            Labels::Score(v) => v.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The labels as f64 (the input of [`espalier_core::Metric::compute`]).
    pub fn to_f64(&self) -> Vec<f64> {
        match self {
            Labels::Class(v) => v.iter().map(|&x| x as f64).collect(),
            Labels::Score(v) => v.iter().map(|&x| x as f64).collect(),
        }
    }
    fn tensor(&self, indices: &[usize], device: &Device) -> Result<Tensor> {
        let n = indices.len();
        Ok(match self {
            Labels::Class(v) => Tensor::from_vec(indices.iter().map(|&i| v[i]).collect::<Vec<_>>(), n, device)?,
            Labels::Score(v) => Tensor::from_vec(indices.iter().map(|&i| v[i]).collect::<Vec<_>>(), n, device)?,
        })
    }
}

/// Tokenized examples with optional labels, batched with dynamic padding.
///
/// Unlabelled data (GLUE test files) still yields batches, whose `labels`
/// are zeros of the right dtype (u32, or f32 for regression): check
/// [`TokenizedDataset::is_labelled`] before scoring.
#[derive(Clone, Debug)]
pub struct TokenizedDataset {
    encodings: Vec<Encoded>,
    labels: Option<Labels>,
    regression: bool,
    pad_id: u32,
}

impl TokenizedDataset {
    /// Wraps encoded examples. `labels`, when present, must have one entry
    /// per example and be `Score` exactly when `regression`.
    pub fn new(encodings: Vec<Encoded>, labels: Option<Labels>, regression: bool, pad_id: u32) -> Result<Self> {
        if let Some(l) = &labels {
            if l.len() != encodings.len() {
                return Err(Error::msg(format!("{} labels for {} examples", l.len(), encodings.len())));
            }
            if matches!(l, Labels::Score(_)) != regression {
                return Err(Error::msg(if regression {
                    "a regression dataset needs score labels, found class ids"
                } else {
                    "a classification dataset needs class ids, found scores"
                }));
            }
        }
        Ok(TokenizedDataset { encodings, labels, regression, pad_id })
    }

    /// Tokenizes `(a, b)` texts with their labels (all `Some` or all `None`).
    pub fn from_texts(
        tok: &Tokenizer,
        texts: &[(&str, Option<&str>)],
        labels: &[Option<Label>],
        regression: bool,
        max_seq_len: usize,
    ) -> Result<Self> {
        if labels.len() != texts.len() {
            return Err(Error::msg(format!("{} labels for {} texts", labels.len(), texts.len())));
        }
        let labelled = labels.iter().filter(|l| l.is_some()).count();
        let labels = if labelled == 0 {
            None
        } else if labelled != labels.len() {
            return Err(Error::msg(format!(
                "{labelled} of {} examples are labelled: all or none must be",
                labels.len()
            )));
        } else if regression {
            Some(Labels::Score(
                labels
                    .iter()
                    .map(|l| match l {
                        Some(Label::Score(s)) => Ok(*s),
                        _ => Err(Error::msg("a regression dataset needs score labels, found a class id")),
                    })
                    .collect::<Result<_>>()?,
            ))
        } else {
            Some(Labels::Class(
                labels
                    .iter()
                    .map(|l| match l {
                        Some(Label::Class(c)) => Ok(*c),
                        _ => Err(Error::msg("a classification dataset needs class ids, found a score")),
                    })
                    .collect::<Result<_>>()?,
            ))
        };
        let encodings = tok.encode_all(texts, max_seq_len)?;
        Self::new(encodings, labels, regression, tok.pad_id())
    }

    /// The encoded examples.
    pub fn encodings(&self) -> &[Encoded] {
        &self.encodings
    }
    /// The labels, `None` for unlabelled data.
    pub fn labels(&self) -> Option<&Labels> {
        self.labels.as_ref()
    }
    /// Whether the examples carry labels.
    pub fn is_labelled(&self) -> bool {
        self.labels.is_some()
    }
    /// Whether the labels are regression targets.
    pub fn is_regression(&self) -> bool {
        self.regression
    }
    /// The padding id used by [`Dataset::batch`].
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }
    /// Token count of every example (for [`bucket_by_length`]).
    pub fn lengths(&self) -> Vec<usize> {
        self.encodings.iter().map(Encoded::len).collect()
    }
}

impl Dataset for TokenizedDataset {
    fn len(&self) -> usize {
        self.encodings.len()
    }

    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        let n = self.encodings.len();
        if let Some(&bad) = indices.iter().find(|&&i| i >= n) {
            return Err(Error::msg(format!("example index {bad} out of range for a dataset of {n}")));
        }
        let examples: Vec<&Encoded> = indices.iter().map(|&i| &self.encodings[i]).collect();
        let inputs = collate(&examples, self.pad_id, device)?;
        let labels = match &self.labels {
            Some(l) => l.tensor(indices, device)?,
            None if self.regression => Tensor::zeros(indices.len(), candle_core::DType::F32, device)?,
            None => Tensor::zeros(indices.len(), candle_core::DType::U32, device)?,
        };
        Ok(Batch { inputs, labels })
    }
}

/// `../shared` beside the checkout (development data, never committed);
/// panics with the path it looked at when it is missing.
#[cfg(test)]
pub(crate) fn shared_dir() -> PathBuf {
    let p = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared"));
    assert!(
        p.is_dir(),
        "the shared data folder is missing: looked for {} (../shared beside the checkout); \
         these tests need it (run without --features shared-data to skip them)",
        p.display()
    );
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny uncased BERT vocabulary; ids are line numbers.
    const VOCAB: &[&str] = &[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "the", "cat", "sat", "on", "mat", ",", ".",
        "!", "un", "##aff", "##able", "a", "dog", "café", "cafe",
    ];

    fn tiny(lowercase: bool) -> (tempfile::TempDir, Tokenizer) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vocab.txt");
        std::fs::write(&path, VOCAB.join("\n") + "\n").unwrap();
        let tok = Tokenizer::from_vocab(&path, lowercase).unwrap();
        (dir, tok)
    }

    fn id(t: &str) -> u32 {
        VOCAB.iter().position(|v| *v == t).unwrap() as u32
    }

    #[test]
    fn wordpiece_from_vocab_single_and_pair() {
        let (_d, tok) = tiny(true);
        assert_eq!((tok.cls_id(), tok.sep_id(), tok.pad_id()), (2, 3, 0));
        assert_eq!(tok.vocab_size(), VOCAB.len());
        let e = tok.encode("Hello, World!", None, 64).unwrap();
        assert_eq!(e.input_ids, vec![2, id("hello"), id(","), id("world"), id("!"), 3]);
        assert_eq!(e.token_type_ids, vec![0; 6]);
        // WordPiece continuation, unknown words, accent stripping when uncased.
        let e = tok.encode("unaffable zebra Café", None, 64).unwrap();
        assert_eq!(e.input_ids, vec![2, id("un"), id("##aff"), id("##able"), 1, id("cafe"), 3]);
        // Pairs: [CLS] a [SEP] b [SEP], segments 0 then 1.
        let e = tok.encode("the cat", Some("a dog ."), 64).unwrap();
        assert_eq!(e.input_ids, vec![2, id("the"), id("cat"), 3, id("a"), id("dog"), id("."), 3]);
        assert_eq!(e.token_type_ids, vec![0, 0, 0, 0, 1, 1, 1, 1]);
        // Special tokens written in the text stay whole.
        assert_eq!(tok.tokenize("the [MASK] sat").unwrap(), vec![id("the"), 4, id("sat")]);
        // encode_all agrees with encode.
        let items = [("the cat sat", None), ("hello", Some("world !"))];
        let all = tok.encode_all(&items, 64).unwrap();
        assert_eq!(all[0], tok.encode("the cat sat", None, 64).unwrap());
        assert_eq!(all[1], tok.encode("hello", Some("world !"), 64).unwrap());
    }

    #[test]
    fn cased_vocab_keeps_case_and_accents() {
        let (_d, tok) = tiny(false);
        assert_eq!(tok.tokenize("hello Hello café").unwrap(), vec![id("hello"), 1, id("café")]);
    }

    #[test]
    fn truncation_single_and_longest_first() {
        let (_d, tok) = tiny(true);
        let e = tok.encode("the cat sat on the mat", None, 5).unwrap();
        assert_eq!(e.input_ids, vec![2, id("the"), id("cat"), id("sat"), 3]);
        // a has 6 tokens, b has 2; budget 7 - 3 = 4 -> a keeps 2, b keeps 2.
        let e = tok.encode("the cat sat on the mat", Some("a dog"), 7).unwrap();
        assert_eq!(e.input_ids, vec![2, id("the"), id("cat"), 3, id("a"), id("dog"), 3]);
        assert_eq!(e.token_type_ids, vec![0, 0, 0, 0, 1, 1, 1]);
        assert!(tok.encode("the", Some("cat"), 2).is_err());
        assert!(tok.encode("the", None, 1).is_err());
    }

    /// `truncate_pair` equals BERT's one-token-at-a-time loop.
    #[test]
    fn truncate_pair_matches_reference_loop() {
        fn reference(mut a: usize, mut b: usize, budget: usize) -> (usize, usize) {
            while a + b > budget {
                if a > b {
                    a -= 1
                } else {
                    b -= 1
                }
            }
            (a, b)
        }
        for a in 0..20 {
            for b in 0..20 {
                for budget in 0..45 {
                    assert_eq!(truncate_pair(a, b, budget), reference(a, b, budget), "{a} {b} {budget}");
                }
            }
        }
        assert_eq!(truncate_pair(10, 10, 15), (8, 7));
    }

    #[test]
    fn collate_pads_dynamically() {
        let (_d, tok) = tiny(true);
        let a = tok.encode("hello", None, 64).unwrap();
        let b = tok.encode("the cat", Some("sat on the mat"), 64).unwrap();
        let Inputs::Tokens { input_ids, token_type_ids, attention_mask } =
            collate(&[&a, &b], tok.pad_id(), &Device::Cpu).unwrap()
        else {
            panic!("expected tokens")
        };
        assert_eq!(input_ids.dims(), &[2, 9]);
        let ids = input_ids.to_vec2::<u32>().unwrap();
        assert_eq!(ids[0], vec![2, id("hello"), 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(ids[1], b.input_ids);
        let tt = token_type_ids.to_vec2::<u32>().unwrap();
        assert_eq!(tt[0], vec![0; 9]);
        assert_eq!(tt[1], vec![0, 0, 0, 0, 1, 1, 1, 1, 1]);
        let m = attention_mask.to_vec2::<f32>().unwrap();
        assert_eq!(m[0], vec![1., 1., 1., 0., 0., 0., 0., 0., 0.]);
        assert_eq!(m[1], vec![1.; 9]);
    }

    #[test]
    fn tokenized_dataset_batches_labels_and_unlabelled() {
        let (_d, tok) = tiny(true);
        let texts = [("hello", None), ("the cat sat", None), ("a dog", None)];
        let labels = [Some(Label::Class(1)), Some(Label::Class(0)), Some(Label::Class(1))];
        let ds = TokenizedDataset::from_texts(&tok, &texts, &labels, false, 16).unwrap();
        assert_eq!(ds.len(), 3);
        assert_eq!(ds.lengths(), vec![3, 5, 4]);
        let b = ds.batch(&[2, 0], &Device::Cpu).unwrap();
        assert_eq!(b.labels.to_vec1::<u32>().unwrap(), vec![1, 1]);
        let Inputs::Tokens { input_ids, .. } = &b.inputs else { panic!() };
        assert_eq!(input_ids.dims(), &[2, 4]);
        assert!(ds.batch(&[3], &Device::Cpu).is_err());

        let scores = [Some(Label::Score(4.5)), Some(Label::Score(0.0)), Some(Label::Score(2.25))];
        let ds = TokenizedDataset::from_texts(&tok, &texts, &scores, true, 16).unwrap();
        let b = ds.batch(&[0, 2], &Device::Cpu).unwrap();
        assert_eq!(b.labels.to_vec1::<f32>().unwrap(), vec![4.5, 2.25]);

        let ds = TokenizedDataset::from_texts(&tok, &texts, &[None, None, None], true, 16).unwrap();
        assert!(!ds.is_labelled());
        let b = ds.batch(&[0, 1], &Device::Cpu).unwrap();
        assert_eq!(b.labels.to_vec1::<f32>().unwrap(), vec![0.0, 0.0]);

        assert!(TokenizedDataset::from_texts(&tok, &texts, &[None, Some(Label::Class(0)), None], false, 16).is_err());
        assert!(TokenizedDataset::from_texts(&tok, &texts, &scores, false, 16).is_err());
    }

    #[test]
    fn length_buckets_cover_everything_and_group_lengths() {
        let lengths: Vec<usize> = (0..103).map(|i| (i * 37) % 50 + 3).collect();
        let p = bucket_by_length(&lengths, 8, 4, 7, 0);
        let mut all = p.concat();
        all.sort_unstable();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_eq!(p.iter().filter(|b| b.len() != 8).count(), 1);
        assert_eq!(p, bucket_by_length(&lengths, 8, 4, 7, 0));
        assert_ne!(p, bucket_by_length(&lengths, 8, 4, 7, 1));
        // Within a batch, lengths are sorted neighbours in a pool of 32: the
        // spread is far below that of random batches.
        let spread: usize = p
            .iter()
            .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() - b.iter().map(|&i| lengths[i]).min().unwrap())
            .sum();
        let random: usize = Rng::new(1)
            .permutation(103)
            .chunks(8)
            .map(|b| b.iter().map(|&i| lengths[i]).max().unwrap() - b.iter().map(|&i| lengths[i]).min().unwrap())
            .sum();
        assert!(spread * 2 < random, "bucketed spread {spread} vs random {random}");
    }

    #[test]
    fn missing_or_bad_files_are_errors_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let e = Tokenizer::from_vocab(dir.path().join("nope.txt"), true).unwrap_err().to_string();
        assert!(e.contains("nope.txt"), "{e}");
        let bad = dir.path().join("tokenizer.json");
        std::fs::write(&bad, "{not json").unwrap();
        let e = Tokenizer::from_file(&bad).unwrap_err().to_string();
        assert!(e.contains("tokenizer.json"), "{e}");
        let no_cls = dir.path().join("vocab.txt");
        std::fs::write(&no_cls, "[PAD]\n[UNK]\n[SEP]\nhello\n").unwrap();
        let e = Tokenizer::from_vocab(&no_cls, true).unwrap_err().to_string();
        assert!(e.contains("[CLS]"), "{e}");
        let e = Tokenizer::from_dir(dir.path().join("empty")).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
    }

    /// A tokenizer.json with padding and truncation built in (the layout of
    /// all-MiniLM-L6-v2's): both must be ignored.
    #[test]
    fn tokenizer_json_padding_and_truncation_are_overridden() {
        let (d, tok) = tiny(true);
        let vocab: String = VOCAB.iter().enumerate().map(|(i, t)| format!("{t:?}: {i}")).collect::<Vec<_>>().join(", ");
        let added: String = (0..5)
            .map(|i| {
                format!(
                    r#"{{"id": {i}, "content": {:?}, "single_word": false, "lstrip": false, "rstrip": false, "normalized": false, "special": true}}"#,
                    VOCAB[i]
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let json = format!(
            r###"{{"version": "1.0",
  "truncation": {{"max_length": 4, "strategy": "LongestFirst", "stride": 0}},
  "padding": {{"strategy": {{"Fixed": 12}}, "direction": "Right", "pad_to_multiple_of": null, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}},
  "added_tokens": [{added}],
  "normalizer": {{"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true, "strip_accents": null, "lowercase": true}},
  "pre_tokenizer": {{"type": "BertPreTokenizer"}},
  "post_processor": null,
  "decoder": {{"type": "WordPiece", "prefix": "##", "cleanup": true}},
  "model": {{"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##", "max_input_chars_per_word": 100, "vocab": {{{vocab}}}}}}}"###
        );
        let path = d.path().join("tokenizer.json");
        std::fs::write(&path, json).unwrap();
        let from_json = Tokenizer::from_file(&path).unwrap();
        let text = "The cat sat on the mat, unaffable!";
        let e = from_json.encode(text, Some("hello world"), 64).unwrap();
        assert_eq!(e.len(), 16);
        assert_eq!(e, tok.encode(text, Some("hello world"), 64).unwrap());
        // from_dir prefers tokenizer.json.
        assert_eq!(Tokenizer::from_dir(d.path()).unwrap().source(), path.as_path());
    }

    fn minilm_dir() -> PathBuf {
        let p = shared_dir().join("models/all-MiniLM-L6-v2");
        assert!(p.join("tokenizer.json").is_file(), "missing {}", p.join("tokenizer.json").display());
        p
    }

    #[test]
    #[cfg_attr(not(feature = "shared-data"), ignore = "needs ../shared; run with --features shared-data")]
    fn minilm_tokenizer_json_encodes_uncased_bert_ids_without_fixed_padding() {
        let dir = minilm_dir();
        let tok = Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        assert_eq!(tok.vocab_size(), 30522);
        assert_eq!((tok.pad_id(), tok.cls_id(), tok.sep_id()), (0, 101, 102));
        let e = tok.encode("hello world", None, 128).unwrap();
        assert_eq!(e.input_ids, vec![101, 7592, 2088, 102]);
        assert_eq!(e.token_type_ids, vec![0, 0, 0, 0]);
        // Uncased: case and accents do not matter; pair segments.
        let e = tok.encode("Hello WORLD", Some("héllo"), 128).unwrap();
        assert_eq!(e.input_ids, vec![101, 7592, 2088, 102, 7592, 102]);
        assert_eq!(e.token_type_ids, vec![0, 0, 0, 0, 1, 1]);
        // Longer than the file's 128 when asked for, and no padding.
        let long = "hello ".repeat(300);
        assert_eq!(tok.encode(&long, None, 512).unwrap().len(), 302);
        assert_eq!(tok.encode(&long, None, 16).unwrap().len(), 16);
        // The vocab.txt route builds the same tokenizer.
        let from_vocab = Tokenizer::from_vocab(dir.join("vocab.txt"), true).unwrap();
        for (a, b) in [
            ("The quick brown fox jumps over the lazy dog.", None),
            (
                "The baker thanked her neighbour, whom she called \"the early bird\".",
                Some("Calling him only \"the early bird\"..."),
            ),
            (
                "Café naïve façade — 東京 [MASK] unaffable",
                Some("it 's a warm and often funny story about two gardeners . "),
            ),
        ] {
            assert_eq!(tok.encode(a, b, 128).unwrap(), from_vocab.encode(a, b, 128).unwrap(), "{a}");
        }
        assert_eq!(Tokenizer::from_dir(&dir).unwrap().source(), dir.join("tokenizer.json"));
    }
}
