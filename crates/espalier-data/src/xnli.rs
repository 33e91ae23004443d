//! XNLI (Conneau et al., 2018): cross-lingual NLI in 15 languages, for
//! zero-shot transfer from MultiNLI.
//!
//! # Layout
//! The `XNLI-1.0` distribution: `<root>/xnli.dev.tsv` (2,490 pairs per
//! language) and `<root>/xnli.test.tsv` (5,010 per language); `<root>` may
//! also be the folder that contains `XNLI-1.0/`. Tab-separated, no quote
//! handling, a header line naming the columns:
//! `language gold_label sentence1_binary_parse sentence2_binary_parse
//! sentence1_parse sentence2_parse sentence1 sentence2 promptID pairID genre
//! label1 label2 label3 label4 label5 sentence1_tokenized sentence2_tokenized
//! match`. Only `language`, `gold_label`, `sentence1` and `sentence2` are
//! used (found by name); every row must have as many fields as the header.
//!
//! Languages: ar bg de el en es fr hi ru sw th tr ur vi zh. Labels map as in
//! MNLI ([`crate::glue::NLI_LABELS`]: entailment 0, neutral 1,
//! contradiction 2), so a classifier fine-tuned on MultiNLI
//! ([`train_set`], GLUE's `MNLI/train.tsv`) is evaluated on every language
//! as is. The metric is accuracy.
//!
//! A malformed row (wrong field count, unknown language or label) is an
//! error naming the file and its 1-based line.
//!
//! # As an experiment's data
//! `data.dataset = "xnli"` ([`crate::config::XnliData`]) trains on
//! MultiNLI (`train = "mnli"`) or on one language's dev split
//! (`train = "de"`; the evaluation is then on `test`, since the dev files
//! of all languages are translations of the same pairs), and evaluates on
//! `eval_languages` (`"all"` or a list) of `eval_split`. [`XnliPlan`] is
//! that choice, checked; the evaluation set holds the languages one after
//! another, each an [`crate::EvalGroup`], so every language's accuracy is
//! reported (`accuracy.de`) and `accuracy` is their mean, as in the
//! paper's tables.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;
use espalier_core::{Error, Metric, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::glue::{self, column, for_each_tsv_line, GlueDataset, GlueTask, NLI_LABELS};
use crate::tokenize::{Label, Labels, TokenizedDataset, Tokenizer};
use crate::{Batch, Dataset};

/// Number of classes (as MNLI).
pub const NUM_LABELS: usize = 3;

/// The metric XNLI reports.
pub const METRIC: Metric = Metric::Accuracy;

/// An XNLI language.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Language {
    /// Arabic.
    Ar,
    /// Bulgarian.
    Bg,
    /// German.
    De,
    /// Greek.
    El,
    /// English.
    En,
    /// Spanish.
    Es,
    /// French.
    Fr,
    /// Hindi.
    Hi,
    /// Russian.
    Ru,
    /// Swahili.
    Sw,
    /// Thai.
    Th,
    /// Turkish.
    Tr,
    /// Urdu.
    Ur,
    /// Vietnamese.
    Vi,
    /// Chinese.
    Zh,
}

impl Language {
    /// The 15 languages, in the order of the XNLI paper's tables.
    pub const ALL: [Language; 15] = [
        Language::En,
        Language::Fr,
        Language::Es,
        Language::De,
        Language::El,
        Language::Bg,
        Language::Ru,
        Language::Tr,
        Language::Ar,
        Language::Vi,
        Language::Th,
        Language::Zh,
        Language::Hi,
        Language::Sw,
        Language::Ur,
    ];

