//! A durable Raft log: entries appended to one file (`u32` length + JSON entry), fsynced
//! before the append is acknowledged; the vote, the committed id and the purge point in small
//! files replaced atomically. Opening re-reads the log and cuts a torn tail.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io::{Read, Write};
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{
    Entry, ErrorSubject, ErrorVerb, LogId, LogState, RaftLogId, RaftLogReader, StorageError,
    StorageIOError, Vote,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Mutex;

use crate::store::Entries;
use crate::{NodeId, TypeConfig};

const LOG_FILE: &str = "raft.log";
const VOTE_FILE: &str = "vote.json";
const COMMITTED_FILE: &str = "committed.json";
const PURGED_FILE: &str = "purged.json";
/// Largest entry read back; a length above it is a torn or corrupt tail.
const ENTRY_BYTES_MAX: usize = 64 << 20;

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    log: File,
    log_entries: Entries,
    committed: Option<LogId<NodeId>>,
    vote: Option<Vote<NodeId>>,
}

/// The durable log store of one controller.
#[derive(Debug, Clone)]
pub struct FileLogStore {
    inner: Arc<Mutex<Inner>>,
}

fn io_error(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError<NodeId> {
    StorageIOError::new(ErrorSubject::Logs, verb, openraft::AnyError::new(&e)).into()
}

pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_json<T: DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> std::io::Result<()> {
    write_atomically(
        path,
        &serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )
}

fn frame(entry: &Entry<TypeConfig>, out: &mut Vec<u8>) -> std::io::Result<()> {
    let json = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(())
}

impl FileLogStore {
    /// Opens (creating) the store in `dir`, cutting a torn tail off the log.
    pub fn open(dir: &Path) -> std::io::Result<FileLogStore> {
        std::fs::create_dir_all(dir)?;
        let last_purged: Option<LogId<NodeId>> = read_json(&dir.join(PURGED_FILE))?;
        let path = dir.join(LOG_FILE);
        let mut bytes = Vec::new();
        if path.exists() {
            File::open(&path)?.read_to_end(&mut bytes)?;
        }
        let mut entries = BTreeMap::new();
        let mut valid = 0;
        while let Some(len) = bytes
            .get(valid..valid + 4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        {
            let Some(json) = bytes
                .get(valid + 4..valid + 4 + len)
                .filter(|_| len <= ENTRY_BYTES_MAX)
            else {
                break;
            };
            let Ok(entry) = serde_json::from_slice::<Entry<TypeConfig>>(json) else {
                break;
            };
            if last_purged.is_none_or(|p| entry.get_log_id().index > p.index) {
                entries.insert(entry.get_log_id().index, entry);
            }
            valid += 4 + len;
        }
        let log = File::options().create(true).append(true).open(&path)?;
        if (valid as u64) < log.metadata()?.len() {
            tracing::warn!(dir = %dir.display(), kept_bytes = valid, "cutting a torn tail off the raft log");
            log.set_len(valid as u64)?;
            log.sync_all()?;
        }
        let inner = Inner {
            dir: dir.to_path_buf(),
            log,
            log_entries: Entries {
                last_purged,
                entries,
            },
            committed: read_json(&dir.join(COMMITTED_FILE))?,
            vote: read_json(&dir.join(VOTE_FILE))?,
        };
        Ok(FileLogStore {
            inner: Arc::new(Mutex::new(inner)),
        })
    }
}

impl Inner {
    /// Rewrites the log file from the entries kept (after a truncate or a purge).
    fn rewrite(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::new();
        for entry in self.log_entries.entries.values() {
            frame(entry, &mut bytes)?;
        }
        let path = self.dir.join(LOG_FILE);
        write_atomically(&path, &bytes)?;
        self.log = File::options().append(true).open(&path)?;
        Ok(())
    }
}

impl RaftLogReader<TypeConfig> for FileLogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        Ok(self.inner.lock().await.log_entries.range(range))
    }
}

impl RaftLogStorage<TypeConfig> for FileLogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        Ok(self.inner.lock().await.log_entries.state())
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock().await;
        write_json(&inner.dir.join(VOTE_FILE), vote).map_err(|e| StorageIOError::write_vote(&e))?;
        inner.vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.inner.lock().await.vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock().await;
        // Not fsynced: the committed id only spares replaying from the leader after a
        // restart; a lost update is caught up like any lag (openraft's contract allows it).
        // The rename still keeps the file whole.
        let path = inner.dir.join(COMMITTED_FILE);
        let tmp = path.with_extension("tmp");
        serde_json::to_vec(&committed)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, &path))
            .map_err(|e| io_error(ErrorVerb::Write, e))?;
        inner.committed = committed;
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
        let mut inner = self.inner.lock().await;
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let mut bytes = Vec::new();
        for entry in &entries {
            frame(entry, &mut bytes).map_err(|e| io_error(ErrorVerb::Write, e))?;
        }
        // Durable before acknowledged: the callback runs after the fsync.
        let written = inner
            .log
            .write_all(&bytes)
            .and_then(|()| inner.log.sync_data());
        if let Err(e) = written {
            callback.log_io_completed(Err(std::io::Error::new(e.kind(), e.to_string())));
            return Err(io_error(ErrorVerb::Write, e));
        }
        inner.log_entries.insert(entries);
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock().await;
        inner.log_entries.truncate(log_id);
        inner.rewrite().map_err(|e| io_error(ErrorVerb::Delete, e))
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let mut inner = self.inner.lock().await;
        write_json(&inner.dir.join(PURGED_FILE), &log_id)
            .map_err(|e| io_error(ErrorVerb::Delete, e))?;
        inner.log_entries.purge(log_id);
        inner.rewrite().map_err(|e| io_error(ErrorVerb::Delete, e))
    }
}
