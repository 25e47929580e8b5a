//! The HTTP/1.1 server under the router, with the bounds an internet-facing endpoint needs.
//!
//! `axum::serve` has no header-read timeout, no idle timeout and no connection limit, so a
//! client that opens connections and sends half a request header keeps each of them, and a
//! task, forever. This accept loop serves the same router with hyper's HTTP/1.1 connection and
//! adds:
//!
//! - **A connection limit** ([`Limits::max_connections`]): a semaphore permit is taken *before*
//!   `accept`, so past the limit new connections wait in the kernel's listen backlog
//!   ([`BACKLOG`]; past that the kernel drops SYNs and clients retry) and are served in order
//!   as slots free up, instead of costing memory and a task here.
//! - **A header timeout** ([`Limits::header_timeout`]): a request's head must be complete within
//!   it, counted from the accept for a connection's first request and from the first byte for
//!   later ones. Past it the connection is closed without an answer.
//! - **An idle timeout** ([`Limits::idle_timeout`]): a keep-alive connection with no request
//!   in progress and no new byte for that long is closed.
//!
//! While a request is in the router no timer runs: the handler is bounded by the body limit
//! and the publish timeout, and it is reached only past the allow-list and the secret check.
//!
//! Each connection is one task that polls hyper's connection and its own deadline; the phase
//! ([`Phase`]) is updated by the socket wrapper (a byte arrived) and by the service wrapper (a
//! request started or ended), all within that task. Graceful shutdown stops accepting, lets
//! requests in progress finish (hyper's `graceful_shutdown`), closes idle connections at once,
//! and waits for every connection task; the timeouts above bound that wait.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::{extract::ConnectInfo, Router};
use courier_common::{
    config::{parse_duration, ConfigError},
    CancellationToken,
};
use hyper::{body::Incoming, server::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::task::TaskTracker;
use tower::ServiceExt as _;

/// Default [`Limits::header_timeout`].
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Default [`Limits::idle_timeout`]: longer than the 60 s upstream keep-alive that reverse
/// proxies and load balancers commonly use, so that the proxy closes an idle connection first
/// and never sends a request on one this side is closing.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(75);
/// Default [`Limits::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;

/// The listen backlog: connections past [`Limits::max_connections`] wait here. The kernel caps
/// it at `net.core.somaxconn` (4096 on current Linux); the standard library's 128 would make
/// clients retry their SYN after a second as soon as 128 connections wait.
pub const BACKLOG: u32 = 1024;

/// Binds `addr` with [`BACKLOG`] (and `SO_REUSEADDR`, so a restart can take the port at once).
pub(crate) fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Connection bounds (environment variables or the matching flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Time a client has to send a complete request header: from the accept for a connection's
    /// first request, from its first byte for later ones. Past it the connection is closed.
    #[arg(long = "header-timeout", env = "COURIER_INGRESS_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// Time a keep-alive connection may stay open with no request in progress and no new byte.
    #[arg(long = "idle-timeout", env = "COURIER_INGRESS_IDLE_TIMEOUT", default_value = "75s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// Most connections served at once; more wait in the listen backlog until one closes.
    #[arg(long = "max-connections", env = "COURIER_INGRESS_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    /// Refuses values that would switch a bound off.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let refuse = |var, reason: &str| {
            Err(ConfigError {
                var,
                reason: reason.into(),
            })
        };
        if self.header_timeout.is_zero() {
            return refuse("COURIER_INGRESS_HEADER_TIMEOUT", "must be more than 0");
        }
        if self.idle_timeout.is_zero() {
            return refuse("COURIER_INGRESS_IDLE_TIMEOUT", "must be more than 0");
        }
        if self.max_connections == 0 {
            return refuse("COURIER_INGRESS_MAX_CONNECTIONS", "must be at least 1");
        }
        if self.max_connections as usize > Semaphore::MAX_PERMITS {
            return refuse("COURIER_INGRESS_MAX_CONNECTIONS", "is too large");
        }
        Ok(())
    }
}

/// Connection counters of a running server.
#[derive(Debug, Default)]
pub struct ConnStats {
    /// Connections open now.
    pub open: AtomicUsize,
    /// The most connections ever open at once.
    pub peak: AtomicUsize,
    /// Connections accepted in total.
    pub accepted: AtomicUsize,
    /// Connections closed because their request header did not arrive in time.
    pub header_timeouts: AtomicUsize,
    /// Keep-alive connections closed because they stayed idle.
    pub idle_timeouts: AtomicUsize,
}

