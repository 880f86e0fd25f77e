//! Producer ids for InitProducerId, as Kafka's `RPCProducerIdManager` (KIP-730) hands them
//! out: from a block of ids the active controller gave this broker alone
//! ([`strom_controller::producer_ids`]), one after another.
//!
//! Once 90% of the current block is used, the next block is fetched in the background, so a
//! steady stream of new producers never waits for the controller. When no id is left and no
//! block has arrived, [`ProducerIdManager::generate`] waits a moment ([`BLOCK_WAIT_MS`]) and
//! then answers COORDINATOR_LOAD_IN_PROGRESS, which every client retries (Kafka answers that
//! rather than REQUEST_TIMED_OUT because older clients take the latter as fatal). A failed
//! fetch is not retried before [`RETRY_BACKOFF_MS`].

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use kafka_protocol::ResponseError;
use strom_controller::producer_ids::ProducerIdsBlock;
use strom_controller::service::{code, ControllerRequest, ControllerResponse};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::cluster::Cluster;

/// Share of a block used before the next one is fetched, in percent (Kafka's
/// `PID_PREFETCH_THRESHOLD`).
pub const PREFETCH_PERCENT: i64 = 90;
/// Pause after a failed fetch before the next one (Kafka's `RETRY_BACKOFF_MS`).
pub const RETRY_BACKOFF_MS: u64 = 50;
/// Longest [`ProducerIdManager::generate`] waits for a block being fetched before it answers
/// COORDINATOR_LOAD_IN_PROGRESS: long enough for a controller that is up to answer, short
/// enough that the producer's connection is not held while it is down.
pub const BLOCK_WAIT_MS: u64 = 250;
/// Longest one fetch of a block may take.
const FETCH_TIMEOUT_MS: u64 = 5_000;

/// Where blocks come from: the active controller, or a test's stand-in.
pub trait BlockSource: Send + Sync + 'static {
    /// The next block for this broker, or a Kafka error code and message.
    fn allocate(&self) -> BoxFuture<'_, Result<ProducerIdsBlock, (i16, String)>>;
}

/// Asks the active controller (Kafka's AllocateProducerIds) with this broker's registration.
pub struct ControllerBlocks(pub Arc<Cluster>);

impl BlockSource for ControllerBlocks {
    fn allocate(&self) -> BoxFuture<'_, Result<ProducerIdsBlock, (i16, String)>> {
        Box::pin(async move {
            let broker_epoch = self.0.broker_epoch();
            if broker_epoch < 0 {
                return Err((
                    code::BROKER_ID_NOT_REGISTERED,
                    "this broker has not registered yet".into(),
                ));
            }
            let request = ControllerRequest::AllocateProducerIds {
                broker_id: self.0.node_id,
                broker_epoch,
            };
            match self.0.call_producer_ids(request, FETCH_TIMEOUT_MS).await {
                ControllerResponse::ProducerIds(block) => Ok(block),
                ControllerResponse::Error { code, message } => Err((code, message)),
                other => Err((
                    code::UNKNOWN_SERVER_ERROR,
                    format!("unexpected controller answer {other:?}"),
                )),
            }
        })
    }
}

/// The ids left in a block: `next` up to `end` (excluded).
#[derive(Debug, Clone, Copy)]
struct Current {
    next: i64,
    end: i64,
    /// Claiming this id starts fetching the next block.
    prefetch_at: i64,
}

impl Current {
    const EMPTY: Current = Current {
        next: 0,
        end: 0,
        prefetch_at: -1,
    };

    fn of(block: ProducerIdsBlock) -> Current {
        Current {
            next: block.first_producer_id,
            end: block.end(),
            prefetch_at: block.first_producer_id + i64::from(block.count) * PREFETCH_PERCENT / 100,
        }
    }
}

struct State {
    current: Current,
    /// A fetched block waiting for the current one to run out.
    next_block: Option<ProducerIdsBlock>,
    in_flight: bool,
    /// No fetch before this, after a failed one.
    retry_at: Option<Instant>,
    /// Whether the last fetch failed (one warning per run of failures).
    failing: bool,
}

struct Inner {
    source: Box<dyn BlockSource>,
    state: parking_lot::Mutex<State>,
    /// Bumped whenever a fetch ends, so that waiting callers look again.
    fetched: watch::Sender<u64>,
}

/// Hands out producer ids from blocks only this broker was given.
pub struct ProducerIdManager {
    inner: Arc<Inner>,
}

impl ProducerIdManager {
    pub fn new(source: Box<dyn BlockSource>) -> ProducerIdManager {
        ProducerIdManager {
            inner: Arc::new(Inner {
                source,
                state: parking_lot::Mutex::new(State {
                    current: Current::EMPTY,
                    next_block: None,
                    in_flight: false,
                    retry_at: None,
                    failing: false,
                }),
                fetched: watch::channel(0).0,
            }),
        }
    }

