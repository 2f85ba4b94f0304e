//! The kernels every arrowbridge build carries.

use half::f16;
use ndarray::{linalg::Dot, Array2, ArrayD, ArrayView2, ArrayViewD, Axis, IxDyn, Zip};
use num_complex::Complex;

use super::{dtype_error, Kernel, Params};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::tensor::ArrowTensor;
use crate::view::DynView;

pub(super) fn kernels() -> Vec<Kernel> {
    vec![
        Kernel::new(
            "identity",
            "identity(*arrays) -> arrays, sharing their memory",
            identity,
        ),
        Kernel::new(
            "sum",
            "sum(x: numeric[...], axis: int | None = None) -> numeric[...]",
            sum,
        )
        .params(&["axis"])
        .arity(1),
        Kernel::new(
            "add",
            "add(a: numeric[...], b: numeric[...]) -> numeric[...] (broadcasting)",
            add,
        )
        .arity(2),
        Kernel::new(
            "matmul",
            "matmul(a: float[n, k], b: float[k, m]) -> float[n, m]",
            matmul,
        )
        .arity(2),
        Kernel::new(
            "normalize",
            "normalize(x: float[n, d]) -> float[n, d], each row scaled to unit L2 norm",
            normalize,
        )
        .arity(1),
    ]
}

/// Returns its inputs: the outputs share the inputs' memory.
fn identity(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    Ok(args.to_vec())
}

fn resolve_axis(axis: i64, ndim: usize, params: &Params) -> Result<usize> {
    let resolved = if axis < 0 { axis + ndim as i64 } else { axis };
    if (0..ndim as i64).contains(&resolved) {
        Ok(resolved as usize)
    } else {
        Err(params.error(
            "axis",
            format!("axis {axis} is out of bounds for an array of {ndim} dimension(s)"),
        ))
    }
}

/// Folds `view` over `axis` (all axes when `None`) into the accumulator type `A`, as NumPy
/// sums: integers widen to 64 bits and wrap, float16 accumulates in float32.
fn reduce<T: Copy, A: Copy + 'static>(
    view: &ArrayViewD<'_, T>,
    axis: Option<usize>,
    zero: A,
    add: impl Fn(A, T) -> A + Copy,
) -> ArrayD<A> {
    match axis {
        None => ArrayD::from_elem(IxDyn(&[]), view.fold(zero, |acc, &v| add(acc, v))),
        Some(axis) => view.fold_axis(Axis(axis), zero, |&acc, &v| add(acc, v)),
    }
}

fn sum(args: &[ArrowTensor], params: &Params) -> Result<Vec<ArrowTensor>> {
    let x = &args[0];
    let axis = params
        .int("axis")?
        .map(|a| resolve_axis(a, x.shape().len(), params))
        .transpose()?;
    let int = |v: ArrayD<i64>| ArrowTensor::from_array(v);
    let uint = |v: ArrayD<u64>| ArrowTensor::from_array(v);
    let out = match x.dyn_view() {
        DynView::Bool(v) => int(reduce(&v, axis, 0i64, |a, b| a + i64::from(b != 0))),
        DynView::Int8(v) => int(reduce(&v, axis, 0i64, |a, b| a.wrapping_add(b.into()))),
        DynView::Int16(v) => int(reduce(&v, axis, 0i64, |a, b| a.wrapping_add(b.into()))),
        DynView::Int32(v) => int(reduce(&v, axis, 0i64, |a, b| a.wrapping_add(b.into()))),
        DynView::Int64(v) => int(reduce(&v, axis, 0i64, i64::wrapping_add)),
        DynView::UInt8(v) => uint(reduce(&v, axis, 0u64, |a, b| a.wrapping_add(b.into()))),
        DynView::UInt16(v) => uint(reduce(&v, axis, 0u64, |a, b| a.wrapping_add(b.into()))),
        DynView::UInt32(v) => uint(reduce(&v, axis, 0u64, |a, b| a.wrapping_add(b.into()))),
        DynView::UInt64(v) => uint(reduce(&v, axis, 0u64, u64::wrapping_add)),
        DynView::Float16(v) => ArrowTensor::from_array(
            reduce(&v, axis, 0f32, |a, b| a + f32::from(b)).mapv(f16::from_f32),
        ),
        DynView::Float32(v) => ArrowTensor::from_array(match axis {
            None => ArrayD::from_elem(IxDyn(&[]), v.sum()),
            Some(a) => v.sum_axis(Axis(a)),
        }),
        DynView::Float64(v) => ArrowTensor::from_array(match axis {
            None => ArrayD::from_elem(IxDyn(&[]), v.sum()),
            Some(a) => v.sum_axis(Axis(a)),
        }),
        DynView::Complex64(v) => {
            ArrowTensor::from_array(reduce(&v, axis, Complex::new(0f32, 0.0), |a, b| a + b))
        }
        DynView::Complex128(v) => {
            ArrowTensor::from_array(reduce(&v, axis, Complex::new(0f64, 0.0), |a, b| a + b))
        }
        DynView::Timedelta64(v, unit) => ArrowTensor::from_array_as(
            reduce(&v, axis, 0i64, i64::wrapping_add),
            DType::Timedelta64(unit),
        )?,
        DynView::Datetime64(..) => {
            return Err(dtype_error("sum", 0, "a numeric or timedelta64 dtype", x))
        }
    };
    Ok(vec![out])
}

