//! Residual networks (skip connections lowered to chains of block operators): every bound holds
//! against sampled and attacked points, the operator form bounds as its dense lowering does,
//! the carried neurons stay stable, and branch and bound agrees with the exact phi.

mod common;

use common::graph::resnet;
use nncert::bounds::linear::{self, Slope};
use nncert::bounds::{interval, optimized};
use nncert::io::onnx_from_bytes;
use nncert::verify::bab::{Bab, Outcome};
use nncert::verify::exact::Exact;
use nncert::verify::{AlphaCrown, Crown, FastLin, Ibp, Verifier};
use nncert::{Domain, InputSet, Layer, Network, Norm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Small ResNets: (seed, input, width, blocks, shortcut from the input).
fn nets() -> Vec<Network> {
    let cases: [common::graph::ResNetCase; 4] = [
        (11, [2, 6, 6], 3, &[(3, 1), (4, 2)], false),
        (12, [1, 6, 6], 2, &[(3, 2)], true),
        (13, [3, 4, 4], 2, &[(2, 1), (2, 1)], false),
        (14, [1, 5, 5], 3, &[(3, 1)], true),
    ];
    cases
        .into_iter()
        .map(|(seed, input, width, blocks, skip)| {
            onnx_from_bytes(&resnet(seed, input, width, blocks, 8, 4, skip).bytes()).expect("valid ResNet")
        })
        .collect()
}

/// The same network with every layer a dense matrix.
fn dense(net: &Network) -> Network {
    let layers =
        net.layers().iter().map(|l| Layer::new(l.weight().to_owned(), l.bias().to_vec(), l.activation())).collect();
    Network::new(net.input_shape().to_vec(), layers).unwrap()
}

fn sets(net: &Network, seed: u64, scale: f64) -> Vec<InputSet> {
    let n = net.input_size();
    let mut rng = StdRng::seed_from_u64(seed);
    let x: Vec<f64> = (0..n).map(|_| rng.random::<f64>()).collect();
    let unit = || Some(Domain::uniform(n, 0.0, 1.0).unwrap());
    vec![
        InputSet::new(x.clone(), 0.03 * scale, Norm::Linf, unit()).unwrap(),
        InputSet::new(x.clone(), 0.02 * scale, Norm::Linf, None).unwrap(),
        InputSet::new(x.clone(), 0.2 * scale, Norm::L2, unit()).unwrap(),
        InputSet::new(x, 0.1 * scale, Norm::L2, None).unwrap(),
    ]
}

/// Every method's margin bounds lie below the margins of sampled points and of PGD's best
/// point; alpha-CROWN is never below CROWN; every carried neuron is stable with its input's
/// bounds.
#[test]
fn residual_bounds_hold_against_sampling() {
    let mut rng = StdRng::seed_from_u64(3);
    let mut positive = 0;
    for (k, net) in nets().iter().enumerate() {
        for (s, set) in sets(net, k as u64, 1.0).iter().enumerate() {
            let label = net.predict(set.center()).unwrap();
            let targets: Vec<usize> = (0..4).filter(|&t| t != label).collect();
            let alpha = AlphaCrown::default();
            let methods: [&dyn Verifier; 4] = [&Ibp, &FastLin, &Crown, &alpha];
            let all: Vec<Vec<f64>> = methods
                .iter()
                .map(|v| v.lower_bounds(net, set, label, &targets).unwrap().bounds.iter().map(|p| p.1).collect())
                .collect();
            for (c, a) in all[2].iter().zip(&all[3]) {
                assert!(a >= &(c - 1e-9), "net {k} set {s}: alpha-CROWN {a} below CROWN {c}");
            }
            positive += all[3].iter().filter(|&&b| b > 0.0).count();
            let mut worst = vec![f64::INFINITY; targets.len()];
            for _ in 0..400 {
                let x = set.sample(&mut rng);
                for (w, &t) in worst.iter_mut().zip(&targets) {
                    *w = w.min(net.margin(&x, label, t).unwrap());
                }
            }
            let attacks = nncert::attack::pgd(net, set, label, &targets, &Default::default()).unwrap();
            for (b, a) in worst.iter_mut().zip(&attacks) {
                *b = b.min(a.margin);
            }
            for (m, bounds) in methods.iter().zip(&all) {
                for (b, w) in bounds.iter().zip(&worst) {
                    assert!(b <= w, "net {k} set {s} {}: bound {b} above an attained margin {w}", m.name());
                }
            }
            // Carried neurons: stable, with exactly their inputs' bounds under IBP.
            let pre = linear::all_layer_bounds(net, set, Slope::Adaptive);
            let ibp = interval::ibp(net, set);
            for j in 1..net.layers().len() {
                for (i, from) in net.layers()[j].pass_through() {
                    let below = &ibp.layers[j - 1];
                    let (lo, hi) = (below.lower[from].max(0.0), below.upper[from].max(0.0));
                    assert_eq!((ibp.layers[j].lower[i], ibp.layers[j].upper[i]), (lo, hi), "net {k} layer {j}");
                    assert!(pre.layers[j].lower[i] >= 0.0, "net {k} layer {j} neuron {i}: carried but unstable");
                }
            }
        }
    }
    // The sets are small enough that some targets are proven.
    assert!(positive >= 20, "only {positive} targets proven by alpha-CROWN");
}

/// The block operators bound as their dense lowering does: the same forward pass and gradient,
/// IBP never looser (the carried neurons get their inputs' bounds exactly, the dense form a
/// rounding allowance that leaves them unstable), and with the same pre-activation bounds the
/// same backward-pass margins (to 1e-9) and alpha-CROWN's.
#[test]
fn block_operators_bound_as_their_dense_lowering() {
    let (mut tighter, mut looser) = (0, 0);
    for (k, net) in nets().iter().enumerate() {
        let flat = dense(net);
        for (s, set) in sets(net, 10 + k as u64, 1.0).iter().enumerate() {
            let what = format!("net {k} set {s}");
            let x = set.center();
            let (a, b) = (net.forward(x).unwrap(), flat.forward(x).unwrap());
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-12 * (1.0 + q.abs()), "{what}: forward {p} vs {q}");
            }
            let label = net.predict(x).unwrap();
            let targets: Vec<usize> = (0..4).filter(|&t| t != label).collect();
            let (mo, go) = net.margin_gradient(x, label, targets[0]).unwrap();
            let (md, gd) = flat.margin_gradient(x, label, targets[0]).unwrap();
            assert!((mo - md).abs() <= 1e-12 * (1.0 + md.abs()));
            assert!(go.iter().zip(&gd).all(|(p, q)| (p - q).abs() <= 1e-12 * (1.0 + q.abs())), "{what}: gradient");
            for (p, q) in interval::ibp(net, set).layers.iter().zip(&interval::ibp(&flat, set).layers) {
                for i in 0..p.len() {
                    assert!(p.lower[i] >= q.lower[i] - 1e-12 * (1.0 + q.lower[i].abs()), "{what}: IBP lower");
                    assert!(p.upper[i] <= q.upper[i] + 1e-12 * (1.0 + q.upper[i].abs()), "{what}: IBP upper");
                }
            }
            // One set of pre-activation bounds: the backward passes agree.
            let pre = linear::all_layer_bounds(net, set, Slope::Adaptive);
            let lam = faer::Mat::from_fn(4, targets.len(), |i, c| {
                if i == label {
                    1.0
                } else if i == targets[c] {
                    -1.0
                } else {
                    0.0
                }
            });
            for slope in [Slope::Adaptive, Slope::FastLin] {
                let a = linear::spec_lower_bounds(net, set, &pre, lam.as_ref(), slope);
                let b = linear::spec_lower_bounds(&flat, set, &pre, lam.as_ref(), slope);
                for (p, q) in a.iter().zip(&b) {
                    assert!((p - q).abs() <= 1e-9 * (1.0 + q.abs()), "{what} {slope:?}: {p} vs {q}");
                }
            }
            let settings = optimized::SlopeSettings { iterations: 10, ..Default::default() };
            let a = optimized::optimized_margin_bounds(net, set, &pre, label, &targets, &settings).unwrap();
            let b = optimized::optimized_margin_bounds(&flat, set, &pre, label, &targets, &settings).unwrap();
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-7 * (1.0 + q.abs()), "{what} alpha-CROWN: {p} vs {q}");
            }
            // With each form's own intermediate bounds the margins differ where the dense form
            // relaxes a carried neuron (not monotone either way: counted, not asserted).
            for v in [&Crown as &dyn Verifier, &FastLin] {
                let a = v.lower_bounds(net, set, label, &targets).unwrap();
                let b = v.lower_bounds(&flat, set, label, &targets).unwrap();
                for ((_, p), (_, q)) in a.bounds.iter().zip(&b.bounds) {
                    tighter += usize::from(*p > q + 1e-9);
                    looser += usize::from(*p < q - 1e-9);
                }
            }
        }
    }
    eprintln!("own intermediate bounds: {tighter} margins tighter in the operator form, {looser} looser");
}

