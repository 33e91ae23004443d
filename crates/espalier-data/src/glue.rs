//! The nine GLUE tasks (Wang et al., 2019) in the standard GLUE directory
//! layout: `<root>/<TASK>/{train,dev,test}.tsv`, with MNLI's
//! `dev_matched.tsv`/`dev_mismatched.tsv` and `test_matched.tsv`/
//! `test_mismatched.tsv`, and MRPC also from the original Microsoft files.
//!
//! # File formats
//! Every file is UTF-8 text, one example per line, fields separated by tabs.
//! Lines are split on `\t` only: there is **no quote handling** (sentences
//! contain `"` freely), a trailing `\r` and a leading UTF-8 BOM are dropped.
//! Apart from CoLA's train/dev files, the first line is a header and columns
//! are found by name; every row must have exactly as many fields as the
//! header. A test file without the label column is unlabelled.
//!
//! | task (dir) | text columns | label column | labels |
//! |---|---|---|---|
//! | CoLA | `sentence` (col 4) | col 2 | `0`, `1` |
//! | SST-2 | `sentence` | `label` | `0`, `1` |
//! | MRPC | `#1 String`, `#2 String` | `Quality` | `0`, `1` (1 = paraphrase) |
//! | STS-B | `sentence1`, `sentence2` | `score` | float in [0, 5] |
//! | QQP | `question1`, `question2` | `is_duplicate` | `0`, `1` |
//! | MNLI | `sentence1`, `sentence2` | `gold_label` | `entailment`, `neutral`, `contradiction` |
//! | QNLI | `question`, `sentence` | `label` | `entailment`, `not_entailment` |
//! | RTE | `sentence1`, `sentence2` | `label` | `entailment`, `not_entailment` |
//! | WNLI | `sentence1`, `sentence2` | `label` | `0`, `1` |
//!
//! - CoLA `train.tsv`/`dev.tsv` have no header and four columns: source,
//!   label, the original author's mark, sentence. CoLA `test.tsv` has the
//!   header `index\tsentence`.
//! - SST-2 train/dev: `sentence\tlabel`; test: `index\tsentence`.
//! - MRPC (GLUE): `Quality\t#1 ID\t#2 ID\t#1 String\t#2 String` (train/dev),
//!   test: `index\t#1 ID\t#2 ID\t#1 String\t#2 String`. The original Microsoft
//!   files `msr_paraphrase_train.txt` (4,076 pairs) and
//!   `msr_paraphrase_test.txt` (1,725 pairs) have the train header (with a
//!   UTF-8 BOM) and are both labelled; they are used when GLUE's `train.tsv`
//!   or `test.tsv` is absent. There is no fallback for `dev.tsv` (GLUE's 408
//!   dev ids are a separate download): evaluate on the labelled Microsoft
//!   test split instead, and say so.
//! - STS-B: `index genre filename year old_index source1 source2 sentence1
//!   sentence2 score` (test: without `score`).
//! - QQP: `id qid1 qid2 question1 question2 is_duplicate`; test:
//!   `id question1 question2`.
//! - MNLI: `index promptID pairID genre sentence1_binary_parse
//!   sentence2_binary_parse sentence1_parse sentence2_parse sentence1
//!   sentence2 label1 [label2 … label5] gold_label` (train has `label1` only,
//!   dev all five); test: the first ten columns. MNLI-m and MNLI-mm share the
//!   training file and differ in the dev/test files.
//! - QNLI: `index question sentence label`; RTE, WNLI: `index sentence1
//!   sentence2 label`; their tests omit `label`.
//!
//! Class ids follow the Hugging Face `glue` dataset: NLI labels in the order
//! above (MNLI: entailment 0, neutral 1, contradiction 2; RTE/QNLI:
//! entailment 0, not_entailment 1), numeric labels as written.
//!
//! A malformed row (wrong number of fields, unknown label, unparsable or
//! out-of-range score) is an error naming the file and its 1-based line.
//!
//! # Metrics
//! The official ones: CoLA Matthews correlation; SST-2, MNLI, QNLI, RTE,
//! WNLI accuracy; MRPC and QQP F1 and accuracy; STS-B Pearson and Spearman.
//! The primary metric (the one a single-number report uses): F1 for
//! MRPC/QQP, Pearson for STS-B, otherwise the only one.

use std::fmt;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;
use espalier_core::{Error, Metric, Result};

use crate::tokenize::{Label, Labels, TokenizedDataset, Tokenizer};
use crate::{Batch, Dataset};

/// The NLI label names, by class id (MNLI, XNLI).
pub const NLI_LABELS: [&str; 3] = ["entailment", "neutral", "contradiction"];

/// The class id of an NLI label name (`entailment` 0, `neutral` 1,
/// `contradiction` 2).
pub fn nli_label(s: &str) -> Option<u32> {
    NLI_LABELS.iter().position(|l| *l == s).map(|i| i as u32)
}

/// A GLUE task. MNLI appears twice: matched and mismatched evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GlueTask {
    /// Corpus of Linguistic Acceptability (single sentence, 2 classes).
    Cola,
    /// Stanford Sentiment Treebank (single sentence, 2 classes).
    Sst2,
    /// Microsoft Research Paraphrase Corpus (pair, 2 classes).
    Mrpc,
    /// Semantic Textual Similarity Benchmark (pair, regression 0–5).
    Stsb,
    /// Quora Question Pairs (pair, 2 classes).
    Qqp,
    /// MultiNLI, matched dev/test (pair, 3 classes).
    Mnli,
    /// MultiNLI, mismatched dev/test (same training set as [`GlueTask::Mnli`]).
    MnliMismatched,
    /// Question NLI (pair, 2 classes).
    Qnli,
    /// Recognizing Textual Entailment (pair, 2 classes).
    Rte,
    /// Winograd NLI (pair, 2 classes).
    Wnli,
}

/// A split of a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// Training data.
    Train,
    /// Development (validation) data.
    Dev,
    /// Test data, unlabelled in GLUE (labelled for Microsoft's MRPC file).
    Test,
}

