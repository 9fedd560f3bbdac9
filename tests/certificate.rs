//! Certificates: written by the methods, re-checked by `nncert::certificate::check` against the
//! model, sound against exact minima and sampling, and rejected when tampered with.

mod common;

use nncert::certificate::{self, Certificate, Evidence, LayerMultipliers, Multipliers, TargetEvidence};
use nncert::certify::{CertifyOptions, certify};
use nncert::verify::exact::Exact;
use nncert::verify::{AlphaCrown, Crown, Verifier};
use nncert::{Activation, Domain, Error, InputSet, Layer, Network, Norm, Verdict};
use rand::SeedableRng;
use rand::rngs::StdRng;

/// Networks of several depths and widths, with input sets of both norms, with and without the
/// box, and radii from small to large.
fn cases() -> Vec<(Network, InputSet, usize)> {
    let mut out = Vec::new();
    for seed in 0..24u64 {
        let n_in = 3 + seed as usize % 4;
        let sizes: Vec<usize> = match seed % 3 {
            0 => vec![n_in, 8, 3],
            1 => vec![n_in, 7, 6, 3],
            _ => vec![n_in, 6, 5, 5, 4],
        };
        let net = common::random_network(900 + seed, &sizes, Activation::Relu);
        let x: Vec<f64> = (0..n_in).map(|i| ((seed as usize * 7 + i * 3) % 10) as f64 / 10.0 + 0.05).collect();
        let label = net.predict(&x).unwrap();
        let norm = if seed % 2 == 0 { Norm::L2 } else { Norm::Linf };
        let eps = [0.02, 0.08, 0.2][seed as usize % 3] * if norm == Norm::L2 { 2.0 } else { 1.0 };
        let domain = (seed % 4 != 0).then(|| Domain::uniform(n_in, 0.0, 1.0).unwrap());
        out.push((net, InputSet::new(x, eps, norm, domain).unwrap(), label));
    }
    out
}

fn others(net: &Network, label: usize) -> Vec<usize> {
    (0..net.num_classes()).filter(|&c| c != label).collect()
}

fn report_for(net: &Network, set: &InputSet, label: usize, v: &dyn Verifier) -> nncert::certify::ImageReport {
    let options = CertifyOptions { attack: None, all_targets: true };
    certify(net, set, label, Some(v), &options).unwrap()
}

#[test]
fn crown_certificates_recheck_and_are_never_looser_than_crown_nor_above_the_exact_minimum() {
    let mut checked_targets = 0;
    for (i, (net, set, label)) in cases().into_iter().enumerate() {
        let targets = others(&net, label);
        let cert =
            Certificate::seal(&net, &set, Some(i), label, "crown", &Evidence::crown(&net, &set, &targets).unwrap())
                .unwrap();
        // Through JSON and back, as a user would store it.
        let back = Certificate::from_json(&cert.to_json().unwrap()).unwrap();
        assert_eq!(back, cert);
        let checked = certificate::check(&net, &back).unwrap();
        assert_eq!(checked.verdict, cert.verdict);
        let crown = Crown.lower_bounds(&net, &set, label, &targets).unwrap();
        for ((t, b), (t2, c)) in checked.bounds.iter().zip(&crown.bounds) {
            assert_eq!(t, t2);
            // The checker minimizes every neuron exactly at CROWN's multipliers, and also uses
            // interval arithmetic: never below CROWN beyond rounding allowances.
            assert!(*b >= c - 1e-9 * (1.0 + c.abs()), "case {i} target {t}: certificate {b} < CROWN {c}");
            let phi = Exact::default().phi(&net, &set, label, *t).unwrap();
            assert!(
                *b <= phi.upper + 1e-12,
                "case {i} target {t}: certificate {b} above the exact minimum {}",
                phi.upper
            );
            checked_targets += 1;
        }
        // Sampled margins stay above every proven bound.
        let mut rng = StdRng::seed_from_u64(i as u64);
        for _ in 0..200 {
            let x = set.sample(&mut rng);
            for &(t, b) in &checked.bounds {
                assert!(net.margin(&x, label, t).unwrap() >= b - 1e-12);
            }
        }
        // The intervals contain every sampled pre-activation.
        for _ in 0..100 {
            let mut h = set.sample(&mut rng);
            for (k, layer) in net.layers()[..net.layers().len() - 1].iter().enumerate() {
                let z: Vec<f64> = (0..layer.output_size())
                    .map(|n| layer.bias()[n] + (0..h.len()).map(|m| layer.weight()[(n, m)] * h[m]).sum::<f64>())
                    .collect();
                for n in 0..z.len() {
                    assert!(cert.layers[k].lower[n] <= z[n] + 1e-12 && z[n] <= cert.layers[k].upper[n] + 1e-12);
                }
                h = z.iter().map(|v| v.max(0.0)).collect();
            }
        }
    }
    assert!(checked_targets >= 50, "{checked_targets}");
}

