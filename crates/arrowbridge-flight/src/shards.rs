//! Items sharded over several servers: the map that lets any server describe them.
//!
//! A sharded item's rows are split into contiguous shards, each stored as an ordinary item
//! on one or more servers (its replicas). Every server of the cluster also stores the item's
//! *map*: an item of zero rows under the item's own name, whose schema is the shards' and
//! whose schema metadata [`SHARDS_KEY`] lists the shards in row order with their rows and
//! locations. With it any server answers GetFlightInfo with one endpoint per shard, each
//! listing every replica's location, which is how a plain Flight client finds the rows:
//!
//! ```json
//! {"rows": 1000, "bytes": 8000,
//!  "shards": [{"name": "x.shard-0-of-2.v5e1f09a2c4b7d3e8", "rows": [0, 500], "bytes": 4000,
//!              "locations": ["grpc://10.0.0.1:7001", "grpc://10.0.0.2:7001"]}, ...]}
//! ```
//!
//! Each put of a sharded item stores its shards under names of its own (the version suffix
//! `.v<token>`), publishes the map, then deletes the shards of the version it replaced: a
//! reader follows the map it read, whose shards never change (servers refuse a second put
//! under such a name).
//!
//! Puts of one name by several clients at once are ordered by their maps: each map a
//! cluster client publishes carries its [`Order`] (the time its put committed, then its
//! version token), and a server refuses a map older than the one it holds (`FAILED_PRECONDITION`,
//! kind [`crate::error::KIND_REPLACED`]). However the publishes of two puts interleave,
//! every server ends up with the newer map. A put that failed to publish everywhere asks
//! each server to undo it (the `undo_map` action): where its map is still stored, the
//! server brings back the map it replaced there, which only the server knows for sure.
//!
//! A map is stored (and persisted with a data directory) like any item, so it survives a
//! restart the same way. The server never fetches the shards itself: DoGet and DoExchange
//! of a map's name are refused with `FAILED_PRECONDITION`, naming the endpoints to follow.

use serde::{Deserialize, Serialize};

use crate::error::{FlightServerError, Result};
use crate::names::check_name;

/// Schema metadata key of a sharded item's map.
pub const SHARDS_KEY: &str = "arrowbridge.shards";

/// Where a sharded item's rows are.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardMap {
    /// Rows in all.
    pub rows: usize,
    /// Bytes in all.
    pub bytes: usize,
    /// The shards in row order; their rows cover `0..rows` without gaps.
    pub shards: Vec<Shard>,
    /// Where this map stands among the maps of its name: a server refuses a map older than
    /// the one it holds. Maps without one (written by hand) are never refused for their age.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
}

/// The order of a map among the maps of its name: the time its put committed (nanoseconds
/// since the Unix epoch), then the put's version token, which breaks ties.
pub type Order = (u64, String);

/// One shard of a [`ShardMap`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// The item each replica stores the shard's rows as (also the endpoint's ticket).
    pub name: String,
    /// Its rows of the whole: `[start, end)`.
    pub rows: [usize; 2],
    /// Its bytes.
    pub bytes: usize,
    /// The servers that hold it, in the order clients try them.
    pub locations: Vec<String>,
}

impl ShardMap {
    /// The map a schema's metadata carries: `None` for an item that is not sharded, an error
    /// for a map that does not describe its rows (gaps, overlaps, no locations, bad names).
    pub fn of(schema: &arrow_schema::Schema) -> Result<Option<ShardMap>> {
        let Some(text) = schema.metadata().get(SHARDS_KEY) else {
            return Ok(None);
        };
        let bad = |why: String| FlightServerError::BadRequest(format!("{SHARDS_KEY}: {why}"));
        let map: ShardMap = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        if map.shards.is_empty() {
            return Err(bad("a sharded item needs at least one shard".into()));
        }
        let mut next = 0;
        for (i, shard) in map.shards.iter().enumerate() {
            check_name(&shard.name).map_err(|e| bad(format!("shard {i}: {e}")))?;
            let [start, end] = shard.rows;
            if start != next || end < start {
                return Err(bad(format!(
                    "shard {i} covers rows [{start}, {end}), but the next rows start at {next}"
                )));
            }
            if shard.locations.is_empty() {
                return Err(bad(format!("shard {i} ({:?}) has no location", shard.name)));
            }
            next = end;
        }
        if next != map.rows {
            return Err(bad(format!(
                "the shards cover {next} rows of the {} announced",
                map.rows
            )));
        }
        Ok(Some(map))
    }

    /// Whether this map may be stored under `name` where `held` is the map stored now
    /// (`None`: an item that is not sharded, or nothing): an error saying why not when a
    /// newer put's map is there (see the module's documentation).
    pub fn check_publish(&self, name: &str, held: Option<&ShardMap>) -> Result<()> {
        let held_order = held.and_then(|m| m.order.as_ref());
        match (&self.order, held_order) {
            (Some(new), Some(old)) if old > new => Err(FlightServerError::Superseded(format!(
                "{name:?}: a newer put's map is stored here (committed at {} ns, this one at \
                 {} ns), which stays",
                old.0, new.0
            ))),
            _ => Ok(()),
        }
    }

    /// The error of a request that would need the rows of a sharded item `name` here.
    pub fn not_here(&self, name: &str, what: &str) -> tonic::Status {
        tonic::Status::failed_precondition(format!(
            "{name:?} is sharded over {} shard(s) on other servers, so {what} cannot be served \
             here: follow the endpoints of GetFlightInfo (a cluster client does)",
            self.shards.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::Schema;
    use std::collections::HashMap;

    fn schema(map: &str) -> Schema {
        Schema::empty().with_metadata(HashMap::from([(SHARDS_KEY.to_string(), map.into())]))
    }

    #[test]
    fn a_map_must_cover_its_rows_in_order() {
        let ok = r#"{"rows": 4, "bytes": 32, "shards": [
            {"name": "x.0", "rows": [0, 3], "bytes": 24, "locations": ["grpc://a:1"]},
            {"name": "x.1", "rows": [3, 4], "bytes": 8, "locations": ["grpc://b:1", "grpc://a:1"]}]}"#;
        let map = ShardMap::of(&schema(ok)).unwrap().unwrap();
        assert_eq!(map.shards[1].locations.len(), 2);
        assert_eq!(ShardMap::of(&Schema::empty()).unwrap(), None);

        for (bad, says) in [
            (
                r#"{"rows": 4, "bytes": 0, "shards": []}"#,
                "at least one shard",
            ),
            (
                r#"{"rows": 4, "bytes": 0, "shards": [{"name": "x.0", "rows": [1, 4], "bytes": 0, "locations": ["l"]}]}"#,
                "next rows start at 0",
            ),
            (
                r#"{"rows": 5, "bytes": 0, "shards": [{"name": "x.0", "rows": [0, 4], "bytes": 0, "locations": ["l"]}]}"#,
                "cover 4 rows of the 5",
            ),
            (
                r#"{"rows": 4, "bytes": 0, "shards": [{"name": "x.0", "rows": [0, 4], "bytes": 0, "locations": []}]}"#,
                "no location",
            ),
            (
                r#"{"rows": 4, "bytes": 0, "shards": [{"name": "../x", "rows": [0, 4], "bytes": 0, "locations": ["l"]}]}"#,
                "shard 0: name",
            ),
            ("not json", SHARDS_KEY),
        ] {
            let err = ShardMap::of(&schema(bad)).unwrap_err().to_string();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }
}
