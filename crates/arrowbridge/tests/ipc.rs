//! IPC files and streams: round trips, views into the mapping, files written by pyarrow, and
//! bad input that must give errors (never panics or out-of-bounds reads).

use std::path::{Path, PathBuf};

use arrowbridge::ipc::{read_ipc, write_ipc, Compression, IpcFormat, WriteOptions};
use arrowbridge::{ArrowTensor, DType, Error};
use ndarray::{ArrayD, IxDyn};

struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("arrowbridge-test-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn sample() -> (ArrowTensor, ArrowTensor) {
    let e = ArrayD::from_shape_fn(IxDyn(&[6, 4, 3]), |i| {
        (i[0] * 100 + i[1] * 10 + i[2]) as f32
    });
    let l = ArrayD::from_shape_fn(IxDyn(&[6]), |i| i[0] as i64 * 3);
    (ArrowTensor::from_array(e), ArrowTensor::from_array(l))
}

#[test]
fn round_trips_as_views_of_the_mapping_in_every_format() {
    let dir = TempDir::new("roundtrip");
    let (e, l) = sample();
    // Compressible, so that the compressed formats really store it compressed.
    let z = ArrowTensor::from_array(ArrayD::<f64>::zeros(IxDyn(&[6, 1000])));
    for format in [IpcFormat::File, IpcFormat::Stream] {
        for compression in [None, Some(Compression::Lz4), Some(Compression::Zstd)] {
            let path = dir.path("x.arrow");
            write_ipc(
                &path,
                &[("e", &e), ("l", &l), ("z", &z)],
                &WriteOptions {
                    format,
                    compression,
                },
            )
            .unwrap();
            let file = read_ipc(&path, true).unwrap();
            assert_eq!(file.format(), format);
            let (base, len) = file.mapping().unwrap();
            let back = file.tensor("e").unwrap();
            assert_eq!(back.view::<f32>().unwrap(), e.view::<f32>().unwrap());
            assert_eq!(
                file.tensor("l").unwrap().view::<i64>().unwrap(),
                l.view::<i64>().unwrap()
            );
            let inside = |t: &ArrowTensor| {
                let address = t.data_ptr() as usize;
                address >= base && address + t.nbytes() <= base + len
            };
            let zeros = file.tensor("z").unwrap();
            assert_eq!(zeros.view::<f64>().unwrap().sum(), 0.0);
            if compression.is_none() {
                assert!(
                    inside(&back) && inside(&zeros),
                    "{format:?}: not a view of the mapping"
                );
                assert_eq!(
                    back.data_ptr() as usize % 64,
                    base % 64,
                    "64-byte aligned buffers"
                );
            } else {
                assert!(
                    !inside(&zeros),
                    "{format:?} {compression:?}: data must be decompressed"
                );
            }
            let unmapped = read_ipc(&path, false).unwrap();
            assert!(unmapped.mapping().is_none());
            assert_eq!(
                unmapped.tensor("e").unwrap().view::<f32>().unwrap(),
                e.view::<f32>().unwrap()
            );
        }
    }
}

#[test]
fn arrays_of_different_lengths_are_stored_as_whole_elements() {
    let dir = TempDir::new("elements");
    let a = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[2, 3]), 1.5f64));
    let b = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[5]), 7u8));
    let c = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[]), -1i16));
    let path = dir.path("mixed.arrow");
    write_ipc(
        &path,
        &[("a", &a), ("b", &b), ("c", &c)],
        &WriteOptions::default(),
    )
    .unwrap();
    let file = read_ipc(&path, true).unwrap();
    assert_eq!(file.batch_rows(0), Some(1));
    assert_eq!(file.tensor("a").unwrap().shape(), &[2, 3]);
    assert_eq!(file.tensor("b").unwrap().view::<u8>().unwrap().sum(), 35);
    assert_eq!(file.tensor("c").unwrap().shape(), &[] as &[usize]);
}

