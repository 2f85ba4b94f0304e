//! The JSON of arrowbridge's Flight calls, as types that client and server share: the tickets
//! of a FlightInfo's endpoints ([`ItemTicket`]) and the DoExchange command that names a
//! kernel ([`ExchangeCommand`]). The shared-memory socket's messages are in [`crate::shm`],
//! a sharded item's map in [`crate::shards`].

use serde::{Deserialize, Serialize};
use tonic::Status;

/// A server's acknowledgement of a DoPut (the `app_metadata` of its one `PutResult`): the
/// rows it stored and, for a sharded item's map, the map it replaced there (`null`: none).
///
/// `{"rows": 1000}`, `{"rows": 0, "replaced": {"rows": 10, "bytes": 80, "shards": [...]}}`
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutAck {
    /// Rows stored.
    pub rows: usize,
    /// The map this put replaced, when both it and the item it replaced are sharded maps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replaced: Option<crate::shards::ShardMap>,
}

impl PutAck {
    /// The acknowledgement in `app_metadata` (an empty one from servers that send none).
    pub fn parse(app_metadata: &[u8]) -> PutAck {
        serde_json::from_slice(app_metadata).unwrap_or_default()
    }

    /// Its `app_metadata`.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an acknowledgement is serializable")
    }
}

/// The body of the actions on a sharded item's map as of a put's or a delete's order (see
/// [`crate::shards`]): `undo_map` undoes the failed put of `order` (where its map is
/// stored, the map it replaced comes back; its map is refused afterwards); `delete_map`
/// deletes the item unless a newer put's map is stored, and refuses maps no newer that
/// arrive later (a cluster delete); `maps_below` lists the maps older than `order` that the
/// server keeps to undo puts.
///
/// `{"name": "x", "order": [1733338000000000000, "5e1f09a2c4b7d3e8"]}`
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapOrder {
    /// The item's name.
    pub name: String,
    /// The order ([`crate::shards::Order`]).
    pub order: crate::shards::Order,
}

/// The DoExchange command: which kernel, on which arguments, with which parameters.
///
/// `{"kernel": "matmul", "args": [{"column": "x"}, {"stored": "w"}], "params": {}}`;
/// without `args`, the kernel takes the streamed columns in order.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExchangeCommand {
    /// The kernel's name.
    pub kernel: String,
    /// Its arguments; without, the streamed columns in order.
    #[serde(default)]
    pub args: Option<Vec<ExchangeArg>>,
    /// Its parameters, in the JSON form of `arrowbridge::Params::to_json`.
    #[serde(default)]
    pub params: serde_json::Map<String, serde_json::Value>,
}

/// One kernel argument of [`ExchangeCommand`].
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeArg {
    /// A column of the batches the client streams.
    Column(String),
    /// An array stored on the server (its first column).
    Stored(String),
    /// Rows of an array stored on the server:
    /// `{"stored_rows": {"name": "x", "version": 17, "rows": [0, 1000]}}`.
    #[serde(rename = "stored_rows")]
    StoredRows(StoredRows),
    /// Ragged data the client streams, as a ragged kernel takes it (its first argument):
    /// `{"ragged": {"values": "arg0", "shapes": "arg0.shapes"}}`, the columns of its values
    /// (one after another, each row in C order) and of its rows' shapes (`(n, ndim)` int32).
    Ragged(RaggedColumns),
}

/// The columns of a ragged argument sent with a call ([`ExchangeArg::Ragged`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaggedColumns {
    /// The column of its values.
    pub values: String,
    /// The column of its rows' shapes.
    pub shapes: String,
}

/// Rows `[start, end)` of one version of a stored array (the one stored now without
/// `version`), as a kernel argument ([`ExchangeArg::StoredRows`]).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoredRows {
    /// The item.
    pub name: String,
    /// Its version ([`crate::Stored::version`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The rows.
    pub rows: [usize; 2],
}

