//! The kernel registry: Rust functions over `ndarray` views, callable by name from every
//! transport.
//!
//! A kernel is an ordinary function `fn(&[ArrowTensor], &Params) -> Result<Vec<ArrowTensor>>`.
//! It takes views of its inputs with [`ArrowTensor::view`] or [`ArrowTensor::dyn_view`],
//! computes with `ndarray`, and returns owned arrays through [`ArrowTensor::from_array`]
//! (no copy) — or returns an input unchanged, which shares its memory.
//!
//! ```
//! use arrowbridge::{ArrowTensor, Kernel, Params, Registry, Result};
//! use ndarray::ArrayD;
//!
//! /// Doubles a float64 array.
//! fn double(args: &[ArrowTensor], _params: &Params) -> Result<Vec<ArrowTensor>> {
//!     let x = args[0].view::<f64>()?;
//!     Ok(vec![ArrowTensor::from_array(x.mapv(|v| 2.0 * v))])
//! }
//!
//! let mut registry = Registry::with_builtins();
//! registry.register(Kernel::new("double", "double(x: float64[...]) -> float64[...]", double).arity(1))?;
//! let x = ArrowTensor::from_array(ArrayD::from_elem(vec![2, 2], 1.5f64));
//! let out = registry.call("double", &[x], Params::default())?;
//! assert_eq!(out[0].view::<f64>()?.sum(), 12.0);
//! # Ok::<(), arrowbridge::Error>(())
//! ```

mod builtin;
pub mod plugin;
mod ragged;

use std::fmt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::tensor::ArrowTensor;

/// The signature every kernel has: a plain `fn`, or a closure (a kernel loaded from a
/// [`plugin`] is one).
pub type KernelFn = Arc<dyn Fn(&[ArrowTensor], &Params) -> Result<Vec<ArrowTensor>> + Send + Sync>;

/// A registered kernel: its function and what users see of it.
#[derive(Clone)]
pub struct Kernel {
    /// The name callers use.
    pub name: &'static str,
    /// A one-line signature, e.g. `"add(a: numeric[...], b: numeric[...]) -> numeric[...]"`.
    pub signature: &'static str,
    /// Names of the keyword parameters the kernel accepts; others are rejected.
    pub params: &'static [&'static str],
    /// How many arrays the kernel takes (`None`: one or more).
    pub arity: Option<usize>,
    /// How the kernel runs on an array split by rows over several servers.
    pub distribution: Distribution,
    /// Whether the kernel's time stays the same whatever the size of its inputs (it returns
    /// views, or reads metadata only): callers then keep locks they would release around
    /// long work, such as Python's GIL.
    pub constant_time: bool,
    /// Whether the first argument is ragged data (`arrow.variable_shape_tensor`, or a list of
    /// arrays from Python): the kernel then receives it as two arrays, its values and its
    /// rows' shapes (see [`RaggedTensor::from_kernel_args`](crate::RaggedTensor::from_kernel_args)).
    pub ragged: bool,
    /// The function.
    pub func: KernelFn,
}

/// How a kernel runs on an array whose rows are split into contiguous shards held by
/// different servers (`arrowbridge.cluster`): each shard's server runs the kernel on its
/// rows (the other arguments sent whole), and the client combines the partial results.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Distribution {
    /// The shards' results cannot be combined into the whole's (a column statistic, the
    /// first `n` rows, ...): a cluster refuses the call unless asked to gather the array in
    /// one place first.
    #[default]
    Local,
    /// Row `i` of the result depends only on row `i` of the first argument: the shards'
    /// results, concatenated in row order, are the result.
    Rows,
    /// A reduction over the rows of the first argument whose partial results combine with
    /// `combine`. When `axis` names a parameter, the reduction is over the rows only when
    /// that parameter is absent, `None` or names axis 0; over any other axis the kernel
    /// keeps rows apart and is [`Distribution::Rows`].
    Reduce {
        /// How two partial results combine.
        combine: Combine,
        /// The kernel's axis parameter, if it has one.
        axis: Option<&'static str>,
    },
}

/// How the partial results of a [`Distribution::Reduce`] kernel combine (element-wise).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Combine {
    /// Added.
    Sum,
    /// The smaller kept.
    Min,
    /// The larger kept.
    Max,
}

impl Combine {
    /// `"sum"`, `"min"` or `"max"`.
    pub fn name(self) -> &'static str {
        match self {
            Combine::Sum => "sum",
            Combine::Min => "min",
            Combine::Max => "max",
        }
    }

    /// The combine step called `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        [Combine::Sum, Combine::Min, Combine::Max]
            .into_iter()
            .find(|c| c.name() == name)
    }
}

