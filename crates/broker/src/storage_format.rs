//! `meta.properties` in every log directory, as Kafka writes it: the cluster id, this node's
//! id and the directory's id. A node refuses to start on a directory formatted for another
//! node or cluster.

use std::collections::BTreeMap;
use std::path::Path;

use crate::BrokerError;

pub const META_PROPERTIES: &str = "meta.properties";

/// A new cluster id: a random UUID, base64url without padding (22 characters), as Kafka's
/// `kafka-storage random-uuid` prints. Like Kafka's, it never starts with `-`, which command
/// lines would take for an option.
pub fn random_cluster_id() -> String {
    loop {
        let id = base64_url(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

pub(crate) fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len() * 4 / 3 + 2);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Whether `id` has the shape of a Kafka cluster id: a 16-byte UUID in unpadded base64url.
pub fn valid_cluster_id(id: &str) -> bool {
    id.len() == 22
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The cluster id of the formatted log dirs (checking node id and cluster id agree) and the
/// dirs not formatted yet.
fn read_formatted(
    log_dirs: &[String],
    node_id: i32,
) -> Result<(Option<String>, Vec<String>), BrokerError> {
    let mut cluster_id: Option<String> = None;
    let mut unformatted = Vec::new();
    for dir in log_dirs {
        let path = Path::new(dir).join(META_PROPERTIES);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                unformatted.push(dir.clone());
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let props = parse(&text);
        let bad = |reason: String| BrokerError::LogDir {
            path: path.display().to_string(),
            reason,
        };
        let found_node: i32 = props
            .get("node.id")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| bad("no node.id".into()))?;
        if found_node != node_id {
            return Err(bad(format!(
                "formatted for node.id {found_node}, but this node is {node_id}"
            )));
        }
        let found_cluster = props
            .get("cluster.id")
            .cloned()
            .ok_or_else(|| bad("no cluster.id".into()))?;
        match &cluster_id {
            Some(c) if *c != found_cluster => {
                return Err(bad(format!(
                    "cluster.id {found_cluster} differs from {c} in another log dir"
                )))
            }
            _ => cluster_id = Some(found_cluster),
        }
    }
    Ok((cluster_id, unformatted))
}

fn write_meta(dir: &str, cluster_id: &str, node_id: i32) -> Result<(), BrokerError> {
    std::fs::create_dir_all(dir)?;
    let text = format!(
        "#\n#Written by strom\ncluster.id={cluster_id}\ndirectory.id={}\nnode.id={node_id}\nversion=1\n",
        base64_url(uuid::Uuid::new_v4().as_bytes())
    );
    strom_storage::checkpoint::write_atomically(&Path::new(dir).join(META_PROPERTIES), &text)?;
    tracing::info!(dir = %dir, cluster_id = %cluster_id, "formatted log directory");
    Ok(())
}

/// The embedded default: formats what is not formatted yet (with the cluster id already in
/// use, or `new_cluster_id`) and returns the cluster id.
pub fn ensure_formatted(
    log_dirs: &[String],
    node_id: i32,
    new_cluster_id: &str,
) -> Result<String, BrokerError> {
    let (found, unformatted) = read_formatted(log_dirs, node_id)?;
    let cluster_id = found.unwrap_or_else(|| new_cluster_id.to_string());
    for dir in &unformatted {
        write_meta(dir, &cluster_id, node_id)?;
    }
    Ok(cluster_id)
}

/// A node started from a configuration file: every log dir must have been formatted.
pub fn check_formatted(log_dirs: &[String], node_id: i32) -> Result<String, BrokerError> {
    let (found, unformatted) = read_formatted(log_dirs, node_id)?;
    if let Some(dir) = unformatted.first() {
        return Err(BrokerError::LogDir {
            path: dir.clone(),
            reason: "not formatted: run `strom storage format --cluster-id $(strom storage random-uuid) --config <server.properties>` first".into(),
        });
    }
    found.ok_or_else(|| BrokerError::Config("no log directory configured".into()))
}

/// `strom storage format`: writes `meta.properties` into every log dir. A dir formatted
/// already is an error unless `ignore_formatted` (then it must be of the same cluster).
pub fn format(
    log_dirs: &[String],
    node_id: i32,
    cluster_id: &str,
    ignore_formatted: bool,
) -> Result<(), BrokerError> {
    if !valid_cluster_id(cluster_id) {
        return Err(BrokerError::Config(format!(
            "cluster id {cluster_id:?} is not a base64url UUID (use `strom storage random-uuid`)"
        )));
    }
    let (found, unformatted) = read_formatted(log_dirs, node_id)?;
    if let Some(existing) = found {
        if !ignore_formatted {
            return Err(BrokerError::Config(
                "log directories are already formatted (use --ignore-formatted to skip them)"
                    .into(),
            ));
        }
        if existing != cluster_id {
            return Err(BrokerError::Config(format!(
                "log directories belong to cluster {existing}, not {cluster_id}"
            )));
        }
    }
    for dir in &unformatted {
        write_meta(dir, cluster_id, node_id)?;
    }
    Ok(())
}

fn parse(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_cluster_ids_never_start_with_a_dash() {
        for _ in 0..2000 {
            let id = random_cluster_id();
            assert_eq!(id.len(), 22);
            assert!(!id.starts_with('-'), "{id}");
        }
    }

    #[test]
    fn cluster_ids_are_22_url_safe_characters() {
        let id = random_cluster_id();
        assert_eq!(id.len(), 22);
        assert!(id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_eq!(base64_url(&[0xfb, 0xff]), "-_8");
    }

    #[test]
    fn formatting_is_kept_and_foreign_nodes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let dirs = vec![dir.path().display().to_string()];
        let first = ensure_formatted(&dirs, 1, "cluster-a").unwrap();
        assert_eq!(first, "cluster-a");
        assert_eq!(
            ensure_formatted(&dirs, 1, "cluster-b").unwrap(),
            "cluster-a"
        );
        assert!(ensure_formatted(&dirs, 2, "cluster-a").is_err());
    }
}
