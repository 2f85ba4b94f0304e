//! The Flight RPCs: DoPut/DoGet store and serve named arrays, DoExchange runs kernels.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::SchemaRef;
use arrowbridge::ipc::record_batch;
use arrowbridge::{ArrowTensor, Param, Params, Registry};
use futures::stream::{self, BoxStream};
use futures::{StreamExt, TryStreamExt};
use serde::Deserialize;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{FlightServerError, Result};
use crate::store::{check_name, Store, Stored};

/// Largest FlightData message the server sends; bigger batches are split by rows.
pub const MAX_FLIGHT_DATA: usize = 8 << 20;

/// The arrowbridge Flight service.
pub struct Service {
    store: Arc<Store>,
    registry: Arc<Registry>,
    token: Option<String>,
}

/// The DoExchange command: which kernel, on which arguments, with which parameters.
///
/// `{"kernel": "matmul", "args": [{"column": "x"}, {"stored": "w"}], "params": {}}`;
/// without `args`, the kernel takes the streamed columns in order.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeCommand {
    pub kernel: String,
    #[serde(default)]
    pub args: Option<Vec<ExchangeArg>>,
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
}

/// One kernel argument of [`ExchangeCommand`].
#[derive(Debug, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeArg {
    /// A column of the batches the client streams.
    Column(String),
    /// An array stored on the server (its only column).
    Stored(String),
}

fn param(name: &str, value: &serde_json::Value) -> Result<Param> {
    use serde_json::Value as V;
    Ok(match value {
        V::Null => Param::None,
        V::Bool(b) => Param::Bool(*b),
        V::Number(n) if n.is_i64() => Param::Int(n.as_i64().expect("checked")),
        V::Number(n) => Param::Float(n.as_f64().unwrap_or(f64::NAN)),
        V::String(s) => Param::Str(s.clone()),
        V::Array(items) => Param::Ints(
            items
                .iter()
                .map(|v| v.as_i64())
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    FlightServerError::BadRequest(format!(
                        "parameter {name:?}: lists must hold ints"
                    ))
                })?,
        ),
        V::Object(_) => {
            return Err(FlightServerError::BadRequest(format!(
                "parameter {name:?}: objects are not supported"
            )))
        }
    })
}

fn descriptor_name(descriptor: &FlightDescriptor) -> Result<String> {
    let name = descriptor.path.first().ok_or_else(|| {
        FlightServerError::BadRequest("the descriptor needs a path: [name]".into())
    })?;
    check_name(name)?;
    Ok(name.clone())
}

fn flight_info(name: &str, stored: &Stored) -> Result<FlightInfo, Status> {
    // Shapes and dtypes, for clients that do not read extension metadata.
    let columns: Vec<serde_json::Value> = stored
        .schema
        .fields()
        .iter()
        .map(|f| {
            let mut column =
                serde_json::json!({"name": f.name(), "arrow_type": f.data_type().to_string()});
            // A column that is a tensor reports its dtype and shape (a view: nothing is copied
            // unless the item has several batches).
            if let Ok(t) = stored.tensor(f.name()) {
                column["dtype"] = t.dtype().name().into();
                column["shape"] = t.shape().into();
            }
            column
        })
        .collect();
    let metadata =
        serde_json::json!({"rows": stored.rows(), "bytes": stored.bytes(), "columns": columns});
    Ok(FlightInfo::new()
        .try_with_schema(&stored.schema)
        .map_err(|e| Status::internal(e.to_string()))?
        .with_descriptor(FlightDescriptor::new_path(vec![name.to_string()]))
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(name.to_string())))
        .with_total_records(stored.rows() as i64)
        .with_total_bytes(stored.bytes() as i64)
        .with_app_metadata(metadata.to_string()))
}

fn encode(
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
) -> BoxStream<'static, Result<FlightData, Status>> {
    FlightDataEncoderBuilder::new()
        .with_schema(schema)
        .with_max_flight_data_size(MAX_FLIGHT_DATA)
        .build(stream::iter(batches.into_iter().map(Ok)))
        .map_err(Status::from)
        .boxed()
}

/// Reads the first message of a client stream (it carries the descriptor) and decodes the
/// record batches of the whole stream.
async fn read_upload(
    mut stream: Streaming<FlightData>,
) -> Result<
    (
        Option<FlightDescriptor>,
        Option<SchemaRef>,
        Vec<RecordBatch>,
    ),
    Status,
