//! The bounded work queue in front of the workers: at most `workers`
//! segmentations run at once, at most `queue` requests wait for one, and a
//! request past that is refused at once (503 with `Retry-After`), so memory
//! never grows with the load.
//!
//! The queue also knows how long a segmentation takes (a moving average of
//! the last ones), so a request that would wait past the server's timeout
//! is refused at admission with a 503 and an honest `Retry-After`, instead
//! of waiting in line for a 504.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The share of the timeout that the expected wait and run may fill: the
/// rest is room for segmentations slower than the recent average (a busy
/// machine), so that admitted requests do not end in 504s.
const HEADROOM: f64 = 0.8;

/// The queue; see the [module docs](self).
#[derive(Debug)]
pub struct WorkQueue {
    workers: Arc<Semaphore>,
    /// Requests admitted and not yet finished (waiting or running).
    admitted: Arc<AtomicUsize>,
    /// The moving average of a segmentation's time, in µs (0: none yet).
    service_us: Arc<AtomicU64>,
    capacity: usize,
    worker_count: usize,
    timeout: Duration,
}

/// A request's place in the queue: held from admission to the answer.
#[derive(Debug)]
pub struct Ticket {
    admitted: Arc<AtomicUsize>,
    workers: Arc<Semaphore>,
    service_us: Arc<AtomicU64>,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// Every worker is busy and the queue is full.
    Full {
        /// The wait a new request would have, when it is known.
        expected_wait: Option<Duration>,
    },
    /// The request would wait in line past the server's timeout.
    WouldTimeOut {
        /// How long it would wait for a worker.
        expected_wait: Duration,
    },
}

impl Refusal {
    /// Seconds for `Retry-After`: about when a place frees up (at least 1).
    pub fn retry_after_s(&self) -> u32 {
        let wait = match self {
            Refusal::Full { expected_wait } => expected_wait.unwrap_or(Duration::ZERO),
            Refusal::WouldTimeOut { expected_wait } => *expected_wait,
        };
        (wait.as_secs_f64().ceil() as u32).clamp(1, 3600)
    }

    /// The message of the 503 answer.
    pub fn message(&self, timeout: Duration) -> String {
        match self {
            Refusal::Full { .. } => {
                "the server is busy: the work queue is full; retry after a moment".to_string()
            }
            Refusal::WouldTimeOut { expected_wait } => format!(
                "the server is busy: this request would wait about {:.0} s for a worker, \
                 past the server's --timeout ({:.0} s); retry later, or run the server \
                 with more --workers or a longer --timeout",
                expected_wait.as_secs_f64(),
                timeout.as_secs_f64()
            ),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A worker, held while a segmentation runs; its time feeds the average.
#[derive(Debug)]
pub struct Worker {
    _permit: OwnedSemaphorePermit,
    started: Instant,
    service_us: Arc<AtomicU64>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        let took = self.started.elapsed().as_micros().min(u64::MAX as u128) as u64;
        // An exponential moving average over about the last 8 runs.
        let _ = self
            .service_us
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |old| {
                Some(if old == 0 {
                    took.max(1)
                } else {
                    ((old as f64) * 0.875 + (took as f64) * 0.125).max(1.0) as u64
                })
            });
    }
}

impl Ticket {
    /// Wait for a worker; it is held while the work runs (even past a
    /// timeout, so running work stays bounded by the workers).
    pub async fn worker(&self) -> Worker {
        let permit = self
            .workers
            .clone()
            .acquire_owned()
            .await
            .expect("invariant: the semaphore is never closed");
        Worker {
            _permit: permit,
            started: Instant::now(),
            service_us: self.service_us.clone(),
        }
    }
}

impl WorkQueue {
    /// `workers` at once (at least 1), `queue` more waiting; a request
    /// that would wait past `timeout` for a worker is refused.
    pub fn new(workers: usize, queue: usize, timeout: Duration) -> WorkQueue {
        let workers = workers.max(1);
        WorkQueue {
            workers: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(AtomicUsize::new(0)),
            service_us: Arc::new(AtomicU64::new(0)),
            capacity: workers + queue,
            worker_count: workers,
            timeout,
        }
    }

    /// The average time of a segmentation, once one has run.
    pub fn service_time(&self) -> Option<Duration> {
        match self.service_us.load(Ordering::SeqCst) {
            0 => None,
            us => Some(Duration::from_micros(us)),
        }
    }

