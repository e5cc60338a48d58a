//! Block mode (`[device] mode = "block"`): the replicated device is one
//! fixed-size file served through FUSE (`MOUNT_DIR/drbd-emu-device`), with a
//! loop device on it as the `/dev/drbdMINOR` stand-in. Every write to the
//! device file goes through [`write`] and is replicated write by write:
//!
//! * **protocol C** (default): the FUSE write is answered only after the
//!   peer wrote the data to its backing file (`BlkAck`); an fsync only after
//!   the peer fsync'd its backing file too. A (handed to the link) and B
//!   (received by the peer) as options (`[net] protocol`).
//! * Before a block is written locally its bit is set in the persisted
//!   bitmap (`META_DIR/bitmap`, fdatasync'd; DRBD's activity log), so a
//!   crash never loses track of a block the peer may lack. In memory the
//!   bitmap is cleared again when the peer acknowledged the write.
//! * While no peer replicates (disconnected, peer lost, protocol A writes in
//!   flight when the link dies) written blocks stay in the out-of-sync
//!   bitmap (4 KiB blocks); `out-of-sync` is its population. On reconnect
//!   both sides exchange bitmaps and the SyncSource sends exactly the union
//!   (all blocks if the target never held data).
//! * While `suspended:fencing` a write (and an fsync) blocks in the FUSE
//!   request until I/O resumes.
//! * A Secondary's device file refuses to be opened for writing (`EROFS`)
//!   and refuses writes; its loop device is set read-only (`BLKROSET`).
//!   Reads are served from the backing file in every role.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc as smpsc, Arc};
use std::time::{Duration, SystemTime};

use crate::config::{Config, Protocol, BM_BLOCK, DEVICE_FILE_NAME};
use crate::daemon::{Core, Shared};
use crate::model::{ConnState, DiskState, Repl, Role};
use crate::repl::Msg;

/// Blocks of one resync message at most (64 KiB).
pub const RS_RUN: u64 = 16;
/// Resync blocks in flight (sent, not acknowledged) at most.
pub const RS_WINDOW: usize = 256;

/// The block device state (part of [`Core`]).
pub struct BlockState {
    /// The backing file.
    pub file: Arc<File>,
    /// Device size in bytes.
    pub size: u64,
    /// Out-of-sync bitmap: blocks the peer may not have.
    pub oos: Vec<u64>,
    /// Replicated writes in flight per block (not yet acknowledged).
    inflight: HashMap<u64, u32>,
    /// What the bitmap file holds.
    disk_bm: Vec<u64>,
    bm_file: File,
    /// Writes waiting for the peer: seq -> (blocks, waiter).
    pending: HashMap<u64, (std::ops::Range<u64>, Option<smpsc::SyncSender<bool>>)>,
    next_seq: u64,
    /// Resync blocks sent and not yet acknowledged.
    pub rs_inflight: BTreeSet<u64>,
    /// The next open for writing is the loop device being set up.
    pub allow_rw_open: bool,
    /// FUSE writes / fsyncs in progress (frozen I/O delays demotion).
    pub writers: u32,
    /// The loop device (`/dev/loopN`), once set up.
    pub loop_dev: Option<String>,
}

fn blocks_of(off: u64, len: u64) -> std::ops::Range<u64> {
    if len == 0 {
        return off / BM_BLOCK..off / BM_BLOCK;
    }
    off / BM_BLOCK..(off + len - 1) / BM_BLOCK + 1
}

