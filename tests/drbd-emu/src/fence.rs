//! DRBD's `fencing` policy and the `fence-peer` / `unfence-peer` handlers.
//!
//! As in DRBD 9 (`conn_try_outdate_peer()`, `sanitize_state()`,
//! `after_state_change()`):
//!
//! * A Primary that loses its replication link (EOF, reset, ping timeout)
//!   with `fencing` other than `dont-care` runs the fence-peer handler; with
//!   `resource-and-stonith` the same state change suspends I/O
//!   (`suspended:fencing`, kernel log `susp-io( no -> fencing )`).
//! * A disconnected Secondary that is promoted with fencing runs the
//!   handler first and is refused (`(-7) Refusing to be Primary while peer
//!   is not outdated`) unless it outdated the peer (or `--force`).
//! * The exit code decides (`(status >> 8) & 0xff`): 3 peer Inconsistent,
//!   4 peer Outdated, 5 peer Outdated if our disk is UpToDate (else nothing),
//!   6 "Peer is primary, outdating myself." (a Primary cannot: the state
//!   change fails), 7 peer Outdated ("peer was stonithed"); anything else
//!   (also a handler that could not be started, was killed, or a missing
//!   handler: drbdadm exits 0) is "fence-peer helper broken" and changes
//!   nothing.
//! * I/O resumes when the peer disk becomes Outdated/Inconsistent (with a new
//!   data generation, DRBD's new current UUID), when the connection is
//!   established again, or by `resume-io`.
//! * The SyncSource runs unfence-peer when a resync ends with both disks
//!   UpToDate.
//!
//! Handlers run as child processes (`sh -c CMD`, own process group) from a
//! tokio task: the daemon's lock is never held while one runs. The
//! emulator-only `fence_peer_timeout_ms` kills the process group of a
//! handler that runs too long; that run counts as failed.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Fencing;
use crate::daemon::{Core, Shared};
use crate::model::{ConnState, DiskState, HelperNote, Role};

/// What DRBD passes as `drbd_usermode_helper` (only printed).
pub const USERMODE_HELPER: &str = "/sbin/drbdadm";

fn af(a: &std::net::SocketAddr) -> &'static str {
    if a.is_ipv4() {
        "ipv4"
    } else {
        "ipv6"
    }
}