> {
    let Some(first) = stream.message().await? else {
        return Ok((None, None, Vec::new()));
    };
    let descriptor = first.flight_descriptor.clone();
    let rest = stream.map_err(|status| FlightError::Tonic(Box::new(status)));
    // Some clients (pyarrow's DoExchange) send the descriptor in a message of its own, and any
    // message may carry only app_metadata: neither is Arrow data to decode.
    let all = stream::once(async { Ok(first) })
        .chain(rest)
        .try_filter(|data| futures::future::ready(!data.data_header.is_empty()));
    let mut decoded = FlightRecordBatchStream::new_from_flight_data(all);
    let mut batches = Vec::new();
    while let Some(batch) = decoded.next().await {
        batches.push(batch.map_err(|e| Status::invalid_argument(format!("bad Arrow data: {e}")))?);
    }
    Ok((descriptor, decoded.schema().cloned(), batches))
}

fn column_tensor(schema: &SchemaRef, batches: &[RecordBatch], name: &str) -> Result<ArrowTensor> {
    let (index, _) = schema
        .column_with_name(name)
        .ok_or_else(|| FlightServerError::BadRequest(format!("no column {name:?} was sent")))?;
    Ok(arrowbridge::ipc::column_across(schema, batches, index)?)
}

impl Service {
    /// A service over `store` running `registry`'s kernels, requiring `token` if given.
    pub fn new(store: Arc<Store>, registry: Arc<Registry>, token: Option<String>) -> Self {
        Service {
            store,
            registry,
            token,
        }
    }

    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let Some(token) = &self.token else {
            return Ok(());
        };
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if constant_time_eq(t.as_bytes(), token.as_bytes()) => Ok(()),
            Some(_) => Err(Status::unauthenticated("wrong bearer token")),
            None => Err(Status::unauthenticated(
                "this server needs an 'authorization: Bearer <token>' header",
            )),
        }
    }

    fn stored(&self, name: &str) -> Result<Arc<Stored>, Status> {
        self.store
            .get(name)
            .ok_or_else(|| Status::not_found(format!("no array called {name:?} is stored")))
    }

    fn run_exchange(
        &self,
        command: &ExchangeCommand,
        schema: Option<SchemaRef>,
        batches: Vec<RecordBatch>,
    ) -> Result<RecordBatch> {
        let schema = schema.unwrap_or_else(|| Arc::new(arrow_schema::Schema::empty()));
        let args = match &command.args {
            Some(args) => args
                .iter()
                .map(|a| match a {
                    ExchangeArg::Column(name) => column_tensor(&schema, &batches, name),
                    ExchangeArg::Stored(name) => {
                        let stored = self.store.get(name).ok_or_else(|| {
                            FlightServerError::NotFound(format!(
                                "no array called {name:?} is stored"
                            ))
                        })?;
                        stored.tensor(stored.schema.field(0).name())
                    }
                })
                .collect::<Result<Vec<_>>>()?,
            None => schema
                .fields()
                .iter()
                .map(|f| column_tensor(&schema, &batches, f.name()))
                .collect::<Result<Vec<_>>>()?,
        };
        let params = Params::new(
            command
                .params
                .iter()
                .map(|(k, v)| param(k, v).map(|p| (k.clone(), p)))
                .collect::<Result<Vec<_>>>()?,
        );
        let outputs = self.registry.call(&command.kernel, &args, params)?;
        let names: Vec<String> = if outputs.len() == 1 {
            vec!["result".to_string()]
        } else {
            (0..outputs.len()).map(|i| format!("result_{i}")).collect()
        };
        let columns: Vec<(&str, &ArrowTensor)> =
            names.iter().map(String::as_str).zip(&outputs).collect();
        Ok(record_batch(&columns)?)
    }
}

/// Compares secrets in time independent of where they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[tonic::async_trait]
impl FlightService for Service {
    type HandshakeStream = BoxStream<'static, Result<HandshakeResponse, Status>>;
    type ListFlightsStream = BoxStream<'static, Result<FlightInfo, Status>>;
    type DoGetStream = BoxStream<'static, Result<FlightData, Status>>;
    type DoPutStream = BoxStream<'static, Result<PutResult, Status>>;
    type DoActionStream = BoxStream<'static, Result<arrow_flight::Result, Status>>;
    type ListActionsStream = BoxStream<'static, Result<ActionType, Status>>;
    type DoExchangeStream = BoxStream<'static, Result<FlightData, Status>>;

