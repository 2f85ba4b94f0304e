//! The bodies of arrowbridge's fuzz targets: each takes arbitrary bytes, feeds them to one
//! of arrowbridge's input paths, and must return without a panic, an abort or a memory error
//! whatever the bytes are. Errors are the expected outcome of most inputs and are ignored.
//!
//! `fuzz/` wraps each in a cargo-fuzz (libFuzzer) target built with AddressSanitizer; the
//! test `tests/replay.rs` runs every committed corpus file and crash regression through them
//! on stable Rust, so `cargo test` keeps every past finding fixed.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use arrow_array::ffi::{FFI_ArrowArray, FFI_ArrowSchema};
use arrow_array::{make_array, Array, ArrayRef};
use arrow_buffer::Buffer;
use arrow_flight::{FlightData, FlightDescriptor};
use arrow_schema::{DataType, Field};
use arrowbridge::{ArrowTensor, Params, Registry};
use arrowbridge_flight::{Service, Store};

/// A fuzz target: arbitrary bytes in, nothing out (but no panic, abort or memory error).
pub type Target = fn(&[u8]);

/// The fuzz targets by name, as `fuzz/fuzz_targets/<name>.rs` and `fuzz/corpus/<name>/`
/// know them.
pub const TARGETS: &[(&str, Target)] = &[
    ("ipc_decode", ipc_decode),
    ("c_data_import", c_data_import),
    ("tensor_metadata", tensor_metadata),
    ("flight_service", flight_service),
    ("kernel_params", kernel_params),
    ("flight_get_response", flight_get_response),
    ("flight_ticket", flight_ticket),
    ("shm_request", shm_request),
    ("ragged_import", ragged_import),
];

/// An IPC file or stream, compressed or plain: decoded, described and read as tensors.
pub fn ipc_decode(data: &[u8]) {
    let Ok(ipc) = arrowbridge::ipc::decode(Path::new("fuzz"), Buffer::from(data.to_vec()), None)
    else {
        return;
    };
    let _ = ipc.describe();
    for index in 0..ipc.num_batches() {
        if let Ok(columns) = ipc.batch_tensors(index) {
            touch(columns.iter().map(|(_, t)| t));
        }
    }
    if let Ok(columns) = ipc.tensors() {
        touch(columns.iter().map(|(_, t)| t));
    }
    // Ragged columns too (arrow.variable_shape_tensor), every row viewed.
    if let Ok(columns) = ipc.columns() {
        for (_, column) in &columns {
            match column {
                arrowbridge::ipc::Column::Tensor(t) => touch(std::iter::once(t)),
                arrowbridge::ipc::Column::Ragged(parts) => parts.iter().for_each(touch_rows),
            }
        }
    }
}

/// Reads every value of every row of a ragged tensor (see [`touch`]).
fn touch_rows(ragged: &arrowbridge::RaggedTensor) {
    for i in 0..ragged.len() {
        if let Ok(row) = ragged.row_tensor(i) {
            touch(std::iter::once(&row));
        }
    }
    let _ = ragged.field("t");
    std::hint::black_box(ragged.data());
}

