//! ONNX import: a feed-forward ONNX graph to a [`Network`] (docs/formats.md).
//!
//! The graph is read in its (topological) node order. Every tensor computed from the graph input
//! is kept as an affine function of the vector carried from the last emitted layer; affine
//! operations compose into it, and each activation emits a [`Layer`] (and the graph output a last
//! one), so input normalization (`Sub`/`Div`/`Mul` by constants) folds into the first layer. A
//! graph with skip connections (`Add` or `Sub` of two computed tensors, as in residual networks)
//! becomes a chain too: a tensor still needed after a ReLU layer rides through it as identity
//! neurons ([`crate::network::blocks`]), and the layers' maps are block operators. Supported:
//! `Gemm` (transA = 0, any transB/alpha/beta), `MatMul` (computed tensor on the left), `Add`,
//! `Sub` (of two computed tensors, or by a broadcastable constant), `Mul`, `Div` by broadcastable
//! constants, `Conv` (2-D, symmetric pads, any dilation, one group; kept as an operator while only
//! per-channel scalings surround it), `BatchNormalization` (inference), `Flatten`, `Reshape`
//! (constant shape), `AveragePool` / `GlobalAveragePool` (a convolution with a diagonal kernel),
//! `Identity`, `Dropout`, `Constant`, and the activations `Relu`, `Sigmoid`, `Tanh`, `Softplus`
//! (skip connections only around ReLU layers). Tensors in float32, float64, int32 or int64 (typed
//! fields or little-endian `raw_data`). Anything else is [`Error::OnnxNode`] naming the node's
//! index, name and op type; a file that is not a valid ModelProto is [`Error::ModelFormat`].

use std::collections::HashMap;
use std::path::Path;

use faer::Mat;
use prost::Message;

use super::onnx_proto::{self as pb, AttributeProto, GraphProto, NodeProto, TensorProto};
use crate::error::{Error, Result};
use crate::network::conv::{Conv2d, Conv2dShape, on_slice, per_channel};
use crate::network::{Activation, Block, Blocks, Layer, Network, Piece};

/// A constant tensor: row-major values and dimensions.
#[derive(Clone, Debug, PartialEq)]
struct Tensor {
    dims: Vec<usize>,
    values: Vec<f64>,
}

/// Loads a network from an ONNX file.
pub fn load_onnx(path: impl AsRef<Path>) -> Result<Network> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    onnx_from_bytes(&bytes).map_err(|e| super::with_path(e, path))
}

/// Parses a network from the bytes of an ONNX ModelProto.
pub fn onnx_from_bytes(bytes: &[u8]) -> Result<Network> {
    let model = pb::ModelProto::decode(bytes).map_err(|e| format_err(format!("not an ONNX ModelProto: {e}")))?;
    let graph = model.graph.ok_or_else(|| format_err("the model has no graph"))?;
    convert(&graph)
}

fn format_err(detail: impl Into<String>) -> Error {
    Error::ModelFormat { path: None, detail: detail.into() }
}

fn tensor(t: &TensorProto) -> Result<Tensor> {
    let name = &t.name;
    if t.data_location == Some(1) {
        return Err(Error::Unsupported(format!("tensor '{name}' keeps its data in an external file")));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format_err(format!("tensor '{name}' has a negative dimension {d}"))))
        .collect::<Result<_>>()?;
    let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let numel = numel.ok_or_else(|| format_err(format!("tensor '{name}' is too large")))?;
    let raw = &t.raw_data;
    let from_raw = |width: usize, f: &dyn Fn(&[u8]) -> f64| -> Result<Vec<f64>> {
        if raw.len() != numel * width {
            return Err(format_err(format!(
                "tensor '{name}' has {} bytes of raw data, expected {}",
                raw.len(),
                numel * width
            )));
        }
        Ok(raw.chunks_exact(width).map(f).collect())
    };
    let values: Vec<f64> = match t.data_type {
        pb::FLOAT if !raw.is_empty() => from_raw(4, &|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)?,
        pb::FLOAT => t.float_data.iter().map(|&v| v as f64).collect(),
        pb::DOUBLE if !raw.is_empty() => from_raw(8, &|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))?,
        pb::DOUBLE => t.double_data.clone(),
        pb::INT64 if !raw.is_empty() => from_raw(8, &|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)?,
        pb::INT64 => t.int64_data.iter().map(|&v| v as f64).collect(),
        pb::INT32 if !raw.is_empty() => from_raw(4, &|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)?,
        pb::INT32 => t.int32_data.iter().map(|&v| v as f64).collect(),
        other => {
            return Err(Error::Unsupported(format!(
                "tensor '{name}' has ONNX data type {other} (float32, float64, int32 and int64 are supported)"
            )));
        }
    };
    if values.len() != numel {
        return Err(format_err(format!("tensor '{name}' has {} values for dimensions {dims:?}", values.len())));
    }
    Ok(Tensor { dims, values })
}

