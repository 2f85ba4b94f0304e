//! Starting and stopping the server on a background runtime.

pub(crate) mod recent;
pub(crate) mod routes;
pub(crate) mod service;
pub(crate) mod store;
pub(crate) mod undo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use arrowbridge::Registry;
use futures::future::{BoxFuture, FutureExt};
use futures::TryStreamExt;
use std::future::Future;
use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::error::{FlightServerError, Result};
use crate::server::routes::Routes;
use crate::server::service::Service;
use crate::server::store::Store;
use crate::wire::transport::{Coalesce, Mode};

/// How long [`RunningServer::shutdown`] lets calls under way finish before it cancels them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The address to listen on (`127.0.0.1` for this machine only).
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Listen on this Unix socket instead of `host:port` (`grpc+unix://` locations). The
    /// socket is created readable and writable by this user only.
    pub unix: Option<PathBuf>,
    /// Persist every put here, and serve what is here at start.
    pub data_dir: Option<PathBuf>,
    /// Require `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// PEM certificate and key: serve gRPC over TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    /// The kernels DoExchange runs.
    pub registry: Arc<Registry>,
    /// Offer stored items as shared memory to clients on this host and of this user (see
    /// [`crate::shm`]); on by default.
    pub shm: bool,
    /// The most bytes the stored items may take (gRPC, shared-memory and data-directory puts
    /// alike; shared memory at its full size): a put past it is refused with
    /// `RESOURCE_EXHAUSTED` (kind out-of-memory) and nothing of it is kept. By default
    /// [`default_max_bytes`]: three quarters of the memory this process may use.
    pub max_bytes: usize,
}

/// Three quarters of the memory this process may use: the machine's (`MemTotal`), or its
/// cgroup's limit (`memory.max`) where that is lower.
pub fn default_max_bytes() -> usize {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let total = read("/proc/meminfo").and_then(|info| {
        let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kib: usize = line.split_whitespace().nth(1)?.parse().ok()?;
        kib.checked_mul(1024)
    });
    let cgroup = read("/sys/fs/cgroup/memory.max").and_then(|m| m.trim().parse::<usize>().ok());
    match (total, cgroup) {
        (Some(t), Some(c)) => t.min(c) / 4 * 3,
        (Some(limit), None) | (None, Some(limit)) => limit / 4 * 3,
        (None, None) => usize::MAX,
    }
}

impl ServerConfig {
    /// An in-memory server on the Unix socket `path` with the built-in kernels.
    pub fn unix(path: impl Into<PathBuf>) -> Self {
        ServerConfig {
            unix: Some(path.into()),
            ..ServerConfig::new("", 0)
        }
    }

    /// An in-memory server on `host:port` with the built-in kernels.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ServerConfig {
            host: host.into(),
            port,
            unix: None,
            data_dir: None,
            token: None,
            tls: None,
            registry: Arc::new(Registry::with_builtins()),
            shm: cfg!(target_os = "linux"),
            max_bytes: default_max_bytes(),
        }
    }
}

/// A server running on its own threads; dropping it shuts it down.
#[derive(Debug)]
pub struct RunningServer {
    location: String,
    addr: Option<SocketAddr>,
    shutdown: Option<oneshot::Sender<Duration>>,
    thread: Option<JoinHandle<Result<()>>>,
}

