//! The state machine: committed commands applied to the [`MetadataImage`]. A snapshot is the
//! image written out as records, so installing one is applying them to an empty image.
//!
//! Every applied change is published ([`StateMachine::subscribe`]) and the records of the last
//! [`DELTAS_MAX`] commands are kept, so that brokers can follow the log by deltas
//! ([`StateMachine::changes_since`]) and only fall back to the whole image when far behind.
//! With a directory, snapshots are written to disk, so that a restarted controller whose log
//! was purged starts from its last snapshot.

use std::collections::VecDeque;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use strom_metadata::{MetadataImage, MetadataRecord};
use tokio::sync::{watch, RwLock};

use crate::{Applied, Command, NodeId, TypeConfig};

/// Applied commands whose records are kept for brokers following by deltas.
pub const DELTAS_MAX: usize = 20_000;
const SNAPSHOT_FILE: &str = "snapshot.bin";

/// The image as of a log index.
#[derive(Debug, Clone, Default)]
pub struct Published {
    /// Index of the last applied log entry (0 before any).
    pub index: u64,
    pub image: Arc<MetadataImage>,
}

/// What a follower of the log needs to reach the current index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Changes {
    /// Nothing after the given index yet.
    None,
    /// The records of each command applied after the given index, in log order.
    Deltas(Vec<(u64, Vec<MetadataRecord>)>),
    /// The given index is older than the deltas kept: the whole image, as records.
    Image {
        index: u64,
        records: Vec<MetadataRecord>,
    },
}

#[derive(Debug, Default)]
struct State {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    image: Arc<MetadataImage>,
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
    deltas: VecDeque<(u64, Vec<MetadataRecord>)>,
    /// Deltas up to this index are no longer kept.
    deltas_dropped_through: u64,
}

/// One node's state machine; clones share it.
#[derive(Debug, Clone)]
pub struct StateMachine {
    state: Arc<RwLock<State>>,
    published: Arc<watch::Sender<Published>>,
    dir: Option<PathBuf>,
}

impl Default for StateMachine {
    fn default() -> StateMachine {
        StateMachine {
            state: Arc::default(),
            published: Arc::new(watch::channel(Published::default()).0),
            dir: None,
        }
    }
}

impl StateMachine {
    /// A state machine whose snapshots live in `dir`, starting from the snapshot found there.
    pub fn open(dir: PathBuf) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(&dir)?;
        let machine = StateMachine {
            dir: Some(dir.clone()),
            ..StateMachine::default()
        };
        let bytes = match std::fs::read(dir.join(SNAPSHOT_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(machine),
            Err(e) => return Err(e),
        };
        let (meta, data) = split_snapshot_file(&bytes).map_err(std::io::Error::other)?;
        let image = decode_image(&data).map_err(std::io::Error::other)?;
        let index = meta.last_log_id.map_or(0, |l| l.index);
        {
            let mut state = machine.state.try_write().map_err(std::io::Error::other)?;
            state.image = Arc::new(image);
            state.last_applied = meta.last_log_id;
            state.membership = meta.last_membership.clone();
            state.deltas_dropped_through = index;
            state.snapshot = Some((meta, data));
            machine.published.send_replace(Published {
                index,
                image: Arc::clone(&state.image),
            });
        }
        Ok(machine)
    }

    /// The image after every applied command.
    pub async fn image(&self) -> MetadataImage {
        (*self.state.read().await.image).clone()
    }

    pub async fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.state.read().await.last_applied
    }

    /// Follows every applied change.
    pub fn subscribe(&self) -> watch::Receiver<Published> {
        self.published.subscribe()
    }

    /// The changes applied after `index`.
    pub async fn changes_since(&self, index: u64) -> Changes {
        let state = self.state.read().await;
        let last = state.last_applied.map_or(0, |l| l.index);
        if index >= last {
            return Changes::None;
        }
        if index < state.deltas_dropped_through {
            return Changes::Image {
                index: last,
                records: state.image.to_records(),
            };
        }
        let deltas: Vec<_> = state
            .deltas
            .iter()
            .filter(|(i, _)| *i > index)
            .cloned()
            .collect();
        if deltas.is_empty() {
            Changes::None
        } else {
            Changes::Deltas(deltas)
        }
    }

    fn publish(&self, state: &State) {
        self.published.send_replace(Published {
            index: state.last_applied.map_or(0, |l| l.index),
            image: Arc::clone(&state.image),
        });
    }

    fn persist_snapshot(
        &self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        data: &[u8],
    ) -> Result<(), StorageError<NodeId>> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let write = || -> std::io::Result<()> {
            let meta_json = serde_json::to_vec(meta).map_err(std::io::Error::other)?;
            let mut bytes = Vec::with_capacity(4 + meta_json.len() + data.len());
            bytes.extend_from_slice(&(meta_json.len() as u32).to_be_bytes());
            bytes.extend_from_slice(&meta_json);
            bytes.extend_from_slice(data);
            crate::file_store::write_atomically(&dir.join(SNAPSHOT_FILE), &bytes)
        };
        write().map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), &e).into())
    }
}

