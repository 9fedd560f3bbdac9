//! Reproduce the BM-r paper's Table 1 (l2), Table 2 (l_inf), Figure 2 (l2) and Figure 5 (l_inf) on
//! the papers' own MNIST networks, with PGD and every verifier that applies.
//!
//! ```text
//! cargo run --release --example reproduce                        # quick: 10 images, the cheap methods
//! cargo run --release --example reproduce -- --count 100 --methods all   # the documented run
//! cargo run --release --example reproduce -- --count 1000 --methods all  # the paper's protocol
//! ```
//!
//! It reads `../shared/data` (the networks, the first 1100 MNIST test images and the paper's tables,
//! `reference/bm-r-paper-tables.json`; `--data` to point elsewhere) and writes
//! - `docs/results.md`: both tables in the paper's layout, ours beside the paper's, with the machine and
//!   settings, the ordering checks (each count <= PGD's, CROWN <= LP <= LP-Full, BM <= BM-Full) and the
//!   figures; regenerated on every run, never edited by hand;
//! - `docs/figures/figure2-l2.png`, `docs/figures/figure5-linf.png`: average lower bound on phi over the
//!   9 targets of the first 10 correctly classified images against the radius, one curve per verifier
//!   and PGD's upper bound, one panel per model;
//! - `docs/results.json`: every number of the tables and figures.
//!
//! Every (model, norm, radius, method, image) result is appended to a JSON-lines file under
//! `results/cache/` as soon as it is known, so an interrupted run continues where it stopped; rerun
//! with the same flags (a larger `--count` only computes the new images). `--refresh METHODS` drops
//! the cached results of those methods first (after changing a verifier's settings).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use nncert::attack::PgdSettings;
use nncert::certify::{CertifyOptions, certify};
use nncert::verify::bm::Bm;
use nncert::verify::sdp_fo::SdpFo;
use nncert::{Domain, InputSet, Network, Norm, Verdict, Verifier};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

const ALL_METHODS: &[&str] = &["pgd", "fastlin", "crown", "lp", "lp-full", "sdp", "bm", "bm-full"];

#[derive(Parser, Debug)]
#[command(about = "Reproduce the BM-r paper's tables and figures on its MNIST networks")]
struct Args {
    /// The papers' data folder (models/, mnist/, reference/).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/data"))]
    data: PathBuf,
    /// First N correctly classified test images per table row (the paper: 1000).
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Methods of the tables, comma-separated, or "all" (pgd, fastlin, crown, lp, lp-full, sdp, bm, bm-full).
    #[arg(long, default_value = "pgd,fastlin,crown,lp")]
    methods: String,
    /// Which tables: l2, linf or both.
    #[arg(long, default_value = "both")]
    tables: String,
    /// Only these models (comma-separated: ADV-MNIST, LPD-MNIST, NOR-MNIST).
    #[arg(long)]
    models: Option<String>,
    /// Only these rows (comma-separated MODEL:EPS, e.g. ADV-MNIST:1.0,NOR-MNIST:0.3); the others are
    /// reported from the cache.
    #[arg(long)]
    rows: Option<String>,
    /// Methods of the figures ("all", a list, or "none" to skip them); default: the tables' methods.
    #[arg(long)]
    figure_methods: Option<String>,
    /// Images per figure point (the paper: 10).
    #[arg(long, default_value_t = 10)]
    figure_images: usize,
    /// Compute the figures only at these of the eight radii (comma-separated steps 1..=8, e.g.
    /// "2,4,6,8"; default all): the costly methods' curves can be drawn through fewer points. The
    /// other radii are still read from the cache.
    #[arg(long)]
    figure_steps: Option<String>,
    /// Seconds per target for sdp (its limit) and bm, bm-full (a wall-clock cap only: their
    /// budget is --bm-iterations, so their verdicts do not depend on the machine's load).
    #[arg(long, default_value_t = 10.0)]
    time_limit: f64,
    /// L-BFGS iterations per target for bm and bm-full (over all ranks).
    #[arg(long, default_value_t = Bm::default().max_iterations)]
    bm_iterations: usize,
    /// Drop the cached results of these methods (comma-separated or "all") before running.
    #[arg(long)]
    refresh: Option<String>,
    /// Only rewrite the report from the cache; compute nothing.
    #[arg(long)]
    report_only: bool,
    /// Import `certify --lines` files into the cache first (comma-separated): each is one row run
    /// by `certify --only-correct --domain 0,1` with one of the tables' methods and the verifier's
    /// defaults, sdp / bm / bm-full with `--bm-time-limit` equal to --time-limit and
    /// `--bm-iterations` to --bm-iterations (recorded as the entries' budget); its images replace
    /// the cached ones of that row and method. Long rows can so run (and resume) in `certify`.
    #[arg(long)]
    import_lines: Option<String>,
    /// Cache folder.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/cache"))]
    cache: PathBuf,
    /// Output folder for results.md, results.json and figures/.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/docs"))]
    out: PathBuf,
    /// A TrueType font for the figures' text (default: DejaVu Sans or Liberation Sans from /usr/share/fonts).
    #[arg(long)]
    font: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// One row of the paper's table, with the paper's numbers (of 1000 images).
#[derive(Clone, Debug)]
struct PaperRow {
    model: String,
    eps: f64,
    /// Column name -> value, as in the reference file.
    values: BTreeMap<String, f64>,
}

/// One cached result.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Entry {
    image: usize,
    label: usize,
    verdict: Verdict,
    lower: Vec<Option<f64>>,
    upper: Vec<Option<f64>>,
    seconds: f64,
    /// The per-target time limit of SDP-FO, BM and BM-Full (None for the other methods); for BM
    /// and BM-Full with an iteration budget, a cap only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    time_limit: Option<f64>,
    /// BM's and BM-Full's L-BFGS iterations per target (None: entries from before the budget,
    /// whose only limit was the clock).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iterations: Option<usize>,
    /// BM's and BM-Full's input scaling exponent ([`Bm::input_scaling`]; None: entries from before
    /// it existed, which ran without it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    input_scaling: Option<f64>,
    /// BM's and BM-Full's near-miss restarts ([`Bm::restarts`]; None: entries from before they
    /// existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    restarts: Option<usize>,
    /// BM's and BM-Full's budget for the targets still worth it after `iterations`
    /// ([`Bm::near_miss_iterations`]; None: entries from before it existed, or tight mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    near_miss_iterations: Option<usize>,
    /// BM-Full's pre-activation bounds: "optimized" (CROWN with optimized slopes, `Bm::full`);
    /// None: entries from before, which used LP-Full's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bounds: Option<String>,
}

