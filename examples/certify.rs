//! Command-line certification: run an attack and a verifier over a set of images.
//!
//! ```text
//! cargo run --release --example certify                     # bundled digits model and test images
//! cargo run --release --example certify -- --model ../shared/data/models/adv-mnist-mlp-2x100.json \
//!     --images ../shared/data/mnist/t10k-first1100-images-idx3-ubyte \
//!     --labels ../shared/data/mnist/t10k-first1100-labels-idx1-ubyte \
//!     --norm linf --eps 0.1 --method crown --count 100 --only-correct --json out.json
//! ```
//!
//! Flags (stable names): --model --images --labels --norm --eps --domain --method --skip --count
//! --only-correct --all-targets --threads --json, plus --pgd-steps --pgd-restarts --no-attack.
//! Sharded runs (docs/cluster.md): --shard K/N (or auto from Slurm / Kubernetes) with --lines FILE
//! (one JSON line per finished image; a rerun resumes), then --merge FILE... --json OUT.
//! --certificates DIR writes one certificate per image (every method but exact, and pgd's
//! counterexamples), checked by the `check` example.
//! Methods: ibp, fastlin, crown, alpha-crown, lp, lp-full, exact (tiny ReLU nets), sdp, bm, bm-full, bm-full-lp, crc (l2, smooth activations),
//! bab (complete branch and bound; --timeout per image, --branching), pgd.
//! The JSON output is documented in docs/formats.md.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use clap::Parser;
use nncert::attack::PgdSettings;
use nncert::certify::shard::{RunHeader, Shard, merge, run_lines};
use nncert::certify::{CertifyOptions, ImageEntry, ImageReport, RunReport, Summary, certify_many};
use nncert::verify::bm::Bm;
use nncert::{Domain, InputSet, Network, Norm, Verdict};

const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/models/digits-relu-adv.json");

