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

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::Device;
use espalier_core::{Error, Metric, Result};

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
}