/// `arrow.variable_shape_tensor` (or arrowbridge's complex one) whose metadata JSON, rows'
/// data lengths and shapes come from the bytes, over honest storage exported through the C
/// Data Interface with its counts then rewritten (as [`c_data_import`] does), imported, read
/// as a ragged tensor and every row viewed.
pub fn ragged_import(data: &[u8]) {
    use arrow_array::{FixedSizeListArray, Int32Array, ListArray, StructArray};
    let mut bytes = Bytes(data);
    let ndim = i32::from(bytes.u8() % 4);
    let rows = usize::from(bytes.u8() % 6);
    let value = match bytes.u8() % 5 {
        0 => DataType::Float32,
        1 => DataType::Int8,
        2 => DataType::Boolean,
        3 => DataType::UInt16,
        _ => DataType::Float64,
    };
    let complex =
        matches!(value, DataType::Float32 | DataType::Float64) && bytes.u8().is_multiple_of(3);
    let lengths: Vec<usize> = (0..rows).map(|_| usize::from(bytes.u8() % 16)).collect();
    let shapes: Vec<i32> = (0..rows * ndim as usize)
        .map(|_| i32::from(bytes.u8() as i8))
        .collect();
    let len = usize::from(bytes.u8());
    let json = String::from_utf8_lossy(bytes.take(len)).into_owned();
    let total: usize = lengths.iter().sum();
    let values = honest_array(&value, total);
    let item = Arc::new(Field::new("item", value, true));
    let list = ListArray::new(
        item,
        arrow_buffer::OffsetBuffer::from_lengths(lengths),
        values,
        None,
    );
    // The length given: a list of size 0 (ndim 0) cannot infer it from its values.
    let Ok(shape) = FixedSizeListArray::try_new_with_length(
        Arc::new(Field::new("item", DataType::Int32, true)),
        ndim,
        Arc::new(Int32Array::from(shapes)),
        None,
        rows,
    ) else {
        return;
    };
    let storage = StructArray::from(vec![
        (
            Arc::new(Field::new("data", list.data_type().clone(), true)),
            Arc::new(list) as ArrayRef,
        ),
        (
            Arc::new(Field::new("shape", shape.data_type().clone(), true)),
            Arc::new(shape) as ArrayRef,
        ),
    ]);
    let name = if complex {
        arrowbridge::COMPLEX_RAGGED_EXTENSION
    } else {
        arrowbridge::RAGGED_EXTENSION
    };
    let field =
        Field::new("r", storage.data_type().clone(), true).with_metadata(extension(name, json));
    let Ok(schema) = FFI_ArrowSchema::try_from(&field) else {
        return;
    };
    let mut exported = FFI_ArrowArray::new(&storage.to_data());
    let raw = std::ptr::addr_of_mut!(exported).cast::<RawArray>();
    // SAFETY: as in `c_data_import`: `FFI_ArrowArray` has the layout of `RawArray`, and the
    // rewrites keep every pointer valid or null.
    unsafe { lie(&mut *raw, &mut bytes, rows, 0) };
    // SAFETY: `exported` is a live export described by `schema` up to the rewrites above.
    let imported = unsafe { arrowbridge::ffi::import_array(&mut exported, &schema, &field, true) };
    if let Ok(data) = imported {
        if let Ok(ragged) = arrowbridge::RaggedTensor::from_arrow(&field, &data, true) {
            touch_rows(&ragged);
            let _ = ragged.to_kernel_args();
            let _ = Registry::with_builtins().call(
                "pad",
                &ragged
                    .to_kernel_args()
                    .map(|a| a.to_vec())
                    .unwrap_or_default(),
                Params::default(),
            );
        }
    }
}

/// Reads every value of each tensor, so that a view over memory it does not own is caught by
/// the sanitizer.
fn touch<'a>(tensors: impl Iterator<Item = &'a ArrowTensor>) {
    for tensor in tensors {
        let bytes = tensor.values().as_slice();
        let sum = bytes.iter().fold(0u8, |acc, b| acc.wrapping_add(*b));
        std::hint::black_box(sum);
        let _ = tensor.field("t");
        std::hint::black_box(tensor.dyn_view().dtype());
    }
}

/// A little reader of fuzz bytes.
struct Bytes<'a>(&'a [u8]);

