//! The standard `process_*` series (the names Prometheus' own client libraries use), read from `/proc`.
//!
//! An operator sizes the pod's memory limit by `process_resident_memory_bytes` and alerts on it nearing the
//! limit; the shared names make the usual dashboards work unchanged. Read at scrape time only: a few small
//! files per scrape, nothing on the delivery path. Linux only; elsewhere the series are absent, which a
//! query treats as "no data" rather than a wrong zero.

use std::fmt::Write as _;

/// Appends the `process_*` series of this process to `out`; writes nothing where `/proc` is unavailable.
pub fn render(out: &mut String) {
    #[cfg(target_os = "linux")]
    if let Some(s) = linux::sample() {
        write_sample(out, &s);
    }
    #[cfg(not(target_os = "linux"))]
    let _ = out;
}

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Sample {
    cpu_seconds: f64,
    resident_bytes: u64,
    virtual_bytes: u64,
    start_time_seconds: f64,
    open_fds: Option<u64>,
    max_fds: Option<u64>,
}

#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn write_sample(out: &mut String, s: &Sample) {
    let mut series = |name: &str, kind: &str, help: &str, value: String| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    series(
        "process_cpu_seconds_total",
        "counter",
        "Total user and system CPU time spent in seconds.",
        s.cpu_seconds.to_string(),
    );
    series(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        s.resident_bytes.to_string(),
    );
    series(
        "process_virtual_memory_bytes",
        "gauge",
        "Virtual memory size in bytes.",
        s.virtual_bytes.to_string(),
    );
    series(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        s.start_time_seconds.to_string(),
    );
    if let Some(n) = s.open_fds {
        series(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            n.to_string(),
        );
    }
    if let Some(n) = s.max_fds {
        series(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            n.to_string(),
        );
    }
}

/// The fields of `/proc/self/stat` used here, in clock ticks and pages as the kernel gives them.
#[derive(Debug, PartialEq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Stat {
    ticks: u64,
    start_ticks: u64,
    virtual_bytes: u64,
    resident_pages: u64,
}

/// Parses `/proc/<pid>/stat`. The command name (field 2) may hold spaces and parentheses, so the fields are
/// counted from the last `)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    // After the name: field 3 (state) is index 0, so field N is index N - 3.
    let f: Vec<&str> = rest.split_ascii_whitespace().collect();
    let num = |field: usize| f.get(field - 3)?.parse::<u64>().ok();
    Some(Stat {
        ticks: num(14)? + num(15)?,
        start_ticks: num(22)?,
        virtual_bytes: num(23)?,
        resident_pages: num(24)?,
    })
}

/// The boot time (`btime`) of `/proc/stat`, in seconds since the epoch.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_boot_time(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

/// The soft limit on open files, from `/proc/self/limits` ("unlimited" is absent).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_max_fds(text: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_ascii_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;

    pub(super) fn sample() -> Option<Sample> {
        let stat = parse_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)?;
        let boot = parse_boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        // SAFETY: sysconf reads a constant of the system and has no preconditions.
        let (tick, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if tick <= 0 || page <= 0 {
            return None;
        }
        let tick = tick as f64;
        let open_fds = std::fs::read_dir("/proc/self/fd")
            .ok()
            .map(|d| d.count() as u64);
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|t| parse_max_fds(&t));
        Some(Sample {
            cpu_seconds: stat.ticks as f64 / tick,
            resident_bytes: stat.resident_pages * page as u64,
            virtual_bytes: stat.virtual_bytes,
            start_time_seconds: boot as f64 + stat.start_ticks as f64 / tick,
            open_fds,
            max_fds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a ")" must not shift the fields.
        let text = "4242 (pps (side) car) S 1 4242 4242 0 -1 4194560 500 0 0 0 \
                    150 50 0 0 20 0 3 0 12345 104857600 2560 18446744073709551615 0 0";
        let s = parse_stat(text).unwrap();
        assert_eq!(
            s,
            Stat {
                ticks: 200,
                start_ticks: 12345,
                virtual_bytes: 104_857_600,
                resident_pages: 2560,
            }
        );
        assert_eq!(parse_stat("4242 (truncated) S 1 2"), None);
    }

    #[test]
    fn boot_time_and_fd_limit_are_read_and_unlimited_is_absent() {
        assert_eq!(
            parse_boot_time("cpu  1 2 3\nbtime 1700000000\nprocesses 9\n"),
            Some(1_700_000_000)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max open files            1024                 1048576              files     \n";
        assert_eq!(parse_max_fds(limits), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_max_fds(unlimited), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_is_measured_with_the_standard_names() {
        let mut out = String::new();
        render(&mut out);
        let value = |name: &str| -> f64 {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("no {name} in\n{out}"));
            line[name.len() + 1..].parse().unwrap()
        };
        let rss = value("process_resident_memory_bytes");
        assert!(
            rss > 1e5 && rss <= value("process_virtual_memory_bytes"),
            "{out}"
        );
        assert!(value("process_open_fds") >= 3.0, "{out}");
        assert!(
            value("process_max_fds") >= value("process_open_fds"),
            "{out}"
        );
        assert!(value("process_cpu_seconds_total") >= 0.0, "{out}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = value("process_start_time_seconds");
        // The test process started within the last hour, and not in the future (btime is whole seconds).
        assert!(
            start <= now + 1.0 && start > now - 3600.0,
            "{start} vs {now}"
        );
        assert!(
            out.contains("# TYPE process_cpu_seconds_total counter"),
            "{out}"
        );
    }
}
