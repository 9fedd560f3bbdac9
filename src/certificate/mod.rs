//! Certificates: proofs that leave the process and re-check.
//!
//! A [`Certificate`] is a versioned JSON document (format in docs/formats.md) that names a
//! model (by a digest of its weights), an input set (center, norm, eps, domain), a label, and
//! the evidence for a claim about the margins f(x)\[label\] - f(x)\[target\] over the set:
//!
//! * **bounds** from multipliers: the intervals of every hidden layer's pre-activations and a
//!   lower bound per target, each proven by the Lagrangian of the network's layer equalities
//!   at given multipliers (`lagrangian.rs`: any multipliers give a valid bound, so they need no
//!   trust). CROWN's multipliers follow from its slopes; alpha-CROWN stores its optimized slopes
//!   per bound; the multipliers can also be stored as vectors (any method's dual solution).
//! * **SDP bounds** ([`crate::verify::sdp`], Proposition 3.1 of the BM-r paper): the multipliers
//!   y, z of the quadratic relaxation, on the intervals above.
//! * **branch and bound**: a tree of regions (ReLU splits, input bisections) that covers the set,
//!   each leaf bounded on its region (`tree.rs`).
//! * **curvature bounds** (CRC, smooth activations): the dual point of Definition 2 of the CRC
//!   paper, with a sound gradient of the margin (`curvature.rs`).
//! * a **counterexample**: an input of the set where the label loses.
//!
//! [`check`] re-verifies a certificate against a model by a short, separate path: it recomputes
//! every interval and every bound from the model, the input set and the multipliers, in sound
//! floating-point arithmetic, and accepts the certificate only if every number it claims is
//! re-proven. It trusts no stored number: a claimed bound, an interval or the verdict that the
//! recomputation does not reach is a rejection, and so is a model whose digest differs.
//!
//! ```
//! use nncert::certificate::{self, Certificate, Evidence};
//! use nncert::{Activation, Domain, InputSet, Layer, Network, Norm, Verdict};
//!
//! let hidden = Layer::from_rows(&[vec![1.0, -1.0], vec![0.5, 1.0]], vec![0.0, 0.1], Activation::Relu)?;
//! let out = Layer::from_rows(&[vec![2.0, 0.0], vec![0.0, 1.0]], vec![0.0, 0.0], Activation::Identity)?;
//! let net = Network::new(vec![2], vec![hidden, out])?;
//! let set = InputSet::new(vec![0.9, 0.1], 0.05, Norm::Linf, Some(Domain::uniform(2, 0.0, 1.0)?))?;
//!
//! // CROWN's evidence for label 0 against target 1, sealed with the bounds it proves.
//! let cert = Certificate::seal(&net, &set, None, 0, "crown", &Evidence::crown(&net, &set, &[1])?)?;
//! assert_eq!(cert.verdict, Verdict::Robust);
//! let json = cert.to_json()?;
//!
//! // Anyone holding the model re-checks the file.
//! let checked = certificate::check(&net, &Certificate::from_json(&json)?)?;
//! assert_eq!(checked.verdict, Verdict::Robust);
//! assert!(checked.bounds[0].1 > 0.0);
//! # Ok::<(), nncert::Error>(())
//! ```

mod check;
mod curvature;
mod evidence;
mod format;
mod lagrangian;
mod tree;

pub use check::{Checked, check};
pub(crate) use check::{Intervals, choice};
pub use evidence::Evidence;
pub use format::*;

use crate::certify::Verdict;
use crate::error::{Error, Result};
use crate::network::Network;
use crate::spec::InputSet;
use check::{reprove, surely_inside, verdict_of};

impl Certificate {
    fn header(net: &Network, set: &InputSet, image: Option<usize>, label: usize, method: &str) -> Self {
        Certificate {
            format: FORMAT.into(),
            version: VERSION,
            model: ModelRecord {
                digest: digest(net),
                inputs: net.input_size(),
                layers: net.layers().iter().map(|l| l.output_size()).collect(),
            },
            input_set: InputSetRecord::of(set, image),
            label,
            method: method.into(),
            verdict: Verdict::Unknown,
            relaxations: Vec::new(),
            layers: Vec::new(),
            targets: Vec::new(),
            counterexample: None,
        }
    }

    /// The certificate of `evidence`: the intervals and bounds it proves (computed by the
    /// checker's own path, so that [`check`] re-proves exactly them), and the verdict `robust`
    /// when every class other than the label has a bound > 0, else `unknown`.
    pub fn seal(
        net: &Network,
        set: &InputSet,
        image: Option<usize>,
        label: usize,
        method: &str,
        evidence: &Evidence,
    ) -> Result<Self> {
        crate::verify::check_query(net, set, label, &[])?;
        let mut cert = Self::header(net, set, image, label, method);
        cert.relaxations = evidence.relaxations.clone();
        let hidden = net.layers().len() - 1;
        // (No layers: a network with smooth activations, whose evidence is CRC's.)
        if evidence.layers.len() != hidden && !evidence.layers.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "evidence for {} hidden layers, the network has {hidden}",
                evidence.layers.len()
            )));
        }
        cert.layers = evidence
            .layers
            .iter()
            .map(|m| LayerProof { lower: Vec::new(), upper: Vec::new(), multipliers: m.clone() })
            .collect();
        cert.targets = evidence
            .targets
            .iter()
            .map(|(t, proofs)| TargetProof { target: *t, bound: f64::NEG_INFINITY, proofs: proofs.clone() })
            .collect();
        let (intervals, bounds) = reprove(net, set, &cert)?;
        for (layer, (lo, hi)) in cert.layers.iter_mut().zip(intervals) {
            layer.lower = lo;
            layer.upper = hi;
        }
        for (t, b) in cert.targets.iter_mut().zip(bounds) {
            t.bound = b;
        }
        cert.verdict = verdict_of(net, label, &cert.targets);
        Ok(cert)
    }

    /// The certificate of a counterexample: `input` in X where `target` beats `label`. None when
    /// the checker's test cannot confirm it (the real margin not certainly < 0, or the point not
    /// certainly in X even after a pull towards the center by a relative 1e-9).
    pub fn counterexample(
        net: &Network,
        set: &InputSet,
        image: Option<usize>,
        label: usize,
        method: &str,
        target: usize,
        input: &[f64],
    ) -> Result<Option<Self>> {
        crate::verify::check_query(net, set, label, &[target])?;
        let pulled: Vec<f64> = input.iter().zip(set.center()).map(|(x, c)| c + (x - c) * (1.0 - 1e-9)).collect();
        for x in [input.to_vec(), pulled] {
            if surely_inside(set, &x) && net.surely_loses(&x, label, target)? {
                let mut cert = Self::header(net, set, image, label, method);
                cert.verdict = Verdict::NotRobust;
                cert.counterexample = Some(CounterexampleRecord { target, input: x });
                return Ok(Some(cert));
            }
        }
        Ok(None)
    }

    /// The certificate as pretty JSON.
    pub fn to_json(&self) -> Result<String> {
        serde_json::to_string_pretty(self).map_err(|e| Error::InvalidArgument(format!("certificate: {e}")))
    }

    /// A certificate from JSON (errors on malformed text; the content is judged by [`check`]).
    pub fn from_json(text: &str) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::CertificateFormat(e.to_string()))
    }
}
