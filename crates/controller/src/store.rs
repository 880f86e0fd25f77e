//! The Raft log and vote, kept in memory (not durable yet: see the crate docs).

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{Entry, LogId, LogState, RaftLogId, RaftLogReader, StorageError, Vote};
use tokio::sync::Mutex;

use crate::{NodeId, TypeConfig};

/// The entries of a log and its purge point, with the operations both log stores share; the
/// file store adds persistence around it.
#[derive(Debug, Default)]
pub(crate) struct Entries {
    pub(crate) last_purged: Option<LogId<NodeId>>,
    pub(crate) entries: BTreeMap<u64, Entry<TypeConfig>>,
}

impl Entries {
    pub(crate) fn state(&self) -> LogState<TypeConfig> {
        let last = self
            .entries
            .values()
            .next_back()
            .map(|e| *e.get_log_id())
            .or(self.last_purged);
        LogState {
            last_purged_log_id: self.last_purged,
            last_log_id: last,
        }
    }

    pub(crate) fn range<RB: RangeBounds<u64>>(&self, range: RB) -> Vec<Entry<TypeConfig>> {
        self.entries.range(range).map(|(_, e)| e.clone()).collect()
    }

    pub(crate) fn insert(&mut self, entries: impl IntoIterator<Item = Entry<TypeConfig>>) {
        for entry in entries {
            self.entries.insert(entry.get_log_id().index, entry);
        }
    }

    /// Removes entries at and after `log_id`.
    pub(crate) fn truncate(&mut self, log_id: LogId<NodeId>) {
        self.entries.retain(|index, _| *index < log_id.index);
    }

    /// Removes entries up to and including `log_id` and records it as the purge point.
    pub(crate) fn purge(&mut self, log_id: LogId<NodeId>) {
        self.last_purged = Some(log_id);
        self.entries.retain(|index, _| *index > log_id.index);
    }
}

#[derive(Debug, Default)]
struct Inner {
    log: Entries,
    committed: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

/// The log store of one node.
#[derive(Debug, Clone, Default)]
pub struct LogStore {
    inner: Arc<Mutex<Inner>>,
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.inner.lock().await.log.range(range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        Ok(self.inner.lock().await.log.state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner.lock().await.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().await.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.inner.lock().await.committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().await.committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        self.inner.lock().await.log.insert(entries);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner.lock().await.log.truncate(log_id);
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.inner.lock().await.log.purge(log_id);
        Ok(())
    }
}
