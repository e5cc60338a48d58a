//! The fault runner (issue 11): scenarios of real faults against the namespace
//! cluster ([`NsCluster`]), each a seeded, reproducible schedule of actions,
//! and the invariants checked after every run.
//!
//! A run ([`run`]): start the cluster (3 controllers, fsa serving, fsb its
//! backup, a client); start a client writing numbered files through NFS on the
//! client IP ([`NsCluster::start_writer`]); sample every 100 ms which hosts hold
//! the client IP and run an NFS server ([`Invariants`]); poll the history and
//! the audit log every 1.5 s (the controller keeps the last 200 lines); run the
//! scenario's faults, then its healing; wait for the pair to serve again,
//! `Healthy`, within a bound; stop the writer and read every acknowledged write
//! back. The violations ([`Outcome::violations`], must be empty):
//!
//! * two hosts holding the client IP, or running an NFS server, at once
//!   (sampled continuously);
//! * a promotion of a backup that was not UpToDate: from each emulator's own
//!   log (`role( Secondary -> Primary )` with the disk state before it; a forced
//!   promotion logs its `disk( Outdated -> UpToDate )` in the same state change;
//!   `Forced into split brain situation!`) and from the history (every automatic
//!   failover's start names `S1: <backup> is UpToDate and was in sync`; no
//!   manual failover, none was asked for);
//! * an acknowledged write not readable (byte for byte) after the run;
//! * an operator command that was committed (`understudyctl` exit 0) and is not
//!   in the audit log after the run;
//! * no serving, `Healthy` pair within the bound after the faults stopped;
//! * the scenario's own expectations: how many failovers (the epoch's rise)
//!   it may cause, that serving continued through the fault, that a fenced
//!   zombie stayed cut off, and that each step it waited for happened; with the
//!   EC2 backend ([`NsOptions::ec2`]), that nothing was fenced while every EC2
//!   call failed and that the API fault met a call of the fence.
//!
//! Time to serve again: from the first fault to the first acknowledged write of
//! a probe: from the fault on, every 500 ms a fresh `nfs-cp` of a small file
//! through the client IP (each killed after 5 s), so a write hung on a frozen
//! server does not hide when a fresh one succeeds. The longest stall: the
//! longest time between two acknowledged writes of the client after the first
//! fault.

use std::collections::BTreeSet;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::ec2::ApiFault;
use crate::nscluster::{
    serving_ok, InvariantReport, Invariants, NfsClient, NsCluster, NsOptions, SpareOptions,
    WriteRecord, Writer, PAIR,
};
use crate::{pair, Cluster, Creds};

/// The seed of the CI-reduced matrix when `UNDERSTUDY_FAULT_SEED` is not set.
pub const DEFAULT_SEED: u64 = 11;

/// The seed from `UNDERSTUDY_FAULT_SEED`, else [`DEFAULT_SEED`].
pub fn seed_from_env() -> u64 {
    match std::env::var("UNDERSTUDY_FAULT_SEED") {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("UNDERSTUDY_FAULT_SEED={v:?}: {e}")),
        Err(_) => DEFAULT_SEED,
    }
}

/// SplitMix64: a small, seeded, reproducible PRNG (Steele, Lea, Flood 2014).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    pub fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        assert!(lo <= hi, "range {lo}..={hi}");
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// One of `items`.
    pub fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.range(0, items.len() as u64 - 1) as usize]
    }
}

/// A controller, resolved when the action runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctl {
    /// The Raft leader now.
    Leader,
    /// The `n`th (0 or 1) of the two others, by index.
    Follower(usize),
}

/// Which plan [`Action::WaitStep`] looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Failover,
    Rebuild,
}

/// One step of a schedule.
#[derive(Debug, Clone)]
pub enum Action {
    Sleep(u64),
    /// SIGKILL every process of host `i`, cut its cable ([`NsCluster::kill_host`]).
    KillHost(usize),
    /// SIGSTOP every process of host `i` ([`NsCluster::freeze_host`]).
    FreezeHost(usize),
    /// SIGCONT what is left of host `i` (the fence may have killed it all).
    ThawHost(usize),
    /// Cable back in, emulator and agent started ([`NsCluster::revive_host`]).
    ReviveHost(usize),
    /// Cut / plug in host `i`'s cable (the root side of its veth).
    CutLink(usize),
    HealLink(usize),
    /// Drop everything between two hosts (iptables in the first one's
    /// namespace); `"controllers"` is the bridge address the controllers listen on.
    Block(&'static str, &'static str),
    Unblock(&'static str, &'static str),
    /// Host `host`'s cable: `cycles` times down for `down_ms`, up for `up_ms`.
    Flap {
        host: usize,
        cycles: u32,
        down_ms: u64,
        up_ms: u64,
    },
    /// Host `host`'s cable down for each of `down_ms`, one every `period_ms`.
    Blips {
        host: usize,
        down_ms: Vec<u64>,
        period_ms: u64,
    },
    /// SIGKILL a controller; [`Action::StartControllers`] starts it again.
    KillController(Ctl),
    StartControllers,
    /// Cut a controller from its two peers (agents still reach it); needs
    /// `controllers_in_namespaces`. [`Action::HealControllers`] undoes it.
    PartitionController(Ctl),
    HealControllers,
    /// Restart controller `i` under libfaketime, its clock not yet off
    /// (a setup action: the restart is not the fault).
    Faketime(usize),
    /// Step controller `i`'s wall clock by `secs` (it runs under libfaketime).
    ClockJump(usize, i64),
    /// Host `i`'s processes all gone (a fence killed them): boot it again;
    /// else plug its cable back in.
    ReviveIfFenced(usize),
    /// SIGKILL host `i`'s agent and start a new one.
    RestartAgent(usize),
    /// Wait (at most `timeout_s`) until a step of the plan in flight has this
    /// status (`step` `None`: any step); a violation if it never does.
    WaitStep {
        plan: Plan,
        step: Option<&'static str>,
        status: &'static str,
        timeout_s: u64,
    },
    /// Wait until the pair's state is this (a violation if it never is).
    WaitState(&'static str, u64),
    /// Wait until a failover finished: the epoch rose, no plan in flight, the
    /// new server serves (a violation if not within `timeout_s`).
    WaitFailover(u64),
    /// Wait until fsb is marked outdated (S1).
    WaitOutdated(u64),
    /// Wait until host `i`'s agent is connected to the leader.
    WaitConnected(usize, u64),
    /// The client's writes must go on being acknowledged for this long.
    ExpectServing(u64),
    /// Host `i`'s cable must still be cut (a fenced zombie stays fenced).
    ExpectCut(usize),
    /// `understudyctl ARGS PAIR`.
    Operator(&'static [&'static str]),
    /// The EC2 API (the fault proxy in front of moto) does this from now on;
    /// needs [`NsOptions::ec2`].
    Ec2Api(ApiFault),
    /// No fence may be done yet (every EC2 call fails): no Fence step done, no
    /// failover finished, the backup not promoted.
    ExpectNotFenced,
    /// The API fault met the fence: the proxy faulted a call the fence makes
    /// after the last [`Action::KillHost`] (else the scenario missed its point).
    ExpectFenceMetFault,
    /// Fill host `i`'s disk file system with a ballast file
    /// ([`NsOptions::backup_disk_mib`]): its backing storage is full.
    FillDisk(usize),
    /// Remove the ballast: space again on host `i`'s disk file system.
    FreeDisk(usize),
    /// `drbdadm ARGS` on host `i`, as its operator would run it (a violation
    /// unless it exits 0).
    DrbdAdm(usize, &'static [&'static str]),
    /// Wait until the status shows host `i`'s DRBD disk in this state.
    WaitDisk(usize, &'static str, u64),
    /// The pair's state and host `i`'s DRBD disk must be these now.
    ExpectDisk {
        host: usize,
        disk: &'static str,
        state: &'static str,
    },
}

