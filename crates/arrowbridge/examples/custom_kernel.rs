//! Writing a kernel of your own and calling it by name.
//!
//! A kernel is an ordinary Rust function over `ndarray` views. Register it in a
//! [`Registry`]; every transport that uses the registry (in-process `call`, the `run`
//! command on IPC files, the Flight server) can then call it by name.
//!
//! Run with `cargo run --example custom_kernel`.

use arrowbridge::{ArrowTensor, DynView, Kernel, Params, Registry, Result};
use ndarray::{ArrayD, Axis, IxDyn};

/// Scales each column of a 2-D float64 array to zero mean: `x - x.mean(axis=0)`.
fn center(args: &[ArrowTensor], _params: &Params) -> Result<Vec<ArrowTensor>> {
    let DynView::Float64(x) = args[0].dyn_view() else {
        return Err(arrowbridge::kernels::dtype_error(
            "center", 0, "float64", &args[0],
        ));
    };
    let mean = x.mean_axis(Axis(0)).expect("axis 0 exists");
    Ok(vec![ArrowTensor::from_array(&x - &mean)])
}

fn main() -> Result<()> {
    let mut registry = Registry::with_builtins();
    registry.register(
        Kernel::new(
            "center",
            "center(x: float64[n, d]) -> float64[n, d]",
            center,
        )
        .arity(1),
    )?;

    let x = ArrowTensor::from_array(
        ArrayD::from_shape_vec(IxDyn(&[3, 2]), vec![1.0, 10.0, 2.0, 20.0, 3.0, 30.0])
            .expect("6 values"),
    );
    let out = registry.call("center", &[x], Params::default())?;
    let centered = out[0].view::<f64>()?;
    println!("centered:\n{centered}");
    assert_eq!(centered.sum_axis(Axis(0)).sum(), 0.0);
    Ok(())
}
