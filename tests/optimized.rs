//! Optimized slopes (`bounds::optimized`): every bound contains the exact range of its neuron,
//! never loosens CROWN's, and on networks with two hidden layers reaches LP-Full's bound.

mod common;

use nncert::bounds::lp::LpSettings;
use nncert::bounds::optimized::{SlopeSettings, optimized_bounds};
use nncert::bounds::{self, PreActivationBounds};
use nncert::verify::exact::Exact;
use nncert::verify::lp::lp_full_bounds;
use nncert::{Activation, Domain, Error, InputSet, Network, Norm};

/// Small ReLU problems with two or three hidden layers, l2 and l_inf, with and without the box.
fn cases() -> Vec<(Network, InputSet)> {
    (0..60u64)
        .map(|seed| {
            let n_in = 2 + seed as usize % 3;
            let sizes = if seed % 4 == 3 { vec![n_in, 5, 5, 4, 3] } else { vec![n_in, 6 + seed as usize % 3, 6, 3] };
            let net = common::random_network(3000 + seed, &sizes, Activation::Relu);
            let x: Vec<f64> = (0..n_in).map(|i| ((seed as usize * 7 + i * 3) % 11) as f64 / 11.0).collect();
            let (norm, eps) = if seed % 2 == 0 { (Norm::L2, 0.3) } else { (Norm::Linf, 0.12) };
            let domain = (seed % 3 != 0).then(|| Domain::uniform(n_in, 0.0, 1.0).unwrap());
            (net, InputSet::new(x, eps, norm, domain).unwrap())
        })
        .collect()
}

fn unstable(pre: &PreActivationBounds, k: usize) -> Vec<usize> {
    (0..pre.layers[k].len()).filter(|&j| pre.layers[k].lower[j] < 0.0 && pre.layers[k].upper[j] > 0.0).collect()
}

#[test]
fn optimized_bounds_contain_the_exact_range_and_never_loosen_crown() {
    let settings = SlopeSettings::default();
    let mut checked = 0;
    for (ci, (net, set)) in cases().iter().enumerate() {
        let crown = bounds::crown_and_ibp(net, set).unwrap();
        let opt = optimized_bounds(net, set, &settings).unwrap();
        // Zero steps: CROWN's own slopes, so CROWN's bounds (up to the summation order).
        let zero = optimized_bounds(net, set, &SlopeSettings { iterations: 0, ..settings }).unwrap();
        for (a, b) in zero.layers.iter().zip(&crown.layers) {
            for (x, y) in a.lower.iter().chain(&a.upper).zip(b.lower.iter().chain(&b.upper)) {
                assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "case {ci}: zero steps gave {x}, CROWN {y}");
            }
        }
        for k in 0..net.layers().len() - 1 {
            for j in 0..crown.layers[k].len() {
                let (a, b) = (&opt.layers[k], &crown.layers[k]);
                assert!(a.lower[j] >= b.lower[j] && a.upper[j] <= b.upper[j], "case {ci} layer {k}: looser than CROWN");
            }
            if k == 0 {
                continue;
            }
            // Ground truth: the exact min and max of each unstable neuron (exact verifier on the
            // truncated network whose margin is the neuron).
            for j in unstable(&crown, k) {
                let min = Exact::default().phi(&common::neuron_as_margin(net, k, j, false), set, 0, 1).unwrap();
                let neg_max = Exact::default().phi(&common::neuron_as_margin(net, k, j, true), set, 0, 1).unwrap();
                assert!(min.complete && neg_max.complete);
                let (l, u) = (opt.layers[k].lower[j], opt.layers[k].upper[j]);
                assert!(l <= min.lower + 1e-9, "case {ci} layer {k} neuron {j}: lower {l} > exact min {}", min.lower);
                assert!(u >= -neg_max.lower - 1e-9, "case {ci} layer {k} neuron {j}: upper {u} < exact max");
                checked += 1;
            }
        }
    }
    eprintln!("{checked} neuron bounds checked against the exact range");
    assert!(checked >= 90, "only {checked} neurons checked");
}

