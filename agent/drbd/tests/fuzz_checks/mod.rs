//! The checks run on every fuzz input, shared by the property tests
//! (`fuzz_events2.rs`, `fuzz_status_json.rs`, `fuzz_show.rs`) and the
//! cargo-fuzz targets in `fuzz/` (which include this file by path). Each
//! takes any input and panics only when a property is broken; the parsers
//! themselves must answer every input with a value or a typed error.

#![allow(dead_code)]

use understudy_drbd::{
    net_options, parse_connection_json, parse_line, parse_show, parse_status_json,
    sanitize_non_finite, summarize, DrbdState, ParseError, ShowError,
};

/// The text of an error-carrying events2 line as `parse_line` names it.
fn named_line(e: &ParseError) -> Option<&str> {
    match e {
        ParseError::MissingAction { line, .. }
        | ParseError::MissingObject { line }
        | ParseError::MissingColon { line, .. }
        | ParseError::EmptyKey { line, .. }
        | ParseError::InvalidNumber { line, .. }
        | ParseError::MissingKey { line, .. } => Some(line),
        ParseError::EmptyLine | ParseError::Json { .. } | ParseError::UnexpectedJson { .. } => None,
    }
}

/// One events2 line through the parser and into `state`:
///
/// * `parse_line` answers a value or a typed error; an error other than
///   `EmptyLine` names the line (without its line ending);
/// * a parsed event re-renders (`Display`) to a line that parses to the same
///   event;
/// * `DrbdState::apply` answers `Ok(changed)` with `changed` exactly when the
///   state differs afterwards, or an error (`MissingKey` / `InvalidNumber`)
///   that leaves the state untouched;
/// * every resource of the state summarizes.
///
/// Returns the parse result.
pub fn events2_line(state: &mut DrbdState, line: &str) -> Result<(), ParseError> {
    let ev = match parse_line(line) {
        Ok(ev) => ev,
        Err(e) => {
            let text = line.trim_end_matches(['\r', '\n']);
            match named_line(&e) {
                Some(named) => assert_eq!(named, text, "error {e:?} names another line"),
                None => assert_eq!(e, ParseError::EmptyLine, "{line:?}"),
            }
            assert!(!e.to_string().is_empty());
            return Err(e);
        }
    };
    let rendered = ev.to_string();
    let again = parse_line(&rendered)
        .unwrap_or_else(|e| panic!("{line:?} parsed to {ev:?}, rendered {rendered:?}: {e}"));
    assert_eq!(again, ev, "{line:?} rendered as {rendered:?}");

    let before = state.clone();
    match state.apply(&ev) {
        Ok(changed) => assert_eq!(
            changed,
            *state != before,
            "apply({rendered:?}) said changed={changed}"
        ),
        Err(e) => {
            assert!(
                matches!(
                    e,
                    ParseError::MissingKey { .. } | ParseError::InvalidNumber { .. }
                ),
                "apply({rendered:?}) failed with {e:?}"
            );
            assert_eq!(
                *state, before,
                "a failed apply({rendered:?}) changed the state"
            );
        }
    }
    for r in state.resources.values() {
        let s = summarize(r);
        assert_eq!(s.name, r.name);
    }
    Ok(())
}

/// Every line of `text` (split like `parse_lines`) through [`events2_line`]
/// into one state, which is returned.
pub fn events2_text(text: &str) -> DrbdState {
    let mut state = DrbdState::default();
    for line in text.lines() {
        let _ = events2_line(&mut state, line);
    }
    state
}

/// Raw bytes as a stream of events2 output (the agent reads lines lossily).
pub fn events2_bytes(data: &[u8]) -> DrbdState {
    events2_text(&String::from_utf8_lossy(data))
}

/// `drbdsetup status --json` text: both entry points answer a value or a
/// typed JSON error; the nan pre-pass is idempotent; every parsed resource
/// summarizes.
pub fn status_json_text(text: &str) {
    let once = sanitize_non_finite(text);
    assert_eq!(
        sanitize_non_finite(&once),
        once,
        "sanitize is not idempotent"
    );
    match parse_status_json(text) {
        Ok(rs) => {
            for r in &rs {
                let s = summarize(r);
                assert_eq!(s.name, r.name);
            }
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    ParseError::Json { .. }
                        | ParseError::UnexpectedJson { .. }
                        | ParseError::InvalidNumber { .. }
                ),
                "{e:?}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
    if let Err(e) = parse_connection_json(text) {
        assert!(
            matches!(
                e,
                ParseError::Json { .. }
                    | ParseError::UnexpectedJson { .. }
                    | ParseError::InvalidNumber { .. }
            ),
            "{e:?}"
        );
    }
}

pub fn status_json_bytes(data: &[u8]) {
    status_json_text(&String::from_utf8_lossy(data));
}

/// `drbdsetup show` text: `parse_show` answers a value or a [`ShowError`]
/// naming a line that exists; `net_options` agrees with `parse_show` for every
/// resource found (and for one that is not).
pub fn show_text(text: &str) {
    let lines = text.lines().count();
    match parse_show(text) {
        Ok(rs) => {
            for r in &rs {
                match net_options(text, &r.name) {
                    Ok(n) => {
                        let first = rs.iter().find(|x| x.name == r.name).unwrap();
                        assert_eq!(Some(&n), first.connections.first().map(|c| &c.net));
                    }
                    Err(ShowError::NoConnection { resource }) => {
                        let first = rs.iter().find(|x| x.name == r.name).unwrap();
                        assert!(first.connections.is_empty());
                        assert_eq!(resource, r.name);
                    }
                    Err(e) => panic!(
                        "net_options({:?}) after parse_show succeeded: {e:?}",
                        r.name
                    ),
                }
            }
            let absent = "\u{1}not-a-resource";
            assert!(matches!(
                net_options(text, absent),
                Err(ShowError::ResourceNotFound { .. })
            ));
        }
        Err(e) => {
            let line_no = match &e {
                ShowError::UnterminatedString { line_no, .. }
                | ShowError::UnexpectedClose { line_no, .. }
                | ShowError::MissingName { line_no, .. }
                | ShowError::MissingSemicolon { line_no, .. }
                | ShowError::Unclosed { line_no, .. }
                | ShowError::TooDeep { line_no, .. }
                | ShowError::InvalidNumber { line_no, .. } => *line_no,
                other => panic!("parse_show failed with {other:?}"),
            };
            assert!(
                (1..=lines).contains(&line_no),
                "{e:?} names line {line_no} of {lines}"
            );
            assert!(!e.to_string().is_empty());
        }
    }
}

pub fn show_bytes(data: &[u8]) {
    show_text(&String::from_utf8_lossy(data));
}
