//! A real `redis-server` on loopback, with the faults a shared store meets: stopped, paused, resumed; with
//! TLS (a test CA made at run time with the openssl CLI), a password and an ACL user; and a master, a
//! replica and two `redis-sentinel`s in front of them, for failovers.

use std::path::{Path, PathBuf};
use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::eventually;
use super::process::Proc;

pub struct TestRedis {
    /// Plain TCP on loopback (also with TLS: the harness's own commands use it).
    pub port: u16,
    /// `AUTH` arguments the harness sends first, when the server needs a password.
    auth: Option<String>,
    // Held for their drop; the process first: it is stopped before its log's folder goes.
    proc: Proc,
    _dir: tempfile::TempDir,
}

/// The password of the `default` user and of the ACL user `orders`, in servers started `with_auth`.
pub const REDIS_PASSWORD: &str = "redis-pw-5c1f0e";
pub const REDIS_USER_PASSWORD: &str = "orders-pw-77ab12";

impl TestRedis {
    pub async fn start(port: u16) -> TestRedis {
        Self::start_args(port, &[], None).await
    }

    /// Starts with `args` added to the command line; `auth`: what the harness authenticates with.
    pub async fn start_args(port: u16, args: &[String], auth: Option<String>) -> TestRedis {
        // redis-server is required for these tests (.ci/deps installs it).
        let dir = tempfile::tempdir().unwrap();
        let proc = Proc::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(args)
                .current_dir(dir.path()),
            dir.path(),
        );
        let r = TestRedis {
            port,
            auth,
            proc,
            _dir: dir,
        };
        eventually("redis-server answers PING", || r.pong()).await;
        r
    }

    /// TLS on `tls_port` with `ca`'s server certificate (for `redis.test` only), a `requirepass` and an
    /// ACL user `orders` that may only touch keys under `test-app:`.
    pub async fn start_tls_with_auth(port: u16, tls_port: u16, ca: &TestCa) -> TestRedis {
        let args: Vec<String> = [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &ca.server_cert.display().to_string(),
            "--tls-key-file",
            &ca.server_key.display().to_string(),
            "--tls-ca-cert-file",
            &ca.ca_cert.display().to_string(),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            REDIS_PASSWORD,
            "--user",
            "orders",
            "on",
            &format!(">{REDIS_USER_PASSWORD}"),
            "~test-app:*",
            "+@all",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Self::start_args(port, &args, Some(format!("default {REDIS_PASSWORD}"))).await
    }

    /// Sends inline commands (authenticating first if needed) and returns all the server wrote until it
    /// closed, `QUIT` being sent last.
    pub async fn inline(&self, commands: &str) -> Option<String> {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .ok()?;
        let mut out = String::new();
        if let Some(auth) = &self.auth {
            out.push_str(&format!("AUTH {auth}\r\n"));
        }
        out.push_str(commands);
        out.push_str("QUIT\r\n");
        s.write_all(out.as_bytes()).await.ok()?;
        let mut answer = String::new();
        tokio::time::timeout(super::PATIENCE, s.read_to_string(&mut answer))
            .await
            .ok()?
            .ok()?;
        Some(answer)
    }

    pub async fn pong(&self) -> bool {
        self.inline("PING\r\n")
            .await
            .is_some_and(|a| a.contains("+PONG\r\n"))
    }

    /// The value of `key` (any bytes: sent as RESP), if it has one.
    pub async fn get(&self, key: &str) -> Option<String> {
        let command = format!("*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n", key.len());
        let answer = self.inline(&command).await?;
        // After the AUTH's `+OK`, if any: `$<len>` and the value, or `$-1` when there is none.
        let at = answer.find('$')? + 1;
        let (len, rest) = answer[at..].split_once("\r\n")?;
        let len: usize = len.parse().ok()?;
        rest.get(..len).map(str::to_string)
    }

    /// The keys under `test-app:` (`KEYS`, for tests only).
    pub async fn keys(&self) -> Vec<String> {
        let a = self.inline("KEYS test-app:*\r\n").await.unwrap_or_default();
        a.lines()
            .filter(|l| l.starts_with("test-app:"))
            .map(str::to_string)
            .collect()
    }

    /// The count of calls of `command` since the server started (`INFO commandstats`).
    pub async fn calls(&self, command: &str) -> u64 {
        let out = self.inline("INFO commandstats\r\n").await.unwrap();
        let needle = format!("cmdstat_{command}:calls=");
        out.split(&needle)
            .nth(1)
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |n| n.parse().unwrap())
    }

    /// Stops the server (dropping it kills it and waits) and returns its port, to start it again there.
    pub fn stop(self) -> u16 {
        self.port
    }

    /// Freezes the server (SIGSTOP): connections stay open and requests go unanswered, as in a stall.
    pub fn pause(&self) {
        signal(self.proc.pid(), "STOP");
    }

    /// Lets a paused server run again (SIGCONT); it then answers what it was sent meanwhile.
    pub fn resume(&self) {
        signal(self.proc.pid(), "CONT");
    }

    pub fn toml(&self) -> String {
        format!(
            "[dedup]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:{}/\"\nredis_prefix = \"test-app:\"\nin_flight_wait_ms = 5000\n",
            self.port
        )
    }
}

