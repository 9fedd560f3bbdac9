//! Checks a VNN-LIB property on a network and writes the VNN-COMP result.
//!
//! ```text
//! cargo run --release --example vnnlib -- --model data/models/digits-relu-adv.json \
//!     --property data/properties/digits-0-linf-0.03.vnnlib
//! cargo run --release --example vnnlib -- --model net.onnx --property prop.vnnlib --timeout 120 --output result.txt
//! ```
//!
//! Models: the JSON model format, ONNX (`.onnx`) or ACAS Xu `.nnet` (whose input box is
//! intersected with the property's). Methods: `bab` (default: complete branch and bound, ReLU or
//! input splitting chosen by the input size), or one relaxation: `ibp`, `crown`, `alpha-crown`,
//! `lp`, `lp-full`. The first line of standard output is the answer, `sat`, `unsat`, `unknown` or
//! `timeout`; after `sat` comes the counterexample `((X_0 v) ... (Y_0 v) ...)`, as in the
//! competition's result file (`--output`). Exits 0 for any answer and 1 on an error.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use nncert::verify::bab::{Bab, check_property_bab};
use nncert::verify::property::{PropertyMethod, check_property};

#[derive(Parser, Debug)]
#[command(about = "Check a VNN-LIB property on a network (VNN-COMP result format)")]
struct Args {
    /// Model: JSON model format, .onnx or .nnet.
    #[arg(long)]
    model: PathBuf,
    /// VNN-LIB property file.
    #[arg(long)]
    property: PathBuf,
    /// bab, ibp, crown, alpha-crown, lp, lp-full or bm-full.
    #[arg(long, default_value = "bab")]
    method: String,
    /// Wall-clock limit in seconds (bab; the answer is `timeout` when it is reached).
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// What bab splits: auto (input splitting for <= 10 inputs, else ReLU splitting), relu, input.
    #[arg(long, default_value = "auto")]
    branching: String,
    /// Attack steps per disjunct and start.
    #[arg(long, default_value_t = 100)]
    attack_steps: usize,
    /// Adam steps on the slopes and split multipliers per domain (bab).
    #[arg(long, default_value_t = Bab::default().iterations)]
    iterations: usize,
    /// Slope steps of the root's alpha-CROWN bounds (bab, ReLU splitting).
    #[arg(long, default_value_t = Bab::default().root_iterations)]
    root_iterations: usize,
    /// Convergence tolerance of the root's ascent (bab; 0: every step; see `Bab::root_tolerance`).
    #[arg(long, default_value_t = Bab::default().root_tolerance)]
    root_tolerance: f64,
    /// Hidden layers after a split whose bounds a child recomputes (bab; default all).
    #[arg(long)]
    refresh_layers: Option<usize>,
    /// Domains split per round (bab).
    #[arg(long, default_value_t = Bab::default().batch)]
    batch: usize,
    /// Share of the timeout spent refining the root's intermediate bounds by branch and bound (bab,
    /// ReLU splitting; 0: off).
    #[arg(long, default_value_t = Bab::default().refine)]
    refine: f64,
    /// Domains per neuron of that refinement (bab).
    #[arg(long, default_value_t = Bab::default().refine_domains)]
    refine_domains: usize,
    /// Share of the timeout the search first runs on alpha-CROWN's root bounds alone, before that
    /// refinement (bab, ReLU splitting; 0: refine first; see `Bab::quick`).
    #[arg(long, default_value_t = Bab::default().quick)]
    quick: f64,
    /// Share of the timeout BM-Full may spend bounding domains the beta-CROWN search leaves open
    /// (bab, ReLU splitting; 0: off; see `Bab::sdp_share`).
    #[arg(long, default_value_t = Bab::default().sdp_share)]
    sdp_share: f64,
    /// Domains bounded before BM-Full starts (bab; `Bab::sdp_after`).
    #[arg(long, default_value_t = Bab::default().sdp_after)]
    sdp_after: usize,
    /// Print a progress line every few seconds (bab).
    #[arg(long)]
    progress: bool,
    /// Write the result file here (default: standard output only).
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> nncert::Result<()> {
    let start = Instant::now();
    let is_nnet = args.model.extension().is_some_and(|e| e.eq_ignore_ascii_case("nnet"));
    let (net, domain) = if is_nnet {
        let m = nncert::io::load_nnet(&args.model)?;
        (m.network, Some(m.domain))
    } else {
        (nncert::io::load_network(&args.model)?, None)
    };
    let prop = nncert::io::load_vnnlib(&args.property)?;
    let method = match args.method.as_str() {
        "bab" => None,
        "ibp" => Some(PropertyMethod::Ibp),
        "crown" => Some(PropertyMethod::Crown),
        "alpha-crown" => Some(PropertyMethod::AlphaCrown),
        "lp" => Some(PropertyMethod::Lp),
        "lp-full" => Some(PropertyMethod::LpFull),
        "bm-full" => Some(PropertyMethod::BmFull),
        other => {
            return Err(nncert::Error::InvalidArgument(format!(
                "unknown method '{other}' (bab, ibp, crown, alpha-crown, lp, lp-full, bm-full)"
            )));
        }
    };
    let result = match method {
        Some(m) => check_property(&net, &prop, domain.as_ref(), m, args.attack_steps)?,
        None => {
            let settings = Bab {
                timeout: args.timeout,
                branching: args.branching.parse()?,
                attack_steps: args.attack_steps,
                progress: args.progress,
                iterations: args.iterations,
                root_iterations: args.root_iterations,
                root_tolerance: args.root_tolerance,
                batch: args.batch,
                refresh_layers: args.refresh_layers.unwrap_or(usize::MAX),
                refine: args.refine,
                refine_domains: args.refine_domains,
                quick: args.quick,
                sdp_share: args.sdp_share,
                sdp_after: args.sdp_after,
                ..Bab::default()
            };
            let report = check_property_bab(&net, &prop, domain.as_ref(), &settings)?;
            eprintln!(
                "bab: {} domains bounded, {} LP leaves, at most {} open",
                report.stats.domains, report.stats.leaves, report.stats.max_open
            );
            let s = &report.stats.sdp;
            if s.domains > 0 {
                eprintln!(
                    "bab: BM-Full bounded {} domains ({:.1} s) and refuted {} of them",
                    s.domains, s.seconds, s.refuted
                );
            }
            let r = &report.stats.refine;
            if r.searches > 0 {
                eprintln!(
                    "bab: the root's bounds refined by {} searches ({} domains, {:.1} s): {} -> {} unstable neurons",
                    r.searches, r.domains, r.seconds, r.unstable_before, r.unstable_after
                );
            }
            report.result
        }
    };
    let text = result.to_vnncomp();
    print!("{text}");
    let disjuncts: usize = prop.regions.iter().map(|r| r.disjuncts.len()).sum();
    eprintln!("{} region(s), {disjuncts} disjunct(s), {:.3} s", prop.regions.len(), start.elapsed().as_secs_f64());
    if let Some(path) = &args.output {
        std::fs::write(path, &text).map_err(|source| nncert::Error::Io { path: path.clone(), source })?;
    }
    Ok(())
}
