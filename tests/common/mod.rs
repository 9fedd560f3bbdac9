//! Helpers shared by the integration tests: random networks and the optional reference data.
#![allow(dead_code)]

pub mod graph;

use std::path::PathBuf;

use faer::Mat;
use nncert::{Activation, Domain, InputSet, Layer, Network, Norm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// A random network with the given layer sizes (input first); hidden layers use `act`, the last
/// layer is affine. Weights ~ U(-1, 1) * scale / sqrt(fan_in), biases ~ U(-0.3, 0.3).
pub fn random_network(seed: u64, sizes: &[usize], act: Activation) -> Network {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut layers = Vec::new();
    for k in 0..sizes.len() - 1 {
        let (n_in, n_out) = (sizes[k], sizes[k + 1]);
        let scale = 2.0 / (n_in as f64).sqrt();
        let w = Mat::from_fn(n_out, n_in, |_, _| (rng.random::<f64>() * 2.0 - 1.0) * scale);
        let b = (0..n_out).map(|_| rng.random::<f64>() * 0.6 - 0.3).collect();
        let a = if k + 2 == sizes.len() { Activation::Identity } else { act };
        layers.push(Layer::new(w, b, a));
    }
    Network::new(vec![sizes[0]], layers).expect("valid random network")
}

/// ../shared/data (relative to the crate root), or None with a printed reason.
pub fn shared_data() -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if dir.join("models").is_dir() && dir.join("mnist").is_dir() {
        Some(dir)
    } else {
        eprintln!("skipped: reference data not found at {}", dir.display());
        None
    }
}

/// The first 1100 MNIST test images and labels from the reference data.
pub fn mnist(dir: &std::path::Path) -> (Vec<Vec<f64>>, Vec<usize>) {
    let (images, shape) = nncert::io::read_idx_images(dir.join("mnist/t10k-first1100-images-idx3-ubyte")).unwrap();
    assert_eq!(shape, vec![28, 28]);
    let labels = nncert::io::read_idx_labels(dir.join("mnist/t10k-first1100-labels-idx1-ubyte")).unwrap();
    (images, labels)
}

/// `count` small ReLU problems (2-4 inputs, one or two hidden layers of 4-8 neurons, 3 classes),
/// alternating l2 0.2 and l_inf 0.08, two thirds with the [0,1] box: (network, input set, label).
pub fn small_relu_cases(count: u64) -> Vec<(Network, InputSet, usize)> {
    (0..count)
        .map(|seed| {
            let n_in = 2 + seed as usize % 3;
            let sizes = if seed % 2 == 0 { vec![n_in, 5 + seed as usize % 4, 3] } else { vec![n_in, 5, 4, 3] };
            let net = random_network(500 + seed, &sizes, Activation::Relu);
            let x: Vec<f64> = (0..n_in).map(|i| ((seed as usize * 3 + i * 5) % 11) as f64 / 11.0).collect();
            let label = net.predict(&x).unwrap();
            let (norm, eps) = if seed % 2 == 0 { (Norm::L2, 0.2) } else { (Norm::Linf, 0.08) };
            let domain = (seed % 3 != 0).then(|| Domain::uniform(n_in, 0.0, 1.0).unwrap());
            (net, InputSet::new(x, eps, norm, domain).unwrap(), label)
        })
        .collect()
}

/// The truncated network whose margin (label 0, target 1) is +-(pre-activation of neuron j of
/// hidden layer k), built here independently of the library's truncations (`bm_bounds`).
pub fn neuron_as_margin(net: &Network, k: usize, j: usize, upper: bool) -> Network {
    use nncert::network::{Activation, Layer};
    let w: Vec<f64> = net.layers()[k].weight().row(j).iter().copied().collect();
    let b = net.layers()[k].bias()[j];
    let zero = vec![0.0; w.len()];
    let (rows, bias) = if upper { (vec![zero, w], vec![0.0, b]) } else { (vec![w, zero], vec![b, 0.0]) };
    let mut layers = net.layers()[..k].to_vec();
    layers.push(Layer::from_rows(&rows, bias, Activation::Identity).unwrap());
    Network::new(net.input_shape().to_vec(), layers).unwrap()
}
