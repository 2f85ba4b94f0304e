//! Values that belong to the process that made them.
//!
//! A stream or a put under way holds the parent's connection. In a process forked from it
//! the connection's runtime threads do not exist and its socket is shared with the parent:
//! reading it would steal the parent's bytes (breaking both), and dropping it could block
//! on a lock a parent thread held at the fork. So a forked child gets a clear error instead,
//! and leaves the value alone when it drops it.

use std::mem::ManuallyDrop;

use arrowbridge_pyo3::internal::python_error;
use arrowbridge_pyo3::BridgeResult;
use pyo3::exceptions as builtin;

/// `T`, usable and dropped only in the process that made it.
pub(crate) struct ForkBound<T> {
    pid: u32,
    value: ManuallyDrop<T>,
}

impl<T> ForkBound<T> {
    pub(crate) fn new(value: T) -> Self {
        ForkBound {
            pid: std::process::id(),
            value: ManuallyDrop::new(value),
        }
    }

    /// The value, or (in a forked child) a `FlightCallError` saying that `what` belongs to
    /// the parent.
    pub(crate) fn get(&self, what: &str) -> BridgeResult<&T> {
        self.here().ok_or_else(|| {
            let message = format!(
                "{what} was opened in process {}, which forked this one; its connection \
                 belongs to that process, so it cannot be used here: open it again in this \
                 process (a client reconnects by itself in a forked child)",
                self.pid
            );
            python_error::<builtin::PyRuntimeError, _>("FlightCallError", (message,)).into()
        })
    }

    /// The value, in the process that made it.
    pub(crate) fn here(&self) -> Option<&T> {
        (std::process::id() == self.pid).then_some(&*self.value)
    }
}

impl<T> Drop for ForkBound<T> {
    fn drop(&mut self) {
        if std::process::id() == self.pid {
            // SAFETY: dropped once, here; the value is not used after.
            unsafe { ManuallyDrop::drop(&mut self.value) }
        }
    }
}
