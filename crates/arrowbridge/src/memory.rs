//! How much memory this process may still allocate, and allocations of computed sizes that
//! fail with [`Error::OutOfMemory`] instead of aborting the process.
//!
//! Rust aborts when an allocation fails, and the sizes a kernel or a decoder allocates come
//! from its inputs: `add` of shapes `(200000, 1)` and `(1, 200000)` asks for 320 GB, a
//! compressed IPC buffer may declare a terabyte. Every such allocation goes through here.

use std::mem::MaybeUninit;

use ndarray::{ArrayD, ArrayViewMutD, IxDyn};

use crate::error::{Error, Result};

/// Requests smaller than this skip the limit look-up (it reads `/proc`): they are checked by
/// the fallible reservation alone.
const LOOK_UP_LIMITS_FROM: u64 = 64 << 20;

/// Bytes this process may still allocate: the least of the machine's RAM, the headroom below
/// its address-space limit (`RLIMIT_AS`, what `ulimit -v` sets) and the headroom below its
/// cgroup's memory limit. `u64::MAX` where none is known.
pub fn allocation_limit() -> u64 {
    [
        physical_memory(),
        address_space_headroom(),
        cgroup_headroom(),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or(u64::MAX)
}

/// The machine's RAM (`MemTotal`), read once.
pub fn physical_memory() -> Option<u64> {
    static TOTAL: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *TOTAL.get_or_init(|| proc_kib("/proc/meminfo", "MemTotal:"))
}

/// The value in KiB of the line starting with `key` of a `/proc` file, in bytes.
fn proc_kib(file: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(file).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

#[cfg(unix)]
fn address_space_headroom() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one `rlimit` into the struct it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut limit) } != 0
        || limit.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let used = proc_kib("/proc/self/status", "VmSize:").unwrap_or(0);
    #[allow(clippy::useless_conversion)] // rlim_t is not u64 on every platform
    let limit = u64::try_from(limit.rlim_cur).ok()?;
    Some(limit.saturating_sub(used))
}

#[cfg(not(unix))]
fn address_space_headroom() -> Option<u64> {
    None
}

/// Headroom below the memory limit of this process's cgroup (v2, then v1).
fn cgroup_headroom() -> Option<u64> {
    let read =
        |path: &str| -> Option<u64> { std::fs::read_to_string(path).ok()?.trim().parse().ok() };
    let (max, current) = match read("/sys/fs/cgroup/memory.max") {
        Some(max) => (max, read("/sys/fs/cgroup/memory.current")),
        None => (
            read("/sys/fs/cgroup/memory/memory.limit_in_bytes")?,
            read("/sys/fs/cgroup/memory/memory.usage_in_bytes"),
        ),
    };
    Some(max.saturating_sub(current.unwrap_or(0)))
}

fn out_of_memory(what: &str, bytes: u64, reason: String) -> Error {
    Error::OutOfMemory {
        what: what.to_string(),
        bytes,
        reason,
    }
}

/// Checks that `bytes` more bytes can be allocated now: within [`allocation_limit`], and a
/// reservation of that size succeeds (it is released again at once; nothing is touched).
pub fn check_allocation(what: &str, bytes: u64) -> Result<()> {
    if bytes >= LOOK_UP_LIMITS_FROM {
        let limit = allocation_limit();
        if bytes > limit {
            return Err(out_of_memory(
                what,
                bytes,
                format!("this process may allocate at most {limit} more bytes"),
            ));
        }
    }
    let len = usize::try_from(bytes)
        .map_err(|_| out_of_memory(what, bytes, "more than the address space".into()))?;
    Vec::<u8>::new()
        .try_reserve_exact(len)
        .map_err(|e| out_of_memory(what, bytes, e.to_string()))
}

/// The number of elements of `shape` and their size in bytes as `T`, checked for overflow.
fn checked_size<T>(shape: &[usize], what: &str) -> Result<(usize, u64)> {
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| {
            out_of_memory(
                what,
                u64::MAX,
                format!("shape {shape:?} has more elements than the address space holds"),
            )
        })?;
    let bytes = (count as u64).saturating_mul(std::mem::size_of::<T>() as u64);
    Ok((count, bytes))
}

/// A vector with room for `count` elements, reserved fallibly.
fn try_vec<T>(count: usize, bytes: u64, what: &str) -> Result<Vec<T>> {
    if bytes >= LOOK_UP_LIMITS_FROM {
        check_allocation(what, bytes)?;
    }
    let mut vec = Vec::new();
    vec.try_reserve_exact(count)
        .map_err(|e| out_of_memory(what, bytes, e.to_string()))?;
    Ok(vec)
}

/// An array of `shape` filled with `value`, allocated fallibly.
pub fn try_full<T: Clone>(shape: &[usize], value: T, what: &str) -> Result<ArrayD<T>> {
    let (count, bytes) = checked_size::<T>(shape, what)?;
    let mut vec = try_vec(count, bytes, what)?;
    vec.resize(count, value);
    Ok(ArrayD::from_shape_vec(IxDyn(shape), vec).expect("the vector holds the shape's elements"))
}

/// An array of `shape`, allocated fallibly, whose elements `fill` writes through a C-ordered
/// view of uninitialized memory. `fill` is not called when the shape has no elements.
///
/// # Safety
/// `fill` must write every element of the view it is given.
pub unsafe fn try_build<T>(
    shape: &[usize],
    what: &str,
    fill: impl FnOnce(ArrayViewMutD<'_, MaybeUninit<T>>),
) -> Result<ArrayD<T>> {
    let (count, bytes) = checked_size::<T>(shape, what)?;
    let mut vec = try_vec::<T>(count, bytes, what)?;
    if count > 0 {
        let view = ArrayViewMutD::from_shape(IxDyn(shape), &mut vec.spare_capacity_mut()[..count])
            .expect("the spare capacity holds the shape's elements");
        fill(view);
        // SAFETY: the caller's `fill` initialized all `count` elements.
        unsafe { vec.set_len(count) };
    }
    Ok(ArrayD::from_shape_vec(IxDyn(shape), vec).expect("the vector holds the shape's elements"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_impossible_allocation_is_an_error_not_an_abort() {
        let err = try_full(&[200_000, 200_000], 0f64, "add").unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        assert!(err.to_string().contains("320000000000 bytes"), "{err}");
    }

    #[test]
    fn a_shape_whose_size_overflows_is_an_error() {
        let err = try_full(&[1 << 40, 1 << 40], 0u8, "x").unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
    }

    #[test]
    fn try_build_fills_in_c_order_and_skips_empty_shapes() {
        // SAFETY: the closure writes every element.
        let a = unsafe {
            try_build::<i32>(&[2, 3], "t", |mut v| {
                for (i, x) in v.iter_mut().enumerate() {
                    x.write(i as i32);
                }
            })
        }
        .unwrap();
        assert_eq!(a.as_slice().unwrap(), &[0, 1, 2, 3, 4, 5]);
        // SAFETY: an empty shape has nothing to write; `fill` is not called.
        let empty = unsafe { try_build::<f64>(&[1 << 40, 0], "t", |_| unreachable!()) }.unwrap();
        assert_eq!(empty.shape(), &[1 << 40, 0]);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn the_limit_is_below_the_machine_memory() {
        let total = physical_memory().expect("Linux reports MemTotal in /proc/meminfo");
        assert!(allocation_limit() <= total);
    }
}
