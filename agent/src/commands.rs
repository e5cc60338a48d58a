//! Executing the controller's commands on this host.
//!
//! Every command is checked before anything runs: it must be for this agent's
//! pair, and its fencing token (pair epoch, Raft term) must not be older than the
//! highest this agent accepted (S4; the token is persisted before acting). Commands
//! run one at a time. After each, the host status (mount, exports, client IP) is
//! re-read and published, so the controller sees the effect in the next report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use understudy_proto::command::Action;
use understudy_proto::{Command, CommandResult, HostStatus};

use crate::actions::HostActions;
use crate::epoch::{EpochStore, Token};
use crate::error::AgentError;

/// How often the host status is re-read between commands.
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// Runs commands and keeps the host status current.
pub struct Handler {
    pair_id: String,
    tokens: EpochStore,
    actions: Mutex<HostActions>,
    host: watch::Sender<HostStatus>,
}

impl Handler {
    pub fn new(pair_id: String, tokens: EpochStore, actions: HostActions) -> Arc<Self> {
        Arc::new(Self {
            pair_id,
            tokens,
            actions: Mutex::new(actions),
            host: watch::channel(HostStatus::default()).0,
        })
    }

    /// The host status, updated after every command and every 500 ms.
    pub fn host_status(&self) -> watch::Receiver<HostStatus> {
        self.host.subscribe()
    }

    /// The highest fencing token accepted so far.
    pub fn token(&self) -> Token {
        self.tokens.current()
    }

    /// Re-read the host status forever.
    pub async fn watch_host(self: Arc<Self>) {
        loop {
            self.refresh().await;
            tokio::time::sleep(STATUS_EVERY).await;
        }
    }

    async fn refresh(&self) {
        let st = self.actions.lock().await.status().await;
        self.host.send_if_modified(|cur| {
            if *cur != st {
                *cur = st;
                true
            } else {
                false
            }
        });
    }

    /// Run one command and say how it went.
    pub async fn handle(&self, cmd: Command) -> CommandResult {
        let t0 = Instant::now();
        let span = tracing::info_span!("command", pair = %cmd.pair_id, epoch = cmd.epoch, term = cmd.raft_term, id = cmd.command_id);
        let res = tracing::Instrument::instrument(self.exec(&cmd), span.clone()).await;
        self.refresh().await;
        let duration_ms = t0.elapsed().as_millis() as u64;
        span.in_scope(|| match &res {
            Ok(d) => tracing::info!(duration_ms, detail = %d, "command done"),
            Err(e) => tracing::warn!(duration_ms, error = %e, "command refused or failed"),
        });
        CommandResult {
            command_id: cmd.command_id,
            ok: res.is_ok(),
            error: res
                .as_ref()
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default(),
            duration_ms,
            detail: res.unwrap_or_default(),
        }
    }

    async fn exec(&self, cmd: &Command) -> Result<String, AgentError> {
        if cmd.pair_id != self.pair_id {
            return Err(AgentError::Refused(format!(
                "command for pair {:?} sent to an agent of pair {:?}",
                cmd.pair_id, self.pair_id
            )));
        }
        let action = cmd
            .action
            .as_ref()
            .ok_or_else(|| AgentError::Refused("command without an action".into()))?;
        // S4: refuse stale tokens; persist the new highest before acting.
        let token = Token {
            epoch: cmd.epoch,
            term: cmd.raft_term,
        };
        self.tokens.accept(token)?;
        let mut a = self.actions.lock().await;
        // Commands run in token order: one accepted before a newer one but
        // scheduled after it must not run at all.
        let now = self.tokens.current();
        if now > token {
            return Err(AgentError::Superseded {
                epoch: token.epoch,
                term: token.term,
                newer_epoch: now.epoch,
                newer_term: now.term,
            });
        }
        let run = Self::act(&mut a, action);
        if cmd.timeout_ms == 0 {
            return run.await;
        }
        tokio::time::timeout(Duration::from_millis(cmd.timeout_ms), run)
            .await
            .map_err(|_| AgentError::ActionTimeout {
                timeout_ms: cmd.timeout_ms,
            })?
    }

