//! Reads or writes an Arrow IPC file from Rust, without Python: the other process in the
//! cross-language tests, and a small example of the `ipc` module.
//!
//! ```sh
//! cargo run --example ipc_view -- read PATH    # one line per column: name dtype shape sum address mapping
//! cargo run --example ipc_view -- write PATH   # x = arange(12.0).reshape(3, 4) * 0.5, n = [1, 2, 3]
//! ```

use std::path::Path;

use arrowbridge::ipc::{read_ipc, write_ipc, WriteOptions};
use arrowbridge::{ArrowTensor, DynView, Result};
use ndarray::{ArrayD, IxDyn};

fn sum(tensor: &ArrowTensor) -> f64 {
    match tensor.dyn_view() {
        DynView::Float32(v) => v.iter().map(|&x| f64::from(x)).sum(),
        DynView::Float64(v) => v.sum(),
        DynView::Int32(v) => v.iter().map(|&x| f64::from(x)).sum(),
        DynView::Int64(v) | DynView::Datetime64(v, _) | DynView::Timedelta64(v, _) => {
            v.iter().map(|&x| x as f64).sum()
        }
        DynView::UInt8(v) | DynView::Bool(v) => v.iter().map(|&x| f64::from(x)).sum(),
        _ => f64::NAN,
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    match (args.get(1).map(String::as_str), args.get(2)) {
        (Some("read"), Some(path)) => {
            let data = read_ipc(Path::new(path), true)?;
            let (base, len) = data.mapping().unwrap_or((0, 0));
            for (name, tensor) in data.tensors()? {
                println!(
                    "{name} {} {:?} {} {:#x} {base:#x} {len}",
                    tensor.dtype(),
                    tensor.shape(),
                    sum(&tensor),
                    tensor.data_ptr() as usize
                );
            }
        }
        (Some("write"), Some(path)) => {
            let x = ArrayD::from_shape_fn(IxDyn(&[3, 4]), |i| (i[0] * 4 + i[1]) as f64 * 0.5);
            let n = ArrayD::from_shape_vec(IxDyn(&[3]), vec![1i32, 2, 3]).expect("3 values");
            let (x, n) = (ArrowTensor::from_array(x), ArrowTensor::from_array(n));
            write_ipc(
                Path::new(path),
                &[("x", &x), ("n", &n)],
                &WriteOptions::default(),
            )?;
        }
        _ => {
            eprintln!("usage: ipc_view read PATH | ipc_view write PATH");
            std::process::exit(2);
        }
    }
    Ok(())
}
