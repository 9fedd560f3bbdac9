//! The certify driver: verdicts, counterexamples, errors for bad input, the JSON document.

mod common;

use nncert::attack::PgdSettings;
use nncert::certify::{CertifyOptions, RunReport, Summary, certify, certify_many};
use nncert::verify::{Crown, Ibp, Verifier};
use nncert::{Activation, Domain, Error, InputSet, Norm, Verdict};
use rand::SeedableRng;
use rand::rngs::StdRng;

#[test]
fn verdicts_are_consistent_with_ground_truth() {
    let mut seen = [0usize; 3];
    for seed in 0..40u64 {
        let net = common::random_network(seed, &[4, 10, 8, 3], Activation::Relu);
        let x = vec![0.3, 0.6, 0.5, 0.8];
        let label = net.predict(&x).unwrap();
        for eps in [0.01, 0.1, 0.5] {
            let set = InputSet::new(x.clone(), eps, Norm::Linf, Some(Domain::uniform(4, 0.0, 1.0).unwrap())).unwrap();
            let r = certify(&net, &set, label, Some(&Crown), &CertifyOptions::default()).unwrap();
            assert_eq!(r.predicted, label);
            match r.verdict {
                Verdict::Robust => {
                    seen[0] += 1;
                    // No sampled point of X changes the class.
                    let mut rng = StdRng::seed_from_u64(seed);
                    for _ in 0..500 {
                        assert_eq!(net.predict(&set.sample(&mut rng)).unwrap(), label);
                    }
                    assert!(r.counterexample.is_none());
                }
                Verdict::NotRobust => {
                    seen[1] += 1;
                    let cx = r.counterexample.as_ref().unwrap();
                    assert!(set.contains(&cx.input, 0.0), "counterexample outside X");
                    let m = net.margin(&cx.input, label, cx.target).unwrap();
                    assert_eq!(m, cx.margin);
                    assert!(m < 0.0);
                    assert_ne!(net.predict(&cx.input).unwrap(), label);
                }
                Verdict::Unknown => seen[2] += 1,
                Verdict::Misclassified => panic!("center is classified as its label"),
            }
            // Lower bounds never exceed the attack's upper bounds.
            for c in 0..3 {
                if let (Some(lb), Some(ub)) = (r.lower_bounds[c], r.upper_bounds[c]) {
                    assert!(lb <= ub + 1e-9);
                }
            }
        }
    }
    assert!(seen.iter().all(|&k| k > 0), "every verdict should occur in this corpus: {seen:?}");
}

#[test]
fn misclassified_and_zero_radius() {
    let net = common::random_network(5, &[3, 6, 3], Activation::Relu);
    let x = vec![0.5, 0.5, 0.5];
    let label = net.predict(&x).unwrap();
    let wrong = (label + 1) % 3;
    let set = InputSet::new(x.clone(), 0.1, Norm::L2, None).unwrap();
    let r = certify(&net, &set, wrong, Some(&Crown), &CertifyOptions::default()).unwrap();
    assert_eq!(r.verdict, Verdict::Misclassified);
    assert!(r.lower_bounds.iter().all(Option::is_none));
    let point = InputSet::new(x.clone(), 0.0, Norm::L2, None).unwrap();
    let r = certify(&net, &point, label, Some(&Ibp), &CertifyOptions::default()).unwrap();
    assert_eq!(r.verdict, Verdict::Robust);
    for c in (0..3).filter(|&c| c != label) {
        let m = net.margin(&x, label, c).unwrap();
        assert!((r.lower_bounds[c].unwrap() - m).abs() < 1e-12);
        assert!((r.upper_bounds[c].unwrap() - m).abs() < 1e-12);
    }
}

#[test]
fn attack_only_and_all_targets() {
    let net = common::random_network(11, &[2, 8, 4], Activation::Relu);
    let x = vec![0.5, 0.5];
    let label = net.predict(&x).unwrap();
    let set = InputSet::new(x, 3.0, Norm::L2, None).unwrap();
    let attack_only = certify(&net, &set, label, None, &CertifyOptions::default()).unwrap();
    assert_ne!(attack_only.verdict, Verdict::Robust);
    assert!(attack_only.lower_bounds.iter().all(Option::is_none));
    let all = CertifyOptions { all_targets: true, ..Default::default() };
    let r = certify(&net, &set, label, Some(&Crown), &all).unwrap();
    for c in (0..4).filter(|&c| c != label) {
        assert!(r.lower_bounds[c].is_some() && r.upper_bounds[c].is_some());
    }
    let no_attack = CertifyOptions { attack: None, all_targets: false };
    let r = certify(&net, &set, label, Some(&Crown), &no_attack).unwrap();
    assert!(r.upper_bounds.iter().all(Option::is_none));
    assert_ne!(r.verdict, Verdict::NotRobust);
}