#[derive(Parser, Debug)]
#[command(about = "Certify the robustness of a network on a set of images")]
struct Args {
    /// Model file: the JSON model format, or ONNX (by the .onnx extension). Default: the bundled digits ReLU model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// IDX images (optionally .gz). Default: the bundled digits test split.
    #[arg(long, requires = "labels")]
    images: Option<PathBuf>,
    /// IDX labels (optionally .gz).
    #[arg(long, requires = "images")]
    labels: Option<PathBuf>,
    /// l2 or linf.
    #[arg(long, default_value = "linf")]
    norm: String,
    /// Radius of the ball (>= 0; 0 just classifies).
    #[arg(long, default_value_t = 0.1, allow_negative_numbers = true)]
    eps: f64,
    /// Valid input box "LO,HI", or "none".
    #[arg(long, default_value = "0,1", allow_hyphen_values = true)]
    domain: String,
    /// ibp, fastlin, crown, alpha-crown, lp, lp-full, exact, sdp, bm, bm-full, bm-full-lp, crc, or pgd (attack only).
    #[arg(long, default_value = "crown")]
    method: String,
    /// First image index.
    #[arg(long, default_value_t = 0)]
    skip: usize,
    /// Number of images (default: all from --skip on).
    #[arg(long)]
    count: Option<usize>,
    /// Count only correctly classified images (the papers' protocol).
    #[arg(long)]
    only_correct: bool,
    /// Compute every target's lower bound even when the verdict is already known.
    #[arg(long)]
    all_targets: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// PGD steps per restart.
    #[arg(long, default_value_t = 100)]
    pgd_steps: usize,
    /// PGD restarts (the first starts at the image).
    #[arg(long, default_value_t = 3)]
    pgd_restarts: usize,
    /// Do not run PGD before the verifier.
    #[arg(long)]
    no_attack: bool,
    /// L-BFGS iterations per target for bm and bm-full (their budget; default 8400). More proves
    /// more targets and costs time only on the targets not proven.
    #[arg(long)]
    bm_iterations: Option<usize>,
    /// Exponent of bm's and bm-full's input-constraint scaling in [0, 2] (default: 0.5 for l_inf,
    /// 0 for l2; see `Bm::input_scaling`). It changes how fast they converge, never soundness.
    #[arg(long)]
    bm_input_scaling: Option<f64>,
    /// bm, bm-full and bm-full-lp: extra solves from other random starts for a target that ends
    /// just below zero (`Bm::restarts`; default 2; verdict mode only).
    #[arg(long)]
    bm_restarts: Option<usize>,
    /// bm, bm-full and bm-full-lp: the budget of a target still unproven after --bm-iterations
    /// that the relaxation may still prove (`Bm::near_miss_iterations`; default 25200; verdict
    /// mode only; at most --bm-iterations turns it off).
    #[arg(long)]
    bm_near_miss_iterations: Option<usize>,
    /// bm-full and bm-full-lp only: first tighten the pre-activation bounds of this many of the last hidden
    /// layer's unstable neurons with BM-r itself (`bm_bounds::Tightened`; default 0, as in the paper).
    #[arg(long)]
    bm_tighten: Option<usize>,
    /// bm, bm-full and bm-full-lp: add the input-box products (RLT cuts of the input box with the
    /// first hidden layer's unstable neurons, `Bm::products`) to the relaxation, in verdict mode
    /// only for the targets the plain relaxation cannot prove. Experimental: a tighter relaxation
    /// for l_inf whose multipliers converge slowly at MNIST scale (with --bm-near-miss-iterations
    /// 67200 and --bm-time-limit 400 it proves a target the plain relaxation cannot, in ~300 s).
    #[arg(long)]
    bm_products: bool,
    /// bm, bm-full and bm-full-lp: wall-clock cap per target and solve in seconds (`Bm::time_limit`;
    /// default 60). A cap only: the iteration budgets decide unless it is reached.
    #[arg(long, allow_negative_numbers = true)]
    bm_time_limit: Option<f64>,
    /// bab only: wall-clock limit per image in seconds (default 300); an image still open then is
    /// "unknown".
    #[arg(long, allow_negative_numbers = true)]
    timeout: Option<f64>,
    /// bab only: what to split: auto (input splitting for <= 10 inputs with l_inf, else ReLU
    /// splitting), relu or input.
    #[arg(long)]
    branching: Option<String>,
    /// Run only shard K of N (0 <= K < N): the selected images at positions K, K + N, ... `auto`
    /// takes K and N from a Slurm job array (SLURM_ARRAY_TASK_ID, _MIN, _COUNT); `auto/N` takes K
    /// from Slurm or from a Kubernetes indexed Job (JOB_COMPLETION_INDEX).
    #[arg(long)]
    shard: Option<String>,
    /// Append one JSON line per finished image to this file (a header line first); a rerun with
    /// the same file skips the images already in it.
    #[arg(long)]
    lines: Option<PathBuf>,
    /// Join the --lines files of a sharded run (all N shards) into one report: prints the summary
    /// and writes --json; runs nothing.
    #[arg(long, num_args = 1.., conflicts_with_all = ["shard", "lines"])]
    merge: Option<Vec<PathBuf>>,
    /// Write a certificate per image to DIR/<image index>.json (docs/formats.md): the bounds'
    /// evidence (every method but exact) or the counterexample. Check one
    /// with `cargo run --release --example check -- --model MODEL --certificate FILE`.
    #[arg(long, value_name = "DIR")]
    certificates: Option<PathBuf>,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t.max(1)).build_global()?;
    }
    if let Some(files) = &args.merge {
        let doc = merge(files, None)?;
        print_report(&doc);
        if let Some(path) = &args.json {
            std::fs::write(path, serde_json::to_string_pretty(&doc)?)
                .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        }
        return Ok(());
    }
    let shard = args.shard.as_deref().map(|s| Shard::parse(s, |k| std::env::var(k).ok())).transpose()?;
    let model_path = args.model.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL));
    let net = nncert::io::load_network(&model_path)?;
    let norm: Norm = args.norm.parse()?;
    if !args.eps.is_finite() || args.eps < 0.0 {
        return Err(Box::new(nncert::Error::InvalidRadius(args.eps)));
    }
    let domain = parse_domain(&args.domain)?;
    if let Some(t) = args.bm_time_limit
        && !(t.is_finite() && t > 0.0)
    {
        return Err(format!("--bm-time-limit must be > 0, got {t}").into());
    }
    if args.bm_iterations == Some(0) {
        return Err("--bm-iterations must be > 0".into());
    }
    if args.bm_tighten.is_some() && !matches!(args.method.as_str(), "bm-full" | "bm-full-lp") {
        return Err("--bm-tighten applies to --method bm-full or bm-full-lp only".into());
    }
    let bm_flags = args.bm_iterations.is_some()
        || args.bm_input_scaling.is_some()
        || args.bm_tighten.is_some()
        || args.bm_restarts.is_some()
        || args.bm_near_miss_iterations.is_some()
        || args.bm_time_limit.is_some()
        || args.bm_products;
    let verifier: Option<Box<dyn nncert::Verifier>> = match args.method.as_str() {
        name @ ("bm" | "bm-full" | "bm-full-lp") if bm_flags => {
            let base = match name {
                "bm" => Bm::default(),
                "bm-full" => Bm::full(),
                _ => Bm::full_lp(),
            };
            let bm = Bm {
                max_iterations: args.bm_iterations.unwrap_or(base.max_iterations),
                input_scaling: args.bm_input_scaling.or(base.input_scaling),
                restarts: args.bm_restarts.unwrap_or(base.restarts),
                near_miss_iterations: args.bm_near_miss_iterations.unwrap_or(base.near_miss_iterations),
                time_limit: args.bm_time_limit.unwrap_or(base.time_limit),
                products: args.bm_products,
                stop_when_positive: !args.all_targets,
                ..base
            };
            bm.input_scaling_for(norm)?;
            match args.bm_tighten {
                Some(neurons) if neurons > 0 => Some(Box::new(nncert::verify::bm_bounds::Tightened { bm, neurons })),
                _ => Some(Box::new(bm)),
            }
        }
        _ if bm_flags => {
            return Err(
                "--bm-iterations, --bm-input-scaling, --bm-restarts, --bm-near-miss-iterations, --bm-time-limit and --bm-products apply to --method bm, bm-full or bm-full-lp only".into()
            );
        }
        "bab" => {
            let timeout = args.timeout.unwrap_or(nncert::verify::bab::Bab::default().timeout);
            if !(timeout.is_finite() && timeout >= 0.0) {
                return Err(format!("--timeout must be >= 0, got {timeout}").into());
            }
            let branching = match &args.branching {
                Some(b) => b.parse()?,
                None => nncert::verify::bab::Branching::Auto,
            };
            Some(Box::new(nncert::verify::bab::Bab { timeout, branching, ..Default::default() }))
        }
        _ if args.timeout.is_some() || args.branching.is_some() => {
            return Err("--timeout and --branching apply to --method bab only".into());
        }
        "pgd" => None,
        name if args.all_targets => Some(nncert::verify::by_name_all_targets(name)?),
        name => Some(nncert::verify::by_name(name)?),
    };
    if args.certificates.is_some() {
        let name = verifier.as_ref().map(|v| v.name());
        if name.is_some_and(|n| !nncert::verify::CERTIFICATE_METHODS.contains(&n)) || args.bm_tighten.is_some() {
            return Err(format!(
                "--certificates: method {} writes no certificates (these do: {}; pgd writes counterexamples)",
                args.method,
                nncert::verify::CERTIFICATE_METHODS.join(", ")
            )
            .into());
        }
    }
    if verifier.is_none() && args.no_attack {
        return Err("--method pgd with --no-attack computes nothing".into());
    }
    let (images, labels, source) = match (&args.images, &args.labels) {
        (Some(i), Some(l)) => {
            let (images, _) = nncert::io::read_idx_images(i)?;
            let labels = nncert::io::read_idx_labels(l)?;
            (images, labels, i.display().to_string())
        }
        _ => {
            let (_, test) = nncert::data::digits_split()?;
            (test.images, test.labels, "bundled digits test split".to_string())
        }
    };
    if images.len() != labels.len() {
        return Err(format!("{} images but {} labels", images.len(), labels.len()).into());
    }
    let selected = select(&net, &images, &labels, &args)?;
    let selected = match shard {
        Some(s) => s.take(&selected),
        None => selected,
    };
    let dom = domain;
    let make_set = |x: &[f64]| -> nncert::Result<InputSet> {
        let d = dom.map(|(lo, hi)| Domain::uniform(x.len(), lo, hi)).transpose()?;
        InputSet::new(x.to_vec(), args.eps, norm, d)
    };
    let options = CertifyOptions {
        attack: (!args.no_attack).then(|| PgdSettings {
            steps: args.pgd_steps,
            restarts: args.pgd_restarts.max(1),
            ..PgdSettings::default()
        }),
        all_targets: args.all_targets,
    };
    eprintln!(
        "model {} | {} images from {}{} | {} eps {} domain {} | method {}",
        model_path.display(),
        selected.len(),
        source,
        shard.map_or(String::new(), |s| format!(" (shard {} of {}, from 0)", s.index, s.count)),
        norm.name(),
        args.eps,
        args.domain,
        args.method
    );
    let total = selected.len();
    let counts = [AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0), AtomicUsize::new(0)];
    let every = (total / 20).max(1);
    let start = Instant::now();
    let progress = |done: usize, r: &ImageReport| {
        let slot = match r.verdict {
            Verdict::Robust => 0,
            Verdict::NotRobust => 1,
            Verdict::Unknown => 2,
            Verdict::Misclassified => 3,
        };
        counts[slot].fetch_add(1, Ordering::Relaxed);
        if done.is_multiple_of(every) || done == total {
            let el = start.elapsed().as_secs_f64();
            let eta = el / done as f64 * (total - done) as f64;
            eprintln!(
                "[{done}/{total}] robust {} not_robust {} unknown {} misclassified {} | {el:.1}s elapsed, eta {eta:.1}s",
                counts[0].load(Ordering::Relaxed),
                counts[1].load(Ordering::Relaxed),
                counts[2].load(Ordering::Relaxed),
                counts[3].load(Ordering::Relaxed)
            );
        }
    };
    let header = RunHeader {
        model: model_path.display().to_string(),
        method: args.method.clone(),
        norm,
        eps: args.eps,
        domain: domain.map(|(lo, hi)| [lo, hi]),
        shard: shard.unwrap_or(Shard::ALL),
    };
    let entries: Vec<ImageEntry> = match &args.lines {
        Some(path) => {
            let inputs: Vec<(usize, Vec<f64>, usize)> =
                selected.iter().map(|&i| (i, images[i].clone(), labels[i])).collect();
            let all =
                run_lines(path, &header, &net, &inputs, make_set, verifier.as_deref(), &options, Some(&progress))?;
            // This run's images only (the file may hold others from an earlier, larger --count).
            all.into_iter().filter(|e| selected.binary_search(&e.index).is_ok()).collect()
        }
        None => {
            let inputs: Vec<(Vec<f64>, usize)> = selected.iter().map(|&i| (images[i].clone(), labels[i])).collect();
            let reports = certify_many(&net, &inputs, make_set, verifier.as_deref(), &options, Some(&progress))?;
            if let Some(dir) = &args.certificates {
                write_certificates(dir, &net, &selected, &images, &reports, &make_set, verifier.as_deref())?;
            }
            selected.iter().zip(&reports).map(|(&i, r)| ImageEntry::new(i, r)).collect()
        }
    };
    if let (Some(dir), Some(_)) = (&args.certificates, &args.lines) {
        let indices: Vec<usize> = entries.iter().map(|e| e.index).collect();
        let reports: Vec<ImageReport> = entries.iter().map(|e| e.report()).collect();
        write_certificates(dir, &net, &indices, &images, &reports, &make_set, verifier.as_deref())?;
    }
    let summary = Summary::of_entries(&entries);
    let doc = RunReport {
        model: header.model,
        method: header.method,
        norm,
        eps: args.eps,
        domain: header.domain,
        images: entries,
        summary,
    };
    print_report(&doc);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(())
}