impl Split {
    /// `train`, `dev` or `test`.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Dev => "dev",
            Split::Test => "test",
        }
    }
}

impl fmt::Display for Split {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Split {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "train" => Ok(Split::Train),
            "dev" | "validation" | "val" => Ok(Split::Dev),
            "test" => Ok(Split::Test),
            _ => Err(Error::msg(format!("unknown split `{s}`; valid splits: train, dev, test"))),
        }
    }
}

/// How the columns of one file are found.
enum Layout {
    /// No header: fixed column positions (CoLA train/dev).
    Fixed { ncols: usize, text: usize, label: usize },
    /// Header line; columns by name.
    Named { text_a: &'static str, text_b: Option<&'static str>, label: &'static str },
}

impl GlueTask {
    /// Every task (MNLI twice: matched and mismatched).
    pub const ALL: [GlueTask; 10] = [
        GlueTask::Cola,
        GlueTask::Sst2,
        GlueTask::Mrpc,
        GlueTask::Stsb,
        GlueTask::Qqp,
        GlueTask::Mnli,
        GlueTask::MnliMismatched,
        GlueTask::Qnli,
        GlueTask::Rte,
        GlueTask::Wnli,
    ];

    /// The display name (`CoLA`, `SST-2`, …, `MNLI-m`, `MNLI-mm`).
    pub fn name(self) -> &'static str {
        match self {
            GlueTask::Cola => "CoLA",
            GlueTask::Sst2 => "SST-2",
            GlueTask::Mrpc => "MRPC",
            GlueTask::Stsb => "STS-B",
            GlueTask::Qqp => "QQP",
            GlueTask::Mnli => "MNLI-m",
            GlueTask::MnliMismatched => "MNLI-mm",
            GlueTask::Qnli => "QNLI",
            GlueTask::Rte => "RTE",
            GlueTask::Wnli => "WNLI",
        }
    }

    /// The canonical lower-case key used in configs (`cola`, `sst2`, `mrpc`,
    /// `stsb`, `qqp`, `mnli`, `mnli-mm`, `qnli`, `rte`, `wnli`).
    pub fn key(self) -> &'static str {
        match self {
            GlueTask::Cola => "cola",
            GlueTask::Sst2 => "sst2",
            GlueTask::Mrpc => "mrpc",
            GlueTask::Stsb => "stsb",
            GlueTask::Qqp => "qqp",
            GlueTask::Mnli => "mnli",
            GlueTask::MnliMismatched => "mnli-mm",
            GlueTask::Qnli => "qnli",
            GlueTask::Rte => "rte",
            GlueTask::Wnli => "wnli",
        }
    }

    /// The task's directory under the GLUE root.
    pub fn dir_name(self) -> &'static str {
        match self {
            GlueTask::Cola => "CoLA",
            GlueTask::Sst2 => "SST-2",
            GlueTask::Mrpc => "MRPC",
            GlueTask::Stsb => "STS-B",
            GlueTask::Qqp => "QQP",
            GlueTask::Mnli | GlueTask::MnliMismatched => "MNLI",
            GlueTask::Qnli => "QNLI",
            GlueTask::Rte => "RTE",
            GlueTask::Wnli => "WNLI",
        }
    }

    /// Whether examples are sentence pairs.
    pub fn is_pair(self) -> bool {
        !matches!(self, GlueTask::Cola | GlueTask::Sst2)
    }

    /// Whether the task is a regression (STS-B).
    pub fn is_regression(self) -> bool {
        self == GlueTask::Stsb
    }

    /// Number of outputs of a task head: classes, or 1 for regression.
    pub fn num_labels(self) -> usize {
        match self {
            GlueTask::Stsb => 1,
            GlueTask::Mnli | GlueTask::MnliMismatched => 3,
            _ => 2,
        }
    }

    /// Label names by class id (as written in the files); empty for STS-B.
    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            GlueTask::Stsb => &[],
            GlueTask::Mnli | GlueTask::MnliMismatched => &NLI_LABELS,
            GlueTask::Qnli | GlueTask::Rte => &["entailment", "not_entailment"],
            _ => &["0", "1"],
        }
    }

    /// The official GLUE metrics, primary first.
    pub fn metrics(self) -> &'static [Metric] {
        match self {
            GlueTask::Cola => &[Metric::Mcc],
            GlueTask::Mrpc | GlueTask::Qqp => &[Metric::F1, Metric::Accuracy],
            GlueTask::Stsb => &[Metric::Pearson, Metric::Spearman],
            _ => &[Metric::Accuracy],
        }
    }

    /// The metric reported when one number is wanted (BERT's Table 1).
    pub fn primary_metric(self) -> Metric {
        self.metrics()[0]
    }

    /// Parses a label field of this task (trimmed of surrounding spaces).
    pub fn parse_label(self, s: &str) -> Option<Label> {
        let s = s.trim();
        if self.is_regression() {
            return s.parse::<f32>().ok().filter(|v| v.is_finite() && (0.0..=5.0).contains(v)).map(Label::Score);
        }
        self.label_names().iter().position(|l| *l == s).map(|i| Label::Class(i as u32))
    }

    /// The candidate file names of a split, most preferred first.
    fn file_names(self, split: Split) -> &'static [&'static str] {
        match (self, split) {
            (GlueTask::Mnli, Split::Dev) => &["dev_matched.tsv"],
            (GlueTask::Mnli, Split::Test) => &["test_matched.tsv"],
            (GlueTask::MnliMismatched, Split::Dev) => &["dev_mismatched.tsv"],
            (GlueTask::MnliMismatched, Split::Test) => &["test_mismatched.tsv"],
            (GlueTask::Mrpc, Split::Train) => &["train.tsv", "msr_paraphrase_train.txt"],
            (GlueTask::Mrpc, Split::Test) => &["test.tsv", "msr_paraphrase_test.txt"],
            (_, Split::Train) => &["train.tsv"],
            (_, Split::Dev) => &["dev.tsv"],
            (_, Split::Test) => &["test.tsv"],
        }
    }

    /// The file of `split` under the GLUE `root`; an error naming the
    /// paths tried when none exists.
    pub fn split_path(self, root: &Path, split: Split) -> Result<PathBuf> {
        let dir = root.join(self.dir_name());
        let names = self.file_names(split);
        for name in names {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
        let tried = names.iter().map(|n| dir.join(n).display().to_string()).collect::<Vec<_>>().join(", ");
        let mut msg = format!("no {} {split} file: tried {tried}", self.name());
        if self == GlueTask::Mrpc && split == Split::Dev {
            msg.push_str(
                " (GLUE's MRPC dev split needs its list of 408 dev ids; without it, evaluate on the \
                 labelled Microsoft test file msr_paraphrase_test.txt via the `test` split)",
            );
        }
        Err(Error::io(dir.join(names[0]), std::io::Error::new(std::io::ErrorKind::NotFound, msg)))
    }

    fn layout(self) -> Layout {
        let named = |a, b, label| Layout::Named { text_a: a, text_b: b, label };
        match self {
            GlueTask::Cola => named("sentence", None, "label"),
            GlueTask::Sst2 => named("sentence", None, "label"),
            GlueTask::Mrpc => named("#1 String", Some("#2 String"), "Quality"),
            GlueTask::Stsb => named("sentence1", Some("sentence2"), "score"),
            GlueTask::Qqp => named("question1", Some("question2"), "is_duplicate"),
            GlueTask::Mnli | GlueTask::MnliMismatched => named("sentence1", Some("sentence2"), "gold_label"),
            GlueTask::Qnli => named("question", Some("sentence"), "label"),
            GlueTask::Rte | GlueTask::Wnli => named("sentence1", Some("sentence2"), "label"),
        }
    }
}

