//! The shared bound core: sound intervals on every layer's pre-activations and sound lower bounds
//! on linear specifications of the output (the margins f(x)\[label\] - f(x)\[c\]).
//!
//! * [`interval`]: interval bound propagation (IBP).
//! * [`linear`]: the backward linear relaxation of Salman et al. 2019 (001_b3d5e3f2d36bac59.txt,
//!   section 4, "Greedily solving the dual with linear bounds", eq. (7)-(10)); the choice of the
//!   lower slope of each unstable ReLU gives Fast-Lin / Wong-Kolter (slope u/(u-l)) or CROWN
//!   (adaptive slope 0 or 1). Smooth activations get linear bounds with exact offsets.
//! * [`optimized`]: the same backward relaxation with the ReLU slopes optimized per neuron bound
//!   (alpha-CROWN), which approaches LP-Full's pre-activation bounds without an LP solver.
//! * [`rounding`]: a-priori bounds on the rounding errors of the above, subtracted from every
//!   bound, so that the bounds hold for the real-number network (sound floating point).
//! * [`ball`]: the l2 ball's support function through a dense first layer from its Gram matrix
//!   (the end of every l2 backward pass without the box).
//! * [`dual`]: the Wong-Kolter dual objective J(x, nu) evaluated from its dual variables
//!   (004_79c7a41c77cceb0d.txt), an independent code path used to test the Fast-Lin bound.
//!
//! Pre-activation bounds are computed once per image ([`PreActivationBounds`]) and shared by all
//! targets and by every verifier that consumes them.

pub mod ball;
pub mod dual;
pub mod interval;
pub mod linear;
pub mod lp;
pub mod optimized;
pub mod rounding;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::network::Network;
use crate::spec::InputSet;

/// Sound elementwise bounds lower <= v <= upper on a vector of neurons.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower bounds.
    pub lower: Vec<f64>,
    /// Upper bounds.
    pub upper: Vec<f64>,
}

impl Interval {
    /// Number of neurons.
    pub fn len(&self) -> usize {
        self.lower.len()
    }
    /// Whether there are no neurons.
    pub fn is_empty(&self) -> bool {
        self.lower.is_empty()
    }
    /// Elementwise intersection with another interval of the same length (both are sound, so the
    /// intersection is too).
    pub fn intersect(&mut self, other: &Interval) {
        for i in 0..self.len() {
            self.lower[i] = self.lower[i].max(other.lower[i]);
            self.upper[i] = self.upper[i].min(other.upper[i]);
        }
    }
}

/// Bounds on the pre-activations z_k = W_k x_k + b_k of every layer k (the last entry bounds the
/// logits), valid for every input of the [`InputSet`] they were computed for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PreActivationBounds {
    /// One interval per layer, in layer order.
    pub layers: Vec<Interval>,
}

impl PreActivationBounds {
    /// An error unless these bounds have one interval per layer of `net`, of the layer's width.
    pub fn check_shape(&self, net: &crate::network::Network) -> crate::error::Result<()> {
        let layers = net.layers();
        if self.layers.len() != layers.len()
            || self.layers.iter().zip(layers).any(|(iv, l)| iv.len() != l.output_size())
        {
            return Err(crate::error::Error::InvalidArgument(
                "pre-activation bounds do not match the network's layer sizes".into(),
            ));
        }
        Ok(())
    }

    /// Number of hidden ReLU neurons whose sign is not fixed by the bounds (lower < 0 < upper).
    pub fn unstable_neurons(&self) -> usize {
        let hidden = &self.layers[..self.layers.len().saturating_sub(1)];
        hidden.iter().map(|iv| iv.lower.iter().zip(&iv.upper).filter(|(l, u)| **l < 0.0 && **u > 0.0).count()).sum()
    }
}

/// Which bound-propagation method computes the pre-activation bounds and the final bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Propagation {
    /// Interval bound propagation.
    Ibp,
    /// Backward linear relaxation, lower slope = upper slope u/(u-l) (Fast-Lin, equal to the
    /// Wong-Kolter dual network bound).
    FastLin,
    /// Backward linear relaxation, adaptive lower slope (CROWN-Ada): 1 when u > -l, else 0.
    Crown,
}

/// Pre-activation bounds of every layer for the given method: IBP layer by layer, or for the
/// linear methods one backward pass per layer (as auto_LiRPA's method "CROWN" does).
pub fn pre_activation_bounds(net: &Network, set: &InputSet, method: Propagation) -> Result<PreActivationBounds> {
    net.check_input(set.center())?;
    Ok(match method {
        Propagation::Ibp => interval::ibp(net, set),
        Propagation::FastLin => linear::all_layer_bounds(net, set, linear::Slope::FastLin),
        Propagation::Crown => linear::all_layer_bounds(net, set, linear::Slope::Adaptive),
    })
}

/// CROWN's pre-activation bounds intersected with IBP's: both are sound, and neither contains
/// the other in general. The starting point of the exact, SDP and BM verifiers.
pub fn crown_and_ibp(net: &Network, set: &InputSet) -> Result<PreActivationBounds> {
    let mut pre = pre_activation_bounds(net, set, Propagation::Crown)?;
    for (a, b) in pre.layers.iter_mut().zip(&interval::ibp(net, set).layers) {
        a.intersect(b);
    }
    Ok(pre)
}

/// Lower bounds on phi\[c\] = min over X of f(x)\[label\] - f(x)\[c\] for each c in `targets`, using
/// pre-activation bounds `pre` computed for the same `set` (by any method).
pub fn margin_lower_bounds(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    method: Propagation,
    label: usize,
    targets: &[usize],
) -> Result<Vec<f64>> {
    net.check_input(set.center())?;
    net.check_label(label)?;
    for &t in targets {
        net.check_label(t)?;
    }
    let spec = linear::margin_spec(net.num_classes(), label, targets);
    Ok(match method {
        Propagation::Ibp => interval::spec_lower_bounds(net, set, pre, spec.as_ref()),
        Propagation::FastLin => linear::spec_lower_bounds(net, set, pre, spec.as_ref(), linear::Slope::FastLin),
        Propagation::Crown => linear::spec_lower_bounds(net, set, pre, spec.as_ref(), linear::Slope::Adaptive),
    })
}
