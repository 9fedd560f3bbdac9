//! BM-r: sound against the exact phi, close to the convex SDP where it converges, and robust to
//! sabotage (a truncated solver only weakens the bound).

mod common;

use nncert::attack::{PgdSettings, pgd};
use nncert::verify::bm::Bm;
use nncert::verify::exact::Exact;
use nncert::verify::sdp::{BoundSource, Relaxation};
use nncert::{InputSet, Network};

fn cases() -> Vec<(Network, InputSet, usize)> {
    common::small_relu_cases(24)
}

#[test]
fn bm_is_sound_and_tight_on_small_networks() {
    let bm =
        Bm { feasibility: 1e-9, outer: 60, max_iterations: 60 * 200 * 7, stop_when_positive: false, ..Bm::default() };
    let mut gaps = Vec::new();
    for (ci, (net, set, label)) in cases().iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let attack = pgd(net, set, *label, &[target], &PgdSettings::default()).unwrap();
        let r = bm.solve_target(net, set, &rel, *label, target).unwrap();
        let cert = r.certificate.expect("a proven bound");
        assert!(cert.bound <= exact.lower + 1e-9, "case {ci}: BM {} > exact {}", cert.bound, exact.lower);
        assert!(cert.bound <= attack[0].margin + 1e-9);
        assert!(cert.check(net, set).is_ok());
        eprintln!(
            "case {ci}: exact {:.5} BM {:.5} primal {:.5} infeas {:.1e} ranks {:?} iters {}",
            exact.upper, cert.bound, r.primal, r.infeasibility, r.rank_path, r.iterations
        );
        gaps.push(exact.upper - cert.bound);
    }
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    eprintln!("BM gap to exact: median {median:.2e}, max {:.2e}", gaps[gaps.len() - 1]);
    // Where the SDP relaxation is tight BM reaches it: the median gap to the exact phi is small.
    assert!(median < 1e-3, "BM median gap to exact {median}");
}

#[test]
fn sabotaged_bm_stays_sound() {
    let truncated = Bm {
        outer: 1,
        inner: 2,
        max_rank: 2,
        max_iterations: 2,
        tight_iterations: 0,
        stop_when_positive: false,
        ..Bm::default()
    };
    for (ci, (net, set, label)) in cases().iter().enumerate().take(10) {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let r = truncated.solve_target(net, set, &rel, *label, target).unwrap();
        if let Some(c) = r.certificate {
            assert!(c.bound <= exact.lower + 1e-9, "case {ci}: truncated BM {} > exact {}", c.bound, exact.lower);
            // Perturbed multipliers: the checker proves whatever they give, never more than phi.
            let mut m = c.multipliers.clone();
            m.relu.iter_mut().flatten().for_each(|v| *v *= 1.7);
            m.above.iter_mut().flatten().for_each(|v| *v += 0.3);
            if let Some((c2, _)) =
                nncert::verify::sdp::bound_from_multipliers(net, set, &rel, *label, target, &m).unwrap()
            {
                assert!(c2.bound <= exact.lower + 1e-9);
            }
        }
    }
}

/// The iteration budget ends a target (not the clock): 150 L-BFGS iterations in all (with the
/// extension for targets short of their optimum, `tight_iterations`, turned off), whatever the
/// ranks and outer iterations would allow, and the bound is still <= the exact phi.
#[test]
fn the_iteration_budget_bounds_the_work_and_stays_sound() {
    let budget =
        Bm { max_iterations: 150, tight_iterations: 0, time_limit: 1e3, stop_when_positive: false, ..Bm::default() };
    for (ci, (net, set, label)) in cases().iter().enumerate().take(8) {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let r = budget.solve_target(net, set, &rel, *label, target).unwrap();
        assert!(r.iterations <= 150, "case {ci}: {} iterations", r.iterations);
        if let Some(c) = &r.certificate {
            assert!(c.bound <= exact.lower + 1e-9, "case {ci}: budgeted BM {} > exact {}", c.bound, exact.lower);
        }
        // The same settings give the same bound twice: nothing depends on the clock.
        let again = budget.solve_target(net, set, &rel, *label, target).unwrap();
        assert_eq!(r.certificate.map(|c| c.bound), again.certificate.map(|c| c.bound), "case {ci}");
        assert_eq!(r.iterations, again.iterations, "case {ci}");
    }
}