    /// A producer id no other producer was given, or COORDINATOR_LOAD_IN_PROGRESS (retriable)
    /// when no block is at hand within [`BLOCK_WAIT_MS`].
    pub async fn generate(&self) -> Result<i64, i16> {
        let deadline = Instant::now() + Duration::from_millis(BLOCK_WAIT_MS);
        loop {
            let mut fetched = {
                let mut state = self.inner.state.lock();
                if let Some(id) = self.claim(&mut state) {
                    return Ok(id);
                }
                self.maybe_fetch(&mut state);
                if !state.in_flight {
                    // Backing off after a failed fetch: nothing will come within the wait.
                    return Err(ResponseError::CoordinatorLoadInProgress.code());
                }
                // Subscribed under the lock: a fetch ending from now on is seen.
                self.inner.fetched.subscribe()
            };
            if tokio::time::timeout_at(deadline, fetched.changed())
                .await
                .is_err()
            {
                return Err(ResponseError::CoordinatorLoadInProgress.code());
            }
        }
    }

    /// The next id of the current block, moving to the fetched block when it runs out.
    fn claim(&self, state: &mut State) -> Option<i64> {
        if state.current.next >= state.current.end {
            state.current = Current::of(state.next_block.take()?);
        }
        let id = state.current.next;
        state.current.next += 1;
        if id == state.current.prefetch_at {
            self.maybe_fetch(state);
        }
        Some(id)
    }

    /// Starts fetching the next block unless one is at hand, on its way, or a failed fetch
    /// is too recent.
    fn maybe_fetch(&self, state: &mut State) {
        let backing_off = state.retry_at.is_some_and(|at| Instant::now() < at);
        if state.next_block.is_some() || state.in_flight || backing_off {
            return;
        }
        state.in_flight = true;
        state.retry_at = None;
        tokio::spawn(fetch(Arc::clone(&self.inner)));
    }
}

/// Fetches one block and keeps it for when the current one runs out.
async fn fetch(inner: Arc<Inner>) {
    debug!("requesting the next producer id block");
    let fetched = inner.source.allocate().await;
    {
        let mut state = inner.state.lock();
        state.in_flight = false;
        let failure = match fetched {
            Ok(block) => match check(&block, &state.current) {
                Ok(()) => {
                    if std::mem::take(&mut state.failing) {
                        info!("producer id blocks come from the controller again");
                    }
                    debug!(
                        first_producer_id = block.first_producer_id,
                        count = block.count,
                        "got a producer id block"
                    );
                    state.next_block = Some(block);
                    None
                }
                Err(message) => Some((code::UNKNOWN_SERVER_ERROR, message)),
            },
            Err(failure) => Some(failure),
        };
        if let Some((code, message)) = failure {
            state.retry_at = Some(Instant::now() + Duration::from_millis(RETRY_BACKOFF_MS));
            if !std::mem::replace(&mut state.failing, true) {
                warn!(
                    error_code = code,
                    %message,
                    "fetching a producer id block failed; retrying when producers ask"
                );
            }
        }
    }
    inner.fetched.send_modify(|n| *n += 1);
}

