//! ONNX graphs built in code, and a direct evaluator of them (the reference the importer's
//! networks are checked against): node by node on plain tensors, with loops for the
//! convolutions, independent of nncert's lowering.
#![allow(dead_code)]

use std::collections::HashMap;

use nncert::io::onnx_proto::{
    AttributeProto, Dimension, GraphProto, ModelProto, NodeProto, TensorProto, TensorShapeProto, TensorTypeProto,
    TypeProto, ValueInfoProto,
};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn f32_tensor(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: 1,
        float_data: values.to_vec(),
        ..Default::default()
    }
}

pub fn raw_f64_tensor(name: &str, dims: &[i64], values: &[f64]) -> TensorProto {
    let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    TensorProto { name: name.into(), dims: dims.to_vec(), data_type: 11, raw_data: raw, ..Default::default() }
}

pub fn value(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims.iter().map(|&d| Dimension { dim_value: Some(d), dim_param: None }).collect();
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type: 1, shape: Some(TensorShapeProto { dim }) }),
        }),
    }
}

pub fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
    NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        name: format!("{op}_{output}"),
        op_type: op.into(),
        attribute,
        ..Default::default()
    }
}

pub fn int_attr(name: &str, i: i64) -> AttributeProto {
    AttributeProto { name: name.into(), i, r#type: 2, ..Default::default() }
}

pub fn ints_attr(name: &str, ints: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), ints: ints.to_vec(), r#type: 7, ..Default::default() }
}