/// Counts of one (row, method).
#[derive(Clone, Debug, Default, Serialize)]
struct Cell {
    images: usize,
    robust: usize,
    not_robust: usize,
    unknown: usize,
    seconds_per_image: f64,
    /// The per-target budgets the entries ran with (SDP-FO, BM, BM-Full), e.g. "10 s" or
    /// "8400 iterations (cap 60 s)".
    budgets: Vec<String>,
}

/// The papers' 2x100 networks by the tables' names.
fn model_file(model: &str) -> Option<&'static str> {
    match model {
        "ADV-MNIST" => Some("adv-mnist-mlp-2x100"),
        "LPD-MNIST" => Some("lpd-mnist-mlp-2x100"),
        "NOR-MNIST" => Some("nor-mnist-mlp-2x100"),
        _ => None,
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn parse_methods(s: &str) -> Res<Vec<String>> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(ALL_METHODS.iter().map(|m| m.to_string()).collect());
    }
    if s.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for m in s.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        if !ALL_METHODS.contains(&m) {
            return Err(format!("unknown method '{m}' (available: {}, all)", ALL_METHODS.join(", ")).into());
        }
        out.push(m.to_string());
    }
    // Cheap methods first, so an interrupted run has the cheap columns complete.
    out.sort_by_key(|m| ALL_METHODS.iter().position(|a| a == m));
    out.dedup();
    Ok(out)
}

/// BM (`full`: BM-Full) with the run's iteration budget and time cap, in verdict mode unless for
/// the figures.
fn bm_settings(full: bool, args: &Args, all_targets: bool) -> Bm {
    let base = if full { Bm::full() } else { Bm::default() };
    Bm { max_iterations: args.bm_iterations, time_limit: args.time_limit, stop_when_positive: !all_targets, ..base }
}

/// The verifier of a method (None for PGD alone). For the figures (`all_targets`), the iterative
/// methods run to their limits instead of stopping at the first positive bound.
fn make_verifier(method: &str, args: &Args, all_targets: bool) -> Res<Option<Box<dyn Verifier>>> {
    Ok(match method {
        "pgd" => None,
        "sdp" => {
            Some(Box::new(SdpFo { time_limit: args.time_limit, stop_when_positive: !all_targets, ..SdpFo::default() }))
        }
        "bm" => Some(Box::new(bm_settings(false, args, all_targets))),
        "bm-full" => Some(Box::new(bm_settings(true, args, all_targets))),
        other => Some(nncert::verify::by_name(other)?),
    })
}

fn read_paper(data: &Path) -> Res<(BTreeMap<String, Vec<PaperRow>>, String)> {
    let path = data.join("reference/bm-r-paper-tables.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let doc: serde_json::Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let columns: Vec<String> = doc["columns"]
        .as_array()
        .ok_or("reference tables: no 'columns'")?
        .iter()
        .map(|c| c.as_str().unwrap_or("").to_string())
        .collect();
    let mut tables = BTreeMap::new();
    for table in ["l2", "linf"] {
        let mut rows = Vec::new();
        for row in doc[table].as_array().ok_or(format!("reference tables: no '{table}'"))? {
            let row = row.as_array().ok_or("reference tables: a row is not an array")?;
            if row.len() != columns.len() + 2 {
                return Err(format!("reference tables: a {table} row has {} entries", row.len()).into());
            }
            let model = row[0].as_str().ok_or("reference tables: model name")?.to_string();
            let eps = row[1].as_f64().ok_or("reference tables: radius")?;
            let values = columns.iter().zip(&row[2..]).filter_map(|(c, v)| Some((c.clone(), v.as_f64()?))).collect();
            rows.push(PaperRow { model, eps, values });
        }
        tables.insert(table.to_string(), rows);
    }
    let protocol = doc["protocol"].as_str().unwrap_or("").to_string();
    Ok((tables, protocol))
}

/// The JSON-lines cache of one (model, norm, radius, method, mode).
struct Cache {
    path: PathBuf,
    entries: HashMap<usize, Entry>,
}

impl Cache {
    fn open(dir: &Path, model: &str, norm: Norm, eps: f64, method: &str, all_targets: bool) -> Res<Self> {
        let mode = if all_targets { "-all-targets" } else { "" };
        let path = dir.join(format!("{model}_{}_{eps}_{method}{mode}.jsonl", norm.name()));
        let mut entries = HashMap::new();
        if let Ok(text) = std::fs::read_to_string(&path) {
            for (k, line) in text.lines().enumerate() {
                if line.trim().is_empty() {
                    continue;
                }
                // A line cut by an interruption is dropped (and recomputed), never fatal.
                match serde_json::from_str::<Entry>(line) {
                    Ok(e) => {
                        entries.insert(e.image, e);
                    }
                    Err(e) => eprintln!("{}:{}: skipping a damaged line ({e})", path.display(), k + 1),
                }
            }
        }
        Ok(Self { path, entries })
    }

    fn append(&self, e: &Entry) -> Res<()> {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|err| format!("cannot write {}: {err}", self.path.display()))?;
        writeln!(f, "{}", serde_json::to_string(e)?)?;
        Ok(())
    }
}

