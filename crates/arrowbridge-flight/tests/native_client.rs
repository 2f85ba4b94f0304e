//! arrowbridge's own client (`arrowbridge_flight::Client`) against real servers: TCP, a Unix
//! socket and shared memory, parallel endpoints, the form of an item, and errors that name
//! their status.

use arrowbridge::{ArrowTensor, Param, Params};
use arrowbridge_flight::{
    start, Arg, Client, ClientError, ClientOptions, ItemForm, ServerConfig, PART_BYTES,
};
use ndarray::{ArrayD, IxDyn};

fn matrix(rows: usize, cols: usize) -> ArrowTensor {
    ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[rows, cols]), |i| {
        (i[0] * cols + i[1]) as f64
    }))
}

fn connect(location: &str, shm: Option<bool>) -> Client {
    let options = ClientOptions {
        shm,
        ..ClientOptions::default()
    };
    Client::connect(location, options).expect("a valid location")
}

#[test]
fn put_and_get_over_tcp_a_unix_socket_and_shared_memory() {
    let dir =
        std::env::temp_dir().join(format!("arrowbridge-native-client-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let tcp = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let unix = start(ServerConfig::unix(dir.join("flight.sock"))).unwrap();
    assert!(unix.location().starts_with("grpc+unix:///"));
    let x = matrix(1000, 8);
    for (location, shm, shared) in [
        (tcp.location(), Some(false), false),
        (unix.location(), Some(false), false),
        (tcp.location(), Some(true), cfg!(target_os = "linux")),
    ] {
        let client = connect(location, shm);
        assert_eq!(
            client.put("x", &[("data", &x)], ItemForm::Array).unwrap(),
            1000
        );
        let item = client.get("x").unwrap();
        assert_eq!(item.form, ItemForm::Array);
        assert_eq!(item.shared, shared, "{location} shm={shm:?}");
        assert_eq!(
            item.columns[0].1.tensor().unwrap().view::<f64>().unwrap(),
            x.view::<f64>().unwrap()
        );
        // Received over gRPC: one aligned buffer; over shared memory: a view of the mapping.
        assert_eq!(
            item.columns[0].1.tensor().unwrap().data_ptr() as usize % 64,
            0
        );
    }
    drop(unix);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_large_item_is_fetched_from_its_endpoints_into_one_buffer() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let client = connect(server.location(), Some(false));
    let rows = PART_BYTES / (8 * 128) * 3 / 2; // one and a half parts: two endpoints
    let x = matrix(rows, 128);
    client.put("big", &[("data", &x)], ItemForm::Array).unwrap();
    assert_eq!(client.info("big").unwrap().endpoints, 2);
    let item = client.get("big").unwrap();
    let got = item.columns[0].1.tensor().unwrap();
    assert_eq!(got.view::<f64>().unwrap(), x.view::<f64>().unwrap());
    assert_eq!(got.values().len(), x.nbytes(), "one buffer holds every row");
}

#[test]
fn calls_take_sent_and_stored_arrays_and_errors_carry_their_status() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let client = connect(server.location(), None);
    let x = matrix(2, 3);
    client.put("x", &[("data", &x)], ItemForm::Array).unwrap();
    let axis = Params::new([("axis".to_string(), Param::Int(0))]);
    let sums = client.call("sum", &[Arg::Stored("x")], &axis).unwrap();
    assert_eq!(
        sums[0].view::<f64>().unwrap().as_slice(),
        Some(&[3.0, 5.0, 7.0][..])
    );
    let added = client
        .call(
            "add",
            &[Arg::Stored("x"), Arg::Array(&x)],
            &Params::default(),
        )
        .unwrap();
    assert_eq!(added[0].view::<f64>().unwrap()[[1, 2]], 10.0);
    match client.get("missing") {
        Err(ClientError::Remote { code, message, .. }) => {
            assert_eq!(code, tonic::Code::NotFound);
            assert!(message.contains("missing"), "{message}");
        }
        other => panic!("expected NOT_FOUND, got {other:?}"),
    }
}

#[test]
fn the_blocking_client_refuses_to_run_inside_a_runtime() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let client = connect(server.location(), None);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let result = runtime.block_on(async { client.health() });
    assert!(
        matches!(result, Err(ClientError::InsideRuntime)),
        "{result:?}"
    );
    assert_eq!(client.health().unwrap()["status"], "ok");
}

#[test]
fn ragged_columns_are_put_and_got_as_ragged_tensors() {
    use arrowbridge::ipc::Column;
    use arrowbridge::RaggedTensor;

    let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let client = connect(server.location(), None);
    let arrays: Vec<ArrayD<f32>> = (0..30)
        .map(|i| {
            ArrayD::from_shape_fn(IxDyn(&[1 + i % 4, 3]), |j| {
                (i * 10 + j[0] * 3 + j[1]) as f32
            })
        })
        .collect();
    let ragged = Column::Ragged(vec![RaggedTensor::from_arrays(arrays.clone()).unwrap()]);
    let labels = Column::Tensor(matrix(30, 2));
    let columns = [("img", &ragged), ("label", &labels)];
    assert_eq!(
        client.put_columns("r", &columns, ItemForm::Dict).unwrap(),
        30
    );
    let item = client.get("r").unwrap();
    assert_eq!(item.form, ItemForm::Dict);
    // Shared memory carries tensors only: a ragged item is read over gRPC.
    assert!(!item.shared);
    let parts = item.columns[0].1.ragged().expect("a ragged column");
    let rows: Vec<_> = parts
        .iter()
        .flat_map(|p| {
            p.rows::<f32>()
                .unwrap()
                .map(|r| r.to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(rows, arrays);
    assert_eq!(
        item.columns[1].1.tensor().unwrap().view::<f64>().unwrap(),
        matrix(30, 2).view::<f64>().unwrap()
    );
    // With shared memory asked for, the refusal says why.
    let shm = connect(server.location(), Some(true));
    if cfg!(target_os = "linux") {
        let error = shm.get("r").unwrap_err().to_string();
        assert!(error.contains("ragged data"), "{error}");
    }
}