/// A budget beyond what the ranks allow is spent at the largest rank, in further rounds of outer
/// iterations: never more than the budget, still sound.
#[test]
fn a_larger_budget_continues_at_the_largest_rank() {
    let one_round = Bm {
        rank: 3,
        max_rank: 3,
        outer: 1,
        inner: 5,
        max_iterations: 5,
        tight_iterations: 0,
        stop_when_positive: false,
        ..Bm::default()
    };
    let longer = Bm { max_iterations: 60, ..one_round.clone() };
    let mut continued = 0;
    for (ci, (net, set, label)) in cases().iter().enumerate().take(8) {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let short = one_round.solve_target(net, set, &rel, *label, target).unwrap();
        let r = longer.solve_target(net, set, &rel, *label, target).unwrap();
        assert!(short.iterations <= 5 && r.iterations <= 60, "case {ci}: {} / {}", short.iterations, r.iterations);
        assert_eq!(r.rank_path, vec![3], "case {ci}");
        if r.iterations > short.iterations {
            continued += 1;
        }
        if let Some(c) = &r.certificate {
            assert!(c.bound <= exact.lower + 1e-9, "case {ci}: BM {} > exact {}", c.bound, exact.lower);
        }
    }
    assert!(continued > 0, "no case used more than one round of 5 iterations");
}

/// Verdict mode (stop at the first positive bound, hardest target first, CROWN for the rest
/// after a failure) reaches the same verdict as computing every target's tightest bound, and each
/// of its bounds is still <= the exact phi.
#[test]
fn verdict_mode_matches_the_full_computation() {
    use nncert::Verifier;
    let verdict = Bm::default();
    let full = Bm { stop_when_positive: false, ..Bm::default() };
    let mut robust = 0;
    for (ci, (net, set, label)) in cases().iter().enumerate().take(12) {
        let targets: Vec<usize> = (0..net.num_classes()).filter(|c| c != label).collect();
        let a = verdict.lower_bounds(net, set, *label, &targets).unwrap();
        let b = full.lower_bounds(net, set, *label, &targets).unwrap();
        let ok_a = a.bounds.iter().all(|(_, v)| *v > 0.0);
        let ok_b = b.bounds.iter().all(|(_, v)| *v > 0.0);
        assert_eq!(ok_a, ok_b, "case {ci}: verdict mode {:?} vs full {:?}", a.bounds, b.bounds);
        robust += ok_b as usize;
        for (t, v) in &a.bounds {
            let exact = Exact::default().phi(net, set, *label, *t).unwrap();
            assert!(*v <= exact.lower + 1e-9, "case {ci} target {t}: {v} > exact {}", exact.lower);
        }
    }
    eprintln!("{robust} of 12 robust");
    assert!(robust > 0 && robust < 12, "the cases should mix verdicts ({robust} robust)");
}

/// On the paper's adv-mnist-mlp-2x100 (../shared/data; skipped when absent), image 1, target 0,
/// l2 1.0 with the box: BM-r's proven bound is far above CROWN's and LP-Full's (both below 2),
/// within 10% of its own primal value, and below PGD's margin. The wall-clock cap is lifted so the
/// iteration budget alone decides (a loaded test machine would otherwise get a looser bound), and
/// the tight-mode extension (`Bm::tight_iterations`) is off: the statement is about 8400 iterations.
#[test]
#[ignore = "MNIST-scale: run by .ci/run with --ignored"]
fn bm_is_tight_on_an_mnist_network() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    let net = nncert::io::load_model(dir.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let (x, label, target) = (&images[1], labels[1], 0);
    let set =
        InputSet::new(x.clone(), 1.0, nncert::Norm::L2, Some(nncert::Domain::uniform(784, 0.0, 1.0).unwrap())).unwrap();
    let rel = Relaxation::new(&net, &set, BoundSource::CrownIbp).unwrap();
    let bm = Bm { stop_when_positive: false, time_limit: 1e3, tight_iterations: 0, ..Bm::default() };
    let r = bm.solve_target(&net, &set, &rel, label, target).unwrap();
    let cert = r.certificate.expect("a proven bound");
    assert!(cert.check(&net, &set).is_ok());
    let attack = pgd(&net, &set, label, &[target], &PgdSettings::default()).unwrap();
    let lp_full = nncert::verify::lp::LpFull::default();
    let lp = nncert::Verifier::lower_bounds(&lp_full, &net, &set, label, &[target]).unwrap().bounds[0].1;
    eprintln!(
        "BM {:.4} (primal {:.4}, ranks {:?}, KKT residual {:.1e}, complementarity {:.1e}, infeasibility {:.1e}) \
         LP-Full {lp:.4} PGD {:.4}",
        cert.bound, r.primal, r.rank_path, r.kkt_residual, r.complementarity, r.infeasibility, attack[0].margin
    );
    // The solver's own accuracy, reported as the issue asks: first-order conditions hold to ~1e-3.
    assert!(r.kkt_residual < 1e-2 && r.complementarity < 1e-2 && r.infeasibility < 1e-2);
    assert!(cert.bound <= attack[0].margin);
    assert!(cert.bound > lp + 1.0, "BM {} vs LP-Full {lp}", cert.bound);
    assert!(cert.bound > 0.9 * r.primal, "BM {} vs its primal {}", cert.bound, r.primal);
}