#[test]
fn bad_input_is_a_typed_error() {
    let net = common::random_network(2, &[3, 5, 4], Activation::Relu);
    let set = InputSet::new(vec![0.1, 0.2, 0.3], 0.1, Norm::Linf, None).unwrap();
    let opts = CertifyOptions::default();
    assert!(matches!(
        certify(&net, &set, 4, Some(&Crown), &opts),
        Err(Error::LabelOutOfRange { label: 4, classes: 4 })
    ));
    let short = InputSet::new(vec![0.1, 0.2], 0.1, Norm::Linf, None).unwrap();
    assert!(matches!(certify(&net, &short, 0, Some(&Crown), &opts), Err(Error::InputSize { expected: 3, got: 2 })));
    assert!(matches!(Crown.lower_bounds(&net, &short, 0, &[1]), Err(Error::InputSize { .. })));
    assert!(matches!(Crown.lower_bounds(&net, &set, 0, &[7]), Err(Error::LabelOutOfRange { .. })));
    assert!(matches!(InputSet::new(vec![0.1], -1.0, Norm::L2, None), Err(Error::InvalidRadius(_))));
    assert!(matches!(InputSet::new(vec![f64::NAN], 0.1, Norm::L2, None), Err(Error::NonFiniteInput { .. })));
    let bad_pgd =
        CertifyOptions { attack: Some(PgdSettings { restarts: 0, ..Default::default() }), all_targets: false };
    let label = net.predict(set.center()).unwrap();
    assert!(matches!(certify(&net, &set, label, None, &bad_pgd), Err(Error::InvalidArgument(_))));
    assert!(nncert::verify::by_name("milp").is_err());
}

#[test]
fn dataset_runs_keep_order_and_serialize() {
    let net = common::random_network(8, &[3, 6, 3], Activation::Relu);
    let inputs: Vec<(Vec<f64>, usize)> = (0..12)
        .map(|i| {
            let x = vec![i as f64 / 12.0, 0.5, 1.0 - i as f64 / 12.0];
            let y = if i % 4 == 0 { (net.predict(&x).unwrap() + 1) % 3 } else { net.predict(&x).unwrap() };
            (x, y)
        })
        .collect();
    let make = |x: &[f64]| InputSet::new(x.to_vec(), 0.05, Norm::Linf, Some(Domain::uniform(3, 0.0, 1.0)?));
    let reports = certify_many(&net, &inputs, make, Some(&Crown), &CertifyOptions::default(), None).unwrap();
    assert_eq!(reports.len(), 12);
    for (r, (_, y)) in reports.iter().zip(&inputs) {
        assert_eq!(r.label, *y);
    }
    let s = Summary::of(&reports);
    assert_eq!(s.misclassified, 3);
    assert_eq!(s.robust + s.not_robust + s.unknown + s.misclassified, 12);
    let idx: Vec<usize> = (0..12).collect();
    let doc = RunReport::new("m.json".into(), "crown".into(), Norm::Linf, 0.05, Some([0.0, 1.0]), &idx, &reports);
    let v: serde_json::Value = serde_json::to_value(&doc).unwrap();
    assert_eq!(v["norm"], "linf");
    assert_eq!(v["domain"], serde_json::json!([0.0, 1.0]));
    assert_eq!(v["summary"]["misclassified"], 3);
    assert_eq!(v["images"][0]["verdict"], "misclassified");
    assert!(v["images"][1]["lower_bounds"].as_array().unwrap().iter().any(|b| b.is_null()));
    for key in ["model", "method", "eps", "images", "summary"] {
        assert!(v.get(key).is_some(), "{key}");
    }
    for key in ["images", "robust", "not_robust", "unknown", "misclassified", "seconds_per_image"] {
        assert!(v["summary"].get(key).is_some(), "{key}");
    }
    for key in ["index", "label", "predicted", "verdict", "lower_bounds", "upper_bounds", "seconds"] {
        assert!(v["images"][0].get(key).is_some(), "{key}");
    }
}
