//! The ONNX importer's shape and linear operators against onnxruntime, and the bound core on the
//! networks they give: small graphs written by `tests/data/onnx_ops.py` (Transpose before a
//! convolution, Pad before AveragePool, Slice/Split/Concat/Neg/ReduceSum/ReduceMean, weights on
//! the left of MatMul and Gemm, Gather, Shape arithmetic folded into a Reshape), their outputs
//! computed by onnxruntime (float32). Each network's CROWN and IBP bounds must equal those of the
//! same network with every layer lowered to a dense matrix (the operators are exact linear
//! maps), and hold at sampled points of the input set.

use nncert::bounds::{Propagation, margin_lower_bounds, pre_activation_bounds};
use nncert::io::onnx_from_bytes;
use nncert::{Domain, InputSet, Layer, Network, Norm};
use rand::SeedableRng;

const DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/onnx_ops");
const MODELS: [&str; 5] = ["transpose_conv", "pad_pool", "slice_split_concat", "weight_left", "gather_shape"];

fn load(name: &str) -> Network {
    let bytes = std::fs::read(format!("{DIR}/{name}.onnx")).unwrap();
    onnx_from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn expected() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{DIR}/expected.json")).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

/// The same network with every layer's map as its dense matrix.
fn densified(net: &Network) -> Network {
    let layers =
        net.layers().iter().map(|l| Layer::new(l.weight().to_owned(), l.bias().to_vec(), l.activation())).collect();
    Network::new(net.input_shape().to_vec(), layers).unwrap()
}

#[test]
fn every_graph_gives_onnxruntimes_outputs() {
    let data = expected();
    for name in MODELS {
        let net = load(name);
        let cases = data[name].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for case in cases {
            let (x, y) = (floats(&case["x"]), floats(&case["y"]));
            let got = net.forward(&x).unwrap();
            assert_eq!(got.len(), y.len(), "{name}");
            for (a, b) in got.iter().zip(&y) {
                // float32 weights and onnxruntime's float32 arithmetic.
                assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{name}: {a} vs onnxruntime {b}");
            }
        }
    }
    // The operators stay operators where they can: the transposed image reaches the convolution
    // through a chained index map, not a dense matrix.
    let net = load("transpose_conv");
    assert!(!net.layers()[0].is_dense() && net.layers()[0].chained_terms() > 0);
}

#[test]
fn bounds_equal_the_dense_networks_and_hold_at_samples() {
    let data = expected();
    let mut rng = rand::rngs::StdRng::seed_from_u64(43);
    for name in MODELS {
        let net = load(name);
        let dense = densified(&net);
        let x = floats(&data[name][0]["x"]);
        let n = x.len();
        for (norm, eps) in [(Norm::Linf, 0.05), (Norm::L2, 0.2)] {
            let set = InputSet::new(x.clone(), eps, norm, Some(Domain::uniform(n, 0.0, 1.0).unwrap())).unwrap();
            let classes = net.num_classes();
            let label = nncert::network::argmax(&net.forward(&x).unwrap());
            let targets: Vec<usize> = (0..classes).filter(|&t| t != label).collect();
            for method in [Propagation::Ibp, Propagation::Crown] {
                let pre = pre_activation_bounds(&net, &set, method).unwrap();
                let pre_d = pre_activation_bounds(&dense, &set, method).unwrap();
                for (a, b) in pre.layers.iter().zip(&pre_d.layers) {
                    for i in 0..a.lower.len() {
                        let tol = 1e-9 * (1.0 + a.lower[i].abs().max(a.upper[i].abs()));
                        assert!(
                            (a.lower[i] - b.lower[i]).abs() <= tol,
                            "{name} {method:?}: {} vs {}",
                            a.lower[i],
                            b.lower[i]
                        );
                        assert!((a.upper[i] - b.upper[i]).abs() <= tol, "{name} {method:?}");
                    }
                }
                if targets.is_empty() {
                    continue;
                }
                let lb = margin_lower_bounds(&net, &set, &pre, method, label, &targets).unwrap();
                let lb_d = margin_lower_bounds(&dense, &set, &pre_d, method, label, &targets).unwrap();
                for (a, b) in lb.iter().zip(&lb_d) {
                    assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "{name} {method:?}: margin {a} vs dense {b}");
                }
                for _ in 0..300 {
                    let p = set.sample(&mut rng);
                    for (k, &t) in targets.iter().enumerate() {
                        let m = net.margin(&p, label, t).unwrap();
                        assert!(lb[k] <= m + 1e-9, "{name} {method:?} {norm:?}: bound {} above margin {m}", lb[k]);
                    }
                }
            }
        }
    }
}
