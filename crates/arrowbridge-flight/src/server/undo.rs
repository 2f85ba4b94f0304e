//! What a server keeps to undo the puts of sharded items that fail ([`UndoLog`]): for each
//! item, the maps newer maps replaced here (only the server knows for sure what a publish
//! replaced: the put may not even know whether its map arrived), the puts undone, whose
//! maps are refused should they arrive late, and the shards deleted, which are refused
//! should their puts land late. All are bounded; what no longer fits is forgotten, and an
//! undo that would need it says so rather than guess.

use std::collections::HashMap;
use std::time::Duration;

use arrow_schema::SchemaRef;

use crate::server::recent::Recent;
use crate::shards::{Order, ShardMap, SHARDS_KEY};

/// The most replaced maps kept per sharded item: as many puts of one name as may fail at
/// once.
pub const HISTORY_KEPT: usize = 8;
/// The most bytes of replaced maps kept in all (their JSON); the oldest go first.
pub const HISTORY_BYTES: usize = 64 << 20;
/// The most undone puts remembered (each a name and an order), each for [`UNDONE_KEEP`].
pub const UNDONE_KEPT: usize = 4096;
/// How long an undone put is remembered: far longer than a put's publish takes.
pub const UNDONE_KEEP: Duration = Duration::from_secs(600);
/// The most deleted shard names remembered (written-once names: [`crate::names`]), each for
/// [`UNDONE_KEEP`]. A name takes about a hundred bytes.
pub const DELETED_KEPT: usize = 1 << 16;

/// The replaced maps, undone puts and deleted shards of a store (see the module's
/// documentation).
#[derive(Debug)]
pub struct UndoLog {
    history: HashMap<String, Kept>,
    /// The bytes of the maps in `history`.
    bytes: usize,
    undone: Recent<(String, Order), ()>,
    deleted: Recent<String, ()>,
}

impl Default for UndoLog {
    fn default() -> Self {
        UndoLog {
            history: HashMap::new(),
            bytes: 0,
            undone: Recent::new(UNDONE_KEPT, UNDONE_KEEP),
            deleted: Recent::new(DELETED_KEPT, UNDONE_KEEP),
        }
    }
}

/// A sharded item's map, as it was stored: its schema (whose metadata holds it) and itself.
#[derive(Clone, Debug)]
pub struct KeptMap {
    /// The map's schema.
    pub schema: SchemaRef,
    /// The map.
    pub map: ShardMap,
}

/// The maps replaced under one name, oldest first.
#[derive(Debug, Default)]
struct Kept {
    maps: Vec<KeptMap>,
    /// Whether older maps were forgotten (to stay within the bounds): an undo that runs out
    /// of maps cannot tell what to bring back.
    forgot: bool,
}

/// What the map before a failed put's is, on this server ([`UndoLog::previous`]).
pub enum Previous {
    /// That map.
    Map(KeptMap),
    /// None: the put replaced nothing sharded (nothing, or an item that is not sharded).
    Nothing,
    /// Forgotten, to stay within the bounds.
    Forgotten,
}

fn size(kept: &KeptMap) -> usize {
    kept.schema
        .metadata()
        .get(SHARDS_KEY)
        .map_or(0, String::len)
}

impl UndoLog {
    /// Notes what was stored under `name`: the map of a put (`stored`: `Some` when it is
    /// an ordered map) that `replaced` another such map keeps it (the same map again keeps
    /// nothing more); anything else forgets what was kept for the name.
    pub fn replaced(&mut self, name: &str, stored: Option<&ShardMap>, replaced: Option<KeptMap>) {
        let ordered = |map: &ShardMap| map.order.is_some();
        let Some(replaced) = replaced.filter(|r| stored.is_some_and(ordered) && ordered(&r.map))
        else {
            self.forget(name);
            return;
        };
        if stored.and_then(|m| m.order.as_ref()) == replaced.map.order.as_ref() {
            return;
        }
        let bytes = size(&replaced);
        let kept = self.history.entry(name.to_string()).or_default();
        if bytes > HISTORY_BYTES / HISTORY_KEPT {
            self.bytes -= kept.maps.iter().map(size).sum::<usize>();
            kept.maps.clear();
            kept.forgot = true;
            return;
        }
        if kept.maps.len() >= HISTORY_KEPT {
            let oldest = kept.maps.remove(0);
            kept.forgot = true;
            self.bytes -= size(&oldest);
        }
        kept.maps.push(replaced);
        self.bytes += bytes;
        while self.bytes > HISTORY_BYTES {
            // The oldest map of any other name (or, last, this one's): forgotten.
            let victim = self
                .history
                .iter()
                .filter(|(n, kept)| n.as_str() != name && !kept.maps.is_empty())
                .map(|(n, _)| n.clone())
                .next()
                .unwrap_or_else(|| name.to_string());
            let kept = self.history.get_mut(&victim).expect("a name kept");
            if kept.maps.is_empty() {
                break;
            }
            let oldest = kept.maps.remove(0);
            kept.forgot = true;
            self.bytes -= size(&oldest);
        }
    }

    /// Notes that what the map stored under `name` replaced is not known (a server that
    /// restarted loads its maps, not their history): an undo past it says so.
    pub fn forgotten(&mut self, name: &str) {
        self.forget(name);
        self.history.insert(
            name.to_string(),
            Kept {
                maps: Vec::new(),
                forgot: true,
            },
        );
    }