/// The environment DRBD 9 gives a connection-level helper (kernel
/// `drbd_khelper()` plus what drbdadm adds), for this host.
pub fn helper_env(c: &Core) -> Vec<(String, String)> {
    let cfg = &c.cfg;
    let data = cfg.backing_dev().display().to_string();
    let conf = cfg.path.display().to_string();
    let mut up_to_date: u32 = 0;
    if c.disk() == DiskState::UpToDate {
        up_to_date |= 1 << cfg.node_id;
    }
    if c.conn == ConnState::Connected && c.peer_disk == DiskState::UpToDate {
        up_to_date |= 1 << cfg.peer.node_id;
    }
    let mut env = vec![
        ("DRBD_RESOURCE", cfg.resource.clone()),
        ("DRBD_CONF", conf.clone()),
        ("DRBD_MINOR", cfg.minor.to_string()),
        ("DRBD_VOLUME", "0".to_string()),
        ("DRBD_MINOR_0", cfg.minor.to_string()),
        ("DRBD_BACKING_DEV_0", data.clone()),
        ("DRBD_LL_DISK", data),
        ("DRBD_MY_ADDRESS", cfg.listen.ip().to_string()),
        ("DRBD_MY_AF", af(&cfg.listen).to_string()),
        ("DRBD_MY_NODE_ID", cfg.node_id.to_string()),
        ("DRBD_PEER_ADDRESS", cfg.peer.address.ip().to_string()),
        ("DRBD_PEER_AF", af(&cfg.peer.address).to_string()),
        ("DRBD_PEER_NODE_ID", cfg.peer.node_id.to_string()),
        ("DRBD_CSTATE", c.conn.to_string()),
        ("UP_TO_DATE_NODES", format!("0x{up_to_date:08X}")),
        // emulator addition: `drbd-emu drbdadm ...` in the handler finds this host
        ("DRBD_EMU_CONFIG", conf),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect::<Vec<_>>();
    env.push((
        format!("DRBD_NODE_ID_{}", cfg.node_id),
        cfg.hostname.clone(),
    ));
    env.push((
        format!("DRBD_NODE_ID_{}", cfg.peer.node_id),
        cfg.peer.hostname.clone(),
    ));
    env
}

/// Runs the connection helper `name` (`fence-peer`, `unfence-peer`) like
/// DRBD's user-mode helper call: kernel-like log lines and events2
/// `call helper` / `response helper`. Returns the raw wait status
/// (exit code << 8, or the signal number) as the kernel sees it.
pub async fn run_helper(sh: &Arc<Shared>, name: &'static str) -> i32 {
    run_helper_with(sh, name, None).await
}

/// [`run_helper`] with the environment `decided` built when the call was
/// decided (as the kernel builds it), not when the task gets to run: a peer
/// state packet handled in between must not change what the handler is
/// told (unfence-peer is called because both disks were UpToDate then).
async fn run_helper_with(
    sh: &Arc<Shared>,
    name: &'static str,
    decided: Option<Vec<(String, String)>>,
) -> i32 {
    let cfg = sh.cfg();
    let (r, p) = (&cfg.resource, &cfg.peer.hostname);
    let cmd = match name {
        "fence-peer" => cfg.handlers.fence_peer.clone(),
        _ => cfg.handlers.unfence_peer.clone(),
    };
    let env = {
        let mut c = sh.lock();
        eprintln!("drbd {r} {p}: helper command: {USERMODE_HELPER} {name}");
        c.notify_helper(HelperNote {
            name: name.to_string(),
            status: None,
        });
        decided.unwrap_or_else(|| helper_env(&c))
    };
    let raw = match cmd {
        None => {
            // drbdadm runs nothing and exits 0
            eprintln!("drbd-emu: {r}: no {name} handler configured (drbdadm exits 0)");
            0
        }
        Some(cmd) => spawn_and_wait(&cfg, name, &cmd, env).await,
    };
    let code = (raw >> 8) & 0xff;
    if raw != 0 {
        eprintln!(
            "drbd {r} {p}: helper command: {USERMODE_HELPER} {name} exit code {code} (0x{raw:x})"
        );
    } else {
        eprintln!("drbd {r} {p}: helper command: {USERMODE_HELPER} {name} exit code 0");
    }
    sh.lock().notify_helper(HelperNote {
        name: name.to_string(),
        status: Some(raw),
    });
    raw
}

async fn spawn_and_wait(
    cfg: &crate::config::Config,
    name: &str,
    cmd: &str,
    env: Vec<(String, String)>,
) -> i32 {
    use std::os::fd::AsFd;
    use std::os::unix::process::ExitStatusExt;
    let r = &cfg.resource;
    // the handler's stdout and stderr both go to the daemon's stderr (its log)
    let out = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(std::process::Stdio::from)
        .unwrap_or_else(|_| std::process::Stdio::null());
    let child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .envs(env)
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(std::process::Stdio::inherit())
        .process_group(0)
        .kill_on_drop(true)
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            // call_usermodehelper() failing is "exit code 0" to DRBD
            eprintln!("drbd-emu: {r}: cannot start {name} handler `{cmd}`: {e}");
            return 0;
        }
    };
    let pid = child.id();
    let limit = cfg.handlers.fence_peer_timeout_ms;
    let status = if limit == 0 {
        child.wait().await
    } else {
        match tokio::time::timeout(Duration::from_millis(limit), child.wait()).await {
            Ok(s) => s,
            Err(_) => {
                eprintln!(
                    "drbd-emu: {r}: {name} handler did not finish within fence_peer_timeout_ms={limit}; killing its process group"
                );
                if let Some(pid) = pid {
                    // SAFETY: kill(2) on the process group we created for the handler.
                    unsafe {
                        libc::kill(-(pid as i32), libc::SIGKILL);
                    }
                }
                let _ = child.start_kill();
                child.wait().await
            }
        }
    };
    match status {
        Ok(s) => s.into_raw(),
        Err(e) => {
            eprintln!("drbd-emu: {r}: waiting for {name} handler: {e}");
            0
        }
    }
}