/// The input constraints' scaling (default: 0.5 for l_inf, off for l2) changes how fast the
/// multipliers converge, never whether the bound holds: any exponent in [0, 2] stays <= the exact
/// phi; others are an error.
#[test]
fn input_scaling_is_sound_for_any_exponent_and_checked() {
    for (ci, (net, set, label)) in cases().iter().enumerate().take(8) {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        for p in [0.0, 1.0, 2.0] {
            let bm = Bm {
                input_scaling: Some(p),
                max_iterations: 1000,
                tight_iterations: 0,
                stop_when_positive: false,
                ..Bm::default()
            };
            let cert = bm.solve_target(net, set, &rel, *label, target).unwrap().certificate.expect("a bound");
            assert!(cert.bound <= exact.lower + 1e-9, "case {ci}, p {p}: BM {} > exact {}", cert.bound, exact.lower);
            assert!(cert.check(net, set).is_ok());
        }
        for p in [-0.1, 2.5, f64::NAN, f64::INFINITY] {
            let bm = Bm { input_scaling: Some(p), ..Bm::default() };
            assert!(bm.solve_target(net, set, &rel, *label, target).is_err(), "p {p} accepted");
        }
    }
}

/// On nor-mnist-mlp-2x100 at l_inf 0.03 (image 0, target 3, the hardest by CROWN), the default
/// budget proves the target with the input constraints scaled and not without: one penalty for
/// an l_inf box of half-width 0.03 and for ReLU equalities of order 100 leaves the box loose
/// (8400 iterations: the tight-mode extension off).
#[test]
#[ignore = "MNIST-scale: run by .ci/run with --ignored"]
fn input_scaling_proves_a_hard_l_inf_target() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    let net = nncert::io::load_model(dir.join("models/nor-mnist-mlp-2x100.json")).unwrap();
    let (label, target) = (labels[0], 3);
    let set = InputSet::new(
        images[0].clone(),
        0.03,
        nncert::Norm::Linf,
        Some(nncert::Domain::uniform(784, 0.0, 1.0).unwrap()),
    )
    .unwrap();
    let rel = Relaxation::new(&net, &set, BoundSource::CrownIbp).unwrap();
    let bound = |p: f64| {
        let bm = Bm {
            input_scaling: Some(p),
            stop_when_positive: false,
            time_limit: 1e3,
            tight_iterations: 0,
            ..Bm::default()
        };
        let cert = bm.solve_target(&net, &set, &rel, label, target).unwrap().certificate.expect("a bound");
        assert!(cert.check(&net, &set).is_ok());
        cert.bound
    };
    let (scaled, plain) = (bound(0.5), bound(0.0));
    let attack = pgd(&net, &set, label, &[target], &PgdSettings::default()).unwrap();
    eprintln!("scaled {scaled:.4} plain {plain:.4} PGD {:.4}", attack[0].margin);
    assert!(scaled <= attack[0].margin);
    assert!(scaled > 0.0, "scaled {scaled}");
    assert!(scaled > plain + 1.0, "scaled {scaled} vs plain {plain}");
}