    /// Forgets what was kept for `name` (it was deleted, or replaced by an item that is not
    /// a newer map).
    pub fn forget(&mut self, name: &str) {
        if let Some(kept) = self.history.remove(name) {
            self.bytes -= kept.maps.iter().map(size).sum::<usize>();
        }
    }

    /// Takes the map that the failed put's map, stored under `name`, replaced.
    pub fn previous(&mut self, name: &str) -> Previous {
        let Some(kept) = self.history.get_mut(name) else {
            return Previous::Nothing;
        };
        let previous = match kept.maps.pop() {
            Some(map) => {
                self.bytes -= size(&map);
                Previous::Map(map)
            }
            None if kept.forgot => Previous::Forgotten,
            None => Previous::Nothing,
        };
        if kept.maps.is_empty() && !kept.forgot {
            self.history.remove(name);
        }
        previous
    }

    /// Forgets the map of the failed put of `order` where a newer map replaced it under
    /// `name`, so that undoing that newer put does not bring it back.
    pub fn drop_order(&mut self, name: &str, order: &Order) {
        if let Some(kept) = self.history.get_mut(name) {
            if let Some(at) = kept
                .maps
                .iter()
                .position(|m| m.map.order.as_ref() == Some(order))
            {
                let map = kept.maps.remove(at);
                self.bytes -= size(&map);
            }
        }
    }

    /// The maps kept for `name` older than `order`, oldest first.
    pub fn below(&self, name: &str, order: &Order) -> Vec<ShardMap> {
        self.history.get(name).map_or_else(Vec::new, |kept| {
            kept.maps
                .iter()
                .filter(|m| m.map.order.as_ref().is_some_and(|o| o < order))
                .map(|m| m.map.clone())
                .collect()
        })
    }

    /// Notes that the put of `order` was undone on `name`: a publish of its map still on its
    /// way (a put interrupted, its calls cancelled) must not land after the put's shards
    /// were deleted. Kept for [`UNDONE_KEEP`], at most [`UNDONE_KEPT`] (the first noted
    /// goes first).
    pub fn undone(&mut self, name: &str, order: &Order) {
        self.undone.note((name.to_string(), order.clone()), ());
    }

    /// Whether the put of `order` was undone on `name` ([`undone`](Self::undone)).
    pub fn was_undone(&self, name: &str, order: &Order) -> bool {
        self.undone.contains(&(name.to_string(), order.clone()))
    }

    /// Notes that the shard `name` (written once) was deleted: its put, cancelled after it
    /// sent its rows, may still land, after the cleanup that deleted it found nothing.
    /// Kept for [`UNDONE_KEEP`], at most [`DELETED_KEPT`] (the first noted goes first).
    pub fn deleted(&mut self, name: &str) {
        self.deleted.note(name.to_string(), ());
    }

    /// Whether the shard `name` was deleted ([`deleted`](Self::deleted)).
    pub fn was_deleted(&self, name: &str) -> bool {
        self.deleted.contains(&name.to_string())
    }

    #[cfg(test)]
    pub fn counts(&self, name: &str) -> (usize, usize, usize) {
        let kept = self.history.get(name).map_or(0, |k| k.maps.len());
        (kept, self.bytes, self.undone.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map of `order` whose JSON takes about `bytes` (its shard's location is long).
    fn map(order: u64, bytes: usize) -> KeptMap {
        let map = ShardMap {
            rows: 1,
            bytes: 0,
            shards: vec![crate::shards::Shard {
                name: "x.shard-0-of-1.vt".into(),
                rows: [0, 1],
                bytes: 0,
                locations: vec![format!("grpc://{}:1", "a".repeat(bytes))],
            }],
            order: Some((order, "t".into())),
        };
        let metadata =
            HashMap::from([(SHARDS_KEY.to_string(), serde_json::to_string(&map).unwrap())]);
        let schema = std::sync::Arc::new(arrow_schema::Schema::empty().with_metadata(metadata));
        KeptMap { schema, map }
    }

    #[test]
    fn the_maps_kept_take_at_most_history_bytes_and_an_undo_past_them_says_so() {
        let mut log = UndoLog::default();
        let big = HISTORY_BYTES / HISTORY_KEPT - 1024;
        for i in 0..HISTORY_KEPT as u64 + 1 {
            let name = format!("x{i}");
            log.replaced(&name, Some(&map(i + 1, 10).map), Some(map(i, big)));
        }
        let (_, bytes, _) = log.counts("x0");
        assert!(
            bytes <= HISTORY_BYTES && bytes > HISTORY_BYTES / 2,
            "{bytes}"
        );
        let forgotten = (0..=HISTORY_KEPT)
            .filter(|i| matches!(log.previous(&format!("x{i}")), Previous::Forgotten))
            .count();
        assert_eq!(forgotten, 1);
        // A map too large to keep is not kept, and its undo says so.
        log.replaced("y", Some(&map(2, 10).map), Some(map(1, HISTORY_BYTES)));
        assert!(matches!(log.previous("y"), Previous::Forgotten));
        assert_eq!(log.counts("y").1, 0);
    }
}