impl fmt::Display for GlueTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for GlueTask {
    type Err = Error;
    /// Case-insensitive; `-`, `_`, spaces and dots are ignored: `SST-2`,
    /// `sst2`, `sst_2`, `STS-B`, `mnli`, `mnli-m`, `mnli_matched`,
    /// `mnli-mm`, `mnli-mismatched`, …
    fn from_str(s: &str) -> Result<Self> {
        let k: String =
            s.chars().filter(|c| !matches!(c, '-' | '_' | ' ' | '.')).collect::<String>().to_ascii_lowercase();
        Ok(match k.as_str() {
            "cola" => GlueTask::Cola,
            "sst2" | "sst" => GlueTask::Sst2,
            "mrpc" => GlueTask::Mrpc,
            "stsb" | "sts" => GlueTask::Stsb,
            "qqp" => GlueTask::Qqp,
            "mnli" | "mnlim" | "mnlimatched" => GlueTask::Mnli,
            "mnlimm" | "mnlimismatched" => GlueTask::MnliMismatched,
            "qnli" => GlueTask::Qnli,
            "rte" => GlueTask::Rte,
            "wnli" => GlueTask::Wnli,
            _ => {
                let valid = GlueTask::ALL.iter().map(|t| t.key()).collect::<Vec<_>>().join(", ");
                return Err(Error::msg(format!(
                    "unknown GLUE task `{s}`; valid names: {valid} (case, `-` and `_` do not matter; \
                     `mnli-m` and `mnli-matched` also name mnli)"
                )));
            }
        })
    }
}

impl serde::Serialize for GlueTask {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.key())
    }
}

impl<'de> serde::Deserialize<'de> for GlueTask {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One raw example.
#[derive(Clone, Debug, PartialEq)]
pub struct GlueExample {
    /// The first (or only) sentence.
    pub text_a: String,
    /// The second sentence of pair tasks.
    pub text_b: Option<String>,
    /// The label; `None` in unlabelled test files.
    pub label: Option<Label>,
    /// 1-based line in the source file.
    pub line: usize,
}

/// Reads a tab-separated file line by line: no quote handling, BOM and
/// trailing `\r` dropped. Calls `f(line_number, fields)` for every line.
pub(crate) fn for_each_tsv_line(path: &Path, mut f: impl FnMut(usize, &[&str]) -> Result<()>) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut buf = Vec::new();
    let mut lineno = 0;
    loop {
        buf.clear();
        let n = reader.read_until(b'\n', &mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(());
        }
        lineno += 1;
        let mut bytes = &buf[..];
        if lineno == 1 {
            bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
        }
        bytes = bytes.strip_suffix(b"\n").unwrap_or(bytes);
        bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        let line = std::str::from_utf8(bytes)
            .map_err(|e| Error::format(path, format!("line {lineno}: not valid UTF-8 ({e})")))?;
        let fields: Vec<&str> = line.split('\t').collect();
        f(lineno, &fields)?;
    }
}

/// Index of the header column `name`, or an error listing the header.
pub(crate) fn column(path: &Path, header: &[&str], name: &str) -> Result<usize> {
    header.iter().position(|h| h.trim() == name).ok_or_else(|| {
        Error::format(path, format!("line 1: the header has no `{name}` column (found: {})", header.join(", ")))
    })
}

/// Reads the examples of `split` of `task` under the GLUE `root`.
pub fn read_split(root: &Path, task: GlueTask, split: Split) -> Result<Vec<GlueExample>> {
    read_file(&task.split_path(root, split)?, task, split)
}