/// Writes the certificates of the images `indices` (with their `reports`) to `dir`, in parallel,
/// and says how many.
fn write_certificates(
    dir: &std::path::Path,
    net: &Network,
    indices: &[usize],
    images: &[Vec<f64>],
    reports: &[ImageReport],
    make_set: &(dyn Fn(&[f64]) -> nncert::Result<InputSet> + Sync),
    verifier: Option<&dyn nncert::Verifier>,
) -> Result<(), Box<dyn std::error::Error>> {
    use rayon::prelude::*;
    let start = Instant::now();
    let written: Vec<bool> = indices
        .par_iter()
        .zip(reports)
        .map(|(&i, r)| -> nncert::Result<bool> {
            let set = make_set(&images[i])?;
            Ok(nncert::certify::write_certificate(dir, i, net, &set, verifier, r)?.is_some())
        })
        .collect::<nncert::Result<_>>()?;
    let n = written.iter().filter(|w| **w).count();
    eprintln!(
        "wrote {n} certificates to {} ({} images without one: misclassified{}) in {:.1}s",
        dir.display(),
        written.len() - n,
        if verifier.is_none() { ", not broken by pgd" } else { "" },
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The table (up to 30 images), the summary line and BM-r's line.
fn print_report(doc: &RunReport) {
    if doc.images.len() <= 30 {
        println!(
            "{:>6} {:>5} {:>9} {:>13} {:>12} {:>12} {:>9}",
            "image", "label", "predicted", "verdict", "min lower", "min upper", "seconds"
        );
        for r in &doc.images {
            let min = |v: &[Option<f64>]| {
                v.iter().flatten().copied().fold(None, |a: Option<f64>, b| Some(a.map_or(b, |a| a.min(b))))
            };
            let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
            println!(
                "{:>6} {:>5} {:>9} {:>13} {:>12} {:>12} {:>9.4}",
                r.index,
                r.label,
                r.predicted,
                r.verdict.name(),
                fmt(min(&r.lower_bounds)),
                fmt(min(&r.upper_bounds)),
                r.seconds
            );
        }
    }
    let summary = &doc.summary;
    println!(
        "{} {} eps {} on {} images: robust {} | not robust {} | unknown {} | misclassified {} | {:.4} s/image",
        doc.method,
        doc.norm.name(),
        doc.eps,
        summary.images,
        summary.robust,
        summary.not_robust,
        summary.unknown,
        summary.misclassified,
        summary.seconds_per_image
    );
    if let (Some(n), Some(at)) = (summary.bm_targets, summary.bm_at_optimum) {
        let mut gaps: Vec<f64> = doc.images.iter().flat_map(|r| r.bm.iter().flatten()).filter_map(|t| t.gap).collect();
        gaps.sort_by(f64::total_cmp);
        let median = gaps.get(gaps.len() / 2).map_or("-".to_string(), |g| format!("{g:.2e}"));
        println!(
            "BM-r solved {n} targets: {at} at the relaxation's optimum (certified gap <= {:.0e} (1 + |primal|)); \
             median gap {median}",
            nncert::verify::bm::Bm::default().gap_tolerance
        );
    }
}

fn parse_domain(s: &str) -> Result<Option<(f64, f64)>, Box<dyn std::error::Error>> {
    if s.eq_ignore_ascii_case("none") {
        return Ok(None);
    }
    let parts: Vec<&str> = s.split(',').collect();
    if parts.len() != 2 {
        return Err(format!("--domain expects LO,HI or none, got '{s}'").into());
    }
    let lo: f64 = parts[0].trim().parse().map_err(|_| format!("--domain: bad number '{}'", parts[0]))?;
    let hi: f64 = parts[1].trim().parse().map_err(|_| format!("--domain: bad number '{}'", parts[1]))?;
    if lo.is_nan() || hi.is_nan() || lo > hi {
        return Err(format!("--domain: need LO <= HI, got {lo},{hi}").into());
    }
    Ok(Some((lo, hi)))
}

/// Image indices to run: K..K+N, or with --only-correct the first N correctly classified from K.
fn select(
    net: &Network,
    images: &[Vec<f64>],
    labels: &[usize],
    args: &Args,
) -> Result<Vec<usize>, Box<dyn std::error::Error>> {
    if args.skip > images.len() {
        return Err(format!("--skip {} but the file has {} images", args.skip, images.len()).into());
    }
    let want = args.count.unwrap_or(usize::MAX);
    let mut out = Vec::new();
    for i in args.skip..images.len() {
        if out.len() >= want {
            break;
        }
        if args.only_correct && net.predict(&images[i])? != labels[i] {
            continue;
        }
        out.push(i);
    }
    Ok(out)
}