#[test]
fn shared_lp_full_bounds_give_the_same_answers() {
    use nncert::Verifier;
    use nncert::bounds::lp::LpSettings;
    use nncert::verify::lp::{LpFull, lp_full_bounds};
    let bm_full = Bm { stop_when_positive: false, time_limit: 1e3, ..Bm::full_lp() };
    for (ci, (net, set, label)) in cases().iter().enumerate().take(8) {
        let targets: Vec<usize> = (0..net.num_classes()).filter(|t| t != label).collect();
        let exact: Vec<f64> =
            targets.iter().map(|&t| Exact::default().phi(net, set, *label, t).unwrap().lower).collect();
        // LP-Full from bounds computed once equals LP-Full computing them itself.
        let (pre, _) = lp_full_bounds(net, set, &LpSettings::default()).unwrap();
        let alone = LpFull::default().lower_bounds(net, set, *label, &targets).unwrap();
        let shared = LpFull::default().lower_bounds_with(net, set, *label, &targets, &pre).unwrap();
        // BM-Full on a relaxation built from BoundSource::LpFull equals BM-Full building it.
        let rel = Relaxation::new(net, set, BoundSource::LpFull).unwrap();
        let bm_alone = bm_full.lower_bounds(net, set, *label, &targets).unwrap();
        let bm_shared = bm_full.lower_bounds_with(net, set, *label, &targets, rel).unwrap();
        // Bounds of another shape are an error, not a panic.
        let mut short = pre.clone();
        short.layers.pop();
        assert!(LpFull::default().lower_bounds_with(net, set, *label, &targets, &short).is_err());
        assert!(Relaxation::from_bounds(net, set, BoundSource::LpFull, short).is_err());
        for (k, e) in exact.iter().enumerate() {
            let (a, b) = (alone.bounds[k].1, shared.bounds[k].1);
            assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "case {ci}: LP-Full {a} vs shared {b}");
            let (a, b) = (bm_alone.bounds[k].1, bm_shared.bounds[k].1);
            assert!((a - b).abs() <= 1e-9 * (1.0 + a.abs()), "case {ci}: BM-Full {a} vs shared {b}");
            assert!(a <= e + 1e-9 && alone.bounds[k].1 <= e + 1e-9, "case {ci}: above exact {e}");
        }
    }
}

#[test]
fn bm_neuron_bounds_contain_the_exact_range_and_can_beat_lp_full() {
    use nncert::bounds::lp::LpSettings;
    use nncert::verify::bm_bounds::{costly_neurons, neuron_bounds, tighten_last_hidden};
    let bm = Bm { stop_when_positive: false, max_iterations: 2400, tight_iterations: 0, ..Bm::full() };
    let (mut checked, mut tightened) = (0, 0);
    for (ci, (net, set, label)) in
        common::small_relu_cases(60).iter().enumerate().filter(|(_, c)| c.0.layers().len() >= 3)
    {
        let (pre, _) = nncert::verify::lp::lp_full_bounds(net, set, &LpSettings::default()).unwrap();
        let k = net.layers().len() - 2;
        let picks = costly_neurons(net, &pre, *label, 3);
        for &j in &picks {
            assert!(pre.layers[k].lower[j] < 0.0 && pre.layers[k].upper[j] > 0.0, "case {ci}: neuron {j} is stable");
            let (l, u) = neuron_bounds(net, set, &pre, k, j, &bm).unwrap();
            let min = Exact::default().phi(&common::neuron_as_margin(net, k, j, false), set, 0, 1).unwrap();
            let neg_max = Exact::default().phi(&common::neuron_as_margin(net, k, j, true), set, 0, 1).unwrap();
            assert!(l <= min.lower + 1e-9, "case {ci} neuron {j}: BM lower {l} > exact min {}", min.lower);
            assert!(u >= -neg_max.lower - 1e-9, "case {ci} neuron {j}: BM upper {u} < exact max {}", -neg_max.lower);
            checked += 1;
            if l > pre.layers[k].lower[j] + 1e-6 || u < pre.layers[k].upper[j] - 1e-6 {
                tightened += 1;
            }
        }
        // Tightening only ever intersects.
        let t = tighten_last_hidden(net, set, &pre, *label, 3, &bm).unwrap();
        for (a, b) in t.layers.iter().zip(&pre.layers) {
            assert!(
                a.lower.iter().zip(&b.lower).all(|(x, y)| x >= y) && a.upper.iter().zip(&b.upper).all(|(x, y)| x <= y)
            );
        }
        // And BM-Full on the tightened bounds stays below the exact phi.
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let rel = Relaxation::from_bounds(net, set, BoundSource::LpFull, t).unwrap();
        if let Some(c) = bm.solve_target(net, set, &rel, *label, target).unwrap().certificate {
            assert!(c.bound <= exact.lower + 1e-9, "case {ci}: tightened BM-Full {} > exact {}", c.bound, exact.lower);
        }
    }
    eprintln!("{checked} neuron bounds checked, {tightened} tighter than LP-Full");
    assert!(checked >= 15, "only {checked} unstable neurons checked");
    assert!(tightened >= 1, "BM never tightened an LP-Full bound");
}

