//! The experiment crate's errors: config and input problems found before
//! any work starts (the binary exits with code 2 on these) and failures
//! while running, each with what was being done.

use crate::config::ConfigError;

/// An experiment error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad config or input, found before the run directory is touched.
    /// Transparent: the message is not repeated as its own source (the
    /// binary prints the whole chain).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A library error.
    #[error(transparent)]
    Lib(#[from] espalier_core::Error),
    /// An error with what was being done.
    #[error("{context}: {source}")]
    Context {
        /// What was being done.
        context: String,
        /// The error.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// Whether the error is a config or input problem (exit code 2).
    pub fn is_config(&self) -> bool {
        match self {
            Error::Config(_) => true,
            Error::Lib(_) => false,
            Error::Context { source, .. } => source.is_config(),
        }
    }

    /// The library error at the bottom of the context chain, if any.
    pub fn core(&self) -> Option<&espalier_core::Error> {
        match self {
            Error::Config(_) => None,
            Error::Lib(e) => Some(e),
            Error::Context { source, .. } => source.core(),
        }
    }

    /// A plain message.
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Lib(espalier_core::Error::msg(msg))
    }
}

impl From<candle_core::Error> for Error {
    fn from(e: candle_core::Error) -> Self {
        Error::Lib(e.into())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::msg(e.to_string())
    }
}

/// The crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// `.context(...)` for results whose error converts into [`Error`].
pub trait Context<T> {
    /// Wraps the error with what was being done.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// Wraps the error with what was being done (computed lazily).
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|e| Error::Context { context: what.into(), source: Box::new(e.into()) })
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Context { context: what().into(), source: Box::new(e.into()) })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.ok_or_else(|| Error::msg(what))
    }
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.ok_or_else(|| Error::msg(what()))
    }
}
