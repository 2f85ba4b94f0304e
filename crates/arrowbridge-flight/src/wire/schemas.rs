//! The schemas this process sent or received last, with their schema messages: a client or
//! server of many small calls sends and receives the same few schemas over and over, and
//! building a schema message, or checking and decoding one, costs as much as the rest of
//! landing a small message (an 8 KiB call spent about a tenth of its time on its two schema
//! messages, here and at the server).
//!
//! A message is reused only when its bytes are the ones checked before, so a cached schema
//! is exactly what checking and decoding those bytes again would give. Messages of more than
//! [`LARGEST`] bytes (schemas with large metadata) are not kept.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};

use arrow_flight::{FlightData, SchemaAsIpc};
use arrow_ipc::writer::IpcWriteOptions;
use arrow_schema::{Schema, SchemaRef};
use bytes::Bytes;

/// How many schemas each direction keeps (the most recently used).
const KEPT: usize = 32;

/// Largest schema message kept, in bytes.
const LARGEST: usize = 4096;

/// At most [`KEPT`] pairs, the most recently used last.
///
/// A cache never waits for its lock: a thread that finds it taken decodes (or encodes) for
/// itself. So calls on many threads never queue here, and a process forked while another
/// thread held the lock (which the child then never sees released) goes without the cache
/// instead of hanging.
struct Recent<K, V>(Mutex<VecDeque<(K, V)>>);

impl<K, V: Clone> Recent<K, V> {
    const fn new() -> Self {
        Recent(Mutex::new(VecDeque::new()))
    }

    /// The entries, unless another thread holds them.
    fn entries(&self) -> Option<MutexGuard<'_, VecDeque<(K, V)>>> {
        match self.0.try_lock() {
            Ok(entries) => Some(entries),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }

    /// The value of the first key `matches` accepts, now the most recently used.
    fn find(&self, matches: impl Fn(&K) -> bool) -> Option<V> {
        let mut entries = self.entries()?;
        let at = entries.iter().rposition(|(k, _)| matches(k))?;
        let entry = entries.remove(at)?;
        let value = entry.1.clone();
        entries.push_back(entry);
        Some(value)
    }

    fn keep(&self, key: K, value: V) {
        let Some(mut entries) = self.entries() else {
            return;
        };
        if entries.len() == KEPT {
            entries.pop_front();
        }
        entries.push_back((key, value));
    }
}

/// Schema messages received and checked: their bytes, their schema.
static RECEIVED: Recent<Bytes, SchemaRef> = Recent::new();

/// Schemas sent: the schema, the header of its message.
static SENT: Recent<SchemaRef, Bytes> = Recent::new();

/// The schema of the schema message `header`, checked and decoded by `decode` unless the
/// same bytes were before.
pub(crate) fn received<E>(
    header: &[u8],
    decode: impl FnOnce() -> Result<Schema, E>,
) -> Result<SchemaRef, E> {
    if let Some(schema) = RECEIVED.find(|bytes| bytes[..] == *header) {
        return Ok(schema);
    }
    let schema = Arc::new(decode()?);
    if header.len() <= LARGEST {
        // A copy: `header` may be a view of a large buffer, which a key must not keep alive.
        RECEIVED.keep(Bytes::copy_from_slice(header), schema.clone());
    }
    Ok(schema)
}

/// The schema message of `schema`.
pub(crate) fn message(schema: &Schema) -> FlightData {
    if let Some(header) = SENT.find(|sent| **sent == *schema) {
        return FlightData {
            data_header: header,
            ..FlightData::default()
        };
    }
    let data = FlightData::from(SchemaAsIpc::new(schema, &IpcWriteOptions::default()));
    if data.data_header.len() <= LARGEST {
        SENT.keep(Arc::new(schema.clone()), data.data_header.clone());
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{DataType, Field};
    use std::collections::HashMap;

    fn schema(rows: &str) -> Schema {
        Schema::new(vec![Field::new("x", DataType::Float64, false)])
            .with_metadata(HashMap::from([("rows".to_string(), rows.to_string())]))
    }

    fn decode(header: &[u8]) -> Result<Schema, String> {
        arrowbridge::ipc::check_message("test", header, &[], None).map_err(|e| e.to_string())?;
        arrowbridge::ipc::schema_of_message(header).ok_or_else(|| "no schema".to_string())
    }

    #[test]
    fn a_message_sent_again_has_the_same_bytes_and_decodes_to_its_schema() {
        for rows in ["1", "2", "1"] {
            let sent = message(&schema(rows));
            let fresh =
                FlightData::from(SchemaAsIpc::new(&schema(rows), &IpcWriteOptions::default()));
            assert_eq!(sent.data_header, fresh.data_header);
            let got = received(&sent.data_header, || decode(&sent.data_header)).unwrap();
            assert_eq!(*got, schema(rows));
        }
    }

    #[test]
    fn bad_bytes_are_refused_every_time() {
        let mut header = message(&schema("7")).data_header.to_vec();
        let last = header.len() - 1;
        header[last] ^= 0xff;
        for _ in 0..2 {
            let mut calls = 0;
            let refused = received(&header, || {
                calls += 1;
                Err::<Schema, _>("refused")
            });
            assert_eq!((refused.unwrap_err(), calls), ("refused", 1));
        }
    }

    #[test]
    fn the_same_bytes_find_their_schema_and_the_least_recently_used_goes_first() {
        let recent: Recent<Bytes, usize> = Recent::new();
        let key = |i: usize| Bytes::from(i.to_string());
        for i in 0..KEPT {
            recent.keep(key(i), i);
        }
        assert_eq!(recent.find(|k| *k == key(0)), Some(0)); // now the most recent
        recent.keep(key(KEPT), KEPT); // pushes out 1, the least recently used
        assert_eq!(recent.find(|k| *k == key(1)), None);
        assert_eq!(recent.find(|k| *k == key(0)), Some(0));
        assert_eq!(recent.find(|k| *k == key(KEPT)), Some(KEPT));
        assert_eq!(recent.0.lock().unwrap().len(), KEPT);
    }

    #[test]
    fn a_cache_held_elsewhere_is_passed_by_not_waited_for() {
        // As in a child forked while another thread held it: the lock is never released.
        let recent: Recent<Bytes, usize> = Recent::new();
        recent.keep(Bytes::from_static(b"k"), 1);
        let held = recent.0.lock().unwrap();
        assert_eq!(recent.find(|k| k == "k"), None);
        recent.keep(Bytes::from_static(b"j"), 2);
        drop(held);
        assert_eq!(recent.find(|k| k == "k"), Some(1));
        assert_eq!(recent.find(|k| k == "j"), None);
    }
}