/// The shape two arrays broadcast to, as NumPy defines it.
fn broadcast_shape(a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let dim = |s: &[usize], i: usize| {
        if i + s.len() < n {
            1
        } else {
            s[i + s.len() - n]
        }
    };
    (0..n)
        .map(|i| match (dim(a, i), dim(b, i)) {
            (x, y) if x == y || y == 1 => Ok(x),
            (1, y) => Ok(y),
            _ => Err(Error::shape(
                "kernel \"add\"",
                format!("shapes {a:?} and {b:?} do not broadcast"),
            )),
        })
        .collect()
}

fn zip_with<T: Copy, U: Copy>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    f: impl Fn(T, T) -> U,
) -> Result<ArrayD<U>> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let a = a.broadcast(IxDyn(&shape)).expect("shape is a's broadcast");
    let b = b.broadcast(IxDyn(&shape)).expect("shape is b's broadcast");
    Ok(Zip::from(&a).and(&b).map_collect(|&x, &y| f(x, y)))
}

fn add(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    let (a, b) = (&args[0], &args[1]);
    if a.dtype() != b.dtype() {
        return Err(dtype_error("add", 1, &a.dtype().name(), b));
    }
    macro_rules! wrapping {
        ($x:expr, $y:expr) => {
            ArrowTensor::from_array(zip_with(&$x, &$y, |p, q| p.wrapping_add(q))?)
        };
    }
    macro_rules! plain {
        ($x:expr, $y:expr) => {
            ArrowTensor::from_array(zip_with(&$x, &$y, |p, q| p + q)?)
        };
    }
    let out = match (a.dyn_view(), b.dyn_view()) {
        (DynView::Int8(x), DynView::Int8(y)) => wrapping!(x, y),
        (DynView::Int16(x), DynView::Int16(y)) => wrapping!(x, y),
        (DynView::Int32(x), DynView::Int32(y)) => wrapping!(x, y),
        (DynView::Int64(x), DynView::Int64(y)) => wrapping!(x, y),
        (DynView::UInt8(x), DynView::UInt8(y)) => wrapping!(x, y),
        (DynView::UInt16(x), DynView::UInt16(y)) => wrapping!(x, y),
        (DynView::UInt32(x), DynView::UInt32(y)) => wrapping!(x, y),
        (DynView::UInt64(x), DynView::UInt64(y)) => wrapping!(x, y),
        (DynView::Float16(x), DynView::Float16(y)) => plain!(x, y),
        (DynView::Float32(x), DynView::Float32(y)) => plain!(x, y),
        (DynView::Float64(x), DynView::Float64(y)) => plain!(x, y),
        (DynView::Complex64(x), DynView::Complex64(y)) => plain!(x, y),
        (DynView::Complex128(x), DynView::Complex128(y)) => plain!(x, y),
        (DynView::Timedelta64(x, u), DynView::Timedelta64(y, _)) => {
            ArrowTensor::from_array_as(zip_with(&x, &y, i64::wrapping_add)?, DType::Timedelta64(u))?
        }
        _ => return Err(dtype_error("add", 0, "a numeric or timedelta64 dtype", a)),
    };
    Ok(vec![out])
}

