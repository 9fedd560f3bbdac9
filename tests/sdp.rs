//! Proposition 3.1 with proven R and rigorous lambda_min: sound for arbitrary multipliers, against
//! the exact phi on tiny networks; SDP-FO's optimized bound; certificates that reject tampering.

mod common;

use nncert::attack::{PgdSettings, pgd};
use nncert::bounds::{self, Propagation};
use nncert::verify::exact::Exact;
use nncert::verify::lp::{lp_full_bounds, margin_lp_bounds};
use nncert::verify::sdp::{BoundSource, Multipliers, Relaxation, SdpFo, bound_from_multipliers, proven_r2};
use nncert::{Domain, InputSet, Network, Norm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn cases() -> Vec<(Network, InputSet, usize)> {
    common::small_relu_cases(40)
}

#[test]
fn proven_radius_covers_feasible_points() {
    for (net, set, _) in cases() {
        let pre = bounds::pre_activation_bounds(&net, &set, Propagation::Crown).unwrap();
        let r2 = proven_r2(&net, &set, &pre);
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            let x = set.sample(&mut rng);
            let mut norm2: f64 = 1.0 + x.iter().map(|v| v * v).sum::<f64>();
            let mut h = x.clone();
            for layer in &net.layers()[..net.layers().len() - 1] {
                h = nncert::linalg::mat_vec(layer.weight(), &h)
                    .iter()
                    .zip(layer.bias())
                    .map(|(a, b)| (a + b).max(0.0))
                    .collect();
                norm2 += h.iter().map(|v| v * v).sum::<f64>();
            }
            assert!(norm2 <= r2, "{norm2} > R^2 {r2}");
        }
    }
}

#[test]
fn any_multipliers_give_a_sound_bound() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut finite = 0;
    for (ci, (net, set, label)) in cases().iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        for _ in 0..5 {
            let mut m = Multipliers::initial(net, set, 1.0);
            m.ball = rng.random::<f64>() * 5.0;
            m.coord.iter_mut().for_each(|v| *v = rng.random::<f64>() * 5.0);
            m.lower.iter_mut().for_each(|v| *v = rng.random::<f64>() - 0.3);
            for layer in m.nonneg.iter_mut().chain(m.above.iter_mut()).chain(m.post.iter_mut()).chain(m.cut.iter_mut())
            {
                layer.iter_mut().for_each(|v| *v = rng.random::<f64>() * 2.0 - 0.5);
            }
            for layer in m.relu.iter_mut() {
                layer.iter_mut().for_each(|v| *v = rng.random::<f64>() * 4.0 - 1.0);
            }
            if let Some((cert, _)) = bound_from_multipliers(net, set, &rel, *label, target, &m).unwrap() {
                assert!(cert.bound <= exact.lower + 1e-9, "case {ci}: bound {} > exact {}", cert.bound, exact.lower);
                finite += 1;
            }
        }
    }
    assert!(finite > 100, "only {finite} bounds were proven");
}

#[test]
fn sdp_fo_is_sound_and_useful() {
    let fo = SdpFo::default();
    let mut rows = Vec::new();
    for (ci, (net, set, label)) in cases().iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let attack = pgd(net, set, *label, &[target], &PgdSettings::default()).unwrap();
        let cert = fo.certify_target(net, set, &rel, *label, target).unwrap().expect("a proven bound");
        assert!(cert.bound <= exact.lower + 1e-9, "case {ci}: SDP-FO {} > exact {}", cert.bound, exact.lower);
        assert!(cert.bound <= attack[0].margin + 1e-9);
        let checked = cert.check(net, set).unwrap();
        assert!(cert.bound <= checked);
        let (full_pre, _) = lp_full_bounds(net, set, &Default::default()).unwrap();
        let (lp_full, _) = margin_lp_bounds(net, set, &full_pre, *label, &[target], &Default::default());
        rows.push((exact.upper, lp_full[0], cert.bound));
    }
    let gap_sdp: f64 = rows.iter().map(|r| r.0 - r.2).sum::<f64>() / rows.len() as f64;
    let gap_lp: f64 = rows.iter().map(|r| r.0 - r.1).sum::<f64>() / rows.len() as f64;
    eprintln!("mean gap to exact phi: SDP-FO {gap_sdp:.4}, LP-Full {gap_lp:.4}");
    for r in &rows {
        eprintln!("exact {:.4} lp-full {:.4} sdp-fo {:.4}", r.0, r.1, r.2);
    }
    // Not vacuous: on average within a bounded distance of the exact value.
    assert!(gap_sdp.is_finite() && gap_sdp < 0.1, "SDP-FO mean gap {gap_sdp}");
}

