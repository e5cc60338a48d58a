//! Property tests of the `drbdsetup show` parser: generated configurations
//! (either option layout, any unit comment, numbers up to overflow) give the
//! net options they describe; one broken token and random bytes give a value
//! or a typed error naming a real line. Shared checks: `fuzz_checks/mod.rs`
//! (also the cargo-fuzz target `show`).

mod common;
mod fuzz_checks;

use proptest::prelude::*;
use understudy_drbd::{net_options, parse_show, ShowError};

/// How one time option is printed.
#[derive(Debug, Clone)]
struct TimeOpt {
    key: &'static str,
    value: u64,
    /// The unit comment and its milliseconds; `None`: no comment (the
    /// documented unit applies).
    unit: Option<(&'static str, u64)>,
    default: bool,
    /// DRBD 8's `VALUE _is_default;` layout instead of `# default`.
    drbd8: bool,
}

impl TimeOpt {
    fn documented_ms(&self) -> u64 {
        match self.key {
            "ping-int" | "connect-int" => 1000,
            _ => 100,
        }
    }

    fn expected_ms(&self) -> Option<u64> {
        self.value
            .checked_mul(self.unit.map(|(_, ms)| ms).unwrap_or(self.documented_ms()))
    }

    fn render(&self) -> String {
        let mut comment: Vec<&str> = Vec::new();
        if let Some((u, _)) = self.unit {
            comment.push(u);
        }
        let mut value = self.value.to_string();
        if self.default {
            if self.drbd8 {
                value.push_str(" _is_default");
            } else {
                comment.push("default");
            }
        }
        let mut l = format!("\t\t{:<16}\t{value};", self.key);
        if !comment.is_empty() {
            l.push_str(&format!(" # {}", comment.join(", ")));
        }
        l
    }
}

fn time_opt(key: &'static str) -> impl Strategy<Value = TimeOpt> {
    (
        prop_oneof![0u64..1000, any::<u64>()],
        proptest::option::of(proptest::sample::select(
            &[
                ("seconds", 1000u64),
                ("1/10 seconds", 100),
                ("milliseconds", 1),
                ("ms", 1),
                ("s", 1000),
            ][..],
        )),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(move |(value, unit, default, drbd8)| TimeOpt {
            key,
            value,
            unit,
            default,
            drbd8,
        })
}

#[derive(Debug, Clone)]
struct Show {
    name: String,
    node_id: u32,
    peer: u32,
    times: Vec<TimeOpt>,
    protocol: &'static str,
    other: Vec<(String, String)>,
}

fn show() -> impl Strategy<Value = Show> {
    (
        "[a-z][a-z0-9_-]{0,10}",
        0u32..32,
        0u32..32,
        proptest::sample::subsequence(
            vec!["ping-int", "ping-timeout", "connect-int", "timeout"],
            0..=4,
        )
        .prop_flat_map(|keys| keys.into_iter().map(time_opt).collect::<Vec<_>>()),
        proptest::sample::select(&["A", "B", "C"][..]),
        proptest::collection::vec(
            (
                "(max-buffers|sndbuf-size|verify-alg|x[a-z]{1,6})",
                "[a-z0-9]{1,8}",
            ),
            0..3,
        ),
    )
        .prop_map(|(name, node_id, peer, times, protocol, other)| Show {
            name,
            node_id,
            peer,
            times,
            protocol,
            other,
        })
}

impl Show {
    fn render(&self) -> String {
        let mut s = format!(
            "resource \"{}\" {{\n\t_this_host {{\n\t\tnode-id\t\t\t{};\n\t\tvolume 0 {{\n\t\t\tdevice\t\t\tminor 1;\n\t\t\tdisk\t\t\t\"/dev/vdb\";\n\t\t}}\n\t}}\n\tconnection {{\n\t\t_peer_node_id {};\n\t\tpath {{\n\t\t\t_this_host ipv4 10.1.1.31:7000;\n\t\t\t_remote_host ipv4 10.1.1.32:7000;\n\t\t}}\n\t\tnet {{\n",
            self.name, self.node_id, self.peer
        );
        for t in &self.times {
            s.push_str(&t.render());
            s.push('\n');
        }
        s.push_str(&format!("\t\tprotocol\t\t{};\n", self.protocol));
        for (k, v) in &self.other {
            s.push_str(&format!("\t\t{k:<16}\t{v};\n"));
        }
        s.push_str("\t\t_name\t\t\t\"peer-host\";\n\t\t}\n\t}\n}\n");
        s
    }
}

proptest! {
    /// A generated configuration gives the net options it describes, in
    /// milliseconds; a value whose milliseconds overflow is `InvalidNumber`
    /// naming the key.
    #[test]
    fn generated_show_gives_its_net_options(sh in show()) {
        let text = sh.render();
        fuzz_checks::show_text(&text);
        let overflow = sh.times.iter().find(|t| t.expected_ms().is_none());
        let got = net_options(&text, &sh.name);
        if let Some(t) = overflow {
            prop_assert!(
                matches!(&got, Err(ShowError::InvalidNumber { key, .. }) if key == t.key),
                "{got:?}"
            );
            return Ok(());
        }
        let n = got.map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        for t in &sh.times {
            let field = match t.key {
                "ping-int" => n.ping_int_ms,
                "ping-timeout" => n.ping_timeout_ms,
                "connect-int" => n.connect_int_ms,
                _ => n.timeout_ms,
            };
            prop_assert_eq!(field, t.expected_ms(), "{}", t.render());
            prop_assert_eq!(n.defaults.contains(t.key), t.default, "{}", t.render());
        }
        prop_assert_eq!(n.protocol.as_deref(), Some(sh.protocol));
        for (k, v) in &sh.other {
            // A later duplicate key wins.
            let last = sh.other.iter().rev().find(|(k2, _)| k2 == k).map(|(_, v)| v);
            prop_assert_eq!(n.other.get(k), last, "{}={}", k, v);
        }
        prop_assert_eq!(n.other.get("_name").map(String::as_str), Some("peer-host"));
        let rs = parse_show(&text).unwrap();
        prop_assert_eq!(rs[0].node_id, Some(sh.node_id));
        prop_assert_eq!(rs[0].connections[0].peer_node_id, Some(sh.peer));
    }

    /// One character of a generated configuration deleted or replaced by a
    /// structural one: a value or a typed error naming a line of the text.
    #[test]
    fn one_broken_character(
        sh in show(),
        at in any::<prop::sample::Index>(),
        with in proptest::sample::select(&["", "{", "}", ";", "\"", "#", "\n", "x", "-1"][..]),
    ) {
        let text = sh.render();
        let chars: Vec<char> = text.chars().collect();
        let i = at.index(chars.len());
        let broken: String = chars[..i].iter().collect::<String>() + with + &chars[i + 1..].iter().collect::<String>();
        fuzz_checks::show_text(&broken);
    }

    /// Random bytes.
    #[test]
    fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
        fuzz_checks::show_bytes(&data);
    }

    /// Random text over the block syntax's characters and keys.
    #[test]
    fn random_show_alphabet(
        text in "([{};#\" \t\n\\\\]|resource|connection|net|_this_host|path|options|node-id|_peer_node_id|ping-int|timeout|default|seconds|_is_default|[0-9]{1,21}|[a-z]{1,3}){0,60}"
    ) {
        fuzz_checks::show_text(&text);
    }

    /// Deep nesting: the parser is iterative and stops at its depth limit.
    #[test]
    fn deep_nesting(depth in 0usize..200) {
        let text = "a {".repeat(depth) + &"}".repeat(depth);
        fuzz_checks::show_text(&text);
        let r = parse_show(&text);
        if depth > understudy_drbd::show::MAX_DEPTH {
            prop_assert!(matches!(r, Err(ShowError::TooDeep { .. })), "{r:?}");
        } else {
            prop_assert_eq!(r, Ok(vec![]));
        }
    }
}

/// The show fixtures pass the shared checks.
#[test]
fn fixtures_pass_the_shared_checks() {
    let dir = common::fixtures_dir();
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with("show-") && name.ends_with(".txt") {
            fuzz_checks::show_text(&common::read_fixture(&name));
            n += 1;
        }
    }
    assert!(n >= 3, "{n} show fixtures");
}
