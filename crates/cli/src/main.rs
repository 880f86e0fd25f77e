//! The `strom` binary: `strom server` runs a broker; `strom bench` measures one.

mod bench;
mod bench_cluster;
mod bench_compaction;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use strom_broker::config::BrokerConfig;

#[global_allocator]
static ALLOCATOR: strom_protocol::alloc_guard::GuardedAllocator =
    strom_protocol::alloc_guard::GuardedAllocator;

#[derive(Parser)]
#[command(
    name = "strom",
    version,
    about = "A Kafka-compatible event streaming broker"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a broker. With no arguments: one node (broker+controller, node.id=1) on
    /// 127.0.0.1:9092 with data in ./strom-data, formatted on first start.
    Server {
        /// A Kafka-style server.properties file.
        #[arg(long)]
        config: Option<std::path::PathBuf>,
        /// Override one property, `key=value`; may be repeated.
        #[arg(long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
    },
    /// Drive a broker with librdkafka and print throughput and latency percentiles.
    Bench(bench::BenchArgs),
    /// Prepare log directories, as Kafka's kafka-storage tool.
    Storage {
        #[command(subcommand)]
        command: StorageCommand,
    },
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Print a new random cluster id.
    RandomUuid,
    /// Write meta.properties (cluster id, node id) into every log dir of a configuration.
    Format {
        /// Ids that begin with `-` (allowed by Kafka's format) are taken as values.
        #[arg(long, allow_hyphen_values = true)]
        cluster_id: String,
        #[arg(long)]
        config: std::path::PathBuf,
        #[arg(long = "override", value_name = "KEY=VALUE")]
        overrides: Vec<String>,
        /// Skip log dirs that are formatted already (of the same cluster).
        #[arg(long)]
        ignore_formatted: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match cli.command {
        Command::Server { config, overrides } => server(config, overrides),
        Command::Storage {
            command: StorageCommand::RandomUuid,
        } => {
            println!("{}", strom_broker::storage_format::random_cluster_id());
            ExitCode::SUCCESS
        }
        Command::Storage {
            command:
                StorageCommand::Format {
                    cluster_id,
                    config,
                    overrides,
                    ignore_formatted,
                },
        } => {
            let Some(config) = load_config(Some(&config), &overrides) else {
                return ExitCode::from(2);
            };
            match strom_broker::storage_format::format(
                &config.log_dirs,
                config.node_id,
                &cluster_id,
                ignore_formatted,
            ) {
                Ok(()) => {
                    println!(
                        "Formatted {} with cluster.id {cluster_id}",
                        config.log_dirs.join(", ")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("strom storage format: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Bench(args) => match bench::run(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("strom bench: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STROM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Reads the configuration (file and overrides), printing warnings; `None` after printing
/// the error (exit code 2).
fn load_config(path: Option<&std::path::Path>, overrides: &[String]) -> Option<BrokerConfig> {
    let text = match path {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("strom: cannot read {}: {e}", path.display());
                return None;
            }
        },
        None => String::new(),
    };
    match BrokerConfig::from_properties(&text, overrides) {
        Ok((mut config, warnings)) => {
            for warning in warnings {
                tracing::warn!("{warning}");
            }
            // Only the embedded default formats its own storage; a configured node must be
            // formatted with `strom storage format` first, as Kafka's kafka-storage requires.
            config.format_on_start = path.is_none();
            Some(config)
        }
        Err(e) => {
            eprintln!("strom: {e}");
            None
        }
    }
}

fn server(config_path: Option<std::path::PathBuf>, overrides: Vec<String>) -> ExitCode {
    let Some(config) = load_config(config_path.as_deref(), &overrides) else {
        return ExitCode::from(2);
    };
    if let Err(e) = config.check_roles() {
        eprintln!("strom: {e}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("strom: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Signal handlers are installed before the broker starts: a SIGTERM that arrives right
    // after the listening line must still shut down cleanly, not kill the process.
    let result = runtime.block_on(async {
        let Some(shutdown) = shutdown_signal() else {
            return Err(strom_broker::BrokerError::Config(
                "cannot install signal handlers".into(),
            ));
        };
        strom_broker::server::run(config, shutdown, |running| {
            // One machine-readable line on stdout: scripts and tests wait for it.
            println!(
                "strom listening on {} cluster.id={}",
                running.local_addr, running.cluster_id
            );
            let _ = std::io::stdout().flush();
        })
        .await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("strom server failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Installs SIGTERM and SIGINT handlers now and returns the future that completes on either.
fn shutdown_signal() -> Option<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).ok()?;
    let mut int = signal(SignalKind::interrupt()).ok()?;
    Some(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
    })
}
