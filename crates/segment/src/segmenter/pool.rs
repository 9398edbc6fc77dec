//! What a [`Segmenter`](super::Segmenter) shares between threads: pools of loaded models, and plans built once per key.
//!
//! An ONNX session needs `&mut` to run, so each call takes a model of its
//! own from a [`Pool`] and gives it back when done; a pool loads another
//! only when every model it holds is in use. A [`Cache`] builds each value
//! once, however many threads ask for it at the same time.

use std::collections::HashMap;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::Result;

/// A mutex's contents, even after a thread panicked while holding it (the
/// values here are whole at every unlock: idle models, built plans).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Loads one more model for a [`Pool`].
type Load<T> = Box<dyn Fn() -> Result<T> + Send + Sync>;

/// Loaded models of one kind (one encoder bundle, one CLIP export), each
/// used by one call at a time.
pub(crate) struct Pool<T> {
    idle: Mutex<Vec<T>>,
    load: Load<T>,
    loaded: Mutex<usize>,
}

impl<T> Pool<T> {
    /// A pool that starts with `first` and loads more with `load`.
    pub(crate) fn new(first: T, load: Load<T>) -> Pool<T> {
        Pool {
            idle: Mutex::new(vec![first]),
            load,
            loaded: Mutex::new(1),
        }
    }

    /// An idle model, or a newly loaded one when all are in use. It goes
    /// back to the pool when the lease is dropped.
    pub(crate) fn take(self: &Arc<Self>) -> Result<Lease<T>> {
        let idle = lock(&self.idle).pop();
        let item = match idle {
            Some(item) => item,
            None => {
                let item = (self.load)()?;
                *lock(&self.loaded) += 1;
                item
            }
        };
        Ok(Lease {
            pool: self.clone(),
            item: Some(item),
        })
    }

    /// How many models this pool has loaded.
    pub(crate) fn loaded(&self) -> usize {
        *lock(&self.loaded)
    }
}

/// A model taken from a [`Pool`], returned to it on drop.
pub(crate) struct Lease<T> {
    pool: Arc<Pool<T>>,
    item: Option<T>,
}

impl<T> Deref for Lease<T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.item.as_ref().expect("invariant: held until drop")
    }
}

impl<T> DerefMut for Lease<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.item.as_mut().expect("invariant: held until drop")
    }
}

impl<T> Drop for Lease<T> {
    fn drop(&mut self) {
        if let Some(item) = self.item.take() {
            lock(&self.pool.idle).push(item);
        }
    }
}

/// One key's value in a [`Cache`]: `None` until built.
type Slot<V> = Arc<Mutex<Option<Arc<V>>>>;

/// Values built once per key and shared. A value that fails to build is
/// not kept: the next call tries again. With a capacity, the keys used
/// longest ago are forgotten past it (a caller still holding a value keeps
/// it), so a long-lived process that sees many class sets stays bounded.
pub(crate) struct Cache<K, V> {
    slots: Mutex<HashMap<K, Slot<V>>>,
    /// Keys, least recently used first, when bounded.
    order: Mutex<std::collections::VecDeque<K>>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V> Cache<K, V> {
    /// An empty cache that keeps every key.
    pub(crate) fn new() -> Cache<K, V> {
        Cache::bounded(usize::MAX)
    }

    /// An empty cache that keeps at most `capacity` keys (at least 1).
    pub(crate) fn bounded(capacity: usize) -> Cache<K, V> {
        Cache {
            slots: Mutex::new(HashMap::new()),
            order: Mutex::new(std::collections::VecDeque::new()),
            capacity: capacity.max(1),
        }
    }

    /// How many keys it holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.slots).len()
    }

    /// Mark `key` as just used, forgetting the least recently used keys
    /// past the capacity.
    fn touch(&self, key: &K) {
        if self.capacity == usize::MAX {
            return;
        }
        let mut order = lock(&self.order);
        if let Some(i) = order.iter().position(|k| k == key) {
            order.remove(i);
        }
        order.push_back(key.clone());
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                lock(&self.slots).remove(&old);
            }
        }
    }

    /// The value of `key`, built by `build` if no call built it before.
    /// Calls for the same key wait for the one building it; calls for other
    /// keys do not.
    pub(crate) fn get_or_build(&self, key: K, build: impl FnOnce() -> Result<V>) -> Result<Arc<V>> {
        self.touch(&key);
        let slot = lock(&self.slots).entry(key).or_default().clone();
        let mut value = lock(&slot);
        if let Some(v) = &*value {
            return Ok(v.clone());
        }
        let v = Arc::new(build()?);
        *value = Some(v.clone());
        Ok(v)
    }

    /// The value of `key`, if it was built.
    pub(crate) fn get(&self, key: &K) -> Option<Arc<V>> {
        let slot = lock(&self.slots).get(key)?.clone();
        let value = lock(&slot);
        value.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn a_bounded_cache_forgets_the_least_recently_used_keys() {
        let c: Cache<u32, u32> = Cache::bounded(2);
        let built = AtomicUsize::new(0);
        let get = |k: u32| {
            *c.get_or_build(k, || {
                built.fetch_add(1, Ordering::SeqCst);
                Ok(k * 10)
            })
            .unwrap()
        };
        assert_eq!((get(1), get(2), get(1)), (10, 20, 10));
        assert_eq!(built.load(Ordering::SeqCst), 2);
        let held = c.get_or_build(3, || Ok(30)).unwrap(); // forgets 2, the least recent
        assert_eq!(c.len(), 2);
        assert!(c.get(&2).is_none() && c.get(&1).is_some());
        assert_eq!(get(2), 20);
        assert_eq!(built.load(Ordering::SeqCst), 3);
        assert_eq!(*held, 30, "a value held by a caller outlives its slot");
    }

    #[test]
    fn a_pool_loads_another_model_only_when_all_are_in_use() {
        let made = Arc::new(AtomicUsize::new(1));
        let counter = made.clone();
        let pool = Arc::new(Pool::new(
            0usize,
            Box::new(move || Ok(counter.fetch_add(1, Ordering::SeqCst))),
        ));
        {
            let a = pool.take().unwrap();
            assert_eq!(*a, 0);
        }
        // returned, so taken again without loading
        let a = pool.take().unwrap();
        assert_eq!((*a, pool.loaded()), (0, 1));
        let mut b = pool.take().unwrap();
        *b += 10;
        assert_eq!((*b, pool.loaded()), (11, 2));
        drop(a);
        drop(b);
        let (x, y) = (pool.take().unwrap(), pool.take().unwrap());
        assert_eq!(pool.loaded(), 2, "both idle models were reused");
        let mut seen = vec![*x, *y];
        seen.sort();
        assert_eq!(seen, vec![0, 11]);
    }

    #[test]
    fn a_cache_builds_each_key_once_and_retries_failures() {
        let cache: Cache<&str, usize> = Cache::new();
        let builds = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    let v = cache
                        .get_or_build("a", || {
                            builds.fetch_add(1, Ordering::SeqCst);
                            std::thread::sleep(std::time::Duration::from_millis(20));
                            Ok(7)
                        })
                        .unwrap();
                    assert_eq!(*v, 7);
                });
            }
        });
        assert_eq!(builds.load(Ordering::SeqCst), 1);
        assert!(cache
            .get_or_build("b", || Err(crate::Error::Invalid("no".into())))
            .is_err());
        assert!(cache.get(&"b").is_none());
        assert_eq!(*cache.get_or_build("b", || Ok(2)).unwrap(), 2);
        assert_eq!(cache.get(&"a").as_deref(), Some(&7));
    }
}
