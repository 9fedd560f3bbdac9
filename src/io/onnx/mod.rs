//! ONNX import: a feed-forward ONNX graph to a [`Network`] (docs/formats.md).
//!
//! The graph is read in its (topological) node order with its tensors' full ONNX shapes (a
//! symbolic batch dimension is 1). Every tensor computed from the graph input is kept as an
//! affine function of the vector carried from the last emitted layer (its `affine` module); the linear
//! operators compose into it exactly, and each activation emits a [`crate::network::Layer`] (and the graph output
//! a last one), so input normalization folds into the first layer and a chain of reshapes,
//! transposes and slices between two activations costs nothing in the bound core. A graph with
//! skip connections (`Add` or `Sub` of two computed tensors, `Concat` of branches) becomes a chain
//! too: a tensor still needed after a ReLU layer rides through it as identity neurons
//! ([`crate::network::blocks`]), and the layers' maps are block operators. Tensors computed only
//! from constants (a `Shape` of a computed tensor, since shapes are static, then `Gather`,
//! `Concat`, `Unsqueeze`, ...) are folded into constants.
//!
//! Supported operators: `Gemm` (any transA/transB/alpha/beta, the computed tensor on either side),
//! `MatMul` (either side; numpy's 1-D and batch rules for a rank-2 constant), `Add`, `Sub` (of
//! two computed tensors, or a broadcastable constant), `Mul`, `Div` by broadcastable constants,
//! `Neg`, `Conv` (2-D, symmetric pads, any dilation, one group; kept as an operator, also after a
//! transpose or padding), `BatchNormalization` (inference), `Flatten`, `Reshape`, `Squeeze`,
//! `Unsqueeze`, `Transpose`, `Pad` (constant mode), `Concat`, `Slice`, `Split`, `Gather`
//! (constant indices), `ReduceSum`, `ReduceMean`, `AveragePool` / `GlobalAveragePool`,
//! `Identity`, `Dropout`, `Cast` (to a float type), `Shape`, `Constant`, and the activations
//! `Relu`, `Sigmoid`, `Tanh`, `Softplus` (skip connections only around ReLU layers). Tensors in
//! float32, float64, int32 or int64 (typed fields or little-endian `raw_data`). Anything else is
//! [`Error::OnnxNode`] naming the node's index, name and op type; a file that is not a valid
//! ModelProto is [`Error::ModelFormat`].

mod affine;
mod index;
mod tensor;

use std::collections::HashMap;
use std::path::Path;

use faer::Mat;
use prost::Message;

use super::onnx_proto::{self as pb, GraphProto, NodeProto};
use crate::error::{Error, Result};
use crate::network::conv::{Conv2d, Conv2dShape, on_slice};
use crate::network::{Activation, Network, Sparse};
use affine::{Lowering, Pending, Segment, Value};
use tensor::{Tensor, attr, axis, broadcast, broadcast_shape, chw, format_err, ints, with_chw};

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

type Res<T> = std::result::Result<T, String>;

/// Operators evaluated on constants when every input is one (shape arithmetic).
const FOLDABLE: &[&str] = &[
    "Identity",
    "Cast",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Concat",
    "Slice",
    "Gather",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Neg",
    "Split",
    "ReduceSum",
    "ReduceMean",
];

