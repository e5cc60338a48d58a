//! Line parser for `drbdsetup events2 [--timestamps] [--statistics]` output.
//!
//! Each line is `[TIMESTAMP] ACTION OBJECT key:value key:value ...`:
//!
//! ```text
//! 2017-03-27T08:28:17.072611-07:00 exists resource name:test0 role:Primary
//! change peer-device name:r0 peer-node-id:1 conn-name:b volume:0 replication:SyncSource done:37.50
//! exists -
//! ```
//!
//! * **Timestamp**: the first token is taken as a timestamp when it is not an
//!   action word and either starts with an ASCII digit
//!   (`2017-03-27T08:28:17.072611-07:00`) or is followed by a known action
//!   word (drbd-utils' own tests mask it as `TIME`). It is kept verbatim.
//! * **End of initial dump**: the bare `exists -` line has object `-`, which
//!   parses to [`Object::EndOfInitialDump`] (action stays [`Action::Exists`]).
//! * **Fields**: split at the *first* `:` (values such as
//!   `local:ipv4:1.2.3.4:7789` contain colons); values never contain spaces.
//!   Fields are kept raw, in order, in [`Event::fields`].
//! * **`--diff` format**: `events2 --diff` prints changed values as
//!   `old->new` (`role:Secondary->Primary`). [`Event::get`] and the state
//!   model use the part after the last `->`, except for the identity keys
//!   `name`, `conn-name`, `local` and `peer`, which are never diffs.
//! * **Validation**: numeric keys (`volume`, `minor`, `peer-node-id`,
//!   `promotion_score`, counters, `done`, `eta`, `dbdt1`) must hold numbers,
//!   otherwise [`ParseError::InvalidNumber`]. Unknown keys are accepted.
//!
//! Real drbdsetup prints one line per event. The DRBD User's Guide wraps long
//! lines for display; such an indented continuation fragment is not an event
//! and gives [`ParseError::MissingAction`].

use std::fmt;

use serde::{Deserialize, Serialize};

pub use crate::error::{LineError, ParseError};

/// The event verb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Part of the initial state dump.
    Exists,
    Create,
    /// Only the changed keys are printed (unless `--full`).
    Change,
    Destroy,
    /// `call helper`: DRBD started a user-mode helper.
    Call,
    /// `response helper`: the helper returned (`status:`).
    Response,
    Other(String),
}

impl Action {
    pub fn as_str(&self) -> &str {
        match self {
            Action::Exists => "exists",
            Action::Create => "create",
            Action::Change => "change",
            Action::Destroy => "destroy",
            Action::Call => "call",
            Action::Response => "response",
            Action::Other(s) => s,
        }
    }

    fn known(word: &str) -> Option<Action> {
        Some(match word {
            "exists" => Action::Exists,
            "create" => Action::Create,
            "change" => Action::Change,
            "destroy" => Action::Destroy,
            "call" => Action::Call,
            "response" => Action::Response,
            _ => return None,
        })
    }
}

/// The object an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Object {
    Resource,
    Device,
    Connection,
    PeerDevice,
    Path,
    Helper,
    /// The bare `exists -` line that ends the initial state dump.
    EndOfInitialDump,
    Other(String),
}

impl Object {
    pub fn as_str(&self) -> &str {
        match self {
            Object::Resource => "resource",
            Object::Device => "device",
            Object::Connection => "connection",
            Object::PeerDevice => "peer-device",
            Object::Path => "path",
            Object::Helper => "helper",
            Object::EndOfInitialDump => "-",
            Object::Other(s) => s,
        }
    }

    fn from_word(word: &str) -> Object {
        match word {
            "resource" => Object::Resource,
            "device" => Object::Device,
            "connection" => Object::Connection,
            "peer-device" => Object::PeerDevice,
            "path" => Object::Path,
            "helper" => Object::Helper,
            "-" => Object::EndOfInitialDump,
            other => Object::Other(other.to_string()),
        }
    }
}

/// One parsed events2 line.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The `--timestamps` column, verbatim.
    pub timestamp: Option<String>,
    pub action: Action,
    pub object: Object,
    /// Raw `key:value` pairs in line order (values may be `old->new` diffs).
    pub fields: Vec<(String, String)>,
}

impl Event {
    /// Raw value of `key` (first occurrence), including any `old->` prefix.
    pub fn get_raw(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Current value of `key`: for `--diff` values (`old->new`) the new part.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.get_raw(key).map(|v| current_value(key, v))
    }

    /// True for the `exists -` end-of-initial-dump marker.
    pub fn is_end_of_initial_dump(&self) -> bool {
        self.object == Object::EndOfInitialDump
    }
}

/// Re-renders the event as an events2 line (used to name the line in errors).
impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(ts) = &self.timestamp {
            write!(f, "{ts} ")?;
        }
        write!(f, "{} {}", self.action.as_str(), self.object.as_str())?;
        for (k, v) in &self.fields {
            write!(f, " {k}:{v}")?;
        }
        Ok(())
    }
}

/// Keys whose value is never an `old->new` diff.
const IDENTITY_KEYS: &[&str] = &["name", "conn-name", "local", "peer"];

/// Keys that must hold an unsigned integer fitting in `u32`.
const U32_KEYS: &[&str] = &["volume", "minor", "peer-node-id"];

/// Keys that must hold an unsigned 64-bit integer (KiB counters etc.).
const U64_KEYS: &[&str] = &[
    "promotion_score",
    "size",
    "read",
    "written",
    "al-writes",
    "bm-writes",
    "upper-pending",
    "lower-pending",
    "ap-in-flight",
    "rs-in-flight",
    "received",
    "sent",
    "out-of-sync",
    "pending",
    "unacked",
];