impl Action {
    /// Does something to the cluster (not a wait or a check). The EC2 API's
    /// trouble is not: it only matters once a fence needs the API, so time to
    /// serve again counts from the fault that needs the fence (the kill).
    fn is_fault(&self) -> bool {
        !matches!(
            self,
            Action::Sleep(_)
                | Action::Ec2Api(_)
                | Action::WaitStep { .. }
                | Action::WaitState(..)
                | Action::WaitFailover(_)
                | Action::WaitOutdated(_)
                | Action::WaitConnected(..)
                | Action::ExpectServing(_)
                | Action::ExpectCut(_)
                | Action::Operator(_)
                | Action::ExpectNotFenced
                | Action::ExpectFenceMetFault
                | Action::WaitDisk(..)
                | Action::ExpectDisk { .. }
        )
    }
}

/// What a scenario runs, derived from a seed.
#[derive(Debug, Clone, Default)]
pub struct Schedule {
    /// Before the client starts writing (not faults).
    pub setup: Vec<Action>,
    pub faults: Vec<Action>,
    /// After the faults: undo them (the runner then waits for convergence).
    pub heal: Vec<Action>,
}

/// What a scenario expects of the product besides the common invariants.
#[derive(Debug, Clone)]
pub struct Expect {
    /// The epoch's rise over the run must be in this range.
    pub failovers: (u64, u64),
    /// How long after the healing the pair must be serving and `Healthy`.
    pub converge_s: u64,
}

/// A scenario of the matrix.
pub struct Scenario {
    pub name: &'static str,
    pub about: &'static str,
    pub options: fn() -> NsOptions,
    pub schedule: fn(&mut SplitMix64) -> Schedule,
    pub expect: Expect,
}

/// What one run found.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub scenario: &'static str,
    pub seed: u64,
    /// The epoch's rise over the run.
    pub failovers: u64,
    pub violations: Vec<String>,
    /// From the first fault to the first acknowledged probe write.
    pub time_to_serve: Option<Duration>,
    /// The longest time the client went without an acknowledged write, from
    /// the first fault to the end of the run (the outage a failover causes
    /// when the first fault is not the failure, e.g. a clock jump first).
    pub longest_stall: Option<Duration>,
    /// From the end of the healing to a serving, `Healthy` pair.
    pub converged_in: Option<Duration>,
    pub writes_attempted: usize,
    pub writes_acked: usize,
    pub ip_samples: u64,
    pub schedule: String,
    pub took: Duration,
    /// Where the cluster's logs were copied (runs with violations).
    pub logs: Option<String>,
    /// The pair's state and serving server at the end.
    pub end: String,
    /// What else the run shows: the Fence step's history line(s); with the EC2
    /// backend, what the fault proxy did with the controllers' calls.
    pub notes: Vec<String>,
}

fn fs_kill(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 3000)),
            Action::KillHost(0),
            Action::WaitFailover(60),
        ],
        heal: vec![
            Action::Sleep(r.range(0, 5000)),
            Action::ReviveHost(0),
            Action::Operator(&["ack"]),
        ],
    }
}

fn freeze(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 3000)),
            Action::FreezeHost(0),
            Action::WaitFailover(60),
            Action::Sleep(r.range(500, 4000)),
            Action::ThawHost(0),
            // The zombie runs again: behind its cut cable, whatever it still has.
            Action::Sleep(r.range(3000, 6000)),
            Action::ExpectCut(0),
        ],
        heal: vec![
            // The fence's stop lands (or the operator stops the instance) ...
            Action::KillHost(0),
            Action::Sleep(r.range(0, 3000)),
            // ... and it boots again.
            Action::ReviveHost(0),
            Action::Operator(&["ack"]),
        ],
    }
}

fn partial(host: &'static str, peer: &'static str) -> impl Fn(&mut SplitMix64) -> Schedule {
    move |r| Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 3000)),
            Action::Block(host, peer),
            Action::Sleep(r.range(5000, 10000)),
        ],
        heal: vec![Action::Unblock(host, peer)],
    }
}

fn cut_from_controllers(r: &mut SplitMix64) -> Schedule {
    partial("fsa", "controllers")(r)
}

fn replication_cut(r: &mut SplitMix64) -> Schedule {
    partial("fsa", "fsb")(r)
}

fn backup_kill(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 3000)),
            Action::KillHost(1),
            Action::WaitState("Degraded", 30),
            Action::ExpectServing(r.range(3000, 8000)),
        ],
        heal: vec![Action::ReviveHost(1)],
    }
}

const FAILOVER_STEPS: [&str; 7] = [
    "Confirm", "Fence", "Promote", "Mount", "Export", "ClaimIp", "Verify",
];

fn leader_killed_during_failover(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::KillHost(0),
            Action::WaitStep {
                plan: Plan::Failover,
                step: Some(r.pick(&FAILOVER_STEPS)),
                status: "running",
                timeout_s: 60,
            },
            // An operator command accepted just before the leader dies.
            Action::Operator(&["ack"]),
            Action::KillController(Ctl::Leader),
            Action::WaitFailover(90),
        ],
        heal: vec![
            Action::StartControllers,
            Action::ReviveHost(0),
            Action::Operator(&["ack"]),
        ],
    }
}

fn no_quorum(r: &mut SplitMix64) -> Schedule {
    // Which two go down: both followers, or the leader and one follower.
    let first = r.pick(&[Ctl::Leader, Ctl::Follower(0), Ctl::Follower(1)]);
    let second = if first == Ctl::Leader {
        Ctl::Follower(r.range(0, 1) as usize)
    } else {
        Ctl::Follower(1 - r.range(0, 1) as usize)
    };
    let mut faults = vec![Action::Sleep(r.range(0, 2000))];
    // Followers are resolved before the leader dies (indices shift otherwise).
    if first == Ctl::Leader {
        faults.extend([
            Action::KillController(second),
            Action::KillController(first),
        ]);
    } else {
        faults.extend([
            Action::KillController(Ctl::Follower(0)),
            Action::KillController(Ctl::Follower(0)),
        ]);
    }
    faults.push(Action::ExpectServing(r.range(6000, 12000)));
    Schedule {
        setup: Vec::new(),
        faults,
        heal: vec![Action::StartControllers],
    }
}

fn flapping(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::Flap {
                host: 0,
                cycles: r.range(4, 7) as u32,
                down_ms: r.range(1500, 3500),
                up_ms: r.range(1500, 3000),
            },
        ],
        // A flap long enough to fail over leaves fsa fenced (its processes
        // killed): it boots again, else its cable is just back in.
        heal: vec![Action::ReviveIfFenced(0), Action::Operator(&["ack"])],
    }
}

fn blips(r: &mut SplitMix64) -> Schedule {
    let n = r.range(4, 7);
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::Blips {
                host: 0,
                // Below the detection time (1 s of primary silence).
                down_ms: (0..n).map(|_| r.range(150, 650)).collect(),
                period_ms: r.range(2000, 3500),
            },
        ],
        heal: vec![Action::HealLink(0)],
    }
}

fn replication_cut_then_fs_dies(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::Block("fsa", "fsb"),
            Action::WaitOutdated(30),
            // fsa acknowledges writes on its own meanwhile.
            Action::ExpectServing(r.range(1000, 4000)),
            Action::KillHost(0),
            Action::WaitState("Blocked", 30),
            Action::Sleep(r.range(2000, 5000)),
        ],
        // As an operator: fsa back, then `unblock` (refused unless fsa is
        // heard from and safe).
        heal: vec![
            Action::Unblock("fsa", "fsb"),
            Action::ReviveHost(0),
            Action::WaitConnected(0, 30),
            Action::Operator(&["unblock", "--reason", "fsa rebooted"]),
        ],
    }
}

