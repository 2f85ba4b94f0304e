//! Shared memory between a server and the clients on its host: stored items handed over as
//! sealed memfds, passed over a Unix socket with `SCM_RIGHTS` (the design of Apache Arrow's
//! Plasma store).
//!
//! **The memory.** A segment is a memfd sealed against writes, shrinking and growing
//! (`F_SEAL_WRITE | F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL`) before it is handed over.
//! Whoever receives one checks the seals, so once it has validated the bytes nobody can
//! change them or truncate the file under its mapping (no `SIGBUS`). A segment holds an
//! item: its schema (an IPC schema message) at offset 0, then each column's values at a
//! 64-byte-aligned offset. The receiver maps it read-only: a get is O(1) whatever the size,
//! a put is one copy (the client's `pwrite` into the segment).
//!
//! **Who may map what.** The server listens on a second socket, `shm-<pid>-<n>.sock`, in
//! `$TMPDIR/arrowbridge-<uid>/` (mode 0700, owned by the server's user; the socket 0600).
//! Each side checks the other's user id (`SO_PEERCRED`): a server serves only clients of its
//! own user, and a client accepts memory only from a server of its own user. A server with a
//! token asks for it here too.
//!
//! **The protocol.** Each message is a 4-byte little-endian length, a JSON object, and at
//! most one file descriptor (`SCM_RIGHTS`); the messages are the serde types below, shared by
//! client and server. The server speaks first, a [`Greeting`] with its instance id (which the
//! client checks before it sends its token); then each [`Request`] — `{"op": "get", "name":
//! ...}`, answered with the item's segment, or `{"op": "put", "name": ..., "layout": ...}`
//! with one — gets a [`Reply`]: `{"ok": true, "rows": n}`, or `{"ok": false, "code": <gRPC
//! code>, "message": ...}`. The `shm` action's [`Offer`] says where the socket is.

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arrow_array::{Array, RecordBatch};
use arrow_buffer::Buffer;
use arrow_schema::{DataType, Schema, SchemaRef};
use arrowbridge::landing;
use arrowbridge::Error;

/// Bytes of one message's JSON, at most.
const MAX_HEADER: usize = 1 << 20;
/// Columns start at multiples of this many bytes.
const ALIGN: usize = 64;

/// A sealed memfd, mapped read-only.
#[derive(Debug)]
pub struct Segment {
    fd: OwnedFd,
    map: memmap2::Mmap,
}

/// Where an item lies in its segment.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Layout {
    /// Bytes of the IPC schema message at offset 0.
    pub schema_len: usize,
    /// Rows.
    pub rows: usize,
    /// `[offset, length]` of each column's values.
    pub columns: Vec<[usize; 2]>,
}

/// Bytes of a huge page (x86-64 and aarch64 with 4 KiB base pages).
const HUGE_PAGE: usize = 2 << 20;

/// When the kernel backs shared memory (memfds, tmpfs) with huge pages, as
/// `/sys/kernel/mm/transparent_hugepage/shmem_enabled` says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShmemHugePages {
    /// Never (`never`, `deny`, or no such file): every page is 4 KiB, and filling a segment
    /// costs several times a `memcpy`.
    Never,
    /// For mappings that ask (`advise`).
    OnRequest,
    /// Whenever the size allows (`always`, `within_size`, `force`).
    Always,
}

/// The kernel's setting, read once.
pub fn shmem_huge_pages() -> ShmemHugePages {
    static MODE: std::sync::OnceLock<ShmemHugePages> = std::sync::OnceLock::new();
    *MODE.get_or_init(|| {
        let setting = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/shmem_enabled")
            .unwrap_or_default();
        parse_shmem_enabled(&setting)
    })
}

/// The selected mode of a `shmem_enabled` file: the bracketed word, as in
/// `always within_size advise [never] deny force`.
fn parse_shmem_enabled(setting: &str) -> ShmemHugePages {
    let selected = setting
        .split_whitespace()
        .find_map(|word| word.strip_prefix('[')?.strip_suffix(']'));
    match selected {
        Some("advise") => ShmemHugePages::OnRequest,
        Some("always" | "within_size" | "force") => ShmemHugePages::Always,
        _ => ShmemHugePages::Never,
    }
}

