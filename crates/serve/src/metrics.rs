//! `GET /metrics` in the Prometheus text format: requests by route and
//! status, a latency histogram, queue depth, images segmented and encoder
//! seconds.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Latency bucket bounds, in seconds.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
    images: AtomicU64,
    /// Encoder time, in microseconds.
    encoder_us: AtomicU64,
}

impl Metrics {
    /// One answered request.
    pub fn request(&self, route: &str, status: u16, took: Duration) {
        *lock(&self.requests)
            .entry((route.to_string(), status))
            .or_default() += 1;
        let mut lat = lock(&self.latency);
        let h = lat.entry(route.to_string()).or_default();
        let s = took.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                h.counts[i] += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    /// One image segmented, whose encoder passes took `encoder`.
    pub fn segmented(&self, encoder: Duration) {
        self.images.fetch_add(1, Ordering::Relaxed);
        self.encoder_us
            .fetch_add(encoder.as_micros() as u64, Ordering::Relaxed);
    }

    /// The text exposition, with the queue's gauges.
    pub fn render(&self, waiting: usize, running: usize) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# HELP ovdiff_requests_total Requests answered, by route and status."
        );
        let _ = writeln!(o, "# TYPE ovdiff_requests_total counter");
        for ((route, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                o,
                "ovdiff_requests_total{{route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        let _ = writeln!(
            o,
            "# HELP ovdiff_request_seconds Request latency, by route."
        );
        let _ = writeln!(o, "# TYPE ovdiff_request_seconds histogram");
        for (route, h) in lock(&self.latency).iter() {
            let r = escape(route);
            for (i, b) in BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "ovdiff_request_seconds_bucket{{route=\"{r}\",le=\"{b}\"}} {}",
                    h.counts[i]
                );
            }
            let _ = writeln!(
                o,
                "ovdiff_request_seconds_bucket{{route=\"{r}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(o, "ovdiff_request_seconds_sum{{route=\"{r}\"}} {}", h.sum);
            let _ = writeln!(
                o,
                "ovdiff_request_seconds_count{{route=\"{r}\"}} {}",
                h.count
            );
        }
        let _ = writeln!(
            o,
            "# HELP ovdiff_queue_depth Requests waiting for a worker."
        );
        let _ = writeln!(o, "# TYPE ovdiff_queue_depth gauge");
        let _ = writeln!(o, "ovdiff_queue_depth {waiting}");
        let _ = writeln!(o, "# HELP ovdiff_workers_busy Segmentations running.");
        let _ = writeln!(o, "# TYPE ovdiff_workers_busy gauge");
        let _ = writeln!(o, "ovdiff_workers_busy {running}");
        let _ = writeln!(o, "# HELP ovdiff_images_segmented_total Images segmented.");
        let _ = writeln!(o, "# TYPE ovdiff_images_segmented_total counter");
        let _ = writeln!(
            o,
            "ovdiff_images_segmented_total {}",
            self.images.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "# HELP ovdiff_encoder_seconds_total Time in encoder passes."
        );
        let _ = writeln!(o, "# TYPE ovdiff_encoder_seconds_total counter");
        let _ = writeln!(
            o,
            "ovdiff_encoder_seconds_total {}",
            self.encoder_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        o
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A label value, escaped as the text format asks.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_and_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request("/v1/segment", 200, Duration::from_millis(30));
        m.request("/v1/segment", 200, Duration::from_millis(300));
        m.request("/v1/segment", 503, Duration::from_millis(1));
        m.segmented(Duration::from_millis(1500));
        let t = m.render(3, 1);
        assert!(t.contains("ovdiff_requests_total{route=\"/v1/segment\",status=\"200\"} 2"));
        assert!(t.contains("ovdiff_requests_total{route=\"/v1/segment\",status=\"503\"} 1"));
        assert!(t.contains("ovdiff_request_seconds_bucket{route=\"/v1/segment\",le=\"0.05\"} 2"));
        assert!(t.contains("ovdiff_request_seconds_bucket{route=\"/v1/segment\",le=\"+Inf\"} 3"));
        assert!(t.contains("ovdiff_queue_depth 3"));
        assert!(t.contains("ovdiff_images_segmented_total 1"));
        assert!(t.contains("ovdiff_encoder_seconds_total 1.5"));
    }
}
