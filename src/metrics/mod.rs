//! Prometheus metrics: a fixed set of atomic counters, rendered in the text format on `/metrics`.
//!
//! Every label value is known in advance (outcomes, failure reasons), so plain atomics indexed by enum do
//! the job of a metrics library without hashing label sets on the delivery path.

mod proc;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crate::outcome::{Closed, Dropped, Outcome, Replayed, SpoolDropped, labelled};

/// Upper bounds of the latency histograms, in seconds. They reach past `upstream.read_timeout_ms` (30 s
/// by default), so that an app answering just before its timeout lands in a bucket of its own instead of
/// vanishing into `+Inf` with the ones that timed out.
const BUCKETS: [f64; 16] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0, 60.0,
];

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

pub struct Metrics {
    requests: [AtomicU64; Outcome::ALL.len()],
    app_responses: [AtomicU64; 5],
    upstream: Histogram,
    request: Histogram,
    reloads: [AtomicU64; Result::ALL.len()],
    /// 1 while the configuration file in force is the one on disk, 0 while a newer one stands refused.
    last_reload_ok: AtomicU64,
    jwks: [AtomicU64; Result::ALL.len()],
    dedup_errors: AtomicU64,
    dedup_body_mismatches: AtomicU64,
    replays: [AtomicU64; Result::ALL.len()],
    commits_dropped: AtomicU64,
    commits_pending: AtomicI64,
    in_flight: AtomicI64,
    connections_closed: [AtomicU64; Closed::ALL.len()],
    open_connections: AtomicI64,
    spool: SpoolMetrics,
    trace_spans_dropped: [AtomicU64; Dropped::ALL.len()],
    trace_spans_exported: AtomicU64,
}

/// The dead-letter spool's series: present, at 0, when the spool is off, so that an alert on them always
/// names a series that exists.
struct SpoolMetrics {
    entries: AtomicU64,
    bytes: AtomicU64,
    written: AtomicU64,
    write_failures: AtomicU64,
    dropped: [AtomicU64; SpoolDropped::ALL.len()],
    replayed: [AtomicU64; Replayed::ALL.len()],
}

labelled! {
    /// The result label of reloads, JWKS refreshes and commit replays.
    pub enum Result {
        Success => "success",
        Failure => "failure",
    }
}

impl Metrics {
    pub const fn new() -> Self {
        Self {
            requests: [const { AtomicU64::new(0) }; Outcome::ALL.len()],
            app_responses: [const { AtomicU64::new(0) }; 5],
            upstream: Histogram::new(),
            request: Histogram::new(),
            reloads: [const { AtomicU64::new(0) }; Result::ALL.len()],
            last_reload_ok: AtomicU64::new(1),
            jwks: [const { AtomicU64::new(0) }; Result::ALL.len()],
            dedup_errors: AtomicU64::new(0),
            dedup_body_mismatches: AtomicU64::new(0),
            replays: [const { AtomicU64::new(0) }; Result::ALL.len()],
            commits_dropped: AtomicU64::new(0),
            commits_pending: AtomicI64::new(0),
            in_flight: AtomicI64::new(0),
            connections_closed: [const { AtomicU64::new(0) }; Closed::ALL.len()],
            open_connections: AtomicI64::new(0),
            spool: SpoolMetrics {
                entries: AtomicU64::new(0),
                bytes: AtomicU64::new(0),
                written: AtomicU64::new(0),
                write_failures: AtomicU64::new(0),
                dropped: [const { AtomicU64::new(0) }; SpoolDropped::ALL.len()],
                replayed: [const { AtomicU64::new(0) }; Replayed::ALL.len()],
            },
            trace_spans_dropped: [const { AtomicU64::new(0) }; Dropped::ALL.len()],
            trace_spans_exported: AtomicU64::new(0),
        }
    }

    /// Spans not exported (`crate::trace::export`), and why.
    pub fn trace_spans_dropped(&self, why: Dropped, n: u64) {
        self.trace_spans_dropped[why.index()].fetch_add(n, Relaxed);
    }

    pub fn trace_spans_dropped_now(&self, why: Dropped) -> u64 {
        load(&self.trace_spans_dropped[why.index()])
    }

    /// Spans the collector took.
    pub fn trace_spans_exported(&self, n: u64) {
        self.trace_spans_exported.fetch_add(n, Relaxed);
    }

