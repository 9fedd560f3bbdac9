//! SDP-FO at scale: the block-tridiagonal dual evaluation against the dense Lagrangian matrix,
//! the backward (CROWN) starting point against CROWN's bound, and the ascent's proven bound
//! against the exact phi and PGD.

mod common;

use faer::Side;
use faer::linalg::solvers::Solve;
use nncert::verify::sdp::{BoundSource, Multipliers, Relaxation, SlackOperator, lagrangian_matrix};
use nncert::verify::sdp_fo::{backward_multipliers, dual_value};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn random_multipliers(like: &Multipliers, seed: u64) -> Multipliers {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = like.clone();
    m.ball = 0.5 + rng.random::<f64>();
    m.coord.iter_mut().for_each(|v| *v = 0.5 + rng.random::<f64>());
    m.lower.iter_mut().chain(m.upper.iter_mut()).for_each(|v| *v = rng.random::<f64>() * 0.3);
    for layer in m.nonneg.iter_mut().chain(m.above.iter_mut()).chain(m.cut.iter_mut()) {
        layer.iter_mut().for_each(|v| *v = rng.random::<f64>() * 0.5);
    }
    for layer in m.post.iter_mut() {
        layer.iter_mut().for_each(|v| *v = 1.0 + rng.random::<f64>());
    }
    for layer in m.relu.iter_mut() {
        layer.iter_mut().for_each(|v| *v = rng.random::<f64>() - 0.5);
    }
    m.products.iter_mut().for_each(|v| *v = rng.random::<f64>() * 0.2);
    m
}

/// Also with the input-box products, whose input block is dense (`products` on every other case).
#[test]
fn block_dual_value_matches_the_dense_schur_complement() {
    let (mut checked, mut with_products) = (0, 0);
    for (ci, (net, set, label)) in common::small_relu_cases(30).iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let like = Multipliers::initial(net, set, 0.0).with_products(net, set, ci % 2 == 1);
        let mult = random_multipliers(&like, ci as u64);
        let tau = 0.3;
        let op = SlackOperator::new(net, set, &rel.boxes, *label, target, &mult, 0.0).unwrap();
        let (m, _) = lagrangian_matrix(net, set, &rel.boxes, *label, target, &mult).unwrap();
        let n = m.nrows() - 1;
        let mut q = m.submatrix(1, 1, n, n).to_owned();
        for i in 0..n {
            q[(i, i)] += tau;
        }
        let rhs = faer::Mat::from_fn(n, 1, |i, _| -m[(1 + i, 0)]);
        let Ok(llt) = q.llt(Side::Lower) else {
            assert!(dual_value(&op, rel.r2, tau).is_none(), "case {ci}: not PD, yet a value");
            continue;
        };
        let x = llt.solve(rhs.as_ref());
        let dense = m[(0, 0)] - tau * (rel.r2 - 1.0) + (0..n).map(|i| m[(1 + i, 0)] * x[(i, 0)]).sum::<f64>();
        let p = dual_value(&op, rel.r2, tau).expect("PD");
        assert!((p.value - dense).abs() <= 1e-9 * (1.0 + dense.abs()), "case {ci}: {} vs {dense}", p.value);
        for i in 0..n {
            assert!((p.x[i] - x[(i, 0)]).abs() <= 1e-8 * (1.0 + x[(i, 0)].abs()));
        }
        checked += 1;
        with_products += usize::from(!mult.products.is_empty());
    }
    assert!(checked >= 20 && with_products >= 8, "only {checked} PD cases, {with_products} with products");
}

/// The starting point is CROWN's bound on the relaxation's pre-activation bounds, less the cost of
/// the small quadratic box multipliers (at most `floor` per box); the ascent never goes below its
/// start, and the proven bound stays below the exact phi.
#[test]
fn sdp_fo_starts_at_crown_and_stays_sound() {
    use nncert::bounds::{Propagation, margin_lower_bounds};
    use nncert::verify::exact::Exact;
    use nncert::verify::sdp_fo::SdpFo;
    let floor = 1e-4;
    let mut improved = 0;
    let cases = common::small_relu_cases(30);
    for (ci, (net, set, label)) in cases.iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let crown = margin_lower_bounds(net, set, &rel.pre, Propagation::Crown, *label, &[target]).unwrap()[0];
        let boxes = set.dim() + net.hidden_neurons();
        let start = backward_multipliers(net, set, &rel, *label, target, floor);
        let op = SlackOperator::new(net, set, &rel.boxes, *label, target, &start, 0.0).unwrap();
        let v = dual_value(&op, rel.r2, 0.0).expect("the start is positive definite").value;
        assert!(v <= crown + 1e-7 * (1.0 + crown.abs()), "case {ci}: start {v} above CROWN {crown}");
        assert!(v >= crown - floor * boxes as f64 - 1e-7, "case {ci}: start {v} far below CROWN {crown}");
        let fo = SdpFo { stop_when_positive: false, ..SdpFo::default() };
        let r = fo.run(net, set, &rel, *label, target, None).unwrap();
        let cert = r.certificate.expect("a proven bound");
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        assert!(cert.bound <= exact.lower + 1e-9, "case {ci}: {} > exact {}", cert.bound, exact.lower);
        assert!(r.best_value >= r.start_value, "case {ci}: the ascent lost ground");
        assert!(
            cert.bound >= r.best_value - 1e-6 * (1.0 + r.best_value.abs()),
            "case {ci}: proof lost {} vs {}",
            cert.bound,
            r.best_value
        );
        assert!(cert.check(net, set).unwrap() >= cert.bound);
        if cert.bound > crown + 1e-3 {
            improved += 1;
        }
    }
    eprintln!("SDP-FO above CROWN by > 1e-3 on {improved} of {}", cases.len());
    assert!(improved >= 5, "SDP-FO improved on CROWN only {improved} times");
}

