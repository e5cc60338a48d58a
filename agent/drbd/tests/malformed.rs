//! Malformed input gives typed errors naming the line, never a panic.

mod common;

use common::{fixtures_dir, read_fixture};
use understudy_drbd::{
    net_options, parse_connection_json, parse_line, parse_lines, parse_show, parse_status_json,
    summarize, DiskState, DrbdState, ParseError, Role, ShowError,
};

#[test]
fn bad_lines_give_the_right_variant() {
    assert_eq!(parse_line(""), Err(ParseError::EmptyLine));
    assert_eq!(parse_line("   \t"), Err(ParseError::EmptyLine));
    assert_eq!(
        parse_line("exists"),
        Err(ParseError::MissingObject {
            line: "exists".into()
        })
    );
    assert_eq!(
        parse_line("2019-05-07T13:50:23.973595-07:00"),
        Err(ParseError::MissingObject {
            line: "2019-05-07T13:50:23.973595-07:00".into()
        })
    );
    assert_eq!(
        parse_line("change name:r0 role:Primary"),
        Err(ParseError::MissingObject {
            line: "change name:r0 role:Primary".into()
        })
    );
    assert_eq!(
        parse_line("change resource name:r0 role"),
        Err(ParseError::MissingColon {
            line: "change resource name:r0 role".into(),
            token: "role".into()
        })
    );
    assert_eq!(
        parse_line("change resource name:r0 :Primary"),
        Err(ParseError::EmptyKey {
            line: "change resource name:r0 :Primary".into(),
            token: ":Primary".into()
        })
    );
    assert_eq!(
        parse_line("          replication:Established peer-disk:UpToDate"),
        Err(ParseError::MissingAction {
            line: "          replication:Established peer-disk:UpToDate".into(),
            token: "replication:Established".into()
        })
    );
    for (line, key) in [
        ("change device name:r0 volume:abc disk:UpToDate", "volume"),
        ("change device name:r0 volume:0 size:-5", "size"),
        (
            "change resource name:r0 promotion_score:99999999999999999999999",
            "promotion_score",
        ),
        (
            "change connection name:r0 peer-node-id:4294967296 connection:Connected",
            "peer-node-id",
        ),
        (
            "change peer-device name:r0 peer-node-id:1 volume:0 done:37,5",
            "done",
        ),
        (
            "change resource name:r0 promotion_score:0->x",
            "promotion_score",
        ),
    ] {
        match parse_line(line) {
            Err(ParseError::InvalidNumber {
                line: l, key: k, ..
            }) => {
                assert_eq!(l, line);
                assert_eq!(k, key);
            }
            other => panic!("expected InvalidNumber for {line:?}, got {other:?}"),
        }
    }
}

#[test]
fn error_messages_name_the_line() {
    let line = "change resource name:r0 role";
    let e = parse_line(line).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains(line), "{msg}");
    assert!(msg.contains("not key:value"), "{msg}");
    let le = e.at_line(7);
    assert_eq!(le.line_no, 7);
    assert!(le.to_string().starts_with("line 7: "), "{le}");

    let errs: Vec<_> = parse_lines("exists -\n\nchange resource name:r0 x\n")
        .filter_map(Result::err)
        .collect();
    assert_eq!(errs.len(), 2);
    assert_eq!(errs[0].line_no, 2);
    assert_eq!(errs[0].source, ParseError::EmptyLine);
    assert_eq!(errs[1].line_no, 3);
    assert!(matches!(errs[1].source, ParseError::MissingColon { .. }));
}

#[test]
fn apply_errors_are_typed_and_leave_state_untouched() {
    let mut st = DrbdState::default();
    st.apply_line("exists resource name:r0 role:Secondary")
        .unwrap();
    let before = st.clone();
    for (line, key) in [
        ("change resource role:Primary", "name"),
        ("change device name:r0 disk:UpToDate", "volume"),
        (
            "change connection name:r0 connection:Connected",
            "peer-node-id",
        ),
        (
            "change path name:r0 peer-node-id:1 established:yes",
            "local",
        ),
        ("destroy device name:r0", "volume"),
    ] {
        match st.apply_line(line) {
            Err(ParseError::MissingKey { line: l, key: k }) => {
                assert_eq!(l, line);
                assert_eq!(k, key);
            }
            other => panic!("expected MissingKey for {line:?}, got {other:?}"),
        }
    }
    // A hand-built event with a bad number is caught by apply too.
    let mut ev = parse_line("change device name:r0 volume:0 disk:UpToDate").unwrap();
    ev.fields.push(("size".into(), "lots".into()));
    assert!(matches!(
        st.apply(&ev),
        Err(ParseError::InvalidNumber { .. })
    ));
    assert_eq!(st, before);
}