    /// What the spool holds now, as last counted by the sidecar.
    pub fn spool_gauges(&self, entries: u64, bytes: u64) {
        self.spool.entries.store(entries, Relaxed);
        self.spool.bytes.store(bytes, Relaxed);
    }

    pub fn spool_written(&self) {
        self.spool.written.fetch_add(1, Relaxed);
    }

    pub fn spool_write_failed(&self) {
        self.spool.write_failures.fetch_add(1, Relaxed);
    }

    pub fn spool_dropped(&self, why: SpoolDropped) {
        self.spool.dropped[why.index()].fetch_add(1, Relaxed);
    }

    pub fn spool_replayed(&self, result: Replayed) {
        self.spool.replayed[result.index()].fetch_add(1, Relaxed);
    }

    pub fn request(&self, outcome: Outcome) {
        self.requests[outcome.index()].fetch_add(1, Relaxed);
    }

    /// The app answered `status` after `elapsed`.
    pub fn app_response(&self, status: u16, elapsed: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        self.app_responses[class].fetch_add(1, Relaxed);
        self.observe_upstream(elapsed);
    }

    /// Time spent waiting for the app, answered or not.
    pub fn observe_upstream(&self, elapsed: Duration) {
        self.upstream.observe(elapsed);
    }

    /// A whole request, from its head arriving to its answer written, whatever the outcome.
    pub fn observe_request(&self, elapsed: Duration) {
        self.request.observe(elapsed);
    }

    pub fn reload(&self, r: Result) {
        self.reloads[r.index()].fetch_add(1, Relaxed);
        self.reload_standing(r);
    }

    /// The outcome of the last reload attempt, counted or not (a refused file is retried every second
    /// and counted once): `pps_sidecar_config_last_reload_success` stays 0 while it stands refused.
    pub fn reload_standing(&self, r: Result) {
        self.last_reload_ok
            .store(u64::from(r == Result::Success), Relaxed);
    }

    pub fn jwks_refresh(&self, r: Result) {
        self.jwks[r.index()].fetch_add(1, Relaxed);
    }

    pub fn dedup_error(&self) {
        self.dedup_errors.fetch_add(1, Relaxed);
    }

    /// A duplicate of a done event came with another body than the acknowledged one.
    pub fn dedup_body_mismatch(&self) {
        self.dedup_body_mismatches.fetch_add(1, Relaxed);
    }

    pub fn dedup_body_mismatches(&self) -> u64 {
        load(&self.dedup_body_mismatches)
    }

    /// A commit that failed to reach Redis was written there later (`Success`), or failed again.
    pub fn commit_replay(&self, r: Result) {
        self.replays[r.index()].fetch_add(1, Relaxed);
    }

    /// A commit waiting for Redis was given up: the queue was full, or its TTL passed.
    pub fn commit_dropped(&self) {
        self.commits_dropped.fetch_add(1, Relaxed);
    }

    /// Commits waiting for Redis to come back, now.
    pub fn commits_pending(&self, n: usize) {
        self.commits_pending.store(n as i64, Relaxed);
    }

    /// Counts a delivery in progress until the guard drops; graceful shutdown waits for zero.
    pub fn in_flight(&'static self) -> InFlightRequest {
        self.in_flight.fetch_add(1, Relaxed);
        InFlightRequest(self)
    }

    pub fn in_flight_now(&self) -> i64 {
        self.in_flight.load(Relaxed)
    }

    pub fn connection_closed(&self, why: Closed) {
        self.connections_closed[why.index()].fetch_add(1, Relaxed);
    }

    /// Counts an open client connection until the guard drops.
    pub fn connection_open(&'static self) -> OpenConnection {
        self.open_connections.fetch_add(1, Relaxed);
        OpenConnection(self)
    }

    /// The Prometheus text exposition. `dedup_entries` and `buffered_bytes` are read from their owners.
    pub fn render(&self, dedup_entries: u64, buffered_bytes: u64) -> String {
        let mut out = String::with_capacity(4096);
        let w = &mut out;
        self.render_counters(w);
        self.upstream.render(
            w,
            (
                "pps_sidecar_upstream_duration_seconds",
                "histogram",
                "Time from sending a delivery to the app to its response header.",
            ),
        );
        self.request.render(
            w,
            (
                "pps_sidecar_request_duration_seconds",
                "histogram",
                "Time from a request's head arriving to its answer, whatever the outcome.",
            ),
        );

        self.render_gauges(w, dedup_entries, buffered_bytes);
        family(
            w,
            (
                "pps_sidecar_build_info",
                "gauge",
                "Version of the running binary.",
            ),
            "version",
            [(env!("CARGO_PKG_VERSION"), 1)],
        );
        self.spool.render(w);
        proc::render(w);
        out
    }