/// The mapping that Arrow buffers over a segment keep alive.
struct Mapping(#[allow(dead_code)] Arc<Segment>);

fn io(what: &str, e: std::io::Error) -> Error {
    Error::Io {
        path: what.to_string(),
        source: e,
    }
}

fn bad(what: &str, message: impl Into<String>) -> Error {
    Error::invalid(what, message)
}

fn last_os_error(what: &str) -> Error {
    io(what, std::io::Error::last_os_error())
}

impl Segment {
    /// A new segment of `len` bytes holding each `(offset, bytes)` of `parts` (the rest
    /// reads as zeros), then sealed and mapped read-only.
    ///
    /// Filling it is the one copy of a put, and its cost is the kernel's allocation of the
    /// memfd's pages (see [`shmem_huge_pages`]). When shared memory gets huge pages only on
    /// request (`advise`), the parts are copied into a mapping that asks for them
    /// (`MADV_HUGEPAGE`): as fast as an `np.copy`. Otherwise they are written with `pwrite`:
    /// the kernel allocates the pages as it copies into them, without zeroing them first and
    /// without a page fault per page (twice as fast as filling a mapping of 4 KiB pages, and
    /// huge pages where the kernel gives them to every memfd).
    pub fn create(what: &str, len: usize, parts: &[(usize, &[u8])]) -> Result<Segment, Error> {
        let made = Self::create_as(what, len, parts, shmem_huge_pages(), &|| false)?;
        Ok(made.expect("never cancelled"))
    }

    /// [`Segment::create`] for the kernel setting `huge`.
    fn create_as(
        what: &str,
        len: usize,
        parts: &[(usize, &[u8])],
        huge: ShmemHugePages,
        cancelled: &dyn Fn() -> bool,
    ) -> Result<Option<Segment>, Error> {
        use std::os::unix::fs::FileExt;
        arrowbridge::memory::check_allocation(what, len as u64)?;
        let name = c"arrowbridge";
        // SAFETY: a valid C string and flags; the result is checked.
        let raw = unsafe {
            libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if raw < 0 {
            return Err(last_os_error(what));
        }
        // SAFETY: memfd_create returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let file = std::fs::File::from(fd);
        file.set_len(len as u64).map_err(|e| io(what, e))?;
        if huge == ShmemHugePages::OnRequest && len >= HUGE_PAGE {
            // SAFETY: the memfd is ours alone until it is sealed and handed over.
            let mut writable =
                unsafe { memmap2::MmapMut::map_mut(&file) }.map_err(|e| io(what, e))?;
            // Only a hint: without it the pages are small, and the copy slower.
            let _ = writable.advise(memmap2::Advice::HugePage);
            for (offset, bytes) in pieces(parts) {
                if cancelled() {
                    return Ok(None);
                }
                writable[offset..offset + bytes.len()].copy_from_slice(bytes);
            }
        } else {
            for (offset, bytes) in pieces(parts) {
                if cancelled() {
                    return Ok(None);
                }
                file.write_all_at(bytes, offset as u64)
                    .map_err(|e| io(what, e))?;
            }
        } // unmapped: F_SEAL_WRITE needs no writable mapping left
        let seals =
            libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
        // SAFETY: fcntl on a descriptor we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
            return Err(last_os_error(what));
        }
        Self::map(what, OwnedFd::from(file)).map(Some)
    }

    /// Adopts a segment received from the other side: it must be sealed against writes,
    /// shrinking and growing, and is mapped read-only.
    pub fn adopt(what: &str, fd: OwnedFd) -> Result<Segment, Error> {
        // SAFETY: fcntl on a descriptor we own.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        let needed = libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals < 0 || seals & needed != needed {
            return Err(bad(
                what,
                "the shared memory is not sealed against writes, shrinking and growing; refused",
            ));
        }
        Self::map(what, fd)
    }

    fn map(what: &str, fd: OwnedFd) -> Result<Segment, Error> {
        let file = std::fs::File::from(fd);
        // SAFETY: the memfd is sealed: its size and bytes cannot change under the mapping.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io(what, e))?;
        Ok(Segment {
            fd: OwnedFd::from(file),
            map,
        })
    }

    /// The segment's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// The values of each column of `batch` (fixed-width columns, as [`landing::row_bytes`]
/// says), as buffers over the batch's own memory.
fn column_values(batch: &RecordBatch) -> Vec<Buffer> {
    batch
        .columns()
        .iter()
        .map(|column| {
            let data = column.to_data();
            let bytes = column_bytes(column.as_ref());
            match column.data_type() {
                DataType::FixedSizeList(child_field, size) => {
                    let child = &data.child_data()[0];
                    let width = child_field.data_type().primitive_width().unwrap_or(1);
                    let start = (child.offset() + data.offset() * (*size as usize)) * width;
                    child.buffers()[0].slice_with_length(start, bytes)
                }
                other => {
                    let width = other.primitive_width().unwrap_or(1);
                    data.buffers()[0].slice_with_length(data.offset() * width, bytes)
                }
            }
        })
        .collect()
}

/// Bytes of a fixed-width column's values.
fn column_bytes(column: &dyn Array) -> usize {
    match column.data_type() {
        DataType::FixedSizeList(child, size) => {
            column.len() * (*size as usize) * child.data_type().primitive_width().unwrap_or(1)
        }
        other => column.len() * other.primitive_width().unwrap_or(1),
    }
}

/// A segment holding `batch` (fixed-width columns, as every arrowbridge tensor is): its
/// schema, then each column's values.
pub fn pack(what: &str, batch: &RecordBatch) -> Result<(Segment, Layout), Error> {
    let packed = pack_unless(what, batch, &|| false)?;
    Ok(packed.expect("never cancelled"))
}

/// The parts of a segment cut into pieces of at most [`PIECE`] bytes, at their offsets: a copy
/// checks between pieces whether it should go on.
fn pieces<'a>(parts: &'a [(usize, &'a [u8])]) -> impl Iterator<Item = (usize, &'a [u8])> + 'a {
    parts.iter().flat_map(|(offset, bytes)| {
        bytes
            .chunks(PIECE)
            .enumerate()
            .map(move |(i, piece)| (offset + i * PIECE, piece))
    })
}

/// How much of a segment is copied between two checks of whether to go on: a few
/// milliseconds of copying, whatever the page size.
const PIECE: usize = 8 << 20;

/// [`pack`], checking `cancelled` between pieces of the copy: `None` once it says so (what
/// was made is freed).
pub fn pack_unless(
    what: &str,
    batch: &RecordBatch,
    cancelled: &dyn Fn() -> bool,
) -> Result<Option<(Segment, Layout)>, Error> {
    if landing::row_bytes(batch.schema_ref()).is_none() {
        return Err(Error::UnsupportedType {
            what: what.to_string(),
            kind: "Arrow type",
            name: "a column that is not fixed-width values (shared memory carries tensors)".into(),
        });
    }
    let schema = arrow_ipc::writer::IpcDataGenerator::default()
        .schema_to_bytes_with_dictionary_tracker(
            batch.schema_ref(),
            &mut arrow_ipc::writer::DictionaryTracker::new(false),
            &arrow_ipc::writer::IpcWriteOptions::default(),
        )
        .ipc_message;
    let values = column_values(batch);
    let mut at = schema.len().next_multiple_of(ALIGN);
    let mut columns = Vec::with_capacity(values.len());
    for v in &values {
        columns.push([at, v.len()]);
        at = (at + v.len()).next_multiple_of(ALIGN);
    }
    let layout = Layout {
        schema_len: schema.len(),
        rows: batch.num_rows(),
        columns,
    };
    let parts: Vec<(usize, &[u8])> = std::iter::once((0, schema.as_slice()))
        .chain(
            values
                .iter()
                .zip(&layout.columns)
                .map(|(v, [offset, _])| (*offset, v.as_slice())),
        )
        .collect();
    let segment = Segment::create_as(what, at.max(1), &parts, shmem_huge_pages(), cancelled)?;
    Ok(segment.map(|segment| (segment, layout)))
}

/// The batch a segment holds, viewing its mapping, after checking that `layout` describes
/// a valid item inside it.
pub fn unpack(
    what: &str,
    segment: Arc<Segment>,
    layout: &Layout,
) -> Result<(SchemaRef, RecordBatch), Error> {
    let bytes = segment.bytes();
    let schema_bytes = bytes
        .get(..layout.schema_len)
        .ok_or_else(|| bad(what, "the schema lies outside the shared memory"))?;
    arrowbridge::ipc::check_message(what, schema_bytes, &[], None)?;
    let schema: Schema = arrowbridge::ipc::schema_of_message(schema_bytes).ok_or_else(|| {
        bad(
            what,
            "the shared memory does not begin with a schema message",
        )
    })?;
    let schema = Arc::new(schema);
    let layouts = landing::row_bytes(&schema)
        .ok_or_else(|| bad(what, "a column that is not fixed-width values"))?;
    if layouts.len() != layout.columns.len() {
        return Err(bad(
            what,
            format!(
                "{} columns in the schema, {} in the layout",
                layouts.len(),
                layout.columns.len()
            ),
        ));
    }
    let base = segment.bytes().as_ptr();
    let total = segment.bytes().len();
    let mut buffers = Vec::with_capacity(layouts.len());
    for ((field, row_bytes), [offset, len]) in schema
        .fields()
        .iter()
        .zip(layouts.iter().copied())
        .zip(&layout.columns)
    {
        let expected = layout.rows.checked_mul(row_bytes);
        let inside = offset.checked_add(*len).is_some_and(|end| end <= total);
        if expected != Some(*len) || !inside || offset % ALIGN != 0 {
            return Err(bad(
                what,
                format!(
                    "column {:?}: {len} bytes at offset {offset} do not hold {} rows of {row_bytes} bytes inside {total} bytes at a 64-byte boundary",
                    field.name(),
                    layout.rows
                ),
            ));
        }
        // SAFETY: the range lies inside the mapping, which the Arc keeps alive as long as
        // the buffer; the memfd is sealed, so the bytes cannot change.
        let buffer = unsafe {
            Buffer::from_custom_allocation(
                std::ptr::NonNull::new(base.add(*offset) as *mut u8).expect("inside a mapping"),
                *len,
                Arc::new(Mapping(segment.clone())),
            )
        };
        buffers.push(buffer);
    }
    let batch = landing::batch_over(schema.clone(), buffers, layout.rows)?;
    Ok((schema, batch))
}

/// The user id of the process at the other end of `stream`.
pub fn peer_uid(stream: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Whether the peer of the socket `socket` has hung up (closed its end, or its writing half).
pub fn hung_up(socket: RawFd) -> bool {
    let mut poll = libc::pollfd {
        fd: socket,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, for the duration of the call; a zero timeout never blocks.
    let ready = unsafe { libc::poll(&mut poll, 1, 0) };
    ready > 0 && poll.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// This process's effective user id.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// `header` as it travels: its length (4 bytes, little-endian), then its JSON.
fn frame(header: &serde_json::Value) -> Vec<u8> {
    let json = header.to_string();
    let mut message = Vec::with_capacity(4 + json.len());
    message.extend_from_slice(&(json.len() as u32).to_le_bytes());
    message.extend_from_slice(json.as_bytes());
    message
}

/// Sends the first byte of `message` with the descriptor `fd` (`SCM_RIGHTS`) on the socket
/// `socket`; `WouldBlock` on a non-blocking socket that cannot take it yet.
fn send_first(socket: RawFd, message: &mut [u8], fd: RawFd) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: message.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: zeroed msghdr, then filled with pointers that live until sendmsg returns.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer has room for one header carrying one descriptor.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
    }
    // SAFETY: msg points at live buffers.
    let sent = unsafe { libc::sendmsg(socket, &msg, libc::MSG_NOSIGNAL) };
    if sent != 1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Receives the first byte of a message and the descriptor that came with it, if any, from
/// the socket `socket`. Every descriptor received is adopted or closed; more than one is an
/// error. `WouldBlock` on a non-blocking socket with nothing to read.
fn receive_first(socket: RawFd) -> std::io::Result<(u8, Option<OwnedFd>)> {
    let mut first = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: first.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: zeroed msghdr, then filled with pointers that live until recvmsg returns.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers; MSG_CMSG_CLOEXEC marks a received descriptor.
    let got = unsafe { libc::recvmsg(socket, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if got < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fd = None;
    let mut extra = false;
    // SAFETY: the kernel filled the control buffer; the headers are walked as it laid them out,
    // and each descriptor in them is read once.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                // Every descriptor the header carries is now ours: each is adopted (the
                // first) or closed, however many a peer packed into it.
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let header = libc::CMSG_LEN(0) as usize;
                let count = ((*cmsg).cmsg_len as usize).saturating_sub(header)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    let owned = OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i)));
                    if fd.is_none() {
                        fd = Some(owned);
                    } else {
                        extra = true;
                        drop(owned);
                    }
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if got == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if extra || msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "more file descriptors than one were sent",
        ));
    }
    Ok((first[0], fd))
}

