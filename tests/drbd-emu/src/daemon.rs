//! The emulated kernel module of one host: resource state and its commands.
//!
//! `drbd-emu daemon --config HOST.toml` runs in the foreground until killed.
//! It holds the state of the one resource in [`Core`] (behind a mutex that
//! is never held across an `.await`), serves the CLIs on the control socket
//! (`ctl.rs`), runs the replication link (`repl.rs`) and publishes a
//! [`Snapshot`] to `events2` subscribers after every state change (counters
//! are published at most every 100 ms).
//!
//! The daemon starts with the resource up (as after a boot with DRBD
//! enabled; `auto_up = false` in the config to start it down), always as
//! Secondary, with the disk state from the persisted metadata (`meta.rs`;
//! a missing metadata file is created as a new `Inconsistent` disk).
//! A lock file in `state_dir` (holding the daemon's pid) prevents two
//! daemons for one host, `META_DIR/meta.lock` two hosts on one volume.
//!
//! `up` and `adjust` re-read the config file (as drbdadm does for every
//! command): the running config ([`Shared::cfg`]) may change its peer,
//! `listen`, tuning, `[net]` and handlers; keys that need a restart
//! (resource, node id, minor, directories, `[device]`) are refused.

use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Notify};

use crate::config::{Config, Fencing};
use crate::ctl::{Request, Response};
use crate::fence;
use crate::meta::Meta;
use crate::model::*;
use crate::repl;
use crate::tree::{self, Manifest};

/// The handle of the live replication link.
pub struct Link {
    /// Control-frame queue of the link's writer.
    pub ctrl: mpsc::UnboundedSender<repl::Frame>,
    /// Tears the link down (`disconnect`, `down`).
    pub abort: Arc<Notify>,
}

/// Counters behind the statistics keys.
#[derive(Default)]
pub struct Stats {
    /// Bytes sent to the peer.
    pub sent_b: u64,
    /// Bytes received from the peer.
    pub received_b: u64,
    /// Bytes read from the local tree for the peer.
    pub read_b: u64,
    /// Bytes written to the local tree from the peer.
    pub written_b: u64,
    /// KiB out of sync.
    pub oos_kib: u64,
    /// KiB total of the running resync.
    pub rs_total_kib: u64,
    /// Start of the running resync.
    pub rs_start: Option<Instant>,
    /// Bytes of the file in flight already acknowledged by the peer.
    pub inflight_acked_b: u64,
    /// Items sent and not yet acknowledged.
    pub unacked: u64,
}

/// The whole mutable state of the emulated resource.
pub struct Core {
    /// Host config.
    pub cfg: Arc<Config>,
    /// The resource exists (`up`).
    pub up: bool,
    /// The backing "disk" is attached.
    pub attached: bool,
    /// A disk state shown while the disk changes (`Failed` while detaching
    /// after an I/O error, `Attaching` during `attach`); `None` otherwise.
    pub disk_transient: Option<DiskState>,
    /// Local role.
    pub role: Role,
    /// Persisted metadata (disk state, generations, peer manifest).
    pub meta: Meta,
    /// `meta.peer_known` changed and should be persisted (lazily).
    pub meta_dirty: bool,
    /// Connection state.
    pub conn: ConnState,
    /// Connection wanted (false after `disconnect` / split brain).
    pub want_connect: bool,
    /// `connect --discard-my-data` pending.
    pub discard_my_data: bool,
    /// Peer role as reported by the peer.
    pub peer_role: Role,
    /// Peer disk state as reported by the peer.
    pub peer_disk: DiskState,
    /// Peer data generation.
    pub peer_gen: u64,
    /// Peer generation history.
    pub peer_history: Vec<u64>,
    /// Replication state.
    pub repl: Repl,
    /// TCP path established.
    pub path_established: bool,
    /// Start a new data generation at the next local write (Primary
    /// without a connected peer).
    pub need_new_gen: bool,
    /// Last scan of the local tree (kept while Primary / SyncSource).
    pub local: Option<Manifest>,
    /// Counters.
    pub stats: Stats,
    /// The live link, if connected.
    pub link: Option<Link>,
    /// Incremented for every new link; stale link tasks compare it.
    pub epoch: u64,
    /// I/O suspended by the fencing policy (`suspended:fencing`).
    pub susp_fen: bool,
    /// Peer disk state set by a fence-peer result while disconnected
    /// (`Outdated` / `Inconsistent`; `None` = `DUnknown`).
    pub pdsk_fenced: Option<DiskState>,
    /// Block mode: the device, its bitmap and the writes in flight.
    pub blk: Option<crate::block::BlockState>,
    subs: Vec<mpsc::UnboundedSender<String>>,
    last_pub: Option<Option<Snapshot>>,
    last_persist: Instant,
    fs_size_kib: u64,
}

/// State shared by all daemon tasks.
pub struct Shared {
    /// The running host config (replaced by `adjust`/`up` when the file
    /// changed; `Core::cfg` is always the same `Arc`).
    cfg: Mutex<Arc<Config>>,
    /// The state.
    pub core: Mutex<Core>,
    /// Wakes the connector after `up`/`connect`/`disconnect`/`down`.
    pub wake: Notify,
}

