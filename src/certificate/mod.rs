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

mod curvature;
mod lagrangian;
mod tree;

use serde::{Deserialize, Serialize};

use lagrangian::{Choice, Plain};

use crate::bounds::{Interval, PreActivationBounds};
use crate::certify::Verdict;
use crate::error::{Error, Result};
use crate::network::{Activation, Network};
use crate::spec::{Domain, InputSet, Norm};

/// The value of [`Certificate::format`].
pub const FORMAT: &str = "nncert-certificate";
/// The format version this crate writes and reads.
pub const VERSION: u32 = 1;

/// A proof about one input set, as written to and read from JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// The model the proof is for.
    pub model: ModelRecord,
    /// The input set X.
    pub input_set: InputSetRecord,
    /// The label whose margins are bounded.
    pub label: usize,
    /// The method that produced the evidence (informational).
    pub method: String,
    /// The claim: `robust` (every target's bound > 0), `not_robust` (a counterexample) or
    /// `unknown` (bounds only).
    pub verdict: Verdict,
    /// Linear relaxations the multipliers refer to.
    #[serde(default)]
    pub relaxations: Vec<Lines>,
    /// Intervals of the pre-activations of each hidden layer, with their evidence.
    #[serde(default)]
    pub layers: Vec<LayerProof>,
    /// Per target, the claimed lower bound on the margin and its evidence.
    #[serde(default)]
    pub targets: Vec<TargetProof>,
    /// An input of X where the label loses (for `not_robust`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterexample: Option<CounterexampleRecord>,
}

/// The model: a digest of its weights ([`digest`]) and its shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// [`digest`] of the model.
    pub digest: String,
    /// Input size.
    pub inputs: usize,
    /// Output size of each layer (the last one is the number of classes).
    pub layers: Vec<usize>,
}

/// The input set X = {x : ||x - center|| <= eps} ∩ domain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InputSetRecord {
    /// The index of the image in its data set (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<usize>,
    /// The center.
    pub center: Vec<f64>,
    /// The norm of the ball.
    pub norm: Norm,
    /// The radius.
    pub eps: f64,
    /// The valid input box, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<BoxRecord>,
}

/// A box lower <= x <= upper.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoxRecord {
    /// Lower ends.
    pub lower: Vec<f64>,
    /// Upper ends.
    pub upper: Vec<f64>,
}

/// Linear bounds lower\[j\]\[n\] z <= relu(z) (where the bound's coefficient is >= 0) and
/// relu(z) <= upper\[j\]\[n\] z + offset (where it is < 0), per hidden layer j and neuron n, by
/// which a backward relaxation passes its coefficients down (the offsets are not needed: the
/// checker minimizes each neuron exactly). Any numbers are valid; [`Lines::of`] gives CROWN's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lines {
    /// Lower slopes, per hidden layer.
    pub lower: Vec<Vec<f64>>,
    /// Upper slopes, per hidden layer.
    pub upper: Vec<Vec<f64>>,
}

impl Lines {
    /// CROWN-Ada's lines on the hidden layers' intervals of `pre`: (1, 1) for active neurons,
    /// (0, 0) for inactive ones, (1 if u > -l else 0, the chord's slope u / (u - l)) for unstable
    /// ones, (1, 1) for identity layers.
    pub fn of(net: &Network, pre: &PreActivationBounds) -> Self {
        Self::with_slope(net, pre, crate::bounds::linear::Slope::Adaptive)
    }

    /// The lines of the backward relaxation with lower slope rule `slope` (Fast-Lin's u/(u-l)
    /// or CROWN-Ada's) on the hidden layers' intervals of `pre`.
    pub fn with_slope(net: &Network, pre: &PreActivationBounds, slope: crate::bounds::linear::Slope) -> Self {
        let hidden = net.layers().len() - 1;
        let (lower, upper) = (0..hidden)
            .map(|k| {
                let iv = &pre.layers[k];
                let relu = net.layers()[k].activation() == Activation::Relu;
                (0..iv.len())
                    .map(|n| {
                        let (l, u) = (iv.lower[n], iv.upper[n]);
                        if !relu || l >= 0.0 {
                            (1.0, 1.0)
                        } else if u <= 0.0 {
                            (0.0, 0.0)
                        } else {
                            let chord = crate::bounds::rounding::relu_chord(l, u).0;
                            let lower = match slope {
                                crate::bounds::linear::Slope::FastLin => chord,
                                crate::bounds::linear::Slope::Adaptive => {
                                    if u > -l {
                                        1.0
                                    } else {
                                        0.0
                                    }
                                }
                            };
                            (lower, chord)
                        }
                    })
                    .unzip::<f64, f64, Vec<f64>, Vec<f64>>()
            })
            .unzip();
        Lines { lower, upper }
    }
}