pub fn float_attr(name: &str, f: f32) -> AttributeProto {
    AttributeProto { name: name.into(), f, r#type: 1, ..Default::default() }
}

pub fn model(nodes: Vec<NodeProto>, init: Vec<TensorProto>, input: ValueInfoProto, output: &str) -> Vec<u8> {
    ModelProto {
        ir_version: 8,
        graph: Some(GraphProto {
            node: nodes,
            initializer: init,
            input: vec![input],
            output: vec![value(output, &[1])],
            ..Default::default()
        }),
        ..Default::default()
    }
    .encode_to_vec()
}

/// A graph with one input (shape without the batch dimension) and one output.
pub struct Graph {
    pub nodes: Vec<NodeProto>,
    pub init: Vec<TensorProto>,
    pub input: Vec<usize>,
    pub output: String,
}

impl Graph {
    /// The ModelProto's bytes (input declared with a batch dimension of 1).
    pub fn bytes(&self) -> Vec<u8> {
        let dims: Vec<i64> = std::iter::once(1).chain(self.input.iter().map(|&d| d as i64)).collect();
        model(self.nodes.clone(), self.init.clone(), value("x", &dims), &self.output)
    }

    /// The graph evaluated node by node at `x` (f32 constants read as f64).
    pub fn eval(&self, x: &[f64]) -> Vec<f64> {
        let mut t: HashMap<String, (Vec<usize>, Vec<f64>)> = HashMap::new();
        for i in &self.init {
            let dims = i.dims.iter().map(|&d| d as usize).collect();
            let vals = if i.data_type == 1 {
                i.float_data.iter().map(|&v| v as f64).collect()
            } else {
                i.int64_data.iter().map(|&v| v as f64).collect()
            };
            t.insert(i.name.clone(), (dims, vals));
        }
        t.insert("x".into(), (self.input.clone(), x.to_vec()));
        for n in &self.nodes {
            let get = |k: usize| t[&n.input[k]].clone();
            let ints =
                |name: &str, d: Vec<i64>| n.attribute.iter().find(|a| a.name == name).map_or(d, |a| a.ints.clone());
            let out = match n.op_type.as_str() {
                "Relu" => {
                    let (d, v) = get(0);
                    (d, v.into_iter().map(|a| a.max(0.0)).collect())
                }
                "Add" | "Sub" | "Div" => {
                    let ((d, a), (db, b)) = (get(0), get(1));
                    let per = a.len() / b.len(); // b is the same size or one value per channel
                    assert!(db.iter().product::<usize>() == b.len() && (per == 1 || b.len() == d[0]));
                    let v = (0..a.len())
                        .map(|i| {
                            let y = b[if per == 1 { i } else { i / per }];
                            match n.op_type.as_str() {
                                "Add" => a[i] + y,
                                "Sub" => a[i] - y,
                                _ => a[i] / y,
                            }
                        })
                        .collect();
                    (d, v)
                }
                "Flatten" => {
                    let (_, v) = get(0);
                    (vec![v.len()], v)
                }
                "Gemm" => {
                    // transB = 1: w is (out, in).
                    let ((_, xv), (wd, w), (_, b)) = (get(0), get(1), get(2));
                    let v =
                        (0..wd[0]).map(|o| b[o] + (0..wd[1]).map(|i| w[o * wd[1] + i] * xv[i]).sum::<f64>()).collect();
                    (vec![wd[0]], v)
                }
                "BatchNormalization" => {
                    let eps = n.attribute.iter().find(|a| a.name == "epsilon").map_or(1e-5, |a| a.f as f64);
                    let ((d, v), (_, g), (_, be), (_, mu), (_, var)) = (get(0), get(1), get(2), get(3), get(4));
                    let per = v.len() / d[0];
                    let y = (0..v.len())
                        .map(|i| {
                            let c = i / per;
                            g[c] * (v[i] - mu[c]) / (var[c] + eps).sqrt() + be[c]
                        })
                        .collect();
                    (d, y)
                }
                "Conv" => {
                    let ((d, v), (kd, k)) = (get(0), get(1));
                    let b = if n.input.len() > 2 { get(2).1 } else { vec![0.0; kd[0]] };
                    let (s, p) = (ints("strides", vec![1, 1]), ints("pads", vec![0, 0, 0, 0]));
                    let (c, h, w) = (d[0], d[1] as i64, d[2] as i64);
                    let (oc, kh, kw) = (kd[0], kd[2] as i64, kd[3] as i64);
                    let oh = (h + 2 * p[0] - kh) / s[0] + 1;
                    let ow = (w + 2 * p[1] - kw) / s[1] + 1;
                    let mut y = Vec::new();
                    for o in 0..oc {
                        for yy in 0..oh {
                            for xx in 0..ow {
                                let mut acc = b[o];
                                for i in 0..c {
                                    for ky in 0..kh {
                                        for kx in 0..kw {
                                            let (iy, ix) = (yy * s[0] - p[0] + ky, xx * s[1] - p[1] + kx);
                                            if (0..h).contains(&iy) && (0..w).contains(&ix) {
                                                let kv = k[((o * c + i) as i64 * kh * kw + ky * kw + kx) as usize];
                                                acc += kv * v[(i as i64 * h * w + iy * w + ix) as usize];
                                            }
                                        }
                                    }
                                }
                                y.push(acc);
                            }
                        }
                    }
                    (vec![oc, oh as usize, ow as usize], y)
                }
                other => panic!("the reference evaluator has no {other}"),
            };
            t.insert(n.output[0].clone(), out);
        }
        t[&self.output].1.clone()
    }
}

/// A ResNet's shape for [`resnet`]: (seed, input, width, blocks, shortcut from the input).
pub type ResNetCase<'a> = (u64, [usize; 3], usize, &'a [(usize, usize)], bool);