#[test]
fn certificates_reject_tampering() {
    let (net, set, label) = cases().swap_remove(4);
    let rel = Relaxation::new(&net, &set, BoundSource::CrownIbp).unwrap();
    let target = (label + 1) % 3;
    let cert = SdpFo { stop_when_positive: false, ..SdpFo::default() }
        .certify_target(&net, &set, &rel, label, target)
        .unwrap()
        .unwrap();
    let proven = cert.check(&net, &set).unwrap();
    assert!(cert.bound <= proven);
    // A larger claimed bound.
    let mut c = cert.clone();
    c.bound = proven + 1e-3;
    assert!(c.check(&net, &set).is_err());
    // A smaller R^2 claimed: the checker recomputes R^2, so the inflated bound is refused.
    let mut c = cert.clone();
    if c.t < 0.0 {
        c.r2 *= 0.5;
        c.bound = c.z0 + c.r2 * c.t;
        assert!(c.check(&net, &set).is_err(), "shrunk R accepted");
    }
    // Scaled multipliers with the old t and z0: the matrix no longer certifies.
    let mut c = cert.clone();
    c.multipliers.relu.iter_mut().flatten().for_each(|v| *v *= -3.0);
    assert!(c.check(&net, &set).is_err(), "scaled multipliers accepted");
    // A larger t (a lambda_min bound that is too high).
    let mut c = cert.clone();
    c.t = c.t / 2.0 + 0.5;
    assert!(c.check(&net, &set).is_err());
    // Serializable.
    let json = serde_json::to_string(&cert).unwrap();
    let back: nncert::verify::sdp::Certificate = serde_json::from_str(&json).unwrap();
    assert_eq!(back.check(&net, &set).unwrap(), proven);
}

/// SDP-FO against the convex SDP solved exactly (feature `sdp-reference`): never above it (weak
/// duality), and close to it where the first-order method converges.
#[cfg(feature = "sdp-reference")]
#[test]
fn sdp_fo_against_the_reference_sdp() {
    use nncert::verify::sdp_reference::reference_sdp;
    let fo = SdpFo { iterations: 2000, time_limit: 30.0, stop_when_positive: false, ..SdpFo::default() };
    let mut gaps = Vec::new();
    let mut lp_vs_sdp = (0, 0);
    for (ci, (net, set, label)) in cases().iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let sdp = reference_sdp(net, set, &rel, *label, target).unwrap();
        if sdp.status != "Solved" {
            eprintln!("case {ci}: the reference SDP stopped with {} at {:.5}", sdp.status, sdp.value);
            continue;
        }
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        assert!(sdp.value <= exact.upper + 1e-6, "case {ci}: SDP {} > exact {}", sdp.value, exact.upper);
        let cert = fo.certify_target(net, set, &rel, *label, target).unwrap().unwrap();
        assert!(
            cert.bound <= sdp.value + 1e-6 * (1.0 + sdp.value.abs()),
            "case {ci}: SDP-FO {} > SDP {}",
            cert.bound,
            sdp.value
        );
        gaps.push(sdp.value - cert.bound);
        let (full_pre, _) = lp_full_bounds(net, set, &Default::default()).unwrap();
        let (lp_full, _) = margin_lp_bounds(net, set, &full_pre, *label, &[target], &Default::default());
        if lp_full[0] > sdp.value + 1e-6 {
            lp_vs_sdp.0 += 1;
        } else if sdp.value > lp_full[0] + 1e-6 {
            lp_vs_sdp.1 += 1;
        }
        eprintln!(
            "case {ci}: exact {:.5} SDP {:.5} SDP-FO {:.5} LP-Full {:.5}",
            exact.upper, sdp.value, cert.bound, lp_full[0]
        );
    }
    assert!(gaps.len() >= 30, "the reference SDP solved only {} cases", gaps.len());
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    eprintln!(
        "SDP-FO gap to the SDP: median {median:.2e}; LP-Full tighter on {}, SDP tighter on {}",
        lp_vs_sdp.0, lp_vs_sdp.1
    );
    assert!(median < 1e-2, "SDP-FO median gap to the SDP optimum {median}");
}

