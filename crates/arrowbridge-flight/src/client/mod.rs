//! A Flight client that speaks tensors: the one `arrowbridge.connect()` wraps.
//!
//! It works against any Flight server for put, get, list, info and delete, and runs kernels
//! on an arrowbridge server. Results land in one contiguous, aligned buffer per column
//! ([`arrowbridge::landing`]); a large item offered as several endpoints is fetched over
//! parallel connections into the same buffers.
//!
//! The client is blocking (it runs its own small runtime, driven by the calling thread during a
//! call and by a thread of its own between calls): call it from synchronous code, or
//! from `spawn_blocking` in async code.
//!
//! ```
//! use arrowbridge::{ArrowTensor, Params};
//! use arrowbridge_flight::{start, Arg, Client, ClientOptions, ItemForm, ServerConfig};
//! use ndarray::{ArrayD, IxDyn};
//!
//! let server = start(ServerConfig::new("127.0.0.1", 0))?;
//! let client = Client::connect(server.location(), ClientOptions::default())?;
//! let x = ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[2, 3]), |i| (i[0] * 3 + i[1]) as f64));
//! client.put("x", &[("data", &x)], ItemForm::Array)?;
//! let item = client.get("x")?;
//! let got = item.columns[0].1.tensor().expect("a tensor column");
//! assert_eq!((item.form, got.view::<f64>()?), (ItemForm::Array, x.view::<f64>()?));
//! let sums = client.call("sum", &[Arg::Stored("x")], &Params::new([("axis".to_string(), arrowbridge::Param::Int(1))]))?;
//! assert_eq!(sums[0].view::<f64>()?.as_slice(), Some(&[3.0, 12.0][..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod get;
mod put;
mod stream;

pub use put::PutStream;
pub use stream::{ItemStream, Selection};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{
    Action, Criteria, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, PutResult, Ticket,
};
use arrow_schema::{Schema, SchemaRef};
use arrowbridge::ipc::Column;
use arrowbridge::landing::{Bodies, Destination};
use arrowbridge::{ArrowTensor, Params};
use futures::{FutureExt, StreamExt, TryStreamExt};
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};

use crate::wire::transport::{Address, Connector, WholeRequests};
use get::do_get_into;

use crate::shards::{ShardMap, SHARDS_KEY};
use crate::wire::framing::Messages;
use crate::wire::protocol::{
    ExchangeArg, ExchangeCommand, ItemTicket, PutAck, RaggedColumns, StoredRows,
};
use crate::wire::receive::{receive, Received};
use crate::wire::MAX_FLIGHT_DATA;
use crate::wire::MAX_MESSAGE;

/// Schema metadata key: the form an item was put in ([`ItemForm`]), so that a get returns
/// what was put.
pub const ITEM_KEY: &str = "arrowbridge.item";

/// The form of a stored item.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemForm {
    /// One array (its column is called `data`).
    Array,
    /// Named arrays.
    Dict,
    /// A table's columns.
    Table,
}

impl ItemForm {
    /// `"array"`, `"dict"` or `"table"`.
    pub fn name(self) -> &'static str {
        match self {
            ItemForm::Array => "array",
            ItemForm::Dict => "dict",
            ItemForm::Table => "table",
        }
    }

    /// The form a schema records; items put by other clients are tables.
    pub fn of(schema: &Schema) -> ItemForm {
        match schema.metadata().get(ITEM_KEY).map(String::as_str) {
            Some("array") if schema.fields().len() == 1 => ItemForm::Array,
            Some("dict") => ItemForm::Dict,
            _ => ItemForm::Table,
        }
    }
}

/// What can go wrong in a client call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The server answered with an error status.
    #[error("{message}")]
    Remote {
        /// The gRPC status code.
        code: Code,
        /// The server's [`crate::error::KIND_KEY`], where the code alone is ambiguous.
        kind: Option<String>,
        /// The server's message.
        message: String,
    },
    /// The arrays to send, or those received, are not what arrowbridge carries.
    #[error(transparent)]
    Local(#[from] arrowbridge::Error),
    /// The location cannot be used.
    #[error("{0}")]
    Location(String),
    /// The call did not end before its deadline ([`crate::limits`]); it was cancelled,
    /// unless it is a stream's fetch of a batch, which goes on for the next read.
    #[error("{call} did not finish within its deadline of {limit:.3?}; {}", fate(*.kept))]
    Timeout {
        /// The call, e.g. `get "x"`.
        call: String,
        /// Its time limit.
        limit: Duration,
        /// Whether the call goes on (a stream's batch, which the next read waits for).
        kept: bool,
    },
    /// The caller interrupted the call ([`crate::limits::CallLimits::interrupted`]); it was
    /// cancelled.
    #[error("{0} was interrupted")]
    Interrupted(String),
    /// The client was closed ([`Client::close`]) before or while the call ran.
    #[error("{0}: the client was closed")]
    Closed(String),
    /// The blocking client was called from inside an async runtime.
    #[error("the blocking Flight client cannot run inside an async runtime; call it from spawn_blocking")]
    InsideRuntime,
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        let kind = status
            .metadata()
            .get(crate::error::KIND_KEY)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut message = if status.message().is_empty() {
            format!("{:?}", status.code())
        } else {
            status.message().to_string()
        };
        let mut code = status.code();
        // A status with a source was made here, from a transport failure (a connection that
        // broke, a server that died mid-call, a peer that does not speak HTTP/2: h2's
        // protocol errors are INTERNAL), never received from a server: the server is
        // unavailable, whatever code the transport chose. A request that a closing
        // connection dropped says "cancelled" (hyper's word), though nobody cancelled it.
        if let Some(source) = std::error::Error::source(&status) {
            let transport = std::iter::successors(Some(source), |e| e.source())
                .any(|e| e.is::<tonic::transport::Error>());
            if matches!(code, Code::Unknown | Code::Internal)
                || (code == Code::Cancelled && transport)
            {
                code = Code::Unavailable;
            }
            message = crate::error::chain(&message, source);
        }
        ClientError::Remote {
            code,
            kind,
            message,
        }
    }
}

/// `Result` of the client.
pub type ClientResult<T> = std::result::Result<T, ClientError>;

/// How to connect.
#[derive(Clone, Debug, Default)]
pub struct ClientOptions {
    /// Sent as `authorization: Bearer <token>`.
    pub token: Option<String>,
    /// PEM certificates that verify a `grpc+tls://` server.
    pub tls_root_certs: Option<Vec<u8>>,
    /// Shared memory with a server on this host and of this user ([`crate::shm`]): `None`
    /// uses it when the server offers it and it can be reached (else gRPC) where it is the
    /// faster way: gets of items larger than 256 KiB, and puts of 4 MiB or more where the
    /// kernel gives memfds huge pages; `Some(false)` never, `Some(true)` always (an error
    /// when it cannot be used).
    pub shm: Option<bool>,
    /// How long each call may take unless its scope says otherwise ([`crate::limits`]);
    /// `None`: no limit.
    pub timeout: Option<Duration>,
    /// Other locations that may receive the token, when a FlightInfo's endpoints point
    /// there (the other servers of a cluster); any other location is called without it.
    pub trusted: Vec<String>,
    /// Whether a thread of the client's own always drives its runtime, for futures run
    /// with [`Client::spawn`] (async code). Otherwise blocking calls drive it on the calling
    /// thread and the client's thread only between calls, after a short linger.
    pub background: bool,
}

/// A stored item as got: its form and its columns, in order.
#[derive(Debug)]
pub struct Item {
    /// How it was put.
    pub form: ItemForm,
    /// Its columns by name: tensors, and ragged data (`arrow.variable_shape_tensor`
    /// columns) as [`Column::Ragged`].
    pub columns: Vec<(String, Column)>,
    /// Whether the columns view read-only shared memory (else they own their buffers).
    pub shared: bool,
}

/// What a server says about an item (its FlightInfo).
#[derive(Debug)]
pub struct ItemInfo {
    /// Its name.
    pub name: String,
    /// Rows in all (-1 when the server does not say).
    pub rows: i64,
    /// Bytes in all (-1 when the server does not say).
    pub bytes: i64,
    /// Its schema.
    pub schema: SchemaRef,
    /// Per column: name, Arrow type, and dtype and shape where the column is a tensor.
    pub columns: Vec<serde_json::Value>,
    /// How many endpoints (row ranges) it is offered as.
    pub endpoints: usize,
    /// The version of the item the endpoints name (an arrowbridge server's tickets), which
    /// [`Arg::StoredRows`] may pin.
    pub version: Option<u64>,
}