/// A linear map from one carried segment to a value, kept in the cheapest form.
#[derive(Clone)]
enum Pending {
    /// The identity.
    Identity,
    /// x -> d ⊙ x.
    Diag(Vec<f64>),
    Dense(Mat<f64>),
    /// A convolution, kept as an operator while only per-channel scalings follow it.
    Conv(Box<Conv2d>),
}

impl Pending {
    /// The map as a dense matrix; `n` is its input size (the segment's).
    fn dense(self, n: usize) -> Mat<f64> {
        match self {
            Pending::Identity => Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 }),
            Pending::Diag(d) => Mat::from_fn(n, n, |i, j| if i == j { d[i] } else { 0.0 }),
            Pending::Dense(w) => w,
            Pending::Conv(c) => c.lower(),
        }
    }

    /// x -> m (self x).
    fn then_linear(self, m: &Mat<f64>, n: usize) -> Pending {
        Pending::Dense(match self {
            Pending::Identity => m.clone(),
            Pending::Diag(d) => Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] * d[j]),
            other => crate::linalg::mul(m.as_ref(), other.dense(n).as_ref()),
        })
    }

    /// x -> conv(self x): the convolution stays an operator after the identity or a scaling
    /// constant on each of its input channels.
    fn then_conv(self, conv: &Conv2d, n: usize) -> Pending {
        let [_, h, w] = conv.shape().input;
        match self {
            Pending::Identity => Pending::Conv(Box::new(conv.clone())),
            Pending::Diag(d) if per_channel(&d, h * w).is_some() => {
                let channel = per_channel(&d, h * w).expect("checked");
                Pending::Conv(Box::new(conv.scale_inputs(&channel)))
            }
            other => Pending::Dense(crate::linalg::mul(conv.lower().as_ref(), other.dense(n).as_ref())),
        }
    }

    /// x -> s ⊙ (self x).
    fn then_scale(self, s: &[f64]) -> Pending {
        match self {
            Pending::Identity => Pending::Diag(s.to_vec()),
            Pending::Diag(d) => Pending::Diag(d.iter().zip(s).map(|(a, b)| a * b).collect()),
            Pending::Conv(conv) => {
                let [_, oh, ow] = conv.output_shape();
                match per_channel(s, oh * ow) {
                    Some(channel) => Pending::Conv(Box::new(conv.scale_outputs(&channel))),
                    None => {
                        let mut w = conv.lower();
                        scale_rows(&mut w, s);
                        Pending::Dense(w)
                    }
                }
            }
            Pending::Dense(mut w) => {
                scale_rows(&mut w, s);
                Pending::Dense(w)
            }
        }
    }

    /// x -> self x + other x.
    fn plus(self, other: Pending, n: usize) -> Pending {
        let diag = |p: &Pending| match p {
            Pending::Identity => Some(vec![1.0; n]),
            Pending::Diag(d) => Some(d.clone()),
            _ => None,
        };
        if let (Some(a), Some(b)) = (diag(&self), diag(&other)) {
            return Pending::Diag(a.iter().zip(&b).map(|(x, y)| x + y).collect());
        }
        if let (Pending::Conv(a), Pending::Conv(b)) = (&self, &other)
            && a.shape() == b.shape()
        {
            let kernel = a.kernel().iter().zip(b.kernel()).map(|(x, y)| x + y).collect();
            if let Ok(c) = Conv2d::new(a.shape().clone(), kernel, 0) {
                return Pending::Conv(Box::new(c));
            }
        }
        let (a, b) = (self.dense(n), other.dense(n));
        Pending::Dense(Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] + b[(i, j)]))
    }

    /// The map as a piece of a block operator.
    fn piece(self, n: usize) -> Piece {
        match self {
            Pending::Identity => Piece::Diag(vec![1.0; n]),
            Pending::Diag(d) => Piece::Diag(d),
            Pending::Dense(w) => Piece::Dense(w),
            Pending::Conv(c) => Piece::Conv(c),
        }
    }
}

