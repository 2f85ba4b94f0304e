//! Named record batches held by the server, optionally persisted as IPC files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;
use arrowbridge::ipc::{self, IpcFormat, WriteOptions};
use arrowbridge::landing::{unannounced, ROWS_KEY};
use arrowbridge::{ArrowTensor, DType};

use crate::error::{FlightServerError, Result};
use crate::names::check_name;
use crate::server::recent::Recent;
use crate::server::undo::{KeptMap, Previous, UndoLog, HISTORY_BYTES, HISTORY_KEPT};
use crate::shards::{Order, ShardMap};
use crate::shm::{self, Shared};

/// One stored item: the batches a client put under a name, held once. A put from an
/// arrowbridge client lands as one batch of contiguous columns; other writers' batches are
/// kept as they arrived.
///
/// An item is one immutable *version*: a put of the same name makes a new one and never
/// changes this one, which lives on while a reader holds it ([`Store::version`]).
#[derive(Debug)]
pub struct Stored {
    /// Which version of its name this is: unique among the versions of a server's life
    /// (and, drawn from the clock at start, unlikely to repeat across restarts).
    pub version: u64,
    /// The schema the client put (without the row count its stream announced).
    pub schema: SchemaRef,
    /// The batches.
    pub batches: Vec<RecordBatch>,
    /// The sealed shared memory the batches view, when they live in one.
    pub shared: Option<Shared>,
    /// Where the rows are, when the item is sharded over other servers (this is its map:
    /// it has no rows of its own).
    pub shards: Option<ShardMap>,
    /// Whether the batches view the item's file in the data directory, memory-mapped: its
    /// bytes are the page cache's, not the server's memory (nor its budget's).
    pub mapped: bool,
}

impl Stored {
    /// An item made of `batches`.
    pub fn new(schema: SchemaRef, batches: Vec<RecordBatch>) -> Self {
        let schema = if schema.metadata().contains_key(ROWS_KEY) {
            Arc::new(unannounced(&schema))
        } else {
            schema
        };
        // The batches share the item's schema, so that slices of them travel with it.
        let batches = batches
            .into_iter()
            .map(|b| {
                let options = RecordBatchOptions::new().with_row_count(Some(b.num_rows()));
                RecordBatch::try_new_with_options(schema.clone(), b.columns().to_vec(), &options)
                    .unwrap_or(b)
            })
            .collect();
        // Maps are checked when they are put; one that no longer parses (an edited data
        // directory) is served as the plain empty item it is.
        let shards = ShardMap::of(&schema).ok().flatten();
        Stored {
            version: 0,
            schema,
            batches,
            shared: None,
            shards,
            mapped: false,
        }
    }

    /// The item stored in the IPC file at `path`, served from a read-only memory map of it.
    fn from_file(path: &Path) -> Result<Self> {
        let data = ipc::read_ipc(path, true)?;
        let batches = data.batches()?;
        total_rows(&batches)?;
        let mut stored = Stored::new(data.schema().clone(), batches);
        stored.mapped = true;
        Ok(stored)
    }

    /// An item that lives in shared memory: `batch` views `shared`'s segment.
    pub fn in_shared_memory(schema: SchemaRef, batch: RecordBatch, shared: Shared) -> Self {
        let mut stored = Stored::new(schema, vec![batch]);
        stored.shared = Some(shared);
        stored
    }

    /// Column `name` as a tensor: a view when the item is one batch, a concatenation made
    /// for this call when it is several (nothing is cached: the item is held once).
    pub fn tensor(&self, name: &str) -> Result<ArrowTensor> {
        let (index, _) = self
            .schema
            .column_with_name(name)
            .ok_or_else(|| FlightServerError::NotFound(format!("no column {name:?}")))?;
        Ok(ipc::column_across(&self.schema, &self.batches, index)?)
    }

    /// The dtype and shape of column `index`, without concatenating anything; `None` when
    /// the column is not a tensor.
    pub fn column_shape(&self, index: usize) -> Option<(DType, Vec<usize>)> {
        match self.batches.as_slice() {
            [] | [_] => {
                let t = ipc::column_across(&self.schema, &self.batches, index).ok()?;
                let mut shape = t.shape().to_vec();
                if let (Some(map), Some(rows)) = (&self.shards, shape.first_mut()) {
                    *rows = map.rows;
                }
                Some((t.dtype(), shape))
            }
            [first, ..] => {
                let field = self.schema.field(index);
                if field.metadata().contains_key(ipc::FORM_KEY) {
                    return None; // flat and element columns come in one batch
                }
                let data = first.column(index).slice(0, 0).to_data();
                let t = ArrowTensor::from_arrow_unpacking(field, data).ok()?;
                let mut shape = t.shape().to_vec();
                *shape.first_mut()? = self.rows();
                Some((t.dtype(), shape))
            }
        }
    }

    /// Total rows (of all shards, for a sharded item). A store holds only items whose rows
    /// add up ([`total_rows`]); an item that was never checked saturates rather than wraps.
    pub fn rows(&self) -> usize {
        match &self.shards {
            Some(map) => map.rows,
            None => total_rows(&self.batches).unwrap_or(usize::MAX),
        }
    }

    /// What the item costs the server's memory budget: its buffers' bytes, or its shared
    /// memory's whole size (a sparse segment counts at the size it claims); nothing for an
    /// item served from its file.
    pub fn charge(&self) -> usize {
        if self.mapped {
            return 0;
        }
        let buffers = memory_of(&self.batches);
        match &self.shared {
            Some(shared) => buffers.max(shared.segment.len()),
            None => buffers,
        }
    }

    /// Total bytes of the Arrow buffers (of all shards, for a sharded item).
    pub fn bytes(&self) -> usize {
        match &self.shards {
            Some(map) => map.bytes,
            None => memory_of(&self.batches),
        }
    }
}