/// Imports one `certify --lines` file into the cache (see `Args::import_lines`): the header
/// names the model, method, norm and radius; every image line becomes an entry, replacing the
/// cached entry of the same image.
fn import_lines(path: &Path, args: &Args) -> Res<()> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: serde_json::Value = serde_json::from_str(lines.next().ok_or(format!("{}: empty", path.display()))?)?;
    let run = &header["run"];
    let field = |k: &str| run[k].as_str().ok_or(format!("{}: the header has no run.{k}", path.display()));
    let model = Path::new(field("model")?)
        .file_stem()
        .and_then(|s| s.to_str())
        .ok_or(format!("{}: no model file name", path.display()))?
        .to_string();
    let method = field("method")?.to_string();
    if !ALL_METHODS.contains(&method.as_str()) {
        return Err(format!(
            "{}: method {method} is not one of the tables' ({})",
            path.display(),
            ALL_METHODS.join(", ")
        )
        .into());
    }
    let norm: Norm = field("norm")?.parse()?;
    let eps = run["eps"].as_f64().ok_or(format!("{}: the header has no run.eps", path.display()))?;
    if run["domain"] != serde_json::json!([0.0, 1.0]) {
        return Err(format!("{}: the tables use the [0, 1] box, this run {}", path.display(), run["domain"]).into());
    }
    let bm = matches!(method.as_str(), "bm" | "bm-full");
    let mut cache = Cache::open(&args.cache, &model, norm, eps, &method, false)?;
    let mut imported = 0;
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)?;
        let verdict: Verdict = serde_json::from_value(v["verdict"].clone())?;
        if verdict == Verdict::Misclassified {
            continue;
        }
        let bounds = |k: &str| -> Vec<Option<f64>> {
            v[k].as_array().map(|a| a.iter().map(|x| round(x.as_f64())).collect()).unwrap_or_default()
        };
        let int = |k: &str| v[k].as_u64().map(|x| x as usize).ok_or(format!("{}: a line without {k}", path.display()));
        let e = Entry {
            image: int("index")?,
            label: int("label")?,
            verdict,
            lower: bounds("lower_bounds"),
            upper: bounds("upper_bounds"),
            seconds: (v["seconds"].as_f64().unwrap_or(0.0) * 1e4).round() / 1e4,
            time_limit: matches!(method.as_str(), "sdp" | "bm" | "bm-full").then_some(args.time_limit),
            iterations: bm.then_some(args.bm_iterations),
            input_scaling: bm.then(|| Bm::default().input_scaling_for(norm)).transpose()?,
            restarts: bm.then(|| Bm::default().restarts),
            near_miss_iterations: bm.then(|| Bm::default().near_miss_iterations),
            bounds: (method == "bm-full").then(|| "optimized".to_string()),
        };
        cache.entries.insert(e.image, e);
        imported += 1;
    }
    let mut entries: Vec<&Entry> = cache.entries.values().collect();
    entries.sort_by_key(|e| e.image);
    let mut out = String::new();
    for e in entries {
        out.push_str(&serde_json::to_string(e)?);
        out.push('\n');
    }
    std::fs::write(&cache.path, out).map_err(|e| format!("cannot write {}: {e}", cache.path.display()))?;
    eprintln!("imported {imported} images of {} into {}", path.display(), cache.path.display());
    Ok(())
}

/// Rounds a bound for the cache to 7 significant digits (the verdict is stored exactly beside it;
/// the rounded bounds only feed the figures' averages), which keeps the files small.
fn round(v: Option<f64>) -> Option<f64> {
    v.map(|x| if x.is_finite() { format!("{x:.6e}").parse().unwrap_or(x) } else { x })
}

/// A radius as the paper writes it (1.0, 0.13).
fn fmt_eps(eps: f64) -> String {
    if eps.fract() == 0.0 { format!("{eps:.1}") } else { format!("{eps}") }
}

struct Job<'a> {
    label: String,
    net: &'a Network,
    norm: Norm,
    eps: f64,
    images: &'a [(usize, Vec<f64>, usize)],
    method: &'a str,
    all_targets: bool,
}

