//! Client quotas (Kafka's `ClientQuotaManager` and `ClientRequestQuotaManager`): produce and
//! fetch byte rates and the share of request-handling time, per user and client id, enforced
//! by throttling.
//!
//! The limits come from the metadata image (`ClientQuota` records, set with
//! AlterClientQuotas). A client's limit is the first of Kafka's eight levels that sets the
//! key: `user+client-id`, `user+default client-id`, `user`, `default user+client-id`,
//! `default user+default client-id`, `default user`, `client-id`, `default client-id`. Its
//! usage is measured where that limit applies (a default level measures each user or client
//! id apart; a `user` level measures all that user's clients together). Without
//! authentication every client is the user `ANONYMOUS`, as in Kafka.
//!
//! Usage is a rate over `quota.window.num` windows of `quota.window.size.seconds`, as
//! Kafka's `Rate` measures it: the sum of the live windows over at least the span of all but
//! one window. A request that takes the rate over the limit is answered at once with
//! `throttle_time_ms` — the time the rate needs to fall back to the limit — and the broker
//! then reads nothing more from that connection for that long (KIP-219).

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use std::collections::BTreeMap;
use strom_metadata::records::{QuotaEntity, QuotaValue};

/// The user of every client: Strom has no authentication (Kafka's `KafkaPrincipal.ANONYMOUS`).
pub const ANONYMOUS_USER: &str = "ANONYMOUS";

/// Most usage sensors kept; past it, the least recently used goes (a client churning
/// client ids cannot grow the broker's memory without bound).
const SENSORS_MAX: usize = 100_000;

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QuotaKind {
    /// `producer_byte_rate`: bytes produced per second.
    Produce,
    /// `consumer_byte_rate`: bytes fetched per second.
    Fetch,
    /// `request_percentage`: percent of one request-handling thread's time.
    Request,
}

impl QuotaKind {
    pub fn key(self) -> &'static str {
        match self {
            QuotaKind::Produce => "producer_byte_rate",
            QuotaKind::Fetch => "consumer_byte_rate",
            QuotaKind::Request => "request_percentage",
        }
    }
}

/// The limits by entity, as the metadata image holds them.
pub type QuotaLimits = BTreeMap<QuotaEntity, BTreeMap<String, QuotaValue>>;

/// Where a client's usage is measured: the kind, and the user and client id tags of the
/// level its limit comes from ("" for a level that does not distinguish them).
type SensorKey = (QuotaKind, String, String);

/// Usage over the last windows.
#[derive(Debug, Default)]
struct Rate {
    /// (window start ms, sum recorded in it), oldest first.
    windows: VecDeque<(i64, f64)>,
    last_used_ms: i64,
}

impl Rate {
    fn record(&mut self, value: f64, now_ms: i64, config: &QuotaConfig) {
        self.purge(now_ms, config);
        match self.windows.back_mut() {
            Some((start, sum)) if now_ms < *start + config.window_ms => *sum += value,
            _ => self.windows.push_back((now_ms, value)),
        }
        self.last_used_ms = now_ms;
    }

    /// Drops windows that ended more than the whole span ago.
    fn purge(&mut self, now_ms: i64, config: &QuotaConfig) {
        let span_ms = config.window_ms * i64::from(config.windows);
        while self
            .windows
            .front()
            .is_some_and(|(start, _)| *start + span_ms <= now_ms)
        {
            self.windows.pop_front();
        }
    }

    /// (rate per second, the span in ms it is measured over) — Kafka's `Rate.measure`.
    fn measure(&self, now_ms: i64, config: &QuotaConfig) -> (f64, f64) {
        let total: f64 = self.windows.iter().map(|(_, sum)| sum).sum();
        let oldest = self.windows.front().map_or(now_ms, |(start, _)| *start);
        let mut elapsed_ms = (now_ms - oldest).max(0);
        let full_windows = elapsed_ms / config.window_ms;
        let min_full_windows = i64::from(config.windows) - 1;
        if full_windows < min_full_windows {
            elapsed_ms += (min_full_windows - full_windows) * config.window_ms;
        }
        let elapsed_ms = elapsed_ms.max(1) as f64;
        (total * 1000.0 / elapsed_ms, elapsed_ms)
    }
}

/// `quota.window.num` and `quota.window.size.seconds`.
#[derive(Debug, Clone, Copy)]
pub struct QuotaConfig {
    pub windows: u32,
    pub window_ms: i64,
}

/// Every client's measured usage on this broker.
#[derive(Debug)]
pub struct QuotaManager {
    config: QuotaConfig,
    sensors: Mutex<HashMap<SensorKey, Rate>>,
}

