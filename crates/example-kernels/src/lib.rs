//! An arrowbridge kernel plugin: four kernels in a shared library of their own.
//!
//! Build it with `cargo build --release -p arrowbridge-example-kernels` and load
//! `target/release/libarrowbridge_example_kernels.so` (`.dylib` on macOS):
//!
//! * in Python: `arrowbridge.load_kernels(path)`, then `arrowbridge.call("zscore", x)`;
//! * on IPC files: `arrowbridge run --kernels PATH zscore in.arrow out.arrow`;
//! * on the Flight server: `arrowbridge serve --kernels PATH`, then any client's DoExchange.
//!
//! Copy this crate to start a plugin of your own: write kernels as functions over `ndarray`
//! views, list them in `kernels()`, and export them with [`arrowbridge::export_kernels!`].

use arrowbridge::kernels::dtype_error;
use arrowbridge::{
    ArrowTensor, Distribution, DynView, Error, Kernel, Params, RaggedTensor, Result,
};
use ndarray::{Array2, ArrayView2, Axis, Ix2};

/// The kernels this plugin exports.
pub fn kernels() -> Vec<Kernel> {
    vec![
        Kernel::new(
            "zscore",
            "zscore(x: float64[n, d]) -> float64[n, d], each column to zero mean and unit variance",
            zscore,
        )
        .arity(1),
        Kernel::new(
            "pairwise_distances",
            "pairwise_distances(a: float64[n, d], b: float64[m, d]) -> float64[n, m], Euclidean",
            pairwise_distances,
        )
        .arity(2)
        // Row i of the result is row i of `a` against all of `b`.
        .distribution(Distribution::Rows),
        Kernel::new(
            "head",
            "head(x: any[n, ...], n: int) -> x[:n], sharing x's memory",
            head,
        )
        .params(&["n"])
        .arity(1)
        // A view of x: its time does not grow with x.
        .constant_time(),
        Kernel::new(
            "row_max",
            "row_max(x: ragged float64) -> float64[n], the largest value of each tensor (NaN if empty)",
            row_max,
        )
        // Ragged data (a list of arrays, an arrow.variable_shape_tensor) arrives as its
        // values and its rows' shapes: two arrays.
        .ragged()
        .arity(2),
    ]
}

arrowbridge::export_kernels!(kernels);

/// The largest value of each tensor of ragged float64 data: the rows are views of the values,
/// whatever their shapes.
fn row_max(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    let x = RaggedTensor::from_kernel_args(&args[0], &args[1])?;
    let maxima: ndarray::Array1<f64> = x
        .rows::<f64>()?
        .map(|row| row.iter().copied().fold(f64::NAN, f64::max))
        .collect();
    Ok(vec![ArrowTensor::from_array(maxima.into_dyn())])
}

/// A float64 matrix argument, or a clear error naming the kernel and argument.
fn matrix<'a>(kernel: &str, args: &'a [ArrowTensor], arg: usize) -> Result<ArrayView2<'a, f64>> {
    let DynView::Float64(x) = args[arg].dyn_view() else {
        return Err(dtype_error(kernel, arg, "float64", &args[arg]));
    };
    let ndim = x.ndim();
    x.into_dimensionality::<Ix2>().map_err(|_| {
        Error::shape(
            format!("kernel {kernel:?}, argument {arg}"),
            format!("expected a 2-D array, got {ndim} dimension(s)"),
        )
    })
}

/// Standardizes each column: `(x - mean) / std` (population std; constant columns become 0).
fn zscore(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    let x = matrix("zscore", args, 0)?;
    let n = x.nrows().max(1) as f64;
    let mean = x.sum_axis(Axis(0)) / n;
    let centered = &x - &mean;
    let std = centered
        .mapv(|v| v * v)
        .sum_axis(Axis(0))
        .mapv(|s| (s / n).sqrt());
    let scale = std.mapv(|s| if s > 0.0 { 1.0 / s } else { 0.0 });
    Ok(vec![ArrowTensor::from_array(
        (centered * &scale).into_dyn(),
    )])
}

/// Euclidean distances between the rows of `a` and the rows of `b`.
fn pairwise_distances(args: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    let a = matrix("pairwise_distances", args, 0)?;
    let b = matrix("pairwise_distances", args, 1)?;
    if a.ncols() != b.ncols() {
        return Err(Error::shape(
            "kernel \"pairwise_distances\"",
            format!(
                "rows of a have {} values, rows of b {}",
                a.ncols(),
                b.ncols()
            ),
        ));
    }
    let out = Array2::from_shape_fn((a.nrows(), b.nrows()), |(i, j)| {
        a.row(i)
            .iter()
            .zip(b.row(j))
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt()
    });
    Ok(vec![ArrowTensor::from_array(out.into_dyn())])
}

/// The first `n` rows of `x`, as a view of `x`'s memory when axis 0 is outermost in memory.
fn head(args: &[ArrowTensor], params: &Params) -> Result<Vec<ArrowTensor>> {
    let x = &args[0];
    let n = params
        .int("n")?
        .ok_or_else(|| params.error("n", "is required"))?;
    let Some(&rows) = x.shape().first() else {
        return Err(Error::shape(
            "kernel \"head\"",
            "x has no axis 0 (it is 0-D)",
        ));
    };
    let n = usize::try_from(n)
        .map_err(|_| params.error("n", format!("must be >= 0, got {n}")))?
        .min(rows);
    if x.axis_order().first() != Some(&0) {
        return Err(Error::shape(
            "kernel \"head\"",
            format!(
                "axis 0 is not outermost in memory (axis order {:?})",
                x.axis_order()
            ),
        ));
    }
    let row_bytes = x.nbytes().checked_div(rows).unwrap_or(0);
    let mut shape = x.shape().to_vec();
    shape[0] = n;
    let values = x.values().slice_with_length(0, n * row_bytes);
    Ok(vec![ArrowTensor::from_buffer(
        values,
        x.dtype(),
        &shape,
        x.axis_order(),
        x.form(),
        x.dim_names().map(<[String]>::to_vec),
    )?])
}
