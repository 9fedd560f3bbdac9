//! The certificate's JSON format (docs/formats.md): the serde types and the model digest.

use serde::{Deserialize, Serialize};

use crate::bounds::PreActivationBounds;
use crate::certify::Verdict;
use crate::error::Result;
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