/// A kernel argument of [`Client::call`].
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub enum Arg<'a> {
    /// An array sent with the call.
    Array(&'a ArrowTensor),
    /// An array stored on the server, by name.
    Stored(&'a str),
    /// Rows `[start, end)` of an array stored on the server (a view there, no copy), of
    /// the version [`ItemInfo::version`] named if given (else the one stored now): a call
    /// on a version that was replaced fails with kind [`crate::KIND_REPLACED`].
    StoredRows {
        /// The item.
        name: &'a str,
        /// Its version, if pinned.
        version: Option<u64>,
        /// The rows, `(start, end)`.
        rows: (usize, usize),
    },
    /// Ragged data sent with the call, as the first argument of a ragged kernel
    /// ([`arrowbridge::Kernel::ragged`]): it travels as its values and its rows'
    /// shapes, the two arrays the kernel receives. Another kernel, or another position, is
    /// refused by the server.
    Ragged(&'a arrowbridge::RaggedTensor),
}

/// A connection to a Flight server (see the module's documentation).
#[derive(Debug)]
pub struct Client {
    runtime: Arc<OwnRuntime>,
    /// Drives the runtime's connections between calls.
    idle: Arc<IdleDriver>,
    endpoint: Target,
    channel: Channel,
    authorization: Option<AsciiMetadataValue>,
    location: String,
    token: Option<String>,
    /// For the other servers a FlightInfo's endpoints point to.
    tls_root_certs: Option<Vec<u8>>,
    shm: Option<bool>,
    /// Each call's time limit, unless its scope sets one.
    timeout: Option<Duration>,
    /// Wakes the calls under way when [`Client::cancel`] stops them.
    cancelled: Arc<tokio::sync::Notify>,
    /// How many times [`Client::cancel`] was called: a shared-memory call, which waits on
    /// its socket rather than on the runtime, sees it change.
    cancels: Arc<std::sync::atomic::AtomicU64>,
    /// Set by [`Client::close`]: calls under way stop, later ones are refused.
    closed: std::sync::atomic::AtomicBool,
    /// Cleared once the server answered a small item's ticket without saying it understood
    /// it ([`Client::get_small`]): another kind of server, not asked so again.
    small_gets: std::sync::atomic::AtomicBool,
    /// The last [`NOT_SMALL_KEPT`] names the server would not serve whole (larger, sharded):
    /// their gets read the FlightInfo first, without the round trip of asking again.
    not_small: Mutex<std::collections::VecDeque<String>>,
    /// Locations besides `location` that may receive the token.
    trusted: Vec<String>,
    /// The server's shared-memory socket and instance id, asked once.
    shm_socket: OnceLock<Option<(PathBuf, String)>>,
}

impl<T> Shm<T> {
    /// A call that was not done, as one of another result type.
    fn map_done<U>(self) -> Shm<U> {
        match self {
            Shm::Done(_) => unreachable!("only calls that were not done are carried over"),
            Shm::Unavailable(why) => Shm::Unavailable(why),
            Shm::Sharded => Shm::Sharded,
        }
    }
}

/// Why shared memory was not used for a call.
enum Shm<T> {
    Done(T),
    /// Not available here (another host, another user, not offered): gRPC instead.
    Unavailable(String),
    /// The item is sharded: its rows are read from the servers its endpoints name, over gRPC
    /// whatever `shm` says.
    Sharded,
}

/// A server to connect to: tonic's settings for the connection, and its socket.
#[derive(Clone, Debug)]
struct Target {
    endpoint: Endpoint,
    connector: Connector,
}

impl Target {
    /// A channel that connects on first use.
    fn lazy(&self) -> Channel {
        self.endpoint
            .connect_with_connector_lazy(self.connector.clone())
    }

    async fn connect(&self) -> Result<Channel, tonic::transport::Error> {
        self.endpoint
            .connect_with_connector(self.connector.clone())
            .await
    }
}

/// The Flight service over `channel`, with the client's message limits.
fn service(channel: Channel) -> FlightServiceClient<Channel> {
    FlightServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE)
}

/// How an endpoint is read: over the client's connection (`shared`), or a connection of its
/// own to `target`.
#[derive(Clone)]
struct Route {
    shared: Option<Channel>,
    target: Target,
    /// The location the route leads to (the client's own for its server).
    location: String,
    /// The `authorization` header this route's calls carry: the client's token where the
    /// user sent it (its own server, or a location it trusts), none elsewhere.
    authorization: Option<AsciiMetadataValue>,
    /// How long its server may take to connect and answer a read's request when another
    /// replica could serve it instead ([`REPLICA_PATIENCE`]); `None` for the last one.
    patience: Option<Duration>,
}

impl Route {
    /// `message` as a request of this route (with its authorization, if any).
    fn request<T>(&self, message: T) -> Request<T> {
        authorized(message, self.authorization.as_ref())
    }

    /// The `authorization` header of calls made by hand ([`crate::wire::grpc`]).
    fn header_authorization(&self) -> Option<http::HeaderValue> {
        header_value(self.authorization.as_ref())
    }
}

/// `message` as a request carrying `authorization`, if any.
fn authorized<T>(message: T, authorization: Option<&AsciiMetadataValue>) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    request
}

/// `authorization` as the header of a call made by hand.
fn header_value(authorization: Option<&AsciiMetadataValue>) -> Option<http::HeaderValue> {
    authorization.and_then(|v| http::HeaderValue::from_bytes(v.as_encoded_bytes()).ok())
}

/// How long a replica may take to connect and answer a read (its response's headers) before
/// the next replica is tried. Only the wait for the answer is bounded, not the transfer: a
/// server that answers is alive; one that does not (a stopped process, a host gone behind a
/// live address) would otherwise hold the read until its deadline. The last replica has no
/// such bound.
pub(crate) const REPLICA_PATIENCE: Duration = Duration::from_millis(500);

impl Route {
    /// The channel to call over: the client's, or a new connection.
    async fn channel(&self) -> Result<Channel, Status> {
        match &self.shared {
            Some(channel) => Ok(channel.clone()),
            None => (self.target.connect().await)
                .map_err(|e| Status::unavailable(crate::error::chain("", &e))),
        }
    }

    /// This route with `patience`: the `index`-th of `count` replicas waits for its answer
    /// for [`REPLICA_PATIENCE`] at most, unless it is the last.
    fn in_turn(mut self, index: usize, count: usize) -> Route {
        self.patience = (index + 1 < count).then_some(REPLICA_PATIENCE);
        self
    }

    /// `answer` (a connection and the answer's headers), within the route's patience: past
    /// it, an unavailable status that sends the read to the next replica.
    async fn answer<T>(
        &self,
        answer: impl std::future::Future<Output = Result<T, Status>>,
    ) -> Result<T, Status> {
        let Some(patience) = self.patience else {
            return answer.await;
        };
        tokio::time::timeout(patience, answer)
            .await
            .unwrap_or_else(|_| {
                Err(Status::unavailable(format!(
                    "{} did not answer within {patience:?} (another replica was tried)",
                    self.location
                )))
            })
    }
}

/// The target of a location: `grpc://host:port`, `grpc+tcp://`, `grpc+tls://` or
/// `grpc+unix:///path`.
fn endpoint(location: &str, options: &ClientOptions) -> ClientResult<Target> {
    let bad = |why: &str| ClientError::Location(format!("location {location:?}: {why}"));
    let (scheme, rest) = location
        .split_once("://")
        .ok_or_else(|| bad("expected grpc://host:port or grpc+unix:///path"))?;
    let (uri, address) = match scheme {
        "grpc" | "grpc+tcp" => (format!("http://{rest}"), Address::Tcp),
        "grpc+tls" => (format!("https://{rest}"), Address::Tcp),
        "grpc+unix" | "unix" if rest.starts_with('/') => (
            "http://localhost".to_string(),
            Address::Unix(PathBuf::from(rest)),
        ),
        "grpc+unix" | "unix" => return Err(bad("expected grpc+unix:///absolute/path/to/socket")),
        other => {
            return Err(bad(&format!(
                "unknown scheme {other:?}; use grpc, grpc+tcp, grpc+tls or grpc+unix"
            )))
        }
    };
    let mut endpoint = Endpoint::from_shared(uri).map_err(|e| bad(&e.to_string()))?;
    endpoint = endpoint
        .initial_connection_window_size(Some(32 << 20))
        .initial_stream_window_size(Some(16 << 20))
        // 1 MiB frames from the server, as the server asks of clients: h2 reads a whole frame
        // before it hands it on, and the parser copies it into its rows while a 1 MiB frame is
        // still in cache (256 MiB gets, alternating with 16 MiB frames: 3.07 -> 3.34 GB/s
        // median).
        .max_frame_size(Some(1 << 20))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(10));
    if scheme == "grpc+tls" {
        endpoint = match &options.tls_root_certs {
            Some(pem) => {
                let verifier =
                    crate::tls::PinnedRoots::from_pem(pem).map_err(ClientError::Location)?;
                endpoint.tls_config_with_verifier(ClientTlsConfig::new(), Arc::new(verifier))
            }
            None => endpoint.tls_config(ClientTlsConfig::new().with_enabled_roots()),
        }
        .map_err(|e| bad(&e.to_string()))?;
    } else if options.tls_root_certs.is_some() {
        return Err(bad("tls_root_certs are for grpc+tls:// locations"));
    }
    let connector = Connector {
        address,
        tls: scheme == "grpc+tls",
    };
    Ok(Target {
        endpoint,
        connector,
    })
}

/// `batch` carrying exactly `schema` (which has its fields, and more metadata).
fn with_schema(batch: &RecordBatch, schema: &SchemaRef) -> ClientResult<RecordBatch> {
    let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
    Ok(
        RecordBatch::try_new_with_options(schema.clone(), batch.columns().to_vec(), &options)
            .map_err(arrowbridge::Error::from)?,
    )
}

/// Items up to this size are read in one DoGet, without their FlightInfo first: half the
/// round trips of a get, and sooner than through shared memory up to about this size (on the
/// 2-core VM, 8 KiB in 101 µs against 164, 256 KiB in 139 against 167; 1 MiB in 405 against
/// 168).
const SMALL_GET_BYTES: usize = 256 << 10;

/// How many names a client remembers the server would not serve whole.
const NOT_SMALL_KEPT: usize = 256;

/// Whether a get whose small-item ticket ([`Client::get_small`]) failed with `error` reads
/// the item's FlightInfo next: when the server answered (too large, sharded, missing,
/// another kind of server), not when it cannot be reached or the call ran out of time.
fn reads_its_flight_info(error: &ClientError) -> bool {
    matches!(error, ClientError::Remote { code, .. }
        if !matches!(code, Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled))
}

/// The size from which a put may go through shared memory when the client chooses.
const SHM_PUT_BYTES: usize = 4 << 20;

/// Whether a put of `bytes` goes through shared memory when the client chooses
/// ([`ClientOptions::shm`] `None`): where it is the faster way. It costs a new memfd's pages
/// and a request of its own; gRPC costs two copies into warm memory. On the 2-core VM, gRPC
/// put 8 KiB in 0.56× the time, 64 KiB to 1 MiB in 0.55-1.08×; from 4 MiB shared memory
/// took 0.59-0.66× gRPC's time where the kernel gives memfds huge pages
/// ([`crate::shm::shmem_huge_pages`]), and 2.0-2.6× without them.
fn shm_put_pays(bytes: usize) -> bool {
    bytes >= SHM_PUT_BYTES && crate::shm::shmem_huge_pages() != crate::shm::ShmemHugePages::Never
}

/// Calls under way in this process, of all clients.
static IN_FLIGHT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How long a lone call keeps polling its sockets before its thread sleeps.
const SPIN: Duration = Duration::from_micros(150);