/// A small ResNet in the shape of VNN-COMP's cifar10_resnet networks (`resnet.py` there):
/// per-channel normalization, a 3x3 convolution with BatchNorm and ReLU, then residual blocks
/// `relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))` (the shortcut the identity, or a 1x1
/// convolution with BatchNorm where the block changes the stride or the channels), then a dense
/// ReLU layer and the logits. `blocks`: (channels, stride) per block. Random weights, scaled by
/// 1/sqrt(fan-in); `input_skip` adds a first block whose shortcut reads the (normalized) input.
pub fn resnet(
    seed: u64,
    input: [usize; 3],
    width: usize,
    blocks: &[(usize, usize)],
    hidden: usize,
    classes: usize,
    input_skip: bool,
) -> Graph {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut g = Graph { nodes: Vec::new(), init: Vec::new(), input: input.to_vec(), output: "logits".into() };
    let counter = std::cell::Cell::new(0);
    let fresh = |prefix: &str| {
        counter.set(counter.get() + 1);
        format!("{prefix}{}", counter.get())
    };
    let [c0, mut h, mut w] = input;
    let uniform = |rng: &mut StdRng, n: usize, lo: f64, hi: f64| -> Vec<f32> {
        (0..n).map(|_| (lo + (hi - lo) * rng.random::<f64>()) as f32).collect()
    };
    // Normalization.
    g.init.push(f32_tensor("mean", &[c0 as i64, 1, 1], &uniform(&mut rng, c0, 0.3, 0.6)));
    g.init.push(f32_tensor("std", &[c0 as i64, 1, 1], &uniform(&mut rng, c0, 0.2, 0.4)));
    g.nodes.push(node("Sub", &["x", "mean"], "centred", vec![]));
    g.nodes.push(node("Div", &["centred", "std"], "normed", vec![]));
    let conv_bn = |g: &mut Graph, rng: &mut StdRng, x: &str, ci: usize, co: usize, k: usize, stride: usize| {
        let kn = fresh("k");
        let scale = 1.5 / ((ci * k * k) as f64).sqrt();
        g.init.push(f32_tensor(
            &kn,
            &[co as i64, ci as i64, k as i64, k as i64],
            &uniform(rng, co * ci * k * k, -scale, scale),
        ));
        let pad = (k / 2) as i64;
        let c = fresh("c");
        g.nodes.push(node(
            "Conv",
            &[x, &kn],
            &c,
            vec![
                ints_attr("strides", &[stride as i64; 2]),
                ints_attr("pads", &[pad; 4]),
                ints_attr("kernel_shape", &[k as i64; 2]),
            ],
        ));
        let names: Vec<String> = ["g", "b", "m", "v"].iter().map(|p| fresh(p)).collect();
        let ranges = [(0.6, 1.4), (-0.2, 0.2), (-0.2, 0.2), (0.5, 1.5)];
        for (nm, (lo, hi)) in names.iter().zip(ranges) {
            g.init.push(f32_tensor(nm, &[co as i64], &uniform(rng, co, lo, hi)));
        }
        let out = fresh("bn");
        g.nodes.push(node(
            "BatchNormalization",
            &[&c, &names[0], &names[1], &names[2], &names[3]],
            &out,
            vec![float_attr("epsilon", 1e-5)],
        ));
        out
    };
    let mut x = "normed".to_string();
    let mut ch = c0;
    if !input_skip {
        let y = conv_bn(&mut g, &mut rng, &x, ch, width, 3, 1);
        x = fresh("r");
        g.nodes.push(node("Relu", &[&y], &x, vec![]));
        ch = width;
    }
    for &(co, stride) in blocks {
        let a = conv_bn(&mut g, &mut rng, &x, ch, co, 3, stride);
        let ra = fresh("r");
        g.nodes.push(node("Relu", &[&a], &ra, vec![]));
        let b = conv_bn(&mut g, &mut rng, &ra, co, co, 3, 1);
        let short = if stride != 1 || co != ch { conv_bn(&mut g, &mut rng, &x, ch, co, 1, stride) } else { x.clone() };
        let sum = fresh("sum");
        g.nodes.push(node("Add", &[&b, &short], &sum, vec![]));
        x = fresh("r");
        g.nodes.push(node("Relu", &[&sum], &x, vec![]));
        ch = co;
        h = (h + 2 - 3) / stride + 1;
        w = (w + 2 - 3) / stride + 1;
    }
    let flat = fresh("flat");
    g.nodes.push(node("Flatten", &[&x], &flat, vec![int_attr("axis", 1)]));
    let n = ch * h * w;
    let s1 = 2.0 / (n as f64).sqrt();
    g.init.push(f32_tensor("w1", &[hidden as i64, n as i64], &uniform(&mut rng, hidden * n, -s1, s1)));
    g.init.push(f32_tensor("b1", &[hidden as i64], &uniform(&mut rng, hidden, -0.2, 0.2)));
    g.nodes.push(node("Gemm", &[&flat, "w1", "b1"], "d1", vec![int_attr("transB", 1)]));
    g.nodes.push(node("Relu", &["d1"], "r_d1", vec![]));
    let s2 = 2.0 / (hidden as f64).sqrt();
    g.init.push(f32_tensor("w2", &[classes as i64, hidden as i64], &uniform(&mut rng, classes * hidden, -s2, s2)));
    g.init.push(f32_tensor("b2", &[classes as i64], &uniform(&mut rng, classes, -0.2, 0.2)));
    g.nodes.push(node("Gemm", &["r_d1", "w2", "b2"], "logits", vec![int_attr("transB", 1)]));
    g
}
