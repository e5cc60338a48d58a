//! S3, the fence: before the backup serves, the old primary must be verifiably
//! unable to serve clients.
//!
//! A fence is done only when one of these is **verified** through the cloud API:
//!
//! 1. the client IP is away from the old primary: [`Cloud::move_client_ip`]
//!    answered and [`Cloud::ip_holders`] no longer lists its interface; or, as a
//!    fallback when that cannot be verified before the deadline,
//! 2. the old primary's instance is `Stopped` or `Terminated`
//!    ([`Cloud::instance_state`]). `Stopping` is not enough: the instance may
//!    still answer.
//!
//! Isolation (security groups on EC2, the link on the local cloud) also runs,
//! because it stops the old primary's DRBD and agent traffic, but it is never a
//! fence by itself: EC2 keeps connections it already tracks when security groups
//! are replaced, so an isolated instance may go on serving its NFS clients.
//!
//! A forced stop is fired at the start and never awaited: it runs in its own task
//! on its own deadline and logs its outcome, so a slow stop cannot delay or fail a
//! verified IP move. Isolation also runs in its own task, bounded by the fence
//! deadline; if the fence is verified first, isolation goes on in the background
//! and the result says so.
//!
//! Every cloud call is bounded by the fence deadline. Transient errors (throttling,
//! timeouts, unverified results) are retried with a backoff from
//! [`RETRY_FIRST`] doubling up to [`RETRY_MAX`] (the last try [`RETRY_FIRST`]
//! before the deadline); refusals and unknown ids end that line of work at once.
//!
//! A round that ends without a proof because the IP move only met transient
//! trouble (the cloud API slow, throttling, failing with 5xx, hung, or a move
//! not applied yet) is followed by another round of the same deadline, until
//! [`Fencer::retry_for`] has passed since the start: an API outage of seconds
//! must not leave the pair `Blocked` for an operator, and nothing is promoted
//! meanwhile (the proof is still required). A refused move (wrong zone, unknown
//! interface, credentials) ends the fence after its round, as before. The forced
//! stop is fired once; isolation runs until the last round's end.
//!
//! [`Fencer`] needs only a [`Cloud`], so it is tested without a Raft node against
//! the strict in-memory cloud with injected faults; `failover::Executor::fence`
//! runs it for a plan's Fence step.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;
use understudy_cloud::{Cloud, CloudError, CloudServer, InstanceState};

/// First pause between two tries of a failed cloud call.
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// Longest pause between two tries.
pub const RETRY_MAX: Duration = Duration::from_millis(800);

/// One fence of one old primary.
#[derive(Clone)]
pub struct Fencer {
    pub cloud: Arc<dyn Cloud>,
    /// The pair's client IP.
    pub client_ip: String,
    /// The old primary, to be fenced.
    pub from: CloudServer,
    /// The backup that takes the client IP.
    pub to: CloudServer,
    /// One round of the fence: verified within this long, or the round fails.
    pub deadline: Duration,
    /// Rounds whose IP move failed only on transient errors are repeated until
    /// this long after the start (`<= deadline`: a single round).
    pub retry_for: Duration,
    /// How long the forced stop (fired, not awaited) is retried.
    pub forced_stop_deadline: Duration,
}

/// What proved the old primary fenced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// The client IP verified away from the old primary's interface.
    IpMoved {
        /// The interfaces holding the IP at the check (none on clouds where the
        /// backup's agent claims it in a later step).
        holders: Vec<String>,
        /// Tries of move + check it took.
        tries: u32,
        /// The instance's state if it was also verified stopped by then.
        also_stopped: Option<InstanceState>,
    },
    /// Fallback: the IP move could not be verified, the instance is verified
    /// stopped or terminated.
    Stopped {
        state: InstanceState,
        /// Why the IP move was not verified.
        ip_failure: String,
        /// The client IP moved to the backup after the stop (the holders then),
        /// or why not. Not part of the proof: the instance is stopped, so moving
        /// is safe, and on EC2 the backup receives nothing for the address until
        /// the VPC has it on the backup's interface (a stopped instance keeps
        /// its secondary addresses).
        moved_after: Result<Vec<String>, String>,
    },
}

/// Where isolation was when the fence finished.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Isolation {
    /// Still trying (continues in the background until the fence deadline).
    Running,
    /// Isolated and verified with [`Cloud::is_isolated`].
    Verified,
    /// Gave up: the reason.
    Failed(String),
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Isolation::Running => f.write_str("not verified yet (continues in the background)"),
            Isolation::Verified => f.write_str("verified"),
            Isolation::Failed(e) => write!(f, "failed ({e})"),
        }
    }
}

/// Outcome of the forced stop, logged by its task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// The provider accepted the stop request (the instance may still be stopping).
    Requested { tries: u32 },
    /// The request failed for good, or its deadline passed.
    Failed(String),
}

