//! ArrowTensor: Arrow memory <-> ndarray views, proven zero-copy by pointers.

use std::sync::Arc;

use arrow_array::{Array, FixedSizeListArray, Float64Array, Int32Array, PrimitiveArray};
use arrow_buffer::Buffer;
use arrow_schema::{DataType, Field};
use arrowbridge::{ArrowTensor, DType, DynView, Error, Form, TensorMetadata};
use ndarray::{array, ArrayD, Axis, IxDyn};
use num_complex::Complex;

fn ext_metadata(field: &Field) -> (&str, &str) {
    let m = field.metadata();
    (
        m["ARROW:extension:name"].as_str(),
        m["ARROW:extension:metadata"].as_str(),
    )
}

#[test]
fn owned_arrays_move_into_arrow_without_a_copy() {
    let a = ArrayD::from_shape_fn(IxDyn(&[3, 4, 5]), |d| {
        (d[0] * 100 + d[1] * 10 + d[2]) as f32
    });
    let expected = a.clone();
    let ptr = a.as_ptr();
    let t = ArrowTensor::from_array(a);
    assert_eq!(t.data_ptr(), ptr as *const u8);
    assert_eq!(t.view::<f32>().unwrap(), expected.view());
    assert_eq!(t.view::<f32>().unwrap().as_ptr(), ptr);
}

#[test]
fn owned_arrays_that_start_inside_their_allocation_keep_only_their_elements() {
    // Slicing an owned array in place leaves its first element past the Vec's start.
    let mut a = ArrayD::from_shape_fn(IxDyn(&[4, 3]), |d| (d[0] * 3 + d[1]) as i64);
    a.slice_collapse(ndarray::s![1..3, ..]);
    let expected = a.clone();
    let ptr = a.as_ptr();
    let t = ArrowTensor::from_array(a);
    assert_eq!(t.data_ptr(), ptr as *const u8);
    assert_eq!(t.nbytes(), 6 * 8);
    assert_eq!(t.view::<i64>().unwrap(), expected.view());

    let scalar = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[]), 2.5f64));
    assert_eq!(scalar.form(), Form::Element);
    assert_eq!(scalar.view::<f64>().unwrap().into_iter().next(), Some(&2.5));

    let empty = ArrowTensor::from_array(ArrayD::<f32>::zeros(IxDyn(&[0, 3])));
    assert_eq!((empty.shape(), empty.nbytes()), (&[0usize, 3][..], 0));
}

