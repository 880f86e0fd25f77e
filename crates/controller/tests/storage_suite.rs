//! openraft's own test suite for log stores and state machines: every storage openraft
//! drives must pass it (log state, vote, append, truncate, purge, apply, snapshots).

use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageError;
use strom_controller::{LogStore, NodeId, StateMachine, TypeConfig};

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