impl fmt::Display for StopOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StopOutcome::Requested { tries } => write!(f, "requested (try {tries})"),
            StopOutcome::Failed(e) => write!(f, "not requested: {e}"),
        }
    }
}

/// A verified fence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fenced {
    pub server: String,
    pub instance: String,
    pub interface: String,
    pub client_ip: String,
    pub proof: Proof,
    pub isolation: Isolation,
    pub took: Duration,
    /// The round that verified it (1: the first; more after transient failures).
    pub round: u32,
}

impl fmt::Display for Fenced {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (s, ip) = (&self.server, &self.client_ip);
        match &self.proof {
            Proof::IpMoved {
                holders,
                tries,
                also_stopped,
            } => {
                write!(
                    f,
                    "verified: client IP {ip} no longer on {s}'s interface {} (holders now {holders:?}, try {tries})",
                    self.interface
                )?;
                if let Some(st) = also_stopped {
                    write!(f, "; also verified: instance {} {st}", self.instance)?;
                }
            }
            Proof::Stopped {
                state,
                ip_failure,
                moved_after,
            } => {
                write!(
                    f,
                    "verified: instance {} of {s} is {state} (fallback: client IP {ip} NOT verified away: {ip_failure})",
                    self.instance
                )?;
                match moved_after {
                    Ok(holders) => write!(
                        f,
                        "; then client IP {ip} moved off the stopped {s} (holders now {holders:?})"
                    )?,
                    Err(e) => write!(
                        f,
                        "; client IP {ip} NOT moved off the stopped {s} either ({e}): the backup's clients may not reach it"
                    )?,
                }
            }
        }
        write!(
            f,
            "; isolation {}; forced stop fired, not awaited; {} ms",
            self.isolation,
            self.took.as_millis()
        )?;
        if self.round > 1 {
            write!(
                f,
                "; round {} (the rounds before failed on transient cloud errors)",
                self.round
            )?;
        }
        Ok(())
    }
}

/// The old primary could not be fenced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceError {
    #[error(
        "could not fence {server} within {deadline_ms} ms ({rounds} rounds): client IP {client_ip} not verified away from interface {interface} ({ip_failure}); instance {instance} not verified stopped ({stop_failure}); isolation {isolation}. \
         Power {server} off by hand (stop instance {instance}) or remove {client_ip} from {interface}, then promote by hand"
    )]
    NotFenced {
        server: String,
        instance: String,
        interface: String,
        client_ip: String,
        deadline_ms: u128,
        /// Rounds tried (more than 1 after transient failures).
        rounds: u32,
        ip_failure: String,
        stop_failure: String,
        isolation: Isolation,
    },
}

/// The result of [`Fencer::run`] and the work it left running.
pub struct FenceRun {
    pub result: Result<Fenced, FenceError>,
    /// The forced stop's task (on its own deadline); dropping the handle detaches
    /// it, its outcome is logged either way.
    pub forced_stop: JoinHandle<StopOutcome>,
    /// The isolation task (bounded by the fence deadline); likewise.
    pub isolation: JoinHandle<Isolation>,
}

/// How a retried call ended.
enum Ended<T> {
    Ok {
        value: T,
        tries: u32,
    },
    /// Why it ended without success (the last error, or the deadline).
    Failed(String),
    /// Ended by an error that does not go away by itself (a refusal, an
    /// unknown id): another round would meet it again.
    Refused(String),
}

impl<T> Ended<T> {
    fn failure(&self) -> Option<&str> {
        match self {
            Ended::Ok { .. } => None,
            Ended::Failed(e) | Ended::Refused(e) => Some(e),
        }
    }
}

/// Whether an error can go away by itself (so a retry may succeed).
fn retryable(e: &CloudError) -> bool {
    matches!(
        e,
        CloudError::Transient { .. } | CloudError::Unverified { .. }
    )
}

