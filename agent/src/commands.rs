//! Executing the controller's commands on this host.
//!
//! Every command is checked before anything runs: it must be for this agent's
//! pair, and its fencing token (pair epoch, Raft term) must not be older than the
//! highest this agent accepted (S4; the token is persisted before acting). Commands
//! run one at a time. After each, the host status (mount, exports, client IP) is
//! re-read and published, so the controller sees the effect in the next report.
//!
//! `RunSelfCheck` is read-only: it changes nothing on the host, so it is
//! accepted with any token (and records none), does not wait for a running
//! action, and publishes the fresh checks at once (a new report follows).
//!
//! The host status carries the self-checks of [`crate::selfcheck`] (run at
//! start, every 60 s and on demand; failures logged) followed by the checks of
//! the host state, re-read every 500 ms.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Mutex};
use understudy_proto::command::Action;
use understudy_proto::{Command, CommandResult, HostStatus, SelfCheck};

use crate::actions::HostActions;
use crate::epoch::{EpochStore, Token};
use crate::error::AgentError;
use crate::selfcheck::{self, SelfCheckPlan, SELF_CHECK_EVERY};

/// How often the host status is re-read between commands.
const STATUS_EVERY: Duration = Duration::from_millis(500);

/// Why the self-checks run (it decides what is logged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Agent start: every failure is logged.
    Start,
    /// The periodic re-run: only changes are logged.
    Periodic,
    /// The controller's `RunSelfCheck`: changes are logged.
    Command,
}

