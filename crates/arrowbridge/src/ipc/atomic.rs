//! Writing a file atomically: a temporary file beside it, flushed, renamed into place.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::error::{Error, Result};

use super::*;

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// The file a write to `path` replaces: `path` itself, or, when `path` is a symbolic link,
/// the file the chain of links ends at (which need not exist yet), so that the link stays a
/// link, as editors and atomic-write libraries do it.
fn write_target(path: &Path) -> Result<PathBuf> {
    let mut target = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&target) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&target).map_err(io_error(path))?;
                target = match target.parent() {
                    Some(parent) if link.is_relative() => parent.join(link),
                    _ => link,
                };
            }
            _ => return Ok(target),
        }
    }
    Err(bad_file(path, "too many levels of symbolic links"))
}

/// A temporary name beside `name` that stays within the 255-byte limit of file names
/// whatever the length of `name`.
fn temp_name(name: &str) -> String {
    let mut stem = &name[..name.len().min(100)];
    while !name.is_char_boundary(stem.len()) {
        stem = &stem[..stem.len() - 1];
    }
    format!(
        ".{stem}.tmp-{}-{}",
        std::process::id(),
        TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Creates the temporary file that will replace `existing` (if any), with its permission bits
/// (and, where the process may, its owner) before any data goes in.
fn create_temp(temp: &Path, existing: Option<&std::fs::Metadata>, path: &Path) -> Result<File> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(temp)
        .map_err(io_error(path))?;
    #[cfg(unix)]
    if let Some(meta) = existing {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        // Set explicitly: the umask applied at creation may have removed bits the file had.
        file.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io_error(path))?;
        // Only a privileged process may give a file away; others keep the new file theirs.
        let _ = std::os::unix::fs::fchown(&file, Some(meta.uid()), Some(meta.gid()));
    }
    #[cfg(not(unix))]
    let _ = existing;
    Ok(file)
}

/// Files at least this large are closed on another thread once replaced (see [`close_later`]).
const CLOSE_LATER_BYTES: u64 = 1 << 20;

/// The file a write is about to replace, held open across the rename when it is large.
fn open_replaced(target: &Path, existing: Option<&std::fs::Metadata>) -> Option<File> {
    let meta = existing?;
    (cfg!(unix) && meta.is_file() && meta.len() >= CLOSE_LATER_BYTES)
        .then(|| File::open(target).ok())
        .flatten()
}

/// Closes a replaced file on a thread of its own. Its last close releases its pages, which
/// on tmpfs (its memory) takes about a tenth of the time writing it did: the writer need not
/// wait for that, as it need not wait for memory a program frees. At most two replaced
/// files are in flight: when the thread is still busy with one and another waits, the file
/// is closed here (a writer faster than the closing thread is held back, not its memory).
fn close_later(file: File) {
    use std::sync::mpsc::{sync_channel, SyncSender};
    use std::sync::{Mutex, OnceLock};
    static CLOSER: OnceLock<Option<Mutex<SyncSender<File>>>> = OnceLock::new();
    let closer = CLOSER.get_or_init(|| {
        let (send, receive) = sync_channel::<File>(1);
        std::thread::Builder::new()
            .name("arrowbridge-close".into())
            .spawn(move || receive.into_iter().for_each(drop))
            .ok()
            .map(|_| Mutex::new(send))
    });
    let Some(closer) = closer else { return };
    let send = closer
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // A full queue or a gone thread hands the file back, and it closes here.
    let _ = send.try_send(file);
}

