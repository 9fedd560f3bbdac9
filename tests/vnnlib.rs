//! VNN-LIB and .nnet readers: every construct, errors with line numbers, the property checker
//! against `certify` on the same box, and arbitrary input never panics.

mod common;

use nncert::Error;
use nncert::io::{nnet_from_str, vnnlib_from_str};
use nncert::verify::property::{PropertyMethod, PropertyResult, check_property};

fn line_of(e: Error) -> String {
    match e {
        Error::ModelFormat { detail, .. } => detail,
        other => panic!("expected a ModelFormat error, got {other:?}"),
    }
}

#[test]
fn parses_every_construct() {
    let text = "; a comment\n(declare-const X_0 Real)\n(declare-const X_1 Real)\n(declare-const Y_0 Real)\n\
                (declare-const Y_1 Real)\n(declare-const Y_2 Real)\n\
                (assert (>= X_0 -0.5))\n(assert (<= X_0 0.5)) ; trailing comment\n\
                (assert (and (<= 0.25 X_1) (>= 1e0 X_1)))\n\
                (assert (<= (+ Y_0 (* 2 Y_1) (- 3)) (- Y_2 0.5)))\n\
                (assert (or (and (> Y_0 Y_1) (< Y_2 1)) (and (>= (* -1 Y_2) (- Y_1)))))\n";
    let p = vnnlib_from_str(text).unwrap();
    assert_eq!((p.regions.len(), p.outputs), (1, 3));
    let r = &p.regions[0];
    assert_eq!((r.input_lo.clone(), r.input_hi.clone()), (vec![-0.5, 0.25], vec![0.5, 1.0]));
    // (Y0 + 2 Y1 - 3) - (Y2 - 0.5) <= 0, distributed over the two disjuncts of the or.
    assert_eq!(r.disjuncts.len(), 2);
    let first = &r.disjuncts[0][0];
    assert_eq!((first.coeffs.clone(), first.constant, first.strict), (vec![1.0, 2.0, -1.0], -2.5, false));
    // Y0 > Y1  ->  Y1 - Y0 < 0; Y2 < 1 -> Y2 - 1 < 0.
    assert_eq!((r.disjuncts[0][1].coeffs.clone(), r.disjuncts[0][1].strict), (vec![-1.0, 1.0, 0.0], true));
    assert_eq!((r.disjuncts[0][2].coeffs.clone(), r.disjuncts[0][2].constant), (vec![0.0, 0.0, 1.0], -1.0));
    // -Y2 >= -Y1  ->  -Y1 + Y2 <= 0.
    assert_eq!(r.disjuncts[1][1].coeffs, vec![0.0, -1.0, 1.0]);
    assert!(p.violated_by(&[0.0, 0.5], &[0.0, 2.0, 1.5]));
    assert!(!p.violated_by(&[0.0, 0.5], &[9.0, 0.0, 0.0]));
    // Outside every input box nothing is a counterexample.
    assert!(!p.violated_by(&[0.0, 2.0], &[0.0, 2.0, 1.5]));
}

#[test]
fn malformed_properties_name_their_line() {
    let head = "(declare-const X_0 Real)\n(declare-const Y_0 Real)\n";
    let cases = [
        (format!("{head}(assert (<= X_0 1))\n(assert (>= X_0 0)\n"), "line 4", "unclosed"),
        (format!("{head}(assert (<= X_0 1)))\n"), "line 3", "unbalanced"),
        (format!("{head}(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= Z_1 0))\n"), "line 5", "not a declared"),
        (
            format!("{head}(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= (* Y_0 Y_0) 0))\n"),
            "line 5",
            "not linear",
        ),
        (format!("{head}(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= Y_0 X_0))\n"), "line 5", "mixes"),
        (
            format!("{head}(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= (+ X_0 X_0 Y_0) 0))\n"),
            "line 5",
            "mixes",
        ),
        (format!("{head}(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (=> Y_0 0))\n"), "line 5", "unsupported"),
        (format!("{head}(assert (>= X_0 0))\n(assert (<= X_0 1))\n(assert (<= Y_0 0 1))\n"), "line 5", "two arguments"),
        (format!("{head}(assert (>= X_0 0))\n"), "line 1", "finite lower and upper"),
        (format!("{head}(declare-const X_0 Real)\n"), "line 3", "declared twice"),
        ("(declare-const X_0 Int)\n".to_string(), "line 1", "Real only"),
        ("(declare-const foo Real)\n".to_string(), "line 1", "X_i or Y_j"),
        (format!("{head}(assert (>= X_0 1))\n(assert (<= X_0 0))\n(assert (<= Y_0 0))\n"), "line 1", "empty range"),
    ];
    for (text, line, what) in cases {
        let detail = line_of(vnnlib_from_str(&text).unwrap_err());
        assert!(detail.contains(line) && detail.contains(what), "{detail:?} should name {line} and '{what}'");
    }
}

