//! The node process: formats or checks the log dirs, starts the controller (a voter), and as
//! a broker follows the metadata, registers, waits to be unfenced, listens, flushes on an
//! interval, and shuts down cleanly (fence itself, stop accepting, finish in-flight requests,
//! flush, close segments, mark the shutdown clean, leave the quorum).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::cluster::{self, Cluster};
use crate::config::BrokerConfig;
use crate::topics::TopicManager;
use crate::{connection, consumer_offsets, storage_format, transaction_state, Broker, BrokerError};
use strom_coordinator::transaction::{
    ProducerIdGenerator, SystemClock, TransactionCoordinator, TxnConfig,
};
use strom_coordinator::{CoordinatorConfig, GroupCoordinator};

/// How long shutdown waits for in-flight requests before closing the logs anyway.
const SHUTDOWN_DRAIN_MS: u64 = 10_000;
/// How often group sessions and rebalance deadlines are checked.
const GROUP_TIMER_INTERVAL_MS: u64 = 100;
/// How often the flusher looks for logs whose `flush.ms` has passed.
const FLUSH_CHECK_INTERVAL_MS: u64 = 100;
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF_MS: u64 = 100;

/// A started node: the address it serves (the client listener of a broker, else the
/// controller listener) and the cluster id.
pub struct Running {
    pub local_addr: SocketAddr,
    pub cluster_id: String,
}