#[test]
fn reads_what_pyarrow_wrote() {
    for name in [
        "pyarrow_file.arrow",
        "pyarrow_stream.arrows",
        "pyarrow_lz4.feather",
    ] {
        let file = read_ipc(&data(name), true).unwrap_or_else(|e| panic!("{name}: {e}"));
        let e = file.tensor("embeddings").unwrap();
        assert_eq!(e.shape(), &[5, 2, 3], "{name}");
        assert_eq!(e.dtype(), DType::Float32);
        let v = e.view::<f32>().unwrap();
        assert!((v[[4, 1, 2]] - 2.9).abs() < 1e-6, "{name}");
        let labels = file.tensor("labels").unwrap();
        assert_eq!(labels.view::<i64>().unwrap().sum(), 70, "{name}");
        assert_eq!(
            file.tensor("when").unwrap().dtype(),
            DType::Datetime64(arrowbridge::TimeUnit::Millisecond)
        );
    }
    // The stream was written in batches of two rows: batch by batch, each is a view.
    let stream = read_ipc(&data("pyarrow_stream.arrows"), true).unwrap();
    assert_eq!(stream.num_batches(), 3);
    let (base, len) = stream.mapping().expect("mapped");
    for index in 0..3 {
        for (name, t) in stream.batch_tensors(index).unwrap() {
            let address = t.data_ptr() as usize;
            assert!(
                address >= base && address + t.nbytes() <= base + len,
                "batch {index} column {name} is not a view of the mapping"
            );
        }
    }
    assert_eq!(stream.batch_tensors(2).unwrap()[0].1.shape(), &[1, 2, 3]);
    // The uncompressed file, read whole: one batch, every column a view.
    let file = read_ipc(&data("pyarrow_file.arrow"), true).unwrap();
    let (base, len) = file.mapping().expect("mapped");
    for (name, t) in file.tensors().unwrap() {
        let address = t.data_ptr() as usize;
        assert!(
            t.is_empty() || (address >= base && address + t.nbytes() <= base + len),
            "{name} is not a view of the mapping"
        );
    }
}

fn expect_bad_file(bytes: &[u8], dir: &TempDir) -> Error {
    let path = dir.path("bad.arrow");
    std::fs::write(&path, bytes).unwrap();
    let result = read_ipc(&path, true).and_then(|f| f.tensors().map(|_| ()));
    match result {
        Err(e) => e,
        Ok(()) => panic!("corrupt data was accepted"),
    }
}

#[test]
fn bad_files_give_errors_that_name_the_file() {
    let dir = TempDir::new("bad");
    let (e, l) = sample();
    let good_path = dir.path("good.arrow");
    write_ipc(
        &good_path,
        &[("e", &e), ("l", &l)],
        &WriteOptions::default(),
    )
    .unwrap();
    let good = std::fs::read(&good_path).unwrap();

    let err = expect_bad_file(&good[..good.len() - 20], &dir);
    assert!(err.to_string().contains("bad.arrow"), "{err}");
    let err = expect_bad_file(b"PK\x03\x04 certainly not arrow", &dir);
    assert!(matches!(err, Error::BadFile { .. }), "{err}");
    let err = expect_bad_file(b"", &dir);
    assert!(matches!(err, Error::BadFile { .. }), "{err}");

    // A footer whose length field points before the start of the file.
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 10..n - 6].copy_from_slice(&(n as i32 * 2).to_le_bytes());
    let err = expect_bad_file(&bad, &dir);
    assert!(err.to_string().contains("footer"), "{err}");

    let missing = read_ipc(&dir.path("missing.arrow"), true).unwrap_err();
    assert!(matches!(missing, Error::Io { .. }) && missing.to_string().contains("missing.arrow"));
}

