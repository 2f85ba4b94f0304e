//! Which strided layouts are one contiguous block, and in which axis order.

use smallvec::SmallVec;

/// A shape or axis order: up to four axes live inline, without a heap allocation.
pub type Dims = SmallVec<[usize; 4]>;

/// `0, 1, …, n - 1`: C order's axis order (copied from a table: collecting a range into a
/// SmallVec costs several times more).
pub(crate) fn c_order(n: usize) -> Dims {
    const AXES: [usize; 64] = {
        let mut axes = [0; 64];
        let mut i = 0;
        while i < 64 {
            axes[i] = i;
            i += 1;
        }
        axes
    };
    match AXES.get(..n) {
        Some(axes) => Dims::from_slice(axes),
        None => (0..n).collect(),
    }
}

/// Whether `order` is C order (`0, 1, …`).
pub(crate) fn is_c_order(order: &[usize]) -> bool {
    order.iter().enumerate().all(|(i, &a)| i == a)
}

/// The physical order of the axes of a strided array whose elements form one contiguous
/// block, outermost axis first; `None` when the elements are not one gap-free block (a step
/// slice, a negative stride, overlapping or broadcast axes).
///
/// `strides` are in bytes, as NumPy gives them. Axes of length 1 may have any stride and are
/// placed next to their logical neighbours, so a C-ordered array always gets the identity
/// order. An array with no elements is one (empty) block in logical order.
///
/// ```
/// use arrowbridge::block_order;
/// // C order: the identity.
/// assert_eq!(block_order(&[2, 3, 4], &[96, 32, 8], 8).unwrap().as_slice(), &[0, 1, 2]);
/// // Fortran order: axes reversed.
/// assert_eq!(block_order(&[2, 3, 4], &[8, 16, 48], 8).unwrap().as_slice(), &[2, 1, 0]);
/// // x[::2]: a gap between rows.
/// assert_eq!(block_order(&[2, 3], &[48, 8], 8), None);
/// ```
pub fn block_order(shape: &[usize], strides: &[isize], itemsize: usize) -> Option<Dims> {
    debug_assert_eq!(shape.len(), strides.len());
    if shape.contains(&0) || is_c_block(shape, strides, itemsize) {
        return Some(c_order(shape.len()));
    }
    let mut big: Dims = (0..shape.len()).filter(|&a| shape[a] > 1).collect();
    // Stable sort: among equal strides (impossible for a valid block) keep logical order.
    big.sort_by_key(|&a| std::cmp::Reverse(strides[a]));
    let mut expected = itemsize as isize;
    for &a in big.iter().rev() {
        if strides[a] != expected {
            return None;
        }
        expected = expected.checked_mul(shape[a] as isize)?;
    }
    // Put each length-1 axis right after the nearest preceding logical axis already placed.
    let mut order = big;
    for a in (0..shape.len()).filter(|&a| shape[a] <= 1) {
        let pos = order.iter().rposition(|&b| b < a).map_or(0, |p| p + 1);
        order.insert(pos, a);
    }
    Some(order)
}

/// Whether the strides are C order's (ignoring axes of length 1), checked without allocating.
fn is_c_block(shape: &[usize], strides: &[isize], itemsize: usize) -> bool {
    let mut expected = itemsize as isize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n > 1 {
            if s != expected {
                return false;
            }
            expected = match expected.checked_mul(n as isize) {
                Some(e) => e,
                None => return false,
            };
        }
    }
    true
}

/// The inverse of a permutation: `inverse(p)[p[i]] == i`.
pub(crate) fn inverse(perm: &[usize]) -> Dims {
    let mut inv: Dims = smallvec::smallvec![0; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p] = i;
    }
    inv
}

/// Whether `perm` holds each of `0..perm.len()` exactly once.
pub(crate) fn is_permutation(perm: &[usize]) -> bool {
    if perm.len() <= 64 {
        // The common case, without allocating: NumPy arrays have at most 64 axes.
        let mut seen = 0u64;
        return perm.iter().all(|&p| {
            let bit = 1u64.checked_shl(p as u32).unwrap_or(0);
            p < perm.len() && seen & bit == 0 && {
                seen |= bit;
                true
            }
        });
    }
    let mut seen = vec![false; perm.len()];
    perm.iter()
        .all(|&p| p < perm.len() && !std::mem::replace(&mut seen[p], true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c_strides(shape: &[usize], itemsize: usize) -> Vec<isize> {
        let mut s = vec![0isize; shape.len()];
        let mut acc = itemsize as isize;
        for i in (0..shape.len()).rev() {
            s[i] = acc;
            acc *= shape[i] as isize;
        }
        s
    }

    #[test]
    fn transposed_inner_axes_keep_axis_zero_outermost() {
        // x.transpose(0, 2, 1) of a C array of shape (2, 3, 4)
        let s = c_strides(&[2, 3, 4], 4);
        assert_eq!(
            block_order(&[2, 4, 3], &[s[0], s[2], s[1]], 4),
            Some(Dims::from_slice(&[0, 2, 1]))
        );
    }

    #[test]
    fn length_one_axes_do_not_break_c_order() {
        assert_eq!(
            block_order(&[1, 5, 1], &[999, 8, -7], 8),
            Some(Dims::from_slice(&[0, 1, 2]))
        );
        assert_eq!(
            block_order(&[3, 1], &[1, 24], 1),
            Some(Dims::from_slice(&[0, 1]))
        );
    }

    #[test]
    fn negative_and_broadcast_strides_are_not_blocks() {
        assert_eq!(block_order(&[4], &[-8], 8), None);
        assert_eq!(block_order(&[4, 3], &[0, 8], 8), None);
    }

    #[test]
    fn inverse_and_permutation_checks() {
        assert_eq!(inverse(&[2, 0, 1]).as_slice(), &[1, 2, 0]);
        assert!(is_permutation(&[1, 0, 2]));
        assert!(!is_permutation(&[1, 1, 2]));
        assert!(!is_permutation(&[0, 3]));
    }
}