/// Claimed intervals of one hidden layer's pre-activations, and how each end is proven.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LayerProof {
    /// Lower ends.
    pub lower: Vec<f64>,
    /// Upper ends.
    pub upper: Vec<f64>,
    /// The multipliers of the bounds.
    pub multipliers: LayerMultipliers,
}

/// The multipliers of one layer's interval ends; the best bound they give counts. Every end is
/// also bounded by interval arithmetic on the layer below.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerMultipliers {
    /// The same for every end.
    All(Vec<Multipliers>),
    /// One list per neuron for the lower ends and one for the upper ends.
    PerNeuron {
        /// Evidence of the lower ends.
        lower: Vec<Vec<Multipliers>>,
        /// Evidence of the upper ends.
        upper: Vec<Vec<Multipliers>>,
    },
}

impl LayerMultipliers {
    /// Per neuron from traced slopes ([`crate::bounds::optimized::optimized_bounds_traced`]) on
    /// the lines `relaxation` (with their upper slopes), each end also with `base`.
    pub fn per_neuron(
        neurons: Vec<crate::bounds::optimized::NeuronSlopes>,
        relaxation: usize,
        base: &[Multipliers],
    ) -> Self {
        let slopes = |s: Option<Vec<Vec<f64>>>| s.map(|lower| Multipliers::Slopes { relaxation, lower });
        Self::with(neurons.into_iter().map(|(l, u)| (slopes(l), slopes(u))).collect(), base)
    }

    /// Per neuron from LP multipliers ([`crate::bounds::lp::tighten_layer_traced`]), each end
    /// also with `base`.
    pub fn from_lp(neurons: Vec<crate::bounds::lp::NeuronMultipliers>, base: &[Multipliers]) -> Self {
        Self::with(
            neurons.into_iter().map(|(l, u)| (l.map(Multipliers::Vectors), u.map(Multipliers::Vectors))).collect(),
            base,
        )
    }

    /// `base` for every end, plus each neuron's own (lower, upper) evidence where it has one.
    fn with(neurons: Vec<(Option<Multipliers>, Option<Multipliers>)>, base: &[Multipliers]) -> Self {
        if neurons.iter().all(|(l, u)| l.is_none() && u.is_none()) {
            return LayerMultipliers::All(base.to_vec());
        }
        let of = |m: Option<Multipliers>| {
            let mut v = base.to_vec();
            v.extend(m);
            v
        };
        let (lower, upper) = neurons.into_iter().map(|(l, u)| (of(l), of(u))).unzip();
        LayerMultipliers::PerNeuron { lower, upper }
    }
}

/// The multipliers nu_j of one bound's Lagrangian, for the hidden layers below the bounded
/// quantity (lagrangian.rs): any values give a valid bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Multipliers {
    /// Passed back through the certificate's lines number i ([`Certificate::relaxations`]).
    Relaxation(usize),
    /// Passed back through lines number `relaxation` with these lower slopes instead of its own
    /// (alpha-CROWN's optimized slopes), per hidden layer.
    Slopes {
        /// The lines whose upper slopes are used.
        relaxation: usize,
        /// Lower slopes, per hidden layer.
        lower: Vec<Vec<f64>>,
    },
    /// The multipliers themselves, per hidden layer from the first.
    Vectors(Vec<Vec<f64>>),
}

/// A claimed lower bound on f(x)\[label\] - f(x)\[target\] over X.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetProof {
    /// The target class.
    pub target: usize,
    /// The claimed bound.
    pub bound: f64,
    /// Evidence; the best bound any of them proves counts.
    pub proofs: Vec<TargetEvidence>,
}

