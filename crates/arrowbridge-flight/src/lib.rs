//! An Arrow Flight server for arrowbridge: stores named arrays and runs the kernels of an
//! [`arrowbridge::Registry`] on arrays sent by any Flight client.
//!
//! | RPC | what it does |
//! | --- | --- |
//! | DoPut | stores the streamed batches under the descriptor's path `[name]` |
//! | DoGet | streams a stored item back (ticket = name), split into messages of at most 8 MiB |
//! | ListFlights, GetFlightInfo, GetSchema | describe stored items (schema, rows, bytes) |
//! | DoExchange | runs a kernel: descriptor command `{"kernel": ..., "args": [...], "params": {...}}` |
//! | DoAction | `delete` (body = name), `list_kernels`, `describe_kernels`, `health`, `shm` |
//!
//! An item sharded over several servers is described by every one of them ([`shards`]).

#![warn(missing_docs)]

mod client;
mod error;
pub mod limits;
mod names;
mod server;
pub mod shards;
pub mod shm;
mod tls;
mod wire;

pub use client::{
    Arg, Client, ClientError, ClientOptions, ClientResult, Item, ItemForm, ItemInfo, ItemStream,
    PutStream, Selection, ITEM_KEY,
};
pub use error::{
    FlightServerError, Result, KIND_KEY, KIND_NOT_SHARED, KIND_NOT_WHOLE, KIND_OUT_OF_MEMORY,
    KIND_REPLACED, KIND_STORAGE, VERSION_KEY,
};
pub use names::check_name;
pub use server::service::{MAX_ENDPOINTS, PART_BYTES, SHM_IDLE};
pub use server::store::{total_rows, VersionError};
pub use server::{default_max_bytes, start, RunningServer, ServerConfig, SHUTDOWN_GRACE};

pub use wire::protocol::{ExchangeArg, ExchangeCommand, ItemTicket, MapOrder};
pub use wire::receive::{receive, receive_part, Received};
pub use wire::{MAX_FLIGHT_DATA, MAX_MESSAGE};
/// The server's service and store and the client's response parser, which the fuzz targets
/// (crates/fuzz-targets) drive directly: only with the `fuzzing` feature, never in what
/// users build.
#[cfg(feature = "fuzzing")]
pub use {
    server::service::Service,
    server::store::{Store, Stored},
    wire::parse::{land_bodies, land_response},
};
