//! A real `redis-server` on loopback, with the faults a shared store meets: stopped, paused, resumed.

use std::process::Command;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::eventually;
use super::process::Proc;

pub struct TestRedis {
    pub port: u16,
    // Held for their drop; the process first: it is stopped before its log's folder goes.
    proc: Proc,
    _dir: tempfile::TempDir,
}

impl TestRedis {
    pub async fn start(port: u16) -> TestRedis {
        // redis-server is required for these tests (.ci/deps installs it).
        let dir = tempfile::tempdir().unwrap();
        let proc = Proc::spawn(
            "redis-server",
            Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .current_dir(dir.path()),
            dir.path(),
        );
        let r = TestRedis {
            port,
            proc,
            _dir: dir,
        };
        eventually("redis-server answers PING", || r.pong()).await;
        r
    }

    pub async fn pong(&self) -> bool {
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut buf = [0u8; 7];
        s.write_all(b"PING\r\n").await.is_ok()
            && s.read_exact(&mut buf).await.is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// The count of calls of `command` since the server started (`INFO commandstats`).
    pub async fn calls(&self, command: &str) -> u64 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        s.write_all(b"INFO commandstats\r\nQUIT\r\n").await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
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