/// One piece of evidence for a target's bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetEvidence {
    /// The Lagrangian bound with these multipliers.
    Linear(Multipliers),
    /// Proposition 3.1's bound with these SDP multipliers, on the hidden boxes and triangle cuts
    /// of the certificate's intervals ([`crate::verify::sdp`]).
    Sdp(crate::verify::sdp::Multipliers),
    /// The curvature bound of CRC (networks with smooth activations): the dual bound of
    /// Definition 2 at this eta and point (`certificate/curvature.rs`); the checker also tries
    /// the Taylor bound at the center. Over the l2 ball (radius eps; eps sqrt(n) for l_inf sets).
    Curvature {
        /// eta (> -m, the curvature's lower bound).
        eta: f64,
        /// The point x̄.
        point: Vec<f64>,
    },
    /// Branch and bound: the leaves of a tree whose branches cover X (each question answered both
    /// ways below the same node); the bound is the smallest leaf's.
    Tree(Vec<Leaf>),
}

/// A branch of a branch-and-bound tree: one side of a ReLU split or of an input bisection.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// The pre-activation of `neuron` in hidden layer `layer` is >= 0 (`active`) or <= 0.
    Relu {
        /// Hidden layer (0 = the first).
        layer: usize,
        /// Neuron.
        neuron: usize,
        /// The side.
        active: bool,
    },
    /// Input coordinate `dim` is >= `at` (`upper`) or <= `at`.
    Input {
        /// Coordinate.
        dim: usize,
        /// Threshold.
        at: f64,
        /// The side.
        upper: bool,
    },
}

/// A leaf of a branch-and-bound tree: the branches from the root to it, in order, and evidence
/// for its bound (the checker also tries interval arithmetic and CROWN's lines on the leaf's own
/// intervals, recomputed under its branches).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Leaf {
    /// The branches from the root, in the order they were made.
    pub splits: Vec<Split>,
    /// Multipliers for the leaf's bound (optional).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proofs: Vec<Multipliers>,
}

/// An input of X where the label loses to `target`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CounterexampleRecord {
    /// The class that wins.
    pub target: usize,
    /// The input.
    pub input: Vec<f64>,
}

/// The evidence a method hands over for a certificate, before [`Certificate::seal`] computes the
/// numbers it proves.
#[derive(Clone, Debug, PartialEq)]
pub struct Evidence {
    /// Linear relaxations, referred to by index.
    pub relaxations: Vec<Lines>,
    /// One entry per hidden layer.
    pub layers: Vec<LayerMultipliers>,
    /// (target, evidence).
    pub targets: Vec<(usize, Vec<TargetEvidence>)>,
}

impl Evidence {
    /// CROWN's ([`crate::verify::Crown`]): its lines, on its own intervals, everywhere.
    pub fn crown(net: &Network, set: &InputSet, targets: &[usize]) -> Result<Self> {
        Self::propagation(net, set, targets, crate::bounds::Propagation::Crown)
    }

    /// A propagation method's: IBP's is interval arithmetic alone (which the checker always
    /// tries), Fast-Lin's and CROWN's their lines on their own intervals.
    pub fn propagation(
        net: &Network,
        set: &InputSet,
        targets: &[usize],
        method: crate::bounds::Propagation,
    ) -> Result<Self> {
        use crate::bounds::{Propagation, linear::Slope};
        let hidden = net.layers().len() - 1;
        let slope = match method {
            Propagation::Ibp => {
                return Ok(Evidence {
                    relaxations: Vec::new(),
                    layers: vec![LayerMultipliers::All(Vec::new()); hidden],
                    targets: targets.iter().map(|&t| (t, Vec::new())).collect(),
                });
            }
            Propagation::FastLin => Slope::FastLin,
            Propagation::Crown => Slope::Adaptive,
        };
        let pre = crate::bounds::pre_activation_bounds(net, set, method)?;
        let base = vec![Multipliers::Relaxation(0)];
        Ok(Evidence {
            relaxations: vec![Lines::with_slope(net, &pre, slope)],
            layers: vec![LayerMultipliers::All(base); hidden],
            targets: targets.iter().map(|&t| (t, vec![TargetEvidence::Linear(Multipliers::Relaxation(0))])).collect(),
        })
    }
}