/// Runs `future`; while it waits, and it is the only call under way in this process, the
/// runtime keeps polling its sockets (`epoll_wait` with no timeout) for up to [`SPIN`]
/// instead of sleeping. A reply that arrives meanwhile is read at once: no wake-up of a
/// sleeping thread, which costs more than the rest of a small call on a virtual machine.
/// Concurrent calls sleep as usual, so that spinning never takes a core from other work.
async fn spinning<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::atomic::Ordering;
    struct InFlight;
    impl Drop for InFlight {
        fn drop(&mut self) {
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let alone = IN_FLIGHT.fetch_add(1, Ordering::Relaxed) == 0;
    let _in_flight = InFlight;
    let mut future = std::pin::pin!(future);
    if alone {
        let until = std::time::Instant::now() + SPIN;
        loop {
            if let std::task::Poll::Ready(output) = futures::poll!(future.as_mut()) {
                return output;
            }
            if std::time::Instant::now() >= until || IN_FLIGHT.load(Ordering::Relaxed) > 1 {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
    future.await
}

/// How long a background client's thread keeps running after a lone call ended, for the
/// next one (see [`linger`]).
const LINGER: Duration = Duration::from_micros(300);

/// Whether a background client's thread is lingering (see [`linger`]).
static LINGERING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// After a lone call of a background client ended, keeps the runtime's thread polling
/// (a task that yields, for up to [`LINGER`], while no call is under way in the process)
/// instead of letting it sleep. A call the event loop starts meanwhile is picked up at once:
/// starting it needs no wake-up of a sleeping thread, which on a virtual machine costs as
/// much as a fifth of a small call. Async code that awaits one call after another starts
/// each within a moment of the last one's end.
fn linger() {
    use std::sync::atomic::Ordering;
    /// Lets the next lone call linger, however the lingering task ends (a runtime shut
    /// down drops it).
    struct Lingering;
    impl Drop for Lingering {
        fn drop(&mut self) {
            LINGERING.store(false, Ordering::Relaxed);
        }
    }
    if IN_FLIGHT.load(Ordering::Relaxed) > 0 || LINGERING.swap(true, Ordering::Relaxed) {
        return;
    }
    let lingering = Lingering;
    tokio::spawn(async move {
        let _lingering = lingering;
        let until = std::time::Instant::now() + LINGER;
        while std::time::Instant::now() < until && IN_FLIGHT.load(Ordering::Relaxed) == 0 {
            tokio::task::yield_now().await;
        }
    });
}

/// A client's runtime, which may be dropped anywhere: also on the runtime's own thread (by
/// the last task of a background client that held the client), or by a thread that holds
/// a lock the runtime's tasks wait for (a Python object freed with the GIL held, while a
/// task hands a result to Python). A background runtime is therefore told to stop, not
/// waited for; so is any runtime dropped from inside one.
#[derive(Debug)]
struct OwnRuntime {
    runtime: Option<tokio::runtime::Runtime>,
    background: bool,
}

impl std::ops::Deref for OwnRuntime {
    type Target = tokio::runtime::Runtime;

    fn deref(&self) -> &Self::Target {
        self.runtime
            .as_ref()
            .expect("the runtime is there until dropped")
    }
}

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            if self.background || tokio::runtime::Handle::try_current().is_ok() {
                runtime.shutdown_background();
            }
        }
    }
}

/// The thread that drives a client's current-thread runtime between calls. A call takes the
/// runtime over (the driver lets go of it when a call starts); the driver takes it back once
/// no call has begun for [`IdleDriver::LINGER`]. Calls in quick succession therefore run on
/// the calling thread with no hand-over at all: neither a wake-up of the driver per call nor
/// a wait for it to let go.
#[derive(Debug, Default)]
struct IdleDriver {
    state: Mutex<DriverState>,
    /// Wakes the driver when the client is gone (nothing else does: it polls).
    resume: std::sync::Condvar,
    /// Makes the driver let go of the runtime.
    release: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct DriverState {
    /// Calls under way.
    calls: usize,
    /// Calls begun so far (the driver sees whether any began while it waited).
    begun: u64,
    /// Whether the driver holds the runtime.
    driving: bool,
    /// Whether the client is gone.
    stopped: bool,
}

/// A call under way (see [`IdleDriver::call`]).
struct CallGuard<'a>(&'a IdleDriver);

impl IdleDriver {
    /// How long the runtime stays with the callers after a call began.
    const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

    fn start(runtime: Arc<OwnRuntime>) -> std::io::Result<Arc<Self>> {
        let driver = Arc::new(IdleDriver::default());
        let this = driver.clone();
        std::thread::Builder::new()
            .name("arrowbridge-flight-client".into())
            .spawn(move || loop {
                {
                    let mut state = this.lock();
                    loop {
                        if state.stopped {
                            return; // the client is gone (and with this, the runtime)
                        }
                        let begun = state.begun;
                        state = this
                            .resume
                            .wait_timeout(state, Self::LINGER)
                            .unwrap_or_else(PoisonError::into_inner)
                            .0;
                        if state.calls == 0 && state.begun == begun && !state.stopped {
                            break;
                        }
                    }
                    state.driving = true;
                }
                runtime.block_on(this.release.notified());
                this.lock().driving = false;
            })?;
        Ok(driver)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DriverState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks a call as under way until the guard drops; the driver lets go of the runtime.
    fn call(&self) -> CallGuard<'_> {
        let mut state = self.lock();
        state.calls += 1;
        state.begun += 1;
        if state.driving {
            // A permit if the driver has not reached its wait yet: it returns at once.
            self.release.notify_one();
        }
        CallGuard(self)
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.release.notify_one();
        self.resume.notify_one();
    }
}

impl Drop for CallGuard<'_> {
    fn drop(&mut self) {
        self.0.lock().calls -= 1;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.idle.stop();
    }
}

