//! Replication link between the two hosts: connection handling and the
//! wire protocol.
//!
//! One TCP connection per pair: the host with the lower node id dials (bound
//! to its `listen` IP), the other accepts on `listen`. Frames are a 4-byte
//! big-endian length + a JSON [`Msg`]; a `Chunk` frame is followed by a
//! 4-byte length + raw bytes. Control frames (ping/pong, acks, state) go
//! ahead of data frames.
//!
//! Handshake: both send `Hello` (node id, role, disk state, data generation
//! and history) and `Manifest` (their tree). [`decide`] then picks, the same
//! way on both sides: in sync (`Established`), `SyncSource`/`SyncTarget`
//! (the target's disk is `Inconsistent` until `SyncDone` makes it
//! `UpToDate` with the source's generation), or split brain (both went
//! `StandAlone`, nothing synced, as DRBD without after-sb policies).
//!
//! Data flows from the SyncSource, or when `Established` from the Primary:
//! the sender takes the next difference between its last scan and the
//! peer's manifest (deletes, directories, symlinks, files in 64 KiB chunks,
//! throttled by `resync_rate_kib`), and stops-and-waits for the `Ack` of
//! each item. The receiver writes files to a temp name, fsyncs, sets mode
//! and mtime, renames into place, then acks. Replication is asynchronous:
//! the Primary's scan finds writes up to `scan_interval_ms` later, so
//! `out-of-sync` may briefly be non-zero while `Established`.
//!
//! Failure detection: EOF / reset => `BrokenPipe`; no frame for
//! `ping_timeout_ms` although we ping every `ping_interval_ms`
//! => `NetworkFailure` (a cut network or a frozen peer).

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};

use crate::daemon::{Link, Shared};
use crate::model::{ConnState, DiskState, Repl, Role};
use crate::tree::{self, Entry, Manifest, Op};

/// A frame: header and optional payload (`Chunk`).
pub type Frame = (Msg, Option<Vec<u8>>);

/// Wire messages.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "m")]
pub enum Msg {
    /// First frame in both directions.
    Hello {
        /// Sender's node id.
        node_id: u32,
        /// Sender's hostname.
        hostname: String,
        /// Resource name.
        resource: String,
        /// Sender's role.
        role: Role,
        /// Sender's disk state.
        disk: DiskState,
        /// Sender's data generation.
        gen: u64,
        /// Sender's generation history.
        history: Vec<u64>,
        /// `connect --discard-my-data` on the sender.
        discard_my_data: bool,
    },
    /// Second frame in both directions: the sender's tree.
    Manifest {
        /// path -> entry.
        entries: Manifest,
    },
    /// Role / disk / generation changed.
    State {
        /// Role.
        role: Role,
        /// Disk state.
        disk: DiskState,
        /// Data generation.
        gen: u64,
        /// Generation history.
        history: Vec<u64>,
    },
    /// Keepalive.
    Ping,
    /// Keepalive answer.
    Pong,
    /// A regular file follows in `Chunk`s.
    FileBegin {
        /// Relative path.
        path: String,
    },
    /// File data (payload follows the header).
    Chunk,
    /// End of file: finish and rename into place.
    FileEnd {
        /// Relative path.
        path: String,
        /// Size / mtime / mode to apply.
        entry: Entry,
    },
    /// Create a directory or symlink.
    Put {
        /// Relative path.
        path: String,
        /// What to create.
        entry: Entry,
    },
    /// Remove a path (recursively).
    Delete {
        /// Relative path.
        path: String,
    },
    /// Item applied and durable.
    Ack {
        /// Relative path.
        path: String,
        /// The entry now present (None: deleted).
        entry: Option<Entry>,
    },
    /// Bytes of the current file written.
    ChunkAck {
        /// Bytes.
        bytes: u64,
    },
    /// Source's view of the resync progress.
    Progress {
        /// KiB still out of sync.
        oos_kib: u64,
        /// KiB total of this resync.
        total_kib: u64,
    },
    /// Block mode, third handshake frame: the sender's out-of-sync bitmap
    /// (4 KiB blocks, 64 per word) and device size.
    Bitmap {
        /// Device size in bytes.
        size: u64,
        /// Bitmap words.
        words: Vec<u64>,
    },
    /// Block mode: an application write (payload follows).
    BlkWrite {
        /// Sequence number for the acknowledgement.
        seq: u64,
        /// Byte offset.
        off: u64,
        /// Protocol B: acknowledge on receipt, not after the write.
        ack_on_receive: bool,
    },
    /// Block mode: flush (fdatasync) everything written before.
    BlkFlush {
        /// Sequence number for the acknowledgement.
        seq: u64,
    },
    /// Block mode: write / flush `seq` done (protocol C) or received (B).
    BlkAck {
        /// Sequence number.
        seq: u64,
    },
    /// Block mode: write / flush `seq` not done: the receiver has no disk
    /// (detached after an I/O error, or the write itself failed). The
    /// sender completes it on its own disk and counts its blocks out of
    /// sync (DRBD's `P_NEG_ACK`).
    BlkNegAck {
        /// Sequence number.
        seq: u64,
    },
    /// Block mode: the sender attached its disk while connected: its state
    /// and bitmap, for the receiver to decide the resync as in a handshake.
    Attached {
        /// Disk state after the attach.
        disk: DiskState,
        /// Data generation.
        gen: u64,
        /// Generation history.
        history: Vec<u64>,
        /// Out-of-sync bitmap words.
        words: Vec<u64>,
    },
    /// Answer to `Attached`: the decision from the attaching side's point
    /// of view and the agreed resync bitmap.
    AttachReply {
        /// Resync direction for the receiver of this message.
        decision: Decision,
        /// The blocks to resync.
        words: Vec<u64>,
    },
    /// Block mode: resync data (payload follows).
    BlkSync {
        /// Byte offset.
        off: u64,
    },
    /// Block mode: resync data written.
    BlkSyncAck {
        /// Byte offset.
        off: u64,
        /// Bytes.
        len: u64,
    },
    /// Resync complete: adopt this generation and disk state.
    SyncDone {
        /// Generation.
        gen: u64,
        /// History.
        history: Vec<u64>,
        /// Disk state.
        disk: DiskState,
    },
}

const MAX_FRAME: usize = 256 << 20;

/// Unacknowledged file bytes the sender may have in flight.
const WINDOW: u64 = 8 << 20;

async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, f: &Frame) -> io::Result<()> {
    let j = serde_json::to_vec(&f.0).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(8 + j.len() + f.1.as_ref().map_or(0, |p| p.len()));
    buf.extend_from_slice(&(j.len() as u32).to_be_bytes());
    buf.extend_from_slice(&j);
    if let Some(p) = &f.1 {
        buf.extend_from_slice(&(p.len() as u32).to_be_bytes());
        buf.extend_from_slice(p);
    }
    w.write_all(&buf).await
}

async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Frame> {
    let len = r.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "frame too large",
        ));
    }
    let mut j = vec![0; len];
    r.read_exact(&mut j).await?;
    let msg: Msg =
        serde_json::from_slice(&j).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let payload = if matches!(msg, Msg::Chunk | Msg::BlkWrite { .. } | Msg::BlkSync { .. }) {
        let n = r.read_u32().await? as usize;
        if n > MAX_FRAME {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "chunk too large",
            ));
        }
        let mut p = vec![0; n];
        r.read_exact(&mut p).await?;
        Some(p)
    } else {
        None
    };
    Ok((msg, payload))
}

