//! Cluster tests: 3 controller processes and 2 agents on the DRBD emulator, on
//! loopback, driven through `understudyctl` and signals.

use std::time::{Duration, Instant};

use understudy_tests::{pair, pair_healthy, server, Cluster};

const SETTLE: Duration = Duration::from_secs(60);

#[test]
fn status_shows_both_servers_uptodate_and_connected() {
    let c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    let s = c.wait_status(
        "pair fs1 Healthy with both servers in sync",
        SETTLE,
        pair_healthy,
    );
    assert_eq!(s["cluster"]["members"].as_array().unwrap().len(), 3);
    assert!(s["cluster"]["leader_id"].as_u64().is_some());
    let a = server(&s, "fs1", "fs1-a");
    assert_eq!(a["configured_role"], "primary");
    assert!(a["last_report_age_ms"].as_u64().is_some());
    assert_eq!(server(&s, "fs1", "fs1-b")["drbd"]["peer_role"], "Primary");
    // The pair went through Rebuilding (initial sync) to Healthy, and says why.
    assert!(pair(&s, "fs1")["state_reason"]
        .as_str()
        .unwrap()
        .contains("in sync"));

    // The table output shows the same.
    let out = c.controllers.ctl().arg("status").output().unwrap();
    assert!(out.status.success());
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("state Healthy"), "{table}");
    let rows: Vec<&str> = table
        .lines()
        .filter(|l| l.trim_start().starts_with("fs1-"))
        .collect();
    assert_eq!(rows.len(), 2, "{table}");
    for r in rows {
        assert_eq!(r.matches("UpToDate").count(), 2, "{r}");
        assert!(r.contains("Connected") && r.contains("Established"), "{r}");
    }
}

