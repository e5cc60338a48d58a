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
        self.tokens.accept(Token {
            epoch: cmd.epoch,
            term: cmd.raft_term,
        })?;
        let mut a = self.actions.lock().await;
        Ok(match action {
            Action::Promote(p) => {
                a.promote(p.force).await?;
                format!("drbdadm primary{}", if p.force { " --force" } else { "" })
            }
            Action::Demote(_) => {
                a.demote().await?;
                "drbdadm secondary".into()
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
                check_ip(&a, &c.ip)?;
                a.claim_ip().await?;
                format!("{} configured, gratuitous ARP sent", c.ip)
            }
            Action::ReleaseIp(c) => {
                check_ip(&a, &c.ip)?;
                a.release_ip().await?;
                format!("{} released", c.ip)
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
