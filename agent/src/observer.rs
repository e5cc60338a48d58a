//! The DRBD observer: runs `drbdsetup events2` as a long-running child and keeps a
//! typed picture of every resource.
//!
//! Without `--now`, drbdsetup prints the current state as `exists` lines, then
//! `exists -`, then one line per change (only the changed keys unless `--full`),
//! which [`understudy_drbd::DrbdState::apply`] merges. When the child dies (DRBD
//! tools upgraded, killed, module reloaded) the state is dropped, the failure is
//! reported, and a new child rebuilds the state from its initial dump. A malformed
//! line is reported with its line number and skipped; it never stops the observer.
//!
//! The observer publishes a [`DrbdStatus`] on a watch channel after every change
//! once the initial dump is complete.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::watch;
use understudy_drbd::events2::parse_line;
use understudy_drbd::DrbdState;
use understudy_proto::DrbdStatus;

use crate::config::DrbdConfig;
use crate::error::AgentError;
use crate::report::drbd_status;

/// Run the observer forever, publishing on `tx`.
pub async fn run(cfg: DrbdConfig, tx: watch::Sender<DrbdStatus>) {
    let mut restarts = 0u32;
    let base = Duration::from_millis(cfg.restart_backoff_ms.max(10));
    let mut backoff = base;
    loop {
        let started = std::time::Instant::now();
        let err = run_child(&cfg, &tx, restarts).await;
        tracing::warn!(error = %err, restarts, "DRBD observer stopped; restarting");
        tx.send_replace(DrbdStatus {
            observer_running: false,
            observer_error: err.to_string(),
            observer_restarts: restarts,
            resources: Vec::new(),
        });
        // A child that ran for a while gets a fresh backoff; a crash loop slows down.
        backoff = if started.elapsed() > Duration::from_secs(10) {
            base
        } else {
            (backoff * 2).min(base * 10)
        };
        tokio::time::sleep(backoff).await;
        restarts += 1;
    }
}

/// Remembers, per resource, the summary of the last report in which it was
/// Connected, and attaches it to every report (the S1 evidence).
#[derive(Default)]
pub struct LastConnected(std::collections::HashMap<String, understudy_proto::DrbdSummary>);

impl LastConnected {
    /// Record connected summaries of `st` and fill in `last_connected` everywhere.
    pub fn apply(&mut self, st: &mut DrbdStatus) {
        for r in &mut st.resources {
            if let Some(s) = r.summary.as_ref().filter(|s| s.connection == "Connected") {
                self.0.insert(r.name.clone(), s.clone());
            }
            r.last_connected = self.0.get(&r.name).cloned();
        }
    }
}

/// Run one child until it dies; returns why it stopped.
async fn run_child(cfg: &DrbdConfig, tx: &watch::Sender<DrbdStatus>, restarts: u32) -> AgentError {
    let mut child = match Command::new(&cfg.drbdsetup)
        .args(&cfg.events_args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
    {
        Ok(c) => c,
        Err(source) => {
            return AgentError::Spawn {
                program: cfg.drbdsetup.clone(),
                source,
            }
        }
    };
    let stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    let stderr_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        let _ = (&mut stderr).take(64 * 1024).read_to_end(&mut buf).await;
        String::from_utf8_lossy(&buf).into_owned()
    });
    let mut lines = BufReader::new(stdout).lines();
    let mut state = DrbdState::default();
    let mut line_no = 0usize;
    let mut last_parse_error = String::new();
    let mut last_connected = LastConnected::default();
    loop {
        match lines.next_line().await {
            Ok(Some(line)) => {
                line_no += 1;
                if line.trim().is_empty() {
                    continue;
                }
                let changed = match parse_line(&line).and_then(|ev| state.apply(&ev)) {
                    Ok(c) => c,
                    Err(e) => {
                        let e = e.at_line(line_no);
                        tracing::warn!(error = %e, "unparsable drbdsetup line");
                        last_parse_error = e.to_string();
                        true
                    }
                };
                if changed && state.initial_dump_done {
                    let mut st = drbd_status(&state, &last_parse_error, restarts);
                    last_connected.apply(&mut st);
                    tx.send_replace(st);
                }
            }
            Ok(None) => break,
            Err(e) => {
                last_parse_error = format!("reading drbdsetup output: {e}");
                break;
            }
        }
    }
    let status = match child.wait().await {
        Ok(s) => s.to_string(),
        Err(e) => e.to_string(),
    };
    let stderr = stderr_task.await.unwrap_or_default();
    AgentError::ObserverExited {
        program: cfg.drbdsetup.clone(),
        status,
        stderr: if stderr.trim().is_empty() {
            last_parse_error
        } else {
            stderr
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use understudy_proto::{DrbdResource, DrbdSummary};

    fn status(conn: &str, oos: u64) -> DrbdStatus {
        DrbdStatus {
            resources: vec![DrbdResource {
                name: "r0".into(),
                summary: Some(DrbdSummary {
                    connection: conn.into(),
                    out_of_sync_bytes: Some(oos),
                    ..Default::default()
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn the_last_connected_summary_is_kept_through_the_loss() {
        let mut lc = LastConnected::default();
        let mut st = status("Connected", 0);
        lc.apply(&mut st);
        assert_eq!(
            st.resources[0]
                .last_connected
                .as_ref()
                .unwrap()
                .out_of_sync_bytes,
            Some(0)
        );
        let mut st = status("Connected", 4096);
        lc.apply(&mut st);
        let mut lost = status("Connecting", 0);
        lc.apply(&mut lost);
        let kept = lost.resources[0].last_connected.as_ref().unwrap();
        assert_eq!(kept.connection, "Connected");
        assert_eq!(
            kept.out_of_sync_bytes,
            Some(4096),
            "the last connected one, not the first"
        );
    }
}