#[test]
fn alpha_crown_certificates_prove_alpha_crowns_bounds() {
    let mut tighter = 0;
    for (i, (net, set, label)) in cases().into_iter().enumerate() {
        let v = AlphaCrown::default();
        let report = report_for(&net, &set, label, &v);
        let cert = nncert::certify::certificate(&net, &set, Some(i), Some(&v), &report).unwrap().unwrap();
        let checked = certificate::check(&net, &cert).unwrap();
        let crown = Crown.lower_bounds(&net, &set, label, &others(&net, label)).unwrap();
        for ((t, b), (_, c)) in checked.bounds.iter().zip(&crown.bounds) {
            let alpha = report.lower_bounds[*t].unwrap();
            assert!(
                *b >= alpha - 1e-9 * (1.0 + alpha.abs()),
                "case {i} target {t}: certificate {b} < alpha-CROWN {alpha}"
            );
            let phi = Exact::default().phi(&net, &set, label, *t).unwrap();
            assert!(*b <= phi.upper + 1e-12);
            if *b > c + 1e-6 {
                tighter += 1;
            }
        }
        if report.verdict == Verdict::Robust {
            assert_eq!(checked.verdict, Verdict::Robust);
        }
    }
    // The optimized slopes matter: the certificate carries them, not CROWN's.
    assert!(tighter >= 10, "{tighter}");
}

#[test]
fn lp_certificates_prove_the_lp_bounds_from_the_solvers_multipliers() {
    let mut tighter = 0;
    for (i, (net, set, label)) in cases().into_iter().enumerate() {
        for name in ["lp", "lp-full"] {
            let v = nncert::verify::by_name(name).unwrap();
            let report = report_for(&net, &set, label, v.as_ref());
            let cert = nncert::certify::certificate(&net, &set, Some(i), Some(v.as_ref()), &report).unwrap().unwrap();
            let checked = certificate::check(&net, &cert).unwrap();
            for (t, b) in &checked.bounds {
                let lp = report.lower_bounds[*t].unwrap();
                // The LP's dual point, with the layer equalities' multipliers kept and every
                // other constraint minimized exactly: never below the LP's own dual bound.
                assert!(*b >= lp - 1e-9 * (1.0 + lp.abs()), "{name} case {i} target {t}: certificate {b} < LP {lp}");
                let phi = Exact::default().phi(&net, &set, label, *t).unwrap();
                assert!(*b <= phi.upper + 1e-12);
                // Without the LP's multipliers only CROWN's lines remain.
                let mut c = cert.clone();
                for tp in &mut c.targets {
                    tp.proofs.retain(|p| !matches!(p, TargetEvidence::Linear(Multipliers::Vectors(_))));
                    tp.bound = f64::NEG_INFINITY;
                }
                let crown_only = certificate::check(&net, &c).unwrap().bounds.iter().find(|u| u.0 == *t).unwrap().1;
                if *b > crown_only + 1e-6 {
                    tighter += 1;
                }
            }
            if report.verdict == Verdict::Robust {
                assert_eq!(checked.verdict, Verdict::Robust, "{name} case {i}");
            }
        }
    }
    assert!(tighter >= 10, "{tighter}");
}

