//! An item sharded over several real servers: any server describes it with one endpoint
//! per shard listing every replica, the native client reassembles it from those endpoints
//! (moving to the next replica when one is gone), and the servers refuse to serve rows they
//! do not hold.

mod common;

use arrow_flight::Ticket;
use arrowbridge::ArrowTensor;
use arrowbridge_flight::shards::{Shard, ShardMap};
use arrowbridge_flight::{start, Client, ClientError, ClientOptions, ItemForm, ServerConfig};
use futures::TryStreamExt;
use ndarray::{ArrayD, IxDyn};
use tonic::Code;

fn rows(start: usize, end: usize, cols: usize) -> ArrowTensor {
    ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[end - start, cols]), |i| {
        ((start + i[0]) * cols + i[1]) as f64
    }))
}

fn connect(location: &str) -> Client {
    let options = ClientOptions {
        shm: Some(false),
        ..ClientOptions::default()
    };
    Client::connect(location, options).unwrap()
}

#[test]
fn any_server_describes_a_sharded_item_and_the_client_reassembles_it() {
    let servers: Vec<_> = (0..3)
        .map(|_| start(ServerConfig::new("127.0.0.1", 0)).unwrap())
        .collect();
    let clients: Vec<_> = servers.iter().map(|s| connect(s.location())).collect();
    // Rows [0, 70) on servers 0 and 1, [70, 100) on servers 1 and 2.
    let bounds = [(0, 70), (70, 100)];
    let mut shards = Vec::new();
    for (i, &(start, end)) in bounds.iter().enumerate() {
        let name = format!("x.shard-{i}");
        let replicas = [i, i + 1];
        for &r in &replicas {
            let part = rows(start, end, 4);
            clients[r]
                .put(&name, &[("data", &part)], ItemForm::Array)
                .unwrap();
        }
        shards.push(Shard {
            name,
            rows: [start, end],
            bytes: (end - start) * 32,
            locations: replicas
                .iter()
                .map(|&r| servers[r].location().to_string())
                .collect(),
        });
    }
    let schema = clients[0].info("x.shard-0").unwrap().schema;
    let map = ShardMap {
        rows: 100,
        bytes: 3200,
        shards,
        order: None,
    };
    for client in &clients {
        client.put_map("x", &schema, &map).unwrap();
    }

    let whole = rows(0, 100, 4);
    for client in &clients {
        let info = client.info("x").unwrap();
        assert_eq!((info.rows, info.endpoints), (100, 2));
        assert_eq!(info.columns[0]["shape"], serde_json::json!([100, 4]));
        let item = client.get("x").unwrap();
        assert_eq!(item.form, ItemForm::Array);
        assert_eq!(
            item.columns[0].1.tensor().unwrap().view::<f64>().unwrap(),
            whole.view::<f64>().unwrap()
        );
        // Listed once, by its map; the shards stored here are not items of their own.
        let names: Vec<String> = client.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names, ["x"]);
    }

    // The map has no rows of its own: DoGet and calls on it say where the rows are.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let status = runtime.block_on(async {
        let mut flight = common::client(servers[0].location()).await;
        let stream = flight.do_get(Ticket::new("x")).await;
        match stream {
            Err(e) => e,
            Ok(stream) => stream.try_collect::<Vec<_>>().await.unwrap_err(),
        }
    });
    assert!(
        status.to_string().contains("sharded over 2 shard"),
        "{status}"
    );
    let err = clients[0]
        .call(
            "sum",
            &[arrowbridge_flight::Arg::Stored("x")],
            &Default::default(),
        )
        .unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Remote {
                code: Code::FailedPrecondition,
                ..
            }
        ),
        "{err:?}"
    );

    // Server 0 goes away: shard 0 comes from its other replica, server 1. (The clients that
    // keep connections open to the servers that stop go first: a server lets open
    // connections finish for a grace period.)
    let mut clients = clients;
    drop(clients.drain(..2));
    let mut servers = servers;
    servers.remove(0).shutdown().unwrap();
    let item = clients[0].get("x").unwrap();
    assert_eq!(
        item.columns[0].1.tensor().unwrap().view::<f64>().unwrap(),
        whole.view::<f64>().unwrap()
    );
    // And when no replica of a shard answers, the error names the shard and every location.
    servers.remove(0).shutdown().unwrap();
    let err = clients[0].get("x").unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(
            &err,
            ClientError::Remote {
                code: Code::Unavailable,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        message.contains("endpoint 0 of \"x\" (rows [0, 70))"),
        "{message}"
    );
    for location in &map.shards[0].locations {
        assert!(message.contains(location.as_str()), "{message}");
    }
    // The server that is left serves on.
    let health = runtime
        .block_on(async { common::health(&mut common::client(servers[0].location()).await).await });
    assert_eq!(health["status"], "ok");
}

#[test]
fn a_map_with_rows_or_gaps_is_refused() {
    let server = start(ServerConfig::new("127.0.0.1", 0)).unwrap();
    let client = connect(server.location());
    let x = rows(0, 10, 2);
    client.put("x", &[("data", &x)], ItemForm::Array).unwrap();
    let schema = client.info("x").unwrap().schema;
    let gap = ShardMap {
        rows: 10,
        bytes: 80,
        shards: vec![Shard {
            name: "x".into(),
            rows: [2, 10],
            bytes: 80,
            locations: vec![server.location().to_string()],
        }],
        order: None,
    };
    let err = client.put_map("m", &schema, &gap).unwrap_err();
    assert!(
        matches!(
            &err,
            ClientError::Remote {
                code: Code::InvalidArgument,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("next rows start at 0"), "{err}");
    assert!(client.info("m").is_err(), "nothing was stored");
}
