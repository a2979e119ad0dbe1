//! The HTTP/1.1 server loop: accepting connections within a cap, timeouts
//! for clients that stall, and a graceful shutdown with a deadline.
//!
//! * **Connections are capped** (below the process's open-file limit):
//!   at the cap lampyr stops accepting until one closes; the kernel's
//!   backlog holds the rest.
//! * **A client that stalls is dropped.** A connection gets
//!   `header_timeout` to send each request's head, counted from when it
//!   is idle (a new connection, or between keep-alive requests), so an
//!   idle connection closes after it too; a response that the client does
//!   not read for `stall_timeout` ends the connection; request bodies have
//!   their own timeout at the trigger.
//! * **Shutdown** stops accepting, ends live log streams, lets requests in
//!   flight finish up to a deadline, closes idle connections at once, and
//!   then drops whatever is left.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How the server treats its connections.
#[derive(Debug, Clone, Copy)]
pub struct ConnLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// Time a connection has to send a request's head once it is idle.
    pub header_timeout: Duration,
    /// Time a client may leave a response unread before its connection ends.
    pub stall_timeout: Duration,
    /// Time requests in flight get to finish at shutdown.
    pub shutdown_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        ConnLimits {
            max_connections: 4096,
            header_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(30),
            shutdown_timeout: Duration::from_secs(5),
        }
    }
}

impl ConnLimits {
    /// The connection cap, held below the open-file limit: instances and
    /// the server's own files need descriptors too.
    pub fn effective_max_connections(&self) -> usize {
        let nofile = nofile_limit();
        let room = nofile.saturating_sub(1024) / 2;
        self.max_connections.min(room.max(64))
    }
}

/// Raises the open-file soft limit to the hard limit (as servers do) and
/// returns it.
fn nofile_limit() -> usize {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    static LIMIT: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(|| match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                hard as usize
            } else {
                soft as usize
            }
        }
        Err(_) => 1024,
    })
}

/// Requests being served right now, for the shutdown message.
#[derive(Debug, Default)]
pub struct InFlight(AtomicUsize);

impl InFlight {
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn enter(self: &Arc<Self>) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlightGuard(self.clone())
    }
}

struct InFlightGuard(Arc<InFlight>);

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0 .0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `make(peer)`'s service on every connection of `listener` until
/// `shutdown` resolves, then shuts down gracefully: `on_shutdown` is told
/// how many requests are in flight (and ends what would otherwise never
/// finish, such as live log streams).
pub async fn serve<S, F>(
    listener: tokio::net::TcpListener,
    limits: ConnLimits,
    make: impl Fn(std::net::SocketAddr) -> S,
    shutdown: F,
    on_shutdown: impl FnOnce(usize),
) -> std::io::Result<()>
where
    S: tower::Service<
            axum::extract::Request,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    F: Future<Output = ()> + Send,
{
    let cap = Arc::new(tokio::sync::Semaphore::new(
        limits.effective_max_connections(),
    ));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let in_flight = Arc::new(InFlight::default());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = cap.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            _ = &mut shutdown => break,
        };
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of descriptors or the like: back off a moment
                    // rather than spin.
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        let svc = make(peer);
        let in_flight = in_flight.clone();
        let hyper_svc =
            hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                let mut svc = svc.clone();
                let guard = in_flight.enter();
                async move {
                    let resp = tower::Service::call(&mut svc, req.map(axum::body::Body::new)).await;
                    drop(guard);
                    resp
                }
            });
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .keep_alive(true);
        let io = TokioIo::new(Stall::new(tcp, limits.stall_timeout));
        let conn = graceful.watch(builder.serve_connection(io, hyper_svc));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    on_shutdown(in_flight.count());
    if tokio::time::timeout(limits.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = in_flight.count(),
            "requests still running {:?} after shutdown began were cut off",
            limits.shutdown_timeout
        );
    }
    Ok(())
}

/// A connection whose writes fail once the client has left a response
/// unread for the stall timeout: the time counts only while a write is
/// blocked on the client, never while the server is at work.
struct Stall {
    tcp: TcpStream,
    limit: Duration,
    blocked_since: Option<Instant>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stall {
    fn new(tcp: TcpStream, limit: Duration) -> Stall {
        Stall {
            tcp,
            limit,
            blocked_since: None,
            timer: None,
        }
    }

    fn check_stall(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Error> {
        let since = *self.blocked_since.get_or_insert_with(Instant::now);
        let deadline = tokio::time::Instant::from_std(since + self.limit);
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.deadline() != deadline {
            timer.as_mut().reset(deadline);
        }
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its response",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for Stall {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Stall {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.tcp).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.blocked_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_stall(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.blocked_since = None;
                Poll::Ready(r)
            }
            Poll::Pending => match self.check_stall(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}
