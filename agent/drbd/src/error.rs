//! Error types shared by the events2 and JSON parsers.
//!
//! Every [`ParseError`] names the offending input (the events2 line, or for
//! JSON the position/path) and says what is wrong. Malformed input is always a
//! typed error, never a panic. [`LineError`] adds the 1-based line number for
//! callers that read a stream line by line.

use thiserror::Error;

/// What is wrong with one line of `drbdsetup events2` output, or with a
/// `drbdsetup status --json` document.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ParseError {
    /// The line is empty or only whitespace.
    #[error("empty line")]
    EmptyLine,

    /// The first word (after an optional timestamp) is a `key:value` token,
    /// not an action such as `exists`/`change`. Typical for the continuation
    /// part of a line that was wrapped for display.
    #[error("missing action (found key:value token {token:?}) in line {line:?}")]
    MissingAction { line: String, token: String },

    /// There is an action but no object word (`resource`, `device`, `-`, ...).
    #[error("missing object after action in line {line:?}")]
    MissingObject { line: String },

    /// A field token without `:`.
    #[error("token {token:?} is not key:value in line {line:?}")]
    MissingColon { line: String, token: String },

    /// A field token starting with `:`.
    #[error("token {token:?} has an empty key in line {line:?}")]
    EmptyKey { line: String, token: String },

    /// A key that must be numeric has a non-numeric (or out of range) value.
    #[error("key {key:?} needs a number, got {value:?} in line {line:?}")]
    InvalidNumber {
        line: String,
        key: String,
        value: String,
    },

    /// A key needed to identify the object (`name`, `volume`, `peer-node-id`
    /// or `conn-name`, ...) is absent.
    #[error("missing key {key:?} in line {line:?}")]
    MissingKey { line: String, key: String },

    /// The text is not syntactically valid JSON (after the nan/inf pre-pass).
    #[error("invalid JSON at line {line}, column {column}: {message}")]
    Json {
        line: usize,
        column: usize,
        message: String,
    },

    /// Valid JSON, but not shaped like `drbdsetup status --json` output
    /// (e.g. `drbdsetup show --json` config output, or a wrong value type).
    #[error("unexpected JSON at {path}: {message}")]
    UnexpectedJson { path: String, message: String },
}

impl ParseError {
    /// Attach a 1-based line number.
    pub fn at_line(self, line_no: usize) -> LineError {
        LineError {
            line_no,
            source: self,
        }
    }
}

/// A [`ParseError`] with the 1-based line number where it happened.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("line {line_no}: {source}")]
pub struct LineError {
    pub line_no: usize,
    #[source]
    pub source: ParseError,
}