/// The bytes of the distinct allocations the buffers of `batches` are views of: batches
/// that share one (the blocks a ragged put lands in, [`arrowbridge::landing::Bodies`]; slices
/// of one batch) count it once, where `get_array_memory_size` counts it for each.
fn memory_of(batches: &[RecordBatch]) -> usize {
    #[cfg(test)]
    tests::WALKS.with(|walks| walks.set(walks.get() + 1));
    fn walk(data: &arrow_data::ArrayData, seen: &mut std::collections::HashSet<usize>) -> usize {
        let nulls = data.nulls().map(|n| n.buffer());
        let mut bytes = 0;
        for buffer in data.buffers().iter().chain(nulls) {
            if seen.insert(buffer.data_ptr().as_ptr() as usize) {
                bytes += buffer.capacity();
            }
        }
        bytes
            + data
                .child_data()
                .iter()
                .map(|c| walk(c, seen))
                .sum::<usize>()
    }
    let mut seen = std::collections::HashSet::new();
    batches
        .iter()
        .flat_map(RecordBatch::columns)
        .map(|column| walk(&column.to_data(), &mut seen))
        .sum()
}

/// Versions kept for [`GRACE`] after they were replaced (see [`Store::retire`]), the oldest
/// first, each with its bytes; and their bytes in all. A put costs the same however many
/// there are: a writer putting small items in a loop keeps thousands.
#[derive(Debug, Default)]
struct Retired {
    versions: std::collections::VecDeque<(std::time::Instant, Arc<Stored>, usize)>,
    bytes: usize,
}

/// The server's arrays by name. With a data directory, every put is written to
/// `<dir>/<name>.arrow` atomically (temporary file, fsync, rename) before it is acknowledged,
/// and the directory's files are served again after a restart.
#[derive(Debug)]
pub struct Store {
    items: RwLock<BTreeMap<String, Arc<Stored>>>,
    /// Every version a reader may still hold, by version: replaced and deleted versions
    /// stay readable while a stream (or anything else) holds them, and no longer.
    versions: Mutex<HashMap<u64, (String, Weak<Stored>)>>,
    /// The next version.
    next_version: AtomicU64,
    /// Small versions replaced in the last [`GRACE`], kept so that a reader that asked for
    /// an item's FlightInfo just before a put can still read what it describes: without, a
    /// writer putting the same name in a loop could starve every reader.
    retired: Mutex<Retired>,
    /// The most bytes the items may take ([`Stored::charge`]), and what they take now.
    budget: usize,
    charged: Mutex<usize>,
    data_dir: Option<PathBuf>,
    /// One lock per name being written, so that a put and a delete of the same name keep
    /// file and memory in step (other names go on in parallel).
    writing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// The order of each sharded item deleted in the last [`TOMBSTONE_KEEP`], the last
    /// [`TOMBSTONES_KEPT`] of them ([`Store::delete_map`]): a map no newer that arrives late
    /// is refused.
    tombstones: Mutex<Recent<String, Order>>,
    /// The maps replaced here and the puts undone, to undo failed puts ([`Store::undo`]).
    undo: Mutex<UndoLog>,
}

/// How long the order of a deleted sharded item is kept: far longer than a put's publish
/// takes, so that a put the delete overtook cannot bring the item back on some servers.
pub const TOMBSTONE_KEEP: std::time::Duration = std::time::Duration::from_secs(600);
/// The most deleted sharded items whose order is kept ([`TOMBSTONE_KEEP`]); the first deleted
/// goes first.
pub const TOMBSTONES_KEPT: usize = 1 << 16;

/// `replaced`, when it is a sharded item's map, as [`UndoLog`] keeps it.
fn kept(replaced: Option<&Arc<Stored>>) -> Option<KeptMap> {
    let item = replaced?;
    Some(KeptMap {
        schema: item.schema.clone(),
        map: item.shards.clone()?,
    })
}

/// What [`Store::undo`] did.
#[derive(Debug, PartialEq)]
pub enum Undone {
    /// The failed put's map was there: the map it replaced here is back.
    GaveBack(ShardMap),
    /// The failed put's map was there and replaced nothing: the item is gone.
    Removed,
    /// The failed put's map was not there (a newer put's is, or nothing): nothing changed.
    NotHeld,
}

/// How long a small replaced version stays readable ([`Store::version`]).
pub const GRACE: std::time::Duration = std::time::Duration::from_secs(1);
/// The most bytes of replaced versions kept for [`GRACE`]; a version larger than a quarter of
/// this is not kept (its readers hold it, or ask again).
pub const GRACE_BYTES: usize = 64 << 20;

/// Why a version of an item cannot be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionError {
    /// A put replaced it (or a delete and a put) and no reader holds it any more.
    Replaced {
        /// The version stored now.
        current: u64,
    },
    /// The item was deleted, and no reader holds the version any more.
    Gone,
}

/// The rows of `batches` in all, when they can be counted: at most `i64::MAX`, the most a
/// FlightInfo can announce (three batches of 2^63 − 1 empty rows are refused, not wrapped).
pub fn total_rows(batches: &[RecordBatch]) -> Result<usize> {
    let total = batches
        .iter()
        .try_fold(0usize, |sum, b| sum.checked_add(b.num_rows()))
        .filter(|&total| i64::try_from(total).is_ok());
    total.ok_or_else(|| {
        let rows: Vec<String> = batches.iter().map(|b| b.num_rows().to_string()).collect();
        FlightServerError::BadRequest(format!(
            "batches of {} rows add up to more than the {} rows an item can have",
            rows.join(" + "),
            i64::MAX
        ))
    })
}

