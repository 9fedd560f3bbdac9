//! CROWN (all 9 targets, pre-activation bounds included) on adv-mnist-mlp-2x100, l_inf 0.1 with
//! the [0,1] box and l2 1.0 without it, and on adv-mnist-cnn-small at l_inf 0.1 with the box, on
//! the first 10 test images; on the bundled digits model; and on a CIFAR-shaped convolutional
//! network with random weights (3x32x32 -> conv 8 -> conv 16 -> dense 100 -> 10, the shape of
//! VNN-COMP's oval21 base network), l_inf 2/255 with the box. The MNIST part is skipped when
//! ../shared/data is absent.

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

    let cifar = cifar_shaped(1);
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

/// A CIFAR-shaped conv net with random weights (He-like scaling, small biases).
fn cifar_shaped(seed: u64) -> nncert::Network {
    use nncert::network::{Conv2d, Conv2dShape};
    use nncert::{Activation, Layer, Network};
    let mut state = seed;
    let mut rnd = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((state >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
    };
    let mut layers = Vec::new();
    for (k, shape) in [
        Conv2dShape::new([3, 32, 32], [8, 3, 4, 4], [2, 2], [1, 1]),
        Conv2dShape::new([8, 16, 16], [16, 8, 4, 4], [2, 2], [1, 1]),
    ]
    .into_iter()
    .enumerate()
    {
        let [oc, ic, kh, kw] = shape.kernel;
        let scale = 2.0 / ((ic * kh * kw) as f64).sqrt();
        let kernel = (0..oc * ic * kh * kw).map(|_| rnd() * scale).collect();
        let conv = Conv2d::new(shape, kernel, k).unwrap();
        let bias = (0..conv.output_size()).map(|j| 0.05 * ((j / 64) % 3) as f64 - 0.05).collect();
        layers.push(Layer::conv2d(conv, bias, Activation::Relu));
    }
    for (n_in, n_out, act) in [(1024, 100, Activation::Relu), (100, 10, Activation::Identity)] {
        let scale = 2.0 / (n_in as f64).sqrt();
        let w = faer::Mat::from_fn(n_out, n_in, |_, _| rnd() * scale);
        layers.push(Layer::new(w, vec![0.0; n_out], act));
    }
    Network::new(vec![3, 32, 32], layers).unwrap()
}

criterion_group!(benches, bench);
criterion_main!(benches);