fn words_to_bytes(w: &[u64]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl BlockState {
    /// Opens (creating if needed) the backing file and the bitmap.
    pub fn open(cfg: &Config) -> io::Result<BlockState> {
        let size = cfg.device_bytes();
        let path = cfg.backing_file();
        if let Some(p) = path.parent() {
            std::fs::create_dir_all(p)?;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        if file.metadata()?.len() < size {
            file.set_len(size)?;
            file.sync_all()?;
        }
        let nwords = size.div_ceil(BM_BLOCK).div_ceil(64) as usize;
        let bm_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(cfg.bitmap_path())?;
        let mut bytes = Vec::new();
        {
            use std::io::Read;
            (&bm_file).read_to_end(&mut bytes)?;
        }
        let mut words = vec![0u64; nwords];
        if bytes.len() == nwords * 8 {
            for (i, w) in words.iter_mut().enumerate() {
                *w = u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().unwrap_or_default());
            }
        } else {
            bm_file.set_len(0)?;
            bm_file.write_all_at(&words_to_bytes(&words), 0)?;
            bm_file.sync_all()?;
        }
        Ok(BlockState {
            file: Arc::new(file),
            size,
            oos: words.clone(),
            inflight: HashMap::new(),
            disk_bm: words,
            bm_file,
            pending: HashMap::new(),
            next_seq: 1,
            rs_inflight: BTreeSet::new(),
            allow_rw_open: false,
            writers: 0,
            loop_dev: None,
        })
    }

    /// Number of bitmap blocks.
    pub fn nblocks(&self) -> u64 {
        self.size.div_ceil(BM_BLOCK)
    }

    /// Out-of-sync blocks.
    pub fn oos_blocks(&self) -> u64 {
        self.oos.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Is block `b` out of sync?
    pub fn is_oos(&self, b: u64) -> bool {
        self.oos[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// Marks blocks out of sync (in memory).
    pub fn set_oos(&mut self, r: std::ops::Range<u64>) {
        for b in r {
            self.oos[(b / 64) as usize] |= 1 << (b % 64);
        }
    }

    /// Clears out-of-sync blocks (in memory).
    pub fn clear_oos(&mut self, r: std::ops::Range<u64>) {
        for b in r {
            self.oos[(b / 64) as usize] &= !(1 << (b % 64));
        }
    }

    /// Marks every block out of sync (full sync).
    pub fn set_all(&mut self) {
        let n = self.nblocks();
        self.set_oos(0..n);
    }

    /// Makes sure the bitmap file has the bits of `r` set (before the
    /// blocks are written locally: DRBD's activity log).
    fn persist_marks(&mut self, r: std::ops::Range<u64>) -> io::Result<()> {
        let mut touched = false;
        for b in r {
            let (w, bit) = ((b / 64) as usize, 1u64 << (b % 64));
            if self.disk_bm[w] & bit == 0 {
                self.disk_bm[w] |= bit;
                self.bm_file
                    .write_all_at(&self.disk_bm[w].to_le_bytes(), (w * 8) as u64)?;
                touched = true;
            }
        }
        if touched {
            self.bm_file.sync_data()?;
        }
        Ok(())
    }

    /// Writes the bitmap file as `oos` plus the blocks in flight (clears
    /// the bits of acknowledged writes); fdatasync'd.
    pub fn flush_bitmap(&mut self) -> io::Result<()> {
        let mut want = self.oos.clone();
        for b in self.inflight.keys() {
            want[(b / 64) as usize] |= 1 << (b % 64);
        }
        if want != self.disk_bm {
            self.bm_file.write_all_at(&words_to_bytes(&want), 0)?;
            self.bm_file.sync_data()?;
            self.disk_bm = want;
        }
        Ok(())
    }

    /// The bitmap sent in the handshake (out of sync or in flight).
    pub fn handshake_bitmap(&self) -> Vec<u64> {
        let mut want = self.oos.clone();
        for b in self.inflight.keys() {
            want[(b / 64) as usize] |= 1 << (b % 64);
        }
        want
    }

    /// The link is gone: writes in flight may be missing on the peer
    /// (their blocks become out of sync) and their waiters are told.
    pub fn link_down(&mut self) {
        let blocks: Vec<u64> = self.inflight.keys().copied().collect();
        for b in blocks {
            self.set_oos(b..b + 1);
        }
        self.inflight.clear();
        self.rs_inflight.clear();
        for (_, (_, w)) in self.pending.drain() {
            if let Some(w) = w {
                let _ = w.try_send(false);
            }
        }
    }

    /// The peer acknowledged write / flush `seq`.
    pub fn acked(&mut self, seq: u64) {
        if let Some((r, w)) = self.pending.remove(&seq) {
            for b in r {
                if let Some(n) = self.inflight.get_mut(&b) {
                    *n -= 1;
                    if *n == 0 {
                        self.inflight.remove(&b);
                    }
                }
            }
            if let Some(w) = w {
                let _ = w.try_send(true);
            }
        }
    }

    /// The peer could not write `seq` (no disk): the write is complete
    /// (it is on the local disk), its blocks are out of sync.
    pub fn neg_acked(&mut self, seq: u64) {
        if let Some((r, w)) = self.pending.remove(&seq) {
            for b in r.clone() {
                if let Some(n) = self.inflight.get_mut(&b) {
                    *n -= 1;
                    if *n == 0 {
                        self.inflight.remove(&b);
                    }
                }
            }
            self.set_oos(r);
            if let Some(w) = w {
                let _ = w.try_send(true);
            }
        }
    }

    /// Writes waiting for acknowledgement.
    pub fn pending_count(&self) -> usize {
        self.pending.len()
    }

    /// The next run of out-of-sync blocks not in flight, from `from` on
    /// (wrapping): (first block, count).
    pub fn next_resync_run(&self, from: u64) -> Option<(u64, u64)> {
        let n = self.nblocks();
        let find = |lo: u64, hi: u64| -> Option<u64> {
            let mut b = lo;
            while b < hi {
                let w = self.oos[(b / 64) as usize];
                if w == 0 {
                    b = (b / 64 + 1) * 64;
                    continue;
                }
                if w & (1 << (b % 64)) != 0 && !self.rs_inflight.contains(&b) {
                    return Some(b);
                }
                b += 1;
            }
            None
        };
        let first = find(from.min(n), n).or_else(|| find(0, from.min(n)))?;
        let mut len = 1;
        while len < RS_RUN
            && first + len < n
            && self.is_oos(first + len)
            && !self.rs_inflight.contains(&(first + len))
        {
            len += 1;
        }
        Some((first, len))
    }
}

/// True when writes of the local Primary go to the peer (connected, and
/// the peer has a disk to write them to).
fn replicating(c: &Core) -> bool {
    c.role == Role::Primary
        && c.link.is_some()
        && c.conn == ConnState::Connected
        && matches!(c.repl, Repl::Established | Repl::SyncSource)
        && crate::daemon::peer_has_disk(c.peer_disk)
}

/// A Primary without good local data (Diskless after an I/O error, or
/// SyncTarget while it attaches again): DRBD would read and write through
/// the peer's disk; the emulator does not, the I/O fails with `EIO`.
fn no_local_data(c: &Core) -> bool {
    c.role == Role::Primary && (!c.attached || c.disk() != DiskState::UpToDate)
}

/// `on-io-error detach` after a local I/O error on `blocks` (marked out
/// of sync first, so that the bitmap keeps them).
fn io_error(sh: &Shared, what: &str, blocks: std::ops::Range<u64>, e: &io::Error, untrusted: bool) {
    let mut c = sh.lock();
    if let Some(b) = c.blk.as_mut() {
        b.set_oos(blocks);
    }
    c.detach_on_io_error(what, e, untrusted);
}

/// A write / fsync lost its peer: waits while I/O is suspended for
/// fencing, then completes locally (a Primary without its peer starts its
/// new data generation with it).
fn complete_locally(sh: &Shared) {
    loop {
        {
            let mut c = sh.lock();
            if !c.susp_fen {
                c.local_write_without_peer();
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Enters the write path: waits while I/O is suspended; refuses writes on
/// a Secondary or a resource that is down. Returns with `writers` counted.
fn enter(sh: &Shared) -> Result<(), i32> {
    let mut counted = false;
    loop {
        {
            let mut c = sh.lock();
            if !counted {
                if let Some(b) = c.blk.as_mut() {
                    b.writers += 1;
                }
                counted = true;
            }
            let err = if !c.up {
                Some(libc::ENXIO)
            } else if c.role == Role::Primary && no_local_data(&c) {
                Some(libc::EIO)
            } else if !c.attached {
                Some(libc::ENXIO)
            } else if c.role != Role::Primary {
                Some(libc::EROFS)
            } else {
                None
            };
            if let Some(e) = err {
                if let Some(b) = c.blk.as_mut() {
                    b.writers -= 1;
                }
                return Err(e);
            }
            if !c.susp_fen {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn leave(sh: &Shared) {
    if let Some(b) = sh.lock().blk.as_mut() {
        b.writers = b.writers.saturating_sub(1);
    }
}

/// A write to the device (FUSE thread): local write + replication by the
/// configured protocol. Returns an errno on failure.
pub fn write(sh: &Shared, off: u64, data: &[u8]) -> Result<(), i32> {
    enter(sh)?;
    let r = write_inner(sh, off, data);
    leave(sh);
    r
}

fn write_inner(sh: &Shared, off: u64, data: &[u8]) -> Result<(), i32> {
    let proto = sh.cfg().net.protocol;
    let wait = {
        let mut c = sh.lock();
        let repl = replicating(&c);
        let Some(b) = c.blk.as_mut() else {
            return Err(libc::EIO);
        };
        let len = data.len() as u64;
        if off.checked_add(len).is_none_or(|e| e > b.size) {
            return Err(libc::ENOSPC);
        }
        let blocks = blocks_of(off, len);
        if let Err(e) = b.persist_marks(blocks.clone()) {
            drop(c);
            io_error(sh, "the bitmap (meta data)", blocks, &e, true);
            return Err(libc::EIO);
        }
        if let Err(e) = b.file.write_all_at(data, off) {
            drop(c);
            io_error(sh, "a write", blocks, &e, false);
            return Err(libc::EIO);
        }
        if repl {
            let seq = b.next_seq;
            b.next_seq += 1;
            for blk in blocks.clone() {
                *b.inflight.entry(blk).or_insert(0) += 1;
            }
            let (tx, rx) = smpsc::sync_channel(1);
            let waiting = proto != Protocol::A;
            b.pending
                .insert(seq, (blocks, if waiting { Some(tx) } else { None }));
            c.send_payload(
                Msg::BlkWrite {
                    seq,
                    off,
                    ack_on_receive: proto == Protocol::B,
                },
                data.to_vec(),
            );
            c.stats.sent_b += len;
            c.stats.written_b += len;
            waiting.then_some(rx)
        } else {
            b.set_oos(blocks);
            c.stats.written_b += len;
            c.local_write_without_peer();
            c.recompute_oos();
            None
        }
    };
    if let Some(rx) = wait {
        if !rx.recv().unwrap_or(false) {
            complete_locally(sh);
        }
    }
    Ok(())
}

/// fsync of the device (FUSE thread): local fdatasync, and with protocol
/// B/C the peer's fdatasync of everything written before.
pub fn fsync(sh: &Shared) -> Result<(), i32> {
    enter(sh)?;
    let r = fsync_inner(sh);
    leave(sh);
    r
}

fn fsync_inner(sh: &Shared) -> Result<(), i32> {
    let proto = sh.cfg().net.protocol;
    let wait = {
        let mut c = sh.lock();
        let repl = replicating(&c);
        let Some(b) = c.blk.as_mut() else {
            return Err(libc::EIO);
        };
        if let Err(e) = b.file.sync_data() {
            drop(c);
            io_error(sh, "a flush", 0..0, &e, true);
            return Err(libc::EIO);
        }
        if repl && proto != Protocol::A {
            let seq = b.next_seq;
            b.next_seq += 1;
            let (tx, rx) = smpsc::sync_channel(1);
            b.pending.insert(seq, (0..0, Some(tx)));
            c.send(Msg::BlkFlush { seq });
            Some(rx)
        } else {
            None
        }
    };
    if let Some(rx) = wait {
        if !rx.recv().unwrap_or(false) {
            complete_locally(sh);
        }
    }
    Ok(())
}

/// The FUSE file system: a root directory with the device file.
pub struct DevFs {
    sh: Arc<Shared>,
    file: Arc<File>,
    size: u64,
}

const ROOT: u64 = 1;
const DEV: u64 = 2;
const TTL: Duration = Duration::from_secs(0);

impl DevFs {
    fn attr(&self, ino: u64) -> fuser::FileAttr {
        let t = SystemTime::UNIX_EPOCH;
        let dir = ino == ROOT;
        fuser::FileAttr {
            ino,
            size: if dir { 0 } else { self.size },
            blocks: if dir { 0 } else { self.size / 512 },
            atime: t,
            mtime: t,
            ctime: t,
            crtime: t,
            kind: if dir {
                fuser::FileType::Directory
            } else {
                fuser::FileType::RegularFile
            },
            perm: if dir { 0o755 } else { 0o600 },
            nlink: if dir { 2 } else { 1 },
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl fuser::Filesystem for DevFs {
    fn lookup(
        &mut self,
        _req: &fuser::Request<'_>,
        parent: u64,
        name: &OsStr,
        reply: fuser::ReplyEntry,
    ) {
        if parent == ROOT && name == DEVICE_FILE_NAME {
            reply.entry(&TTL, &self.attr(DEV), 0);
        } else {
            reply.error(libc::ENOENT);
        }
    }

    fn getattr(
        &mut self,
        _req: &fuser::Request<'_>,
        ino: u64,
        _fh: Option<u64>,
        reply: fuser::ReplyAttr,
    ) {
        match ino {
            ROOT | DEV => reply.attr(&TTL, &self.attr(ino)),
            _ => reply.error(libc::ENOENT),
        }
    }

    fn setattr(
        &mut self,
        _req: &fuser::Request<'_>,
        ino: u64,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<u64>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<u32>,
        reply: fuser::ReplyAttr,
    ) {
        if size.is_some_and(|s| s != self.size) {
            // a block device has a fixed size
            reply.error(libc::EPERM);
        } else {
            reply.attr(&TTL, &self.attr(ino));
        }
    }

    fn open(&mut self, _req: &fuser::Request<'_>, ino: u64, flags: i32, reply: fuser::ReplyOpen) {
        if ino != DEV {
            reply.error(libc::EISDIR);
            return;
        }
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            let c = self.sh.lock();
            // allow_rw_open: the daemon's own losetup, which may open the
            // file more than once when it races for a free loop device
            let allowed =
                c.role == Role::Primary || c.blk.as_ref().is_some_and(|b| b.allow_rw_open);
            if !allowed {
                // DRBD: a Secondary's device cannot be opened for writing
                reply.error(libc::EROFS);
                return;
            }
        }
        reply.opened(0, fuser::consts::FOPEN_DIRECT_IO);
    }

    fn read(
        &mut self,
        _req: &fuser::Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        size: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: fuser::ReplyData,
    ) {
        let off = offset.max(0) as u64;
        let n = u64::from(size).min(self.size.saturating_sub(off)) as usize;
        if no_local_data(&self.sh.lock()) {
            reply.error(libc::EIO);
            return;
        }
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.file.read_at(&mut buf[got..], off + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) => {
                    io_error(&self.sh, "a read", 0..0, &e, false);
                    reply.error(libc::EIO);
                    return;
                }
            }
        }
        buf.truncate(got);
        self.sh.lock().stats.read_b += got as u64;
        reply.data(&buf);
    }

    fn write(
        &mut self,
        _req: &fuser::Request<'_>,
        _ino: u64,
        _fh: u64,
        offset: i64,
        data: &[u8],
        _write_flags: u32,
        _flags: i32,
        _lock: Option<u64>,
        reply: fuser::ReplyWrite,
    ) {
        // Answered from a thread of its own: a write may wait for the peer
        // or for a fencing suspension, and the session thread must keep
        // serving other requests meanwhile (a close() sends FLUSH).
        let sh = self.sh.clone();
        let data = data.to_vec();
        let off = offset.max(0) as u64;
        std::thread::spawn(move || match write(&sh, off, &data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        });
    }

    fn flush(
        &mut self,
        _req: &fuser::Request<'_>,
        _ino: u64,
        _fh: u64,
        _lock: u64,
        reply: fuser::ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &mut self,
        _req: &fuser::Request<'_>,
        _ino: u64,
        _fh: u64,
        _datasync: bool,
        reply: fuser::ReplyEmpty,
    ) {
        let role = self.sh.lock().role;
        if role != Role::Primary {
            // nothing can be dirty on a Secondary
            reply.ok();
            return;
        }
        let sh = self.sh.clone();
        std::thread::spawn(move || match fsync(&sh) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        });
    }

    fn readdir(
        &mut self,
        _req: &fuser::Request<'_>,
        ino: u64,
        _fh: u64,
        offset: i64,
        mut reply: fuser::ReplyDirectory,
    ) {
        if ino != ROOT {
            reply.error(libc::ENOTDIR);
            return;
        }
        let entries = [
            (ROOT, fuser::FileType::Directory, "."),
            (ROOT, fuser::FileType::Directory, ".."),
            (DEV, fuser::FileType::RegularFile, DEVICE_FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset.max(0) as usize) {
            if reply.add(*ino, (i + 1) as i64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

fn run_cmd(cmd: &str, args: &[&str]) -> io::Result<String> {
    let o = std::process::Command::new(cmd).args(args).output()?;
    if !o.status.success() {
        return Err(io::Error::other(format!(
            "{cmd} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

fn umount_detach(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: umount2 with a NUL-terminated path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
}

/// A path on a FUSE mount whose server is gone (`ENOTCONN`).
fn dead_fuse(p: &Path) -> bool {
    std::fs::metadata(p).is_err_and(|e| e.raw_os_error() == Some(libc::ENOTCONN))
}

/// Removes what crashed daemons left behind: loop devices on a
/// `drbd-emu-device` file whose FUSE server is gone (or on this host's own
/// device file), then dead FUSE mounts named `drbd-emu:…` (and this host's mount).
pub fn cleanup_stale(cfg: &Config) {
    let mine = cfg.device_file();
    if let Ok(out) = run_cmd("losetup", &["-l", "-n", "--raw", "-O", "NAME,BACK-FILE"]) {
        for line in out.lines() {
            let Some((name, back)) = line.split_once(' ') else {
                continue;
            };
            let back = back.trim().replace("\\x20", " ");
            let deleted = back.ends_with(" (deleted)");
            let back = back.trim().trim_end_matches(" (deleted)");
            if !back.ends_with(DEVICE_FILE_NAME) {
                continue;
            }
            // a device file that is deleted (its FUSE mount detached) or on
            // a FUSE mount whose server died; or this host's own
            if !(deleted || dead_fuse(Path::new(back)) || Path::new(back) == mine) {
                continue;
            }
            // still the same loop device? (another daemon may have
            // detached and reused it meanwhile)
            let short = name.trim_start_matches("/dev/");
            let now = std::fs::read_to_string(format!("/sys/block/{short}/loop/backing_file"))
                .unwrap_or_default();
            let now = now.trim().trim_end_matches(" (deleted)");
            if now.is_empty() || now == back {
                eprintln!("drbd-emu: detaching leaked loop device {name} ({back})");
                if let Err(e) = run_cmd("losetup", &["-d", name]) {
                    eprintln!("drbd-emu: {e}");
                }
            }
        }
    }
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mdir = cfg.mount_dir();
    for line in mountinfo.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let mut post = post.split(' ');
        let (fstype, source) = (post.next().unwrap_or(""), post.next().unwrap_or(""));
        if !fstype.starts_with("fuse") || !source.starts_with("drbd-emu:") {
            continue;
        }
        let Some(mp) = pre.split(' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(mp.replace("\\040", " "));
        if dead_fuse(&mp) || mp == mdir {
            eprintln!("drbd-emu: unmounting leaked FUSE mount {}", mp.display());
            umount_detach(&mp);
        }
    }
}

/// Moves the calling process into a mount namespace of its own and makes
/// every mount in it private (`unshare(CLONE_NEWNS)` + `mount --make-rprivate
/// /`), so that mounts made afterwards (the FUSE file system) are invisible
/// to all other processes. Must run while the process is single-threaded
/// (a thread's `unshare` does not move its siblings).
pub fn private_mount_namespace() -> io::Result<()> {
    // SAFETY: unshare(2) with a valid flag; no pointers involved.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let root = c"/";
    // SAFETY: mount(2) with NUL-terminated strings / NULL where allowed
    // (a propagation change takes no source, type or data).
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Mounts the FUSE file system serving the device file.
pub fn mount(sh: &Arc<Shared>) -> io::Result<fuser::BackgroundSession> {
    let cfg = sh.cfg();
    let mdir = cfg.mount_dir();
    std::fs::create_dir_all(&mdir)?;
    let (file, size) = {
        let c = sh.lock();
        let b = c
            .blk
            .as_ref()
            .ok_or_else(|| io::Error::other("no block device"))?;
        (b.file.clone(), b.size)
    };
    let fs = DevFs {
        sh: sh.clone(),
        file,
        size,
    };
    let opts = [
        fuser::MountOption::FSName(format!("drbd-emu:{}:{}", cfg.resource, cfg.hostname)),
        fuser::MountOption::Subtype("drbd-emu".into()),
        fuser::MountOption::AllowOther,
        fuser::MountOption::RW,
    ];
    fuser::spawn_mount2(fs, &mdir, &opts)
}

const BLKROSET: libc::c_ulong = 0x125d;
const BLKFLSBUF: libc::c_ulong = 0x1261;

/// Sets the loop device read-only (Secondary) or writable (Primary); on
/// promotion also drops its buffer cache (the peer changed the data).
pub fn set_loop_writable(dev: &str, writable: bool) {
    use std::os::fd::AsRawFd;
    let f = match std::fs::OpenOptions::new().read(true).open(dev) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("drbd-emu: open {dev}: {e}");
            return;
        }
    };
    let ro: libc::c_int = i32::from(!writable);
    // SAFETY: ioctls on an open block device with a valid int pointer.
    unsafe {
        if writable {
            libc::ioctl(f.as_raw_fd(), BLKFLSBUF, 0);
        }
        if libc::ioctl(f.as_raw_fd(), BLKROSET, &ro) != 0 {
            eprintln!("drbd-emu: BLKROSET {dev}: {}", io::Error::last_os_error());
        }
    }
}

/// Sets up the loop device on the device file and publishes its path
/// (`STATE_DIR/device`, `device_link`).
pub fn setup_loop(sh: &Arc<Shared>) -> io::Result<String> {
    let cfg = sh.cfg();
    let devfile = cfg.device_file();
    let dev = devfile.display().to_string();
    if let Some(b) = sh.lock().blk.as_mut() {
        b.allow_rw_open = true;
    }
    let out = run_cmd("losetup", &["-f", "--show", &dev]);
    if let Some(b) = sh.lock().blk.as_mut() {
        b.allow_rw_open = false;
    }
    let loopdev = out?.trim().to_string();
    let primary = sh.lock().role == Role::Primary;
    set_loop_writable(&loopdev, primary);
    std::fs::write(cfg.state_dir.join("device"), format!("{loopdev}\n"))?;
    if let Some(link) = &cfg.device.device_link {
        let _ = std::fs::remove_file(link);
        std::os::unix::fs::symlink(&loopdev, link)?;
    }
    if let Some(b) = sh.lock().blk.as_mut() {
        b.loop_dev = Some(loopdev.clone());
    }
    eprintln!(
        "drbd-emu: {} device {} on {} (loop device {loopdev})",
        cfg.resource,
        cfg.minor,
        devfile.display()
    );
    Ok(loopdev)
}

/// `(major, minor)` of a block device node.
fn dev_numbers(dev: &str) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(dev).ok()?.rdev();
    Some((libc::major(rdev), libc::minor(rdev)))
}

/// The loop device is mounted somewhere (DRBD refuses to demote a device
/// that is held open; a mount is what can be seen from here). A mount
/// claims the device exclusively, so an `O_EXCL` open fails with `EBUSY`
/// whichever mount namespace the mount is in (a daemon in a private
/// namespace does not see the others' mounts in its mountinfo).
pub fn loop_in_use(dev: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let excl = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_EXCL)
        .open(dev);
    if excl.is_err_and(|e| e.raw_os_error() == Some(libc::EBUSY)) {
        return true;
    }
    let Some((ma, mi)) = dev_numbers(dev) else {
        return false;
    };
    let want = format!("{ma}:{mi}");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(2) == Some(want.as_str()))
}

/// Resync sender of the block mode: while SyncSource, sends the
/// out-of-sync blocks (runs of up to 64 KiB, at most `RS_WINDOW` blocks
/// unacknowledged, throttled by `resync_rate_kib`), then `SyncDone`.
pub async fn resync_sender(
    sh: Arc<Shared>,
    epoch: u64,
    ctrl: tokio::sync::mpsc::UnboundedSender<crate::repl::Frame>,
) {
    let rate = sh.cfg().tuning.resync_rate_kib * 1024;
    let mut next = tokio::time::Instant::now();
    let mut cursor = 0u64;
    let mut progress = crate::repl::ProgressTx::default();
    loop {
        enum S {
            Stop,
            Idle(u64),
            Sent(u64),
        }
        let s = {
            let mut c = sh.lock();
            if c.epoch != epoch || c.link.is_none() {
                S::Stop
            } else if c.conn != ConnState::Connected || c.repl != Repl::SyncSource {
                S::Idle(20)
            } else {
                let b = c.blk.as_ref().expect("block mode");
                match b.next_resync_run(cursor) {
                    Some((first, n)) if b.rs_inflight.len() < RS_WINDOW => {
                        let off = first * BM_BLOCK;
                        let len = (n * BM_BLOCK).min(b.size - off) as usize;
                        let mut buf = vec![0u8; len];
                        let r = b.file.read_exact_at(&mut buf, off);
                        match r {
                            Ok(()) => {
                                let b = c.blk.as_mut().expect("block mode");
                                for x in first..first + n {
                                    b.rs_inflight.insert(x);
                                }
                                c.send_payload(Msg::BlkSync { off }, buf);
                                c.stats.sent_b += len as u64;
                                c.stats.read_b += len as u64;
                                cursor = first + n;
                                S::Sent(len as u64)
                            }
                            Err(e) => {
                                drop(c);
                                io_error(&sh, "a resync read", 0..0, &e, false);
                                S::Idle(100)
                            }
                        }
                    }
                    Some(_) => S::Idle(2),
                    None => {
                        if b.oos_blocks() == 0 && b.rs_inflight.is_empty() {
                            crate::repl::finish_sync_source(&sh, &mut c, &ctrl);
                            S::Idle(20)
                        } else {
                            S::Idle(2)
                        }
                    }
                }
            }
        };
        progress.tick(&sh, &ctrl);
        match s {
            S::Stop => return,
            S::Idle(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
            S::Sent(n) => {
                if rate > 0 {
                    let now = tokio::time::Instant::now();
                    if next < now {
                        next = now;
                    }
                    next += Duration::from_secs_f64(n as f64 / rate as f64);
                    tokio::time::sleep_until(next).await;
                }
            }
        }
    }
}

/// The backing file, if a disk is attached; `Err` for block data in
/// directory mode or beyond the device (a protocol error: the link drops).
fn attached_file(sh: &Shared, off: u64, len: usize) -> io::Result<Option<Arc<File>>> {
    let c = sh.lock();
    let b = c
        .blk
        .as_ref()
        .ok_or_else(|| io::Error::other("block data in directory mode"))?;
    if off.checked_add(len as u64).is_none_or(|e| e > b.size) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "write beyond the device",
        ));
    }
    Ok((c.attached && c.disk_transient.is_none()).then(|| b.file.clone()))
}

/// Writes a replicated write to the backing file. `Ok(false)`: not written,
/// there is no disk (Diskless), or writing failed and the disk was detached
/// (`on-io-error detach`; the blocks marked out of sync here too).
pub fn apply_write(sh: &Shared, off: u64, data: &[u8]) -> io::Result<bool> {
    apply(sh, off, data, "a replicated write", |file| {
        file.write_all_at(data, off)
    })
}

/// Writes resync data. A run of zeros is discarded on the backing file
/// (a hole punched, `FALLOC_FL_PUNCH_HOLE`; written out where that is not
/// supported), as DRBD's thin resync (`rs-discard-granularity`) does on a
/// thin backing device: a thin (sparse) backing file stays thin. Same
/// results as [`apply_write`].
pub fn apply_sync(sh: &Shared, off: u64, data: &[u8]) -> io::Result<bool> {
    apply(sh, off, data, "a resync write", |file| {
        if data.iter().all(|b| *b == 0) {
            punch_hole(file, off, data.len() as u64).or_else(|_| file.write_all_at(data, off))
        } else {
            file.write_all_at(data, off)
        }
    })
}

/// A peer's write of `data` at `off` to the attached backing file by `write`:
/// `Ok(false)` when no disk is attached or the write failed (then detached,
/// `io_error`), counted in the statistics when it succeeded.
fn apply(
    sh: &Shared,
    off: u64,
    data: &[u8],
    what: &str,
    write: impl FnOnce(&File) -> io::Result<()>,
) -> io::Result<bool> {
    let Some(file) = attached_file(sh, off, data.len())? else {
        return Ok(false);
    };
    if let Err(e) = write(&file) {
        io_error(sh, what, blocks_of(off, data.len() as u64), &e, false);
        return Ok(false);
    }
    let mut c = sh.lock();
    c.stats.received_b += data.len() as u64;
    c.stats.written_b += data.len() as u64;
    Ok(true)
}

fn punch_hole(f: &File, off: u64, len: u64) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate(2) on an open file descriptor; no pointers.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// fdatasync of the backing file (a replicated flush). False if it failed
/// (the disk is detached, and which writes reached it is unknown: the
/// next attach does a full sync); true without a disk (nothing to flush).
pub fn apply_flush(sh: &Shared) -> bool {
    let file = {
        let c = sh.lock();
        c.blk
            .as_ref()
            .filter(|_| c.attached && c.disk_transient.is_none())
            .map(|b| b.file.clone())
    };
    match file.map(|f| f.sync_data()) {
        Some(Err(e)) => {
            io_error(sh, "a replicated flush", 0..0, &e, true);
            false
        }
        _ => true,
    }
}

/// Range of bitmap blocks of a byte range.
pub fn block_range(off: u64, len: u64) -> std::ops::Range<u64> {
    blocks_of(off, len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_ranges() {
        assert_eq!(blocks_of(0, 4096), 0..1);
        assert_eq!(blocks_of(4095, 2), 0..2);
        assert_eq!(blocks_of(8192, 1), 2..3);
        assert_eq!(blocks_of(512, 0), 0..0);
    }
}