/// One side's state as relevant for the handshake decision.
#[derive(Debug, Clone)]
pub struct Side {
    /// Node id.
    pub node_id: u32,
    /// Disk state.
    pub disk: DiskState,
    /// Data generation.
    pub gen: u64,
    /// History.
    pub history: Vec<u64>,
    /// `--discard-my-data`.
    pub discard: bool,
}

/// Outcome of the handshake, from one side's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Nothing to resync.
    InSync,
    /// We resync the peer.
    Source,
    /// The peer resyncs us.
    Target,
    /// Both sides have diverged.
    SplitBrain,
}

/// Decides resync direction; symmetric: `decide(a, b)` mirrors `decide(b, a)`.
pub fn decide(me: &Side, peer: &Side) -> Decision {
    if me.node_id > peer.node_id {
        return match decide(peer, me) {
            Decision::Source => Decision::Target,
            Decision::Target => Decision::Source,
            d => d,
        };
    }
    let (ag, bg) = (me.disk.has_good_data(), peer.disk.has_good_data());
    if me.discard && !peer.discard && bg {
        return Decision::Target;
    }
    if peer.discard && !me.discard && ag {
        return Decision::Source;
    }
    if me.gen == peer.gen {
        return match (ag, bg) {
            (true, false) => Decision::Source,
            (false, true) => Decision::Target,
            (true, true) if me.disk != peer.disk && me.disk == DiskState::UpToDate => {
                Decision::Source
            }
            (true, true) if me.disk != peer.disk && peer.disk == DiskState::UpToDate => {
                Decision::Target
            }
            _ => Decision::InSync,
        };
    }
    if !ag && !bg {
        return Decision::InSync;
    }
    let me_older = me.gen == 0 || peer.history.contains(&me.gen);
    let peer_older = peer.gen == 0 || me.history.contains(&peer.gen);
    if me_older && !peer_older && bg {
        return Decision::Target;
    }
    if peer_older && !me_older && ag {
        return Decision::Source;
    }
    match (ag, bg) {
        (true, false) => Decision::Source,
        (false, true) => Decision::Target,
        _ => Decision::SplitBrain,
    }
}

/// How a link ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Lost after being established (state to report).
    Lost(ConnState),
    /// Torn down locally (`disconnect` / `down`).
    Aborted,
    /// Split brain detected in the handshake.
    SplitBrain,
    /// The handshake did not complete.
    HandshakeFailed,
}

fn classify(e: &io::Error) -> ConnState {
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => ConnState::BrokenPipe,
        io::ErrorKind::InvalidData => ConnState::ProtocolError,
        _ => ConnState::NetworkFailure,
    }
}

/// Aborts the link's tasks whenever the link ends.
struct AbortOnDrop(Vec<tokio::task::AbortHandle>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for h in &self.0 {
            h.abort();
        }
    }
}

async fn sleep_or_wake(sh: &Shared, d: Duration) {
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = sh.wake.notified() => {}
    }
}

/// Keeps the link up while the resource is up and a connection is wanted.
pub async fn connector(sh: Arc<Shared>) {
    let mut listener: Option<TcpListener> = None;
    let mut listening_on = None;
    loop {
        // the peer, `listen` and the tuning may change with `adjust`
        let cfg = sh.cfg();
        let retry = Duration::from_millis(cfg.tuning.connect_retry_ms);
        let dial_timeout = Duration::from_millis(cfg.tuning.ping_timeout_ms.max(1000));
        let dialer = cfg.node_id < cfg.peer.node_id;
        if dialer || listening_on != Some(cfg.listen) {
            listener = None;
        }
        let (up, want) = {
            let mut c = sh.lock();
            if c.up && !c.want_connect && c.conn != ConnState::StandAlone && c.link.is_none() {
                c.conn = ConnState::StandAlone;
                c.publish();
            }
            (c.up, c.want_connect)
        };
        if !up || !want {
            // a StandAlone node does not listen (nothing piles up in the backlog)
            listener = None;
            sleep_or_wake(&sh, Duration::from_millis(200)).await;
            continue;
        }
        if !dialer && listener.is_none() {
            match TcpListener::bind(cfg.listen).await {
                Ok(l) => {
                    listener = Some(l);
                    listening_on = Some(cfg.listen);
                }
                Err(e) => {
                    eprintln!(
                        "drbd {}: cannot listen on {}: {e}",
                        cfg.resource, cfg.listen
                    );
                    sleep_or_wake(&sh, retry.max(Duration::from_millis(500))).await;
                    continue;
                }
            }
        }
        {
            let mut c = sh.lock();
            if c.conn != ConnState::Connecting {
                c.conn = ConnState::Connecting;
                c.publish();
            }
        }
        let stream: io::Result<TcpStream> = if dialer {
            let dial = async {
                let sock = if cfg.peer.address.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                let _ = sock.bind(std::net::SocketAddr::new(cfg.listen.ip(), 0));
                sock.connect(cfg.peer.address).await
            };
            tokio::select! {
                r = tokio::time::timeout(dial_timeout, dial) => {
                    r.unwrap_or_else(|_| Err(io::Error::new(io::ErrorKind::TimedOut, "connect timeout")))
                }
                _ = sh.wake.notified() => continue,
            }
        } else {
            let Some(l) = &listener else { continue };
            tokio::select! {
                r = l.accept() => r.map(|(s, _)| s),
                _ = sh.wake.notified() => continue,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            }
        };
        let stream = match stream {
            Ok(s) => s,
            Err(_) => {
                sleep_or_wake(&sh, retry).await;
                continue;
            }
        };
        let outcome = run_link(&sh, stream).await;
        {
            let mut c = sh.lock();
            let was_connected = c.conn == ConnState::Connected;
            match outcome {
                Outcome::SplitBrain => {
                    eprintln!(
                        "drbd {}/0 drbd{} {}: Split-Brain detected but unresolved, dropping connection!",
                        cfg.resource, cfg.minor, cfg.peer.hostname
                    );
                    c.want_connect = false;
                    c.link_lost();
                    c.conn = ConnState::StandAlone;
                }
                Outcome::Aborted => {
                    c.link_lost();
                    if was_connected {
                        c.conn = ConnState::Disconnecting;
                        c.publish();
                    }
                    c.conn = if c.want_connect {
                        ConnState::Unconnected
                    } else {
                        ConnState::StandAlone
                    };
                }
                Outcome::Lost(state) => {
                    c.link_lost();
                    if was_connected {
                        c.conn = state;
                        // same state change: suspend I/O (stonith), start fence-peer
                        crate::fence::on_link_lost(&sh, &mut c);
                        c.publish();
                    }
                    c.conn = if c.want_connect {
                        ConnState::Unconnected
                    } else {
                        ConnState::StandAlone
                    };
                }
                Outcome::HandshakeFailed => {
                    c.link_lost();
                }
            }
            c.publish();
        }
        if outcome != Outcome::Aborted {
            sleep_or_wake(&sh, retry).await;
        }
    }
}

fn scan_or_empty(sh: &Shared) -> Manifest {
    if sh.cfg().is_block() {
        return Manifest::new();
    }
    tokio::task::block_in_place(|| tree::scan(&sh.cfg().data_dir)).unwrap_or_else(|e| {
        eprintln!("drbd-emu: scanning {}: {e}", sh.cfg().data_dir.display());
        Manifest::new()
    })
}