impl Evidence {
    /// The evidence of slopes optimized per bound (alpha-CROWN, [`crate::bounds::optimized`]):
    /// the hidden intervals of [`optimized_bounds_traced`] with `layers` (or CROWN's ∩ IBP's
    /// with None), each end proven by its optimized slopes or CROWN's; every target by its
    /// slopes optimized with `margins` on those intervals, or CROWN's lines on them.
    ///
    /// [`optimized_bounds_traced`]: crate::bounds::optimized::optimized_bounds_traced
    pub fn optimized(
        net: &Network,
        set: &InputSet,
        label: usize,
        targets: &[usize],
        layers: Option<&crate::bounds::optimized::SlopeSettings>,
        margins: &crate::bounds::optimized::SlopeSettings,
    ) -> Result<Self> {
        use crate::bounds::optimized::{optimized_bounds_traced, optimized_margin_bounds_traced};
        let crown = crate::bounds::pre_activation_bounds(net, set, crate::bounds::Propagation::Crown)?;
        let base = [Multipliers::Relaxation(0)];
        let hidden = net.layers().len() - 1;
        let (pre, proofs) = match layers {
            Some(settings) => {
                let (pre, traced) = optimized_bounds_traced(net, set, settings)?;
                (pre, traced.into_iter().map(|t| LayerMultipliers::per_neuron(t, 1, &base)).collect())
            }
            None => (crate::bounds::crown_and_ibp(net, set)?, vec![LayerMultipliers::All(base.to_vec()); hidden]),
        };
        let (_, slopes) = optimized_margin_bounds_traced(net, set, &pre, label, targets, margins)?;
        Ok(Evidence {
            relaxations: vec![Lines::of(net, &crown), Lines::of(net, &pre)],
            layers: proofs,
            targets: targets
                .iter()
                .zip(slopes)
                .map(|(&t, lower)| {
                    let slopes = Multipliers::Slopes { relaxation: 1, lower };
                    (t, vec![TargetEvidence::Linear(slopes), TargetEvidence::Linear(Multipliers::Relaxation(1))])
                })
                .collect(),
        })
    }
}

/// What [`check`] re-proved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    /// The verdict the re-proven numbers support.
    pub verdict: Verdict,
    /// Hidden-layer intervals re-proven (neurons, both ends).
    pub neurons: usize,
    /// (target, re-proven lower bound), in the certificate's order.
    pub bounds: Vec<(usize, f64)>,
    /// The margin at the counterexample (an upper bound on the float evaluation's margin), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterexample_margin: Option<f64>,
}

/// FNV-1a (64 bits) of the network: the input size, then per layer its output and input sizes,
/// its activation's name and its weights (row by row) and biases as little-endian IEEE bits.
/// Written "fnv1a64:" and 16 hex digits. Stable across platforms and crate versions.
pub fn digest(net: &Network) -> String {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h ^= b as u64;
            h = h.wrapping_mul(PRIME);
        }
    };
    eat(b"nncert-model-v1");
    eat(&(net.input_size() as u64).to_le_bytes());
    for layer in net.layers() {
        let w = layer.weight();
        eat(&(w.nrows() as u64).to_le_bytes());
        eat(&(w.ncols() as u64).to_le_bytes());
        let name = match layer.activation() {
            Activation::Relu => "relu",
            Activation::Sigmoid => "sigmoid",
            Activation::Tanh => "tanh",
            Activation::Softplus => "softplus",
            Activation::Identity => "none",
        };
        eat(name.as_bytes());
        for i in 0..w.nrows() {
            for j in 0..w.ncols() {
                eat(&w[(i, j)].to_bits().to_le_bytes());
            }
        }
        for b in layer.bias() {
            eat(&b.to_bits().to_le_bytes());
        }
    }
    format!("fnv1a64:{h:016x}")
}

fn reject(why: impl Into<String>) -> Error {
    Error::Rejected(why.into())
}

impl InputSetRecord {
    /// The record of `set`.
    pub fn of(set: &InputSet, image: Option<usize>) -> Self {
        InputSetRecord {
            image,
            center: set.center().to_vec(),
            norm: set.norm(),
            eps: set.eps(),
            domain: set.domain().map(|d| BoxRecord { lower: d.lo().to_vec(), upper: d.hi().to_vec() }),
        }
    }

    /// The input set (errors as [`InputSet::new`]).
    pub fn to_set(&self) -> Result<InputSet> {
        let domain = match &self.domain {
            Some(b) => Some(Domain::new(b.lower.clone(), b.upper.clone())?),
            None => None,
        };
        InputSet::new(self.center.clone(), self.eps, self.norm, domain)
    }
}

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

