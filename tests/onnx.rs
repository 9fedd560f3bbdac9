//! ONNX import: the papers' ONNX files give the JSON networks' logits; small graphs built in code
//! cover every supported operator (checked against a hand computation), and every unsupported
//! construct is a typed error naming the node; arbitrary bytes never panic.

mod common;

use common::graph::{f32_tensor, float_attr, int_attr, ints_attr, model, node, raw_f64_tensor, value};
use nncert::Error;
use nncert::io::onnx_from_bytes;
use nncert::io::onnx_proto::{AttributeProto, NodeProto, TensorProto};

#[test]
fn papers_onnx_models_match_their_json() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    for model in ["adv-mnist-mlp-2x100", "lpd-mnist-mlp-2x100", "nor-mnist-mlp-2x100", "adv-mnist-cnn-small"] {
        let json = nncert::io::load_model(dir.join(format!("models/{model}.json"))).unwrap();
        let onnx = nncert::io::load_network(dir.join(format!("models/{model}.onnx"))).unwrap();
        assert_eq!(json.input_size(), onnx.input_size(), "{model}");
        let mut worst: f64 = 0.0;
        let (mut agree, mut correct) = (0, 0);
        for (x, &label) in images.iter().zip(&labels).take(200) {
            let a = json.forward(x).unwrap();
            let b = onnx.forward(x).unwrap();
            for (u, v) in a.iter().zip(&b) {
                worst = worst.max((u - v).abs() / (1.0 + u.abs()));
            }
            agree += usize::from(nncert::network::argmax(&a) == nncert::network::argmax(&b));
            correct += usize::from(nncert::network::argmax(&b) == label);
        }
        eprintln!("{model}: worst relative logit difference {worst:.2e}, ONNX accuracy {correct}/200");
        // Float32 weights in the ONNX file: agreement to float32 precision.
        assert!(worst < 1e-5, "{model}: logits differ by {worst}");
        assert_eq!(agree, 200, "{model}");
    }
}

/// x (1x2) -> Sub mean -> Div std -> Gemm(transB, alpha 2, beta 0.5) -> Relu -> Identity -> Dropout -> MatMul -> Add -> Sigmoid
/// -> Mul 3 -> Tanh -> Flatten -> Gemm -> Softplus, compared with the same computation by hand.
#[test]
fn every_dense_operator_matches_a_hand_computation() {
    let nodes = vec![
        node("Sub", &["x", "mean"], "a", vec![]),
        node("Div", &["a", "std"], "b", vec![]),
        node(
            "Gemm",
            &["b", "w1", "b1"],
            "c",
            vec![int_attr("transB", 1), float_attr("alpha", 2.0), float_attr("beta", 0.5)],
        ),
        node("Relu", &["c"], "d0", vec![]),
        node("Identity", &["d0"], "d1", vec![]),
        node("Dropout", &["d1"], "d", vec![]),
        node("MatMul", &["d", "w2"], "e", vec![]),
        node("Add", &["b2", "e"], "f", vec![]),
        node("Sigmoid", &["f"], "g", vec![]),
        node(
            "Constant",
            &[],
            "three",
            vec![AttributeProto {
                name: "value".into(),
                t: Some(f32_tensor("", &[], &[3.0])),
                r#type: 4,
                ..Default::default()
            }],
        ),
        node("Mul", &["g", "three"], "h", vec![]),
        node("Tanh", &["h"], "i", vec![]),
        node("Flatten", &["i"], "j", vec![int_attr("axis", 1)]),
        node("Gemm", &["j", "w3"], "k", vec![]),
        node("Softplus", &["k"], "y", vec![]),
    ];
    let init = vec![
        f32_tensor("mean", &[2], &[0.5, 0.25]),
        f32_tensor("std", &[1, 2], &[2.0, 4.0]),
        f32_tensor("w1", &[3, 2], &[1.0, -1.0, 0.5, 2.0, -1.5, 0.25]),
        f32_tensor("b1", &[3], &[0.1, -0.2, 0.3]),
        raw_f64_tensor("w2", &[3, 2], &[1.0, 0.5, -0.5, 1.0, 2.0, -1.0]),
        f32_tensor("b2", &[1, 2], &[0.05, -0.05]),
        f32_tensor("w3", &[2, 1], &[1.5, -0.5]),
    ];
    let net = onnx_from_bytes(&model(nodes, init, value("x", &[1, 2]), "y")).unwrap();
    for x in [[0.3f64, 0.9], [1.0, -2.0], [0.0, 0.0]] {
        let b: [f64; 2] = [(x[0] - 0.5) / 2.0, (x[1] - 0.25) / 4.0];
        let w1: [[f64; 2]; 3] = [[1.0, -1.0], [0.5, 2.0], [-1.5, 0.25]];
        let b1: [f64; 3] = [0.1, -0.2, 0.3];
        let d: Vec<f64> = (0..3).map(|o| (2.0 * (w1[o][0] * b[0] + w1[o][1] * b[1]) + 0.5 * b1[o]).max(0.0)).collect();
        let w2: [[f64; 2]; 3] = [[1.0, 0.5], [-0.5, 1.0], [2.0, -1.0]];
        let f: Vec<f64> = (0..2).map(|o| (0..3).map(|i| d[i] * w2[i][o]).sum::<f64>() + [0.05, -0.05][o]).collect();
        let i: Vec<f64> = f.iter().map(|v| (3.0 / (1.0 + (-v).exp())).tanh()).collect();
        let k: f64 = 1.5 * i[0] - 0.5 * i[1];
        let expected = (1.0 + k.exp()).ln();
        let got = net.forward(&x).unwrap()[0];
        assert!((got - expected).abs() < 1e-6, "x {x:?}: {got} vs {expected}");
    }
}

