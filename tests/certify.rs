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

/// A scratch file name for this test (removed first).
fn scratch(name: &str) -> std::path::PathBuf {
    let p = std::env::temp_dir().join(format!("nncert-{}-{name}", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// 30 bundled digits test images (a few misclassified or attackable: every verdict occurs), CROWN.
fn digits_run() -> (nncert::Network, Vec<(usize, Vec<f64>, usize)>) {
    let net = nncert::data::digits_model("digits-relu-adv").unwrap();
    let (_, test) = nncert::data::digits_split().unwrap();
    let inputs = (0..30).map(|i| (i, test.images[i].clone(), test.labels[i])).collect();
    (net, inputs)
}

fn digits_set(x: &[f64]) -> nncert::Result<InputSet> {
    InputSet::new(x.to_vec(), 0.1, Norm::Linf, Some(Domain::uniform(x.len(), 0.0, 1.0)?))
}

fn header(shard: nncert::certify::shard::Shard) -> nncert::certify::shard::RunHeader {
    nncert::certify::shard::RunHeader {
        model: "digits-relu-adv".into(),
        method: "crown".into(),
        norm: Norm::Linf,
        eps: 0.1,
        domain: Some([0.0, 1.0]),
        shard,
    }
}

/// An image's answer: index, verdict, lower and upper bounds.
type Answer = (usize, Verdict, Vec<Option<f64>>, Vec<Option<f64>>);

/// What must agree between a sharded and an unsharded run: everything but the clock.
fn answers(doc: &[nncert::certify::ImageEntry]) -> Vec<Answer> {
    doc.iter().map(|e| (e.index, e.verdict, e.lower_bounds.clone(), e.upper_bounds.clone())).collect()
}

#[test]
fn sharded_runs_merge_into_the_unsharded_run() {
    use nncert::certify::ImageEntry;
    use nncert::certify::shard::{Shard, merge, run_lines};
    let (net, inputs) = digits_run();
    let plain: Vec<(Vec<f64>, usize)> = inputs.iter().map(|(_, x, y)| (x.clone(), *y)).collect();
    let opts = CertifyOptions::default();
    let reports = certify_many(&net, &plain, digits_set, Some(&Crown), &opts, None).unwrap();
    let whole: Vec<ImageEntry> = reports.iter().enumerate().map(|(i, r)| ImageEntry::new(i, r)).collect();
    let s = Summary::of(&reports);
    assert!(s.robust > 0 && s.not_robust + s.unknown > 0, "{s:?}");
    for n in [1, 3, 4] {
        let mut files = Vec::new();
        for k in 0..n {
            let shard = Shard { index: k, count: n };
            let path = scratch(&format!("merge-{n}-{k}.jsonl"));
            let mine = shard.take(&inputs);
            let got = run_lines(&path, &header(shard), &net, &mine, digits_set, Some(&Crown), &opts, None).unwrap();
            assert_eq!(got.len(), mine.len(), "shard {k} of {n}");
            files.push(path);
        }
        let doc = merge(&files, Some(30)).unwrap();
        assert_eq!(answers(&doc.images), answers(&whole), "{n} shards");
        let m = &doc.summary;
        assert_eq!(
            (m.images, m.robust, m.not_robust, m.unknown, m.misclassified),
            (30, s.robust, s.not_robust, s.unknown, s.misclassified)
        );
        assert_eq!((doc.method.as_str(), doc.eps), ("crown", 0.1));
        // A shard left out, or the run's image count not reached, is an error, not a smaller report.
        if n > 1 {
            let err = merge(&files[1..], None).unwrap_err().to_string();
            assert!(err.contains("missing"), "{err}");
        }
        assert!(merge(&files, Some(31)).is_err());
        for f in files {
            std::fs::remove_file(f).unwrap();
        }
    }
}

#[test]
fn a_killed_shard_resumes_without_duplicates_or_losses() {
    use nncert::certify::shard::{Shard, read_lines, run_lines};
    let (net, inputs) = digits_run();
    let opts = CertifyOptions::default();
    let shard = Shard { index: 1, count: 2 };
    let mine = shard.take(&inputs);
    let path = scratch("killed.jsonl");
    let first = run_lines(&path, &header(shard), &net, &mine, digits_set, Some(&Crown), &opts, None).unwrap();
    // Killed while writing its fifth image: the header, four whole lines and half of the fifth.
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + mine.len());
    let cut = format!("{}\n{}", lines[..5].join("\n"), &lines[5][..lines[5].len() / 2]);
    std::fs::write(&path, cut).unwrap();
    let (_, kept) = read_lines(&path).unwrap();
    assert_eq!(kept.len(), 4);
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let count = |_: usize, _: &nncert::certify::ImageReport| {
        runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    };
    let again = run_lines(&path, &header(shard), &net, &mine, digits_set, Some(&Crown), &opts, Some(&count)).unwrap();
    assert_eq!(runs.into_inner(), mine.len() - 4, "only the images not in the file run again");
    assert_eq!(answers(&again), answers(&first));
    let (_, on_disk) = read_lines(&path).unwrap();
    let mut indices: Vec<usize> = on_disk.iter().map(|e| e.index).collect();
    indices.sort_unstable();
    let want: Vec<usize> = mine.iter().map(|(i, _, _)| *i).collect();
    assert_eq!(indices, want, "each image once, none lost");
    // A third run has nothing to do.
    let third = run_lines(&path, &header(shard), &net, &mine, digits_set, Some(&Crown), &opts, None).unwrap();
    assert_eq!(answers(&third), answers(&first));
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1 + mine.len());
    // The file of another run (here: another radius) is refused, and left as it was.
    let other = nncert::certify::shard::RunHeader { eps: 0.2, ..header(shard) };
    let err = run_lines(&path, &other, &net, &mine, digits_set, Some(&Crown), &opts, None).unwrap_err();
    assert!(err.to_string().contains("another run"), "{err}");
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1 + mine.len());
    // Killed while writing its header line: the rerun starts the file afresh.
    std::fs::write(&path, "{\"run\":{\"mod").unwrap();
    let fresh = run_lines(&path, &header(shard), &net, &mine[..2], digits_set, Some(&Crown), &opts, None).unwrap();
    assert_eq!(answers(&fresh), answers(&first[..2]));
    assert_eq!(read_lines(&path).unwrap().1.len(), 2);
    run_lines(&path, &header(shard), &net, &mine, digits_set, Some(&Crown), &opts, None).unwrap();
    // A malformed line in the middle is an error naming the line.
    let text = std::fs::read_to_string(&path).unwrap().replacen("\"verdict\"", "\"verdikt\"", 1);
    std::fs::write(&path, text).unwrap();
    let err = read_lines(&path).unwrap_err().to_string();
    assert!(err.contains("line 2"), "{err}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn malformed_shard_values_are_clear_errors() {
    use nncert::certify::shard::Shard;
    let none = |_: &str| None;
    assert_eq!(Shard::parse("2/5", none).unwrap(), Shard { index: 2, count: 5 });
    assert_eq!(Shard::parse(" 0 / 1 ", none).unwrap(), Shard::ALL);
    for bad in ["", "3", "a/b", "2/2", "0/0", "-1/2", "1/-2", "1.5/3", "1/2/3", "auto", "auto/3"] {
        let err = Shard::parse(bad, none).expect_err(bad).to_string();
        assert!(!err.is_empty() && (err.contains("shard") || err.contains("SLURM")), "{bad}: {err}");
    }
    // Kubernetes gives the index only; Slurm the index, the first index and the count.
    let k8s = |k: &str| (k == "JOB_COMPLETION_INDEX").then(|| "3".to_string());
    assert_eq!(Shard::parse("auto/4", k8s).unwrap(), Shard { index: 3, count: 4 });
    assert!(Shard::parse("auto", k8s).unwrap_err().to_string().contains("auto/N"));
    assert!(Shard::parse("auto/3", k8s).is_err(), "index 3 of 3");
    let slurm = |k: &str| match k {
        "SLURM_ARRAY_TASK_ID" => Some("0".to_string()),
        "SLURM_ARRAY_TASK_MIN" => Some("1".to_string()),
        "SLURM_ARRAY_TASK_COUNT" => Some("4".to_string()),
        _ => None,
    };
    assert!(Shard::parse("auto", slurm).unwrap_err().to_string().contains("below"));
    let shard = Shard { index: 2, count: 3 };
    assert_eq!(shard.take(&(0..10).collect::<Vec<_>>()), vec![2, 5, 8]);
    assert_eq!(Shard { index: 4, count: 5 }.take(&[1, 2, 3]), Vec::<i32>::new());
}