/// Runs one (row, method) over its images, skipping the cached ones; returns the entries in image order.
fn run_job(job: &Job<'_>, args: &Args, model: &str, compute: bool) -> Res<Vec<Entry>> {
    let cache = Cache::open(&args.cache, model, job.norm, job.eps, job.method, job.all_targets)?;
    let missing: Vec<&(usize, Vec<f64>, usize)> =
        job.images.iter().filter(|(i, _, _)| !cache.entries.contains_key(i)).collect();
    let mut fresh = Vec::new();
    if compute && !missing.is_empty() {
        let verifier = make_verifier(job.method, args, job.all_targets)?;
        let options = CertifyOptions { attack: Some(PgdSettings::default()), all_targets: job.all_targets };
        let total = job.images.len();
        let cached = total - missing.len();
        let counts = Mutex::new([0usize; 3]);
        for e in cache.entries.values().filter(|e| job.images.iter().any(|(i, _, _)| *i == e.image)) {
            tally(&mut counts.lock().unwrap(), e.verdict);
        }
        let start = Instant::now();
        let last = Mutex::new(Instant::now());
        let done = std::sync::atomic::AtomicUsize::new(0);
        eprintln!("[{}] {} images, {} cached", job.label, total, cached);
        let results: Vec<Res<Entry>> = missing
            .par_iter()
            .map(|(index, x, label)| -> Res<Entry> {
                let domain = Domain::uniform(x.len(), 0.0, 1.0)?;
                let set = InputSet::new(x.clone(), job.eps, job.norm, Some(domain))?;
                let r = certify(job.net, &set, *label, verifier.as_deref(), &options)?;
                let e = Entry {
                    image: *index,
                    label: *label,
                    verdict: r.verdict,
                    lower: r.lower_bounds.iter().map(|v| round(*v)).collect(),
                    upper: r.upper_bounds.iter().map(|v| round(*v)).collect(),
                    seconds: (r.seconds * 1e4).round() / 1e4,
                    time_limit: matches!(job.method, "sdp" | "bm" | "bm-full").then_some(args.time_limit),
                    iterations: matches!(job.method, "bm" | "bm-full").then_some(args.bm_iterations),
                    input_scaling: matches!(job.method, "bm" | "bm-full")
                        .then(|| Bm::default().input_scaling_for(job.norm))
                        .transpose()?,
                    restarts: (matches!(job.method, "bm" | "bm-full") && !job.all_targets)
                        .then(|| Bm::default().restarts),
                    near_miss_iterations: (matches!(job.method, "bm" | "bm-full") && !job.all_targets)
                        .then(|| Bm::default().near_miss_iterations),
                    bounds: (job.method == "bm-full").then(|| "optimized".to_string()),
                };
                cache.append(&e)?;
                let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                let c = {
                    let mut c = counts.lock().unwrap();
                    tally(&mut c, e.verdict);
                    *c
                };
                let mut last = last.lock().unwrap();
                if last.elapsed().as_secs_f64() > 5.0 || k == missing.len() {
                    *last = Instant::now();
                    let el = start.elapsed().as_secs_f64();
                    let eta = el / k as f64 * (missing.len() - k) as f64;
                    eprintln!(
                        "[{}] {}/{} | robust {} not_robust {} unknown {} | {:.1} s elapsed, eta {:.0} s",
                        job.label,
                        cached + k,
                        total,
                        c[0],
                        c[1],
                        c[2],
                        el,
                        eta
                    );
                }
                Ok(e)
            })
            .collect();
        for r in results {
            fresh.push(r?);
        }
    }
    let mut out: Vec<Entry> = job
        .images
        .iter()
        .filter_map(|(i, _, _)| cache.entries.get(i).cloned().or_else(|| fresh.iter().find(|e| e.image == *i).cloned()))
        .collect();
    out.sort_by_key(|e| e.image);
    Ok(out)
}

fn tally(c: &mut [usize; 3], v: Verdict) {
    match v {
        Verdict::Robust => c[0] += 1,
        Verdict::NotRobust => c[1] += 1,
        _ => c[2] += 1,
    }
}

fn cell(entries: &[Entry], norm: Norm, method: &str) -> Cell {
    let mut c = [0usize; 3];
    for e in entries {
        tally(&mut c, e.verdict);
    }
    let n = entries.len();
    Cell {
        images: n,
        robust: c[0],
        not_robust: c[1],
        unknown: c[2],
        seconds_per_image: if n == 0 { 0.0 } else { entries.iter().map(|e| e.seconds).sum::<f64>() / n as f64 },
        budgets: {
            let mut t: Vec<String> = entries
                .iter()
                .filter_map(|e| {
                    // BM-Full's pre-activation bounds: LP-Full's before optimized slopes replaced them.
                    let source = match (method, e.bounds.as_deref()) {
                        ("bm-full", Some(b)) => format!(", {b}-slope bounds"),
                        ("bm-full", None) => ", LP-Full bounds".to_string(),
                        _ => String::new(),
                    };
                    let budget = match (e.iterations, e.time_limit) {
                        (Some(i), Some(t)) => match (e.input_scaling, norm) {
                            (Some(p), _) if p > 0.0 => format!("{i} iterations (cap {t} s), input scaling {p}"),
                            (None, Norm::Linf) => format!("{i} iterations (cap {t} s), unscaled input constraints"),
                            _ => format!("{i} iterations (cap {t} s)"),
                        },
                        (None, Some(t)) => format!("{t} s"),
                        _ => return None,
                    };
                    let restarts = match e.restarts {
                        Some(r) if r > 0 => format!(", {r} near-miss restarts"),
                        _ => String::new(),
                    };
                    let more = match (e.near_miss_iterations, e.iterations) {
                        (Some(n), Some(i)) if n > i => format!(", up to {n} where the primal value is positive"),
                        _ => String::new(),
                    };
                    Some(budget + &more + &restarts + &source)
                })
                .collect();
            t.sort();
            t.dedup();
            t
        },
    }
}

/// The first `count` correctly classified images: (index, pixels, label).
fn first_correct(
    net: &Network,
    images: &[Vec<f64>],
    labels: &[usize],
    count: usize,
) -> Res<Vec<(usize, Vec<f64>, usize)>> {
    let mut out = Vec::new();
    for (i, (x, &l)) in images.iter().zip(labels).enumerate() {
        if out.len() >= count {
            break;
        }
        if net.predict(x)? == l {
            out.push((i, x.clone(), l));
        }
    }
    Ok(out)
}

/// The radii of the figures: eight steps up to a little beyond the tables' largest radius for the
/// model (NOR-MNIST, trained without robustness, is broken at much smaller radii).
fn figure_radii(norm: Norm, model: &str) -> Vec<f64> {
    let step = match (norm, model) {
        (Norm::L2, "NOR-MNIST") => 0.1,
        (Norm::L2, _) => 0.2,
        (Norm::Linf, "NOR-MNIST") => 0.01,
        (Norm::Linf, _) => 0.02,
    };
    (1..=8).map(|k| (step * k as f64 * 100.0).round() / 100.0).collect()
}

#[derive(Serialize)]
struct RowReport {
    model: String,
    eps: f64,
    paper: BTreeMap<String, f64>,
    ours: BTreeMap<String, Cell>,
}

#[derive(Serialize)]
struct Curve {
    method: String,
    /// Average lower bound (PGD: average upper bound) per radius; null where not computed.
    values: Vec<Option<f64>>,
}