/// Try `attempt` until it succeeds, fails for good, or `deadline` leaves no room
/// for another try. Each try is cut at the deadline; when the next pause would
/// reach it, the last try is made [`RETRY_FIRST`] before it.
async fn retry<T, F, Fut>(what: &str, deadline: Instant, mut attempt: F) -> Ended<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, CloudError>>,
{
    let mut pause = RETRY_FIRST;
    let mut tries = 0;
    let mut last: Option<String> = None;
    let before = |last: &Option<String>| match last {
        Some(e) => format!("; the try before: {e}"),
        None => String::new(),
    };
    loop {
        if Instant::now() >= deadline {
            return Ended::Failed(format!(
                "the deadline had passed before try {}{}",
                tries + 1,
                before(&last)
            ));
        }
        tries += 1;
        match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(Ok(value)) => return Ended::Ok { value, tries },
            Ok(Err(e)) if retryable(&e) => {
                tracing::debug!(what, tries, error = %e, "retrying");
                last = Some(format!("{e} (try {tries})"));
            }
            Ok(Err(e)) => return Ended::Refused(format!("{e} (try {tries}, not retried)")),
            Err(_) => {
                return Ended::Failed(format!(
                    "no answer before the deadline (try {tries}){}",
                    before(&last)
                ))
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if pause >= left {
            // One last try, leaving it RETRY_FIRST to answer, if there is room.
            pause = left.saturating_sub(RETRY_FIRST);
            if pause.is_zero() {
                let e = last.unwrap_or_default();
                return Ended::Failed(format!(
                    "{e}; no time left for another try before the deadline"
                ));
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

impl Fencer {
    /// Fence the old primary: see the module documentation.
    pub async fn run(&self) -> FenceRun {
        let span = tracing::info_span!(
            "fence",
            server = %self.from.server_id,
            instance = %self.from.instance_id,
            ip = %self.client_ip
        );
        self.run_inner().instrument(span).await
    }

    async fn run_inner(&self) -> FenceRun {
        let t0 = Instant::now();
        // (Absurd configured times: a year is as good as never.)
        let far = |d: Duration| {
            t0.checked_add(d)
                .unwrap_or(t0 + Duration::from_secs(365 * 86_400))
        };
        let give_up = far(self.retry_for.max(self.deadline));
        let forced_stop = self.fire_forced_stop();
        let (iso_tx, mut iso_rx) = watch::channel(Isolation::Running);
        let isolation = self.spawn_isolation(give_up, iso_tx);
        let fenced = |proof, isolation: Isolation, round: u32| {
            let took = t0.elapsed();
            tracing::info!(?took, %isolation, round, "fence verified");
            Fenced {
                server: self.from.server_id.clone(),
                instance: self.from.instance_id.clone(),
                interface: self.from.interface_id.clone(),
                client_ip: self.client_ip.clone(),
                proof,
                isolation,
                took,
                round,
            }
        };
        let mut round = 0;
        let result = loop {
            round += 1;
            let deadline = Instant::now()
                .checked_add(self.deadline)
                .unwrap_or(give_up)
                .min(give_up);
            let ip = self.verify_ip_moved(deadline);
            let stop = self.verify_stopped(deadline);
            tokio::pin!(ip, stop);
            let (mut ip_res, mut stop_res) = (None, None);
            loop {
                tokio::select! {
                    r = &mut ip, if ip_res.is_none() => ip_res = Some(r),
                    r = &mut stop, if stop_res.is_none() => stop_res = Some(r),
                }
                match (&ip_res, &stop_res) {
                    // The IP move is the fence of choice (it also gives the backup the
                    // address): wait for it while it may still succeed.
                    (Some(Ended::Ok { .. }), _) => break,
                    (Some(_), Some(_)) => break,
                    _ => {}
                }
            }
            match (ip_res.expect("set"), stop_res) {
                (Ended::Ok { value, tries }, stop) => {
                    break Ok(fenced(
                        Proof::IpMoved {
                            holders: value,
                            tries,
                            also_stopped: match stop {
                                Some(Ended::Ok { value, .. }) => Some(value),
                                _ => None,
                            },
                        },
                        iso_rx.borrow().clone(),
                        round,
                    ))
                }
                (ip, Some(Ended::Ok { value, .. })) => {
                    let ip_failure = ip.failure().unwrap_or_default().to_string();
                    tracing::warn!(%ip_failure, state = %value, "client IP move not verified; fenced by the verified stop");
                    // Fenced. The address must still reach the backup: the move
                    // again, within what is left of the fence's time (a refusal
                    // ends it at once).
                    let moved_after = match self.verify_ip_moved(give_up).await {
                        Ended::Ok { value, tries } => {
                            tracing::info!(holders = ?value, tries, "client IP moved off the stopped old primary");
                            Ok(value)
                        }
                        Ended::Failed(e) | Ended::Refused(e) => {
                            tracing::warn!(error = %e, "client IP not moved off the stopped old primary");
                            Err(e)
                        }
                    };
                    break Ok(fenced(
                        Proof::Stopped {
                            state: value,
                            ip_failure,
                            moved_after,
                        },
                        iso_rx.borrow().clone(),
                        round,
                    ));
                }
                (ip, stop) => {
                    let ip_failure = ip.failure().unwrap_or_default().to_string();
                    let stop_failure = stop
                        .as_ref()
                        .and_then(|s| s.failure())
                        .unwrap_or("not checked")
                        .to_string();
                    let again = matches!(ip, Ended::Failed(_))
                        && give_up.saturating_duration_since(Instant::now()) > RETRY_FIRST;
                    if again {
                        tracing::warn!(
                            round,
                            %ip_failure,
                            %stop_failure,
                            left_ms = give_up.saturating_duration_since(Instant::now()).as_millis() as u64,
                            "fence round failed on transient errors; another round"
                        );
                        tokio::time::sleep(RETRY_FIRST).await;
                        continue;
                    }
                    // Isolation is bounded by the same deadline: its result is due.
                    let _ = tokio::time::timeout(
                        Duration::from_millis(100),
                        iso_rx.wait_for(|s| *s != Isolation::Running),
                    )
                    .await;
                    let e = FenceError::NotFenced {
                        server: self.from.server_id.clone(),
                        instance: self.from.instance_id.clone(),
                        interface: self.from.interface_id.clone(),
                        client_ip: self.client_ip.clone(),
                        deadline_ms: self.retry_for.max(self.deadline).as_millis(),
                        rounds: round,
                        ip_failure,
                        stop_failure,
                        isolation: iso_rx.borrow().clone(),
                    };
                    tracing::warn!(took = ?t0.elapsed(), error = %e, "fence failed");
                    break Err(e);
                }
            }
        };
        FenceRun {
            result,
            forced_stop,
            isolation,
        }
    }

    /// Move the client IP and check the old primary's interface no longer holds it.
    async fn verify_ip_moved(&self, deadline: Instant) -> Ended<Vec<String>> {
        let (ip, from, to) = (&self.client_ip, &self.from, &self.to);
        retry("move the client IP", deadline, || async move {
            self.cloud.move_client_ip(ip, from, to).await?;
            let holders = self.cloud.ip_holders(ip).await?;
            if holders.contains(&from.interface_id) {
                return Err(CloudError::Unverified {
                    provider: self.cloud.name(),
                    op: "move_client_ip",
                    reason: format!(
                        "{ip} is still on {}'s interface {} (holders {holders:?})",
                        from.server_id, from.interface_id
                    ),
                });
            }
            Ok(holders)
        })
        .await
    }

    /// Wait for the old primary's instance to be verified stopped or terminated.
    async fn verify_stopped(&self, deadline: Instant) -> Ended<InstanceState> {
        let from = &self.from;
        retry("verify the instance stopped", deadline, || async move {
            match self.cloud.instance_state(from).await? {
                st @ (InstanceState::Stopped | InstanceState::Terminated) => Ok(st),
                st => Err(CloudError::Unverified {
                    provider: self.cloud.name(),
                    op: "force_stop",
                    reason: format!(
                        "instance {} is {st}, not Stopped or Terminated",
                        from.instance_id
                    ),
                }),
            }
        })
        .await
    }

    /// Fire the forced stop in its own task, on its own deadline, in the current span.
    fn fire_forced_stop(&self) -> JoinHandle<StopOutcome> {
        let cloud = self.cloud.clone();
        let from = self.from.clone();
        let deadline = Instant::now() + self.forced_stop_deadline;
        let limit_ms = self.forced_stop_deadline.as_millis();
        tokio::spawn(
            async move {
                let out = match retry("force stop", deadline, || cloud.force_stop(&from)).await {
                    Ended::Ok { tries, .. } => StopOutcome::Requested { tries },
                    Ended::Failed(e) | Ended::Refused(e) => {
                        StopOutcome::Failed(format!("{e} (forced stop deadline {limit_ms} ms)"))
                    }
                };
                match &out {
                    StopOutcome::Requested { .. } => {
                        tracing::info!(outcome = %out, "forced stop of the old primary")
                    }
                    StopOutcome::Failed(_) => tracing::warn!(
                        outcome = %out,
                        "forced stop of the old primary failed; stop the instance by hand"
                    ),
                }
                out
            }
            .instrument(tracing::Span::current()),
        )
    }

    /// Isolate and verify in its own task until `deadline`; the status is
    /// published on `tx` and returned.
    fn spawn_isolation(
        &self,
        deadline: Instant,
        tx: watch::Sender<Isolation>,
    ) -> JoinHandle<Isolation> {
        let cloud = self.cloud.clone();
        let from = self.from.clone();
        tokio::spawn(
            async move {
                let (cloud, from) = (&cloud, &from);
                let r = retry("isolate", deadline, || async move {
                    cloud.isolate(from).await?;
                    if cloud.is_isolated(from).await? {
                        Ok(())
                    } else {
                        Err(CloudError::Unverified {
                            provider: cloud.name(),
                            op: "isolate",
                            reason: format!("{} is not isolated yet", from.server_id),
                        })
                    }
                })
                .await;
                let out = match r {
                    Ended::Ok { .. } => {
                        tracing::info!("old primary isolated (verified)");
                        Isolation::Verified
                    }
                    Ended::Failed(e) | Ended::Refused(e) => {
                        tracing::warn!(error = %e, "isolating the old primary failed");
                        Isolation::Failed(e)
                    }
                };
                let _ = tx.send(out.clone());
                out
            }
            .instrument(tracing::Span::current()),
        )
    }
}

#[cfg(test)]
mod moto_tests;

#[cfg(test)]
mod tests {
    //! The fence against the strict in-memory cloud (EC2's rules), with faults
    //! injected by `FaultyCloud`. Real time, short deadlines.

    use super::*;
    use understudy_cloud::faulty::{Fault, FaultyCloud, Op};
    use understudy_cloud::strict::StrictCloud;

    const IP: &str = "10.0.1.100";

    fn srv(id: &str) -> CloudServer {
        CloudServer {
            server_id: id.into(),
            instance_id: format!("i-{id}"),
            interface_id: format!("eni-{id}"),
            zone: "us-east-1a".into(),
        }
    }

    /// The old primary `a` holds the client IP; `b` is the backup.
    fn world() -> Arc<FaultyCloud<StrictCloud>> {
        let strict = StrictCloud::default();
        strict.add_server(&srv("a"));
        strict.add_server(&srv("b"));
        strict.place_ip(IP, "eni-a");
        Arc::new(FaultyCloud::new(strict))
    }

    fn fencer(cloud: &Arc<FaultyCloud<StrictCloud>>, deadline_ms: u64) -> Fencer {
        Fencer {
            cloud: cloud.clone(),
            client_ip: IP.into(),
            from: srv("a"),
            to: srv("b"),
            deadline: Duration::from_millis(deadline_ms),
            retry_for: Duration::ZERO,
            forced_stop_deadline: Duration::from_millis(5000),
        }
    }

    fn refused(op: Op, reason: &str) -> Fault {
        Fault::Error(CloudError::Refused {
            provider: "strict",
            op: op.as_str(),
            reason: reason.into(),
        })
    }

    async fn state(c: &FaultyCloud<StrictCloud>, id: &str) -> InstanceState {
        c.inner().instance_state(&srv(id)).await.unwrap()
    }

    #[tokio::test]
    async fn a_verified_ip_move_fences_and_stop_and_isolation_run_alongside() {
        let c = world();
        let run = fencer(&c, 2000).run().await;
        let f = run.result.expect("fenced");
        assert_eq!(
            f.proof,
            Proof::IpMoved {
                holders: vec!["eni-b".into()],
                tries: 1,
                also_stopped: None
            }
        );
        let detail = f.to_string();
        assert!(
            detail.starts_with(
                "verified: client IP 10.0.1.100 no longer on a's interface eni-a (holders now [\"eni-b\"], try 1)"
            ),
            "{detail}"
        );
        assert!(
            detail.contains("forced stop fired, not awaited"),
            "{detail}"
        );
        assert!(f.took < Duration::from_millis(500), "{:?}", f.took);
        assert_eq!(
            run.forced_stop.await.unwrap(),
            StopOutcome::Requested { tries: 1 }
        );
        assert_eq!(run.isolation.await.unwrap(), Isolation::Verified);
        assert_eq!(state(&c, "a").await, InstanceState::Stopping);
        assert_eq!(state(&c, "b").await, InstanceState::Running);
        assert!(c.inner().is_isolated(&srv("a")).await.unwrap());
        assert!(!c.inner().is_isolated(&srv("b")).await.unwrap());
        assert_eq!(c.inner().ip_holders(IP).await.unwrap(), vec!["eni-b"]);
    }

    #[tokio::test]
    async fn isolation_alone_is_not_a_fence() {
        // The IP cannot move; isolation works; the instance never gets past
        // Stopping. EC2 keeps tracked connections through a security-group
        // change, so this old primary may still serve: no fence.
        let c = world();
        c.inject(Op::MoveClientIp, refused(Op::MoveClientIp, "quota"), None);
        let t0 = std::time::Instant::now();
        let run = fencer(&c, 600).run().await;
        let took = t0.elapsed();
        let e = run.result.expect_err("isolation must not fence");
        let FenceError::NotFenced {
            ip_failure,
            stop_failure,
            isolation,
            ..
        } = &e;
        assert_eq!(*isolation, Isolation::Verified);
        assert!(ip_failure.contains("quota"), "{ip_failure}");
        assert!(
            stop_failure.contains("instance i-a is Stopping"),
            "{stop_failure}"
        );
        let msg = e.to_string();
        assert!(msg.starts_with("could not fence a within 600 ms"), "{msg}");
        assert!(msg.contains("Power a off by hand"), "{msg}");
        // It waited for the stop until the deadline, not longer.
        assert!(took >= Duration::from_millis(400), "{took:?}");
        assert!(took < Duration::from_millis(900), "{took:?}");
        assert!(c.inner().is_isolated(&srv("a")).await.unwrap());
        assert_eq!(c.inner().ip_holders(IP).await.unwrap(), vec!["eni-a"]);
    }

    #[tokio::test]
    async fn fallback_ip_move_fails_and_the_instance_is_verified_stopped() {
        // The move is refused for good; the forced stop completes after 200 ms.
        let c = world();
        c.inner().stop_completes_after(Duration::from_millis(200));
        c.inject(
            Op::MoveClientIp,
            refused(Op::MoveClientIp, "AuthFailure"),
            None,
        );
        let run = fencer(&c, 3000).run().await;
        let f = run.result.expect("fenced by the stop");
        let Proof::Stopped {
            state, ip_failure, ..
        } = &f.proof
        else {
            panic!("{f}")
        };
        assert_eq!(*state, InstanceState::Stopped);
        assert!(ip_failure.contains("AuthFailure"), "{ip_failure}");
        assert!(ip_failure.contains("not retried"), "{ip_failure}");
        let detail = f.to_string();
        assert!(
            detail.starts_with(
                "verified: instance i-a of a is Stopped (fallback: client IP 10.0.1.100 NOT verified away: "
            ),
            "{detail}"
        );
        // A refused move is not retried: the fence ends once the stop is seen,
        // long before the deadline.
        assert!(f.took >= Duration::from_millis(200), "{:?}", f.took);
        assert!(f.took < Duration::from_millis(1500), "{:?}", f.took);
        // Once in the fence, once after the stop (refused again, at once).
        assert_eq!(c.calls(Op::MoveClientIp), 2);
        assert!(
            detail.contains("NOT moved off the stopped a either"),
            "{detail}"
        );
    }

    #[tokio::test]
    async fn fallback_waits_for_a_retried_ip_move_until_the_deadline() {
        // The move keeps failing transiently: it is retried until the deadline,
        // even though the instance is already terminated; then the fallback.
        let c = world();
        c.inner().set_state("i-a", InstanceState::Terminated);
        c.inner().fail("move_client_ip", true);
        let run = fencer(&c, 800).run().await;
        let f = run.result.expect("fenced by the stop");
        let Proof::Stopped {
            state, ip_failure, ..
        } = &f.proof
        else {
            panic!("{f}")
        };
        assert_eq!(*state, InstanceState::Terminated);
        assert!(ip_failure.contains("injected failure"), "{ip_failure}");
        assert!(
            c.calls(Op::MoveClientIp) >= 3,
            "{}",
            c.calls(Op::MoveClientIp)
        );
        assert!(f.took >= Duration::from_millis(300), "{:?}", f.took);
        assert!(f.took < Duration::from_millis(1000), "{:?}", f.took);
    }

    #[tokio::test]
    async fn ip_move_fails_and_instance_not_stopped_fails_with_the_reasons() {
        let c = world();
        c.inner().fail("move_client_ip", true);
        c.inject(
            Op::ForceStop,
            refused(Op::ForceStop, "UnauthorizedOperation"),
            None,
        );
        let run = fencer(&c, 500).run().await;
        let e = run.result.expect_err("not fenced");
        let FenceError::NotFenced {
            ip_failure,
            stop_failure,
            ..
        } = &e;
        assert!(ip_failure.contains("injected failure"), "{ip_failure}");
        assert!(
            stop_failure.contains("instance i-a is Running"),
            "{stop_failure}"
        );
        let out = run.forced_stop.await.unwrap();
        let StopOutcome::Failed(why) = &out else {
            panic!("{out}")
        };
        assert!(why.contains("UnauthorizedOperation"), "{why}");
        assert_eq!(state(&c, "a").await, InstanceState::Running);
    }

    #[tokio::test]
    async fn a_hung_cloud_fails_the_fence_at_the_deadline() {
        let c = world();
        for op in Op::ALL {
            c.hang(op);
        }
        let mut f = fencer(&c, 500);
        f.forced_stop_deadline = Duration::from_millis(800);
        let t0 = std::time::Instant::now();
        let run = f.run().await;
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(500), "{took:?}");
        assert!(took < Duration::from_millis(750), "{took:?}");
        let e = run.result.expect_err("not fenced");
        let FenceError::NotFenced {
            ip_failure,
            stop_failure,
            isolation,
            ..
        } = &e;
        assert_eq!(ip_failure, "no answer before the deadline (try 1)");
        assert_eq!(stop_failure, "no answer before the deadline (try 1)");
        assert_eq!(
            *isolation,
            Isolation::Failed("no answer before the deadline (try 1)".into())
        );
        // The forced stop ends on its own deadline.
        let out = run.forced_stop.await.unwrap();
        let stop_took = t0.elapsed();
        assert_eq!(
            out,
            StopOutcome::Failed(
                "no answer before the deadline (try 1) (forced stop deadline 800 ms)".into()
            )
        );
        assert!(stop_took >= Duration::from_millis(800), "{stop_took:?}");
        assert!(stop_took < Duration::from_millis(1100), "{stop_took:?}");
    }

    #[tokio::test]
    async fn a_slow_forced_stop_neither_delays_nor_fails_a_verified_ip_move() {
        let c = world();
        c.inject(
            Op::ForceStop,
            Fault::Delay(Duration::from_millis(1500)),
            None,
        );
        let run = fencer(&c, 1000).run().await;
        let f = run.result.expect("fenced");
        assert!(matches!(f.proof, Proof::IpMoved { .. }), "{f}");
        assert!(f.took < Duration::from_millis(400), "{:?}", f.took);
        // The stop is still on its way, and arrives after the fence.
        assert!(!run.forced_stop.is_finished());
        assert_eq!(state(&c, "a").await, InstanceState::Running);
        assert_eq!(
            run.forced_stop.await.unwrap(),
            StopOutcome::Requested { tries: 1 }
        );
        assert_eq!(state(&c, "a").await, InstanceState::Stopping);
    }

    #[tokio::test]
    async fn a_hung_forced_stop_and_a_hung_isolation_do_not_hold_the_fence() {
        let c = world();
        c.hang(Op::ForceStop);
        c.hang(Op::Isolate);
        let mut f = fencer(&c, 1000);
        f.forced_stop_deadline = Duration::from_millis(300);
        let run = f.run().await;
        let fenced = run.result.expect("fenced");
        assert!(
            fenced.took < Duration::from_millis(400),
            "{:?}",
            fenced.took
        );
        assert_eq!(fenced.isolation, Isolation::Running);
        let detail = fenced.to_string();
        assert!(
            detail.contains("isolation not verified yet (continues in the background)"),
            "{detail}"
        );
        assert!(matches!(
            run.forced_stop.await.unwrap(),
            StopOutcome::Failed(_)
        ));
        // Isolation gives up at the fence deadline.
        assert!(matches!(run.isolation.await.unwrap(), Isolation::Failed(_)));
    }

    #[tokio::test]
    async fn throttling_is_retried_within_the_deadline_then_succeeds() {
        let c = world();
        c.throttle(Op::MoveClientIp, 3);
        c.throttle(Op::InstanceState, 2);
        let run = fencer(&c, 3000).run().await;
        let f = run.result.expect("fenced");
        let Proof::IpMoved { tries, .. } = &f.proof else {
            panic!("{f}")
        };
        assert_eq!(*tries, 4);
        assert_eq!(c.calls(Op::MoveClientIp), 4);
        assert_eq!(c.faulted(Op::MoveClientIp), 3);
        // Pauses of 100, 200 and 400 ms between the tries.
        assert!(f.took >= Duration::from_millis(700), "{:?}", f.took);
        assert!(f.took < Duration::from_millis(1200), "{:?}", f.took);
        assert_eq!(c.inner().ip_holders(IP).await.unwrap(), vec!["eni-b"]);
    }

    #[tokio::test]
    async fn throttling_past_the_deadline_fails_with_the_throttling_error() {
        let c = world();
        c.throttle(Op::MoveClientIp, 1000);
        let run = fencer(&c, 800).run().await;
        let e = run.result.expect_err("not fenced");
        let FenceError::NotFenced { ip_failure, .. } = &e;
        assert!(ip_failure.contains("RequestLimitExceeded"), "{ip_failure}");
        assert!(
            ip_failure.ends_with("no time left for another try before the deadline"),
            "{ip_failure}"
        );
        assert_eq!(c.inner().ip_holders(IP).await.unwrap(), vec!["eni-a"]);
    }

    #[tokio::test]
    async fn an_acknowledged_move_that_left_the_ip_in_place_is_not_verified() {
        // The provider answers the move but the old interface still holds the IP
        // (moto keeps it on both; EC2 may be slow to apply it): retried, never
        // verified, and with the instance running the fence fails.
        let c = world();
        c.inject(Op::MoveClientIp, Fault::Unapplied, None);
        let run = fencer(&c, 500).run().await;
        let e = run.result.expect_err("not fenced");
        let FenceError::NotFenced { ip_failure, .. } = &e;
        assert!(
            ip_failure.contains("10.0.1.100 is still on a's interface eni-a (holders [\"eni-a\"])"),
            "{ip_failure}"
        );
        assert!(c.calls(Op::MoveClientIp) >= 2);
        assert!(c.calls(Op::IpHolders) >= 2);
    }

    #[tokio::test]
    async fn a_move_applied_late_is_verified_on_a_later_try() {
        let c = world();
        c.inject(Op::MoveClientIp, Fault::Unapplied, Some(2));
        let run = fencer(&c, 2000).run().await;
        let f = run.result.expect("fenced");
        let Proof::IpMoved { tries, holders, .. } = &f.proof else {
            panic!("{f}")
        };
        assert_eq!(
            (*tries, holders.as_slice()),
            (3, &["eni-b".to_string()][..])
        );
    }

    #[tokio::test]
    async fn a_cloud_hung_for_longer_than_a_round_fences_in_a_later_round() {
        // Every call hangs for 1.2 s (a dead API endpoint), then the API answers
        // again: rounds of 500 ms fail on "no answer", and the round after the
        // outage verifies the move. Nothing is claimed before that.
        let c = world();
        for op in Op::ALL {
            c.hang(op);
        }
        let c2 = c.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1200)).await;
            for op in Op::ALL {
                c2.clear(op);
            }
        });
        let mut f = fencer(&c, 500);
        f.retry_for = Duration::from_millis(5000);
        let run = f.run().await;
        let fenced = run.result.expect("fenced once the API answers");
        assert!(matches!(fenced.proof, Proof::IpMoved { .. }), "{fenced}");
        assert!(fenced.round >= 3, "{fenced}");
        assert!(fenced.took >= Duration::from_millis(1200), "{fenced}");
        assert!(fenced.took < Duration::from_millis(2500), "{fenced}");
        assert!(
            fenced
                .to_string()
                .contains("the rounds before failed on transient cloud errors"),
            "{fenced}"
        );
        assert_eq!(c.inner().ip_holders(IP).await.unwrap(), vec!["eni-b"]);
    }

    #[tokio::test]
    async fn transient_failures_past_the_retry_time_fail_with_the_rounds() {
        let c = world();
        c.inner().fail("move_client_ip", true);
        let mut f = fencer(&c, 300);
        f.retry_for = Duration::from_millis(1000);
        let t0 = std::time::Instant::now();
        let e = f.run().await.result.expect_err("not fenced");
        let took = t0.elapsed();
        assert!(took >= Duration::from_millis(900), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        let FenceError::NotFenced { rounds, .. } = &e;
        assert!(*rounds >= 3, "{e}");
        assert!(
            e.to_string()
                .starts_with("could not fence a within 1000 ms ("),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_refused_move_is_not_retried_in_further_rounds() {
        let c = world();
        c.inject(Op::MoveClientIp, refused(Op::MoveClientIp, "zone"), None);
        let mut f = fencer(&c, 400);
        f.retry_for = Duration::from_millis(10_000);
        let t0 = std::time::Instant::now();
        let e = f.run().await.result.expect_err("not fenced");
        assert!(
            t0.elapsed() < Duration::from_millis(900),
            "{:?}",
            t0.elapsed()
        );
        let FenceError::NotFenced { rounds, .. } = &e;
        assert_eq!(*rounds, 1, "{e}");
        assert_eq!(c.calls(Op::MoveClientIp), 1);
    }

    #[tokio::test]
    async fn after_a_stop_proof_the_client_ip_is_still_moved_to_the_backup() {
        // Every move is too slow for a round (800 ms > 500 ms): the stop proves
        // the fence; then the move is given the time left, and lands, so the
        // backup's interface holds the address (EC2 delivers nothing to it
        // otherwise: a stopped instance keeps its secondary addresses).
        let c = world();
        c.inner().stop_completes_after(Duration::from_millis(100));
        c.inject(
            Op::MoveClientIp,
            Fault::Delay(Duration::from_millis(800)),
            None,
        );
        let mut f = fencer(&c, 500);
        f.retry_for = Duration::from_millis(2000);
        let run = f.run().await;
        let fenced = run.result.expect("fenced by the stop");
        let Proof::Stopped { moved_after, .. } = &fenced.proof else {
            panic!("{fenced}")
        };
        assert_eq!(moved_after, &Ok(vec!["eni-b".to_string()]), "{fenced}");
        assert!(
            fenced
                .to_string()
                .contains("then client IP 10.0.1.100 moved off the stopped a"),
            "{fenced}"
        );
        assert_eq!(c.inner().ip_holders(IP).await.unwrap(), vec!["eni-b"]);
    }

    #[tokio::test]
    async fn a_zero_deadline_fails_without_calling_the_cloud() {
        let c = world();
        let run = fencer(&c, 0).run().await;
        let e = run.result.expect_err("not fenced");
        assert!(
            e.to_string()
                .contains("the deadline had passed before try 1"),
            "{e}"
        );
        assert_eq!(c.calls(Op::MoveClientIp), 0);
        assert_eq!(c.calls(Op::InstanceState), 0);
    }
}