impl Client {
    /// A client of the server at `location`. The connection is made on first use, so a
    /// server that cannot be reached is reported by the first call.
    pub fn connect(location: &str, options: ClientOptions) -> ClientResult<Self> {
        let endpoint = endpoint(location, &options)?;
        let authorization = match &options.token {
            Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
                ClientError::Location("the token must be printable ASCII".to_string())
            })?),
            None => None,
        };
        // Calls run on the calling thread (no hand-over per message); between calls a thread
        // of the client's own drives the connections, so that an idle client answers a
        // server's GOAWAY (a stopping server need not wait out its grace period) and sees a
        // connection close (the first call after a server restart does not fail on it).
        // A background client's runtime has one worker thread that always drives it.
        let runtime = if options.background {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("arrowbridge-flight-aio")
                .enable_all()
                .build()
        } else {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
        }
        .map_err(|e| ClientError::Location(format!("cannot start the client: {e}")))?;
        let channel = {
            let _context = runtime.enter();
            endpoint.lazy()
        };
        let runtime = Arc::new(OwnRuntime {
            runtime: Some(runtime),
            background: options.background,
        });
        let idle = if options.background {
            Arc::default()
        } else {
            IdleDriver::start(runtime.clone())
                .map_err(|e| ClientError::Location(format!("cannot start the client: {e}")))?
        };
        Ok(Client {
            runtime,
            idle,
            endpoint,
            channel,
            authorization,
            location: location.to_string(),
            token: options.token.clone(),
            tls_root_certs: options.tls_root_certs.clone(),
            shm: options.shm,
            timeout: options.timeout,
            cancelled: Arc::default(),
            cancels: Arc::default(),
            closed: std::sync::atomic::AtomicBool::new(false),
            small_gets: std::sync::atomic::AtomicBool::new(true),
            not_small: Mutex::default(),
            trusted: options.trusted.clone(),
            shm_socket: OnceLock::new(),
        })
    }

    /// Each call's time limit unless its scope sets one ([`ClientOptions::timeout`]).
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The location this client talks to.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Stops every call of this client under way, on any thread: each fails with
    /// [`ClientError::Interrupted`] (its streams reset, what it received freed). Calls made
    /// afterwards run as usual. A fan-out interrupted on one thread (Ctrl+C) stops its calls
    /// on the others so.
    pub fn cancel(&self) {
        self.cancels
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cancelled.notify_waiters();
    }

    /// Closes the client for every thread: the calls under way stop at once (each fails
    /// with [`ClientError::Closed`], its streams reset), and later calls fail so too. The
    /// connections close when the last holder of the client drops it.
    pub fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cancel();
    }

    /// `error`, or [`ClientError::Closed`] when it is the interruption [`Client::close`]
    /// caused.
    fn closed_instead(&self, error: ClientError) -> ClientError {
        match error {
            ClientError::Interrupted(what)
                if self.closed.load(std::sync::atomic::Ordering::SeqCst) =>
            {
                ClientError::Closed(what)
            }
            other => other,
        }
    }

    /// Whether [`Client::cancel`] was called since `epoch` (a value of `cancels`).
    fn cancelled_since(&self, epoch: u64) -> bool {
        self.cancels.load(std::sync::atomic::Ordering::SeqCst) != epoch
    }

    /// The count of cancels now, for [`Client::cancelled_since`].
    fn cancel_epoch(&self) -> u64 {
        self.cancels.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether `location` may receive the token: the client's own, or one it was told to
    /// trust.
    fn trusts(&self, location: &str) -> bool {
        location == self.location || self.trusted.iter().any(|t| t == location)
    }

    /// Runs `future` (the call `what`) on the client's runtime, on this thread, within the
    /// call's limits ([`crate::limits`]): past its deadline, or once interrupted, the future
    /// is dropped — its streams reset, what it received freed — and the call fails.
    /// An unavailable server's error names the call and the server ([`Self::unreachable`]).
    fn block_on<T, F: std::future::Future<Output = ClientResult<T>>>(
        &self,
        what: &str,
        future: F,
    ) -> ClientResult<ClientResult<T>> {
        if tokio::runtime::Handle::try_current().is_ok() {
            return Err(ClientError::InsideRuntime);
        }
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ClientError::Closed(what.to_string()));
        }
        let limits = crate::limits::current(self.timeout);
        let _call = self.idle.call();
        let cancelled = self.cancelled.notified();
        self.runtime.block_on(async {
            let future = std::pin::pin!(spinning(future));
            let expired = limits.expired();
            let interrupted = limits.interruption();
            tokio::select! {
                biased;
                output = future => Ok(output.map_err(|e| self.unreachable(what, e))),
                () = expired => Err(ClientError::Timeout {
                    kept: false,
                    call: format!("{what} at {}", self.location),
                    limit: limits.at.map_or(Duration::ZERO, |at| at - limits.started),
                }),
                () = interrupted => Err(ClientError::Interrupted(what.to_string())),
                () = cancelled => Err(self.closed_instead(ClientError::Interrupted(what.to_string()))),
            }
        })
    }

    /// `error` of the call `what` ([`ClientError::at`] this client's server).
    fn unreachable(&self, what: &str, error: ClientError) -> ClientError {
        error.at(what, &self.location)
    }

    fn service(&self, channel: Channel) -> FlightServiceClient<Channel> {
        service(channel)
    }

    /// The service for requests that are whole when they start (all but uploads): each
    /// leaves in one write.
    fn whole(&self) -> FlightServiceClient<WholeRequests> {
        FlightServiceClient::new(WholeRequests(self.channel.clone()))
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The `authorization` header of calls made by hand ([`crate::wire::grpc`]).
    fn header_authorization(&self) -> Option<http::HeaderValue> {
        header_value(self.authorization.as_ref())
    }

    fn request<T>(&self, message: T) -> Request<T> {
        authorized(message, self.authorization.as_ref())
    }

    /// Stores `columns` under `name` as one item of form `form`; the rows the server
    /// acknowledged. Columns that share their first axis are rows of one table; any other
    /// set of shapes travels flat ([`arrowbridge::ipc::wire_batches`]).
    pub fn put(
        &self,
        name: &str,
        columns: &[(&str, &ArrowTensor)],
        form: ItemForm,
    ) -> ClientResult<usize> {
        let bytes = columns.iter().map(|(_, t)| t.nbytes()).sum();
        if self.shm == Some(true) || (self.shm.is_none() && shm_put_pays(bytes)) {
            match self
                .shm_put(name, columns, form)
                .map_err(|e| self.closed_instead(e))?
            {
                Shm::Done(rows) => return Ok(rows),
                Shm::Unavailable(why) if self.shm == Some(true) => return Err(shm_refused(&why)),
                Shm::Unavailable(_) | Shm::Sharded => {}
            }
        }
        self.block_on(
            &format!("put {name:?}"),
            self.put_async(name, columns, form),
        )?
    }

    /// [`put`](Self::put) over gRPC (never shared memory), as a future: for async code,
    /// on the client's runtime ([`Client::spawn`]). The columns are laid out before it
    /// returns; the future holds no borrow of them.
    pub fn put_async<'a>(
        &'a self,
        name: &'a str,
        columns: &[(&str, &ArrowTensor)],
        form: ItemForm,
    ) -> impl std::future::Future<Output = ClientResult<usize>> + Send + 'a {
        let laid_out = put_batches(columns, form);
        async move {
            let (schema, batches) = laid_out?;
            self.put_batches(name, schema, batches).await
        }
    }

    /// Stores `columns` under `name` as one item of form `form`, ragged data included: an
    /// `arrow.variable_shape_tensor` column ([`Column::Ragged`]) is one row per tensor, and
    /// every column then has that many rows. Without a ragged column this is
    /// [`put`](Self::put) (shared memory where it can); with one it goes over gRPC, in
    /// messages of whole rows cut by their bytes. A single row larger than a message the
    /// server accepts ([`MAX_MESSAGE`]) is refused before anything is sent.
    pub fn put_columns(
        &self,
        name: &str,
        columns: &[(&str, &Column)],
        form: ItemForm,
    ) -> ClientResult<usize> {
        if let Some(tensors) = tensor_columns(columns) {
            return self.put(name, &tensors, form);
        }
        self.block_on(
            &format!("put {name:?}"),
            self.put_columns_async(name, columns, form),
        )?
    }

    /// [`put_columns`](Self::put_columns) over gRPC, as a future (see
    /// [`put_async`](Self::put_async)).
    pub fn put_columns_async<'a>(
        &'a self,
        name: &'a str,
        columns: &[(&str, &Column)],
        form: ItemForm,
    ) -> impl std::future::Future<Output = ClientResult<usize>> + Send + 'a {
        let laid_out = match tensor_columns(columns) {
            Some(tensors) => put_batches(&tensors, form),
            None => ragged_put_batches(columns, form),
        };
        async move {
            let (schema, batches) = laid_out?;
            self.put_batches(name, schema, batches).await
        }
    }

    /// Stores `batches` (of `schema`, which names the item's form) under `name`.
    async fn put_batches(
        &self,
        name: &str,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> ClientResult<usize> {
        let descriptor = FlightDescriptor::new_path(vec![name.to_string()]);
        if let Some(messages) = Messages::new(
            Some(descriptor.clone()),
            &schema,
            &batches,
            MAX_FLIGHT_DATA,
            "DoPut",
        )? {
            let authorization = self.header_authorization();
            let acks = put::do_put(
                self.channel.clone(),
                authorization.as_ref(),
                messages,
                "DoPut",
            )
            .await?;
            return Ok(acks.last().map_or(0, acknowledged_rows));
        }
        let (messages, failure) = encode(schema, batches, descriptor);
        let mut service = self.service(self.channel.clone());
        let ack = async {
            let mut results = service.do_put(self.request(messages)).await?.into_inner();
            let mut rows = 0;
            while let Some(result) = results.message().await? {
                rows = acknowledged_rows(&result);
            }
            Ok::<_, Status>(rows)
        }
        .await;
        let failed = failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match failed {
            Some(e) => Err(e),
            None => Ok(ack?),
        }
    }

    /// Stores the map of an item sharded over several servers ([`crate::shards`]) under
    /// `name`: `schema` is the shards' (the map adds its own metadata). With it, this server
    /// describes the whole item and a [`get`](Self::get) of `name` fetches every shard.
    /// Returns the map it replaced there, if any. A map older than the one the server holds
    /// ([`ShardMap::order`]) is refused with the server's `FAILED_PRECONDITION` (kind
    /// [`crate::error::KIND_REPLACED`]).
    pub fn put_map(
        &self,
        name: &str,
        schema: &Schema,
        map: &ShardMap,
    ) -> ClientResult<Option<ShardMap>> {
        self.block_on(
            &format!("put_map {name:?}"),
            self.put_map_async(name, schema, map),
        )?
    }

    /// [`put_map`](Self::put_map), for async code.
    pub async fn put_map_async(
        &self,
        name: &str,
        schema: &Schema,
        map: &ShardMap,
    ) -> ClientResult<Option<ShardMap>> {
        let mut metadata = schema.metadata().clone();
        let text = serde_json::to_string(map).map_err(|e| {
            ClientError::Local(arrowbridge::Error::invalid("a shard map", e.to_string()))
        })?;
        metadata.insert(SHARDS_KEY.to_string(), text);
        let schema = Arc::new(schema.clone().with_metadata(metadata));
        let descriptor = FlightDescriptor::new_path(vec![name.to_string()]);
        let (messages, failure) = encode(schema, Vec::new(), descriptor);
        let mut service = self.service(self.channel.clone());
        let ack = async {
            let mut results = service.do_put(self.request(messages)).await?.into_inner();
            let mut ack = PutAck::default();
            while let Some(result) = results.message().await? {
                ack = PutAck::parse(&result.app_metadata);
            }
            Ok::<_, Status>(ack)
        }
        .await?;
        let failed = failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        failed.map_or(Ok(ack.replaced), Err)
    }

    /// The item stored under `name`, each column one contiguous, aligned buffer.
    pub fn get(&self, name: &str) -> ClientResult<Item> {
        let what = format!("get {name:?}");
        // A small item comes whole in one DoGet, sooner than through shared memory (a
        // request of its own).
        if self.shm != Some(true) {
            match self.block_on(&what, self.get_small(name))? {
                Ok(item) => return Ok(item),
                Err(e) if reads_its_flight_info(&e) => {}
                Err(e) => return Err(e),
            }
        }
        match self.shm_get(name).map_err(|e| self.closed_instead(e))? {
            Shm::Done(item) => return Ok(item),
            Shm::Unavailable(why) if self.shm == Some(true) => return Err(shm_refused(&why)),
            Shm::Unavailable(_) | Shm::Sharded => {}
        }
        self.block_on(&what, self.get_versions(name))?
    }

    /// [`get`](Self::get) over gRPC (never shared memory), as a future: for async code, on
    /// the client's runtime ([`Client::spawn`]).
    pub async fn get_async(&self, name: &str) -> ClientResult<Item> {
        match self.get_small(name).await {
            Ok(item) => Ok(item),
            Err(e) if reads_its_flight_info(&e) => self.get_versions(name).await,
            Err(e) => Err(e),
        }
    }

    /// `name` read as its FlightInfo describes it. A put that replaces the item between its
    /// FlightInfo and the reads of its endpoints makes the server refuse the version the
    /// tickets name (never serve another): the new version is read instead, a few times at
    /// most.
    async fn get_versions(&self, name: &str) -> ClientResult<Item> {
        let mut replaced = 0;
        loop {
            match self.get_version(name).await {
                Err(e) if e.is_replaced() && replaced < REPLACED_RETRIES => replaced += 1,
                result => return result,
            }
        }
    }

    /// The server's shared-memory socket, if it offers one (asked once per client; a call
    /// that ran out of time or was interrupted asks again next time).
    /// `what` is the call that asks (its deadline's error names it).
    fn shm_socket(&self, what: &str) -> ClientResult<Option<(PathBuf, String)>> {
        if self.shm == Some(false) || !cfg!(target_os = "linux") {
            return Ok(None);
        }
        if let Some(known) = self.shm_socket.get() {
            return Ok(known.clone());
        }
        let body = match (self.block_on(what, self.action_async("shm", Vec::new()))).and_then(|r| r)
        {
            Ok(body) => Some(body),
            Err(e @ (ClientError::Timeout { .. } | ClientError::Interrupted(_))) => return Err(e),
            Err(_) => None,
        };
        let socket = body.and_then(|body| {
            let offer: crate::shm::Offer = serde_json::from_slice(&body).ok()?;
            Some((PathBuf::from(offer.path()?), offer.instance))
        });
        Ok(self.shm_socket.get_or_init(|| socket).clone())
    }

    /// One request over the shared-memory socket: its reply and descriptor.
    fn shm_request(
        &self,
        request: crate::shm::Request,
        fd: Option<std::os::fd::RawFd>,
    ) -> ClientResult<Shm<(crate::shm::Reply, Option<std::os::fd::OwnedFd>)>> {
        let asks = format!("{} {:?}", request.op(), request.name());
        let Some((path, instance)) = self.shm_socket(&asks)? else {
            return Ok(Shm::Unavailable(
                "the server offers no shared memory".into(),
            ));
        };
        let unavailable = |why: String| Ok(Shm::Unavailable(why));
        let mut stream = match std::os::unix::net::UnixStream::connect(&path) {
            Ok(stream) => stream,
            // Another host (or a server gone): the socket is not here.
            Err(e) => return unavailable(format!("{}: {e}", path.display())),
        };
        match crate::shm::peer_uid(&stream) {
            Ok(uid) if uid == crate::shm::own_uid() => {}
            _ => return unavailable("the socket belongs to another user".into()),
        }
        let io = |e: std::io::Error| ClientError::Remote {
            code: Code::Unavailable,
            kind: None,
            message: format!("shared memory at {}: {e}", path.display()),
        };
        let what = format!(
            "shared-memory {} {:?} at {}",
            request.op(),
            request.name(),
            self.location
        );
        let limits = crate::limits::current(self.timeout);
        // The request is small, and the reply comes in one write once it is ready: the wait
        // for it is what a deadline or Ctrl+C cuts short; a reply cut off mid-way cannot
        // hold the call past a second.
        let backstop = (limits.remaining())
            .unwrap_or(Duration::from_secs(30))
            .max(Duration::from_secs(1));
        (stream.set_write_timeout(Some(backstop)))
            .and_then(|()| stream.set_read_timeout(Some(backstop)))
            .map_err(io)?;
        // The server greets with its instance id before anything is sent: a socket whose path
        // another server reuses never sees the token.
        let epoch = self.cancel_epoch();
        let cancelled = || self.cancelled_since(epoch);
        wait_readable(&stream, &limits, &what, &cancelled)?;
        // A server serving as many shared-memory connections as it takes closes new ones:
        // the call goes by gRPC.
        let greeting = match crate::shm::receive(&mut stream) {
            Ok((greeting, _)) => serde_json::from_value::<crate::shm::Greeting>(greeting).ok(),
            Err(e) => return unavailable(format!("the shared-memory socket hung up ({e})")),
        };
        if greeting.is_none_or(|g| g.instance != instance) {
            return unavailable("the socket belongs to another server".into());
        }
        let request = request.with_token(self.token.clone());
        let header = serde_json::to_value(&request).expect("a request is plain JSON");
        crate::shm::send(&mut stream, &header, fd).map_err(io)?;
        wait_readable(&stream, &limits, &what, &cancelled)?;
        let (reply, fd) = crate::shm::receive(&mut stream).map_err(io)?;
        let reply: crate::shm::Reply = serde_json::from_value(reply).map_err(|e| {
            ClientError::received(
                &what,
                &Status::invalid_argument(format!("a bad reply: {e}")),
            )
        })?;
        if !reply.ok {
            return Err(ClientError::Remote {
                code: Code::from_i32(reply.code.unwrap_or(Code::Unknown as i32)),
                kind: reply.kind,
                message: reply.message.unwrap_or_default(),
            });
        }
        Ok(Shm::Done((reply, fd)))
    }

    fn shm_get(&self, name: &str) -> ClientResult<Shm<Item>> {
        let request = crate::shm::Request::Get {
            name: name.to_string(),
            token: None,
        };
        let (reply, fd) = match self.shm_request(request, None) {
            Ok(Shm::Done(done)) => done,
            Ok(Shm::Unavailable(why)) => return Ok(Shm::Unavailable(why)),
            Ok(Shm::Sharded) => return Ok(Shm::Sharded),
            // Ragged data: shared memory carries tensors only.
            Err(ClientError::Remote {
                code: Code::FailedPrecondition,
                kind: Some(kind),
                message,
            }) if kind == crate::error::KIND_NOT_SHARED => return Ok(Shm::Unavailable(message)),
            // A sharded item's rows are on other servers: its endpoints say where.
            Err(ClientError::Remote {
                code: Code::FailedPrecondition,
                ..
            }) => return Ok(Shm::Sharded),
            Err(e) => return Err(e),
        };
        let what = format!("shared memory of {name:?}");
        let fd = fd.ok_or_else(|| ClientError::Remote {
            code: Code::Internal,
            kind: None,
            message: format!("{what}: the server sent no memory"),
        })?;
        let layout = (reply.layout)
            .ok_or_else(|| arrowbridge::Error::invalid(&what, "the reply has no layout"))?;
        let segment = Arc::new(crate::shm::Segment::adopt(&what, fd)?);
        let (schema, batch) = crate::shm::unpack(&what, segment, &layout)?;
        let columns = arrowbridge::ipc::columns_of(&schema, &[batch])?;
        Ok(Shm::Done(Item {
            form: ItemForm::of(&schema),
            columns,
            shared: true,
        }))
    }

    fn shm_put(
        &self,
        name: &str,
        columns: &[(&str, &ArrowTensor)],
        form: ItemForm,
    ) -> ClientResult<Shm<usize>> {
        if self.shm_socket(&format!("put {name:?}"))?.is_none() {
            return Ok(Shm::Unavailable(
                "the server offers no shared memory".into(),
            ));
        }
        // Shapes that need the flat layout (rows of more than 2^31 values) go by gRPC.
        let Ok(batch) = arrowbridge::ipc::record_batch(columns) else {
            return Ok(Shm::Unavailable(
                "a shape that shared memory does not carry".into(),
            ));
        };
        let mut metadata = batch.schema().metadata().clone();
        metadata.insert(ITEM_KEY.to_string(), form.name().to_string());
        let schema = Arc::new(batch.schema().as_ref().clone().with_metadata(metadata));
        let batch = with_schema(&batch, &schema)?;
        // The copy into shared memory checks the call's limits as it goes (a 1 GiB copy into
        // 4 KiB pages takes a second).
        let what = format!("shared-memory put of {name:?}");
        let limits = crate::limits::current(self.timeout);
        let epoch = self.cancel_epoch();
        let stop = || {
            limits.remaining() == Some(Duration::ZERO)
                || limits.is_interrupted()
                || self.cancelled_since(epoch)
        };
        let Some((segment, layout)) = crate::shm::pack_unless(&what, &batch, &stop)? else {
            return Err(if self.cancelled_since(epoch) {
                ClientError::Interrupted(what)
            } else {
                stopped(&limits, &what)
            });
        };
        let request = crate::shm::Request::Put {
            name: name.to_string(),
            layout,
            token: None,
        };
        match self.shm_request(request, Some(segment.raw_fd()))? {
            Shm::Done((reply, _)) => Ok(Shm::Done(reply.rows.unwrap_or(0))),
            other => Ok(other.map_done()),
        }
    }

    /// The FlightInfo of `name`, and its schema.
    async fn described(&self, name: &str) -> ClientResult<(FlightInfo, SchemaRef)> {
        let descriptor = FlightDescriptor::new_path(vec![name.to_string()]);
        let info = self
            .service(self.channel.clone())
            .get_flight_info(self.request(descriptor))
            .await?
            .into_inner();
        let schema = Arc::new(schema_of(&info)?);
        Ok((info, schema))
    }

    /// One version of `name`, read over gRPC.
    async fn get_version(&self, name: &str) -> ClientResult<Item> {
        let (info, schema) = self.described(name).await?;
        let form = ItemForm::of(&schema);
        let ranges = info
            .endpoint
            .iter()
            .map(endpoint_rows)
            .collect::<Option<Vec<_>>>();
        let rows = usize::try_from(info.total_records).ok();
        let elsewhere = info.endpoint.iter().any(|e| !e.location.is_empty());
        let parallel = match (ranges, rows) {
            (Some(ranges), Some(rows)) if info.endpoint.len() > 1 || elsewhere => {
                Destination::new(&format!("get {name:?}"), schema.clone(), rows)?
                    .map(|d| (d, ranges))
            }
            // One endpoint here: its rows land the same way, in one part.
            (_, Some(rows)) if info.endpoint.len() == 1 && !elsewhere => {
                Destination::new(&format!("get {name:?}"), schema.clone(), rows)?
                    .map(|d| (d, std::iter::once(0..rows).collect()))
            }
            _ => None,
        };
        let (schema, batches) = match parallel {
            Some((destination, ranges)) => (
                schema.clone(),
                vec![
                    self.fetch_parallel(name, &info, destination, ranges)
                        .await?,
                ],
            ),
            None => {
                let mut batches = Vec::new();
                let mut received_schema = schema.clone();
                // A FlightInfo without endpoints (some servers list none): the ticket is the name.
                let endpoints = if info.endpoint.is_empty() {
                    vec![FlightEndpoint::new().with_ticket(Ticket::new(name.to_string()))]
                } else {
                    info.endpoint.clone()
                };
                // Ragged columns (and tensors of a stream whose rows are not known) land
                // message by message as the frames bring them, each body copied once into
                // aligned blocks; other columns (strings, dictionaries) go to arrow-ipc's
                // decoder whole messages at a time.
                let in_bodies = arrowbridge::landing::lands_in_bodies(&schema);
                for (index, endpoint) in endpoints.iter().enumerate() {
                    let received = self
                        .read_replicas(
                            name,
                            index,
                            endpoint,
                            false,
                            &mut (),
                            |(), route, ticket| {
                                if in_bodies {
                                    let schema = schema.clone();
                                    return async move {
                                        let mut bodies = Bodies::new("DoGet", schema.clone());
                                        let ticket = &ticket.ticket;
                                        do_get_into(&route, ticket, "DoGet", &schema, &mut bodies)
                                            .await?;
                                        Ok(Received {
                                            descriptor: None,
                                            schema: None,
                                            batches: bodies.into_batches()?,
                                        })
                                    }
                                    .boxed();
                                }
                                let request = route.request(ticket);
                                async move {
                                    let stream = (route.answer(async {
                                        service(route.channel().await?).do_get(request).await
                                    }))
                                    .await?
                                    .into_inner();
                                    receive_from_server(stream, "DoGet").await
                                }
                                .boxed()
                            },
                        )
                        .await?;
                    if let Some(s) = received.schema {
                        received_schema = s;
                    }
                    batches.extend(received.batches);
                }
                (received_schema, batches)
            }
        };
        let columns = arrowbridge::ipc::columns_of(&schema, &batches)?;
        Ok(Item {
            form,
            columns,
            shared: false,
        })
    }

    /// `name` read whole in one DoGet, without its FlightInfo first: the version stored now,
    /// if it is small ([`SMALL_GET_BYTES`] at most, not sharded); the server refuses it
    /// otherwise ([`ItemTicket::at_most`]), and so does a server that takes no such ticket,
    /// or holds no such item: then its FlightInfo says how to read it, or what is wrong
    /// ([`reads_its_flight_info`]).
    async fn get_small(&self, name: &str) -> ClientResult<Item> {
        use std::sync::atomic::Ordering;
        let another = || ClientError::Remote {
            code: Code::Unimplemented,
            kind: None,
            message: "the server does not serve small items whole".into(),
        };
        if !self.small_gets.load(Ordering::Relaxed) {
            return Err(another());
        }
        let not_small = || {
            self.not_small
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        };
        if not_small().contains(&name.to_string()) {
            return Err(ClientError::Remote {
                code: Code::FailedPrecondition,
                kind: Some(crate::error::KIND_NOT_WHOLE.into()),
                message: format!("{name:?} was not served whole before"),
            });
        }
        let ticket = ItemTicket {
            at_most: Some(SMALL_GET_BYTES),
            ..ItemTicket::whole(name)
        };
        let response = self
            .service(self.channel.clone())
            .do_get(self.request(Ticket::new(ticket.to_bytes())))
            .await
            .map_err(ClientError::from)
            .inspect_err(|e| {
                if matches!(e, ClientError::Remote { kind: Some(kind), .. } if kind == crate::error::KIND_NOT_WHOLE)
                {
                    let mut names = not_small();
                    if names.len() == NOT_SMALL_KEPT {
                        names.pop_front();
                    }
                    names.push_back(name.to_string());
                }
            })?;
        // Another server may answer the ticket with anything (its one table, whatever the
        // ticket): only an answer that names the version it serves is the item.
        if response.metadata().get(crate::error::VERSION_KEY).is_none() {
            self.small_gets.store(false, Ordering::Relaxed);
            return Err(another());
        }
        let received = receive_from_server(response.into_inner(), "DoGet").await?;
        let schema = received.schema.unwrap_or_else(|| Arc::new(Schema::empty()));
        Ok(Item {
            form: ItemForm::of(&schema),
            columns: arrowbridge::ipc::columns_of(&schema, &received.batches)?,
            shared: false,
        })
    }

    /// The way to `location`, an endpoint's location: this client's server for the "reuse
    /// this connection" location of the Flight protocol. With `own` false, this server is
    /// reached over the client's connection.
    fn route_to(&self, location: Option<&str>, own: bool) -> ClientResult<Route> {
        Ok(match location {
            None | Some(REUSE_CONNECTION) => Route {
                shared: (!own).then(|| self.channel.clone()),
                target: self.endpoint.clone(),
                location: self.location.clone(),
                authorization: self.authorization.clone(),
                patience: None,
            },
            Some(location) => Route {
                shared: None,
                location: location.to_string(),
                target: endpoint(
                    location,
                    &ClientOptions {
                        tls_root_certs: self.tls_root_certs.clone(),
                        shm: Some(false),
                        ..ClientOptions::default()
                    },
                )?,
                // The token goes where the user sent it, never where a server points: a
                // FlightInfo naming another location is followed without it.
                authorization: self
                    .trusts(location)
                    .then(|| self.authorization.clone())
                    .flatten(),
                patience: None,
            },
        })
    }

    /// Runs `read` on the route to each location of `endpoint` (the `index`-th of item
    /// `name`) in turn, with its ticket, until one succeeds: replicas stand in for each
    /// other. Without locations the endpoint is on this client's server (over a connection
    /// of its `own`, or the client's). When none succeeds, the error names the endpoint and
    /// every location tried. `read` gets `state` (what it fills) on every attempt.
    async fn read_replicas<S, T>(
        &self,
        name: &str,
        index: usize,
        endpoint: &FlightEndpoint,
        own: bool,
        state: &mut S,
        read: impl for<'a> Fn(
            &'a mut S,
            Route,
            Ticket,
        ) -> futures::future::BoxFuture<'a, ClientResult<T>>,
    ) -> ClientResult<T> {
        let ticket = endpoint.ticket.clone().unwrap_or_default();
        let locations: Vec<Option<&str>> = if endpoint.location.is_empty() {
            vec![None]
        } else {
            endpoint
                .location
                .iter()
                .map(|l| Some(l.uri.as_str()))
                .collect()
        };
        let mut failures = Failures::default();
        for (turn, location) in locations.iter().enumerate() {
            let attempt = async {
                let route = self
                    .route_to(*location, own)?
                    .in_turn(turn, locations.len());
                read(&mut *state, route, ticket.clone()).await
            };
            match attempt.await {
                Ok(value) => return Ok(value),
                // One location: its own error, as it is.
                Err(e) if locations.len() == 1 => return Err(e),
                Err(e) => failures.push(location.unwrap_or(&self.location), e),
            }
        }
        let rows = endpoint_rows(endpoint)
            .map(|r| format!(" (rows [{}, {}))", r.start, r.end))
            .unwrap_or_default();
        Err(failures.into_error(&format!("endpoint {index} of {name:?}{rows}")))
    }

    /// Fetches the endpoints of `info` concurrently, each over a connection of its own (to
    /// its own server, when the endpoint names one), into the rows `ranges` of `destination`.
    async fn fetch_parallel(
        &self,
        name: &str,
        info: &FlightInfo,
        mut destination: Destination,
        ranges: Vec<std::ops::Range<usize>>,
    ) -> ClientResult<RecordBatch> {
        let counts: Vec<usize> = ranges.iter().map(|r| r.len()).collect();
        let contiguous = ranges.windows(2).all(|w| w[0].end == w[1].start)
            && ranges.first().is_none_or(|r| r.start == 0);
        if !contiguous {
            return Err(ClientError::Remote {
                code: Code::Internal,
                kind: None,
                message: "the server's endpoints do not cover the item's rows in order".into(),
            });
        }
        let schema = destination.schema().clone();
        // A connection per endpoint (streams of one connection share one socket), at most
        // PER_LOCATION at once to one location and MAX_PARALLEL in all: an item of 4,000
        // shards uses a handful of descriptors, not 4,000.
        let own = counts.len() > 1;
        let limiter = &PerLocation::new(PER_LOCATION);
        let mut parts = destination.parts(&counts)?;
        let fetches = parts
            .iter_mut()
            .zip(&info.endpoint)
            .enumerate()
            .map(|(index, (part, endpoint))| {
                let schema = schema.clone();
                self.read_replicas(
                    name,
                    index,
                    endpoint,
                    own,
                    part,
                    move |part, route, ticket| {
                        // A replica tried after a broken stream starts the rows again.
                        part.rewind();
                        let schema = schema.clone();
                        async move {
                            let _slot = limiter.acquire(&route.location).await;
                            do_get_into(&route, &ticket.ticket, "DoGet", &schema, part).await
                        }
                        .boxed()
                    },
                )
            })
            // Collected: a stream over the closure would hold its references across
            // awaits, and the future could not be proven `Send` for every lifetime.
            .collect::<Vec<_>>();
        futures::stream::iter(fetches)
            .buffer_unordered(MAX_PARALLEL)
            .try_collect::<Vec<()>>()
            .await?;
        for part in parts {
            part.finish()?;
        }
        Ok(destination.into_batch()?)
    }

    /// What the server stores, sorted by name.
    pub fn list(&self) -> ClientResult<Vec<ItemInfo>> {
        self.block_on("list", self.list_async())?
    }

    /// [`list`](Self::list), as a future.
    pub async fn list_async(&self) -> ClientResult<Vec<ItemInfo>> {
        let infos = self
            .whole()
            .list_flights(self.request(Criteria::default()))
            .await?
            .into_inner()
            .try_collect::<Vec<_>>()
            .await?;
        infos.into_iter().map(item_info).collect()
    }

    /// What is stored under `name`.
    pub fn info(&self, name: &str) -> ClientResult<ItemInfo> {
        self.block_on(&format!("info {name:?}"), self.info_async(name))?
    }

    /// [`info`](Self::info), as a future.
    pub async fn info_async(&self, name: &str) -> ClientResult<ItemInfo> {
        let descriptor = FlightDescriptor::new_path(vec![name.to_string()]);
        let info = self
            .whole()
            .get_flight_info(self.request(descriptor))
            .await?;
        item_info(info.into_inner())
    }

    /// Deletes `name`.
    pub fn delete(&self, name: &str) -> ClientResult<()> {
        self.action("delete", name.as_bytes().to_vec()).map(drop)
    }

    /// The server's kernels: name → signature.
    pub fn kernels(&self) -> ClientResult<BTreeMap<String, String>> {
        let body = self.action("list_kernels", Vec::new())?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Remote {
            code: Code::Internal,
            kind: None,
            message: format!("list_kernels answered with bad JSON: {e}"),
        })
    }

    /// The server's health: `{"status": "ok", "stored": n}` from an arrowbridge server.
    pub fn health(&self) -> ClientResult<serde_json::Value> {
        let body = self.action("health", Vec::new())?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Remote {
            code: Code::Internal,
            kind: None,
            message: format!("health answered with bad JSON: {e}"),
        })
    }

    /// Runs DoAction `kind`; the body of its first result.
    pub fn action(&self, kind: &str, body: Vec<u8>) -> ClientResult<Vec<u8>> {
        self.block_on(&format!("action {kind:?}"), self.action_async(kind, body))?
    }

    /// [`action`](Self::action), as a future.
    pub async fn action_async(&self, kind: &str, body: Vec<u8>) -> ClientResult<Vec<u8>> {
        let results = self
            .whole()
            .do_action(self.request(Action::new(kind, body)))
            .await?
            .into_inner()
            .try_collect::<Vec<_>>()
            .await?;
        Ok(results
            .into_iter()
            .next()
            .map(|r| r.body.to_vec())
            .unwrap_or_default())
    }

    /// Runs `kernel` on the server (DoExchange) with `args` and `params`; its outputs.
    pub fn call(
        &self,
        kernel: &str,
        args: &[Arg<'_>],
        params: &Params,
    ) -> ClientResult<Vec<ArrowTensor>> {
        self.block_on(
            &format!("call {kernel:?}"),
            self.call_async(kernel, args, params),
        )?
    }

    /// [`call`](Self::call), as a future. The arguments are laid out before it returns;
    /// the future holds no borrow of them.
    pub fn call_async<'a>(
        &'a self,
        kernel: &str,
        args: &[Arg<'_>],
        params: &Params,
    ) -> impl std::future::Future<Output = ClientResult<Vec<ArrowTensor>>> + Send + 'a {
        let request = exchange_request(kernel, args, params);
        async move {
            let (messages, failure) = request?;
            self.exchange(messages, failure).await
        }
    }

    /// Sends a DoExchange of `messages`; the tensors it answers with.
    async fn exchange(
        &self,
        messages: Outgoing,
        failure: Arc<Mutex<Option<ClientError>>>,
    ) -> ClientResult<Vec<ArrowTensor>> {
        let received = async {
            let stream = self
                .whole()
                .do_exchange(self.request(messages))
                .await?
                .into_inner();
            receive_from_server(stream, "DoExchange result").await
        }
        .await;
        if let Some(e) = failure
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            return Err(e);
        }
        let received = received?;
        let schema = received.schema.unwrap_or_else(|| Arc::new(Schema::empty()));
        let outputs = arrowbridge::ipc::tensors_of(&schema, &received.batches)?;
        Ok(outputs.into_iter().map(|(_, t)| t).collect())
    }

    /// Runs `future` on the client's runtime, in the background: how async code uses the
    /// `*_async` methods (with an `Arc` of the client moved into the future). The runtime's
    /// threads drive it ([`ClientOptions::background`]); dropping the handle leaves it
    /// running, [`JoinHandle::abort`](tokio::task::JoinHandle::abort) cancels it (its
    /// streams reset).
    pub fn spawn<F>(&self, future: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // A lone call polls its sockets for a moment before the thread sleeps, as a
        // blocking call does (see `spinning`); after it, the thread stays awake a moment
        // for the next (see `linger`).
        self.runtime.spawn(async move {
            let output = spinning(future).await;
            linger();
            output
        })
    }
}