#[test]
fn bm_neuron_bounds_reject_bad_input_without_panicking() {
    use nncert::bounds::lp::LpSettings;
    use nncert::verify::bm_bounds::{costly_neurons, neuron_bounds, tighten_last_hidden};
    let (net, set, label) = common::small_relu_cases(2).pop().unwrap();
    assert_eq!(net.layers().len(), 3);
    let (pre, _) = nncert::verify::lp::lp_full_bounds(&net, &set, &LpSettings::default()).unwrap();
    let bm = Bm { stop_when_positive: false, ..Bm::full() };
    // A label out of range: no neurons, and an error from the tightening.
    assert!(costly_neurons(&net, &pre, 3, 5).is_empty());
    assert!(tighten_last_hidden(&net, &set, &pre, 3, 5, &bm).is_err());
    // Bounds of another shape.
    let mut short = pre.clone();
    short.layers.pop();
    assert!(costly_neurons(&net, &short, label, 5).is_empty());
    assert!(tighten_last_hidden(&net, &set, &short, label, 5, &bm).is_err());
    // Not a hidden neuron after the first layer.
    assert!(neuron_bounds(&net, &set, &pre, 0, 0, &bm).is_err());
    assert!(neuron_bounds(&net, &set, &pre, 1, 99, &bm).is_err());
    assert!(neuron_bounds(&net, &set, &pre, 2, 0, &bm).is_err());
}

/// Near-miss restarts (`Bm::restarts`, verdict mode): adv-mnist-mlp-2x100, l2 1.0 with the box,
/// image 20, target 7 (PGD's margin 0.19), a target on the edge: BM-Full from seed 0 alone ended
/// just below zero until session 16 (another start proved it), and proves it (+0.002) since the
/// bounds are rounded outwards (session 17) - a trajectory that tiny changes flip. Whichever way
/// seed 0 ends, the restarts run exactly when it is a near miss the relaxation may still prove,
/// never lower the bound, and the target ends proven. The wall-clock cap is lifted so that the
/// iteration budget decides. Skipped without ../shared/data.
#[test]
#[ignore = "MNIST-scale: run by .ci/run with --ignored"]
fn near_miss_restarts_prove_a_target_one_start_misses() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    let net = nncert::io::load_model(dir.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let (x, label, target) = (&images[20], labels[20], 7);
    let set =
        InputSet::new(x.clone(), 1.0, nncert::Norm::L2, Some(nncert::Domain::uniform(784, 0.0, 1.0).unwrap())).unwrap();
    let rel = Relaxation::new(&net, &set, BoundSource::Optimized).unwrap();
    let once = Bm { restarts: 0, near_miss_iterations: 0, time_limit: 1e3, ..Bm::full() };
    let r0 = once.solve_target(&net, &set, &rel, label, target).unwrap();
    let b0 = r0.certificate.as_ref().expect("a proven bound").bound;
    assert_eq!(r0.solves, 1);
    let near = b0 <= 0.0
        && b0 >= -0.25 * r0.attack_margin
        && !r0.at_optimum
        && (r0.primal + 2.0 * r0.primal_shift > 0.0 || r0.infeasibility > 1e-3);
    let r = Bm { restarts: 2, ..once }.solve_target(&net, &set, &rel, label, target).unwrap();
    let cert = r.certificate.expect("a proven bound");
    eprintln!("seed 0: {b0:.4} (near miss: {near}); with restarts: {:.4} after {} solves", cert.bound, r.solves);
    assert_eq!(r.solves >= 2, near, "{} solves after seed 0's {b0}", r.solves);
    assert!(cert.bound >= b0 && cert.bound > 0.0, "{} after {} solves", cert.bound, r.solves);
    assert!(cert.bound <= r.attack_margin);
    assert!(cert.check(&net, &set).is_ok());
}

