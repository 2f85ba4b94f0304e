//! Errors of the Flight server, and how they reach clients.

use std::path::Path;

use tonic::Status;

/// What can go wrong in the server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FlightServerError {
    /// An error of the arrays, kernels or files themselves.
    #[error(transparent)]
    Core(#[from] arrowbridge::Error),
    /// A request the server cannot serve as it is (`INVALID_ARGUMENT`).
    #[error("{0}")]
    BadRequest(String),
    /// No item or kernel of that name (`NOT_FOUND`).
    #[error("{0}")]
    NotFound(String),
    /// The item is sharded over other servers, so its rows are not here
    /// (`FAILED_PRECONDITION`).
    #[error("{0}")]
    Sharded(String),
    /// A failed put cannot be undone here: the map its own replaced is no longer kept
    /// (`FAILED_PRECONDITION`); its map stays.
    #[error("{0}")]
    Forgotten(String),
    /// The item cannot be served as shared memory (its columns are not fixed-width values:
    /// ragged data); it is read over gRPC (`FAILED_PRECONDITION`, kind [`KIND_NOT_SHARED`]).
    #[error("{0}")]
    NotShareable(String),
    /// A sharded item's map older than the one stored (another put of the name committed
    /// later, or deleted it), or of a put undone here (`FAILED_PRECONDITION`, kind
    /// [`KIND_REPLACED`]): see [`crate::shards`].
    #[error("{0}")]
    Superseded(String),
    /// A put would make the stored items take more than the server's memory budget
    /// (`RESOURCE_EXHAUSTED`, kind [`KIND_OUT_OF_MEMORY`]).
    #[error("{0}")]
    OverBudget(String),
    /// The data directory cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The server cannot listen on its address (taken, not local, not permitted).
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// `host:port`.
        address: String,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS certificate or key cannot be used.
    #[error("TLS certificate or key: {0}")]
    Tls(String),
    /// The server's runtime or transport failed.
    #[error("{0}")]
    Transport(String),
}

/// `Result` of the Flight server.
pub type Result<T, E = FlightServerError> = std::result::Result<T, E>;

impl FlightServerError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        FlightServerError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

impl From<FlightServerError> for Status {
    fn from(e: FlightServerError) -> Status {
        use arrowbridge::Error as E;
        let message = capped(e.to_string());
        match e {
            FlightServerError::NotFound(_) | FlightServerError::Core(E::UnknownKernel { .. }) => {
                Status::not_found(message)
            }
            FlightServerError::Io { source, .. }
            | FlightServerError::Core(E::Io { source, .. }) => storage_status(&source, message),
            FlightServerError::Core(E::OutOfMemory { .. }) | FlightServerError::OverBudget(_) => {
                with_kind(Status::resource_exhausted(message), KIND_OUT_OF_MEMORY)
            }
            FlightServerError::Sharded(_) | FlightServerError::Forgotten(_) => {
                Status::failed_precondition(message)
            }
            FlightServerError::Superseded(_) => {
                with_kind(Status::failed_precondition(message), KIND_REPLACED)
            }
            FlightServerError::NotShareable(_) => {
                with_kind(Status::failed_precondition(message), KIND_NOT_SHARED)
            }
            FlightServerError::Transport(_)
            | FlightServerError::Listen { .. }
            | FlightServerError::Tls(_) => Status::internal(message),
            _ => Status::invalid_argument(message),
        }
    }
}

/// The most bytes of a status message: it travels percent-encoded (up to three bytes a byte)
/// in the `grpc-message` trailer, and clients refuse header lists over 16 KiB (hyper, tonic)
/// or 8 KiB (gRPC C++) — h2 drops the whole connection at 64 KiB.
pub const MAX_STATUS_MESSAGE: usize = 1024;

/// `message`, cut to [`MAX_STATUS_MESSAGE`] bytes (saying how long it was) when longer.
pub(crate) fn capped(mut message: String) -> String {
    if message.len() > MAX_STATUS_MESSAGE {
        let whole = message.len();
        let mut end = MAX_STATUS_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(&format!("... ({whole} bytes in all)"));
    }
    message
}

