//! Durable Raft storage on redb (an embedded, pure-Rust, ACID key-value store).
//!
//! One redb file per controller node holds five tables:
//! - `raft_log`: log index -> JSON of the openraft entry;
//! - `raft_meta`: the vote, the committed log id and the last purged log id;
//! - `sm_pairs`: pair id -> JSON of its [`PairRecord`] (spec, state, plan, the
//!   last [`HISTORY_LIMIT`] history lines);
//! - `history_archive`: (pair id, n) -> JSON of an older history line, at most
//!   [`ARCHIVE_LIMIT`] per pair;
//! - `state_machine`: the applied log id, the last membership, the audit log and
//!   the current snapshot.
//!
//! Every write is one redb transaction committed with fsync before the call returns
//! (before openraft's `IOFlushed` callback fires for appends), so a node that is
//! SIGKILLed restarts with exactly what it acknowledged. An applied batch writes
//! only what it changed: the rows of the pairs its requests name (every row for
//! an inventory sync), the audit log if an operator command was applied, the
//! membership if it changed, and the applied log id, in one transaction; the
//! history lines a written pair has beyond [`HISTORY_LIMIT`] move to the archive
//! in that same transaction. A snapshot is the whole state plus the archive
//! ([`SnapshotBody`]); installing one replaces every row.
//!
//! The state machine also publishes its data through [`SharedState`], which the
//! gRPC services read after a linearizable read barrier.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use openraft::alias::{EntryOf, LogIdOf, SnapshotMetaOf, SnapshotOf, StoredMembershipOf, VoteOf};
use openraft::entry::RaftEntry;
use openraft::storage::{
    EntryResponder, IOFlushed, LogState, RaftLogReader, RaftLogStorage, RaftSnapshotBuilder,
    RaftStateMachine,
};
use openraft::{EntryPayload, OptionalSend};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::types::TypeConfig;
use crate::state::{ClusterState, HistoryEntry, PairRecord, Request, Response, HISTORY_LIMIT};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");
const PAIRS: TableDefinition<&str, &[u8]> = TableDefinition::new("sm_pairs");
const ARCHIVE: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("history_archive");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
/// The whole state as one JSON value: the format before rows (read once, then
/// converted to rows and removed).
const KEY_SM_DATA: &str = "data";
const KEY_APPLIED: &str = "applied";
const KEY_MEMBERSHIP: &str = "membership";
const KEY_AUDIT: &str = "audit";
/// The current snapshot before it was split in two: metadata and data in one
/// JSON value, the data as an array of numbers (read, never written).
const KEY_SNAPSHOT: &str = "snapshot";
/// The current snapshot's metadata (JSON) and its data (the bytes as they
/// travel to a follower), in two rows: the data is written as it is, neither
/// copied nor re-encoded (at 2000 pairs the old form was a 17 MB JSON value
/// built every few seconds, the largest transient heap in the leader).
const KEY_SNAPSHOT_META: &str = "snapshot.meta";
const KEY_SNAPSHOT_DATA: &str = "snapshot.data";

type Entry = EntryOf<TypeConfig>;
type LogId = LogIdOf<TypeConfig>;

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn to_json<T: Serialize>(v: &T) -> io::Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(io_err)
}

fn from_json<T: for<'de> Deserialize<'de>>(b: &[u8]) -> io::Result<T> {
    serde_json::from_slice(b).map_err(io_err)
}

/// Open (or create) the node's database and make sure all tables exist.
/// redb's page cache: its default (1 GiB) let the cached pages of a 2,000-pair
/// database grow to 39 MB of the leader's heap (heaptrack, `bench-scale`); a
/// commit touches a few rows, and reads miss into the OS's page cache.
const DB_CACHE_BYTES: usize = 16 << 20;

pub fn open_database(path: &Path) -> io::Result<Arc<Database>> {
    let db = redb::Builder::new()
        .set_cache_size(DB_CACHE_BYTES)
        .create(path)
        .map_err(|e| {
        io::Error::other(format!(
            "cannot open the controller database {}: {e}; check the data_dir permissions and that no other controller process uses it",
            path.display()
        ))
    })?;
    let tx = db.begin_write().map_err(io_err)?;
    tx.open_table(LOG).map_err(io_err)?;
    tx.open_table(META).map_err(io_err)?;
    tx.open_table(SM).map_err(io_err)?;
    tx.open_table(PAIRS).map_err(io_err)?;
    tx.open_table(ARCHIVE).map_err(io_err)?;
    tx.commit().map_err(io_err)?;
    Ok(Arc::new(db))
}

fn meta_get<T: for<'de> Deserialize<'de>>(db: &Database, key: &str) -> io::Result<Option<T>> {
    let tx = db.begin_read().map_err(io_err)?;
    let t = tx.open_table(META).map_err(io_err)?;
    match t.get(key).map_err(io_err)? {
        Some(v) => Ok(Some(from_json(v.value())?)),
        None => Ok(None),
    }
}

fn meta_put<T: Serialize>(db: &Database, key: &str, v: &T) -> io::Result<()> {
    let bytes = to_json(v)?;
    let tx = db.begin_write().map_err(io_err)?;
    {
        let mut t = tx.open_table(META).map_err(io_err)?;
        t.insert(key, bytes.as_slice()).map_err(io_err)?;
    }
    tx.commit().map_err(io_err)
}

