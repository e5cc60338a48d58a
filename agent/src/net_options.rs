//! DRBD's net options of the pair's resource (`ping-int`, `ping-timeout`,
//! `connect-int`, `timeout`, `protocol`, `fencing`), as the kernel runs them.
//!
//! The recovery target depends on them: with DRBD's default `ping-int` of 10 s
//! a dead peer is noticed after 10 s or more, whatever the controller does. The
//! agent runs `drbdsetup show RES --show-defaults` (the configured drbdsetup,
//! bounded by [`SHOW_TIMEOUT`]) at start, after the events2 observer (re)starts
//! (DRBD may have been reconfigured or reloaded), and every [`REFRESH_EVERY`],
//! never more often than every [`MIN_GAP`]. The result is parsed by
//! [`understudy_drbd::show`] and attached to the resource in every DRBD report
//! (`DrbdResource.net`). A failure (drbdsetup missing, hung, refusing the
//! command, or printing something unreadable) is reported in its `error`; it
//! never stops the observer or the session.

use std::time::Duration;

use tokio::sync::watch;
use understudy_proto::{DrbdNetOptions, DrbdStatus};

use crate::actions::command::{self, fmt_code, CommandLine};
use crate::config::DrbdConfig;

/// How long `drbdsetup show` may run before it is killed.
pub const SHOW_TIMEOUT: Duration = Duration::from_secs(5);
/// How often the options are re-read when nothing else asks for it.
pub const REFRESH_EVERY: Duration = Duration::from_secs(60);
/// The least time between two reads (an observer in a crash loop restarts
/// every few hundred milliseconds).
pub const MIN_GAP: Duration = Duration::from_secs(2);

/// `drbdsetup show RES --show-defaults`.
pub fn show_command(cfg: &DrbdConfig) -> CommandLine {
    CommandLine::new(&cfg.drbdsetup)
        .arg("show")
        .arg(&cfg.resource)
        .arg("--show-defaults")
}

/// The typed options in their wire form.
pub fn to_proto(n: &understudy_drbd::NetOptions) -> DrbdNetOptions {
    DrbdNetOptions {
        ping_int_ms: n.ping_int_ms,
        ping_timeout_ms: n.ping_timeout_ms,
        connect_int_ms: n.connect_int_ms,
        timeout_ms: n.timeout_ms,
        protocol: n.protocol.clone().unwrap_or_default(),
        fencing: n.fencing.clone().unwrap_or_default(),
        error: String::new(),
    }
}

/// At most `max` characters of `s`, marked when cut.
fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_owned(),
    }
}

/// Read the options once. Never fails: what went wrong is in `error`.
pub async fn read(cfg: &DrbdConfig) -> DrbdNetOptions {
    let cmd = show_command(cfg);
    let error = |e: String| DrbdNetOptions {
        error: e,
        ..Default::default()
    };
    match command::run(&cmd, SHOW_TIMEOUT).await {
        Err(e) => error(e.to_string()),
        Ok(out) if !out.success() => error(format!(
            "`{cmd}` failed ({}): {}",
            fmt_code(out.code),
            cut(&out.message(), 300)
        )),
        Ok(out) => match understudy_drbd::net_options(&out.stdout, &cfg.resource) {
            Ok(n) => to_proto(&n),
            Err(e) => error(format!("cannot read the output of `{cmd}`: {e}")),
        },
    }
}

/// Put `net` on the resource `resource` of `st`, if `st` has it.
pub fn attach(st: &mut DrbdStatus, resource: &str, net: &DrbdNetOptions) {
    for r in st.resources.iter_mut().filter(|r| r.name == resource) {
        r.net = Some(net.clone());
    }
}

/// Publish on `out` every status of `observed` with the latest net options
/// attached, reading them as the module documentation says. Runs until the
/// observer's channel closes.
pub async fn run(
    cfg: DrbdConfig,
    mut observed: watch::Receiver<DrbdStatus>,
    out: watch::Sender<DrbdStatus>,
) {
    let (net_tx, mut net_rx) = watch::channel(None::<DrbdNetOptions>);
    tokio::spawn(read_loop(cfg.clone(), observed.clone(), net_tx));
    let mut reader_alive = true;
    loop {
        let mut st = observed.borrow_and_update().clone();
        if let Some(net) = net_rx.borrow_and_update().as_ref() {
            attach(&mut st, &cfg.resource, net);
        }
        out.send_if_modified(|cur| {
            if *cur != st {
                *cur = st;
                true
            } else {
                false
            }
        });
        tokio::select! {
            r = observed.changed() => {
                if r.is_err() {
                    return;
                }
            }
            r = net_rx.changed(), if reader_alive => reader_alive = r.is_ok(),
        }
    }
}