/// The most endpoints of one get read at once.
const MAX_PARALLEL: usize = 16;
/// The most endpoints of one get read at once from one location.
const PER_LOCATION: usize = 4;

/// Slots per location: at most `permits` reads under way to each.
struct PerLocation {
    permits: usize,
    slots: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>,
}

impl PerLocation {
    fn new(permits: usize) -> Self {
        PerLocation {
            permits,
            slots: Mutex::default(),
        }
    }

    /// A slot of `location`, once one is free.
    async fn acquire(&self, location: &str) -> tokio::sync::OwnedSemaphorePermit {
        let semaphore = self
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(location.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.permits)))
            .clone();
        semaphore
            .acquire_owned()
            .await
            .expect("the semaphore is never closed")
    }
}

/// How many times a get reads an item again when a put replaced the version it was reading.
const REPLACED_RETRIES: usize = 3;

/// What became of a call that ran out of time.
fn fate(kept: bool) -> &'static str {
    if kept {
        "its fetch goes on, and the next read waits for it again"
    } else {
        "it was cancelled"
    }
}

impl ClientError {
    /// A stream's wait for its next batch that ran out of time, said as such: the batch's
    /// fetch goes on, and the next read of the stream waits for it again.
    pub(crate) fn batch_kept(self) -> ClientError {
        match self {
            ClientError::Timeout { call, limit, .. } => ClientError::Timeout {
                call,
                limit,
                kept: true,
            },
            other => other,
        }
    }

