//! What may name a stored item: a name is also a file name in a data directory.

use crate::error::{FlightServerError, Result};

/// Whether `name` can name a stored item (and its file).
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(FlightServerError::BadRequest(format!(
            "name {name:?}: use 1-200 letters, digits, '_', '-' or '.', not starting with '.'"
        )))
    }
}

/// Whether `name` is one a cluster stores a shard under (`x.shard-0-of-2.v1f3a…`) or a Ray
/// Data write a part (`x.part-3.v1f3a…`): a marker `.shard-<i>-of-<n>` or `.part-<i>`
/// followed by a version `.v<hex>`. Such items are written once: a map names them, so a
/// second put under the name would change the rows of an item readers trust.
pub fn is_written_once(name: &str) -> bool {
    let Some((marked, version)) = name.rsplit_once(".v") else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let hex = !version.is_empty() && version.bytes().all(|b| b.is_ascii_hexdigit());
    let Some((_, marker)) = marked.rsplit_once('.') else {
        return false;
    };
    let shard = marker
        .strip_prefix("shard-")
        .and_then(|rest| rest.split_once("-of-"))
        .is_some_and(|(i, n)| digits(i) && digits(n));
    let part = marker.strip_prefix("part-").is_some_and(digits);
    hex && (shard || part)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_and_part_names_of_a_version_are_written_once() {
        for name in [
            "x.shard-0-of-2.v1f3a",
            "a.b.shard-12-of-40.vABCDEF",
            "x.part-3.v00",
        ] {
            assert!(is_written_once(name), "{name}");
        }
        for name in [
            "x",
            "x.shard-0-of-2",
            "x.shard-0-of-2.vxyz",
            "x.shard-a-of-2.v1",
            "x.part-.v1",
            "x.v1",
            "shard-0-of-2.v1",
        ] {
            assert!(!is_written_once(name), "{name}");
        }
    }
}