/// Reads one GLUE file of `task`. Train and dev files must be labelled; a
/// test file is labelled only if it has the label column.
pub fn read_file(path: &Path, task: GlueTask, split: Split) -> Result<Vec<GlueExample>> {
    let wrong_cols = |line: usize, want: usize, got: usize| {
        Error::format(path, format!("line {line}: expected {want} tab-separated fields, found {got}"))
    };
    let parse_label = |line: usize, s: &str| {
        task.parse_label(s).ok_or_else(|| {
            let msg = if task.is_regression() {
                format!("line {line}: cannot parse the {} score `{s}` (expected a number in [0, 5])", task.name())
            } else {
                format!(
                    "line {line}: unknown {} label `{s}` (expected one of: {})",
                    task.name(),
                    task.label_names().join(", ")
                )
            };
            Error::format(path, msg)
        })
    };

    let mut out = Vec::new();
    // Resolved on the first line: (ncols, text_a, text_b, label).
    let mut cols: Option<(usize, usize, Option<usize>, Option<usize>)> = None;
    for_each_tsv_line(path, |line, fields| {
        let (ncols, a, b, l) = match cols {
            Some(c) => c,
            None => {
                let layout = match task.layout() {
                    // CoLA train/dev have no header; its test file starts with `index`.
                    _ if task == GlueTask::Cola && fields.first().map(|f| f.trim()) != Some("index") => {
                        Layout::Fixed { ncols: 4, text: 3, label: 1 }
                    }
                    l => l,
                };
                match layout {
                    Layout::Fixed { ncols, text, label } => {
                        cols = Some((ncols, text, None, Some(label)));
                        // No header: this line is data; fall through.
                        (ncols, text, None, Some(label))
                    }
                    Layout::Named { text_a, text_b, label } => {
                        let a = column(path, fields, text_a)?;
                        let b = text_b.map(|n| column(path, fields, n)).transpose()?;
                        let l = fields.iter().position(|h| h.trim() == label);
                        if l.is_none() && split != Split::Test {
                            return Err(Error::format(
                                path,
                                format!(
                                    "line 1: the {split} file of {} has no `{label}` column (found: {})",
                                    task.name(),
                                    fields.join(", ")
                                ),
                            ));
                        }
                        cols = Some((fields.len(), a, b, l));
                        return Ok(());
                    }
                }
            }
        };
        if fields.len() != ncols {
            return Err(wrong_cols(line, ncols, fields.len()));
        }
        out.push(GlueExample {
            text_a: fields[a].to_string(),
            text_b: b.map(|b| fields[b].to_string()),
            label: l.map(|l| parse_label(line, fields[l])).transpose()?,
            line,
        });
        Ok(())
    })?;
    if cols.is_none() {
        return Err(Error::format(path, "the file is empty"));
    }
    Ok(out)
}

/// A tokenized GLUE split: implements [`Dataset`], batches padded to their
/// longest example, labels `(B,)` u32 (f32 for STS-B; zeros when unlabelled).
#[derive(Clone, Debug)]
pub struct GlueDataset {
    task: GlueTask,
    split: Split,
    data: TokenizedDataset,
}

impl GlueDataset {
    /// Reads and tokenizes `split` of `task` under the GLUE `root`.
    pub fn load(root: &Path, task: GlueTask, split: Split, tok: &Tokenizer, max_seq_len: usize) -> Result<Self> {
        let examples = read_split(root, task, split)?;
        Self::from_examples(task, split, &examples, tok, max_seq_len)
    }

    /// Tokenizes already-read examples.
    pub fn from_examples(
        task: GlueTask,
        split: Split,
        examples: &[GlueExample],
        tok: &Tokenizer,
        max_seq_len: usize,
    ) -> Result<Self> {
        let texts: Vec<(&str, Option<&str>)> =
            examples.iter().map(|e| (e.text_a.as_str(), e.text_b.as_deref())).collect();
        let labels: Vec<Option<Label>> = examples.iter().map(|e| e.label).collect();
        let data = TokenizedDataset::from_texts(tok, &texts, &labels, task.is_regression(), max_seq_len)?;
        Ok(GlueDataset { task, split, data })
    }

    /// The task.
    pub fn task(&self) -> GlueTask {
        self.task
    }
    /// The split.
    pub fn split(&self) -> Split {
        self.split
    }
    /// The tokenized examples and labels.
    pub fn data(&self) -> &TokenizedDataset {
        &self.data
    }
    /// The labels, `None` for unlabelled test data.
    pub fn labels(&self) -> Option<&Labels> {
        self.data.labels()
    }
    /// Whether the examples carry labels.
    pub fn is_labelled(&self) -> bool {
        self.data.is_labelled()
    }
    /// Token count of every example.
    pub fn lengths(&self) -> Vec<usize> {
        self.data.lengths()
    }
}

