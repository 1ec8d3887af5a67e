//! The time as the vault reads it: the system's, or, in tests, a clock they move by hand,
//! so that an expiry can be tested by moving time past it instead of sleeping and racing
//! a loaded machine.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, Clone, Default)]
pub struct Clock(Option<Arc<AtomicI64>>);

impl Clock {
    /// The system clock.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that reads `start_ms` until it is moved.
    pub fn manual(start_ms: i64) -> Self {
        Self(Some(Arc::new(AtomicI64::new(start_ms))))
    }

    /// Milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            None => crate::store::now_ms(),
            Some(t) => t.load(Ordering::SeqCst),
        }
    }

    /// Today's date (UTC).
    pub fn today(&self) -> time::Date {
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.now_ms()) * 1_000_000)
            .map_or_else(|_| time::OffsetDateTime::now_utc().date(), |t| t.date())
    }

    /// Moves a manual clock on by `by`; the system clock cannot be moved (false).
    pub fn advance(&self, by: Duration) -> bool {
        match &self.0 {
            None => false,
            Some(t) => {
                t.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_moved() {
        let c = Clock::manual(1_000);
        assert_eq!(c.now_ms(), 1_000);
        assert!(c.advance(Duration::from_secs(2)));
        assert_eq!(c.clone().now_ms(), 3_000);
        assert!(!Clock::system().advance(Duration::from_secs(1)));
        assert!(Clock::system().now_ms() > 1_700_000_000_000);
        // 2024-02-29T23:59:59.999Z, then a millisecond later.
        let leap = Clock::manual(1_709_251_199_999);
        assert_eq!(leap.today(), time::macros::date!(2024 - 02 - 29));
        leap.advance(Duration::from_millis(1));
        assert_eq!(leap.today(), time::macros::date!(2024 - 03 - 01));
    }
}