impl QuotaManager {
    pub fn new(config: QuotaConfig) -> QuotaManager {
        QuotaManager {
            config: QuotaConfig {
                windows: config.windows.max(2),
                window_ms: config.window_ms.max(1),
            },
            sensors: Mutex::new(HashMap::new()),
        }
    }

    /// Records `value` of `kind` for `client_id` and returns how long the client must wait
    /// (0 when within its limit, or without a limit: then nothing is recorded).
    pub fn record(
        &self,
        limits: &QuotaLimits,
        kind: QuotaKind,
        client_id: &str,
        value: f64,
        now_ms: i64,
    ) -> i32 {
        self.record_as(limits, kind, client_id, value, now_ms, Throttled::Keep)
    }

    /// As [`record`](Self::record), but a value that takes the client over its limit is
    /// taken back: the request is answered without it (a throttled fetch returns no
    /// records), as Kafka's `unrecordQuotaSensor` does.
    pub fn record_unless_throttled(
        &self,
        limits: &QuotaLimits,
        kind: QuotaKind,
        client_id: &str,
        value: f64,
        now_ms: i64,
    ) -> i32 {
        self.record_as(limits, kind, client_id, value, now_ms, Throttled::TakeBack)
    }

    fn record_as(
        &self,
        limits: &QuotaLimits,
        kind: QuotaKind,
        client_id: &str,
        value: f64,
        now_ms: i64,
        throttled: Throttled,
    ) -> i32 {
        let Some((limit, key)) = resolve(limits, kind, ANONYMOUS_USER, client_id) else {
            return 0;
        };
        let mut sensors = self.sensors.lock();
        if sensors.len() >= SENSORS_MAX && !sensors.contains_key(&key) {
            evict_least_recently_used(&mut sensors);
        }
        let rate = sensors.entry(key).or_default();
        rate.record(value, now_ms, &self.config);
        let (measured, span_ms) = rate.measure(now_ms, &self.config);
        let throttle_ms = throttle_time_ms(measured, limit, span_ms);
        if throttle_ms > 0 && throttled == Throttled::TakeBack {
            rate.record(-value, now_ms, &self.config);
        }
        throttle_ms
    }

    /// The most that can be recorded at once without certain throttling: the limit times
    /// the span of all but one window (Kafka's `maxValueInQuotaWindow`, which bounds a
    /// consumer's fetch size). `None` without a limit.
    pub fn max_value_in_window(
        &self,
        limits: &QuotaLimits,
        kind: QuotaKind,
        client_id: &str,
    ) -> Option<f64> {
        let (limit, _) = resolve(limits, kind, ANONYMOUS_USER, client_id)?;
        let span_s = f64::from(self.config.windows - 1) * (self.config.window_ms as f64 / 1000.0);
        Some(limit * span_s)
    }
}

/// What happens to a recorded value that takes its client over the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Throttled {
    Keep,
    TakeBack,
}

/// The time for a rate `measured` over `span_ms` to fall back to `limit`, as Kafka's
/// `QuotaUtils.throttleTime`: the excess as a share of the limit, times the span.
fn throttle_time_ms(measured: f64, limit: f64, span_ms: f64) -> i32 {
    if measured <= limit {
        return 0;
    }
    if limit <= 0.0 {
        return i32::MAX;
    }
    ((measured - limit) / limit * span_ms)
        .round()
        .min(f64::from(i32::MAX)) as i32
}

fn evict_least_recently_used(sensors: &mut HashMap<SensorKey, Rate>) {
    let oldest = sensors
        .iter()
        .min_by_key(|(_, rate)| rate.last_used_ms)
        .map(|(key, _)| key.clone());
    if let Some(key) = oldest {
        sensors.remove(&key);
    }
}