/// Keys that must hold a decimal number (`nan`/`inf` are accepted and later
/// treated as unknown).
const F64_KEYS: &[&str] = &["done", "eta", "dbdt1"];

/// The current value of a raw field value: the part after the last `->` for
/// `--diff` output, except for identity keys.
pub fn current_value<'a>(key: &str, raw: &'a str) -> &'a str {
    if IDENTITY_KEYS.contains(&key) {
        return raw;
    }
    match raw.rsplit_once("->") {
        Some((_, new)) => new,
        None => raw,
    }
}

/// The numeric kind a key must have, if any.
pub(crate) enum NumKind {
    U32,
    U64,
    F64,
}

pub(crate) fn numeric_kind(key: &str) -> Option<NumKind> {
    if U32_KEYS.contains(&key) {
        Some(NumKind::U32)
    } else if U64_KEYS.contains(&key) {
        Some(NumKind::U64)
    } else if F64_KEYS.contains(&key) {
        Some(NumKind::F64)
    } else {
        None
    }
}

fn is_timestamp_token(tok: &str, next: Option<&str>) -> bool {
    if Action::known(tok).is_some() {
        return false;
    }
    tok.as_bytes().first().is_some_and(u8::is_ascii_digit)
        || next.is_some_and(|n| Action::known(n).is_some())
}

/// Parse one line of `drbdsetup events2` output (trailing `\r`/`\n` allowed).
pub fn parse_line(line: &str) -> Result<Event, ParseError> {
    let text = line.trim_end_matches(['\r', '\n']);
    let err_line = || text.to_string();
    let mut toks = text.split_whitespace().peekable();

    let first = toks.next().ok_or(ParseError::EmptyLine)?;
    let (timestamp, action_tok) = if is_timestamp_token(first, toks.peek().copied()) {
        match toks.next() {
            Some(a) => (Some(first.to_string()), a),
            None => return Err(ParseError::MissingObject { line: err_line() }),
        }
    } else {
        (None, first)
    };
    if action_tok.contains(':') {
        return Err(ParseError::MissingAction {
            line: err_line(),
            token: action_tok.to_string(),
        });
    }
    let action = Action::known(action_tok).unwrap_or_else(|| Action::Other(action_tok.into()));

    let object_tok = match toks.next() {
        Some(o) if !o.contains(':') => o,
        _ => return Err(ParseError::MissingObject { line: err_line() }),
    };
    let object = Object::from_word(object_tok);

    let mut fields = Vec::new();
    for tok in toks {
        let Some((key, value)) = tok.split_once(':') else {
            return Err(ParseError::MissingColon {
                line: err_line(),
                token: tok.to_string(),
            });
        };
        if key.is_empty() {
            return Err(ParseError::EmptyKey {
                line: err_line(),
                token: tok.to_string(),
            });
        }
        check_numeric(key, value, text)?;
        fields.push((key.to_string(), value.to_string()));
    }

    Ok(Event {
        timestamp,
        action,
        object,
        fields,
    })
}

/// Validate the current (and, for diffs, old) value of a numeric key.
fn check_numeric(key: &str, raw: &str, line: &str) -> Result<(), ParseError> {
    let Some(kind) = numeric_kind(key) else {
        return Ok(());
    };
    let new = current_value(key, raw);
    let ok = match kind {
        NumKind::U32 => new.parse::<u32>().is_ok(),
        NumKind::U64 => new.parse::<u64>().is_ok(),
        NumKind::F64 => new.parse::<f64>().is_ok(),
    };
    if ok {
        Ok(())
    } else {
        Err(ParseError::InvalidNumber {
            line: line.to_string(),
            key: key.to_string(),
            value: raw.to_string(),
        })
    }
}

/// Parse every line of `text`, numbering lines from 1. Blank lines are
/// reported as [`ParseError::EmptyLine`] like any other malformed line, so a
/// stream reader can log and skip them.
pub fn parse_lines(text: &str) -> impl Iterator<Item = Result<Event, LineError>> + '_ {
    text.lines()
        .enumerate()
        .map(|(i, l)| parse_line(l).map_err(|e| e.at_line(i + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_timestamped_line_with_colons_in_values() {
        let ev = parse_line(
            "2017-03-27T08:28:17.072611-07:00 create path name:r peer-node-id:1 conn-name:p local:ipv4:1.2.3.4:7789 peer:ipv4:5.6.7.8:7790 established:no\n",
        )
        .unwrap();
        assert_eq!(
            ev.timestamp.as_deref(),
            Some("2017-03-27T08:28:17.072611-07:00")
        );
        assert_eq!(ev.action, Action::Create);
        assert_eq!(ev.object, Object::Path);
        assert_eq!(ev.get("local"), Some("ipv4:1.2.3.4:7789"));
        assert_eq!(ev.get("established"), Some("no"));
    }

    #[test]
    fn end_of_dump_and_diff_values() {
        let ev = parse_line("exists -").unwrap();
        assert!(ev.is_end_of_initial_dump());
        assert_eq!(ev.action, Action::Exists);
        let ev = parse_line("TIME exists -").unwrap();
        assert_eq!(ev.timestamp.as_deref(), Some("TIME"));
        assert!(ev.is_end_of_initial_dump());
        let ev = parse_line("change resource name:r role:Secondary->Primary").unwrap();
        assert_eq!(ev.get("role"), Some("Primary"));
        assert_eq!(ev.get_raw("role"), Some("Secondary->Primary"));
        assert_eq!(
            ev.to_string(),
            "change resource name:r role:Secondary->Primary"
        );
    }
}
