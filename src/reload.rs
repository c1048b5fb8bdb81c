//! Reload on SIGHUP or when a watched file changes.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, Deadlines, fingerprint};
use crate::metrics::{self, METRICS};
use crate::state::Shared;

/// How often the config file and the secret files are checked for changes.
const POLL: Duration = Duration::from_secs(1);

/// Watches the configuration and the secret files it references, and reloads on change or SIGHUP.
///
/// Files are compared by content, through their path: Kubernetes updates a mounted ConfigMap or Secret
/// by swapping the `..data` symlink of its folder, which leaves the old file's inode untouched, so an
/// inode or mtime watch on the file would miss it.
pub struct Reloader {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                log::error!("cannot listen for SIGHUP ({e}); reload on file change only");
                None
            }
        };
        let mut tick = tokio::time::interval(POLL);
        let mut seen = self.shared.live().config.fingerprint;
        // The error of the last refused reload, while it stands.
        let mut failing: Option<String> = None;
        loop {
            tokio::select! {
                _ = async { hup.as_mut().expect("guarded").recv().await }, if hup.is_some() => {
                    failing = self.reload("SIGHUP", None).err();
                }
                _ = tick.tick() => {
                    if fingerprint(&self.shared.live().config.watched_files()) != seen {
                        failing = self.reload("a watched file changed", None).err();
                    } else if let Some(previous) = failing.take() {
                        // A refused config may name a file that is not there yet (a new secret mounted a
                        // moment later): it is retried every tick, and only a different outcome is reported.
                        failing = self.reload("retry", Some(&previous)).err();
                    } else {
                        continue;
                    }
                }
                _ = shutdown.changed() => return,
            }
            // After a success, what the new config was loaded from; after a refusal, what was refused.
            let live = self.shared.live();
            seen = if failing.is_none() {
                live.config.fingerprint
            } else {
                fingerprint(&live.config.watched_files())
            };
        }
    }
}

impl Reloader {
    /// Loads the file again and puts it in force, or explains why not. `same_error` silences a failure
    /// identical to the one already reported.
    fn reload(&self, reason: &str, same_error: Option<&str>) -> Result<(), String> {
        let old = self.shared.live();
        let loaded = Config::load(&old.config.path).and_then(|new| {
            let same_dir =
                new.spool.as_ref().map(|s| &s.dir) == old.config.spool.as_ref().map(|s| &s.dir);
            if !same_dir {
                crate::spool::prepare(&new)?;
            }
            Ok(new)
        });
        match loaded {
            Ok(new) => {
                for what in restart_needed(&old.config, &new, self.shared.startup) {
                    log::warn!(
                        "reload ({reason}): {what} changed; it takes effect after a restart"
                    );
                }
                if new.server.log_format != old.config.server.log_format {
                    // Every line from now on, the access log's included (it follows the config in
                    // force), so that no stretch of the log mixes the two formats.
                    crate::logging::set_format(new.server.log_format);
                    log::info!(
                        "reload ({reason}): server.log_format is now {}",
                        crate::logging::format_name(new.server.log_format)
                    );
                }
                self.shared.replace(new);
                METRICS.reload(metrics::Result::Success);
                log::info!("configuration reloaded ({reason})");
                Ok(())
            }
            Err(e) => {
                let e = e.to_string();
                if same_error != Some(e.as_str()) {
                    log::error!(
                        "reload ({reason}) refused, the previous configuration stays in force: {e}"
                    );
                    METRICS.reload(metrics::Result::Failure);
                } else {
                    METRICS.reload_standing(metrics::Result::Failure);
                }
                Err(e)
            }
        }
    }
}

/// The settings a running process cannot change: its listeners, threads and dedup store.
fn restart_needed(old: &Config, new: &Config, startup: Deadlines) -> Vec<&'static str> {
    let mut out = Vec::new();
    if old.server.listen != new.server.listen {
        out.push("server.listen");
    }
    if old.server.admin_listen != new.server.admin_listen {
        out.push("server.admin_listen");
    }
    if old.server.threads != new.server.threads {
        out.push("server.threads");
    }
    if old.server.shutdown_grace != new.server.shutdown_grace {
        out.push("server.shutdown_grace_seconds");
    }
    if new.deadlines().exchange > startup.exchange {
        out.push("upstream timeouts (raised: one exchange with the app stays capped at the start-up connect + 2 x read)");
    }
    out.extend(old.dedup.restart_needed(&new.dedup));
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn config(dedup: &str) -> Config {
        let text = format!(
            "[upstream]\naddress = \"127.0.0.1:8080\"\n\n[auth.hmac]\nsecrets = [{{ value = \"s\" }}]\n\n[dedup]\nbackend = \"redis\"\n{dedup}"
        );
        Config::parse(&text, Path::new("test.toml")).unwrap()
    }

    #[test]
    fn redis_settings_changed_by_a_reload_are_named_as_needing_a_restart() {
        let base = "redis_url = \"redis://127.0.0.1:6379\"\nredis_prefix = \"a:\"\n";
        let old = config(base);
        let startup = old.deadlines();
        assert!(restart_needed(&old, &config(base), startup).is_empty());
        for (change, named) in [
            (
                base.replace("6379", "6380"),
                "dedup.redis_url or redis_prefix",
            ),
            (base.replace("a:", "b:"), "dedup.redis_url or redis_prefix"),
            (
                format!("{base}redis_timeout_ms = 99\n"),
                "dedup.redis_timeout_ms or in_flight_wait_ms",
            ),
            (
                format!("{base}in_flight_wait_ms = 99\n"),
                "dedup.redis_timeout_ms or in_flight_wait_ms",
            ),
        ] {
            assert_eq!(
                restart_needed(&old, &config(&change), startup),
                vec![named],
                "{change}"
            );
        }
    }
}