/// The bundled property file (digits test image 0, l_inf 0.03) gives the verdict `certify` gives
/// for the same box, and a radius where PGD breaks the image gives `sat` with a checked
/// counterexample inside the box.
#[test]
fn bundled_property_agrees_with_certify() {
    let net = nncert::io::load_model(concat!(env!("CARGO_MANIFEST_DIR"), "/data/models/digits-relu-adv.json")).unwrap();
    let prop =
        nncert::io::load_vnnlib(concat!(env!("CARGO_MANIFEST_DIR"), "/data/properties/digits-0-linf-0.03.vnnlib"))
            .unwrap();
    let (_, test) = nncert::data::digits_split().unwrap();
    let set = nncert::InputSet::new(
        test.images[0].clone(),
        0.03,
        nncert::Norm::Linf,
        Some(nncert::Domain::uniform(64, 0.0, 1.0).unwrap()),
    )
    .unwrap();
    let (lo, hi) = set.bounding_box();
    for i in 0..64 {
        let r = &prop.regions[0];
        assert!((lo[i] - r.input_lo[i]).abs() < 1e-15 && (hi[i] - r.input_hi[i]).abs() < 1e-15);
    }
    let report =
        nncert::certify::certify(&net, &set, test.labels[0], Some(&nncert::verify::Crown), &Default::default())
            .unwrap();
    let result = check_property(&net, &prop, None, PropertyMethod::Crown, 100).unwrap();
    assert_eq!(report.verdict, nncert::Verdict::Robust);
    assert_eq!(result, PropertyResult::Unsat);
    // Widen the box to eps 0.3: PGD breaks it; the property checker must find a counterexample.
    let wide = nncert::InputSet::new(
        test.images[0].clone(),
        0.3,
        nncert::Norm::Linf,
        Some(nncert::Domain::uniform(64, 0.0, 1.0).unwrap()),
    )
    .unwrap();
    let (lo, hi) = wide.bounding_box();
    let mut p = prop.clone();
    p.regions[0].input_lo = lo.clone();
    p.regions[0].input_hi = hi.clone();
    let report =
        nncert::certify::certify(&net, &wide, test.labels[0], Some(&nncert::verify::Crown), &Default::default())
            .unwrap();
    assert_eq!(report.verdict, nncert::Verdict::NotRobust);
    match check_property(&net, &p, None, PropertyMethod::Lp, 100).unwrap() {
        PropertyResult::Sat { input, output } => {
            assert!(input.iter().enumerate().all(|(i, v)| *v >= lo[i] && *v <= hi[i]));
            assert_eq!(net.forward(&input).unwrap(), output);
            assert!(p.violated_by(&input, &output));
            let text = PropertyResult::Sat { input, output }.to_vnncomp();
            assert!(text.starts_with("sat\n((X_0 ") && text.contains("(Y_9 "));
        }
        other => panic!("expected sat, got {other:?}"),
    }
}