/// Runs one link from handshake to teardown.
async fn run_link(sh: &Arc<Shared>, stream: TcpStream) -> Outcome {
    let cfg = sh.cfg();
    let _ = stream.set_nodelay(true);
    let (r, w) = stream.into_split();
    let mut r = BufReader::with_capacity(256 << 10, r);
    let (ctrl_tx, ctrl_rx) = mpsc::unbounded_channel::<Frame>();
    let (data_tx, data_rx) = mpsc::channel::<Frame>(4);
    let mut writer = tokio::spawn(writer_task(w, ctrl_rx, data_rx));
    let mut guard = AbortOnDrop(vec![writer.abort_handle()]);

    let my_manifest = scan_or_empty(sh);
    let (hello, discard, sent_disk) = {
        let c = sh.lock();
        (
            Msg::Hello {
                node_id: cfg.node_id,
                hostname: cfg.hostname.clone(),
                resource: cfg.resource.clone(),
                role: c.role,
                disk: c.disk(),
                gen: c.meta.gen,
                history: c.meta.history.clone(),
                discard_my_data: c.discard_my_data,
            },
            c.discard_my_data,
            c.disk(),
        )
    };
    let _ = ctrl_tx.send((hello, None));
    let _ = ctrl_tx.send((
        Msg::Manifest {
            entries: my_manifest.clone(),
        },
        None,
    ));
    let my_bitmap = {
        let c = sh.lock();
        c.blk.as_ref().map(|b| (b.size, b.handshake_bitmap()))
    };
    if let Some((size, words)) = &my_bitmap {
        let _ = ctrl_tx.send((
            Msg::Bitmap {
                size: *size,
                words: words.clone(),
            },
            None,
        ));
    }
    let hs = Duration::from_millis(cfg.tuning.ping_timeout_ms + 2000);
    let peer = match tokio::time::timeout(hs, read_frame(&mut r)).await {
        Ok(Ok((
            Msg::Hello {
                node_id,
                hostname,
                resource,
                role,
                disk,
                gen,
                history,
                discard_my_data,
            },
            _,
        ))) => {
            if node_id != cfg.peer.node_id || resource != cfg.resource {
                eprintln!(
                    "drbd {}: rejecting peer {hostname} (node-id {node_id}, resource {resource}): expected node-id {} resource {}",
                    cfg.resource, cfg.peer.node_id, cfg.resource
                );
                return Outcome::HandshakeFailed;
            }
            (role, disk, gen, history, discard_my_data)
        }
        _ => return Outcome::HandshakeFailed,
    };
    let peer_manifest = match tokio::time::timeout(hs, read_frame(&mut r)).await {
        Ok(Ok((Msg::Manifest { entries }, _))) => entries,
        _ => return Outcome::HandshakeFailed,
    };
    let peer_bitmap = if let Some((size, _)) = &my_bitmap {
        match tokio::time::timeout(hs, read_frame(&mut r)).await {
            Ok(Ok((Msg::Bitmap { size: ps, words }, _))) => {
                if ps != *size || words.len() != my_bitmap.as_ref().map_or(0, |b| b.1.len()) {
                    eprintln!(
                        "drbd {}: the peer's device has {ps} bytes, ours {size}: dropping connection",
                        cfg.resource
                    );
                    return Outcome::HandshakeFailed;
                }
                Some(words)
            }
            _ => return Outcome::HandshakeFailed,
        }
    } else {
        None
    };
    let (peer_role, peer_disk, peer_gen, peer_history, peer_discard) = peer;
    let abort = Arc::new(Notify::new());
    let decision = {
        let c = sh.lock();
        // decided on the disk state the peer got in our Hello (as the peer
        // decides), so that both sides reach the same decision
        let me = Side {
            node_id: cfg.node_id,
            disk: sent_disk,
            gen: c.meta.gen,
            history: c.meta.history.clone(),
            discard,
        };
        let them = Side {
            node_id: cfg.peer.node_id,
            disk: peer_disk,
            gen: peer_gen,
            history: peer_history.clone(),
            discard: peer_discard,
        };
        // A side without a disk (Diskless after an I/O error) has nothing to
        // resync from or to: connected, no resync; the bitmaps are kept.
        let diskless =
            !crate::daemon::peer_has_disk(me.disk) || !crate::daemon::peer_has_disk(them.disk);
        let mut decision = if diskless {
            Decision::InSync
        } else {
            decide(&me, &them)
        };
        if decision != Decision::SplitBrain && role_conflict(c.role, peer_role) {
            eprintln!(
                "drbd {}: both nodes are Primary, dropping connection",
                cfg.resource
            );
            decision = Decision::SplitBrain;
        }
        if let (Some((_, mine)), Some(theirs), false) = (&my_bitmap, &peer_bitmap, diskless) {
            decision = block_decision(decision, &me, &them, (c.role, peer_role), mine, theirs);
        }
        if decision == Decision::SplitBrain {
            None
        } else {
            Some((decision, diskless))
        }
    };
    let Some((decision, diskless)) = decision else {
        // Close gracefully so the peer surely reads our Hello and reaches
        // the same verdict: flush our frames, then wait for its EOF.
        drop(ctrl_tx);
        drop(data_tx);
        let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        let mut sink = [0u8; 4096];
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while matches!(r.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        return Outcome::SplitBrain;
    };
    let epoch = {
        let mut c = sh.lock();
        // torn down meanwhile, or `adjust` switched to another peer
        if !c.up || !c.want_connect || c.cfg.peer != cfg.peer || c.cfg.listen != cfg.listen {
            return Outcome::Aborted;
        }
        c.epoch += 1;
        c.link = Some(Link {
            ctrl: ctrl_tx.clone(),
            abort: abort.clone(),
        });
        c.discard_my_data = false;
        c.need_new_gen = false;
        c.meta.peer_known = peer_manifest;
        c.meta_dirty = true;
        c.local = Some(my_manifest);
        c.peer_gen = peer_gen;
        c.peer_history = peer_history;
        c.stats.inflight_acked_b = 0;
        c.stats.unacked = 0;
        // same order of events as the kernel: path, connection, peer device
        c.path_established = true;
        c.publish();
        c.conn = ConnState::Connected;
        c.peer_role = peer_role;
        c.peer_disk = peer_disk;
        c.pdsk_fenced = None;
        c.repl = Repl::Off;
        if let (Some((_, mine)), Some(theirs)) = (&my_bitmap, &peer_bitmap) {
            let target_gen = match decision {
                Decision::Source => peer_gen,
                _ => c.meta.gen,
            };
            let b = c.blk.as_mut().expect("block mode");
            b.oos = if diskless {
                // still out of sync: whatever either side recorded
                mine.iter().zip(theirs).map(|(a, b)| a | b).collect()
            } else {
                resync_bitmap(decision, target_gen, mine, theirs, b.nblocks())
            };
            if let Err(e) = b.flush_bitmap() {
                eprintln!("drbd {}: writing the bitmap: {e}", cfg.resource);
            }
        }
        // "case2: The connection was established again": resume without
        // a new data generation
        c.resume_fencing(false, "connection established again");
        c.publish();
        match decision {
            Decision::Source => c.start_sync_source(),
            Decision::Target => c.start_sync_target(),
            _ => {
                c.repl = Repl::Established;
                c.stats.oos_kib = 0;
                c.recompute_oos();
            }
        }
        if diskless
            && c.attached
            && c.disk_transient.is_none()
            && crate::daemon::peer_has_disk(c.peer_disk)
        {
            // our disk was attached while the handshake ran (its Hello said
            // Diskless): negotiate the resync now, as after an attach
            c.send_attached();
        }
        c.publish();
        c.epoch
    };

    let last_rx = Arc::new(Mutex::new(Instant::now()));
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<()>();
    let _data_tx_keepalive;
    let sender = if cfg.is_block() {
        // block data goes on the control queue (in order with the acks);
        // the data queue stays open for the writer
        _data_tx_keepalive = data_tx;
        drop(ack_rx);
        tokio::spawn(crate::block::resync_sender(
            sh.clone(),
            epoch,
            ctrl_tx.clone(),
        ))
    } else {
        tokio::spawn(sender_task(
            sh.clone(),
            epoch,
            data_tx,
            ctrl_tx.clone(),
            ack_rx,
        ))
    };
    guard.0.push(sender.abort_handle());
    let (apply_tx, apply_rx) = std::sync::mpsc::channel::<Frame>();
    let fail = Arc::new(Notify::new());
    let applier = spawn_applier(
        Receiver {
            sh: sh.clone(),
            ctrl: ctrl_tx.clone(),
            ack: ack_tx.clone(),
            last_rx: last_rx.clone(),
            incoming: None,
            apply: None,
        },
        apply_rx,
        fail.clone(),
    );
    let mut rx = Receiver {
        sh: sh.clone(),
        ctrl: ctrl_tx.clone(),
        ack: ack_tx,
        last_rx: last_rx.clone(),
        incoming: None,
        apply: Some(apply_tx),
    };
    let outcome = tokio::select! {
        o = rx.run(&mut r) => o,
        o = pinger(sh.clone(), ctrl_tx.clone(), last_rx) => o,
        _ = abort.notified() => Outcome::Aborted,
        _ = fail.notified() => Outcome::Lost(ConnState::ProtocolError),
        _ = &mut writer => Outcome::Lost(ConnState::BrokenPipe),
    };
    drop(guard);
    // Stop the applier and let an in-progress write finish before the
    // next link may touch the tree.
    applier
        .dead
        .store(true, std::sync::atomic::Ordering::SeqCst);
    drop(rx);
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || applier.thread.join()),
    )
    .await;
    outcome
}

