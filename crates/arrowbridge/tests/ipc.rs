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
    assert_eq!(file.batches()[0].num_rows(), 1);
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
    assert_eq!(stream.batches().len(), 3);
    assert_eq!(stream.batch_tensors(2).unwrap()[0].1.shape(), &[1, 2, 3]);
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
                        // Touch every value so that an out-of-range view would be noticed.
                        ts.iter().map(|(_, t)| t.nbytes()).sum::<usize>()
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