/// Sends `SIG<name>` to `pid`.
pub fn signal(pid: u32, name: &str) {
    let (code, _, err) =
        super::process::run(Command::new("kill").args([format!("-{name}"), pid.to_string()]));
    assert_eq!(code, 0, "kill -{name} {pid}: {err}");
}

/// A test CA made at run time with the openssl CLI, and a server certificate it signed for `redis.test`
/// only (no IP address): connecting to 127.0.0.1 needs `redis_tls_server_name = "redis.test"`.
pub struct TestCa {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> TestCa {
        Self::with_names("DNS:redis.test")
    }

    /// A server certificate for `san` (`subjectAltName` syntax: "DNS:redis.test,IP:127.0.0.1").
    pub fn with_names(san: &str) -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let openssl = |args: &[&str]| {
            let (code, _, err) =
                super::process::run(Command::new("openssl").args(args).current_dir(d));
            assert_eq!(code, 0, "openssl {args:?}: {err}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=pps test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=redis.test",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(d.join("ext.cnf"), format!("subjectAltName = {san}\n")).unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        TestCa {
            ca_cert: d.join("ca.pem"),
            server_cert: d.join("server.pem"),
            server_key: d.join("server.key"),
            _dir: dir,
        }
    }
}

/// Two `redis-sentinel`s watching a master and a replica (`mymaster`), each on its own port; quorum 1,
/// so that a failover follows quickly. The master and the replica need `REDIS_PASSWORD`.
pub struct TestSentinels {
    pub master: TestRedis,
    pub replica: TestRedis,
    /// Where the sidecar reaches the sentinels (their TLS ports with `start_tls`).
    pub ports: [u16; 2],
    /// Where the harness reaches them (plain TCP).
    plain: [u16; 2],
    /// The replica's port as the sentinels name it (its TLS port with `start_tls`).
    pub replica_port: u16,
    tls: bool,
    // Held for their drop.
    procs: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl TestSentinels {
    pub async fn start() -> TestSentinels {
        Self::start_with(None).await
    }

    /// Everything over TLS with `ca`'s certificate as well (replication, the sentinels' links, and a TLS
    /// port on each sentinel); the plain ports stay for the harness.
    pub async fn start_tls(ca: &TestCa) -> TestSentinels {
        Self::start_with(Some(ca)).await
    }

    async fn start_with(ca: Option<&TestCa>) -> TestSentinels {
        let [m, r, s1, s2] = super::free_ports();
        let [mt, rt, st1, st2] = super::free_ports();
        let tls_files = |c: &TestCa| -> Vec<String> {
            [
                "--tls-cert-file",
                &c.server_cert.display().to_string(),
                "--tls-key-file",
                &c.server_key.display().to_string(),
                "--tls-ca-cert-file",
                &c.ca_cert.display().to_string(),
                "--tls-auth-clients",
                "no",
                "--tls-replication",
                "yes",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        // The port each server is named by (in replication and by the sentinels).
        let (named_m, named_r) = if ca.is_some() { (mt, rt) } else { (m, r) };
        // Both servers need REDIS_PASSWORD, as a self-hosted Redis behind Sentinel usually does; the
        // sentinels do not.
        let auth: Vec<String> = [
            "--requirepass",
            REDIS_PASSWORD,
            "--masterauth",
            REDIS_PASSWORD,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let harness = Some(format!("default {REDIS_PASSWORD}"));
        let mut master_args = auth.clone();
        let mut replica_args = auth.clone();
        if let Some(c) = ca {
            master_args.extend(tls_files(c));
            master_args.extend(["--tls-port".into(), mt.to_string()]);
            replica_args.extend(tls_files(c));
            replica_args.extend(["--tls-port".into(), rt.to_string()]);
        }
        let master = TestRedis::start_args(m, &master_args, harness.clone()).await;
        replica_args.extend([
            "--replicaof".into(),
            "127.0.0.1".into(),
            named_m.to_string(),
        ]);
        let replica = TestRedis::start_args(r, &replica_args, harness).await;
        let dir = tempfile::tempdir().unwrap();
        let mut procs = Vec::new();
        for (port, tls_port) in [(s1, st1), (s2, st2)] {
            let conf = dir.path().join(format!("sentinel-{port}.conf"));
            let tls = match ca {
                Some(c) => format!(
                    "tls-port {tls_port}\ntls-cert-file {}\ntls-key-file {}\ntls-ca-cert-file {}\n\
                     tls-auth-clients no\ntls-replication yes\n",
                    c.server_cert.display(),
                    c.server_key.display(),
                    c.ca_cert.display()
                ),
                None => String::new(),
            };
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n{tls}sentinel monitor mymaster 127.0.0.1 {named_m} 1\n\
                     sentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 4000\n\
                     sentinel auth-pass mymaster {REDIS_PASSWORD}\n",
                    dir.path().display()
                ),
            )
            .unwrap();
            procs.push(Proc::spawn(
                "redis-sentinel",
                Command::new("redis-sentinel")
                    .arg(&conf)
                    .current_dir(dir.path()),
                dir.path(),
            ));
        }
        let s = TestSentinels {
            master,
            replica,
            ports: if ca.is_some() { [st1, st2] } else { [s1, s2] },
            plain: [s1, s2],
            replica_port: named_r,
            tls: ca.is_some(),
            procs,
            _dir: dir,
        };
        eventually(
            "the replica is in sync and both sentinels know it",
            || async {
                s.replica_synced().await
                    && s.replicas_known(s.plain[0]).await
                    && s.replicas_known(s.plain[1]).await
            },
        )
        .await;
        s
    }

    /// `redis+sentinel://` (`rediss+sentinel://` with TLS) naming both sentinels.
    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!(
            "{scheme}+sentinel://127.0.0.1:{},127.0.0.1:{}/mymaster",
            self.ports[0], self.ports[1]
        )
    }

    async fn replica_synced(&self) -> bool {
        let info = self
            .replica
            .inline("INFO replication\r\n")
            .await
            .unwrap_or_default();
        info.contains("master_link_status:up")
    }

    async fn replicas_known(&self, port: u16) -> bool {
        cli(port, &["SENTINEL", "replicas", "mymaster"]).contains(&self.replica_port.to_string())
    }

    /// The master's port as sentinel `i` names it.
    pub fn master_port(&self, i: usize) -> u16 {
        let out = cli(
            self.plain[i],
            &["SENTINEL", "get-master-addr-by-name", "mymaster"],
        );
        out.lines()
            .nth(1)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0)
    }

    /// `SENTINEL FAILOVER`: the replica is promoted, the master demoted.
    pub fn failover(&self) {
        let out = cli(self.plain[0], &["SENTINEL", "failover", "mymaster"]);
        assert!(out.starts_with("OK"), "SENTINEL FAILOVER: {out}");
    }
}

/// `redis-cli -p <port> args...`, its stdout.
fn cli(port: u16, args: &[&str]) -> String {
    let (code, out, err) = super::process::run(
        Command::new("redis-cli")
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .args(args),
    );
    assert_eq!(code, 0, "redis-cli {args:?}: {err}");
    out
}

/// Writes `text` to `dir/name` and returns its path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}