#[test]
fn bm_certificates_recheck_their_sdp_multipliers() {
    let mut by_sdp = 0;
    for (i, (net, set, label)) in cases().into_iter().enumerate().filter(|(i, _)| i % 3 != 2).take(8) {
        for name in ["bm", "bm-full"] {
            let v = nncert::verify::by_name_all_targets(name).unwrap();
            let report = report_for(&net, &set, label, v.as_ref());
            let cert = nncert::certify::certificate(&net, &set, Some(i), Some(v.as_ref()), &report).unwrap().unwrap();
            let checked = certificate::check(&net, &cert).unwrap();
            for (t, b) in &checked.bounds {
                let phi = Exact::default().phi(&net, &set, label, *t).unwrap();
                assert!(*b <= phi.upper + 1e-12, "{name} case {i} target {t}");
                // Within rounding of the reported bound (the boxes are re-proven, not copied).
                let reported = report.lower_bounds[*t].unwrap();
                assert!(*b >= reported - 1e-6 * (1.0 + reported.abs()), "{name} case {i} target {t}: {b} < {reported}");
                // The SDP evidence is what proves it where it beats the slopes.
                let only_linear = {
                    let mut c = cert.clone();
                    for tp in &mut c.targets {
                        tp.proofs.retain(|p| matches!(p, TargetEvidence::Linear(_)));
                        tp.bound = f64::NEG_INFINITY;
                    }
                    certificate::check(&net, &c).unwrap()
                };
                let lin = only_linear.bounds.iter().find(|(u, _)| u == t).unwrap().1;
                if *b > lin + 1e-6 {
                    by_sdp += 1;
                }
            }
        }
    }
    assert!(by_sdp >= 3, "{by_sdp}");
}

/// A certificate for a case with an unstable neuron in the first hidden layer, robust or not.
fn sample_certificate() -> (Network, Certificate) {
    cases()
        .into_iter()
        .map(|(net, set, label)| {
            let targets = others(&net, label);
            let evidence = Evidence::crown(&net, &set, &targets).unwrap();
            let cert = Certificate::seal(&net, &set, None, label, "crown", &evidence).unwrap();
            (net, cert)
        })
        .find(|(_, c)| {
            c.layers.len() >= 2 && c.layers[0].lower.iter().zip(&c.layers[0].upper).any(|(l, u)| *l < 0.0 && *u > 0.0)
        })
        .unwrap()
}

fn rejected(net: &Network, cert: &Certificate) -> String {
    match certificate::check(net, cert) {
        Err(Error::Rejected(why)) => why,
        other => panic!("tampered certificate accepted: {other:?}"),
    }
}

#[test]
fn tampered_certificates_are_rejected() {
    let (net, cert) = sample_certificate();
    certificate::check(&net, &cert).unwrap();

    // The claimed bound raised.
    let mut c = cert.clone();
    c.targets[0].bound += 1e-6;
    assert!(rejected(&net, &c).contains("not re-proven"));

    // A claimed interval narrowed.
    let mut c = cert.clone();
    c.layers[0].upper[0] = c.layers[0].lower[0] + 0.5 * (c.layers[0].upper[0] - c.layers[0].lower[0]);
    assert!(rejected(&net, &c).contains("interval"));

    // A multiplier changed: explicit multipliers, one of them made large, lower the bound below
    // the claim.
    let mut c = cert.clone();
    let widths: Vec<usize> = net.layers()[..net.layers().len() - 1].iter().map(|l| l.output_size()).collect();
    let (lo, hi) = (&c.layers[0].lower, &c.layers[0].upper);
    let unstable = (0..lo.len()).find(|&n| lo[n] < 0.0 && hi[n] > 0.0).expect("an unstable neuron");
    let mut vectors: Vec<Vec<f64>> = widths.iter().map(|&w| vec![0.0; w]).collect();
    vectors[0][unstable] = 5.0;
    c.targets[0].proofs = vec![TargetEvidence::Linear(Multipliers::Vectors(vectors))];
    assert!(rejected(&net, &c).contains("not re-proven"));

    // Slopes of the wrong length are no evidence.
    let mut c = cert.clone();
    c.targets[0].proofs =
        vec![TargetEvidence::Linear(Multipliers::Slopes { relaxation: 0, lower: vec![vec![1.0; 1]] })];
    assert!(rejected(&net, &c).contains("not re-proven"));

    // eps raised.
    let mut c = cert.clone();
    c.input_set.eps *= 3.0;
    rejected(&net, &c);

    // The center moved.
    let mut c = cert.clone();
    c.input_set.center[0] = (c.input_set.center[0] + 0.3).min(1.0);
    rejected(&net, &c);

    // A weight of the model changed: the digest says so ...
    let mut layers = net.layers().to_vec();
    let last = layers.len() - 1;
    let target = cert.targets[0].target;
    let (w, mut b) = (layers[last].weight().to_owned(), layers[last].bias().to_vec());
    b[target] += 0.25;
    layers[last] = Layer::new(w, b, Activation::Identity);
    let other = Network::new(net.input_shape().to_vec(), layers).unwrap();
    assert!(rejected(&other, &cert).contains("made for the model"));
    // ... and with the digest forged, the recomputation does (the target's margin fell by 0.25).
    let mut c = cert.clone();
    c.model.digest = certificate::digest(&other);
    assert!(rejected(&other, &c).contains("not re-proven"));

    // A verdict the bounds do not support.
    let mut c = cert.clone();
    if c.verdict != Verdict::Robust {
        c.verdict = Verdict::Robust;
        assert!(rejected(&net, &c).contains("claims robust"));
    }

    // Another format version.
    let mut c = cert.clone();
    c.version = 2;
    assert!(rejected(&net, &c).contains("version"));

    // A label that is a target.
    let mut c = cert.clone();
    c.targets[0].target = c.label;
    rejected(&net, &c);

    // Malformed text is a format error, not a panic.
    assert!(matches!(Certificate::from_json("{\"format\": 1"), Err(Error::CertificateFormat(_))));
}