/// The papers' adv-mnist-mlp-2x100 on its first test images as VNN-LIB robustness properties
/// (l_inf 0.1 ∩ [0,1]): the same verdicts as `certify` with CROWN on the same box.
#[test]
fn mnist_properties_match_certify() {
    let Some(dir) = common::shared_data() else { return };
    let net = nncert::io::load_model(dir.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let (images, labels) = common::mnist(&dir);
    let (mut unsat, mut sat) = (0, 0);
    for (x, &label) in images.iter().zip(&labels).take(12) {
        let set = nncert::InputSet::new(
            x.clone(),
            0.1,
            nncert::Norm::Linf,
            Some(nncert::Domain::uniform(784, 0.0, 1.0).unwrap()),
        )
        .unwrap();
        let (lo, hi) = set.bounding_box();
        let mut text = String::new();
        for i in 0..784 {
            text += &format!("(declare-const X_{i} Real)\n");
        }
        for j in 0..10 {
            text += &format!("(declare-const Y_{j} Real)\n");
        }
        for i in 0..784 {
            text += &format!("(assert (>= X_{i} {:e}))\n(assert (<= X_{i} {:e}))\n", lo[i], hi[i]);
        }
        text += "(assert (or\n";
        for j in (0..10).filter(|&j| j != label) {
            text += &format!("  (and (>= Y_{j} Y_{label}))\n");
        }
        text += "))\n";
        let prop = vnnlib_from_str(&text).unwrap();
        let report =
            nncert::certify::certify(&net, &set, label, Some(&nncert::verify::Crown), &Default::default()).unwrap();
        let result = check_property(&net, &prop, None, PropertyMethod::Crown, 100).unwrap();
        match (&report.verdict, &result) {
            (nncert::Verdict::Robust, PropertyResult::Unsat) => unsat += 1,
            (nncert::Verdict::NotRobust, PropertyResult::Sat { .. }) => sat += 1,
            (nncert::Verdict::Unknown, PropertyResult::Unknown)
            | (nncert::Verdict::Misclassified, PropertyResult::Sat { .. }) => {}
            (v, r) => panic!("certify says {v:?}, the property checker {r:?}"),
        }
    }
    eprintln!("12 MNIST properties: {unsat} unsat, {sat} sat");
    assert!(unsat > 0);
}

const NNET: &str = "// a 2-2-1 network\n// second comment\n2,2,1,2,\n2,2,1,\n0,\n-1,0,\n1,2,\n0.5,1,2,\n2,4,10,\n\
                    1.0,-1.0,\n0.5,2.0,\n0.1,\n-0.2,\n3.0,-1.0,\n0.25,\n";

#[test]
fn nnet_folds_its_normalization() {
    let m = nnet_from_str(NNET).unwrap();
    assert_eq!((m.domain.lo().to_vec(), m.domain.hi().to_vec()), (vec![-1.0, 0.0], vec![1.0, 2.0]));
    for x in [[0.3, 1.5], [-1.0, 0.0], [1.0, 2.0]] {
        let xn = [(x[0] - 0.5) / 2.0, (x[1] - 1.0) / 4.0];
        let h = [(xn[0] - xn[1] + 0.1f64).max(0.0), (0.5 * xn[0] + 2.0 * xn[1] - 0.2f64).max(0.0)];
        let y = (3.0 * h[0] - h[1] + 0.25) * 10.0 + 2.0;
        let got = m.network.forward(&x).unwrap()[0];
        assert!((got - y).abs() < 1e-12, "{x:?}: {got} vs {y}");
    }
    let cases = [
        (NNET.replace("\n2,2,1,\n", "\n3,2,1,\n"), "line 4"),
        (NNET.replace("1.0,-1.0,", "1.0,x,"), "line 10"),
        (NNET.replace("0.25,\n", ""), "end of file"),
        (format!("{NNET}7,\n"), "line 16"),
        (NNET.replace("2,4,10,", "2,0,10,"), "line 9"),
    ];
    for (text, what) in cases {
        let detail = line_of(nnet_from_str(&text).unwrap_err());
        assert!(detail.contains(what), "{detail:?} should mention {what}");
    }
}

#[test]
fn arbitrary_text_never_panics() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let alphabet: Vec<char> = "()XY_0123456789.-+*<=>; \n,aeflnorsdtcRI/".chars().collect();
    let mut rng = StdRng::seed_from_u64(3);
    let base =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/data/properties/digits-0-linf-0.03.vnnlib"))
            .unwrap();
    for k in 0..3000 {
        let text: String = if k % 2 == 0 {
            (0..rng.random_range(0..200)).map(|_| alphabet[rng.random_range(0..alphabet.len())]).collect()
        } else {
            let mut chars: Vec<char> = base.chars().collect();
            for _ in 0..rng.random_range(1..5) {
                let i = rng.random_range(0..chars.len());
                chars[i] = alphabet[rng.random_range(0..alphabet.len())];
            }
            chars.truncate(rng.random_range(0..chars.len()));
            chars.into_iter().collect()
        };
        let _ = vnnlib_from_str(&text);
        let _ = nnet_from_str(&text);
        let mut nnet: Vec<char> = NNET.chars().collect();
        let i = rng.random_range(0..nnet.len());
        nnet[i] = alphabet[rng.random_range(0..alphabet.len())];
        let _ = nnet_from_str(&nnet.into_iter().collect::<String>());
    }
}