/// A 1x4x4 image -> Conv (2 channels, 3x3, pad 1, stride 2) -> BatchNormalization -> Relu ->
/// Reshape to (1, 8) -> Gemm: compared with a direct convolution.
#[test]
fn conv_batchnorm_reshape_match_a_direct_computation() {
    let kernel: Vec<f32> = (0..18).map(|i| ((i * 7) % 5) as f32 * 0.25 - 0.5).collect();
    let nodes = vec![
        node(
            "Conv",
            &["x", "k", "kb"],
            "c",
            vec![ints_attr("strides", &[2, 2]), ints_attr("pads", &[1, 1, 1, 1]), ints_attr("kernel_shape", &[3, 3])],
        ),
        node("BatchNormalization", &["c", "g", "be", "mu", "var"], "n", vec![float_attr("epsilon", 1e-3)]),
        node("Relu", &["n"], "r", vec![]),
        node("Reshape", &["r", "shape"], "f", vec![]),
        node("Gemm", &["f", "w", "b"], "y", vec![int_attr("transB", 1)]),
    ];
    let init = vec![
        f32_tensor("k", &[2, 1, 3, 3], &kernel),
        f32_tensor("kb", &[2], &[0.1, -0.1]),
        f32_tensor("g", &[2], &[1.5, 0.5]),
        f32_tensor("be", &[2], &[0.2, -0.3]),
        f32_tensor("mu", &[2], &[0.05, 0.1]),
        f32_tensor("var", &[2], &[0.5, 2.0]),
        TensorProto {
            name: "shape".into(),
            dims: vec![2],
            data_type: 7,
            int64_data: vec![1, -1],
            ..Default::default()
        },
        f32_tensor("w", &[1, 8], &[1.0, -1.0, 0.5, 0.25, -0.5, 2.0, 1.0, -0.75]),
        f32_tensor("b", &[1], &[0.3]),
    ];
    let net = onnx_from_bytes(&model(nodes, init, value("x", &[1, 1, 4, 4]), "y")).unwrap();
    assert_eq!(net.input_shape(), &[1, 4, 4]);
    let x: Vec<f64> = (0..16).map(|i| ((i * 5) % 7) as f64 / 7.0).collect();
    let (g, be, mu, var) = ([1.5, 0.5], [0.2, -0.3], [0.05, 0.1], [0.5, 2.0]);
    let mut feats = Vec::new();
    for oc in 0..2 {
        for oy in 0..2 {
            for ox in 0..2 {
                let mut s = [0.1, -0.1][oc];
                for ky in 0..3 {
                    for kx in 0..3 {
                        let (iy, ix) = ((oy * 2 + ky) as i64 - 1, (ox * 2 + kx) as i64 - 1);
                        if (0..4).contains(&iy) && (0..4).contains(&ix) {
                            s += kernel[oc * 9 + ky * 3 + kx] as f64 * x[(iy * 4 + ix) as usize];
                        }
                    }
                }
                let n = g[oc] * (s - mu[oc]) / (var[oc] + 1e-3f32 as f64).sqrt() + be[oc];
                feats.push(n.max(0.0));
            }
        }
    }
    let w = [1.0, -1.0, 0.5, 0.25, -0.5, 2.0, 1.0, -0.75];
    let expected: f64 = feats.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() + 0.3;
    let got = net.forward(&x).unwrap()[0];
    assert!((got - expected).abs() < 1e-6, "{got} vs {expected}");
    // The convolution with its BatchNorm stays an operator (no dense matrix in the bound core).
    assert!(net.layers()[0].conv().is_some());
}