impl Distribution {
    /// Its JSON form, as servers describe kernels and plugins declare them: `"local"`,
    /// `"rows"`, or `{"reduce": "sum", "axis": "axis"}` (`axis` may be `null`).
    ///
    /// ```
    /// use arrowbridge::kernels::{Combine, Distribution};
    ///
    /// let sum = Distribution::Reduce { combine: Combine::Sum, axis: Some("axis") };
    /// assert_eq!(sum.to_json().to_string(), r#"{"axis":"axis","reduce":"sum"}"#);
    /// assert_eq!(Distribution::from_json(&sum.to_json(), |s| s.to_string().leak()), Some(sum));
    /// assert_eq!(Distribution::Rows.to_json(), "rows");
    /// ```
    pub fn to_json(self) -> serde_json::Value {
        match self {
            Distribution::Local => "local".into(),
            Distribution::Rows => "rows".into(),
            Distribution::Reduce { combine, axis } => {
                serde_json::json!({"reduce": combine.name(), "axis": axis})
            }
        }
    }

    /// The distribution `value` declares (see [`to_json`](Self::to_json)); `None` when it
    /// declares none that this version knows. `intern` keeps a parameter name alive.
    pub fn from_json(
        value: &serde_json::Value,
        intern: impl Fn(&str) -> &'static str,
    ) -> Option<Self> {
        match value {
            serde_json::Value::String(s) if s == "local" => Some(Distribution::Local),
            serde_json::Value::String(s) if s == "rows" => Some(Distribution::Rows),
            serde_json::Value::Object(o) => {
                let combine = Combine::from_name(o.get("reduce")?.as_str()?)?;
                let axis = match o.get("axis") {
                    None | Some(serde_json::Value::Null) => None,
                    Some(serde_json::Value::String(s)) => Some(intern(s)),
                    Some(_) => return None,
                };
                Some(Distribution::Reduce { combine, axis })
            }
            _ => None,
        }
    }
}

impl Kernel {
    /// A kernel with no keyword parameters that takes one or more arrays.
    pub fn new(
        name: &'static str,
        signature: &'static str,
        func: impl Fn(&[ArrowTensor], &Params) -> Result<Vec<ArrowTensor>> + Send + Sync + 'static,
    ) -> Self {
        Kernel {
            name,
            signature,
            params: &[],
            arity: None,
            distribution: Distribution::Local,
            constant_time: false,
            ragged: false,
            func: Arc::new(func),
        }
    }

    /// Declares that the kernel's time does not grow with its inputs (see
    /// [`constant_time`](Self::constant_time)).
    pub fn constant_time(mut self) -> Self {
        self.constant_time = true;
        self
    }

    /// Declares that the first argument is ragged data, received as its values and its rows'
    /// shapes (two arrays: count both in [`arity`](Self::arity)).
    pub fn ragged(mut self) -> Self {
        self.ragged = true;
        self
    }

    /// Declares the keyword parameters the kernel accepts.
    pub fn params(mut self, params: &'static [&'static str]) -> Self {
        self.params = params;
        self
    }

    /// Declares how many arrays the kernel takes.
    pub fn arity(mut self, arity: usize) -> Self {
        self.arity = Some(arity);
        self
    }

    /// Declares how the kernel runs on an array split by rows over several servers (by
    /// default it does not: [`Distribution::Local`]).
    pub fn distribution(mut self, distribution: Distribution) -> Self {
        self.distribution = distribution;
        self
    }
}

impl fmt::Debug for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Kernel")
            .field("name", &self.name)
            .field("signature", &self.signature)
            .field("params", &self.params)
            .field("arity", &self.arity)
            .field("distribution", &self.distribution)
            .field("constant_time", &self.constant_time)
            .field("ragged", &self.ragged)
            .finish_non_exhaustive()
    }
}

/// A keyword parameter's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Param {
    /// Not given (Python `None`, JSON `null`).
    None,
    /// A bool.
    Bool(bool),
    /// An int that fits in 64 bits.
    Int(i64),
    /// A float, NaN and infinities included.
    Float(f64),
    /// A string.
    Str(String),
    /// A list of ints (e.g. axes).
    Ints(Vec<i64>),
}

impl Param {
    /// The value as an error message shows it: whole when short, summarized when long (a
    /// list of 10^5 axes does not make a message of 700 KB, which no gRPC trailer carries).
    pub fn describe(&self) -> String {
        match self {
            Param::Ints(v) if v.len() > 8 => format!(
                "a list of {} ints [{}, {}, {}, ..., {}]",
                v.len(),
                v[0],
                v[1],
                v[2],
                v[v.len() - 1]
            ),
            Param::Ints(v) => format!("Ints({v:?})"),
            Param::Str(s) => format!("Str({:?})", shortened(s)),
            other => format!("{other:?}"),
        }
    }
}

