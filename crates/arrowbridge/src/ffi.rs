//! Importing arrays through the Arrow C Data Interface with every check the interface allows,
//! for every path that imports: PyCapsules, C streams and kernel plugins.
//!
//! The interface carries no buffer sizes, so a producer that lies about a length cannot be
//! caught; what it does carry (buffer and child counts, the type) is checked before arrow-rs
//! reads the structs, and a copy that arrow-rs makes to realign a buffer is reported.

use arrow_array::ffi::{from_ffi, FFI_ArrowArray, FFI_ArrowSchema};
use arrow_data::ArrayData;
use arrow_schema::{DataType, Field};

use crate::error::{Error, Result};

/// The buffer layout of `data_type`, refused for a fixed-size binary of negative size, on
/// which `arrow_data::layout` panics (a schema, from a file or a producer, can declare one).
pub(crate) fn layout(data_type: &DataType, what: &str) -> Result<arrow_data::DataTypeLayout> {
    if let DataType::FixedSizeBinary(size) = data_type {
        if *size < 0 {
            return Err(Error::invalid(
                what,
                format!("{data_type} has a negative size {size}"),
            ));
        }
    }
    Ok(arrow_data::layout(data_type))
}

/// The child types an array of `data_type` has.
fn child_types(data_type: &DataType) -> Vec<&DataType> {
    match data_type {
        DataType::FixedSizeList(f, _)
        | DataType::List(f)
        | DataType::LargeList(f)
        | DataType::ListView(f)
        | DataType::LargeListView(f)
        | DataType::Map(f, _) => vec![f.data_type()],
        DataType::Struct(fields) => fields.iter().map(|f| f.data_type()).collect(),
        DataType::Union(fields, _) => fields.iter().map(|(_, f)| f.data_type()).collect(),
        DataType::RunEndEncoded(ends, values) => vec![ends.data_type(), values.data_type()],
        _ => Vec::new(),
    }
}

/// Checks that an exported array has the buffers and children its type has, before arrow-rs
/// reads them: a producer that declares more than it exported would make the import read
/// past its pointer arrays.
pub fn check_structure(array: &FFI_ArrowArray, data_type: &DataType, what: &str) -> Result<()> {
    // arrow-rs reads the C struct's int64 counts as usize: a negative one would wrap into
    // sizes no buffer has (and error messages of 18446744073709551615 bytes). `null_count`
    // may be -1, which the specification uses for "not computed".
    for (name, value) in [("length", array.len()), ("offset", array.offset())] {
        if value > i64::MAX as usize {
            return Err(Error::invalid(
                what,
                format!(
                    "the exported array declares a negative {name} ({})",
                    value as i64
                ),
            ));
        }
    }
    let layout = layout(data_type, what)?;
    let buffers = layout.buffers.len() + usize::from(layout.can_contain_null_mask);
    let n = array.num_buffers();
    if n != buffers && !(layout.variadic && n > buffers) {
        return Err(Error::invalid(
            what,
            format!("the exported array has {n} buffer(s); a {data_type} array has {buffers}"),
        ));
    }
    let children = child_types(data_type);
    if array.num_children() != children.len() {
        return Err(Error::invalid(
            what,
            format!(
                "the exported array has {} child array(s); a {data_type} array has {}",
                array.num_children(),
                children.len()
            ),
        ));
    }
    for (c, child_type) in children.into_iter().enumerate() {
        check_structure(array.child(c), child_type, what)?;
    }
    Ok(())
}

/// Addresses of every data buffer in an exported array, in the order arrow-rs imports them.
/// Only the buffers and children that `data_type` has are read: a producer's `n_buffers` and
/// `n_children` are not trusted to match the arrays its pointers lead to.
fn buffer_addresses(array: &FFI_ArrowArray, data_type: &DataType, out: &mut Vec<usize>) {
    // check_structure refused the types without a layout before this runs.
    let buffers = 1 + layout(data_type, "").map_or(0, |l| l.buffers.len());
    for i in 1..array.num_buffers().min(buffers) {
        out.push(array.buffer(i) as usize);
    }
    for (c, child_type) in child_types(data_type)
        .into_iter()
        .enumerate()
        .take(array.num_children())
    {
        buffer_addresses(array.child(c), child_type, out);
    }
}

/// (address, length) of every data buffer of imported data, in import order.
fn imported_addresses(data: &ArrayData, out: &mut Vec<(usize, usize)>) {
    for b in data.buffers() {
        out.push((b.as_ptr() as usize, b.len()));
    }
    for c in data.child_data() {
        imported_addresses(c, out);
    }
}

/// Imports one exported array. arrow-rs realigns misaligned buffers by copying them; that
/// copy is reported as [`Error::Misaligned`] unless `allow_copy`.
///
/// # Safety
/// `array` must point to a valid, unreleased `ArrowArray` described by `schema`; it is moved
/// out (and left released).
pub unsafe fn import_array(
    array: *mut FFI_ArrowArray,
    schema: &FFI_ArrowSchema,
    field: &Field,
    allow_copy: bool,
) -> Result<ArrayData> {
    // SAFETY: the caller guarantees `array` is valid.
    let exported = unsafe { &*array };
    check_structure(
        exported,
        field.data_type(),
        &format!("field {:?}", field.name()),
    )?;
    let mut before = Vec::new();
    buffer_addresses(exported, field.data_type(), &mut before);
    // SAFETY: as above; from_raw moves the struct out and leaves a released one behind.
    let ffi_array = unsafe { FFI_ArrowArray::from_raw(array) };
    // SAFETY: the producer promises the array matches the schema (C Data Interface).
    let data = unsafe { from_ffi(ffi_array, schema) }?;
    let mut after = Vec::new();
    imported_addresses(&data, &mut after);
    if !allow_copy {
        // An empty buffer may be replaced by any other empty one: nothing was copied.
        if let Some((&address, _)) = before
            .iter()
            .zip(&after)
            .find(|(&b, &(a, len))| len > 0 && b != a)
        {
            let align = data
                .data_type()
                .primitive_width()
                .or_else(|| {
                    data.child_data()
                        .first()
                        .and_then(|c| c.data_type().primitive_width())
                })
                .unwrap_or(8);
            return Err(Error::Misaligned {
                what: format!("field {:?}", field.name()),
                address,
                align,
                misalignment: address % align,
            });
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_size_binary_of_negative_size_is_refused_not_a_panic() {
        // Found by fuzzing: arrow_data::layout unwraps the size.
        let array = FFI_ArrowArray::empty();
        let err = check_structure(&array, &DataType::FixedSizeBinary(-3), "f").unwrap_err();
        assert!(err.to_string().contains("negative size -3"), "{err}");
    }
}