/// Kafka's sanity check of a block: beyond the current one, ids not negative, no overflow.
fn check(block: &ProducerIdsBlock, current: &Current) -> Result<(), String> {
    if block.first_producer_id < current.end {
        return Err(format!(
            "producer id block {block:?} does not follow the current block ending at {}",
            current.end
        ));
    }
    if block.first_producer_id < 0
        || block.count <= 0
        || block.first_producer_id > i64::MAX - i64::from(block.count)
    {
        return Err(format!("producer id block {block:?} is not a valid range"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Hands out blocks of `size` ids, the n-th at `first + n * 1000`, each once the gate
    /// lets its call through; scripted answers (popped from the end) come first.
    struct TestBlocks {
        size: i32,
        first: i64,
        calls: AtomicUsize,
        gate: tokio::sync::Semaphore,
        answers: parking_lot::Mutex<Vec<Result<i64, i16>>>,
    }

    impl TestBlocks {
        fn new(size: i32, first: i64, open: bool) -> Arc<TestBlocks> {
            Arc::new(TestBlocks {
                size,
                first,
                calls: AtomicUsize::new(0),
                gate: tokio::sync::Semaphore::new(if open {
                    tokio::sync::Semaphore::MAX_PERMITS
                } else {
                    0
                }),
                answers: parking_lot::Mutex::new(Vec::new()),
            })
        }

        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    struct Shared(Arc<TestBlocks>);

    impl BlockSource for Shared {
        fn allocate(&self) -> BoxFuture<'_, Result<ProducerIdsBlock, (i16, String)>> {
            Box::pin(async move {
                let n = self.0.calls.fetch_add(1, Ordering::SeqCst);
                self.0.gate.acquire().await.expect("gate").forget();
                let scripted = self.0.answers.lock().pop();
                let first = match scripted {
                    Some(Err(code)) => return Err((code, "scripted failure".into())),
                    Some(Ok(first)) => first,
                    None => self.0.first + n as i64 * 1000,
                };
                Ok(ProducerIdsBlock {
                    first_producer_id: first,
                    count: self.0.size,
                })
            })
        }
    }

    fn manager(blocks: &Arc<TestBlocks>) -> ProducerIdManager {
        ProducerIdManager::new(Box::new(Shared(Arc::clone(blocks))))
    }

    async fn wait_for_calls(blocks: &TestBlocks, calls: usize) {
        for _ in 0..1000 {
            if blocks.calls() >= calls {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!(
            "the source was called {} times, not {calls}",
            blocks.calls()
        );
    }

    #[tokio::test]
    async fn ids_run_through_each_block_and_the_next_is_fetched_once_90_percent_are_used() {
        let blocks = TestBlocks::new(10, 5_000, true);
        let manager = manager(&blocks);
        let mut ids = Vec::new();
        for _ in 0..9 {
            ids.push(manager.generate().await.unwrap());
        }
        assert_eq!(ids, (5_000..5_009).collect::<Vec<_>>());
        assert_eq!(
            blocks.calls(),
            1,
            "the first block, and no prefetch before 90%"
        );
        ids.push(manager.generate().await.unwrap());
        wait_for_calls(&blocks, 2).await;
        // The prefetched block is there when the first runs out: no caller waits.
        tokio::time::sleep(Duration::from_millis(10)).await;
        for _ in 0..10 {
            ids.push(manager.generate().await.unwrap());
        }
        assert_eq!(
            ids,
            (5_000..5_010).chain(6_000..6_010).collect::<Vec<_>>(),
            "every id once, block after block"
        );
        wait_for_calls(&blocks, 3).await;
        assert_eq!(blocks.calls(), 3, "one fetch per block");
    }

    #[tokio::test]
    async fn without_a_block_callers_get_coordinator_load_in_progress_until_one_arrives() {
        let blocks = TestBlocks::new(2, 0, false);
        let manager = manager(&blocks);
        let started = Instant::now();
        assert_eq!(
            manager.generate().await,
            Err(ResponseError::CoordinatorLoadInProgress.code())
        );
        assert!(started.elapsed() >= Duration::from_millis(BLOCK_WAIT_MS));
        assert_eq!(blocks.calls(), 1, "one fetch in flight, not one per caller");
        assert!(manager.generate().await.is_err());
        assert_eq!(blocks.calls(), 1);
        // The controller answers: a waiting caller gets its id at once.
        let waiting = manager.generate();
        blocks.gate.add_permits(1);
        assert_eq!(waiting.await, Ok(0));
        assert_eq!(manager.generate().await, Ok(1), "prefetch at 90% of 2 ids");
        wait_for_calls(&blocks, 2).await;
        // The block is used up and the next fetch hangs: exhausted, retriable.
        assert_eq!(
            manager.generate().await,
            Err(ResponseError::CoordinatorLoadInProgress.code())
        );
        blocks.gate.add_permits(1);
        assert_eq!(manager.generate().await, Ok(1000));
    }

    #[tokio::test]
    async fn a_failed_fetch_answers_at_once_and_is_retried_only_after_the_backoff() {
        let blocks = TestBlocks::new(10, 0, true);
        blocks.answers.lock().push(Err(code::STALE_BROKER_EPOCH));
        let manager = manager(&blocks);
        let started = Instant::now();
        assert_eq!(
            manager.generate().await,
            Err(ResponseError::CoordinatorLoadInProgress.code())
        );
        assert!(
            started.elapsed() < Duration::from_millis(BLOCK_WAIT_MS),
            "the failure ends the wait"
        );
        assert!(manager.generate().await.is_err(), "backing off");
        assert_eq!(blocks.calls(), 1);
        tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS + 10)).await;
        assert_eq!(manager.generate().await, Ok(1000));
        assert_eq!(blocks.calls(), 2);
    }

    #[tokio::test]
    async fn a_block_that_goes_back_is_refused() {
        let blocks = TestBlocks::new(1, 0, true);
        // Popped last to first: a good block, then one overlapping it, then the next.
        blocks.answers.lock().extend([Ok(100), Ok(0), Ok(0)]);
        let manager = manager(&blocks);
        assert_eq!(manager.generate().await, Ok(0));
        assert!(manager.generate().await.is_err(), "0 again is refused");
        tokio::time::sleep(Duration::from_millis(RETRY_BACKOFF_MS + 10)).await;
        assert_eq!(manager.generate().await, Ok(100));
    }
}