fn random_multipliers(net: &Network, set: &InputSet, seed: u64) -> Multipliers {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut m = Multipliers::initial(net, set, 1.0);
    m.ball = rng.random::<f64>();
    m.coord.iter_mut().chain(m.lower.iter_mut()).chain(m.upper.iter_mut()).for_each(|v| *v = rng.random::<f64>() - 0.2);
    let hidden = m.nonneg.iter_mut().chain(m.above.iter_mut()).chain(m.post.iter_mut()).chain(m.cut.iter_mut());
    for layer in hidden.chain(m.relu.iter_mut()) {
        layer.iter_mut().for_each(|v| *v = rng.random::<f64>() * 2.0 - 0.5);
    }
    m
}

#[test]
fn matrix_free_slack_operator_matches_the_dense_matrix() {
    use nncert::verify::sdp::{SlackOperator, lagrangian_matrix};
    let mut nets: Vec<(Network, InputSet, usize)> = cases().into_iter().take(6).collect();
    let net = nncert::io::load_model(concat!(env!("CARGO_MANIFEST_DIR"), "/data/models/digits-relu-adv.json")).unwrap();
    let (_, test) = nncert::data::digits_split().unwrap();
    let set =
        InputSet::new(test.images[0].clone(), 0.05, Norm::Linf, Some(Domain::uniform(64, 0.0, 1.0).unwrap())).unwrap();
    nets.push((net, set, test.labels[0]));
    for (ci, (net, set, label)) in nets.iter().enumerate() {
        let target = (label + 1) % net.num_classes();
        let mult = random_multipliers(net, set, ci as u64);
        let z0 = 0.37;
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let (mut m, _) = lagrangian_matrix(net, set, &rel.boxes, *label, target, &mult).unwrap();
        m[(0, 0)] -= z0;
        let op = SlackOperator::new(net, set, &rel.boxes, *label, target, &mult, z0).unwrap();
        let n = op.dim();
        assert_eq!(n, m.nrows());
        let mut rng = StdRng::seed_from_u64(9);
        let v: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
        let mut out = vec![0.0; n];
        op.apply_vec(&v, &mut out);
        for i in 0..n {
            let dense: f64 = (0..n).map(|j| m[(i, j)] * v[j]).sum();
            assert!(
                (dense - out[i]).abs() < 1e-12 * (1.0 + dense.abs()) * n as f64,
                "case {ci} row {i}: {dense} vs {}",
                out[i]
            );
        }
        // The block product (BM-r's gradient) agrees with the dense matrix column by column.
        let block = faer::Mat::from_fn(n, 3, |i, c| ((i * 7 + c * 13) as f64 * 0.31).sin());
        let out_block = op.apply_mat(block.as_ref());
        for c in 0..3 {
            for i in 0..n {
                let dense: f64 = (0..n).map(|j| m[(i, j)] * block[(j, c)]).sum();
                assert!(
                    (dense - out_block[(i, c)]).abs() < 1e-12 * (1.0 + dense.abs()) * n as f64,
                    "case {ci} column {c} row {i}: {dense} vs {}",
                    out_block[(i, c)]
                );
            }
        }
        let ev = m.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
        let g = op.gershgorin();
        assert!(g >= ev[0].abs() && g >= ev[n - 1].abs());
        let (lam, vec) = op.lambda_min(1e-12).unwrap();
        assert!((lam - ev[0]).abs() < 1e-9 * (1.0 + g), "case {ci}: Krylov {lam} vs dense {}", ev[0]);
        let mut sv = vec![0.0; n];
        op.apply_vec(&vec, &mut sv);
        let resid: f64 = sv.iter().zip(&vec).map(|(a, b)| (a - lam * b).powi(2)).sum::<f64>().sqrt();
        assert!(resid < 1e-7 * (1.0 + g), "case {ci}: eigenvector residual {resid}");
    }
}