/// Starts what `decision` (this side's point of view) asks for on a live
/// connection: SyncSource, SyncTarget, or nothing to resync.
fn start_resync(c: &mut crate::daemon::Core, decision: Decision) {
    match decision {
        Decision::Source => c.start_sync_source(),
        Decision::Target => c.start_sync_target(),
        Decision::InSync => {
            c.repl = Repl::Established;
            c.recompute_oos();
        }
        Decision::SplitBrain => eprintln!(
            "drbd {}: the data of the attached disk and the peer's have diverged: not resyncing (disconnect and connect --discard-my-data on the victim)",
            c.cfg.resource
        ),
    }
}

/// The connected peer attached its disk (`Msg::Attached`, with its state
/// already taken over): decide the resync as a handshake would, with both
/// bitmaps; returns the `AttachReply` to send (before any resync data) and
/// this side's decision to start after it. `None` when this host cannot resync anything
/// (no disk of its own).
fn peer_attached(c: &mut crate::daemon::Core, theirs: &[u64]) -> Option<(Msg, Decision)> {
    if !c.attached || c.conn != ConnState::Connected {
        return None;
    }
    let me = Side {
        node_id: c.cfg.node_id,
        disk: c.disk(),
        gen: c.meta.gen,
        history: c.meta.history.clone(),
        discard: false,
    };
    let them = Side {
        node_id: c.cfg.peer.node_id,
        disk: c.peer_disk,
        gen: c.peer_gen,
        history: c.peer_history.clone(),
        discard: false,
    };
    let roles = (c.role, c.peer_role);
    let b = c.blk.as_mut()?;
    if theirs.len() != b.oos.len() {
        return None;
    }
    let mine = b.handshake_bitmap();
    let decision = block_decision(decide(&me, &them), &me, &them, roles, &mine, theirs);
    let target_gen = match decision {
        Decision::Source => them.gen,
        _ => me.gen,
    };
    if decision != Decision::SplitBrain {
        b.oos = resync_bitmap(decision, target_gen, &mine, theirs, b.nblocks());
        if let Err(e) = b.flush_bitmap() {
            eprintln!("drbd {}: writing the bitmap: {e}", c.cfg.resource);
        }
    }
    let words = b.oos.clone();
    let theirs_decision = match decision {
        Decision::Source => Decision::Target,
        Decision::Target => Decision::Source,
        d => d,
    };
    Some((
        Msg::AttachReply {
            decision: theirs_decision,
            words,
        },
        decision,
    ))
}

/// Block mode: the blocks to resync after the handshake `decision`. A
/// resync covers the union of both bitmaps (blocks either side wrote
/// without the other), **all** blocks when the target never held data
/// (generation 0: a fresh disk from `create-md` — whatever the bitmap of
/// the peer slot says, even when the new peer reuses an old node id);
/// no resync clears the bitmap.
pub fn resync_bitmap(
    decision: Decision,
    target_gen: u64,
    mine: &[u64],
    theirs: &[u64],
    nblocks: u64,
) -> Vec<u64> {
    let mut out: Vec<u64> = mine.iter().zip(theirs).map(|(a, b)| a | b).collect();
    match decision {
        Decision::Source | Decision::Target if target_gen == 0 => {
            for b in 0..nblocks {
                out[(b / 64) as usize] |= 1 << (b % 64);
            }
        }
        Decision::Source | Decision::Target => {}
        _ => out.iter_mut().for_each(|w| *w = 0),
    }
    out
}

/// Block mode: same generation but blocks that may differ (writes in
/// flight when a Primary crashed or lost its peer, then came back without a
/// new generation) need a resync too: from the Primary, else from the side
/// whose own bitmap has bits, else from the lower node id. Symmetric.
fn block_decision(
    d: Decision,
    me: &Side,
    peer: &Side,
    roles: (Role, Role),
    mine: &[u64],
    theirs: &[u64],
) -> Decision {
    if d != Decision::InSync || !me.disk.has_good_data() || !peer.disk.has_good_data() {
        return d;
    }
    let any = |w: &[u64]| w.iter().any(|x| *x != 0);
    if !any(mine) && !any(theirs) {
        return d;
    }
    let me_source = match (roles.0 == Role::Primary, roles.1 == Role::Primary) {
        (true, false) => true,
        (false, true) => false,
        _ => match (any(mine), any(theirs)) {
            (true, false) => true,
            (false, true) => false,
            _ => me.node_id < peer.node_id,
        },
    };
    if me_source {
        Decision::Source
    } else {
        Decision::Target
    }
}

fn role_conflict(a: Role, b: Role) -> bool {
    a == Role::Primary && b == Role::Primary
}

async fn writer_task(
    mut w: tokio::net::tcp::OwnedWriteHalf,
    mut ctrl: mpsc::UnboundedReceiver<Frame>,
    mut data: mpsc::Receiver<Frame>,
) -> io::Result<()> {
    loop {
        let f = tokio::select! {
            biased;
            f = ctrl.recv() => f,
            f = data.recv() => f,
        };
        let Some(f) = f else { return Ok(()) };
        write_frame(&mut w, &f).await?;
    }
}