/// Starts a server on threads of its own; returns once it accepts connections. It may be
/// called from synchronous or asynchronous code (its errors are returned, never panics);
/// [`RunningServer::shutdown`] waits for the server's thread, so from async code call it
/// where blocking is allowed (e.g. `spawn_blocking`).
///
/// ```
/// use arrowbridge_flight::{start, ServerConfig};
///
/// let mut server = start(ServerConfig::new("127.0.0.1", 0))?; // port 0: any free port
/// assert!(server.location().starts_with("grpc://127.0.0.1:"));
/// // Any Flight client can now put, get and call kernels (see tests/rust_client.rs).
/// server.shutdown()?;
/// assert!(!server.is_running());
/// # Ok::<(), arrowbridge_flight::FlightServerError>(())
/// ```
pub fn start(config: ServerConfig) -> Result<RunningServer> {
    let store = Arc::new(Store::with_budget(
        config.data_dir.clone(),
        config.max_bytes,
    )?);
    // Everything that can fail happens before the runtime exists: a runtime dropped inside
    // async code panics, and `start` may be called from async code.
    let listener = Listener::bind(&config)?;
    let location = listener.location(config.tls.is_some());
    // The shared-memory socket; a host where it cannot be made serves without it.
    let shm_listener = if config.shm {
        crate::shm::bind_new()
            .and_then(|(listener, path)| {
                listener.set_nonblocking(true)?;
                Ok((listener, path))
            })
            .ok()
    } else {
        None
    };
    let shm_path = shm_listener.as_ref().map(|(_, path)| path.clone());
    let instance = crate::shm::instance_id();
    let shm_service = Arc::new(
        Service::new(store.clone(), config.registry.clone(), config.token.clone())
            .with_shm(shm_path.clone(), &instance),
    );
    let service = Service::new(store, config.registry.clone(), config.token.clone())
        .with_shm(shm_path.clone(), &instance);
    let flight = Routes::new(service);
    // Large windows and frames: bulk transfers are the point of this server. Small frames
    // (HTTP/2's 16 KiB default) and 64 KiB windows cap loopback throughput far below TCP's.
    // But not the largest frames: hyper reads a whole frame into its buffer before the
    // put's parser copies it into the item, and a 1 MiB frame is still in the CPU's cache
    // when it does, where a 16 MiB one is not (256 MiB puts, TCP: 4.0-4.3 GB/s with 16 MiB
    // frames, 5.0-5.5 with 1 MiB, 4.3-4.8 with 4 MiB, 3.4-4.0 with 256 KiB).
    let mut builder = Server::builder()
        .initial_connection_window_size(Some(32 << 20))
        .initial_stream_window_size(Some(16 << 20))
        .max_frame_size(Some(1 << 20))
        .tcp_nodelay(true);
    if let Some((cert, key)) = &config.tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(|e| FlightServerError::Tls(e.to_string()))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("arrowbridge-flight")
        .enable_all()
        .build()
        .map_err(|e| FlightServerError::Transport(e.to_string()))?;
    if let Some((listener, path)) = shm_listener {
        let _context = runtime.enter();
        match tokio::net::UnixListener::from_std(listener) {
            Ok(listener) => {
                runtime.spawn(serve_shm(listener, shm_service));
            }
            Err(_) => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
    let (tx, rx) = oneshot::channel::<Duration>();
    let addr = listener.addr();
    let socket = listener.socket_path();
    let serve: BoxFuture<'static, std::result::Result<(), tonic::transport::Error>> = {
        let _context = runtime.enter();
        let router = builder.add_service(flight);
        match listener.into_tokio() {
            Ok(Incoming::Tcp(listener)) => {
                let incoming = TcpIncoming::from(listener)
                    .with_nodelay(Some(true))
                    .map_ok(|socket| Coalesce::new(socket, Mode::AfterChained));
                serve_until(
                    move |signal| router.serve_with_incoming_shutdown(incoming, signal),
                    rx,
                )
                .boxed()
            }
            Ok(Incoming::Unix(listener)) => {
                let incoming = UnixListenerStream::new(listener).map_ok(|socket| {
                    crate::wire::transport::size_send_buffer(&socket);
                    Coalesce::new(socket, Mode::AfterChained)
                });
                serve_until(
                    move |signal| router.serve_with_incoming_shutdown(incoming, signal),
                    rx,
                )
                .boxed()
            }
            Err(e) => {
                runtime.shutdown_background();
                return Err(e);
            }
        }
    };
    // The runtime lives and dies on the server's own thread.
    let thread = std::thread::Builder::new()
        .name("arrowbridge-flight-server".into())
        .spawn(move || {
            let result = runtime
                .block_on(serve)
                .map_err(|e| FlightServerError::Transport(e.to_string()));
            // A kernel still running on a blocking thread cannot be interrupted; the server
            // stops without waiting for it.
            runtime.shutdown_timeout(Duration::from_millis(100));
            for socket in [socket, shm_path].into_iter().flatten() {
                let _ = std::fs::remove_file(socket);
            }
            result
        })
        .map_err(|e| FlightServerError::Transport(e.to_string()))?;
    Ok(RunningServer {
        location,
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// Runs `serve` until the shutdown signal `rx`, then gives calls under way the grace period
/// the signal carries, and cancels them (their connections dropped) after that.
async fn serve_until<F, S>(
    serve: S,
    rx: oneshot::Receiver<Duration>,
) -> std::result::Result<(), tonic::transport::Error>
where
    S: FnOnce(BoxFuture<'static, ()>) -> F,
    F: Future<Output = std::result::Result<(), tonic::transport::Error>>,
{
    let (grace_tx, grace_rx) = oneshot::channel::<Duration>();
    let signal = async move {
        let _ = grace_tx.send(rx.await.unwrap_or(SHUTDOWN_GRACE));
    };
    let serve = serve(signal.boxed());
    tokio::pin!(serve);
    tokio::select! {
        result = &mut serve => result,
        Ok(grace) = grace_rx => {
            // New connections are refused from now on.
            tokio::time::timeout(grace, &mut serve).await.unwrap_or(Ok(()))
        }
    }
}

/// The most shared-memory connections served at once; more are closed as they arrive
/// (a client then uses gRPC).
pub const MAX_SHM_CONNECTIONS: usize = 1024;

/// Accepts connections to the shared-memory socket, each served as a task of its own
/// ([`Service::shm_connection`]).
async fn serve_shm(listener: tokio::net::UnixListener, service: Arc<Service>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SHM_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(_) => {
                // Out of descriptors, say: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            continue; // dropped: closed
        };
        let service = service.clone();
        tokio::spawn(async move {
            service.shm_connection(stream).await;
            drop(slot);
        });
    }
}

/// A bound listening socket, before the runtime exists.
enum Listener {
    Tcp(std::net::TcpListener, SocketAddr),
    Unix(std::os::unix::net::UnixListener, PathBuf),
}

/// A listening socket registered with the runtime.
enum Incoming {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

impl Listener {
    fn bind(config: &ServerConfig) -> Result<Self> {
        if let Some(path) = &config.unix {
            let listen_error = |source: std::io::Error| FlightServerError::Listen {
                address: format!("unix:{}", path.display()),
                source,
            };
            if config.tls.is_some() {
                return Err(FlightServerError::Tls(
                    "TLS is for TCP locations; a Unix socket is reached only on this host".into(),
                ));
            }
            remove_stale_socket(path).map_err(listen_error)?;
            let listener = std::os::unix::net::UnixListener::bind(path).map_err(listen_error)?;
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .and_then(|()| listener.set_nonblocking(true))
                .map_err(listen_error)?;
            let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.clone());
            return Ok(Listener::Unix(listener, path));
        }
        let listen_error = |source: std::io::Error| FlightServerError::Listen {
            address: format!("{}:{}", config.host, config.port),
            source,
        };
        let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))
            .and_then(|l| l.set_nonblocking(true).map(|()| l))
            .map_err(listen_error)?;
        let addr = listener
            .local_addr()
            .map_err(|e| FlightServerError::Transport(e.to_string()))?;
        Ok(Listener::Tcp(listener, addr))
    }

    fn location(&self, tls: bool) -> String {
        match self {
            Listener::Unix(_, path) => format!("grpc+unix://{}", path.display()),
            Listener::Tcp(_, addr) => {
                let scheme = if tls { "grpc+tls" } else { "grpc" };
                let host = if addr.is_ipv6() {
                    format!("[{}]", addr.ip())
                } else {
                    addr.ip().to_string()
                };
                format!("{scheme}://{host}:{}", addr.port())
            }
        }
    }

    fn addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(_, addr) => Some(*addr),
            Listener::Unix(..) => None,
        }
    }

    fn socket_path(&self) -> Option<PathBuf> {
        match self {
            Listener::Unix(_, path) => Some(path.clone()),
            Listener::Tcp(..) => None,
        }
    }

    /// Registers the socket with the current runtime.
    fn into_tokio(self) -> Result<Incoming> {
        match self {
            Listener::Tcp(l, addr) => tokio::net::TcpListener::from_std(l)
                .map(Incoming::Tcp)
                .map_err(|source| FlightServerError::Listen {
                    address: addr.to_string(),
                    source,
                }),
            Listener::Unix(l, path) => tokio::net::UnixListener::from_std(l)
                .map(Incoming::Unix)
                .map_err(|source| FlightServerError::Listen {
                    address: format!("unix:{}", path.display()),
                    source,
                }),
        }
    }
}

/// Removes a socket file that nobody listens on any more (a server that did not stop
/// cleanly leaves its socket behind); anything else at `path` is left for `bind` to refuse.
fn remove_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "a server is listening on this socket already",
                )),
                Err(_) => std::fs::remove_file(path),
            }
        }
        _ => Ok(()),
    }
}

impl RunningServer {
    /// `grpc://host:port` (or `grpc+tls://…`, `grpc+unix:///path`): what clients connect to.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The bound address (`None` on a Unix socket).
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// Stops accepting calls, gives the ones under way [`SHUTDOWN_GRACE`] to finish, cancels
    /// the rest, and waits for the server's thread.
    pub fn shutdown(&mut self) -> Result<()> {
        self.shutdown_within(SHUTDOWN_GRACE)
    }

    /// [`shutdown`](Self::shutdown) with a grace period of `grace`: a client that never
    /// finishes its call cannot keep the server alive past it.
    pub fn shutdown_within(&mut self, grace: Duration) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(grace);
        }
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(FlightServerError::Transport(
                "the server thread panicked".into(),
            )),
            None => Ok(()),
        }
    }

    /// Whether the server is still running.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