/// Branch and bound on residual networks: every verdict matches the sign of the exact phi
/// (`Exact`, where it can enumerate), every bound lies below it, every counterexample checks.
#[test]
fn bab_agrees_with_exact_phi_on_residual_networks() {
    let exact = Exact { max_unstable: 16, ..Exact::default() };
    let bab = Bab { timeout: 20.0, ..Bab::default() };
    let (mut compared, mut verified, mut falsified) = (0, 0, 0);
    for k in 0..12u64 {
        let blocks: &[(usize, usize)] = if k % 2 == 0 { &[(2, 1)] } else { &[(3, 2)] };
        let net = onnx_from_bytes(&resnet(100 + k, [1, 4, 4], 2, blocks, 6, 4, k % 3 == 0).bytes()).unwrap();
        // Random centers, and a center near a decision boundary (bisection between two points of
        // different classes), where the small sets hold counterexamples.
        let mut all = sets(&net, 20 + k, 1.0);
        all.extend(sets(&net, 20 + k, 3.0));
        let mut rng = StdRng::seed_from_u64(k);
        let n = net.input_size();
        let (mut a, mut b): (Vec<f64>, Vec<f64>) = ((0..n).map(|_| rng.random()).collect(), vec![]);
        for _ in 0..100 {
            b = (0..n).map(|_| rng.random()).collect();
            if net.predict(&b).unwrap() != net.predict(&a).unwrap() {
                break;
            }
        }
        if net.predict(&b).unwrap() != net.predict(&a).unwrap() {
            let class = net.predict(&a).unwrap();
            for _ in 0..40 {
                let mid: Vec<f64> = a.iter().zip(&b).map(|(p, q)| 0.5 * (p + q)).collect();
                if net.predict(&mid).unwrap() == class { a = mid } else { b = mid }
            }
            let unit = || Some(Domain::uniform(n, 0.0, 1.0).unwrap());
            all.push(InputSet::new(a.clone(), 0.01, Norm::Linf, unit()).unwrap());
            all.push(InputSet::new(a, 0.03, Norm::L2, None).unwrap());
        }
        for (s, set) in all.iter().enumerate() {
            let label = net.predict(set.center()).unwrap();
            for target in (0..4).filter(|&t| t != label) {
                let truth = match exact.phi(&net, set, label, target) {
                    Ok(r) if r.complete => r,
                    _ => continue,
                };
                compared += 1;
                let what = format!("net {k} set {s} target {target}");
                match bab.solve_margin(&net, set, label, target).unwrap().0 {
                    Outcome::Verified { bound } => {
                        verified += 1;
                        assert!(bound > 0.0 && bound <= truth.upper + 1e-9, "{what}: {bound} vs {truth:?}");
                    }
                    Outcome::Falsified { input } => {
                        falsified += 1;
                        assert!(set.contains(&input, 0.0), "{what}: counterexample outside the set");
                        assert!(net.margin(&input, label, target).unwrap() <= 0.0, "{what}: it holds there");
                        assert!(truth.lower <= 1e-9, "{what}: falsified with phi >= {}", truth.lower);
                    }
                    Outcome::Unknown { bound, reason } => {
                        assert!(truth.upper.abs() < 1e-6, "{what}: unknown ({reason:?}, {bound}), phi {truth:?}");
                    }
                }
            }
        }
    }
    eprintln!("{compared} compared: {verified} verified, {falsified} falsified");
    assert!(compared >= 100 && verified >= 20 && falsified >= 10, "{compared} / {verified} / {falsified}");
}