async fn pinger(
    sh: Arc<Shared>,
    ctrl: mpsc::UnboundedSender<Frame>,
    last_rx: Arc<Mutex<Instant>>,
) -> Outcome {
    let cfg = sh.cfg();
    let t = &cfg.tuning;
    let timeout = Duration::from_millis(t.ping_timeout_ms);
    let mut iv = tokio::time::interval(Duration::from_millis(t.ping_interval_ms));
    loop {
        iv.tick().await;
        let quiet = last_rx.lock().map(|t| t.elapsed()).unwrap_or_default();
        if quiet > timeout {
            eprintln!(
                "drbd {} {}: PingAck did not arrive in time.",
                cfg.resource, cfg.peer.hostname
            );
            return Outcome::Lost(ConnState::NetworkFailure);
        }
        let _ = ctrl.send((Msg::Ping, None));
    }
}

/// A file being received.
struct Incoming {
    rel: String,
    target: std::path::PathBuf,
    tmp: std::path::PathBuf,
    file: Option<std::fs::File>,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Reader side of a link: applies incoming data, handles acks and state.
struct Receiver {
    sh: Arc<Shared>,
    ctrl: mpsc::UnboundedSender<Frame>,
    ack: mpsc::UnboundedSender<()>,
    last_rx: Arc<Mutex<Instant>>,
    incoming: Option<Incoming>,
    /// Data frames go to the applier thread, so that slow file I/O never
    /// delays ping/pong handling (DRBD's separate meta socket).
    apply: Option<std::sync::mpsc::Sender<Frame>>,
}

/// The applier thread of a link: applies data frames in order; stops when
/// the link is gone (`dead`), reports I/O errors through `fail`.
struct Applier {
    thread: std::thread::JoinHandle<()>,
    dead: Arc<std::sync::atomic::AtomicBool>,
}

fn spawn_applier(
    mut rx: Receiver,
    frames: std::sync::mpsc::Receiver<Frame>,
    fail: Arc<Notify>,
) -> Applier {
    let dead = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let d = dead.clone();
    let thread = std::thread::spawn(move || {
        while let Ok((m, p)) = frames.recv() {
            if d.load(std::sync::atomic::Ordering::SeqCst) {
                break;
            }
            if let Err(e) = rx.handle(m, p) {
                eprintln!("drbd {}: replication I/O error: {e}", rx.sh.cfg().resource);
                fail.notify_one();
                break;
            }
        }
        // dropping `rx` removes the temp file of an unfinished transfer
    });
    Applier { thread, dead }
}

fn remove_subtree(m: &mut Manifest, path: &str) {
    m.remove(path);
    let prefix = format!("{path}/");
    m.retain(|k, _| !k.starts_with(&prefix));
}

impl Receiver {
    async fn run<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Outcome {
        loop {
            let (msg, payload) = match read_frame(r).await {
                Ok(f) => f,
                Err(e) => return Outcome::Lost(classify(&e)),
            };
            if let Ok(mut t) = self.last_rx.lock() {
                *t = Instant::now();
            }
            let is_data = matches!(
                msg,
                Msg::FileBegin { .. }
                    | Msg::BlkWrite { .. }
                    | Msg::BlkFlush { .. }
                    | Msg::BlkSync { .. }
                    | Msg::Chunk
                    | Msg::FileEnd { .. }
                    | Msg::Put { .. }
                    | Msg::Delete { .. }
            );
            if is_data {
                if let Some(a) = &self.apply {
                    if a.send((msg, payload)).is_err() {
                        return Outcome::Lost(ConnState::ProtocolError);
                    }
                    continue;
                }
            }
            if let Err(e) = self.handle(msg, payload) {
                eprintln!(
                    "drbd {}: replication I/O error: {e}",
                    self.sh.cfg().resource
                );
                return Outcome::Lost(ConnState::ProtocolError);
            }
        }
    }

    fn reply(&self, m: Msg) {
        let _ = self.ctrl.send((m, None));
    }

