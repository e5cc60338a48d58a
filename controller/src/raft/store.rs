//! Durable Raft storage on redb (an embedded, pure-Rust, ACID key-value store).
//!
//! One redb file per controller node holds three tables:
//! - `raft_log`: log index -> JSON of the openraft entry;
//! - `raft_meta`: the vote, the committed log id and the last purged log id;
//! - `state_machine`: the applied log id, the last membership, the application
//!   state ([`ClusterState`]) and the current snapshot.
//!
//! Every write is one redb transaction committed with fsync before the call returns
//! (before openraft's `IOFlushed` callback fires for appends), so a node that is
//! SIGKILLed restarts with exactly what it acknowledged. The application state is
//! small (an inventory of pairs), so it is stored whole after every applied batch;
//! a snapshot is that same JSON.
//!
//! The state machine also publishes its data through [`SharedState`], which the
//! gRPC services read after a linearizable read barrier.

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
use crate::state::{ClusterState, Response};

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const SM: TableDefinition<&str, &[u8]> = TableDefinition::new("state_machine");

const KEY_VOTE: &str = "vote";
const KEY_COMMITTED: &str = "committed";
const KEY_PURGED: &str = "last_purged";
const KEY_SM_DATA: &str = "data";
const KEY_SNAPSHOT: &str = "snapshot";

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
pub fn open_database(path: &Path) -> io::Result<Arc<Database>> {
    let db = Database::create(path).map_err(|e| {
        io::Error::other(format!(
            "cannot open the controller database {}: {e}; check the data_dir permissions and that no other controller process uses it",
            path.display()
        ))
    })?;
    let tx = db.begin_write().map_err(io_err)?;
    tx.open_table(LOG).map_err(io_err)?;
    tx.open_table(META).map_err(io_err)?;
    tx.open_table(SM).map_err(io_err)?;
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

/// Everything the state machine holds; also the snapshot format.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SmData {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembershipOf<TypeConfig>,
    pub state: ClusterState,
}

/// A snapshot as stored on disk: metadata plus the serialized [`SmData`].
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMetaOf<TypeConfig>,
    data: Vec<u8>,
}

/// Read access to the applied state, shared with the gRPC services.
#[derive(Clone)]
pub struct SharedState {
    data: Arc<RwLock<SmData>>,
    applied_tx: Arc<watch::Sender<u64>>,
}

impl SharedState {
    /// A copy of the applied application state.
    pub fn snapshot(&self) -> SmData {
        self.data.read().expect("state lock poisoned").clone()
    }

    /// Notified with the last applied index after every applied batch.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }
}

/// The state machine, durable in redb.
pub struct StateMachineStore {
    db: Arc<Database>,
    shared: SharedState,
}

impl StateMachineStore {
    /// Load the state machine from the database (empty on a new node).
    pub fn open(db: Arc<Database>) -> io::Result<Self> {
        let data: SmData = {
            let tx = db.begin_read().map_err(io_err)?;
            let t = tx.open_table(SM).map_err(io_err)?;
            match t.get(KEY_SM_DATA).map_err(io_err)? {
                Some(v) => from_json(v.value())?,
                None => SmData::default(),
            }
        };
        let idx = data.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
        let (applied_tx, _) = watch::channel(idx);
        Ok(Self {
            db,
            shared: SharedState {
                data: Arc::new(RwLock::new(data)),
                applied_tx: Arc::new(applied_tx),
            },
        })
    }

    pub fn shared(&self) -> SharedState {
        self.shared.clone()
    }

    fn persist(&self, data: &SmData, snapshot: Option<&StoredSnapshot>) -> io::Result<()> {
        let bytes = to_json(data)?;
        let snap = snapshot.map(to_json).transpose()?;
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = tx.open_table(SM).map_err(io_err)?;
            t.insert(KEY_SM_DATA, bytes.as_slice()).map_err(io_err)?;
            if let Some(s) = &snap {
                t.insert(KEY_SNAPSHOT, s.as_slice()).map_err(io_err)?;
            }
        }
        tx.commit().map_err(io_err)
    }

    fn publish(&self, data: SmData) {
        let idx = data.last_applied.as_ref().map(|l| l.index()).unwrap_or(0);
        *self.shared.data.write().expect("state lock poisoned") = data;
        self.shared.applied_tx.send_replace(idx);
    }
}

/// Builds snapshots from the state as applied at the time of the call.
pub struct SnapshotBuilder {
    db: Arc<Database>,
    data: SmData,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = Vec<u8>;

    async fn build_snapshot(&mut self) -> Result<SnapshotOf<TypeConfig, Vec<u8>>, io::Error> {
        let data = to_json(&self.data)?;
        let meta = SnapshotMetaOf::<TypeConfig> {
            last_log_id: self.data.last_applied.clone(),
            last_membership: self.data.membership.clone(),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        let bytes = to_json(&stored)?;
        let tx = self.db.begin_write().map_err(io_err)?;
        {
            let mut t = tx.open_table(SM).map_err(io_err)?;
            t.insert(KEY_SNAPSHOT, bytes.as_slice()).map_err(io_err)?;
        }
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
        let d = self.shared.data.read().expect("state lock poisoned");
        Ok((d.last_applied.clone(), d.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: futures::Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>>
            + Unpin
            + OptionalSend,
    {
        let mut data = self.shared.snapshot();
        let mut replies = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            data.last_applied = Some(entry.log_id());
            let resp = match &entry.payload {
                EntryPayload::Blank => Response::None,
                EntryPayload::Normal(req) => data.state.apply(req),
                EntryPayload::Membership(m) => {
                    data.membership =
                        StoredMembershipOf::<TypeConfig>::new(Some(entry.log_id()), m.clone());
                    Response::None
                }
            };
            if let Some(r) = responder {
                replies.push((r, resp));
            }
        }
        self.persist(&data, None)?;
        self.publish(data);
        for (r, resp) in replies {
            r.send(resp);
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            data: self.shared.snapshot(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Vec<u8>,
    ) -> Result<(), io::Error> {
        let mut data: SmData = from_json(&snapshot)?;
        data.last_applied = meta.last_log_id.clone();
        data.membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot,
        };
        self.persist(&data, Some(&stored))?;
        self.publish(data);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<SnapshotOf<TypeConfig, Vec<u8>>>, io::Error> {
        let tx = self.db.begin_read().map_err(io_err)?;
        let t = tx.open_table(SM).map_err(io_err)?;
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

    /// openraft's own storage conformance suite, run against the redb store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn openraft_storage_suite() {
        Suite::test_all(RedbBuilder).await.expect("storage suite");
    }

    /// The state machine reloads its applied state from disk.
    #[tokio::test]
    async fn state_machine_survives_reopen() {
        use crate::state::{PairSpec, Request, ServerSpec};
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
            let sm = StateMachineStore::open(db).unwrap();
            let mut data = sm.shared.snapshot();
            data.state.apply(&Request::SyncInventory {
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
            });
            sm.persist(&data, None).unwrap();
        }
        let db = open_database(&path).unwrap();
        let sm = StateMachineStore::open(db).unwrap();
        assert!(sm.shared.snapshot().state.pairs.contains_key("p"));
    }
}