    /// The counters, by label.
    fn render_counters(&self, w: &mut String) {
        family(
            w,
            (
                "pps_sidecar_requests_total",
                "counter",
                "Requests by outcome.",
            ),
            "outcome",
            Outcome::ALL.map(|o| (o.label(), load(&self.requests[o.index()]))),
        );
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"];
        family(
            w,
            (
                "pps_sidecar_app_responses_total",
                "counter",
                "Answers of the app by status class.",
            ),
            "class",
            std::array::from_fn::<_, 5, _>(|i| (classes[i], load(&self.app_responses[i]))),
        );

        family(
            w,
            (
                "pps_sidecar_connections_closed_total",
                "counter",
                "Client connections closed without an answer, by reason.",
            ),
            "reason",
            Closed::ALL.map(|c| (c.label(), load(&self.connections_closed[c.index()]))),
        );
        family(
            w,
            (
                "pps_sidecar_trace_spans_dropped_total",
                "counter",
                "Spans not exported ([tracing]), by reason: the queue was full, or the collector did not take them.",
            ),
            "reason",
            Dropped::ALL.map(|d| (d.label(), load(&self.trace_spans_dropped[d.index()]))),
        );
        for (meta, counts) in [
            (
                (
                    "pps_sidecar_config_reloads_total",
                    "counter",
                    "Configuration reloads by result.",
                ),
                &self.reloads,
            ),
            (
                (
                    "pps_sidecar_jwks_refresh_total",
                    "counter",
                    "JWKS fetches by result.",
                ),
                &self.jwks,
            ),
            (
                (
                    "pps_sidecar_dedup_commit_replays_total",
                    "counter",
                    "Replays of commits that failed to reach Redis, by result.",
                ),
                &self.replays,
            ),
        ] {
            family(
                w,
                meta,
                "result",
                Result::ALL.map(|r| (r.label(), load(&counts[r.index()]))),
            );
        }
    }

    /// The dedup store's gauges and counters without a label.
    fn render_dedup(&self, w: &mut String, dedup_entries: u64) {
        for (meta, value) in [
            (
                (
                    "pps_sidecar_dedup_entries",
                    "gauge",
                    "Webhook ids remembered by this replica (done or in flight).",
                ),
                dedup_entries as i64,
            ),
            (
                (
                    "pps_sidecar_dedup_store_errors_total",
                    "counter",
                    "Dedup store operations that failed and fell back to the local cache.",
                ),
                load(&self.dedup_errors) as i64,
            ),
            (
                (
                    "pps_sidecar_dedup_body_mismatch_total",
                    "counter",
                    "Duplicates of an acknowledged event whose body differs from the acknowledged one (a replay or a sender bug).",
                ),
                load(&self.dedup_body_mismatches) as i64,
            ),
            (
                (
                    "pps_sidecar_dedup_commits_pending",
                    "gauge",
                    "Acknowledged events not yet recorded in Redis (it was unreachable); replayed when it is back.",
                ),
                self.commits_pending.load(Relaxed),
            ),
            (
                (
                    "pps_sidecar_dedup_commits_dropped_total",
                    "counter",
                    "Acknowledged events never recorded in Redis: the replay queue was full, or their TTL passed.",
                ),
                load(&self.commits_dropped) as i64,
            ),
        ] {
            header(w, meta);
            let _ = writeln!(w, "{} {value}", meta.0);
        }
    }