/// Re-verifies `cert` against `net`: the digest, the input set, every interval and bound from the
/// multipliers (recomputed here, never read), the counterexample by a forward pass with its
/// rounding bound, and the claimed verdict. Returns what was re-proven, or
/// [`Error::Rejected`] with the reason.
pub fn check(net: &Network, cert: &Certificate) -> Result<Checked> {
    if cert.format != FORMAT || cert.version != VERSION {
        return Err(reject(format!(
            "format '{}' version {} (this checker reads '{FORMAT}' version {VERSION})",
            cert.format, cert.version
        )));
    }
    let d = digest(net);
    if cert.model.digest != d {
        return Err(reject(format!("made for the model {}, this model is {d}", cert.model.digest)));
    }
    let set = cert.input_set.to_set().map_err(|e| reject(format!("input set: {e}")))?;
    crate::verify::check_query(net, &set, cert.label, &[]).map_err(|e| reject(e.to_string()))?;
    let mut checked =
        Checked { verdict: Verdict::Unknown, neurons: 0, bounds: Vec::new(), counterexample_margin: None };
    if let Some(c) = &cert.counterexample {
        net.check_label(c.target).map_err(|e| reject(format!("counterexample: {e}")))?;
        if c.target == cert.label {
            return Err(reject("the counterexample's target is the label"));
        }
        if !surely_inside(&set, &c.input) {
            return Err(reject("the counterexample is not certainly inside the input set"));
        }
        if !net.surely_loses(&c.input, cert.label, c.target).map_err(|e| reject(e.to_string()))? {
            return Err(reject("at the counterexample the label does not certainly lose"));
        }
        checked.counterexample_margin = Some(net.margin(&c.input, cert.label, c.target)?);
        checked.verdict = Verdict::NotRobust;
    }
    if !cert.targets.is_empty() || !cert.layers.is_empty() {
        let (intervals, bounds) = reprove(net, &set, cert)?;
        for (k, (layer, (lo, hi))) in cert.layers.iter().zip(&intervals).enumerate() {
            if layer.lower.len() != lo.len() {
                return Err(reject(format!(
                    "hidden layer {k}: {} claimed intervals for {} neurons",
                    layer.lower.len(),
                    lo.len()
                )));
            }
            for n in 0..lo.len() {
                let (l, u) = (layer.lower[n], layer.upper[n]);
                if l.is_nan() || u.is_nan() || l > lo[n] || u < hi[n] {
                    return Err(reject(format!(
                        "hidden layer {k}, neuron {n}: the claimed interval [{}, {}] is not re-proven (re-proven [{}, {}])",
                        layer.lower[n], layer.upper[n], lo[n], hi[n]
                    )));
                }
            }
            checked.neurons += lo.len();
        }
        for (t, b) in cert.targets.iter().zip(bounds) {
            if t.bound.is_nan() || t.bound > b {
                return Err(reject(format!(
                    "target {}: the claimed bound {} is not re-proven (re-proven {b})",
                    t.target, t.bound
                )));
            }
            checked.bounds.push((t.target, b));
        }
        if checked.verdict != Verdict::NotRobust {
            let proven: Vec<TargetProof> = checked
                .bounds
                .iter()
                .map(|&(target, bound)| TargetProof { target, bound, proofs: Vec::new() })
                .collect();
            checked.verdict = verdict_of(net, cert.label, &proven);
        }
    }
    match (cert.verdict, checked.verdict) {
        (Verdict::Robust, Verdict::Robust) | (Verdict::NotRobust, Verdict::NotRobust) | (Verdict::Unknown, _) => {}
        (Verdict::Robust, Verdict::NotRobust) => return Err(reject("claims robust and holds a counterexample")),
        (claim, _) => {
            return Err(reject(format!("claims {} but re-proves {}", claim.name(), checked.verdict.name())));
        }
    }
    Ok(checked)
}

/// Robust when every class other than the label has a bound > 0.
fn verdict_of(net: &Network, label: usize, targets: &[TargetProof]) -> Verdict {
    let all =
        (0..net.num_classes()).filter(|&c| c != label).all(|c| targets.iter().any(|t| t.target == c && t.bound > 0.0));
    if all { Verdict::Robust } else { Verdict::Unknown }
}

