//! Kafka's offset checkpoint files (`recovery-point-offset-checkpoint`,
//! `replication-offset-checkpoint`): a version line `0`, a count line, then
//! `topic partition offset` per line. Written to a temporary file, fsynced and renamed, so a
//! crash leaves either the old or the new file.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

/// Name of the per-log-directory file recording the offset below which each log is fsynced.
pub const RECOVERY_POINT_FILE: &str = "recovery-point-offset-checkpoint";

/// Name of the per-log-directory file recording each log's high watermark.
pub const REPLICATION_OFFSET_FILE: &str = "replication-offset-checkpoint";

/// Name of the per-log-directory file recording each log's start offset (moved by retention
/// and DeleteRecords, possibly inside the first segment).
pub const LOG_START_OFFSET_FILE: &str = "log-start-offset-checkpoint";

/// Name of the per-partition file of the leader epoch cache: a version line `0`, a count
/// line, then `leader_epoch start_offset` per line.
pub const LEADER_EPOCH_FILE: &str = "leader-epoch-checkpoint";

/// Writes `entries` ((topic, partition) → offset) atomically to `path`.
pub fn write(path: &Path, entries: &BTreeMap<(String, i32), i64>) -> std::io::Result<()> {
    let lines: Vec<String> = entries
        .iter()
        .map(|((topic, partition), offset)| format!("{topic} {partition} {offset}"))
        .collect();
    write_entries(path, &lines)
}

/// Replaces `path` with `text` so that a crash leaves the old or the new content: a
/// temporary file, fsynced, renamed over the target, then the directory fsynced.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Kafka's checkpoint framing, shared by every checkpoint file: a version line `0`, a count
/// line (at most `entries_max`), then that many entry lines, each split into
/// `fields` space-separated fields and handed to `parse` with a function making an error
/// that names the file. `None` for a missing file.
pub fn read_entries<T>(
    path: &Path,
    fields: usize,
    entries_max: usize,
    mut parse: impl FnMut(&[&str], &dyn Fn(&str) -> std::io::Error) -> std::io::Result<T>,
) -> std::io::Result<Option<Vec<T>>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let bad = |what: &str| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {what}", path.display()),
        )
    };
    let mut lines = text.lines();
    if lines.next() != Some("0") {
        return Err(bad("unknown checkpoint version"));
    }
    let count: usize = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .filter(|&count| count <= entries_max)
        .ok_or_else(|| bad("bad entry count"))?;
    let mut entries = Vec::with_capacity(count);
    for line in lines.take(count) {
        let split: Vec<&str> = line.split(' ').collect();
        if split.len() != fields {
            return Err(bad("bad entry line"));
        }
        entries.push(parse(&split, &bad)?);
    }
    if entries.len() != count {
        return Err(bad("fewer entries than declared"));
    }
    Ok(Some(entries))
}

/// Writes Kafka's checkpoint framing around `lines` atomically (see [`write_atomically`]).
pub fn write_entries(path: &Path, lines: &[String]) -> std::io::Result<()> {
    let mut text = format!("0\n{}\n", lines.len());
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    write_atomically(path, &text)
}

/// Reads an offset checkpoint file; a missing file is empty, a malformed one is an error.
pub fn read(path: &Path) -> std::io::Result<BTreeMap<(String, i32), i64>> {
    let entries = read_entries(path, 3, usize::MAX, |fields, bad| {
        let partition = fields[1].parse().map_err(|_| bad("bad partition"))?;
        let offset = fields[2].parse().map_err(|_| bad("bad offset"))?;
        Ok(((fields[0].to_string(), partition), offset))
    })?;
    let entries = entries.unwrap_or_default();
    let count = entries.len();
    let map: BTreeMap<(String, i32), i64> = entries.into_iter().collect();
    if map.len() != count {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: fewer entries than declared", path.display()),
        ));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoints_round_trip_and_missing_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(RECOVERY_POINT_FILE);
        assert!(read(&path).unwrap().is_empty());
        let mut entries = BTreeMap::new();
        entries.insert(("orders".to_string(), 3), 42);
        entries.insert(("a.b_c".to_string(), 0), 0);
        write(&path, &entries).unwrap();
        assert_eq!(read(&path).unwrap(), entries);
        std::fs::write(&path, "0\n2\norders 3 42\n").unwrap();
        assert!(read(&path).is_err());
    }
}