/// BM-r at its final rank reaches the convex SDP's optimum (Theorem 4.3 of the BM-r paper) on the
/// small networks where clarabel solves the SDP.
#[cfg(feature = "sdp-reference")]
#[test]
fn bm_matches_the_reference_sdp() {
    use nncert::verify::bm::Bm;
    use nncert::verify::sdp_reference::reference_sdp;
    // Solved to high accuracy (a large penalty and long inner solves: the defaults trade accuracy
    // for speed on MNIST-sized networks), BM reaches the convex SDP's value (Theorem 4.3).
    let bm = Bm {
        feasibility: 1e-9,
        outer: 60,
        inner: 1000,
        max_iterations: 60 * 1000 * 7,
        rho_max: 1e4,
        stop_when_positive: false,
        ..Bm::default()
    };
    let mut compared = 0;
    let mut within = 0;
    for (ci, (net, set, label)) in cases().iter().enumerate().take(16) {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let sdp = reference_sdp(net, set, &rel, *label, target).unwrap();
        if sdp.status != "Solved" {
            continue;
        }
        let r = bm.solve_target(net, set, &rel, *label, target).unwrap();
        let b = r.certificate.unwrap().bound;
        assert!(b <= sdp.value + 1e-6 * (1.0 + sdp.value.abs()), "case {ci}: BM {b} > SDP {}", sdp.value);
        let rel = (sdp.value - b) / (1.0 + sdp.value.abs());
        eprintln!("case {ci}: SDP {:.6} BM {b:.6} rel gap {rel:.1e} ranks {:?}", sdp.value, r.rank_path);
        compared += 1;
        if rel <= 1e-4 {
            within += 1;
        }
    }
    assert!(compared >= 12);
    // All 14 solved cases met 1e-4 when this was written (largest gap 2.8e-5); allow one miss.
    assert!(within * 10 >= compared * 9, "BM within 1e-4 of the SDP on {within} of {compared}");
}

/// `count` seeded problems of the size BM-r's defaults must hold on (issue #22): 10-40 inputs, two
/// or three hidden layers of 8-20 neurons, 4 classes, the [0, 1] box, l_inf 0.08 and l2 0.25 in
/// turn; with the runner-up class as the target.
#[cfg(feature = "sdp-reference")]
fn medium_relu_cases(count: u64) -> Vec<(Network, InputSet, usize, usize)> {
    (0..count)
        .map(|seed| {
            let mut rng = StdRng::seed_from_u64(9000 + seed);
            let n_in = rng.random_range(10..=40);
            let depth = rng.random_range(2..=3);
            let mut sizes = vec![n_in];
            sizes.extend((0..depth).map(|_| rng.random_range(8..=20)));
            sizes.push(4);
            let net = common::random_network(7000 + seed, &sizes, nncert::Activation::Relu);
            let x: Vec<f64> = (0..n_in).map(|_| rng.random::<f64>()).collect();
            let y = net.forward(&x).unwrap();
            let label = net.predict(&x).unwrap();
            let target = (0..4).filter(|&t| t != label).max_by(|&a, &b| y[a].total_cmp(&y[b])).unwrap();
            let (norm, eps) = if seed % 2 == 0 { (Norm::Linf, 0.08) } else { (Norm::L2, 0.25) };
            let domain = Some(Domain::uniform(n_in, 0.0, 1.0).unwrap());
            (net, InputSet::new(x, eps, norm, domain).unwrap(), label, target)
        })
        .collect()
}

