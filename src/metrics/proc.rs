//! The standard `process_*` series (the names Prometheus' own client libraries use), read from `/proc`.
//!
//! An operator sizes the pod's memory limit by `process_resident_memory_bytes` and alerts on it nearing the
//! limit; the shared names make the usual dashboards work unchanged. Read at scrape time only: a few small
//! files per scrape, nothing on the delivery path. Linux only; elsewhere the series are absent, which a
//! query treats as "no data" rather than a wrong zero.

use std::fmt::Write as _;

/// Appends the `process_*` series of this process to `out`, and the memory limit of its cgroup (the
/// container's); writes nothing where `/proc` is unavailable.
pub fn render(out: &mut String) {
    #[cfg(target_os = "linux")]
    {
        if let Some(s) = linux::sample() {
            write_sample(out, &s);
        }
        if let Some(limit) = linux::memory_limit() {
            write_limit(out, limit);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = out;
}

/// `pps_sidecar_cgroup_memory_limit_bytes`: what the kernel OOM-kills the container at, so that an alert
/// compares `process_resident_memory_bytes` with the real limit rather than a number copied from the
/// manifest. `+Inf` when the cgroup has no limit (the ratio is then 0, never a false alarm).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn write_limit(out: &mut String, limit: Option<u64>) {
    let value = limit.map_or("+Inf".to_string(), |l| l.to_string());
    let _ = writeln!(
        out,
        "# HELP pps_sidecar_cgroup_memory_limit_bytes Memory limit of this process's cgroup (the container's), +Inf when unlimited.\n# TYPE pps_sidecar_cgroup_memory_limit_bytes gauge\npps_sidecar_cgroup_memory_limit_bytes {value}"
    );
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

/// Where this process's memory cgroup is: the controller's mount and the cgroup's path under it.
#[derive(Debug, PartialEq)]
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct CgroupDir {
    /// cgroup v2 (`memory.max`) or v1 (`memory.limit_in_bytes`).
    v2: bool,
    /// The mount point of the hierarchy, as this process sees it.
    mount: String,
    /// The cgroup's directories below the mount point, outermost first.
    below: Vec<String>,
}

/// Finds the memory cgroup from `/proc/self/cgroup` and `/proc/self/mountinfo`, as the JVM and the Go
/// runtime do: the cgroup's path is relative to the hierarchy's root, and the mount shows some root of that
/// hierarchy (`/` inside a container's cgroup namespace, the container's own path in some older setups),
/// which is stripped from it. A v1 memory controller is preferred, as the kernel enforces that one.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_cgroup(cgroup: &str, mountinfo: &str) -> Option<CgroupDir> {
    let v1 = cgroup.lines().find_map(|l| {
        let mut f = l.splitn(3, ':');
        let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
        controllers
            .split(',')
            .any(|c| c == "memory")
            .then_some(path)
    });
    let v2 = cgroup.lines().find_map(|l| l.strip_prefix("0::"));
    let (is_v2, path) = match (v1, v2) {
        (Some(p), _) => (false, p),
        (None, Some(p)) => (true, p),
        (None, None) => return None,
    };
    let mount = mountinfo.lines().find_map(|l| {
        let (left, right) = l.split_once(" - ")?;
        let f: Vec<&str> = left.split(' ').collect();
        let mut r = right.split(' ');
        let (fstype, options) = (r.next()?, r.nth(1).unwrap_or(""));
        let wanted = if is_v2 {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && options.split(',').any(|o| o == "memory")
        };
        wanted.then(|| (f.get(3).copied(), f.get(4).copied()))
    })?;
    let (root, point) = (mount.0?, mount.1?);
    let rel = path.strip_prefix(root).unwrap_or(path);
    Some(CgroupDir {
        v2: is_v2,
        mount: point.to_string(),
        below: rel
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// A limit file's value: `None` for no limit (`max`, or v1's page-rounded `i64::MAX`).
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn parse_limit(text: &str) -> Option<Option<u64>> {
    let text = text.trim();
    if text == "max" {
        return Some(None);
    }
    let n: u64 = text.parse().ok()?;
    Some((n < 1 << 62).then_some(n))
}

#[cfg(target_os = "linux")]
mod linux {
    use super::*;

    /// The memory limit in force for this process: the lowest of its cgroup's and its ancestors' (a pod's
    /// cgroup bounds its containers' too). `Some(None)` when none is set, `None` when it cannot be read.
    pub(super) fn memory_limit() -> Option<Option<u64>> {
        let dir = parse_cgroup(
            &std::fs::read_to_string("/proc/self/cgroup").ok()?,
            &std::fs::read_to_string("/proc/self/mountinfo").ok()?,
        )?;
        let file = if dir.v2 {
            "memory.max"
        } else {
            "memory.limit_in_bytes"
        };
        let mut path = std::path::PathBuf::from(&dir.mount);
        let mut lowest: Option<Option<u64>> = None;
        // The mount's own level too for v1, where the root has the file; v2's root has none.
        for part in std::iter::once(None).chain(dir.below.iter().map(Some)) {
            if let Some(p) = part {
                path.push(p);
            }
            let Some(limit) = std::fs::read_to_string(path.join(file))
                .ok()
                .and_then(|t| parse_limit(&t))
            else {
                continue;
            };
            lowest = Some(match (lowest.flatten(), limit) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            });
        }
        lowest
    }

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

    #[test]
    fn the_memory_cgroup_is_found_under_its_mount_in_v1_and_v2() {
        // A container with a cgroup namespace (v2): the mount shows the container's cgroup as `/`.
        let v2 = "0::/\n";
        let mounts = "30 25 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_cgroup(v2, mounts),
            Some(CgroupDir {
                v2: true,
                mount: "/sys/fs/cgroup".into(),
                below: vec![],
            })
        );
        // A host process (v2): its cgroup is a path below the hierarchy's root.
        let host = "0::/kubepods.slice/pod1/cri-abc\n";
        let dir = parse_cgroup(host, mounts).unwrap();
        assert_eq!(dir.below, ["kubepods.slice", "pod1", "cri-abc"]);
        // v1 without a namespace, the mount showing the container's own path as its root: stripped.
        let v1 = "5:cpu:/docker/abc\n4:memory,hugetlb:/docker/abc\n0::/\n";
        let mounts = "40 30 0:35 /docker/abc /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n\
                      41 30 0:36 / /sys/fs/cgroup/cpu ro - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_cgroup(v1, mounts),
            Some(CgroupDir {
                v2: false,
                mount: "/sys/fs/cgroup/memory".into(),
                below: vec![],
            })
        );
        assert_eq!(parse_cgroup("1:cpu:/\n", mounts), None);
    }

    #[test]
    fn limits_read_as_bytes_and_max_or_v1_unlimited_as_none() {
        assert_eq!(parse_limit("134217728\n"), Some(Some(134_217_728)));
        assert_eq!(parse_limit("max\n"), Some(None));
        assert_eq!(parse_limit("9223372036854771712\n"), Some(None));
        assert_eq!(parse_limit("lots"), None);
        let mut out = String::new();
        write_limit(&mut out, None);
        assert!(
            out.ends_with("pps_sidecar_cgroup_memory_limit_bytes +Inf\n"),
            "{out}"
        );
        out.clear();
        write_limit(&mut out, Some(128 << 20));
        assert!(
            out.ends_with("pps_sidecar_cgroup_memory_limit_bytes 134217728\n"),
            "{out}"
        );
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