fn matrix<'a, T>(x: ArrayViewD<'a, T>, kernel: &str, arg: usize) -> Result<ArrayView2<'a, T>> {
    let shape = x.shape().to_vec();
    x.into_dimensionality().map_err(|_| {
        Error::shape(
            format!("kernel {kernel:?}"),
            format!("argument {arg} must be 2-D, got shape {shape:?}"),
        )
    })
}

fn matmul(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    fn product<T>(a: ArrayView2<'_, T>, b: ArrayView2<'_, T>) -> Result<ArrowTensor>
    where
        T: crate::Element + ndarray::LinalgScalar,
        for<'x, 'y> ArrayView2<'x, T>: Dot<ArrayView2<'y, T>, Output = Array2<T>>,
    {
        if a.ncols() != b.nrows() {
            return Err(Error::shape(
                "kernel \"matmul\"",
                format!(
                    "shapes {:?} and {:?} are not aligned: {} (dim 1) != {} (dim 0)",
                    a.shape(),
                    b.shape(),
                    a.ncols(),
                    b.nrows()
                ),
            ));
        }
        Ok(ArrowTensor::from_array(a.dot(&b).into_dyn()))
    }
    let (a, b) = (&args[0], &args[1]);
    let out = match (a.dyn_view(), b.dyn_view()) {
        (DynView::Float32(x), DynView::Float32(y)) => {
            product(matrix(x, "matmul", 0)?, matrix(y, "matmul", 1)?)?
        }
        (DynView::Float64(x), DynView::Float64(y)) => {
            product(matrix(x, "matmul", 0)?, matrix(y, "matmul", 1)?)?
        }
        (DynView::Float32(_) | DynView::Float64(_), _) => {
            return Err(dtype_error("matmul", 1, &a.dtype().name(), b))
        }
        _ => return Err(dtype_error("matmul", 0, "float32 or float64", a)),
    };
    Ok(vec![out])
}