#[test]
fn c_order_tensors_carry_the_canonical_metadata_without_permutation() {
    let t = ArrowTensor::from_array(ArrayD::<i16>::zeros(IxDyn(&[2, 3, 4])));
    let field = t.field("x");
    assert_eq!(
        ext_metadata(&field),
        ("arrow.fixed_shape_tensor", r#"{"shape":[3,4]}"#)
    );
    match field.data_type() {
        DataType::FixedSizeList(item, 12) => assert_eq!(item.data_type(), &DataType::Int16),
        other => panic!("unexpected storage {other}"),
    }
    assert_eq!(t.data().len(), 2);
}

#[test]
fn one_dimensional_arrays_are_plain_primitive_arrays() {
    let t = ArrowTensor::from_array(array![1.0f64, 2.0, 3.0].into_dyn());
    assert_eq!(t.field("x").data_type(), &DataType::Float64);
    assert!(t.field("x").metadata().is_empty());
    let arr = t.array();
    let floats = arr.as_any().downcast_ref::<Float64Array>().unwrap();
    assert_eq!(floats.values().as_ptr() as *const u8, t.data_ptr());
}

#[test]
fn arrow_arrays_are_viewed_in_place_with_offsets() {
    let arr = Int32Array::from_iter_values(0..10).slice(3, 5);
    let field = Field::new("v", DataType::Int32, false);
    let t = ArrowTensor::from_arrow(&field, arr.to_data()).unwrap();
    let view = t.view::<i32>().unwrap();
    assert_eq!(view.as_slice().unwrap(), &[3, 4, 5, 6, 7]);
    assert_eq!(view.as_ptr(), arr.values().as_ptr());
}

/// The specification's example: physical shape [2, 3, 4] with permutation [2, 0, 1] is a
/// logical [4, 2, 3] tensor whose logical axis i is physical axis permutation[i].
#[test]
fn permuted_tensors_follow_the_specification() {
    let values = Float64Array::from_iter_values((0..48).map(f64::from));
    let item = Arc::new(Field::new("item", DataType::Float64, true));
    let list = FixedSizeListArray::new(item, 24, Arc::new(values.clone()), None);
    let field = Field::new("t", list.data_type().clone(), false).with_metadata(
        [
            (
                "ARROW:extension:name".to_string(),
                "arrow.fixed_shape_tensor".to_string(),
            ),
            (
                "ARROW:extension:metadata".to_string(),
                r#"{"shape":[2,3,4],"permutation":[2,0,1]}"#.to_string(),
            ),
        ]
        .into_iter()
        .collect::<std::collections::HashMap<_, _>>(),
    );
    let t = ArrowTensor::from_arrow(&field, list.to_data()).unwrap();
    assert_eq!(t.shape(), &[2, 4, 2, 3]);
    let view = t.view::<f64>().unwrap();
    assert_eq!(view.as_ptr(), values.values().as_ptr());
    let physical =
        ArrayD::from_shape_vec(IxDyn(&[2, 2, 3, 4]), (0..48).map(f64::from).collect()).unwrap();
    assert_eq!(view, physical.view().permuted_axes(IxDyn(&[0, 3, 1, 2])));
    // Written back, the metadata is what we read.
    assert_eq!(
        ext_metadata(&t.field("t")).1,
        r#"{"shape":[2,3,4],"permutation":[2,0,1]}"#
    );
}

#[test]
fn a_fortran_block_is_one_element_with_a_permutation() {
    // A (2, 3) array in Fortran order: axis 1 outermost in memory.
    let buffer = Buffer::from_vec(vec![1i64, 4, 2, 5, 3, 6]);
    let t = ArrowTensor::from_buffer(
        buffer.clone(),
        DType::Int64,
        &[2, 3],
        &[1, 0],
        Form::Element,
        None,
    )
    .unwrap();
    let view = t.view::<i64>().unwrap();
    assert_eq!(view, array![[1i64, 2, 3], [4, 5, 6]].into_dyn());
    assert_eq!(view.as_ptr() as *const u8, buffer.as_ptr());
    assert_eq!(t.byte_strides(), vec![8, 16]);
    assert_eq!(
        ext_metadata(&t.field("f")).1,
        r#"{"shape":[3,2],"permutation":[1,0]}"#
    );
    assert_eq!(t.data().len(), 1);
    // Read back as a one-row tensor, then as the element it holds.
    let back = ArrowTensor::from_arrow(&t.field("f"), t.data()).unwrap();
    assert_eq!(back.shape(), &[1, 2, 3]);
    let element = back.into_element().unwrap();
    assert_eq!(element.view::<i64>().unwrap(), view);
    assert_eq!(element.data_ptr(), buffer.as_ptr());
}

#[test]
fn row_form_needs_axis_zero_outermost() {
    let buffer = Buffer::from_vec(vec![0f32; 6]);
    let err = ArrowTensor::from_buffer(buffer, DType::Float32, &[2, 3], &[1, 0], Form::Rows, None)
        .unwrap_err();
    assert!(err.to_string().contains("axis 0 outermost"), "{err}");
}

#[test]
fn misaligned_buffers_are_refused_with_the_address() {
    let bytes = Buffer::from_vec(vec![0u8; 33]);
    let shifted = bytes.slice(1);
    let err = ArrowTensor::from_buffer(
        shifted.clone(),
        DType::Float64,
        &[4],
        &[0],
        Form::Rows,
        None,
    )
    .unwrap_err();
    match err {
        Error::Misaligned {
            align: 8, address, ..
        } => assert_eq!(address, shifted.as_ptr() as usize),
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn short_buffers_are_refused() {
    let err = ArrowTensor::from_buffer(
        Buffer::from_vec(vec![0i32; 3]),
        DType::Int32,
        &[2, 2],
        &[0, 1],
        Form::Rows,
        None,
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidData { .. }), "{err}");
}

#[test]
fn nulls_are_refused_with_their_count() {
    let arr = PrimitiveArray::<arrow_array::types::Float32Type>::from(vec![Some(1.0), None, None]);
    let err = ArrowTensor::from_arrow(&Field::new("x", DataType::Float32, true), arr.to_data())
        .unwrap_err();
    assert!(matches!(err, Error::Nulls { count: 2, .. }), "{err}");
}

#[test]
fn bool_and_complex_have_their_encodings() {
    let b = ArrowTensor::from_array_as(array![[1u8, 0], [0, 1]].into_dyn(), DType::Bool).unwrap();
    match b.field("b").data_type() {
        DataType::FixedSizeList(item, 2) => {
            assert_eq!(item.metadata()["ARROW:extension:name"], "arrow.bool8");
        }
        other => panic!("unexpected {other}"),
    }
    assert!(matches!(b.dyn_view(), DynView::Bool(_)));

    let z = ArrowTensor::from_array(
        array![Complex::new(1.0f32, 2.0), Complex::new(3.0, 4.0)].into_dyn(),
    );
    let field = z.field("z");
    assert_eq!(
        ext_metadata(&field),
        ("arrowbridge.complex_tensor", r#"{"shape":[]}"#)
    );
    let back = ArrowTensor::from_arrow(&field, z.data()).unwrap();
    assert_eq!(back.dtype(), DType::Complex64);
    assert_eq!(
        back.view::<Complex<f32>>().unwrap()[[1]],
        Complex::new(3.0, 4.0)
    );
    assert_eq!(back.data_ptr(), z.data_ptr());
}

#[test]
fn metadata_written_by_other_implementations_is_checked() {
    // arrow-rs 60 writes "permutations" (with the specification's meaning): it is read as
    // "permutation", never silently ignored.
    let meta = TensorMetadata::parse(r#"{"shape":[2,3],"permutations":[1,0]}"#).unwrap();
    assert_eq!(meta.permutation, Some(vec![1, 0]));
    assert_eq!(meta.logical_shape(), vec![3, 2]);
    // Other unknown keys are refused for the key itself (the message quotes the JSON, so a
    // bare "permutatoin" would be found in any parse error of this text).
    let err = TensorMetadata::parse(r#"{"shape":[2,3],"permutatoin":[1,0]}"#).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidData { message, .. }
            if message.contains("unknown field `permutatoin`")),
        "{err}"
    );
    // A null dim_names is accepted as absent.
    assert_eq!(
        TensorMetadata::parse(r#"{"shape":[2],"dim_names":null}"#)
            .unwrap()
            .dim_names,
        None
    );
}

#[test]
fn dyn_views_dispatch_on_the_dtype() {
    let t = ArrowTensor::from_array(ArrayD::from_elem(IxDyn(&[2, 2]), 3u16));
    let DynView::UInt16(v) = t.dyn_view() else {
        panic!("expected u16")
    };
    assert_eq!(v.sum_axis(Axis(0)), array![6u16, 6].into_dyn());
    let err = t.view::<f32>().unwrap_err();
    assert!(
        matches!(&err, Error::DType { expected, got, .. } if expected == "float32" && got == "uint16"),
        "{err}"
    );
}