/// Per-channel input normalization (Sub, Div) -> dilated Conv -> Relu -> Flatten -> Gemm: the
/// normalization folds into the convolution, which stays an operator with a position-dependent
/// bias where the zero padding meets the shift, and the outputs match a direct computation.
#[test]
fn normalized_dilated_conv_stays_an_operator_and_matches_a_direct_computation() {
    let kernel: Vec<f32> = (0..3 * 2 * 2 * 2).map(|i| ((i * 5) % 7) as f32 * 0.2 - 0.6).collect();
    let nodes = vec![
        node("Sub", &["x", "mean"], "s", vec![]),
        node("Div", &["s", "std"], "d", vec![]),
        node(
            "Conv",
            &["d", "k", "kb"],
            "c",
            vec![ints_attr("pads", &[1, 1, 1, 1]), ints_attr("dilations", &[2, 2]), ints_attr("strides", &[1, 2])],
        ),
        node("Relu", &["c"], "r", vec![]),
        node("Flatten", &["r"], "f", vec![]),
        node("Gemm", &["f", "w", "b"], "y", vec![int_attr("transB", 1)]),
    ];
    // Input (2, 5, 5); kernel (3, 2, 2, 2) dilated 2: extent 3; output (3, 5, 3).
    let w: Vec<f32> = (0..45).map(|i| ((i * 3) % 11) as f32 * 0.1 - 0.5).collect();
    let init = vec![
        f32_tensor("mean", &[1, 2, 1, 1], &[0.4, 0.6]),
        f32_tensor("std", &[1, 2, 1, 1], &[0.5, 0.25]),
        f32_tensor("k", &[3, 2, 2, 2], &kernel),
        f32_tensor("kb", &[3], &[0.1, -0.2, 0.05]),
        f32_tensor("w", &[1, 45], &w),
        f32_tensor("b", &[1], &[-0.1]),
    ];
    let net = onnx_from_bytes(&model(nodes, init, value("x", &[1, 2, 5, 5]), "y")).unwrap();
    assert!(net.layers()[0].conv().is_some(), "the normalized convolution is an operator");
    for seed in 0..3 {
        let x: Vec<f64> = (0..50).map(|i| ((i * 7 + seed * 13) % 10) as f64 / 10.0).collect();
        let norm: Vec<f64> =
            (0..50).map(|i| (x[i] - [0.4f32, 0.6][i / 25] as f64) / [0.5f32, 0.25][i / 25] as f64).collect();
        let mut feats = Vec::new();
        for o in 0..3 {
            for oy in 0..5i64 {
                for ox in 0..3i64 {
                    let mut acc = [0.1f32, -0.2, 0.05][o] as f64;
                    for i in 0..2 {
                        for a in 0..2i64 {
                            for b in 0..2i64 {
                                let (iy, ix) = (oy + 2 * a - 1, ox * 2 + 2 * b - 1);
                                if (0..5).contains(&iy) && (0..5).contains(&ix) {
                                    acc += kernel[((o * 2 + i) * 2 + a as usize) * 2 + b as usize] as f64
                                        * norm[i * 25 + (iy * 5 + ix) as usize];
                                }
                            }
                        }
                    }
                    feats.push(acc.max(0.0));
                }
            }
        }
        let expected: f64 = feats.iter().zip(&w).map(|(a, b)| a * *b as f64).sum::<f64>() - 0.1f32 as f64;
        let got = net.forward(&x).unwrap()[0];
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
    }
}

