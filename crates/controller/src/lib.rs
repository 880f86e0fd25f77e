//! The controller quorum's replicated metadata log, on openraft.
//!
//! Main types: [`TypeConfig`] (openraft's type parameters: a [`Command`] carries encoded
//! [`MetadataRecord`]s), [`LogStore`] (the Raft log and vote), [`StateMachine`] (applies
//! committed records to a [`MetadataImage`]; snapshots are the image written as records) and
//! [`router::Router`], an in-process network for tests and simulations.
//!
//! Two log stores: [`FileLogStore`], durable (every append and vote is fsynced before it is
//! acknowledged, a torn tail is cut at start), and [`LogStore`], in memory, for simulations.
//! Both pass openraft's storage test suite.
//!
//! Over TCP ([`net`]): voters exchange Raft's RPCs on the controller listener, and brokers
//! send it [`service::ControllerRequest`]s through a [`client::ControllerClient`]; the
//! active [`service::Controller`] decides (registration, fencing, placement, configs, client
//! quotas, producer id blocks) and commits.
//! This crate never touches partition data.

// openraft's error types are large by design and are what its traits return.
#![allow(clippy::result_large_err)]

pub mod client;
pub mod configs;
mod file_store;
pub mod net;
pub mod producer_ids;
pub mod quotas;
pub mod router;
pub mod service;
mod state_machine;
mod store;

use std::io::Cursor;

use serde::{Deserialize, Serialize};
use strom_metadata::records::DecodeError;
pub use strom_metadata::{MetadataImage, MetadataRecord};

pub use file_store::FileLogStore;
pub use state_machine::{Changes, Published, StateMachine, DELTAS_MAX};
pub use store::LogStore;

/// A node of the quorum.
pub type NodeId = u64;

/// A replicated command: metadata records, encoded, applied together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub records: Vec<Vec<u8>>,
}

impl Command {
    pub fn new(records: &[MetadataRecord]) -> Command {
        Command {
            records: records.iter().map(MetadataRecord::encode).collect(),
        }
    }

    pub fn decode(&self) -> Result<Vec<MetadataRecord>, DecodeError> {
        self.records
            .iter()
            .map(|r| MetadataRecord::decode(r))
            .collect()
    }
}

/// The outcome of applying a command: `None` if it applied, the reason if the image refused it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub error: Option<String>,
}

openraft::declare_raft_types!(
    /// openraft's types for the metadata quorum.
    pub TypeConfig:
        D = Command,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