/// One segment of the vector carried from the last emitted layer (or the network input).
#[derive(Clone, Copy)]
struct Segment {
    size: usize,
    /// A ReLU's output: carried through the next ReLU as itself.
    nonneg: bool,
}

/// A tensor of the graph as an affine function of the carried segments: `sum of map(segment)
/// + bias`, at most one term per segment.
#[derive(Clone)]
struct Value {
    shape: Vec<usize>,
    terms: Vec<(usize, Pending)>,
    bias: Vec<f64>,
}

impl Value {
    fn size(&self) -> usize {
        self.shape.iter().product()
    }

    /// Composes x -> m x + c.
    fn linear(&mut self, m: Mat<f64>, c: Vec<f64>, segs: &[Segment]) {
        let bias = crate::linalg::mat_vec(m.as_ref(), &self.bias).iter().zip(&c).map(|(a, b)| a + b).collect();
        for (seg, map) in &mut self.terms {
            *map = std::mem::replace(map, Pending::Identity).then_linear(&m, segs[*seg].size);
        }
        self.bias = bias;
    }

    /// Composes x -> conv(x) + c.
    fn conv(&mut self, conv: Conv2d, c: Vec<f64>, segs: &[Segment]) {
        let bias: Vec<f64> = on_slice(&self.bias, |m| conv.forward(m)).iter().zip(&c).map(|(a, b)| a + b).collect();
        for (seg, map) in &mut self.terms {
            *map = std::mem::replace(map, Pending::Identity).then_conv(&conv, segs[*seg].size);
        }
        self.bias = bias;
    }

    /// Composes x -> s ⊙ x + c (elementwise).
    fn scale_shift(&mut self, s: &[f64], c: &[f64]) {
        for (_, map) in &mut self.terms {
            *map = std::mem::replace(map, Pending::Identity).then_scale(s);
        }
        for (i, b) in self.bias.iter_mut().enumerate() {
            *b = *b * s[i] + c[i];
        }
    }

    /// self + other (the same shape).
    fn plus(mut self, other: Value, segs: &[Segment]) -> Value {
        for (seg, map) in other.terms {
            match self.terms.iter().position(|(s, _)| *s == seg) {
                Some(k) => {
                    let mine = std::mem::replace(&mut self.terms[k].1, Pending::Identity);
                    self.terms[k].1 = mine.plus(map, segs[seg].size);
                }
                None => self.terms.push((seg, map)),
            }
        }
        self.bias.iter_mut().zip(&other.bias).for_each(|(a, b)| *a += b);
        self
    }
}

/// The graph being lowered: the carried segments, the live tensors as affine functions of them,
/// and the layers emitted so far.
struct Lowering {
    segments: Vec<Segment>,
    values: HashMap<String, Value>,
    layers: Vec<Layer>,
}