/// The length of a header whose first byte is `first` and next three `rest`, at most
/// [`MAX_HEADER`].
fn header_len(first: u8, rest: [u8; 3]) -> std::io::Result<usize> {
    let len = u32::from_le_bytes([first, rest[0], rest[1], rest[2]]) as usize;
    if len > MAX_HEADER {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("a header of {len} bytes, over the {MAX_HEADER} a header may have"),
        ));
    }
    Ok(len)
}

fn parse_header(json: &[u8]) -> std::io::Result<serde_json::Value> {
    serde_json::from_slice(json)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Sends `header` (JSON) and, if given, a file descriptor.
pub fn send(
    stream: &mut UnixStream,
    header: &serde_json::Value,
    fd: Option<RawFd>,
) -> std::io::Result<()> {
    let mut message = frame(header);
    let Some(fd) = fd else {
        return stream.write_all(&message);
    };
    // The descriptor rides with the first byte; the rest follows as plain bytes.
    send_first(stream.as_raw_fd(), &mut message, fd)?;
    stream.write_all(&message[1..])
}

/// Receives a header (JSON) and the file descriptor that came with it, if any.
pub fn receive(stream: &mut UnixStream) -> std::io::Result<(serde_json::Value, Option<OwnedFd>)> {
    let (first, fd) = receive_first(stream.as_raw_fd())?;
    let mut rest = [0u8; 3];
    stream.read_exact(&mut rest)?;
    let mut json = vec![0u8; header_len(first, rest)?];
    stream.read_exact(&mut json)?;
    Ok((parse_header(&json)?, fd))
}

/// [`send`] on an async socket: a slow peer holds a task, never a thread.
pub async fn send_async(
    stream: &mut tokio::net::UnixStream,
    header: &serde_json::Value,
    fd: Option<RawFd>,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut message = frame(header);
    let Some(fd) = fd else {
        return stream.write_all(&message).await;
    };
    loop {
        stream.writable().await?;
        let socket = stream.as_raw_fd();
        match stream.try_io(tokio::io::Interest::WRITABLE, || {
            send_first(socket, &mut message, fd)
        }) {
            Ok(()) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    stream.write_all(&message[1..]).await
}

/// [`receive`] on an async socket: a slow peer holds a task, never a thread.
pub async fn receive_async(
    stream: &mut tokio::net::UnixStream,
) -> std::io::Result<(serde_json::Value, Option<OwnedFd>)> {
    use tokio::io::AsyncReadExt;
    let (first, fd) = loop {
        stream.readable().await?;
        let socket = stream.as_raw_fd();
        match stream.try_io(tokio::io::Interest::READABLE, || receive_first(socket)) {
            Ok(got) => break got,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    };
    let mut rest = [0u8; 3];
    stream.read_exact(&mut rest).await?;
    let mut json = vec![0u8; header_len(first, rest)?];
    stream.read_exact(&mut json).await?;
    Ok((parse_header(&json)?, fd))
}

static SOCKETS: AtomicU64 = AtomicU64::new(0);

/// A new socket path in this user's private directory, `$TMPDIR/arrowbridge-<uid>/`, which
/// is created with mode 0700, or refused when it exists but is not this user's alone.
pub fn socket_path() -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let dir = std::env::temp_dir().join(format!("arrowbridge-{}", own_uid()));
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(&dir)?;
    if !meta.is_dir() || meta.uid() != own_uid() || meta.permissions().mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!("{} is not a directory of this user's alone", dir.display()),
        ));
    }
    Ok(dir.join(format!(
        "shm-{}-{}.sock",
        std::process::id(),
        SOCKETS.fetch_add(1, Ordering::Relaxed)
    )))
}