/// Restarts only ever keep a better proven bound, and run only after a near miss that the
/// relaxation may still prove (a positive primal value or a point not yet nearly feasible).
#[test]
fn restarts_never_lower_the_bound() {
    // A small budget and no polish leave bounds short of the optimum, some of them near misses.
    let mut restarted = 0;
    for (ci, (net, set, label)) in cases().iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let short =
            Bm { max_iterations: 20, near_miss_iterations: 0, polish: 0, rank: 2, restarts: 0, ..Bm::default() };
        let a = short.solve_target(net, set, &rel, *label, target).unwrap();
        let b = Bm { restarts: 3, ..short }.solve_target(net, set, &rel, *label, target).unwrap();
        let (x, y) = (a.certificate.map(|c| c.bound), b.certificate.map(|c| c.bound));
        assert!(y >= x, "case {ci}: {y:?} < {x:?}");
        let near = x.is_some_and(|v| v <= 0.0 && v >= -0.25 * a.attack_margin && a.attack_margin > 0.0)
            && (a.primal + 2.0 * a.primal_shift > 0.0 || a.infeasibility > 1e-3);
        assert_eq!(b.solves > 1, near, "case {ci}: {} solves after {x:?} (PGD {})", b.solves, a.attack_margin);
        restarted += usize::from(near);
    }
    eprintln!("{restarted} of {} targets restarted", cases().len());
    assert!(restarted >= 1, "no near miss: the test checks nothing");
}

/// The near-miss budget (`Bm::near_miss_iterations`) on adv-mnist-mlp-2x100 at l_inf 0.1 with the
/// box: image 405, target 9 (PGD's margin 0.196) is not proven in 8400 iterations and is proven
/// when its positive primal value earns it up to 25200; image 87, target 5 (exact phi 0.118, BM's
/// primal value below zero: the relaxation is short) stops at 8400. Skipped without
/// ../shared/data.
#[test]
#[ignore = "MNIST-scale: run by .ci/run with --ignored"]
fn the_near_miss_budget_goes_to_targets_with_a_positive_primal_value() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    let net = nncert::io::load_model(dir.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let box01 = Some(nncert::Domain::uniform(784, 0.0, 1.0).unwrap());
    let base = Bm { restarts: 0, time_limit: 1e3, ..Bm::full() };
    let (x, label) = (&images[405], labels[405]);
    let set = InputSet::new(x.clone(), 0.1, nncert::Norm::Linf, box01.clone()).unwrap();
    let rel = Relaxation::new(&net, &set, BoundSource::Optimized).unwrap();
    let plain = Bm { near_miss_iterations: 0, ..base.clone() }.solve_target(&net, &set, &rel, label, 9).unwrap();
    let more = base.solve_target(&net, &set, &rel, label, 9).unwrap();
    let b0 = plain.certificate.map_or(f64::NEG_INFINITY, |c| c.bound);
    let cert = more.certificate.expect("a proven bound");
    eprintln!(
        "image 405: {b0:.4} (primal {:.4}) in {} iterations, {:.4} (primal {:.4}) in {}",
        plain.primal, plain.iterations, cert.bound, more.primal, more.iterations
    );
    assert!(b0 <= 0.0 && plain.primal > 0.0 && plain.iterations == 8400);
    assert!(cert.bound > 0.0 && cert.bound <= more.attack_margin && more.iterations > 8400);
    assert!(more.iterations <= 25200);
    assert!(cert.check(&net, &set).is_ok());
    let (x, label) = (&images[87], labels[87]);
    let set = InputSet::new(x.clone(), 0.1, nncert::Norm::Linf, box01).unwrap();
    let rel = Relaxation::new(&net, &set, BoundSource::Optimized).unwrap();
    let r = base.solve_target(&net, &set, &rel, label, 5).unwrap();
    eprintln!(
        "image 87: {:?} (primal {:.4}, infeasibility {:.1e}) in {}",
        r.certificate.map(|c| c.bound),
        r.primal,
        r.infeasibility,
        r.iterations
    );
    // No extended budget for it: it stops at the iteration budget or earlier, once its primal
    // value (plus twice the first-order shift) says the relaxation cannot prove it (6000 since
    // the outward-rounded bounds of session 17, 8400 before).
    assert!(r.primal < 0.0 && r.infeasibility <= 1e-3 && r.iterations <= 8400);
}