    fn handle(&mut self, msg: Msg, payload: Option<Vec<u8>>) -> io::Result<()> {
        let data_dir = self.sh.cfg().data_dir.clone();
        let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
        match msg {
            Msg::Ping => self.reply(Msg::Pong),
            Msg::Pong => {}
            Msg::Hello { .. } => return Err(bad("unexpected Hello")),
            Msg::Manifest { entries } => {
                let mut c = self.sh.lock();
                c.meta.peer_known = entries;
                c.meta_dirty = true;
            }
            Msg::State {
                role,
                disk,
                gen,
                history,
            } => {
                let mut c = self.sh.lock();
                c.peer_role = role;
                let lost_disk = crate::daemon::peer_has_disk(c.peer_disk)
                    && matches!(disk, DiskState::Failed | DiskState::Diskless);
                c.peer_disk = disk;
                if lost_disk {
                    c.peer_disk_lost();
                }
                let gen_changed = c.peer_gen != gen;
                c.peer_gen = gen;
                c.peer_history = history;
                if gen_changed && gen != c.meta.gen {
                    c.maybe_resync();
                }
                c.publish();
            }
            Msg::FileBegin { path } => {
                let target = tree::safe_join(&data_dir, &path).ok_or_else(|| bad("bad path"))?;
                let tmp = tree::tmp_name(&target);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let file = std::fs::File::create(&tmp)?;
                self.incoming = Some(Incoming {
                    rel: path,
                    target,
                    tmp,
                    file: Some(file),
                });
            }
            Msg::Chunk => {
                let p = payload.unwrap_or_default();
                let inc = self
                    .incoming
                    .as_mut()
                    .ok_or_else(|| bad("chunk without file"))?;
                let f = inc.file.as_mut().ok_or_else(|| bad("chunk without file"))?;
                f.write_all(&p)?;
                let n = p.len() as u64;
                {
                    let mut c = self.sh.lock();
                    c.stats.received_b += n;
                    c.stats.written_b += n;
                }
                self.reply(Msg::ChunkAck { bytes: n });
            }
            Msg::FileEnd { path, entry } => {
                let mut inc = self
                    .incoming
                    .take()
                    .ok_or_else(|| bad("end without file"))?;
                if inc.rel != path {
                    return Err(bad("FileEnd for another file"));
                }
                let f = inc.file.take().ok_or_else(|| bad("end without file"))?;
                let res = finish_file(f, &inc, &entry);
                if res.is_err() {
                    let _ = std::fs::remove_file(&inc.tmp);
                }
                res?;
                self.applied(path, Some(entry));
            }
            Msg::Put { path, entry } => {
                let target = tree::safe_join(&data_dir, &path).ok_or_else(|| bad("bad path"))?;
                apply_put(&target, &entry)?;
                self.applied(path, Some(entry));
            }
            Msg::Delete { path } => {
                let target = tree::safe_join(&data_dir, &path).ok_or_else(|| bad("bad path"))?;
                tree::remove_any(&target)?;
                if let Some(p) = target.parent() {
                    tree::sync_dir(p);
                }
                self.applied(path, None);
            }
            Msg::Ack { path, entry } => {
                let mut c = self.sh.lock();
                match entry {
                    Some(e) => {
                        if matches!(e, Entry::File { .. } | Entry::Symlink { .. }) {
                            remove_subtree(&mut c.meta.peer_known, &path);
                        }
                        c.meta.peer_known.insert(path, e);
                    }
                    None => remove_subtree(&mut c.meta.peer_known, &path),
                }
                c.meta_dirty = true;
                c.stats.inflight_acked_b = 0;
                c.stats.unacked = 0;
                c.recompute_oos();
                drop(c);
                let _ = self.ack.send(());
            }
            Msg::ChunkAck { bytes } => {
                let mut c = self.sh.lock();
                c.stats.inflight_acked_b += bytes;
                c.recompute_oos();
            }
            Msg::Progress { oos_kib, total_kib } => {
                let mut c = self.sh.lock();
                if c.role != Role::Primary && c.repl != Repl::SyncSource {
                    c.stats.oos_kib = oos_kib;
                    if c.repl.is_syncing() {
                        c.stats.rs_total_kib = total_kib;
                    }
                }
            }
            Msg::Bitmap { .. } => return Err(bad("unexpected Bitmap")),
            Msg::BlkWrite {
                seq,
                off,
                ack_on_receive,
            } => {
                let p = payload.unwrap_or_default();
                // protocol B acknowledges on receipt, unless there is no
                // disk to write to
                let early = ack_on_receive && self.sh.lock().attached;
                if early {
                    self.reply(Msg::BlkAck { seq });
                }
                let written = crate::block::apply_write(&self.sh, off, &p)?;
                if !early {
                    self.reply(if written {
                        Msg::BlkAck { seq }
                    } else {
                        Msg::BlkNegAck { seq }
                    });
                }
            }
            Msg::BlkFlush { seq } => {
                let ok = crate::block::apply_flush(&self.sh);
                self.reply(if ok {
                    Msg::BlkAck { seq }
                } else {
                    Msg::BlkNegAck { seq }
                });
            }
            Msg::BlkSync { off } => {
                let p = payload.unwrap_or_default();
                if !crate::block::apply_sync(&self.sh, off, &p)? {
                    // no disk (any more): the source stops when it sees
                    // our disk state; the blocks stay out of sync there
                    return Ok(());
                }
                let len = p.len() as u64;
                {
                    let mut c = self.sh.lock();
                    if let Some(b) = c.blk.as_mut() {
                        b.clear_oos(crate::block::block_range(off, len));
                    }
                }
                self.reply(Msg::BlkSyncAck { off, len });
            }
            Msg::BlkAck { seq } => {
                let mut c = self.sh.lock();
                if let Some(b) = c.blk.as_mut() {
                    b.acked(seq);
                }
            }
            Msg::BlkNegAck { seq } => {
                let mut c = self.sh.lock();
                if let Some(b) = c.blk.as_mut() {
                    b.neg_acked(seq);
                }
                c.recompute_oos();
            }
            Msg::Attached {
                disk,
                gen,
                history,
                words,
            } => {
                let mut c = self.sh.lock();
                c.peer_disk = disk;
                c.peer_gen = gen;
                c.peer_history = history;
                if let Some((reply, decision)) = peer_attached(&mut c, &words) {
                    // the reply goes ahead of any resync data
                    self.reply(reply);
                    start_resync(&mut c, decision);
                }
                c.publish();
            }
            Msg::AttachReply { decision, words } => {
                let mut c = self.sh.lock();
                if c.attached && c.conn == ConnState::Connected {
                    if let Some(b) = c.blk.as_mut() {
                        if words.len() == b.oos.len() {
                            b.oos = words;
                        }
                        if let Err(e) = b.flush_bitmap() {
                            eprintln!("drbd {}: writing the bitmap: {e}", c.cfg.resource);
                        }
                    }
                    start_resync(&mut c, decision);
                    c.publish();
                }
            }
            Msg::BlkSyncAck { off, len } => {
                let mut c = self.sh.lock();
                if let Some(b) = c.blk.as_mut() {
                    let r = crate::block::block_range(off, len);
                    for x in r.clone() {
                        b.rs_inflight.remove(&x);
                    }
                    b.clear_oos(r);
                }
                c.recompute_oos();
            }
            Msg::SyncDone { gen, history, disk } => {
                let mut c = self.sh.lock();
                if !c.attached {
                    // the disk failed during the resync: still not UpToDate
                    return Ok(());
                }
                if let Some(b) = c.blk.as_mut() {
                    b.clear_oos(0..b.nblocks());
                    // the received blocks must be durable before UpToDate
                    let _ = b.file.sync_data();
                    let _ = b.flush_bitmap();
                }
                c.meta.gen = gen;
                c.meta.history = history;
                c.meta.disk = disk;
                c.persist();
                c.repl = Repl::Established;
                c.stats.oos_kib = 0;
                c.stats.rs_total_kib = 0;
                c.stats.rs_start = None;
                let m = c.state_msg();
                c.send(m);
                c.publish();
            }
        }
        Ok(())
    }

    /// Records an applied item (we now hold what the peer holds) and acks.
    fn applied(&mut self, path: String, entry: Option<Entry>) {
        {
            let mut c = self.sh.lock();
            match &entry {
                Some(e) => {
                    if !matches!(e, Entry::Dir { .. }) {
                        remove_subtree(&mut c.meta.peer_known, &path);
                    }
                    c.meta.peer_known.insert(path.clone(), e.clone());
                }
                None => remove_subtree(&mut c.meta.peer_known, &path),
            }
            c.meta_dirty = true;
        }
        self.reply(Msg::Ack { path, entry });
    }
}

fn set_mtime(f: &std::fs::File, entry: &Entry) -> io::Result<()> {
    if let Entry::File {
        mtime, mtime_ns, ..
    } = entry
    {
        let t = if *mtime >= 0 {
            std::time::UNIX_EPOCH + Duration::new(*mtime as u64, *mtime_ns)
        } else {
            std::time::UNIX_EPOCH - Duration::from_secs(mtime.unsigned_abs())
                + Duration::from_nanos(u64::from(*mtime_ns))
        };
        f.set_times(std::fs::FileTimes::new().set_modified(t))?;
    }
    Ok(())
}

fn finish_file(f: std::fs::File, inc: &Incoming, entry: &Entry) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Entry::File { mode, .. } = entry {
        f.set_permissions(std::fs::Permissions::from_mode(*mode))?;
    }
    set_mtime(&f, entry)?;
    f.sync_all()?;
    drop(f);
    if std::fs::symlink_metadata(&inc.target).is_ok_and(|m| m.is_dir()) {
        std::fs::remove_dir_all(&inc.target)?;
    }
    std::fs::rename(&inc.tmp, &inc.target)?;
    if let Some(p) = inc.target.parent() {
        tree::sync_dir(p);
    }
    Ok(())
}

fn apply_put(target: &std::path::Path, entry: &Entry) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    match entry {
        Entry::Dir { mode } => {
            if std::fs::symlink_metadata(target).is_ok_and(|m| !m.is_dir()) {
                std::fs::remove_file(target)?;
            }
            std::fs::create_dir_all(target)?;
            std::fs::set_permissions(target, std::fs::Permissions::from_mode(*mode))?;
        }
        Entry::Symlink { target: to } => {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            let tmp = tree::tmp_name(target);
            let _ = std::fs::remove_file(&tmp);
            std::os::unix::fs::symlink(to, &tmp)?;
            if std::fs::symlink_metadata(target).is_ok_and(|m| m.is_dir()) {
                std::fs::remove_dir_all(target)?;
            }
            std::fs::rename(&tmp, target)?;
        }
        Entry::File { .. } => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "files are sent with FileBegin",
            ))
        }
    }
    if let Some(p) = target.parent() {
        tree::sync_dir(p);
    }
    Ok(())
}