impl Dataset for GlueDataset {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn batch(&self, indices: &[usize], device: &Device) -> Result<Batch> {
        self.data.batch(indices, device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenize::shared_dir;
    use crate::Inputs;

    fn write(root: &Path, rel: &str, text: &str) -> PathBuf {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn class(e: &GlueExample) -> u32 {
        match e.label {
            Some(Label::Class(c)) => c,
            other => panic!("expected a class label, found {other:?}"),
        }
    }

    const MNLI_HEAD: &str = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2";

    /// Fixture files in the real GLUE layouts, for every task; the text is
    /// invented, not taken from the datasets.
    fn fixture() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        write(
            r,
            "CoLA/train.tsv",
            "tx01\t1\t\tThe red kite circled above the barn.\ntx01\t0\t*\tKite the red barn circled.\n",
        );
        write(r, "CoLA/dev.tsv", "tx02\t1\t\tThe fisherman mended his nets by the harbour.\n");
        write(r, "CoLA/test.tsv", "index\tsentence\n0\tThe kettle whistled on the stove.\n1\tThe gate creaked.\n");
        write(
            r,
            "SST-2/train.tsv",
            "sentence\tlabel\na dull and plodding tale about a lost umbrella \t0\na \"bright\" little song \t1\n",
        );
        write(r, "SST-2/dev.tsv", "sentence\tlabel\nit 's a warm and often funny story about two gardeners . \t1\n");
        write(r, "SST-2/test.tsv", "index\tsentence\n0\tclumsy blend of colours and moods .\n");
        let mrpc_head = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n";
        write(
            r,
            "MRPC/train.tsv",
            &format!("\u{feff}{mrpc_head}1\t1001\t1002\tThe baker thanked her neighbour, whom she called \"the early bird\".\tCalling him only \"the early bird\", the baker thanked her neighbour.\n0\t1003\t1004\tThe museum owned the painting.\tThe museum bought the painting in 1990.\n"),
        );
        write(r, "MRPC/dev.tsv", &format!("\u{feff}{mrpc_head}1\t1\t2\tA b.\tA c.\n"));
        write(
            r,
            "MRPC/test.tsv",
            "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n0\t1005\t1006\tThe mayor's deputy.\tThe current deputy.\n",
        );
        let sts_head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2";
        write(
            r,
            "STS-B/train.tsv",
            &format!("{sts_head}\tscore\n0\tmain-captions\tMSRvid\t2012test\t0007\tnone\tnone\tThe red kite circled above the barn.\tA kite flew in circles over the barn.\t5.000\n1\tmain-captions\tMSRvid\t2012test\t0009\tnone\tnone\tThe baker is slicing fresh bread.\tThe baker is cutting bread.\t3.800\n"),
        );
        write(r, "STS-B/dev.tsv", &format!("{sts_head}\tscore\n0\tmain-news\tx\t2012\t1\tnone\tnone\tA.\tB.\t0.000\n"));
        write(r, "STS-B/test.tsv", &format!("{sts_head}\n0\tmain-captions\tMSRvid\t2012test\t0011\tnone\tnone\tA cat is sleeping on the windowsill.\tA cat is napping by the window.\n"));
        write(
            r,
            "QQP/train.tsv",
            "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1001\t2001\t2002\tHow should basil be kept fresh? Does it belong in the fridge?\tHow long does a bicycle tyre usually last?\t0\n1002\t2003\t2004\tHow do I stop my bread from going stale?\tHow can I keep bread from going stale?\t1\n",
        );
        write(r, "QQP/dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1003\t2005\t2006\tWhy do cats like boxes?\tWhy do dogs like sticks?\t0\n");
        write(r, "QQP/test.tsv", "id\tquestion1\tquestion2\n0\tWould you rather live by the sea or in the mountains?\tIf you could move anywhere, would you pick a town on the coast or one in the hills?\n");
        let parses = "( ( The kite ) circled )\t( ( A bird ) flew )\t(ROOT (S (NP (DT The) (NN kite))))\t(ROOT (S (NP (DT A) (NN bird))))";
        write(
            r,
            "MNLI/train.tsv",
            &format!("{MNLI_HEAD}\tlabel1\tgold_label\n0\t1001\t1001n\tgovernment\t{parses}\tThe red kite circled above the barn for most of the morning.\tThe kite was hunting for mice in the field. \tneutral\tneutral\n1\t1002\t1002e\ttelephone\t{parses}\twell you know i think we usually go up to the lake in the summer and uh just fish all day\tWe spend summer days fishing at the lake.\tentailment\tentailment\n2\t1003\t1003c\tfiction\t{parses}\tThe captain will see that the ship is ready by dawn.\tThe captain will \"not\" prepare the ship.\tcontradiction\tcontradiction\n"),
        );
        let five = "\tneutral\tentailment\tneutral\tneutral\tneutral\tneutral";
        write(r, "MNLI/dev_matched.tsv", &format!("{MNLI_HEAD}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n0\t1004\t1004n\tslate\t{parses}\tThe new library is pleasant enough\tEveryone in town loves the new library {five}\n"));
        write(r, "MNLI/dev_mismatched.tsv", &format!("{MNLI_HEAD}\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tgold_label\n0\t1005\t1005c\tletters\t{parses}\tYour gift helped us plant the orchard.\tYour gift made no difference to the orchard.\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\tcontradiction\n1\t1\t1e\tletters\t{parses}\tA.\tB.\tentailment\tentailment\tentailment\tentailment\tentailment\tentailment\n"));
        write(
            r,
            "MNLI/test_matched.tsv",
            &format!("{MNLI_HEAD}\n0\t1006\t1006\ttravel\t{parses}\tThe old square, quiet at noon.\tThe square is.\n"),
        );
        write(
            r,
            "MNLI/test_mismatched.tsv",
            &format!("{MNLI_HEAD}\n0\t1\t1\tverbatim\t{parses}\tA.\tB.\n1\t2\t2\tverbatim\t{parses}\tC.\tD.\n"),
        );
        write(r, "QNLI/train.tsv", "index\tquestion\tsentence\tlabel\n0\tWhen did the village build its first bridge?\tUnlike the ferry before it, the bridge was made of stone.\tnot_entailment\n1\tWhich birds often nest under bridges?\tSwallows often build their nests under old stone bridges.\tentailment\n");
        write(r, "QNLI/dev.tsv", "index\tquestion\tsentence\tlabel\n0\tWhat opened after the new road was finished?\tOn that day, the new market opened.\tentailment\n");
        write(r, "QNLI/test.tsv", "index\tquestion\tsentence\n0\tWhich group looks after the town gardens?\tFor many years the garden club took a \"hands-on\" approach.\n");
        write(r, "RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tNo Rain Recorded in the Valley Yet.\tRain Recorded in the Valley.\tnot_entailment\n1\tThe empty lot became a community garden.\tThe lot is now a garden.\tentailment\n");
        write(r, "RTE/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tThe old mill has closed.\tThe mill was sold last year.\tnot_entailment\n");
        write(r, "RTE/test.tsv", "index\tsentence1\tsentence2\n0\tMarta was invited.\tTomas is related to Marta.\n");
        write(r, "WNLI/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\tI left the vase on the shelf. When I came back, it had tipped over.\tThe vase had tipped over.\t1\n1\tAnna could not reach the jar over Ben because she is so small.\tAnna is so small.\t1\n2\tThe guards stopped all of the visitors.\tThe guards were trying to greet the visitors.\t0\n");
        write(r, "WNLI/dev.tsv", "index\tsentence1\tsentence2\tlabel\n0\tThe gutter is full of leaves. It needs sweeping.\tThe leaves need sweeping.\t0\n");
        write(r, "WNLI/test.tsv", "index\tsentence1\tsentence2\n0\tLena and Omar watched the boats crossing the bay.\tGulls flew off when Lena and Omar came near.\n");
        d
    }

    /// (task, split, rows, labelled, pair)
    const EXPECTED: &[(GlueTask, Split, usize, bool)] = &[
        (GlueTask::Cola, Split::Train, 2, true),
        (GlueTask::Cola, Split::Dev, 1, true),
        (GlueTask::Cola, Split::Test, 2, false),
        (GlueTask::Sst2, Split::Train, 2, true),
        (GlueTask::Sst2, Split::Dev, 1, true),
        (GlueTask::Sst2, Split::Test, 1, false),
        (GlueTask::Mrpc, Split::Train, 2, true),
        (GlueTask::Mrpc, Split::Dev, 1, true),
        (GlueTask::Mrpc, Split::Test, 1, false),
        (GlueTask::Stsb, Split::Train, 2, true),
        (GlueTask::Stsb, Split::Dev, 1, true),
        (GlueTask::Stsb, Split::Test, 1, false),
        (GlueTask::Qqp, Split::Train, 2, true),
        (GlueTask::Qqp, Split::Dev, 1, true),
        (GlueTask::Qqp, Split::Test, 1, false),
        (GlueTask::Mnli, Split::Train, 3, true),
        (GlueTask::Mnli, Split::Dev, 1, true),
        (GlueTask::Mnli, Split::Test, 1, false),
        (GlueTask::MnliMismatched, Split::Train, 3, true),
        (GlueTask::MnliMismatched, Split::Dev, 2, true),
        (GlueTask::MnliMismatched, Split::Test, 2, false),
        (GlueTask::Qnli, Split::Train, 2, true),
        (GlueTask::Qnli, Split::Dev, 1, true),
        (GlueTask::Qnli, Split::Test, 1, false),
        (GlueTask::Rte, Split::Train, 2, true),
        (GlueTask::Rte, Split::Dev, 1, true),
        (GlueTask::Rte, Split::Test, 1, false),
        (GlueTask::Wnli, Split::Train, 3, true),
        (GlueTask::Wnli, Split::Dev, 1, true),
        (GlueTask::Wnli, Split::Test, 1, false),
    ];

    #[test]
    fn every_task_and_split_reads_from_fixtures() {
        let d = fixture();
        for &(task, split, rows, labelled) in EXPECTED {
            let ex = read_split(d.path(), task, split).unwrap_or_else(|e| panic!("{task} {split}: {e}"));
            assert_eq!(ex.len(), rows, "{task} {split}");
            assert!(ex.iter().all(|e| e.label.is_some() == labelled), "{task} {split}");
            assert!(ex.iter().all(|e| e.text_b.is_some() == task.is_pair()), "{task} {split}");
            assert!(ex.iter().all(|e| !e.text_a.is_empty()), "{task} {split}");
        }
    }

    #[test]
    fn fixture_contents_and_label_ids() {
        let d = fixture();
        let r = d.path();
        let cola = read_split(r, GlueTask::Cola, Split::Train).unwrap();
        assert_eq!(cola[1].text_a, "Kite the red barn circled.");
        assert_eq!((class(&cola[0]), class(&cola[1])), (1, 0));
        assert_eq!((cola[0].line, cola[1].line), (1, 2));
        let cola_test = read_split(r, GlueTask::Cola, Split::Test).unwrap();
        assert_eq!((cola_test[0].text_a.as_str(), cola_test[0].line), ("The kettle whistled on the stove.", 2));

        // Quotes are kept verbatim; trailing spaces too.
        let sst = read_split(r, GlueTask::Sst2, Split::Train).unwrap();
        assert_eq!(sst[1].text_a, "a \"bright\" little song ");
        assert_eq!(class(&sst[1]), 1);

        let mrpc = read_split(r, GlueTask::Mrpc, Split::Train).unwrap();
        assert_eq!(mrpc[0].text_a, "The baker thanked her neighbour, whom she called \"the early bird\".");
        assert_eq!(
            mrpc[0].text_b.as_deref(),
            Some("Calling him only \"the early bird\", the baker thanked her neighbour.")
        );
        assert_eq!((class(&mrpc[0]), class(&mrpc[1])), (1, 0));

        let sts = read_split(r, GlueTask::Stsb, Split::Train).unwrap();
        assert_eq!(sts[1].label, Some(Label::Score(3.8)));
        assert_eq!(sts[0].text_b.as_deref(), Some("A kite flew in circles over the barn."));

        let qqp = read_split(r, GlueTask::Qqp, Split::Train).unwrap();
        assert_eq!((class(&qqp[0]), class(&qqp[1])), (0, 1));
        assert_eq!(qqp[1].text_a, "How do I stop my bread from going stale?");

        let mnli = read_split(r, GlueTask::Mnli, Split::Train).unwrap();
        assert_eq!(mnli.iter().map(class).collect::<Vec<_>>(), vec![1, 0, 2]);
        assert_eq!(mnli[2].text_b.as_deref(), Some("The captain will \"not\" prepare the ship."));
        let mm = read_split(r, GlueTask::MnliMismatched, Split::Dev).unwrap();
        assert_eq!(mm.iter().map(class).collect::<Vec<_>>(), vec![2, 0]);
        let m = read_split(r, GlueTask::Mnli, Split::Dev).unwrap();
        assert_eq!(class(&m[0]), 1);

        let qnli = read_split(r, GlueTask::Qnli, Split::Train).unwrap();
        assert_eq!((class(&qnli[0]), class(&qnli[1])), (1, 0));
        assert_eq!(qnli[0].text_a, "When did the village build its first bridge?");
        let rte = read_split(r, GlueTask::Rte, Split::Train).unwrap();
        assert_eq!((class(&rte[0]), class(&rte[1])), (1, 0));
        let wnli = read_split(r, GlueTask::Wnli, Split::Train).unwrap();
        assert_eq!(wnli.iter().map(class).collect::<Vec<_>>(), vec![1, 1, 0]);
    }

    #[test]
    fn mrpc_falls_back_to_the_microsoft_files() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let head = "\u{feff}Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n";
        write(r, "MRPC/msr_paraphrase_train.txt", &format!("{head}1\t1001\t1002\tThe baker thanked her neighbour.\tThe baker thanked him.\r\n0\t1003\t1004\tThe museum owned the painting.\tThe museum bought it.\r\n1\t1\t2\tA \"quoted\" one.\tAnother.\r\n"));
        write(
            r,
            "MRPC/msr_paraphrase_test.txt",
            &format!("{head}1\t1005\t1006\tThe mayor's chief of staff.\tThe current Chief of Staff.\r\n"),
        );
        let train = read_split(r, GlueTask::Mrpc, Split::Train).unwrap();
        assert_eq!(train.len(), 3);
        assert_eq!(train.iter().map(class).collect::<Vec<_>>(), vec![1, 0, 1]);
        assert_eq!(train[0].text_b.as_deref(), Some("The baker thanked him."));
        assert_eq!(train[2].text_a, "A \"quoted\" one.");
        // The Microsoft test file is labelled.
        let test = read_split(r, GlueTask::Mrpc, Split::Test).unwrap();
        assert_eq!(test.len(), 1);
        assert_eq!(class(&test[0]), 1);
        // No dev fallback; the error says what to do.
        let e = read_split(r, GlueTask::Mrpc, Split::Dev).unwrap_err().to_string();
        assert!(e.contains("dev.tsv") && e.contains("msr_paraphrase_test.txt"), "{e}");
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let cases: &[(GlueTask, &str, &str, &str)] = &[
            (GlueTask::Sst2, "SST-2/train.tsv", "sentence\tlabel\ngood\t1\nbad\t0\textra\n", "line 3"),
            (GlueTask::Sst2, "SST-2/dev.tsv", "sentence\tlabel\ngood\t1\nmeh\t2\n", "line 3"),
            (GlueTask::Cola, "CoLA/train.tsv", "gj04\t1\t\tFine.\ngj04\t1\tFine too.\n", "line 2"),
            (GlueTask::Rte, "RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\ta\tb\tcontradiction\n", "line 3"),
            (GlueTask::Stsb, "STS-B/train.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tg\tf\ty\t0\tnone\tnone\ta\tb\tfive\n", "line 2"),
            (GlueTask::Stsb, "STS-B/dev.tsv", "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n0\tg\tf\ty\t0\tnone\tnone\ta\tb\t1.5\n1\tg\tf\ty\t0\tnone\tnone\ta\tb\t7.0\n", "line 3"),
            (GlueTask::Mnli, "MNLI/train.tsv", &format!("{MNLI_HEAD}\tlabel1\tgold_label\n0\t1\t1\tg\tp\tp\tp\tp\ta\tb\t-\t-\n"), "line 2"),
            (GlueTask::Qqp, "QQP/train.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n1\t2\t3\tWhy?\n", "line 2"),
            (GlueTask::Wnli, "WNLI/train.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tyes\n", "line 2"),
            // A train file without its label column.
            (GlueTask::Qnli, "QNLI/train.tsv", "index\tquestion\tsentence\n0\ta\tb\n", "line 1"),
            // A header without the text column.
            (GlueTask::Rte, "RTE/dev.tsv", "index\tpremise\thypothesis\tlabel\n0\ta\tb\tentailment\n", "line 1"),
        ];
        for &(task, rel, text, line) in cases {
            let p = write(r, rel, text);
            let split = if rel.contains("dev") { Split::Dev } else { Split::Train };
            let e = read_split(r, task, split).unwrap_err().to_string();
            assert!(e.contains(&p.display().to_string()), "{rel}: {e}");
            assert!(e.contains(&format!("{line}:")), "{rel}: expected {line} in: {e}");
        }
        // Missing files name the path tried.
        let e = read_split(r, GlueTask::Wnli, Split::Test).unwrap_err().to_string();
        assert!(e.contains("WNLI") && e.contains("test.tsv"), "{e}");
    }