/// A small deterministic mutation fuzzer: flips, overwrites and truncates a valid file and
/// checks that every result is either a correct read or an error, never a panic or a crash.
#[test]
fn mutated_files_never_panic() {
    let dir = TempDir::new("fuzz");
    let (e, l) = sample();
    let mut executions = 0usize;
    let mut rejected = 0usize;
    let z = ArrowTensor::from_array(ArrayD::<f64>::zeros(IxDyn(&[6, 100])));
    let seeds = [
        (IpcFormat::File, None),
        (IpcFormat::Stream, None),
        (IpcFormat::File, Some(Compression::Lz4)),
        (IpcFormat::Stream, Some(Compression::Zstd)),
    ];
    for (format, compression) in seeds {
        let path = dir.path("seed.arrow");
        let options = WriteOptions {
            format,
            compression,
        };
        write_ipc(&path, &[("e", &e), ("l", &l), ("z", &z)], &options).unwrap();
        let seed = std::fs::read(&path).unwrap();
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..1500 {
            let mut bytes = seed.clone();
            match round % 3 {
                0 => {
                    for _ in 0..1 + next() % 4 {
                        let i = (next() as usize) % bytes.len();
                        bytes[i] ^= 1 << (next() % 8);
                    }
                }
                1 => {
                    let i = (next() as usize) % (bytes.len() - 4);
                    let value = [0xff, 0x7f, 0x00, 0x80][(next() % 4) as usize];
                    bytes[i..i + 4].fill(value);
                }
                _ => bytes.truncate((next() as usize) % bytes.len()),
            }
            let path = dir.path("mutant.arrow");
            std::fs::write(&path, &bytes).unwrap();
            executions += 1;
            let outcome = std::panic::catch_unwind(|| {
                read_ipc(&path, true).and_then(|f| {
                    f.tensors().map(|ts| {
                        // Read every byte, so that an out-of-range view is noticed (by
                        // valgrind in `make memcheck`, by a fault otherwise).
                        ts.iter()
                            .map(|(_, t)| {
                                let bytes = t.values().as_slice();
                                bytes.iter().fold(0usize, |acc, &b| acc + usize::from(b))
                            })
                            .sum::<usize>()
                    })
                })
            });
            match outcome {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => rejected += 1,
                Err(_) => panic!("round {round} ({format:?}, {compression:?}) panicked"),
            }
        }
    }
    eprintln!(
        "mutation fuzzing: {executions} executions, {rejected} rejected with an error, 0 panics"
    );
    assert!(rejected > executions / 10);
}

/// Regression: the atheris fuzzer found files whose compressed buffers declare an
/// uncompressed size of ~1.7e18 bytes; decoding them used to abort the process on the
/// failed allocation. They must be refused with an error instead.
#[test]
fn absurd_decompressed_sizes_are_refused() {
    for name in ["fuzz-457d4b5e.arrow", "fuzz-eaaed0de.arrow"] {
        let err = read_ipc(&data(name), true)
            .and_then(|f| f.tensors().map(|_| ()))
            .unwrap_err();
        assert!(err.to_string().contains("uncompressed"), "{name}: {err}");
    }
}