/// `text`, cut to its first 80 characters (and how long it was) when longer.
fn shortened(text: &str) -> String {
    const KEEP: usize = 80;
    match text.char_indices().nth(KEEP) {
        None => text.to_string(),
        Some((end, _)) => format!("{}... ({} bytes in all)", &text[..end], text.len()),
    }
}

/// The keyword parameters of one call.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Params {
    kernel: &'static str,
    /// By name, each name once. A call passes a handful: a list searched in order beats a
    /// map (no node to allocate, no tree to walk).
    values: Vec<(String, Param)>,
}

impl Params {
    /// Parameters from name/value pairs; of two values given for one name, the last counts.
    pub fn new(values: impl IntoIterator<Item = (String, Param)>) -> Self {
        let mut params = Params::default();
        for (name, value) in values {
            params.insert(name, value);
        }
        params
    }

    /// No parameters yet, with room for `n`.
    pub fn with_capacity(n: usize) -> Self {
        Params {
            kernel: "",
            values: Vec::with_capacity(n),
        }
    }

    /// Sets parameter `name` (replacing any value it had).
    pub fn insert(&mut self, name: String, value: Param) {
        match self.values.binary_search_by(|(n, _)| n.as_str().cmp(&name)) {
            Ok(i) => self.values[i].1 = value,
            Err(i) => self.values.insert(i, (name, value)),
        }
    }

    /// The raw value of a parameter, if given (and not `None`).
    pub fn get(&self, name: &str) -> Option<&Param> {
        self.values
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, p)| p)
            .filter(|p| **p != Param::None)
    }

    /// An integer parameter.
    pub fn int(&self, name: &str) -> Result<Option<i64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Param::Int(v)) => Ok(Some(*v)),
            Some(other) => {
                Err(self.error(name, format!("expected an int, got {}", other.describe())))
            }
        }
    }

    /// A float parameter (ints are accepted).
    pub fn float(&self, name: &str) -> Result<Option<f64>> {
        match self.get(name) {
            None => Ok(None),
            Some(Param::Float(v)) => Ok(Some(*v)),
            Some(Param::Int(v)) => Ok(Some(*v as f64)),
            Some(other) => {
                Err(self.error(name, format!("expected a float, got {}", other.describe())))
            }
        }
    }

    /// An error about parameter `name` of this call's kernel.
    pub fn error(&self, name: &str, message: impl Into<String>) -> Error {
        Error::Param {
            kernel: self.kernel.to_string(),
            name: name.to_string(),
            message: message.into(),
        }
    }

    /// Names of the given parameters.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.values.iter().map(|(n, _)| n.as_str())
    }

    /// The parameters as a JSON object: the one form they take between processes (Flight
    /// commands, kernel plugins). JSON has no NaN or infinity; those travel as
    /// `{"float": "nan" | "inf" | "-inf"}`.
    ///
    /// ```
    /// use arrowbridge::{Param, Params};
    /// let params = Params::new([("eps".to_string(), Param::Float(f64::NAN))]);
    /// let json = params.to_json();
    /// assert_eq!(json.to_string(), r#"{"eps":{"float":"nan"}}"#);
    /// let back = Params::from_json("zscore", json.as_object().unwrap()).unwrap();
    /// assert!(matches!(back.get("eps"), Some(Param::Float(f)) if f.is_nan()));
    /// ```
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::{json, Value};
        let values = self
            .values
            .iter()
            .map(|(name, value)| {
                let value = match value {
                    Param::None => Value::Null,
                    Param::Bool(b) => json!(b),
                    Param::Int(i) => json!(i),
                    Param::Float(f) if f.is_nan() => json!({"float": "nan"}),
                    Param::Float(f) if f.is_infinite() => {
                        json!({"float": if *f > 0.0 { "inf" } else { "-inf" }})
                    }
                    Param::Float(f) => json!(f),
                    Param::Str(s) => json!(s),
                    Param::Ints(v) => json!(v),
                };
                (name.clone(), value)
            })
            .collect();
        Value::Object(values)
    }

    /// Parameters from the JSON form of [`to_json`](Self::to_json); `kernel` names the kernel
    /// in errors.
    pub fn from_json(
        kernel: &str,
        object: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Params> {
        use serde_json::Value;
        let error = |name: &str, message: String| Error::Param {
            kernel: kernel.to_string(),
            name: name.to_string(),
            message,
        };
        let int = |name: &str, n: &serde_json::Number| {
            n.as_i64()
                .ok_or_else(|| error(name, format!("{n} does not fit in a 64-bit signed integer")))
        };
        let mut params = Params::default();
        for (name, value) in object {
            let param = match value {
                Value::Null => Param::None,
                Value::Bool(b) => Param::Bool(*b),
                Value::Number(n) if n.is_i64() || n.is_u64() => Param::Int(int(name, n)?),
                Value::Number(n) => Param::Float(
                    n.as_f64()
                        .ok_or_else(|| error(name, format!("{n} is not a number")))?,
                ),
                Value::String(s) => Param::Str(s.clone()),
                Value::Array(items) => Param::Ints(
                    items
                        .iter()
                        .map(|item| match item {
                            Value::Number(n) if n.is_i64() || n.is_u64() => int(name, n),
                            other => Err(error(name, format!("lists must hold ints, got {other}"))),
                        })
                        .collect::<Result<_>>()?,
                ),
                Value::Object(o) => match o.get("float").and_then(Value::as_str) {
                    Some(text @ ("nan" | "inf" | "-inf")) => {
                        Param::Float(text.parse().expect("Rust parses nan, inf and -inf"))
                    }
                    _ => {
                        return Err(error(
                            name,
                            format!("unsupported value {}; expected null, a bool, a number, a string, a list of ints or {{\"float\": \"nan\" | \"inf\" | \"-inf\"}}", shortened(&value.to_string())),
                        ))
                    }
                },
            };
            params.insert(name.clone(), param);
        }
        Ok(params)
    }
}

