//! Built-in kernels over ragged data (`arrow.variable_shape_tensor`).
//!
//! A ragged kernel ([`Kernel::ragged`]) receives its first argument in the row-splits form:
//! `args[0]` the values of every row, one after another (each row in C order of its logical
//! shape), `args[1]` the rows' shapes as an `(n, ndim)` integer array.
//! [`RaggedTensor::from_kernel_args`] gives the rows back as views, without a copy.

use half::f16;
use ndarray::{ArrayD, Axis, IxDyn, Slice};
use num_complex::Complex;

use super::{Distribution, Kernel, Params};
use crate::dtype::{DType, Element};
use crate::error::{Error, Result};
use crate::memory::try_full;
use crate::ragged::{RaggedMetadata, RaggedTensor};
use crate::tensor::ArrowTensor;

pub(super) fn kernels() -> Vec<Kernel> {
    vec![
        Kernel::new(
            "ragged_sum",
            "ragged_sum(x: ragged numeric) -> numeric[n], the sum of each row",
            ragged_sum,
        )
        .ragged()
        .arity(2)
        // One sum per row: over batches of rows, the results are the rows' results in order.
        .distribution(Distribution::Rows),
        Kernel::new(
            "pad",
            "pad(x: ragged any) -> (any[n, *max_shape], bool[n, *max_shape]): rows zero-padded to the largest size of each axis, and a mask of the values that are data",
            pad,
        )
        .ragged()
        .arity(2),
    ]
}

impl RaggedTensor {
    /// The ragged argument of a ragged kernel, from its row-splits form (see the
    /// [module](crate::kernels) documentation): `values` viewed, `shapes` (int32 or int64,
    /// `(n, ndim)`) read.
    pub fn from_kernel_args(values: &ArrowTensor, shapes: &ArrowTensor) -> Result<Self> {
        let [_, ndim] = shapes.shape() else {
            return Err(Error::shape(
                "ragged argument",
                format!("shapes of shape {:?}; (n, ndim) expected", shapes.shape()),
            ));
        };
        let flat: Vec<i64> = match shapes.dtype() {
            DType::Int32 => shapes
                .view::<i32>()?
                .iter()
                .map(|&d| i64::from(d))
                .collect(),
            DType::Int64 => shapes.view::<i64>()?.iter().copied().collect(),
            other => {
                return Err(Error::Mismatch {
                    what: "ragged argument's shapes".into(),
                    expected: "int32 or int64".into(),
                    got: other.name(),
                })
            }
        };
        let values = values.reshaped(&[values.len()])?;
        Self::from_parts(values, &flat, *ndim, RaggedMetadata::default())
    }

    /// The row-splits form a ragged kernel receives: `[values, shapes]`, each row in its
    /// logical C order (rows with a permutation are copied into it first).
    pub fn to_kernel_args(&self) -> Result<[ArrowTensor; 2]> {
        let logical = self.to_logical_order()?;
        Ok([logical.values_tensor()?, logical.shapes_tensor()?])
    }
}

fn ragged_arg(args: &[ArrowTensor]) -> Result<RaggedTensor> {
    RaggedTensor::from_kernel_args(&args[0], &args[1])
}

/// Sums each row into `A`, as NumPy's sum does (integers widen to 64 bits and wrap).
fn row_sums<T: Element, A: Copy + Element>(
    x: &RaggedTensor,
    zero: A,
    add: impl Fn(A, T) -> A,
) -> Result<ArrowTensor> {
    let sums: Vec<A> = x
        .rows::<T>()?
        .map(|row| row.iter().fold(zero, |acc, &v| add(acc, v)))
        .collect();
    let n = sums.len();
    Ok(ArrowTensor::from_array(
        ArrayD::from_shape_vec(IxDyn(&[n]), sums).expect("one sum per row"),
    ))
}

fn ragged_sum(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    let x = ragged_arg(args)?;
    let out = match x.dtype() {
        DType::Bool => row_sums(&x, 0i64, |a, b: u8| a + i64::from(b != 0))?,
        DType::Int8 => row_sums(&x, 0i64, |a, b: i8| a.wrapping_add(b.into()))?,
        DType::Int16 => row_sums(&x, 0i64, |a, b: i16| a.wrapping_add(b.into()))?,
        DType::Int32 => row_sums(&x, 0i64, |a, b: i32| a.wrapping_add(b.into()))?,
        DType::Int64 => row_sums(&x, 0i64, i64::wrapping_add)?,
        DType::UInt8 => row_sums(&x, 0u64, |a, b: u8| a.wrapping_add(b.into()))?,
        DType::UInt16 => row_sums(&x, 0u64, |a, b: u16| a.wrapping_add(b.into()))?,
        DType::UInt32 => row_sums(&x, 0u64, |a, b: u32| a.wrapping_add(b.into()))?,
        DType::UInt64 => row_sums(&x, 0u64, u64::wrapping_add)?,
        DType::Float16 => {
            let sums = row_sums(&x, 0f32, |a, b: f16| a + f32::from(b))?;
            ArrowTensor::from_array(sums.view::<f32>()?.mapv(f16::from_f32))
        }
        DType::Float32 => ArrowTensor::from_array(
            ndarray::Array1::from_iter(x.rows::<f32>()?.map(|r| r.sum())).into_dyn(),
        ),
        DType::Float64 => ArrowTensor::from_array(
            ndarray::Array1::from_iter(x.rows::<f64>()?.map(|r| r.sum())).into_dyn(),
        ),
        DType::Complex64 => row_sums(&x, Complex::new(0f32, 0.0), |a, b: Complex<f32>| a + b)?,
        DType::Complex128 => row_sums(&x, Complex::new(0f64, 0.0), |a, b: Complex<f64>| a + b)?,
        other => {
            return Err(Error::DType {
                kernel: "ragged_sum".into(),
                arg: 0,
                expected: "a numeric dtype".into(),
                got: other.name(),
            })
        }
    };
    Ok(vec![out])
}

