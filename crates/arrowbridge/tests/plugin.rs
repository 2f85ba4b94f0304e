//! The plugin ABI, exercised in one process: kernels exported with `export_kernels!` are
//! called through their C entry points, exactly as a loaded library's are.

use arrowbridge::kernels::plugin::{plugin_kernels, AbiPlugin, ABI_VERSION};
use arrowbridge::{ArrowTensor, Error, Form, Kernel, Param, Params, Registry, Result};
use ndarray::{ArrayD, IxDyn};

fn explode(_: &[ArrowTensor], _: &Params) -> Result<Vec<ArrowTensor>> {
    panic!("index out of range in the plugin")
}

/// Returns its inputs, the first one's total (scaled) as a 0-D array, and a view of the first
/// with its last two axes swapped.
fn echo(args: &[ArrowTensor], params: &Params) -> Result<Vec<ArrowTensor>> {
    let mut out = args.to_vec();
    let x = args[0].view::<f64>()?;
    let scale = params.float("scale")?.unwrap_or(1.0);
    out.push(ArrowTensor::from_array(ArrayD::from_elem(
        IxDyn(&[]),
        scale * x.sum(),
    )));
    let shape = [x.shape()[0], x.shape()[2], x.shape()[1]];
    let swapped = ArrowTensor::from_buffer(
        args[0].values().clone(),
        args[0].dtype(),
        &shape,
        &[0, 2, 1],
        Form::Rows,
        None,
    )?;
    out.push(swapped);
    Ok(out)
}

fn kernels() -> Vec<Kernel> {
    vec![
        Kernel::new("explode", "explode(x)", explode),
        Kernel::new("echo", "echo(x: float64[...], ...)", echo).params(&["scale"]),
    ]
}

arrowbridge::export_kernels!(kernels);

fn registry() -> Registry {
    let mut registry = Registry::new();
    // SAFETY: the entry points are this test binary's own.
    for kernel in unsafe { plugin_kernels("in-process", arrowbridge_plugin()) }.unwrap() {
        registry.register(kernel).unwrap();
    }
    registry
}

#[test]
fn a_plugin_of_another_abi_version_is_refused_by_name() {
    // SAFETY: this binary's own entry points, read to copy them.
    let ours = unsafe { &*arrowbridge_plugin() };
    let older = AbiPlugin {
        abi_version: 1,
        size: ours.size,
        kernels: ours.kernels,
        call: ours.call,
        free: ours.free,
    };
    // SAFETY: `older` is valid for the call; it is refused before any entry point runs.
    let err = unsafe { plugin_kernels("old.so", &older) }.unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("built for plugin ABI 1 (entry points of {} bytes); this arrowbridge speaks ABI {ABI_VERSION}", ours.size)),
        "{err}"
    );
    // SAFETY: a NULL entry is refused, not read.
    let err = unsafe { plugin_kernels("null.so", std::ptr::null()) }.unwrap_err();
    assert!(err.to_string().contains("returned NULL"), "{err}");
}

#[test]
fn a_panic_in_a_plugin_kernel_is_an_error() {
    let x = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[2]), 1.0f64));
    let err = registry()
        .call("explode", &[x], Params::default())
        .unwrap_err();
    assert!(matches!(&err, Error::Kernel { kernel, .. } if kernel == "explode"));
    assert!(
        err.to_string().contains("index out of range in the plugin"),
        "{err}"
    );
}

#[test]
fn shapes_axis_orders_and_params_cross_intact() {
    let x = ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[2, 3, 4]), |i| {
        (i[0] * 100 + i[1] * 10 + i[2]) as f64
    }));
    let scalar = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[]), 7.0f64));
    let params = Params::new([("scale".to_string(), Param::Float(0.5))]);
    let out = registry()
        .call("echo", &[x.clone(), scalar.clone()], params)
        .unwrap();
    assert_eq!(out.len(), 4);
    assert_eq!(out[0].data_ptr(), x.data_ptr());
    assert_eq!(out[1].data_ptr(), scalar.data_ptr());
    assert_eq!(out[1].shape(), [] as [usize; 0]);
    assert_eq!(out[1].view::<f64>().unwrap()[[]], 7.0);
    let total = x.view::<f64>().unwrap().sum();
    assert_eq!(out[2].shape(), [] as [usize; 0]);
    assert_eq!(out[2].view::<f64>().unwrap()[[]], 0.5 * total);
    assert_eq!(out[3].axis_order(), [0, 2, 1]);
    assert_eq!(out[3].data_ptr(), x.data_ptr());
    assert_eq!(
        out[3].view::<f64>().unwrap(),
        x.view::<f64>().unwrap().permuted_axes(vec![0, 2, 1])
    );
}

#[test]
fn unknown_kernels_and_wrong_dtypes_are_reported_by_name() {
    let ints = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[2]), 1i32));
    let err = registry()
        .call("nope", std::slice::from_ref(&ints), Params::default())
        .unwrap_err();
    assert!(
        matches!(&err, Error::UnknownKernel { name, available }
            if name == "nope" && available.contains("echo")),
        "{err}"
    );
    let err = registry()
        .call("echo", &[ints], Params::default())
        .unwrap_err();
    // The dtype error keeps its kind across the plugin boundary and names what it got.
    assert!(
        matches!(&err, Error::DType { arg: 0, expected, got, .. }
            if expected == "float64" && got == "int32"),
        "{err}"
    );
}

#[test]
fn non_finite_float_parameters_cross_intact() {
    let x = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[2, 1, 1]), 1.0f64));
    for scale in [f64::INFINITY, f64::NEG_INFINITY, f64::NAN] {
        let params = Params::new([("scale".to_string(), Param::Float(scale))]);
        let out = registry()
            .call("echo", std::slice::from_ref(&x), params)
            .unwrap();
        let got = out[1].view::<f64>().unwrap()[[]];
        assert!(got.to_bits() == (2.0 * scale).to_bits() || (got.is_nan() && scale.is_nan()));
    }
}