impl Store {
    /// An in-memory store, or one backed by `data_dir` (created if missing; its `.arrow`
    /// files are loaded, memory-mapped), with no memory budget.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn open(data_dir: Option<PathBuf>) -> Result<Self> {
        Store::with_budget(data_dir, usize::MAX)
    }

    /// [`Store::open`] with a memory budget: a put that would make the items take more than
    /// `budget` bytes is refused ([`FlightServerError::OverBudget`]), and nothing of it kept.
    pub fn with_budget(data_dir: Option<PathBuf>, budget: usize) -> Result<Self> {
        // Versions start from the clock, so that a ticket of a server that restarted is
        // unlikely to name a version of the new one.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let store = Store {
            items: RwLock::default(),
            versions: Mutex::default(),
            next_version: AtomicU64::new(start),
            retired: Mutex::default(),
            budget,
            charged: Mutex::new(0),
            data_dir,
            writing: Mutex::default(),
            tombstones: Mutex::new(Recent::new(TOMBSTONES_KEPT, TOMBSTONE_KEEP)),
            undo: Mutex::default(),
        };
        if let Some(dir) = &store.data_dir {
            std::fs::create_dir_all(dir).map_err(|e| FlightServerError::io(dir, e))?;
            let entries = std::fs::read_dir(dir).map_err(|e| FlightServerError::io(dir, e))?;
            for entry in entries {
                let path = entry.map_err(|e| FlightServerError::io(dir, e))?.path();
                let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".arrow"))
                else {
                    continue;
                };
                // Temporary files of interrupted writes start with '.' and are not served.
                if check_name(name).is_err() {
                    continue;
                }
                let stored = store.versioned(name, Stored::from_file(&path)?);
                if stored.shards.as_ref().is_some_and(|m| m.order.is_some()) {
                    // What this map replaced was not written down: an undo of its put here
                    // cannot tell what to bring back, and says so.
                    store.undo_log().forgotten(name);
                }
                store.write_items().insert(name.to_string(), stored);
            }
        }
        Ok(store)
    }

    /// `stored` as a new version of `name`, registered so that its readers find it.
    fn versioned(&self, name: &str, mut stored: Stored) -> Arc<Stored> {
        stored.version = self.next_version.fetch_add(1, Ordering::Relaxed);
        self.register(name, Arc::new(stored))
    }

    /// Registers `stored` as a version of `name` (forgetting versions nobody holds).
    fn register(&self, name: &str, stored: Arc<Stored>) -> Arc<Stored> {
        let mut versions = self.versions.lock().unwrap_or_else(PoisonError::into_inner);
        if versions.len() >= 64 && versions.len().is_power_of_two() {
            versions.retain(|_, (_, v)| v.strong_count() > 0);
        }
        versions.insert(stored.version, (name.to_string(), Arc::downgrade(&stored)));
        stored
    }

    /// Keeps `replaced`, if small, readable for [`GRACE`] (at most [`GRACE_BYTES`] in all);
    /// forgets what was kept longer.
    fn retire(&self, replaced: Option<&Arc<Stored>>) {
        let now = std::time::Instant::now();
        let mut retired = self.retired.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((replaced, bytes)) = replaced
            .map(|r| (r, r.bytes()))
            .filter(|(_, bytes)| *bytes <= GRACE_BYTES / 4)
        {
            retired.versions.push_back((now, replaced.clone(), bytes));
            retired.bytes += bytes;
        }
        while let Some(&(at, _, bytes)) = retired.versions.front() {
            if now.duration_since(at) < GRACE && retired.bytes <= GRACE_BYTES {
                break;
            }
            retired.bytes -= bytes;
            retired.versions.pop_front();
        }
    }

    /// Version `version` of item `name`: the current one, or one a put or a delete replaced
    /// while a reader (a DoGet under way) still holds it.
    pub fn version(&self, name: &str, version: u64) -> Result<Arc<Stored>, VersionError> {
        let current = self.get(name);
        if let Some(current) = current.as_ref().filter(|c| c.version == version) {
            return Ok(current.clone());
        }
        let held = self
            .versions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&version)
            .filter(|(of, _)| of == name)
            .and_then(|(_, v)| v.upgrade());
        match (held, current) {
            (Some(stored), _) => Ok(stored),
            (None, Some(current)) => Err(VersionError::Replaced {
                current: current.version,
            }),
            (None, None) => Err(VersionError::Gone),
        }
    }

    fn write_items(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Stored>>> {
        self.items
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_items(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Stored>>> {
        self.items
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` holding the write lock of `name`.
    fn writing<T>(&self, name: &str, f: impl FnOnce() -> T) -> T {
        let lock = self
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(name.to_string())
            .or_default()
            .clone();
        let result = {
            let _guard = lock.lock().unwrap_or_else(PoisonError::into_inner);
            f()
        };
        let mut writing = self.writing.lock().unwrap_or_else(PoisonError::into_inner);
        // The map's and ours: nobody else waits for this name.
        if Arc::strong_count(&lock) == 2 {
            writing.remove(name);
        }
        result
    }

    fn file(&self, dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.arrow"))
    }

    /// Whether items are stored in a data directory.
    pub fn has_data_dir(&self) -> bool {
        self.data_dir.is_some()
    }

    /// Refuses a put of `name` that could not be stored: a bad name, or a shard (written
    /// once) that exists or was deleted.
    fn check_put(&self, name: &str) -> Result<()> {
        check_name(name)?;
        if !crate::names::is_written_once(name) {
            return Ok(());
        }
        if self.get(name).is_some() {
            return Err(FlightServerError::BadRequest(format!(
                "{name:?} holds a shard (or part) of a sharded item, which is written once: \
                 a map names it, and readers of the item trust its rows not to change"
            )));
        }
        if self.undo_log().was_deleted(name) {
            return Err(FlightServerError::Superseded(format!(
                "{name:?} is a shard (or part) of a sharded item that was deleted here: the \
                 put it belongs to was replaced or cleaned up, and a shard is written once"
            )));
        }
        Ok(())
    }

    /// Whether `stored`, when it is a sharded item's map, may replace what `name` holds now
    /// ([`ShardMap::check_publish`]); any other item may.
    fn check_publish(&self, name: &str, stored: &Stored) -> Result<()> {
        let Some(map) = &stored.shards else {
            return Ok(());
        };
        if let Some(order) = &map.order {
            if self.undo_log().was_undone(name, order) {
                return Err(FlightServerError::Superseded(format!(
                    "{name:?}: the put of this map (of {} ns) failed and was undone here \
                     before its map arrived, which is refused",
                    order.0
                )));
            }
            if let Some(deleted) = self.tombstone(name) {
                if deleted >= *order {
                    return Err(FlightServerError::Superseded(format!(
                        "{name:?}: a later delete of the item (at {} ns) came before this \
                         map (of {} ns), which is refused",
                        deleted.0, order.0
                    )));
                }
            }
        }
        let held = self.get(name);
        map.check_publish(name, held.as_ref().and_then(|item| item.shards.as_ref()))
    }

    fn undo_log(&self) -> std::sync::MutexGuard<'_, UndoLog> {
        self.undo.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The order of the delete of `name` kept, if any ([`TOMBSTONE_KEEP`]).
    fn tombstone(&self, name: &str) -> Option<Order> {
        let tombstones = self
            .tombstones
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        tombstones.get(&name.to_string()).cloned()
    }

    /// The file a put of `name` is written to as it arrives, in the data directory (see
    /// [`put_file`](Self::put_file)); `None` without one.
    pub fn begin_file(&self, name: &str) -> Result<Option<ipc::AtomicFile>> {
        self.check_put(name)?;
        let Some(dir) = &self.data_dir else {
            return Ok(None);
        };
        Ok(Some(ipc::AtomicFile::create(&self.file(dir, name))?))
    }

    /// Stores the item `file` (of [`begin_file`](Self::begin_file), written whole) holds
    /// under `name`: the file is committed (flushed, renamed into place) and served
    /// memory-mapped. The item it replaced, as [`put`](Self::put) returns it.
    pub fn put_file(&self, name: &str, file: ipc::AtomicFile) -> Result<Option<Arc<Stored>>> {
        self.writing(name, || {
            self.check_put(name)?;
            // Mapped before it is committed: a file that cannot be served is never renamed
            // into place (the mapping outlives the rename: same inode).
            let stored = Stored::from_file(file.temp_path())?;
            self.check_publish(name, &stored)?;
            file.commit()?;
            let stored = self.versioned(name, stored);
            let replaced = self.write_items().insert(name.to_string(), stored.clone());
            self.release(replaced.as_ref().map_or(0, |item| item.charge()));
            self.retire(replaced.as_ref());
            self.undo_log()
                .replaced(name, stored.shards.as_ref(), kept(replaced.as_ref()));
            Ok(replaced)
        })
    }

    /// Stores `stored` under `name`, durably first when the store has a data directory; the
    /// item it replaced, for the caller to drop once it has answered (freeing a large item
    /// takes time the client need not wait for).
    ///
    /// With a data directory, what is kept is the item's file, memory-mapped: the buffers
    /// the put arrived in are freed when the caller drops `stored`'s remains, so the server's
    /// memory holds the puts under way, not the items. (An item put over shared memory stays
    /// in its segment, which local readers map as it is.)
    pub fn put(&self, name: &str, stored: Stored) -> Result<Option<Arc<Stored>>> {
        check_name(name)?;
        self.writing(name, || {
            self.check_put(name)?;
            self.check_publish(name, &stored)?;
            let replaced = self.store(name, stored)?;
            let stored = self.get(name);
            let map = stored.as_ref().and_then(|item| item.shards.as_ref());
            self.undo_log().replaced(name, map, kept(replaced.as_ref()));
            Ok(replaced)
        })
    }

    /// Stores `stored` under `name` (see [`put`](Self::put)), under the name's write lock,
    /// checked.
    fn store(&self, name: &str, stored: Stored) -> Result<Option<Arc<Stored>>> {
        let replacing = self.get(name).map_or(0, |item| item.charge());
        let charge = stored.charge();
        self.reserve(name, charge, replacing)?;
        let written = self.write_file(name, &stored).and_then(|file| {
            let Some(file) = file else { return Ok(None) };
            // Mapped before it is committed, as in `put_file`.
            let mapped = self.mapped_file(&file, &stored)?;
            file.commit()?;
            Ok(mapped)
        });
        let stored = match written {
            Ok(None) => stored,
            Ok(Some(mapped)) => {
                self.release(charge);
                mapped
            }
            Err(e) => {
                self.release(charge);
                return Err(e);
            }
        };
        let stored = self.versioned(name, stored);
        let replaced = self.write_items().insert(name.to_string(), stored);
        self.release(replaced.as_ref().map_or(0, |item| item.charge()));
        self.retire(replaced.as_ref());
        Ok(replaced)
    }

    /// Charges `bytes` for a put of `name` that replaces an item of `replacing` bytes, when
    /// the budget allows it.
    fn reserve(&self, name: &str, bytes: usize, replacing: usize) -> Result<()> {
        let mut charged = self.charged.lock().unwrap_or_else(PoisonError::into_inner);
        let after = charged.saturating_sub(replacing).saturating_add(bytes);
        if after > self.budget {
            return Err(FlightServerError::OverBudget(format!(
                "storing {name:?} ({bytes} bytes) would make the stored items take {after} bytes, \
                 over the server's budget of {} (serve(max_bytes=...), --max-bytes)",
                self.budget
            )));
        }
        *charged += bytes;
        Ok(())
    }

    /// Gives back `bytes` of the budget.
    fn release(&self, bytes: usize) {
        let mut charged = self.charged.lock().unwrap_or_else(PoisonError::into_inner);
        *charged = charged.saturating_sub(bytes);
    }

    /// Whether a put of `bytes` under `name` fits the budget now (checked before a put's
    /// buffers are allocated; the put itself is charged when it is stored).
    pub fn admits(&self, name: &str, bytes: usize) -> Result<()> {
        let replacing = self.get(name).map_or(0, |item| item.charge());
        self.reserve(name, bytes, replacing)?;
        self.release(bytes);
        Ok(())
    }

    /// The bytes the stored items take now, and the budget.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn charged(&self) -> (usize, usize) {
        let charged = *self.charged.lock().unwrap_or_else(PoisonError::into_inner);
        (charged, self.budget)
    }

    /// Writes `stored` to its file in the data directory, if the store has one.
    /// The file is written, not committed: the caller commits it.
    fn write_file(&self, name: &str, stored: &Stored) -> Result<Option<ipc::AtomicFile>> {
        let Some(dir) = &self.data_dir else {
            return Ok(None);
        };
        let file = ipc::AtomicFile::create(&self.file(dir, name))?;
        let options = WriteOptions {
            format: IpcFormat::File,
            compression: None,
        };
        file.write_batches(
            &stored.schema,
            stored.batches.iter().cloned().map(Ok),
            &options,
        )?;
        Ok(Some(file))
    }

    /// `stored` as it will be served from `file` (written, not yet committed): the file,
    /// memory-mapped; `None` for an item that lives in shared memory or is a map, which keep
    /// their form.
    fn mapped_file(&self, file: &ipc::AtomicFile, stored: &Stored) -> Result<Option<Stored>> {
        if stored.shared.is_some() || stored.shards.is_some() {
            return Ok(None);
        }
        Ok(Some(Stored::from_file(file.temp_path())?))
    }

    /// The item called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Stored>> {
        self.read_items().get(name).cloned()
    }

    /// Removes `name`; whether it existed. When the file cannot be removed the item stays
    /// (in memory and on disk), so that a failed delete changes nothing.
    pub fn delete(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        self.writing(name, || self.remove(name))
    }

    /// Undoes the put of `order` on `name`, a put that failed: where its map is stored, the
    /// map it replaced here comes back (or, when it replaced none, the item goes); where it
    /// is not (it never arrived, or a newer put's map replaced it), it is forgotten, so that
    /// undoing that newer put will not bring it back. Either way, the put's map is refused
    /// should it arrive later. What is stored under `name` now.
    pub fn undo(&self, name: &str, order: &Order) -> Result<Undone> {
        check_name(name)?;
        self.writing(name, || {
            let held = self.get(name);
            let held_order = held
                .as_ref()
                .and_then(|i| i.shards.as_ref()?.order.as_ref());
            let previous = {
                let mut log = self.undo_log();
                log.undone(name, order);
                if held_order != Some(order) {
                    log.drop_order(name, order);
                    return Ok(Undone::NotHeld);
                }
                log.previous(name)
            };
            match previous {
                Previous::Map(KeptMap { schema, map }) => {
                    self.store(name, Stored::new(schema, vec![]))?;
                    Ok(Undone::GaveBack(map))
                }
                Previous::Nothing => {
                    self.remove(name)?;
                    Ok(Undone::Removed)
                }
                Previous::Forgotten => Err(FlightServerError::Forgotten(format!(
                    "{name:?}: the failed put's map stays here: the map it replaced is not \
                     kept (a server keeps {HISTORY_KEPT} per item, {HISTORY_BYTES} bytes in \
                     all, none from before it started)"
                ))),
            }
        })
    }

    /// The maps older than `order` that newer maps replaced under `name` and that this store
    /// keeps for [`undo`](Self::undo), oldest first. Once the put of `order` has replaced
    /// the map on every server, none of them can come back: that put deletes their shards,
    /// which puts that lost to others on some servers left behind.
    pub fn maps_below(&self, name: &str, order: &Order) -> Vec<ShardMap> {
        self.undo_log().below(name, order)
    }

    /// Deletes the sharded item `name` (its map, or whatever is stored under the name) as of
    /// `order`, a delete's place among the puts of the name: refused
    /// ([`FlightServerError::Superseded`]) when a newer put's map is stored, which stays;
    /// else the item is removed, and maps no newer than `order` that arrive later are refused
    /// (for ten minutes: `TOMBSTONE_KEEP`). `None` when nothing was stored, else the map removed (`None`
    /// for an item that was not sharded).
    pub fn delete_map(&self, name: &str, order: &Order) -> Result<Option<Option<ShardMap>>> {
        check_name(name)?;
        self.writing(name, || {
            let held = self.get(name);
            let map = held.as_ref().and_then(|item| item.shards.clone());
            if let Some(newer) = map.as_ref().and_then(|m| m.order.as_ref()) {
                if newer > order {
                    return Err(FlightServerError::Superseded(format!(
                        "{name:?}: a newer put's map is stored here (committed at {} ns, the \
                         delete at {} ns), which stays",
                        newer.0, order.0
                    )));
                }
            }
            {
                let mut tombstones = self
                    .tombstones
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let name = name.to_string();
                let newest = match tombstones.get(&name) {
                    Some(kept) if kept > order => kept.clone(),
                    _ => order.clone(),
                };
                tombstones.note(name, newest);
            }
            Ok(self.remove(name)?.then_some(map))
        })
    }

    /// [`delete`](Self::delete), under the name's write lock.
    fn remove(&self, name: &str) -> Result<bool> {
        let mut removed_file = false;
        if let Some(dir) = &self.data_dir {
            let path = self.file(dir, name);
            match std::fs::remove_file(&path) {
                Ok(()) => removed_file = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(FlightServerError::io(&path, e)),
            }
        }
        let removed = self.write_items().remove(name);
        {
            let mut log = self.undo_log();
            log.forget(name);
            if crate::names::is_written_once(name) {
                log.deleted(name);
            }
        }
        self.release(removed.as_ref().map_or(0, |item| item.charge()));
        Ok(removed.is_some() || removed_file)
    }

    /// The shared memory of item `name`, made on first use: the item's columns are copied
    /// into a sealed memfd, which then replaces the item (the store still holds it once).
    pub fn shared(&self, name: &str) -> Result<Shared> {
        let item = self.get(name).ok_or_else(|| {
            FlightServerError::NotFound(format!("no array called {name:?} is stored"))
        })?;
        if let Some(shared) = &item.shared {
            return Ok(shared.clone());
        }
        if let Some(map) = &item.shards {
            return Err(FlightServerError::Sharded(
                map.not_here(name, "its shared memory")
                    .message()
                    .to_string(),
            ));
        }
        let what = format!("shared memory of {name:?}");
        if arrowbridge::landing::row_bytes(&item.schema).is_none() {
            return Err(FlightServerError::NotShareable(format!(
                "{what}: its columns are not all fixed-width values (ragged data), which \
                 shared memory does not carry; read it over gRPC"
            )));
        }
        let batch = match item.batches.as_slice() {
            [one] => one.clone(),
            many => arrow_select::concat::concat_batches(&item.schema, many)
                .map_err(arrowbridge::Error::from)?,
        };
        let (segment, layout) = shm::pack(&what, &batch)?;
        let segment = Arc::new(segment);
        let (_, batch) = shm::unpack(&what, segment.clone(), &layout)?;
        let shared = Shared { segment, layout };
        if item.mapped {
            // Served from its file: the segment is this reader's copy, not kept (keeping it
            // would bring the item back into the server's memory).
            return Ok(shared);
        }
        // The same rows, so the same version: readers of either see one item.
        let mut stored = Stored::in_shared_memory(item.schema.clone(), batch, shared.clone());
        stored.version = item.version;
        self.writing(name, || {
            let mut items = self.write_items();
            // Unless a put replaced the item meanwhile.
            if items
                .get(name)
                .is_some_and(|current| Arc::ptr_eq(current, &item))
            {
                // The same bytes, now in a segment: charged at the segment's size.
                let mut charged = self.charged.lock().unwrap_or_else(PoisonError::into_inner);
                *charged = charged.saturating_sub(item.charge()) + stored.charge();
                drop(charged);
                items.insert(name.to_string(), self.register(name, Arc::new(stored)));
            }
        });
        Ok(shared)
    }

    /// Every item, by name.
    pub fn list(&self) -> Vec<(String, Arc<Stored>)> {
        self.read_items()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::undo::UNDONE_KEPT;

    fn empty_rows(rows: usize) -> RecordBatch {
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let schema = Arc::new(arrow_schema::Schema::empty());
        RecordBatch::try_new_with_options(schema, vec![], &options).unwrap()
    }

    #[test]
    fn rows_that_would_wrap_or_pass_i64_are_refused() {
        let most = i64::MAX as usize;
        assert_eq!(total_rows(&[empty_rows(most)]).unwrap(), most);
        // Three DoPut batches of 2^63 - 1 empty rows were stored as 2^63 - 3 rows.
        let err = total_rows(&vec![empty_rows(most); 3])
            .unwrap_err()
            .to_string();
        assert!(err.contains("add up to more than"), "{err}");
        assert!(total_rows(&[empty_rows(most), empty_rows(1)]).is_err());
        assert!(total_rows(&[empty_rows(usize::MAX)]).is_err());
    }

    thread_local! {
        /// Walks of buffers ([`memory_of`]) on this thread.
        pub(super) static WALKS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    #[test]
    fn a_put_walks_as_many_buffers_however_many_replaced_versions_are_kept() {
        // A writer putting a small item in a loop: every replaced version is kept for the
        // grace period. Each put walked the buffers of all of them (270 us a put of 8 KiB at
        // 3,000 puts a second, most of the put).
        let store = Store::open(None).unwrap();
        let column: arrow_array::ArrayRef = Arc::new(arrow_array::Float64Array::from(vec![1.0]));
        let batch = RecordBatch::try_from_iter([("x", column)]).unwrap();
        let put = || {
            let stored = Stored::new(batch.schema(), vec![batch.clone()]);
            let before = WALKS.get();
            store.put("x", stored).unwrap();
            WALKS.get() - before
        };
        put();
        let replacing = put();
        for _ in 0..1000 {
            put();
        }
        assert_eq!(store.retired.lock().unwrap().versions.len(), 1001);
        assert_eq!(put(), replacing);
    }

    #[test]
    fn a_replaced_version_is_readable_while_held_then_refused() {
        let store = Store::open(None).unwrap();
        let put = |rows: usize| {
            store
                .put(
                    "x",
                    Stored::new(
                        Arc::new(arrow_schema::Schema::empty()),
                        vec![empty_rows(rows)],
                    ),
                )
                .unwrap()
        };
        put(1);
        let first = store.get("x").unwrap();
        put(2);
        // Held by a reader (and, being small, by the store for a grace period).
        assert_eq!(store.version("x", first.version).unwrap().rows(), 1);
        assert!(matches!(
            store.version("y", first.version),
            Err(VersionError::Gone)
        ));
        let current = store.get("x").unwrap().version;
        assert!(current > first.version);
        drop(first);
        *store.retired.lock().unwrap() = Retired::default();
        let gone = store.version("x", current - 1).unwrap_err();
        assert_eq!(gone, VersionError::Replaced { current });
        store.delete("x").unwrap();
        assert_eq!(store.version("x", current).unwrap_err(), VersionError::Gone);
    }

    /// A map of one shard, of `order`.
    fn map(token: &str, order: u64) -> Stored {
        let map = ShardMap {
            rows: 1,
            bytes: 0,
            shards: vec![crate::shards::Shard {
                name: format!("x.shard-0-of-1.v{token}"),
                rows: [0, 1],
                bytes: 0,
                locations: vec!["grpc://a:1".into()],
            }],
            order: Some((order, token.into())),
        };
        let metadata = std::collections::HashMap::from([(
            crate::shards::SHARDS_KEY.to_string(),
            serde_json::to_string(&map).unwrap(),
        )]);
        let schema = Arc::new(arrow_schema::Schema::empty().with_metadata(metadata));
        Stored::new(schema, vec![])
    }

    fn order_held(store: &Store) -> Option<Order> {
        store.get("x")?.shards.as_ref()?.order.clone()
    }

    #[test]
    fn the_newest_map_stays_whichever_order_the_puts_arrive_in() {
        let store = Store::open(None).unwrap();
        store.put("x", map("b", 20)).unwrap();
        // The older put's publish, arriving late, is refused: the newer map stays.
        let late = store.put("x", map("a", 10)).unwrap_err();
        assert!(matches!(late, FlightServerError::Superseded(_)), "{late}");
        assert_eq!(order_held(&store), Some((20, "b".into())));
        // The same map again (a restarted server given its maps back) is taken.
        store.put("x", map("b", 20)).unwrap();
        store.put("x", map("c", 30)).unwrap();
        assert_eq!(order_held(&store), Some((30, "c".into())));
        let status = tonic::Status::from(late);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn undoing_a_failed_put_brings_back_the_map_it_replaced_here() {
        let store = Store::open(None).unwrap();
        store.put("x", map("a", 10)).unwrap();
        store.put("x", map("b", 20)).unwrap();
        store.put("x", map("c", 30)).unwrap();
        // "c" failed: "b", which it replaced here, is back (whatever "c" read before).
        let undone = store.undo("x", &(30, "c".into())).unwrap();
        assert!(matches!(undone, Undone::GaveBack(_)), "{undone:?}");
        assert_eq!(order_held(&store), Some((20, "b".into())));
        // "b" fails too: "a" is back; "a" replaced nothing here, so undoing it removes it.
        store.undo("x", &(20, "b".into())).unwrap();
        assert_eq!(order_held(&store), Some((10, "a".into())));
        assert_eq!(store.undo("x", &(10, "a".into())).unwrap(), Undone::Removed);
        assert!(store.get("x").is_none());
        assert_eq!(store.undo("x", &(10, "a".into())).unwrap(), Undone::NotHeld);
    }

    #[test]
    fn the_same_map_published_again_is_not_what_undoing_it_brings_back() {
        let store = Store::open(None).unwrap();
        store.put("x", map("a", 10)).unwrap();
        store.put("x", map("b", 20)).unwrap();
        // "b" again (a failed put's roll-forward, then b's own publish arriving).
        store.put("x", map("b", 20)).unwrap();
        store.undo("x", &(20, "b".into())).unwrap();
        assert_eq!(order_held(&store), Some((10, "a".into())));
    }

    #[test]
    fn undoing_a_put_a_newer_one_replaced_changes_nothing_but_forgets_it() {
        let store = Store::open(None).unwrap();
        store.put("x", map("a", 10)).unwrap();
        store.put("x", map("b", 20)).unwrap();
        store.put("x", map("c", 30)).unwrap();
        // "b" failed after "c" replaced it: "c" stays...
        assert_eq!(store.undo("x", &(20, "b".into())).unwrap(), Undone::NotHeld);
        assert_eq!(order_held(&store), Some((30, "c".into())));
        // ...and when "c" fails as well, "a" comes back, not the failed "b" (whose shards
        // its own roll-back deleted).
        store.undo("x", &(30, "c".into())).unwrap();
        assert_eq!(order_held(&store), Some((10, "a".into())));
    }

    #[test]
    fn the_maps_below_a_put_are_those_it_replaced_here_and_theirs() {
        let store = Store::open(None).unwrap();
        store.put("x", map("a", 10)).unwrap();
        store.put("x", map("b", 20)).unwrap();
        store.put("x", map("c", 30)).unwrap();
        let orders = |below: u64| -> Vec<u64> {
            let maps = store.maps_below("x", &(below, "z".into()));
            maps.iter().map(|m| m.order.as_ref().unwrap().0).collect()
        };
        assert_eq!(orders(40), vec![10, 20]);
        assert_eq!(orders(15), vec![10]);
        assert!(store.maps_below("y", &(40, "z".into())).is_empty());
    }

    #[test]
    fn the_map_of_a_put_undone_here_is_refused_when_it_arrives_late() {
        let store = Store::open(None).unwrap();
        store.put("x", map("a", 10)).unwrap();
        // Put "b" was interrupted: its roll-back reached this server before its publish.
        assert_eq!(store.undo("x", &(20, "b".into())).unwrap(), Undone::NotHeld);
        let late = store.put("x", map("b", 20)).unwrap_err();
        assert!(late.to_string().contains("undone"), "{late}");
        assert_eq!(order_held(&store), Some((10, "a".into())));
        // Other puts are not affected.
        store.put("x", map("d", 40)).unwrap();
        assert_eq!(order_held(&store), Some((40, "d".into())));
    }

    #[test]
    fn a_store_keeps_a_bounded_history_and_number_of_undone_puts() {
        let store = Store::open(None).unwrap();
        for i in 1..=HISTORY_KEPT as u64 + 5 {
            store.put("x", map(&format!("t{i}"), i)).unwrap();
        }
        assert_eq!(store.undo_log().counts("x").0, HISTORY_KEPT);
        // Undoing them all runs out of maps: older ones were forgotten, so the last undo
        // keeps its map and says so rather than remove the item.
        for i in (HISTORY_KEPT as u64 + 5..=HISTORY_KEPT as u64 + 5)
            .chain((6..HISTORY_KEPT as u64 + 5).rev())
        {
            store.undo("x", &(i, format!("t{i}"))).unwrap();
        }
        assert_eq!(order_held(&store), Some((5, "t5".into())));
        let err = store.undo("x", &(5, "t5".into())).unwrap_err();
        assert!(err.to_string().contains("is not kept"), "{err}");
        assert_eq!(order_held(&store), Some((5, "t5".into())));
        // Anything but a newer map forgets the history, and its bytes.
        store
            .put(
                "x",
                Stored::new(Arc::new(arrow_schema::Schema::empty()), vec![]),
            )
            .unwrap();
        assert_eq!(store.undo_log().counts("x").0, 0);
        assert_eq!(store.undo_log().counts("x").1, 0);
        for i in 0..UNDONE_KEPT as u64 + 10 {
            store.undo("y", &(i, "t".into())).unwrap();
        }
        assert_eq!(store.undo_log().counts("y").2, UNDONE_KEPT);
        assert!(!store.undo_log().was_undone("y", &(0, "t".into())));
        assert!(store
            .undo_log()
            .was_undone("y", &(UNDONE_KEPT as u64 + 9, "t".into())));
    }

    #[test]
    fn undoing_a_put_with_a_data_directory_brings_the_map_back_on_disk() {
        let dir = std::env::temp_dir().join(format!("arrowbridge-undo-{}", std::process::id()));
        let store = Store::open(Some(dir.clone())).unwrap();
        store.put("x", map("a", 10)).unwrap();
        store.put("x", map("b", 20)).unwrap();
        store.undo("x", &(20, "b".into())).unwrap();
        drop(store);
        let reopened = Store::open(Some(dir.clone())).unwrap();
        assert_eq!(order_held(&reopened), Some((10, "a".into())));
        // A restarted server does not know what its maps replaced: the undo of a put whose
        // map it holds keeps that map and says so, rather than remove the item.
        reopened.put("x", map("c", 30)).unwrap();
        drop(reopened);
        let reopened = Store::open(Some(dir.clone())).unwrap();
        let err = reopened.undo("x", &(30, "c".into())).unwrap_err();
        assert!(err.to_string().contains("is not kept"), "{err}");
        assert_eq!(order_held(&reopened), Some((30, "c".into())));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_shard_deleted_before_its_put_lands_is_refused_when_it_does() {
        let store = Store::open(None).unwrap();
        let batch = || Stored::new(empty_rows(3).schema(), vec![empty_rows(3)]);
        let shard = "x.shard-0-of-2.v1f";
        // The cleanup of a cancelled put deletes a shard that has not landed yet...
        assert!(!store.delete(shard).unwrap());
        // ...and the put, landing later, stores nothing.
        let late = store.put(shard, batch()).unwrap_err();
        assert!(matches!(late, FlightServerError::Superseded(_)), "{late}");
        assert!(late.to_string().contains("was deleted here"), "{late}");
        assert!(store.get(shard).is_none());
        // Once deleted, a shard that was stored does not come back either.
        store.put("x.shard-1-of-2.v1f", batch()).unwrap();
        assert!(store.delete("x.shard-1-of-2.v1f").unwrap());
        assert!(store.put("x.shard-1-of-2.v1f", batch()).is_err());
        // Names users write are not affected.
        assert!(!store.delete("y").unwrap());
        store.put("y", batch()).unwrap();
    }

    #[test]
    fn the_deletes_a_store_keeps_are_bounded_in_number() {
        // One per name deleted: a flood of deletes of names never stored costs bounded
        // memory (it grew without bound for ten minutes, scanning all of it per delete).
        let store = Store::open(None).unwrap();
        for i in 0..TOMBSTONES_KEPT + 100 {
            store
                .delete_map(&format!("n{i}"), &(10, "a".into()))
                .unwrap();
        }
        let tombstones = store.tombstones.lock().unwrap();
        assert_eq!(tombstones.len(), TOMBSTONES_KEPT);
        drop(tombstones);
        // The newest still refuse the maps of puts they overtook; the first were forgotten.
        let late = format!("n{}", TOMBSTONES_KEPT + 99);
        assert!(store.put(&late, map("b", 5)).is_err());
        store.put("n0", map("b", 5)).unwrap();
        // A delete ordered before the one kept does not lower it.
        store.delete_map(&late, &(1, "z".into())).unwrap();
        assert!(store.put(&late, map("c", 7)).is_err());
    }

    #[test]
    fn a_deleted_item_refuses_the_maps_of_puts_the_delete_overtook() {
        let store = Store::open(None).unwrap();
        store.put("x", map("a", 10)).unwrap();
        // A newer put's map stays; the delete is refused.
        store.put("x", map("c", 30)).unwrap();
        assert!(matches!(
            store.delete_map("x", &(20, "d".into())),
            Err(FlightServerError::Superseded(_))
        ));
        let removed = store.delete_map("x", &(40, "d".into())).unwrap();
        assert_eq!(removed.unwrap().unwrap().order, Some((30, "c".into())));
        // A put that began before the delete arrives late: refused, nothing comes back.
        let late = store.put("x", map("b", 35)).unwrap_err();
        assert!(matches!(late, FlightServerError::Superseded(_)), "{late}");
        assert!(store.get("x").is_none());
        // Nothing stored: the delete is still kept, for puts still under way.
        assert_eq!(store.delete_map("y", &(50, "e".into())).unwrap(), None);
        assert!(store.put("y", map("f", 45)).is_err());
        // A put after the delete replaces nothing and is stored.
        store.put("x", map("g", 50)).unwrap();
        assert_eq!(order_held(&store), Some((50, "g".into())));
    }
}