/// x lies in the real set X, with the rounding of the distance's computation accounted for.
fn surely_inside(set: &InputSet, x: &[f64]) -> bool {
    use crate::bounds::rounding::{UNIT_ROUNDOFF, gamma};
    if x.len() != set.dim() || x.iter().any(|v| !v.is_finite()) {
        return false;
    }
    if let Some(d) = set.domain()
        && x.iter().zip(d.lo().iter().zip(d.hi())).any(|(v, (l, h))| v < l || v > h)
    {
        return false;
    }
    let eps = set.eps();
    let diffs = x.iter().zip(set.center()).map(|(a, b)| a - b);
    match set.norm() {
        // |fl(x - c)| is within u of |x - c|.
        Norm::Linf => diffs.map(|d| d.abs() * (1.0 + 2.0 * UNIT_ROUNDOFF)).all(|d| d <= eps),
        Norm::L2 => {
            let s: f64 = diffs.map(|d| d * d).sum();
            s * (1.0 + gamma(set.dim() + 4)) <= eps * eps * (1.0 - 4.0 * UNIT_ROUNDOFF)
        }
    }
}

/// The intervals and target bounds the certificate's evidence proves (not compared with its
/// claims). Errors when the evidence does not fit the network.
/// (lower, upper) ends per hidden layer.
pub(crate) type Intervals = Vec<(Vec<f64>, Vec<f64>)>;

fn reprove(net: &Network, set: &InputSet, cert: &Certificate) -> Result<(Intervals, Vec<f64>)> {
    let layers = net.layers();
    let hidden = layers.len() - 1;
    if let Some(l) =
        layers[..hidden].iter().find(|l| !matches!(l.activation(), Activation::Relu | Activation::Identity))
    {
        if cert.layers.is_empty() {
            return Ok((Vec::new(), curvature_bounds(net, set, cert)?));
        }
        return Err(reject(format!(
            "intervals need ReLU hidden layers, this network has {:?} (its certificates are CRC's)",
            l.activation()
        )));
    }
    if layers[hidden].activation() != Activation::Identity {
        return Err(reject("the output layer has an activation: margins are bounded on linear outputs"));
    }
    if cert.layers.len() != hidden {
        return Err(reject(format!("{} hidden layers in the certificate, {hidden} in the model", cert.layers.len())));
    }
    let plain = Plain::new(net);
    let mut intervals: Intervals = Vec::with_capacity(hidden);
    for (k, layer) in cert.layers.iter().enumerate() {
        let n = layers[k].output_size();
        if layer.lower.len() != n && !layer.lower.is_empty() || layer.upper.len() != layer.lower.len() {
            return Err(reject(format!("hidden layer {k}: intervals of the wrong length (the layer has {n} neurons)")));
        }
        if let LayerMultipliers::PerNeuron { lower, upper } = &layer.multipliers
            && (lower.len() != n || upper.len() != n)
        {
            return Err(reject(format!(
                "hidden layer {k}: multipliers for {} / {} neurons, not {n}",
                lower.len(),
                upper.len()
            )));
        }
        let iv = lagrangian::layer_interval(&plain, set, &intervals, k, |neuron, sign| {
            let list = match &layer.multipliers {
                LayerMultipliers::All(list) => list,
                LayerMultipliers::PerNeuron { lower, upper } => {
                    if sign > 0.0 {
                        &lower[neuron]
                    } else {
                        &upper[neuron]
                    }
                }
            };
            list.iter().map(|m| choice(&cert.relaxations, m)).collect()
        });
        intervals.push(iv);
    }
    let classes = net.num_classes();
    let mut seen = vec![false; classes];
    let mut pre: Option<PreActivationBounds> = None;
    let mut bounds = Vec::with_capacity(cert.targets.len());
    for t in &cert.targets {
        if t.target >= classes || t.target == cert.label || seen[t.target] {
            return Err(reject(format!("target {}: not a class other than the label, or repeated", t.target)));
        }
        seen[t.target] = true;
        let mut top = vec![0.0; classes];
        top[cert.label] = 1.0;
        top[t.target] = -1.0;
        let mut best = lagrangian::bound(&plain, set, &intervals, hidden, &top, Choice::Zero);
        for proof in &t.proofs {
            let b = match proof {
                TargetEvidence::Linear(m) => {
                    lagrangian::bound(&plain, set, &intervals, hidden, &top, choice(&cert.relaxations, m))
                }
                TargetEvidence::Sdp(m) => {
                    let pre = pre.get_or_insert_with(|| {
                        // The relaxation's shape has the output layer too (CROWN's bounds on it).
                        let out = lagrangian::layer_interval(&plain, set, &intervals, hidden, |_, _| Vec::new());
                        let all = intervals.iter().chain(std::iter::once(&out));
                        PreActivationBounds {
                            layers: all.map(|(l, u)| Interval { lower: l.clone(), upper: u.clone() }).collect(),
                        }
                    });
                    sdp_bound(net, set, pre, cert.label, t.target, m)
                        .map_err(|e| reject(format!("target {}: SDP multipliers: {e}", t.target)))?
                }
                TargetEvidence::Tree(leaves) => tree::bound(&plain, set, &intervals, &top, &cert.relaxations, leaves),
                TargetEvidence::Curvature { .. } => {
                    return Err(reject("curvature evidence is for networks with smooth activations"));
                }
            };
            best = best.max(b);
        }
        bounds.push(best);
    }
    Ok((intervals, bounds))
}