/// The input-box products (`Bm::products`, RLT cuts of the input box with the first hidden
/// layer's unstable neurons) keep BM sound (below the exact phi, certificates that check) on all
/// 40 small networks, and on the l_inf ones close part of the plain SDP's gap (measured: case 1
/// 0.63777 -> 0.64006 of exact 0.64057; summed l_inf gap 0.0340 -> 0.0308; 39 of the 40 cases put
/// weight on them). On the l2 ones the plain relaxation is already near exact and the larger
/// problem can end a little looser.
#[test]
fn input_products_are_sound_and_tighten_l_inf_relaxations() {
    let plain =
        Bm { feasibility: 1e-9, outer: 60, max_iterations: 60 * 200 * 7, stop_when_positive: false, ..Bm::default() };
    let with = Bm { products: true, ..plain.clone() };
    let (mut closed, mut gap_plain, mut gap_with, mut used) = (0, 0.0, 0.0, 0);
    for (ci, (net, set, label)) in common::small_relu_cases(40).iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let r = with.solve_target(net, set, &rel, *label, target).unwrap();
        let b = r.certificate.expect("a bound");
        assert!(b.bound <= exact.lower + 1e-9, "case {ci}: BM with products {} > exact {}", b.bound, exact.lower);
        assert!(b.check(net, set).unwrap() >= b.bound, "case {ci}");
        assert!(!b.multipliers.products.is_empty(), "case {ci}");
        used += usize::from(b.multipliers.products.iter().any(|&y| y > 0.0));
        if set.norm() != nncert::Norm::Linf {
            continue;
        }
        let a = plain.solve_target(net, set, &rel, *label, target).unwrap().certificate.expect("a bound");
        eprintln!(
            "case {ci}: exact {:.5} plain {:.5} products {:.5} primal {:.5}",
            exact.upper, a.bound, b.bound, r.primal
        );
        // A gap of 1e-3 or more that the products close by 75% or more.
        if exact.upper - a.bound > 1e-3 && exact.upper - b.bound < 0.25 * (exact.upper - a.bound) {
            closed += 1;
        }
        gap_plain += exact.upper - a.bound;
        gap_with += exact.upper - b.bound;
    }
    eprintln!(
        "l_inf: {closed} gaps closed, summed gap to exact {gap_plain:.4} -> {gap_with:.4}; {used} cases use them"
    );
    assert!(used >= 10, "only {used} cases put weight on the products");
    assert!(closed >= 1, "the products closed no l_inf gap");
    assert!(gap_with < 0.95 * gap_plain, "summed l_inf gap {gap_plain} -> {gap_with}");
}

/// In verdict mode the products (`Bm::products`) are a second solve, only for a target whose
/// plain relaxation is short (not proven, PGD's margin > 0, a primal value <= 0 at a nearly
/// feasible point); it keeps the better bound. On the small networks (where the solves end
/// either proven or not nearly feasible, so no target gets it) nothing changes; on
/// adv-mnist-mlp-2x100 at l_inf 0.1, image 87, target 5 (exact phi 0.11814, session 10) the
/// products lift the primal value from below zero to above it
/// (`products_lift_a_relaxation_limited_mnist_target`).
#[test]
fn products_are_a_second_solve_for_relaxation_limited_targets() {
    let plain = Bm::default();
    let with = Bm { products: true, ..plain.clone() };
    for (ci, (net, set, label)) in common::small_relu_cases(12).iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        for target in (0..3).filter(|t| t != label) {
            let a = plain.solve_target(net, set, &rel, *label, target).unwrap();
            let b = with.solve_target(net, set, &rel, *label, target).unwrap();
            let (x, y) = (a.certificate.map(|c| c.bound), b.certificate.map(|c| c.bound));
            let short = !x.is_some_and(|v| v > 0.0)
                && a.attack_margin > 0.0
                && a.primal + 2.0 * a.primal_shift <= 0.0
                && a.infeasibility <= 1e-3;
            assert_eq!(b.solves, a.solves + usize::from(short), "case {ci} target {target}");
            assert_eq!(x, y, "case {ci} target {target}");
        }
    }
}