    /// A put's deadline or interruption that came after its stream ended, said as such:
    /// the server may have stored the item.
    pub(crate) fn after_the_stream_ended(self) -> ClientError {
        let note = " (after its whole stream was sent: the server may have stored it)";
        match self {
            ClientError::Timeout { call, limit, kept } => ClientError::Timeout {
                call: format!("{call}{note}"),
                limit,
                kept,
            },
            ClientError::Interrupted(call) => ClientError::Interrupted(format!("{call}{note}")),
            other => other,
        }
    }
}

impl ClientError {
    /// This error of the call `what` to the server at `location`: one saying the server is
    /// unavailable (a transport failure, most often) names the call and the server, unless
    /// it names the server already.
    pub fn at(self, what: &str, location: &str) -> ClientError {
        match self {
            ClientError::Remote {
                code: Code::Unavailable,
                kind: None,
                message,
            } if !message.contains(location) => ClientError::Remote {
                code: Code::Unavailable,
                kind: None,
                message: format!("{what} at {location}: {message}"),
            },
            other => other,
        }
    }

    /// Whether the server refused a ticket because its version was replaced.
    pub fn is_replaced(&self) -> bool {
        matches!(self, ClientError::Remote { kind: Some(kind), .. } if kind == crate::error::KIND_REPLACED)
    }
}