/// What a ticket asks for: an item by name (a ticket of the name's bytes alone asks for
/// the version stored now), or, as the endpoints of a FlightInfo ask, rows of one version
/// of it: `{"name": "x", "version": 1733112000000001, "rows": [0, 1000]}`, and optionally
/// some of its columns (`"columns": ["a", "c"]`, in the order given). A ticket that
/// names a version is served that version or refused (`FAILED_PRECONDITION`, kind
/// [`crate::error::KIND_REPLACED`]): never rows of another.
///
/// `{"name": "x", "at_most": 1048576}` asks for the whole item only if it is small: the
/// version stored now when it holds at most that many bytes here (not a sharded item),
/// else a refusal (`FAILED_PRECONDITION`, kind [`crate::error::KIND_NOT_WHOLE`]) after which
/// the client reads the item's FlightInfo. A get of a small item then takes one round trip,
/// not two.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ItemTicket {
    /// The item.
    pub name: String,
    /// Its version ([`crate::Stored::version`]); without, the one stored when the ticket
    /// arrives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Rows `[start, end)` of it; without, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<[usize; 2]>,
    /// These columns of it, in this order; without, all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
    /// Serve the item only if it holds at most this many bytes on this server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_most: Option<usize>,
}

impl ItemTicket {
    /// The ticket of `bytes`: JSON (starting with `{`), or an item's name.
    pub fn parse(bytes: &[u8]) -> Result<ItemTicket, Status> {
        if bytes.first() == Some(&b'{') {
            let ticket: ItemTicket = serde_json::from_slice(bytes)
                .map_err(|e| Status::invalid_argument(format!("bad ticket: {e}")))?;
            if let Some([start, end]) = ticket.rows {
                if start > end {
                    return Err(Status::invalid_argument(format!(
                        "bad ticket: rows [{start}, {end}] run backwards"
                    )));
                }
            }
            return Ok(ticket);
        }
        let name = std::str::from_utf8(bytes)
            .map_err(|_| Status::invalid_argument("the ticket must be a UTF-8 name"))?;
        Ok(ItemTicket::whole(name))
    }

    /// The ticket of the whole of `name`, as stored now.
    pub fn whole(name: &str) -> ItemTicket {
        ItemTicket {
            name: name.to_string(),
            version: None,
            rows: None,
            columns: None,
            at_most: None,
        }
    }

    /// The ticket as it travels.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a ticket is serializable")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_rows_travel_as_the_documented_json() {
        let text = r#"{"kernel":"identity","args":[{"stored_rows":{"name":"x","version":17,"rows":[0,1000]}},{"stored":"w"},{"column":"arg2"}]}"#;
        let command: ExchangeCommand = serde_json::from_str(text).unwrap();
        let args = command.args.clone().unwrap();
        assert_eq!(
            args[0],
            ExchangeArg::StoredRows(StoredRows {
                name: "x".into(),
                version: Some(17),
                rows: [0, 1000],
            })
        );
        assert_eq!(args[1], ExchangeArg::Stored("w".into()));
        let again: ExchangeCommand =
            serde_json::from_slice(&serde_json::to_vec(&command).unwrap()).unwrap();
        assert_eq!(again, command);
        // Unknown fields are refused, not ignored.
        let extra =
            r#"{"kernel":"k","args":[{"stored_rows":{"name":"x","rows":[0,1],"limit":3}}]}"#;
        assert!(serde_json::from_str::<ExchangeCommand>(extra).is_err());
    }

    #[test]
    fn ragged_args_travel_as_the_documented_json() {
        let text = r#"{"kernel":"ragged_sum","args":[{"ragged":{"values":"arg0","shapes":"arg0.shapes"}}]}"#;
        let command: ExchangeCommand = serde_json::from_str(text).unwrap();
        assert_eq!(
            command.args.unwrap(),
            [ExchangeArg::Ragged(RaggedColumns {
                values: "arg0".into(),
                shapes: "arg0.shapes".into(),
            })]
        );
        let missing = r#"{"kernel":"k","args":[{"ragged":{"values":"arg0"}}]}"#;
        assert!(serde_json::from_str::<ExchangeCommand>(missing).is_err());
    }
}
