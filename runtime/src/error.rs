//! The one error type of the runtime. Every message names what it is about: the file, the
//! node (name and op), the tensor or input, and the offending dim or value.

use std::path::PathBuf;

/// Result alias used across the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong while loading, planning or running a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file that failed.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The bytes are not an ONNX model (garbage, truncated, wrong format).
    #[error("{origin}: not a valid ONNX model: {reason}")]
    Decode {
        /// The file name, or `<bytes>` for in-memory models.
        origin: String,
        /// Why decoding failed.
        reason: String,
    },
    /// The model decodes but breaks a rule of the format (bad dims, duplicate names, cycles).
    #[error("invalid model: {0}")]
    InvalidModel(String),
    /// A tensor's external data is unsafe or out of bounds.
    #[error("tensor '{tensor}': external data {reason}")]
    ExternalData {
        /// The initializer whose data lives outside the model file.
        tensor: String,
        /// What is wrong with its location, offset or length.
        reason: String,
    },
    /// An operator (or an operator variant) the runtime does not implement.
    #[error("node '{node}': unsupported operator {op}{detail}")]
    Unsupported {
        /// Node name.
        node: String,
        /// `domain::OpType` or `OpType`.
        op: String,
        /// Extra detail (attribute value, mode), starting with ": " when present.
        detail: String,
    },
    /// A caller-supplied input is missing, unknown or of the wrong dtype/shape.
    #[error("input '{name}': {reason}")]
    Input {
        /// The model input's name.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A failure inside one node, with the node's identity attached.
    #[error("node '{node}' ({op}): {source}")]
    Node {
        /// Node name.
        node: String,
        /// Op type.
        op: String,
        /// The underlying error.
        source: Box<Error>,
    },
    /// Shapes, dtypes or attribute values that an op cannot accept.
    #[error("{0}")]
    Op(String),
    /// A valid attribute value or variant of an op that the runtime does not implement
    /// (turned into [`Error::Unsupported`] with the node's identity at import).
    #[error("unsupported: {0}")]
    UnsupportedFeature(String),
    /// An energy meter is absent, unreadable or gave values it cannot use.
    #[error("energy meter {method}: {reason}")]
    Energy {
        /// `rapl`, `power-supply`, `odpm` or `model`.
        method: &'static str,
        /// What is wrong, naming the file.
        reason: String,
    },
    /// Benchmark options that cannot be run (no timed iterations).
    #[error("benchmark: {0}")]
    Benchmark(String),
    /// A language model's text side: its tokenizer or chat template files are missing or
    /// malformed, or a prompt or token cannot be encoded or decoded.
    #[error("{0}")]
    Text(String),
}

impl Error {
    /// Wraps `self` with the identity of the node it happened in.
    pub fn in_node(self, node: &str, op: &str) -> Error {
        match self {
            already @ Error::Node { .. } => already,
            other => Error::Node { node: node.to_string(), op: op.to_string(), source: Box::new(other) },
        }
    }
}

/// Returns early with an [`Error::Op`] built from a format string.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::Error::Op(format!($($arg)*))) };
}

/// Returns early with an [`Error::Op`] unless the condition holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        match $cond {
            true => {}
            false => $crate::error::bail!($($arg)*),
        }
    };
}

pub(crate) use {bail, ensure};
