//! Ground truth on tiny ReLU networks: the exact phi by branch and bound, and the chain
//! CROWN <= LP-Last <= LP-Full <= exact <= PGD, IBP <= exact, exact <= the margin at every sampled
//! point, on a fixed corpus of 200 seeded networks (2-3 layers, at most 12 hidden neurons), for l2
//! and l_inf balls with and without the [0,1] box.

mod common;

use nncert::attack::{PgdSettings, pgd};
use nncert::bounds::lp::LpSettings;
use nncert::bounds::{self, Propagation};
use nncert::verify::Verifier;
use nncert::verify::exact::Exact;
use nncert::verify::lp::{Lp, lp_full_bounds, margin_lp_bounds};
use nncert::{Activation, Domain, Error, InputSet, Network, Norm};
use rand::SeedableRng;
use rand::rngs::StdRng;

fn tol(v: f64) -> f64 {
    1e-7 * (1.0 + v.abs())
}

struct Case {
    net: Network,
    set: InputSet,
    label: usize,
}

fn corpus() -> Vec<Case> {
    let mut out = Vec::new();
    for seed in 0..200u64 {
        let n_in = 2 + (seed as usize % 3);
        let sizes =
            if seed % 2 == 0 { vec![n_in, 6 + seed as usize % 7, 3] } else { vec![n_in, 6, 5 + seed as usize % 2, 3] };
        let net = common::random_network(1000 + seed, &sizes, Activation::Relu);
        let x: Vec<f64> = (0..n_in).map(|i| ((seed as usize * 5 + i * 7) % 13) as f64 / 13.0).collect();
        let label = net.predict(&x).unwrap();
        let norm = if seed % 4 < 2 { Norm::L2 } else { Norm::Linf };
        let eps = if norm == Norm::L2 { 0.15 + 0.05 * (seed % 5) as f64 } else { 0.05 + 0.03 * (seed % 5) as f64 };
        let domain = (seed % 3 != 0).then(|| Domain::uniform(n_in, 0.0, 1.0).unwrap());
        out.push(Case { net, set: InputSet::new(x, eps, norm, domain).unwrap(), label });
    }
    out
}