type SnapshotParts = (SnapshotMeta<NodeId, BasicNode>, Vec<u8>);

fn split_snapshot_file(bytes: &[u8]) -> Result<SnapshotParts, String> {
    let len = bytes
        .get(..4)
        .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        .ok_or("truncated snapshot file")?;
    let meta = bytes.get(4..4 + len).ok_or("truncated snapshot meta")?;
    let meta = serde_json::from_slice(meta).map_err(|e| e.to_string())?;
    Ok((meta, bytes[4 + len..].to_vec()))
}

fn encode_image(image: &MetadataImage) -> Vec<u8> {
    let mut out = Vec::new();
    for record in image.to_records() {
        let bytes = record.encode();
        out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        out.extend_from_slice(&bytes);
    }
    out
}

fn decode_image(mut bytes: &[u8]) -> Result<MetadataImage, String> {
    let mut records = Vec::new();
    while !bytes.is_empty() {
        let len = bytes
            .get(..4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
            .ok_or("truncated length")?;
        let body = bytes.get(4..4 + len).ok_or("truncated record")?;
        records.push(strom_metadata::MetadataRecord::decode(body).map_err(|e| e.to_string())?);
        bytes = &bytes[4 + len..];
    }
    MetadataImage::default()
        .apply(&records)
        .map_err(|e| e.to_string())
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut state = self.state.write().await;
        let data = encode_image(&state.image);
        state.snapshots_built += 1;
        let snapshot_id = match state.last_applied {
            Some(last) => format!(
                "{}-{}-{}",
                last.leader_id, last.index, state.snapshots_built
            ),
            None => format!("--{}", state.snapshots_built),
        };
        let meta = SnapshotMeta {
            last_log_id: state.last_applied,
            last_membership: state.membership.clone(),
            snapshot_id,
        };
        drop(state);
        self.persist_snapshot(&meta, &data)?;
        self.state.write().await.snapshot = Some((meta.clone(), data.clone()));
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let state = self.state.read().await;
        Ok((state.last_applied, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut state = self.state.write().await;
        let mut results = Vec::new();
        for entry in entries {
            state.last_applied = Some(entry.log_id);
            let result = match entry.payload {
                EntryPayload::Blank => Applied::default(),
                EntryPayload::Membership(membership) => {
                    state.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Applied::default()
                }
                EntryPayload::Normal(command) => {
                    apply_command(&mut state, entry.log_id.index, &command)
                }
            };
            results.push(result);
        }
        self.publish(&state);
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let data = snapshot.into_inner();
        let image = decode_image(&data).map_err(|e| {
            StorageIOError::read_snapshot(
                Some(meta.signature()),
                &std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            )
        })?;
        self.persist_snapshot(meta, &data)?;
        let mut state = self.state.write().await;
        state.image = Arc::new(image);
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), data));
        state.deltas.clear();
        state.deltas_dropped_through = meta.last_log_id.map_or(0, |l| l.index);
        self.publish(&state);
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let state = self.state.read().await;
        Ok(state.snapshot.as_ref().map(|(meta, data)| Snapshot {
            meta: meta.clone(),
            snapshot: Box::new(Cursor::new(data.clone())),
        }))
    }
}

/// Applies a command atomically: all its records or none; keeps the records of an applied one
/// as a delta.
fn apply_command(state: &mut State, index: u64, command: &Command) -> Applied {
    let records = match command.decode() {
        Ok(records) => records,
        Err(e) => {
            return Applied {
                error: Some(e.to_string()),
            }
        }
    };
    match state.image.apply(&records) {
        Ok(next) => {
            state.image = Arc::new(next);
            if state.deltas.len() == DELTAS_MAX {
                if let Some((dropped, _)) = state.deltas.pop_front() {
                    state.deltas_dropped_through = dropped;
                }
            }
            state.deltas.push_back((index, records));
            Applied::default()
        }
        Err(e) => Applied {
            error: Some(e.to_string()),
        },
    }
}