fn convert(graph: &GraphProto) -> Result<Network> {
    let mut consts: HashMap<String, Tensor> = HashMap::new();
    for t in &graph.initializer {
        consts.insert(t.name.clone(), tensor::tensor(t)?);
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
    // A symbolic leading (batch) dimension is 1; every other size must be known.
    let shape: Vec<usize> = dims
        .iter()
        .enumerate()
        .map(|(k, d)| match d {
            Some(v) if *v > 0 => Ok(*v as usize),
            None | Some(0) if k == 0 && dims.len() > 1 => Ok(1),
            _ => Err(format_err(format!("the graph input '{}' has shape {dims:?}: sizes must be known", input.name))),
        })
        .collect::<Result<_>>()?;
    // The network's input shape: without a leading batch dimension of 1.
    let input_shape = if shape.len() > 1 && shape[0] == 1 { shape[1..].to_vec() } else { shape.clone() };
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
            consts.insert(out.clone(), constant_node(node).map_err(fail)?);
            continue;
        }
        if node.op_type == "Shape" {
            // Shapes are static: the shape of a computed tensor is a constant.
            let name = node.input.first().ok_or_else(|| fail("no input".into()))?;
            let dims = match (low.values.get(name), consts.get(name)) {
                (Some(v), _) => v.shape.clone(),
                (None, Some(t)) => t.dims.clone(),
                _ => return Err(fail(format!("input '{name}' is not computed by an earlier node"))),
            };
            let r = dims.len() as i64;
            let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
            let start = clamp(attr(node, "start").map_or(0, |a| a.i));
            let end = clamp(attr(node, "end").map_or(r, |a| a.i)).max(start);
            let values: Vec<f64> = dims[start..end].iter().map(|&d| d as f64).collect();
            let out = node.output.first().ok_or_else(|| fail("no output".into()))?;
            consts.insert(out.clone(), Tensor { dims: vec![values.len()], values });
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
        if vars.is_empty() {
            // Every input a constant: evaluate the node on its first input as a constant value.
            match args.first().copied().flatten() {
                Some(t) if FOLDABLE.contains(&node.op_type.as_str()) => {
                    vars.push((0, Value::constant(t.dims.clone(), t.values.clone())));
                    args[0] = None;
                }
                _ => return Err(fail("does not read any tensor computed from the graph input".into())),
            }
        }
        let outputs = lower_node(&mut low, node, vars, &args).map_err(fail)?;
        for (name, v) in node.output.iter().zip(outputs) {
            if v.terms.is_empty() {
                consts.insert(name.clone(), Tensor { dims: v.shape, values: v.bias });
            } else if last_use.contains_key(name.as_str()) {
                low.values.insert(name.clone(), v);
            }
        }
    }
    let out = graph.output.first().ok_or_else(|| format_err("the graph has no output"))?;
    let mut v = low
        .values
        .remove(&out.name)
        .ok_or_else(|| format_err(format!("the graph output '{}' is not computed from the graph input", out.name)))?;
    let non_unit: Vec<usize> = v.shape.iter().copied().filter(|&d| d != 1).collect();
    if non_unit.len() > 1 {
        return Err(format_err(format!(
            "the graph output '{}' has shape {:?}: a vector of logits (one non-unit dimension) is expected",
            out.name, v.shape
        )));
    }
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

fn constant_node(node: &NodeProto) -> Res<Tensor> {
    if let Some(t) = attr(node, "value").and_then(|a| a.t.as_ref()) {
        tensor::tensor(t).map_err(|e| e.to_string())
    } else if let Some(a) = attr(node, "value_float") {
        Ok(Tensor { dims: vec![], values: vec![a.f as f64] })
    } else if let Some(a) = attr(node, "value_floats") {
        Ok(Tensor { dims: vec![a.floats.len()], values: a.floats.iter().map(|&v| v as f64).collect() })
    } else if let Some(a) = attr(node, "value_int") {
        Ok(Tensor { dims: vec![], values: vec![a.i as f64] })
    } else if let Some(a) = attr(node, "value_ints") {
        Ok(Tensor { dims: vec![a.ints.len()], values: a.ints.iter().map(|&v| v as f64).collect() })
    } else {
        Err("a Constant without a supported value attribute".into())
    }
}

/// An integer list from input `k` (a constant) or else the attribute `name`.
fn int_list(node: &NodeProto, args: &[Option<&Tensor>], k: usize, name: &str) -> Option<Vec<i64>> {
    match args.get(k).copied().flatten() {
        Some(t) => Some(t.values.iter().map(|&v| v as i64).collect()),
        None => attr(node, name).map(|a| a.ints.clone()),
    }
}

/// Axes (negative allowed) as sorted indices below `rank`.
fn axes_of(list: &[i64], rank: usize) -> Res<Vec<usize>> {
    let mut out: Vec<usize> = list.iter().map(|&a| axis(a, rank)).collect::<Res<_>>()?;
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// `v` through the sparse map `s` onto `shape`.
fn mapped(mut v: Value, s: &Sparse, shape: Vec<usize>, low: &Lowering) -> Value {
    v.sparse(s, &vec![0.0; s.nrows()], &low.segments);
    v.shape = shape;
    v
}

/// `v` broadcast to `shape` (numpy rules).
fn broadcast_value(v: Value, shape: &[usize], low: &Lowering) -> Res<Value> {
    if v.shape == shape {
        return Ok(v);
    }
    if v.size() == shape.iter().product::<usize>() {
        let mut v = v;
        v.shape = shape.to_vec();
        return Ok(v);
    }
    let s = index::broadcast_to(&v.shape, shape)?;
    Ok(mapped(v, &s, shape.to_vec(), low))
}

/// One node: its inputs (computed values `vars` at their positions, constants `args`) to its
/// outputs.
fn lower_node(
    low: &mut Lowering,
    node: &NodeProto,
    mut vars: Vec<(usize, Value)>,
    args: &[Option<&Tensor>],
) -> Res<Vec<Value>> {
    let op = node.op_type.as_str();
    let constant = |k: usize| args.get(k).copied().flatten();
    let pos = vars[0].0;
    // Operators with several computed operands.
    if vars.len() > 1 {
        return match op {
            "Add" | "Sub" if vars.len() == 2 => {
                let (_, b) = vars.pop().expect("two");
                let (_, a) = vars.pop().expect("two");
                let shape = broadcast_shape(&a.shape, &b.shape)
                    .ok_or_else(|| format!("operands of shapes {:?} and {:?} do not broadcast", a.shape, b.shape))?;
                let a = broadcast_value(a, &shape, low)?;
                let mut b = broadcast_value(b, &shape, low)?;
                if op == "Sub" {
                    let m = b.size();
                    b.scale_shift(&vec![-1.0; m], &vec![0.0; m]);
                }
                Ok(vec![a.plus(b, &low.segments)])
            }
            "Concat" => concat(low, node, vars, args).map(|v| vec![v]),
            _ => Err(format!(
                "{} tensors computed from the input as operands (only Add and Sub of two, and Concat, are affine)",
                vars.len()
            )),
        };
    }
    let mut v = vars.pop().expect("one").1;
    let n = v.size();
    let rank = v.shape.len();
    let other = || (0..args.len()).find(|&k| k != pos).and_then(constant);
    match op {
        "Relu" | "Sigmoid" | "Tanh" | "Softplus" => {
            let act = match op {
                "Relu" => Activation::Relu,
                "Sigmoid" => Activation::Sigmoid,
                "Tanh" => Activation::Tanh,
                _ => Activation::Softplus,
            };
            if v.terms.is_empty() {
                v.bias.iter_mut().for_each(|b| *b = act.eval(*b));
            } else {
                let shape = v.shape.clone();
                v = low.emit(v, act)?;
                v.shape = shape;
            }
        }
        "Identity" | "Dropout" => {}
        "Cast" => {
            // Casts between float types change nothing here; to an integer type they would round.
            let to = attr(node, "to").map_or(pb::FLOAT, |a| a.i as i32);
            if ![pb::FLOAT, pb::DOUBLE, 10, 16].contains(&to) && !v.terms.is_empty() {
                return Err(format!("a cast of a computed tensor to ONNX type {to} (only float types)"));
            }
        }
        "Neg" => v.scale_shift(&vec![-1.0; n], &vec![0.0; n]),
        "Flatten" => {
            let a = attr(node, "axis").map_or(1, |a| a.i);
            let a = if a < 0 { a + rank as i64 } else { a };
            if a < 0 || a > rank as i64 {
                return Err(format!("axis {a} is outside a tensor of rank {rank}"));
            }
            let outer: usize = v.shape[..a as usize].iter().product();
            v.shape = vec![outer, n / outer.max(1)];
        }
        "Reshape" => {
            let target = constant(1).ok_or("the shape must be a constant")?;
            let allow_zero = attr(node, "allowzero").is_some_and(|a| a.i != 0);
            let t: Vec<i64> = target.values.iter().map(|&x| x as i64).collect();
            let mut new: Vec<usize> = Vec::with_capacity(t.len());
            let mut hole = None;
            for (k, &d) in t.iter().enumerate() {
                match d {
                    -1 if hole.is_none() => {
                        hole = Some(k);
                        new.push(1);
                    }
                    0 if !allow_zero => {
                        new.push(*v.shape.get(k).ok_or(format!("target shape {t:?}: no dimension {k} to copy"))?)
                    }
                    d if d >= 0 => new.push(d as usize),
                    _ => return Err(format!("target shape {t:?} is not a shape")),
                }
            }
            let known: usize = new.iter().product();
            if let Some(k) = hole {
                if known == 0 || !n.is_multiple_of(known) {
                    return Err(format!("target shape {t:?} does not fit {n} values"));
                }
                new[k] = n / known;
            }
            if new.iter().product::<usize>() != n {
                return Err(format!("target shape {t:?} does not fit {n} values of shape {:?}", v.shape));
            }
            v.shape = new;
        }
        "Squeeze" => {
            let list = int_list(node, args, 1, "axes");
            let axes = match list {
                Some(l) => axes_of(&l, rank)?,
                None => (0..rank).filter(|&k| v.shape[k] == 1).collect(),
            };
            if let Some(&a) = axes.iter().find(|&&a| v.shape[a] != 1) {
                return Err(format!("axis {a} of shape {:?} is not of size 1", v.shape));
            }
            v.shape = v.shape.iter().enumerate().filter(|(k, _)| !axes.contains(k)).map(|(_, &d)| d).collect();
        }
        "Unsqueeze" => {
            let list = int_list(node, args, 1, "axes").ok_or("no axes")?;
            let axes = axes_of(&list, rank + list.len())?;
            let mut dims = v.shape.iter().copied();
            v.shape =
                (0..rank + axes.len()).map(|k| if axes.contains(&k) { 1 } else { dims.next().unwrap_or(1) }).collect();
        }
        "Transpose" => {
            let perm: Vec<usize> = match attr(node, "perm") {
                Some(a) => a.ints.iter().map(|&p| axis(p, rank)).collect::<Res<_>>()?,
                None => (0..rank).rev().collect(),
            };
            let (s, shape) = index::transpose(&v.shape, &perm)?;
            v = mapped(v, &s, shape, low);
        }
        "Slice" => {
            let (starts, ends) = match (int_list(node, args, 1, "starts"), int_list(node, args, 2, "ends")) {
                (Some(s), Some(e)) if s.len() == e.len() => (s, e),
                _ => return Err("starts and ends must be constants of one length".into()),
            };
            let axes = match int_list(node, args, 3, "axes") {
                Some(a) => a.iter().map(|&x| axis(x, rank)).collect::<Res<Vec<_>>>()?,
                None => (0..starts.len()).collect(),
            };
            let steps = int_list(node, args, 4, "steps").unwrap_or_else(|| vec![1; starts.len()]);
            if axes.len() != starts.len() || steps.len() != starts.len() {
                return Err("starts, ends, axes and steps differ in length".into());
            }
            let (s, shape) = index::slice(&v.shape, &starts, &ends, &axes, &steps)?;
            v = mapped(v, &s, shape, low);
        }
        "Split" => {
            let a = axis(attr(node, "axis").map_or(0, |a| a.i), rank)?;
            let d = v.shape[a];
            let parts = node.output.len();
            let sizes: Vec<usize> = match int_list(node, args, 1, "split") {
                Some(s) => s.iter().map(|&x| x.max(0) as usize).collect(),
                None => {
                    let k = attr(node, "num_outputs").map_or(parts as i64, |a| a.i).max(1) as usize;
                    let each = d.div_ceil(k);
                    (0..k).map(|j| each.min(d.saturating_sub(j * each))).collect()
                }
            };
            if sizes.len() != parts || sizes.iter().sum::<usize>() != d {
                return Err(format!("split sizes {sizes:?} do not cut axis {a} of size {d} into {parts} outputs"));
            }
            let mut out = Vec::with_capacity(parts);
            let mut start = 0;
            for &size in &sizes {
                let (s, shape) = index::slice(&v.shape, &[start as i64], &[(start + size) as i64], &[a], &[1])?;
                out.push(mapped(v.clone(), &s, shape, low));
                start += size;
            }
            return Ok(out);
        }
        "Gather" => {
            if pos != 0 {
                return Err("the indices must be a constant".into());
            }
            let ind = constant(1).ok_or("the indices must be a constant")?;
            let a = axis(attr(node, "axis").map_or(0, |a| a.i), rank)?;
            let (s, shape) = index::gather(&v.shape, a, &ind.values, &ind.dims)?;
            v = mapped(v, &s, shape, low);
        }
        "Pad" => {
            let mode = attr(node, "mode").map_or(&b"constant"[..], |a| &a.s[..]);
            if mode != b"constant" {
                return Err(format!("mode '{}' (only constant padding)", String::from_utf8_lossy(mode)));
            }
            let mut pads = int_list(node, args, 1, "pads").ok_or("the pads must be a constant")?;
            if let Some(a) = int_list(node, args, 3, "axes") {
                // Pads for the listed axes only.
                let axes: Vec<usize> = a.iter().map(|&x| axis(x, rank)).collect::<Res<_>>()?;
                if pads.len() != 2 * axes.len() {
                    return Err(format!("{} pads for {} axes", pads.len(), axes.len()));
                }
                let mut full = vec![0i64; 2 * rank];
                for (k, &ax) in axes.iter().enumerate() {
                    full[ax] = pads[k];
                    full[ax + rank] = pads[k + axes.len()];
                }
                pads = full;
            }
            let value = match constant(2) {
                Some(t) => *t.values.first().unwrap_or(&0.0),
                None => attr(node, "value").map_or(0.0, |a| a.f as f64),
            };
            let (s, shape, padding) = index::pad(&v.shape, &pads)?;
            let c: Vec<f64> = padding.iter().map(|&p| if p { value } else { 0.0 }).collect();
            v.sparse(&s, &c, &low.segments);
            v.shape = shape;
        }
        "ReduceSum" | "ReduceMean" => {
            let keep = attr(node, "keepdims").is_none_or(|a| a.i != 0);
            let list = int_list(node, args, 1, "axes");
            let axes = match list {
                Some(l) if !l.is_empty() => axes_of(&l, rank)?,
                _ if attr(node, "noop_with_empty_axes").is_some_and(|a| a.i != 0) => return Ok(vec![v]),
                _ => (0..rank).collect(),
            };
            let (s, shape) = index::reduce(&v.shape, &axes, keep, op == "ReduceMean")?;
            v = mapped(v, &s, shape, low);
        }
        "Concat" => return concat(low, node, vec![(pos, v)], args).map(|v| vec![v]),
        "Gemm" => v = gemm(low, node, pos, v, args)?,
        "MatMul" => {
            let c = other().ok_or("the other operand must be a constant")?;
            v = if pos == 0 { matmul_right(low, v, c)? } else { matmul_left(low, c, v)? };
        }
        "Add" | "Sub" | "Mul" | "Div" => {
            let c = other().ok_or("the other operand must be a constant")?;
            let shape = broadcast_shape(&v.shape, &c.dims)
                .ok_or_else(|| format!("constant of shape {:?} does not broadcast to {:?}", c.dims, v.shape))?;
            v = broadcast_value(v, &shape, low)?;
            let n = v.size();
            let cv = broadcast(c, &v.shape)
                .ok_or_else(|| format!("constant of shape {:?} does not broadcast to {:?}", c.dims, v.shape))?;
            let ones = vec![1.0; n];
            let zeros = vec![0.0; n];
            match (op, pos) {
                ("Add", _) => v.scale_shift(&ones, &cv),
                ("Sub", 0) => v.scale_shift(&ones, &cv.iter().map(|x| -x).collect::<Vec<_>>()),
                ("Sub", _) => v.scale_shift(&vec![-1.0; n], &cv),
                ("Mul", _) => v.scale_shift(&cv, &zeros),
                ("Div", 0) => {
                    if cv.contains(&0.0) {
                        return Err("division by zero".into());
                    }
                    v.scale_shift(&cv.iter().map(|x| 1.0 / x).collect::<Vec<_>>(), &zeros)
                }
                _ if v.terms.is_empty() => {
                    // A constant divided by a constant.
                    let d = v.bias.clone();
                    if d.contains(&0.0) {
                        return Err("division by zero".into());
                    }
                    v.bias = cv.iter().zip(&d).map(|(a, b)| a / b).collect();
                }
                _ => return Err("a constant divided by a computed tensor is not affine".into()),
            }
        }
        "BatchNormalization" => {
            let eps = attr(node, "epsilon").map_or(1e-5, |a| a.f as f64);
            let p: Vec<&Tensor> = (1..5)
                .map(|k| constant(k).ok_or_else(|| "scale, bias, mean and variance must be constants".to_string()))
                .collect::<Res<_>>()?;
            let channels = *v.shape.get(if rank >= 2 { 1 } else { 0 }).ok_or("no channel dimension")?;
            if p.iter().any(|t| t.values.len() != channels) {
                return Err(format!("parameters do not have {channels} channels"));
            }
            let per = n / channels;
            let s: Vec<f64> = (0..n).map(|i| p[0].values[i / per] / (p[3].values[i / per] + eps).sqrt()).collect();
            let c: Vec<f64> = (0..n).map(|i| p[1].values[i / per] - p[2].values[i / per] * s[i]).collect();
            v.scale_shift(&s, &c);
        }
        "AveragePool" | "GlobalAveragePool" => v = average_pool(low, node, v)?,
        "Conv" => {
            if pos != 0 {
                return Err("the computed tensor must be the first operand".into());
            }
            v = conv(low, node, v, args)?;
        }
        other => return Err(format!("operator '{other}' is not supported")),
    }
    Ok(vec![v])
}

/// Concat of computed tensors and constants along an axis: each embedded in the whole, summed.
fn concat(low: &Lowering, node: &NodeProto, vars: Vec<(usize, Value)>, args: &[Option<&Tensor>]) -> Res<Value> {
    let mut parts: Vec<Option<Value>> =
        args.iter().map(|a| a.map(|t| Value::constant(t.dims.clone(), t.values.clone()))).collect();
    for (k, v) in vars {
        parts[k] = Some(v);
    }
    let parts: Vec<Value> = parts.into_iter().flatten().collect();
    let first = parts.first().ok_or("no inputs")?;
    let rank = first.shape.len();
    let a = axis(attr(node, "axis").ok_or("no axis")?.i, rank)?;
    let mut whole = first.shape.clone();
    whole[a] = 0;
    for p in &parts {
        let same = p.shape.len() == rank && (0..rank).all(|k| k == a || p.shape[k] == first.shape[k]);
        if !same {
            return Err(format!("inputs of shapes {:?} and {:?} along axis {a}", first.shape, p.shape));
        }
        whole[a] += p.shape[a];
    }
    let mut offset = 0;
    let mut sum: Option<Value> = None;
    for p in parts {
        let size = p.shape[a];
        let e = index::embed(&p.shape, &whole, a, offset)?;
        let placed = mapped(p, &e, whole.clone(), low);
        sum = Some(match sum {
            None => placed,
            Some(s) => s.plus(placed, &low.segments),
        });
        offset += size;
    }
    sum.ok_or_else(|| "no inputs".into())
}

/// v @ B for a constant B (rank 1 or 2; numpy's rules, rows of v batched).
fn matmul_right(low: &Lowering, mut v: Value, b: &Tensor) -> Res<Value> {
    let n_total = v.size();
    let (n, m, b_vec) = match b.dims[..] {
        [n, m] => (n, m, false),
        [n] => (n, 1, true),
        _ => return Err(format!("a constant of rank {} (1 or 2 expected)", b.dims.len())),
    };
    let last = v.shape.last().copied().unwrap_or(1);
    let (batch, mut shape) = if last == n {
        (n_total / n.max(1), v.shape[..v.shape.len() - 1].to_vec())
    } else {
        return Err(format!("a constant with {n} rows multiplies a tensor of shape {:?}", v.shape));
    };
    if !b_vec {
        shape.push(m);
    }
    let at = |o: usize, i: usize| b.values[i * m + o];
    if batch == 1 {
        let w = Mat::from_fn(m, n, at);
        v.linear(w, vec![0.0; m], &low.segments);
    } else {
        let s = index::kron(batch, m, n, 1, at)?;
        v.sparse(&s, &vec![0.0; s.nrows()], &low.segments);
    }
    v.shape = if shape.is_empty() { vec![m] } else { shape };
    Ok(v)
}

/// A @ v for a constant A (rank 1 or 2; numpy's rules, v's leading axes batched).
fn matmul_left(low: &Lowering, a: &Tensor, mut v: Value) -> Res<Value> {
    let (m, n, a_vec) = match a.dims[..] {
        [m, n] => (m, n, false),
        [n] => (1, n, true),
        _ => return Err(format!("a constant of rank {} (1 or 2 expected)", a.dims.len())),
    };
    let at = |i: usize, j: usize| a.values[i * n + j];
    let r = v.shape.len();
    let (batch, k, mut shape) = match r {
        1 if v.shape[0] == n => (1, 1, Vec::new()),
        _ if r >= 2 && v.shape[r - 2] == n => {
            let k = v.shape[r - 1];
            (v.size() / (n * k).max(1), k, v.shape[..r - 2].to_vec())
        }
        _ => return Err(format!("a constant with {n} columns multiplies a tensor of shape {:?}", v.shape)),
    };
    if !a_vec {
        shape.push(m);
    }
    if r >= 2 {
        shape.push(k);
    }
    if batch == 1 && k == 1 {
        v.linear(Mat::from_fn(m, n, at), vec![0.0; m], &low.segments);
    } else {
        let s = index::kron(batch, m, n, k, at)?;
        v.sparse(&s, &vec![0.0; s.nrows()], &low.segments);
    }
    v.shape = if shape.is_empty() { vec![m] } else { shape };
    Ok(v)
}

/// Gemm: alpha A' B' + beta C with the computed tensor as A or B.
fn gemm(low: &Lowering, node: &NodeProto, pos: usize, v: Value, args: &[Option<&Tensor>]) -> Res<Value> {
    let flag = |name: &str| attr(node, name).is_some_and(|a| a.i != 0);
    let alpha = attr(node, "alpha").map_or(1.0, |a| a.f as f64);
    let beta = attr(node, "beta").map_or(1.0, |a| a.f as f64);
    let constant = |k: usize| args.get(k).copied().flatten();
    let as_matrix = |v: Value| -> Res<Value> {
        match v.shape.len() {
            2 => Ok(v),
            1 => Ok(Value { shape: vec![1, v.shape[0]], ..v }),
            r => Err(format!("an operand of rank {r} (2 expected)")),
        }
    };
    let transposed = |t: &Tensor| -> Res<Tensor> {
        let [r, c] = t.dims[..] else { return Err(format!("a constant of rank {} (2 expected)", t.dims.len())) };
        Ok(Tensor { dims: vec![c, r], values: (0..r * c).map(|k| t.values[(k % r) * c + k / r]).collect() })
    };
    let flip = |v: Value| -> Res<Value> {
        let v = as_matrix(v)?;
        let (s, shape) = index::transpose(&v.shape, &[1, 0])?;
        Ok(mapped(v, &s, shape, low))
    };
    let mut out = match pos {
        0 => {
            let b = constant(1).ok_or("the weight must be a constant")?;
            let b = if flag("transB") { transposed(b)? } else { b.clone() };
            let a = if flag("transA") { flip(v)? } else { as_matrix(v)? };
            matmul_right(low, a, &b)?
        }
        1 => {
            let a = constant(0).ok_or("the weight must be a constant")?;
            let a = if flag("transA") { transposed(a)? } else { a.clone() };
            let b = if flag("transB") { flip(v)? } else { as_matrix(v)? };
            matmul_left(low, &a, b)?
        }
        _ => return Err("the bias must be a constant".into()),
    };
    let n = out.size();
    out.scale_shift(&vec![alpha; n], &vec![0.0; n]);
    if let Some(c) = constant(2) {
        let cv = broadcast(c, &out.shape)
            .ok_or_else(|| format!("bias of shape {:?} does not broadcast to {:?}", c.dims, out.shape))?;
        let cv: Vec<f64> = cv.iter().map(|x| beta * x).collect();
        out.scale_shift(&vec![1.0; n], &cv);
    }
    Ok(out)
}

/// 2-D pads (begin_h, begin_w, end_h, end_w), checked symmetric.
fn symmetric_pads(pads: &[i64]) -> Res<[usize; 2]> {
    if pads.len() != 4 || pads.iter().any(|&p| p < 0) {
        return Err(format!("pads {pads:?} are not 2-D"));
    }
    if pads[0] != pads[2] || pads[1] != pads[3] {
        return Err(format!("asymmetric pads {pads:?} are not supported"));
    }
    Ok([pads[0] as usize, pads[1] as usize])
}

fn no_auto_pad(node: &NodeProto) -> Res<()> {
    if attr(node, "auto_pad").is_some_and(|a| !a.s.is_empty() && a.s != b"NOTSET") {
        return Err("auto_pad is not supported (write explicit pads)".into());
    }
    Ok(())
}

fn average_pool(low: &Lowering, node: &NodeProto, mut v: Value) -> Res<Value> {
    let [c, h, w] = chw(&v.shape).ok_or_else(|| format!("input of shape {:?} (N, C, H, W expected)", v.shape))?;
    let global = node.op_type == "GlobalAveragePool";
    let kernel = if global { vec![h as i64, w as i64] } else { ints(node, "kernel_shape", vec![]) };
    let strides = if global { vec![1, 1] } else { ints(node, "strides", vec![1, 1]) };
    let pads = if global { vec![0; 4] } else { ints(node, "pads", vec![0, 0, 0, 0]) };
    if attr(node, "ceil_mode").is_some_and(|a| a.i != 0) {
        return Err("ceil_mode = 1 is not supported".into());
    }
    no_auto_pad(node)?;
    if ints(node, "dilations", vec![1, 1]).iter().any(|&d| d != 1) {
        return Err("dilated pooling is not supported".into());
    }
    if kernel.len() != 2 || strides.len() != 2 || kernel.iter().chain(&strides).any(|&v| v < 1) {
        return Err(format!("kernel {kernel:?} / strides {strides:?} are not 2-D"));
    }
    let padding = symmetric_pads(&pads)?;
    let (kh, kw) = (kernel[0] as usize, kernel[1] as usize);
    let stride = [strides[0] as usize, strides[1] as usize];
    let include_pad = attr(node, "count_include_pad").is_some_and(|a| a.i != 0);
    let geometry = Conv2dShape::new([c, h, w], [c, c, kh, kw], stride, padding);
    let layer = low.layers.len();
    let shape = geometry.output(layer).map_err(|e| e.to_string())?;
    // A convolution with a diagonal kernel of ones, then the division by the number of taps
    // averaged (all of them, or only those inside the image).
    let ones: Vec<f64> =
        (0..c * c * kh * kw).map(|j| if j / (kh * kw) % c == j / (c * kh * kw) { 1.0 } else { 0.0 }).collect();
    let conv = Conv2d::new(geometry, ones, layer).map_err(|e| e.to_string())?;
    let counts = if include_pad {
        vec![(kh * kw) as f64; shape[1] * shape[2]]
    } else {
        let image = vec![1.0; h * w];
        let probe =
            Conv2d::new(Conv2dShape::new([1, h, w], [1, 1, kh, kw], stride, padding), vec![1.0; kh * kw], layer)
                .map_err(|e| e.to_string())?;
        on_slice(&image, |m| probe.forward(m))
    };
    let n_out = c * shape[1] * shape[2];
    v.conv(conv, vec![0.0; n_out], &low.segments);
    let per = shape[1] * shape[2];
    let scale: Vec<f64> = (0..n_out).map(|j| 1.0 / counts[j % per]).collect();
    v.shape = with_chw(&v.shape, shape);
    v.scale_shift(&scale, &vec![0.0; n_out]);
    Ok(v)
}

fn conv(low: &Lowering, node: &NodeProto, mut v: Value, args: &[Option<&Tensor>]) -> Res<Value> {
    let [c, h, w] = chw(&v.shape).ok_or_else(|| format!("input of shape {:?} (N, C, H, W expected)", v.shape))?;
    let k = args.get(1).copied().flatten().ok_or("the kernel must be a constant")?;
    if k.dims.len() != 4 {
        return Err(format!("kernel of rank {} (4 expected: 2-D convolution)", k.dims.len()));
    }
    if attr(node, "group").is_some_and(|a| a.i != 1) {
        return Err("grouped convolution is not supported".into());
    }
    no_auto_pad(node)?;
    let strides = ints(node, "strides", vec![1, 1]);
    let pads = ints(node, "pads", vec![0, 0, 0, 0]);
    let dilations = ints(node, "dilations", vec![1, 1]);
    if strides.len() != 2 || dilations.len() != 2 || strides.iter().chain(&dilations).any(|&v| v < 0) {
        return Err(format!("strides {strides:?} / pads {pads:?} / dilations {dilations:?} are not 2-D"));
    }
    let padding = symmetric_pads(&pads)?;
    let kernel = [k.dims[0], k.dims[1], k.dims[2], k.dims[3]];
    let bias = match args.get(2).copied().flatten() {
        Some(b) => b.values.clone(),
        None => vec![0.0; kernel[0]],
    };
    let geometry = Conv2dShape {
        input: [c, h, w],
        kernel,
        stride: [strides[0] as usize, strides[1] as usize],
        padding,
        dilation: [dilations[0] as usize, dilations[1] as usize],
    };
    let layer = low.layers.len();
    let shape = geometry.output(layer).map_err(|e| e.to_string())?;
    if bias.len() != kernel[0] {
        return Err(format!("bias has {} values, expected {}", bias.len(), kernel[0]));
    }
    let conv = Conv2d::new(geometry, k.values.clone(), layer).map_err(|e| e.to_string())?;
    let per = shape[1] * shape[2];
    v.conv(conv, (0..kernel[0] * per).map(|j| bias[j / per]).collect(), &low.segments);
    v.shape = with_chw(&v.shape, shape);
    Ok(v)
}
