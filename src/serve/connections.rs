//! The connection loop of `berth serve`, for plain TCP and TLS alike. It is
//! axum's `serve` plus what a public registry needs and `axum::serve` does
//! not do:
//! - the first request's headers must arrive within the header timeout of
//!   the accept, TLS handshake included (a client that connects and sends
//!   nothing, or trickles header bytes, cannot hold a connection open);
//! - a connection on which nothing moves either way for the idle timeout is
//!   closed (a stalled upload frees its connection), while a multi-GB push
//!   that keeps sending, however slowly, is never cut off;
//! - request bodies slower than a minimum rate are ended (trickling uploads);
//! - connections are counted against the open-file limit: near it, new ones
//!   are closed at once instead of failing the storage's own file opens, and
//!   accept errors back off instead of spinning.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Body as HttpBody, Bytes, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::config::LimitSettings;

/// Open files kept free for everything that is not a client connection
/// (storage files of uploads in flight, S3 sockets, logs): at least this
/// many, or an eighth of the limit when that is more.
const FD_RESERVE: u64 = 64;
/// How long the accept loop pauses after an accept error such as EMFILE,
/// which would otherwise repeat at once and spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// Warnings that could repeat per connection are logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How often the open files are counted once connections fill half the budget.
const FD_SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// A request body must bring `bytes_per_second` on average, judged over
/// `window` (see [`MinRateBody`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MinRate {
    pub bytes_per_second: u64,
    pub window: Duration,
}

/// What the loop enforces per connection, and how many it keeps open.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub min_rate: Option<MinRate>,
    /// The open-file limit after raising it.
    pub fd_limit: u64,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
}

impl Limits {
    /// Raise the open-file limit as far as allowed (logged) and size the
    /// connection budget by it.
    pub fn new(settings: &LimitSettings) -> Limits {
        let fd_limit = match raise_fd_limit() {
            Ok((before, now)) if now > before => {
                tracing::info!(from = before, to = now, "raised the open-file limit");
                now
            }
            Ok((_, now)) => {
                tracing::info!(limit = now, "open-file limit");
                now
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read or raise the open-file limit; assuming 1024");
                1024
            }
        };
        let min_rate = (settings.min_upload_rate > 0 && !settings.min_upload_rate_window.is_zero())
            .then_some(MinRate {
                bytes_per_second: settings.min_upload_rate,
                window: settings.min_upload_rate_window,
            });
        Limits {
            header_timeout: settings.header_timeout,
            idle_timeout: settings.idle_timeout,
            min_rate,
            fd_limit,
            max_connections: usize::try_from(fd_limit - fd_reserve(fd_limit)).unwrap_or(usize::MAX),
        }
    }
}

fn fd_reserve(limit: u64) -> u64 {
    // Never more than half: a tiny limit still serves some connections.
    FD_RESERVE.max(limit / 8).min(limit / 2)
}

/// Set the soft RLIMIT_NOFILE to the hard one. Returns (before, after).
fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we lend it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            let e = io::Error::last_os_error();
            tracing::warn!(error = %e, soft = before, hard = limit.rlim_max, "cannot raise the open-file limit to its hard limit");
        } else {
            limit = raised;
        }
    }
    // An infinite hard limit still cannot give more than the kernel's nr_open.
    let now = if limit.rlim_cur == libc::RLIM_INFINITY {
        1 << 20
    } else {
        limit.rlim_cur
    };
    Ok((before, now))
}

/// Connections the kernel may hold for `accept` (capped by
/// `net.core.somaxconn`). tokio's `TcpListener::bind` asks for 1024: a
/// fleet of 1024 nodes connecting at once overflows that, and a dropped SYN
/// is retried only after a second.
const LISTEN_BACKLOG: u32 = 4096;

/// Listen on `addr` (the first address it resolves to) with [`LISTEN_BACKLOG`].
pub async fn listen(addr: &str) -> io::Result<TcpListener> {
    let mut last = None;
    for socket_addr in tokio::net::lookup_host(addr).await? {
        let socket = if socket_addr.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        // As tokio's own bind does: a restarted server can take its port back
        // while old connections are in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        match socket.bind(socket_addr) {
            Ok(()) => return socket.listen(LISTEN_BACKLOG),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, format!("{addr}: no address"))
    }))
}