/// Binds a listening socket at `path`, readable and writable by this user only.
pub fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let listener = std::os::unix::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// How many socket paths a server tries before it goes without shared memory.
const BIND_TRIES: usize = 16;

/// Binds the listening socket of a new server's shared memory ([`socket_path`], [`bind`]):
/// a socket file left at that path by a process that died without removing it (killed;
/// its process id now ours) is removed first, when nothing listens there; a path where
/// something does listen (a process of the same id in another PID namespace sharing the
/// directory) is passed over for the next.
pub fn bind_new() -> std::io::Result<(std::os::unix::net::UnixListener, PathBuf)> {
    let mut last = None;
    for _ in 0..BIND_TRIES {
        let path = socket_path()?;
        match bind(&path) {
            Ok(listener) => return Ok((listener, path)),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                let stale = matches!(
                    std::os::unix::net::UnixStream::connect(&path),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
                );
                if stale {
                    std::fs::remove_file(&path)?;
                    return Ok((bind(&path)?, path));
                }
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::from(std::io::ErrorKind::AddrInUse)))
}

/// An item's segment and where its columns lie in it.
#[derive(Clone, Debug)]
pub struct Shared {
    /// The sealed memory.
    pub segment: Arc<Segment>,
    /// Where the item lies in it.
    pub layout: Layout,
}

