//! Soundness of every lower bound against ground truth on random small networks: each method's
//! lower bound on phi[c] must lie below PGD's upper bound and below the margin at every sampled
//! point of the input set, and the pre-activation bounds must contain the pre-activations of
//! every sampled point.

mod common;

use nncert::attack::{PgdSettings, pgd};
use nncert::bounds::{self, Propagation};
use nncert::{Activation, Domain, InputSet, Network, Norm};
use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::StdRng;

const TOL: f64 = 1e-9;

fn pre_activations(net: &Network, x: &[f64]) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    let mut h = x.to_vec();
    for layer in net.layers() {
        let w = layer.weight();
        let z: Vec<f64> =
            (0..w.nrows()).map(|i| (0..w.ncols()).map(|j| w[(i, j)] * h[j]).sum::<f64>() + layer.bias()[i]).collect();
        h = z.iter().map(|&v| layer.activation().eval(v)).collect();
        out.push(z);
    }
    out
}

fn check(net: &Network, set: &InputSet, label: usize, seed: u64) {
    let targets: Vec<usize> = (0..net.num_classes()).filter(|&c| c != label).collect();
    let attack = pgd(net, set, label, &targets, &PgdSettings { steps: 60, restarts: 3, ..Default::default() }).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    let samples: Vec<Vec<f64>> = (0..200).map(|_| set.sample(&mut rng)).collect();
    for s in &samples {
        assert!(set.contains(s, 0.0));
    }
    for method in [Propagation::Ibp, Propagation::FastLin, Propagation::Crown] {
        let pre = bounds::pre_activation_bounds(net, set, method).unwrap();
        for s in samples.iter().chain(attack.iter().map(|a| &a.input)) {
            for (k, z) in pre_activations(net, s).iter().enumerate() {
                for (i, &v) in z.iter().enumerate() {
                    let (l, u) = (pre.layers[k].lower[i], pre.layers[k].upper[i]);
                    assert!(l <= v + TOL && v <= u + TOL, "{method:?} layer {k} neuron {i}: {v} not in [{l}, {u}]");
                }
            }
        }
        let lbs = bounds::margin_lower_bounds(net, set, &pre, method, label, &targets).unwrap();
        for (ti, &t) in targets.iter().enumerate() {
            let lb = lbs[ti];
            assert!(lb <= attack[ti].margin + TOL, "{method:?} target {t}: lower {lb} > PGD {}", attack[ti].margin);
            for s in &samples {
                let m = net.margin(s, label, t).unwrap();
                assert!(lb <= m + TOL, "{method:?} target {t}: lower {lb} > sampled margin {m}");
            }
        }
    }
}

fn activation(i: u8) -> Activation {
    [Activation::Relu, Activation::Sigmoid, Activation::Tanh, Activation::Softplus][i as usize % 4]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, .. ProptestConfig::default() })]

    #[test]
    fn lower_bounds_are_sound(
        seed in 0u64..1_000_000,
        n_in in 1usize..6,
        hidden in proptest::collection::vec(2usize..8, 1..4),
        classes in 2usize..5,
        act in 0u8..4,
        eps in 0.0f64..0.6,
        l2 in any::<bool>(),
        with_box in any::<bool>(),
        center in proptest::collection::vec(0.0f64..1.0, 6),
    ) {
        let mut sizes = vec![n_in];
        sizes.extend(&hidden);
        sizes.push(classes);
        let net = common::random_network(seed, &sizes, activation(act));
        let x = center[..n_in].to_vec();
        let label = net.predict(&x).unwrap();
        let norm = if l2 { Norm::L2 } else { Norm::Linf };
        let domain = with_box.then(|| Domain::uniform(n_in, 0.0, 1.0).unwrap());
        let set = InputSet::new(x, eps, norm, domain).unwrap();
        check(&net, &set, label, seed);
    }
}

/// A fixed corpus as well, so that failures reproduce without proptest's state.
#[test]
fn seeded_corpus_is_sound() {
    for seed in 0..60u64 {
        let act = activation(seed as u8);
        let sizes = [3 + (seed as usize % 3), 6, 5, 3];
        let net = common::random_network(seed, &sizes, act);
        let x: Vec<f64> = (0..sizes[0]).map(|i| ((seed as usize * 7 + i * 3) % 10) as f64 / 10.0).collect();
        let label = net.predict(&x).unwrap();
        for (norm, eps) in [(Norm::L2, 0.4), (Norm::Linf, 0.15)] {
            for with_box in [false, true] {
                let domain = with_box.then(|| Domain::uniform(sizes[0], 0.0, 1.0).unwrap());
                let set = InputSet::new(x.clone(), eps, norm, domain).unwrap();
                check(&net, &set, label, seed);
            }
        }
    }
}

/// With eps = 0 the set is a point: every method returns the exact margin.
#[test]
fn zero_radius_gives_the_exact_margin() {
    let net = common::random_network(3, &[4, 7, 6, 3], Activation::Relu);
    let x = vec![0.2, 0.4, 0.6, 0.8];
    let label = net.predict(&x).unwrap();
    let set = InputSet::new(x.clone(), 0.0, Norm::Linf, None).unwrap();
    let targets: Vec<usize> = (0..3).filter(|&c| c != label).collect();
    for method in [Propagation::Ibp, Propagation::FastLin, Propagation::Crown] {
        let pre = bounds::pre_activation_bounds(&net, &set, method).unwrap();
        let lbs = bounds::margin_lower_bounds(&net, &set, &pre, method, label, &targets).unwrap();
        for (ti, &t) in targets.iter().enumerate() {
            let m = net.margin(&x, label, t).unwrap();
            assert!((lbs[ti] - m).abs() < 1e-12, "{method:?}: {} vs {m}", lbs[ti]);
        }
    }
}