/// The Raft log and vote, durable in redb.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

impl LogStore {
    pub fn new(db: Arc<Database>) -> Self {
        Self { db }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        let start = match range.start_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(s) => Bound::Included(*s),
            Bound::Excluded(s) => Bound::Excluded(*s),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for item in t.range::<u64>((start, end)).map_err(io_err)? {
            let (_, v) = item.map_err(io_err)?;
            out.push(from_json(v.value())?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        meta_get(&self.db, KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogId> = meta_get(&self.db, KEY_PURGED)?;
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(LOG).map_err(io_err)?;
        let last = match t.last().map_err(io_err)? {
            Some((_, v)) => Some(from_json::<Entry>(v.value())?.log_id()),
            None => last_purged.clone(),
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        meta_put(&self.db, KEY_VOTE, vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        meta_put(&self.db, KEY_COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(meta_get::<Option<LogId>>(&self.db, KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let res = (|| {
            let tx = self.db.begin_write().map_err(io_err)?;
            {
                let mut t = tx.open_table(LOG).map_err(io_err)?;
                for e in entries {
                    let bytes = to_json(&e)?;
                    t.insert(e.index(), bytes.as_slice()).map_err(io_err)?;
                }
            }
            tx.commit().map_err(io_err)
        })();
        match res {
            Ok(()) => {
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map(|l| l.index() + 1).unwrap_or(0);
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(from.., |_, _| false).map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let bytes = to_json(&Some(log_id.clone()))?;
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut m = tx.open_table(META).map_err(io_err)?;
            m.insert(KEY_PURGED, bytes.as_slice()).map_err(io_err)?;
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(..=log_id.index(), |_, _| false)
                .map_err(io_err)?;
        }
        tx.commit().map_err(io_err)
    }
}

/// Everything the state machine holds in memory; the JSON of this (plus the
/// history archive, [`SnapshotBody`]) is also the snapshot format.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembershipOf<TypeConfig>,
    pub state: ClusterState,
}

/// A snapshot's data: the state machine and every pair's archived history.
/// A snapshot written before the archive existed (bare [`SmData`]) reads with
/// an empty archive.
#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    last_applied: Option<LogId>,
    membership: StoredMembershipOf<TypeConfig>,
    state: ClusterState,
    #[serde(default)]
    archive: BTreeMap<String, Vec<HistoryEntry>>,
}

/// A snapshot as stored under [`KEY_SNAPSHOT`] before the split: metadata plus
/// the serialized [`SnapshotBody`]. Only read.
#[derive(Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

/// Read access to the applied state, shared with the gRPC services.
#[derive(Clone)]
pub struct SharedState {
    data: Arc<RwLock<Arc<SmData>>>,
    applied_tx: Arc<watch::Sender<u64>>,
    db: Arc<Database>,
}

impl SharedState {
    /// The applied application state. Cheap: the state is shared, not copied
    /// (pairs are `Arc`s); hold it only as long as needed.
    pub fn snapshot(&self) -> Arc<SmData> {
        self.data.read().expect("state lock poisoned").clone()
    }

    /// Notified with the last applied index after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// A pair's history lines older than the live ones (compacted out of the
    /// replicated state by [`HISTORY_LIMIT`]), oldest first; at most
    /// [`ARCHIVE_LIMIT`] of them.
    pub fn archived_history(&self, pair_id: &str) -> io::Result<Vec<HistoryEntry>> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(ARCHIVE).map_err(io_err)?;
        read_archive(&t, pair_id)
    }
}

fn read_archive(
    t: &impl ReadableTable<(&'static str, u64), &'static [u8]>,
    pair_id: &str,
) -> io::Result<Vec<HistoryEntry>> {
    let mut out = Vec::new();
    for item in t
        .range((pair_id, 0u64)..=(pair_id, u64::MAX))
        .map_err(io_err)?
    {
        let (_, v) = item.map_err(io_err)?;
        out.push(from_json(v.value())?);
    }
    Ok(out)
}

/// How many archived history lines are kept per pair (oldest dropped first).
pub const ARCHIVE_LIMIT: u64 = 10_000;

/// The pair a request changes; `None`: it may change several (inventory).
fn pair_of(req: &Request) -> Option<&str> {
    match req {
        Request::SyncInventory { .. } | Request::PatchInventory { .. } => None,
        Request::SetPairState { pair_id, .. }
        | Request::StartFailover { pair_id, .. }
        | Request::StartReattach { pair_id, .. }
        | Request::StepUpdate { pair_id, .. }
        | Request::FinishFailover { pair_id, .. }
        | Request::Acknowledge { pair_id, .. }
        | Request::HoldoffElapsed { pair_id, .. }
        | Request::MarkOutdated { pair_id, .. }
        | Request::ClearOutdated { pair_id, .. }
        | Request::RaiseEpoch { pair_id, .. }
        | Request::IssueCommand { pair_id, .. }
        | Request::StandDownStep { pair_id, .. }
        | Request::Operator { pair_id, .. }
        | Request::Redundancy { pair_id, .. } => Some(pair_id),
    }
}

/// What an applied batch changed, to be written.
#[derive(Default)]
struct Dirty {
    all: bool,
    pairs: BTreeSet<String>,
    audit: bool,
    membership: bool,
}

/// How many rows the last batches wrote (for tests and the benchmark's notes).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct WriteStats {
    /// Pair rows written (or removed) by the last applied batch.
    pub pair_rows: usize,
    /// History lines moved to the archive by the last applied batch.
    pub archived: usize,
}

/// Write the rows `dirty` names, compacting each written pair's history, and
/// the applied log id; all in the caller's transaction.
fn write_rows(
    tx: &redb::WriteTransaction,
    data: &mut SmData,
    dirty: &Dirty,
) -> io::Result<WriteStats> {
    let mut stats = WriteStats::default();
    let mut pairs = tx.open_table(PAIRS).map_err(io_err)?;
    let mut archive = tx.open_table(ARCHIVE).map_err(io_err)?;
    let ids: Vec<String> = if dirty.all {
        // Every pair held, and every row on disk (removed pairs).
        let mut all: BTreeSet<String> = data.state.pairs.keys().cloned().collect();
        for item in pairs.iter().map_err(io_err)? {
            let (k, _) = item.map_err(io_err)?;
            all.insert(k.value().to_string());
        }
        all.into_iter().collect()
    } else {
        dirty.pairs.iter().cloned().collect()
    };
    for id in ids {
        stats.pair_rows += 1;
        let Some(rec) = data.state.pairs.get_mut(&id) else {
            pairs.remove(id.as_str()).map_err(io_err)?;
            archive
                .retain_in((id.as_str(), 0u64)..=(id.as_str(), u64::MAX), |_, _| false)
                .map_err(io_err)?;
            continue;
        };
        if rec.history.len() > HISTORY_LIMIT {
            let rec = Arc::make_mut(rec);
            let excess = rec.history.len() - HISTORY_LIMIT;
            let next = archive
                .range((id.as_str(), 0u64)..=(id.as_str(), u64::MAX))
                .map_err(io_err)?
                .next_back()
                .transpose()
                .map_err(io_err)?
                .map_or(0, |(k, _)| k.value().1 + 1);
            for (n, h) in rec.history.drain(..excess).enumerate() {
                let bytes = to_json(&h)?;
                archive
                    .insert((id.as_str(), next + n as u64), bytes.as_slice())
                    .map_err(io_err)?;
            }
            stats.archived += excess;
            let end = next + excess as u64;
            if end > ARCHIVE_LIMIT {
                archive
                    .retain_in(
                        (id.as_str(), 0u64)..(id.as_str(), end - ARCHIVE_LIMIT),
                        |_, _| false,
                    )
                    .map_err(io_err)?;
            }
        }
        let bytes = to_json(&**rec)?;
        pairs
            .insert(id.as_str(), bytes.as_slice())
            .map_err(io_err)?;
    }
    let mut sm = tx.open_table(SM).map_err(io_err)?;
    if dirty.audit || dirty.all {
        sm.insert(KEY_AUDIT, to_json(&data.state.audit)?.as_slice())
            .map_err(io_err)?;
    }
    if dirty.membership || dirty.all {
        sm.insert(KEY_MEMBERSHIP, to_json(&data.membership)?.as_slice())
            .map_err(io_err)?;
    }
    sm.insert(KEY_APPLIED, to_json(&data.last_applied)?.as_slice())
        .map_err(io_err)?;
    Ok(stats)
}

/// Load the state machine's rows (converting a database of the whole-state
/// format, one JSON value, to rows on the way).
fn load(db: &Database) -> io::Result<SmData> {
    let old: Option<SmData> = {
        let tx = db.begin_read().map_err(io_err)?;
        let t = tx.open_table(SM).map_err(io_err)?;
        match t.get(KEY_SM_DATA).map_err(io_err)? {
            Some(v) => Some(from_json(v.value())?),
            None => None,
        }
    };
    if let Some(mut data) = old {
        let tx = db.begin_write().map_err(io_err)?;
        let dirty = Dirty {
            all: true,
            ..Default::default()
        };
        write_rows(&tx, &mut data, &dirty)?;
        tx.open_table(SM)
            .map_err(io_err)?
            .remove(KEY_SM_DATA)
            .map_err(io_err)?;
        tx.commit().map_err(io_err)?;
        return Ok(data);
    }
    let tx = db.begin_read().map_err(io_err)?;
    let sm = tx.open_table(SM).map_err(io_err)?;
    let get = |k: &str| -> io::Result<Option<Vec<u8>>> {
        Ok(sm.get(k).map_err(io_err)?.map(|v| v.value().to_vec()))
    };
    let mut data = SmData::default();
    if let Some(b) = get(KEY_APPLIED)? {
        data.last_applied = from_json(&b)?;
    }
    if let Some(b) = get(KEY_MEMBERSHIP)? {
        data.membership = from_json(&b)?;
    }
    if let Some(b) = get(KEY_AUDIT)? {
        data.state.audit = from_json(&b)?;
    }
    let pairs = tx.open_table(PAIRS).map_err(io_err)?;
    for item in pairs.iter().map_err(io_err)? {
        let (k, v) = item.map_err(io_err)?;
        let rec: PairRecord = from_json(v.value())?;
        data.state
            .pairs
            .insert(k.value().to_string(), Arc::new(rec));
    }
    Ok(data)
}

/// The state machine, durable in redb: one row per pair (`sm_pairs`), the
/// archived history (`history_archive`), and small rows for the applied log
/// id, the membership and the audit log (`state_machine`). An applied batch
/// writes only the rows it changed, in one transaction with the applied log id.
pub struct StateMachineStore {
    db: Arc<Database>,
    shared: SharedState,
    last_write: WriteStats,
}

impl StateMachineStore {
    /// Load the state machine from the database (empty on a new node).
    pub fn open(db: Arc<Database>) -> io::Result<Self> {
        let data = load(&db)?;
        let idx = data.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
        let (applied_tx, _) = watch::channel(idx);
        Ok(Self {
            shared: SharedState {
                data: Arc::new(RwLock::new(Arc::new(data))),
                applied_tx: Arc::new(applied_tx),
                db: db.clone(),
            },
            db,
            last_write: WriteStats::default(),
        })
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    /// What the last applied batch wrote.
    pub fn last_write(&self) -> WriteStats {
        self.last_write
    }

    fn publish(&self, data: SmData) {
        let idx = data.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
        *self.shared.data.write().expect("state lock poisoned") = Arc::new(data);
        self.shared.applied_tx.send_replace(idx);
    }

    /// Apply requests to a copy of the state and write what they changed: the
    /// body of [`RaftStateMachine::apply`], for unit tests without openraft.
    #[cfg(test)]
    fn apply_batch<'a>(
        &mut self,
        entries: impl IntoIterator<Item = (LogId, Option<&'a Request>)>,
    ) -> io::Result<Vec<Response>> {
        let mut data: SmData = (*self.shared.snapshot()).clone();
        let mut dirty = Dirty::default();
        let mut out = Vec::new();
        for (log_id, req) in entries {
            data.last_applied = Some(log_id);
            out.push(match req {
                Some(req) => self.apply_one(&mut data, &mut dirty, req),
                None => Response::None,
            });
        }
        self.commit(data, &dirty)?;
        Ok(out)
    }

    fn apply_one(&self, data: &mut SmData, dirty: &mut Dirty, req: &Request) -> Response {
        let audit = data.state.audit.len();
        let resp = data.state.apply(req);
        match (pair_of(req), req) {
            (Some(id), _) => {
                dirty.pairs.insert(id.to_string());
            }
            // The pairs it names, no others (a removed one's rows go).
            (None, Request::PatchInventory { upsert, remove, .. }) => dirty.pairs.extend(
                upsert
                    .iter()
                    .map(|p| p.id.clone())
                    .chain(remove.iter().cloned()),
            ),
            (None, _) => dirty.all = true,
        }
        dirty.audit |= matches!(req, Request::Operator { .. }) || data.state.audit.len() != audit;
        resp
    }

    fn commit(&mut self, mut data: SmData, dirty: &Dirty) -> io::Result<()> {
        let tx = self.db.begin_write().map_err(io_err)?;
        self.last_write = write_rows(&tx, &mut data, dirty)?;
        tx.commit().map_err(io_err)?;
        self.publish(data);
        Ok(())
    }
}

/// Store `data` as the current snapshot (two rows; the old single row goes).
fn write_snapshot(
    tx: &redb::WriteTransaction,
    meta: &SnapshotMetaOf<TypeConfig>,
    data: &[u8],
) -> io::Result<()> {
    let mut t = tx.open_table(SM).map_err(io_err)?;
    t.insert(KEY_SNAPSHOT_META, to_json(meta)?.as_slice())
        .map_err(io_err)?;
    t.insert(KEY_SNAPSHOT_DATA, data).map_err(io_err)?;
    t.remove(KEY_SNAPSHOT).map_err(io_err)?;
    Ok(())
}

/// Builds snapshots from the state as applied at the time of the call, with
/// the archive as it was then (a read transaction opened at the same point).
pub struct SnapshotBuilder {
    db: Arc<Database>,
    data: Arc<SmData>,
    archive: io::Result<redb::ReadTransaction>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let rtx = std::mem::replace(&mut self.archive, Err(io_err("snapshot already built")))?;
        let mut archive: BTreeMap<String, Vec<HistoryEntry>> = BTreeMap::new();
        {
            let t = rtx.open_table(ARCHIVE).map_err(io_err)?;
            for item in t.iter().map_err(io_err)? {
                let (k, v) = item.map_err(io_err)?;
                archive
                    .entry(k.value().0.to_string())
                    .or_default()
                    .push(from_json(v.value())?);
            }
        }
        drop(rtx);
        let body = SnapshotBody {
            last_applied: self.data.last_applied.clone(),
            membership: self.data.membership.clone(),
            state: self.data.state.clone(),
            archive,
        };
        let data = to_json(&body)?;
        drop(body);
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: self.data.last_applied.clone(),
            last_membership: self.data.membership.clone(),
        };
        let tx = self.db.begin_write().map_err(io_err)?;
        write_snapshot(&tx, &meta, &data)?;
        tx.commit().map_err(io_err)?;
        Ok(SnapshotOf::<TypeConfig, Vec<u8>> {
            meta,
            snapshot: data,
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = Vec<u8>;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId>, StoredMembershipOf<TypeConfig>), io::Error> {
        let d = self.shared.snapshot();
        Ok((d.last_applied.clone(), d.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        // A copy that shares everything with what readers hold (`Pairs`,
        // the audit log): a request copies only what it changes.
        let mut data: SmData = (*self.shared.snapshot()).clone();
        let mut dirty = Dirty::default();
        let mut replies = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            data.last_applied = Some(entry.log_id());
            let resp = match &entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(req) => self.apply_one(&mut data, &mut dirty, req),
                EntryPayload::Membership(m) => {
                    data.membership =
                        StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id()), m.clone());
                    dirty.membership = true;
                    Response::None
                }
            };
            if let Some(r) = responder {
                replies.push((r, resp));
            }
        }
        self.commit(data, &dirty)?;
        for (r, resp) in replies {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            data: self.shared.snapshot(),
            archive: self.db.begin_read().map_err(io_err),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let body: SnapshotBody = from_json(&snapshot)?;
        let mut data = SmData {
            last_applied: meta.last_log_id.clone(),
            membership: meta.last_membership.clone(),
            state: body.state,
        };
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            // Replace everything: rows of pairs the snapshot does not hold go,
            // and the archive is the snapshot's.
            tx.delete_table(PAIRS).map_err(io_err)?;
            tx.delete_table(ARCHIVE).map_err(io_err)?;
            let mut archive = tx.open_table(ARCHIVE).map_err(io_err)?;
            for (id, lines) in &body.archive {
                for (n, h) in lines.iter().enumerate() {
                    archive
                        .insert((id.as_str(), n as u64), to_json(h)?.as_slice())
                        .map_err(io_err)?;
                }
            }
        }
        let dirty = Dirty {
            all: true,
            ..Default::default()
        };
        self.last_write = write_rows(&tx, &mut data, &dirty)?;
        write_snapshot(&tx, meta, &snapshot)?;
        tx.commit().map_err(io_err)?;
        self.publish(data);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(SM).map_err(io_err)?;
        if let Some(m) = t.get(KEY_SNAPSHOT_META).map_err(io_err)? {
            let meta: SnapshotMetaOf<TypeConfig> = from_json(m.value())?;
            let data = t
                .get(KEY_SNAPSHOT_DATA)
                .map_err(io_err)?
                .ok_or_else(|| io_err("snapshot metadata without its data: the Raft database is damaged; remove this node's data directory and let it catch up from the leader"))?;
            return Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> {
                meta,
                snapshot: data.value().to_vec(),
            }));
        }
        match t.get(KEY_SNAPSHOT).map_err(io_err)? {
            Some(v) => {
                let s: StoredSnapshot = from_json(v.value())?;
                Ok(Some(SnapshotOf::<TypeConfig, Vec<u8>> {
                    meta: s.meta,
                    snapshot: s.data,
                }))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::StorageError;

    struct RedbBuilder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for RedbBuilder {
        async fn build(
            &self,
        ) -> Result<(tempfile::TempDir, LogStore, StateMachineStore), StorageError<TypeConfig>>
        {
            let dir = tempfile::tempdir().expect("tempdir");
            let db = open_database(&dir.path().join("raft.redb")).expect("open db");
            let sm = StateMachineStore::open(db.clone()).expect("open sm");
            Ok((dir, LogStore::new(db), sm))
        }
    }

    /// The Watch stream (`command::watch_events`, also `/api/v1/events`)
    /// over the applied state: each history line committed after it started,
    /// once and in order, from the records that changed (found by the
    /// difference of two copies of the persistent map), a pair added since
    /// included; filtered to one pair when asked.
    #[tokio::test]
    async fn the_watch_stream_sends_each_new_line_once_from_the_records_that_changed() {
        use crate::leadership::LeaderView;
        let dir = tempfile::tempdir().unwrap();
        let mut n = Node::open(&dir.path().join("watch.redb"));
        n.apply(&[sync(&["p1", "p2"])]);
        let (_ltx, lrx) = tokio::sync::watch::channel(LeaderView {
            is_leader: true,
            ..Default::default()
        });
        let mut all = crate::command::watch_events(n.sm.shared(), lrx.clone(), String::new());
        let mut one = crate::command::watch_events(n.sm.shared(), lrx, "p2".into());
        // Let both take their first look (lines already there are not sent).
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        for (pair, at) in [("p1", 10), ("p2", 11), ("p2", 12)] {
            let r = flip(&n.sm, pair, at);
            n.apply(&[r]);
        }
        n.apply(&[sync(&["p1", "p2", "p3"])]);
        let flip_2 = flip(&n.sm, "p2", 13);
        n.apply(&[flip_2]);
        async fn drain(
            rx: &mut tokio::sync::mpsc::Receiver<
                Result<understudy_proto::WatchEvent, tonic::Status>,
            >,
        ) -> Vec<(String, String)> {
            let mut out = Vec::new();
            while let Ok(Some(ev)) =
                tokio::time::timeout(std::time::Duration::from_millis(400), rx.recv()).await
            {
                let ev = ev.expect("a line");
                out.push((ev.pair_id, ev.event));
            }
            out
        }
        let got = drain(&mut all).await;
        let flips: Vec<(&str, &str)> = got
            .iter()
            .filter_map(|(p, e)| e.find("flip ").map(|i| (p.as_str(), &e[i..])))
            .collect();
        assert_eq!(
            flips,
            [
                ("p1", "flip 10"),
                ("p2", "flip 11"),
                ("p2", "flip 12"),
                ("p2", "flip 13")
            ],
            "{got:#?}"
        );
        assert!(
            got.iter().any(|(p, _)| p == "p3"),
            "the added pair's lines: {got:#?}"
        );
        let mut unique = got.clone();
        unique.dedup();
        assert_eq!(unique.len(), got.len(), "no line twice: {got:#?}");
        let only = drain(&mut one).await;
        assert_eq!(only.len(), 3, "{only:#?}");
        assert!(only.iter().all(|(p, _)| p == "p2"), "{only:#?}");
    }

    /// openraft's own storage conformance suite, run against the redb store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        Suite::test_all(RedbBuilder).await.expect("storage suite");
    }

    use crate::state::{PairSpec, PairState, ServerSpec};

    fn server(id: &str) -> ServerSpec {
        ServerSpec {
            id: id.into(),
            address: "127.0.0.1".into(),
            zone: "z".into(),
            ..Default::default()
        }
    }

    fn spec(id: &str) -> PairSpec {
        PairSpec {
            id: id.into(),
            resource: "r0".into(),
            client_ip: "198.18.0.9".into(),
            zone: "z".into(),
            primary: server(&format!("{id}-a")),
            backup: server(&format!("{id}-b")),
            ..Default::default()
        }
    }

    fn sync(ids: &[&str]) -> Request {
        Request::SyncInventory {
            pairs: ids.iter().map(|id| spec(id)).collect(),
            at_unix_ms: 0,
        }
    }

    /// A state flip of `pair` that always applies (it alternates).
    fn flip(sm: &StateMachineStore, pair: &str, at: i64) -> Request {
        let cur = sm.shared.snapshot().state.pairs[pair].state;
        let next = if cur == PairState::Healthy {
            PairState::Rebuilding
        } else {
            PairState::Healthy
        };
        Request::SetPairState {
            pair_id: pair.into(),
            expect: cur,
            state: next,
            reason: format!("flip {at}"),
            at_unix_ms: at,
        }
    }

    struct Node {
        sm: StateMachineStore,
        next: u64,
    }

    impl Node {
        fn open(path: &Path) -> Node {
            let sm = StateMachineStore::open(open_database(path).unwrap()).unwrap();
            let next = sm
                .shared
                .snapshot()
                .last_applied
                .as_ref()
                .map_or(1, |l| l.index() + 1);
            Node { sm, next }
        }

        fn apply(&mut self, reqs: &[Request]) -> Vec<Response> {
            let entries: Vec<_> = reqs
                .iter()
                .map(|r| {
                    self.next += 1;
                    (
                        openraft::testing::log_id::<TypeConfig>(1, 1, self.next - 1),
                        Some(r),
                    )
                })
                .collect();
            self.sm.apply_batch(entries).unwrap()
        }

        fn row(&self, pair: &str) -> Option<Vec<u8>> {
            let tx = self.sm.db.begin_read().unwrap();
            let t = tx.open_table(PAIRS).unwrap();
            t.get(pair).unwrap().map(|v| v.value().to_vec())
        }

        /// Every history line of a pair: the archive, then the live ones.
        fn full_history(&self, pair: &str) -> Vec<HistoryEntry> {
            let mut h = self.sm.shared.archived_history(pair).unwrap();
            h.extend(self.sm.shared.snapshot().state.pairs[pair].history.clone());
            h
        }
    }

    /// A batch writes the rows of the pairs it changed, no others; the applied
    /// log id is written with them.
    #[tokio::test]
    async fn a_batch_writes_only_the_rows_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Node::open(&dir.path().join("raft.redb"));
        n.apply(&[sync(&["p1", "p2", "p3"])]);
        assert_eq!(
            n.sm.last_write().pair_rows,
            3,
            "an inventory sync writes every row"
        );
        let (p1, p3) = (n.row("p1").unwrap(), n.row("p3").unwrap());
        let p2 = n.row("p2").unwrap();
        let req = flip(&n.sm, "p2", 5);
        let resp = n.apply(&[req]);
        assert!(matches!(resp[0], Response::StateChanged { .. }), "{resp:?}");
        assert_eq!(n.sm.last_write().pair_rows, 1);
        assert_eq!(n.row("p1").unwrap(), p1, "p1's row untouched");
        assert_eq!(n.row("p3").unwrap(), p3, "p3's row untouched");
        assert_ne!(n.row("p2").unwrap(), p2, "p2's row rewritten");
        let on_disk: PairRecord = from_json(&n.row("p2").unwrap()).unwrap();
        assert_eq!(on_disk, *n.sm.shared.snapshot().state.pairs["p2"]);
        // A refused request names its pair too: rewritten, unchanged.
        let stale = Request::SetPairState {
            pair_id: "p1".into(),
            expect: PairState::Blocked,
            state: PairState::Healthy,
            reason: "stale".into(),
            at_unix_ms: 6,
        };
        assert!(matches!(n.apply(&[stale])[0], Response::Refused { .. }));
        assert_eq!(n.row("p1").unwrap(), p1);
        // A pair removed from the inventory loses its row.
        n.apply(&[sync(&["p1", "p2"])]);
        assert!(n.row("p3").is_none());
    }

    /// An inventory patch writes the rows of the pairs it names, no others; a
    /// pair it removes loses its row.
    #[tokio::test]
    async fn an_inventory_patch_writes_only_the_pairs_it_names() {
        let dir = tempfile::tempdir().unwrap();
        let mut n = Node::open(&dir.path().join("raft.redb"));
        n.apply(&[sync(&["p1", "p2", "p3"])]);
        let (p1, p2) = (n.row("p1").unwrap(), n.row("p2").unwrap());
        let patch = Request::PatchInventory {
            upsert: vec![spec("p4")],
            remove: vec!["p3".into()],
            at_unix_ms: 7,
        };
        n.apply(&[patch]);
        assert_eq!(n.sm.last_write().pair_rows, 2, "p4 written, p3 removed");
        assert!(n.row("p4").is_some());
        assert!(n.row("p3").is_none());
        assert_eq!(n.row("p1").unwrap(), p1, "p1's row untouched");
        assert_eq!(n.row("p2").unwrap(), p2, "p2's row untouched");
        drop(n);
        let reopened = Node::open(&dir.path().join("raft.redb"));
        let ids: Vec<String> = reopened
            .sm
            .shared
            .snapshot()
            .state
            .pairs
            .keys()
            .cloned()
            .collect();
        assert_eq!(ids, vec!["p1", "p2", "p4"]);
    }

    /// A node reopened (after a SIGKILL) has exactly the state it applied:
    /// pairs, audit log, membership and applied log id.
    #[tokio::test]
    async fn a_reopened_node_has_exactly_what_it_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let before = {
            let mut n = Node::open(&path);
            n.apply(&[sync(&["p1", "p2"])]);
            for i in 0..10 {
                let r = flip(&n.sm, if i % 2 == 0 { "p1" } else { "p2" }, i);
                n.apply(&[r]);
            }
            n.apply(&[Request::Operator {
                pair_id: "p1".into(),
                identity: "alice (admin)".into(),
                command: crate::state::OperatorCommand::Pause,
                at_unix_ms: 20,
            }]);
            n.sm.shared.snapshot()
        };
        assert_eq!(before.state.audit.len(), 1);
        let n = Node::open(&path);
        let after = n.sm.shared.snapshot();
        assert_eq!(after.state, before.state);
        assert_eq!(after.last_applied, before.last_applied);
        assert_eq!(after.membership, before.membership);
    }

    /// History beyond the live bound moves to the archive, in order, in the
    /// same batch; every line stays readable; a reopened node reads it too.
    #[tokio::test]
    async fn history_is_compacted_into_the_archive_and_still_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut n = Node::open(&path);
        n.apply(&[sync(&["p1", "p2"])]);
        let total = HISTORY_LIMIT + 37;
        // Some batches of one request, one of several.
        for i in 0..(total - 1 - 10) {
            let r = flip(&n.sm, "p1", i as i64);
            n.apply(&[r]);
        }
        let mut batch = Vec::new();
        let mut cur = n.sm.shared.snapshot().state.pairs["p1"].state;
        for i in 0..10 {
            let next = if cur == PairState::Healthy {
                PairState::Rebuilding
            } else {
                PairState::Healthy
            };
            batch.push(Request::SetPairState {
                pair_id: "p1".into(),
                expect: cur,
                state: next,
                reason: format!("batched {i}"),
                at_unix_ms: 1000 + i,
            });
            cur = next;
        }
        n.apply(&batch);
        let live = n.sm.shared.snapshot().state.pairs["p1"].history.clone();
        assert_eq!(live.len(), HISTORY_LIMIT);
        let archived = n.sm.shared.archived_history("p1").unwrap();
        assert_eq!(archived.len(), total - HISTORY_LIMIT);
        let full = n.full_history("p1");
        assert_eq!(full.len(), total);
        assert_eq!(full[0].event, "pair added to the inventory");
        assert!(full[1].event.contains("flip 0"), "{:?}", full[1]);
        assert!(
            full[total - 1].event.contains("batched 9"),
            "{:?}",
            full[total - 1]
        );
        assert!(
            full.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms),
            "in order"
        );
        assert!(n.sm.shared.archived_history("p2").unwrap().is_empty());
        drop(n);
        let n = Node::open(&path);
        assert_eq!(n.full_history("p1"), full);
    }

    /// A snapshot carries the whole state and the archive; installing it on
    /// another node replaces every row there, including pairs it lacks.
    #[tokio::test]
    async fn a_snapshot_round_trips_with_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Node::open(&dir.path().join("a.redb"));
        a.apply(&[sync(&["p1", "p2"])]);
        for i in 0..(HISTORY_LIMIT + 5) {
            let r = flip(&a.sm, "p1", i as i64);
            a.apply(&[r]);
        }
        let snap =
            a.sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        let mut b = Node::open(&dir.path().join("b.redb"));
        b.apply(&[sync(&["p9"])]);
        for i in 0..(HISTORY_LIMIT + 2) {
            let r = flip(&b.sm, "p9", i as i64);
            b.apply(&[r]);
        }
        b.sm.install_snapshot(&snap.meta, snap.snapshot.clone())
            .await
            .unwrap();
        let (sa, sb) = (a.sm.shared.snapshot(), b.sm.shared.snapshot());
        assert_eq!(sb.state, sa.state);
        assert_eq!(sb.last_applied, sa.last_applied);
        assert_eq!(b.full_history("p1"), a.full_history("p1"));
        assert!(b.row("p9").is_none());
        assert!(b.sm.shared.archived_history("p9").unwrap().is_empty());
        // And the current snapshot is the one installed.
        let cur = b.sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.snapshot, snap.snapshot);
        // It survives a reopen.
        let path = dir.path().join("b.redb");
        drop(b);
        let b = Node::open(&path);
        assert_eq!(b.sm.shared.snapshot().state, sa.state);
        assert_eq!(b.full_history("p1"), a.full_history("p1"));
    }

    /// A database of the whole-state format (one JSON value) is converted to
    /// rows when opened; a snapshot of that format installs.
    #[tokio::test]
    async fn the_whole_state_format_is_converted_to_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let mut old = SmData::default();
        old.state.apply(&sync(&["p1", "p2"]));
        old.last_applied = Some(openraft::testing::log_id::<TypeConfig>(1, 1, 7));
        {
            let db = open_database(&path).unwrap();
            let tx = db.begin_write().unwrap();
            tx.open_table(SM)
                .unwrap()
                .insert(KEY_SM_DATA, to_json(&old).unwrap().as_slice())
                .unwrap();
            tx.commit().unwrap();
        }
        let n = Node::open(&path);
        assert_eq!(n.sm.shared.snapshot().state, old.state);
        assert_eq!(n.sm.shared.snapshot().last_applied, old.last_applied);
        assert!(n.row("p1").is_some() && n.row("p2").is_some());
        let tx = n.sm.db.begin_read().unwrap();
        assert!(tx
            .open_table(SM)
            .unwrap()
            .get(KEY_SM_DATA)
            .unwrap()
            .is_none());
        drop(tx);
        // An old-format snapshot (bare SmData) installs with an empty archive.
        let dir2 = tempfile::tempdir().unwrap();
        let mut m = Node::open(&dir2.path().join("m.redb"));
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: old.last_applied.clone(),
            last_membership: old.membership.clone(),
        };
        m.sm.install_snapshot(&meta, to_json(&old).unwrap())
            .await
            .unwrap();
        assert_eq!(m.sm.shared.snapshot().state, old.state);
        m.next = 8;
        let r = flip(&m.sm, "p1", 1);
        assert!(matches!(m.apply(&[r])[0], Response::StateChanged { .. }));
    }

    /// A current snapshot stored in the single-row form (metadata and data in
    /// one JSON value) is still read; the next snapshot replaces it with the
    /// two rows, and the data row holds the snapshot's bytes as they are.
    #[tokio::test]
    async fn a_snapshot_of_the_single_row_form_is_read_then_replaced() {
        #[derive(Serialize)]
        struct SingleRow {
            meta: SnapshotMetaOf<TypeConfig>,
            data: Vec<u8>,
        }
        let dir = tempfile::tempdir().unwrap();
        let mut n = Node::open(&dir.path().join("raft.redb"));
        n.apply(&[sync(&["p1"])]);
        let d = n.sm.shared.snapshot();
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: d.last_applied.clone(),
            last_membership: d.membership.clone(),
        };
        let old = SingleRow {
            meta: meta.clone(),
            data: b"{\"old\":true}".to_vec(),
        };
        let tx = n.sm.db.begin_write().unwrap();
        tx.open_table(SM)
            .unwrap()
            .insert(KEY_SNAPSHOT, to_json(&old).unwrap().as_slice())
            .unwrap();
        tx.commit().unwrap();
        let cur = n.sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.snapshot, old.data);
        assert_eq!(cur.meta, meta);

        let snap =
            n.sm.get_snapshot_builder()
                .await
                .build_snapshot()
                .await
                .unwrap();
        let tx = n.sm.db.begin_read().unwrap();
        let t = tx.open_table(SM).unwrap();
        assert!(t.get(KEY_SNAPSHOT).unwrap().is_none());
        assert_eq!(
            t.get(KEY_SNAPSHOT_DATA).unwrap().unwrap().value(),
            &snap.snapshot[..]
        );
        drop((t, tx));
        let cur = n.sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.snapshot, snap.snapshot);
        assert_eq!(cur.meta, snap.meta);
    }

    /// The state machine reloads its applied state from disk.
    #[tokio::test]
    async fn state_machine_survives_reopen() {
        use crate::state::{PairSpec, ServerSpec};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft.redb");
        let server = |id: &str| ServerSpec {
            id: id.into(),
            address: "127.0.0.1".into(),
            zone: "z".into(),
            volumes: vec![],
            ..Default::default()
        };
        {
            let db = open_database(&path).unwrap();
            let mut sm = StateMachineStore::open(db).unwrap();
            let req = Request::SyncInventory {
                pairs: vec![PairSpec {
                    id: "p".into(),
                    resource: "r0".into(),
                    client_ip: "198.18.0.9".into(),
                    zone: "z".into(),
                    primary: server("a"),
                    backup: server("b"),
                    ..Default::default()
                }],
                at_unix_ms: 0,
            };
            let log_id = openraft::testing::log_id::<TypeConfig>(1, 1, 1);
            sm.apply_batch([(log_id, Some(&req))]).unwrap();
        }
        let db = open_database(&path).unwrap();
        let sm = StateMachineStore::open(db).unwrap();
        assert!(sm.shared.snapshot().state.pairs.contains_key("p"));
    }
}