impl Segment {
    /// Its size in bytes: what it costs the server's memory budget, however sparse it is.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether the segment has no bytes.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The descriptor, to send.
    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// An error reply: the gRPC code (as its number), the kind where the code is ambiguous, and
/// the message.
pub fn error_reply(status: &tonic::Status) -> Reply {
    let kind = status
        .metadata()
        .get(crate::error::KIND_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Reply {
        ok: false,
        code: Some(status.code() as i32),
        kind,
        message: Some(status.message().to_string()),
        ..Reply::default()
    }
}

/// The answer to the `shm` action: where the shared-memory socket is and which server
/// instance listens there.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    /// `arrowbridge+shm:///path/to/socket`.
    pub location: String,
    /// The server's instance id, which the socket's [`Greeting`] repeats.
    pub instance: String,
}

impl Offer {
    /// The scheme of [`Offer::location`].
    pub const SCHEME: &'static str = "arrowbridge+shm://";

    /// The socket's path.
    pub fn path(&self) -> Option<&str> {
        self.location.strip_prefix(Self::SCHEME)
    }
}

/// What the server sends first on every connection, before it reads a request: a client
/// checks that it is the server it asked for before it sends its token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Greeting {
    /// The server's instance id (as its `shm` action says).
    pub instance: String,
}