impl Shared {
    /// Locks the state (a poisoned lock is still usable: state is plain data).
    pub fn lock(&self) -> MutexGuard<'_, Core> {
        self.core.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The running config. Never takes the state lock, so it may be
    /// called with it held. Tasks that live across an `adjust` take it
    /// anew where the peer, `listen` or the tuning matter.
    pub fn cfg(&self) -> Arc<Config> {
        self.cfg.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Replaces the running config if it changed (with the state lock
    /// held, so that `Core::cfg` and [`Shared::cfg`] change together).
    fn install_cfg(&self, c: &mut Core, new: Arc<Config>) {
        if *c.cfg == *new {
            return;
        }
        c.cfg = new.clone();
        *self.cfg.lock().unwrap_or_else(|e| e.into_inner()) = new;
    }
}

fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

impl Core {
    /// The local disk state as reported (Diskless when not attached).
    pub fn disk(&self) -> DiskState {
        if let Some(d) = self.disk_transient {
            d
        } else if self.attached {
            self.meta.disk
        } else {
            DiskState::Diskless
        }
    }

    /// DRBD's `on-io-error detach` (the default): an I/O error of the
    /// backing storage (`what`: the request that failed) takes the disk
    /// `Failed`, then `Diskless`. The connection stays; the peer learns the
    /// disk state (a Primary peer then writes to its own disk only and
    /// counts the blocks out of sync). The metadata (not on the failed
    /// disk here) records the disk as `Outdated`: it lacks at least the
    /// write that failed. If the bitmap cannot be written, or `untrusted`
    /// (a failed flush: which blocks did not reach the disk is unknown),
    /// the next attach does a full sync.
    pub fn detach_on_io_error(&mut self, what: &str, err: &std::io::Error, untrusted: bool) {
        if !self.attached || self.disk_transient.is_some() {
            return;
        }
        let cfg = self.cfg.clone();
        eprintln!(
            "drbd {}/0 drbd{}: Local IO failed in {what} ({err}). Detaching...",
            cfg.resource, cfg.minor
        );
        self.disk_transient = Some(DiskState::Failed);
        if self.repl.is_syncing() {
            // a resync needs a disk on both sides
            self.repl = Repl::Established;
            self.stats.rs_total_kib = 0;
            self.stats.rs_start = None;
            if let Some(b) = self.blk.as_mut() {
                b.rs_inflight.clear();
            }
        }
        self.publish();
        let m = self.state_msg();
        self.send(m);
        let mut full = untrusted;
        if let Some(b) = self.blk.as_mut() {
            if let Err(e) = b.flush_bitmap() {
                eprintln!("drbd {}: writing the bitmap on detach: {e}", cfg.resource);
                full = true;
            }
        }
        if self.meta.disk.has_good_data() {
            self.meta.disk = DiskState::Outdated;
        }
        if full {
            self.meta.full_sync = true;
        }
        self.persist();
        self.attached = false;
        self.disk_transient = None;
        self.need_new_gen = false;
        self.recompute_oos();
        self.publish();
        let m = self.state_msg();
        self.send(m);
    }

    /// The connected peer's disk went away (`Failed`/`Diskless`) while this
    /// host is Primary on good data: DRBD starts a new current UUID (a new
    /// data generation) at once, so the peer's data is known older when it
    /// attaches again; a resync in progress to it ends.
    pub fn peer_disk_lost(&mut self) {
        if self.repl.is_syncing() {
            self.repl = Repl::Established;
            self.stats.rs_total_kib = 0;
            self.stats.rs_start = None;
            if let Some(b) = self.blk.as_mut() {
                b.rs_inflight.clear();
            }
        }
        if self.role == Role::Primary && self.attached && self.meta.disk == DiskState::UpToDate {
            self.meta.new_generation();
            self.need_new_gen = false;
            self.persist();
            eprintln!(
                "drbd {}: new data generation {:016X} (peer disk lost)",
                self.cfg.resource, self.meta.gen
            );
            let m = self.state_msg();
            self.send(m);
        }
        self.recompute_oos();
    }

    /// Tells the connected peer that the disk is attached (state and
    /// bitmap): it decides the resync as in a handshake (`repl::Msg::Attached`).
    pub fn send_attached(&self) {
        let m = repl::Msg::Attached {
            disk: self.disk(),
            gen: self.meta.gen,
            history: self.meta.history.clone(),
            words: self
                .blk
                .as_ref()
                .map(|b| b.handshake_bitmap())
                .unwrap_or_default(),
        };
        self.send(m);
    }

    /// Changes and persists the disk state.
    pub fn set_disk(&mut self, d: DiskState) {
        if self.meta.disk != d {
            self.meta.disk = d;
            self.persist();
        }
    }

    /// Persists the metadata now.
    pub fn persist(&mut self) {
        if let Err(e) = self.meta.store(&self.cfg.meta_path()) {
            eprintln!("drbd {}: writing meta data failed: {e}", self.cfg.resource);
        }
        self.meta_dirty = false;
        self.last_persist = Instant::now();
    }

    /// True while this host streams data to the peer.
    pub fn is_sender(&self) -> bool {
        self.conn == ConnState::Connected
            && (self.repl == Repl::SyncSource
                || (self.repl == Repl::Established && self.role == Role::Primary))
    }

    /// Recomputes `out-of-sync` on the side that holds the data.
    pub fn recompute_oos(&mut self) {
        let source_side = self.role == Role::Primary || self.repl == Repl::SyncSource;
        if source_side {
            if let Some(b) = &self.blk {
                self.stats.oos_kib = b.oos_blocks() * (crate::config::BM_BLOCK / 1024);
            } else if let Some(l) = &self.local {
                let kib = tree::out_of_sync_kib(l, &self.meta.peer_known);
                self.stats.oos_kib = kib.saturating_sub(self.stats.inflight_acked_b / 1024);
            }
        }
        if self.repl.is_syncing() && self.stats.oos_kib > self.stats.rs_total_kib {
            self.stats.rs_total_kib = self.stats.oos_kib;
        }
    }

    /// The peer counts as outdated (pdsk <= Outdated) while disconnected.
    pub fn peer_outdated(&self) -> bool {
        matches!(
            self.pdsk_fenced,
            Some(DiskState::Outdated | DiskState::Inconsistent)
        )
    }

    /// Ends the fencing suspension. `new_gen`: start the new data
    /// generation a Primary that lost its peer owes (DRBD's new current
    /// UUID at "outdate peer handler is successful" and `resume-io`); a
    /// re-established connection resumes without one.
    pub fn resume_fencing(&mut self, new_gen: bool, why: &str) {
        if !self.susp_fen {
            return;
        }
        self.susp_fen = false;
        if new_gen && self.need_new_gen && self.role == Role::Primary {
            self.meta.new_generation();
            self.need_new_gen = false;
            self.persist();
            eprintln!(
                "drbd {}: new data generation {:016X} (I/O resumed: {why})",
                self.cfg.resource, self.meta.gen
            );
        } else {
            eprintln!("drbd {}: I/O resumed: {why}", self.cfg.resource);
        }
    }

    /// Sends a `call helper` / `response helper` event to events2
    /// subscribers (after publishing any pending state change).
    pub fn notify_helper(&mut self, note: HelperNote) {
        self.publish();
        let msg = EventMsg {
            ts_us: now_us(),
            snap: self.last_pub.clone().flatten(),
            helper: Some(note),
        };
        if let Ok(line) = serde_json::to_string(&msg) {
            self.subs.retain(|s| s.send(line.clone()).is_ok());
        }
    }

    /// Sends a control frame on the live link (if any).
    pub fn send(&self, msg: repl::Msg) {
        if let Some(l) = &self.link {
            let _ = l.ctrl.send((msg, None));
        }
    }

    /// Sends a frame with a payload (block data) on the live link, in
    /// order with the control frames.
    pub fn send_payload(&self, msg: repl::Msg, payload: Vec<u8>) {
        if let Some(l) = &self.link {
            let _ = l.ctrl.send((msg, Some(payload)));
        }
    }

    /// A write reached only the local disk: a Primary that owes a new data
    /// generation (lost its peer, or promoted without one) starts it now.
    pub fn local_write_without_peer(&mut self) {
        if self.role == Role::Primary && self.need_new_gen && !self.susp_fen {
            self.meta.new_generation();
            self.need_new_gen = false;
            self.persist();
            eprintln!(
                "drbd {}: new data generation {:016X} (write without peer)",
                self.cfg.resource, self.meta.gen
            );
        }
        self.recompute_oos();
    }

    /// Our state as sent to the peer.
    pub fn state_msg(&self) -> repl::Msg {
        repl::Msg::State {
            role: self.role,
            disk: self.disk(),
            gen: self.meta.gen,
            history: self.meta.history.clone(),
        }
    }

    /// Begins a resync as source.
    pub fn start_sync_source(&mut self) {
        self.repl = Repl::SyncSource;
        self.peer_disk = DiskState::Inconsistent;
        self.stats.rs_total_kib = 0;
        self.stats.rs_start = Some(Instant::now());
        self.recompute_oos();
        self.stats.rs_total_kib = self.stats.oos_kib;
    }

    /// Begins a resync as target: the local disk is Inconsistent until done.
    pub fn start_sync_target(&mut self) {
        self.repl = Repl::SyncTarget;
        self.set_disk(DiskState::Inconsistent);
        self.stats.rs_total_kib = 0;
        self.stats.rs_start = Some(Instant::now());
        let m = self.state_msg();
        self.send(m);
    }

    /// Re-evaluates resync need after a generation change while connected.
    pub fn maybe_resync(&mut self) {
        if self.conn != ConnState::Connected
            || self.repl != Repl::Established
            || !self.attached
            || !peer_has_disk(self.peer_disk)
        {
            return;
        }
        let me = repl::Side {
            node_id: self.cfg.node_id,
            disk: self.disk(),
            gen: self.meta.gen,
            history: self.meta.history.clone(),
            discard: false,
        };
        let peer = repl::Side {
            node_id: self.cfg.peer.node_id,
            disk: self.peer_disk,
            gen: self.peer_gen,
            history: self.peer_history.clone(),
            discard: false,
        };
        match repl::decide(&me, &peer) {
            repl::Decision::Source => self.start_sync_source(),
            repl::Decision::Target => self.start_sync_target(),
            _ => {}
        }
    }

    fn snapshot(&self) -> Option<Snapshot> {
        if !self.up {
            return None;
        }
        let cfg = &self.cfg;
        let disk = self.disk();
        let connected = self.conn == ConnState::Connected;
        let peer_primary = connected && self.peer_role == Role::Primary;
        let may_promote =
            self.role == Role::Secondary && disk == DiskState::UpToDate && !peer_primary;
        let promotion_score = if disk == DiskState::Diskless {
            u32::from(connected && self.peer_disk == DiskState::UpToDate)
        } else {
            10000 + if disk == DiskState::UpToDate { 101 } else { 0 } + u32::from(connected)
        };
        let syncing = connected && self.repl.is_syncing();
        let (done, dbdt1, eta, elapsed_ms) = if syncing {
            let total = self.stats.rs_total_kib.max(self.stats.oos_kib);
            let oos = self.stats.oos_kib;
            let done = if total == 0 {
                // a target has not heard from its source yet
                if self.repl == Repl::SyncTarget {
                    0.0
                } else {
                    100.0
                }
            } else {
                100.0 * (total - oos) as f64 / total as f64
            };
            let elapsed = self
                .stats
                .rs_start
                .map(|s| s.elapsed())
                .unwrap_or_default()
                .max(Duration::from_millis(1));
            let kib_s = (total - oos) as f64 / elapsed.as_secs_f64();
            let eta = if kib_s > 0.0 {
                (oos as f64 / kib_s).ceil() as u64
            } else {
                0
            };
            (
                Some(done),
                Some(kib_s / 1024.0),
                Some(eta),
                elapsed.as_millis() as u64,
            )
        } else {
            (None, None, None, 0)
        };
        let attached = self.attached;
        Some(Snapshot {
            name: cfg.resource.clone(),
            node_id: cfg.node_id,
            role: self.role,
            suspended: if self.susp_fen { "fencing" } else { "no" }.into(),
            write_ordering: "flush".into(),
            may_promote,
            promotion_score,
            device: DeviceSnap {
                volume: 0,
                minor: cfg.minor,
                backing_dev: attached.then(|| cfg.backing_dev().display().to_string()),
                disk,
                client: false,
                open: false,
                quorum: true,
                size: if attached { self.fs_size_kib } else { 0 },
                read: self.stats.read_b / 1024,
                written: self.stats.written_b / 1024,
                al_writes: 0,
                bm_writes: 0,
                upper_pending: 0,
                lower_pending: 0,
                al_suspended: false,
                blocked: false,
            },
            connection: ConnSnap {
                peer_node_id: cfg.peer.node_id,
                conn_name: cfg.peer.hostname.clone(),
                connection: self.conn,
                peer_role: if connected {
                    self.peer_role
                } else {
                    Role::Unknown
                },
                congested: false,
                ap_in_flight: 0,
                rs_in_flight: 0,
            },
            peer_device: PeerDeviceSnap {
                volume: 0,
                replication: if connected { self.repl } else { Repl::Off },
                peer_disk: if connected {
                    self.peer_disk
                } else {
                    self.pdsk_fenced.unwrap_or(DiskState::DUnknown)
                },
                peer_client: false,
                resync_suspended: "no".into(),
                received: self.stats.received_b / 1024,
                sent: self.stats.sent_b / 1024,
                out_of_sync: self.stats.oos_kib,
                pending: 0,
                unacked: self.stats.unacked,
                rs_total: if syncing {
                    self.stats.rs_total_kib.max(self.stats.oos_kib)
                } else {
                    0
                },
                rs_elapsed_ms: elapsed_ms,
                done,
                dbdt1,
                eta,
            },
            path: PathSnap {
                local: drbd_addr(&cfg.listen),
                peer: drbd_addr(&cfg.peer.address),
                established: self.path_established,
            },
        })
    }

    /// Publishes the current state to events2 subscribers if it changed.
    pub fn publish(&mut self) {
        let snap = self.snapshot();
        if self.last_pub.as_ref() == Some(&snap) {
            return;
        }
        if let Some(prev) = &self.last_pub {
            log_changes(&self.cfg, prev.as_ref(), snap.as_ref());
        }
        let msg = EventMsg {
            ts_us: now_us(),
            snap: snap.clone(),
            helper: None,
        };
        if let Ok(line) = serde_json::to_string(&msg) {
            self.subs.retain(|s| s.send(line.clone()).is_ok());
        }
        self.last_pub = Some(snap);
    }

    /// Resets the per-link state after the link ended.
    pub fn link_lost(&mut self) {
        let was_connected = self.conn == ConnState::Connected;
        self.link = None;
        self.peer_role = Role::Unknown;
        self.peer_disk = DiskState::DUnknown;
        self.repl = Repl::Off;
        self.path_established = false;
        self.stats.inflight_acked_b = 0;
        self.stats.unacked = 0;
        self.stats.rs_start = None;
        if was_connected && self.role == Role::Primary {
            self.need_new_gen = true;
        }
        if let Some(b) = self.blk.as_mut() {
            // writes in flight become out of sync; their waiters wake up
            // (and see a fencing suspension set in the same state change)
            b.link_down();
            let _ = b.flush_bitmap();
        }
        self.recompute_oos();
        if self.meta_dirty {
            self.persist();
        }
    }
}

/// The peer device has a disk attached (it can store replicated writes).
pub fn peer_has_disk(d: DiskState) -> bool {
    !matches!(
        d,
        DiskState::Diskless
            | DiskState::Failed
            | DiskState::Attaching
            | DiskState::Detaching
            | DiskState::DUnknown
    )
}

/// Writes kernel-log-like lines for state transitions to stderr.
fn log_changes(cfg: &Config, old: Option<&Snapshot>, new: Option<&Snapshot>) {
    let r = &cfg.resource;
    let p = &cfg.peer.hostname;
    match (old, new) {
        (None, Some(_)) => eprintln!("drbd {r}: resource created"),
        (Some(_), None) => eprintln!("drbd {r}: resource destroyed"),
        (Some(o), Some(n)) => {
            let mut parts = Vec::new();
            if o.role != n.role {
                parts.push(format!("role( {} -> {} )", o.role, n.role));
            }
            if o.suspended != n.suspended {
                parts.push(format!("susp-io( {} -> {} )", o.suspended, n.suspended));
            }
            if !parts.is_empty() {
                eprintln!("drbd {r}: {}", parts.join(" "));
            }
            if o.device.disk != n.device.disk {
                eprintln!(
                    "drbd {r}/0 drbd{}: disk( {} -> {} )",
                    cfg.minor, o.device.disk, n.device.disk
                );
            }
            let (oc, nc) = (&o.connection, &n.connection);
            let mut parts = Vec::new();
            if oc.connection != nc.connection {
                parts.push(format!("conn( {} -> {} )", oc.connection, nc.connection));
            }
            if oc.peer_role != nc.peer_role {
                parts.push(format!("peer( {} -> {} )", oc.peer_role, nc.peer_role));
            }
            if !parts.is_empty() {
                eprintln!("drbd {r} {p}: {}", parts.join(" "));
            }
            let (op, np) = (&o.peer_device, &n.peer_device);
            let mut parts = Vec::new();
            if op.peer_disk != np.peer_disk {
                parts.push(format!("pdsk( {} -> {} )", op.peer_disk, np.peer_disk));
            }
            if op.replication != np.replication {
                parts.push(format!("repl( {} -> {} )", op.replication, np.replication));
            }
            if !parts.is_empty() {
                eprintln!("drbd {r}/0 drbd{} {p}: {}", cfg.minor, parts.join(" "));
            }
        }
        (None, None) => {}
    }
}

/// Runs the daemon; returns the process exit code.
pub fn run(config_path: &Path) -> i32 {
    let cfg = match Config::load(config_path) {
        Ok(c) => Arc::new(c),
        Err(e) => {
            eprintln!("drbd-emu: {e}");
            return 1;
        }
    };
    let meta_dir = cfg.meta_dir();
    let dirs = if cfg.is_block() {
        vec![&cfg.state_dir, &meta_dir]
    } else {
        vec![&cfg.state_dir, &cfg.data_dir, &meta_dir]
    };
    for d in dirs {
        if let Err(e) = std::fs::create_dir_all(d) {
            eprintln!("drbd-emu: cannot create {}: {e}", d.display());
            return 1;
        }
    }
    // One daemon per host: hold an exclusive lock for the process lifetime.
    let lock = match std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cfg.lock_path())
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("drbd-emu: cannot open lock file: {e}");
            return 1;
        }
    };
    // SAFETY: flock on a valid, owned file descriptor.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "drbd-emu: another daemon is running for {}",
            cfg.state_dir.display()
        );
        return 1;
    }
    {
        // the lock file names the daemon holding it
        use std::io::Write;
        let _ = lock.set_len(0);
        let _ = (&lock).write_all(format!("{}\n", std::process::id()).as_bytes());
    }
    // The metadata of a "volume" (meta_dir elsewhere) is attached by one
    // host at a time.
    let _meta_lock = match cfg.meta_lock_path() {
        None => None,
        Some(p) => match lock_exclusive(&p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!(
                    "drbd-emu: the metadata in {} is in use by another daemon ({}: {e})",
                    cfg.meta_dir().display(),
                    p.display()
                );
                return 1;
            }
        },
    };
    if cfg.device.private_mount_namespace {
        // still single-threaded: the whole process moves
        if let Err(e) = crate::block::private_mount_namespace() {
            eprintln!("drbd-emu: cannot set up a private mount namespace: {e}");
            return 1;
        }
        eprintln!("drbd-emu: running in a private mount namespace (mounts made private)");
    }
    let meta = match Meta::load(&cfg.meta_path()) {
        Ok(Some(m)) => m,
        Ok(None) => {
            let m = Meta::fresh();
            if let Err(e) = m.store(&cfg.meta_path()) {
                eprintln!("drbd-emu: cannot write meta data: {e}");
                return 1;
            }
            m
        }
        Err(e) => {
            eprintln!(
                "drbd-emu: corrupt meta data {}: {e}",
                cfg.meta_path().display()
            );
            return 1;
        }
    };
    let (blk, fs_size_kib) = if cfg.is_block() {
        crate::block::cleanup_stale(&cfg);
        match crate::block::BlockState::open(&cfg) {
            Ok(b) => (Some(b), cfg.device_bytes() / 1024),
            Err(e) => {
                eprintln!(
                    "drbd-emu: cannot open backing file {}: {e}",
                    cfg.backing_file().display()
                );
                return 1;
            }
        }
    } else {
        tree::remove_temp_files(&cfg.data_dir);
        (None, fs_size_kib(&cfg.data_dir))
    };
    let _ = std::fs::remove_file(cfg.socket_path());

    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("drbd-emu: cannot start runtime: {e}");
            return 1;
        }
    };
    let code = rt.block_on(async move {
        let listener = match UnixListener::bind(cfg.socket_path()) {
            Ok(l) => l,
            Err(e) => {
                eprintln!(
                    "drbd-emu: cannot bind control socket {}: {e}",
                    cfg.socket_path().display()
                );
                return 1;
            }
        };
        let core = Core {
            cfg: cfg.clone(),
            up: false,
            attached: false,
            disk_transient: None,
            role: Role::Secondary,
            meta,
            meta_dirty: false,
            conn: ConnState::StandAlone,
            want_connect: false,
            discard_my_data: false,
            peer_role: Role::Unknown,
            peer_disk: DiskState::DUnknown,
            peer_gen: 0,
            peer_history: Vec::new(),
            repl: Repl::Off,
            path_established: false,
            need_new_gen: false,
            local: None,
            stats: Stats::default(),
            link: None,
            epoch: 0,
            susp_fen: false,
            pdsk_fenced: None,
            blk,
            subs: Vec::new(),
            last_pub: None,
            last_persist: Instant::now(),
            fs_size_kib,
        };
        let sh = Arc::new(Shared {
            cfg: Mutex::new(cfg.clone()),
            core: Mutex::new(core),
            wake: Notify::new(),
        });
        sh.lock().publish();
        // Block mode: the device file through FUSE, a loop device on it.
        let _fuse = if cfg.is_block() {
            match crate::block::mount(&sh) {
                Ok(s) => Some(s),
                Err(e) => {
                    eprintln!(
                        "drbd-emu: cannot mount the device file system on {}: {e} (needs /dev/fuse and root)",
                        cfg.mount_dir().display()
                    );
                    return 1;
                }
            }
        } else {
            None
        };
        if cfg.is_block() && cfg.device.loop_device.unwrap_or(true) {
            let s2 = sh.clone();
            match tokio::task::spawn_blocking(move || crate::block::setup_loop(&s2)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    eprintln!("drbd-emu: cannot set up the loop device: {e}");
                    return 1;
                }
                Err(e) => {
                    eprintln!("drbd-emu: cannot set up the loop device: {e}");
                    return 1;
                }
            }
        }
        tokio::spawn(repl::connector(sh.clone()));
        tokio::spawn(repl::scanner(sh.clone()));
        tokio::spawn(ticker(sh.clone()));
        if cfg.auto_up {
            let r = handle(&sh, Request::Up).await;
            if r.exit != 0 {
                eprint!("{}", r.stderr);
            }
        }
        eprintln!(
            "drbd-emu: {} ({}, node-id {}) running, control socket {}",
            cfg.resource,
            cfg.hostname,
            cfg.node_id,
            cfg.socket_path().display()
        );
        loop {
            match listener.accept().await {
                Ok((s, _)) => {
                    tokio::spawn(client(sh.clone(), s));
                }
                Err(e) => {
                    eprintln!("drbd-emu: accept on control socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    drop(lock);
    code
}

/// Opens (creating) `p` and takes an exclusive, non-blocking flock on it.
pub fn lock_exclusive(p: &Path) -> std::io::Result<std::fs::File> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(p)?;
    // SAFETY: flock on a valid, owned file descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(f)
}

fn fs_size_kib(p: &Path) -> u64 {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return 0;
    };
    // SAFETY: statvfs writes into the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return 0;
    }
    (st.f_blocks as u64).saturating_mul(st.f_frsize as u64) / 1024
}

/// Publishes counters every 100 ms and persists a dirty peer manifest.
async fn ticker(sh: Arc<Shared>) {
    let mut iv = tokio::time::interval(Duration::from_millis(100));
    loop {
        iv.tick().await;
        let mut c = sh.lock();
        c.recompute_oos();
        c.publish();
        if let Some(b) = c.blk.as_mut() {
            if let Err(e) = b.flush_bitmap() {
                eprintln!("drbd {}: writing the bitmap: {e}", sh.cfg().resource);
            }
        }
        if c.meta_dirty && c.last_persist.elapsed() > Duration::from_millis(500) {
            c.persist();
        }
    }
}

/// Serves one control-socket client.
async fn client(sh: Arc<Shared>, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = String::new();
    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
        return;
    }
    let req: Request = match serde_json::from_str(&line) {
        Ok(q) => q,
        Err(e) => {
            let resp = Response::fail(20, format!("bad request: {e}"));
            let _ = write_json(&mut w, &resp).await;
            return;
        }
    };
    if let Request::Events = req {
        let (tx, mut rx) = mpsc::unbounded_channel::<String>();
        let first = {
            let mut c = sh.lock();
            c.subs.push(tx);
            EventMsg {
                ts_us: now_us(),
                snap: c.snapshot(),
                helper: None,
            }
        };
        if write_json(&mut w, &first).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(mut m) = m else { return };
                    m.push('\n');
                    if w.write_all(m.as_bytes()).await.is_err() {
                        return;
                    }
                }
                // The client hung up (EOF / error on its side of the socket).
                n = r.read_line(&mut line) => {
                    if n.unwrap_or(0) == 0 {
                        return;
                    }
                }
            }
        }
    }
    let resp = handle(&sh, req).await;
    let _ = write_json(&mut w, &resp).await;
}

