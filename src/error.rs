//! The crate's error type: every user-facing failure has a variant that names the offending value.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Everything that can go wrong when building networks, reading files or posing a query.
///
/// Verifiers never report a solver failure as an error disguised as a number: a solver that stops
/// early yields a weaker bound (see DESIGN.md, soundness rule 5). Errors are for input that cannot
/// be given a meaning.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two consecutive layers do not chain, or a weight/bias has the wrong length.
    #[error("layer {layer}: shape mismatch: {detail}")]
    Shape {
        /// Index of the offending layer (0-based, in file order).
        layer: usize,
        /// What did not match, with the sizes involved.
        detail: String,
    },
    /// A weight, bias or normalization value is NaN or infinite.
    #[error("layer {layer}: non-finite value {value} in {what} at index {index}")]
    NonFinite {
        /// Index of the offending layer (0-based, in file order).
        layer: usize,
        /// "weight", "bias", "normalization mean", ...
        what: &'static str,
        /// Flat index of the value inside that array.
        index: usize,
        /// The value itself.
        value: f64,
    },
    /// A network without layers, or a layer with zero inputs or outputs.
    #[error("empty network or layer: {0}")]
    Empty(String),
    /// The input vector does not have the length the network expects.
    #[error("input has length {got}, the network expects {expected}")]
    InputSize {
        /// Network input size.
        expected: usize,
        /// Length that was passed.
        got: usize,
    },
    /// An input value (image pixel, ball center) is NaN or infinite.
    #[error("input value {value} at index {index} is not finite")]
    NonFiniteInput {
        /// Index in the input vector.
        index: usize,
        /// The value.
        value: f64,
    },
    /// The perturbation radius is negative or not finite.
    #[error("invalid radius {0}: the radius must be finite and >= 0")]
    InvalidRadius(f64),
    /// A domain box with lo > hi or a non-finite bound.
    #[error("invalid domain at index {index}: [{lo}, {hi}]")]
    InvalidDomain {
        /// Coordinate index.
        index: usize,
        /// Lower bound.
        lo: f64,
        /// Upper bound.
        hi: f64,
    },
    /// The center of the ball lies outside the domain box.
    #[error("center coordinate {index} = {value} lies outside the domain [{lo}, {hi}]")]
    CenterOutsideDomain {
        /// Coordinate index.
        index: usize,
        /// Center value.
        value: f64,
        /// Domain lower bound.
        lo: f64,
        /// Domain upper bound.
        hi: f64,
    },
    /// A class label that the network cannot output.
    #[error("label {label} out of range: the network has {classes} classes")]
    LabelOutOfRange {
        /// The label.
        label: usize,
        /// Number of network outputs.
        classes: usize,
    },
    /// An operating-system I/O error on a named file.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A model file that does not follow the JSON model format (docs/formats.md).
    #[error("malformed model file{}: {detail}", path_suffix(path))]
    ModelFormat {
        /// The file, when known.
        path: Option<PathBuf>,
        /// What is wrong, with line and column for JSON syntax errors.
        detail: String,
    },
    /// An IDX file with a wrong magic number, a truncated body or an unsupported element type.
    #[error("malformed IDX file{}: {detail}", path_suffix(path))]
    Idx {
        /// The file, when known.
        path: Option<PathBuf>,
        /// What is wrong.
        detail: String,
    },
    /// An ONNX node the importer cannot translate (an unsupported operator or attribute, or a graph
    /// that is not a chain).
    #[error("ONNX node {index} ('{name}', {op_type}): {detail}")]
    OnnxNode {
        /// Position of the node in the graph.
        index: usize,
        /// The node's name (may be empty).
        name: String,
        /// The node's operator.
        op_type: String,
        /// What is not supported.
        detail: String,
    },
    /// A request the library understands but does not support (e.g. an activation a method cannot bound).
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A problem too large for a method that is exponential in its size (the exact verifier).
    #[error("{unstable} unstable neurons exceed the limit of {limit} for exact verification")]
    TooManyUnstable {
        /// Unstable neurons after bound propagation.
        unstable: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A certificate that does not re-check ([`crate::certificate::check`]): the reason.
    #[error("certificate rejected: {0}")]
    Rejected(String),
    /// A certificate file that is not valid JSON of the certificate format (docs/formats.md).
    #[error("malformed certificate: {0}")]
    CertificateFormat(String),
    /// Any other invalid argument (inconsistent settings, empty target list, ...).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

fn path_suffix(path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!(" {}", p.display()),
        None => String::new(),
    }
}