/// A file being written atomically: the data goes to a temporary file in the same
/// directory, which [`commit`](Self::commit) flushes to disk and renames into place, so a
/// crash leaves the previous file intact. Dropped without a commit, the temporary file is
/// removed.
///
/// The new file keeps the permission bits (and, for a privileged process, the owner) of the
/// file it replaces. When `path` is a symbolic link, the file it points to is replaced and
/// the link stays.
///
/// ```
/// use arrowbridge::ipc::AtomicFile;
///
/// let path = std::env::temp_dir().join(format!("arrowbridge-atomic-{}.txt", std::process::id()));
/// let atomic = AtomicFile::create(&path)?;
/// std::fs::write(atomic.temp_path(), b"all or nothing").unwrap(); // any writer, by name
/// assert!(!path.exists());
/// atomic.commit()?;
/// assert_eq!(std::fs::read(&path).unwrap(), b"all or nothing");
/// # std::fs::remove_file(&path).unwrap();
/// # Ok::<(), arrowbridge::Error>(())
/// ```
#[derive(Debug)]
pub struct AtomicFile {
    /// The path asked for, which errors name.
    path: PathBuf,
    /// The file replaced: `path`, or the end of its chain of symbolic links.
    target: PathBuf,
    dir: PathBuf,
    temp: PathBuf,
    existing: Option<std::fs::Metadata>,
    /// The temporary file, open for writing; `None` once committed.
    file: Option<File>,
}

impl AtomicFile {
    /// Creates the temporary file that will replace `path`.
    pub fn create(path: &Path) -> Result<AtomicFile> {
        let target = write_target(path)?;
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target
            .file_name()
            .ok_or_else(|| bad_file(path, "not a file name"))?
            .to_string_lossy()
            .into_owned();
        let existing = std::fs::metadata(&target).ok();
        if existing.as_ref().is_some_and(std::fs::Metadata::is_dir) {
            return Err(bad_file(path, "is a directory"));
        }
        let temp = dir.join(temp_name(&name));
        let file = create_temp(&temp, existing.as_ref(), path)?;
        Ok(AtomicFile {
            path: path.to_path_buf(),
            target,
            dir,
            temp,
            existing,
            file: Some(file),
        })
    }

    /// The temporary file, for writers that open a file by name.
    pub fn temp_path(&self) -> &Path {
        &self.temp
    }

    /// Writes record batches to the temporary file in the IPC format, as
    /// [`write_batches`](super::write_batches) does, and flushes them to it; errors name the
    /// path. The batches may come as they are made (an iterator over a channel): one is
    /// held at a time.
    pub fn write_batches(
        &self,
        schema: &arrow_schema::Schema,
        batches: impl IntoIterator<Item = Result<arrow_array::RecordBatch>>,
        options: &WriteOptions,
    ) -> Result<()> {
        self.write_with(|w| write_batches(w, schema, batches, options))
    }

    /// Writes the temporary file with `write`, through a buffer flushed at the end.
    fn write_with(&self, write: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
        let path = &self.path;
        let file = self.file().try_clone().map_err(io_error(path))?;
        let mut writer = BufWriter::with_capacity(1 << 20, file);
        write(&mut writer).map_err(|e| match e {
            // The Arrow writer reports a failed write without the file's name.
            Error::Arrow(arrow_schema::ArrowError::IoError(_, source)) => io_error(path)(source),
            other => other,
        })?;
        writer
            .into_inner()
            .map_err(|e| io_error(path)(e.into_error()))?;
        Ok(())
    }

    /// The path the file will have once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file, open for writing.
    fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("an AtomicFile holds its file until it is committed")
    }

    /// Flushes the temporary file to disk and renames it to the path given to
    /// [`create`](Self::create) (errors name that path).
    pub fn commit(mut self) -> Result<()> {
        let path = self.path.clone();
        self.file().sync_all().map_err(io_error(&path))?;
        let replaced = open_replaced(&self.target, self.existing.as_ref());
        std::fs::rename(&self.temp, &self.target).map_err(io_error(&path))?;
        self.file = None; // renamed: nothing for `drop` to remove
        if let Some(replaced) = replaced {
            close_later(replaced);
        }
        // Make the rename itself durable.
        if let Ok(d) = File::open(&self.dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}

/// Writes `path` atomically with `write` (see [`AtomicFile`]).
pub fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> Result<()>,
) -> Result<()> {
    let atomic = AtomicFile::create(path)?;
    atomic.write_with(write)?;
    atomic.commit()
}