/// Runs a broker until `shutdown` completes. `on_ready` is called once it listens.
pub async fn run(
    config: BrokerConfig,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Running),
) -> Result<(), BrokerError> {
    let config = Arc::new(config);
    let cluster_id = if config.format_on_start {
        storage_format::ensure_formatted(
            &config.log_dirs,
            config.node_id,
            &storage_format::random_cluster_id(),
        )?
    } else {
        storage_format::check_formatted(&config.log_dirs, config.node_id)?
    };
    let (controller, controller_addr) = if config.is_controller() {
        let (controller, addr) = cluster::start_controller(&config, &cluster_id).await?;
        (Some(controller), addr)
    } else {
        (None, None)
    };
    if !config.is_broker() {
        return run_controller_only(controller, controller_addr, cluster_id, shutdown, on_ready)
            .await;
    }
    let listener_cfg = config.client_listener().ok_or_else(|| {
        BrokerError::Config(
            "no client listener in `listeners` (besides controller.listener.names)".into(),
        )
    })?;
    let bind_host = if listener_cfg.host.is_empty() {
        "0.0.0.0".to_string()
    } else {
        listener_cfg.host.clone()
    };
    let listener = TcpListener::bind((bind_host.as_str(), listener_cfg.port)).await?;
    let local_addr = listener.local_addr()?;
    let (advertised_host, advertised_port) = config.advertised_for(&listener_cfg.name, local_addr);
    let topics = Arc::new(tokio::task::block_in_place(|| {
        TopicManager::open(Arc::clone(&config))
    })?);
    if let Some(controller) = &controller {
        crate::legacy::import(&config, controller).await?;
    }
    let cluster = Cluster::new(&config, &cluster_id, controller.clone());
    let applier = tokio::spawn(cluster::apply_metadata(
        Arc::clone(&cluster),
        Arc::clone(&topics),
    ));
    let heartbeats = tokio::spawn(Arc::clone(&cluster).run_heartbeats(
        Arc::clone(&config),
        Arc::clone(&topics),
        advertised_host.clone(),
        advertised_port,
    ));
    tokio::pin!(shutdown);
    // Clients are served once the controller has unfenced this broker, i.e. once it has
    // applied the metadata up to its registration.
    tokio::select! {
        _ = &mut shutdown => {
            info!("shut down before joining the cluster");
            heartbeats.abort();
            applier.abort();
            if let Some(controller) = controller {
                controller.shutdown().await;
            }
            return Ok(());
        }
        _ = wait_until_live(&cluster, &topics) => {}
    }
    let groups = Arc::new(GroupCoordinator::new(
        coordinator_config(&config),
        Arc::new(consumer_offsets::OffsetsTopic {
            topics: Arc::clone(&topics),
        }),
    ));
    let offsets_loader = Arc::new(consumer_offsets::Loader::new(consumer_offsets::GroupsLoad(
        Arc::clone(&groups),
    )));
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let producer_ids = Arc::new(crate::producer_ids::ProducerIdManager::new(Box::new(
        crate::producer_ids::ControllerBlocks(Arc::clone(&cluster)),
    )));
    let txns = Arc::new(TransactionCoordinator::new(
        txn_config(&config),
        Arc::new(transaction_state::TxnStateLog {
            topics: Arc::clone(&topics),
            replication_timeout_ms: transaction_state::REPLICATION_TIMEOUT_MS,
            shutdown: shutdown_rx.clone(),
        }),
        Arc::clone(&producer_ids) as Arc<dyn ProducerIdGenerator>,
        Arc::new(SystemClock),
    ));
    let txn_loader = Arc::new(transaction_state::Loader::new(
        transaction_state::TxnsLoad {
            txns: Arc::clone(&txns),
            read_bytes: config.transaction_state_log_load_buffer_size.max(1) as usize,
        },
    ));
    let txn_verifier = Arc::new(crate::txn_verification::Verifier::new(&config));
    {
        let offsets = Arc::clone(&offsets_loader);
        let transactions = Arc::clone(&txn_loader);
        let verifier = Arc::clone(&txn_verifier);
        let static_config = Arc::clone(&config);
        topics.set_on_applied(Arc::new(move |topics| {
            verifier.refresh(&static_config, &topics.image().image);
            if let Err(e) = offsets.sync(topics) {
                error!(error = %e, "loading {} failed", consumer_offsets::TOPIC);
            }
            if let Err(e) = transactions.sync(topics) {
                error!(error = %e, "loading {} failed", transaction_state::TOPIC);
            }
        }));
    }
    txn_verifier.refresh(&config, &topics.image().image);
    tokio::task::block_in_place(|| offsets_loader.sync(&topics))?;
    tokio::task::block_in_place(|| txn_loader.sync(&topics))?;
    let (isr_changes, isr_queue) = tokio::sync::mpsc::channel(crate::replication::ISR_CHANGES_MAX);
    let broker = Arc::new(Broker {
        isr_changes: isr_changes.clone(),
        quotas: crate::quotas::QuotaManager::new(crate::quotas::QuotaConfig {
            windows: config.quota_window_num.max(1) as u32,
            window_ms: i64::from(config.quota_window_size_seconds) * 1000,
        }),
        offsets_loader,
        txns,
        txn_loader,
        producer_ids,
        txn_verifier,
        node_id: config.node_id,
        cluster_id: cluster_id.clone(),
        advertised_host,
        advertised_port: i32::from(advertised_port),
        topics,
        groups,
        cluster: Arc::clone(&cluster),
        request_memory: u32::try_from(config.queued_max_request_bytes)
            .ok()
            .filter(|bytes| *bytes > 0)
            .map(|bytes| Arc::new(Semaphore::new(bytes as usize))),
        config: Arc::clone(&config),
        shutdown: shutdown_rx,
    });
    let replication = [
        tokio::spawn(crate::replication::send_isr_changes(
            Arc::clone(&cluster),
            isr_queue,
        )),
        tokio::spawn(crate::replication::expire_lagging_followers(
            Arc::clone(&broker.topics),
            isr_changes,
            config.replica_lag_time_max_ms,
        )),
        tokio::spawn(crate::fetcher::run(
            Arc::clone(&config),
            Arc::clone(&broker.topics),
        )),
    ];
    let flusher = tokio::spawn(flush_loop(Arc::clone(&broker)));
    let retention = tokio::spawn(crate::retention::retention_loop(Arc::clone(&broker)));
    let producer_expiration = tokio::spawn(crate::producer_expiration::expiration_loop(
        Arc::clone(&broker),
    ));
    let log_cleaner = crate::log_cleaner::LogCleaner::start(&config, Arc::clone(&broker.topics))?;
    let group_timer = tokio::spawn(group_timer_loop(Arc::clone(&broker)));
    let txn_timer = tokio::spawn(txn_timer_loop(Arc::clone(&broker)));
    let marker_sender = tokio::spawn(Arc::clone(&broker.txns).run_marker_sender(
        Arc::new(crate::txn_markers::BrokerMarkerTransport::new(Arc::clone(
            &broker,
        ))),
        broker.shutdown.clone(),
    ));
    info!(node_id = config.node_id, %cluster_id, %local_addr, "strom broker started");
    on_ready(&Running {
        local_addr,
        cluster_id,
    });

    let connections = accept_loop(listener, Arc::clone(&broker), shutdown).await;
    info!("shutting down: no longer accepting connections");
    heartbeats.abort();
    cluster
        .controlled_shutdown(&config, broker.topics.image().index)
        .await;
    let _ = shutdown_tx.send(true);
    drain(connections).await;
    for task in replication {
        task.abort();
    }
    flusher.abort();
    retention.abort();
    producer_expiration.abort();
    if let Some(log_cleaner) = log_cleaner {
        tokio::task::spawn_blocking(move || log_cleaner.shutdown())
            .await
            .map_err(|e| BrokerError::Config(format!("log cleaner shutdown failed: {e}")))?;
    }
    group_timer.abort();
    txn_timer.abort();
    marker_sender.abort();
    applier.abort();
    let closing = Arc::clone(&broker);
    tokio::task::spawn_blocking(move || closing.topics.close_all())
        .await
        .map_err(|e| BrokerError::Config(format!("close task failed: {e}")))??;
    if let Some(controller) = controller {
        controller.shutdown().await;
    }
    info!("shutdown complete");
    Ok(())
}