impl Bytes<'_> {
    fn u8(&mut self) -> u8 {
        match self.0.split_first() {
            Some((&b, rest)) => {
                self.0 = rest;
                b
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }

    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
}

/// The C Data Interface struct of an array, as the specification lays it out: arrow-rs keeps
/// the fields of `FFI_ArrowArray` private, and a hostile producer sets them at will.
#[repr(C)]
struct RawArray {
    length: i64,
    null_count: i64,
    offset: i64,
    n_buffers: i64,
    n_children: i64,
    buffers: *mut *const std::ffi::c_void,
    children: *mut *mut RawArray,
    dictionary: *mut RawArray,
    release: Option<unsafe extern "C" fn(*mut RawArray)>,
    private_data: *mut std::ffi::c_void,
}

/// The types a hostile producer may claim, with the fields arrowbridge reads.
fn claimed_field(bytes: &mut Bytes<'_>) -> Field {
    let item = |t: DataType| Arc::new(Field::new("item", t, true));
    let size = i32::from(bytes.u8() % 9);
    let data_type = match bytes.u8() % 12 {
        0 => DataType::Int8,
        1 => DataType::UInt16,
        2 => DataType::Int32,
        3 => DataType::Int64,
        4 => DataType::Float16,
        5 => DataType::Float32,
        6 => DataType::Float64,
        7 => DataType::Boolean,
        8 => DataType::Utf8,
        9 => DataType::FixedSizeList(item(DataType::Float32), size),
        10 => DataType::FixedSizeList(item(DataType::Float64), size),
        _ => DataType::Struct(vec![Field::new("x", DataType::Int64, true)].into()),
    };
    let mut field = Field::new("f", data_type.clone(), true);
    if matches!(data_type, DataType::FixedSizeList(..)) && bytes.u8().is_multiple_of(2) {
        let name = if bytes.u8().is_multiple_of(4) {
            arrowbridge::COMPLEX_EXTENSION
        } else {
            arrowbridge::TENSOR_EXTENSION
        };
        let len = usize::from(bytes.u8());
        let json = String::from_utf8_lossy(bytes.take(len)).into_owned();
        field = field.with_metadata(extension(name, json));
    }
    field
}

/// Field metadata naming extension type `name` with parameters `json`.
fn extension(name: &str, json: String) -> std::collections::HashMap<String, String> {
    std::collections::HashMap::from([
        (
            arrowbridge::EXTENSION_NAME_KEY.to_string(),
            name.to_string(),
        ),
        (arrowbridge::EXTENSION_METADATA_KEY.to_string(), json),
    ])
}

/// An honest array of `data_type` with `len` rows, whose buffers the lies below stay within.
fn honest_array(data_type: &DataType, len: usize) -> ArrayRef {
    make_array(without_nulls(
        arrow_array::new_null_array(data_type, len).to_data(),
    ))
}

/// `data` with its validity buffers (and its children's) removed: values, not nulls, so that
/// the whole import path runs instead of stopping at "has null values".
fn without_nulls(data: arrow_data::ArrayData) -> arrow_data::ArrayData {
    let children: Vec<_> = data
        .child_data()
        .iter()
        .cloned()
        .map(without_nulls)
        .collect();
    let builder = data
        .into_builder()
        .nulls(None)
        .null_count(0)
        .child_data(children);
    // SAFETY: a null array's buffers are zeroed and sized for its rows, and zeroed values are
    // valid for every type `claimed_field` makes (offsets of zero included).
    unsafe { builder.build_unchecked() }
}

/// Hostile `ArrowSchema`/`ArrowArray` structs: an honest export of a claimed type whose
/// counts and pointers are then rewritten from the fuzz bytes, imported through
/// [`arrowbridge::ffi::import_array`] (the path of PyCapsules, C streams and plugins) and
/// read as a tensor. Lengths and offsets only shrink, so every buffer the interface cannot
/// size still covers what it claims: the interface carries no sizes, so a producer that
/// grows them cannot be caught by any consumer.
pub fn c_data_import(data: &[u8]) {
    let mut bytes = Bytes(data);
    let field = claimed_field(&mut bytes);
    let rows = usize::from(bytes.u8());
    let array = honest_array(field.data_type(), rows);
    let Ok(schema) = FFI_ArrowSchema::try_from(&field) else {
        return;
    };
    let mut exported = FFI_ArrowArray::new(&array.to_data());
    let raw = std::ptr::addr_of_mut!(exported).cast::<RawArray>();
    // SAFETY: `FFI_ArrowArray` is `#[repr(C)]` with the layout of `RawArray` (the C Data
    // Interface's struct); the rewrites keep every pointer either valid or null.
    unsafe { lie(&mut *raw, &mut bytes, rows, 0) };
    // SAFETY: `exported` is a live export described by `schema` up to the rewrites above,
    // which the import must refuse or survive.
    let imported = unsafe { arrowbridge::ffi::import_array(&mut exported, &schema, &field, true) };
    if let Ok(data) = imported {
        if let Ok(tensor) = ArrowTensor::from_arrow_unpacking(&field, data) {
            touch(std::iter::once(&tensor));
        }
    }
}

/// Rewrites the counts of `array` (and of its first child) from `bytes`.
///
/// # Safety
/// `array` must be an unreleased export of arrow-rs with `rows` rows.
unsafe fn lie(array: &mut RawArray, bytes: &mut Bytes<'_>, rows: usize, depth: u8) {
    let rows = rows as i64;
    // What arrow-rs exported: the pointer arrays hold exactly these many entries.
    let (buffers, children) = (array.n_buffers, array.n_children);
    let choice = bytes.u8();
    if choice & 1 != 0 {
        array.length = i64::from(bytes.u8()).min(rows);
    }
    if choice & 2 != 0 {
        array.offset = i64::from(bytes.u8()).min(rows - array.length.min(rows));
    }
    if choice & 4 != 0 {
        array.null_count = i64::from(bytes.u8() as i8);
    }
    if choice & 8 != 0 {
        array.n_buffers = i64::from(bytes.u8() % 5);
    }
    if choice & 16 != 0 {
        array.n_children = i64::from(bytes.u8() % 3);
    }
    if choice & 32 != 0 && !array.buffers.is_null() {
        // A null buffer pointer is something a consumer can see and must not dereference.
        let index = i64::from(bytes.u8() % 3);
        if index < buffers {
            // SAFETY: `index` is below the number of pointers arrow-rs exported.
            unsafe { *array.buffers.add(index as usize) = std::ptr::null() };
        }
    }
    if choice & 64 != 0 && depth == 0 && !array.children.is_null() && children > 0 {
        // SAFETY: the first child pointer exists when arrow-rs exported any child.
        let child = unsafe { &mut **array.children };
        let child_rows = usize::try_from(child.length).unwrap_or(0);
        // SAFETY: `child` is an unreleased arrow-rs export of `child_rows` rows.
        unsafe { lie(child, bytes, child_rows, depth + 1) };
    }
}

/// Tensor extension metadata (shape, permutation, dim_names; complex or not) over
/// `fixed_size_list` storage of a size from the bytes, read as a tensor and viewed.
pub fn tensor_metadata(data: &[u8]) {
    let mut bytes = Bytes(data);
    let size = i32::from(bytes.u8() % 17);
    let rows = usize::from(bytes.u8() % 5);
    let complex = bytes.u8().is_multiple_of(3);
    let json = String::from_utf8_lossy(bytes.0).into_owned();
    let _ = arrowbridge::TensorMetadata::parse(&json).map(|m| m.logical_shape());
    let value = if complex {
        DataType::Float64
    } else {
        DataType::Float32
    };
    let data_type = DataType::FixedSizeList(Arc::new(Field::new("item", value, true)), size);
    let storage = honest_array(&data_type, rows);
    let name = if complex {
        arrowbridge::COMPLEX_EXTENSION
    } else {
        arrowbridge::TENSOR_EXTENSION
    };
    let field = Field::new("t", data_type, true).with_metadata(extension(name, json));
    if let Ok(tensor) = ArrowTensor::from_arrow(&field, storage.to_data()) {
        touch(std::iter::once(&tensor));
        let _ = tensor.tensor_metadata();
        let _ = tensor.byte_strides();
        if let Ok(element) = tensor.into_element() {
            touch(std::iter::once(&element));
        }
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    })
}