#[test]
fn counterexample_certificates_are_checked_by_a_sound_forward_pass() {
    let mut found = 0;
    for (i, (net, set, label)) in cases().into_iter().enumerate() {
        let report = certify(&net, &set, label, Some(&Crown), &CertifyOptions::default()).unwrap();
        if report.verdict != Verdict::NotRobust {
            continue;
        }
        let cert = nncert::certify::certificate(&net, &set, Some(i), Some(&Crown), &report).unwrap().unwrap();
        let checked = certificate::check(&net, &cert).unwrap();
        assert_eq!(checked.verdict, Verdict::NotRobust);
        assert!(checked.counterexample_margin.unwrap() < 0.0);
        found += 1;
        // Moved outside the ball, or to where the label wins, it is rejected.
        let mut c = cert.clone();
        let cx = c.counterexample.as_mut().unwrap();
        for (x, m) in cx.input.iter_mut().zip(set.center()) {
            *x = m + (*x - m) * 1.5;
        }
        rejected(&net, &c);
        let mut c = cert.clone();
        c.counterexample.as_mut().unwrap().input = set.center().to_vec();
        assert!(rejected(&net, &c).contains("does not certainly lose"));
    }
    assert!(found >= 2, "{found}");
}

/// Jia & Rinard's trap (as in tests/soundness.rs): relu(x + 2^52) - 2^52 rounds, so float
/// evaluations near x = 0.6 see the margin +0.2 where the real network's is x - 0.8 < 0. No
/// certificate may re-check as robust, and one claiming a positive bound is rejected.
#[test]
fn a_rounding_trap_cannot_be_certified() {
    let big = 2f64.powi(52);
    let hidden = Layer::from_rows(&[vec![1.0]], vec![big], Activation::Relu).unwrap();
    let out = Layer::from_rows(&[vec![1.0], vec![0.0]], vec![-big, 0.8], Activation::Identity).unwrap();
    let net = Network::new(vec![1], vec![hidden, out]).unwrap();
    assert!(net.margin(&[0.6], 0, 1).unwrap() > 0.19);
    for norm in [Norm::Linf, Norm::L2] {
        let set = InputSet::new(vec![0.6], 1e-3, norm, Some(Domain::uniform(1, 0.0, 1.0).unwrap())).unwrap();
        let cert =
            Certificate::seal(&net, &set, None, 0, "crown", &Evidence::crown(&net, &set, &[1]).unwrap()).unwrap();
        let checked = certificate::check(&net, &cert).unwrap();
        assert_ne!(checked.verdict, Verdict::Robust);
        assert!(checked.bounds[0].1 <= -0.2 + 1e-3, "{:?}", checked.bounds);
        let mut forged = cert.clone();
        forged.targets[0].bound = 0.1;
        forged.verdict = Verdict::Robust;
        rejected(&net, &forged);
        // The explicit multipliers that a float evaluation would "verify" with are no help.
        let mut forged = cert.clone();
        forged.targets[0].proofs = vec![TargetEvidence::Linear(Multipliers::Vectors(vec![vec![1.0]]))];
        forged.layers[0].multipliers = LayerMultipliers::All(Vec::new());
        let b = certificate::check(&net, &forged).unwrap().bounds[0].1;
        assert!(b <= -0.2 + 1e-3, "{b}");
    }
}