/// Conv -> Relu -> AveragePool (3x3, stride 2, pad 1, the padding not counted) -> Relu ->
/// GlobalAveragePool -> Flatten -> Gemm, against a direct computation; with count_include_pad
/// the pooling stays a convolution operator.
#[test]
fn average_pooling_matches_a_direct_computation() {
    for include_pad in [0, 1] {
        let kernel: Vec<f32> = (0..2 * 9).map(|i| ((i * 4) % 9) as f32 * 0.25 - 1.0).collect();
        let nodes = vec![
            node("Conv", &["x", "k"], "c", vec![ints_attr("pads", &[1, 1, 1, 1])]),
            node("Relu", &["c"], "r", vec![]),
            node(
                "AveragePool",
                &["r"],
                "p",
                vec![
                    ints_attr("kernel_shape", &[3, 3]),
                    ints_attr("strides", &[2, 2]),
                    ints_attr("pads", &[1, 1, 1, 1]),
                    int_attr("count_include_pad", include_pad),
                ],
            ),
            node("Relu", &["p"], "q", vec![]),
            node("GlobalAveragePool", &["q"], "g", vec![]),
            node("Flatten", &["g"], "f", vec![]),
            node("Gemm", &["f", "w"], "y", vec![int_attr("transB", 1)]),
        ];
        let init = vec![f32_tensor("k", &[2, 1, 3, 3], &kernel), f32_tensor("w", &[1, 2], &[1.5, -0.5])];
        let net = onnx_from_bytes(&model(nodes, init, value("x", &[1, 1, 5, 5]), "y")).unwrap();
        if include_pad == 1 {
            assert!(net.layers()[1].conv().is_some(), "the pooling is a convolution operator");
        }
        let x: Vec<f64> = (0..25).map(|i| ((i * 7) % 10) as f64 / 10.0 - 0.3).collect();
        // Conv 3x3 pad 1: (2, 5, 5), ReLU.
        let mut c = vec![0.0; 50];
        for o in 0..2 {
            for y in 0..5i64 {
                for xx in 0..5i64 {
                    let mut acc = 0.0;
                    for a in 0..3i64 {
                        for b in 0..3i64 {
                            let (iy, ix) = (y + a - 1, xx + b - 1);
                            if (0..5).contains(&iy) && (0..5).contains(&ix) {
                                acc += kernel[o * 9 + (a * 3 + b) as usize] as f64 * x[(iy * 5 + ix) as usize];
                            }
                        }
                    }
                    c[o * 25 + (y * 5 + xx) as usize] = acc.max(0.0);
                }
            }
        }
        // Average pool 3x3 stride 2 pad 1: (2, 3, 3), ReLU (a no-op on averages of ReLUs), then the
        // global average per channel.
        let mut g = [0.0; 2];
        for (o, go) in g.iter_mut().enumerate() {
            for y in 0..3i64 {
                for xx in 0..3i64 {
                    let (mut acc, mut n) = (0.0, 0.0);
                    for a in 0..3i64 {
                        for b in 0..3i64 {
                            let (iy, ix) = (2 * y + a - 1, 2 * xx + b - 1);
                            if (0..5).contains(&iy) && (0..5).contains(&ix) {
                                acc += c[o * 25 + (iy * 5 + ix) as usize];
                                n += 1.0;
                            }
                        }
                    }
                    *go += acc / if include_pad == 1 { 9.0 } else { n } / 9.0;
                }
            }
        }
        let expected = 1.5 * g[0] - 0.5 * g[1];
        let got = net.forward(&x).unwrap()[0];
        assert!((got - expected).abs() < 1e-12, "count_include_pad {include_pad}: {got} vs {expected}");
    }
}

#[test]
fn unsupported_constructs_are_typed_errors_naming_the_node() {
    let w = f32_tensor("w", &[2, 2], &[1.0, 0.0, 0.0, 1.0]);
    let cases: Vec<(Vec<NodeProto>, &str, usize, &str)> = vec![
        (vec![node("Gemm", &["x", "w"], "a", vec![]), node("MaxPool", &["a"], "y", vec![])], "y", 1, "MaxPool"),
        (vec![node("Softmax", &["x"], "y", vec![])], "y", 0, "Softmax"),
        (vec![node("Gemm", &["x", "w"], "y", vec![int_attr("transA", 1)])], "y", 0, "Gemm"),
        (vec![node("MatMul", &["w", "x"], "y", vec![])], "y", 0, "MatMul"),
        (vec![node("Mul", &["x", "x"], "y", vec![])], "y", 0, "Mul"),
        (vec![node("Div", &["w", "x"], "y", vec![])], "y", 0, "Div"),
        (vec![node("Relu", &["z"], "y", vec![])], "y", 0, "Relu"),
        (vec![node("Conv", &["x", "w"], "y", vec![])], "y", 0, "Conv"),
        (vec![node("Flatten", &["x"], "y", vec![int_attr("axis", 3)])], "y", 0, "Flatten"),
    ];
    for (nodes, out, index, op) in cases {
        let bytes = model(nodes, vec![w.clone()], value("x", &[1, 2]), out);
        match onnx_from_bytes(&bytes) {
            Err(Error::OnnxNode { index: i, op_type, detail, .. }) => {
                assert_eq!((i, op_type.as_str()), (index, op), "{detail}");
            }
            other => panic!("{op}: expected an OnnxNode error, got {other:?}"),
        }
    }
    // A graph whose output is not the end of the chain, a bad weight shape, a malformed file.
    let bytes = model(vec![node("Relu", &["x"], "a", vec![])], vec![], value("x", &[1, 2]), "b");
    assert!(matches!(onnx_from_bytes(&bytes), Err(Error::ModelFormat { .. })));
    let bytes = model(
        vec![node("Gemm", &["x", "w"], "y", vec![])],
        vec![f32_tensor("w", &[3, 2], &[0.0; 6])],
        value("x", &[1, 2]),
        "y",
    );
    assert!(matches!(onnx_from_bytes(&bytes), Err(Error::OnnxNode { index: 0, .. })));
    assert!(matches!(onnx_from_bytes(b"\x0a\xff\xff\xff"), Err(Error::ModelFormat { .. })));
    let nan = model(
        vec![node("Gemm", &["x", "w"], "y", vec![])],
        vec![f32_tensor("w", &[2, 2], &[f32::NAN, 0.0, 0.0, 1.0])],
        value("x", &[1, 2]),
        "y",
    );
    assert!(onnx_from_bytes(&nan).is_err());
}

