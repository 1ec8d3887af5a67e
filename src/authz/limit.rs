//! Slows down clients that keep presenting bad tokens, without touching good clients:
//! each client address has a budget of failures per window; past it, every further
//! failure from that address is delayed and answered 429 until the window ends.
//! Successful authentications are never delayed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bad-token limiter settings.
#[derive(Debug, Clone, Copy)]
pub struct LimitConfig {
    pub max_failures: u32,
    pub window: Duration,
    /// How long a failure over the budget is held before it is answered.
    pub penalty: Duration,
}

impl Default for LimitConfig {
    fn default() -> Self {
        Self {
            max_failures: 20,
            window: Duration::from_secs(60),
            penalty: Duration::from_secs(1),
        }
    }
}

/// Failures per client address in the current window.
#[derive(Debug)]
pub struct FailureLimiter {
    config: LimitConfig,
    clients: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

/// The limiter's verdict on a failed authentication.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within budget: answer 401 at once.
    Allowed,
    /// Over budget: delay, then answer 429; retry after this many seconds.
    Limited { retry_after: u64 },
}

const MAX_TRACKED: usize = 100_000;

impl FailureLimiter {
    pub fn new(config: LimitConfig) -> Self {
        Self {
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> LimitConfig {
        self.config
    }

    /// Records one failed authentication from `ip`.
    pub fn failure(&self, ip: IpAddr) -> Verdict {
        let now = Instant::now();
        let mut clients = match self.clients.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if clients.len() >= MAX_TRACKED {
            let window = self.config.window;
            clients.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let entry = clients.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= self.config.window {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
        if entry.1 > self.config.max_failures {
            let left = self
                .config
                .window
                .saturating_sub(now.duration_since(entry.0));
            Verdict::Limited {
                retry_after: left.as_secs().max(1),
            }
        } else {
            Verdict::Allowed
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_address() {
        let l = FailureLimiter::new(LimitConfig {
            max_failures: 2,
            window: Duration::from_secs(60),
            penalty: Duration::ZERO,
        });
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(l.failure(a), Verdict::Allowed);
        assert_eq!(l.failure(a), Verdict::Allowed);
        assert!(matches!(l.failure(a), Verdict::Limited { .. }));
        assert_eq!(l.failure(b), Verdict::Allowed);
    }
}