/// A request on the shared-memory socket: `{"op": "get" | "put", "name": ..., ...}`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// The item `name`, as a sealed segment (its descriptor comes with the reply).
    Get {
        /// The item.
        name: String,
        /// The server's token, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
    /// Stores the sealed segment sent with the request as item `name`.
    Put {
        /// The item.
        name: String,
        /// Where the item lies in the segment.
        layout: Layout,
        /// The server's token, if it has one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
    },
}

impl Request {
    /// The item the request names.
    pub fn name(&self) -> &str {
        match self {
            Request::Get { name, .. } | Request::Put { name, .. } => name,
        }
    }

    /// The token it carries.
    pub fn token(&self) -> Option<&str> {
        match self {
            Request::Get { token, .. } | Request::Put { token, .. } => token.as_deref(),
        }
    }

    /// The request carrying `given` as its token.
    pub fn with_token(mut self, given: Option<String>) -> Self {
        match &mut self {
            Request::Get { token, .. } | Request::Put { token, .. } => *token = given,
        }
        self
    }

    /// `"get"` or `"put"`.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Get { .. } => "get",
            Request::Put { .. } => "put",
        }
    }
}

/// The server's answer to a [`Request`]: `ok`, and the layout of a get, the rows of a put,
/// or the gRPC status of a failure.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Reply {
    /// Whether the request succeeded.
    pub ok: bool,
    /// The server's instance id.
    #[serde(default)]
    pub instance: String,
    /// A get's layout of the segment sent with the reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layout: Option<Layout>,
    /// A put's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<usize>,
    /// A failure's gRPC status code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// A failure's [`crate::KIND_KEY`], where the code alone is ambiguous.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// A failure's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// A random id for a server instance (128 bits from the kernel, hex).