    /// The ISO 639-1 code used in the files (`en`, `fr`, …).
    pub fn code(self) -> &'static str {
        match self {
            Language::Ar => "ar",
            Language::Bg => "bg",
            Language::De => "de",
            Language::El => "el",
            Language::En => "en",
            Language::Es => "es",
            Language::Fr => "fr",
            Language::Hi => "hi",
            Language::Ru => "ru",
            Language::Sw => "sw",
            Language::Th => "th",
            Language::Tr => "tr",
            Language::Ur => "ur",
            Language::Vi => "vi",
            Language::Zh => "zh",
        }
    }

    /// The English name.
    pub fn name(self) -> &'static str {
        match self {
            Language::Ar => "Arabic",
            Language::Bg => "Bulgarian",
            Language::De => "German",
            Language::El => "Greek",
            Language::En => "English",
            Language::Es => "Spanish",
            Language::Fr => "French",
            Language::Hi => "Hindi",
            Language::Ru => "Russian",
            Language::Sw => "Swahili",
            Language::Th => "Thai",
            Language::Tr => "Turkish",
            Language::Ur => "Urdu",
            Language::Vi => "Vietnamese",
            Language::Zh => "Chinese",
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

impl FromStr for Language {
    type Err = Error;
    /// A code (`en`, case-insensitive) or English name (`english`).
    fn from_str(s: &str) -> Result<Self> {
        let k = s.trim().to_ascii_lowercase();
        Language::ALL.into_iter().find(|l| l.code() == k || l.name().eq_ignore_ascii_case(&k)).ok_or_else(|| {
            let valid = Language::ALL.iter().map(|l| l.code()).collect::<Vec<_>>().join(" ");
            Error::msg(format!("unknown XNLI language `{s}`; valid codes: {valid}"))
        })
    }
}

/// An XNLI evaluation split.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum XnliSplit {
    /// `xnli.dev.tsv`.
    Dev,
    /// `xnli.test.tsv`.
    Test,
}

impl XnliSplit {
    /// The file name.
    pub fn file_name(self) -> &'static str {
        match self {
            XnliSplit::Dev => "xnli.dev.tsv",
            XnliSplit::Test => "xnli.test.tsv",
        }
    }

    /// The file under `root` (or under `root/XNLI-1.0`); an error naming
    /// both paths tried when neither exists.
    pub fn path(self, root: &Path) -> Result<PathBuf> {
        let direct = root.join(self.file_name());
        let nested = root.join("XNLI-1.0").join(self.file_name());
        for p in [&direct, &nested] {
            if p.is_file() {
                return Ok(p.clone());
            }
        }
        Err(Error::io(
            &direct,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no XNLI file: tried {} and {}", direct.display(), nested.display()),
            ),
        ))
    }
}

impl FromStr for XnliSplit {
    type Err = Error;
    /// `dev` (also `validation`, `val`) or `test`, case-insensitive.
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "dev" | "validation" | "val" => Ok(XnliSplit::Dev),
            "test" => Ok(XnliSplit::Test),
            _ => Err(Error::msg(format!("unknown XNLI split `{s}`; valid splits: dev, test"))),
        }
    }
}

impl fmt::Display for XnliSplit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XnliSplit::Dev => "dev",
            XnliSplit::Test => "test",
        })
    }
}

/// The directory the XNLI files are looked for in, under the data root,
/// when `data.path` is not given (the folder the `XNLI-1.0.zip` extracts to).
pub const DEFAULT_DIR: &str = "XNLI-1.0";

/// What an XNLI experiment trains on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrainSource {
    /// MultiNLI's training split (GLUE's `MNLI/train.tsv`): zero-shot
    /// cross-lingual transfer when the model is then evaluated on other
    /// languages.
    Mnli,
    /// One language's XNLI dev split (2,490 pairs).
    Dev(Language),
}

impl FromStr for TrainSource {
    type Err = String;
    /// `mnli` or a language code (or English name), case-insensitive.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("mnli") {
            return Ok(TrainSource::Mnli);
        }
        s.parse::<Language>().map(TrainSource::Dev).map_err(|_| {
            format!("expected `mnli` (MultiNLI's training split) or an XNLI language code ({}), found `{s}`", codes())
        })
    }
}

/// The 15 codes, space-separated, in [`Language::ALL`] order.
fn codes() -> String {
    Language::ALL.iter().map(|l| l.code()).collect::<Vec<_>>().join(" ")
}

/// The languages to evaluate, as a config gives them: `"all"` or a list of
/// codes (checked by [`XnliPlan::new`], which names the key).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum LanguageList {
    /// The 15 languages, in [`Language::ALL`] order.
    #[default]
    All,
    /// These, in this order.
    Only(Vec<String>),
}

