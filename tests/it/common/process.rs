//! Processes a test starts (the sidecar, the example app, redis-server): output to a file, killed when
//! dropped, and the output printed when the test fails, so a failure shows what the process said.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;

use super::poll;

/// A child process, killed when dropped; its stdout and stderr go to `<dir>/<name>.log`.
pub struct Proc {
    name: &'static str,
    // A lock so that `&self` can ask whether it exited while a test holds shared references to it.
    child: Mutex<Child>,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &'static str, cmd: &mut Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Proc {
            name,
            child: Mutex::new(child),
            log,
        }
    }

    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.child.lock().unwrap().try_wait().unwrap()
    }

    pub fn assert_running(&self) {
        if let Some(status) = self.exited() {
            panic!("{} exited with {status}", self.name);
        }
    }

    /// The output, once it contains `needle` `n` times; fails early if the process exits without it.
    pub async fn output_with(&self, needle: &str, n: usize) -> String {
        poll(
            &format!("{} printed {needle:?} {n} times", self.name),
            || async move {
                // Whether it had exited is asked before reading, so all it wrote by then is read.
                let exited = self.exited();
                let out = self.output();
                if out.matches(needle).count() >= n {
                    return Some(out);
                }
                if let Some(status) = exited {
                    panic!(
                        "{} exited with {status} before printing {needle:?}",
                        self.name
                    );
                }
                None
            },
        )
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    fn child(&mut self) -> &mut Child {
        // A panic while the lock was held must not stop the kill in `drop`.
        self.child.get_mut().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let child = self.child();
        let _ = child.kill();
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} output ----\n{}", self.name, self.output());
        }
    }
}

/// Runs `cmd` to completion with no input; returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {:?}: {e}", cmd.get_program()));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