impl Lowering {
    /// Emits the layer `act(value)`, carrying along every segment a live tensor (`self.values`)
    /// still reads (a ReLU output as itself, anything else as the pair relu(x), relu(-x)), and
    /// returns the activation's output as a new value.
    fn emit(&mut self, value: Value, act: Activation) -> std::result::Result<Value, String> {
        let mut needed: Vec<usize> = self.values.values().flat_map(|v| v.terms.iter().map(|(s, _)| *s)).collect();
        needed.sort_unstable();
        needed.dedup();
        if !needed.is_empty() && act != Activation::Relu {
            return Err(format!(
                "a tensor computed before this {act:?} activation is used after it (a skip connection): \
                 only ReLU layers can carry values along"
            ));
        }
        let n = value.size();
        let layer = self.layers.len();
        let plain = needed.is_empty() && self.segments.len() == 1 && value.terms.len() == 1;
        let new_layer = if plain {
            let (seg, map) = value.terms.into_iter().next().expect("one term");
            match map {
                Pending::Conv(conv) => Layer::conv2d(*conv, value.bias, act),
                other => Layer::new(other.dense(self.segments[seg].size), value.bias, act),
            }
        } else {
            let offsets: Vec<usize> = self
                .segments
                .iter()
                .scan(0, |o, s| {
                    let here = *o;
                    *o += s.size;
                    Some(here)
                })
                .collect();
            let input_size: usize = self.segments.iter().map(|s| s.size).sum();
            let mut blocks: Vec<Block> = value
                .terms
                .into_iter()
                .map(|(seg, map)| Block { output: 0, input: offsets[seg], piece: map.piece(self.segments[seg].size) })
                .collect();
            // New segments: the activation's output, then the carried ones.
            let mut segments = vec![Segment { size: n, nonneg: act == Activation::Relu }];
            let mut out = n;
            let mut remap: HashMap<usize, (usize, Option<usize>)> = HashMap::new();
            for &s in &needed {
                let size = self.segments[s].size;
                let pos = segments.len();
                blocks.push(Block { output: out, input: offsets[s], piece: Piece::Diag(vec![1.0; size]) });
                segments.push(Segment { size, nonneg: true });
                out += size;
                let neg = (!self.segments[s].nonneg).then(|| {
                    blocks.push(Block { output: out, input: offsets[s], piece: Piece::Diag(vec![-1.0; size]) });
                    segments.push(Segment { size, nonneg: true });
                    out += size;
                    pos + 1
                });
                remap.insert(s, (pos, neg));
            }
            let mut bias = value.bias;
            bias.resize(out, 0.0);
            let op = Blocks::new(input_size, out, blocks, layer).map_err(|e| e.to_string())?;
            for v in self.values.values_mut() {
                let terms = std::mem::take(&mut v.terms);
                for (s, map) in terms {
                    let (pos, neg) = remap[&s];
                    if let Some(neg) = neg {
                        // x = relu(x) - relu(-x).
                        v.terms.push((neg, map.clone().then_scale(&vec![-1.0; v.size()])));
                    }
                    v.terms.push((pos, map));
                }
            }
            self.segments = segments;
            Layer::blocks(op, bias, act)
        };
        if plain {
            self.segments = vec![Segment { size: n, nonneg: act == Activation::Relu }];
        }
        self.layers.push(new_layer);
        Ok(Value { shape: value.shape, terms: vec![(0, Pending::Identity)], bias: vec![0.0; n] })
    }
}

fn scale_rows(w: &mut Mat<f64>, s: &[f64]) {
    for j in 0..w.ncols() {
        for (i, v) in w.col_mut(j).iter_mut().enumerate() {
            *v *= s[i];
        }
    }
}

