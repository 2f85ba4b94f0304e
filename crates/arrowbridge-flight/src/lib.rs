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
mod coalesce;
mod direct_get;
mod direct_put;
mod error;
mod framing;
mod grpc;
pub mod limits;
mod receive;
mod routes;
mod server;
mod service;
pub mod shards;
pub mod shm;
mod store;
mod tls;

pub use client::{
    Arg, Client, ClientError, ClientOptions, ClientResult, Item, ItemForm, ItemInfo, ITEM_KEY,
};
#[doc(hidden)]
pub use direct_get::land_response;
pub use error::{
    FlightServerError, Result, KIND_KEY, KIND_OUT_OF_MEMORY, KIND_REPLACED, KIND_STORAGE,
};
pub use receive::{receive, receive_part, Received};
pub use server::{
    default_max_bytes, start, RunningServer, ServerConfig, MAX_MESSAGE, SHUTDOWN_GRACE,
};
pub use service::{
    ExchangeArg, ExchangeCommand, ItemTicket, Service, MAX_ENDPOINTS, MAX_FLIGHT_DATA, PART_BYTES,
    SHM_IDLE,
};
pub use store::{check_name, total_rows, Store, Stored, VersionError};
