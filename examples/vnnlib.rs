//! Checks a VNN-LIB property on a network and writes the VNN-COMP result.
//!
//! ```text
//! cargo run --release --example vnnlib -- --model data/models/digits-relu-adv.json \
//!     --property data/properties/digits-0-linf-0.03.vnnlib
//! cargo run --release --example vnnlib -- --model net.onnx --property prop.vnnlib --method lp --output result.txt
//! ```
//!
//! Models: the JSON model format, ONNX (`.onnx`) or ACAS Xu `.nnet` (whose input box is
//! intersected with the property's). Methods: crown (default), lp, lp-full. Prints `unsat`, `sat`
//! with the counterexample, or `unknown`; exits 0 for any of them and 1 on an error.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
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
    /// crown, lp or lp-full.
    #[arg(long, default_value = "crown")]
    method: String,
    /// Attack steps per disjunct and start.
    #[arg(long, default_value_t = 100)]
    attack_steps: usize,
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
        "crown" => PropertyMethod::Crown,
        "lp" => PropertyMethod::Lp,
        "lp-full" => PropertyMethod::LpFull,
        other => {
            return Err(nncert::Error::InvalidArgument(format!("unknown method '{other}' (crown, lp, lp-full)")));
        }
    };
    let result = check_property(&net, &prop, domain.as_ref(), method, args.attack_steps)?;
    let text = result.to_vnncomp();
    print!("{text}");
    eprintln!("{} disjunct(s), {:.3} s", prop.disjuncts.len(), start.elapsed().as_secs_f64());
    if let Some(path) = &args.output {
        std::fs::write(path, &text).map_err(|source| nncert::Error::Io { path: path.clone(), source })?;
    }
    Ok(())
}