/// Runs commands and keeps the host status current.
pub struct Handler {
    pair_id: String,
    tokens: EpochStore,
    actions: Mutex<HostActions>,
    host: watch::Sender<HostStatus>,
    plan: Arc<SelfCheckPlan>,
    /// The latest self-check results and when they ran (Unix ms).
    checked: std::sync::Mutex<(Vec<SelfCheck>, i64)>,
    /// The latest host state, with its own checks.
    live: std::sync::Mutex<HostStatus>,
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Handler {
    pub fn new(
        pair_id: String,
        tokens: EpochStore,
        actions: HostActions,
        plan: SelfCheckPlan,
    ) -> Arc<Self> {
        Arc::new(Self {
            pair_id,
            tokens,
            actions: Mutex::new(actions),
            host: watch::channel(HostStatus::default()).0,
            plan: Arc::new(plan),
            checked: std::sync::Mutex::new((Vec::new(), 0)),
            live: std::sync::Mutex::new(HostStatus::default()),
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

    /// Run the self-checks now, then re-read the host status forever (and
    /// the self-checks every [`SELF_CHECK_EVERY`]).
    pub async fn watch_host(self: Arc<Self>) {
        self.run_self_checks(Trigger::Start).await;
        let mut checks_due = tokio::time::Instant::now() + SELF_CHECK_EVERY;
        loop {
            self.refresh().await;
            if tokio::time::Instant::now() >= checks_due {
                self.run_self_checks(Trigger::Periodic).await;
                checks_due = tokio::time::Instant::now() + SELF_CHECK_EVERY;
            }
            tokio::time::sleep(STATUS_EVERY).await;
        }
    }

    /// Run the self-checks now, log what `why` asks for, publish the results
    /// in the host status and return them.
    pub async fn run_self_checks(&self, why: Trigger) -> Vec<SelfCheck> {
        let plan = self.plan.clone();
        let results = tokio::task::spawn_blocking(move || plan.run())
            .await
            .unwrap_or_else(|e| {
                vec![selfcheck::fail(
                    "self_check",
                    selfcheck::ERROR,
                    format!("the self-check itself failed: {e}"),
                    "restart the agent and report this",
                )]
            });
        let at = crate::session::unix_ms();
        let previous = std::mem::replace(&mut *lock(&self.checked), (results.clone(), at)).0;
        log_self_checks(&previous, &results, why);
        self.publish();
        results
    }

    /// Publish the self-checks followed by the latest host state.
    fn publish(&self) {
        let mut st = lock(&self.live).clone();
        let (checks, at) = lock(&self.checked).clone();
        st.self_checks.splice(0..0, checks);
        st.self_check_at_unix_ms = at;
        self.host.send_if_modified(|cur| {
            if *cur != st {
                *cur = st;
                true
            } else {
                false
            }
        });
    }

    /// Re-read the host state now and publish it.
    pub async fn refresh(&self) {
        let st = self.actions.lock().await.status().await;
        *lock(&self.live) = st;
        self.publish();
    }

    /// Run one command and say how it went.
    pub async fn handle(&self, cmd: Command) -> CommandResult {
        let t0 = Instant::now();
        let span = tracing::info_span!("command", pair = %cmd.pair_id, epoch = cmd.epoch, term = cmd.raft_term, id = cmd.command_id);
        let res = tracing::Instrument::instrument(self.exec(&cmd), span.clone()).await;
        // A self-check published its results itself and must not wait for
        // the host (a running action holds it).
        if !matches!(cmd.action, Some(Action::SelfCheck(_))) {
            self.refresh().await;
        }
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
        if let Action::SelfCheck(_) = action {
            // Read-only: changes nothing, so any token will do and none is
            // recorded (S4 orders changes, not reads).
            let run = async {
                self.run_self_checks(Trigger::Command).await;
                Ok(selfcheck::summary(&self.host.borrow().self_checks))
            };
            return bounded(cmd.timeout_ms, run).await;
        }
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
        bounded(cmd.timeout_ms, Self::act(&mut a, action)).await
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
            // Read-only: `exec` runs it before the token check, never here.
            Action::SelfCheck(_) => {
                return Err(AgentError::Refused(
                    "a self-check does not run as a host action".into(),
                ))
            }
        })
    }
}

/// Stop `run` at the controller's bound (0: none) with a definite answer.
async fn bounded(
    timeout_ms: u64,
    run: impl std::future::Future<Output = Result<String, AgentError>>,
) -> Result<String, AgentError> {
    if timeout_ms == 0 {
        return run.await;
    }
    tokio::time::timeout(Duration::from_millis(timeout_ms), run)
        .await
        .map_err(|_| AgentError::ActionTimeout { timeout_ms })?
}

/// Log failed checks: all of them at start, afterwards only what changed.
fn log_self_checks(previous: &[SelfCheck], now: &[SelfCheck], why: Trigger) {
    let failed_before = |c: &SelfCheck| {
        previous
            .iter()
            .any(|p| p.name == c.name && !p.ok && p.detail == c.detail)
    };
    for c in now.iter().filter(|c| !c.ok) {
        if why == Trigger::Start || !failed_before(c) {
            tracing::warn!(check = %c.name, severity = %c.severity, fix = %c.fix, "self-check failed: {}", c.detail);
        }
    }
    for c in now.iter().filter(|c| c.ok) {
        if previous.iter().any(|p| p.name == c.name && !p.ok) {
            tracing::info!(check = %c.name, "self-check passes again: {}", c.detail);
        }
    }
    if why == Trigger::Start {
        tracing::info!("self-check at start: {}", selfcheck::summary(now));
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
    use understudy_proto::{DrbdDemote, DrbdPromote, RunSelfCheck};

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
        let plan = SelfCheckPlan {
            config_path: None,
            drbdadm: fake,
            drbdsetup: "/nonexistent/drbdsetup".into(),
            fence_peer_handler: None,
            state_dir: dir.join("state"),
            serving: None,
        };
        Handler::new("p".into(), tokens, host, plan)
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
    async fn a_self_check_is_read_only_accepted_at_any_epoch_and_summarized() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path(), "0");
        let mut host = h.host_status();
        // A change at epoch 5 is accepted and recorded.
        assert!(h.handle(cmd(5, 0, Action::Demote(DrbdDemote {}))).await.ok);
        // A self-check with an older token still runs, and records nothing.
        let t0 = crate::session::unix_ms();
        let r = h
            .handle(cmd(3, 5000, Action::SelfCheck(RunSelfCheck {})))
            .await;
        assert!(r.ok, "{r:?}");
        assert_eq!(r.command_id, 3, "the id is acknowledged");
        assert_eq!(
            r.detail,
            "3 checks, 1 failed: drbdsetup /nonexistent/drbdsetup does not exist: apt-get install -y drbd-utils (or set drbdsetup under [drbd] in the agent configuration to its path)"
        );
        assert_eq!(h.token().epoch, 5);
        // So does one with a newer token, which is not recorded either.
        assert!(
            h.handle(cmd(9, 0, Action::SelfCheck(RunSelfCheck {})))
                .await
                .ok
        );
        assert_eq!(h.token().epoch, 5, "a read does not move the fence");
        // The results are published at once, with when they ran.
        let st = host.borrow_and_update().clone();
        assert!(st.self_check_at_unix_ms >= t0, "{st:?}");
        let names: Vec<&str> = st.self_checks.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["drbdadm", "drbdsetup", "state_dir"]);
        let setup = &st.self_checks[1];
        assert!(!setup.ok && setup.severity == "error" && !setup.fix.is_empty());
        // Another pair's self-check is still refused.
        let mut other = cmd(1, 0, Action::SelfCheck(RunSelfCheck {}));
        other.pair_id = "q".into();
        assert!(!h.handle(other).await.ok);
    }

    #[tokio::test]
    async fn a_self_check_does_not_wait_for_a_running_action() {
        let dir = tempfile::tempdir().unwrap();
        let h = handler(dir.path(), "3");
        let busy = tokio::spawn({
            let h = h.clone();
            async move { h.handle(cmd(1, 0, Action::Demote(DrbdDemote {}))).await }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let t0 = Instant::now();
        let r = h
            .handle(cmd(1, 0, Action::SelfCheck(RunSelfCheck {})))
            .await;
        assert!(r.ok, "{r:?}");
        assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
        assert!(!busy.is_finished(), "the demote still runs");
        busy.abort();
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
