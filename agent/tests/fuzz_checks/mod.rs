//! The checks run on every fuzz input of the agent's parsers, shared by the
//! property tests (`fuzz_agent.rs`) and the cargo-fuzz targets `agent_config`
//! and `probe_request` in `fuzz/` (which include this file by path).

#![allow(dead_code)]

use prost::Message;
use understudy_agent::probe::{answer, ProbeState, MAX_DATAGRAM};
use understudy_agent::report::drbd_status;
use understudy_agent::AgentConfig;
use understudy_drbd::{parse_line, sane_counter, summarize, DrbdState};
use understudy_proto::{DrbdStatus, ProbeReply, ProbeRequest};

mod toml_path;
#[allow(unused_imports)] // not every target that includes these checks edits TOML
pub use toml_path::{get_path, set_path};

/// Agent configuration text: a configuration or an error message, never a
/// panic; an accepted one holds what validation promises.
pub fn agent_config_text(text: &str) {
    match AgentConfig::parse(text) {
        Ok(c) => {
            assert!(!c.controllers.is_empty());
            assert!(!c.server_id.is_empty() && !c.pair_id.is_empty());
            assert!(c.heartbeat_ms > 0);
            assert!(c.stall_ms >= c.heartbeat_ms.saturating_mul(2));
            assert!(c.probe_max_per_sec > 0);
        }
        Err(e) => assert!(!e.is_empty()),
    }
}

pub fn agent_config_bytes(data: &[u8]) {
    agent_config_text(&String::from_utf8_lossy(data));
}

/// A datagram on the probe port: answered only when it is a probe for this
/// agent with a nonce, by a reply that echoes it and is never larger than the
/// probe (no amplification); anything else is dropped, never a panic.
pub fn probe_datagram(data: &[u8], silent_for_ms: Option<i64>) {
    let state = ProbeState::new("p".into(), "s".into(), 1000);
    let now = 1_700_000_000_000i64;
    if let Some(s) = silent_for_ms {
        state.heard_controller(now.saturating_sub(s));
    }
    let epoch = 7;
    let out = answer(data, &state, epoch, now);
    let req = (data.len() <= MAX_DATAGRAM)
        .then(|| ProbeRequest::decode(data).ok())
        .flatten();
    match out {
        Some(bytes) => {
            assert!(bytes.len() <= data.len(), "amplification");
            let req = req.expect("a reply to something that is not a probe");
            assert!(req.pair_id == "p" && req.server_id == "s" && req.nonce != 0);
            let reply = ProbeReply::decode(bytes.as_slice()).expect("the reply decodes");
            assert_eq!(reply.nonce, req.nonce);
            assert_eq!(reply.highest_epoch, epoch);
            assert_eq!((&*reply.pair_id, &*reply.server_id), ("p", "s"));
        }
        None => {
            if let Some(req) = req {
                let mine = req.pair_id == "p" && req.server_id == "s" && req.nonce != 0;
                // Ours but dropped: only because the reply would be larger.
                if mine {
                    let silent = state.controller_silent_ms(now);
                    let reply = ProbeReply {
                        pair_id: req.pair_id,
                        server_id: req.server_id,
                        nonce: req.nonce,
                        highest_epoch: epoch,
                        stream_healthy: silent.is_some_and(|s| s < state.stall_ms),
                        stream_silent_ms: silent.unwrap_or(u64::MAX),
                    };
                    assert!(
                        reply.encoded_len() > data.len(),
                        "a probe for this agent was dropped: {reply:?}"
                    );
                }
            }
        }
    }
}

/// events2 text through the agent's state into the wire report, which
/// round-trips through prost and agrees with the state it came from.
pub fn events2_report(text: &str) -> DrbdStatus {
    let mut state = DrbdState::default();
    for line in text.lines() {
        if let Ok(ev) = parse_line(line) {
            let _ = state.apply(&ev);
        }
    }
    let st = drbd_status(&state, "", 0);
    assert_eq!(st.observer_running, state.initial_dump_done);
    assert_eq!(st.resources.len(), state.resources.len());
    for (p, r) in st.resources.iter().zip(state.resources.values()) {
        assert_eq!(p.name, r.name);
        assert_eq!(p.role, r.role.as_str());
        let s = summarize(r);
        let sum = p.summary.as_ref().expect("every resource has a summary");
        assert_eq!(sum.out_of_sync_bytes, s.out_of_sync_bytes);
        if let Some(b) = sum.out_of_sync_bytes {
            assert!(b % 1024 == 0 && sane_counter(b / 1024).is_some());
        }
        for d in &p.devices {
            assert!(d.size_kib.is_none_or(|k| sane_counter(k).is_some()));
        }
    }
    let bytes = st.encode_to_vec();
    let back = DrbdStatus::decode(bytes.as_slice()).expect("a report decodes");
    assert_eq!(back.encode_to_vec(), bytes);
    st
}