/// Response metadata key that says which kind of failure a status reports, where its gRPC
/// code alone does not (`RESOURCE_EXHAUSTED` is either memory or disk): clients choose their
/// exception from the code and this, never from the message's text.
pub const KIND_KEY: &str = "arrowbridge-error";
/// [`KIND_KEY`] of a server that cannot allocate what a call needs.
pub const KIND_OUT_OF_MEMORY: &str = "out-of-memory";
/// [`KIND_KEY`] of a server that cannot write its data directory.
pub const KIND_STORAGE: &str = "storage";
/// [`KIND_KEY`] of a ticket for a version of an item that a put or a delete replaced and
/// that no reader holds any more, or of a sharded item's map that a newer put's replaced
/// (`FAILED_PRECONDITION`).
pub const KIND_REPLACED: &str = "replaced";

/// [`KIND_KEY`] of an item that shared memory cannot carry (ragged data): read it over gRPC.
pub const KIND_NOT_SHARED: &str = "not-shared";
/// The header of every DoGet answer of an arrowbridge server: the version it serves. A
/// client asking for a small item whole ([`crate::ItemTicket::at_most`]) takes the answer
/// only from a server that says it understood the ticket so.
pub const VERSION_KEY: &str = "arrowbridge-version";
/// [`KIND_KEY`] of an item that a ticket asked for whole if small
/// ([`crate::ItemTicket::at_most`]) and that is not: read its FlightInfo.
pub const KIND_NOT_WHOLE: &str = "not-whole";

pub(crate) fn with_kind(mut status: Status, kind: &'static str) -> Status {
    status
        .metadata_mut()
        .insert(KIND_KEY, tonic::metadata::MetadataValue::from_static(kind));
    status
}

/// The status of a failed read or write of the data directory. The server is sound but
/// cannot store: a full disk is `RESOURCE_EXHAUSTED`, a read-only or forbidden directory
/// `FAILED_PRECONDITION`, anything else `INTERNAL`.
fn storage_status(source: &std::io::Error, message: String) -> Status {
    use std::io::ErrorKind as K;
    let status = match source.kind() {
        K::StorageFull | K::QuotaExceeded => {
            Status::resource_exhausted(format!("data directory full: {message}"))
        }
        K::FileTooLarge => Status::resource_exhausted(format!(
            "data directory refuses a file this large: {message}"
        )),
        K::ReadOnlyFilesystem | K::PermissionDenied => {
            Status::failed_precondition(format!("data directory not writable: {message}"))
        }
        _ => Status::internal(message),
    };
    with_kind(status, KIND_STORAGE)
}

/// `head` followed by `error` and each of its sources, joined by ": ", each part once:
/// transport errors repeat their causes at each level ("h2 protocol error: error reading a
/// body: error reading a body: connection reset"), and a part said once is not said again.
pub(crate) fn chain(head: &str, error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let texts = std::iter::once(head.to_string())
        .chain(std::iter::successors(Some(error), |e| e.source()).map(|e| e.to_string()));
    for text in texts {
        for part in text.split(": ") {
            if !part.is_empty() && !parts.iter().any(|p| p == part) {
                parts.push(part.to_string());
            }
        }
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    #[derive(Debug)]
    struct Caused(&'static str, Option<Box<Caused>>);

    impl std::fmt::Display for Caused {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Caused {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn a_chain_says_each_cause_once() {
        let reset = Caused("connection reset", None);
        let body = Caused("error reading a body", Some(Box::new(reset)));
        let outer = Caused("error reading a body", Some(Box::new(body)));
        assert_eq!(
            super::chain("h2 protocol error: error reading a body", &outer),
            "h2 protocol error: error reading a body: connection reset"
        );
        assert_eq!(super::chain("", &Caused("refused", None)), "refused");
    }
}
