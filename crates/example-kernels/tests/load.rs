//! Loads the plugin as a shared library, as arrowbridge's users do, and calls its kernels
//! through the plugin ABI.

use std::path::PathBuf;

use arrowbridge::{ArrowTensor, Error, Param, Params, Registry};
use ndarray::{array, ArrayD, IxDyn};

/// The plugin cargo built next to this test (`target/<profile>/deps/`).
fn plugin_path() -> PathBuf {
    let deps = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .to_path_buf();
    let name = format!(
        "{}arrowbridge_example_kernels{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let path = deps.join(&name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

fn registry() -> Registry {
    let mut registry = Registry::with_builtins();
    let names = registry.load_plugin(&plugin_path()).unwrap();
    assert_eq!(names, ["head", "pairwise_distances", "row_max", "zscore"]);
    registry
}

#[test]
fn ragged_kernels_keep_their_kind_across_the_boundary() {
    let registry = registry();
    let kernel = registry.get("row_max").unwrap();
    assert!(kernel.ragged);
    let x = arrowbridge::RaggedTensor::from_arrays(vec![
        array![[1.0, 7.0], [2.0, 3.0]].into_dyn(),
        array![[-1.0]].into_dyn(),
    ])
    .unwrap();
    let out = kernel
        .call(&x.to_kernel_args().unwrap(), Params::default())
        .unwrap();
    assert_eq!(out[0].view::<f64>().unwrap(), array![7.0, -1.0].into_dyn());
}

#[test]
fn kernels_from_the_library_compute_as_the_linked_functions_do() {
    let registry = registry();
    let x = ArrowTensor::from_array(array![[1.0, 10.0], [2.0, 10.0], [3.0, 10.0]].into_dyn());
    let loaded = registry
        .call("zscore", std::slice::from_ref(&x), Params::default())
        .unwrap();
    let linked = arrowbridge_example_kernels::kernels()
        .into_iter()
        .find(|k| k.name == "zscore")
        .unwrap()
        .call(&[x], Params::default())
        .unwrap();
    assert_eq!(
        loaded[0].view::<f64>().unwrap(),
        linked[0].view::<f64>().unwrap()
    );
    let expected = (1.5f64).sqrt();
    assert_eq!(
        loaded[0].view::<f64>().unwrap(),
        array![[-expected, 0.0], [0.0, 0.0], [expected, 0.0]].into_dyn()
    );

    let a = ArrowTensor::from_array(array![[0.0, 0.0], [3.0, 4.0]].into_dyn());
    let d = registry
        .call("pairwise_distances", &[a.clone(), a], Params::default())
        .unwrap();
    assert_eq!(
        d[0].view::<f64>().unwrap(),
        array![[0.0, 5.0], [5.0, 0.0]].into_dyn()
    );
}

#[test]
fn memory_crosses_the_library_boundary_without_copies() {
    let registry = registry();
    let x = ArrowTensor::from_array(ArrayD::from_shape_fn(IxDyn(&[100, 4]), |i| i[0] as i32));
    let params = Params::new([("n".to_string(), Param::Int(10))]);
    let out = registry
        .call("head", std::slice::from_ref(&x), params)
        .unwrap();
    // The plugin saw the caller's buffer and returned a view of it, and the host sees that
    // view: one address all the way.
    assert_eq!(out[0].data_ptr(), x.data_ptr());
    assert_eq!(out[0].shape(), [10, 4]);
    // A handle on x's allocation that counts its owners (reading the values after drop(x)
    // would not tell: freed memory can still hold them).
    let probe = x.values().clone();
    drop(x);
    // The output keeps the memory alive on its own: it owns a reference besides the probe.
    assert!(
        probe.strong_count() > 1,
        "nothing but the probe holds the viewed memory"
    );
    assert_eq!(out[0].view::<i32>().unwrap()[[9, 0]], 9);
    // And lets go of it when it dies: across the boundary both ways, nothing leaks.
    drop(out);
    assert_eq!(
        probe.strong_count(),
        1,
        "the dropped output still holds the memory"
    );
}

#[test]
fn errors_keep_their_kind_across_the_boundary() {
    let registry = registry();
    let ints = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[2, 2]), 1i64));
    let err = registry
        .call("zscore", std::slice::from_ref(&ints), Params::default())
        .unwrap_err();
    assert!(
        matches!(&err, Error::DType { kernel, arg: 0, got, .. } if kernel == "zscore" && got == "int64"),
        "{err}"
    );
    let err = registry
        .call("head", std::slice::from_ref(&ints), Params::default())
        .unwrap_err();
    assert!(
        matches!(&err, Error::Param { name, .. } if name == "n"),
        "{err}"
    );
    let unknown = Params::new([("axis".to_string(), Param::Int(1))]);
    let err = registry.call("zscore", &[ints], unknown).unwrap_err();
    assert!(
        matches!(&err, Error::Param { name, .. } if name == "axis"),
        "{err}"
    );
}

#[test]
fn a_library_is_loaded_once_per_registry_and_bad_paths_are_clear() {
    let mut registry = registry();
    let err = registry.load_plugin(&plugin_path()).unwrap_err();
    assert!(err.to_string().contains("already registered"), "{err}");

    let err = registry
        .load_plugin("/nonexistent/libplugin.so".as_ref())
        .unwrap_err();
    assert!(matches!(&err, Error::Plugin { path, .. } if path == "/nonexistent/libplugin.so"));
    assert!(err.to_string().contains("cannot load the library"), "{err}");

    let not_a_library = std::env::temp_dir().join("arrowbridge-not-a-plugin.so");
    std::fs::write(&not_a_library, b"not an ELF file").unwrap();
    let err = registry.load_plugin(&not_a_library).unwrap_err();
    assert!(err.to_string().contains("cannot load the library"), "{err}");
}