#[derive(Serialize)]
struct Panel {
    model: String,
    radii: Vec<f64>,
    images: Vec<usize>,
    curves: Vec<Curve>,
}

#[derive(Serialize)]
struct Report {
    command: String,
    count: usize,
    protocol: String,
    tables: BTreeMap<String, Vec<RowReport>>,
    figures: BTreeMap<String, Vec<Panel>>,
    ordering_findings: Vec<String>,
}

fn run(args: Args) -> Res<()> {
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t.max(1)).build_global()?;
    }
    if !args.data.is_dir() {
        return Err(format!(
            "the papers' data folder {} is missing: pass --data DIR (it holds models/, mnist/, reference/)",
            args.data.display()
        )
        .into());
    }
    if !(args.time_limit.is_finite() && args.time_limit > 0.0) {
        return Err(format!("--time-limit must be > 0, got {}", args.time_limit).into());
    }
    if args.bm_iterations == 0 {
        return Err("--bm-iterations must be > 0".into());
    }
    let methods = parse_methods(&args.methods)?;
    let figure_methods = match &args.figure_methods {
        Some(s) => parse_methods(s)?,
        None => methods.clone(),
    };
    let tables: Vec<Norm> = match args.tables.as_str() {
        "both" => vec![Norm::L2, Norm::Linf],
        s => vec![s.parse()?],
    };
    let wanted_models: Option<Vec<String>> =
        args.models.as_ref().map(|s| s.split(',').map(|m| m.trim().to_string()).collect());
    std::fs::create_dir_all(&args.cache).map_err(|e| format!("cannot create {}: {e}", args.cache.display()))?;
    for file in args.import_lines.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|f| !f.is_empty()) {
        import_lines(Path::new(file), &args)?;
    }
    let (paper, protocol) = read_paper(&args.data)?;
    let (images, _) = nncert::io::read_idx_images(args.data.join("mnist/t10k-first1100-images-idx3-ubyte"))?;
    let labels = nncert::io::read_idx_labels(args.data.join("mnist/t10k-first1100-labels-idx1-ubyte"))?;
    let mut nets: BTreeMap<String, Network> = BTreeMap::new();
    for rows in paper.values() {
        for row in rows {
            if !nets.contains_key(&row.model) {
                let file =
                    model_file(&row.model).ok_or(format!("unknown model {} in the reference tables", row.model))?;
                nets.insert(
                    row.model.clone(),
                    nncert::io::load_network(args.data.join(format!("models/{file}.json")))?,
                );
            }
        }
    }
    let keep = |m: &str| wanted_models.as_ref().is_none_or(|w| w.iter().any(|x| x == m));
    let mut wanted_rows: Option<Vec<(String, f64)>> = None;
    if let Some(spec) = &args.rows {
        let mut rows = Vec::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (m, e) = item.rsplit_once(':').ok_or(format!("--rows: expected MODEL:EPS, got '{item}'"))?;
            let e: f64 = e.parse().map_err(|_| format!("--rows: bad radius in '{item}'"))?;
            rows.push((m.to_string(), e));
        }
        wanted_rows = Some(rows);
    }
    let keep_row = |m: &str, eps: f64| {
        keep(m) && wanted_rows.as_ref().is_none_or(|w| w.iter().any(|(x, e)| x == m && (e - eps).abs() < 1e-9))
    };
    // --refresh drops the cached results of the chosen methods, for the selected tables, models
    // and rows only.
    if let Some(r) = &args.refresh {
        let drop = parse_methods(r)?;
        for entry in std::fs::read_dir(&args.cache)? {
            let path = entry?.path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("").to_string();
            let stem = name.trim_end_matches(".jsonl");
            let figure = stem.ends_with("-all-targets");
            let parts: Vec<&str> = stem.trim_end_matches("-all-targets").split('_').collect();
            let [file, norm, eps, method] = parts[..] else { continue };
            let Some(model) = ["ADV-MNIST", "LPD-MNIST", "NOR-MNIST"].into_iter().find(|m| model_file(m) == Some(file))
            else {
                continue;
            };
            let eps: f64 = eps.parse().unwrap_or(f64::NAN);
            let selected = tables.iter().any(|t| t.name() == norm)
                && if figure { keep(model) && wanted_rows.is_none() } else { keep_row(model, eps) };
            if selected && drop.iter().any(|m| m == method) {
                std::fs::remove_file(&path)?;
            }
        }
    }
    let compute = !args.report_only;

    // The tables.
    let mut report_tables = BTreeMap::new();
    let mut findings = Vec::new();
    for &norm in &tables {
        let mut rows_out = Vec::new();
        for row in &paper[norm.name()] {
            let net = &nets[&row.model];
            let file = model_file(&row.model).unwrap_or("?");
            let imgs = first_correct(net, &images, &labels, args.count)?;
            let mut ours = BTreeMap::new();
            let mut per_method: BTreeMap<String, Vec<Entry>> = BTreeMap::new();
            for m in &methods {
                let job = Job {
                    label: format!("{} {} {} | {m}", row.model, norm.name(), row.eps),
                    net,
                    norm,
                    eps: row.eps,
                    images: &imgs,
                    method: m,
                    all_targets: false,
                };
                let entries = run_job(&job, &args, file, compute && keep_row(&row.model, row.eps))?;
                ours.insert(m.clone(), cell(&entries, norm, m));
                per_method.insert(m.clone(), entries);
            }
            findings.extend(check_orderings(&row.model, norm, row.eps, &per_method));
            rows_out.push(RowReport { model: row.model.clone(), eps: row.eps, paper: row.values.clone(), ours });
        }
        report_tables.insert(norm.name().to_string(), rows_out);
    }

    // The figures: all targets of the first few correct images, over a range of radii.
    let figure_steps: Option<Vec<usize>> = match &args.figure_steps {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|t| match t.trim().parse::<usize>() {
                    Ok(k) if (1..=8).contains(&k) => Ok(k),
                    _ => Err(format!("--figure-steps: '{t}' is not a step 1..=8")),
                })
                .collect::<Result<_, _>>()?,
        ),
    };
    let mut figures = BTreeMap::new();
    if !figure_methods.is_empty() {
        for &norm in &tables {
            let mut panels = Vec::new();
            for (model, net) in &nets {
                let file = model_file(model).unwrap_or("?");
                let imgs = first_correct(net, &images, &labels, args.figure_images)?;
                let radii = figure_radii(norm, model);
                let mut curves: Vec<Curve> = Vec::new();
                let mut pgd_curve = vec![None; radii.len()];
                for m in &figure_methods {
                    let mut values = vec![None; radii.len()];
                    for (k, &eps) in radii.iter().enumerate() {
                        let job = Job {
                            label: format!("figure {model} {} {eps} | {m}", norm.name()),
                            net,
                            norm,
                            eps,
                            images: &imgs,
                            method: m,
                            all_targets: true,
                        };
                        let wanted = figure_steps.as_ref().is_none_or(|s| s.contains(&(k + 1)));
                        let entries = run_job(&job, &args, file, compute && keep(model) && wanted)?;
                        if entries.len() < imgs.len() || entries.is_empty() {
                            continue;
                        }
                        let avg = |f: &dyn Fn(&Entry) -> Vec<Option<f64>>| -> Option<f64> {
                            let all: Vec<f64> = entries.iter().flat_map(|e| f(e).into_iter().flatten()).collect();
                            (!all.is_empty() && all.iter().all(|v| v.is_finite()))
                                .then(|| all.iter().sum::<f64>() / all.len() as f64)
                        };
                        if m != "pgd" {
                            values[k] = avg(&|e| e.lower.clone());
                        }
                        if pgd_curve[k].is_none() {
                            pgd_curve[k] = avg(&|e| e.upper.clone());
                        }
                    }
                    if m != "pgd" {
                        curves.push(Curve { method: m.clone(), values });
                    }
                }
                curves.push(Curve { method: "pgd (upper bound)".into(), values: pgd_curve });
                // Methods not run for the figures (not cached) are left out rather than drawn empty.
                curves.retain(|c| c.values.iter().any(Option::is_some));
                panels.push(Panel {
                    model: model.clone(),
                    radii,
                    images: imgs.iter().map(|(i, _, _)| *i).collect(),
                    curves,
                });
            }
            figures.insert(norm.name().to_string(), panels);
        }
    }

    let command = std::env::args().skip(1).collect::<Vec<_>>().join(" ");
    let report = Report {
        command: format!("cargo run --release --example reproduce -- {command}").trim().to_string(),
        count: args.count,
        protocol,
        tables: report_tables,
        figures,
        ordering_findings: findings,
    };
    std::fs::create_dir_all(args.out.join("figures"))?;
    let font = load_font(args.font.as_deref());
    for (norm, panels) in &report.figures {
        let name = if norm == "l2" { "figure2-l2.png" } else { "figure5-linf.png" };
        match &font {
            Ok(_) => draw_figure(&args.out.join("figures").join(name), norm, panels)?,
            Err(e) => eprintln!("figures skipped: {e}"),
        }
    }
    std::fs::write(args.out.join("results.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(args.out.join("results.md"), markdown(&report, &methods))?;
    eprintln!("wrote {}", args.out.join("results.md").display());
    Ok(())
}

/// The relations that must hold per image (a robust verdict of the weaker method implies one of the
/// stronger), and the counts against PGD. Each failure is listed with its images.
fn check_orderings(model: &str, norm: Norm, eps: f64, per: &BTreeMap<String, Vec<Entry>>) -> Vec<String> {
    let mut out = Vec::new();
    let robust = |m: &str| -> Option<Vec<usize>> {
        per.get(m).map(|es| es.iter().filter(|e| e.verdict == Verdict::Robust).map(|e| e.image).collect())
    };
    for (weak, strong) in
        [("crown", "lp"), ("lp", "lp-full"), ("bm", "bm-full"), ("crown", "bm"), ("lp-full", "bm-full")]
    {
        if let (Some(w), Some(s)) = (robust(weak), robust(strong)) {
            // Compare on the images both have.
            let both: Vec<usize> =
                per[weak].iter().map(|e| e.image).filter(|i| per[strong].iter().any(|e| e.image == *i)).collect();
            let missing: Vec<usize> = w.iter().copied().filter(|i| both.contains(i) && !s.contains(i)).collect();
            if !missing.is_empty() {
                out.push(format!(
                    "{model} {} {}: {weak} certifies images {missing:?} that {strong} does not",
                    norm.name(),
                    fmt_eps(eps)
                ));
            }
        }
    }
    if let Some(p) = per.get("pgd") {
        let broken: Vec<usize> = p.iter().filter(|e| e.verdict == Verdict::NotRobust).map(|e| e.image).collect();
        for (m, es) in per {
            let bad: Vec<usize> = es
                .iter()
                .filter(|e| e.verdict == Verdict::Robust && broken.contains(&e.image))
                .map(|e| e.image)
                .collect();
            if !bad.is_empty() {
                out.push(format!(
                    "{model} {} {}: {m} certifies images {bad:?} that PGD breaks (a soundness bug)",
                    norm.name(),
                    fmt_eps(eps)
                ));
            }
        }
    }
    out
}

/// Paper column for each of our methods (the paper's CROWN is CROWN-Ada; its Fast-Lip is the
/// Lipschitz variant of Fast-Lin).
fn paper_column(method: &str) -> Option<&'static str> {
    match method {
        "pgd" => Some("pgd_ub"),
        "bm-full" => Some("bm_full"),
        "bm" => Some("bm"),
        "lp-full" => Some("lp_full"),
        "crown" => Some("crown_ada"),
        "fastlin" => Some("fast_lip"),
        _ => None,
    }
}