#[test]
fn optimized_bounds_reach_lp_full_on_two_hidden_layers() {
    // The optimum over the slopes is the triangle LP's value when the first layer's bounds are
    // exact (they are: CROWN's first layer is the support function of X). Tight LP tolerances,
    // so that LP-Full's dual bound sits at its optimum.
    let lp = LpSettings { tolerance: 1e-10, max_iter: 200, ..LpSettings::default() };
    let settings = SlopeSettings { iterations: 300, ..SlopeSettings::default() };
    let (mut compared, mut crown_gap, mut worst) = (0, 0, 0.0f64);
    for (ci, (net, set)) in cases().iter().enumerate().filter(|(_, c)| c.0.layers().len() == 3) {
        let crown = bounds::crown_and_ibp(net, set).unwrap();
        let (mut full, _) = lp_full_bounds(net, set, &lp).unwrap();
        for (a, b) in full.layers.iter_mut().zip(&crown.layers) {
            a.intersect(b);
        }
        let opt = optimized_bounds(net, set, &settings).unwrap();
        for j in unstable(&crown, 1) {
            for (o, f, c) in [
                (opt.layers[1].lower[j], full.layers[1].lower[j], crown.layers[1].lower[j]),
                (-opt.layers[1].upper[j], -full.layers[1].upper[j], -crown.layers[1].upper[j]),
            ] {
                let gap = (o - f).abs() / (1.0 + f.abs());
                worst = worst.max(gap);
                assert!(gap <= 1e-4, "case {ci} neuron {j}: optimized {o} vs LP-Full {f}");
                compared += 1;
                if f - c > 1e-3 * (1.0 + f.abs()) {
                    crown_gap += 1;
                }
            }
        }
    }
    eprintln!("{compared} bounds compared, worst relative gap {worst:.2e}, {crown_gap} where LP-Full beats CROWN");
    // The comparison means something only where CROWN's slopes are not already optimal.
    assert!(compared >= 60 && crown_gap >= 20, "{compared} compared, {crown_gap} with a CROWN gap");
}

#[test]
fn optimized_bounds_reject_what_they_cannot_handle() {
    let set = InputSet::new(vec![0.5, 0.5], 0.1, Norm::L2, None).unwrap();
    let sigmoid = common::random_network(1, &[2, 4, 4, 3], Activation::Sigmoid);
    assert!(matches!(optimized_bounds(&sigmoid, &set, &SlopeSettings::default()), Err(Error::Unsupported(_))));
    let sigmoid_pre = bounds::crown_and_ibp(&sigmoid, &set).unwrap();
    let margins = nncert::bounds::optimized::optimized_margin_bounds(
        &sigmoid,
        &set,
        &sigmoid_pre,
        0,
        &[1],
        &SlopeSettings::default(),
    );
    assert!(matches!(margins, Err(Error::Unsupported(_))));
    let relu = common::random_network(1, &[2, 4, 4, 3], Activation::Relu);
    let bad = SlopeSettings { learning_rate: f64::NAN, ..SlopeSettings::default() };
    assert!(matches!(optimized_bounds(&relu, &set, &bad), Err(Error::InvalidArgument(_))));
    let wrong = InputSet::new(vec![0.5; 3], 0.1, Norm::L2, None).unwrap();
    assert!(optimized_bounds(&relu, &wrong, &SlopeSettings::default()).is_err());
}

#[test]
fn bm_full_on_optimized_bounds_is_sound_and_its_certificates_check() {
    use nncert::verify::bm::Bm;
    use nncert::verify::sdp::{BoundSource, Relaxation};
    let bm = Bm { stop_when_positive: false, ..Bm::full() };
    assert_eq!(bm.bounds, BoundSource::Optimized);
    let mut proven = 0;
    for (ci, (net, set, label)) in common::small_relu_cases(16).iter().enumerate() {
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let rel = Relaxation::new(net, set, BoundSource::Optimized).unwrap();
        if let Some(c) = bm.solve_target(net, set, &rel, *label, target).unwrap().certificate {
            assert!(c.bound <= exact.lower + 1e-9, "case {ci}: BM-Full {} > exact {}", c.bound, exact.lower);
            // The check recomputes the optimized bounds from scratch and must accept.
            let checked = c.check(net, set).unwrap();
            assert!(checked >= c.bound, "case {ci}");
            proven += 1;
        }
    }
    assert!(proven >= 12, "only {proven} of 16 proven");
}