/// Serve `app` on `listener` (TLS with `tls`) until `shutdown` resolves,
/// then let requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper's own header timer covers a keep-alive connection's later
    // requests; the first one (and the TLS handshake) is timed from the
    // accept below, because hyper only starts its timer once it has
    // bytes to tell HTTP/1 from HTTP/2.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let open = Arc::new(AtomicUsize::new(0));
    let mut shed_log = LogEvery::default();
    let mut fds = FdGauge::default();
    let mut accept_log = LogEvery::default();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            conn = listener.accept() => conn,
            () = &mut shutdown => break,
        };
        let (tcp, peer) = match accepted {
            Ok(conn) => conn,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                let out_of_files = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
                let open_now = open.load(Ordering::Relaxed);
                accept_log.warn(|skipped| {
                    if out_of_files {
                        tracing::warn!(error = %e, open_connections = open_now, fd_limit = limits.fd_limit, repeated = skipped,
                            "cannot accept connections: out of file descriptors; raise the open-file limit (ulimit -n, systemd LimitNOFILE=)");
                    } else {
                        tracing::warn!(error = %e, repeated = skipped, "cannot accept connections");
                    }
                });
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let guard = OpenConnection::count(&open);
        // Connections are most of the open files, but uploads in flight hold
        // storage files too: past half the budget, count the real files, so
        // the storage always keeps some.
        let files = (guard.open > limits.max_connections / 2)
            .then(|| fds.in_use())
            .flatten();
        let files_full =
            files.is_some_and(|n| n > limits.fd_limit - fd_reserve(limits.fd_limit) / 2);
        if guard.open > limits.max_connections || files_full {
            // Dropping the socket closes it: the client sees the connection
            // end at once and can retry, instead of waiting in the backlog.
            drop(tcp);
            shed_log.warn(|skipped| {
                tracing::warn!(
                    open_connections = guard.open - 1,
                    open_files = files,
                    fd_limit = limits.fd_limit,
                    closed_since_last_warning = skipped,
                    "closing new connections: as many are open as the open-file limit of {} allows (keeping {} files for storage); raise the limit (ulimit -n, systemd LimitNOFILE=) or lower limits.header_timeout / limits.idle_timeout if idle clients hold them",
                    limits.fd_limit,
                    fd_reserve(limits.fd_limit)
                );
            });
            continue;
        }
        if let Err(e) = tcp.set_nodelay(true) {
            // Without TCP_NODELAY a response whose headers and body go out in two
            // writes waits for the client's delayed ACK: ~40 ms per small blob GET.
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        let connection = Connection {
            peer,
            app: app.clone(),
            builder: builder.clone(),
            watcher: graceful.watcher(),
            limits,
            deadline: Instant::now() + limits.header_timeout,
        };
        let tls = tls.clone();
        tokio::spawn(async move {
            let _guard = guard;
            match tls {
                None => connection.run(tcp).await,
                Some(acceptor) => {
                    let handshake =
                        tokio::time::timeout_at(connection.deadline, acceptor.accept(tcp));
                    match handshake.await {
                        Ok(Ok(stream)) => connection.run(stream).await,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer.ip(), error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(
                            client = %peer.ip(),
                            "closed: no TLS handshake within the header timeout"
                        ),
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// The accept errors that concern one connection only (the client gave up
/// before we took it): the listener itself is fine.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// A warning that may fire per connection, logged at most every
/// [`WARN_EVERY`] with the number left out meanwhile.
#[derive(Default)]
struct LogEvery {
    last: Option<std::time::Instant>,
    skipped: u64,
}

impl LogEvery {
    fn warn(&mut self, log: impl FnOnce(u64)) {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|last| now < last + WARN_EVERY) {
            self.skipped += 1;
            return;
        }
        log(self.skipped);
        self.last = Some(now);
        self.skipped = 0;
    }
}

/// The open files of this process, from /proc/self/fd, read at most every
/// [`FD_SAMPLE_EVERY`] (reading is O(open files)); in between, each accept
/// counts as one more. `None` where /proc is not there.
#[derive(Default)]
struct FdGauge {
    sampled: Option<(std::time::Instant, u64)>,
    accepted_since: u64,
}

impl FdGauge {
    fn in_use(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if let Some((at, n)) = self.sampled {
            if now < at + FD_SAMPLE_EVERY {
                self.accepted_since += 1;
                return Some(n + self.accepted_since);
            }
        }
        let n = match std::fs::read_dir("/proc/self/fd") {
            Ok(entries) => entries.count() as u64,
            // No file left even to look: as full as it gets.
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => u64::MAX,
            Err(_) => return None,
        };
        self.sampled = Some((now, n));
        self.accepted_since = 0;
        Some(n)
    }
}

/// One open connection in the count; dropping it takes it out.
struct OpenConnection {
    open: usize,
    counter: Arc<AtomicUsize>,
}

impl OpenConnection {
    fn count(counter: &Arc<AtomicUsize>) -> OpenConnection {
        OpenConnection {
            open: counter.fetch_add(1, Ordering::Relaxed) + 1,
            counter: counter.clone(),
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An accepted connection, ready to speak HTTP once its stream is.
struct Connection {
    peer: SocketAddr,
    app: Router,
    builder: Arc<Builder<TokioExecutor>>,
    watcher: Watcher,
    limits: Limits,
    /// The first request's headers must be in by then.
    deadline: Instant,
}

impl Connection {
    async fn run<I>(self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Connection {
            peer,
            app,
            builder,
            watcher,
            limits,
            deadline,
        } = self;
        let started = Arc::new(AtomicBool::new(false));
        let seen = started.clone();
        let service = app.layer(axum::Extension(ConnectInfo(peer))).map_request(
            move |r: axum::http::Request<Incoming>| {
                // hyper calls the service once a request's headers are in.
                seen.store(true, Ordering::Relaxed);
                r.map(|body| match limits.min_rate {
                    Some(rate) => axum::body::Body::new(MinRateBody::new(body, rate, peer)),
                    None => axum::body::Body::new(body),
                })
            },
        );
        let io = TokioIo::new(IdleTimeout::new(io, limits.idle_timeout));
        let conn = builder
            .serve_connection_with_upgrades(io, TowerToHyperService::new(service))
            .into_owned();
        let conn = watcher.watch(conn);
        tokio::pin!(conn);
        let result = tokio::select! {
            result = &mut conn => result,
            () = tokio::time::sleep_until(deadline) => {
                if !started.load(Ordering::Relaxed) {
                    tracing::debug!(client = %peer.ip(), "closed: no request within the header timeout");
                    return;
                }
                conn.await
            }
        };
        if let Err(e) = result {
            tracing::debug!(client = %peer.ip(), error = %e, "connection ended with an error");
        }
    }
}

/// A request body that fails with `TimedOut` once it falls behind a minimum
/// rate. It keeps an allowance of at most one window's worth of bytes
/// (`rate * window`), starting full: time spent waiting for the client
/// spends it at `rate`, bytes received refill it. So a client that sends at
/// least `rate` on average, in bursts no further apart than the window, is
/// never cut however the bursts fall; one that starts late or pauses gets a
/// whole window first; one that trickles below the rate is cut within about
/// `window * rate / (rate - its rate)`. Only time spent waiting on the
/// client counts: while the server is busy writing what came (and so not
/// reading), the client cannot send, and that is not its fault.
struct MinRateBody<B> {
    inner: B,
    rate: MinRate,
    peer: SocketAddr,
    /// Bytes the client may still be behind by.
    allowance: f64,
    /// Set while the last poll found no data: waiting on the client since.
    waiting_since: Option<Instant>,
    /// Wakes the reader when the allowance runs out.
    timer: Option<Pin<Box<Sleep>>>,
    received: u64,
    cut: bool,
}

impl<B> MinRateBody<B> {
    fn new(inner: B, rate: MinRate, peer: SocketAddr) -> MinRateBody<B> {
        MinRateBody {
            inner,
            rate,
            peer,
            allowance: full_allowance(rate),
            waiting_since: None,
            timer: None,
            received: 0,
            cut: false,
        }
    }

    fn too_slow(&self) -> io::Error {
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "request body slower than the minimum upload rate of {} bytes/s over {:?} (limits.min_upload_rate)",
                self.rate.bytes_per_second, self.rate.window
            ),
        )
    }
}

fn full_allowance(rate: MinRate) -> f64 {
    rate.bytes_per_second as f64 * rate.window.as_secs_f64()
}

impl<B> HttpBody for MinRateBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.cut {
            return Poll::Ready(Some(Err(this.too_slow().into())));
        }
        let per_second = this.rate.bytes_per_second as f64;
        let now = Instant::now();
        if let Some(since) = this.waiting_since.take() {
            this.allowance -= per_second * now.duration_since(since).as_secs_f64();
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    // Bytes that are here count even if the allowance just ran
                    // out: the client is sending.
                    this.allowance = (this.allowance.max(0.0) + data.len() as f64)
                        .min(full_allowance(this.rate));
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                // Under one byte left: the client is behind by a whole window.
                if this.allowance < 1.0 {
                    this.cut = true;
                    tracing::info!(
                        client = %this.peer.ip(),
                        received = this.received,
                        min_rate = this.rate.bytes_per_second,
                        window = ?this.rate.window,
                        "request body slower than the minimum upload rate: cut"
                    );
                    return Poll::Ready(Some(Err(this.too_slow().into())));
                }
                this.waiting_since = Some(now);
                let runs_out = now + Duration::from_secs_f64(this.allowance / per_second);
                let timer = match &mut this.timer {
                    Some(timer) => {
                        timer.as_mut().reset(runs_out);
                        timer
                    }
                    None => this
                        .timer
                        .insert(Box::pin(tokio::time::sleep_until(runs_out))),
                };
                // Registers the wake-up; if it is already due, poll again now.
                if timer.as_mut().poll(cx).is_ready() {
                    cx.waker().wake_by_ref();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An I/O stream that fails with `TimedOut` once neither a read nor a write
/// has made progress for `idle`.
struct IdleTimeout<T> {
    inner: T,
    idle: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, idle: Duration) -> IdleTimeout<T> {
        IdleTimeout {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }

    fn progressed(&mut self) {
        let next = Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// A write's outcome: progress resets the deadline, waiting checks it.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.progressed();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.check(cx).map(|r| r.map(|()| 0)),
        }
    }

    /// Called when the inner stream is not ready: time out if it is too late.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle for too long",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.progressed();
                }
                Poll::Ready(result)
            }
            Poll::Pending => this.check(cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.check(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{SinkExt, StreamExt};

    fn peer() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 1))
    }

    /// A body fed by a channel, as hyper's is fed by the socket.
    struct ChannelBody(futures::channel::mpsc::Receiver<Bytes>);

    impl HttpBody for ChannelBody {
        type Data = Bytes;
        type Error = io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
            self.0
                .poll_next_unpin(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
        }
    }

    fn channel_body() -> (futures::channel::mpsc::Sender<Bytes>, ChannelBody) {
        let (tx, rx) = futures::channel::mpsc::channel(16);
        (tx, ChannelBody(rx))
    }

    async fn next_frame<B: HttpBody + Unpin>(
        body: &mut B,
    ) -> Option<Result<Frame<B::Data>, B::Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)).await
    }

    /// Bytes read until the end or the first error.
    async fn read_all<B>(mut body: B) -> (u64, Option<axum::BoxError>)
    where
        B: HttpBody<Data = Bytes, Error = axum::BoxError> + Unpin,
    {
        let mut n = 0;
        while let Some(frame) = next_frame(&mut body).await {
            match frame {
                Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return (n, Some(e)),
            }
        }
        (n, None)
    }

    // Real time (tokio's paused clock needs its test-util feature, which
    // would rebuild tokio and everything above it for tests alone): short
    // windows, and margins for a loaded machine.
    const RATE: MinRate = MinRate {
        bytes_per_second: 1000,
        window: Duration::from_millis(500),
    };

    #[tokio::test]
    async fn trickle_is_cut_after_about_a_window() {
        let (mut tx, body) = channel_body();
        let body = MinRateBody::new(body, RATE, peer());
        tokio::spawn(async move {
            // 50 bytes/s: far below 1000.
            for _ in 0..500 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let (n, err) = read_all(body).await;
        let took = started.elapsed();
        let err = err.expect("a trickle is cut");
        // 500 bytes of allowance lost at 950 bytes/s: ~0.53 s.
        assert!(
            took >= Duration::from_millis(500) && took < Duration::from_secs(3),
            "cut after {took:?}"
        );
        assert!(n < 150, "{n} bytes before the cut");
        let io = err.downcast::<io::Error>().expect("an io::Error");
        assert_eq!(io.kind(), io::ErrorKind::TimedOut);
        assert!(io.to_string().contains("1000 bytes/s"), "{io}");
    }

    #[tokio::test]
    async fn just_fast_enough_in_bursts_is_never_cut() {
        let (mut tx, body) = channel_body();
        let body = MinRateBody::new(body, RATE, peer());
        tokio::spawn(async move {
            // A late start (most of a window), then exactly 1000 bytes/s in
            // bursts 300 ms apart (an interval does not drift), for 3 s.
            tokio::time::sleep(Duration::from_millis(400)).await;
            let mut ticks = tokio::time::interval(Duration::from_millis(300));
            for _ in 0..10 {
                ticks.tick().await;
                if tx.send(Bytes::from(vec![b'x'; 300])).await.is_err() {
                    return;
                }
            }
        });
        let (n, err) = read_all(body).await;
        assert!(err.is_none(), "cut: {err:?}");
        assert_eq!(n, 10 * 300);
    }

    #[tokio::test]
    async fn a_slow_reader_is_not_the_clients_fault() {
        let (mut tx, body) = channel_body();
        let mut body = MinRateBody::new(body, RATE, peer());
        for _ in 0..3 {
            tx.send(Bytes::from_static(b"x")).await.expect("send");
        }
        // The server takes longer than a window per chunk (say, a slow disk);
        // the client's bytes were there all along.
        for _ in 0..3 {
            let frame = next_frame(&mut body).await;
            assert!(matches!(frame, Some(Ok(_))), "{frame:?}");
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        drop(tx);
        let frame = next_frame(&mut body).await;
        assert!(frame.is_none(), "{frame:?}");
    }
}
