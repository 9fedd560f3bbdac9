//! CROWN (all 9 targets, pre-activation bounds included) on adv-mnist-mlp-2x100, l_inf 0.1 with
//! the [0,1] box and l2 1.0 without it, and on adv-mnist-cnn-small at l_inf 0.1 with the box, on
//! the first 10 test images; on the bundled digits model; and on a CIFAR-shaped convolutional
//! network with random weights (3x32x32 -> conv 8 -> conv 16 -> dense 100 -> 10, the shape of
//! VNN-COMP's oval21 base network), l_inf 2/255 with the box. The MNIST part is skipped when
//! ../shared/data is absent. The CIFAR-shaped network is written to
//! target/bench-models/cifar-shaped.json for `benches/auto_lirpa_time.py`.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use nncert::verify::{Crown, Verifier};
use nncert::{Domain, InputSet, Norm};

fn bench(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let digits = nncert::io::load_model(root.join("data/models/digits-relu-adv.json")).expect("bundled model");
    let (_, test) = nncert::data::digits_split().expect("bundled data");
    c.bench_function("crown/digits-relu-adv/linf-0.05/per-image", |b| {
        let mut i = 0;
        b.iter(|| {
            let x = &test.images[i % 10];
            let y = test.labels[i % 10];
            i += 1;
            let set = InputSet::new(x.clone(), 0.05, Norm::Linf, Some(Domain::uniform(64, 0.0, 1.0).unwrap())).unwrap();
            let targets: Vec<usize> = (0..10).filter(|&t| t != y).collect();
            Crown.lower_bounds(&digits, &set, y, &targets).unwrap()
        })
    });

    let (cifar, cifar_json) = cifar_shaped(1);
    let models = root.join("target/bench-models");
    // The file is the same network (checked on one input).
    let again = nncert::io::model_from_json(&cifar_json.to_string()).expect("the JSON form loads");
    let probe: Vec<f64> = (0..3072).map(|j| (j % 17) as f64 / 17.0).collect();
    let (a, b) = (cifar.forward(&probe).unwrap(), again.forward(&probe).unwrap());
    assert!(a.iter().zip(&b).all(|(x, y)| (x - y).abs() <= 1e-12), "JSON form differs: {a:?} vs {b:?}");
    if std::fs::create_dir_all(&models).is_ok() {
        let _ = std::fs::write(models.join("cifar-shaped.json"), cifar_json.to_string());
    }
    c.bench_function("crown/cifar-shaped-conv/linf-2-255-box/per-image", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 1;
            let x: Vec<f64> = (0..3072).map(|j| ((j as u64 * 7919 + i * 104_729) % 1000) as f64 / 1000.0).collect();
            let set =
                InputSet::new(x, 2.0 / 255.0, Norm::Linf, Some(Domain::uniform(3072, 0.0, 1.0).unwrap())).unwrap();
            let y = cifar.predict(set.center()).unwrap();
            let targets: Vec<usize> = (0..10).filter(|&t| t != y).collect();
            Crown.lower_bounds(&cifar, &set, y, &targets).unwrap()
        })
    });

    let data = root.join("../shared/data");
    if !data.join("models").is_dir() {
        eprintln!("skipped MNIST benchmarks: {} not found", data.display());
        return;
    }
    let net = nncert::io::load_model(data.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let (images, _) = nncert::io::read_idx_images(data.join("mnist/t10k-first1100-images-idx3-ubyte")).unwrap();
    let labels = nncert::io::read_idx_labels(data.join("mnist/t10k-first1100-labels-idx1-ubyte")).unwrap();
    let cnn = nncert::io::load_model(data.join("models/adv-mnist-cnn-small.json")).unwrap();
    c.bench_function("crown/adv-mnist-cnn-small/linf-0.1-box/per-image", |b| {
        let mut i = 0;
        b.iter(|| {
            let (x, y) = (&images[i % 10], labels[i % 10]);
            i += 1;
            let set = InputSet::new(x.clone(), 0.1, Norm::Linf, Some(Domain::uniform(784, 0.0, 1.0).unwrap())).unwrap();
            let targets: Vec<usize> = (0..10).filter(|&t| t != y).collect();
            Crown.lower_bounds(&cnn, &set, y, &targets).unwrap()
        })
    });
    for (name, norm, eps, with_box) in
        [("linf-0.1-box", Norm::Linf, 0.1, true), ("l2-1.0", Norm::L2, 1.0, false), ("l2-1.0-box", Norm::L2, 1.0, true)]
    {
        c.bench_function(&format!("crown/adv-mnist-mlp-2x100/{name}/per-image"), |b| {
            let mut i = 0;
            b.iter(|| {
                let (x, y) = (&images[i % 10], labels[i % 10]);
                i += 1;
                let domain = with_box.then(|| Domain::uniform(784, 0.0, 1.0).unwrap());
                let set = InputSet::new(x.clone(), eps, norm, domain).unwrap();
                let targets: Vec<usize> = (0..10).filter(|&t| t != y).collect();
                Crown.lower_bounds(&net, &set, y, &targets).unwrap()
            })
        });
    }
}

