//! ONNX import: a feed-forward ONNX graph to a [`Network`] (docs/formats.md).
//!
//! The graph must be a chain: every node takes the running value (the graph input at first) plus
//! constants (initializers or `Constant` nodes) and produces the next running value. Affine
//! operations are composed into one pending affine map, which is emitted as a [`Layer`] at each
//! activation (and at the end), so input normalization (`Sub`/`Div`/`Mul` by constants) folds
//! into the first layer. Supported: `Gemm` (transA = 0, any transB/alpha/beta), `MatMul` (running
//! value on the left), `Add`, `Sub`, `Mul`, `Div` by broadcastable constants, `Conv` (2-D,
//! symmetric pads, any dilation, one group; kept as an operator while only per-channel scalings
//! surround it), `BatchNormalization` (inference), `Flatten`, `Reshape` (constant shape),
//! `AveragePool` / `GlobalAveragePool` (a convolution with a diagonal kernel), `Identity`,
//! `Dropout`, `Constant`, and the activations `Relu`, `Sigmoid`, `Tanh`, `Softplus`. Tensors in
//! float32, float64, int32 or int64 (typed fields or little-endian `raw_data`). Anything else is
//! [`Error::OnnxNode`] naming the node's index, name and op type; a file that is not a valid
//! ModelProto is [`Error::ModelFormat`].

use std::collections::HashMap;
use std::path::Path;

use faer::Mat;
use prost::Message;

use super::onnx_proto::{self as pb, AttributeProto, GraphProto, NodeProto, TensorProto};
use crate::error::{Error, Result};
use crate::network::conv::{Conv2d, Conv2dShape, on_slice, per_channel};
use crate::network::{Activation, Layer, Network};

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

/// The pending affine map's linear part.
enum Pending {
    /// The identity.
    Identity,
    /// x -> d ⊙ x.
    Diag(Vec<f64>),
    Dense(Mat<f64>),
    /// A convolution, kept as an operator while only per-channel scalings follow it.
    Conv(Box<Conv2d>),
}

/// The running value: its logical shape (without the batch dimension) and the affine map from the
/// last emitted layer's output (or the network input) that produces it.
struct Chain {
    name: String,
    shape: Vec<usize>,
    weight: Pending,
    bias: Vec<f64>,
    layers: Vec<Layer>,
}

impl Chain {
    fn size(&self) -> usize {
        self.shape.iter().product()
    }