impl Serialize for LanguageList {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            LanguageList::All => s.serialize_str("all"),
            LanguageList::Only(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for LanguageList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = LanguageList;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"all\" or a list of XNLI language codes for `data.eval_languages`")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<LanguageList, E> {
                Ok(if s.trim().eq_ignore_ascii_case("all") {
                    LanguageList::All
                } else {
                    LanguageList::Only(vec![s.to_string()])
                })
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<LanguageList, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(s);
                }
                Ok(LanguageList::Only(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// An XNLI experiment's data, checked: what to train on, which split and
/// languages to evaluate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XnliPlan {
    /// The training set.
    pub train: TrainSource,
    /// The evaluation split.
    pub split: XnliSplit,
    /// The evaluated languages, in report order, none twice.
    pub languages: Vec<Language>,
}

impl XnliPlan {
    /// Checks the config's values; errors name the key (`data.train`,
    /// `data.eval_split`, `data.eval_languages`) and what it takes.
    pub fn new(train: &str, eval_split: &str, languages: &LanguageList) -> std::result::Result<Self, String> {
        let train: TrainSource = train.parse().map_err(|e| format!("key `data.train`: {e}"))?;
        let split: XnliSplit = eval_split.parse().map_err(|e| format!("key `data.eval_split`: {e}"))?;
        let languages = match languages {
            LanguageList::All => Language::ALL.to_vec(),
            LanguageList::Only(v) if v.is_empty() => {
                return Err(format!(
                    "key `data.eval_languages` is empty: give \"all\" or a list of XNLI language codes ({})",
                    codes()
                ))
            }
            LanguageList::Only(v) => {
                let mut out = Vec::with_capacity(v.len());
                for s in v {
                    let l: Language = s.parse().map_err(|_| {
                        format!(
                            "key `data.eval_languages`: unknown XNLI language `{s}`; expected \"all\" or a list of \
                             the codes {}",
                            codes()
                        )
                    })?;
                    if out.contains(&l) {
                        return Err(format!("key `data.eval_languages` names `{l}` twice"));
                    }
                    out.push(l);
                }
                out
            }
        };
        if let (TrainSource::Dev(l), XnliSplit::Dev) = (train, split) {
            return Err(format!(
                "key `data.eval_split` must be `test` when training on XNLI `{l}` (`data.train`): the model \
                 trains on the dev split, whose pairs are the same in every language"
            ));
        }
        Ok(XnliPlan { train, split, languages })
    }
}

/// One XNLI example.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct XnliExample {
    /// Its language.
    pub language: Language,
    /// Premise.
    pub premise: String,
    /// Hypothesis.
    pub hypothesis: String,
    /// Class id (MNLI's).
    pub label: u32,
    /// 1-based line in the source file.
    pub line: usize,
}

/// Reads an XNLI file, keeping the rows whose language is in `languages`
/// (all rows when `None`).
pub fn read_file(path: &Path, languages: Option<&[Language]>) -> Result<Vec<XnliExample>> {
    let mut out = Vec::new();
    let mut cols: Option<[usize; 5]> = None;
    for_each_tsv_line(path, |line, fields| {
        let Some([n, lang, gold, s1, s2]) = cols else {
            cols = Some([
                fields.len(),
                column(path, fields, "language")?,
                column(path, fields, "gold_label")?,
                column(path, fields, "sentence1")?,
                column(path, fields, "sentence2")?,
            ]);
            return Ok(());
        };
        if fields.len() != n {
            return Err(Error::format(
                path,
                format!("line {line}: expected {n} tab-separated fields, found {}", fields.len()),
            ));
        }
        let language: Language = fields[lang].parse().map_err(|e| Error::format(path, format!("line {line}: {e}")))?;
        if languages.is_some_and(|ls| !ls.contains(&language)) {
            return Ok(());
        }
        let label = glue::nli_label(fields[gold].trim()).ok_or_else(|| {
            Error::format(
                path,
                format!("line {line}: unknown label `{}` (expected one of: {})", fields[gold], NLI_LABELS.join(", ")),
            )
        })?;
        out.push(XnliExample {
            language,
            premise: fields[s1].to_string(),
            hypothesis: fields[s2].to_string(),
            label,
            line,
        });
        Ok(())
    })?;
    if cols.is_none() {
        return Err(Error::format(path, "the file is empty"));
    }
    Ok(out)
}

/// Reads `split` under the XNLI `root`, filtered by language.
pub fn read_split(root: &Path, split: XnliSplit, languages: Option<&[Language]>) -> Result<Vec<XnliExample>> {
    read_file(&split.path(root)?, languages)
}

/// The zero-shot training set: MultiNLI's training split from the GLUE
/// `glue_root` (`MNLI/train.tsv`), with the same label ids as XNLI.
pub fn train_set(glue_root: &Path, tok: &Tokenizer, max_seq_len: usize) -> Result<GlueDataset> {
    GlueDataset::load(glue_root, GlueTask::Mnli, glue::Split::Train, tok, max_seq_len)
}

/// Tokenized XNLI examples of one language (or all): implements [`Dataset`].
#[derive(Clone, Debug)]
pub struct XnliDataset {
    split: XnliSplit,
    language: Option<Language>,
    data: TokenizedDataset,
}

impl XnliDataset {
    /// Reads and tokenizes `split`, keeping `language` (all when `None`).
    pub fn load(
        root: &Path,
        split: XnliSplit,
        language: Option<Language>,
        tok: &Tokenizer,
        max_seq_len: usize,
    ) -> Result<Self> {
        let langs = language.map(|l| [l]);
        let examples = read_split(root, split, langs.as_ref().map(|l| &l[..]))?;
        Self::from_examples(split, language, &examples, tok, max_seq_len)
    }