#[test]
fn leader_kill_elects_a_new_leader_and_agents_follow_it() {
    let mut c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    let s = c.wait_status("pair healthy", SETTLE, pair_healthy);
    let old = Cluster::leader_index(&s).expect("a leader");
    let killed = Instant::now();
    c.kill_controller(old);
    let s = c.wait_status("a new leader", Duration::from_secs(10), |s| {
        Cluster::leader_index(s).is_some_and(|l| l != old)
    });
    let elected = killed.elapsed();
    let new = Cluster::leader_index(&s).unwrap();
    eprintln!("new leader {} after {elected:?}", new + 1);
    // Both agents reconnect to the new leader and report fresh state.
    let s = c.wait_status(
        "agents reconnected and pair healthy",
        Duration::from_secs(10),
        |s| {
            pair_healthy(s)
                && ["fs1-a", "fs1-b"].iter().all(|id| {
                    server(s, "fs1", id)["last_report_age_ms"]
                        .as_u64()
                        .is_some_and(|a| a < 2000)
                })
        },
    );
    assert_eq!(Cluster::leader_index(&s), Some(new));
    assert_eq!(pair(&s, "fs1")["state"], "Healthy");
    // The old leader rejoins as a follower.
    c.start_controller(old);
    c.wait_status(
        "old leader back as a member",
        Duration::from_secs(10),
        |s| {
            s["cluster"]["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["matched_index"].as_u64().is_some()))
        },
    );
}

#[test]
fn inventory_and_pair_state_survive_a_restart_of_all_controllers() {
    let mut c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    let before = c.wait_status("pair healthy", SETTLE, pair_healthy);
    let history_len = before["cluster"]["last_applied_index"].as_u64().unwrap();
    for i in 0..3 {
        c.kill_controller(i);
    }
    // Agents keep running (and DRBD keeps replicating) with no controller at all.
    std::thread::sleep(Duration::from_millis(500));
    assert!(c.try_status().is_err());
    for i in 0..3 {
        c.start_controller(i);
    }
    // Read from disk: the first answer after the restart already has the pair,
    // in the state it had, with its spec, before any agent could change it.
    let after = c.wait_status("a leader after restart", Duration::from_secs(15), |s| {
        !pair(s, "fs1").is_null()
    });
    let p = pair(&after, "fs1");
    assert_eq!(p["state"], "Healthy", "state read back from disk: {p}");
    assert_eq!(p["client_ip"], "198.18.0.100");
    assert_eq!(p["zone"], "zone-a");
    assert!(after["cluster"]["last_applied_index"].as_u64().unwrap() >= history_len);
    c.wait_status(
        "agents back and pair healthy",
        Duration::from_secs(15),
        pair_healthy,
    );
}

#[test]
fn an_agent_relayed_by_a_follower_keeps_its_connection_when_the_leader_dies() {
    let mut c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    let s = c.wait_status("pair healthy", SETTLE, pair_healthy);
    let old = Cluster::leader_index(&s).expect("a leader");
    let follower = (old + 1) % 3;
    // fs1-b's agent knows only the follower: its session is relayed.
    let b = &mut c.hosts[1];
    b.agent.take().expect("fs1-b's agent").kill();
    let cfg = std::fs::read_to_string(&b.agent_config).unwrap();
    let cfg: String = cfg
        .lines()
        .map(|l| {
            if l.starts_with("controllers") {
                format!("controllers = [\"{}\"]", c.controllers.addrs[follower])
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&b.agent_config, cfg).unwrap();
    let log = b.dir.join("agent.log");
    let _ = std::fs::remove_file(&log);
    b.start_agent();
    let relayed = format!("relayed_by={}", follower + 1);
    understudy_tests::wait_for(
        "fs1-b's session relayed by the follower",
        Duration::from_secs(15),
        || {
            std::fs::read_to_string(&log)
                .is_ok_and(|t| {
                    t.lines()
                        .any(|l| l.contains("session open") && l.contains(&relayed))
                })
                .then_some(())
        },
    );
    c.wait_status("pair healthy again", SETTLE, pair_healthy);

    c.kill_controller(old);
    let after_kill = c.wait_status(
        "a new leader, fs1-b reporting to it",
        Duration::from_secs(15),
        |s| {
            Cluster::leader_index(s).is_some_and(|l| l != old)
                && server(s, "fs1", "fs1-b")["connected"] == true
                && server(s, "fs1", "fs1-b")["last_report_age_ms"]
                    .as_u64()
                    .is_some_and(|a| a < 2000)
        },
    );
    let new = Cluster::leader_index(&after_kill).expect("a leader");
    // The follower told the agent that the leader went; the agent opened its
    // next session through it, on the connection it had: no new handshake.
    let text = std::fs::read_to_string(&log).unwrap();
    let after: Vec<&str> = text
        .lines()
        .skip_while(|l| {
            !l.contains("the leader moved: opening a new session through the same controller")
        })
        .collect();
    assert!(
        !after.is_empty(),
        "no relayed redirect in {}",
        log.display()
    );
    let reopened = after
        .iter()
        .find(|l| l.contains("session open") || l.contains("hands this agent to a follower"))
        .unwrap_or_else(|| panic!("no session after the redirect in {}", log.display()));
    if new == follower {
        // The follower it came back through is the new leader itself: it
        // hands the agent to the one follower left, which relays it.
        assert!(reopened.contains("hands this agent"), "{reopened}");
        let third = 3 - old - follower;
        let via = after
            .iter()
            .find(|l| l.contains("session open"))
            .unwrap_or_else(|| panic!("no session after the handoff in {}", log.display()));
        assert!(
            via.contains(&format!("controller={}", c.controllers.addrs[third]))
                && via.contains(&format!("relayed_by={}", third + 1)),
            "{via}"
        );
    } else {
        assert!(reopened.contains("session open"), "{reopened}");
        assert!(reopened.contains("kept_connection=true"), "{reopened}");
        assert!(
            reopened.contains(&format!("controller={}", c.controllers.addrs[follower])),
            "{reopened}"
        );
    }
}

/// The first "session open" line of the agent log at `path` after the first
/// line containing `marker`, waited for (15 s) as `what`.
fn session_after(path: &std::path::Path, marker: &str, what: &str) -> String {
    understudy_tests::wait_for(what, Duration::from_secs(15), || {
        let text = std::fs::read_to_string(path).ok()?;
        text.lines()
            .skip_while(|l| !l.contains(marker))
            .find(|l| l.contains("session open"))
            .map(str::to_owned)
    })
}

/// Log lines of `path` containing `what`.
fn count(path: &std::path::Path, what: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(what))
        .count()
}

#[test]
fn the_leader_hands_an_agent_that_dials_it_to_a_follower_and_serves_it_when_no_follower_relays() {
    let mut c = Cluster::start(3);
    let _logs = c.keep_logs_on_panic();
    let s = c.wait_status("pair healthy", SETTLE, pair_healthy);
    let leader = Cluster::leader_index(&s).expect("a leader");
    // fs1-b's agent knows only the leader.
    let b = &mut c.hosts[1];
    b.agent.take().expect("fs1-b's agent").kill();
    let cfg = std::fs::read_to_string(&b.agent_config).unwrap();
    let only = |addr: &str| -> String {
        cfg.lines()
            .map(|l| {
                if l.starts_with("controllers") {
                    format!("controllers = [\"{addr}\"]")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    std::fs::write(&b.agent_config, only(&c.controllers.addrs[leader])).unwrap();
    let log = b.dir.join("agent.log");
    let _ = std::fs::remove_file(&log);
    b.start_agent();
    // Handed to a follower, which relays it: the leader holds no connection
    // of its own for it.
    let served = session_after(
        &log,
        "the leader hands this agent to a follower",
        "fs1-b handed to a follower and relayed by it",
    );
    assert!(!served.contains("relayed_by=0"), "{served}");
    assert!(
        !served.contains(&format!("controller={}", c.controllers.addrs[leader])),
        "{served}"
    );
    c.wait_status("pair healthy, fs1-b relayed", SETTLE, pair_healthy);

    // No follower relays now (an operator turned relaying off everywhere, but
    // left the handoff on): the agent is handed off, turned away by the
    // follower, and comes back to the leader, which serves it. Once: no
    // bouncing between the two.
    for i in 0..3 {
        c.kill_controller(i);
        let path = c.dir.path().join(format!("controller-{}.toml", i + 1));
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("\n[agents]\nrelay = false\n");
        std::fs::write(&path, text).unwrap();
    }
    for i in 0..3 {
        c.start_controller(i);
    }
    let s = c.wait_status("pair healthy after the restart", SETTLE, |s| {
        pair_healthy(s) && server(s, "fs1", "fs1-b")["connected"] == true
    });
    let leader = Cluster::leader_index(&s).expect("a leader");
    // The agent may have found the leader through any of them; make it dial
    // the leader first, as before, and start it afresh.
    let b = &mut c.hosts[1];
    b.agent.take().expect("fs1-b's agent").kill();
    std::fs::write(&b.agent_config, only(&c.controllers.addrs[leader])).unwrap();
    let _ = std::fs::remove_file(&log);
    b.start_agent();
    let direct = session_after(
        &log,
        "did not serve it: back to the leader",
        "fs1-b back at the leader, served directly",
    );
    assert!(direct.contains("relayed_by=0"), "{direct}");
    assert!(
        direct.contains(&format!("controller={}", c.controllers.addrs[leader])),
        "{direct}"
    );
    c.wait_status("pair healthy, fs1-b direct", SETTLE, |s| {
        pair_healthy(s) && server(s, "fs1", "fs1-b")["connected"] == true
    });
    // Still one handoff, one session: nothing bounced meanwhile.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        count(&log, "hands this agent to a follower"),
        1,
        "{}",
        log.display()
    );
    assert_eq!(count(&log, "session open"), 1, "{}", log.display());
}