/// Every bounding method of the property checker on random properties of small random ReLU
/// networks: `unsat` never where sampling finds a violation, a `sat` input always violates, and
/// the tighter methods prove at least what CROWN proves (BM-Full bounds each constraint as the
/// margin of the network whose last layer is that constraint).
#[test]
fn property_methods_are_sound_and_ordered_on_random_properties() {
    use nncert::io::vnnlib::{OutputConstraint, Property, Region};
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(31);
    let methods = [PropertyMethod::Crown, PropertyMethod::AlphaCrown, PropertyMethod::Lp, PropertyMethod::BmFull];
    let mut unsat = [0usize; 4];
    for seed in 0..30u64 {
        let net = common::random_network(500 + seed, &[4, 12, 10, 3], nncert::Activation::Relu);
        let lo: Vec<f64> = (0..4).map(|_| rng.random::<f64>()).collect();
        let hi: Vec<f64> = lo.iter().map(|l| l + 0.1 + 0.5 * rng.random::<f64>()).collect();
        // One constraint c^T y + d <= 0 with d near minus the sampled minimum of c^T f: some
        // properties hold by a small margin, some do not.
        let c: Vec<f64> = (0..3).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
        let values: Vec<f64> = (0..2000)
            .map(|_| {
                let x: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| l + rng.random::<f64>() * (h - l)).collect();
                net.forward(&x).unwrap().iter().zip(&c).map(|(y, c)| y * c).sum::<f64>()
            })
            .collect();
        let (min, max) = values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| (a.min(*v), b.max(*v)));
        let d = -min + (max - min) * (0.6 * rng.random::<f64>() - 0.05);
        let disjuncts = vec![vec![OutputConstraint { coeffs: c, constant: d, strict: false }]];
        let prop =
            Property { outputs: 3, regions: vec![Region { input_lo: lo.clone(), input_hi: hi.clone(), disjuncts }] };
        let violated = (0..20000).any(|_| {
            let x: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| l + rng.random::<f64>() * (h - l)).collect();
            prop.violated_by(&x, &net.forward(&x).unwrap())
        });
        for (k, &m) in methods.iter().enumerate() {
            match check_property(&net, &prop, None, m, 100).unwrap() {
                PropertyResult::Unsat => {
                    assert!(!violated, "seed {seed} {m:?}: unsat, but a sample violates");
                    unsat[k] += 1;
                }
                PropertyResult::Sat { input, output } => {
                    assert_eq!(net.forward(&input).unwrap(), output);
                    assert!(prop.violated_by(&input, &output), "seed {seed} {m:?}: sat input does not violate");
                }
                _ => {}
            }
        }
    }
    eprintln!("unsat counts (crown, alpha-crown, lp, bm-full): {unsat:?}");
    assert!(unsat[0] >= 3, "too few proven to compare: {unsat:?}");
    // Measured: [15, 17, 17, 19] (CROWN, alpha-CROWN, LP, BM-Full).
    assert!(unsat[1] >= unsat[0] && unsat[2] >= unsat[0] && unsat[3] >= unsat[2], "{unsat:?}");
    assert!(unsat[3] > unsat[0], "BM-Full proves nothing CROWN does not: {unsat:?}");
}