    #[test]
    fn task_names_parse_and_describe() {
        for t in GlueTask::ALL {
            assert_eq!(t.key().parse::<GlueTask>().unwrap(), t);
            assert_eq!(t.name().parse::<GlueTask>().unwrap(), t);
            assert_eq!(t.metrics()[0], t.primary_metric());
            assert_eq!(t.label_names().len(), if t.is_regression() { 0 } else { t.num_labels() });
        }
        for (s, t) in [
            ("sst2", GlueTask::Sst2),
            ("sst-2", GlueTask::Sst2),
            ("SST-2", GlueTask::Sst2),
            ("STS-B", GlueTask::Stsb),
            ("sts_b", GlueTask::Stsb),
            ("mnli-mm", GlueTask::MnliMismatched),
            ("MNLI_mismatched", GlueTask::MnliMismatched),
            ("mnli-m", GlueTask::Mnli),
            ("mnli", GlueTask::Mnli),
            ("CoLA", GlueTask::Cola),
        ] {
            assert_eq!(s.parse::<GlueTask>().unwrap(), t, "{s}");
        }
        let e = "sst3".parse::<GlueTask>().unwrap_err().to_string();
        assert!(e.contains("sst3") && e.contains("cola") && e.contains("mnli-mm") && e.contains("wnli"), "{e}");
        assert_eq!("validation".parse::<Split>().unwrap(), Split::Dev);
        assert!("holdout".parse::<Split>().is_err());

        use Metric::*;
        assert_eq!(GlueTask::Cola.metrics(), &[Mcc]);
        assert_eq!(GlueTask::Mrpc.metrics(), &[F1, Accuracy]);
        assert_eq!(GlueTask::Qqp.metrics(), &[F1, Accuracy]);
        assert_eq!(GlueTask::Stsb.metrics(), &[Pearson, Spearman]);
        for t in
            [GlueTask::Sst2, GlueTask::Mnli, GlueTask::MnliMismatched, GlueTask::Qnli, GlueTask::Rte, GlueTask::Wnli]
        {
            assert_eq!(t.metrics(), &[Accuracy], "{t}");
        }
        assert_eq!(GlueTask::Mnli.num_labels(), 3);
        assert_eq!(GlueTask::Stsb.num_labels(), 1);
        assert!(GlueTask::Stsb.is_regression() && !GlueTask::Sst2.is_pair() && GlueTask::Rte.is_pair());
        assert_eq!(nli_label("neutral"), Some(1));

        // serde round trip through the key.
        let j = serde_json::to_string(&GlueTask::MnliMismatched).unwrap();
        assert_eq!(j, "\"mnli-mm\"");
        assert_eq!(serde_json::from_str::<GlueTask>("\"SST-2\"").unwrap(), GlueTask::Sst2);
        assert!(serde_json::from_str::<GlueTask>("\"glue\"").is_err());
    }