    async fn act(a: &mut HostActions, action: &Action) -> Result<String, AgentError> {
        Ok(match action {
            Action::Promote(p) => {
                a.promote(p.force).await?;
                format!("drbdadm primary{}", if p.force { " --force" } else { "" })
            }
            Action::Demote(_) => {
                a.demote().await?;
                "drbdadm secondary".into()
            }
            Action::Outdate(_) => {
                a.outdate().await?;
                "drbdadm outdate".into()
            }
            Action::Mount(_) => {
                a.mount().await?;
                "mounted".into()
            }
            Action::Unmount(_) => {
                a.unmount().await?;
                "unmounted".into()
            }
            Action::ExportNfs(_) => {
                a.export().await?;
                "NFS exported".into()
            }
            Action::UnexportNfs(_) => {
                a.unexport().await?;
                "NFS unexported".into()
            }
            Action::ClaimIp(c) => {
                check_ip(a, &c.ip)?;
                a.claim_ip().await?;
                format!("{} configured, gratuitous ARP sent", c.ip)
            }
            Action::ReleaseIp(c) => {
                check_ip(a, &c.ip)?;
                a.release_ip().await?;
                format!("{} released", c.ip)
            }
            Action::Configure(c) => {
                a.configure(&crate::actions::Configure {
                    node_id: c.node_id,
                    peer_hostname: c.peer_hostname.clone(),
                    peer_node_id: c.peer_node_id,
                    peer_address: c.peer_address.clone(),
                    volume_device: (!c.volume_device.is_empty()).then(|| c.volume_device.clone()),
                    create_md: c.create_md,
                })
                .await?
            }
            Action::Connect(c) => {
                a.reconnect(c.discard_my_data).await?;
                format!(
                    "drbdadm disconnect; drbdadm connect{}",
                    if c.discard_my_data {
                        " --discard-my-data"
                    } else {
                        ""
                    }
                )
            }
        })
    }
}

/// The controller and this agent must agree on the client IP.
fn check_ip(a: &HostActions, ip: &str) -> Result<(), AgentError> {
    match a.serving_config() {
        Some(s) if s.client_ip.address.to_string() == ip => Ok(()),
        Some(s) => Err(AgentError::Refused(format!(
            "the controller names client IP {ip} but this agent is configured with {}; fix one of the configurations",
            s.client_ip.address
        ))),
        None => Err(AgentError::Refused(
            "this agent has no [serving] configuration: it only observes".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::DrbdActionsConfig;
    use std::os::unix::fs::PermissionsExt;
    use understudy_proto::{DrbdDemote, DrbdPromote};

    /// A handler whose `drbdadm` sleeps `secs` and logs each call to `calls`.
    fn handler(dir: &std::path::Path, secs: &str) -> Arc<Handler> {
        let fake = dir.join("drbdadm");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho \"$1\" >> {}/calls\nsleep {secs}\nexit 0\n",
                dir.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let host = HostActions::new(DrbdActionsConfig::new("r0", &fake), None).unwrap();
        let tokens = EpochStore::open(&dir.join("state")).unwrap();
        Handler::new("p".into(), tokens, host)
    }

    fn cmd(epoch: u64, timeout_ms: u64, action: Action) -> Command {
        Command {
            command_id: epoch,
            raft_term: 1,
            epoch,
            pair_id: "p".into(),
            timeout_ms,
            action: Some(action),
        }
    }

    #[tokio::test]
    async fn an_older_command_queued_behind_a_newer_token_never_runs() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path(), "0.3");
        // A slow command holds the host; an older and then a newer one queue up.
        let busy = tokio::spawn({
            let h = h.clone();
            async move { h.handle(cmd(1, 0, Action::Demote(DrbdDemote {}))).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let older = tokio::spawn({
            let h = h.clone();
            async move {
                h.handle(cmd(1, 0, Action::Promote(DrbdPromote { force: false })))
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let newer = h.handle(cmd(2, 0, Action::Demote(DrbdDemote {}))).await;
        assert!(busy.await.unwrap().ok);
        let older = older.await.unwrap();
        assert!(!older.ok, "{older:?}");
        assert!(older.error.starts_with("superseded"), "{}", older.error);
        assert!(newer.ok, "{newer:?}");
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        // (`status` is the demote's check for suspended I/O.)
        let acting: Vec<&str> = calls.lines().filter(|l| *l != "status").collect();
        assert_eq!(
            acting,
            ["secondary", "secondary"],
            "the older promote never ran"
        );
    }

    #[tokio::test]
    async fn an_action_is_stopped_at_the_controllers_bound_with_a_definite_answer() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path(), "5");
        let t0 = Instant::now();
        let r = h
            .handle(cmd(1, 300, Action::Promote(DrbdPromote { force: false })))
            .await;
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(!r.ok);
        assert!(
            r.error.contains("did not finish within the 300 ms"),
            "{}",
            r.error
        );
    }
}
