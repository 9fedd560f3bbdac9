//! Re-checks certificates against a model: exit 0 when every certificate re-checks, 1 otherwise.
//!
//! ```text
//! cargo run --release --example certify -- --method crown --count 20 --certificates certs
//! cargo run --release --example check -- --certificate certs/3.json      # bundled digits model
//! cargo run --release --example check -- --model MODEL --certificate FILE [FILE ...]
//! ```
//!
//! For each file it prints what it re-proved (the verdict, the number of hidden-layer intervals,
//! the smallest re-proven margin bound or the counterexample's margin), or the reason it rejects
//! the certificate. Nothing in the file is trusted: `nncert::certificate::check` recomputes every
//! interval and bound from the model, the input set and the multipliers (docs/formats.md).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;

const DEFAULT_MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/data/models/digits-relu-adv.json");

#[derive(Parser, Debug)]
#[command(about = "Re-check robustness certificates against a model")]
struct Args {
    /// Model file (JSON model format, ONNX or .nnet). Default: the bundled digits ReLU model.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Certificate files written by `certify --certificates DIR`.
    #[arg(long, num_args = 1.., required = true)]
    certificate: Vec<PathBuf>,
}

fn main() {
    let args = Args::parse();
    let model = args.model.unwrap_or_else(|| PathBuf::from(DEFAULT_MODEL));
    let net = match nncert::io::load_network(&model) {
        Ok(net) => net,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    };
    let mut failed = 0;
    for path in &args.certificate {
        let start = Instant::now();
        let outcome = std::fs::read_to_string(path)
            .map_err(|e| nncert::Error::Io { path: path.clone(), source: e })
            .and_then(|text| nncert::certificate::Certificate::from_json(&text))
            .and_then(|cert| nncert::certificate::check(&net, &cert).map(|c| (cert, c)));
        let secs = start.elapsed().as_secs_f64();
        match outcome {
            Ok((cert, checked)) => {
                let detail = match checked.counterexample_margin {
                    Some(m) => format!("counterexample margin {m:.6} (target {})", cert.counterexample.unwrap().target),
                    None => {
                        let min = checked.bounds.iter().map(|b| b.1).fold(f64::INFINITY, f64::min);
                        let targets = checked.bounds.len();
                        format!("{} intervals, {targets} margin bounds re-proven, smallest {min:.6}", checked.neurons)
                    }
                };
                println!(
                    "{}: ok: {} ({}) | {detail} | {secs:.3}s",
                    path.display(),
                    checked.verdict.name(),
                    cert.method
                );
                // Per target only for a single file (a directory's worth would flood the screen).
                for (t, b) in checked.bounds.iter().filter(|_| args.certificate.len() == 1) {
                    println!("  target {t}: margin >= {b:.9}");
                }
            }
            Err(e) => {
                failed += 1;
                println!("{}: REJECTED: {e}", path.display());
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} certificates rejected", args.certificate.len());
        std::process::exit(1);
    }
}