/// Rate limiter for data frames.
struct Throttle {
    bytes_per_s: u64,
    next: tokio::time::Instant,
}

impl Throttle {
    fn chunk_size(&self) -> u64 {
        if self.bytes_per_s == 0 {
            256 << 10
        } else {
            (self.bytes_per_s / 10).clamp(4096, 64 << 10)
        }
    }

    async fn take(&mut self, n: u64) {
        if self.bytes_per_s == 0 {
            return;
        }
        let now = tokio::time::Instant::now();
        if self.next < now {
            self.next = now;
        }
        tokio::time::sleep_until(self.next).await;
        self.next += Duration::from_secs_f64(n as f64 / self.bytes_per_s as f64);
    }
}

/// Keeps the peer's view of `out-of-sync` / `done` current (at most every
/// 100 ms, and immediately when it reaches 0).
#[derive(Default)]
pub struct ProgressTx {
    last: Option<(Instant, u64)>,
}

impl ProgressTx {
    /// Sends a `Progress` frame if due.
    pub fn tick(&mut self, sh: &Shared, ctrl: &mpsc::UnboundedSender<Frame>) {
        let c = sh.lock();
        if !c.is_sender() {
            return;
        }
        let oos = c.stats.oos_kib;
        let due = match self.last {
            None => true,
            Some((t, v)) => v != oos && (t.elapsed() > Duration::from_millis(100) || oos == 0),
        };
        if due {
            let _ = ctrl.send((
                Msg::Progress {
                    oos_kib: oos,
                    total_kib: c.stats.rs_total_kib.max(oos),
                },
                None,
            ));
            self.last = Some((Instant::now(), oos));
        }
    }
}

/// The resync as SyncSource is complete: `SyncDone` to the target.
pub fn finish_sync_source(
    sh: &Arc<Shared>,
    c: &mut crate::daemon::Core,
    ctrl: &mpsc::UnboundedSender<Frame>,
) {
    let done = Msg::SyncDone {
        gen: c.meta.gen,
        history: c.meta.history.clone(),
        disk: c.disk(),
    };
    c.stats.oos_kib = 0;
    let _ = ctrl.send((
        Msg::Progress {
            oos_kib: 0,
            total_kib: c.stats.rs_total_kib,
        },
        None,
    ));
    let _ = ctrl.send((done, None));
    c.repl = Repl::Established;
    if c.peer_disk == DiskState::Inconsistent {
        c.peer_disk = c.disk();
    }
    c.stats.rs_total_kib = 0;
    c.stats.rs_start = None;
    c.publish();
    crate::fence::after_sync_source_done(sh, c);
}

enum Step {
    Stop,
    Idle,
    Op(Op),
}

/// Streams differences to the peer while this host is the data source.
async fn sender_task(
    sh: Arc<Shared>,
    epoch: u64,
    data: mpsc::Sender<Frame>,
    ctrl: mpsc::UnboundedSender<Frame>,
    mut acks: mpsc::UnboundedReceiver<()>,
) {
    let cfg = sh.cfg();
    let idle = Duration::from_millis(cfg.tuning.scan_interval_ms.min(50));
    let mut throttle = Throttle {
        bytes_per_s: cfg.tuning.resync_rate_kib * 1024,
        next: tokio::time::Instant::now(),
    };
    let mut progress = ProgressTx::default();
    loop {
        let step = {
            let mut c = sh.lock();
            if c.epoch != epoch || c.link.is_none() {
                Step::Stop
            } else if !c.is_sender() || c.local.is_none() {
                Step::Idle
            } else {
                let next = c
                    .local
                    .as_ref()
                    .and_then(|l| tree::next_op(l, &c.meta.peer_known));
                match next {
                    Some(op) => Step::Op(op),
                    None => {
                        if c.repl == Repl::SyncSource {
                            finish_sync_source(&sh, &mut c, &ctrl);
                        }
                        Step::Idle
                    }
                }
            }
        };
        progress.tick(&sh, &ctrl);
        match step {
            Step::Stop => return,
            Step::Idle => tokio::time::sleep(idle).await,
            Step::Op(Op::Delete(path)) => {
                sh.lock().stats.unacked = 1;
                if data.send((Msg::Delete { path }, None)).await.is_err() {
                    return;
                }
                if acks.recv().await.is_none() {
                    return;
                }
            }
            Step::Op(Op::Put(path, Entry::File { .. })) => {
                if !send_file(
                    &sh,
                    &path,
                    &data,
                    &ctrl,
                    &mut acks,
                    &mut throttle,
                    &mut progress,
                )
                .await
                {
                    return;
                }
            }
            Step::Op(Op::Put(path, entry)) => {
                sh.lock().stats.unacked = 1;
                if data.send((Msg::Put { path, entry }, None)).await.is_err() {
                    return;
                }
                if acks.recv().await.is_none() {
                    return;
                }
            }
        }
    }
}

