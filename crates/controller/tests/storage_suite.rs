//! openraft's own test suite for log stores and state machines: every storage openraft
//! drives must pass it (log state, vote, append, truncate, purge, apply, snapshots).

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use strom_controller::{FileLogStore, LogStore, NodeId, StateMachine, TypeConfig};

struct InMemory;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for InMemory {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError<NodeId>> {
        Ok(((), LogStore::default(), StateMachine::default()))
    }
}

#[test]
fn the_in_memory_store_and_the_state_machine_pass_openrafts_suite() {
    Suite::test_all(InMemory).expect("openraft's storage suite passes");
}

struct OnDisk;

impl StoreBuilder<TypeConfig, FileLogStore, StateMachine, tempfile::TempDir> for OnDisk {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, FileLogStore, StateMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = FileLogStore::open(dir.path()).expect("open the file log store");
        Ok((dir, store, StateMachine::default()))
    }
}

#[test]
fn the_file_log_store_passes_openrafts_suite() {
    Suite::test_all(OnDisk).expect("openraft's storage suite passes");
}
