//! The server from Rust: arrow-flight's own `FlightClient` puts an array, gets it back, runs a
//! kernel on it and asks for health, over a real loopback connection.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightDescriptor, Ticket};
use arrow_schema::Schema;
use arrowbridge::ipc::{record_batch, tensors_of};
use arrowbridge::ArrowTensor;
use arrowbridge_flight::{start, ServerConfig};
use futures::{stream, TryStreamExt};
use ndarray::{array, ArrayD, IxDyn};

mod common;

use common::{client, health};

#[tokio::test(flavor = "multi_thread")]
async fn put_get_exchange_and_health_from_a_rust_client() {
    let mut server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let mut client = client(server.location()).await;

    let x = ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[3, 2]), |i| {
        (i[0] * 2 + i[1]) as f64
    }));
    let batch = record_batch(&[("x", &x)]).unwrap();
    let put = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["x".into()])))
        .build(stream::iter([Ok(batch)]));
    client
        .do_put(put)
        .await
        .unwrap()
        .try_collect::<Vec<_>>()
        .await
        .unwrap();

    let batches: Vec<RecordBatch> = client
        .do_get(Ticket::new("x"))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let got = tensors_of(&batches[0].schema(), &batches).unwrap();
    assert_eq!(got[0].0, "x");
    assert_eq!(got[0].1.view::<f64>().unwrap(), x.view::<f64>().unwrap());

    let command = r#"{"kernel": "sum", "args": [{"stored": "x"}], "params": {"axis": 0}}"#;
    let exchange = FlightDataEncoderBuilder::new()
        .with_schema(Arc::new(Schema::empty()))
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command)))
        .build(stream::empty());
    let result: Vec<RecordBatch> = client
        .do_exchange(exchange)
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    let sums = tensors_of(&result[0].schema(), &result).unwrap();
    assert_eq!(
        sums[0].1.view::<f64>().unwrap(),
        array![6.0, 9.0].into_dyn()
    );

    let health = health(&mut client).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["stored"], 1);

    server.shutdown().unwrap();
    assert!(!server.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_port_in_use_is_an_error_even_from_async_code() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = start(ServerConfig::new("127.0.0.1", port)).unwrap_err();
    assert!(
        err.to_string().contains("cannot listen on 127.0.0.1"),
        "{err}"
    );
}