/// Waits, woken by each applied metadata change, until this broker shows as unfenced.
async fn wait_until_live(cluster: &Cluster, topics: &TopicManager) {
    let mut applied = topics.subscribe_applied();
    while !cluster.is_live_in(&topics.image().image) {
        if applied.changed().await.is_err() {
            return;
        }
    }
}

/// A controller-only node: takes part in the quorum until shut down.
async fn run_controller_only(
    controller: Option<Arc<strom_controller::service::Controller>>,
    controller_addr: Option<SocketAddr>,
    cluster_id: String,
    shutdown: impl Future<Output = ()>,
    on_ready: impl FnOnce(&Running),
) -> Result<(), BrokerError> {
    let (Some(controller), Some(local_addr)) = (controller, controller_addr) else {
        return Err(BrokerError::Config(
            "a controller-only node needs a controller listener".into(),
        ));
    };
    info!(node_id = controller.node_id(), %local_addr, "strom controller started");
    on_ready(&Running {
        local_addr,
        cluster_id,
    });
    shutdown.await;
    controller.shutdown().await;
    info!("shutdown complete");
    Ok(())
}

async fn accept_loop(
    listener: TcpListener,
    broker: Arc<Broker>,
    shutdown: impl Future<Output = ()>,
) -> JoinSet<()> {
    let max_connections = usize::try_from(broker.config.max_connections)
        .unwrap_or(usize::MAX)
        .min(Semaphore::MAX_PERMITS);
    let permits = Arc::new(Semaphore::new(max_connections));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => return connections,
            permit = Arc::clone(&permits).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return connections,
            },
        };
        let accepted = tokio::select! {
            _ = &mut shutdown => return connections,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let broker = Arc::clone(&broker);
                connections.spawn(async move {
                    connection::serve(stream, peer, broker).await;
                    drop(permit);
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed; backing off");
                tokio::time::sleep(Duration::from_millis(ACCEPT_BACKOFF_MS)).await;
            }
        }
        while connections.try_join_next().is_some() {}
    }
}

async fn drain(mut connections: JoinSet<()>) {
    let deadline = tokio::time::sleep(Duration::from_millis(SHUTDOWN_DRAIN_MS));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { return },
            _ = &mut deadline => {
                warn!(remaining = connections.len(), "connections still busy at shutdown; closing them");
                connections.abort_all();
                return;
            }
        }
    }
}

/// Fsyncs each log when its `flush.ms` (by default `log.flush.interval.ms`) has passed, off
/// the request path, and records the recovery points.
async fn flush_loop(broker: Arc<Broker>) {
    let interval_ms =
        FLUSH_CHECK_INTERVAL_MS.min(broker.config.log_flush_interval_ms.max(1) as u64);
    every_blocking(broker, interval_ms, |broker| {
        if let Err(e) = broker.topics.flush_due(false) {
            error!(error = %e, "periodic flush failed");
        }
    })
    .await
}

