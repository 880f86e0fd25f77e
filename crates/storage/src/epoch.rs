//! The leader epoch cache (Kafka's `LeaderEpochFileCache`): the first offset written in each
//! leader epoch, kept in the partition directory as `leader-epoch-checkpoint` (a version line
//! `0`, a count line, then `epoch start_offset` per line).
//!
//! Followers ask the leader where an epoch ends ([`LeaderEpochCache::end_offset_for`]) to find
//! the point where their log diverges from the leader's. Entries have strictly increasing
//! epochs and non-decreasing start offsets; the cache changes only when a new epoch's first
//! batch is appended or the log is truncated, so writing the file is rare.

use std::path::Path;

/// Most entries a checkpoint file may declare; a larger count is a corrupt file, not a
/// reason to allocate (one entry per leader election of a partition).
pub const LEADER_EPOCH_ENTRIES_MAX: usize = 1 << 20;

/// The epoch `end_offset_for` answers with when it knows nothing (Kafka's
/// `UNDEFINED_EPOCH`); the offset is then [`UNDEFINED_EPOCH_OFFSET`].
pub const UNDEFINED_EPOCH: i32 = -1;
pub const UNDEFINED_EPOCH_OFFSET: i64 = -1;

/// One entry: `leader_epoch` wrote its first batch at `start_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochEntry {
    pub leader_epoch: i32,
    pub start_offset: i64,
}

/// The epochs of one log, in increasing order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochCache {
    entries: Vec<EpochEntry>,
}

impl LeaderEpochCache {
    /// Reads the checkpoint file: `Ok(None)` if it does not exist, an error if it is malformed.
    pub fn read(path: &Path) -> std::io::Result<Option<LeaderEpochCache>> {
        let mut previous: Option<EpochEntry> = None;
        let entries =
            crate::checkpoint::read_entries(path, 2, LEADER_EPOCH_ENTRIES_MAX, |fields, bad| {
                let entry = EpochEntry {
                    leader_epoch: fields[0].parse().map_err(|_| bad("bad epoch"))?,
                    start_offset: fields[1].parse().map_err(|_| bad("bad start offset"))?,
                };
                let ordered = previous.is_none_or(|last| {
                    entry.leader_epoch > last.leader_epoch
                        && entry.start_offset >= last.start_offset
                });
                if entry.leader_epoch < 0 || !ordered {
                    return Err(bad("entries out of order"));
                }
                previous = Some(entry);
                Ok(entry)
            })?;
        Ok(entries.map(|entries| LeaderEpochCache { entries }))
    }

