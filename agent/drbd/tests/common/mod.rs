//! Shared helpers for the fixture-driven integration tests.
//!
//! Fixtures live in `agent/drbd/tests/fixtures/` (their sources: `SOURCES.md`
//! there); `UNDERSTUDY_FIXTURES` points elsewhere. A missing directory FAILS the test.

#![allow(dead_code)]

use std::path::PathBuf;

use understudy_drbd::{parse_line, DrbdState};

pub fn fixtures_dir() -> PathBuf {
    let dir = match std::env::var_os("UNDERSTUDY_FIXTURES") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")),
    };
    assert!(
        dir.is_dir(),
        "DRBD fixtures directory not found at {} — it is part of the repository \
         (agent/drbd/tests/fixtures); restore it with `git checkout -- agent/drbd/tests/fixtures`",
        dir.display()
    );
    dir
}

pub fn read_fixture(name: &str) -> String {
    let path = fixtures_dir().join(name);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

/// Undo the User's Guide display wrapping: a line starting with whitespace
/// continues the previous line (real drbdsetup prints one line per event).
pub fn unwrap_continuations(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with([' ', '\t']) && !out.is_empty() {
            let last = out.last_mut().unwrap();
            last.push(' ');
            last.push_str(line.trim());
        } else {
            out.push(line.to_string());
        }
    }
    out
}

/// Parse and apply every line; any error fails the test naming the line.
pub fn replay_lines<S: AsRef<str>>(lines: &[S]) -> DrbdState {
    let mut st = DrbdState::default();
    for (i, line) in lines.iter().enumerate() {
        let line = line.as_ref();
        let ev = parse_line(line)
            .map_err(|e| e.at_line(i + 1))
            .unwrap_or_else(|e| panic!("{e}"));
        st.apply(&ev)
            .map_err(|e| e.at_line(i + 1))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    st
}

/// Replay a fixture that is one event per physical line.
pub fn replay_fixture(name: &str) -> DrbdState {
    let text = read_fixture(name);
    let lines: Vec<&str> = text.lines().collect();
    replay_lines(&lines)
}