    fn tiny_tokenizer(dir: &Path) -> Tokenizer {
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d", "."];
        let p = dir.join("vocab.txt");
        std::fs::write(&p, vocab.join("\n")).unwrap();
        Tokenizer::from_vocab(&p, true).unwrap()
    }

    #[test]
    fn glue_dataset_batches() {
        let d = fixture();
        let tok = tiny_tokenizer(d.path());
        let ds = GlueDataset::load(d.path(), GlueTask::Rte, Split::Train, &tok, 8).unwrap();
        assert_eq!((ds.len(), ds.task(), ds.split()), (2, GlueTask::Rte, Split::Train));
        assert!(ds.lengths().iter().all(|&l| l <= 8));
        let b = ds.batch(&[0, 1], &Device::Cpu).unwrap();
        assert_eq!(b.labels.to_vec1::<u32>().unwrap(), vec![1, 0]);
        let Inputs::Tokens { input_ids, token_type_ids, .. } = &b.inputs else { panic!() };
        assert_eq!(input_ids.dims()[0], 2);
        assert!(input_ids.dims()[1] <= 8);
        assert_eq!(token_type_ids.to_vec2::<u32>().unwrap()[0][0], 0);

        let ds = GlueDataset::load(d.path(), GlueTask::Stsb, Split::Train, &tok, 16).unwrap();
        let b = ds.batch(&[1, 0], &Device::Cpu).unwrap();
        assert_eq!(b.labels.to_vec1::<f32>().unwrap(), vec![3.8, 5.0]);

        let ds = GlueDataset::load(d.path(), GlueTask::Sst2, Split::Test, &tok, 16).unwrap();
        assert!(!ds.is_labelled());
        assert_eq!(ds.batch(&[0], &Device::Cpu).unwrap().labels.to_vec1::<u32>().unwrap(), vec![0]);
    }