#[test]
fn the_bound_chain_holds_against_exact_phi() {
    // Tight solver tolerances: the chain compares optima, and at the default 1e-7 the dual bounds
    // sit up to ~1e-7 below them (still sound, but the ordering CROWN <= LP needs the optimum).
    let settings = LpSettings { tolerance: 1e-10, max_iter: 200, ..LpSettings::default() };
    let exact = Exact::default();
    let mut strict_lp_gain = 0;
    let mut checked = 0;
    for (ci, case) in corpus().iter().enumerate() {
        let Case { net, set, label } = case;
        let label = *label;
        let targets: Vec<usize> = (0..3).filter(|&c| c != label).collect();
        let crown_pre = bounds::pre_activation_bounds(net, set, Propagation::Crown).unwrap();
        let crown = bounds::margin_lower_bounds(net, set, &crown_pre, Propagation::Crown, label, &targets).unwrap();
        let ibp_pre = bounds::pre_activation_bounds(net, set, Propagation::Ibp).unwrap();
        let ibp = bounds::margin_lower_bounds(net, set, &ibp_pre, Propagation::Ibp, label, &targets).unwrap();
        let (lp_last, _) = margin_lp_bounds(net, set, &crown_pre, label, &targets, &settings);
        let (full_pre, _) = lp_full_bounds(net, set, &settings).unwrap();
        let (lp_full, _) = margin_lp_bounds(net, set, &full_pre, label, &targets, &settings);
        let attack = pgd(net, set, label, &targets, &PgdSettings::default()).unwrap();
        let mut rng = StdRng::seed_from_u64(ci as u64);
        let samples: Vec<Vec<f64>> = (0..200).map(|_| set.sample(&mut rng)).collect();
        for (ti, &t) in targets.iter().enumerate() {
            let e = exact.phi(net, set, label, t).unwrap();
            assert!(e.complete, "case {ci}: search did not finish");
            assert!(e.upper - e.lower <= 1e-6 * (1.0 + e.upper.abs()), "case {ci}: gap {} {}", e.lower, e.upper);
            assert!(set.contains(&e.minimizer, 0.0), "case {ci}: minimizer outside X");
            assert_eq!(net.margin(&e.minimizer, label, t).unwrap(), e.upper);
            let phi = e.upper;
            assert!(crown[ti] <= lp_last[ti] + tol(lp_last[ti]), "case {ci}: CROWN {} > LP {}", crown[ti], lp_last[ti]);
            assert!(
                lp_last[ti] <= lp_full[ti] + tol(lp_full[ti]),
                "case {ci}: LP {} > LP-Full {}",
                lp_last[ti],
                lp_full[ti]
            );
            assert!(lp_full[ti] <= phi + tol(phi), "case {ci}: LP-Full {} > exact {phi}", lp_full[ti]);
            assert!(ibp[ti] <= phi + tol(phi), "case {ci}: IBP {} > exact {phi}", ibp[ti]);
            assert!(phi <= attack[ti].margin + tol(phi), "case {ci}: exact {phi} > PGD {}", attack[ti].margin);
            for s in &samples {
                let m = net.margin(s, label, t).unwrap();
                assert!(phi <= m + tol(m), "case {ci}: exact {phi} > sampled margin {m}");
            }
            if lp_last[ti] > crown[ti] + 1e-6 {
                strict_lp_gain += 1;
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 400);
    // The relations are not vacuous: the LP is strictly tighter than CROWN on many targets.
    assert!(strict_lp_gain > 40, "LP tighter than CROWN on only {strict_lp_gain} targets");
}

#[test]
fn lp_verifiers_report_solver_failures_as_weaker_bounds() {
    let net = common::random_network(77, &[3, 8, 8, 3], Activation::Relu);
    let x = vec![0.4, 0.5, 0.6];
    let label = net.predict(&x).unwrap();
    let set = InputSet::new(x, 0.2, Norm::Linf, Some(Domain::uniform(3, 0.0, 1.0).unwrap())).unwrap();
    let targets: Vec<usize> = (0..3).filter(|&c| c != label).collect();
    let good = Lp::default().lower_bounds(&net, &set, label, &targets).unwrap();
    let starved = Lp { settings: LpSettings { max_iter: 1, ..Default::default() } };
    let weak = starved.lower_bounds(&net, &set, label, &targets).unwrap();
    let stats = weak.stats.lp.as_ref().unwrap();
    assert_eq!(stats.not_solved, targets.len(), "{stats:?}");
    assert_eq!(stats.last_failure.as_deref(), Some("MaxIterations"));
    for (i, &t) in targets.iter().enumerate() {
        let e = Exact::default().phi(&net, &set, label, t).unwrap();
        assert!(weak.bounds[i].1 <= good.bounds[i].1 + 1e-9);
        assert!(weak.bounds[i].1 <= e.lower + 1e-9);
        assert!(weak.bounds[i].1.is_finite());
    }
    assert_eq!(good.stats.lp.as_ref().unwrap().not_solved, 0);
}

#[test]
fn exact_refuses_large_or_smooth_networks() {
    let big = common::random_network(5, &[4, 40, 40, 3], Activation::Relu);
    let x = vec![0.5; 4];
    let label = big.predict(&x).unwrap();
    let set = InputSet::new(x.clone(), 0.5, Norm::Linf, None).unwrap();
    assert!(matches!(
        Exact::default().phi(&big, &set, label, (label + 1) % 3),
        Err(Error::TooManyUnstable { limit: 20, .. })
    ));
    let smooth = common::random_network(5, &[4, 5, 3], Activation::Tanh);
    assert!(matches!(Exact::default().phi(&smooth, &set, 0, 1), Err(Error::Unsupported(_))));
}

mod random {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 32, .. ProptestConfig::default() })]

        /// The same chain on proptest-generated networks and inputs.
        #[test]
        fn chain_on_random_networks(
            seed in 0u64..1_000_000,
            n_in in 1usize..5,
            hidden in proptest::collection::vec(2usize..6, 1..3),
            eps in 0.01f64..0.4,
            l2 in any::<bool>(),
            with_box in any::<bool>(),
            center in proptest::collection::vec(0.0f64..1.0, 5),
        ) {
            let mut sizes = vec![n_in];
            sizes.extend(&hidden);
            sizes.push(3);
            let net = common::random_network(seed, &sizes, Activation::Relu);
            let x = center[..n_in].to_vec();
            let label = net.predict(&x).unwrap();
            let norm = if l2 { Norm::L2 } else { Norm::Linf };
            let domain = with_box.then(|| Domain::uniform(n_in, 0.0, 1.0).unwrap());
            let set = InputSet::new(x, eps, norm, domain).unwrap();
            let settings = LpSettings { tolerance: 1e-10, max_iter: 200, ..LpSettings::default() };
            let targets: Vec<usize> = (0..3).filter(|&c| c != label).collect();
            let crown_pre = bounds::pre_activation_bounds(&net, &set, Propagation::Crown).unwrap();
            let crown = bounds::margin_lower_bounds(&net, &set, &crown_pre, Propagation::Crown, label, &targets).unwrap();
            let (lp, _) = margin_lp_bounds(&net, &set, &crown_pre, label, &targets, &settings);
            let (full_pre, _) = lp_full_bounds(&net, &set, &settings).unwrap();
            let (full, _) = margin_lp_bounds(&net, &set, &full_pre, label, &targets, &settings);
            for (ti, &t) in targets.iter().enumerate() {
                let e = Exact::default().phi(&net, &set, label, t).unwrap();
                prop_assert!(crown[ti] <= lp[ti] + tol(lp[ti]));
                prop_assert!(lp[ti] <= full[ti] + tol(full[ti]));
                prop_assert!(full[ti] <= e.upper + tol(e.upper));
                prop_assert!(e.lower <= e.upper);
            }
        }
    }
}
