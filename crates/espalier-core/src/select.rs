//! Parameter selectors: which parameters a pruner (or weight decay) acts on.
//!
//! A [`Selector`] starts from a default set — by default every
//! [`ParamKind::Weight`] outside the task head, so biases, norms, embeddings
//! and the output layer are not pruned — then adds the parameters matched by
//! `include` patterns and removes those matched by `exclude` patterns.
//! Patterns match dotted names: an exact name, a glob where `*` matches any
//! run of characters (dots included), or `re:<regex>` anchored on both ends.

use serde::{Deserialize, Serialize};

use crate::{Error, Param, ParamKind, Result};

/// One name pattern.
#[derive(Clone, Debug)]
pub enum Pattern {
    /// Glob with `*` wildcards (an exact name has none).
    Glob(String),
    /// Regular expression (given as `re:...`), matched against the whole name.
    Regex(regex::Regex),
}

impl Pattern {
    /// Parses `re:...` as a regex, anything else as a glob.
    pub fn parse(s: &str) -> Result<Self> {
        match s.strip_prefix("re:") {
            Some(re) => regex::Regex::new(&format!("^(?:{re})$"))
                .map(Pattern::Regex)
                .map_err(|e| Error::msg(format!("invalid regex `{re}`: {e}"))),
            None => Ok(Pattern::Glob(s.to_string())),
        }
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Pattern::Regex(r) => r.is_match(name),
            Pattern::Glob(g) => glob_match(g.as_bytes(), name.as_bytes()),
        }
    }
}

fn glob_match(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard matching with backtracking on the last `*`.
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && p[pi] != b'*' && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// The serialisable form of a selector, as written in experiment configs.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SelectorSpec {
    /// Patterns added to the default set.
    #[serde(default)]
    pub include: Vec<String>,
    /// Patterns removed from the selection (wins over `include`).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Whether to start from the default set (weights outside the head).
    #[serde(default = "yes")]
    pub defaults: bool,
}

fn yes() -> bool {
    true
}

impl Default for SelectorSpec {
    fn default() -> Self {
        SelectorSpec { include: Vec::new(), exclude: Vec::new(), defaults: true }
    }
}

/// A compiled selection rule.
#[derive(Clone, Debug)]
pub struct Selector {
    defaults: bool,
    include: Vec<Pattern>,
    exclude: Vec<Pattern>,
}

impl Default for Selector {
    fn default() -> Self {
        Selector { defaults: true, include: Vec::new(), exclude: Vec::new() }
    }
}

impl Selector {
    /// Compiles a spec.
    pub fn new(spec: &SelectorSpec) -> Result<Self> {
        Ok(Selector {
            defaults: spec.defaults,
            include: spec.include.iter().map(|s| Pattern::parse(s)).collect::<Result<_>>()?,
            exclude: spec.exclude.iter().map(|s| Pattern::parse(s)).collect::<Result<_>>()?,
        })
    }

    /// Whether the parameter is selected.
    pub fn matches(&self, p: &Param) -> bool {
        let default = self.defaults && p.kind() == ParamKind::Weight && !p.is_head();
        let included = default || self.include.iter().any(|pat| pat.matches(p.name()));
        included && p.trainable() && !self.exclude.iter().any(|pat| pat.matches(p.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match(b"fc*.weight", b"fc1.weight"));
        assert!(glob_match(b"*", b"a.b.c"));
        assert!(glob_match(b"encoder.*.query.weight", b"encoder.layer.3.attention.self.query.weight"));
        assert!(!glob_match(b"fc*.weight", b"fc1.bias"));
        assert!(glob_match(b"fc1.weight", b"fc1.weight"));
        assert!(!glob_match(b"fc1.weight", b"fc1.weights"));
    }

    #[test]
    fn regex_is_anchored() {
        let p = Pattern::parse("re:fc[0-9]\\.weight").unwrap();
        assert!(p.matches("fc2.weight"));
        assert!(!p.matches("xfc2.weight"));
        assert!(Pattern::parse("re:(").is_err());
    }
}