/// The backup's backing storage (a thin disk on a size-limited file system)
/// runs full while the client writes: DRBD detaches it (`on-io-error
/// detach`), the file server goes on acknowledging writes on its own disk,
/// the pair is `Degraded` with fsb Diskless and nothing fails over. In half
/// the seeds fsa is then killed: the Diskless backup must not be promoted
/// (S1; the pair stays `Degraded`, nothing serves) until fsa is back.
/// Healing, as an operator: space freed, `drbdadm attach` on fsb (DRBD does
/// not re-attach by itself, nor does Understudy), which resyncs what fsb
/// missed; fsa rebooted (before or after the attach, seeded) when it died.
fn backup_disk_full(r: &mut SplitMix64) -> Schedule {
    let mut faults = vec![
        Action::Sleep(r.range(0, 3000)),
        Action::FillDisk(1),
        Action::WaitDisk(1, "Diskless", 30),
        Action::WaitState("Degraded", 30),
        Action::ExpectServing(r.range(2000, 6000)),
        Action::ExpectDisk {
            host: 1,
            disk: "Diskless",
            state: "Degraded",
        },
    ];
    let mut heal = vec![Action::Sleep(r.range(0, 3000)), Action::FreeDisk(1)];
    let attach = Action::DrbdAdm(1, &["attach", crate::RESOURCE]);
    if r.range(0, 1) == 0 {
        faults.extend([
            Action::KillHost(0),
            Action::Sleep(r.range(3000, 6000)),
            // no promotion of a backup without a disk
            Action::ExpectDisk {
                host: 1,
                disk: "Diskless",
                state: "Degraded",
            },
        ]);
        if r.range(0, 1) == 0 {
            heal.extend([Action::ReviveHost(0), Action::WaitConnected(0, 30), attach]);
        } else {
            heal.extend([
                attach,
                Action::Sleep(r.range(0, 3000)),
                Action::ReviveHost(0),
            ]);
        }
    } else {
        heal.push(attach);
    }
    Schedule {
        setup: Vec::new(),
        faults,
        heal,
    }
}

fn backup_then_fs_dies(r: &mut SplitMix64) -> Schedule {
    let fsb_first = r.range(0, 1) == 0;
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::KillHost(1),
            Action::WaitState("Degraded", 30),
            Action::ExpectServing(r.range(1000, 4000)),
            Action::KillHost(0),
            Action::Sleep(r.range(3000, 6000)),
        ],
        heal: if fsb_first {
            vec![
                Action::ReviveHost(1),
                Action::Sleep(r.range(0, 4000)),
                Action::ReviveHost(0),
            ]
        } else {
            vec![
                Action::ReviveHost(0),
                Action::Sleep(r.range(0, 4000)),
                Action::ReviveHost(1),
            ]
        },
    }
}

fn agent_restart_during_promote(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::KillHost(0),
            Action::WaitStep {
                plan: Plan::Failover,
                step: Some("Promote"),
                status: "running",
                timeout_s: 60,
            },
            Action::Sleep(r.range(0, 1200)),
            Action::RestartAgent(1),
            Action::WaitFailover(90),
        ],
        heal: vec![Action::ReviveHost(0), Action::Operator(&["ack"])],
    }
}

fn leader_partitioned(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::PartitionController(Ctl::Leader),
            Action::Sleep(r.range(0, 3000)),
            Action::KillHost(0),
            Action::WaitFailover(60),
            Action::Sleep(r.range(0, 3000)),
        ],
        heal: vec![
            Action::HealControllers,
            Action::ReviveHost(0),
            Action::Operator(&["ack"]),
        ],
    }
}

fn leader_killed_during_rebuild(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::KillHost(0),
            Action::WaitStep {
                plan: Plan::Rebuild,
                step: None,
                status: r.pick(&["running", "done"]),
                timeout_s: 90,
            },
            Action::Sleep(r.range(0, 1500)),
            Action::KillController(Ctl::Leader),
            Action::Sleep(r.range(1000, 4000)),
        ],
        // fsa is replaced by a spare: it does not come back.
        heal: vec![Action::StartControllers, Action::Operator(&["ack"])],
    }
}

fn clock_jump(r: &mut SplitMix64) -> Schedule {
    let secs = r.range(30, 900) as i64 * if r.range(0, 1) == 0 { 1 } else { -1 };
    let who = r.range(0, 2) as usize;
    Schedule {
        setup: vec![Action::Faketime(who)],
        faults: vec![
            Action::ClockJump(who, secs),
            Action::Sleep(r.range(2000, 5000)),
            Action::KillHost(0),
            Action::WaitFailover(60),
        ],
        heal: vec![Action::ReviveHost(0), Action::Operator(&["ack"])],
    }
}

/// The EC2 calls the fence makes (the controllers make others too: preflight's
/// `DescribeVolumes`, the signals' `DescribeInstanceStatus`).
const FENCE_CALLS: [&str; 6] = [
    "DescribeInstances",
    "DescribeNetworkInterfaces",
    "AssignPrivateIpAddresses",
    "UnassignPrivateIpAddresses",
    "StopInstances",
    "ModifyNetworkInterfaceAttribute",
];

/// The EC2 API slows down (every call delayed by a seeded 0.5-3 s; the
/// backend's call timeout is 2 s) just before fsa dies, for a seeded window
/// that covers the fence, then answers at full speed again.
fn ec2_api_slow(r: &mut SplitMix64) -> Schedule {
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::Ec2Api(ApiFault::Delay(r.range(500, 3000))),
            Action::Sleep(r.range(0, 500)),
            Action::KillHost(0),
            Action::Sleep(r.range(5000, 12000)),
            Action::Ec2Api(ApiFault::Pass),
            Action::ExpectFenceMetFault,
            Action::WaitFailover(90),
        ],
        heal: vec![Action::ReviveHost(0), Action::Operator(&["ack"])],
    }
}

/// The EC2 API fails (a seeded EC2 error on every call, or every call hung)
/// from just before fsa dies, for a seeded window that covers the fence; no
/// fence may be done meanwhile; then it recovers.
fn ec2_api_failing(r: &mut SplitMix64) -> Schedule {
    let fault = r.pick(&[
        ApiFault::Error(503, "RequestLimitExceeded"),
        ApiFault::Error(503, "ServiceUnavailable"),
        ApiFault::Error(500, "InternalError"),
        ApiFault::Hang,
    ]);
    Schedule {
        setup: Vec::new(),
        faults: vec![
            Action::Sleep(r.range(0, 2000)),
            Action::Ec2Api(fault),
            Action::Sleep(r.range(0, 500)),
            Action::KillHost(0),
            Action::Sleep(r.range(5000, 15000)),
            Action::ExpectNotFenced,
            Action::Ec2Api(ApiFault::Pass),
            Action::ExpectFenceMetFault,
            Action::WaitFailover(90),
        ],
        heal: vec![Action::ReviveHost(0), Action::Operator(&["ack"])],
    }
}
/// The size of fsb's disk file system in `backup-disk-full` (the device is
/// [`crate::nscluster::BLOCK_SIZE_MIB`]; room for a full sync after the heal).
const BACKUP_DISK_MIB: u64 = 80;