fn service() -> &'static (Arc<Store>, Arc<Service>) {
    static SERVICE: OnceLock<(Arc<Store>, Arc<Service>)> = OnceLock::new();
    SERVICE.get_or_init(|| {
        let store = Arc::new(Store::open(None).expect("an in-memory store"));
        let x = ArrowTensor::from_array(ndarray::ArrayD::from_elem(vec![4, 3], 1.5f64));
        // Two versions of "x": tickets may name the one replaced (held for a grace period).
        for _ in 0..2 {
            let batch = arrowbridge::ipc::record_batch(&[("x", &x)]).expect("a batch");
            store
                .put(
                    "x",
                    arrowbridge_flight::Stored::new(batch.schema(), vec![batch]),
                )
                .expect("stored");
        }
        let service = Service::new(store.clone(), Arc::new(Registry::with_builtins()), None)
            .with_shm(None, "fuzz");
        (store, Arc::new(service))
    })
}

/// The Flight service in-process: a DoPut or a DoExchange whose messages (descriptor,
/// command, IPC headers and bodies) come from the bytes (a put's stored item is then served
/// back by DoGet). Layout: one byte for the call (even: a put; 2 mod 4: of a ragged column), the
/// descriptor's path or command (length-prefixed), then messages as
/// `[u32 header length][header][u32 body length][body]`.
pub fn flight_service(data: &[u8]) {
    let mut bytes = Bytes(data);
    let mode = bytes.u8();
    let put = mode.is_multiple_of(2);
    // Puts of a call byte 2 mod 4 start with the schema of a ragged column
    // (arrow.variable_shape_tensor of float32, rank 2): the fuzzer's bytes are its batches.
    let ragged = mode % 4 == 2;
    let len = usize::from(bytes.u16() % 4096);
    let tag = bytes.take(len).to_vec();
    let descriptor = if put {
        FlightDescriptor::new_path(vec![String::from_utf8_lossy(&tag).into_owned()])
    } else {
        FlightDescriptor::new_cmd(tag)
    };
    let mut messages = Vec::new();
    while !bytes.0.is_empty() && messages.len() < 64 {
        let len = bytes.u32() as usize;
        let header = bytes.take(len).to_vec();
        let len = bytes.u32() as usize;
        let body = bytes.take(len).to_vec();
        messages.push(FlightData {
            flight_descriptor: None,
            data_header: header.into(),
            app_metadata: bytes::Bytes::new(),
            data_body: body.into(),
        });
    }
    if ragged {
        messages.insert(0, ragged_schema_message());
    }
    match messages.first_mut() {
        Some(first) => first.flight_descriptor = Some(descriptor),
        None => messages.push(FlightData::new().with_descriptor(descriptor)),
    }
    let stream = futures::stream::iter(messages.into_iter().map(Ok::<_, tonic::Status>));
    let (store, service) = service();
    runtime().block_on(async {
        if put {
            if service.put_messages(stream).await.is_ok() {
                // What was stored is served back (its messages framed as views of it), then
                // the store is kept to the one item every exchange may name.
                for (name, _) in store.list() {
                    if name != "x" {
                        serve_back(service, &name).await;
                        let _ = store.delete(&name);
                    }
                }
            }
        } else if let Ok((_, batches)) = service.exchange_messages(stream).await {
            std::hint::black_box(batches.len());
        }
    });
}

