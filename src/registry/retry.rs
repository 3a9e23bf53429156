//! The one retry policy of registry work: how many tries, how long between them (backoff with
//! jitter, or the registry's `Retry-After`, in seconds or as an HTTP date), what is worth another
//! try, and the loop that runs them. A 401 answered with fresh credentials is not a try; the wait
//! between tries is the build's `Cancel::sleep`, so a cancel ends it at once.

use std::time::{Duration, SystemTime};

/// How often and how long to retry transient failures.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: u32,
    pub base_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured (a longer ask waits this long).
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

/// Which try this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// 0 for the first.
    pub number: u32,
    /// No try follows this one: its answer is the answer.
    pub last: bool,
}

/// What one try came to.
pub enum Try<T, E> {
    /// The answer (a success, or a failure another try would not change).
    Done(Result<T, E>),
    /// Worth another try; `answer` is what the caller gets if no try is left.
    Again {
        answer: Result<T, E>,
        /// What the registry's `Retry-After` asked for, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Credentials were renewed (a 401 answered): try again at once, not counted.
    Reauthed,
}

/// Registry requests retried since the process started (for the service's metrics).
static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many registry requests were retried since the process started.
pub fn retries() -> u64 {
    RETRIES.load(std::sync::atomic::Ordering::Relaxed)
}

impl RetryPolicy {
    /// Runs `one` until it is done, or its last try's answer once `tries` are used up. `sleep`
    /// waits between tries and may end the loop (a cancel).
    pub fn run<T, E>(
        &self,
        tries: u32,
        sleep: impl Fn(Duration) -> Result<(), E>,
        mut one: impl FnMut(Attempt) -> Try<T, E>,
    ) -> Result<T, E> {
        let tries = tries.max(1);
        let mut number = 0;
        loop {
            let attempt = Attempt {
                number,
                last: number + 1 >= tries,
            };
            match one(attempt) {
                Try::Done(answer) => return answer,
                Try::Again { answer, .. } if attempt.last => return answer,
                Try::Again { retry_after, .. } => {
                    RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    sleep(self.delay(number, retry_after))?;
                    number += 1;
                }
                Try::Reauthed => {}
            }
        }
    }

    /// The wait before retry `attempt` (0-based): the registry's ask, capped, or exponential
    /// backoff with ±25 % jitter so many clients do not retry in step.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(asked) = retry_after {
            return asked.min(self.max_retry_after);
        }
        let exp = self
            .base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max_delay);
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        exp.mul_f64(0.75 + (nanos % 1000) as f64 / 2000.0)
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a date already past is 0).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Whether an HTTP status may go away on a retry.
pub fn is_transient(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Tue, 01 Dec 2026 10:00:00 GMT").unwrap();
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 10:00:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Tue, 01 Dec 2026 09:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            fast().delay(0, Some(Duration::from_secs(600))),
            Duration::from_secs(5)
        );
    }

    #[test]
    fn backoff_grows_within_its_jitter_and_its_cap() {
        let p = fast();
        for (attempt, base) in [(0, 100), (1, 200), (2, 400), (9, 1000)] {
            let d = p.delay(attempt, None).as_millis() as u64;
            assert!(d >= base * 3 / 4 && d <= base * 5 / 4, "{attempt}: {d}");
        }
    }

    /// Tries until done; the last try's answer when they run out; a re-auth is not a try; the
    /// waits are the ones asked for.
    #[test]
    fn the_loop_counts_tries_but_not_reauths() {
        let waits = RefCell::new(Vec::new());
        let sleep = |d: Duration| {
            waits.borrow_mut().push(d);
            Ok::<(), String>(())
        };
        let mut calls = 0;
        let answer = fast().run(3, sleep, |a| {
            calls += 1;
            match calls {
                1 => Try::Reauthed,
                _ => Try::Again {
                    answer: Err(format!("try {}", a.number)),
                    retry_after: Some(Duration::from_secs(1)),
                },
            }
        });
        assert_eq!(answer, Err::<(), _>("try 2".to_string()));
        assert_eq!(calls, 4);
        assert_eq!(*waits.borrow(), [Duration::from_secs(1); 2]);

        let mut calls = 0;
        let done = fast().run(
            3,
            |_| Ok::<(), String>(()),
            |_| {
                calls += 1;
                if calls < 2 {
                    Try::Again {
                        answer: Err("busy".into()),
                        retry_after: None,
                    }
                } else {
                    Try::Done(Ok(calls))
                }
            },
        );
        assert_eq!(done, Ok(2));
    }

    #[test]
    fn a_failed_wait_ends_the_loop() {
        let mut calls = 0;
        let r: Result<(), String> = fast().run(
            5,
            |_| Err("cancelled".into()),
            |_| {
                calls += 1;
                Try::Again {
                    answer: Err("busy".into()),
                    retry_after: None,
                }
            },
        );
        assert_eq!(r, Err("cancelled".into()));
        assert_eq!(calls, 1);
    }
}