fn title(method: &str) -> &str {
    match method {
        "pgd" => "PGD UB",
        "fastlin" => "Fast-Lin",
        "crown" => "CROWN",
        "lp" => "LP",
        "lp-full" => "LP-Full",
        "sdp" => "SDP-FO",
        "bm" => "BM",
        "bm-full" => "BM-Full",
        m => m,
    }
}

fn markdown(report: &Report, methods: &[String]) -> String {
    let mut s = String::new();
    s.push_str("# Results: the BM-r paper's Tables 1 and 2 and Figures 2 and 5, on this machine\n\n");
    s.push_str("<!-- Generated by the reproduce example; do not edit by hand (rerun it instead). -->\n\n");
    s.push_str(&format!("Generated by `{}`.\n\n", report.command));
    s.push_str(&format!(
        "- Images: the first {} correctly classified MNIST test images per row (the paper: first 1000). An image is robust \
         when every one of its 9 targets has a lower bound > 0; PGD UB counts the images PGD (100 steps, 3 restarts, \
         every target) does not break. Valid input box [0, 1] everywhere.\n",
        report.count
    ));
    s.push_str(
        "- Machine: 2 cores (x86_64), 24 GiB. Seconds per image: mean wall-clock of one image (all targets, PGD \
         included) on one core; the machine runs two images (or two runs) at once. SDP-FO, BM and BM-Full run \
         in verdict mode (a target stops at its first positive proven bound; after a failed target the rest \
         get CROWN's bound) with the budget per target stated under each table: SDP-FO a time limit; BM and \
         BM-Full an L-BFGS iteration budget with a wall-clock cap (rows run before the budget existed say only \
         \"10 s\": there the clock was the budget, so their counts depend on the machine's load; rows run before BM \
         scaled its input constraints say \"unscaled input constraints\" or only \"10 s\": the scaling mostly \
         matters for l_inf, see docs/experiments.md; rows that say \"2 near-miss restarts\" solve a target whose \
         proven bound ends in [-q/4, 0], q PGD's margin, again from up to two other random starts). Targets CROWN already \
         certifies are not re-run (the same in the library's verdict mode). BM-Full's pre-activation bounds: \
         CROWN's with optimized slopes (\"optimized-slope bounds\" under the table; the same as LP-Full's \
         within 1e-4 on these networks, at 0.1-0.3 s per image) or, in rows run before those existed, LP-Full's \
         (\"LP-Full bounds\"); their time is in BM-Full's seconds.\n",
    );
    s.push_str(&format!("- The paper: {}\n", report.protocol));
    s.push_str(
        "- Paper columns: CROWN is the paper's CROWN-Ada; Fast-Lin is beside the paper's Fast-Lip (its Lipschitz \
         variant). LP (LP-Last) and SDP-FO have no column in the paper's tables; αβ-CROWN (branch and bound) \
         is the paper's alone.\n\n",
    );
    for (norm, rows) in &report.tables {
        let name = if norm == "l2" { "Table 1 (l2)" } else { "Table 2 (l_inf)" };
        s.push_str(&format!("## {name}: robust images, seconds per image\n\n"));
        s.push_str("| model | eps | N |");
        for m in methods {
            s.push_str(&format!(" {} | s |", title(m)));
        }
        s.push_str(" αβ-CROWN | s |\n");
        s.push_str("|---|---|---|");
        for _ in methods {
            s.push_str("---|---|");
        }
        s.push_str("---|---|\n");
        for row in rows {
            let n = row.ours.values().map(|c| c.images).max().unwrap_or(0);
            s.push_str(&format!("| {} | {} | {} |", row.model, fmt_eps(row.eps), n));
            for m in methods {
                match row.ours.get(m) {
                    Some(c) if c.images > 0 => {
                        let count = if m == "pgd" { c.images - c.not_robust } else { c.robust };
                        let partial = if c.images < n { format!(" (of {})", c.images) } else { String::new() };
                        s.push_str(&format!(" {count}{partial} | {:.3} |", c.seconds_per_image));
                    }
                    _ => s.push_str(" - | - |"),
                }
            }
            s.push_str(" (not run) | |\n");
            s.push_str("| *paper* | | *1000* |");
            for m in methods {
                let v = paper_column(m).and_then(|c| row.paper.get(c));
                let t = paper_column(m).and_then(|c| row.paper.get(&format!("{c}_s")));
                match (v, t) {
                    (Some(v), Some(t)) => s.push_str(&format!(" *{v}* | *{t}* |")),
                    (Some(v), None) => s.push_str(&format!(" *{v}* | |")),
                    _ => s.push_str(" | |"),
                }
            }
            let ab = |k: &str| row.paper.get(k).map_or(String::new(), |v| format!("*{v}*"));
            s.push_str(&format!(" {} | {} |\n", ab("abcrown"), ab("abcrown_s")));
        }
        s.push('\n');
        let mut limits = Vec::new();
        for row in rows {
            for (m, c) in &row.ours {
                if !c.budgets.is_empty() {
                    limits.push(format!("{} {} {}: {}", row.model, fmt_eps(row.eps), title(m), c.budgets.join(", ")));
                }
            }
        }
        if !limits.is_empty() {
            s.push_str(&format!("Budget per target: {}.\n\n", limits.join("; ")));
        }
        s.push_str("Ratio certified / PGD UB on the same images (ours; the paper's in parentheses):\n\n");
        for row in rows {
            let mut parts = Vec::new();
            for m in methods.iter().filter(|m| *m != "pgd") {
                // Against PGD on the method's own images (every run attacks first, with the same seed).
                if let Some(c) = row.ours.get(m)
                    && c.images > 0
                    && c.images > c.not_robust
                {
                    let ub = c.images - c.not_robust;
                    let theirs = paper_column(m)
                        .and_then(|col| Some(row.paper.get(col)? / row.paper.get("pgd_ub")?))
                        .map_or(String::new(), |r| format!(" ({r:.2})"));
                    parts.push(format!("{} {:.2}{theirs}", title(m), c.robust as f64 / ub as f64));
                }
            }
            if !parts.is_empty() {
                s.push_str(&format!("- {} {}: {}\n", row.model, fmt_eps(row.eps), parts.join(", ")));
            }
        }
        s.push('\n');
    }
    s.push_str("## Ordering checks\n\n");
    s.push_str(
        "Per image: a method certified by CROWN must be by LP, LP by LP-Full, BM by BM-Full, and no method may \
         certify an image PGD breaks.\n\n",
    );
    if report.ordering_findings.is_empty() {
        s.push_str("All hold on every row above.\n\n");
    } else {
        for f in &report.ordering_findings {
            s.push_str(&format!("- {f}\n"));
        }
        s.push('\n');
    }
    for (norm, panels) in &report.figures {
        let (name, file) =
            if norm == "l2" { ("Figure 2 (l2)", "figure2-l2.png") } else { ("Figure 5 (l_inf)", "figure5-linf.png") };
        let n = panels.first().map_or(0, |p| p.images.len());
        s.push_str(&format!(
            "## {name}: average lower bound on phi over the 9 targets of the first {n} correct images\n\n![{name}](figures/{file})\n\n"
        ));
        s.push_str(
            "Every method computes all 9 targets to its limits here (no verdict-mode shortcuts). The costly \
             methods (SDP-FO, BM, BM-Full) may be computed at only some of the radii (`--figure-steps`): their \
             curves join the radii computed (the markers), and \"-\" marks the others in the tables below.\n\n",
        );
        for p in panels {
            s.push_str(&format!("{} (images {:?}):\n\n| radius |", p.model, p.images));
            for c in &p.curves {
                s.push_str(&format!(" {} |", c.method));
            }
            s.push_str("\n|---|");
            for _ in &p.curves {
                s.push_str("---|");
            }
            s.push('\n');
            for (k, r) in p.radii.iter().enumerate() {
                s.push_str(&format!("| {r} |"));
                for c in &p.curves {
                    s.push_str(&c.values[k].map_or(" - |".to_string(), |v| format!(" {v:.3} |")));
                }
                s.push('\n');
            }
            s.push('\n');
        }
    }
    s.push_str("Every number above is also in `docs/results.json`.\n");
    s
}