/// An item of one ragged column (`arrow.variable_shape_tensor` of float32, rank 2).
fn ragged_schema() -> &'static arrow_schema::Schema {
    static SCHEMA: OnceLock<arrow_schema::Schema> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let arrays = vec![ndarray::ArrayD::<f32>::zeros(vec![1, 2])];
        let ragged = arrowbridge::RaggedTensor::from_arrays(arrays).expect("one row");
        arrow_schema::Schema::new(vec![ragged.field("r")])
    })
}

/// The schema message of [`ragged_schema`].
fn ragged_schema_message() -> FlightData {
    static SCHEMA: OnceLock<FlightData> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            FlightData::from(arrow_flight::SchemaAsIpc::new(
                ragged_schema(),
                &arrow_ipc::writer::IpcWriteOptions::default(),
            ))
        })
        .clone()
}

/// A DoGet of the item `name`, every message read.
async fn serve_back(service: &Service, name: &str) {
    use arrow_flight::flight_service_server::FlightService;
    let request = tonic::Request::new(arrow_flight::Ticket::new(name.as_bytes().to_vec()));
    if let Ok(response) = service.do_get(request).await {
        let mut messages = response.into_inner();
        while let Some(message) = futures::StreamExt::next(&mut messages).await {
            std::hint::black_box(message.map(|m| m.data_body.len()).unwrap_or(0));
        }
    }
}

/// Kernel parameters in their JSON form: parsed, written back (the round trip must be
/// exact), and given to the built-in kernels.
pub fn kernel_params(data: &[u8]) {
    let Ok(serde_json::Value::Object(object)) = serde_json::from_slice(data) else {
        return;
    };
    let Ok(params) = Params::from_json("sum", &object) else {
        return;
    };
    let json = params.to_json();
    let again = Params::from_json("sum", json.as_object().expect("an object"))
        .expect("what to_json writes, from_json reads");
    assert_eq!(
        again.to_json(),
        json,
        "the parameter codec does not round-trip"
    );
    let registry = Registry::with_builtins();
    let x = ArrowTensor::from_array(ndarray::ArrayD::from_elem(vec![2, 3], 2i32));
    for kernel in ["sum", "identity", "normalize"] {
        let _ = registry.call(kernel, std::slice::from_ref(&x), params.clone());
    }
    std::hint::black_box(x.shape().len() + usize::from(x.dtype().itemsize() > 0));
    let _ = x.array().len();
}

