//! The error type of the library crates (`thiserror`); the binary wraps it
//! in `anyhow` with more context.

use std::path::PathBuf;

/// Errors raised by Espalier's library crates.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),

    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A file exists but its content is not what was expected.
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },

    /// A tensor has the wrong shape for the parameter it should fill.
    #[error("parameter `{name}`: expected shape {expected:?}, found {found:?}{}", context.as_deref().map(|c| format!(" ({c})")).unwrap_or_default())]
    Shape { name: String, expected: Vec<usize>, found: Vec<usize>, context: Option<String> },

    /// A parameter, mask or tensor name that does not exist.
    #[error("unknown parameter `{name}`{}", hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    UnknownParam { name: String, hint: Option<String> },

    /// Invalid arguments or state, described in words.
    #[error("{0}")]
    Msg(String),

    /// Training produced a non-finite loss: the run stops at that step.
    #[error(
        "training diverged at epoch {epoch}, step {step}: the loss is {loss}{}; the checkpoint of the last \
         completed epoch is kept (lower the learning rate, clip gradients with train.clip_grad_norm, or allow a \
         few bad steps with train.skip_nonfinite_steps, then run the same command again: it resumes from that \
         checkpoint)",
        last_finite.map(|l| format!(" (last finite loss {l:.4})")).unwrap_or_default()
    )]
    Diverged {
        /// Run-wide epoch.
        epoch: usize,
        /// Step within the epoch.
        step: usize,
        /// The loss (NaN or ±∞).
        loss: f64,
        /// The last finite training loss seen.
        last_finite: Option<f64>,
    },

    /// Training stopped on request (a signal) after a completed step; the
    /// run's checkpoint holds that point.
    #[error(
        "interrupted at epoch {epoch} after step {step}: the checkpoint holds this point; run the same command \
         again to resume"
    )]
    Interrupted {
        /// Run-wide epoch.
        epoch: usize,
        /// Steps of it done.
        step: usize,
    },
}

impl Error {
    /// Wraps an I/O error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    /// A format error for `path`.
    pub fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format { path: path.into(), msg: msg.into() }
    }

    /// A plain message.
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
}

/// Result alias of the library crates.
pub type Result<T> = std::result::Result<T, Error>;

/// `bail!`-like early return with a formatted [`Error::Msg`].
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::Error::Msg(format!($($arg)*)))
    };
}