    /// One dataset per language present in the file, in [`Language::ALL`]
    /// order (the file is read once).
    pub fn load_per_language(root: &Path, split: XnliSplit, tok: &Tokenizer, max_seq_len: usize) -> Result<Vec<Self>> {
        let examples = read_split(root, split, None)?;
        Language::ALL
            .into_iter()
            .filter_map(|lang| {
                let ex: Vec<XnliExample> = examples.iter().filter(|e| e.language == lang).cloned().collect();
                (!ex.is_empty()).then(|| Self::from_examples(split, Some(lang), &ex, tok, max_seq_len))
            })
            .collect()
    }

    /// Tokenizes already-read examples.
    pub fn from_examples(
        split: XnliSplit,
        language: Option<Language>,
        examples: &[XnliExample],
        tok: &Tokenizer,
        max_seq_len: usize,
    ) -> Result<Self> {
        let texts: Vec<(&str, Option<&str>)> =
            examples.iter().map(|e| (e.premise.as_str(), Some(e.hypothesis.as_str()))).collect();
        let labels: Vec<Option<Label>> = examples.iter().map(|e| Some(Label::Class(e.label))).collect();
        let data = TokenizedDataset::from_texts(tok, &texts, &labels, false, max_seq_len)?;
        Ok(XnliDataset { split, language, data })
    }

    /// The split.
    pub fn split(&self) -> XnliSplit {
        self.split
    }
    /// The language kept, `None` for all.
    pub fn language(&self) -> Option<Language> {
        self.language
    }
    /// The tokenized examples and labels.
    pub fn data(&self) -> &TokenizedDataset {
        &self.data
    }
    /// The labels (XNLI is always labelled).
    pub fn labels(&self) -> Option<&Labels> {
        self.data.labels()
    }
    /// Token count of every example.
    pub fn lengths(&self) -> Vec<usize> {
        self.data.lengths()
    }
}

impl Dataset for XnliDataset {
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

    const HEADER: &str = "language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tpromptID\tpairID\tgenre\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5\tsentence1_tokenized\tsentence2_tokenized\tmatch";

    fn row(lang: &str, gold: &str, s1: &str, s2: &str) -> String {
        format!("{lang}\t{gold}\t\t\t\t\t{s1}\t{s2}\t1\t1\tfacetoface\t{gold}\t{gold}\t{gold}\t{gold}\t{gold}\t{s1}\t{s2}\tTrue")
    }