#[test]
fn certificates_of_the_bundled_digits_model_recheck() {
    let net = nncert::data::digits_model("digits-relu-adv").unwrap();
    let data = nncert::data::digits().unwrap();
    let mut robust = 0;
    for i in 0..6 {
        let x = data.images[i].clone();
        let set = InputSet::new(x, 0.03, Norm::Linf, Some(Domain::uniform(64, 0.0, 1.0).unwrap())).unwrap();
        let label = data.labels[i];
        for v in [Box::new(Crown) as Box<dyn Verifier>, Box::new(AlphaCrown::default())] {
            let report = certify(&net, &set, label, Some(v.as_ref()), &CertifyOptions::default()).unwrap();
            let Some(cert) = nncert::certify::certificate(&net, &set, Some(i), Some(v.as_ref()), &report).unwrap()
            else {
                assert_eq!(report.verdict, Verdict::Misclassified);
                continue;
            };
            let checked = certificate::check(&net, &cert).unwrap();
            // The certificate supports the report's verdict.
            assert_eq!(checked.verdict, report.verdict, "image {i} {}", v.name());
            robust += (checked.verdict == Verdict::Robust) as usize;
        }
    }
    assert!(robust >= 4, "{robust}");
}

/// The shared MNIST networks (skipped when ../shared/data is absent): CROWN, alpha-CROWN and LP
/// certificates of the first images re-check with the verdicts of the runs, on a 2-layer and a
/// 9-layer network (CROWN), both norms.
#[test]
fn certificates_of_the_shared_mnist_networks_recheck() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    let runs = [
        ("adv-mnist-mlp-2x100.json", Norm::Linf, 0.1, &["crown", "alpha-crown", "lp"][..]),
        ("lpd-mnist-mlp-2x100.json", Norm::L2, 1.0, &["crown", "alpha-crown", "lp"][..]),
        ("nor-mnist-mlp-9x100.json", Norm::Linf, 0.01, &["crown"][..]),
    ];
    for (model, norm, eps, methods) in runs {
        let net = nncert::io::load_network(dir.join("models").join(model)).unwrap();
        for i in 0..2 {
            let set =
                InputSet::new(images[i].clone(), eps, norm, Some(Domain::uniform(784, 0.0, 1.0).unwrap())).unwrap();
            for &name in methods {
                let v = nncert::verify::by_name(name).unwrap();
                let report = certify(&net, &set, labels[i], Some(v.as_ref()), &CertifyOptions::default()).unwrap();
                let Some(cert) = nncert::certify::certificate(&net, &set, Some(i), Some(v.as_ref()), &report).unwrap()
                else {
                    assert_eq!(report.verdict, Verdict::Misclassified);
                    continue;
                };
                let checked = certificate::check(&net, &cert).unwrap();
                assert_eq!(checked.verdict, report.verdict, "{model} image {i} {name}");
                for (t, b) in &checked.bounds {
                    let reported = report.lower_bounds[*t].unwrap();
                    assert!(*b >= reported - 1e-6 * (1.0 + reported.abs()), "{model} image {i} {name} target {t}");
                }
            }
        }
    }
}