/// How every replica of one piece of an item failed to send it.
#[derive(Debug, Default)]
pub(crate) struct Failures {
    /// Each location tried, with its error.
    tried: Vec<String>,
    /// The first answer that the version read was replaced.
    replaced: Option<ClientError>,
}

impl Failures {
    pub(crate) fn push(&mut self, location: &str, error: ClientError) {
        self.tried.push(format!("{location}: {error}"));
        if error.is_replaced() && self.replaced.is_none() {
            self.replaced = Some(error);
        }
    }

    /// The read's error (`piece` names what was read): the version's replacement if any
    /// replica said so — a server that answered knows, and a get then reads the new
    /// version — else that no replica answered.
    pub(crate) fn into_error(self, piece: &str) -> ClientError {
        self.replaced.unwrap_or_else(|| ClientError::Remote {
            code: Code::Unavailable,
            kind: None,
            message: format!(
                "{piece}: none of its {} locations answered: {}",
                self.tried.len(),
                self.tried.join("; ")
            ),
        })
    }
}

/// The error of call `what` that `limits` stopped: its timeout, or an interruption.
fn stopped(limits: &crate::limits::Deadline, what: &str) -> ClientError {
    if limits.is_interrupted() {
        ClientError::Interrupted(what.to_string())
    } else {
        ClientError::Timeout {
            call: what.to_string(),
            limit: limits.at.map_or(Duration::ZERO, |at| at - limits.started),
            kept: false,
        }
    }
}

/// Waits until `stream` has bytes to read, within the call's `limits` (checking for an
/// interruption every [`crate::limits::CHECK_EVERY`]).
fn wait_readable(
    stream: &std::os::unix::net::UnixStream,
    limits: &crate::limits::Deadline,
    what: &str,
    cancelled: &dyn Fn() -> bool,
) -> ClientResult<()> {
    use std::os::fd::AsRawFd;
    loop {
        let slice = limits.remaining().map_or(crate::limits::CHECK_EVERY, |r| {
            r.min(crate::limits::CHECK_EVERY)
        });
        let mut poll = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, slice.as_millis() as libc::c_int) };
        if ready > 0 {
            return Ok(()); // readable, closed or failed: the read says which
        }
        if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Ok(()); // the read reports it
        }
        if limits.remaining() == Some(Duration::ZERO) {
            return Err(ClientError::Timeout {
                call: what.to_string(),
                limit: limits.at.map_or(Duration::ZERO, |at| at - limits.started),
                kept: false,
            });
        }
        if limits.is_interrupted() || cancelled() {
            return Err(ClientError::Interrupted(what.to_string()));
        }
    }
}

impl ClientError {
    /// The client's refusal of what a server sent (`status`, made by the parser while
    /// reading it): data that is not what Arrow or Flight allow is the client's error to
    /// report ([`arrowbridge::Error::InvalidArrowData`] in kind), not the server's status.
    pub(crate) fn received(what: &str, status: &Status) -> ClientError {
        ClientError::Local(arrowbridge::Error::invalid(
            format!("what the server sent ({what})"),
            status.message().to_string(),
        ))
    }
}

