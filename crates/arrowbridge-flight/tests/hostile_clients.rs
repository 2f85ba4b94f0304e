//! Requests no honest client sends, crafted with arrow-flight's own client over a real
//! loopback connection: each gets a clear status, and the server keeps serving.

use std::sync::Arc;

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::{FlightClient, FlightData, FlightDescriptor};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_ipc::CompressionType;
use arrow_schema::Schema;
use arrowbridge::ipc::record_batch;
use arrowbridge::ArrowTensor;
use arrowbridge_flight::{start, RunningServer, ServerConfig};
use futures::{stream, TryStreamExt};
use ndarray::{ArrayD, IxDyn};
use tonic::Code;

mod common;

async fn client(server: &RunningServer) -> FlightClient {
    common::client(server.location()).await
}

/// The FlightData messages of a put of a 1000-value int64 array called `name`.
async fn put_messages(name: &str, compression: Option<CompressionType>) -> Vec<FlightData> {
    let x = ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[1000]), |i| i[0] as i64));
    let batch = record_batch(&[("x", &x)]).unwrap();
    let options = IpcWriteOptions::default()
        .try_with_compression(compression)
        .unwrap();
    FlightDataEncoderBuilder::new()
        .with_options(options)
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec![name.into()])))
        .build(stream::iter([Ok(batch)]))
        .try_collect()
        .await
        .unwrap()
}

/// The (offset, length) of the record batch's buffers, from the message header.
fn buffers(data: &FlightData) -> Vec<(usize, usize)> {
    let message = arrow_ipc::root_as_message(&data.data_header).unwrap();
    let batch = message.header_as_record_batch().unwrap();
    batch
        .buffers()
        .unwrap()
        .iter()
        .map(|b| (b.offset() as usize, b.length() as usize))
        .collect()
}

async fn put(client: &mut FlightClient, messages: Vec<FlightData>) -> Result<(), FlightError> {
    client
        .do_put(stream::iter(messages.into_iter().map(Ok)))
        .await?
        .try_collect::<Vec<_>>()
        .await
        .map(|_| ())
}

fn status_of(result: Result<(), FlightError>) -> tonic::Status {
    match result {
        Err(FlightError::Tonic(status)) => *status,
        other => panic!("expected an error status, got {other:?}"),
    }
}

async fn assert_healthy(client: &mut FlightClient) {
    assert_eq!(common::health(client).await["status"], "ok");
}

/// Runs a DoExchange of `messages` to its end.
async fn exchange(
    client: &mut FlightClient,
    messages: impl futures::Stream<Item = Result<FlightData, FlightError>> + Send + 'static,
) -> Result<(), FlightError> {
    let results = client.do_exchange(messages).await?;
    results.try_collect::<Vec<_>>().await.map(|_| ())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_compressed_buffer_declaring_a_terabyte_is_refused() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let mut client = client(&server).await;
    let mut messages = put_messages("big", Some(CompressionType::LZ4_FRAME)).await;
    let batch = messages.last_mut().unwrap();
    let (offset, length) = *buffers(batch).iter().find(|(_, len)| *len >= 8).unwrap();
    assert!(length >= 8);
    let mut body = batch.data_body.to_vec();
    body[offset..offset + 8].copy_from_slice(&(1i64 << 40).to_le_bytes());
    batch.data_body = body.into();

    let status = status_of(put(&mut client, messages).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(
        status
            .message()
            .contains("1099511627776 bytes uncompressed"),
        "{status}"
    );
    assert_healthy(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_body_shorter_than_its_header_declares_is_refused() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let mut client = client(&server).await;
    let mut messages = put_messages("short", None).await;
    let batch = messages.last_mut().unwrap();
    let half = batch.data_body.len() / 2;
    batch.data_body = batch.data_body.slice(..half);

    let status = status_of(put(&mut client, messages).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(
        status.message().contains("outside the message body"),
        "{status}"
    );
    assert_healthy(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_kernel_on_a_stored_item_without_columns_is_refused() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let mut client = client(&server).await;
    let empty = arrow_array::RecordBatch::new_empty(Arc::new(Schema::empty()));
    let messages: Vec<FlightData> = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_path(vec!["empty".into()])))
        .build(stream::iter([Ok(empty)]))
        .try_collect()
        .await
        .unwrap();
    put(&mut client, messages).await.unwrap();

    let command = r#"{"kernel": "sum", "args": [{"stored": "empty"}]}"#;
    let exchange = FlightDataEncoderBuilder::new()
        .with_schema(Arc::new(Schema::empty()))
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command)))
        .build(stream::empty());
    let status = status_of(self::exchange(&mut client, exchange).await);
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    assert!(status.message().contains("has no columns"), "{status}");
    assert_healthy(&mut client).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_result_too_large_for_memory_is_resource_exhausted() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let mut client = client(&server).await;
    let column = ArrowTensor::from_array(ArrayD::<f64>::zeros(IxDyn(&[200_000, 1])));
    let row = ArrowTensor::from_array(ArrayD::<f64>::zeros(IxDyn(&[1, 200_000])));
    let (schema, batches) =
        arrowbridge::ipc::wire_batches(&[("a", &column), ("b", &row)], 8 << 20).unwrap();
    let command = r#"{"kernel": "add"}"#;
    let exchange = FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(command)))
        .build(stream::iter(batches.into_iter().map(Ok)));
    let status = status_of(self::exchange(&mut client, exchange).await);
    assert_eq!(status.code(), Code::ResourceExhausted, "{status}");
    assert!(status.message().contains("320000000000 bytes"), "{status}");
    assert_healthy(&mut client).await;
}
