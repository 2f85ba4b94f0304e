//! Starting and stopping the server on a background runtime.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;

use arrow_flight::flight_service_server::FlightServiceServer;
use arrowbridge::Registry;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::error::{FlightServerError, Result};
use crate::service::Service;
use crate::store::Store;

/// Largest message the server accepts from a client (larger puts must be split by rows;
/// clients built on arrowbridge and pyarrow.flight writers with `max_chunksize` do so).
pub const MAX_MESSAGE: usize = 64 << 20;

/// How to run a server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    /// 0 picks a free port.
    pub port: u16,
    /// Persist every put here, and serve what is here at start.
    pub data_dir: Option<PathBuf>,
    /// Require `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// PEM certificate and key: serve gRPC over TLS.
    pub tls: Option<(Vec<u8>, Vec<u8>)>,
    pub registry: Arc<Registry>,
}

impl ServerConfig {
    /// An in-memory server on `host:port` with the built-in kernels.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        ServerConfig {
            host: host.into(),
            port,
            data_dir: None,
            token: None,
            tls: None,
            registry: Arc::new(Registry::with_builtins()),
        }
    }
}

/// A server running on its own threads; dropping it shuts it down.
#[derive(Debug)]
pub struct RunningServer {
    location: String,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
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
    let store = Arc::new(Store::open(config.data_dir.clone())?);
    // Everything that can fail happens before the runtime exists: a runtime dropped inside
    // async code panics, and `start` may be called from async code.
    let listen_error = |e: std::io::Error| {
        FlightServerError::Transport(format!(
            "cannot listen on {}:{}: {e}",
            config.host, config.port
        ))
    };
    let listener = std::net::TcpListener::bind((config.host.as_str(), config.port))
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(listen_error)?;
    let addr = listener
        .local_addr()
        .map_err(|e| FlightServerError::Transport(e.to_string()))?;
    let scheme = if config.tls.is_some() {
        "grpc+tls"
    } else {
        "grpc"
    };
    let host = if addr.is_ipv6() {
        format!("[{}]", addr.ip())
    } else {
        addr.ip().to_string()
    };
    let location = format!("{scheme}://{host}:{}", addr.port());
    let service = Service::new(store, config.registry.clone(), config.token.clone());
    let flight = FlightServiceServer::new(service)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    // Large windows and frames: bulk transfers are the point of this server. Small frames
    // (HTTP/2's 16 KiB default) and 64 KiB windows cap loopback throughput far below TCP's.
    let mut builder = Server::builder()
        .initial_connection_window_size(Some(32 << 20))
        .initial_stream_window_size(Some(16 << 20))
        .max_frame_size(Some((1 << 24) - 1))
        .tcp_nodelay(true);
    if let Some((cert, key)) = &config.tls {
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .map_err(|e| FlightServerError::Transport(format!("TLS: {e}")))?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .thread_name("arrowbridge-flight")
        .enable_all()
        .build()
        .map_err(|e| FlightServerError::Transport(e.to_string()))?;
    let listener = {
        let _context = runtime.enter();
        tokio::net::TcpListener::from_std(listener)
    };
    let listener = match listener {
        Ok(listener) => listener,
        Err(e) => {
            runtime.shutdown_background();
            return Err(listen_error(e));
        }
    };
    let (tx, rx) = oneshot::channel::<()>();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    // The runtime lives and dies on the server's own thread.
    let thread = std::thread::Builder::new()
        .name("arrowbridge-flight-server".into())
        .spawn(move || {
            runtime
                .block_on(builder.add_service(flight).serve_with_incoming_shutdown(
                    incoming,
                    async {
                        let _ = rx.await;
                    },
                ))
                .map_err(|e| FlightServerError::Transport(e.to_string()))
        })
        .map_err(|e| FlightServerError::Transport(e.to_string()))?;
    Ok(RunningServer {
        location,
        addr,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

impl RunningServer {
    /// `grpc://host:port` (or `grpc+tls://…`): what clients connect to.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting calls, finishes the ones under way, and waits for the threads.
    pub fn shutdown(&mut self) -> Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
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
