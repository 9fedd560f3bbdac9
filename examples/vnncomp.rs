//! Runs a VNN-COMP benchmark folder (its `instances.csv`: `onnx,vnnlib,timeout` per line) with
//! branch and bound, instance after instance with each instance's own timeout, and compares the
//! answers with the competition's (`reference_results.csv` beside it, when present: the resolved
//! answer and the leading tools' results and times).
//!
//! ```text
//! cargo run --release --example vnncomp -- --benchmark ../shared/data/vnncomp2022-mnist_fc --out results.csv
//! cargo run --release --example vnncomp -- --benchmark DIR --filter 256x2 --timeout-scale 0.5
//! cargo run --release --example vnncomp -- --benchmark DIR --set quick=0 --set fsb_candidates=16
//! ```
//!
//! Prints a line per instance (answer, seconds, the reference answer, WRONG when the two
//! contradict) and a summary per network: answered (unsat + sat), wrong, total and median time.
//! Exits 1 when an answer is wrong.

use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use nncert::verify::bab::{Bab, check_property_bab};
use nncert::verify::property::PropertyResult;

#[derive(Parser, Debug)]
#[command(about = "Run a VNN-COMP benchmark folder with branch and bound")]
struct Args {
    /// The benchmark folder (instances.csv, onnx/, vnnlib/).
    #[arg(long)]
    benchmark: PathBuf,
    /// Only instances whose network or property name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// Multiply every instance's timeout by this.
    #[arg(long, default_value_t = 1.0)]
    timeout_scale: f64,
    /// Write one CSV line per instance here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Progress lines during each search.
    #[arg(long)]
    progress: bool,
    /// A branch-and-bound setting other than its default, as NAME=VALUE with NAME a field of
    /// `nncert::verify::bab::Bab` (e.g. `--set fsb_candidates=16 --set refine=0.5`); repeatable.
    /// `timeout` and `progress` come from each instance's line and `--progress` instead.
    #[arg(long = "set", value_name = "NAME=VALUE")]
    set: Vec<String>,
}

/// `Bab::default()` with the `--set` overrides, through its serde form (so that every field is
/// settable and a misspelt name is an error).
fn settings(overrides: &[String]) -> nncert::Result<Bab> {
    let bad = |m: String| nncert::Error::InvalidArgument(m);
    let mut value = serde_json::to_value(Bab::default()).map_err(|e| bad(e.to_string()))?;
    let fields = value.as_object_mut().ok_or_else(|| bad("settings are not an object".into()))?;
    for o in overrides {
        let (name, v) = o.split_once('=').ok_or_else(|| bad(format!("--set {o}: expected NAME=VALUE")))?;
        if !fields.contains_key(name) {
            let names: Vec<&String> = fields.keys().collect();
            return Err(bad(format!("--set {o}: no setting '{name}' (settings: {names:?})")));
        }
        // A number, a boolean or a quoted string as JSON; a bare word as a string.
        let parsed = serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        fields.insert(name.to_string(), parsed);
    }
    serde_json::from_value(value).map_err(|e| bad(format!("--set: {e}")))
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(true) => {}
        Ok(false) => std::process::exit(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}

fn read(path: &PathBuf) -> nncert::Result<String> {
    std::fs::read_to_string(path).map_err(|source| nncert::Error::Io { path: path.clone(), source })
}

fn run(args: &Args) -> nncert::Result<bool> {
    let base = settings(&args.set)?;
    let instances = read(&args.benchmark.join("instances.csv"))?;
    let mut reference: HashMap<(String, String), String> = HashMap::new();
    if let Ok(text) = read(&args.benchmark.join("reference_results.csv")) {
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() >= 4 {
                reference.insert((f[0].to_string(), f[1].to_string()), f[3].to_string());
            }
        }
    }
    let mut out = match &args.out {
        Some(p) => Some(std::fs::File::create(p).map_err(|source| nncert::Error::Io { path: p.clone(), source })?),
        None => None,
    };
    if let Some(f) = out.as_mut() {
        let _ = writeln!(f, "onnx,vnnlib,timeout,result,seconds,domains,reference");
    }
    // Per network: (answered, wrong, times).
    let mut per_net: Vec<(String, usize, usize, usize, Vec<f64>)> = Vec::new();
    let mut all_right = true;
    let mut nets: HashMap<String, nncert::Network> = HashMap::new();
    for line in instances.lines() {
        let f: Vec<&str> = line.trim().split(',').collect();
        if f.len() < 3 {
            continue;
        }
        let (onnx, vnnlib) = (f[0], f[1]);
        let Ok(timeout) = f[2].trim().parse::<f64>() else {
            continue;
        };
        if let Some(filter) = &args.filter
            && !onnx.contains(filter.as_str())
            && !vnnlib.contains(filter.as_str())
        {
            continue;
        }
        let start = Instant::now();
        if !nets.contains_key(onnx) {
            nets.insert(onnx.to_string(), nncert::io::load_network(args.benchmark.join(onnx))?);
        }
        let net = &nets[onnx];
        let prop = nncert::io::load_vnnlib(args.benchmark.join(vnnlib))?;
        let settings = Bab { timeout: timeout * args.timeout_scale, progress: args.progress, ..base.clone() };
        let report = check_property_bab(net, &prop, None, &settings)?;
        let seconds = start.elapsed().as_secs_f64();
        let answer = match &report.result {
            PropertyResult::Unsat => "unsat",
            PropertyResult::Sat { .. } => "sat",
            PropertyResult::Unknown => "unknown",
            PropertyResult::Timeout => "timeout",
        };
        let name = |p: &str| p.rsplit('/').next().unwrap_or(p).to_string();
        let expected = reference.get(&(name(onnx), name(vnnlib))).cloned().unwrap_or_default();
        let wrong = (answer == "unsat" && expected == "violated") || (answer == "sat" && expected == "holds");
        if let PropertyResult::Sat { input, .. } = &report.result {
            // A counterexample must lie in one of the property's boxes and violate it.
            let y = net.forward(input)?;
            assert!(prop.violated_by(input, &y), "an unchecked counterexample");
        }
        all_right &= !wrong;
        println!(
            "{:<24} {:<22} {:<8} {:>7.1} s {:>7} domains  reference {:<9}{}",
            name(onnx),
            name(vnnlib),
            answer,
            seconds,
            report.stats.domains,
            expected,
            if wrong { "  WRONG" } else { "" }
        );
        if let Some(f) = out.as_mut() {
            let _ = writeln!(f, "{onnx},{vnnlib},{timeout},{answer},{seconds:.3},{},{expected}", report.stats.domains);
        }
        let key = name(onnx);
        let idx = match per_net.iter().position(|r| r.0 == key) {
            Some(i) => i,
            None => {
                per_net.push((key, 0, 0, 0, Vec::new()));
                per_net.len() - 1
            }
        };
        let r = &mut per_net[idx];
        r.1 += 1;
        r.2 += usize::from(answer == "unsat" || answer == "sat");
        r.3 += usize::from(wrong);
        r.4.push(seconds);
    }
    println!("\nnetwork                  instances answered wrong  total s  median s");
    for (net, n, answered, wrong, mut times) in per_net {
        times.sort_by(f64::total_cmp);
        let median = if times.is_empty() { 0.0 } else { times[times.len() / 2] };
        println!("{net:<24} {n:>9} {answered:>8} {wrong:>5} {:>8.1} {median:>9.2}", times.iter().sum::<f64>());
    }
    Ok(all_right)
}