pub fn instance_id() -> String {
    let mut bytes = [0u8; 16];
    // SAFETY: getrandom writes at most `bytes.len()` bytes into the buffer.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != bytes.len() as isize {
        // No entropy source: the process and the time still tell servers apart.
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        return format!("{:x}-{now:x}", std::process::id());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_left_by_a_killed_process_of_our_id_does_not_cost_the_shared_memory() {
        // Sockets left at the next paths this process would take: most by processes that
        // died (nothing listens), one live (a server of the same id in another namespace).
        let next = SOCKETS.load(Ordering::Relaxed);
        let dir = socket_path().unwrap().parent().unwrap().to_path_buf();
        let at = |k: u64| dir.join(format!("shm-{}-{k}.sock", std::process::id()));
        let live = std::os::unix::net::UnixListener::bind(at(next + 1)).unwrap();
        for k in (next..next + 64).filter(|k| *k != next + 1) {
            let _ = std::fs::remove_file(at(k));
            drop(std::os::unix::net::UnixListener::bind(at(k)).unwrap());
        }
        let (listener, path) = bind_new().unwrap();
        assert_ne!(path, at(next + 1));
        drop(std::os::unix::net::UnixStream::connect(&path).unwrap());
        // The live one was left alone.
        drop(std::os::unix::net::UnixStream::connect(at(next + 1)).unwrap());
        drop((listener, live));
        for k in next..next + 64 {
            let _ = std::fs::remove_file(at(k));
        }
    }

    /// Whichever way the kernel's setting makes `create` fill it (a mapping or `pwrite`), a
    /// segment holds its parts at their offsets, zeros between them, and arrives sealed.
    #[test]
    fn create_writes_parts_at_their_offsets_and_seals() {
        let modes = [ShmemHugePages::Never, ShmemHugePages::OnRequest];
        for (huge, len) in modes
            .into_iter()
            .flat_map(|m| [(m, 4096), (m, HUGE_PAGE + 4096)])
        {
            let head: Vec<u8> = (0..100u8).collect();
            let tail = vec![7u8; 3000];
            let at = len - tail.len();
            let segment =
                Segment::create_as("test", len, &[(0, &head), (at, &tail)], huge, &|| false)
                    .unwrap()
                    .unwrap();
            let bytes = segment.bytes();
            assert_eq!(bytes.len(), len);
            assert_eq!(&bytes[..100], head.as_slice());
            assert!(bytes[100..at].iter().all(|&b| b == 0));
            assert_eq!(&bytes[at..], tail.as_slice());
            // SAFETY: fcntl on a descriptor the segment owns.
            let seals = unsafe { libc::fcntl(segment.raw_fd(), libc::F_GET_SEALS) };
            let all =
                libc::F_SEAL_WRITE | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
            assert_eq!(seals & all, all);
        }
    }

    #[test]
    fn the_selected_huge_page_mode_is_the_bracketed_one() {
        let all = "always within_size advise never deny force";
        let select = |mode: &str| all.replace(mode, &format!("[{mode}]"));
        assert_eq!(parse_shmem_enabled(&select("never")), ShmemHugePages::Never);
        assert_eq!(parse_shmem_enabled(&select("deny")), ShmemHugePages::Never);
        assert_eq!(
            parse_shmem_enabled(&select("advise")),
            ShmemHugePages::OnRequest
        );
        assert_eq!(
            parse_shmem_enabled(&select("within_size")),
            ShmemHugePages::Always
        );
        assert_eq!(
            parse_shmem_enabled(&select("always")),
            ShmemHugePages::Always
        );
        // No such file (not Linux, or an old kernel): small pages.
        assert_eq!(parse_shmem_enabled(""), ShmemHugePages::Never);
    }
}