/// Applies a fence-peer result as `conn_try_outdate_peer()` does.
/// `link_epoch` is `Core::epoch` when the handler started (a link
/// established meanwhile makes the result stale). Returns true if the peer
/// now counts as outdated (`pdsk <= Outdated`).
pub fn apply_result(c: &mut Core, raw: i32, link_epoch: u64) -> bool {
    let cfg = c.cfg.clone();
    let (r, p) = (&cfg.resource, &cfg.peer.hostname);
    if !c.up {
        return false;
    }
    let code = (raw >> 8) & 0xff;
    let mut outdate_myself = false;
    let (text, pdsk) = match code {
        3 => (
            "peer is inconsistent or worse",
            Some(DiskState::Inconsistent),
        ),
        4 => ("peer was fenced", Some(DiskState::Outdated)),
        5 => {
            if c.disk() == DiskState::UpToDate {
                (
                    "peer is unreachable, assumed to be dead",
                    Some(DiskState::Outdated),
                )
            } else {
                (
                    "peer unreachable, doing nothing since disk != UpToDate",
                    None,
                )
            }
        }
        6 => {
            eprintln!("drbd {r} {p}: Peer is primary, outdating myself.");
            outdate_myself = true;
            ("peer is active", None)
        }
        7 => {
            if cfg.net.fencing != Fencing::ResourceAndStonith {
                eprintln!("drbd {r} {p}: fence-peer() = 7 && fencing != Stonith !!!");
            }
            ("peer was stonithed", Some(DiskState::Outdated))
        }
        _ => {
            eprintln!("drbd {r} {p}: fence-peer helper broken, returned {code}");
            return false; // I/O stays frozen
        }
    };
    eprintln!("drbd {r} {p}: fence-peer helper returned {code} ({text})");
    if c.conn == ConnState::Connected || c.link.is_some() {
        // connection re-established; do not fence
        return false;
    }
    if c.epoch != link_epoch {
        eprintln!("drbd {r} {p}: Ignoring fence-peer exit code");
        return false;
    }
    if outdate_myself {
        if c.role == Role::Primary {
            // a Primary without access to UpToDate data is not a valid state
            eprintln!("drbd {r}: State change failed: Need access to UpToDate data");
            return false;
        }
        if c.disk().has_good_data() {
            c.set_disk(DiskState::Outdated);
        }
    }
    if let Some(d) = pdsk {
        c.pdsk_fenced = Some(d);
    }
    c.publish();
    let fenced = c.peer_outdated();
    if c.susp_fen && fenced {
        // "case1: The outdate peer handler is successful": a state change
        // of its own, after the one that outdated the peer
        c.resume_fencing(true, "the peer is outdated");
        c.publish();
    }
    fenced
}

/// Called with the lock held when a Primary's established link was lost
/// (the state change that reports `BrokenPipe` / `NetworkFailure`):
/// suspends I/O for `resource-and-stonith` and starts the fence-peer
/// handler in the background.
pub fn on_link_lost(sh: &Arc<Shared>, c: &mut Core) {
    let fencing = c.cfg.net.fencing;
    if c.role != Role::Primary || fencing == Fencing::DontCare {
        return;
    }
    if !c.disk().has_good_data() {
        return;
    }
    if fencing == Fencing::ResourceAndStonith {
        c.susp_fen = true;
    }
    let epoch = c.epoch;
    let sh = sh.clone();
    tokio::spawn(async move {
        let raw = run_helper(&sh, "fence-peer").await;
        let mut c = sh.lock();
        apply_result(&mut c, raw, epoch);
    });
}

/// Runs the fence-peer handler now (promotion of a disconnected node) and
/// applies its result; true if the peer counts as outdated afterwards.
pub async fn fence_now(sh: &Arc<Shared>) -> bool {
    let epoch = sh.lock().epoch;
    let raw = run_helper(sh, "fence-peer").await;
    let mut c = sh.lock();
    apply_result(&mut c, raw, epoch)
}

/// Called with the lock held when a resync as SyncSource ended: runs the
/// unfence-peer handler in the background if fencing is configured and
/// both disks are UpToDate.
pub fn after_sync_source_done(sh: &Arc<Shared>, c: &Core) {
    if c.cfg.net.fencing == Fencing::DontCare
        || c.disk() != DiskState::UpToDate
        || c.peer_disk != DiskState::UpToDate
    {
        return;
    }
    let (sh, env) = (sh.clone(), helper_env(c));
    tokio::spawn(async move {
        run_helper_with(&sh, "unfence-peer", Some(env)).await;
    });
}