#[test]
fn unknown_words_and_keys_are_kept_and_reported() {
    let mut st = DrbdState::default();
    for line in [
        "exists resource name:r0 role:Tertiary suspended:quorum,meditating frob:1",
        "exists device name:r0 volume:0 minor:1 disk:Shiny quorum:maybe",
        "exists connection name:r0 peer-node-id:3 conn-name:b connection:Levitating role:Secondary",
        "exists peer-device name:r0 peer-node-id:3 conn-name:b volume:0 replication:Teleporting peer-disk:UpToDate out-of-sync:18446744073709551608",
        "exists frobnicator name:r0",
        "launch resource name:r0 role:Primary",
    ] {
        st.apply_line(line).unwrap();
    }
    let r = &st.resources["r0"];
    assert_eq!(r.role, Role::Other("Tertiary".into()));
    assert_eq!(r.suspended, Some(true));
    assert_eq!(r.devices[&0].quorum, None);
    let s = summarize(r);
    assert_eq!(s.disk, DiskState::Other("Shiny".into()));
    assert_eq!(s.out_of_sync_bytes, None, "underflowed counter");
    for want in [
        "resource.role=Tertiary",
        "resource.suspended=quorum,meditating",
        "resource.frob=1",
        "device[0].disk=Shiny",
        "device[0].quorum=maybe",
        "connection[3].connection=Levitating",
        "peer-device[3][0].replication=Teleporting",
    ] {
        assert!(
            s.unknown.contains(&want.to_string()),
            "{want} not in {:?}",
            s.unknown
        );
    }
    // A later `change` to a known word clears the raw value from `extra`.
    st.apply_line("change resource name:r0 suspended:no")
        .unwrap();
    assert_eq!(st.resources["r0"].suspended, Some(false));
    assert!(!st.resources["r0"].extra.contains_key("suspended"));
    st.reset();
    assert_eq!(st, DrbdState::default());
}

#[test]
fn bad_show_output_gives_the_right_variant_and_names_the_line() {
    let cases: Vec<(&str, ShowError)> = vec![
        (
            "resource r0 {\n    net {\n        _name \"fs2;\n    }\n}\n",
            ShowError::UnterminatedString {
                line_no: 3,
                line: "_name \"fs2;".into(),
            },
        ),
        (
            "resource r0 {\n}\n}\n",
            ShowError::UnexpectedClose {
                line_no: 3,
                line: "}".into(),
            },
        ),
        (
            "resource r0 {\n    connection {\n        _peer_node_id 1\n    }\n}\n",
            ShowError::MissingSemicolon {
                line_no: 3,
                line: "_peer_node_id 1".into(),
            },
        ),
        (
            "resource r0 {\n    {\n    }\n}\n",
            ShowError::MissingName {
                line_no: 2,
                line: "{".into(),
                token: '{',
            },
        ),
        (
            "resource r0 {\n    ;\n}\n",
            ShowError::MissingName {
                line_no: 2,
                line: ";".into(),
                token: ';',
            },
        ),
        (
            "resource r0 {\n    connection {\n        net {\n            ping-int 10;\n",
            ShowError::Unclosed {
                line_no: 3,
                line: "net {".into(),
                block: "net".into(),
            },
        ),
        (
            "resource r0 {\n    connection {\n        net {\n            ping-int ten; # seconds\n        }\n    }\n}\n",
            ShowError::InvalidNumber {
                line_no: 4,
                line: "ping-int ten; # seconds".into(),
                key: "ping-int".into(),
                value: "ten".into(),
            },
        ),
        (
            "resource r0 {\n connection {\n  net {\n   timeout 999999999999999999999;\n  }\n }\n}\n",
            ShowError::InvalidNumber {
                line_no: 4,
                line: "timeout 999999999999999999999;".into(),
                key: "timeout".into(),
                value: "999999999999999999999".into(),
            },
        ),
        (
            "resource r0 {\n connection {\n  net {\n   ping-timeout -5;\n  }\n }\n}\n",
            ShowError::InvalidNumber {
                line_no: 4,
                line: "ping-timeout -5;".into(),
                key: "ping-timeout".into(),
                value: "-5".into(),
            },
        ),
        (
            "resource r0 {\n connection {\n  _peer_node_id 4294967296;\n }\n}\n",
            ShowError::InvalidNumber {
                line_no: 3,
                line: "_peer_node_id 4294967296;".into(),
                key: "_peer_node_id".into(),
                value: "4294967296".into(),
            },
        ),
        (
            "resource {\n}\n",
            ShowError::MissingName {
                line_no: 1,
                line: "resource {".into(),
                token: '{',
            },
        ),
    ];
    for (text, want) in cases {
        let got = parse_show(text).unwrap_err();
        assert_eq!(got, want, "{text:?}");
        let line_no = match &got {
            ShowError::UnterminatedString { line_no, .. }
            | ShowError::UnexpectedClose { line_no, .. }
            | ShowError::MissingName { line_no, .. }
            | ShowError::MissingSemicolon { line_no, .. }
            | ShowError::Unclosed { line_no, .. }
            | ShowError::TooDeep { line_no, .. }
            | ShowError::InvalidNumber { line_no, .. } => *line_no,
            other => panic!("{other}"),
        };
        assert!(
            got.to_string().starts_with(&format!("line {line_no}: ")),
            "{got}"
        );
        assert_eq!(net_options(text, "r0").unwrap_err(), got);
    }
    // A usage message (what a drbdsetup without `show` prints) is not output.
    assert!(parse_show("USAGE: drbdsetup command {arguments} [options]\n").is_err());
}