/// [`receive`] of a stream a server answers with: its errors are the server's, what the
/// reader refuses is the client's ([`ClientError::received`]).
async fn receive_from_server<S>(stream: S, what: &'static str) -> ClientResult<Received>
where
    S: futures::Stream<Item = Result<FlightData, Status>> + Send + Unpin + 'static,
{
    let from_server: Arc<Mutex<Option<Status>>> = Arc::default();
    let seen = from_server.clone();
    let stream = stream.inspect(move |item| {
        if let Err(status) = item {
            *seen.lock().unwrap_or_else(PoisonError::into_inner) = Some(status.clone());
        }
    });
    match receive(stream, what).await {
        Ok(received) => Ok(received),
        Err(status) => {
            let server = from_server
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            Err(match server {
                Some(server) => server.into(),
                None => ClientError::received(what, &status),
            })
        }
    }
}

/// The error of `shm=True` when shared memory cannot be used.
fn shm_refused(why: &str) -> ClientError {
    ClientError::Remote {
        code: Code::Unavailable,
        kind: None,
        message: format!("shared memory was asked for (shm=True) but cannot be used: {why}"),
    }
}

/// The location of the Flight protocol that means "this connection's server".
const REUSE_CONNECTION: &str = "arrow-flight-reuse-connection://?";

/// The rows of the whole item an endpoint carries: from its app_metadata (`{"rows": [s, e]}`,
/// the shards of a sharded item), or from an arrowbridge server's row-range ticket.
fn endpoint_rows(endpoint: &FlightEndpoint) -> Option<std::ops::Range<usize>> {
    let declared = serde_json::from_slice::<serde_json::Value>(&endpoint.app_metadata)
        .ok()
        .and_then(|meta| rows_of(&meta));
    declared.or_else(|| ticket_rows(&endpoint.ticket.as_ref()?.ticket))
}

/// `value["rows"]` as a range.
fn rows_of(value: &serde_json::Value) -> Option<std::ops::Range<usize>> {
    let rows = value.get("rows")?.as_array()?;
    let (start, end) = (rows.first()?.as_u64()?, rows.get(1)?.as_u64()?);
    Some(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
}

/// The rows a ticket of an arrowbridge server's endpoint names (`None` for other tickets).
fn ticket_rows(ticket: &[u8]) -> Option<std::ops::Range<usize>> {
    let [start, end] = ItemTicket::parse(ticket).ok()?.rows?;
    Some(start..end)
}

/// The rows a server's acknowledgement of a put counts.
fn acknowledged_rows(ack: &PutResult) -> usize {
    PutAck::parse(&ack.app_metadata).rows
}

/// The DoExchange messages of a call of `kernel` on `args` with `params` (the command
/// first), and the slot where an encoding failure is kept.
fn exchange_request(
    kernel: &str,
    args: &[Arg<'_>],
    params: &Params,
) -> ClientResult<(Outgoing, Arc<Mutex<Option<ClientError>>>)> {
    let mut sent: Vec<(String, ArrowTensor)> = Vec::new();
    let mut spec = Vec::with_capacity(args.len());
    for (i, arg) in args.iter().enumerate() {
        match arg {
            Arg::Array(tensor) => {
                let column = format!("arg{i}");
                spec.push(ExchangeArg::Column(column.clone()));
                sent.push((column, (*tensor).clone()));
            }
            Arg::Ragged(ragged) => {
                let [values, shapes] = ragged.to_kernel_args()?;
                let columns = RaggedColumns {
                    values: format!("arg{i}"),
                    shapes: format!("arg{i}.shapes"),
                };
                sent.push((columns.values.clone(), values));
                sent.push((columns.shapes.clone(), shapes));
                spec.push(ExchangeArg::Ragged(columns));
            }
            Arg::Stored(name) => spec.push(ExchangeArg::Stored(name.to_string())),
            Arg::StoredRows {
                name,
                version,
                rows,
            } => spec.push(ExchangeArg::StoredRows(StoredRows {
                name: name.to_string(),
                version: *version,
                rows: [rows.0, rows.1],
            })),
        }
    }
    let command = ExchangeCommand {
        kernel: kernel.to_string(),
        args: Some(spec),
        params: match params.to_json() {
            serde_json::Value::Object(params) => params,
            _ => serde_json::Map::new(),
        },
    };
    let command = serde_json::to_vec(&command).expect("a command is plain JSON");
    let columns: Vec<(&str, &ArrowTensor)> = sent.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let (schema, batches) = if columns.is_empty() {
        (Arc::new(Schema::empty()), Vec::new())
    } else {
        arrowbridge::ipc::wire_batches(&columns, MAX_FLIGHT_DATA)?
    };
    let descriptor = FlightDescriptor::new_cmd(command);
    let (messages, failure) = encode(schema, batches, descriptor);
    Ok((messages, failure))
}

/// The record batches that carry `columns` as an item of form `form` in a DoPut.
fn put_batches(
    columns: &[(&str, &ArrowTensor)],
    form: ItemForm,
) -> ClientResult<(SchemaRef, Vec<RecordBatch>)> {
    let (schema, batches) = arrowbridge::ipc::wire_batches(columns, MAX_FLIGHT_DATA)?;
    let mut metadata = schema.metadata().clone();
    metadata.insert(ITEM_KEY.to_string(), form.name().to_string());
    let schema = Arc::new(schema.as_ref().clone().with_metadata(metadata));
    let batches = batches
        .iter()
        .map(|b| with_schema(b, &schema))
        .collect::<ClientResult<Vec<_>>>()?;
    Ok((schema, batches))
}

/// The columns as tensors, when none is ragged.
pub(crate) fn tensor_columns<'a>(
    columns: &[(&'a str, &'a Column)],
) -> Option<Vec<(&'a str, &'a ArrowTensor)>> {
    columns
        .iter()
        .map(|(name, column)| column.tensor().map(|t| (*name, t)))
        .collect()
}

/// The record batches that carry `columns`, some of them ragged, as an item of form `form`
/// in a DoPut: views of the columns ([`arrowbridge::ipc::record_batches_of`]), which the
/// framing gathers into messages of whole rows of about [`MAX_FLIGHT_DATA`] bytes.
fn ragged_put_batches(
    columns: &[(&str, &Column)],
    form: ItemForm,
) -> ClientResult<(SchemaRef, Vec<RecordBatch>)> {
    // Views of the columns: a list of arrays is one part per array, each framed where it lies.
    let batches = arrowbridge::ipc::record_batches_of(columns)?;
    let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
    let mut metadata = batches[0].schema().metadata().clone();
    metadata.insert(ITEM_KEY.to_string(), form.name().to_string());
    // Rows announced, as tensors' are: the server lands each message in place.
    let schema = Arc::new(arrowbridge::landing::announcing(
        &batches[0].schema().as_ref().clone().with_metadata(metadata),
        rows,
    ));
    // Rows travel whole, in messages the server accepts (headroom for the header, padding).
    arrowbridge::ipc::check_row_sizes(&batches, MAX_MESSAGE - (1 << 20))?;
    let batches = batches
        .iter()
        .map(|b| with_schema(b, &schema))
        .collect::<ClientResult<Vec<_>>>()?;
    Ok((schema, batches))
}

/// The FlightData messages of `batches` under `schema`, the first carrying `descriptor`. An
/// encoding failure ends the stream early (the server then sees fewer rows than announced)
/// and is kept in the returned slot, for the caller to report instead of the server's
/// complaint.
fn encode(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
    descriptor: FlightDescriptor,
) -> (Outgoing, Arc<Mutex<Option<ClientError>>>) {
    let failure: Arc<Mutex<Option<ClientError>>> = Arc::default();
    let encoder = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_flight_descriptor(Some(descriptor))
        .with_max_flight_data_size(MAX_FLIGHT_DATA)
        .build(futures::stream::iter(batches.into_iter().map(Ok)));
    let outgoing = Outgoing {
        encoder,
        failure: failure.clone(),
    };
    (outgoing, failure)
}

/// The messages a request streams to the server (see [`encode`]). A type of its own, not a
/// boxed stream: rustc proves a future that holds a boxed request stream `Send` for no
/// more than one lifetime, and [`Client::spawn`] needs every lifetime.
struct Outgoing {
    encoder: arrow_flight::encode::FlightDataEncoder,
    failure: Arc<Mutex<Option<ClientError>>>,
}

impl futures::Stream for Outgoing {
    type Item = FlightData;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<FlightData>> {
        match std::task::ready!(self.encoder.poll_next_unpin(cx)) {
            Some(Ok(data)) => std::task::Poll::Ready(Some(data)),
            Some(Err(e)) => {
                *self.failure.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(ClientError::Local(arrowbridge::Error::invalid(
                        "Flight encoding",
                        e.to_string(),
                    )));
                std::task::Poll::Ready(None)
            }
            None => std::task::Poll::Ready(None),
        }
    }
}

/// The schema a server's FlightInfo describes.
fn schema_of(info: &FlightInfo) -> ClientResult<Schema> {
    info.clone()
        .try_decode_schema()
        .map_err(|e| ClientError::Remote {
            code: Code::Internal,
            kind: None,
            message: format!("the server sent a FlightInfo with a bad schema: {e}"),
        })
}

fn item_info(info: FlightInfo) -> ClientResult<ItemInfo> {
    let schema = schema_of(&info)?;
    let meta: serde_json::Value = serde_json::from_slice(&info.app_metadata).unwrap_or_default();
    let name = info
        .flight_descriptor
        .as_ref()
        .and_then(|d| d.path.first().cloned())
        .unwrap_or_default();
    Ok(ItemInfo {
        name,
        rows: info.total_records,
        bytes: info.total_bytes,
        schema: Arc::new(schema),
        columns: meta["columns"].as_array().cloned().unwrap_or_default(),
        version: info
            .endpoint
            .first()
            .and_then(|e| e.ticket.as_ref())
            .and_then(|t| ItemTicket::parse(&t.ticket).ok())
            .and_then(|t| t.version),
        endpoints: info.endpoint.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(code: Code, kind: Option<&str>, message: &str) -> ClientError {
        ClientError::Remote {
            code,
            kind: kind.map(str::to_string),
            message: message.to_string(),
        }
    }

    #[test]
    fn replicas_that_all_failed_report_a_replacement_if_any_said_so() {
        let mut failures = Failures::default();
        failures.push(
            "grpc://a:1",
            remote(Code::Unavailable, None, "connection refused"),
        );
        failures.push(
            "grpc://b:2",
            remote(
                Code::FailedPrecondition,
                Some(crate::error::KIND_REPLACED),
                "gone",
            ),
        );
        let error = failures.into_error("endpoint 1 of \"x\"");
        assert!(error.is_replaced(), "{error}");
    }

    #[test]
    fn replicas_that_all_failed_otherwise_name_every_location() {
        let mut failures = Failures::default();
        failures.push("grpc://a:1", remote(Code::Unavailable, None, "refused"));
        failures.push("grpc://b:2", remote(Code::Internal, None, "broken"));
        let error = failures.into_error("endpoint 1 of \"x\"");
        let ClientError::Remote { code, message, .. } = &error else {
            panic!("{error:?}")
        };
        assert_eq!(*code, Code::Unavailable);
        assert!(message.starts_with("endpoint 1 of \"x\": none of its 2 locations answered"));
        assert!(message.contains("grpc://a:1") && message.contains("grpc://b:2"));
    }
}