/// The limit of `kind` for this user and client id, and where its usage is measured: the
/// first of Kafka's eight levels that sets the key.
pub fn resolve(
    limits: &QuotaLimits,
    kind: QuotaKind,
    user: &str,
    client_id: &str,
) -> Option<(f64, SensorKey)> {
    if limits.is_empty() {
        return None;
    }
    let pair = |u: Option<&str>, c: Option<&str>| -> QuotaEntity {
        vec![
            ("client-id".to_string(), c.map(String::from)),
            ("user".to_string(), u.map(String::from)),
        ]
    };
    let user_only =
        |u: Option<&str>| -> QuotaEntity { vec![("user".to_string(), u.map(String::from))] };
    let client_only =
        |c: Option<&str>| -> QuotaEntity { vec![("client-id".to_string(), c.map(String::from))] };
    // (entity, measured per user, measured per client id)
    let levels: [(QuotaEntity, bool, bool); 8] = [
        (pair(Some(user), Some(client_id)), true, true),
        (pair(Some(user), None), true, true),
        (user_only(Some(user)), true, false),
        (pair(None, Some(client_id)), true, true),
        (pair(None, None), true, true),
        (user_only(None), true, false),
        (client_only(Some(client_id)), false, true),
        (client_only(None), false, true),
    ];
    levels
        .into_iter()
        .find_map(|(entity, per_user, per_client)| {
            let limit = limits.get(&entity)?.get(kind.key())?.get();
            let user_tag = if per_user { user } else { "" };
            let client_tag = if per_client { client_id } else { "" };
            Some((limit, (kind, user_tag.to_string(), client_tag.to_string())))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: QuotaConfig = QuotaConfig {
        windows: 11,
        window_ms: 1000,
    };

    /// (entity, key, value) of one quota.
    type Quota<'a> = (&'a [(&'a str, Option<&'a str>)], &'a str, f64);

    fn limits(entries: &[Quota<'_>]) -> QuotaLimits {
        let mut limits = QuotaLimits::new();
        for (entity, key, value) in entries {
            let mut entity: QuotaEntity = entity
                .iter()
                .map(|(t, n)| (t.to_string(), n.map(String::from)))
                .collect();
            entity.sort();
            limits
                .entry(entity)
                .or_default()
                .insert(key.to_string(), QuotaValue::new(*value));
        }
        limits
    }

    #[test]
    fn the_most_specific_level_wins_and_defaults_measure_each_client_apart() {
        let l = limits(&[
            (&[("client-id", None)], "producer_byte_rate", 100.0),
            (&[("client-id", Some("big"))], "producer_byte_rate", 5000.0),
            (&[("user", Some("ANONYMOUS"))], "consumer_byte_rate", 7.0),
        ]);
        let (limit, key) = resolve(&l, QuotaKind::Produce, "ANONYMOUS", "big").unwrap();
        assert_eq!((limit, key.2.as_str()), (5000.0, "big"));
        let (limit, key) = resolve(&l, QuotaKind::Produce, "ANONYMOUS", "other").unwrap();
        assert_eq!(
            (limit, key.1.as_str(), key.2.as_str()),
            (100.0, "", "other")
        );
        // A user-level limit is shared by all the user's clients.
        let (limit, key) = resolve(&l, QuotaKind::Fetch, "ANONYMOUS", "any").unwrap();
        assert_eq!(
            (limit, key.1.as_str(), key.2.as_str()),
            (7.0, "ANONYMOUS", "")
        );
        assert!(resolve(&l, QuotaKind::Request, "ANONYMOUS", "any").is_none());
        assert!(resolve(&QuotaLimits::new(), QuotaKind::Produce, "u", "c").is_none());
    }

    #[test]
    fn going_over_the_limit_throttles_for_the_time_the_rate_needs_to_recover() {
        let l = limits(&[(&[("client-id", Some("p"))], "producer_byte_rate", 1000.0)]);
        let quotas = QuotaManager::new(CONFIG);
        // 10 s of history at least: 10,000 bytes at once is exactly the limit.
        assert_eq!(quotas.record(&l, QuotaKind::Produce, "p", 10_000.0, 0), 0);
        // 10,000 more: the rate is 2,000/s over 10 s; back to 1,000/s takes 10 s more.
        assert_eq!(
            quotas.record(&l, QuotaKind::Produce, "p", 10_000.0, 0),
            10_000
        );
        // Unlimited clients are neither measured nor throttled.
        assert_eq!(quotas.record(&l, QuotaKind::Produce, "q", 1e12, 0), 0);
        // Once the windows have passed, the client is within its limit again.
        assert_eq!(quotas.record(&l, QuotaKind::Produce, "p", 1.0, 11_000), 0);
        // A taken-back value no longer counts.
        assert!(quotas.record_unless_throttled(&l, QuotaKind::Produce, "p", 30_000.0, 11_000) > 0);
        assert_eq!(quotas.record(&l, QuotaKind::Produce, "p", 1.0, 11_000), 0);
    }

    #[test]
    fn a_zero_limit_throttles_everything_and_rates_span_at_least_all_but_one_window() {
        let mut rate = Rate::default();
        rate.record(100.0, 5_000, &CONFIG);
        assert_eq!(rate.measure(5_000, &CONFIG), (10.0, 10_000.0));
        rate.record(100.0, 20_000, &CONFIG);
        // The first window has expired.
        assert_eq!(rate.measure(20_000, &CONFIG).0, 10.0);
        assert_eq!(throttle_time_ms(1.0, 0.0, 10.0), i32::MAX);
        assert_eq!(throttle_time_ms(1.0, 1.0, 10.0), 0);
    }
}
