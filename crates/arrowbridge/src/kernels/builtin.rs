//! The kernels every arrowbridge build carries.

use half::f16;
use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayD, ArrayView2, ArrayViewD, Axis, Ix2, IxDyn, Zip};
use num_complex::Complex;

use super::{dtype_error, Combine, Distribution, Kernel, Params};
use crate::dtype::DType;
use crate::error::{Error, Result};
use crate::memory::{try_build, try_full};
use crate::tensor::ArrowTensor;
use crate::view::DynView;

pub(super) fn kernels() -> Vec<Kernel> {
    vec![
        Kernel::new(
            "identity",
            "identity(*arrays) -> arrays, sharing their memory",
            identity,
        )
        .constant_time()
        .distribution(Distribution::Rows),
        Kernel::new(
            "sum",
            "sum(x: numeric[...], axis: int | None = None) -> numeric[...]",
            sum,
        )
        .params(&["axis"])
        .arity(1)
        .distribution(Distribution::Reduce {
            combine: Combine::Sum,
            axis: Some("axis"),
        }),
        Kernel::new(
            "add",
            "add(a: numeric[...], b: numeric[...]) -> numeric[...] (broadcasting)",
            add,
        )
        .arity(2)
        .distribution(Distribution::Rows),
        Kernel::new(
            "matmul",
            "matmul(a: float[n, k], b: float[k, m]) -> float[n, m]",
            matmul,
        )
        .arity(2)
        .distribution(Distribution::Rows),
        Kernel::new(
            "normalize",
            "normalize(x: float[n, d]) -> float[n, d], each row scaled to unit L2 norm",
            normalize,
        )
        .arity(1)
        .distribution(Distribution::Rows),
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

/// The shape left when `axis` is summed away (`None`: all axes, a scalar).
fn reduced_shape(shape: &[usize], axis: Option<usize>) -> Vec<usize> {
    match axis {
        None => Vec::new(),
        Some(axis) => [&shape[..axis], &shape[axis + 1..]].concat(),
    }
}

/// Folds `view` over `axis` (all axes when `None`) into the accumulator type `A`, as NumPy
/// sums: integers widen to 64 bits and wrap, float16 accumulates in float32. An empty input
/// costs nothing whatever its shape: its result is `zero` everywhere, allocated fallibly.
fn reduce<T: Copy, A: Copy + 'static>(
    view: &ArrayViewD<'_, T>,
    axis: Option<usize>,
    zero: A,
    add: impl Fn(A, T) -> A + Copy,
) -> Result<ArrayD<A>> {
    if view.is_empty() {
        return try_full(&reduced_shape(view.shape(), axis), zero, "sum");
    }
    Ok(match axis {
        None => ArrayD::from_elem(IxDyn(&[]), view.fold(zero, |acc, &v| add(acc, v))),
        Some(axis) => view.fold_axis(Axis(axis), zero, |&acc, &v| add(acc, v)),
    })
}

/// Sums a float array with ndarray's pairwise summation (as NumPy's is pairwise).
fn float_sum<T: ndarray::NdFloat>(
    view: &ArrayViewD<'_, T>,
    axis: Option<usize>,
) -> Result<ArrayD<T>> {
    if view.is_empty() {
        return try_full(&reduced_shape(view.shape(), axis), T::zero(), "sum");
    }
    Ok(match axis {
        None => ArrayD::from_elem(IxDyn(&[]), view.sum()),
        Some(a) => view.sum_axis(Axis(a)),
    })
}

/// NumPy's not-a-time: the smallest i64, which every datetime/timedelta operation propagates.
const NAT: i64 = i64::MIN;

/// Adds timedeltas as NumPy does: NaT in, NaT out; otherwise wrapping.
fn add_timedelta(a: i64, b: i64) -> i64 {
    if a == NAT || b == NAT {
        NAT
    } else {
        a.wrapping_add(b)
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
        DynView::Bool(v) => int(reduce(&v, axis, 0i64, |a, b| a + i64::from(b != 0))?),
        DynView::Int8(v) => int(reduce(&v, axis, 0i64, |a, b| a.wrapping_add(b.into()))?),
        DynView::Int16(v) => int(reduce(&v, axis, 0i64, |a, b| a.wrapping_add(b.into()))?),
        DynView::Int32(v) => int(reduce(&v, axis, 0i64, |a, b| a.wrapping_add(b.into()))?),
        DynView::Int64(v) => int(reduce(&v, axis, 0i64, i64::wrapping_add)?),
        DynView::UInt8(v) => uint(reduce(&v, axis, 0u64, |a, b| a.wrapping_add(b.into()))?),
        DynView::UInt16(v) => uint(reduce(&v, axis, 0u64, |a, b| a.wrapping_add(b.into()))?),
        DynView::UInt32(v) => uint(reduce(&v, axis, 0u64, |a, b| a.wrapping_add(b.into()))?),
        DynView::UInt64(v) => uint(reduce(&v, axis, 0u64, u64::wrapping_add)?),
        DynView::Float16(v) => ArrowTensor::from_array(
            reduce(&v, axis, 0f32, |a, b| a + f32::from(b))?.mapv(f16::from_f32),
        ),
        DynView::Float32(v) => ArrowTensor::from_array(float_sum(&v, axis)?),
        DynView::Float64(v) => ArrowTensor::from_array(float_sum(&v, axis)?),
        DynView::Complex64(v) => {
            ArrowTensor::from_array(reduce(&v, axis, Complex::new(0f32, 0.0), |a, b| a + b)?)
        }
        DynView::Complex128(v) => {
            ArrowTensor::from_array(reduce(&v, axis, Complex::new(0f64, 0.0), |a, b| a + b)?)
        }
        DynView::Timedelta64(v, unit) => ArrowTensor::from_array_as(
            reduce(&v, axis, 0i64, add_timedelta)?,
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

fn zip_with<T: Copy, U>(
    a: &ArrayViewD<'_, T>,
    b: &ArrayViewD<'_, T>,
    f: impl Fn(T, T) -> U,
) -> Result<ArrayD<U>> {
    let shape = broadcast_shape(a.shape(), b.shape())?;
    let a = a.broadcast(IxDyn(&shape)).expect("shape is a's broadcast");
    let b = b.broadcast(IxDyn(&shape)).expect("shape is b's broadcast");
    // SAFETY: the Zip visits every element of `out` once and writes it.
    unsafe {
        try_build(&shape, "kernel \"add\"", |out| {
            Zip::from(out).and(&a).and(&b).for_each(|o, &x, &y| {
                o.write(f(x, y));
            })
        })
    }
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
            ArrowTensor::from_array_as(zip_with(&x, &y, add_timedelta)?, DType::Timedelta64(u))?
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
        let mut out = try_full(&[a.nrows(), b.ncols()], T::zero(), "kernel \"matmul\"")?
            .into_dimensionality::<Ix2>()
            .expect("2-D");
        general_mat_mul(T::one(), &a, &b, T::zero(), &mut out);
        Ok(ArrowTensor::from_array(out.into_dyn()))
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
    fn rows<T: ndarray::NdFloat + crate::Element>(x: ArrayView2<'_, T>) -> Result<ArrowTensor> {
        // SAFETY: the Zip visits every element of `out` once and writes it.
        let out = unsafe {
            try_build(x.shape(), "kernel \"normalize\"", |out| {
                Zip::from(out).and(&x.into_dyn()).for_each(|o, &v| {
                    o.write(v);
                })
            })
        }?;
        let mut out = out.into_dimensionality::<Ix2>().expect("2-D");
        if out.is_empty() {
            // No values: nothing to scale, however many (empty) rows there are.
            return Ok(ArrowTensor::from_array(out.into_dyn()));
        }
        for mut row in out.rows_mut() {
            let norm = row.dot(&row).sqrt();
            if norm > T::zero() {
                row.mapv_inplace(|v| v / norm);
            }
        }
        Ok(ArrowTensor::from_array(out.into_dyn()))
    }
    let x = &args[0];
    let out = match x.dyn_view() {
        DynView::Float32(v) => rows(matrix(v, "normalize", 0)?)?,
        DynView::Float64(v) => rows(matrix(v, "normalize", 0)?)?,
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

    #[test]
    fn results_too_large_for_memory_are_errors_not_aborts() {
        let col = ArrowTensor::from_array(ArrayD::<f64>::zeros(IxDyn(&[200_000, 1])));
        let row = ArrowTensor::from_array(ArrayD::<f64>::zeros(IxDyn(&[1, 200_000])));
        for kernel in ["add", "matmul"] {
            let err = run(kernel, vec![col.clone(), row.clone()], vec![]).unwrap_err();
            assert!(matches!(err, Error::OutOfMemory { .. }), "{kernel}: {err}");
            assert!(err.to_string().contains("320000000000 bytes"), "{err}");
        }
    }

    #[test]
    fn nat_propagates_through_timedelta_sums_and_adds() {
        use crate::TimeUnit;
        let td = |v: Vec<i64>| {
            let n = v.len();
            ArrowTensor::from_array_as(
                ArrayD::from_shape_vec(IxDyn(&[n]), v).unwrap(),
                DType::Timedelta64(TimeUnit::Second),
            )
            .unwrap()
        };
        let total = run("sum", vec![td(vec![1, NAT])], vec![]).unwrap();
        assert_eq!(total[0].view::<i64>().unwrap()[[]], NAT);
        let both = run("add", vec![td(vec![NAT, 2]), td(vec![NAT, 3])], vec![]).unwrap();
        assert_eq!(
            both[0].view::<i64>().unwrap().as_slice().unwrap(),
            &[NAT, 5]
        );
    }

    #[test]
    fn zero_size_inputs_cost_nothing_whatever_their_shape() {
        // 2^40 rows of nothing: iterating them would take minutes.
        let x = ArrowTensor::from_buffer(
            arrow_buffer::Buffer::from(Vec::<u8>::new()),
            DType::Float64,
            &[1 << 40, 0],
            &[0, 1],
            crate::Form::Rows,
            None,
        )
        .unwrap();
        let start = std::time::Instant::now();
        let rows = run("sum", vec![x.clone()], vec![("axis", Param::Int(0))]).unwrap();
        assert_eq!(rows[0].shape(), &[0]);
        let all = run("sum", vec![x.clone()], vec![]).unwrap();
        assert_eq!(all[0].view::<f64>().unwrap()[[]], 0.0);
        let normalized = run("normalize", vec![x.clone()], vec![]).unwrap();
        assert_eq!(normalized[0].shape(), &[1 << 40, 0]);
        // One zero per row: 8 TiB, which is refused, not attempted.
        let err = run("sum", vec![x], vec![("axis", Param::Int(1))]).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory { .. }), "{err}");
        assert!(
            start.elapsed().as_secs() < 10,
            "zero-size work took {:?}",
            start.elapsed()
        );
    }
}
