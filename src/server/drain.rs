//! Shutting down without losing a delivery: on SIGTERM `/readyz` turns 503 at once and the listeners keep
//! serving for `server.shutdown_delay_ms` (answers say `Connection: close`), so that Kubernetes removes
//! the pod from its Service's endpoints before anything stops accepting. Then Pingora stops the
//! listeners, and the process exits as soon as the deliveries in flight are done, within
//! `server.shutdown_grace_seconds`. SIGINT stops at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::{ExecutionPhase, ShutdownSignal, ShutdownSignalWatch};
use tokio::signal::unix::{SignalKind, signal};

use crate::metrics::METRICS;
use crate::state::Shared;

/// The signals that end the process, with the delay before a SIGTERM takes effect.
pub struct Signals {
    pub shared: Arc<Shared>,
    pub delay: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot listen for SIGTERM and SIGINT");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => return ShutdownSignal::FastShutdown,
        }
        self.shared.start_draining();
        log::info!(
            "SIGTERM: /readyz answers 503; serving {} ms more before the listeners close",
            self.delay.as_millis()
        );
        tokio::select! {
            () = tokio::time::sleep(self.delay) => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => ShutdownSignal::FastShutdown,
        }
    }
}

/// On SIGTERM Pingora closes the listeners and then waits its whole grace period. This ends the process
/// as soon as the deliveries in flight are done, or lets Pingora's grace period run out.
pub fn exit_when_drained(mut phases: tokio::sync::broadcast::Receiver<ExecutionPhase>) {
    std::thread::spawn(move || {
        loop {
            match phases.blocking_recv() {
                Ok(ExecutionPhase::GracefulTerminate) => {
                    log::info!(
                        "SIGTERM: no new connections; waiting for {} request(s) in flight",
                        METRICS.in_flight_now()
                    );
                }
                Ok(ExecutionPhase::ShutdownGracePeriod) => {
                    // Quiet for a moment, so that a request accepted just before the listener closed
                    // has had time to be counted.
                    let mut idle_since: Option<Instant> = None;
                    loop {
                        if METRICS.in_flight_now() > 0 {
                            idle_since = None;
                        } else if idle_since.get_or_insert_with(Instant::now).elapsed()
                            >= Duration::from_millis(200)
                        {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    log::info!("drained: exiting");
                    crate::logging::flush();
                    std::process::exit(0);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}
