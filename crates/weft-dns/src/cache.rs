//! The bounded answer cache of forwarded questions: positive answers for their smallest TTL,
//! negative ones (NXDOMAIN, NODATA) for their SOA's minimum (RFC 2308). Sharded, so the
//! threads answering queries rarely wait for one another; no lock is held across an await.

use std::collections::hash_map::{DefaultHasher, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

use crate::wire::Stored;

const SHARDS: usize = 16;

/// What an answer is cached under: the question.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// Lowercase, without the trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
}

struct Item {
    stored: Arc<Stored>,
    inserted: Instant,
    expires: Instant,
}

/// The cache. At most `capacity` answers; when full, expired answers go first, then those
/// closest to expiry.
pub struct Cache {
    shards: Vec<Mutex<HashMap<Key, Item>>>,
    per_shard: usize,
}

/// A cached answer and how many whole seconds it has aged.
pub struct Hit {
    pub stored: Arc<Stored>,
    pub elapsed: u32,
}

impl Cache {
    /// A cache of at most `capacity` answers (0 disables it).
    pub fn new(capacity: usize) -> Cache {
        let per_shard = capacity.div_ceil(SHARDS);
        Cache { shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(), per_shard }
    }

    fn shard(&self, key: &Key) -> MutexGuard<'_, HashMap<Key, Item>> {
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        self.shards[h.finish() as usize % SHARDS].lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, key: &Key) -> Option<Hit> {
        let now = Instant::now();
        let mut shard = self.shard(key);
        let item = shard.get(key)?;
        if now >= item.expires {
            shard.remove(key);
            return None;
        }
        let elapsed = now.duration_since(item.inserted).as_secs().min(u32::MAX as u64) as u32;
        Some(Hit { stored: item.stored.clone(), elapsed })
    }

    pub fn insert(&self, key: Key, stored: Arc<Stored>) {
        if self.per_shard == 0 || stored.ttl == 0 {
            return;
        }
        let now = Instant::now();
        let expires = now + Duration::from_secs(stored.ttl as u64);
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, i| i.expires > now);
            if shard.len() >= self.per_shard {
                let soonest = shard.iter().min_by_key(|(_, i)| i.expires).map(|(k, _)| k.clone());
                if let Some(k) = soonest {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(key, Item { stored, inserted: now, expires });
    }

    /// Answers held (some may have expired and not been collected yet).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().map(|m| m.len()).unwrap_or(0)).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn capacity(&self) -> usize {
        self.per_shard * SHARDS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> Key {
        Key { name: name.to_string(), qtype: 1, qclass: 1 }
    }

    fn stored(ttl: u32) -> Arc<Stored> {
        Arc::new(Stored { wire: vec![0; 12], ttl_offsets: vec![], ttl, negative: false })
    }

    #[tokio::test(start_paused = true)]
    async fn answers_expire_with_their_ttl_and_age() {
        let c = Cache::new(100);
        c.insert(key("a"), stored(10));
        c.insert(key("zero"), stored(0));
        assert!(c.get(&key("zero")).is_none(), "TTL 0 is not cached");
        tokio::time::advance(Duration::from_millis(4500)).await;
        let hit = c.get(&key("a")).expect("cached");
        assert_eq!(hit.elapsed, 4);
        tokio::time::advance(Duration::from_millis(5500)).await;
        assert!(c.get(&key("a")).is_none(), "expired after 10 s");
        assert_eq!(c.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_drops_expired_then_soonest_to_expire() {
        let c = Cache::new(16);
        assert_eq!(c.capacity(), 16);
        // Fill one shard's worth many times over; the cache never holds more than its capacity.
        for i in 0..1000 {
            c.insert(key(&format!("n{i}")), stored(100 + i));
        }
        assert!(c.len() <= 16, "{}", c.len());
        // The longest-lived survive.
        assert!(c.get(&key("n999")).is_some());
        let disabled = Cache::new(0);
        disabled.insert(key("a"), stored(10));
        assert!(disabled.is_empty());
    }
}