    /// The other gauges, and the counters without a label.
    fn render_gauges(&self, w: &mut String, dedup_entries: u64, buffered_bytes: u64) {
        self.render_dedup(w, dedup_entries);
        for (meta, value) in [
            (
                (
                    "pps_sidecar_config_last_reload_success",
                    "gauge",
                    "1 if the last configuration reload succeeded (or none was tried), 0 while a changed file stands refused and the previous configuration serves.",
                ),
                load(&self.last_reload_ok) as i64,
            ),
            (
                (
                    "pps_sidecar_in_flight_requests",
                    "gauge",
                    "Requests being handled now.",
                ),
                self.in_flight_now(),
            ),
            (
                (
                    "pps_sidecar_buffered_bytes",
                    "gauge",
                    "Bytes of request bodies held in memory now (at most server.max_buffered_bytes).",
                ),
                buffered_bytes as i64,
            ),
            (
                (
                    "pps_sidecar_trace_spans_exported_total",
                    "counter",
                    "Spans the OTLP collector took ([tracing]).",
                ),
                load(&self.trace_spans_exported) as i64,
            ),
            (
                (
                    "pps_sidecar_open_connections",
                    "gauge",
                    "Client connections open on the webhook listener.",
                ),
                self.open_connections.load(Relaxed),
            ),
        ] {
            header(w, meta);
            let _ = writeln!(w, "{} {value}", meta.0);
        }
    }
}

impl SpoolMetrics {
    fn render(&self, w: &mut String) {
        for (meta, value) in [
            (
                (
                    "pps_sidecar_spool_entries",
                    "gauge",
                    "Deliveries the app refused, kept in the spool for replay.",
                ),
                &self.entries,
            ),
            (
                (
                    "pps_sidecar_spool_bytes",
                    "gauge",
                    "Bytes the spool's entries take on disk (at most spool.max_bytes).",
                ),
                &self.bytes,
            ),
            (
                (
                    "pps_sidecar_spool_written_total",
                    "counter",
                    "Deliveries written to the spool.",
                ),
                &self.written,
            ),
            (
                (
                    "pps_sidecar_spool_write_failures_total",
                    "counter",
                    "Deliveries the spool should have kept but could not write.",
                ),
                &self.write_failures,
            ),
        ] {
            header(w, meta);
            let _ = writeln!(w, "{} {}", meta.0, load(value));
        }
        family(
            w,
            (
                "pps_sidecar_spool_dropped_total",
                "counter",
                "Spool entries dropped unreplayed, by reason (spool.max_bytes, spool.max_age_hours).",
            ),
            "reason",
            SpoolDropped::ALL.map(|d| (d.label(), load(&self.dropped[d.index()]))),
        );
        family(
            w,
            (
                "pps_sidecar_spool_replayed_total",
                "counter",
                "Spool entries replayed, by result.",
            ),
            "result",
            Replayed::ALL.map(|r| (r.label(), load(&self.replayed[r.index()]))),
        );
    }
}

