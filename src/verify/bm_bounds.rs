//! BM-r on hidden neurons: tighter pre-activation bounds for BM-Full (issue #5, item 6). The BM-r
//! paper (discussion of its Figure 3, 000_2ff65a8857911c41.txt) suggests recursively applying
//! BM-Full to each neuron's upper and lower bound, notes that it can be expensive, and leaves it
//! to future work; this module does it for the neurons of the last hidden layer that matter most.
//!
//! The pre-activation W_k\[j\] x_k + b_k\[j\] of neuron j of hidden layer k is the margin of a
//! truncated network: layers 0..k as they are, then an affine output layer with rows
//! (W_k\[j\], 0) and biases (b_k\[j\], 0), read with label 0 and target 1. BM-r's proven bound on
//! that margin is a lower bound on the pre-activation; with the rows swapped it bounds the
//! negated pre-activation, which gives an upper bound. Each is a certified bound of Proposition
//! 3.1 over boxes that are themselves sound (the layers before k keep the bounds they were given),
//! so intersecting them with the given bounds keeps every bound sound and can only tighten it.
//! (A [`super::sdp::Certificate`] made on tightened bounds may fail
//! [`super::sdp::Certificate::check`], which recomputes the boxes from LP-Full alone and accepts
//! only what it proves from that data: a safe refusal, never a wrong acceptance.)
//!
//! Which neurons: on the last hidden layer, those whose triangle relaxation costs the margins
//! most, scored by max over targets |W_L\[label, j\] - W_L\[t, j\]| (the neuron's weight in the
//! margin) times -l u / (u - l) (the triangle's height over the ReLU).
//!
//! ```
//! use nncert::{Activation, InputSet, Layer, Network, Norm};
//! use nncert::bounds::lp::LpSettings;
//! use nncert::verify::bm::Bm;
//! use nncert::verify::bm_bounds::neuron_bounds;
//! use nncert::verify::lp::lp_full_bounds;
//!
//! // 2 inputs, two hidden ReLU layers, 2 classes.
//! let h1 = Layer::from_rows(&[vec![1.0, -1.0], vec![1.0, 1.0], vec![-1.0, 0.5]], vec![0.0, -0.5, 0.2], Activation::Relu)?;
//! let h2 = Layer::from_rows(&[vec![1.0, -1.0, 1.0], vec![-0.5, 1.0, 1.0]], vec![0.1, -0.2], Activation::Relu)?;
//! let out = Layer::from_rows(&[vec![1.0, -1.0], vec![-1.0, 1.0]], vec![0.0, 0.0], Activation::Identity)?;
//! let net = Network::new(vec![2], vec![h1, h2, out])?;
//! let set = InputSet::new(vec![0.5, 0.5], 0.5, Norm::Linf, None)?;
//!
//! let (pre, _) = lp_full_bounds(&net, &set, &LpSettings::default())?;
//! let bm = Bm { stop_when_positive: false, ..Bm::full() };
//! let (lo, hi) = neuron_bounds(&net, &set, &pre, 1, 0, &bm)?;
//! // Proven bounds on the first neuron of the second hidden layer over the whole set.
//! let (l, u) = (pre.layers[1].lower[0], pre.layers[1].upper[0]);
//! assert!(lo <= hi && lo.max(l) <= u.min(hi));
//! # Ok::<(), nncert::Error>(())
//! ```

use super::bm::Bm;
use crate::bounds::{Interval, PreActivationBounds};
use crate::error::{Error, Result};
use crate::network::{Activation, Layer, Network};
use crate::spec::InputSet;
use crate::verify::sdp::Relaxation;

/// The unstable neurons (l < 0 < u) of the last hidden layer, most costly first (see the module
/// docs), at most `count`. None for a network without hidden layers, bounds of another shape or
/// a label out of range.
pub fn costly_neurons(net: &Network, pre: &PreActivationBounds, label: usize, count: usize) -> Vec<usize> {
    let layers = net.layers();
    if layers.len() < 2 || pre.check_shape(net).is_err() || net.check_label(label).is_err() {
        return Vec::new();
    }
    let k = layers.len() - 2;
    let out = layers[k + 1].weight();
    let iv = &pre.layers[k];
    let mut scored: Vec<(f64, usize)> = (0..iv.len())
        .filter(|&j| iv.lower[j] < 0.0 && iv.upper[j] > 0.0)
        .map(|j| {
            let influence = (0..out.nrows())
                .filter(|&t| t != label)
                .map(|t| (out[(label, j)] - out[(t, j)]).abs())
                .fold(0.0, f64::max);
            let (l, u) = (iv.lower[j], iv.upper[j]);
            (influence * (-l * u / (u - l)), j)
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0));
    scored.into_iter().take(count).map(|(_, j)| j).collect()
}