/// Tiny deterministic PRNG (xorshift) so the test needs no extra crates.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn all_fixture_texts() -> Vec<(String, String)> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(fixtures_dir()).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.ends_with(".txt") || name.ends_with(".json") {
            let text = read_fixture(&name);
            v.push((name, text));
        }
    }
    assert!(v.len() > 20);
    v
}

#[test]
fn no_panic_on_truncations_and_random_input() {
    let texts = all_fixture_texts();
    let mut st = DrbdState::default();
    let feed = |s: &str, st: &mut DrbdState| {
        if let Ok(ev) = parse_line(s) {
            let _ = st.apply(&ev);
        }
        let _ = st.apply_line(s);
    };

    // Every prefix and suffix of every line of every fixture.
    let mut pieces: Vec<String> = Vec::new();
    for (_, text) in &texts {
        for line in text.lines() {
            for (i, _) in line.char_indices() {
                pieces.push(line[..i].to_string());
                pieces.push(line[i..].to_string());
            }
        }
    }
    for p in &pieces {
        feed(p, &mut st);
    }

    // Random byte strings and random splices of fixture tokens.
    let tokens: Vec<&str> = texts
        .iter()
        .flat_map(|(_, t)| t.split_whitespace())
        .chain([
            ":",
            "->",
            "-",
            "nan",
            "\u{0}",
            "é",
            "UNKNOWN->",
            "volume:",
            "name:",
        ])
        .collect();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let len = (rng.next() % 40) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| (rng.next() % 256) as u8).collect();
        feed(&String::from_utf8_lossy(&bytes), &mut st);

        let n = 1 + (rng.next() % 8) as usize;
        let line: Vec<&str> = (0..n)
            .map(|_| tokens[(rng.next() % tokens.len() as u64) as usize])
            .collect();
        let sep = if rng.next().is_multiple_of(2) {
            " "
        } else {
            ""
        };
        feed(&line.join(sep), &mut st);
    }
    for r in st.resources.values() {
        let _ = summarize(r);
    }

    // `drbdsetup show`: every truncation, and random splices of its tokens.
    let shows: Vec<&String> = texts
        .iter()
        .filter(|(n, _)| n.starts_with("show-") && n.ends_with(".txt"))
        .map(|(_, t)| t)
        .collect();
    assert!(shows.len() >= 5);
    for text in &shows {
        for (i, _) in text.char_indices() {
            let _ = parse_show(&text[..i]);
            let _ = net_options(&text[i..], "r0");
        }
    }
    let show_tokens: Vec<&str> = shows
        .iter()
        .flat_map(|t| t.split_whitespace())
        .chain(["{", "}", ";", "\"", "#", "_is_default", "\\", "\n"])
        .collect();
    for _ in 0..5_000 {
        let n = 1 + (rng.next() % 30) as usize;
        let text: Vec<&str> = (0..n)
            .map(|_| show_tokens[(rng.next() % show_tokens.len() as u64) as usize])
            .collect();
        let _ = net_options(&text.join(" "), "r0");
    }
    let deep = "resource r0 { ".to_string() + &"x {".repeat(100_000) + &"}".repeat(100_001);
    assert!(matches!(parse_show(&deep), Err(ShowError::TooDeep { .. })));

    // JSON: every truncation of every JSON fixture.
    for (_, text) in texts.iter().filter(|(n, _)| n.ends_with(".json")) {
        for (i, _) in text.char_indices() {
            let _ = parse_status_json(&text[..i]);
            let _ = parse_connection_json(&text[..i]);
        }
        let _ = parse_status_json(text);
    }
}