/// The triangle cut x <= s z + d of every unstable neuron holds at both ends of [l, u] for the
/// stored floats (checked with a fused multiply-add, one rounding, which is monotone), also for
/// extreme intervals; the box is [max(l, 0), max(u, 0)].
#[test]
fn hidden_cuts_are_valid_for_the_stored_floats() {
    use nncert::bounds::{Interval, PreActivationBounds};
    use nncert::verify::sdp::HiddenBoxes;
    let mut rng = StdRng::seed_from_u64(5);
    let net = common::random_network(1, &[3, 400, 2], nncert::Activation::Relu);
    for round in 0..50 {
        let mut lower = Vec::new();
        let mut upper = Vec::new();
        for j in 0..400 {
            let scale = 10f64.powi(rng.random_range(-12..6));
            let (a, b) = (rng.random::<f64>() - 0.5, rng.random::<f64>() - 0.5);
            let (l, u) = if j % 50 == 0 { (-scale, scale * 1e-15) } else { ((a.min(b)) * scale, a.max(b) * scale) };
            lower.push(l);
            upper.push(u);
        }
        let pre = PreActivationBounds {
            layers: vec![
                Interval { lower: lower.clone(), upper: upper.clone() },
                Interval { lower: vec![0.0; 2], upper: vec![1.0; 2] },
            ],
        };
        let boxes = HiddenBoxes::new(&net, &pre).unwrap();
        for j in 0..400 {
            let (l, u, s, d) = (lower[j], upper[j], boxes.slope[0][j], boxes.offset[0][j]);
            assert!(s.mul_add(l, d) >= 0.0, "round {round} neuron {j}: cut below 0 at l = {l}");
            assert!(s.mul_add(u, d) >= u.max(0.0), "round {round} neuron {j}: cut below u = {u}");
            assert_eq!(boxes.lo[0][j], l.max(0.0));
            assert_eq!(boxes.hi[0][j], u.max(0.0));
            if l < 0.0 && u > 0.0 {
                // Not vacuous: the cut is the triangle's upper side up to rounding.
                let exact_d = -u * l / (u - l);
                assert!(d <= exact_d + 1e-12 * (exact_d.abs() + u), "neuron {j}: d {d} far above {exact_d}");
            }
        }
    }
}

/// The box-multiplier repair makes the quadratic part positive semidefinite from indefinite
/// multipliers, and the bound it proves stays below the exact phi.
#[test]
fn repair_lifts_the_quadratic_part_and_stays_sound() {
    use nncert::verify::exact::Exact;
    use nncert::verify::sdp::bound_from_multipliers;
    use nncert::verify::sdp_fo::repair_quadratic_part;
    let mut lifted = 0;
    for (ci, (net, set, label)) in common::small_relu_cases(20).iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let mut mult = random_multipliers(&Multipliers::initial(net, set, 0.0), 100 + ci as u64);
        mult.post.iter_mut().flatten().for_each(|v| *v = 0.0);
        mult.coord.iter_mut().for_each(|v| *v = 0.0);
        mult.relu.iter_mut().flatten().for_each(|v| *v *= 4.0);
        let before = SlackOperator::new(net, set, &rel.boxes, *label, target, &mult, 0.0).unwrap().quadratic_part();
        let (lam0, _) = before.lambda_min(1e-10).unwrap();
        let repaired = repair_quadratic_part(net, set, &rel, *label, target, &mult, 200).unwrap();
        let after = SlackOperator::new(net, set, &rel.boxes, *label, target, &repaired, 0.0).unwrap().quadratic_part();
        let (lam1, _) = after.lambda_min(1e-10).unwrap();
        if lam0 < -1e-3 {
            assert!(lam1 > lam0 && lam1 > -1e-3 * lam0.abs(), "case {ci}: lambda_min {lam0} -> {lam1}");
            lifted += 1;
        }
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        if let Some((c, _)) = bound_from_multipliers(net, set, &rel, *label, target, &repaired).unwrap() {
            assert!(c.bound <= exact.lower + 1e-9, "case {ci}: {} > exact {}", c.bound, exact.lower);
        }
    }
    assert!(lifted >= 10, "only {lifted} indefinite cases");
}
