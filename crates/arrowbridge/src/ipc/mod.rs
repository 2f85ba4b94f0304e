//! Arrow IPC files and streams: named tensors written with 64-byte aligned buffers, read back
//! as views of a memory mapping.
//!
//! ```
//! use arrowbridge::ipc::{read_ipc, write_ipc, WriteOptions};
//! use arrowbridge::ArrowTensor;
//! use ndarray::ArrayD;
//!
//! let dir = std::env::temp_dir().join(format!("arrowbridge-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let path = dir.join("example.arrow");
//! let embeddings = ArrowTensor::from_array(ArrayD::from_elem(vec![4, 3], 0.5f32));
//! let labels = ArrowTensor::from_array(ArrayD::from_elem(vec![4], 7i64));
//! write_ipc(&path, &[("embeddings", &embeddings), ("labels", &labels)], &WriteOptions::default())?;
//!
//! let file = read_ipc(&path, true)?;            // memory-mapped
//! let e = file.tensor("embeddings")?;
//! assert_eq!(e.view::<f32>()?.shape(), &[4, 3]); // a view into the mapping
//! assert_eq!(file.tensor("labels")?.view::<i64>()?.sum(), 28);
//! # std::fs::remove_dir_all(&dir).unwrap();
//! # Ok::<(), arrowbridge::Error>(())
//! ```

use std::path::Path;

use crate::error::Error;

mod atomic;
mod check;
mod columns;
mod describe;
mod index;
mod read;
mod wire;
mod write;

pub use atomic::{write_atomically, AtomicFile};
pub use check::{check_message, check_message_header, check_schema, schema_of_message};
pub use columns::{
    check_row_sizes, column_across, columns_of, record_batch, record_batch_of, record_batches_of,
    row_sizes, tensors_of, Column,
};
pub use describe::ColumnInfo;
pub use read::{decode, decode_columns, read_ipc, read_ipc_columns, IpcData};
pub use wire::{rows_per_message, wire_batches};
pub use write::{write_batch, write_batches, write_ipc};

pub(crate) use columns::column_tensor;
pub(crate) use read::advise_huge_pages;
// What the modules share with each other.
use self::{check::*, columns::*, index::*};

/// Field metadata key that marks a column holding one whole array in its single row.
pub const FORM_KEY: &str = "arrowbridge.form";
/// Field metadata key holding the shape (a JSON list) of a column sent flat (see
/// [`wire_batches`]).
pub const SHAPE_KEY: &str = "arrowbridge.shape";
/// Every buffer arrowbridge writes starts at a multiple of this many bytes.
pub const ALIGNMENT: usize = 64;
const MAGIC: &[u8; 6] = b"ARROW1";

/// File (random access, with a footer) or stream (sequential messages).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IpcFormat {
    /// The IPC file format: random access through a footer (`.arrow`).
    #[default]
    File,
    /// The IPC streaming format: messages in sequence (`.arrows`).
    Stream,
}

/// Buffer compression of the IPC format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// LZ4 frames.
    Lz4,
    /// Zstandard.
    Zstd,
}

/// How to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteOptions {
    /// File (the default) or stream.
    pub format: IpcFormat,
    /// Compress every buffer, or none (the default: uncompressed buffers are read as views).
    pub compression: Option<Compression>,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

fn bad_file(path: &Path, message: impl Into<String>) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        message: message.into(),
    }
}
