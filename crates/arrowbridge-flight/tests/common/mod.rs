//! The fixture the Flight tests share: arrow-flight's own client connected to a server on
//! loopback, and the health check that shows the server still serves.

use arrow_flight::{Action, FlightClient};
use futures::TryStreamExt;

/// arrow-flight's `FlightClient`, connected to the server at `location` (`grpc://...`).
pub async fn client(location: &str) -> FlightClient {
    let url = location.replace("grpc://", "http://");
    let channel = tonic::transport::Channel::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    FlightClient::new(channel)
}

/// The server's `health` action, as JSON.
pub async fn health(client: &mut FlightClient) -> serde_json::Value {
    let results: Vec<_> = client
        .do_action(Action::new("health", ""))
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    serde_json::from_slice(&results[0]).unwrap()
}