/// Sends one regular file; false if the link is gone.
async fn send_file(
    sh: &Arc<Shared>,
    rel: &str,
    data: &mpsc::Sender<Frame>,
    ctrl: &mpsc::UnboundedSender<Frame>,
    acks: &mut mpsc::UnboundedReceiver<()>,
    throttle: &mut Throttle,
    progress: &mut ProgressTx,
) -> bool {
    let full = sh.cfg().data_dir.join(rel);
    let opened = tokio::task::block_in_place(|| -> io::Result<(std::fs::File, Option<Entry>)> {
        let md = std::fs::symlink_metadata(&full)?;
        let e = Entry::from_metadata(&md, &full);
        let f = std::fs::File::open(&full)?;
        Ok((f, e))
    });
    let (mut file, entry) = match opened {
        Ok((f, Some(e @ Entry::File { .. }))) => (f, e),
        other => {
            // vanished or changed type since the scan: correct our view
            let mut c = sh.lock();
            if let Some(l) = c.local.as_mut() {
                match other {
                    Ok((_, Some(e))) => {
                        l.insert(rel.to_string(), e);
                    }
                    _ => {
                        remove_subtree(l, rel);
                    }
                }
            }
            c.recompute_oos();
            return true;
        }
    };
    {
        let mut c = sh.lock();
        if let Some(l) = c.local.as_mut() {
            l.insert(rel.to_string(), entry.clone());
        }
        c.stats.unacked = 1;
        c.stats.inflight_acked_b = 0;
        c.recompute_oos();
    }
    if data
        .send((
            Msg::FileBegin {
                path: rel.to_string(),
            },
            None,
        ))
        .await
        .is_err()
    {
        return false;
    }
    let Entry::File { size, .. } = entry else {
        return true;
    };
    let chunk = throttle.chunk_size();
    let mut sent = 0u64;
    while sent < size {
        let n = chunk.min(size - sent) as usize;
        let mut buf = vec![0u8; n];
        let got = tokio::task::block_in_place(|| read_full(&mut file, &mut buf));
        let got = got.unwrap_or_default();
        if got == 0 {
            break; // truncated meanwhile; the next scan sees the new size
        }
        buf.truncate(got);
        throttle.take(got as u64).await;
        // flow control: at most WINDOW bytes written but not yet acknowledged
        loop {
            let acked = {
                let c = sh.lock();
                if c.link.is_none() {
                    return false;
                }
                c.stats.inflight_acked_b
            };
            if sent.saturating_sub(acked) <= WINDOW {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        if data.send((Msg::Chunk, Some(buf))).await.is_err() {
            return false;
        }
        sent += got as u64;
        {
            let mut c = sh.lock();
            c.stats.sent_b += got as u64;
            c.stats.read_b += got as u64;
        }
        progress.tick(sh, ctrl);
    }
    if data
        .send((
            Msg::FileEnd {
                path: rel.to_string(),
                entry,
            },
            None,
        ))
        .await
        .is_err()
    {
        return false;
    }
    acks.recv().await.is_some()
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Rescans the tree of a Primary / SyncSource every `scan_interval_ms`.
///
/// The first write a Primary makes while not connected starts a new data
/// generation (like DRBD's new current UUID), so that a later reconnect
/// resyncs from it, or detects split brain if the peer did the same.
pub async fn scanner(sh: Arc<Shared>) {
    let cfg = sh.cfg();
    let iv = Duration::from_millis(cfg.tuning.scan_interval_ms);
    loop {
        tokio::time::sleep(iv).await;
        if cfg.is_block() {
            return; // writes are replicated one by one (block.rs)
        }
        let need = {
            let mut c = sh.lock();
            // While I/O is suspended for fencing nothing new reaches the
            // "device": the Primary's view of its tree stays frozen.
            let need = c.up
                && c.attached
                && !c.susp_fen
                && (c.role == Role::Primary || c.repl == Repl::SyncSource);
            if !need && c.local.is_some() && c.role != Role::Primary && c.repl != Repl::SyncSource {
                c.local = None;
            }
            need
        };
        if !need {
            continue;
        }
        let m = match tokio::task::block_in_place(|| tree::scan(&cfg.data_dir)) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("drbd-emu: scanning {}: {e}", cfg.data_dir.display());
                continue;
            }
        };
        let mut c = sh.lock();
        if c.local.as_ref() == Some(&m) {
            continue;
        }
        if c.role == Role::Primary && c.need_new_gen && c.local.is_some() {
            c.meta.new_generation();
            c.need_new_gen = false;
            c.persist();
            eprintln!(
                "drbd {}: new data generation {:016X} (write without peer)",
                cfg.resource, c.meta.gen
            );
        }
        c.local = Some(m);
        c.recompute_oos();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(id: u32, disk: DiskState, gen: u64, history: &[u64]) -> Side {
        Side {
            node_id: id,
            disk,
            gen,
            history: history.to_vec(),
            discard: false,
        }
    }

    fn both(a: &Side, b: &Side) -> (Decision, Decision) {
        (decide(a, b), decide(b, a))
    }

    #[test]
    fn decisions_are_symmetric_and_right() {
        use DiskState::*;
        // fresh pair
        let (a, b) = (side(0, Inconsistent, 0, &[]), side(1, Inconsistent, 0, &[]));
        assert_eq!(both(&a, &b), (Decision::InSync, Decision::InSync));
        // forced primary
        let a = side(0, UpToDate, 7, &[]);
        assert_eq!(both(&a, &b), (Decision::Source, Decision::Target));
        // peer came back older
        let a = side(0, UpToDate, 9, &[7]);
        let b = side(1, UpToDate, 7, &[]);
        assert_eq!(both(&a, &b), (Decision::Source, Decision::Target));
        // interrupted sync target
        let b = side(1, Inconsistent, 7, &[]);
        assert_eq!(both(&b, &a), (Decision::Target, Decision::Source));
        // split brain
        let b = side(1, UpToDate, 11, &[7]);
        assert_eq!(both(&a, &b), (Decision::SplitBrain, Decision::SplitBrain));
        // ... resolved by discarding one side
        let mut victim = b.clone();
        victim.discard = true;
        assert_eq!(both(&a, &victim), (Decision::Source, Decision::Target));
        // block mode: same generation, bits left from writes in flight
        let (a, b) = (side(0, UpToDate, 9, &[7]), side(1, UpToDate, 9, &[7]));
        let bits = [1u64, 0];
        let none = [0u64, 0];
        let bd = |x: &Side, y: &Side, r: (Role, Role), m: &[u64], t: &[u64]| {
            block_decision(decide(x, y), x, y, r, m, t)
        };
        let (p, s) = (Role::Primary, Role::Secondary);
        assert_eq!(bd(&a, &b, (s, s), &none, &none), Decision::InSync);
        assert_eq!(bd(&a, &b, (s, p), &bits, &none), Decision::Target);
        assert_eq!(bd(&b, &a, (p, s), &none, &bits), Decision::Source);
        assert_eq!(bd(&a, &b, (s, s), &none, &bits), Decision::Target);
        assert_eq!(bd(&b, &a, (s, s), &bits, &none), Decision::Source);
        assert_eq!(bd(&a, &b, (s, s), &bits, &bits), Decision::Source);
        assert_eq!(bd(&b, &a, (s, s), &bits, &bits), Decision::Target);
        // outdated with same generation catches up
        let b = side(1, Outdated, 9, &[7]);
        assert_eq!(both(&a, &b), (Decision::Source, Decision::Target));
    }

    /// A fresh disk (create-md: generation 0, Inconsistent) is never in
    /// sync with a disk holding data and always gets every block, whatever
    /// the bitmap of its peer slot says (a spare reusing a dead host's
    /// node id), on either side of the node id order.
    #[test]
    fn a_fresh_peer_gets_a_full_resync() {
        use DiskState::*;
        let nblocks = 130; // three words, the last one partial
        let all = resync_bitmap(Decision::Source, 0, &[0; 3], &[0; 3], nblocks);
        assert_eq!(all, vec![u64::MAX, u64::MAX, 0b11]);
        for (primary, fresh) in [
            (side(0, UpToDate, 9, &[7, 5]), side(1, Inconsistent, 0, &[])),
            (side(1, UpToDate, 9, &[7, 5]), side(0, Inconsistent, 0, &[])),
            (side(0, Outdated, 9, &[]), side(1, Inconsistent, 0, &[])),
        ] {
            let (d, peer_d) = both(&primary, &fresh);
            assert_eq!((d, peer_d), (Decision::Source, Decision::Target));
            // the source's bitmap has only the blocks written since its
            // old peer left; the fresh target's is empty
            let old_peer_bits = [1u64 << 3, 0, 0];
            for roles in [
                (Role::Primary, Role::Secondary),
                (Role::Secondary, Role::Secondary),
            ] {
                assert_eq!(
                    block_decision(d, &primary, &fresh, roles, &old_peer_bits, &[0; 3]),
                    Decision::Source
                );
            }
            // source side: the target's generation is the peer's (0)
            assert_eq!(
                resync_bitmap(d, fresh.gen, &old_peer_bits, &[0; 3], nblocks),
                all
            );
            // target side: its own generation (0)
            assert_eq!(
                resync_bitmap(peer_d, fresh.gen, &[0; 3], &old_peer_bits, nblocks),
                all
            );
        }
        // a target that held data gets the union of the bitmaps only
        assert_eq!(
            resync_bitmap(Decision::Source, 7, &[1, 0, 0], &[2, 0, 0], nblocks),
            vec![3, 0, 0]
        );
        assert_eq!(
            resync_bitmap(Decision::InSync, 7, &[1, 0, 0], &[2, 0, 0], nblocks),
            vec![0, 0, 0]
        );
        // two fresh disks: nothing to sync from
        let (a, b) = (side(0, Inconsistent, 0, &[]), side(1, Inconsistent, 0, &[]));
        assert_eq!(both(&a, &b), (Decision::InSync, Decision::InSync));
    }
}