/// The products' second solve on adv-mnist-mlp-2x100 at l_inf 0.1, image 87, target 5 (exact phi
/// 0.11814, session 10): the plain relaxation's primal value is below zero, the products lift it
/// above. Skipped without ../shared/data.
#[test]
#[ignore = "MNIST-scale: run by .ci/run with --ignored"]
fn products_lift_a_relaxation_limited_mnist_target() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    let net = nncert::io::load_model(dir.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let (x, label, target) = (&images[87], labels[87], 5);
    let box01 = Some(nncert::Domain::uniform(784, 0.0, 1.0).unwrap());
    let set = InputSet::new(x.clone(), 0.1, nncert::Norm::Linf, box01).unwrap();
    let rel = Relaxation::new(&net, &set, BoundSource::Optimized).unwrap();
    // The second solve's budget kept at 8400 iterations: a test, not a proof (67200 prove it).
    let full = Bm { near_miss_iterations: 0, time_limit: 1e3, ..Bm::full() };
    let a = full.solve_target(&net, &set, &rel, label, target).unwrap();
    let b = Bm { products: true, ..full.clone() }.solve_target(&net, &set, &rel, label, target).unwrap();
    let (x, cert) = (a.certificate.expect("a bound").bound, b.certificate.expect("a bound"));
    assert!(
        a.primal < 0.0 && b.solves == a.solves + 1,
        "primal {} (shift {}, infeasibility {:.1e}), {} solves",
        a.primal,
        a.primal_shift,
        a.infeasibility,
        b.solves
    );
    assert!(cert.bound >= x && cert.bound <= 0.11814);
    assert!(cert.check(&net, &set).is_ok());
    // The products' solve itself (tight mode has them from the start): the primal value lifted.
    let c = Bm { products: true, stop_when_positive: false, tight_iterations: 0, ..full }
        .solve_target(&net, &set, &rel, label, target)
        .unwrap();
    let bound = c.certificate.expect("a bound").bound;
    eprintln!("image 87: plain {x:.4} (primal {:.4}); with the products {bound:.4} (primal {:.4})", a.primal, c.primal);
    assert!(c.primal > 0.05 && bound <= 0.11814, "primal {} bound {bound}", c.primal);
}

/// Default BM-r (tight mode) reports its certified gap and stops on it: the gap is the primal value
/// minus the proven bound; a target reported at the optimum is nearly feasible with a gap within
/// the tolerance, and some got there before the budget ran out; and the
/// bound stays <= the exact phi. Through the verifier, each target BM solved is in the report's
/// statistics, with a bound the report's (CROWN's at least) never falls below.
#[test]
fn bm_reports_its_certified_gap_and_stops_at_the_optimum() {
    use nncert::Verifier;
    let bm = Bm { stop_when_positive: false, ..Bm::default() };
    let (mut at_optimum, mut early) = (0, 0);
    let all = cases();
    for (ci, (net, set, label)) in all.iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let r = bm.solve_target(net, set, &rel, *label, target).unwrap();
        let bound = r.certificate.as_ref().expect("a proven bound").bound;
        assert!(bound <= exact.lower + 1e-9, "case {ci}: BM {bound} > exact {}", exact.lower);
        let gap = r.gap.expect("a gap with a proof");
        assert!((gap - (r.primal - bound)).abs() <= 1e-12 * (1.0 + r.primal.abs()), "case {ci}");
        if r.at_optimum {
            at_optimum += 1;
            assert!(gap.abs() <= bm.gap_tolerance * (1.0 + r.primal.abs()), "case {ci}: gap {gap}");
            assert!(r.infeasibility <= 1e-5, "case {ci}: infeasibility {}", r.infeasibility);
            // At the optimum, the exact phi is at least the bound, and the bound within the gap of
            // the relaxation's value.
            if r.iterations < bm.max_iterations {
                early += 1;
            }
        }
        if ci < 6 {
            let targets: Vec<usize> = (0..net.num_classes()).filter(|c| c != label).collect();
            let report = bm.lower_bounds(net, set, *label, &targets).unwrap();
            let stats = report.stats.bm.as_ref().expect("BM's statistics");
            assert!(!stats.is_empty() && stats.len() <= targets.len());
            for s in stats {
                let (_, b) = report.bounds.iter().find(|(t, _)| *t == s.target).unwrap();
                assert!(s.bound.is_none_or(|v| *b >= v), "case {ci}: report {b} below BM's {:?}", s.bound);
                assert_eq!(s.gap.is_some(), s.bound.is_some());
                assert!(s.iterations > 0 && !s.rank_path.is_empty());
            }
        }
    }
    eprintln!("{at_optimum} of {} at the optimum, {early} before the first budget", all.len());
    // 2 of 24 when the stop landed: most end when the slack matrix is PSD below the largest rank
    // or on the budget, short of the optimum (issue #22).
    assert!(at_optimum >= 1, "none of {} at the optimum", all.len());
    assert!(early > 0, "no target stopped on its gap before the budget");
}