    /// Replaces the checkpoint file with these entries (temporary file, fsync, rename).
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let lines: Vec<String> = self
            .entries
            .iter()
            .map(|e| format!("{} {}", e.leader_epoch, e.start_offset))
            .collect();
        crate::checkpoint::write_entries(path, &lines)
    }

    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.leader_epoch)
    }

    /// Whether a batch stamped `leader_epoch` starts a new entry (it is newer than the latest).
    pub fn is_new_epoch(&self, leader_epoch: i32) -> bool {
        leader_epoch >= 0
            && self
                .latest_epoch()
                .is_none_or(|latest| leader_epoch > latest)
    }

    /// Records that `leader_epoch` starts at `start_offset` if it is newer than the latest
    /// epoch; entries starting at or after `start_offset` are superseded (Kafka's `assign`).
    /// Returns whether the cache changed.
    pub fn assign(&mut self, leader_epoch: i32, start_offset: i64) -> bool {
        if !self.is_new_epoch(leader_epoch) {
            return false;
        }
        self.truncate_from_end(start_offset);
        self.entries.push(EpochEntry {
            leader_epoch,
            start_offset,
        });
        true
    }

    /// Removes the entries starting at or after `end_offset` (the log was truncated there).
    /// Returns whether the cache changed.
    pub fn truncate_from_end(&mut self, end_offset: i64) -> bool {
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        let changed = keep < self.entries.len();
        self.entries.truncate(keep);
        changed
    }

    /// Drops what lies below `start_offset` (the log start moved there): entries starting
    /// before it go, and the latest of them, when it was still current at `start_offset`,
    /// now starts there (Kafka's `truncateFromStart`). Returns whether the cache changed.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> bool {
        let below = self
            .entries
            .partition_point(|e| e.start_offset < start_offset);
        if below == 0 {
            return false;
        }
        let mut last = self.entries[below - 1];
        self.entries.drain(..below);
        if self
            .entries
            .first()
            .is_none_or(|e| e.start_offset > start_offset)
        {
            last.start_offset = start_offset;
            self.entries.insert(0, last);
        }
        true
    }

    /// Where `requested_epoch` ends in a log ending at `log_end_offset`: the start offset of
    /// the first later epoch, paired with the largest known epoch at or below the requested
    /// one (Kafka's `endOffsetFor`). `(-1, -1)` when the answer is undefined.
    pub fn end_offset_for(&self, requested_epoch: i32, log_end_offset: i64) -> (i32, i64) {
        const UNDEFINED: (i32, i64) = (UNDEFINED_EPOCH, UNDEFINED_EPOCH_OFFSET);
        if requested_epoch == UNDEFINED_EPOCH {
            return UNDEFINED;
        }
        let Some(latest) = self.latest_epoch() else {
            return UNDEFINED;
        };
        if requested_epoch == latest {
            return (requested_epoch, log_end_offset);
        }
        let higher = self
            .entries
            .partition_point(|e| e.leader_epoch <= requested_epoch);
        let Some(higher_entry) = self.entries.get(higher) else {
            return UNDEFINED;
        };
        match higher.checked_sub(1).map(|floor| self.entries[floor]) {
            None => (requested_epoch, higher_entry.start_offset),
            Some(floor) => (floor.leader_epoch, higher_entry.start_offset),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(entries: &[(i32, i64)]) -> LeaderEpochCache {
        let mut cache = LeaderEpochCache::default();
        for &(epoch, offset) in entries {
            assert!(cache.assign(epoch, offset));
        }
        cache
    }

    #[test]
    fn truncating_from_the_start_keeps_the_epoch_current_at_the_new_start() {
        let mut c = cache(&[(0, 0), (2, 10), (3, 20)]);
        assert!(!c.truncate_from_start(0));
        assert!(c.truncate_from_start(15));
        assert_eq!(c, cache(&[(2, 15), (3, 20)]));
        // A start on an entry's own offset drops only the older ones.
        assert!(c.truncate_from_start(20));
        assert_eq!(c, cache(&[(3, 20)]));
        assert!(c.truncate_from_start(25));
        assert_eq!(c, cache(&[(3, 25)]));
        assert_eq!(c.end_offset_for(3, 30), (3, 30));
    }

    #[test]
    fn checkpoint_round_trips_and_rejects_malformed_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("leader-epoch-checkpoint");
        assert_eq!(LeaderEpochCache::read(&path).unwrap(), None);
        let written = cache(&[(0, 0), (2, 7), (5, 7)]);
        // (5, 7) superseded (2, 7): an epoch that wrote nothing has no entry.
        assert_eq!(written.entries().len(), 2);
        written.write(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "0\n2\n0 0\n5 7\n");
        assert_eq!(LeaderEpochCache::read(&path).unwrap(), Some(written));
        for bad in [
            "1\n0\n",
            "0\n2\n0 0\n",
            "0\n2\n3 0\n1 5\n",
            "0\n1\n0 x\n",
            "0\n99999999999\n",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(LeaderEpochCache::read(&path).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn only_newer_epochs_are_assigned_and_truncation_drops_later_starts() {
        let mut c = cache(&[(1, 0), (3, 10)]);
        assert!(!c.assign(3, 12));
        assert!(!c.assign(2, 12));
        assert!(!c.assign(-1, 12));
        assert!(c.truncate_from_end(10));
        assert_eq!(c.latest_epoch(), Some(1));
        assert!(!c.truncate_from_end(10));
        assert!(c.truncate_from_end(0));
        assert_eq!(c.latest_epoch(), None);
    }

    #[test]
    fn end_offset_for_follows_kafka() {
        let c = cache(&[(0, 0), (2, 4), (5, 9)]);
        assert_eq!(c.end_offset_for(-1, 12), (-1, -1));
        assert_eq!(LeaderEpochCache::default().end_offset_for(0, 12), (-1, -1));
        assert_eq!(
            c.end_offset_for(5, 12),
            (5, 12),
            "latest epoch ends at the log end"
        );
        assert_eq!(
            c.end_offset_for(6, 12),
            (-1, -1),
            "an epoch after the latest"
        );
        assert_eq!(c.end_offset_for(0, 12), (0, 4));
        assert_eq!(
            c.end_offset_for(1, 12),
            (0, 4),
            "an unknown epoch maps to its floor"
        );
        assert_eq!(c.end_offset_for(2, 12), (2, 9));
        assert_eq!(c.end_offset_for(4, 12), (2, 9));
        let late = cache(&[(3, 5), (4, 8)]);
        assert_eq!(
            late.end_offset_for(1, 12),
            (1, 5),
            "an epoch before the first"
        );
    }
}