/// Kernels by name.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    /// Sorted by name. A registry holds tens of kernels: comparing lengths first finds one
    /// by scanning faster than a map can hash or walk to it.
    kernels: Vec<Kernel>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// A registry holding the built-in kernels: `identity`, `sum`, `add`, `matmul`,
    /// `normalize`, and over ragged data `ragged_sum` and `pad`.
    pub fn with_builtins() -> Self {
        let mut registry = Self::new();
        for kernel in builtin::kernels().into_iter().chain(ragged::kernels()) {
            registry
                .register(kernel)
                .expect("built-in kernel names are unique");
        }
        registry
    }

    /// Adds a kernel; a name that is taken is an error.
    pub fn register(&mut self, kernel: Kernel) -> Result<()> {
        match self.kernels.binary_search_by(|k| k.name.cmp(kernel.name)) {
            Ok(_) => Err(Error::kernel(
                kernel.name,
                "a kernel of this name is already registered",
            )),
            Err(i) => {
                self.kernels.insert(i, kernel);
                Ok(())
            }
        }
    }

    /// Whether a kernel called `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn find(&self, name: &str) -> Option<&Kernel> {
        self.kernels
            .iter()
            .find(|k| k.name.len() == name.len() && k.name == name)
    }

    /// The kernel called `name`.
    pub fn get(&self, name: &str) -> Result<&Kernel> {
        self.find(name).ok_or_else(|| Error::UnknownKernel {
            name: name.to_string(),
            available: self
                .kernels
                .iter()
                .map(|k| k.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
    }

    /// All kernels, by name.
    pub fn iter(&self) -> impl Iterator<Item = &Kernel> {
        self.kernels.iter()
    }

    /// Runs kernel `name` on `inputs`. Unknown parameters, a wrong number of inputs and a
    /// panic inside the kernel all come back as errors.
    pub fn call(
        &self,
        name: &str,
        inputs: &[ArrowTensor],
        params: Params,
    ) -> Result<Vec<ArrowTensor>> {
        self.get(name)?.call(inputs, params)
    }
}

impl Kernel {
    /// Runs the kernel on `inputs`. Unknown parameters, a wrong number of inputs and a panic
    /// inside the kernel all come back as errors.
    pub fn call(&self, inputs: &[ArrowTensor], mut params: Params) -> Result<Vec<ArrowTensor>> {
        let name = self.name;
        params.kernel = name;
        if let Some(unknown) = params.names().find(|p| !self.params.contains(p)) {
            return Err(params.error(
                unknown,
                format!(
                    "unknown parameter; {} accepts {:?}",
                    self.signature, self.params
                ),
            ));
        }
        match self.arity {
            Some(n) if inputs.len() != n => {
                return Err(Error::kernel(
                    name,
                    format!(
                        "takes {n} array(s), {} given; {}",
                        inputs.len(),
                        self.signature
                    ),
                ))
            }
            None if inputs.is_empty() => {
                return Err(Error::kernel(
                    name,
                    format!("takes at least one array; {}", self.signature),
                ))
            }
            _ => {}
        }
        catch_unwind(AssertUnwindSafe(|| (self.func)(inputs, &params))).unwrap_or_else(|panic| {
            let message = crate::error::panic_message(panic.as_ref());
            Err(Error::kernel(name, format!("panicked: {message}")))
        })
    }
}

/// The error for an argument of the wrong dtype.
pub fn dtype_error(kernel: &str, arg: usize, expected: &str, got: &ArrowTensor) -> Error {
    Error::DType {
        kernel: kernel.to_string(),
        arg,
        expected: expected.to_string(),
        got: got.dtype().name(),
    }
}
