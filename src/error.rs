//! One error type for the library. Variants carry the context a user needs to act on them
//! (the op and the shapes, the file, the config field); the CLI turns them into one line.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Shapes that an op cannot take. `msg` names the shapes.
    #[error("{op}: {msg}")]
    Shape { op: &'static str, msg: String },

    /// Inputs of one op live on different devices.
    #[error("{op}: inputs live on different devices ({a} and {b}); move them to one device first")]
    DeviceMismatch {
        op: &'static str,
        a: String,
        b: String,
    },

    /// No GPU adapter (or none matching the request).
    #[error("{0}")]
    NoAdapter(String),

    /// Anything the GPU runtime reports (device lost, out of memory, validation).
    #[error("GPU: {0}")]
    Gpu(String),

    /// A file that cannot be read, parsed or written.
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },

    /// A configuration value that is missing, unknown or out of range.
    #[error("config field `{field}`: {msg}")]
    Config { field: String, msg: String },

    /// Training diverged (NaN / inf loss); says which step and where the last good
    /// checkpoint is.
    #[error("{0}")]
    NotFinite(String),

    /// Stopped on request (Ctrl-C) after saving a checkpoint.
    #[error("{0}")]
    Interrupted(String),

    /// Misuse of the autograd tape (backward from a non-scalar, a value without gradient...).
    #[error("autograd: {0}")]
    Autograd(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn shape(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Shape {
            op,
            msg: msg.into(),
        }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl std::fmt::Display) -> Self {
        Error::File {
            path: path.into(),
            msg: msg.to_string(),
        }
    }
}