/// Broadcasts a constant (numpy rules, right-aligned, an optional leading batch dimension of 1) to
/// the computed tensor's shape.
fn broadcast(c: &Tensor, shape: &[usize]) -> Option<Vec<f64>> {
    let mut dims = c.dims.clone();
    while dims.len() > shape.len() {
        if dims[0] != 1 {
            return None;
        }
        dims.remove(0);
    }
    let offset = shape.len() - dims.len();
    for (k, &d) in dims.iter().enumerate() {
        if d != 1 && d != shape[offset + k] {
            return None;
        }
    }
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    let mut idx = vec![0usize; shape.len()];
    for _ in 0..n {
        let mut flat = 0;
        for (k, &d) in dims.iter().enumerate() {
            flat = flat * d + if d == 1 { 0 } else { idx[offset + k] };
        }
        out.push(c.values[flat]);
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    Some(out)
}

fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn convert(graph: &GraphProto) -> Result<Network> {
    let mut consts: HashMap<String, Tensor> = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name.clone(), tensor(t)?);
    }
    let input = graph
        .input
        .iter()
        .find(|v| !consts.contains_key(&v.name))
        .ok_or_else(|| format_err("the graph has no input that is not an initializer"))?;
    let dims: Vec<Option<i64>> = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.iter().map(|d| d.dim_value).collect())
        .ok_or_else(|| format_err(format!("the graph input '{}' has no tensor shape", input.name)))?;
    // Drop a leading batch dimension (symbolic or 1) when there is more than one dimension.
    let body = if dims.len() > 1 && dims[0].is_none_or(|d| d == 1) { &dims[1..] } else { &dims[..] };
    let shape: Vec<usize> = body
        .iter()
        .map(|d| match d {
            Some(v) if *v > 0 => Ok(*v as usize),
            _ => Err(format_err(format!("the graph input '{}' has shape {dims:?}: sizes must be known", input.name))),
        })
        .collect::<Result<_>>()?;
    let input_shape = shape.clone();
    let n0: usize = shape.iter().product();
    if n0 == 0 {
        return Err(Error::Empty("the graph input has no elements".into()));
    }
    // The last node reading each tensor (a graph output: never dropped).
    let mut last_use: HashMap<&str, usize> = HashMap::new();
    for (index, node) in graph.node.iter().enumerate() {
        for name in &node.input {
            last_use.insert(name, index);
        }
    }
    for out in &graph.output {
        last_use.insert(&out.name, usize::MAX);
    }
    let mut low =
        Lowering { segments: vec![Segment { size: n0, nonneg: false }], values: HashMap::new(), layers: Vec::new() };
    low.values.insert(input.name.clone(), Value { shape, terms: vec![(0, Pending::Identity)], bias: vec![0.0; n0] });
    for (index, node) in graph.node.iter().enumerate() {
        let fail =
            |detail: String| Error::OnnxNode { index, name: node.name.clone(), op_type: node.op_type.clone(), detail };
        if !node.domain.is_empty() && node.domain != "ai.onnx" {
            return Err(fail(format!("operator domain '{}' is not supported", node.domain)));
        }
        if node.op_type == "Constant" {
            let out = node.output.first().ok_or_else(|| fail("no output".into()))?;
            let value = if let Some(t) = attr(node, "value").and_then(|a| a.t.as_ref()) {
                tensor(t)?
            } else if let Some(a) = attr(node, "value_float") {
                Tensor { dims: vec![], values: vec![a.f as f64] }
            } else if let Some(a) = attr(node, "value_floats") {
                Tensor { dims: vec![a.floats.len()], values: a.floats.iter().map(|&v| v as f64).collect() }
            } else if let Some(a) = attr(node, "value_int") {
                Tensor { dims: vec![], values: vec![a.i as f64] }
            } else if let Some(a) = attr(node, "value_ints") {
                Tensor { dims: vec![a.ints.len()], values: a.ints.iter().map(|&v| v as f64).collect() }
            } else {
                return Err(fail("a Constant without a supported value attribute".into()));
            };
            consts.insert(out.clone(), value);
            continue;
        }
        // Inputs: tensors computed from the graph input (taken out of the live set at their last
        // use) and constants (empty names are omitted optional inputs).
        let mut vars: Vec<(usize, Value)> = Vec::new();
        let mut args: Vec<Option<&Tensor>> = Vec::new();
        for (k, name) in node.input.iter().enumerate() {
            if name.is_empty() {
                args.push(None);
            } else if let Some(t) = consts.get(name) {
                args.push(Some(t));
            } else if low.values.contains_key(name) {
                let again = node.input[k + 1..].contains(name);
                let v = if last_use.get(name.as_str()) == Some(&index) && !again {
                    low.values.remove(name).expect("present")
                } else {
                    low.values[name].clone()
                };
                vars.push((k, v));
                args.push(None);
            } else {
                return Err(fail(format!("input '{name}' is neither a constant nor computed by an earlier node")));
            }
        }
        let Some((pos, _)) = vars.first() else {
            return Err(fail("does not read any tensor computed from the graph input".into()));
        };
        let pos = *pos;
        let out = node.output.first().ok_or_else(|| fail("no output".into()))?.clone();
        // Two tensor operands: only their sum or difference is affine.
        if vars.len() > 1 {
            let two = vars.len() == 2 && matches!(node.op_type.as_str(), "Add" | "Sub");
            if !two {
                return Err(fail(format!(
                    "{} tensors computed from the input as operands (only Add and Sub of two are affine)",
                    vars.len()
                )));
            }
            let (_, b) = vars.pop().expect("two");
            let (_, mut a) = vars.pop().expect("two");
            if a.shape != b.shape && a.size() != b.size() {
                return Err(fail(format!("operands of shapes {:?} and {:?}", a.shape, b.shape)));
            }
            let mut b = b;
            if node.op_type == "Sub" {
                let m = b.size();
                b.scale_shift(&vec![-1.0; m], &vec![0.0; m]);
            }
            a = a.plus(b, &low.segments);
            if last_use.contains_key(out.as_str()) {
                low.values.insert(out, a);
            }
            continue;
        }
        let mut v = vars.pop().expect("one").1;

        let n = v.size();
        let constant = |k: usize| args.get(k).copied().flatten();
        let other = || (0..args.len()).find(|&k| k != pos).and_then(constant);
        match node.op_type.as_str() {
            "Relu" | "Sigmoid" | "Tanh" | "Softplus" => {
                let act = match node.op_type.as_str() {
                    "Relu" => Activation::Relu,
                    "Sigmoid" => Activation::Sigmoid,
                    "Tanh" => Activation::Tanh,
                    _ => Activation::Softplus,
                };
                v = low.emit(v, act).map_err(fail)?;
            }
            "Identity" | "Dropout" => {}
            "Flatten" => {
                let axis = attr(node, "axis").map_or(1, |a| a.i);
                if axis != 0 && axis != 1 {
                    return Err(fail(format!("axis {axis} (only 0 or 1, after the batch dimension)")));
                }
                v.shape = vec![n];
            }
            "Reshape" => {
                let target = constant(1).ok_or_else(|| fail("the shape must be a constant".into()))?;
                let mut t: Vec<i64> = target.values.iter().map(|&v| v as i64).collect();
                if t.len() > 1 && (t[0] == 1 || t[0] == -1 || t[0] == 0) {
                    t.remove(0);
                }
                let known: i64 = t.iter().filter(|&&d| d > 0).product();
                let holes = t.iter().filter(|&&d| d == -1).count();
                let new: Vec<usize> = t
                    .iter()
                    .map(|&d| if d == -1 && known > 0 { n / known as usize } else { d.max(0) as usize })
                    .collect();
                if holes > 1 || t.contains(&0) || new.iter().product::<usize>() != n {
                    return Err(fail(format!("target shape {:?} does not fit {n} values", target.values)));
                }
                v.shape = new;
            }
            "Gemm" | "MatMul" => {
                if pos != 0 {
                    return Err(fail("the computed tensor must be the first operand".into()));
                }
                if node.op_type == "Gemm" && attr(node, "transA").is_some_and(|a| a.i != 0) {
                    return Err(fail("transA = 1 is not supported".into()));
                }
                let b = constant(1).ok_or_else(|| fail("the weight must be a constant".into()))?;
                if b.dims.len() != 2 {
                    return Err(fail(format!("weight of rank {} (2 expected)", b.dims.len())));
                }
                let trans_b = node.op_type == "Gemm" && attr(node, "transB").is_some_and(|a| a.i != 0);
                let alpha = if node.op_type == "Gemm" { attr(node, "alpha").map_or(1.0, |a| a.f as f64) } else { 1.0 };
                let beta = if node.op_type == "Gemm" { attr(node, "beta").map_or(1.0, |a| a.f as f64) } else { 1.0 };
                let (rows, cols) = (b.dims[0], b.dims[1]);
                let (out_n, in_n) = if trans_b { (rows, cols) } else { (cols, rows) };
                if in_n != n {
                    return Err(fail(format!("weight takes {in_n} inputs, the computed tensor has {n}")));
                }
                let m = Mat::from_fn(out_n, in_n, |o, i| {
                    alpha * if trans_b { b.values[o * cols + i] } else { b.values[i * cols + o] }
                });
                let c = match constant(2) {
                    Some(c) => broadcast(c, &[out_n])
                        .ok_or_else(|| fail(format!("bias of shape {:?} does not broadcast to {out_n}", c.dims)))?
                        .iter()
                        .map(|v| beta * v)
                        .collect(),
                    None => vec![0.0; out_n],
                };
                v.linear(m, c, &low.segments);
                v.shape = vec![out_n];
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let c = other().ok_or_else(|| fail("the other operand must be a constant".into()))?;
                let cv = broadcast(c, &v.shape).ok_or_else(|| {
                    fail(format!("constant of shape {:?} does not broadcast to {:?}", c.dims, v.shape))
                })?;
                let ones = vec![1.0; n];
                let zeros = vec![0.0; n];
                match (node.op_type.as_str(), pos) {
                    ("Add", _) => v.scale_shift(&ones, &cv),
                    ("Sub", 0) => v.scale_shift(&ones, &cv.iter().map(|x| -x).collect::<Vec<_>>()),
                    ("Sub", _) => v.scale_shift(&vec![-1.0; n], &cv),
                    ("Mul", _) => v.scale_shift(&cv, &zeros),
                    ("Div", 0) => {
                        if cv.contains(&0.0) {
                            return Err(fail("division by zero".into()));
                        }
                        v.scale_shift(&cv.iter().map(|x| 1.0 / x).collect::<Vec<_>>(), &zeros)
                    }
                    _ => return Err(fail("a constant divided by a computed tensor is not affine".into())),
                }
            }
            "BatchNormalization" => {
                let eps = attr(node, "epsilon").map_or(1e-5, |a| a.f as f64);
                let p: Vec<&Tensor> = (1..5)
                    .map(|k| constant(k).ok_or_else(|| fail("scale, bias, mean and variance must be constants".into())))
                    .collect::<Result<_>>()?;
                let channels = *v.shape.first().ok_or_else(|| fail("no channel dimension".into()))?;
                if p.iter().any(|t| t.values.len() != channels) {
                    return Err(fail(format!("parameters do not have {channels} channels")));
                }
                let per = n / channels;
                let s: Vec<f64> = (0..n).map(|i| p[0].values[i / per] / (p[3].values[i / per] + eps).sqrt()).collect();
                let c: Vec<f64> = (0..n).map(|i| p[1].values[i / per] - p[2].values[i / per] * s[i]).collect();
                v.scale_shift(&s, &c);
            }
            "AveragePool" | "GlobalAveragePool" => {
                let [c, h, w] = v.shape[..] else {
                    return Err(fail(format!("input of shape {:?} (C, H, W expected)", v.shape)));
                };
                let global = node.op_type == "GlobalAveragePool";
                let ints = |name: &str, default: Vec<i64>| attr(node, name).map_or(default, |a| a.ints.clone());
                let kernel = if global { vec![h as i64, w as i64] } else { ints("kernel_shape", vec![]) };
                let strides = if global { vec![1, 1] } else { ints("strides", vec![1, 1]) };
                let pads = if global { vec![0; 4] } else { ints("pads", vec![0, 0, 0, 0]) };
                if attr(node, "ceil_mode").is_some_and(|a| a.i != 0) {
                    return Err(fail("ceil_mode = 1 is not supported".into()));
                }
                if attr(node, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
                    return Err(fail("auto_pad is not supported (write explicit pads)".into()));
                }
                if ints("dilations", vec![1, 1]).iter().any(|&d| d != 1) {
                    return Err(fail("dilated pooling is not supported".into()));
                }
                if kernel.len() != 2
                    || strides.len() != 2
                    || pads.len() != 4
                    || kernel.iter().chain(&strides).any(|&v| v < 1)
                    || pads.iter().any(|&v| v < 0)
                {
                    return Err(fail(format!("kernel {kernel:?} / strides {strides:?} / pads {pads:?} are not 2-D")));
                }
                if pads[0] != pads[2] || pads[1] != pads[3] {
                    return Err(fail(format!("asymmetric pads {pads:?} are not supported")));
                }
                let (kh, kw) = (kernel[0] as usize, kernel[1] as usize);
                let include_pad = attr(node, "count_include_pad").is_some_and(|a| a.i != 0);
                let geometry = Conv2dShape::new(
                    [c, h, w],
                    [c, c, kh, kw],
                    [strides[0] as usize, strides[1] as usize],
                    [pads[0] as usize, pads[1] as usize],
                );
                let layer = low.layers.len();
                let shape = geometry.output(layer).map_err(|e| fail(e.to_string()))?;
                // A convolution with a diagonal kernel of ones, then the division by the number of
                // taps averaged (all of them, or only those inside the image).
                let ones: Vec<f64> = (0..c * c * kh * kw)
                    .map(|j| if j / (kh * kw) % c == j / (c * kh * kw) { 1.0 } else { 0.0 })
                    .collect();
                let conv = Conv2d::new(geometry, ones, layer).map_err(|e| fail(e.to_string()))?;
                let counts = if include_pad {
                    vec![(kh * kw) as f64; shape[1] * shape[2]]
                } else {
                    let image = vec![1.0; h * w];
                    let probe = Conv2d::new(
                        Conv2dShape::new(
                            [1, h, w],
                            [1, 1, kh, kw],
                            [strides[0] as usize, strides[1] as usize],
                            [pads[0] as usize, pads[1] as usize],
                        ),
                        vec![1.0; kh * kw],
                        layer,
                    )
                    .map_err(|e| fail(e.to_string()))?;
                    on_slice(&image, |m| probe.forward(m))
                };
                let n_out = c * shape[1] * shape[2];
                v.conv(conv, vec![0.0; n_out], &low.segments);
                let per = shape[1] * shape[2];
                let scale: Vec<f64> = (0..n_out).map(|j| 1.0 / counts[j % per]).collect();
                v.shape = shape.to_vec();
                v.scale_shift(&scale, &vec![0.0; n_out]);
            }
            "Conv" => {
                if pos != 0 {
                    return Err(fail("the computed tensor must be the first operand".into()));
                }
                let [c, h, w] = v.shape[..] else {
                    return Err(fail(format!("input of shape {:?} (C, H, W expected)", v.shape)));
                };
                let k = constant(1).ok_or_else(|| fail("the kernel must be a constant".into()))?;
                if k.dims.len() != 4 {
                    return Err(fail(format!("kernel of rank {} (4 expected: 2-D convolution)", k.dims.len())));
                }
                if attr(node, "group").is_some_and(|a| a.i != 1) {
                    return Err(fail("grouped convolution is not supported".into()));
                }
                if attr(node, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
                    return Err(fail("auto_pad is not supported (write explicit pads)".into()));
                }
                let ints = |name: &str, default: Vec<i64>| attr(node, name).map_or(default, |a| a.ints.clone());
                let strides = ints("strides", vec![1, 1]);
                let pads = ints("pads", vec![0, 0, 0, 0]);
                let dilations = ints("dilations", vec![1, 1]);
                if strides.len() != 2
                    || pads.len() != 4
                    || dilations.len() != 2
                    || strides.iter().chain(&pads).chain(&dilations).any(|&v| v < 0)
                {
                    return Err(fail(format!(
                        "strides {strides:?} / pads {pads:?} / dilations {dilations:?} are not 2-D"
                    )));
                }
                if pads[0] != pads[2] || pads[1] != pads[3] {
                    return Err(fail(format!("asymmetric pads {pads:?} are not supported")));
                }
                let kernel = [k.dims[0], k.dims[1], k.dims[2], k.dims[3]];
                let bias = match constant(2) {
                    Some(b) => b.values.clone(),
                    None => vec![0.0; kernel[0]],
                };
                let geometry = Conv2dShape {
                    input: [c, h, w],
                    kernel,
                    stride: [strides[0] as usize, strides[1] as usize],
                    padding: [pads[0] as usize, pads[1] as usize],
                    dilation: [dilations[0] as usize, dilations[1] as usize],
                };
                let layer = low.layers.len();
                let shape = geometry.output(layer).map_err(|e| fail(e.to_string()))?;
                if bias.len() != kernel[0] {
                    return Err(fail(format!("bias has {} values, expected {}", bias.len(), kernel[0])));
                }
                let conv = Conv2d::new(geometry, k.values.clone(), layer).map_err(|e| fail(e.to_string()))?;
                let per = shape[1] * shape[2];
                v.conv(conv, (0..kernel[0] * per).map(|j| bias[j / per]).collect(), &low.segments);
                v.shape = shape.to_vec();
            }
            other => return Err(fail(format!("operator '{other}' is not supported"))),
        }
        if last_use.contains_key(out.as_str()) {
            low.values.insert(out, v);
        }
    }
    let out = graph.output.first().ok_or_else(|| format_err("the graph has no output"))?;
    let mut v = low
        .values
        .remove(&out.name)
        .ok_or_else(|| format_err(format!("the graph output '{}' is not computed from the graph input", out.name)))?;
    // Other outputs would keep their segments alive: only the first is the network's.
    low.values.clear();
    let done = low.segments.len() == 1
        && matches!(v.terms[..], [(0, Pending::Identity)])
        && v.bias.iter().all(|&b| b == 0.0)
        && !low.layers.is_empty();
    if !done {
        v = low.emit(v, Activation::Identity).map_err(format_err)?;
    }
    drop(v);
    Network::new(input_shape, low.layers)
}
