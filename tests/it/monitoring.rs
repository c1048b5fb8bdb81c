//! The operator's monitoring (k8s/monitoring): every series an alert or a dashboard query names, and every
//! label value it matches exactly, is on the real binary's `/metrics`. An alert on a misspelt series never
//! fires, and nothing shows that it never will: this is the only place that notices.
// Linux only: the process_* series are read from /proc (the module is gated in main.rs).

use std::collections::{BTreeSet, HashSet};
use std::process::{Command, Stdio};

use crate::common::*;

/// Labels that Prometheus adds to a target (the PodMonitor's), not the sidecar.
const TARGET_LABELS: &[&str] = &["namespace", "pod", "container", "expect_deliveries"];
/// Series Prometheus writes itself for each target: not on `/metrics`.
const PROMETHEUS_SERIES: &[&str] = &["up"];

/// Every PromQL expression of k8s/monitoring, with where it comes from (`k8s/check.py --print-queries`).
fn queries() -> Vec<(String, String)> {
    let out = Command::new("python3")
        .arg(repo_path("k8s/check.py"))
        .arg("--print-queries")
        .current_dir(repo_path(""))
        .stdin(Stdio::null())
        .output()
        .expect("run python3 k8s/check.py --print-queries");
    assert!(
        out.status.success(),
        "k8s/check.py --print-queries failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    list.iter()
        .map(|q| {
            let s = |k: &str| q[k].as_str().unwrap().to_string();
            (s("source"), s("expr"))
        })
        .collect()
}

/// A series named in a query, with the label values it matches exactly (`=`, or `=~` over plain
/// alternatives such as `"forwarded|duplicate"`).
#[derive(Debug, PartialEq)]
struct Use {
    name: String,
    matchers: Vec<(String, String)>,
}

/// Modifiers followed by a list of label names, which are not series.
const MODIFIERS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// Words that are not series (the modifiers too).
const KEYWORDS: &[&str] = &[
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
    // Aggregations may put `by (...)` between their name and their parenthesis.
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "group",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
];

/// The series a PromQL expression (or Grafana's `label_values(EXPR, label)`) names. A small scanner, not a
/// PromQL parser: identifiers that are not functions, keywords, label lists, ranges or Grafana variables.
fn series(expr: &str) -> Vec<Use> {
    let expr = match expr.trim().strip_prefix("label_values(") {
        Some(inner) => inner.rsplit_once(',').map_or(inner, |(e, _label)| e),
        None => expr,
    };
    let b = expr.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let (mut i, mut out) = (0, Vec::<Use>::new());
    while i < b.len() {
        let c = b[i];
        if c == b'$' || c.is_ascii_digit() || c == b'.' {
            // A Grafana variable or a number (with its exponent): not a series.
            i += 1;
            while i < b.len() && (ident(b[i]) || b[i] == b'.') {
                i += 1;
            }
        } else if c == b'[' {
            i += expr[i..].find(']').expect("unclosed [") + 1;
        } else if c == b'"' {
            i += 1 + expr[i + 1..].find('"').expect("unclosed string") + 1;
        } else if c == b'{' {
            let end = i + expr[i..].find('}').expect("unclosed {");
            // Matchers written without a name before them belong to no series: none here.
            if let Some(u) = out.last_mut().filter(|u| u.matchers.is_empty()) {
                u.matchers = matchers(&expr[i + 1..end]);
            }
            i = end + 1;
        } else if ident(c) {
            let start = i;
            while i < b.len() && ident(b[i]) {
                i += 1;
            }
            let word = &expr[start..i];
            let next = expr[i..].trim_start();
            if MODIFIERS.contains(&word) && next.starts_with('(') {
                // A list of label names.
                i = expr.len() - next.len() + next.find(')').expect("unclosed (") + 1;
            } else if !next.starts_with('(')
                && !KEYWORDS.contains(&word)
                && !MODIFIERS.contains(&word)
            {
                out.push(Use {
                    name: word.to_string(),
                    matchers: Vec::new(),
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

/// `label="value"` pairs of a matcher list; `=~` over plain alternatives gives one pair per alternative;
/// `!=`, `!~` and real regular expressions are skipped.
fn matchers(list: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for m in list.split(',') {
        let Some((label, rest)) = m.split_once('=') else {
            continue;
        };
        let (label, rest) = (label.trim(), rest.trim());
        if label.ends_with('!') {
            continue;
        }
        let (regex, value) = match rest.strip_prefix('~') {
            Some(v) => (true, v.trim()),
            None => (false, rest),
        };
        let value = value.trim_matches('"');
        if value.contains('$') || (regex && value.contains(['.', '*', '+', '(', '['])) {
            continue;
        }
        let alternatives: Vec<&str> = if regex {
            value.split('|').collect()
        } else {
            vec![value]
        };
        out.extend(alternatives.into_iter().map(|v| (label.into(), v.into())));
    }
    out
}

/// Series names on a scrape: each sample's, and each `# TYPE` family's (so that a histogram's base name
/// counts, next to its `_bucket`, `_sum` and `_count`).
fn exposed(scrape: &str) -> HashSet<String> {
    scrape
        .lines()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(t) => t.split_whitespace().next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .map(str::to_string)
        .collect()
}

#[test]
fn the_scanner_finds_series_and_exact_label_values_only() {
    let e = r#"sum by (namespace, pod) (rate(a_total{reason="bad_signature", pod=~"$pod"}[5m]))
        / on (pod) group_left (x) sum without (le) (b_bucket{outcome=~"forwarded|duplicate", c!="d"})
        > 0.85 * 128 * 1e6 and (time() - c_seconds) > 6 * 3600"#;
    let found = series(e);
    let names: Vec<&str> = found.iter().map(|u| u.name.as_str()).collect();
    assert_eq!(names, ["a_total", "b_bucket", "c_seconds"]);
    assert_eq!(
        found[0].matchers,
        [("reason".to_string(), "bad_signature".to_string())]
    );
    assert_eq!(
        found[1].matchers,
        [
            ("outcome".to_string(), "forwarded".to_string()),
            ("outcome".to_string(), "duplicate".to_string())
        ]
    );
    let variable = series(r#"label_values(pps_sidecar_build_info{namespace=~"$namespace"}, pod)"#);
    assert_eq!(variable.len(), 1);
    assert_eq!(variable[0].name, "pps_sidecar_build_info");
}

#[tokio::test]
async fn every_alert_and_dashboard_query_names_series_that_metrics_exposes() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let r = sidecar.admin_get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let scrape = r.text();
    let names = exposed(&scrape);

    let queries = queries();
    let mut missing = BTreeSet::new();
    let mut used = BTreeSet::new();
    for (source, expr) in &queries {
        let found = series(expr);
        assert!(!found.is_empty(), "{source}: names no series: {expr}");
        for u in found {
            used.insert(u.name.clone());
            if PROMETHEUS_SERIES.contains(&u.name.as_str()) {
                continue;
            }
            if !names.contains(&u.name) {
                missing.insert(format!("{source}: {}", u.name));
                continue;
            }
            for (label, value) in u.matchers {
                if TARGET_LABELS.contains(&label.as_str()) {
                    continue;
                }
                let sample = format!("{}{{{label}=\"{value}\"", u.name);
                if !scrape.lines().any(|l| l.starts_with(&sample)) {
                    missing.insert(format!("{source}: {}{{{label}=\"{value}\"}}", u.name));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "named by k8s/monitoring but not on /metrics:\n{}\n\n/metrics:\n{scrape}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );

    // What the issue asks the operator to see is really queried (the scan above is not vacuous).
    for name in [
        "pps_sidecar_requests_total",
        "pps_sidecar_auth_failures_total",
        "pps_sidecar_upstream_duration_seconds_bucket",
        "pps_sidecar_request_duration_seconds_bucket",
        "pps_sidecar_config_reloads_total",
        "pps_sidecar_dedup_store_errors_total",
        "pps_sidecar_dedup_entries",
        "process_resident_memory_bytes",
        "process_start_time_seconds",
        "pps_sidecar_buffered_bytes",
        // What issue 22 added: the memory limit, the refused config, the spool, connections, the target.
        "pps_sidecar_cgroup_memory_limit_bytes",
        "pps_sidecar_config_last_reload_success",
        "pps_sidecar_spool_entries",
        "pps_sidecar_spool_dropped_total",
        "pps_sidecar_spool_write_failures_total",
        "pps_sidecar_open_connections",
        "pps_sidecar_connections_closed_total",
        "up",
    ] {
        assert!(used.contains(name), "k8s/monitoring never queries {name}");
    }
    // The exact label values the new alerts match are on /metrics (checked above through the scan):
    // name them here so that a rewrite of an alert cannot drop them unnoticed.
    let all = queries
        .iter()
        .map(|(_, e)| e.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    for matcher in [
        r#"outcome=~"overloaded|unavailable""#,
        r#"reason="too_many_connections""#,
        r#"reason!="superseded""#,
    ] {
        assert!(all.contains(matcher), "no query matches {matcher}");
    }
    assert!(queries.len() >= 30, "{queries:?}");
}

#[tokio::test]
async fn metrics_expose_the_standard_process_series() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let scrape = sidecar.admin_get("/metrics").await.text();
    for name in [
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let value = metric(&scrape, name);
        assert!(value >= 0.0, "{name} = {value}");
    }
    // The sidecar's own resident memory, not a made-up figure: a few MB at least, below its virtual size.
    let rss = metric(&scrape, "process_resident_memory_bytes");
    assert!(rss > 1e6, "{rss}");
    assert!(rss < metric(&scrape, "process_virtual_memory_bytes"));
}

/// The memory cgroup directory this test process is in (v1's memory controller, else v2), as the kernel
/// names it in /proc/self/cgroup, under the usual mount points.
fn own_memory_cgroup() -> Option<(std::path::PathBuf, &'static str)> {
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for l in cgroup.lines() {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        let path = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let dir = std::path::Path::new("/sys/fs/cgroup/memory").join(path);
            return dir.is_dir().then_some((dir, "memory.limit_in_bytes"));
        }
        if controllers.is_empty()
            && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            return Some((
                std::path::Path::new("/sys/fs/cgroup").join(path),
                "memory.max",
            ));
        }
    }
    None
}

/// A memory cgroup of its own with a limit, removed when dropped.
struct LimitedCgroup {
    dir: std::path::PathBuf,
}

impl Drop for LimitedCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.dir);
    }
}

#[tokio::test]
async fn the_memory_limit_on_metrics_is_the_one_the_kernel_enforces_on_the_process() {
    // The sidecar started in a memory cgroup of its own, limited to 200 MiB, as the kubelet starts a
    // container: /metrics shows that limit, which the memory alert divides by.
    let (parent, file) = own_memory_cgroup().expect(
        "no memory cgroup: the sidecar's cgroup_memory_limit series cannot be checked here",
    );
    let dir = parent.join(format!("pps-sidecar-test-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap_or_else(|e| {
        panic!(
            "cannot create {} ({e}): run the tests as root",
            dir.display()
        )
    });
    let cgroup = LimitedCgroup { dir };
    let limit: u64 = 200 << 20;
    std::fs::write(cgroup.dir.join(file), limit.to_string()).unwrap();

    let app = TestApp::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let [listen, admin] = free_addrs();
    let config = tmp.path().join("sidecar.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"{listen}\"\nadmin_listen = \"{admin}\"\n\n[upstream]\naddress = \"{}\"\n\n[auth.hmac]\nsecrets = [{{ value = \"{SECRET}\" }}]\n",
            app.addr
        ),
    )
    .unwrap();
    // Into the cgroup first, then the binary: everything it allocates is under the limit.
    let procs = cgroup.dir.join("cgroup.procs");
    let sidecar = Proc::spawn(
        "pps-sidecar",
        Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1" && exec "$2" run --config "$3""#)
            .args([
                "sh",
                procs.to_str().unwrap(),
                binary(),
                config.to_str().unwrap(),
            ]),
        tmp.path(),
    );
    let scrape = poll("the sidecar serves /metrics", || async {
        sidecar.assert_running();
        get(admin, "/metrics")
            .await
            .filter(|r| r.status == 200)
            .map(|r| r.text())
    })
    .await;
    assert_eq!(
        metric(&scrape, "pps_sidecar_cgroup_memory_limit_bytes"),
        limit as f64,
        "{scrape}"
    );
    drop(sidecar);
    // The process is gone: the cgroup can go (`LimitedCgroup` removes it).
    poll("the cgroup empties", || async {
        std::fs::read_to_string(&procs).map_or(Some(()), |p| p.trim().is_empty().then_some(()))
    })
    .await;
}