/// A DoGet response as a server may send it, parsed and landed by the native client as it
/// arrives; or (a first byte of 3 mod 4) the rest of a DoPut of a ragged column as a client
/// may send it, parsed and landed message by message as the server lands it, then read as
/// ragged rows. Layout: one byte choosing the item's columns, two for its rows, one for the
/// size of the pieces the bytes arrive in (0: all at once), then the body (gRPC frames of
/// FlightData).
pub fn flight_get_response(data: &[u8]) {
    let mut bytes = Bytes(data);
    let item = Arc::new(Field::new("item", DataType::Float32, true));
    let choice = bytes.u8() % 4;
    if choice == 3 {
        let piece = match bytes.u8() {
            0 => bytes.0.len().max(1),
            n => usize::from(n),
        };
        return land_ragged_put(bytes.0.chunks(piece));
    }
    let schema = match choice {
        0 => arrow_schema::Schema::new(vec![
            Field::new("i", DataType::Int32, true),
            Field::new("x", DataType::Float64, true),
        ]),
        1 => arrow_schema::Schema::new(vec![Field::new(
            "x",
            DataType::FixedSizeList(item, 3),
            true,
        )]),
        _ => arrow_schema::Schema::new(vec![Field::new("x", DataType::Float64, true)]),
    };
    let rows = usize::from(bytes.u16() % 256);
    let piece = match bytes.u8() {
        0 => bytes.0.len().max(1),
        n => usize::from(n),
    };
    if let Ok(batch) = arrowbridge_flight::land_response(&schema, rows, bytes.0.chunks(piece)) {
        std::hint::black_box(batch.num_rows());
    }
}

/// The messages of a put of one ragged column (after its schema message), landed as the
/// server lands them; every row of what lands is read.
fn land_ragged_put<'c>(chunks: impl IntoIterator<Item = &'c [u8]>) {
    let schema = ragged_schema();
    let Ok(batches) = arrowbridge_flight::land_bodies(schema, chunks) else {
        return;
    };
    for batch in batches {
        let Ok(ragged) = arrowbridge::RaggedTensor::from_arrow(
            schema.field(0),
            &batch.column(0).to_data(),
            true,
        ) else {
            continue;
        };
        let sums: Vec<f32> = match ragged.rows::<f32>() {
            Ok(rows) => rows
                .map(|row| row.iter().fold(0f32, |a, &v| a + v))
                .collect(),
            Err(_) => Vec::new(),
        };
        std::hint::black_box(sums);
    }
}

/// A DoGet ticket as any client may send it: parsed (what parses must write back to itself)
/// and served in-process against a store holding two versions of one item.
pub fn flight_ticket(data: &[u8]) {
    use arrow_flight::flight_service_server::FlightService;
    if let Ok(ticket) = arrowbridge_flight::ItemTicket::parse(data) {
        let again = arrowbridge_flight::ItemTicket::parse(&ticket.to_bytes())
            .expect("a ticket written is a ticket read");
        assert_eq!(again, ticket, "the ticket codec does not round-trip");
    }
    let (_, service) = service();
    let request = tonic::Request::new(arrow_flight::Ticket::new(data.to_vec()));
    runtime().block_on(async {
        if let Ok(response) = service.do_get(request).await {
            let mut messages = response.into_inner();
            while let Some(message) = futures::StreamExt::next(&mut messages).await {
                std::hint::black_box(message.map(|m| m.data_body.len()).unwrap_or(0));
            }
        }
    });
}

/// What a client of the shared-memory socket may send (no descriptors): the server's
/// connection task reads it as requests, answers each, and ends when the bytes do.
pub fn shm_request(data: &[u8]) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_, service) = service();
    runtime().block_on(async {
        let Ok((server, mut client)) = tokio::net::UnixStream::pair() else {
            return;
        };
        let serving = tokio::spawn(service.clone().shm_connection(server));
        let _ = client.write_all(data).await;
        let _ = client.shutdown().await;
        let mut replies = Vec::new();
        let _ = client.read_to_end(&mut replies).await;
        let _ = serving.await;
        std::hint::black_box(replies.len());
    });
}