/// Read the options now, then whenever the observer (re)starts or
/// [`REFRESH_EVERY`] passes, at most every [`MIN_GAP`].
async fn read_loop(
    cfg: DrbdConfig,
    mut observed: watch::Receiver<DrbdStatus>,
    tx: watch::Sender<Option<DrbdNetOptions>>,
) {
    let mut was_running = observed.borrow_and_update().observer_running;
    let mut last_error = String::new();
    loop {
        let t0 = tokio::time::Instant::now();
        let net = read(&cfg).await;
        if net.error != last_error {
            if net.error.is_empty() {
                tracing::info!(
                    ping_int_ms = net.ping_int_ms,
                    ping_timeout_ms = net.ping_timeout_ms,
                    "DRBD net options read"
                );
            } else {
                tracing::warn!(error = %net.error, "cannot read DRBD's net options");
            }
            last_error = net.error.clone();
        }
        tx.send_replace(Some(net));
        let due = t0 + REFRESH_EVERY;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => break,
                r = observed.changed() => {
                    if r.is_err() {
                        tokio::time::sleep_until(due).await;
                        break;
                    }
                    let running = observed.borrow_and_update().observer_running;
                    let started = running && !was_running;
                    was_running = running;
                    if started {
                        tokio::time::sleep_until(t0 + MIN_GAP).await;
                        break;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use understudy_proto::DrbdResource;

    fn cfg(dir: &std::path::Path, script: &str) -> DrbdConfig {
        let fake = dir.join("drbdsetup");
        std::fs::write(&fake, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut c: DrbdConfig = toml::from_str("resource = \"r0\"").unwrap();
        c.drbdsetup = fake;
        c
    }

    const SHOW: &str = "resource \"r0\" {\n    connection {\n        _peer_node_id 1;\n        net {\n            timeout         \t60; # 1/10 seconds, default\n            connect-int     \t10; # seconds, default\n            ping-int        \t10; # seconds, default\n            ping-timeout    \t5; # 1/10 seconds, default\n            protocol        \tC; # default\n            fencing         \tresource-and-stonith;\n        }\n    }\n}\n";

    #[tokio::test]
    async fn reads_the_options_with_the_configured_drbdsetup() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("args");
        let c = cfg(
            dir.path(),
            &format!("echo \"$@\" > {}\ncat <<'EOF'\n{SHOW}EOF", log.display()),
        );
        let n = read(&c).await;
        assert_eq!(n.error, "");
        assert_eq!(n.ping_int_ms, Some(10_000));
        assert_eq!(n.ping_timeout_ms, Some(500));
        assert_eq!(n.connect_int_ms, Some(10_000));
        assert_eq!(n.timeout_ms, Some(6_000));
        assert_eq!(n.protocol, "C");
        assert_eq!(n.fencing, "resource-and-stonith");
        assert_eq!(
            std::fs::read_to_string(&log).unwrap().trim(),
            "show r0 --show-defaults"
        );
    }

    #[tokio::test]
    async fn every_failure_is_reported_in_error() {
        let dir = tempfile::tempdir().unwrap();
        // What the DRBD emulator without a `show` command answers.
        let usage = read(&cfg(
            dir.path(),
            "echo 'usage: drbd-emu drbdsetup events2|status|... (unknown command show)' >&2\nexit 2",
        ))
        .await;
        assert!(usage.ping_int_ms.is_none());
        assert!(usage.error.contains("failed (exit 2)"), "{}", usage.error);
        assert!(
            usage.error.contains("unknown command show"),
            "{}",
            usage.error
        );

        let garbage = read(&cfg(dir.path(), "echo 'resource r0 {'")).await;
        assert!(
            garbage.error.contains("cannot read the output") && garbage.error.contains("line 1"),
            "{}",
            garbage.error
        );
        let other = read(&cfg(dir.path(), "echo 'resource r1 { connection { } }'")).await;
        assert!(
            other.error.contains("\"r0\" is not in the output"),
            "{}",
            other.error
        );

        let mut missing = cfg(dir.path(), "");
        missing.drbdsetup = dir.path().join("nope");
        let e = read(&missing).await;
        assert!(e.error.contains("cannot run"), "{}", e.error);

        let t0 = std::time::Instant::now();
        let hung = read(&cfg(dir.path(), "exec sleep 30")).await;
        assert!(hung.error.contains("did not finish"), "{}", hung.error);
        assert!(t0.elapsed() < SHOW_TIMEOUT + Duration::from_secs(3));
    }

    #[tokio::test]
    async fn the_options_are_attached_to_the_pairs_resource() {
        let dir = tempfile::tempdir().unwrap();
        let c = cfg(dir.path(), &format!("cat <<'EOF'\n{SHOW}EOF"));
        let (obs_tx, obs_rx) = watch::channel(DrbdStatus::default());
        let (out_tx, mut out_rx) = watch::channel(DrbdStatus::default());
        tokio::spawn(run(c, obs_rx, out_tx));
        obs_tx.send_replace(DrbdStatus {
            observer_running: true,
            resources: vec![
                DrbdResource {
                    name: "r0".into(),
                    ..Default::default()
                },
                DrbdResource {
                    name: "other".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        let st = tokio::time::timeout(
            Duration::from_secs(10),
            out_rx.wait_for(|s| s.resources.first().is_some_and(|r| r.net.is_some())),
        )
        .await
        .expect("net options attached")
        .unwrap()
        .clone();
        let net = st.resources[0].net.as_ref().unwrap();
        assert_eq!(net.ping_int_ms, Some(10_000));
        assert!(st.resources[1].net.is_none(), "only the pair's resource");
        // A later observer change keeps the options.
        obs_tx.send_modify(|s| s.observer_restarts = 1);
        let st = tokio::time::timeout(
            Duration::from_secs(5),
            out_rx.wait_for(|s| s.observer_restarts == 1),
        )
        .await
        .unwrap()
        .unwrap()
        .clone();
        assert!(st.resources[0].net.is_some());
    }
}