/// Default BM-Full against the relaxation it solves (the same boxes and cuts, solved exactly by
/// clarabel's PSD cone) on 100 seeded networks beyond the paper's (issue #22, items 3-4): never
/// above it, never above PGD's margin, and within 1e-3 (relative to max(1, |value|)) on at least
/// 95 of the 100, with the default settings in tight mode (measured when the penalty cap at the
/// final rank, `Bm::rho_final`, landed: 96 of 100, 49 of the 52 clarabel solves to full accuracy;
/// median gap 1.7e-4, worst 1.4e-3; about 2 s per target). Ignored: the 100 reference SDPs (up
/// to n = 100) take 20-40 minutes on 2 cores; run with
/// `cargo test --release --features sdp-reference --test sdp -- --ignored --nocapture`.
#[cfg(feature = "sdp-reference")]
#[test]
#[ignore]
fn default_bm_full_against_the_exact_relaxation_on_100_networks() {
    use nncert::verify::bm::Bm;
    use nncert::verify::sdp_reference::reference_sdp;
    use rayon::prelude::*;
    let bm = Bm { stop_when_positive: false, ..Bm::full() };
    let start = std::time::Instant::now();
    let cases = medium_relu_cases(100);
    // (gap to the SDP relative to max(1, |value|), whether clarabel solved it to full accuracy).
    let rows: Vec<(f64, bool)> = cases
        .par_iter()
        .enumerate()
        .map(|(ci, (net, set, label, target))| {
            let rel = Relaxation::new(net, set, BoundSource::Optimized).unwrap();
            let sdp = reference_sdp(net, set, &rel, *label, *target).unwrap();
            let r = bm.solve_target(net, set, &rel, *label, *target).unwrap();
            let b = r.certificate.as_ref().map_or(f64::NEG_INFINITY, |c| c.bound);
            let scale = sdp.value.abs().max(1.0);
            // clarabel's `AlmostSolved` is accurate to its reduced tolerances (~1e-4).
            let solved = sdp.status == "Solved";
            let slack = if solved { 1e-6 } else { 1e-4 };
            assert!(b <= sdp.value + slack * scale, "case {ci}: BM-Full {b} > SDP {} ({})", sdp.value, sdp.status);
            assert!(b <= r.attack_margin + 1e-9, "case {ci}: BM-Full {b} > PGD {}", r.attack_margin);
            let gap = (sdp.value - b) / scale;
            eprintln!(
                "case {ci}: SDP {:.5} ({}) BM {b:.5} gap {gap:.1e} primal {:.5} infeas {:.1e} ranks {:?} iters {}",
                sdp.value, sdp.status, r.primal, r.infeasibility, r.rank_path, r.iterations
            );
            (gap, solved)
        })
        .collect();
    let compared = rows.iter().filter(|r| r.1).count();
    let within = rows.iter().filter(|r| r.1 && r.0 <= 1e-3).count();
    let mut gaps: Vec<f64> = rows.iter().map(|r| r.0).collect();
    gaps.sort_by(f64::total_cmp);
    eprintln!(
        "BM-Full within 1e-3 of the SDP on {within} of {compared} solved to full accuracy ({} of 100 in all); \
         median gap {:.1e}, worst {:.1e}; {:.0} s",
        rows.iter().filter(|r| r.0 <= 1e-3).count(),
        gaps[gaps.len() / 2],
        gaps[gaps.len() - 1],
        start.elapsed().as_secs_f64()
    );
    assert!(compared >= 50, "clarabel solved only {compared} of 100 to full accuracy");
    // `AlmostSolved` values are accurate to ~1e-4, well inside the 1e-3 asked: all 100 count.
    let within_all = rows.iter().filter(|r| r.0 <= 1e-3).count();
    assert!(within_all >= 95, "BM-Full within 1e-3 of the SDP on {within_all} of 100 ({within} of {compared} Solved)");
}