/// BM-r's proven bounds (lower, upper) on the pre-activation of neuron `neuron` of hidden layer
/// `layer` (k >= 1: the first layer's pre-activations are linear in the input and already exact)
/// over `set`, with `pre` (sound for `set`) for the layers before it. `bm` sets the solver (use
/// it with `stop_when_positive: false`: a bound, not a verdict, is wanted). A side BM-r cannot
/// prove comes back infinite.
pub fn neuron_bounds(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    layer: usize,
    neuron: usize,
    bm: &Bm,
) -> Result<(f64, f64)> {
    let layers = net.layers();
    if layer == 0 || layer + 1 >= layers.len() || neuron >= layers[layer].output_size() {
        return Err(Error::InvalidArgument(format!(
            "neuron_bounds: neuron {neuron} of layer {layer} is not a neuron of a hidden layer after the first"
        )));
    }
    pre.check_shape(net)?;
    let w: Vec<f64> = layers[layer].weight().row(neuron).iter().copied().collect();
    let b = layers[layer].bias()[neuron];
    let zero = vec![0.0; w.len()];
    let iv = &pre.layers[layer];
    let side = |rows: [&Vec<f64>; 2], bias: [f64; 2]| -> Result<Option<f64>> {
        let mut trunc_layers: Vec<Layer> = layers[..layer].to_vec();
        trunc_layers.push(Layer::from_rows(&[rows[0].clone(), rows[1].clone()], bias.to_vec(), Activation::Identity)?);
        let trunc = Network::new(net.input_shape().to_vec(), trunc_layers)?;
        // The output layer's interval is never used by the relaxation (only hidden layers get
        // boxes); give it the neuron's, which is valid for both rows' difference.
        let mut trunc_pre = PreActivationBounds { layers: pre.layers[..layer].to_vec() };
        trunc_pre.layers.push(Interval {
            lower: vec![iv.lower[neuron].min(0.0), iv.lower[neuron].min(0.0)],
            upper: vec![iv.upper[neuron].max(0.0), iv.upper[neuron].max(0.0)],
        });
        let rel = Relaxation::from_bounds(&trunc, set, bm.bounds, trunc_pre)?;
        Ok(bm.solve_target(&trunc, set, &rel, 0, 1)?.certificate.map(|c| c.bound))
    };
    let lower = side([&w, &zero], [b, 0.0])?.unwrap_or(f64::NEG_INFINITY);
    let upper = side([&zero, &w], [0.0, b])?.map_or(f64::INFINITY, |v| -v);
    Ok((lower, upper))
}

/// `pre` with the last hidden layer's `count` most costly neurons ([`costly_neurons`]) tightened by
/// [`neuron_bounds`] (intersected: never looser than `pre`). Networks with fewer than two hidden
/// layers come back unchanged.
pub fn tighten_last_hidden(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    label: usize,
    count: usize,
    bm: &Bm,
) -> Result<PreActivationBounds> {
    pre.check_shape(net)?;
    net.check_label(label)?;
    let mut out = pre.clone();
    let layers = net.layers();
    if layers.len() < 3 || count == 0 {
        return Ok(out);
    }
    use rayon::prelude::*;
    let k = layers.len() - 2;
    let picks = costly_neurons(net, pre, label, count);
    let found: Vec<Result<(usize, (f64, f64))>> =
        picks.par_iter().map(|&j| Ok((j, neuron_bounds(net, set, pre, k, j, bm)?))).collect();
    for r in found {
        let (j, (l, u)) = r?;
        let iv = &mut out.layers[k];
        iv.lower[j] = iv.lower[j].max(l);
        iv.upper[j] = iv.upper[j].min(u);
    }
    Ok(out)
}

/// BM-Full with the last hidden layer's most costly neurons tightened by BM-r first
/// ([`tighten_last_hidden`]; `certify --bm-tighten N`): a verifier over [`Bm`] (with pre-activation
/// bounds from LP-Full or optimized slopes), not part of it, so that this module depends on
/// [`Bm`] and not the other way round. Each neuron costs two BM-r solves with a quarter of the
/// budget. Networks with fewer than two hidden layers, `neurons` = 0 or `bm` with CROWN's bounds
/// (plain `bm`) get `bm` alone.
#[derive(Clone, Debug, PartialEq)]
pub struct Tightened {
    /// The BM-Full settings (`bounds` must not be [`crate::verify::sdp::BoundSource::CrownIbp`]).
    pub bm: Bm,
    /// How many of the last hidden layer's unstable neurons to tighten.
    pub neurons: usize,
}

impl crate::verify::Verifier for Tightened {
    fn name(&self) -> &'static str {
        self.bm.name()
    }

    fn lower_bounds(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        targets: &[usize],
    ) -> Result<crate::verify::BoundReport> {
        use crate::verify::sdp::BoundSource;
        if self.neurons == 0 || self.bm.bounds == BoundSource::CrownIbp || network.layers().len() < 3 {
            return self.bm.lower_bounds(network, set, label, targets);
        }
        crate::verify::check_query(network, set, label, targets)?;
        let rel = Relaxation::new(network, set, self.bm.bounds)?;
        let neuron_bm = Bm {
            stop_when_positive: false,
            max_iterations: self.bm.max_iterations / 4,
            // Boxes for the final solve, not bounds reported at their optimum.
            tight_iterations: 0,
            time_limit: self.bm.time_limit / 4.0,
            ..self.bm.clone()
        };
        let pre = tighten_last_hidden(network, set, &rel.pre, label, self.neurons, &neuron_bm)?;
        let rel = Relaxation::from_bounds(network, set, self.bm.bounds, pre)?;
        self.bm.lower_bounds_with(network, set, label, targets, rel)
    }
}