    fn glue_root() -> PathBuf {
        let p = shared_dir().join("data/glue");
        assert!(p.is_dir(), "missing GLUE data: looked for {}", p.display());
        p
    }

    #[test]
    #[cfg_attr(not(feature = "shared-data"), ignore = "needs ../shared; run with --features shared-data")]
    fn real_glue_row_counts() {
        let root = glue_root();
        let expected: &[(GlueTask, Split, usize, bool)] = &[
            (GlueTask::Sst2, Split::Train, 67_349, true),
            (GlueTask::Sst2, Split::Dev, 872, true),
            (GlueTask::Sst2, Split::Test, 1_821, false),
            (GlueTask::Cola, Split::Train, 8_551, true),
            (GlueTask::Cola, Split::Dev, 1_043, true),
            (GlueTask::Cola, Split::Test, 1_063, false),
            (GlueTask::Rte, Split::Train, 2_490, true),
            (GlueTask::Rte, Split::Dev, 277, true),
            (GlueTask::Rte, Split::Test, 3_000, false),
            (GlueTask::Stsb, Split::Train, 5_749, true),
            (GlueTask::Stsb, Split::Dev, 1_500, true),
            (GlueTask::Stsb, Split::Test, 1_379, false),
            (GlueTask::Mrpc, Split::Train, 4_076, true),
            (GlueTask::Mrpc, Split::Test, 1_725, true),
            (GlueTask::Qnli, Split::Dev, 5_463, true),
            (GlueTask::Qnli, Split::Test, 5_463, false),
        ];
        for &(task, split, rows, labelled) in expected {
            let ex = read_split(&root, task, split).unwrap_or_else(|e| panic!("{task} {split}: {e}"));
            assert_eq!(ex.len(), rows, "{task} {split}");
            assert!(ex.iter().all(|e| e.label.is_some() == labelled), "{task} {split}");
        }
        // Label balance of the real files (counted with awk).
        let cola = read_split(&root, GlueTask::Cola, Split::Train).unwrap();
        assert_eq!(cola.iter().filter(|e| class(e) == 1).count(), 6_023);
        let mrpc = read_split(&root, GlueTask::Mrpc, Split::Train).unwrap();
        assert_eq!(mrpc.iter().filter(|e| class(e) == 1).count(), 2_753);
        // The first row follows the BOM header (its sentence has 98 bytes).
        assert_eq!((mrpc[0].line, mrpc[0].text_a.len()), (2, 98));
        assert!(read_split(&root, GlueTask::Mrpc, Split::Dev).is_err());
    }

    #[test]
    #[cfg_attr(not(feature = "shared-data"), ignore = "needs ../shared; run with --features shared-data")]
    fn real_rte_dev_tokenizes_with_minilm() {
        let tok = Tokenizer::from_file(shared_dir().join("models/all-MiniLM-L6-v2/tokenizer.json")).unwrap();
        let ds = GlueDataset::load(&glue_root(), GlueTask::Rte, Split::Dev, &tok, 256).unwrap();
        assert_eq!(ds.len(), 277);
        let lengths = ds.lengths();
        assert!(lengths.iter().all(|&l| l <= 256));
        assert!(lengths.iter().any(|&l| l > 128), "RTE has pairs longer than the file's 128");
        let b = ds.batch(&[0, 1, 2], &Device::Cpu).unwrap();
        let Inputs::Tokens { input_ids, .. } = &b.inputs else { panic!() };
        assert_eq!(input_ids.dims()[1], lengths[..3].iter().copied().max().unwrap());
    }
}
