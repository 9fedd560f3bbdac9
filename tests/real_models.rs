//! The papers' MNIST networks (../shared/data; skipped with a message when absent): clean
//! accuracy, and CROWN's certified counts against an independent implementation (auto_LiRPA,
//! float64, method "CROWN"), which certifies 5 of the first 100 correctly classified test images
//! of adv-mnist-mlp-2x100 at l2 eps 1.0 without the box and 31 at l_inf eps 0.1 with the box.

mod common;

use nncert::bounds::{self, Propagation};
use nncert::{Domain, InputSet, Network, Norm};

fn accuracy(net: &Network, images: &[Vec<f64>], labels: &[usize], n: usize) -> f64 {
    let correct = (0..n).filter(|&i| net.predict(&images[i]).unwrap() == labels[i]).count();
    correct as f64 / n as f64
}

#[test]
fn clean_accuracy_matches_the_papers() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    for (model, expected) in [
        ("adv-mnist-mlp-2x100", 0.963),
        ("lpd-mnist-mlp-2x100", 0.950),
        ("nor-mnist-mlp-2x100", 0.981),
        ("adv-mnist-mlp-9x100", 0.963),
        ("nor-mnist-mlp-9x100", 0.975),
        ("adv-mnist-cnn-small", 0.988),
    ] {
        let net = nncert::io::load_model(dir.join(format!("models/{model}.json"))).unwrap();
        assert_eq!(net.input_size(), 784);
        assert_eq!(net.num_classes(), 10);
        let acc = accuracy(&net, &images, &labels, 1000);
        assert!((acc - expected).abs() < 1e-9, "{model}: accuracy {acc}, expected {expected}");
    }
}

fn crown_count(net: &Network, images: &[Vec<f64>], labels: &[usize], norm: Norm, eps: f64, with_box: bool) -> usize {
    let mut robust = 0;
    let mut done = 0;
    for (x, &y) in images.iter().zip(labels) {
        if done == 100 {
            break;
        }
        if net.predict(x).unwrap() != y {
            continue;
        }
        done += 1;
        let domain = with_box.then(|| Domain::uniform(784, 0.0, 1.0).unwrap());
        let set = InputSet::new(x.clone(), eps, norm, domain).unwrap();
        let pre = bounds::pre_activation_bounds(net, &set, Propagation::Crown).unwrap();
        let targets: Vec<usize> = (0..10).filter(|&c| c != y).collect();
        let lbs = bounds::margin_lower_bounds(net, &set, &pre, Propagation::Crown, y, &targets).unwrap();
        if lbs.iter().all(|&b| b > 0.0) {
            robust += 1;
        }
    }
    assert_eq!(done, 100);
    robust
}

#[test]
fn crown_agrees_with_auto_lirpa() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    let net = nncert::io::load_model(dir.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    assert_eq!(crown_count(&net, &images, &labels, Norm::L2, 1.0, false), 5);
    assert_eq!(crown_count(&net, &images, &labels, Norm::Linf, 0.1, true), 31);
    // The box only adds information: with it, l2 certifies at least as many.
    assert!(crown_count(&net, &images, &labels, Norm::L2, 1.0, true) >= 5);
}
