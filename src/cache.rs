//! A small bounded cache with a time-to-live, for what every request looks up: verified
//! tokens and consent state. Correctness rests on three rules:
//!
//! - whoever changes what an entry describes forgets it right after the change commits,
//!   on this node; other nodes forget it when they read the change feed (`changes.rs`);
//! - a value read from the store before a change may not be cached after it: `insert`
//!   takes the generation seen before the read, and every `forget` moves the generation
//!   on, so a racing reader's stale value is dropped instead of cached;
//! - while the change feed cannot be read, the cache is switched off (`set_enabled`), so
//!   a change made elsewhere can never be missed: every lookup goes to the store.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Inner<K, V> {
    map: HashMap<K, (V, Instant)>,
    generation: u64,
}

pub struct Cache<K, V> {
    name: &'static str,
    inner: Mutex<Inner<K, V>>,
    ttl: Duration,
    max: usize,
    enabled: AtomicBool,
}

impl<K, V> std::fmt::Debug for Cache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("ttl", &self.ttl)
            .field("max", &self.max)
            .field("enabled", &self.enabled.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash, V: Clone> Cache<K, V> {
    /// A cache of at most `max` entries, each kept at most `ttl`. It starts switched off
    /// until the change feed has been read once.
    /// `name` labels its hit and miss counts in the metrics.
    pub fn new(name: &'static str, max: usize, ttl: Duration) -> Self {
        Self {
            name,
            inner: Mutex::new(Inner {
                map: HashMap::new(),
                generation: 0,
            }),
            ttl,
            max,
            enabled: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        // A panic while holding this lock leaves a map that is still a valid cache.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, key: &K) -> Option<V> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let found = {
            let inner = self.lock();
            match inner.map.get(key) {
                Some((v, at)) if at.elapsed() < self.ttl => Some(v.clone()),
                _ => None,
            }
        };
        crate::metrics::cache_lookup(self.name, found.is_some());
        found
    }

    /// The generation to pass to `insert`; take it before reading the store.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// Caches `value`, unless something was forgotten since `generation` was taken.
    pub fn insert(&self, generation: u64, key: K, value: V) {
        if self.max == 0 || !self.enabled.load(Ordering::Acquire) {
            return;
        }
        let mut inner = self.lock();
        if inner.generation != generation {
            return;
        }
        if inner.map.len() >= self.max {
            let ttl = self.ttl;
            inner.map.retain(|_, (_, at)| at.elapsed() < ttl);
            if inner.map.len() >= self.max {
                inner.map.clear();
            }
        }
        inner.map.insert(key, (value, Instant::now()));
    }

    /// Forgets one entry.
    pub fn remove(&self, key: &K) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.map.remove(key);
    }

    /// Forgets every entry `stale` picks (a scan: for rare changes).
    pub fn forget(&self, stale: impl Fn(&K, &V) -> bool) {
        let mut inner = self.lock();
        inner.generation += 1;
        inner.map.retain(|k, (v, _)| !stale(k, v));
    }

    pub fn clear(&self) {
        self.forget(|_, _| true);
    }

    /// Switches the cache on or off; switching off forgets everything.
    pub fn set_enabled(&self, on: bool) {
        if !on {
            self.enabled.store(false, Ordering::Release);
            self.clear();
        } else {
            self.enabled.store(true, Ordering::Release);
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Acquire)
    }

    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn off_until_enabled_and_after_disabled() {
        let c: Cache<&str, i32> = Cache::new("test", 10, Duration::from_secs(60));
        c.insert(c.generation(), "a", 1);
        assert_eq!(c.get(&"a"), None);
        c.set_enabled(true);
        c.insert(c.generation(), "a", 1);
        assert_eq!(c.get(&"a"), Some(1));
        c.set_enabled(false);
        assert_eq!(c.get(&"a"), None);
        c.set_enabled(true);
        assert_eq!(c.get(&"a"), None, "switching off forgets");
    }

    #[test]
    fn a_read_older_than_a_forget_is_not_cached() {
        let c: Cache<&str, i32> = Cache::new("test", 10, Duration::from_secs(60));
        c.set_enabled(true);
        let seen = c.generation();
        // A change commits and is forgotten while the reader was reading the old value.
        c.forget(|k, _| *k == "a");
        c.insert(seen, "a", 1);
        assert_eq!(c.get(&"a"), None);
    }

    #[test]
    fn bounded_and_expiring() {
        let c: Cache<u32, u32> = Cache::new("test", 4, Duration::from_secs(60));
        c.set_enabled(true);
        for i in 0..100 {
            c.insert(c.generation(), i, i);
            assert!(c.len() <= 4);
        }
        let expired: Cache<u32, u32> = Cache::new("test", 4, Duration::ZERO);
        expired.set_enabled(true);
        expired.insert(expired.generation(), 1, 1);
        assert_eq!(expired.get(&1), None);
    }
}
