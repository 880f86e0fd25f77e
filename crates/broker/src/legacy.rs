//! Import of the topic metadata that single-node versions before the controller quorum kept
//! in `<first log dir>/.strom-topics/<topic>.properties`. Without it, a node upgraded in place
//! would find partition directories no topic owns and delete them.
//!
//! Each file becomes the records of its topic (same id and configs, every partition on this
//! node), committed through the local controller; the directory is then renamed
//! `.strom-topics.imported`. A topic already in the metadata is skipped, so an import cut
//! short by a crash resumes where it stopped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use strom_controller::service::Controller;
use strom_metadata::MetadataRecord;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::BrokerConfig;
use crate::topics::TOPIC_RESOURCE;
use crate::BrokerError;

const LEGACY_DIR: &str = ".strom-topics";
const IMPORTED_DIR: &str = ".strom-topics.imported";
/// How long the import waits for the local controller to lead.
const LEADER_WAIT_MS: u64 = 30_000;

/// A topic as the legacy file describes it.
#[derive(Debug, PartialEq, Eq)]
struct LegacyTopic {
    name: String,
    id: Uuid,
    partitions: i32,
    configs: BTreeMap<String, String>,
}

fn parse(text: &str) -> Result<LegacyTopic, String> {
    let mut fields = BTreeMap::new();
    let mut configs = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("malformed line {line:?}"))?;
        match key.strip_prefix("config.") {
            Some(config) => configs.insert(config.to_string(), value.to_string()),
            None => fields.insert(key.to_string(), value.to_string()),
        };
    }
    let get = |k: &str| fields.get(k).ok_or_else(|| format!("missing {k}"));
    Ok(LegacyTopic {
        name: get("name")?.clone(),
        id: Uuid::parse_str(get("topic.id")?).map_err(|e| format!("bad topic.id: {e}"))?,
        partitions: get("partitions")?
            .parse()
            .map_err(|_| "bad partitions".to_string())?,
        configs,
    })
}

fn records(topic: &LegacyTopic, node_id: i32) -> Vec<MetadataRecord> {
    let mut records = vec![MetadataRecord::Topic {
        name: topic.name.clone(),
        topic_id: topic.id,
    }];
    for partition in 0..topic.partitions {
        records.push(MetadataRecord::Partition {
            topic_id: topic.id,
            partition,
            replicas: vec![node_id],
            isr: vec![node_id],
            leader: node_id,
            leader_epoch: 0,
            partition_epoch: 0,
        });
    }
    for (key, value) in &topic.configs {
        records.push(MetadataRecord::Config {
            resource_type: TOPIC_RESOURCE,
            resource_name: topic.name.clone(),
            key: key.clone(),
            value: Some(value.clone()),
        });
    }
    records
}

/// Imports `.strom-topics/` if the first log dir has one. Only a node that is the whole
/// quorum can hold such files (older versions ran nothing else).
pub async fn import(config: &BrokerConfig, controller: &Controller) -> Result<(), BrokerError> {
    let log_dir = Path::new(&config.log_dirs[0]);
    let legacy = log_dir.join(LEGACY_DIR);
    if !legacy.is_dir() {
        return Ok(());
    }
    if config.controller_quorum_voters.len() > 1 {
        warn!(dir = %legacy.display(), "topic metadata of an older single-node version found on a node of a quorum; not imported");
        return Ok(());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(LEADER_WAIT_MS);
    while controller.leader() != Some(controller.node_id()) {
        if tokio::time::Instant::now() >= deadline {
            return Err(BrokerError::Config(
                "the local controller did not become active to import .strom-topics".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut entries: Vec<_> = std::fs::read_dir(&legacy)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    let mut imported = 0;
    for entry in entries {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("properties") {
            continue;
        }
        let topic =
            parse(&std::fs::read_to_string(&path)?).map_err(|reason| BrokerError::LogDir {
                path: path.display().to_string(),
                reason,
            })?;
        let image = controller.state_machine().image().await;
        if image.topic_by_name(&topic.name).is_some() {
            continue;
        }
        controller
            .commit_records(&records(&topic, config.node_id))
            .await
            .map_err(|e| BrokerError::Config(format!("importing topic {}: {e:?}", topic.name)))?;
        imported += 1;
    }
    std::fs::rename(&legacy, log_dir.join(IMPORTED_DIR))?;
    info!(
        topics = imported,
        "imported the topic metadata of an older version"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_topic_files_parse_into_records_on_this_node() {
        let id = Uuid::new_v4();
        let text = format!(
            "name=orders\ntopic.id={id}\npartitions=2\nreplication.factor=1\nconfig.retention.ms=1000\n"
        );
        let topic = parse(&text).unwrap();
        assert_eq!(topic.name, "orders");
        assert_eq!(topic.partitions, 2);
        let records = records(&topic, 7);
        assert_eq!(records.len(), 4);
        assert!(
            matches!(&records[1], MetadataRecord::Partition { leader: 7, replicas, .. } if replicas == &vec![7])
        );
        assert!(parse("name=x\n").is_err());
    }
}
