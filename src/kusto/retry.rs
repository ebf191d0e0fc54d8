//! When and how long to wait before sending a request again.

use std::time::Duration;

use backon::ExponentialBuilder;
use reqwest::header::HeaderMap;

use super::error::{ErrorKind, KustoError};

/// Exponential backoff with jitter and a cap, for transient failures only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Wait before the first retry; doubles on each retry.
    pub base_delay: Duration,
    /// Cap of the doubling (jitter may add up to as much again).
    pub max_delay: Duration,
    /// Tries in all, the first included; 1 means never retry.
    pub max_attempts: usize,
    /// A `Retry-After` longer than this is not waited out in-process: the error goes back to
    /// the caller, whose step can be rescheduled instead of holding a function instance.
    pub max_retry_after: Duration,
    /// No new try starts after this much time since the first: a function invocation has a
    /// deadline, and a step that keeps failing is better rescheduled than held.
    pub max_elapsed: Duration,
    /// The jitter's generator seed; `None`: random. Each retry sequence starts from it, so a
    /// seeded run (the fault explorer's) waits the same every time.
    pub jitter_seed: Option<u64>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_attempts: 5,
            max_retry_after: Duration::from_secs(60),
            max_elapsed: Duration::from_secs(120),
            jitter_seed: None,
        }
    }
}

impl RetryPolicy {
    pub fn never() -> Self {
        RetryPolicy { max_attempts: 1, ..RetryPolicy::default() }
    }

    pub(crate) fn backoff(&self) -> ExponentialBuilder {
        let b = ExponentialBuilder::default()
            .with_min_delay(self.base_delay)
            .with_max_delay(self.max_delay)
            .with_max_times(self.max_attempts.saturating_sub(1))
            .with_jitter();
        match self.jitter_seed {
            Some(seed) => b.with_jitter_seed(seed),
            None => b,
        }
    }

    /// Whether to send again in-process. A request that may have run already is only
    /// repeated when repeating it is harmless. Errors reported inside a 200 are not repeated
    /// here even when Kusto calls them transient (limits, partial failures): the query ran,
    /// and running it again at once would most likely meet the same limit.
    pub fn should_retry(error: &KustoError, repeatable: bool) -> bool {
        error.kind != ErrorKind::Query
            && error.is_transient()
            && (repeatable || !error.may_have_executed())
    }

    /// The wait before the next try: the backoff's, or longer if the service asked for it;
    /// `None` stops retrying.
    pub fn next_delay(&self, error: &KustoError, backoff: Option<Duration>) -> Option<Duration> {
        let backoff = backoff?;
        match error.retry_after {
            Some(asked) if asked > self.max_retry_after => None,
            Some(asked) => Some(asked.max(backoff.min(self.max_delay))),
            None => Some(backoff),
        }
    }

    /// As [`RetryPolicy::next_delay`], and `None` when the wait would end past `max_elapsed`
    /// since the first try.
    pub fn next_delay_within(
        &self,
        error: &KustoError,
        backoff: Option<Duration>,
        elapsed: Duration,
    ) -> Option<Duration> {
        self.next_delay(error, backoff)
            .filter(|wait| elapsed + *wait <= self.max_elapsed)
    }
}

/// Reads `x-ms-retry-after-ms`, `retry-after-ms` or `Retry-After` (seconds or HTTP date).
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    for name in ["x-ms-retry-after-ms", "retry-after-ms"] {
        if let Some(ms) = text(name).and_then(|t| t.parse::<u64>().ok()) {
            return Some(Duration::from_millis(ms));
        }
    }
    let value = text("retry-after")?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let wait = when - time::OffsetDateTime::now_utc();
    Some(Duration::try_from(wait).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_honoured_but_bounded() {
        let policy = RetryPolicy::default();
        let mut err = KustoError::new(ErrorKind::Throttled, "slow down");
        err.retry_after = Some(Duration::from_secs(5));
        assert_eq!(policy.next_delay(&err, Some(Duration::from_millis(10))), Some(Duration::from_secs(5)));
        err.retry_after = Some(Duration::from_secs(600));
        assert_eq!(policy.next_delay(&err, Some(Duration::from_millis(10))), None);
        assert_eq!(policy.next_delay(&err, None), None);
        err.retry_after = Some(Duration::from_secs(5));
        assert_eq!(
            policy.next_delay_within(&err, Some(Duration::ZERO), Duration::from_secs(100)),
            Some(Duration::from_secs(5))
        );
        assert_eq!(policy.next_delay_within(&err, Some(Duration::ZERO), Duration::from_secs(118)), None);
    }

    #[test]
    fn only_harmless_repeats() {
        let unavailable = KustoError::new(ErrorKind::ServiceUnavailable, "x");
        let throttled = KustoError::new(ErrorKind::Throttled, "x");
        assert!(RetryPolicy::should_retry(&unavailable, true));
        assert!(!RetryPolicy::should_retry(&unavailable, false));
        assert!(RetryPolicy::should_retry(&throttled, false));
    }

    #[test]
    fn header_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_secs(7)));
        h.insert("x-ms-retry-after-ms", "250".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(Duration::from_millis(250)));
    }
}