async fn write_json<T: serde::Serialize>(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    v: &T,
) -> std::io::Result<()> {
    let mut s = serde_json::to_string(v).map_err(std::io::Error::other)?;
    s.push('\n');
    w.write_all(s.as_bytes()).await
}

fn no_such_resource(cfg: &Config) -> Response {
    Response::fail(10, format!("{}: No such resource", cfg.resource))
}

fn state_change_failed(cfg: &Config, code: i32, text: &str) -> Response {
    Response::fail(
        11,
        format!("{}: State change failed: ({code}) {text}", cfg.resource),
    )
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
async fn wait_for(sh: &Shared, limit: Duration, cond: impl Fn(&Core) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond(&sh.lock()) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn scan_local(cfg: &Config) -> Manifest {
    if cfg.is_block() {
        return Manifest::new();
    }
    tokio::task::block_in_place(|| tree::scan(&cfg.data_dir)).unwrap_or_else(|e| {
        eprintln!("drbd-emu: scanning {}: {e}", cfg.data_dir.display());
        Manifest::new()
    })
}

/// One attempt of `primary`: the response, or `Err(())` when the
/// fence-peer handler must run first (it has not been tried yet).
fn promote(
    c: &mut Core,
    force: bool,
    fenced_tried: bool,
    baseline: &Manifest,
) -> Result<Response, ()> {
    let cfg = c.cfg.clone();
    if !c.up {
        return Ok(no_such_resource(&cfg));
    }
    if c.role == Role::Primary {
        return Ok(Response::ok());
    }
    let connected = c.conn == ConnState::Connected;
    if connected && c.peer_role == Role::Primary {
        return Ok(state_change_failed(
            &cfg,
            -1,
            "Multiple primaries not allowed by config",
        ));
    }
    let mut forced = false;
    if c.disk() != DiskState::UpToDate {
        if !force || !c.attached || c.disk_transient.is_some() {
            return Ok(state_change_failed(
                &cfg,
                -2,
                "Need access to UpToDate data",
            ));
        }
        if connected && c.repl == Repl::SyncTarget {
            // our data is being overwritten by the peer's resync
            return Ok(state_change_failed(
                &cfg,
                -2,
                "Need access to UpToDate data",
            ));
        }
        forced = true;
    }
    let needs_fencing = cfg.net.fencing != Fencing::DontCare
        && !(connected && c.repl != Repl::Off)
        && !c.peer_outdated();
    if needs_fencing && !forced {
        if !fenced_tried {
            return Err(());
        }
        if !force {
            return Ok(state_change_failed(
                &cfg,
                -7,
                "Refusing to be Primary while peer is not outdated",
            ));
        }
        eprintln!(
            "drbd {} {}: Forced into split brain situation!",
            cfg.resource, cfg.peer.hostname
        );
    }
    if forced {
        c.meta.new_generation();
        c.meta.disk = DiskState::UpToDate;
        c.persist();
        c.need_new_gen = false;
        if let Some(b) = c.blk.as_mut() {
            // nothing is known about the peer's blocks: full sync
            b.set_all();
            let _ = b.flush_bitmap();
        }
    } else {
        c.need_new_gen = !(connected && c.repl != Repl::Off);
    }
    c.role = Role::Primary;
    if let Some(dev) = c.blk.as_ref().and_then(|b| b.loop_dev.clone()) {
        crate::block::set_loop_writable(&dev, true);
    }
    if !cfg.is_block() {
        c.local = Some(baseline.clone());
    }
    c.recompute_oos();
    let m = c.state_msg();
    c.send(m);
    if forced {
        c.maybe_resync();
    }
    c.publish();
    Ok(Response::ok())
}

/// Executes one control request.
pub async fn handle(sh: &Arc<Shared>, req: Request) -> Response {
    let cfg = sh.cfg();
    match req {
        Request::Snapshot => Response {
            snapshot: sh.lock().snapshot(),
            ..Response::ok()
        },
        Request::Events => Response::fail(20, "events must be streamed"),
        Request::Up => up(sh),
        Request::Down => {
            {
                let mut c = sh.lock();
                if !c.up {
                    return Response::ok();
                }
                c.want_connect = false;
                if let Some(l) = &c.link {
                    l.abort.notify_one();
                }
            }
            sh.wake.notify_one();
            wait_for(sh, Duration::from_secs(5), |c| c.link.is_none()).await;
            let mut c = sh.lock();
            c.link = None;
            c.conn = ConnState::StandAlone;
            c.role = Role::Secondary;
            c.local = None;
            c.persist();
            c.up = false;
            c.attached = false;
            c.disk_transient = None;
            c.susp_fen = false;
            c.pdsk_fenced = None;
            // a fence-peer handler still running belongs to the old resource
            c.epoch += 1;
            c.publish();
            Response::ok()
        }
        Request::Primary { force } => {
            let baseline = scan_local(&cfg);
            // DRBD's drbd_set_role(): with fencing, a node without a
            // connected peer that does not know the peer to be outdated
            // runs the fence-peer handler first (SS_PRIMARY_NOP), then
            // retries.
            let mut fenced_tried = false;
            loop {
                {
                    let mut c = sh.lock();
                    if let Ok(r) = promote(&mut c, force, fenced_tried, &baseline) {
                        return r;
                    }
                }
                fenced_tried = true;
                fence::fence_now(sh).await;
            }
        }
        Request::Secondary => {
            {
                let c = sh.lock();
                if !c.up {
                    return no_such_resource(&cfg);
                }
                if c.role == Role::Secondary {
                    return Response::ok();
                }
            }
            if cfg.is_block() {
                return demote_block(sh).await;
            }
            // While I/O is suspended for fencing, writes made meanwhile are
            // "frozen I/O": DRBD's demotion (fsync of the device) waits for
            // them until I/O resumes.
            loop {
                let fresh = scan_local(&cfg);
                let frozen = {
                    let c = sh.lock();
                    c.susp_fen && c.role == Role::Primary && c.local.as_ref() != Some(&fresh)
                };
                if !frozen {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // Like protocol C: the peer has every write before we demote.
            let fresh = scan_local(&cfg);
            {
                let mut c = sh.lock();
                c.local = Some(fresh);
                c.recompute_oos();
            }
            wait_for(sh, Duration::from_secs(120), |c| {
                !(c.conn == ConnState::Connected && c.repl == Repl::Established)
                    || c.local
                        .as_ref()
                        .is_none_or(|l| tree::next_op(l, &c.meta.peer_known).is_none())
            })
            .await;
            let mut c = sh.lock();
            c.role = Role::Secondary;
            c.need_new_gen = false;
            if c.repl != Repl::SyncSource {
                c.local = None;
            }
            let m = c.state_msg();
            c.send(m);
            c.publish();
            Response::ok()
        }
        Request::Connect { discard_my_data } => {
            {
                let mut c = sh.lock();
                if !c.up {
                    return no_such_resource(&cfg);
                }
                if c.want_connect {
                    return Response::fail(
                        10,
                        format!(
                            "{}: Failure: (125) Device has a net-config (use disconnect first)",
                            cfg.resource
                        ),
                    );
                }
                c.want_connect = true;
                c.discard_my_data = discard_my_data;
                c.conn = ConnState::Unconnected;
                c.publish();
            }
            sh.wake.notify_one();
            Response::ok()
        }
        Request::Disconnect => {
            {
                let mut c = sh.lock();
                if !c.up {
                    return no_such_resource(&cfg);
                }
                if !c.want_connect && c.link.is_none() {
                    return Response::ok();
                }
                c.want_connect = false;
                if let Some(l) = &c.link {
                    l.abort.notify_one();
                }
            }
            sh.wake.notify_one();
            wait_for(sh, Duration::from_secs(5), |c| {
                c.link.is_none() && c.conn == ConnState::StandAlone
            })
            .await;
            Response::ok()
        }
        Request::Outdate => {
            let mut c = sh.lock();
            if !c.up {
                return no_such_resource(&cfg);
            }
            if c.role == Role::Primary {
                return state_change_failed(&cfg, -2, "Need access to UpToDate data");
            }
            if c.conn == ConnState::Connected {
                return state_change_failed(&cfg, -6, "Refusing to be Outdated while Connected");
            }
            match c.disk() {
                DiskState::UpToDate | DiskState::Consistent | DiskState::Outdated => {
                    c.set_disk(DiskState::Outdated);
                    c.publish();
                    Response::ok()
                }
                DiskState::Diskless => state_change_failed(
                    &cfg,
                    -11,
                    "Device is diskless, the requested operation requires a disk",
                ),
                _ => state_change_failed(&cfg, -16, "Disk state is lower than outdated"),
            }
        }
        Request::ResumeIo => {
            let mut c = sh.lock();
            if !c.up {
                return no_such_resource(&cfg);
            }
            c.resume_fencing(true, "resume-io");
            c.publish();
            Response::ok()
        }
        Request::Adjust => adjust(sh).await,
        Request::Attach => attach(sh),
        Request::Show { show_defaults } => {
            let c = sh.lock();
            if !c.up {
                return no_such_resource(&cfg);
            }
            Response {
                stdout: crate::format::show_text(&c.cfg, c.conn, show_defaults),
                ..Response::ok()
            }
        }
        Request::CreateMd => {
            let mut c = sh.lock();
            if c.up {
                return Response::fail(
                    20,
                    format!(
                        "Device '{}' is configured!\nCommand 'drbdmeta {} v09 {} internal create-md 1' terminated with exit code 20",
                        cfg.minor,
                        cfg.minor,
                        cfg.backing_dev().display()
                    ),
                );
            }
            c.meta = Meta::fresh();
            c.persist();
            if let Some(b) = c.blk.as_mut() {
                b.clear_oos(0..b.nblocks());
                let _ = b.flush_bitmap();
            }
            Response {
                stdout: CREATE_MD_OUTPUT.into(),
                ..Response::ok()
            }
        }
    }
}

/// Re-reads the config file (as drbdadm reads it for every command).
/// Keys that need a daemon restart must not have changed.
fn reload_config(sh: &Shared) -> Result<Arc<Config>, crate::config::ConfigError> {
    sh.cfg().reload().map(Arc::new)
}

fn config_failure(e: crate::config::ConfigError) -> Response {
    Response::fail(20, format!("drbd-emu: {e}"))
}

/// The peer of `new` is another one than that of `old` (or reached
/// another way): forget everything learnt about the old one. The bitmap
/// and the peer manifest belong to the peer's node id (DRBD keeps them
/// per peer slot): a new node id starts with every block out of sync and
/// an unknown manifest; the same node id keeps them (a fresh disk there
/// has generation 0 and gets a full resync anyway).
fn switch_peer(c: &mut Core, old: &Config, new: &Config) {
    if old.peer == new.peer && old.listen == new.listen {
        return;
    }
    c.peer_role = Role::Unknown;
    c.peer_disk = DiskState::DUnknown;
    c.peer_gen = 0;
    c.peer_history.clear();
    c.pdsk_fenced = None;
    c.discard_my_data = false;
    c.stats.sent_b = 0;
    c.stats.received_b = 0;
    c.stats.unacked = 0;
    c.stats.inflight_acked_b = 0;
    c.stats.rs_total_kib = 0;
    c.stats.rs_start = None;
    if old.peer.node_id != new.peer.node_id {
        c.meta.peer_known.clear();
        c.meta_dirty = true;
        if let Some(b) = c.blk.as_mut() {
            b.set_all();
            if let Err(e) = b.flush_bitmap() {
                eprintln!("drbd {}: writing the bitmap: {e}", new.resource);
            }
        }
    }
    c.recompute_oos();
}

/// `drbdadm up`: re-reads the config, then new-resource, new-minor,
/// attach (disk state from the metadata), new-peer, new-path, connect.
fn up(sh: &Arc<Shared>) -> Response {
    let new = match reload_config(sh) {
        Ok(n) => n,
        Err(e) => return config_failure(e),
    };
    let cfg = new.clone();
    {
        let mut c = sh.lock();
        if c.up {
            return Response::fail(
                10,
                format!(
                    "{}: Failure: (161) Minor or volume exists already (delete it first)",
                    cfg.resource
                ),
            );
        }
        match Meta::load(&cfg.meta_path()) {
            Ok(Some(m)) => c.meta = m,
            Ok(None) => {
                c.meta = Meta::fresh();
                c.persist();
            }
            Err(e) => {
                return Response::fail(
                    10,
                    format!("{}: Failure: (118) IO error(s) occurred during initial access to meta-data: {e}", cfg.resource),
                )
            }
        }
        let old = c.cfg.clone();
        switch_peer(&mut c, &old, &new);
        sh.install_cfg(&mut c, new);
        // new-resource, new-minor (Diskless), new-peer, new-path
        c.up = true;
        c.attached = false;
        c.disk_transient = None;
        c.role = Role::Secondary;
        c.conn = ConnState::StandAlone;
        c.want_connect = false;
        c.repl = Repl::Off;
        c.stats = Stats::default();
        c.need_new_gen = false;
        c.susp_fen = false;
        c.pdsk_fenced = None;
        c.publish();
        // attach
        c.attached = true;
        apply_full_sync(&mut c);
        c.publish();
        // connect
        c.want_connect = true;
        c.conn = ConnState::Unconnected;
        c.publish();
    }
    sh.wake.notify_one();
    Response::ok()
}

/// Block mode: metadata marked for a full sync (the bitmap could not be
/// written when the disk failed): every block out of sync, persisted in
/// the bitmap; then the mark is no longer needed.
fn apply_full_sync(c: &mut Core) {
    if !c.meta.full_sync {
        return;
    }
    let Some(b) = c.blk.as_mut() else {
        c.meta.full_sync = false;
        c.persist();
        return;
    };
    b.set_all();
    match b.flush_bitmap() {
        Ok(()) => {
            eprintln!(
                "drbd {}: the bitmap was not trusted after a failed disk: full sync",
                c.cfg.resource
            );
            c.meta.full_sync = false;
            c.persist();
        }
        Err(e) => eprintln!("drbd {}: writing the bitmap: {e}", c.cfg.resource),
    }
}

/// `drbdsetup attach` / `drbdadm attach`: attaches the backing disk of a
/// Diskless resource (after `on-io-error detach`). The disk goes
/// `Attaching`, the backing file must open for reading and writing and its
/// first block read back (else `(104) Can not open backing device`,
/// exit 10, Diskless again), then the disk state comes from the metadata
/// (`Outdated` after an I/O error). Connected: the attaching side sends its
/// state and bitmap and the peer decides the resync as in a handshake
/// (`repl::Msg::Attached`): normally this host becomes SyncTarget of the
/// blocks written meanwhile (a full sync if the bitmap was not trusted)
/// and `UpToDate` when it ends.
fn attach(sh: &Arc<Shared>) -> Response {
    let cfg = sh.cfg();
    {
        let mut c = sh.lock();
        if !c.up {
            return no_such_resource(&cfg);
        }
        if c.attached || c.disk_transient.is_some() {
            return Response::fail(
                10,
                format!(
                    "{}: Failure: (124) Device is attached to a disk (use detach first)",
                    cfg.resource
                ),
            );
        }
        c.disk_transient = Some(DiskState::Attaching);
        c.publish();
    }
    // The backing storage must answer; the metadata (in memory, persisted
    // when the disk was detached) must still be readable.
    let check = || -> std::io::Result<()> {
        if cfg.is_block() {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(cfg.backing_file())?;
            let mut first = [0u8; 4096];
            f.read_exact_at(&mut first, 0)?;
        } else {
            std::fs::read_dir(&cfg.data_dir)?;
        }
        Meta::load(&cfg.meta_path())?.map(|_| ()).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no meta data (create-md)")
        })
    };
    let checked = check();
    let mut c = sh.lock();
    c.disk_transient = None;
    if let Err(e) = checked {
        c.publish();
        return Response::fail(
            10,
            format!(
                "{}: Failure: (104) Can not open backing device ({}: {e})",
                cfg.resource,
                cfg.backing_dev().display()
            ),
        );
    }
    c.attached = true;
    apply_full_sync(&mut c);
    eprintln!(
        "drbd {}/0 drbd{}: attached to {} (disk {})",
        cfg.resource,
        cfg.minor,
        cfg.backing_dev().display(),
        c.meta.disk
    );
    c.recompute_oos();
    c.publish();
    if c.conn == ConnState::Connected && c.link.is_some() {
        c.send_attached();
    }
    Response::ok()
}

/// `drbdadm adjust`: re-reads the config file and brings the running
/// resource to it, as drbdadm's adjust does with drbdsetup commands:
///
/// * down: `up`;
/// * `[peer]` or `listen` changed: del-peer (the connection goes
///   `Disconnecting`/`StandAlone`, events2 destroys the old path,
///   peer-device and connection), new-peer + new-path (events2 creates
///   them with the new `conn-name`), connect. Local I/O goes on meanwhile
///   (writes waiting for the old peer complete locally and are counted
///   out of sync, as when a link is lost);
/// * otherwise the other keys (tuning, `[net]`, handlers) are taken over
///   (tuning for the next connection) and a StandAlone resource connects.
async fn adjust(sh: &Arc<Shared>) -> Response {
    let new = match reload_config(sh) {
        Ok(n) => n,
        Err(e) => return config_failure(e),
    };
    let (up_now, peer_changed) = {
        let c = sh.lock();
        (c.up, c.cfg.peer != new.peer || c.cfg.listen != new.listen)
    };
    if !up_now {
        return up(sh);
    }
    if !peer_changed {
        // drbdadm adjust attaches a configured disk that is not attached
        let diskless = {
            let c = sh.lock();
            !c.attached && c.disk_transient.is_none()
        };
        if diskless {
            let r = attach(sh);
            if r.exit != 0 {
                return r;
            }
        }
        {
            let mut c = sh.lock();
            sh.install_cfg(&mut c, new);
            if c.want_connect {
                return Response::ok();
            }
            c.want_connect = true;
            c.discard_my_data = false;
            c.conn = ConnState::Unconnected;
            c.publish();
        }
        sh.wake.notify_one();
        return Response::ok();
    }
    // del-peer: tear the connection down (as `disconnect`)
    {
        let mut c = sh.lock();
        c.want_connect = false;
        if let Some(l) = &c.link {
            l.abort.notify_one();
        }
    }
    sh.wake.notify_one();
    let down = wait_for(sh, Duration::from_secs(10), |c| {
        c.link.is_none() && c.conn == ConnState::StandAlone
    })
    .await;
    let mut c = sh.lock();
    if !down {
        c.want_connect = true;
        drop(c);
        sh.wake.notify_one();
        return Response::fail(
            10,
            format!(
                "{}: Failure: drbd-emu: the connection to {} did not go down within 10 s",
                new.resource,
                sh.cfg().peer.hostname
            ),
        );
    }
    if !c.up {
        return no_such_resource(&new);
    }
    let old = c.cfg.clone();
    eprintln!(
        "drbd {}: adjust: peer {} (node-id {}, {}) -> {} (node-id {}, {}), local {} -> {}",
        new.resource,
        old.peer.hostname,
        old.peer.node_id,
        drbd_addr(&old.peer.address),
        new.peer.hostname,
        new.peer.node_id,
        drbd_addr(&new.peer.address),
        drbd_addr(&old.listen),
        drbd_addr(&new.listen),
    );
    // a fence-peer handler still running was about the old peer
    c.epoch += 1;
    switch_peer(&mut c, &old, &new);
    // new-peer, new-path: events2 destroys the old objects, creates the new
    sh.install_cfg(&mut c, new);
    c.publish();
    // connect
    c.want_connect = true;
    c.conn = ConnState::Unconnected;
    c.publish();
    drop(c);
    sh.wake.notify_one();
    Response::ok()
}

/// `secondary` in block mode: refused while the loop device is mounted
/// (DRBD: held open); waits for frozen writes (fencing) and for the peer
/// to acknowledge every write, then demotes and makes the loop device
/// read-only.
async fn demote_block(sh: &Arc<Shared>) -> Response {
    let cfg = sh.cfg();
    let dev = sh.lock().blk.as_ref().and_then(|b| b.loop_dev.clone());
    if dev.as_deref().is_some_and(crate::block::loop_in_use) {
        return state_change_failed(&cfg, -12, "Device is held open by someone");
    }
    loop {
        let busy = {
            let c = sh.lock();
            c.blk.as_ref().is_some_and(|b| b.writers > 0)
        };
        if !busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_for(sh, Duration::from_secs(120), |c| {
        c.blk.as_ref().is_none_or(|b| b.pending_count() == 0)
    })
    .await;
    let mut c = sh.lock();
    if c.role == Role::Secondary {
        return Response::ok();
    }
    c.role = Role::Secondary;
    c.need_new_gen = false;
    if let Some(d) = &dev {
        crate::block::set_loop_writable(d, false);
    }
    let m = c.state_msg();
    c.send(m);
    c.publish();
    Response::ok()
}

/// What `drbdadm create-md` prints on success.
pub const CREATE_MD_OUTPUT: &str = "initializing activity log\ninitializing bitmap (4 KB) to all zero\nWriting meta data...\nNew drbd meta data block successfully created.\n";
