//! Ragged tensors against plain arrow-rs: what arrow-rs 60's canonical extension types write
//! is read as the specification's type, and a file arrowbridge writes is plain Arrow to
//! arrow-rs.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type};
use arrow_array::{Array, FixedSizeListArray, Int32Array, ListArray, RecordBatch, StructArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::extension::{FixedShapeTensor, VariableShapeTensor};
use arrow_schema::{DataType, Field, Fields, Schema};
use arrowbridge::ipc::{self, Column, WriteOptions};
use arrowbridge::{ArrowTensor, RaggedTensor};
use ndarray::{array, ArrayD};

/// A `struct<data, shape>` column built with arrow-rs's own `VariableShapeTensor` field, as an
/// arrow-rs program writes it (non-nullable children, `"permutations"`, explicit nulls).
fn arrow_rs_ragged(permutations: Option<Vec<usize>>) -> (Field, StructArray) {
    let extension =
        VariableShapeTensor::try_new(DataType::Float32, 2, None, permutations, None).unwrap();
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    let values = arrow_array::Float32Array::from_iter_values((0..10).map(|v| v as f32));
    let data = ListArray::new(
        item,
        OffsetBuffer::from_lengths([6, 4]),
        Arc::new(values),
        None,
    );
    let shape_item = Arc::new(Field::new_list_field(DataType::Int32, false));
    let shape = FixedSizeListArray::new(
        shape_item,
        2,
        Arc::new(Int32Array::from(vec![2, 3, 1, 4])),
        None,
    );
    let fields = Fields::from(vec![
        Field::new("data", data.data_type().clone(), false),
        Field::new("shape", shape.data_type().clone(), false),
    ]);
    let storage = StructArray::new(fields, vec![Arc::new(data), Arc::new(shape)], None);
    let field = Field::new("t", storage.data_type().clone(), false).with_extension_type(extension);
    (field, storage)
}

#[test]
fn arrow_rs_variable_shape_tensors_read_as_the_specification() {
    let (field, storage) = arrow_rs_ragged(None);
    let json = &field.metadata()["ARROW:extension:metadata"];
    assert!(json.contains("\"permutations\":null"), "{json}");
    let ragged = RaggedTensor::from_arrow(&field, &storage.to_data(), false).unwrap();
    assert_eq!(ragged.len(), 2);
    assert_eq!(
        ragged.row::<f32>(1).unwrap(),
        array![[6.0f32, 7.0, 8.0, 9.0]].into_dyn()
    );

    let (field, storage) = arrow_rs_ragged(Some(vec![1, 0]));
    assert!(field.metadata()["ARROW:extension:metadata"].contains("\"permutations\":[1,0]"));
    let ragged = RaggedTensor::from_arrow(&field, &storage.to_data(), false).unwrap();
    assert_eq!(ragged.permutation(), Some(&[1, 0][..]));
    assert_eq!(
        ragged.row::<f32>(0).unwrap(),
        array![[0.0f32, 3.0], [1.0, 4.0], [2.0, 5.0]].into_dyn()
    );
    // Written back, only the specification's form.
    let written = ragged.field("t");
    assert_eq!(
        written.metadata()["ARROW:extension:metadata"],
        r#"{"permutation":[1,0]}"#
    );
}

#[test]
fn arrow_rs_fixed_shape_tensors_read_as_the_specification() {
    let extension =
        FixedShapeTensor::try_new(DataType::Float32, [2, 3], None, Some(vec![1, 0])).unwrap();
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    let values = arrow_array::Float32Array::from_iter_values((0..12).map(|v| v as f32));
    let storage = FixedSizeListArray::new(item, 6, Arc::new(values), None);
    let field = Field::new("t", storage.data_type().clone(), false).with_extension_type(extension);
    let json = &field.metadata()["ARROW:extension:metadata"];
    assert!(json.contains("\"permutations\":[1,0]") && json.contains("\"dim_names\":null"));
    let tensor = ArrowTensor::from_arrow(&field, storage.to_data()).unwrap();
    let view = tensor.view::<f32>().unwrap();
    assert_eq!(view.shape(), &[2, 3, 2]);
    assert_eq!(view[[1, 2, 0]], 8.0);
    // and written back in the specification's form, which arrow-rs reads too
    let back = tensor.field("t");
    assert_eq!(
        back.metadata()["ARROW:extension:metadata"],
        r#"{"shape":[2,3],"permutation":[1,0]}"#
    );
}

#[test]
fn a_file_arrowbridge_writes_is_plain_arrow_to_arrow_rs() {
    let ragged = RaggedTensor::from_arrays(vec![
        ArrayD::from_shape_vec(vec![2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap(),
        ArrayD::from_shape_vec(vec![1, 3], vec![5.0f32, 6.0, 7.0]).unwrap(),
    ])
    .unwrap();
    let labels = ArrowTensor::from_array(array![7i32, 8].into_dyn());
    let columns = [Column::Ragged(vec![ragged]), Column::Tensor(labels)];
    let batch = ipc::record_batch_of(&[("x", &columns[0]), ("y", &columns[1])]).unwrap();
    let dir = std::env::temp_dir().join(format!("arrowbridge-ragged-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("ragged.arrow");
    ipc::write_batch(&path, &batch, &WriteOptions::default()).unwrap();

    // plain arrow-rs
    let file = std::fs::File::open(&path).unwrap();
    let reader = arrow_ipc::reader::FileReader::try_new(file, None).unwrap();
    let schema: Arc<Schema> = reader.schema();
    let field = schema.field_with_name("x").unwrap();
    assert_eq!(
        field.extension_type_name(),
        Some("arrow.variable_shape_tensor")
    );
    assert_eq!(
        field.metadata()["ARROW:extension:metadata"],
        r#"{"uniform_shape":[null,null]}"#
    );
    let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
    let x = batches[0].column(0).as_struct();
    let data = x.column_by_name("data").unwrap().as_list::<i32>();
    let shape = x.column_by_name("shape").unwrap().as_fixed_size_list();
    assert_eq!(
        data.value(1).as_primitive::<Float32Type>().values(),
        &[5.0, 6.0, 7.0]
    );
    assert_eq!(shape.value(1).as_primitive::<Int32Type>().values(), &[1, 3]);

    // and arrowbridge reads it back as views of the mapping
    let read = ipc::read_ipc(&path, true).unwrap();
    let columns = read.columns().unwrap();
    let Column::Ragged(parts) = &columns[0].1 else {
        panic!("x is ragged")
    };
    assert_eq!(
        parts[0].row::<f32>(1).unwrap(),
        array![[5.0f32, 6.0, 7.0]].into_dyn()
    );
    let (base, len) = read.mapping().unwrap();
    let address = parts[0].values().as_ptr() as usize;
    assert!(address >= base && address < base + len);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn views_of_tensors_are_parts_over_their_memory_with_one_metadata() {
    let arrays: Vec<ArrayD<f32>> = (1..=4)
        .map(|i| ArrayD::from_elem(ndarray::IxDyn(&[i, 3]), i as f32))
        .collect();
    let tensors: Vec<ArrowTensor> = arrays
        .iter()
        .cloned()
        .map(|a| ArrowTensor::from_array(a).as_element())
        .collect();
    let parts = RaggedTensor::views_of(&tensors, None).unwrap();
    assert_eq!(parts.len(), 4);
    for (part, tensor) in parts.iter().zip(&tensors) {
        assert_eq!(part.len(), 1);
        // Zero-copy: the part's values are the tensor's own memory.
        assert_eq!(part.values().as_ptr(), tensor.values().as_ptr());
        // Every dimension but the first agrees across all parts: one metadata.
        assert_eq!(part.metadata().uniform_shape, Some(vec![None, Some(3)]));
    }
    let joined = RaggedTensor::concat(&parts).unwrap();
    let expected = RaggedTensor::from_arrays(arrays).unwrap();
    assert_eq!(joined.array().as_ref(), expected.array().as_ref());
    // The same checks as a copy: one dtype and rank, naming the element.
    let other = ArrowTensor::from_array(ArrayD::<f64>::zeros(ndarray::IxDyn(&[2, 3]))).as_element();
    let error = RaggedTensor::views_of(&[tensors[0].clone(), other], None)
        .unwrap_err()
        .to_string();
    assert!(error.contains("element 1"), "{error}");
}

#[test]
fn record_batches_of_parts_are_the_rows_of_one_batch_without_a_copy() {
    let arrays: Vec<ArrayD<f32>> = (0..6)
        .map(|i| ArrayD::from_elem(ndarray::IxDyn(&[i, 2]), i as f32))
        .collect();
    let tensors: Vec<ArrowTensor> = arrays
        .iter()
        .cloned()
        .map(|a| ArrowTensor::from_array(a).as_element())
        .collect();
    let parts = Column::Ragged(RaggedTensor::views_of(&tensors, None).unwrap());
    let ids = Column::Tensor(ArrowTensor::from_array(ArrayD::from_shape_fn(
        ndarray::IxDyn(&[6]),
        |i| i[0] as i64,
    )));
    let columns = [("img", &parts), ("id", &ids)];
    let batches = ipc::record_batches_of(&columns).unwrap();
    assert_eq!(batches.len(), 6, "cut where the parts meet");
    for (batch, tensor) in batches.iter().zip(&tensors) {
        let values = batch
            .column(0)
            .as_struct()
            .column(0)
            .as_list::<i32>()
            .values()
            .clone();
        let values = values
            .as_primitive::<Float32Type>()
            .values()
            .inner()
            .clone();
        assert_eq!(
            values.as_ptr(),
            tensor.values().as_ptr(),
            "a view of the element"
        );
    }
    let one = ipc::record_batch_of(&columns).unwrap();
    let joined = arrow_select::concat::concat_batches(&one.schema(), &batches).unwrap();
    assert_eq!(joined, one);
    // Columns of different row counts are refused by name, as by record_batch_of.
    let short = Column::Tensor(ArrowTensor::from_array(ArrayD::<i64>::zeros(
        ndarray::IxDyn(&[5]),
    )));
    let error = ipc::record_batches_of(&[("img", &parts), ("id", &short)])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("\"id\"") && error.contains("5 rows"),
        "{error}"
    );
}
