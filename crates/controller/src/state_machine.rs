//! The state machine: committed commands applied to the [`MetadataImage`]. A snapshot is the
//! image written out as records, so installing one is applying them to an empty image.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use strom_metadata::MetadataImage;
use tokio::sync::RwLock;

use crate::{Applied, Command, NodeId, TypeConfig};

#[derive(Debug, Default)]
struct State {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    image: MetadataImage,
    snapshot: Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>,
    snapshots_built: u64,
}

/// One node's state machine; clones share it.
#[derive(Debug, Clone, Default)]
pub struct StateMachine {
    state: Arc<RwLock<State>>,
}

impl StateMachine {
    /// The image after every applied command.
    pub async fn image(&self) -> MetadataImage {
        self.state.read().await.image.clone()
    }

    pub async fn last_applied(&self) -> Option<LogId<NodeId>> {
        self.state.read().await.last_applied
    }
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
        state.snapshot = Some((meta.clone(), data.clone()));
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
                EntryPayload::Normal(command) => apply_command(&mut state.image, &command),
            };
            results.push(result);
        }
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
        let mut state = self.state.write().await;
        state.image = image;
        state.last_applied = meta.last_log_id;
        state.membership = meta.last_membership.clone();
        state.snapshot = Some((meta.clone(), data));
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

/// Applies a command atomically: all its records or none.
fn apply_command(image: &mut MetadataImage, command: &Command) -> Applied {
    let records = match command.decode() {
        Ok(records) => records,
        Err(e) => {
            return Applied {
                error: Some(e.to_string()),
            }
        }
    };
    match image.apply(&records) {
        Ok(next) => {
            *image = next;
            Applied::default()
        }
        Err(e) => Applied {
            error: Some(e.to_string()),
        },
    }
}