    fn fixture() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("XNLI-1.0");
        std::fs::create_dir_all(&dir).unwrap();
        let dev = [
            HEADER.to_string(),
            row("en", "neutral", "The red kite circled above the barn.", "The kite was hunting mice."),
            row("fr", "contradiction", "Le chat dort sur le canapé.", "Le chat court dans le jardin."),
            row("de", "entailment", "Der Zug kam pünktlich am Bahnhof an.", "Der Zug war \"nicht\" verspätet."),
            row("zh", "neutral", "我们明天去公园散步。", "明天会下雨。"),
            row("en", "entailment", "She closed every window before the storm.", "The windows were shut."),
        ];
        std::fs::write(dir.join("xnli.dev.tsv"), dev.join("\n") + "\n").unwrap();
        let test = [HEADER.to_string(), row("sw", "contradiction", "Habari.", "Hapana.")];
        std::fs::write(dir.join("xnli.test.tsv"), test.join("\r\n") + "\r\n").unwrap();
        d
    }

    #[test]
    fn reads_and_filters_by_language() {
        let d = fixture();
        let all = read_split(d.path(), XnliSplit::Dev, None).unwrap();
        assert_eq!(all.len(), 5);
        assert_eq!(all[2].hypothesis, "Der Zug war \"nicht\" verspätet.");
        assert_eq!(all[3].premise, "我们明天去公园散步。");
        // MNLI ids: entailment 0, neutral 1, contradiction 2.
        assert_eq!(all.iter().map(|e| e.label).collect::<Vec<_>>(), vec![1, 2, 0, 1, 0]);
        assert_eq!(
            all.iter().map(|e| glue::nli_label(NLI_LABELS[e.label as usize]).unwrap()).collect::<Vec<_>>(),
            vec![1, 2, 0, 1, 0]
        );
        let en = read_split(d.path(), XnliSplit::Dev, Some(&[Language::En])).unwrap();
        assert_eq!(en.iter().map(|e| e.line).collect::<Vec<_>>(), vec![2, 6]);
        let two = read_split(d.path().join("XNLI-1.0").as_path(), XnliSplit::Dev, Some(&[Language::Fr, Language::Zh]))
            .unwrap();
        assert_eq!(two.len(), 2);
        let test = read_split(d.path(), XnliSplit::Test, None).unwrap();
        assert_eq!((test.len(), test[0].language, test[0].hypothesis.as_str()), (1, Language::Sw, "Hapana."));
    }

    #[test]
    fn labels_agree_with_mnli() {
        assert_eq!(NUM_LABELS, GlueTask::Mnli.num_labels());
        for (i, name) in NLI_LABELS.iter().enumerate() {
            assert_eq!(GlueTask::Mnli.parse_label(name), Some(Label::Class(i as u32)));
        }
        assert_eq!(METRIC, GlueTask::Mnli.primary_metric());
    }

    #[test]
    fn languages_parse() {
        assert_eq!(Language::ALL.len(), 15);
        for l in Language::ALL {
            assert_eq!(l.code().parse::<Language>().unwrap(), l);
            assert_eq!(l.name().parse::<Language>().unwrap(), l);
        }
        assert_eq!("EN".parse::<Language>().unwrap(), Language::En);
        let e = "xx".parse::<Language>().unwrap_err().to_string();
        assert!(e.contains("xx") && e.contains("ur"), "{e}");
    }