#[test]
fn optimized_bounds_do_not_depend_on_the_number_of_threads() {
    // Wide enough for several chunks of columns.
    let net = common::random_network(77, &[6, 30, 40, 3], Activation::Relu);
    let set = InputSet::new(vec![0.4; 6], 0.3, Norm::L2, Some(Domain::uniform(6, 0.0, 1.0).unwrap())).unwrap();
    let crown = bounds::crown_and_ibp(&net, &set).unwrap();
    assert!(unstable(&crown, 1).len() >= 20, "too few unstable neurons for several chunks");
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let a = one.install(|| optimized_bounds(&net, &set, &SlopeSettings::default()).unwrap());
    let b = optimized_bounds(&net, &set, &SlopeSettings::default()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn alpha_crown_margins_lie_between_crown_and_the_exact_phi_and_reach_lp_full() {
    use nncert::Verifier;
    use nncert::verify::AlphaCrown;
    use nncert::verify::lp::margin_lp_bounds;
    let lp = LpSettings { tolerance: 1e-10, max_iter: 200, ..LpSettings::default() };
    let (mut compared, mut gain, mut worst) = (0, 0, 0.0f64);
    for (ci, (net, set)) in cases().iter().enumerate() {
        let label = net.predict(set.center()).unwrap();
        let targets: Vec<usize> = (0..3).filter(|&t| t != label).collect();
        let alpha = AlphaCrown::default().lower_bounds(net, set, label, &targets).unwrap();
        let crown_pre = bounds::crown_and_ibp(net, set).unwrap();
        let crown =
            bounds::margin_lower_bounds(net, set, &crown_pre, bounds::Propagation::Crown, label, &targets).unwrap();
        let (full_pre, _) = lp_full_bounds(net, set, &lp).unwrap();
        let (lp_full, _) = margin_lp_bounds(net, set, &full_pre, label, &targets, &lp);
        for (k, &t) in targets.iter().enumerate() {
            let a = alpha.bounds[k].1;
            let exact = Exact::default().phi(net, set, label, t).unwrap();
            assert!(a <= exact.lower + 1e-9, "case {ci} target {t}: alpha-CROWN {a} > exact {}", exact.lower);
            assert!(a >= crown[k] - 1e-9 * (1.0 + crown[k].abs()), "case {ci} target {t}: {a} < CROWN {}", crown[k]);
            // LP-Full also constrains the last hidden layer by its intervals: at least as tight.
            assert!(a <= lp_full[k] + 1e-4 * (1.0 + lp_full[k].abs()), "case {ci}: {a} > LP-Full {}", lp_full[k]);
            worst = worst.max((lp_full[k] - a) / (1.0 + lp_full[k].abs()));
            compared += 1;
            gain += usize::from(a > crown[k] + 1e-3 * (1.0 + crown[k].abs()));
        }
    }
    eprintln!(
        "{compared} margins: {gain} tighter than CROWN by 1e-3 or more, largest relative gap to LP-Full {worst:.2e}"
    );
    assert!(gain >= 20, "alpha-CROWN beat CROWN on only {gain} of {compared} margins");
    // Bad queries are errors.
    let (net, set) = &cases()[0];
    assert!(AlphaCrown::default().lower_bounds(net, set, 3, &[0]).is_err());
    assert!(AlphaCrown::default().lower_bounds(net, set, 0, &[7]).is_err());
}

/// The convergence tolerance stops the ascent early: its bounds never loosen CROWN's, and on the
/// first optimized layer (whose relaxation is the same in both runs) they lie between CROWN's and
/// those of every step, within a small fraction of the latter.
#[test]
fn a_convergence_tolerance_stops_between_crown_and_every_step() {
    let full = SlopeSettings::default();
    let early = SlopeSettings { tolerance: 1e-3, ..full };
    let (mut differ, mut worst) = (0, 0.0f64);
    for (ci, (net, set)) in cases().iter().enumerate() {
        let crown = bounds::crown_and_ibp(net, set).unwrap();
        let a = optimized_bounds(net, set, &full).unwrap();
        let b = optimized_bounds(net, set, &early).unwrap();
        for k in 0..net.layers().len() - 1 {
            for j in 0..crown.layers[k].len() {
                let (e, c) = (&b.layers[k], &crown.layers[k]);
                assert!(e.lower[j] >= c.lower[j] && e.upper[j] <= c.upper[j], "case {ci} layer {k}: looser than CROWN");
                if k == 1 {
                    let f = &a.layers[k];
                    assert!(e.lower[j] <= f.lower[j] + 1e-12 && e.upper[j] >= f.upper[j] - 1e-12, "case {ci}");
                    differ += usize::from(e.lower[j] < f.lower[j] || e.upper[j] > f.upper[j]);
                    let width = f.upper[j] - f.lower[j];
                    worst = worst.max((e.upper[j] - e.lower[j] - width) / (1.0 + width));
                }
            }
        }
    }
    eprintln!("{differ} first-layer bounds stopped early; widest relative loss {worst:.2e}");
    assert!(worst < 0.05, "the early stop lost {worst} of a width");
    let bad = SlopeSettings { tolerance: -1.0, ..full };
    let (net, set) = &cases()[0];
    assert!(matches!(optimized_bounds(net, set, &bad), Err(Error::InvalidArgument(_))));
}

/// A deadline that has passed leaves CROWN's bounds (every layer), and one far ahead changes
/// nothing: the ascent stops on the clock, never with a looser or unsound bound.
#[test]
fn a_passed_deadline_keeps_crowns_bounds() {
    let now = std::time::Instant::now();
    for (net, set) in cases() {
        let crown = bounds::crown_and_ibp(&net, &set).unwrap();
        let passed = optimized_bounds(&net, &set, &SlopeSettings { deadline: Some(now), ..SlopeSettings::default() });
        assert_eq!(passed.unwrap(), crown);
        let ahead = now + std::time::Duration::from_secs(3600);
        let far = optimized_bounds(&net, &set, &SlopeSettings { deadline: Some(ahead), ..SlopeSettings::default() });
        assert_eq!(far.unwrap(), optimized_bounds(&net, &set, &SlopeSettings::default()).unwrap());
    }
}
