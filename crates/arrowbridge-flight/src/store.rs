//! Named record batches held by the server, optionally persisted as IPC files.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use arrow_array::{RecordBatch, RecordBatchOptions};
use arrow_schema::SchemaRef;
use arrowbridge::ipc::{self, IpcFormat, WriteOptions};
use arrowbridge::landing::{unannounced, ROWS_KEY};
use arrowbridge::{ArrowTensor, DType};

use crate::error::{FlightServerError, Result};
use crate::shards::ShardMap;
use crate::shm::{self, Shared};

/// One stored item: the batches a client put under a name, held once. A put from an
/// arrowbridge client lands as one batch of contiguous columns; other writers' batches are
/// kept as they arrived.
#[derive(Debug)]
pub struct Stored {
    /// The schema the client put (without the row count its stream announced).
    pub schema: SchemaRef,
    /// The batches.
    pub batches: Vec<RecordBatch>,
    /// The sealed shared memory the batches view, when they live in one.
    pub shared: Option<Shared>,
    /// Where the rows are, when the item is sharded over other servers (this is its map:
    /// it has no rows of its own).
    pub shards: Option<ShardMap>,
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
            schema,
            batches,
            shared: None,
            shards,
        }
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

    /// Total rows (of all shards, for a sharded item).
    pub fn rows(&self) -> usize {
        match &self.shards {
            Some(map) => map.rows,
            None => self.batches.iter().map(RecordBatch::num_rows).sum(),
        }
    }

    /// Total bytes of the Arrow buffers (of all shards, for a sharded item).
    pub fn bytes(&self) -> usize {
        match &self.shards {
            Some(map) => map.bytes,
            None => self
                .batches
                .iter()
                .map(RecordBatch::get_array_memory_size)
                .sum(),
        }
    }
}

/// The server's arrays by name. With a data directory, every put is written to
/// `<dir>/<name>.arrow` atomically (temporary file, fsync, rename) before it is acknowledged,
/// and the directory's files are served again after a restart.
#[derive(Debug, Default)]
pub struct Store {
    items: RwLock<BTreeMap<String, Arc<Stored>>>,
    data_dir: Option<PathBuf>,
    /// One lock per name being written, so that a put and a delete of the same name keep
    /// file and memory in step (other names go on in parallel).
    writing: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

/// Whether `name` can name a stored item (and its file).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(FlightServerError::BadRequest(format!(
            "name {name:?}: use 1-200 letters, digits, '_', '-' or '.', not starting with '.'"
        )))
    }
}

impl Store {
    /// An in-memory store, or one backed by `data_dir` (created if missing; its `.arrow`
    /// files are loaded, memory-mapped).
    pub fn open(data_dir: Option<PathBuf>) -> Result<Self> {
        let store = Store {
            items: RwLock::default(),
            data_dir,
            writing: Mutex::default(),
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
                let data = ipc::read_ipc(&path, true)?;
                let stored = Stored::new(data.schema().clone(), data.batches()?);
                store
                    .write_items()
                    .insert(name.to_string(), Arc::new(stored));
            }
        }
        Ok(store)
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

    /// Stores `stored` under `name`, durably first when the store has a data directory; the
    /// item it replaced, for the caller to drop once it has answered (freeing a large item
    /// takes time the client need not wait for).
    pub fn put(&self, name: &str, stored: Stored) -> Result<Option<Arc<Stored>>> {
        check_name(name)?;
        self.writing(name, || {
            if let Some(dir) = &self.data_dir {
                let path = self.file(dir, name);
                let options = WriteOptions {
                    format: IpcFormat::File,
                    compression: None,
                };
                ipc::write_atomically(&path, |w| {
                    ipc::write_batches(
                        w,
                        &stored.schema,
                        stored.batches.iter().cloned().map(Ok),
                        &options,
                    )
                })?;
            }
            let replaced = self
                .write_items()
                .insert(name.to_string(), Arc::new(stored));
            Ok(replaced)
        })
    }

    /// The item called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Stored>> {
        self.read_items().get(name).cloned()
    }

    /// Removes `name`; whether it existed. When the file cannot be removed the item stays
    /// (in memory and on disk), so that a failed delete changes nothing.
    pub fn delete(&self, name: &str) -> Result<bool> {
        check_name(name)?;
        self.writing(name, || {
            let mut removed_file = false;
            if let Some(dir) = &self.data_dir {
                let path = self.file(dir, name);
                match std::fs::remove_file(&path) {
                    Ok(()) => removed_file = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(FlightServerError::io(&path, e)),
                }
            }
            let existed = self.write_items().remove(name).is_some();
            Ok(existed || removed_file)
        })
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
        let batch = match item.batches.as_slice() {
            [one] => one.clone(),
            many => arrow_select::concat::concat_batches(&item.schema, many)
                .map_err(arrowbridge::Error::from)?,
        };
        let (segment, layout) = shm::pack(&what, &batch)?;
        let segment = Arc::new(segment);
        let (_, batch) = shm::unpack(&what, segment.clone(), &layout)?;
        let shared = Shared { segment, layout };
        let stored = Stored::in_shared_memory(item.schema.clone(), batch, shared.clone());
        self.writing(name, || {
            let mut items = self.write_items();
            // Unless a put replaced the item meanwhile.
            if items
                .get(name)
                .is_some_and(|current| Arc::ptr_eq(current, &item))
            {
                items.insert(name.to_string(), Arc::new(stored));
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