/// A latency histogram over [`BUCKETS`]; each observation lands in one bucket, summed up when rendered.
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Self {
        Self {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len()],
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Relaxed);
    }

    fn render(&self, w: &mut String, meta: Family) {
        let name = meta.0;
        header(w, meta);
        let mut cumulative = 0;
        for (i, b) in BUCKETS.iter().enumerate() {
            cumulative += load(&self.buckets[i]);
            let _ = writeln!(w, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = load(&self.count);
        let sum = load(&self.sum_micros) as f64 / 1e6;
        let _ = writeln!(w, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(w, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Name, type and help of a metric family.
pub(crate) type Family = (&'static str, &'static str, &'static str);

fn load(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

fn family<const N: usize>(w: &mut String, meta: Family, label: &str, values: [(&str, u64); N]) {
    header(w, meta);
    for (v, n) in values {
        let _ = writeln!(w, "{}{{{label}=\"{v}\"}} {n}", meta.0);
    }
}

/// The `# HELP` and `# TYPE` lines of a family (also for the series `crate::auth::series` renders).
pub(crate) fn header(w: &mut String, (name, kind, help): Family) {
    let _ = writeln!(w, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub struct InFlightRequest(&'static Metrics);

pub struct OpenConnection(&'static Metrics);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Relaxed);
    }
}

impl Drop for InFlightRequest {
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
        m.observe_upstream(Duration::from_secs(29));
        m.observe_upstream(Duration::from_secs(90));
        let text = m.render(7, 0);
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_bucket{le=\"0.001\"} 1"));
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_bucket{le=\"0.05\"} 2"));
        // An answer just inside the 30 s read timeout has a bucket; only the 90 s one is past them all.
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_bucket{le=\"15\"} 2"));
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_bucket{le=\"30\"} 3"));
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_bucket{le=\"60\"} 3"));
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_bucket{le=\"+Inf\"} 4"));
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_count 4"));
        assert!(text.contains("pps_sidecar_app_responses_total{class=\"5xx\"} 1"));
        assert!(text.contains("pps_sidecar_dedup_entries 7"));
    }

    #[test]
    fn whole_requests_have_their_own_histogram() {
        let m = Metrics::new();
        m.observe_request(Duration::from_millis(3));
        m.observe_upstream(Duration::from_millis(2));
        m.observe_upstream(Duration::from_millis(2));
        let text = m.render(0, 0);
        assert!(text.contains("# TYPE pps_sidecar_request_duration_seconds histogram"));
        assert!(text.contains("pps_sidecar_request_duration_seconds_bucket{le=\"0.0025\"} 0"));
        assert!(text.contains("pps_sidecar_request_duration_seconds_bucket{le=\"0.005\"} 1"));
        assert!(text.contains("pps_sidecar_request_duration_seconds_count 1"));
        assert!(text.contains("pps_sidecar_upstream_duration_seconds_count 2"));
    }

    #[test]
    fn the_last_reload_gauge_follows_the_last_attempt_not_the_counters() {
        let m = Metrics::new();
        assert!(
            m.render(0, 0)
                .contains("\npps_sidecar_config_last_reload_success 1\n")
        );
        m.reload(Result::Failure);
        assert!(
            m.render(0, 0)
                .contains("\npps_sidecar_config_last_reload_success 0\n")
        );
        // A retry that fails again is not counted, and the gauge stays 0.
        m.reload_standing(Result::Failure);
        let text = m.render(0, 0);
        assert!(text.contains("pps_sidecar_config_reloads_total{result=\"failure\"} 1"));
        assert!(text.contains("\npps_sidecar_config_last_reload_success 0\n"));
        m.reload(Result::Success);
        assert!(
            m.render(0, 0)
                .contains("\npps_sidecar_config_last_reload_success 1\n")
        );
    }

    /// Every family the page names has a sample, and once each recorder has been called, every sample
    /// of the sidecar's own families has moved: a counter added but not rendered, or rendered from the
    /// wrong field, fails here.
    #[test]
    fn every_counter_and_gauge_is_rendered_and_moves() {
        let m: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let before = m.render(0, 0);
        for o in Outcome::ALL {
            m.request(o);
        }
        for c in Closed::ALL {
            m.connection_closed(c);
        }
        for d in SpoolDropped::ALL {
            m.spool_dropped(d);
        }
        for r in Replayed::ALL {
            m.spool_replayed(r);
        }
        for d in Dropped::ALL {
            m.trace_spans_dropped(d, 1);
        }
        m.trace_spans_exported(1);
        for r in Result::ALL {
            m.reload(r);
            m.jwks_refresh(r);
            m.commit_replay(r);
        }
        m.reload(Result::Success);
        for status in [100, 200, 300, 400, 500] {
            m.app_response(status, Duration::from_millis(1));
        }
        m.observe_request(Duration::from_millis(1));
        m.spool_gauges(1, 1);
        m.spool_written();
        m.spool_write_failed();
        m.dedup_error();
        m.dedup_body_mismatch();
        m.commit_dropped();
        m.commits_pending(1);
        let _busy = m.in_flight();
        let _open = m.connection_open();
        let after = m.render(1, 1);

        let mut families = 0;
        for line in before.lines().filter(|l| l.starts_with("# TYPE ")) {
            let name = line.split(' ').nth(2).unwrap();
            let samples = |text: &str| -> Vec<String> {
                text.lines()
                    .filter(|l| !l.starts_with('#'))
                    .filter(|l| {
                        l.split(['{', ' ']).next() == Some(name)
                            || (l.starts_with(name) && l[name.len()..].starts_with("_bucket"))
                    })
                    .map(str::to_owned)
                    .collect()
            };
            assert!(!samples(&before).is_empty(), "{name} has no sample");
            if !name.starts_with("pps_sidecar_") {
                continue;
            }
            families += 1;
            for sample in samples(&after) {
                let value = sample.rsplit(' ').next().unwrap();
                assert_ne!(value.parse::<f64>().unwrap(), 0.0, "{sample} did not move");
            }
        }
        assert!(families >= 20, "only {families} families");
    }
}
