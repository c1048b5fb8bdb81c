//! Idle connections to the app, most recently used first: reusing the warmest one lets the others age
//! out. A plain list under a mutex, with no task or timer per connection: an idle connection is checked
//! only when it is taken, for age and for a peek that shows whether the app closed it meanwhile.

use std::collections::VecDeque;
use std::io::ErrorKind;
use std::mem::MaybeUninit;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

/// Idle connections kept, at most. More concurrent deliveries than this still work; their connections
/// are closed after use.
const MAX_IDLE: usize = 256;

pub struct Pool {
    keepalive: Duration,
    /// Most recently used at the back.
    idle: Mutex<VecDeque<(TcpStream, Instant)>>,
}

impl Pool {
    pub fn new(keepalive: Duration) -> Self {
        Self {
            keepalive,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// The warmest idle connection that is still open and within the keep-alive time.
    pub fn checkout(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((stream, since)) = idle.pop_back() {
            if since.elapsed() < self.keepalive && quiet(&stream) {
                return Some(stream);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly, dropping those past the keep-alive time.
    pub fn checkin(&self, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= self.keepalive)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((stream, now));
        }
    }
}

/// An idle connection with nothing to read: the app has neither closed it nor sent anything unasked.
/// Tokio's sockets are non-blocking, so the peek answers `WouldBlock` at once when nothing is there.
fn quiet(stream: &TcpStream) -> bool {
    let mut byte = [MaybeUninit::<u8>::uninit()];
    matches!(
        socket2::SockRef::from(stream).peek(&mut byte),
        Err(e) if e.kind() == ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (client.unwrap(), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn an_open_quiet_connection_is_reused_most_recent_first() {
        let pool = Pool::new(Duration::from_secs(60));
        let (a, _a_peer) = pair().await;
        let (b, _b_peer) = pair().await;
        let b_port = b.local_addr().unwrap().port();
        pool.checkin(a);
        pool.checkin(b);
        let taken = pool.checkout().expect("an idle connection");
        assert_eq!(taken.local_addr().unwrap().port(), b_port);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_or_wrote_on_is_not_reused() {
        let pool = Pool::new(Duration::from_secs(60));
        let (closed, peer) = pair().await;
        drop(peer);
        // Wait until the FIN is there to be seen, rather than sleeping.
        closed.readable().await.unwrap();
        pool.checkin(closed);
        let (chatty, mut peer) = pair().await;
        peer.write_all(b"HTTP/1.1 408 unasked\r\n\r\n")
            .await
            .unwrap();
        chatty.readable().await.unwrap();
        pool.checkin(chatty);
        assert!(pool.checkout().is_none());
    }

    #[tokio::test]
    async fn a_connection_past_the_keepalive_time_is_not_reused() {
        let pool = Pool::new(Duration::ZERO);
        let (a, _peer) = pair().await;
        pool.checkin(a);
        assert!(pool.checkout().is_none());
    }
}