/// An IPC stream of one schema message that says the data is big-endian.
fn big_endian_stream() -> Vec<u8> {
    let mut fbb = flatbuffers::FlatBufferBuilder::new();
    let fields = fbb.create_vector::<flatbuffers::WIPOffset<arrow_ipc::Field>>(&[]);
    let mut schema = arrow_ipc::SchemaBuilder::new(&mut fbb);
    schema.add_endianness(arrow_ipc::Endianness::Big);
    schema.add_fields(fields);
    let schema = schema.finish();
    let mut message = arrow_ipc::MessageBuilder::new(&mut fbb);
    message.add_version(arrow_ipc::MetadataVersion::V5);
    message.add_header_type(arrow_ipc::MessageHeader::Schema);
    message.add_header(schema.as_union_value());
    message.add_bodyLength(0);
    let message = message.finish();
    fbb.finish(message, None);
    let mut metadata = fbb.finished_data().to_vec();
    metadata.resize(metadata.len().next_multiple_of(8), 0);
    let mut stream = vec![0xff; 4];
    stream.extend((metadata.len() as i32).to_le_bytes());
    stream.extend(metadata);
    stream.extend([0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    stream
}

#[test]
fn big_endian_data_is_refused_not_read_byte_swapped() {
    let dir = TempDir::new("endian");
    let path = dir.path("big.arrows");
    std::fs::write(&path, big_endian_stream()).unwrap();
    let err = read_ipc(&path, true).unwrap_err();
    assert!(matches!(err, Error::ByteOrder { .. }), "{err}");
    assert!(err.to_string().contains("big-endian"), "{err}");
}

#[test]
fn duplicate_column_names_are_refused_on_read_and_write() {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};

    let dir = TempDir::new("dup");
    let schema = Arc::new(Schema::new(vec![
        Field::new("x", DataType::Int64, false),
        Field::new("x", DataType::Float64, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from(vec![1, 2])),
        Arc::new(Float64Array::from(vec![0.5, 1.5])),
    ];
    let batch = RecordBatch::try_new(schema.clone(), columns).unwrap();
    // Written with arrow-rs's own writer (arrowbridge's refuses, see below).
    let path = dir.path("dup.arrow");
    let mut file = std::fs::File::create(&path).unwrap();
    let mut writer = arrow_ipc::writer::FileWriter::try_new(&mut file, &schema).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    let err = read_ipc(&path, true).unwrap_err();
    assert!(
        err.to_string().contains("2 columns are named \"x\""),
        "{err}"
    );

    let err =
        arrowbridge::ipc::write_batch(&dir.path("out.arrow"), &batch, &WriteOptions::default())
            .unwrap_err();
    assert!(
        err.to_string().contains("2 columns are named \"x\""),
        "{err}"
    );
}

#[cfg(unix)]
#[test]
fn rewrites_keep_the_mode_and_go_through_symlinks() {
    use std::os::unix::fs::PermissionsExt;

    let dir = TempDir::new("modes");
    let (e, l) = sample();
    let target = dir.path("target.arrow");
    write_ipc(&target, &[("l", &l)], &WriteOptions::default()).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    let link = dir.path("link.arrow");
    std::os::unix::fs::symlink("target.arrow", &link).unwrap();

    write_ipc(&link, &[("e", &e)], &WriteOptions::default()).unwrap();
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    let mode = std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let read = read_ipc(&target, true).unwrap();
    assert_eq!(read.tensor("e").unwrap().shape(), e.shape());
}

#[test]
fn every_shape_travels_in_messages_no_larger_than_asked() {
    use arrowbridge::ipc::{tensors_of, wire_batches};
    use arrowbridge::Form;

    let big = ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[1, 10_000]), |i| i[1] as f64));
    let transposed = ArrowTensor::from_buffer(
        ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| {
            (i[0] * 4 + i[1]) as i16
        }))
        .values()
        .clone(),
        DType::Int16,
        &[4, 3],
        &[1, 0],
        Form::Element,
        None,
    )
    .unwrap();
    let scalar = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[]), 2.5f32));
    let columns = [("big", &big), ("t", &transposed), ("s", &scalar)];
    let (schema, batches) = wire_batches(&columns, 4096).unwrap();
    assert!(batches.len() > 1);
    // The size of a stream of `batches` as the IPC writer encodes it.
    let encoded = |batches: &[&arrow_array::RecordBatch]| {
        let mut bytes = Vec::new();
        let mut writer = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &schema).unwrap();
        for batch in batches {
            writer.write(batch).unwrap();
        }
        writer.finish().unwrap();
        bytes.len()
    };
    let schema_only = encoded(&[]);
    for batch in &batches {
        let message = encoded(&[batch]) - schema_only;
        assert!(message <= 4096 + 512, "a message of {message} bytes");
    }
    let back = tensors_of(&schema, &batches).unwrap();
    for ((name, sent), (got_name, got)) in columns.iter().zip(&back) {
        assert_eq!(name, got_name);
        assert_eq!(got.shape(), sent.shape(), "{name}");
        assert_eq!(got.dtype(), sent.dtype(), "{name}");
    }
    assert_eq!(back[0].1.view::<f64>().unwrap(), big.view::<f64>().unwrap());
    assert_eq!(
        back[1].1.view::<i16>().unwrap(),
        transposed.view::<i16>().unwrap()
    );
    assert_eq!(
        back[2].1.view::<f32>().unwrap(),
        scalar.view::<f32>().unwrap()
    );
}