    #[test]
    fn malformed_rows_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("xnli.dev.tsv");
        for (rows, line) in [
            (vec![row("en", "neutral", "a", "b"), row("en", "maybe", "a", "b")], "line 3:"),
            (vec![row("xx", "neutral", "a", "b")], "line 2:"),
            (vec![row("en", "neutral", "a", "b"), "en\tneutral\ta".to_string()], "line 3:"),
        ] {
            std::fs::write(&p, [HEADER.to_string()].into_iter().chain(rows).collect::<Vec<_>>().join("\n")).unwrap();
            let e = read_split(d.path(), XnliSplit::Dev, None).unwrap_err().to_string();
            assert!(e.contains(&p.display().to_string()) && e.contains(line), "{e}");
        }
        std::fs::write(&p, "language\tlabel\tsentence1\tsentence2\n").unwrap();
        let e = read_split(d.path(), XnliSplit::Dev, None).unwrap_err().to_string();
        assert!(e.contains("gold_label"), "{e}");
        let e = read_split(d.path(), XnliSplit::Test, None).unwrap_err().to_string();
        assert!(e.contains("xnli.test.tsv"), "{e}");
    }

    fn tiny_tokenizer(dir: &Path) -> Tokenizer {
        let vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "red", "kite", "barn", "."];
        let p = dir.join("vocab.txt");
        std::fs::write(&p, vocab.join("\n")).unwrap();
        Tokenizer::from_vocab(&p, true).unwrap()
    }

    #[test]
    fn datasets_per_language_and_mnli_training_set() {
        let d = fixture();
        let tok = tiny_tokenizer(d.path());
        let en = XnliDataset::load(d.path(), XnliSplit::Dev, Some(Language::En), &tok, 32).unwrap();
        assert_eq!((en.len(), en.language()), (2, Some(Language::En)));
        let b = en.batch(&[0, 1], &Device::Cpu).unwrap();
        assert_eq!(b.labels.to_vec1::<u32>().unwrap(), vec![1, 0]);
        let per = XnliDataset::load_per_language(d.path(), XnliSplit::Dev, &tok, 32).unwrap();
        let langs: Vec<_> = per.iter().map(|p| p.language().unwrap()).collect();
        assert_eq!(langs, vec![Language::En, Language::Fr, Language::De, Language::Zh]);
        assert_eq!(per.iter().map(|p| p.len()).sum::<usize>(), 5);

        // MultiNLI from the GLUE layout is the training set.
        let glue = d.path().join("glue");
        std::fs::create_dir_all(glue.join("MNLI")).unwrap();
        let head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label";
        std::fs::write(
            glue.join("MNLI/train.tsv"),
            format!(
                "{head}\n0\t1\t1n\tfiction\t(a)\t(b)\t(a)\t(b)\tThe red kite.\tA barn.\tcontradiction\tcontradiction\n"
            ),
        )
        .unwrap();
        let train = train_set(&glue, &tok, 32).unwrap();
        assert_eq!(train.len(), 1);
        assert_eq!(train.labels(), Some(&Labels::Class(vec![2])));
    }

    #[test]
    fn plans_name_the_key_and_what_it_takes() {
        let only = |v: &[&str]| LanguageList::Only(v.iter().map(|s| s.to_string()).collect());
        let p = XnliPlan::new("mnli", "test", &LanguageList::All).unwrap();
        assert_eq!((p.train, p.split, p.languages), (TrainSource::Mnli, XnliSplit::Test, Language::ALL.to_vec()));
        let p = XnliPlan::new("DE", "test", &only(&["sw", "En"])).unwrap();
        assert_eq!((p.train, p.languages), (TrainSource::Dev(Language::De), vec![Language::Sw, Language::En]));
        for (train, split, langs, needles) in [
            ("mnly", "test", LanguageList::All, &["data.train", "mnly", "mnli", "ur"][..]),
            ("mnli", "train", LanguageList::All, &["data.eval_split", "dev, test"][..]),
            ("mnli", "test", only(&["en", "xx"]), &["data.eval_languages", "`xx`", "\"all\"", "vi"][..]),
            ("mnli", "test", only(&["all"]), &["data.eval_languages", "`all`"][..]),
            ("mnli", "test", only(&[]), &["data.eval_languages", "empty"][..]),
            ("mnli", "test", only(&["de", "german"]), &["data.eval_languages", "`de` twice"][..]),
            ("de", "dev", LanguageList::All, &["data.eval_split", "`test`", "data.train"][..]),
        ] {
            let e = XnliPlan::new(train, split, &langs).unwrap_err();
            assert!(needles.iter().all(|n| e.contains(n)), "{e}");
        }
    }

    #[test]
    fn language_lists_read_and_write_as_a_string_or_a_list() {
        let read = |j: &str| serde_json::from_str::<LanguageList>(j);
        assert_eq!(read("\"all\"").unwrap(), LanguageList::All);
        assert_eq!(read("\"ALL\"").unwrap(), LanguageList::All);
        assert_eq!(read("\"de\"").unwrap(), LanguageList::Only(vec!["de".into()]));
        assert_eq!(read("[\"en\", \"fr\"]").unwrap(), LanguageList::Only(vec!["en".into(), "fr".into()]));
        let e = read("3").unwrap_err().to_string();
        assert!(e.contains("data.eval_languages") && e.contains("\"all\""), "{e}");
        let e = read("[\"en\", 3]").unwrap_err().to_string();
        assert!(e.contains("string"), "{e}");
        for l in [LanguageList::All, LanguageList::Only(vec!["ur".into(), "th".into()])] {
            assert_eq!(read(&serde_json::to_string(&l).unwrap()).unwrap(), l);
        }
    }

    /// `data.dataset = "xnli"`: the evaluated languages one after another,
    /// one group each (limited per language), trained on MultiNLI or on a
    /// language's dev split; a language the file lacks names the key.
    #[test]
    fn experiment_data_groups_the_languages() {
        use crate::config::{DataConfig, XnliData};
        let d = fixture();
        let glue = d.path().join("glue/MNLI");
        std::fs::create_dir_all(&glue).unwrap();
        let head = "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\tsentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label";
        let row = "0\t1\t1n\tfiction\t(a)\t(b)\t(a)\t(b)\tThe red kite.\tA barn.\tneutral\tneutral";
        std::fs::write(glue.join("train.tsv"), format!("{head}\n{row}\n{row}\n")).unwrap();
        tiny_tokenizer(d.path());
        let only = |v: &[&str]| LanguageList::Only(v.iter().map(|s| s.to_string()).collect());
        let cfg = |train: &str, split: &str, langs: LanguageList, limit_eval| {
            DataConfig::Xnli(XnliData {
                path: None,
                train: train.into(),
                glue_path: None,
                eval_split: split.into(),
                eval_languages: langs,
                tokenizer: Some(d.path().to_path_buf()),
                max_seq_len: 32,
                limit_train: None,
                limit_eval,
            })
        };
        let root = crate::DataRoot(d.path().to_path_buf());
        let data = cfg("mnli", "dev", only(&["de", "en"]), None).load(&root, None).unwrap();
        assert_eq!((data.train.len(), data.test.len(), data.metrics.clone()), (2, 3, vec![METRIC]));
        let groups: Vec<_> = data.groups.iter().map(|g| (g.name.as_str(), g.range.clone())).collect();
        assert_eq!(groups, vec![("de", 0..1), ("en", 1..3)]);
        // German first, then the two English pairs in file order.
        let b = data.test.batch(&[0, 1, 2], &Device::Cpu).unwrap();
        assert_eq!(b.labels.to_vec1::<u32>().unwrap(), vec![0, 1, 0]);
        assert_eq!(data.source, d.path().join("XNLI-1.0"));
        let data = cfg("mnli", "dev", only(&["en", "zh"]), Some(1)).load(&root, None).unwrap();
        let groups: Vec<_> = data.groups.iter().map(|g| (g.name.as_str(), g.range.clone())).collect();
        assert_eq!(groups, vec![("en", 0..1), ("zh", 1..2)]);
        let data = cfg("fr", "test", only(&["sw"]), None).load(&root, None).unwrap();
        assert_eq!((data.train.len(), data.test.len()), (1, 1));
        assert_eq!(cfg("fr", "test", only(&["sw"]), None).name(), "xnli-train-fr");
        assert_eq!(cfg("mnli", "test", LanguageList::All, None).name(), "xnli");
        // `all` on a file that lacks languages, and a missing file.
        let e = cfg("mnli", "test", LanguageList::All, None).load(&root, None).err().unwrap().to_string();
        assert!(e.contains("data.eval_languages") && e.contains("xnli.test.tsv") && e.contains("`en`"), "{e}");
        let e = cfg("mnli", "dev", LanguageList::All, None)
            .load(&crate::DataRoot(d.path().join("nowhere")), None)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("MNLI") && e.contains("data.train") && e.contains("ESPALIER_DATA"), "{e}");
    }
}