    /// The pending linear part as a dense matrix (n_out x n_in).
    fn dense(&mut self) -> Mat<f64> {
        let n = self.size();
        match std::mem::replace(&mut self.weight, Pending::Identity) {
            Pending::Identity => Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 }),
            Pending::Diag(d) => Mat::from_fn(n, n, |i, j| if i == j { d[i] } else { 0.0 }),
            Pending::Dense(w) => w,
            Pending::Conv(c) => c.lower(),
        }
    }

    /// Composes x -> m x + c after the pending map.
    fn linear(&mut self, m: Mat<f64>, c: Vec<f64>) {
        let bias = crate::linalg::mat_vec(m.as_ref(), &self.bias).iter().zip(&c).map(|(a, b)| a + b).collect();
        self.weight = Pending::Dense(match std::mem::replace(&mut self.weight, Pending::Identity) {
            Pending::Identity => m,
            Pending::Diag(d) => Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] * d[j]),
            other => {
                self.weight = other;
                let w = self.dense();
                crate::linalg::mul(m.as_ref(), w.as_ref())
            }
        });
        self.bias = bias;
    }

    /// Composes x -> conv(x) + c after the pending map: the convolution stays an operator when
    /// the pending map is the identity or a scaling constant on each input channel.
    fn conv(&mut self, conv: Conv2d, c: Vec<f64>) {
        let bias: Vec<f64> = on_slice(&self.bias, |m| conv.forward(m)).iter().zip(&c).map(|(a, b)| a + b).collect();
        let [_, h, w] = conv.shape().input;
        let prev = std::mem::replace(&mut self.weight, Pending::Identity);
        let channel = match &prev {
            Pending::Diag(d) => per_channel(d, h * w),
            _ => None,
        };
        self.weight = match (prev, channel) {
            (Pending::Identity, _) => Pending::Conv(Box::new(conv)),
            (Pending::Diag(_), Some(channel)) => Pending::Conv(Box::new(conv.scale_inputs(&channel))),
            (other, _) => {
                self.weight = other;
                let w = self.dense();
                Pending::Dense(crate::linalg::mul(conv.lower().as_ref(), w.as_ref()))
            }
        };
        self.bias = bias;
    }

    /// Composes x -> s ⊙ x + c (elementwise).
    fn scale_shift(&mut self, s: &[f64], c: &[f64]) {
        let n = self.size();
        self.weight = match std::mem::replace(&mut self.weight, Pending::Identity) {
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
        };
        for i in 0..n {
            self.bias[i] = self.bias[i] * s[i] + c[i];
        }
    }

    fn emit(&mut self, act: Activation) {
        let n = self.size();
        let bias = std::mem::replace(&mut self.bias, vec![0.0; n]);
        let layer = match std::mem::replace(&mut self.weight, Pending::Identity) {
            Pending::Conv(conv) => Layer::conv2d(*conv, bias, act),
            other => {
                self.weight = other;
                Layer::new(self.dense(), bias, act)
            }
        };
        self.layers.push(layer);
    }

    fn pending(&self) -> bool {
        !matches!(self.weight, Pending::Identity)
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
/// the running value's shape.
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
    let mut chain =
        Chain { name: input.name.clone(), shape, weight: Pending::Identity, bias: vec![0.0; n0], layers: Vec::new() };
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
        // Inputs: the running value and constants (empty names are omitted optional inputs).
        let mut running = None;
        let mut args: Vec<Option<&Tensor>> = Vec::new();
        for (k, name) in node.input.iter().enumerate() {
            if name.is_empty() {
                args.push(None);
            } else if *name == chain.name {
                if running.is_some() {
                    return Err(fail("uses the running value twice".into()));
                }
                running = Some(k);
                args.push(None);
            } else if let Some(t) = consts.get(name) {
                args.push(Some(t));
            } else {
                return Err(fail(format!(
                    "input '{name}' is neither a constant nor the running value '{}' (only chains are supported)",
                    chain.name
                )));
            }
        }
        let Some(pos) = running else {
            return Err(fail(format!("does not consume the running value '{}'", chain.name)));
        };
        let out = node.output.first().ok_or_else(|| fail("no output".into()))?.clone();
        let n = chain.size();
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
                chain.emit(act);
            }
            "Identity" | "Dropout" => {}
            "Flatten" => {
                let axis = attr(node, "axis").map_or(1, |a| a.i);
                if axis != 0 && axis != 1 {
                    return Err(fail(format!("axis {axis} (only 0 or 1, after the batch dimension)")));
                }
                chain.shape = vec![n];
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
                chain.shape = new;
            }
            "Gemm" | "MatMul" => {
                if pos != 0 {
                    return Err(fail("the running value must be the first operand".into()));
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
                    return Err(fail(format!("weight takes {in_n} inputs, the running value has {n}")));
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
                chain.linear(m, c);
                chain.shape = vec![out_n];
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                let c = other().ok_or_else(|| fail("the other operand must be a constant".into()))?;
                let v = broadcast(c, &chain.shape).ok_or_else(|| {
                    fail(format!("constant of shape {:?} does not broadcast to {:?}", c.dims, chain.shape))
                })?;
                let ones = vec![1.0; n];
                let zeros = vec![0.0; n];
                match (node.op_type.as_str(), pos) {
                    ("Add", _) => chain.scale_shift(&ones, &v),
                    ("Sub", 0) => chain.scale_shift(&ones, &v.iter().map(|x| -x).collect::<Vec<_>>()),
                    ("Sub", _) => chain.scale_shift(&vec![-1.0; n], &v),
                    ("Mul", _) => chain.scale_shift(&v, &zeros),
                    ("Div", 0) => {
                        if v.contains(&0.0) {
                            return Err(fail("division by zero".into()));
                        }
                        chain.scale_shift(&v.iter().map(|x| 1.0 / x).collect::<Vec<_>>(), &zeros)
                    }
                    _ => return Err(fail("a constant divided by the running value is not affine".into())),
                }
            }
            "BatchNormalization" => {
                let eps = attr(node, "epsilon").map_or(1e-5, |a| a.f as f64);
                let p: Vec<&Tensor> = (1..5)
                    .map(|k| constant(k).ok_or_else(|| fail("scale, bias, mean and variance must be constants".into())))
                    .collect::<Result<_>>()?;
                let channels = *chain.shape.first().ok_or_else(|| fail("no channel dimension".into()))?;
                if p.iter().any(|t| t.values.len() != channels) {
                    return Err(fail(format!("parameters do not have {channels} channels")));
                }
                let per = n / channels;
                let s: Vec<f64> = (0..n).map(|i| p[0].values[i / per] / (p[3].values[i / per] + eps).sqrt()).collect();
                let c: Vec<f64> = (0..n).map(|i| p[1].values[i / per] - p[2].values[i / per] * s[i]).collect();
                chain.scale_shift(&s, &c);
            }
            "AveragePool" | "GlobalAveragePool" => {
                let [c, h, w] = chain.shape[..] else {
                    return Err(fail(format!("input of shape {:?} (C, H, W expected)", chain.shape)));
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
                let layer = chain.layers.len();
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
                chain.conv(conv, vec![0.0; n_out]);
                let per = shape[1] * shape[2];
                let scale: Vec<f64> = (0..n_out).map(|j| 1.0 / counts[j % per]).collect();
                chain.shape = shape.to_vec();
                chain.scale_shift(&scale, &vec![0.0; n_out]);
            }
            "Conv" => {
                if pos != 0 {
                    return Err(fail("the running value must be the first operand".into()));
                }
                let [c, h, w] = chain.shape[..] else {
                    return Err(fail(format!("input of shape {:?} (C, H, W expected)", chain.shape)));
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
                let layer = chain.layers.len();
                let shape = geometry.output(layer).map_err(|e| fail(e.to_string()))?;
                if bias.len() != kernel[0] {
                    return Err(fail(format!("bias has {} values, expected {}", bias.len(), kernel[0])));
                }
                let conv = Conv2d::new(geometry, k.values.clone(), layer).map_err(|e| fail(e.to_string()))?;
                let per = shape[1] * shape[2];
                chain.conv(conv, (0..kernel[0] * per).map(|j| bias[j / per]).collect());
                chain.shape = shape.to_vec();
            }
            other => return Err(fail(format!("operator '{other}' is not supported"))),
        }
        chain.name = out;
    }
    if let Some(out) = graph.output.first()
        && out.name != chain.name
    {
        return Err(format_err(format!(
            "the graph output '{}' is not the end of the chain ('{}')",
            out.name, chain.name
        )));
    }
    if chain.pending() || chain.layers.is_empty() {
        chain.emit(Activation::Identity);
    }
    Network::new(input_shape, chain.layers)
}
