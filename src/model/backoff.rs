//! Per-key retry timing: jittered exponential backoff from 500 ms doubling to about 2 min,
//! reset when the op's spec changes.

use std::time::Duration;

use tokio::time::Instant;

/// Runs of one op in a row that succeed without the host changing as planned and still go
/// unthrottled (a stacked mount takes a second); later ones wait as failures would.
pub const FREE_REPEATS: u32 = 2;

#[derive(Clone, Copy, Debug)]
pub struct BackoffPolicy {
    pub initial: Duration,
    pub max: Duration,
}

impl Default for BackoffPolicy {
    fn default() -> Self {
        BackoffPolicy {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(120),
        }
    }
}

/// The failure history of one key.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub failures: u32,
    /// Identifies the spec that failed; a different spec starts afresh.
    pub fingerprint: u64,
    pub not_before: Instant,
}

impl Backoff {
    /// A repeat record that holds its op back: it made no progress `FREE_REPEATS` times.
    pub fn slows_down(&self) -> bool {
        self.failures > FREE_REPEATS
    }
}

/// Whether an op may start now, given its key's last failure and its record of repeats: a
/// failed op waits out its backoff unless its spec changed; with `retry` off (`run --once`)
/// it is not tried again at all; an op that keeps repeating without effect waits its turn.
pub fn may_start(
    failure: Option<&Backoff>,
    repeat: Option<&Backoff>,
    fingerprint: u64,
    now: Instant,
    retry: bool,
) -> bool {
    let waiting = |b: &Backoff| b.fingerprint == fingerprint && now < b.not_before;
    match failure {
        Some(_) if !retry => false,
        Some(failed) if waiting(failed) => false,
        _ => !repeat.is_some_and(waiting),
    }
}

impl BackoffPolicy {
    /// The delay after the `failures`-th consecutive failure, with ±20 % jitter so that
    /// volumes failing together do not retry in lockstep.
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let base = self.initial.saturating_mul(1 << doublings).min(self.max);
        base.mul_f64(0.8 + 0.4 * fastrand::f64())
    }

    /// Books a success: the first two of the same op in a row run freely, later ones wait
    /// as failures would (`failures` counts the successes here).
    pub fn record_repeat(
        &self,
        previous: Option<&Backoff>,
        fingerprint: u64,
        now: Instant,
    ) -> Backoff {
        let count = match previous {
            Some(b) if b.fingerprint == fingerprint => b.failures + 1,
            _ => 1,
        };
        let wait = if count > FREE_REPEATS {
            self.delay(count - FREE_REPEATS)
        } else {
            Duration::ZERO
        };
        Backoff {
            failures: count,
            fingerprint,
            not_before: now + wait,
        }
    }

    pub fn record_failure(
        &self,
        previous: Option<&Backoff>,
        fingerprint: u64,
        now: Instant,
    ) -> Backoff {
        let failures = match previous {
            Some(b) if b.fingerprint == fingerprint => b.failures + 1,
            _ => 1,
        };
        Backoff {
            failures,
            fingerprint,
            not_before: now + self.delay(failures),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_half_a_second_up_to_about_two_minutes_with_jitter() {
        let policy = BackoffPolicy::default();
        for (failures, nominal_ms) in [
            (1, 500),
            (2, 1000),
            (3, 2000),
            (8, 64_000),
            (9, 120_000),
            (30, 120_000),
        ] {
            for _ in 0..50 {
                let ms = policy.delay(failures).as_millis() as f64;
                let nominal = nominal_ms as f64;
                assert!(
                    ms >= nominal * 0.8 - 1.0 && ms <= nominal * 1.2 + 1.0,
                    "{failures}: {ms} vs {nominal}"
                );
            }
        }
    }

    #[test]
    fn an_op_that_keeps_succeeding_without_effect_is_slowed_down() {
        let policy = BackoffPolicy::default();
        let now = Instant::now();
        let first = policy.record_repeat(None, 7, now);
        let second = policy.record_repeat(Some(&first), 7, now);
        assert_eq!(
            second.not_before, now,
            "a second run (e.g. a stacked mount) is free"
        );
        let third = policy.record_repeat(Some(&second), 7, now);
        assert!(third.not_before >= now + Duration::from_millis(400));
        assert_eq!(
            policy.record_repeat(Some(&third), 8, now).not_before,
            now,
            "another op starts afresh"
        );
    }

    #[test]
    fn an_op_may_start_unless_its_own_backoff_holds_it() {
        let now = Instant::now();
        let later = now + Duration::from_secs(5);
        let record = |fingerprint, not_before| Backoff {
            failures: 3,
            fingerprint,
            not_before,
        };
        let (waiting, over, other_spec) = (record(1, later), record(1, now), record(2, later));
        let cases = [
            ("nothing recorded", None, None, true, true),
            (
                "a failure still backing off",
                Some(&waiting),
                None,
                true,
                false,
            ),
            (
                "a failure whose wait is over",
                Some(&over),
                None,
                true,
                true,
            ),
            (
                "a failure of another spec",
                Some(&other_spec),
                None,
                true,
                true,
            ),
            (
                "any failure in a --once run",
                Some(&over),
                None,
                false,
                false,
            ),
            (
                "a repeat still slowed down",
                None,
                Some(&waiting),
                true,
                false,
            ),
            (
                "a repeat of another spec",
                None,
                Some(&other_spec),
                true,
                true,
            ),
            (
                "a repeat whose wait is over",
                None,
                Some(&over),
                false,
                true,
            ),
        ];
        for (what, failure, repeat, retry, want) in cases {
            assert_eq!(may_start(failure, repeat, 1, now, retry), want, "{what}");
        }
    }

    #[test]
    fn a_changed_spec_resets_the_failure_count() {
        let policy = BackoffPolicy::default();
        let now = Instant::now();
        let first = policy.record_failure(None, 1, now);
        let second = policy.record_failure(Some(&first), 1, now);
        assert_eq!(second.failures, 2);
        let changed = policy.record_failure(Some(&second), 2, now);
        assert_eq!(changed.failures, 1);
    }
}