    async fn handshake(
        &self,
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        self.authorize(&request)?;
        let reply = HandshakeResponse {
            protocol_version: 0,
            payload: Default::default(),
        };
        Ok(Response::new(stream::once(async { Ok(reply) }).boxed()))
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        self.authorize(&request)?;
        let infos: Vec<Result<FlightInfo, Status>> = self
            .store
            .list()
            .iter()
            .map(|(name, stored)| flight_info(name, stored))
            .collect();
        Ok(Response::new(stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        self.authorize(&request)?;
        let name = descriptor_name(request.get_ref())?;
        Ok(Response::new(flight_info(
            &name,
            self.stored(&name)?.as_ref(),
        )?))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "poll_flight_info: every query here completes at once; use get_flight_info",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        self.authorize(&request)?;
        let name = descriptor_name(request.get_ref())?;
        let stored = self.stored(&name)?;
        let options = IpcWriteOptions::default();
        let result: SchemaResult = SchemaAsIpc::new(&stored.schema, &options)
            .try_into()
            .map_err(|e: arrow_schema::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        self.authorize(&request)?;
        let name = std::str::from_utf8(&request.get_ref().ticket)
            .map_err(|_| Status::invalid_argument("the ticket must be a UTF-8 name"))?
            .to_string();
        let stored = self.stored(&name)?;
        Ok(Response::new(encode(
            stored.schema.clone(),
            stored.batches.clone(),
        )))
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        self.authorize(&request)?;
        let (descriptor, schema, batches) = read_upload(request.into_inner()).await?;
        let descriptor = descriptor.ok_or_else(|| {
            Status::invalid_argument("DoPut needs a descriptor with a path: [name]")
        })?;
        let name = descriptor_name(&descriptor)?;
        let schema = schema.ok_or_else(|| Status::invalid_argument("DoPut sent no schema"))?;
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let store = self.store.clone();
        let stored = Stored::new(schema, batches);
        // Writing (and fsyncing) a file blocks: keep it off the async workers.
        tokio::task::spawn_blocking(move || store.put(&name, stored))
            .await
            .map_err(|e| Status::internal(e.to_string()))??;
        let ack = PutResult {
            app_metadata: serde_json::json!({"rows": rows}).to_string().into(),
        };
        Ok(Response::new(stream::once(async { Ok(ack) }).boxed()))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        self.authorize(&request)?;
        let action = request.into_inner();
        let body = std::str::from_utf8(&action.body)
            .unwrap_or_default()
            .to_string();
        let reply = match action.r#type.as_str() {
            "delete" => {
                let store = self.store.clone();
                let name = body.clone();
                let existed = tokio::task::spawn_blocking(move || store.delete(&name))
                    .await
                    .map_err(|e| Status::internal(e.to_string()))??;
                if !existed {
                    return Err(Status::not_found(format!(
                        "no array called {body:?} is stored"
                    )));
                }
                serde_json::json!({"deleted": body})
            }
            "list_kernels" => serde_json::json!(self
                .registry
                .iter()
                .map(|k| (k.name, k.signature))
                .collect::<BTreeMap<_, _>>()),
            "health" => serde_json::json!({"status": "ok", "stored": self.store.list().len()}),
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action {other:?}; actions: delete, list_kernels, health"
                )))
            }
        };
        let result = arrow_flight::Result::new(reply.to_string());
        Ok(Response::new(stream::once(async { Ok(result) }).boxed()))
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        self.authorize(&request)?;
        let actions = [
            ("delete", "Deletes the stored array named by the body"),
            ("list_kernels", "JSON object of kernel names and signatures"),
            ("health", "JSON status of the server"),
        ]
        .map(|(name, doc)| {
            Ok(ActionType {
                r#type: name.into(),
                description: doc.into(),
            })
        });
        Ok(Response::new(stream::iter(actions).boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        self.authorize(&request)?;
        let (descriptor, schema, batches) = read_upload(request.into_inner()).await?;
        let command = descriptor
            .map(|d| d.cmd)
            .filter(|cmd| !cmd.is_empty())
            .ok_or_else(|| {
                Status::invalid_argument(
                    "DoExchange needs a descriptor whose command is JSON: {\"kernel\": ...}",
                )
            })?;
        let command: ExchangeCommand = serde_json::from_slice(&command)
            .map_err(|e| Status::invalid_argument(format!("bad DoExchange command: {e}")))?;
        let result = if batches
            .iter()
            .map(RecordBatch::get_array_memory_size)
            .sum::<usize>()
            < 1 << 16
        {
            self.run_exchange(&command, schema, batches)
        } else {
            let this = Service {
                store: self.store.clone(),
                registry: self.registry.clone(),
                token: None,
            };
            tokio::task::spawn_blocking(move || this.run_exchange(&command, schema, batches))
                .await
                .map_err(|e| Status::internal(e.to_string()))?
        }?;
        Ok(Response::new(encode(result.schema(), vec![result])))
    }
}
