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
