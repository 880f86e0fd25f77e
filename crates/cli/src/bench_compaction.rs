//! `strom bench compaction`: the log cleaner's throughput, in process. Writes a log of
//! keyed records (every key updated many times) into a scratch directory, then times one
//! cleaning of it as the broker's cleaner runs it, and prints MB/s of log cleaned.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context as _};
use strom_protocol::batch::{validate_produce, Compression};
use strom_protocol::records::{BatchBuilder, BatchHeader, Record};
use strom_storage::cleaner::OFFSET_MAP_LOAD_FACTOR;
use strom_storage::{CleanOutcome, CompactionConfig, LogConfig, OffsetMap, PartitionLog};

#[derive(clap::Args)]
pub struct CompactionArgs {
    /// Records written before the cleaning.
    #[arg(long, default_value_t = 2_000_000)]
    records: u64,
    /// Distinct keys (each updated records / keys times).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 100)]
    record_bytes: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 100)]
    batch_records: usize,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    #[arg(long, default_value_t = 64 << 20)]
    segment_bytes: u64,
    /// The offset map's memory (`log.cleaner.dedupe.buffer.size`).
    #[arg(long, default_value_t = 128 << 20)]
    dedupe_buffer_bytes: usize,
    /// Scratch directory for the log (default: a new one under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub fn compaction(a: CompactionArgs) -> anyhow::Result<()> {
    let codec = codec(&a.compression)?;
    let scratch = match &a.dir {
        Some(dir) => dir.join(format!("strom-bench-compaction-{}", std::process::id())),
        None => std::env::temp_dir().join(format!("strom-bench-compaction-{}", std::process::id())),
    };
    let config = LogConfig {
        segment_bytes: a.segment_bytes,
        ..LogConfig::default()
    };
    let now_ms = 1_700_000_000_000;
    let log = PartitionLog::open(&scratch, "bench", 0, config, 0, true, now_ms)
        .context("opening the scratch log")?;
    let result = write_and_clean(&log, &a, codec, now_ms);
    let _ = log.delete();
    result
}

fn write_and_clean(
    log: &PartitionLog,
    a: &CompactionArgs,
    codec: Compression,
    now_ms: i64,
) -> anyhow::Result<()> {
    let written_started = Instant::now();
    write_log(log, a, codec, now_ms)?;
    let log_bytes = log.size_bytes();
    let write_s = written_started.elapsed().as_secs_f64();
    let config = CompactionConfig {
        min_cleanable_dirty_ratio: 0.0,
        ..CompactionConfig::default()
    };
    let mut map = OffsetMap::new(a.dedupe_buffer_bytes, OFFSET_MAP_LOAD_FACTOR);
    let first = log.cleanable(&config, i64::MAX, now_ms)?;
    // The closed segments: what the cleaner compacts (the active one stays as it is).
    let cleanable_bytes = first.clean_bytes + first.cleanable_bytes;
    let started = Instant::now();
    let mut passes = 0;
    let mut records_read = 0;
    // A map smaller than the keys takes several passes, as the broker's cleaner would.
    loop {
        let cleanable = log.cleanable(&config, i64::MAX, now_ms)?;
        if cleanable.cleanable_bytes == 0 {
            break;
        }
        match log.clean(&mut map, &config, &cleanable, now_ms, &mut ())? {
            CleanOutcome::Cleaned { stats, .. } => records_read += stats.records_read,
            CleanOutcome::Aborted { .. } => bail!("the cleaning stopped"),
        }
        passes += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "compaction records={} keys={} record_bytes={} batch_records={} compression={} log_mb={:.1} \
         write_s={:.2} cleanable_mb={:.1} passes={} clean_s={:.2} mb_per_s={:.1} records_read_per_s={:.0} after_mb={:.1}",
        a.records,
        a.keys,
        a.record_bytes,
        a.batch_records,
        a.compression,
        log_bytes as f64 / 1e6,
        write_s,
        cleanable_bytes as f64 / 1e6,
        passes,
        elapsed,
        cleanable_bytes as f64 / 1e6 / elapsed,
        records_read as f64 / elapsed,
        log.size_bytes() as f64 / 1e6,
    );
    Ok(())
}

/// Appends `a.records` records over `a.keys` keys, `a.batch_records` per batch, and
/// commits them all (the high watermark moves to the log end).
fn write_log(
    log: &PartitionLog,
    a: &CompactionArgs,
    codec: Compression,
    now_ms: i64,
) -> anyhow::Result<()> {
    let value = vec![b'x'; a.record_bytes.saturating_sub(16)];
    let mut builder = BatchBuilder::default();
    let mut bytes = Vec::new();
    let mut written = 0u64;
    let batch_records = a.batch_records.max(1) as u64;
    while written < a.records {
        let count = batch_records.min(a.records - written);
        let template = BatchHeader {
            base_offset: 0,
            partition_leader_epoch: 0,
            attributes: codec_bits(codec),
            last_offset_delta: count as i32 - 1,
            base_timestamp: now_ms,
            max_timestamp: now_ms,
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
            records_count: count as i32,
        };
        builder.start(&template, None);
        for i in 0..count {
            let key = format!("key-{:012}", (written + i) % a.keys.max(1));
            builder.append(&Record {
                offset: i as i64,
                timestamp: now_ms,
                attributes: 0,
                key: Some(key.as_bytes()),
                value: Some(&value),
                headers: &[0],
            })?;
        }
        bytes.clear();
        builder.finish(&mut bytes)?;
        let infos = validate_produce(&bytes, usize::MAX)?;
        log.append_as_leader(&bytes, &infos, 0, now_ms)?;
        written += count;
    }
    log.update_high_watermark(i64::MAX);
    Ok(())
}

fn codec(name: &str) -> anyhow::Result<Compression> {
    Ok(match name {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        other => bail!("unknown compression {other}"),
    })
}

fn codec_bits(codec: Compression) -> i16 {
    strom_protocol::records::testing::codec_bits(codec)
}