/// Copies each row of `x`, its elements seen as `E` (an element type that accepts its dtype),
/// into the leading corner of its slot of a zero-filled `(n, *max_shape)` array.
fn pad_as<E: Element + Default>(x: &RaggedTensor, dtype: DType) -> Result<[ArrowTensor; 2]> {
    let mut shape = vec![x.len()];
    shape.extend(x.max_shape());
    let mut out = try_full(&shape, E::default(), "pad")?;
    let mut mask = try_full(&shape, 0u8, "pad")?;
    for i in 0..x.len() {
        let row_shape = x.row_shape(i);
        let row = x.row_tensor(i)?;
        let view = row.view::<E>()?;
        let corner = |ax: ndarray::AxisDescription| Slice::from(0..row_shape[ax.axis.index()]);
        let mut slot = out.index_axis_mut(Axis(0), i);
        slot.slice_each_axis_inplace(corner);
        slot.assign(&view);
        let mut m = mask.index_axis_mut(Axis(0), i);
        m.slice_each_axis_inplace(corner);
        m.fill(1);
    }
    Ok([
        ArrowTensor::from_array_as(out, dtype)?,
        ArrowTensor::from_array_as(mask, DType::Bool)?,
    ])
}

fn pad(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    let x = ragged_arg(args)?;
    let dtype = x.dtype();
    let [out, mask] = match dtype {
        DType::Bool | DType::UInt8 => pad_as::<u8>(&x, dtype)?,
        DType::Int8 => pad_as::<i8>(&x, dtype)?,
        DType::Int16 => pad_as::<i16>(&x, dtype)?,
        DType::UInt16 => pad_as::<u16>(&x, dtype)?,
        DType::Float16 => pad_as::<f16>(&x, dtype)?,
        DType::Int32 => pad_as::<i32>(&x, dtype)?,
        DType::UInt32 => pad_as::<u32>(&x, dtype)?,
        DType::Float32 => pad_as::<f32>(&x, dtype)?,
        DType::Int64 | DType::Datetime64(_) | DType::Timedelta64(_) => pad_as::<i64>(&x, dtype)?,
        DType::UInt64 => pad_as::<u64>(&x, dtype)?,
        DType::Float64 => pad_as::<f64>(&x, dtype)?,
        DType::Complex64 => pad_as::<Complex<f32>>(&x, dtype)?,
        DType::Complex128 => pad_as::<Complex<f64>>(&x, dtype)?,
    };
    Ok(vec![out, mask])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Registry;
    use ndarray::array;

    fn args(r: &RaggedTensor) -> Vec<ArrowTensor> {
        r.to_kernel_args().unwrap().to_vec()
    }

    #[test]
    fn ragged_sum_sums_each_row() {
        let r = RaggedTensor::from_arrays(vec![
            array![[1i32, 2], [3, 4]].into_dyn(),
            array![[5i32]].into_dyn(),
            ArrayD::<i32>::zeros(IxDyn(&[0, 3])),
        ])
        .unwrap();
        let out = Registry::with_builtins()
            .call("ragged_sum", &args(&r), Params::default())
            .unwrap();
        assert_eq!(
            out[0].view::<i64>().unwrap(),
            array![10i64, 5, 0].into_dyn()
        );
    }

    #[test]
    fn pad_fills_a_dense_batch_and_a_mask() {
        let values =
            ArrowTensor::from_array(ndarray::Array1::from_iter((1..=10).map(f64::from)).into_dyn());
        // Rows of physical shapes [2, 3] and [1, 4], seen transposed: [3, 2] and [4, 1].
        let r = RaggedTensor::from_parts(
            values,
            &[2, 3, 1, 4],
            2,
            RaggedMetadata {
                permutation: Some(vec![1, 0]),
                ..Default::default()
            },
        )
        .unwrap();
        let out = Registry::with_builtins()
            .call("pad", &args(&r), Params::default())
            .unwrap();
        let dense = out[0].view::<f64>().unwrap();
        assert_eq!(dense.shape(), &[2, 4, 2]);
        assert_eq!(
            dense.index_axis(Axis(0), 0),
            array![[1.0, 4.0], [2.0, 5.0], [3.0, 6.0], [0.0, 0.0]].into_dyn()
        );
        assert_eq!(
            dense.index_axis(Axis(0), 1),
            array![[7.0, 0.0], [8.0, 0.0], [9.0, 0.0], [10.0, 0.0]].into_dyn()
        );
        assert_eq!(out[1].dtype(), DType::Bool);
        assert_eq!(
            out[1]
                .view::<u8>()
                .unwrap()
                .iter()
                .filter(|&&m| m == 1)
                .count(),
            10
        );
    }
}
