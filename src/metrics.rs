//! Prometheus metrics: a fixed set of atomic counters, rendered in the text format on `/metrics`.
//!
//! Every label value is known in advance (outcomes, failure reasons), so plain atomics indexed by enum do
//! the job of a metrics library without hashing label sets on the delivery path.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::auth::Failure;
use crate::proxy::Outcome;

/// Upper bounds of the app latency histogram, in seconds.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

pub struct Metrics {
    requests: [AtomicU64; Outcome::ALL.len()],
    auth_failures: [AtomicU64; Failure::ALL.len()],
    app_responses: [AtomicU64; 5],
    upstream_buckets: [AtomicU64; BUCKETS.len()],
    upstream_count: AtomicU64,
    upstream_sum_micros: AtomicU64,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    jwks_ok: AtomicU64,
    jwks_failed: AtomicU64,
    dedup_errors: AtomicU64,
    in_flight: AtomicI64,
}

/// The result label of reloads and JWKS refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Result {
    Success,
    Failure,
}

impl Metrics {
    pub const fn new() -> Self {
        Self {
            requests: [const { AtomicU64::new(0) }; Outcome::ALL.len()],
            auth_failures: [const { AtomicU64::new(0) }; Failure::ALL.len()],
            app_responses: [const { AtomicU64::new(0) }; 5],
            upstream_buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            upstream_count: AtomicU64::new(0),
            upstream_sum_micros: AtomicU64::new(0),
            reloads_ok: AtomicU64::new(0),
            reloads_failed: AtomicU64::new(0),
            jwks_ok: AtomicU64::new(0),
            jwks_failed: AtomicU64::new(0),
            dedup_errors: AtomicU64::new(0),
            in_flight: AtomicI64::new(0),
        }
    }

    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome as usize].fetch_add(1, Relaxed);
    }

    pub fn auth_failure(&self, f: Failure) {
        self.auth_failures[f as usize].fetch_add(1, Relaxed);
    }

    /// The app answered `status` after `elapsed`.
    pub fn app_response(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.app_responses[class].fetch_add(1, Relaxed);
        self.observe_upstream(elapsed);
    }

    /// Time spent waiting for the app, answered or not.
    pub fn observe_upstream(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.upstream_buckets[i].fetch_add(1, Relaxed);
        }
        self.upstream_count.fetch_add(1, Relaxed);
        self.upstream_sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    pub fn reload(&self, r: Result) {
        match r {
            Result::Success => &self.reloads_ok,
            Result::Failure => &self.reloads_failed,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn jwks_refresh(&self, r: Result) {
        match r {
            Result::Success => &self.jwks_ok,
            Result::Failure => &self.jwks_failed,
        }
        .fetch_add(1, Relaxed);
    }

    pub fn dedup_error(&self) {
        self.dedup_errors.fetch_add(1, Relaxed);
    }

    /// Counts a delivery in progress until the guard drops; graceful shutdown waits for zero.
    pub fn in_flight(&'static self) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self)
    }

    pub fn in_flight_now(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    /// The Prometheus text exposition.
    pub fn render(&self, dedup_entries: u64) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        header(
            w,
            "pps_sidecar_requests_total",
            "counter",
            "Requests by outcome.",
        );
        for o in Outcome::ALL {
            let v = self.requests[o as usize].load(Relaxed);
            let _ = writeln!(
                w,
                "pps_sidecar_requests_total{{outcome=\"{}\"}} {v}",
                o.as_str()
            );
        }
        header(
            w,
            "pps_sidecar_auth_failures_total",
            "counter",
            "Deliveries whose authentication failed, by reason (in shadow mode too).",
        );
        for f in Failure::ALL {
            let v = self.auth_failures[f as usize].load(Relaxed);
            let _ = writeln!(
                w,
                "pps_sidecar_auth_failures_total{{reason=\"{}\"}} {v}",
                f.reason()
            );
        }
        header(
            w,
            "pps_sidecar_app_responses_total",
            "counter",
            "Answers of the app by status class.",
        );
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx"].iter().enumerate() {
            let v = self.app_responses[i].load(Relaxed);
            let _ = writeln!(
                w,
                "pps_sidecar_app_responses_total{{class=\"{class}\"}} {v}"
            );
        }
        header(
            w,
            "pps_sidecar_upstream_duration_seconds",
            "histogram",
            "Time from sending a delivery to the app to its response header.",
        );
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += self.upstream_buckets[i].load(Relaxed);
            let _ = writeln!(
                w,
                "pps_sidecar_upstream_duration_seconds_bucket{{le=\"{b}\"}} {cumulative}"
            );
        }
        let count = self.upstream_count.load(Relaxed);
        let _ = writeln!(
            w,
            "pps_sidecar_upstream_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let sum = self.upstream_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(w, "pps_sidecar_upstream_duration_seconds_sum {sum}");
        let _ = writeln!(w, "pps_sidecar_upstream_duration_seconds_count {count}");
        header(
            w,
            "pps_sidecar_dedup_entries",
            "gauge",
            "Webhook ids remembered (done or in flight).",
        );
        let _ = writeln!(w, "pps_sidecar_dedup_entries {dedup_entries}");
        header(
            w,
            "pps_sidecar_dedup_store_errors_total",
            "counter",
            "Dedup store operations that failed and fell back to the local cache.",
        );
        let _ = writeln!(
            w,
            "pps_sidecar_dedup_store_errors_total {}",
            self.dedup_errors.load(Relaxed)
        );
        header(
            w,
            "pps_sidecar_in_flight_requests",
            "gauge",
            "Requests being handled now.",
        );
        let _ = writeln!(w, "pps_sidecar_in_flight_requests {}", self.in_flight_now());
        for (name, help, ok, failed) in [
            (
                "pps_sidecar_config_reloads_total",
                "Configuration reloads by result.",
                &self.reloads_ok,
                &self.reloads_failed,
            ),
            (
                "pps_sidecar_jwks_refresh_total",
                "JWKS fetches by result.",
                &self.jwks_ok,
                &self.jwks_failed,
            ),
        ] {
            header(w, name, "counter", help);
            let _ = writeln!(w, "{name}{{result=\"success\"}} {}", ok.load(Relaxed));
            let _ = writeln!(w, "{name}{{result=\"failure\"}} {}", failed.load(Relaxed));
        }
        header(
            w,
            "pps_sidecar_build_info",
            "gauge",
            "Version of the running binary.",
        );
        let _ = writeln!(
            w,
            "pps_sidecar_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        out
    }
}

fn header(w: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub struct InFlight(&'static Metrics);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_counts_everything() {
        let m = Metrics::new();
        m.app_response(200, Duration::from_micros(500));
        m.app_response(500, Duration::from_millis(30));
        m.observe_upstream(Duration::from_secs(60));
        let text = m.render(7);
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_bucket{le=\"0.05\"} 2"));
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_bucket{le=\"+Inf\"} 3"));
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_count 3"));
        assert!(text.contains("pps_sidecar_app_responses_total{class=\"5xx\"} 1"));
        assert!(text.contains("pps_sidecar_dedup_entries 7"));
    }
}