    /// How long a request admitted behind `ahead` others waits for a
    /// worker, once the service time is known.
    fn wait_behind(&self, ahead: usize) -> Option<Duration> {
        let rounds = ahead / self.worker_count;
        self.service_time().map(|s| s * rounds as u32)
    }

    /// A place in the queue, or why not.
    pub fn admit(&self) -> Result<Ticket, Refusal> {
        let mut now = self.admitted.load(Ordering::SeqCst);
        loop {
            if now >= self.capacity {
                return Err(Refusal::Full {
                    expected_wait: self.wait_behind(now),
                });
            }
            // A request that would not wait (a worker is free) is always
            // admitted: refusing it could never end, as nothing would run
            // to bring the average down.
            if let Some(wait) = self.wait_behind(now).filter(|w| !w.is_zero()) {
                // Waiting plus its own run must fit in the timeout, with
                // room for runs slower than the average.
                let own = self.service_time().unwrap_or_default();
                if (wait + own).as_secs_f64() > self.timeout.as_secs_f64() * HEADROOM {
                    return Err(Refusal::WouldTimeOut {
                        expected_wait: wait,
                    });
                }
            }
            match self
                .admitted
                .compare_exchange(now, now + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Ok(Ticket {
                        admitted: self.admitted.clone(),
                        workers: self.workers.clone(),
                        service_us: self.service_us.clone(),
                    })
                }
                Err(seen) => now = seen,
            }
        }
    }

    /// Requests waiting for a worker.
    pub fn waiting(&self) -> usize {
        let running = self.worker_count - self.workers.available_permits();
        self.admitted.load(Ordering::SeqCst).saturating_sub(running)
    }

    /// Segmentations running.
    pub fn running(&self) -> usize {
        self.worker_count - self.workers.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn admission_stops_at_workers_plus_queue_and_frees_on_drop() {
        let q = WorkQueue::new(1, 2, LONG);
        let a = q.admit().unwrap();
        let b = q.admit().unwrap();
        let c = q.admit().unwrap();
        assert!(
            matches!(q.admit(), Err(Refusal::Full { .. })),
            "1 worker + 2 waiting is full"
        );
        let permit = a.worker().await;
        assert_eq!((q.running(), q.waiting()), (1, 2));
        drop(c);
        assert!(q.admit().is_ok());
        drop(permit);
        drop(a);
        assert_eq!(q.running(), 0);
        let _p = b.worker().await;
        assert_eq!(q.running(), 1);
    }

    #[tokio::test]
    async fn a_request_that_would_wait_past_the_timeout_is_refused_at_once() {
        let q = WorkQueue::new(2, 64, Duration::from_millis(300));
        assert!(q.service_time().is_none());
        {
            let t = q.admit().unwrap();
            let w = t.worker().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            drop(w);
        }
        let s = q.service_time().unwrap();
        assert!(s >= Duration::from_millis(20), "{s:?}");
        // Pin the average so the arithmetic below does not depend on timing.
        q.service_us.store(100_000, Ordering::SeqCst);
        // Two run at once; with 2 ahead a new one waits one round (100 ms)
        // and runs 100 ms: it fits in 80% of 300 ms; with 4 ahead it does not.
        let held: Vec<Ticket> = (0..2).map(|_| q.admit().unwrap()).collect();
        let third = q.admit().unwrap();
        let fourth = q.admit().unwrap();
        match q.admit() {
            Err(r @ Refusal::WouldTimeOut { expected_wait }) => {
                assert!(
                    expected_wait >= Duration::from_millis(200),
                    "{expected_wait:?}"
                );
                assert_eq!(r.retry_after_s(), 1);
                assert!(r.message(Duration::from_millis(300)).contains("--workers"));
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        drop((held, third, fourth));
        assert!(q.admit().is_ok(), "an empty queue admits again");
        // Slower than the timeout on average: a request that would not wait
        // is still admitted (else nothing would ever run again).
        q.service_us.store(1_000_000, Ordering::SeqCst);
        let one = q.admit().expect("a free worker admits");
        let two = q.admit().expect("two workers");
        assert!(matches!(q.admit(), Err(Refusal::WouldTimeOut { .. })));
        drop((one, two));
    }
}
