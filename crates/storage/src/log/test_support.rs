//! Helpers the log's test modules share: opening and reopening a log on a test clock,
//! reading its batches, replicating a leader's log the way a replica fetcher does, and
//! crashing a cleaning at a chosen step of its swap.

use std::path::Path;

use strom_protocol::batch::BatchOffsets;

use crate::cleaner::{CleanerProgress, SwapStep};
use crate::{LogConfig, PartitionLog, ReadBound};

/// Opens the log of topic `t`, partition 0 in `dir` at `now_ms`.
pub(super) fn open_log(dir: &Path, config: LogConfig, clean: bool, now_ms: i64) -> PartitionLog {
    PartitionLog::open(dir, "t", 0, config, 0, clean, now_ms).expect("open log")
}

/// Closes the log (clean) or just drops it (as a crash that kept the page cache), then
/// opens it again at `now_ms`.
pub(super) fn reopen_log(
    log: PartitionLog,
    config: LogConfig,
    clean: bool,
    now_ms: i64,
) -> PartitionLog {
    let dir = log.dir().to_path_buf();
    if clean {
        log.close().expect("close");
    }
    drop(log);
    open_log(&dir, config, clean, now_ms)
}

/// Every stored batch from `offset` up to `bound`, as bytes.
pub(super) fn read_batches(log: &PartitionLog, mut offset: i64, bound: ReadBound) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let result = log.read_up_to(offset, 1 << 20, true, bound);
        let Some(slice) = result.expect("read").slice else {
            break;
        };
        let bytes = slice.read_to_vec().expect("slice bytes");
        let mut at = 0;
        while let Some(b) = BatchOffsets::parse(&bytes[at..]) {
            if at + b.size_bytes > bytes.len() {
                break;
            }
            if b.last_offset() >= offset {
                out.push(bytes[at..at + b.size_bytes].to_vec());
            }
            offset = b.last_offset() + 1;
            at += b.size_bytes;
        }
    }
    out
}

/// (base offset, record count) of stored batches.
pub(super) fn ranges(batches: &[Vec<u8>]) -> Vec<(i64, i64)> {
    batches
        .iter()
        .map(|b| {
            let o = BatchOffsets::parse(b).expect("batch header");
            (o.base_offset, o.last_offset() - o.base_offset + 1)
        })
        .collect()
}

/// Copies the leader's log to the follower the way a replica fetcher does: fetches from
/// the follower's log end with a small `max_bytes`, so responses end with partial batches.
pub(super) fn replicate(
    leader: &PartitionLog,
    follower: &PartitionLog,
    max_bytes: usize,
    now_ms: i64,
) {
    loop {
        let offset = follower.offsets().log_end_offset;
        let result = leader
            .read_to_log_end(offset, max_bytes, true)
            .expect("leader read");
        let Some(slice) = result.slice else {
            break;
        };
        let bytes = slice.read_to_vec().expect("slice bytes");
        follower
            .append_as_follower(&bytes, now_ms)
            .expect("follower append")
            .expect("at least one complete batch");
    }
}

/// Crashes a cleaning right after one swap step.
pub(super) struct CrashAfter {
    pub(super) step: SwapStep,
    /// How many earlier occurrences of the step pass first (for `OldDeleted`: how many
    /// replaced segments are deleted before the crash).
    pub(super) countdown: usize,
}

impl CleanerProgress for CrashAfter {
    fn advance(&mut self, _bytes: u64) -> bool {
        true
    }

    fn crash_after(&mut self, step: SwapStep) -> bool {
        if step != self.step {
            return false;
        }
        if self.countdown > 0 {
            self.countdown -= 1;
            return false;
        }
        true
    }
}