/// A CIFAR-shaped conv net with random weights (He-like scaling, small per-channel biases), and
/// the same network in the JSON model format (conv2d layers as such).
fn cifar_shaped(seed: u64) -> (nncert::Network, serde_json::Value) {
    use nncert::network::{Conv2d, Conv2dShape};
    use nncert::{Activation, Layer, Network};
    use serde_json::json;
    let mut state = seed;
    let mut rnd = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let mut layers = Vec::new();
    let mut files = Vec::new();
    for (k, shape) in [
        Conv2dShape::new([3, 32, 32], [8, 3, 4, 4], [2, 2], [1, 1]),
        Conv2dShape::new([8, 16, 16], [16, 8, 4, 4], [2, 2], [1, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let [oc, ic, kh, kw] = shape.kernel;
        let scale = 2.0 / ((ic * kh * kw) as f64).sqrt();
        let kernel: Vec<f64> = (0..oc * ic * kh * kw).map(|_| rnd() * scale).collect();
        let channel_bias: Vec<f64> = (0..oc).map(|c| 0.05 * (c % 3) as f64 - 0.05).collect();
        let conv = Conv2d::new(shape.clone(), kernel.clone(), k).unwrap();
        let per = conv.output_size() / oc;
        let bias = (0..conv.output_size()).map(|j| channel_bias[j / per]).collect();
        let nested: Vec<Vec<Vec<Vec<f64>>>> = kernel
            .chunks(ic * kh * kw)
            .map(|o| o.chunks(kh * kw).map(|i| i.chunks(kw).map(<[f64]>::to_vec).collect()).collect())
            .collect();
        files.push(json!({"type": "conv2d", "weight": nested, "bias": channel_bias, "stride": shape.stride,
            "padding": shape.padding, "input_shape": shape.input, "output_shape": conv.output_shape(), "activation": "relu"}));
        layers.push(Layer::conv2d(conv, bias, Activation::Relu));
    }
    files.push(json!({"type": "flatten"}));
    for (n_in, n_out, act) in [(1024, 100, Activation::Relu), (100, 10, Activation::Identity)] {
        let scale = 2.0 / (n_in as f64).sqrt();
        let w = faer::Mat::from_fn(n_out, n_in, |_, _| rnd() * scale);
        let rows: Vec<Vec<f64>> = (0..n_out).map(|i| (0..n_in).map(|j| w[(i, j)]).collect()).collect();
        files.push(json!({"type": "dense", "weight": rows, "bias": vec![0.0; n_out], "activation": act.name()}));
        layers.push(Layer::new(w, vec![0.0; n_out], act));
    }
    let net = Network::new(vec![3, 32, 32], layers).unwrap();
    (net, json!({"source": "nncert benches/crown.rs", "input_shape": [3, 32, 32], "layers": files}))
}

criterion_group!(benches, bench);
criterion_main!(benches);