fn load_font(path: Option<&Path>) -> Res<()> {
    let candidates: Vec<PathBuf> = match path {
        Some(p) => vec![p.to_path_buf()],
        None => [
            "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/TTF/DejaVuSans.ttf",
            "/usr/share/fonts/dejavu/DejaVuSans.ttf",
            "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
            "/Library/Fonts/Arial.ttf",
            "C:\\Windows\\Fonts\\arial.ttf",
        ]
        .iter()
        .map(PathBuf::from)
        .collect(),
    };
    for c in &candidates {
        if let Ok(bytes) = std::fs::read(c) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok() {
                return Ok(());
            }
        }
    }
    Err("no TrueType font found (install fonts-dejavu-core or pass --font FILE.ttf)".into())
}

fn draw_figure(path: &Path, norm: &str, panels: &[Panel]) -> Res<()> {
    use plotters::prelude::*;
    let root = BitMapBackend::new(path, (600 * panels.len().max(1) as u32, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let areas = root.split_evenly((1, panels.len().max(1)));
    let palette = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
        RGBColor(227, 119, 194),
        RGBColor(23, 190, 207),
        BLACK,
    ];
    for (area, p) in areas.iter().zip(panels) {
        let vals: Vec<f64> = p.curves.iter().flat_map(|c| c.values.iter().flatten().copied()).collect();
        if vals.is_empty() {
            continue;
        }
        // Very loose bounds (IBP-like) would flatten every other curve: clip the axis at a floor
        // below the PGD curve's range, and say so in the caption.
        let top = vals.iter().copied().fold(f64::MIN, f64::max);
        let pgd_min = p
            .curves
            .iter()
            .filter(|c| c.method.starts_with("pgd"))
            .flat_map(|c| c.values.iter().flatten().copied())
            .fold(f64::MAX, f64::min);
        let raw_bottom = vals.iter().copied().fold(f64::MAX, f64::min);
        let span = (top - pgd_min.min(top)).max(1.0);
        let bottom = raw_bottom.max(pgd_min.min(top) - 3.0 * span);
        let xmax = p.radii.last().copied().unwrap_or(1.0);
        let xname = if norm == "l2" { "l2 radius" } else { "l_inf radius" };
        let caption = if raw_bottom < bottom { format!("{} (axis clipped)", p.model) } else { p.model.clone() };
        let mut chart = ChartBuilder::on(area)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax * 1.02, (bottom - 0.05 * (top - bottom))..(top + 0.05 * (top - bottom)))?;
        chart.configure_mesh().x_desc(xname).y_desc("average bound on phi").label_style(("sans-serif", 14)).draw()?;
        chart.draw_series(LineSeries::new([(0.0, 0.0), (xmax * 1.02, 0.0)], BLACK.mix(0.3)))?;
        for (k, c) in p.curves.iter().enumerate() {
            let color = if c.method.starts_with("pgd") { BLACK } else { palette[k % (palette.len() - 1)] };
            let pts: Vec<(f64, f64)> =
                p.radii.iter().zip(&c.values).filter_map(|(r, v)| v.map(|v| (*r, v.max(bottom)))).collect();
            let style = ShapeStyle { color: color.to_rgba(), filled: true, stroke_width: 2 };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(if c.method.starts_with("pgd") { "PGD (upper bound)" } else { title(&c.method) })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(pts.iter().map(|&(x, y)| Circle::new((x, y), 3, style)))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .position(SeriesLabelPosition::LowerLeft)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