/// The matrix: every scenario implemented (see ARCHITECTURE.md, "Tests", for
/// those that are not and why).
pub fn scenarios() -> Vec<Scenario> {
    fn defaults() -> NsOptions {
        NsOptions::default()
    }
    fn ec2() -> NsOptions {
        NsOptions {
            ec2: true,
            ..NsOptions::default()
        }
    }
    let one = Expect {
        failovers: (1, 1),
        converge_s: 120,
    };
    let none = Expect {
        failovers: (0, 0),
        converge_s: 120,
    };
    vec![
        Scenario {
            name: "fs-kill",
            about: "file server SIGKILLed (every process) and its cable cut",
            options: defaults,
            schedule: fs_kill,
            expect: one.clone(),
        },
        Scenario {
            name: "fs-freeze-local-fence",
            about: "file server SIGSTOPped, failed over (the local cloud's fence kills it), thawed",
            options: defaults,
            schedule: freeze,
            expect: one.clone(),
        },
        Scenario {
            name: "fs-freeze-ec2-fence",
            about: "file server SIGSTOPped, failed over by a fence that isolates but does not kill, thawed behind its cut cable",
            options: || NsOptions {
                fence_keeps_processes: true,
                ..NsOptions::default()
            },
            schedule: freeze,
            expect: one.clone(),
        },
        Scenario {
            name: "fs-cut-from-controllers",
            about: "iptables: the file server cannot reach the controllers (DRBD and clients still work)",
            options: defaults,
            schedule: cut_from_controllers,
            expect: none.clone(),
        },
        Scenario {
            name: "replication-cut",
            about: "iptables: only the replication link between fsa and fsb",
            options: defaults,
            schedule: replication_cut,
            expect: none.clone(),
        },
        Scenario {
            name: "backup-kill",
            about: "the backup SIGKILLed and its cable cut: serving continues",
            options: defaults,
            schedule: backup_kill,
            expect: none.clone(),
        },
        Scenario {
            name: "leader-kill-during-failover",
            about: "file server killed, the Raft leader SIGKILLed while a seeded step of the failover runs",
            options: || NsOptions {
                step_pause_ms: 1500,
                ..NsOptions::default()
            },
            schedule: leader_killed_during_failover,
            expect: one.clone(),
        },
        Scenario {
            name: "no-quorum",
            about: "two of three controllers SIGKILLed: no action, serving continues",
            options: defaults,
            schedule: no_quorum,
            expect: none.clone(),
        },
        Scenario {
            name: "flapping-link",
            about: "the file server's cable down and up every few seconds",
            options: defaults,
            schedule: flapping,
            // A long enough flap fails over once; the hold-off (S5) prevents a second.
            expect: Expect {
                failovers: (0, 1),
                converge_s: 120,
            },
        },
        Scenario {
            name: "short-blips",
            about: "the file server's cable cut for 150-650 ms, several times (below the detection time)",
            options: defaults,
            schedule: blips,
            expect: none.clone(),
        },
        Scenario {
            name: "replication-cut-then-fs-dies",
            about: "replication cut, writes acknowledged by fsa alone, then fsa killed: Blocked (S1), fsa back",
            options: defaults,
            schedule: replication_cut_then_fs_dies,
            expect: none.clone(),
        },
        Scenario {
            name: "backup-dies-then-fs-dies",
            about: "the backup killed, then the file server: no failover to a dead backup; both back in a seeded order",
            options: defaults,
            schedule: backup_then_fs_dies,
            expect: none.clone(),
        },
        Scenario {
            name: "backup-disk-full",
            about: "the backup's backing storage runs full under writes: its disk detached (Diskless), Degraded, serving continues (in half the seeds fsa then killed: no promotion); space freed, attached, resynced",
            options: || NsOptions {
                backup_disk_mib: Some(BACKUP_DISK_MIB),
                ..NsOptions::default()
            },
            schedule: backup_disk_full,
            expect: none.clone(),
        },
        Scenario {
            name: "agent-restart-during-promote",
            about: "file server killed; the backup's agent SIGKILLed and restarted while Promote runs",
            options: || NsOptions {
                step_pause_ms: 1500,
                ..NsOptions::default()
            },
            schedule: agent_restart_during_promote,
            expect: one.clone(),
        },
        Scenario {
            name: "leader-partitioned",
            about: "the Raft leader cut from its peers (agents still reach it), then the file server killed",
            options: || NsOptions {
                controllers_in_namespaces: true,
                ..NsOptions::default()
            },
            schedule: leader_partitioned,
            expect: one.clone(),
        },
        Scenario {
            name: "leader-kill-during-rebuild",
            about: "file server killed, a spare launched; the Raft leader SIGKILLed during the rebuild",
            options: || NsOptions {
                spares: Some(SpareOptions::default()),
                resync_rate_kib: Some(16 * 1024),
                // A pre-spun spare makes the whole rebuild take ~0.4 s: each
                // step (failover and rebuild) held 1.5 s, so the leader dies
                // while one runs (seed 5 of the first full run missed it).
                step_pause_ms: 1500,
                ..NsOptions::default()
            },
            schedule: leader_killed_during_rebuild,
            expect: Expect {
                failovers: (1, 1),
                converge_s: 240,
            },
        },
        Scenario {
            name: "clock-jump",
            about: "one controller restarted with its wall clock minutes off (libfaketime), then the file server killed",
            options: defaults,
            schedule: clock_jump,
            expect: one.clone(),
        },
        Scenario {
            name: "ec2-api-slow-during-fence",
            about: "EC2 backend (moto behind a fault proxy): every API call delayed 0.5-3 s from just before the file server is killed, for 5-12 s",
            options: ec2,
            schedule: ec2_api_slow,
            expect: one.clone(),
        },
        Scenario {
            name: "ec2-api-failing-during-fence",
            about: "EC2 backend (moto behind a fault proxy): every API call answered 503 RequestLimitExceeded / 503 ServiceUnavailable / 500 InternalError, or hung, from just before the file server is killed, for 5-15 s",
            options: ec2,
            schedule: ec2_api_failing,
            expect: one.clone(),
        },
    ]
}

/// The scenario named `name`.
pub fn scenario(name: &str) -> Scenario {
    scenarios()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no scenario {name}"))
}

/// Merges the history lines and audit entries polled from the controllers.
struct HistoryLog {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<(BTreeSet<(i64, String)>, BTreeSet<(i64, String, bool)>)>>,
    thread: Option<std::thread::JoinHandle<()>>,
    addrs: Vec<String>,
    creds: Creds,
}