/// VNN-COMP 2021's cifar10_resnet benchmark (PyTorch exports of ResNet-2B and -4B with their
/// properties; `github:stanleybak/vnncomp2021`, benchmarks/cifar10_resnet, not shipped): the
/// folder named by `NNCERT_CIFAR10_RESNET` (skipped when unset). Every property's box centre (an
/// image the PyTorch model classifies correctly, clipped to [0, 1] before normalization) must
/// satisfy the property: the imported network predicts the property's label there.
#[test]
#[ignore = "needs the cifar10_resnet benchmark folder (NNCERT_CIFAR10_RESNET)"]
fn vnncomp_resnets_predict_their_labels_at_the_box_centres() {
    let Some(dir) = std::env::var_os("NNCERT_CIFAR10_RESNET").map(std::path::PathBuf::from) else {
        eprintln!("NNCERT_CIFAR10_RESNET is not set: skipped");
        return;
    };
    let csv = std::fs::read_to_string(dir.join("cifar10_resnet_instances.csv")).unwrap();
    let mut nets = std::collections::HashMap::new();
    let mut checked = 0;
    for line in csv.lines().filter(|l| !l.trim().is_empty()) {
        let parts: Vec<&str> = line.split(',').collect();
        let net =
            nets.entry(parts[0].to_string()).or_insert_with(|| nncert::io::load_network(dir.join(parts[0])).unwrap());
        let property = nncert::io::load_vnnlib(dir.join(parts[1])).unwrap();
        for region in &property.regions {
            let x: Vec<f64> = region.input_lo.iter().zip(&region.input_hi).map(|(l, h)| 0.5 * (l + h)).collect();
            let y = net.forward(&x).unwrap();
            assert!(!region.violated_by(&y), "{line}: the centre violates the property: {y:?}");
            checked += 1;
        }
    }
    assert_eq!(checked, 72);
}