/// BM-Full's certificate of an MNIST image (slow: one BM-Full run, ~30 s).
#[test]
#[ignore]
fn bm_full_certificate_of_an_mnist_image_rechecks() {
    let Some(dir) = common::shared_data() else { return };
    let (images, labels) = common::mnist(&dir);
    let net = nncert::io::load_network(dir.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let set = InputSet::new(images[0].clone(), 1.3, Norm::L2, Some(Domain::uniform(784, 0.0, 1.0).unwrap())).unwrap();
    let v = nncert::verify::by_name("bm-full").unwrap();
    let report = certify(&net, &set, labels[0], Some(v.as_ref()), &CertifyOptions::default()).unwrap();
    assert_eq!(report.verdict, Verdict::Robust);
    let cert = nncert::certify::certificate(&net, &set, Some(0), Some(v.as_ref()), &report).unwrap().unwrap();
    let checked = certificate::check(&net, &cert).unwrap();
    assert_eq!(checked.verdict, Verdict::Robust);
    // BM's SDP multipliers carry at least one target past what the slopes alone prove.
    let sdp = cert.targets.iter().filter(|t| t.proofs.iter().any(|p| matches!(p, TargetEvidence::Sdp(_)))).count();
    assert!(sdp >= 1, "{sdp}");
}

/// A tree with a leaf left out, or a branch turned to its other side, no longer covers X: the
/// claimed bound is not re-proven.
fn tampered_trees_are_rejected(net: &Network, cert: &Certificate, target: usize) {
    let k = cert.targets.iter().position(|u| u.target == target).unwrap();
    fn tree(c: &mut Certificate, k: usize) -> Option<&mut Vec<nncert::certificate::Leaf>> {
        c.targets[k].proofs.iter_mut().find_map(|p| match p {
            TargetEvidence::Tree(l) => Some(l),
            _ => None,
        })
    }
    let mut c = cert.clone();
    let leaves = tree(&mut c, k).unwrap();
    if leaves.len() < 2 {
        return;
    }
    leaves.pop();
    assert!(rejected(net, &c).contains("not re-proven"));
    let mut c = cert.clone();
    let leaf = &mut tree(&mut c, k).unwrap()[0];
    leaf.splits[0] = match leaf.splits[0] {
        nncert::certificate::Split::Relu { layer, neuron, active } => {
            nncert::certificate::Split::Relu { layer, neuron, active: !active }
        }
        nncert::certificate::Split::Input { dim, at, upper } => {
            nncert::certificate::Split::Input { dim, at, upper: !upper }
        }
    };
    assert!(rejected(net, &c).contains("not re-proven"));
}

/// Cases alpha-CROWN leaves open although every margin is positive (by `Exact`): the radius
/// grown until alpha-CROWN fails, then kept if the exact minima are all > 0.
fn hard_cases() -> Vec<(Network, InputSet, usize)> {
    let mut out = Vec::new();
    for seed in 0..60u64 {
        let n_in = 3 + seed as usize % 3;
        let sizes = if seed % 2 == 0 { vec![n_in, 10, 8, 3] } else { vec![n_in, 12, 3] };
        let net = common::random_network(1300 + seed, &sizes, Activation::Relu);
        let x: Vec<f64> = (0..n_in).map(|i| ((seed as usize * 5 + i * 7) % 10) as f64 / 10.0 + 0.05).collect();
        let label = net.predict(&x).unwrap();
        let norm = if seed % 3 == 0 { Norm::L2 } else { Norm::Linf };
        for eps in [0.04, 0.08, 0.12, 0.16, 0.24] {
            let set = InputSet::new(x.clone(), eps, norm, Some(Domain::uniform(n_in, 0.0, 1.0).unwrap())).unwrap();
            let targets = others(&net, label);
            let alpha = AlphaCrown::default().lower_bounds(&net, &set, label, &targets).unwrap();
            if alpha.bounds.iter().all(|b| b.1 > 0.0) {
                continue;
            }
            let exact = targets.iter().all(|&t| Exact::default().phi(&net, &set, label, t).unwrap().lower > 1e-3);
            if exact {
                out.push((net.clone(), set, label));
            }
            break;
        }
    }
    out
}

#[test]
fn bab_certificates_recheck_their_trees() {
    let (mut verified, mut rechecked, mut by_tree) = (0, 0, 0);
    let cases = hard_cases();
    assert!(cases.len() >= 5, "{}", cases.len());
    for (i, (net, set, label)) in cases.into_iter().enumerate() {
        for branching in [nncert::verify::bab::Branching::Relu, nncert::verify::bab::Branching::Input] {
            let v = nncert::verify::bab::Bab { timeout: 10.0, branching, ..Default::default() };
            let report = report_for(&net, &set, label, &v);
            let cert = nncert::certify::certificate(&net, &set, Some(i), Some(&v), &report).unwrap().unwrap();
            let checked = certificate::check(&net, &cert).unwrap();
            for (t, b) in &checked.bounds {
                let phi = Exact::default().phi(&net, &set, label, *t).unwrap();
                assert!(*b <= phi.upper + 1e-12, "case {i} target {t}: {b} > {}", phi.upper);
                if report.lower_bounds[*t].is_some_and(|r| r > 0.0) {
                    verified += 1;
                    rechecked += (*b > 0.0) as usize;
                    if *b <= 0.0 {
                        eprintln!(
                            "case {i} {branching:?} target {t}: reported {:?}, re-checked {b}",
                            report.lower_bounds[*t]
                        );
                    }
                    let tree = cert.targets.iter().find(|u| u.target == *t).unwrap();
                    if tree.proofs.iter().any(|p| matches!(p, TargetEvidence::Tree(_))) {
                        let mut c = cert.clone();
                        for tp in &mut c.targets {
                            tp.proofs.retain(|p| !matches!(p, TargetEvidence::Tree(_)));
                            tp.bound = f64::NEG_INFINITY;
                        }
                        c.verdict = Verdict::Unknown;
                        let flat = certificate::check(&net, &c).unwrap().bounds.iter().find(|u| u.0 == *t).unwrap().1;
                        by_tree += (*b > 0.0 && flat <= 0.0) as usize;
                        if *b > 0.0 && flat <= 0.0 {
                            tampered_trees_are_rejected(&net, &cert, *t);
                        }
                    }
                }
            }
        }
    }
    eprintln!("bab: {verified} targets verified, {rechecked} re-checked > 0, {by_tree} only through the tree");
    assert!(rechecked == verified, "{rechecked} of {verified}");
    assert!(by_tree >= 5, "{by_tree}");
}

/// CRC's certificates on the bundled curvature-regularized tanh model: the checker re-proves the
/// margin bounds from the curvature bound, a sound forward pass and a sound gradient, never
/// above sampled margins; a changed eta or point is rejected.
#[test]
fn crc_certificates_recheck_on_the_smooth_digits_model() {
    let net = nncert::data::digits_model("digits-tanh-crt").unwrap();
    let data = nncert::data::digits().unwrap();
    let v = nncert::verify::crc::Crc::default();
    let mut robust = 0;
    for i in 0..6 {
        let set =
            InputSet::new(data.images[i].clone(), 0.3, Norm::L2, Some(Domain::uniform(64, 0.0, 1.0).unwrap())).unwrap();
        let label = data.labels[i];
        let report = certify(&net, &set, label, Some(&v), &CertifyOptions { attack: None, all_targets: true }).unwrap();
        let Some(cert) = nncert::certify::certificate(&net, &set, Some(i), Some(&v), &report).unwrap() else {
            assert_eq!(report.verdict, Verdict::Misclassified);
            continue;
        };
        let checked = certificate::check(&net, &cert).unwrap();
        robust += (checked.verdict == Verdict::Robust) as usize;
        let mut rng = StdRng::seed_from_u64(i as u64);
        for (t, b) in &checked.bounds {
            let reported = report.lower_bounds[*t].unwrap();
            assert!(*b >= reported - 1e-9 * (1.0 + reported.abs()), "image {i} target {t}: {b} < {reported}");
            for _ in 0..100 {
                assert!(net.margin(&set.sample(&mut rng), label, *t).unwrap() >= *b);
            }
        }
        // Tampering with the dual point: eta below -m makes the dual bound void, so only the
        // Taylor bound remains, below the claim.
        let k = cert.targets.iter().position(|t| !t.proofs.is_empty()).unwrap();
        let mut c = cert.clone();
        if let TargetEvidence::Curvature { eta, .. } = &mut c.targets[k].proofs[0] {
            *eta = 0.0;
        }
        assert!(rejected(&net, &c).contains("not re-proven"));
        let mut c = cert.clone();
        if let TargetEvidence::Curvature { point, .. } = &mut c.targets[k].proofs[0] {
            point.iter_mut().for_each(|v| *v += 0.5);
        }
        assert!(rejected(&net, &c).contains("not re-proven"));
    }
    assert!(robust >= 2, "{robust}");
}

/// Every method that writes certificates (on ReLU networks: all but CRC, tested on its own):
/// the certificate re-checks, supports the report's verdict, and re-proves every bound the method
/// reported (up to the solvers' rounding).
#[test]
fn every_methods_certificate_rechecks_its_report() {
    for (i, (net, set, label)) in cases().into_iter().enumerate().filter(|(i, _)| i % 3 == 1).take(3) {
        for &name in nncert::verify::CERTIFICATE_METHODS.iter().filter(|n| **n != "crc") {
            let v: Box<dyn Verifier> = match name {
                "bab" => Box::new(nncert::verify::bab::Bab { timeout: 10.0, ..Default::default() }),
                _ => nncert::verify::by_name_all_targets(name).unwrap(),
            };
            let report = report_for(&net, &set, label, v.as_ref());
            let cert = nncert::certify::certificate(&net, &set, Some(i), Some(v.as_ref()), &report).unwrap().unwrap();
            let checked = certificate::check(&net, &cert).unwrap();
            if report.verdict == Verdict::Robust {
                assert_eq!(checked.verdict, Verdict::Robust, "{name} case {i}");
            }
            for (t, b) in &checked.bounds {
                let r = report.lower_bounds[*t].unwrap();
                if name != "bab" || r > 0.0 {
                    assert!(*b >= r - 1e-6 * (1.0 + r.abs()), "{name} case {i} target {t}: {b} < {r}");
                }
            }
        }
    }
}

/// Any multipliers give a valid bound: random vectors (any sign, any size) and random slopes as
/// evidence never re-prove a bound above the exact minimum or a sampled margin, on every case.
#[test]
fn random_multipliers_never_prove_too_much() {
    use rand::Rng;
    let mut rng = StdRng::seed_from_u64(7);
    let (mut compared, mut close) = (0, 0);
    for (i, (net, set, label)) in cases().into_iter().enumerate().take(12) {
        let targets = others(&net, label);
        let widths: Vec<usize> = net.layers()[..net.layers().len() - 1].iter().map(|l| l.output_size()).collect();
        let mut cert =
            Certificate::seal(&net, &set, None, label, "crown", &Evidence::crown(&net, &set, &targets).unwrap())
                .unwrap();
        for trial in 0..6 {
            let scale = [0.1, 1.0, 10.0][trial % 3];
            for t in &mut cert.targets {
                let vectors: Vec<Vec<f64>> = widths
                    .iter()
                    .map(|&w| (0..w).map(|_| (rng.random::<f64>() - 0.5) * 2.0 * scale).collect())
                    .collect();
                let slopes: Vec<Vec<f64>> =
                    widths.iter().map(|&w| (0..w).map(|_| rng.random::<f64>() * 1.5 - 0.25).collect()).collect();
                t.proofs = vec![
                    TargetEvidence::Linear(Multipliers::Vectors(vectors)),
                    TargetEvidence::Linear(Multipliers::Slopes { relaxation: 0, lower: slopes }),
                ];
                t.bound = f64::NEG_INFINITY;
            }
            cert.verdict = Verdict::Unknown;
            let checked = certificate::check(&net, &cert).unwrap();
            for (t, b) in &checked.bounds {
                let phi = Exact::default().phi(&net, &set, label, *t).unwrap();
                assert!(*b <= phi.upper + 1e-12, "case {i} target {t}: {b} > exact {}", phi.upper);
                compared += 1;
                // Not vacuous: many of these bounds come close to the minimum.
                close += (*b >= phi.upper - 0.25) as usize;
            }
        }
    }
    assert!(compared >= 100, "{compared}");
    assert!(close >= 20, "only {close} of {compared} bounds within 0.25 of the exact minimum");
}