/// Runs `work` every `interval_ms` (the first time one interval from now) on the blocking
/// pool: file work (fsync, unlink) stays off the async workers. A slow run delays the next.
pub(crate) async fn every_blocking(broker: Arc<Broker>, interval_ms: u64, work: fn(&Broker)) {
    let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        let broker = Arc::clone(&broker);
        if let Err(e) = tokio::task::spawn_blocking(move || work(&broker)).await {
            error!(error = %e, "periodic task failed");
        }
    }
}

fn coordinator_config(config: &BrokerConfig) -> CoordinatorConfig {
    CoordinatorConfig {
        offsets_partitions: config.offsets_topic_num_partitions,
        initial_rebalance_delay_ms: config.group_initial_rebalance_delay_ms.max(0) as u64,
        min_session_timeout_ms: config.group_min_session_timeout_ms,
        max_session_timeout_ms: config.group_max_session_timeout_ms,
        offset_metadata_max_bytes: config.offset_metadata_max_bytes.max(0) as usize,
        max_group_size: config.group_max_size.max(1) as usize,
        consumer_session_timeout_ms: config.group_consumer_session_timeout_ms.max(1) as u64,
        consumer_heartbeat_interval_ms: config.group_consumer_heartbeat_interval_ms.max(1),
        consumer_max_size: config.group_consumer_max_size.max(1) as usize,
    }
}

fn txn_config(config: &BrokerConfig) -> TxnConfig {
    TxnConfig {
        state_log_partitions: config.transaction_state_log_num_partitions,
        max_timeout_ms: config.transaction_max_timeout_ms,
        transactional_id_expiration_ms: i64::from(config.transactional_id_expiration_ms),
        retry_backoff_ms: TxnConfig::default().retry_backoff_ms,
    }
}

/// Every `transaction.abort.timed.out.transaction.cleanup.interval.ms`, aborts the
/// transactions past their timeout; every
/// `transaction.remove.expired.transaction.cleanup.interval.ms`, removes the transactional
/// ids idle for `transactional.id.expiration.ms`.
async fn txn_timer_loop(broker: Arc<Broker>) {
    let every = |ms: i32| {
        let mut ticker = tokio::time::interval(Duration::from_millis(ms.max(1) as u64));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker
    };
    let mut abort = every(
        broker
            .config
            .transaction_abort_timed_out_transaction_cleanup_interval_ms,
    );
    let mut expire = every(
        broker
            .config
            .transaction_remove_expired_transaction_cleanup_interval_ms,
    );
    abort.tick().await;
    expire.tick().await;
    loop {
        tokio::select! {
            _ = abort.tick() => {
                broker.txns.abort_timed_out_transactions().await;
            }
            _ = expire.tick() => {
                broker.txns.remove_expired_transactional_ids().await;
            }
        }
    }
}

/// Expires group members whose session timed out and completes rebalances whose deadline
/// passed.
/// Every `offsets.retention.check.interval.ms`, removes the offsets of groups that have been
/// empty for `offsets.retention.minutes`.
async fn group_timer_loop(broker: Arc<Broker>) {
    let mut ticker = tokio::time::interval(Duration::from_millis(GROUP_TIMER_INTERVAL_MS));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retention_check =
        Duration::from_millis(broker.config.offsets_retention_check_interval_ms.max(1) as u64);
    let retention_ms = i64::from(broker.config.offsets_retention_minutes) * 60_000;
    let mut next_retention_check = tokio::time::Instant::now() + retention_check;
    loop {
        ticker.tick().await;
        broker.groups.tick();
        broker.groups.expire_consumer_members(&*broker.topics);
        if tokio::time::Instant::now() >= next_retention_check {
            next_retention_check += retention_check;
            let groups = Arc::clone(&broker.groups);
            let expired = tokio::task::spawn_blocking(move || {
                groups.expire_offsets(crate::topics::now_ms(), retention_ms)
            })
            .await;
            if let Ok(n @ 1..) = expired {
                info!(offsets = n, "expired committed offsets of empty groups");
            }
        }
    }
}