/// y0 = relu(x + 2^52) - 2^52 and y1 = `y1`: y0 is x in real arithmetic, but the float evaluation
/// rounds x + 2^52 to an integer (the networks of the two tests below).
fn rounding_trap(y1: f64) -> Network {
    let big = 2f64.powi(52);
    let hidden = nncert::Layer::from_rows(&[vec![1.0]], vec![big], Activation::Relu).unwrap();
    let out = nncert::Layer::from_rows(&[vec![1.0], vec![0.0]], vec![-big, y1], Activation::Identity).unwrap();
    Network::new(vec![1], vec![hidden, out]).unwrap()
}

/// A Jia-Rinard-style network (Jia & Rinard, SAS 2021): the hidden neuron relu(x + 2^52) is
/// 2^52 + 0.6 in real arithmetic at x = 0.6 but rounds to 2^52 + 1, so the float evaluation of
/// y0 = h - 2^52 gives 1 where the real network gives 0.6. With y1 = 0.8, the real margin
/// y0 - y1 is x - 0.8 < 0 on the whole set (the label loses), while every float evaluation near
/// x = 0.6 says +0.2. A bound that ignores rounding proves the margin positive; every method's
/// bound must stay below the real minimum -0.2 + eps, and no verdict may be "robust".
#[test]
fn rounding_cannot_make_a_losing_margin_look_robust() {
    let net = rounding_trap(0.8);
    // The float forward pass is fooled: margin +0.2 instead of the real -0.2.
    assert!(net.margin(&[0.6], 0, 1).unwrap() > 0.19);
    for (norm, domain) in
        [(Norm::Linf, None), (Norm::L2, None), (Norm::L2, Some(Domain::uniform(1, 0.0, 1.0).unwrap()))]
    {
        let set = InputSet::new(vec![0.6], 1e-3, norm, domain).unwrap();
        for name in ["ibp", "fastlin", "crown", "alpha-crown", "lp", "lp-full", "bm", "bm-full", "bab"] {
            // Branch and bound cannot decide it (the float forward pass rejects the real
            // counterexample): it answers unknown at its timeout.
            let v: Box<dyn nncert::verify::Verifier> = if name == "bab" {
                Box::new(nncert::verify::bab::Bab { timeout: 1.0, ..Default::default() })
            } else {
                nncert::verify::by_name(name).unwrap()
            };
            let t0 = std::time::Instant::now();
            let r = v.lower_bounds(&net, &set, 0, &[1]).unwrap();
            let b = r.bounds[0].1;
            assert!(b <= -0.199, "{name} {norm:?}: bound {b} above the real margin's minimum -0.201");
            let report = nncert::certify::certify(&net, &set, 0, Some(v.as_ref()), &Default::default()).unwrap();
            assert_ne!(report.verdict, nncert::Verdict::Robust, "{name} {norm:?}");
            eprintln!("{name} {norm:?}: bound {b:.3}, {:?}, {:.2} s", report.verdict, t0.elapsed().as_secs_f64());
        }
    }
}

/// The mirror case: relu(x + 2^52) at x = 0.4 evaluates to 2^52 (real 2^52 + 0.4), so with
/// y0 = h - 2^52 and y1 = 0.2 the float margin is -0.2 where the real margin x - 0.2 is +0.2 on
/// the whole set: the real network is robust, and a counterexample that trusts the float forward
/// pass would be wrong. Counterexamples are reported only beyond the forward pass's rounding
/// bound (`Network::surely_loses`, `OutputConstraint::surely_holds`), so none is.
#[test]
fn rounding_cannot_make_a_robust_margin_look_broken() {
    let net = rounding_trap(0.2);
    assert!(net.margin(&[0.4], 0, 1).unwrap() < -0.19, "the float forward pass is fooled");
    assert!(!net.surely_loses(&[0.4], 0, 1).unwrap());
    let set = InputSet::new(vec![0.4], 1e-3, Norm::Linf, None).unwrap();
    let bab = nncert::verify::bab::Bab { timeout: 1.0, ..Default::default() };
    for v in [&nncert::verify::Crown as &dyn nncert::verify::Verifier, &bab] {
        let report = nncert::certify::certify(&net, &set, 0, Some(v), &Default::default()).unwrap();
        assert_ne!(report.verdict, nncert::Verdict::NotRobust, "{}: {report:?}", v.name());
        assert!(report.counterexample.is_none());
    }
    // The same as a VNN-LIB property (y0 - y1 <= 0 is the violation): never `sat`.
    let text = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n(declare-const Y_1 Real)\n\
                (assert (>= X_0 0.399))\n(assert (<= X_0 0.401))\n(assert (<= Y_0 Y_1))\n";
    let prop = nncert::io::vnnlib_from_str(text).unwrap();
    let r = nncert::verify::bab::check_property_bab(&net, &prop, None, &bab).unwrap();
    assert!(!matches!(r.result, nncert::verify::property::PropertyResult::Sat { .. }), "{:?}", r.result);
    let r = nncert::verify::property::check_property(
        &net,
        &prop,
        None,
        nncert::verify::property::PropertyMethod::Crown,
        100,
    )
    .unwrap();
    assert!(!matches!(r, nncert::verify::property::PropertyResult::Sat { .. }), "{r:?}");
}