/// The multipliers as the Lagrangian takes them (an unknown relaxation index: no lines, so the
/// bound is -inf).
pub(crate) fn choice<'a>(relaxations: &'a [Lines], m: &'a Multipliers) -> Choice<'a> {
    const NONE: &[Vec<f64>] = &[];
    match m {
        Multipliers::Relaxation(i) => match relaxations.get(*i) {
            Some(r) => Choice::Lines { lower: &r.lower, upper: &r.upper },
            None => Choice::Lines { lower: NONE, upper: NONE },
        },
        Multipliers::Slopes { relaxation, lower } => match relaxations.get(*relaxation) {
            Some(r) => Choice::Lines { lower, upper: &r.upper },
            None => Choice::Lines { lower: NONE, upper: NONE },
        },
        Multipliers::Vectors(v) => Choice::Vectors(v),
    }
}

/// The target bounds of a network with smooth activations: CRC's Taylor bound at the center and
/// its dual bound at each piece of curvature evidence, on the l2 ball containing X.
fn curvature_bounds(net: &Network, set: &InputSet, cert: &Certificate) -> Result<Vec<f64>> {
    let classes = net.num_classes();
    let rho = match set.norm() {
        Norm::L2 => set.eps(),
        // The l_inf ball lies in the l2 ball of radius eps sqrt(n).
        Norm::Linf => {
            let r = set.eps() * (set.dim() as f64).sqrt();
            r * (1.0 + 4.0 * crate::bounds::rounding::UNIT_ROUNDOFF)
        }
    };
    let mut seen = vec![false; classes];
    let mut out = Vec::with_capacity(cert.targets.len());
    for t in &cert.targets {
        if t.target >= classes || t.target == cert.label || seen[t.target] {
            return Err(reject(format!("target {}: not a class other than the label, or repeated", t.target)));
        }
        seen[t.target] = true;
        let m = crate::verify::crc::curvature_bounds(net, cert.label, t.target)
            .map_err(|e| reject(format!("target {}: curvature bounds: {e}", t.target)))?
            .lower;
        let mut c = vec![0.0; classes];
        c[cert.label] = 1.0;
        c[t.target] = -1.0;
        let mut best = curvature::taylor_bound(net, set.center(), &c, rho, m);
        for proof in &t.proofs {
            match proof {
                TargetEvidence::Curvature { eta, point } => {
                    best = best.max(curvature::dual_bound(net, set.center(), &c, rho, m, *eta, point));
                }
                _ => return Err(reject("only curvature evidence applies to networks with smooth activations")),
            }
        }
        out.push(best);
    }
    Ok(out)
}

/// Proposition 3.1's bound at the multipliers, on the boxes and cuts of `pre` and the R^2 it
/// proves (-inf when the slack matrix is not proven PSD at any shift).
fn sdp_bound(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    label: usize,
    target: usize,
    m: &crate::verify::sdp::Multipliers,
) -> Result<f64> {
    use crate::verify::sdp::{HiddenBoxes, certified_bound, lagrangian_matrix, proven_r2};
    let boxes = HiddenBoxes::new(net, pre)?;
    let r2 = proven_r2(net, set, pre);
    let (matrix, err) = lagrangian_matrix(net, set, &boxes, label, target, m)?;
    Ok(certified_bound(matrix.as_ref(), r2, err).map_or(f64::NEG_INFINITY, |b| b.bound))
}
