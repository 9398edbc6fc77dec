//! The bounded work queue in front of the workers: at most `workers`
//! segmentations run at once, at most `queue` requests wait for one, and a
//! request past that is refused at once (503 with `Retry-After`), so memory
//! never grows with the load.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The queue; see the [module docs](self).
#[derive(Debug)]
pub struct WorkQueue {
    workers: Arc<Semaphore>,
    /// Requests admitted and not yet finished (waiting or running).
    admitted: Arc<AtomicUsize>,
    capacity: usize,
    worker_count: usize,
}

/// A request's place in the queue: held from admission to the answer.
#[derive(Debug)]
pub struct Ticket {
    admitted: Arc<AtomicUsize>,
    workers: Arc<Semaphore>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.admitted.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Ticket {
    /// Wait for a worker; the permit is held while the work runs (even
    /// past a timeout, so running work stays bounded by the workers).
    pub async fn worker(&self) -> OwnedSemaphorePermit {
        self.workers
            .clone()
            .acquire_owned()
            .await
            .expect("invariant: the semaphore is never closed")
    }
}

impl WorkQueue {
    /// `workers` at once (at least 1), `queue` more waiting.
    pub fn new(workers: usize, queue: usize) -> WorkQueue {
        let workers = workers.max(1);
        WorkQueue {
            workers: Arc::new(Semaphore::new(workers)),
            admitted: Arc::new(AtomicUsize::new(0)),
            capacity: workers + queue,
            worker_count: workers,
        }
    }

    /// A place in the queue, or `None` when it is full.
    pub fn admit(&self) -> Option<Ticket> {
        let mut now = self.admitted.load(Ordering::SeqCst);
        loop {
            if now >= self.capacity {
                return None;
            }
            match self
                .admitted
                .compare_exchange(now, now + 1, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    return Some(Ticket {
                        admitted: self.admitted.clone(),
                        workers: self.workers.clone(),
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

    #[tokio::test]
    async fn admission_stops_at_workers_plus_queue_and_frees_on_drop() {
        let q = WorkQueue::new(1, 2);
        let a = q.admit().unwrap();
        let b = q.admit().unwrap();
        let c = q.admit().unwrap();
        assert!(q.admit().is_none(), "1 worker + 2 waiting is full");
        let permit = a.worker().await;
        assert_eq!((q.running(), q.waiting()), (1, 2));
        drop(c);
        assert!(q.admit().is_some());
        drop(permit);
        drop(a);
        assert_eq!(q.running(), 0);
        let _p = b.worker().await;
        assert_eq!(q.running(), 1);
    }
}