/// Arbitrary bytes, and truncations and bit flips of a valid model: errors, never panics.
#[test]
fn arbitrary_bytes_never_panic() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let good = model(
        vec![node("Gemm", &["x", "w", "b"], "h", vec![int_attr("transB", 1)]), node("Relu", &["h"], "y", vec![])],
        vec![f32_tensor("w", &[2, 2], &[1.0, 2.0, 3.0, 4.0]), f32_tensor("b", &[2], &[0.0, 1.0])],
        value("x", &[1, 2]),
        "y",
    );
    assert!(onnx_from_bytes(&good).is_ok());
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..20_000 {
        let mut bytes = good.clone();
        match rng.random_range(0..3) {
            0 => bytes.truncate(rng.random_range(0..good.len())),
            1 => {
                for _ in 0..rng.random_range(1..4) {
                    let i = rng.random_range(0..bytes.len());
                    bytes[i] ^= 1 << rng.random_range(0..8);
                }
            }
            _ => bytes = (0..rng.random_range(0..64)).map(|_| rng.random()).collect(),
        }
        let _ = onnx_from_bytes(&bytes);
    }
}

/// Small ResNets (identity and 1x1-convolution shortcuts with BatchNorm, as VNN-COMP's
/// cifar10_resnet; one with a shortcut from the normalized input) load as chains of block
/// operators and compute what a direct evaluation of their graph computes.
#[test]
fn resnets_match_a_direct_evaluation_of_their_graph() {
    use common::graph::resnet;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let cases: [common::graph::ResNetCase; 4] = [
        (1, [3, 8, 8], 4, &[(4, 1), (6, 2)], false),
        (2, [2, 6, 6], 3, &[(5, 2)], true),
        (3, [1, 5, 5], 2, &[(2, 1), (2, 1), (3, 2)], false),
        (4, [2, 4, 4], 2, &[(2, 1)], true),
    ];
    let mut rng = StdRng::seed_from_u64(9);
    for (seed, input, width, blocks, skip) in cases {
        let g = resnet(seed, input, width, blocks, 10, 4, skip);
        let net = onnx_from_bytes(&g.bytes()).unwrap();
        assert_eq!(net.input_shape(), &input);
        assert_eq!(net.num_classes(), 4);
        for _ in 0..50 {
            let x: Vec<f64> = (0..net.input_size()).map(|_| rng.random()).collect();
            let want = g.eval(&x);
            let got = net.forward(&x).unwrap();
            for (a, b) in got.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-9 * (1.0 + b.abs()), "case {seed}: {got:?} vs {want:?}");
            }
        }
        // Every layer before the dense head applies its convolutions as operators, and each
        // block's carried values are copied exactly (pass-through rows).
        let layers = net.layers();
        let head = layers.len() - 2;
        assert!(layers[..head].iter().all(|l| l.conv().is_some() || l.block_operator().is_some()), "case {seed}");
        assert!(layers[head..].iter().all(|l| l.is_dense()), "case {seed}");
        let carried: usize = layers.iter().map(|l| l.pass_through().len()).sum();
        assert!(carried > 0, "case {seed}: no carried neuron");
    }
}