fn poll_history(addrs: &[String], creds: &Creds) -> Option<Value> {
    let out = crate::ctl(addrs, creds)
        .args(["--timeout-ms", "2000", "--output", "json", "history", PAIR])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

type Seen = (BTreeSet<(i64, String)>, BTreeSet<(i64, String, bool)>);

fn merge(seen: &Mutex<Seen>, v: &Value) {
    let mut s = seen.lock().unwrap();
    for l in v["pairs"][0]["lines"].as_array().into_iter().flatten() {
        s.0.insert((
            l["at_unix_ms"].as_i64().unwrap_or(0),
            l["event"].as_str().unwrap_or_default().to_string(),
        ));
    }
    for a in v["audit"].as_array().into_iter().flatten() {
        s.1.insert((
            a["at_unix_ms"].as_i64().unwrap_or(0),
            a["command"].as_str().unwrap_or_default().to_string(),
            a["accepted"] == true,
        ));
    }
}

impl HistoryLog {
    fn start(c: &NsCluster) -> HistoryLog {
        let stop = Arc::new(AtomicBool::new(false));
        let seen: Arc<Mutex<Seen>> = Arc::default();
        let (addrs, creds) = (c.controllers.addrs.clone(), c.controllers.creds.clone());
        let (s2, seen2, a2, c2) = (stop.clone(), seen.clone(), addrs.clone(), creds.clone());
        let thread = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                if let Some(v) = poll_history(&a2, &c2) {
                    merge(&seen2, &v);
                }
                for _ in 0..15 {
                    if s2.load(Ordering::Relaxed) {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        HistoryLog {
            stop,
            seen,
            thread: Some(thread),
            addrs,
            creds,
        }
    }

    /// Stop polling, poll once more; (history lines, audit entries).
    fn finish(mut self) -> (Vec<String>, Vec<(String, bool)>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for _ in 0..10 {
            if let Some(v) = poll_history(&self.addrs, &self.creds) {
                merge(&self.seen, &v);
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let s = self.seen.lock().unwrap();
        (
            s.0.iter().map(|(_, e)| e.clone()).collect(),
            s.1.iter().map(|(_, c, a)| (c.clone(), *a)).collect(),
        )
    }
}

impl Drop for HistoryLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// The time-to-serve probe (see the module documentation).
struct ServeProbe {
    stop: Arc<AtomicBool>,
    served: Arc<Mutex<Option<Duration>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServeProbe {
    fn start(client: NfsClient, fault: Instant) -> ServeProbe {
        let stop = Arc::new(AtomicBool::new(false));
        let served: Arc<Mutex<Option<Duration>>> = Arc::default();
        let (s2, sv2) = (stop.clone(), served.clone());
        let thread = std::thread::spawn(move || {
            let mut attempts = Vec::new();
            for k in 0.. {
                if s2.load(Ordering::Relaxed) || sv2.lock().unwrap().is_some() {
                    break;
                }
                let (c, sv) = (client.clone(), sv2.clone());
                attempts.push(std::thread::spawn(move || {
                    if c.write_once_within(&format!("probe-{k}"), b"probe", 5)
                        .is_ok()
                    {
                        let t = fault.elapsed();
                        let mut s = sv.lock().unwrap();
                        *s = Some(s.map_or(t, |p: Duration| p.min(t)));
                    }
                }));
                std::thread::sleep(Duration::from_millis(500));
            }
            for a in attempts {
                let _ = a.join();
            }
        });
        ServeProbe {
            stop,
            served,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> Option<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.served.lock().unwrap()
    }
}

/// The state of one run while its schedule runs.
struct Run<'a> {
    c: &'a mut NsCluster,
    writer: &'a Writer,
    violations: Vec<String>,
    /// Controllers killed / partitioned by the schedule (indices).
    killed: Vec<usize>,
    partitioned: Vec<usize>,
    first_fault: Option<Instant>,
    probe: Option<ServeProbe>,
    /// Operator commands run: (args, exit code, output).
    commands: Vec<(String, i32)>,
    epoch0: u64,
    /// When the schedule last killed a host.
    killed_at: Option<Instant>,
}

impl Run<'_> {
    fn ec2(&self) -> &crate::ec2::Ec2Harness {
        self.c
            .ec2
            .as_ref()
            .expect("an EC2 API action needs NsOptions::ec2")
    }

    fn status(&self) -> Option<Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(s) = self.c.try_status() {
                return Some(s);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Resolve a controller reference now.
    fn resolve(&mut self, who: Ctl) -> Option<usize> {
        let s = self.status()?;
        let leader = Cluster::leader_index(&s)?;
        match who {
            Ctl::Leader => Some(leader),
            Ctl::Follower(n) => {
                let others: Vec<usize> = (0..3)
                    .filter(|i| *i != leader && !self.killed.contains(i))
                    .collect();
                others.get(n).or(others.first()).copied()
            }
        }
    }

    /// Wait for `pred` on the status; a violation naming `what` if it never holds.
    fn wait(&mut self, what: &str, timeout_s: u64, mut pred: impl FnMut(&Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(timeout_s);
        let mut last = Value::Null;
        while Instant::now() < deadline {
            if let Ok(s) = self.c.try_status() {
                if pred(&s) {
                    return;
                }
                last = s;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.violations.push(format!(
            "expected {what} within {timeout_s} s; last status: state {} ({}), epoch {}",
            pair(&last, PAIR)["state"],
            pair(&last, PAIR)["state_reason"],
            pair(&last, PAIR)["epoch"]
        ));
    }

    fn addr_of(&self, name: &str) -> std::net::Ipv4Addr {
        if name == "controllers" {
            self.c.net.bridge_addr()
        } else {
            self.c.net.addr(name)
        }
    }

    fn act(&mut self, a: &Action, fault: bool) {
        if fault && a.is_fault() && self.first_fault.is_none() {
            let now = Instant::now();
            self.first_fault = Some(now);
            self.probe = Some(ServeProbe::start(self.c.client(), now));
        }
        match a {
            Action::Sleep(ms) => std::thread::sleep(Duration::from_millis(*ms)),
            Action::KillHost(i) => {
                self.c.kill_host(*i);
                self.killed_at = Some(Instant::now());
            }
            Action::FreezeHost(i) => self.c.freeze_host(*i),
            Action::ThawHost(i) => {
                self.c.signal_host_processes(*i, libc::SIGCONT);
            }
            Action::ReviveHost(i) => {
                // Whatever is left of it (a thawed zombie, a host the fence
                // killed behind the harness's back) goes first: a reboot.
                self.c.kill_host(*i);
                self.c.revive_host(*i);
            }
            Action::CutLink(i) => self.c.net.cut(self.c.hosts[*i].name),
            Action::HealLink(i) => self.c.net.heal(self.c.hosts[*i].name),
            Action::Block(h, p) => {
                let peer = self.addr_of(p);
                self.c.net.block(h, peer);
            }
            Action::Unblock(h, p) => {
                let peer = self.addr_of(p);
                self.c.net.unblock(h, peer);
            }
            Action::Flap {
                host,
                cycles,
                down_ms,
                up_ms,
            } => {
                let name = self.c.hosts[*host].name;
                for _ in 0..*cycles {
                    self.c.net.cut(name);
                    std::thread::sleep(Duration::from_millis(*down_ms));
                    self.c.net.heal(name);
                    std::thread::sleep(Duration::from_millis(*up_ms));
                }
            }
            Action::Blips {
                host,
                down_ms,
                period_ms,
            } => {
                let name = self.c.hosts[*host].name;
                for d in down_ms {
                    let t = Instant::now();
                    self.c.net.cut(name);
                    std::thread::sleep(Duration::from_millis(*d));
                    self.c.net.heal(name);
                    std::thread::sleep(
                        Duration::from_millis(*period_ms).saturating_sub(t.elapsed()),
                    );
                }
            }
            Action::KillController(who) => match self.resolve(*who) {
                Some(i) => {
                    self.c.kill_controller(i);
                    self.killed.push(i);
                }
                None => self
                    .violations
                    .push(format!("no controller to kill ({who:?}): no leader known")),
            },
            Action::StartControllers => {
                for i in std::mem::take(&mut self.killed) {
                    self.c.start_controller(i);
                }
            }
            Action::PartitionController(who) => match self.resolve(*who) {
                Some(i) => {
                    self.c.partition_controller(i);
                    self.partitioned.push(i);
                }
                None => self.violations.push(format!(
                    "no controller to partition ({who:?}): no leader known"
                )),
            },
            Action::HealControllers => {
                for i in std::mem::take(&mut self.partitioned) {
                    self.c.heal_controller(i);
                }
            }
            Action::Faketime(i) => self.faketime(*i),
            Action::ClockJump(i, secs) => {
                let file = self.c.dir.path().join(format!("faketime-{}", i + 1));
                fs::write(&file, format!("{secs:+}\n")).expect("faketime file");
            }
            Action::ReviveIfFenced(i) => {
                if self.c.signal_host_processes(*i, 0) == 0 {
                    self.c.kill_host(*i);
                    self.c.revive_host(*i);
                } else {
                    self.c.net.heal(self.c.hosts[*i].name);
                }
            }
            Action::RestartAgent(i) => {
                if let Some(p) = self.c.hosts[*i].agent.take() {
                    p.kill();
                }
                self.c.start_agent(*i);
            }
            Action::WaitStep {
                plan,
                step,
                status,
                timeout_s,
            } => {
                let key = match plan {
                    Plan::Failover => "failover",
                    Plan::Rebuild => "rebuild",
                };
                self.wait(&format!("{key} step {step:?} {status}"), *timeout_s, |s| {
                    pair(s, PAIR)[key]["steps"].as_array().is_some_and(|st| {
                        st.iter()
                            .any(|x| step.is_none_or(|n| x["step"] == n) && x["status"] == *status)
                    })
                })
            }
            Action::WaitState(state, t) => self.wait(&format!("pair {state}"), *t, |s| {
                pair(s, PAIR)["state"] == *state
            }),
            Action::WaitFailover(t) => {
                let e0 = self.epoch0;
                self.wait("a finished failover", *t, |s| {
                    let p = pair(s, PAIR);
                    p["epoch"].as_u64().unwrap_or(0) > e0
                        && p["failover"].is_null()
                        && p["state"] != "FailingOver"
                        && p["serving"].as_str().is_some_and(|sv| serving_ok(s, sv))
                })
            }
            Action::WaitConnected(i, t) => {
                let id = self.c.hosts[*i].server_id.clone();
                self.wait(&format!("{id}'s agent connected"), *t, |s| {
                    crate::server(s, PAIR, &id)["connected"] == true
                })
            }
            Action::WaitOutdated(t) => self.wait("fsb marked outdated", *t, |s| {
                pair(s, PAIR)["outdated"]["server"] == "fs1-fsb"
            }),
            Action::ExpectServing(ms) => {
                let before = self.writer.acked();
                std::thread::sleep(Duration::from_millis(*ms));
                let more = self.writer.acked() - before;
                if more < 2 {
                    self.violations.push(format!(
                        "serving did not continue: {more} writes acknowledged in {ms} ms"
                    ));
                }
            }
            Action::ExpectCut(i) => {
                if self.c.link_up(*i) {
                    self.violations.push(format!(
                        "{}'s cable is in again: the fenced zombie is not fenced",
                        self.c.hosts[*i].name
                    ));
                }
            }
            Action::Ec2Api(fault) => self.ec2().proxy.set(*fault),
            Action::ExpectNotFenced => {
                let e0 = self.epoch0;
                match self.status() {
                    None => self.violations.push("no status to check the fence".into()),
                    Some(s) => {
                        let p = pair(&s, PAIR);
                        let fence_done = p["failover"]["steps"].as_array().is_some_and(|st| {
                            st.iter()
                                .any(|x| x["step"] == "Fence" && x["status"] == "done")
                        });
                        let finished =
                            p["epoch"].as_u64().unwrap_or(0) > e0 && p["failover"].is_null();
                        let fsb = crate::server(&s, PAIR, &format!("{PAIR}-fsb"));
                        let promoted = fsb["drbd"]["role"] == "Primary";
                        if fence_done || finished || promoted {
                            self.violations.push(format!(
                                "fenced while every EC2 call failed: Fence step done {fence_done}, failover finished {finished}, fsb Primary {promoted}; failover {}",
                                p["failover"]
                            ));
                        }
                    }
                }
            }
            Action::ExpectFenceMetFault => {
                let since = self.killed_at;
                let met = self
                    .ec2()
                    .proxy
                    .log()
                    .iter()
                    .filter(|e| e.fault != ApiFault::Pass)
                    .filter(|e| since.is_none_or(|k| e.at >= k))
                    .filter(|e| FENCE_CALLS.contains(&e.action.as_str()))
                    .count();
                if met == 0 {
                    self.violations.push(
                        "the EC2 API fault met no call of the fence: the schedule missed the fence"
                            .into(),
                    );
                }
            }
            Action::FillDisk(i) => {
                self.c.fill_disk(*i);
            }
            Action::FreeDisk(i) => self.c.free_disk(*i),
            Action::DrbdAdm(i, args) => {
                let o = self.c.drbdadm(*i, args);
                if !o.status.success() {
                    self.violations.push(format!(
                        "drbdadm {} on {} failed ({}): {}",
                        args.join(" "),
                        self.c.hosts[*i].name,
                        o.status,
                        String::from_utf8_lossy(&o.stderr).trim()
                    ));
                }
            }
            Action::WaitDisk(i, disk, t) => {
                let id = self.c.hosts[*i].server_id.clone();
                self.wait(&format!("{id}'s DRBD disk {disk}"), *t, |s| {
                    crate::server(s, PAIR, &id)["drbd"]["disk"] == *disk
                })
            }
            Action::ExpectDisk { host, disk, state } => {
                // The first status with a DRBD report of the host: right after
                // an agent's new session (a leader that stood down and took
                // over again) its report is not there yet (`drbd` null).
                let id = self.c.hosts[*host].server_id.clone();
                let deadline = Instant::now() + Duration::from_secs(10);
                let mut last = Value::Null;
                let judged = loop {
                    if let Ok(s) = self.c.try_status() {
                        if !crate::server(&s, PAIR, &id)["drbd"].is_null() {
                            break Some(s);
                        }
                        last = s;
                    }
                    if Instant::now() > deadline {
                        break None;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                };
                let s = judged.as_ref().unwrap_or(&last);
                let (p, sv) = (pair(s, PAIR), crate::server(s, PAIR, &id));
                if p["state"] != *state || sv["drbd"]["disk"] != *disk {
                    self.violations.push(format!(
                        "expected the pair {state} with {id}'s DRBD disk {disk}; status: pair {} ({}), {id}'s disk {}",
                        p["state"], p["state_reason"], sv["drbd"]["disk"]
                    ));
                }
            }
            Action::Operator(args) => {
                let o = self
                    .c
                    .controllers
                    .ctl()
                    .args(*args)
                    .arg(PAIR)
                    .output()
                    .expect("understudyctl");
                self.commands
                    .push((args.join(" "), o.status.code().unwrap_or(-1)));
            }
        }
    }

    /// Restart controller `i` under libfaketime, reading its offset from a
    /// file on every call: [`Action::ClockJump`] steps its wall clock (the
    /// monotonic clock untouched, as an NTP step does). Waits until the cluster
    /// answers with all three members again.
    fn faketime(&mut self, i: usize) {
        const LIB: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
        assert!(
            std::path::Path::new(LIB).exists(),
            "{LIB} missing: apt-get install -y faketime (or run ./scripts/install-deps.sh)"
        );
        let file = self.c.dir.path().join(format!("faketime-{}", i + 1));
        fs::write(&file, "+0\n").expect("faketime file");
        self.c.controllers.env[i] = vec![
            ("LD_PRELOAD".into(), LIB.into()),
            ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
            ("FAKETIME_DONT_FAKE_MONOTONIC".into(), "1".into()),
            ("FAKETIME_NO_CACHE".into(), "1".into()),
        ];
        self.c.kill_controller(i);
        self.c.start_controller(i);
        std::thread::sleep(Duration::from_secs(3));
        self.wait("the cluster back after the restart", 30, |s| {
            pair(s, PAIR)["state"] == "Healthy"
        });
    }
}

/// Promotions in an emulator's log after byte `from`: a violation for each one
/// of a disk that was not UpToDate (forced), and for a forced split brain.
fn emulator_promotions(host: &str, log: &str, from: usize) -> (usize, Vec<String>) {
    let mut disk = String::from("Unknown");
    let mut promotions = 0;
    let mut v = Vec::new();
    let mut offset = 0;
    let lines: Vec<&str> = log.lines().collect();
    for (k, line) in lines.iter().enumerate() {
        let after = offset >= from;
        offset += line.len() + 1;
        if let Some(rest) = line.split_once("disk( ").map(|(_, r)| r) {
            if let Some((_, to)) = rest.split_once(" -> ") {
                disk = to.split_whitespace().next().unwrap_or_default().to_string();
            }
        }
        if line.contains("Forced into split brain situation!") && after {
            v.push(format!("{host}'s emulator: {line}"));
        }
        if line.contains("role( Secondary -> Primary )") && after {
            promotions += 1;
            // A forced promotion logs its disk change right after the role's.
            let before = lines
                .get(k + 1)
                .and_then(|n| n.split_once("disk( "))
                .and_then(|(_, r)| r.split_once(" -> "))
                .map(|(b, _)| b.to_string())
                .unwrap_or_else(|| disk.clone());
            if before != "UpToDate" {
                v.push(format!(
                    "{host} promoted with its disk {before} (emulator log line {}: {line})",
                    k + 1
                ));
            }
        }
    }
    (promotions, v)
}

/// History lines that break S1: an automatic failover not justified by an
/// UpToDate, in-sync backup; a manual one nobody asked for.
fn history_violations(lines: &[String], manual_allowed: bool) -> Vec<String> {
    let mut v = Vec::new();
    for l in lines {
        if let Some((_, rest)) = l.split_once("-> FailingOver: automatic failover ") {
            let to = rest
                .split_once(" -> ")
                .and_then(|(_, r)| r.split_once(':'))
                .map(|(t, _)| t.trim().to_string())
                .unwrap_or_default();
            if !l.contains(&format!("S1: {to} is UpToDate and was in sync")) {
                v.push(format!("automatic failover without S1's evidence: {l}"));
            }
        }
        if l.contains("-> FailingOver: manual failover") && !manual_allowed {
            v.push(format!("a manual failover nobody asked for: {l}"));
        }
    }
    v
}

/// Run `sc` once with `seed`.
pub fn run(sc: &Scenario, seed: u64) -> Outcome {
    let t0 = Instant::now();
    let mut rng = SplitMix64::new(seed ^ fnv(sc.name));
    let schedule = (sc.schedule)(&mut rng);
    let opts = (sc.options)();
    let reachable_only = opts.fence_keeps_processes;
    let mut c = NsCluster::start_with(opts);
    let _logs = c.keep_logs_on_panic();
    let epoch0 = pair(&c.try_status().expect("status"), PAIR)["epoch"]
        .as_u64()
        .unwrap_or(0);
    let log_from: Vec<usize> = c
        .hosts
        .iter()
        .map(|h| fs::metadata(h.dir.join("emu.log")).map_or(0, |m| m.len() as usize))
        .collect();
    let history = HistoryLog::start(&c);
    let inv = Invariants::watch_with(&c, reachable_only);
    let mut setup = Vec::new();
    if !schedule.setup.is_empty() {
        // The setup's own checks need a writer: a throwaway one.
        let w = c.start_writer("setup");
        let mut run = Run {
            c: &mut c,
            writer: &w,
            violations: Vec::new(),
            killed: Vec::new(),
            partitioned: Vec::new(),
            first_fault: None,
            probe: None,
            commands: Vec::new(),
            epoch0,
            killed_at: None,
        };
        for a in &schedule.setup {
            run.act(a, false);
        }
        setup = run.violations;
        w.stop();
    }
    let writer = c.start_writer("w");
    writer.wait_more_acked(5, Duration::from_secs(60));
    let mut run = Run {
        c: &mut c,
        writer: &writer,
        violations: Vec::new(),
        killed: Vec::new(),
        partitioned: Vec::new(),
        first_fault: None,
        probe: None,
        commands: Vec::new(),
        epoch0,
        killed_at: None,
    };
    run.violations = setup;
    for a in &schedule.faults {
        run.act(a, true);
    }
    for a in &schedule.heal {
        run.act(a, false);
    }
    // Whatever the schedule left undone.
    run.act(&Action::StartControllers, false);
    run.act(&Action::HealControllers, false);
    let healed = Instant::now();
    let first_fault = run.first_fault.unwrap_or(healed);
    // Converged: a serving, Healthy pair, and the client's writes acknowledged again.
    let mut converged_in = None;
    let deadline = healed + Duration::from_secs(sc.expect.converge_s);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        if let Ok(s) = run.c.try_status() {
            let p = pair(&s, PAIR);
            let ok = p["state"] == "Healthy"
                && p["serving"].as_str().is_some_and(|sv| serving_ok(&s, sv));
            last = s.clone();
            if ok {
                let before = writer.acked();
                let t = Instant::now();
                while writer.acked() < before + 2 && t.elapsed() < Duration::from_secs(30) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                if writer.acked() >= before + 2 {
                    converged_in = Some(healed.elapsed());
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    if converged_in.is_none() {
        run.violations.push(format!(
            "not converged to a serving, Healthy pair within {} s after the faults stopped; last: state {} ({}), serving {}",
            sc.expect.converge_s,
            pair(&last, PAIR)["state"],
            pair(&last, PAIR)["state_reason"],
            pair(&last, PAIR)["serving"]
        ));
    }
    let mut violations = std::mem::take(&mut run.violations);
    let commands = std::mem::take(&mut run.commands);
    let probe = run.probe.take();
    drop(run);
    let client = writer.client();
    let writes: Vec<WriteRecord> = writer.stop();
    // Not converged (a violation already): nothing may serve, so a read is not
    // retried for long, or this would take 30 s per acknowledged write.
    let retry = if converged_in.is_some() { 30 } else { 1 };
    let check = Writer::verify(&client, &writes, Duration::from_secs(retry));
    for (name, why) in &check.lost {
        violations.push(format!("acknowledged write {name} not read back: {why}"));
    }
    let time_to_serve = probe.and_then(ServeProbe::finish);
    if time_to_serve.is_none() {
        violations.push("no probe write acknowledged after the first fault".into());
    }
    let longest_stall = {
        let mut done: Vec<Instant> = writes
            .iter()
            .filter(|w| w.acked)
            .map(|w| w.finished)
            .filter(|f| *f >= first_fault)
            .collect();
        done.insert(0, first_fault);
        done.sort();
        done.windows(2).map(|w| w[1] - w[0]).max()
    };
    let report: InvariantReport = inv.finish();
    violations.extend(report.violations());
    // S1 from the emulators' own logs.
    for (i, h) in c.hosts.iter().enumerate() {
        let log = fs::read_to_string(h.dir.join("emu.log")).unwrap_or_default();
        let (_, v) = emulator_promotions(h.name, &log, log_from[i]);
        violations.extend(v);
    }
    let (lines, audit) = history.finish();
    let mut notes: Vec<String> = lines
        .iter()
        .filter(|l| l.starts_with("step Fence "))
        .cloned()
        .collect();
    if let Some(e) = &c.ec2 {
        notes.push(proxy_summary(&e.proxy.log()));
    }
    violations.extend(history_violations(&lines, false));
    // Every committed operator command is in the audit log.
    // (By verb: the audit log words a command its own way.)
    let verb = |c: &str| -> String { c.chars().take_while(|c| c.is_alphabetic()).collect() };
    for (cmd, code) in &commands {
        if *code == 0 {
            let committed = commands
                .iter()
                .filter(|(c2, k)| verb(c2) == verb(cmd) && *k == 0)
                .count();
            let audited = audit
                .iter()
                .filter(|(a, ok)| *ok && verb(a) == verb(cmd))
                .count();
            if audited < committed {
                violations.push(format!(
                    "operator command `{cmd}` committed {committed} times, {audited} in the audit log"
                ));
            }
        }
    }
    let final_status = c.try_status().ok();
    let epoch = final_status
        .as_ref()
        .and_then(|s| pair(s, PAIR)["epoch"].as_u64());
    let failovers = epoch.map_or(0, |e| e.saturating_sub(epoch0));
    let (lo, hi) = sc.expect.failovers;
    if epoch.is_none() {
        violations.push("no status at the end of the run".into());
    } else if failovers < lo || failovers > hi {
        violations.push(format!(
            "{failovers} failovers (the epoch's rise), expected {lo}..={hi}; history:\n  {}",
            lines
                .iter()
                .filter(|l| l.contains("FailingOver"))
                .cloned()
                .collect::<Vec<_>>()
                .join("\n  ")
        ));
    }
    violations.dedup();
    let logs = (!violations.is_empty())
        .then(|| crate::copy_logs(c.dir.path()).map_or_else(|e| e, |p| p.display().to_string()));
    Outcome {
        scenario: sc.name,
        seed,
        failovers,
        violations,
        time_to_serve,
        longest_stall,
        converged_in,
        writes_attempted: check.attempted,
        writes_acked: check.acked,
        ip_samples: report.samples,
        schedule: format!("{:?}", schedule),
        took: t0.elapsed(),
        logs,
        notes,
        end: final_status
            .as_ref()
            .map(|s| {
                let p = pair(s, PAIR);
                format!(
                    "{} serving {} epoch {}",
                    p["state"], p["serving"], p["epoch"]
                )
            })
            .unwrap_or_default(),
    }
}

/// How many EC2 requests the fault proxy passed, delayed, failed and hung.
fn proxy_summary(log: &[crate::ec2::ProxyEntry]) -> String {
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for e in log {
        let k = match e.fault {
            ApiFault::Pass => "passed".to_string(),
            ApiFault::Delay(ms) => format!("delayed {ms} ms"),
            ApiFault::Error(st, code) => format!("answered {st} {code}"),
            ApiFault::Hang => "hung".to_string(),
        };
        *by.entry(k).or_default() += 1;
    }
    format!(
        "EC2 API (fault proxy): {} requests: {}",
        log.len(),
        by.iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// FNV-1a of a name: each scenario's seed stream differs.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Run `name` with the seed of `UNDERSTUDY_FAULT_SEED` (the CI-reduced matrix);
/// panics listing the violations.
pub fn run_one_seed(name: &str) {
    let sc = scenario(name);
    let seed = seed_from_env();
    let o = run(&sc, seed);
    eprintln!("{}", describe(&o));
    assert!(
        o.violations.is_empty(),
        "scenario {name} seed {seed}: {} violations:\n- {}\nlogs: {}",
        o.violations.len(),
        o.violations.join("\n- "),
        o.logs.as_deref().unwrap_or("-")
    );
}

fn secs(d: Option<Duration>) -> String {
    d.map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64()))
}

/// One line about a run.
pub fn describe(o: &Outcome) -> String {
    format!(
        "{} seed {}: {} failovers, {} violations, serve again {}, longest stall {}, converged {} ({}), writes {}/{} acknowledged, {} IP samples, took {:.0}s; schedule {}{}",
        o.scenario,
        o.seed,
        o.failovers,
        o.violations.len(),
        secs(o.time_to_serve),
        secs(o.longest_stall),
        secs(o.converged_in),
        o.end,
        o.writes_acked,
        o.writes_attempted,
        o.ip_samples,
        o.took.as_secs_f64(),
        o.schedule,
        o.notes
            .iter()
            .map(|n| format!("\n  {n}"))
            .collect::<String>()
    )
}

/// The matrix's table (Markdown) over the outcomes of each scenario.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut names: Vec<&str> = Vec::new();
    for o in outcomes {
        if !names.contains(&o.scenario) {
            names.push(o.scenario);
        }
    }
    let pct = |v: &mut Vec<Duration>, q: f64| -> Option<Duration> {
        if v.is_empty() {
            return None;
        }
        v.sort();
        let k = ((v.len() as f64 - 1.0) * q).round() as usize;
        Some(v[k])
    };
    let mut t = String::from(
        "| scenario | seeds | failovers | violations | time to serve again p50 / max | longest stall p50 / max | converged p50 / max | writes acked | run time |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n",
    );
    for n in names {
        let os: Vec<&Outcome> = outcomes.iter().filter(|o| o.scenario == n).collect();
        let mut serve: Vec<Duration> = os.iter().filter_map(|o| o.time_to_serve).collect();
        let mut conv: Vec<Duration> = os.iter().filter_map(|o| o.converged_in).collect();
        let mut stall: Vec<Duration> = os.iter().filter_map(|o| o.longest_stall).collect();
        let failovers: Vec<String> = os.iter().map(|o| o.failovers.to_string()).collect();
        t.push_str(&format!(
            "| {n} | {} | {} | {} | {} / {} | {} / {} | {} / {} | {} | {:.0}s |\n",
            os.iter()
                .map(|o| o.seed.to_string())
                .collect::<Vec<_>>()
                .join(","),
            failovers.join(","),
            os.iter().map(|o| o.violations.len()).sum::<usize>(),
            secs(pct(&mut serve, 0.5)),
            secs(pct(&mut serve, 1.0)),
            secs(pct(&mut stall, 0.5)),
            secs(pct(&mut stall, 1.0)),
            secs(pct(&mut conv, 0.5)),
            secs(pct(&mut conv, 1.0)),
            os.iter().map(|o| o.writes_acked).sum::<usize>(),
            os.iter().map(|o| o.took.as_secs_f64()).sum::<f64>(),
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix_is_reproducible_and_in_range() {
        let mut a = SplitMix64::new(7);
        let mut b = SplitMix64::new(7);
        for _ in 0..1000 {
            let x = a.range(3, 9);
            assert_eq!(x, b.range(3, 9));
            assert!((3..=9).contains(&x));
        }
        assert_ne!(SplitMix64::new(1).next_u64(), SplitMix64::new(2).next_u64());
    }

    #[test]
    fn schedules_depend_on_the_seed_only() {
        for sc in scenarios() {
            let s1 = format!("{:?}", (sc.schedule)(&mut SplitMix64::new(5)));
            let s2 = format!("{:?}", (sc.schedule)(&mut SplitMix64::new(5)));
            assert_eq!(s1, s2, "{}", sc.name);
        }
    }

    #[test]
    fn the_emulator_log_check_finds_a_forced_promotion() {
        let log = "drbd r0/0 drbd1000: disk( Diskless -> UpToDate )\n\
                   drbd r0/0 drbd1000: disk( UpToDate -> Outdated )\n\
                   drbd r0: role( Secondary -> Primary )\n\
                   drbd r0/0 drbd1000: disk( Outdated -> UpToDate )\n";
        let (n, v) = emulator_promotions("fsb", log, 0);
        assert_eq!(n, 1);
        assert_eq!(v.len(), 1, "{v:?}");
        assert!(v[0].contains("Outdated"), "{v:?}");
        let ok = "drbd r0/0 drbd1000: disk( Diskless -> UpToDate )\n\
                  drbd r0 fs1-fsa: conn( Connected -> BrokenPipe )\n\
                  drbd r0: role( Secondary -> Primary )\n";
        assert_eq!(emulator_promotions("fsb", ok, 0), (1, vec![]));
        // Before the run's start: not judged.
        assert_eq!(emulator_promotions("fsb", log, log.len()).0, 0);
    }

    #[test]
    fn the_history_check_wants_s1_evidence() {
        let good = "Suspect -> FailingOver: automatic failover fs1-fsa -> fs1-fsb: S2 both witnesses: x; S1: fs1-fsb is UpToDate and was in sync at its last report before the loss".to_string();
        assert!(history_violations(&[good], false).is_empty());
        let bad =
            "Suspect -> FailingOver: automatic failover fs1-fsa -> fs1-fsb: because".to_string();
        assert_eq!(history_violations(&[bad], false).len(), 1);
        let manual = "Healthy -> FailingOver: manual failover fs1-fsa -> fs1-fsb: x".to_string();
        assert_eq!(history_violations(&[manual.clone()], false).len(), 1);
        assert!(history_violations(&[manual], true).is_empty());
    }
}