fn normalize(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    fn rows<T: ndarray::NdFloat + crate::Element>(x: ArrayView2<'_, T>) -> ArrowTensor {
        let mut out = x.to_owned();
        for mut row in out.rows_mut() {
            let norm = row.dot(&row).sqrt();
            if norm > T::zero() {
                row.mapv_inplace(|v| v / norm);
            }
        }
        ArrowTensor::from_array(out.into_dyn())
    }
    let x = &args[0];
    let out = match x.dyn_view() {
        DynView::Float32(v) => rows(matrix(v, "normalize", 0)?),
        DynView::Float64(v) => rows(matrix(v, "normalize", 0)?),
        _ => return Err(dtype_error("normalize", 0, "float32 or float64", x)),
    };
    Ok(vec![out])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::{Param, Registry};
    use ndarray::array;

    fn run(
        name: &str,
        args: Vec<ArrowTensor>,
        params: Vec<(&str, Param)>,
    ) -> Result<Vec<ArrowTensor>> {
        let params = Params::new(params.into_iter().map(|(k, v)| (k.to_string(), v)));
        Registry::with_builtins().call(name, &args, params)
    }

    #[test]
    fn identity_shares_memory() {
        let x = ArrowTensor::from_array(array![[1i32, 2], [3, 4]].into_dyn());
        let out = run("identity", vec![x.clone()], vec![]).unwrap();
        assert_eq!(out[0].data_ptr(), x.data_ptr());
    }

    #[test]
    fn sum_widens_integers_and_reduces_an_axis() {
        let x = ArrowTensor::from_array(array![[100i8, 100], [100, 100]].into_dyn());
        let all = run("sum", vec![x.clone()], vec![]).unwrap();
        assert_eq!(all[0].view::<i64>().unwrap().into_iter().next(), Some(&400));
        let cols = run("sum", vec![x], vec![("axis", Param::Int(-2))]).unwrap();
        assert_eq!(
            cols[0].view::<i64>().unwrap().to_owned(),
            array![200i64, 200].into_dyn()
        );
    }

    #[test]
    fn sum_rejects_an_axis_out_of_bounds() {
        let x = ArrowTensor::from_array(array![1.0f64, 2.0].into_dyn());
        let err = run("sum", vec![x], vec![("axis", Param::Int(1))]).unwrap_err();
        assert!(err.to_string().contains("axis 1 is out of bounds"), "{err}");
    }

    #[test]
    fn add_broadcasts_and_checks_dtypes() {
        let a = ArrowTensor::from_array(array![[1.0f32, 2.0], [3.0, 4.0]].into_dyn());
        let b = ArrowTensor::from_array(array![10.0f32, 20.0].into_dyn());
        let out = run("add", vec![a.clone(), b], vec![]).unwrap();
        assert_eq!(
            out[0].view::<f32>().unwrap().to_owned(),
            array![[11.0f32, 22.0], [13.0, 24.0]].into_dyn()
        );
        let c = ArrowTensor::from_array(array![1.0f64, 2.0].into_dyn());
        assert!(matches!(
            run("add", vec![a, c], vec![]),
            Err(Error::DType { .. })
        ));
    }

    #[test]
    fn matmul_multiplies_and_names_mismatched_shapes() {
        let a = ArrowTensor::from_array(array![[1.0f64, 2.0], [3.0, 4.0]].into_dyn());
        let out = run("matmul", vec![a.clone(), a.clone()], vec![]).unwrap();
        assert_eq!(
            out[0].view::<f64>().unwrap().to_owned(),
            array![[7.0, 10.0], [15.0, 22.0]].into_dyn()
        );
        let b = ArrowTensor::from_array(array![[1.0f64, 2.0, 3.0]].into_dyn());
        let err = run("matmul", vec![a, b], vec![]).unwrap_err();
        assert!(err.to_string().contains("not aligned"), "{err}");
    }

    #[test]
    fn normalize_gives_unit_rows_and_keeps_zero_rows() {
        let x = ArrowTensor::from_array(array![[3.0f64, 4.0], [0.0, 0.0]].into_dyn());
        let out = run("normalize", vec![x], vec![]).unwrap();
        assert_eq!(
            out[0].view::<f64>().unwrap().to_owned(),
            array![[0.6, 0.8], [0.0, 0.0]].into_dyn()
        );
    }

    #[test]
    fn registry_reports_unknown_kernels_parameters_and_arity() {
        let x = ArrowTensor::from_array(array![1.0f64].into_dyn());
        assert!(matches!(
            run("nope", vec![x.clone()], vec![]),
            Err(Error::UnknownKernel { .. })
        ));
        assert!(matches!(
            run("sum", vec![x.clone()], vec![("axes", Param::Int(0))]),
            Err(Error::Param { .. })
        ));
        assert!(matches!(
            run("add", vec![x], vec![]),
            Err(Error::Kernel { .. })
        ));
    }

    #[test]
    fn a_panicking_kernel_becomes_an_error() {
        fn boom(_: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
            panic!("boom")
        }
        let mut registry = Registry::new();
        registry
            .register(Kernel::new("boom", "boom(x)", boom))
            .unwrap();
        let x = ArrowTensor::from_array(array![1u8].into_dyn());
        let err = registry.call("boom", &[x], Params::default()).unwrap_err();
        assert!(err.to_string().contains("panicked: boom"), "{err}");
    }
}