/// Serves `app` on `listener` until `shutdown` fires and every connection closed.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<ConnStats>,
    shutdown: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let tracker = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
            () = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let open = stats.open.fetch_add(1, Ordering::Relaxed) + 1;
        stats.peak.fetch_max(open, Ordering::Relaxed);
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        let (app, limits, stats, shutdown) =
            (app.clone(), limits.clone(), stats.clone(), shutdown.clone());
        tracker.spawn(async move {
            connection(stream, peer, app, &limits, &stats, &shutdown).await;
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}

/// Per-connection errors (the peer went away between SYN and accept) are skipped; others
/// (out of file descriptors) are logged and retried after a pause, as `axum::serve` does.
async fn accept_failed(e: io::Error) {
    use io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %e, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Where a connection is in its life; decides which timer runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head since `since`: the header timeout runs.
    Head { since: Instant },
    /// Between requests of a keep-alive connection, no byte yet: the idle timeout runs.
    Idle { since: Instant },
    /// `n` requests in the router: no timer.
    Busy { n: usize },
}

/// A connection's phase, shared by the socket wrapper, the service wrapper and the task.
#[derive(Debug)]
struct Activity {
    phase: Mutex<Phase>,
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self {
            phase: Mutex::new(Phase::Head {
                since: Instant::now(),
            }),
            changed: Notify::new(),
        }
    }

    fn update(&self, f: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(|p| p.into_inner());
        let next = f(*phase);
        if next != *phase {
            *phase = next;
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: an idle connection starts reading a head.
    fn read(&self) {
        self.update(|p| match p {
            Phase::Idle { .. } => Phase::Head {
                since: Instant::now(),
            },
            p => p,
        });
    }

    /// A request reached the router; the guard ends it.
    fn begin(self: &Arc<Self>) -> InRouter {
        self.update(|p| match p {
            Phase::Busy { n } => Phase::Busy { n: n + 1 },
            _ => Phase::Busy { n: 1 },
        });
        InRouter(self.clone())
    }

    fn deadline(&self, limits: &Limits) -> Option<(Instant, Expiry)> {
        match *self.phase.lock().unwrap_or_else(|p| p.into_inner()) {
            Phase::Head { since } => Some((since + limits.header_timeout, Expiry::Header)),
            Phase::Idle { since } => Some((since + limits.idle_timeout, Expiry::Idle)),
            Phase::Busy { .. } => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Expiry {
    Header,
    Idle,
}

/// A request in the router; dropping it (response ready, or the request abandoned) ends it.
struct InRouter(Arc<Activity>);

impl Drop for InRouter {
    fn drop(&mut self) {
        self.0.update(|p| match p {
            Phase::Busy { n } if n > 1 => Phase::Busy { n: n - 1 },
            _ => Phase::Idle {
                since: Instant::now(),
            },
        });
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    stats: &ConnStats,
    shutdown: &CancellationToken,
) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let service = {
        let activity = activity.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            let in_router = activity.begin();
            req.extensions_mut().insert(ConnectInfo(peer));
            let response = app.clone().oneshot(req.map(axum::body::Body::new));
            async move {
                let response = response.await;
                drop(in_router);
                response
            }
        })
    };
    let conn = http1::Builder::new()
        .keep_alive(true)
        .serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        let deadline = activity.deadline(limits);
        let expired = async {
            match deadline {
                Some((at, why)) => {
                    tokio::time::sleep_until(at).await;
                    why
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            why = expired => {
                // The phase is checked again: nothing else runs on this connection meanwhile,
                // so an expired deadline of the current phase is final.
                if activity.deadline(limits).is_some_and(|(at, _)| at <= Instant::now()) {
                    let counter = match why {
                        Expiry::Header => &stats.header_timeouts,
                        Expiry::Idle => &stats.idle_timeouts,
                    };
                    counter.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(%peer, ?why, "closing connection: timed out");
                    return; // dropping the connection closes the socket
                }
            }
            () = activity.changed.notified() => {}
            () = shutdown.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// The socket, telling [`Activity`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        limits: Limits,
    }

    #[test]
    fn default_matches_the_flags_defaults() {
        let parsed = Cli::try_parse_from(["x"]).unwrap().limits;
        let default = Limits::default();
        assert_eq!(parsed.header_timeout, default.header_timeout);
        assert_eq!(parsed.idle_timeout, default.idle_timeout);
        assert_eq!(parsed.max_connections, default.max_connections);
        default.validate().unwrap();
    }

    #[test]
    fn zero_bounds_are_refused_naming_the_variable() {
        let cases = [
            (
                Limits {
                    header_timeout: Duration::ZERO,
                    ..Limits::default()
                },
                "COURIER_INGRESS_HEADER_TIMEOUT",
            ),
            (
                Limits {
                    idle_timeout: Duration::ZERO,
                    ..Limits::default()
                },
                "COURIER_INGRESS_IDLE_TIMEOUT",
            ),
            (
                Limits {
                    max_connections: 0,
                    ..Limits::default()
                },
                "COURIER_INGRESS_MAX_CONNECTIONS",
            ),
        ];
        for (limits, var) in cases {
            assert_eq!(limits.validate().unwrap_err().var, var);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn phases_pick_the_timer() {
        let limits = Limits {
            header_timeout: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(7),
            max_connections: 1,
        };
        let a = Arc::new(Activity::new());
        let t0 = Instant::now();
        assert!(
            matches!(a.deadline(&limits), Some((at, Expiry::Header)) if at == t0 + Duration::from_secs(2))
        );
        // Bytes of the first request do not restart its header timer.
        tokio::time::advance(Duration::from_secs(1)).await;
        a.read();
        assert!(
            matches!(a.deadline(&limits), Some((at, Expiry::Header)) if at == t0 + Duration::from_secs(2))
        );
        let first = a.begin();
        let second = a.begin();
        assert!(a.deadline(&limits).is_none());
        drop(first);
        assert!(
            a.deadline(&limits).is_none(),
            "one request still in the router"
        );
        drop(second);
        let t1 = Instant::now();
        assert!(
            matches!(a.deadline(&limits), Some((at, Expiry::Idle)) if at == t1 + Duration::from_secs(7))
        );
        // The next request's first byte starts its header timer.
        tokio::time::advance(Duration::from_secs(5)).await;
        a.read();
        let t2 = Instant::now();
        assert!(
            matches!(a.deadline(&limits), Some((at, Expiry::Header)) if at == t2 + Duration::from_secs(2))
        );
    }
}
