//! BM-Full as a bounding step of ReLU branch and bound ([`super::Bab::sdp_share`]): the SDP
//! relaxation (BM-r paper, Proposition 3.1) of a domain, for the domains the beta-CROWN bound of
//! [`super::relax`] leaves open.
//!
//! A domain's split decisions are sign constraints on pre-activations (z >= 0 or z <= 0), and its
//! pre-activation bounds already carry them: an active split clips the lower bound at 0, an
//! inactive one the upper bound ([`HiddenBounds::apply`]), and the children's intermediate bounds
//! are recomputed under the splits. The relaxation built from those bounds (post-activation boxes
//! and triangle cuts, [`crate::verify::sdp::HiddenBoxes`]) contains every point of the domain: an
//! active neuron's box is lo = max(l, 0) >= 0, so x >= z and x (x - z) = 0 give x = z; an inactive
//! one's is hi = 0, so x = 0 >= z. Proposition 3.1 holds for any relaxation whose constraints are
//! valid, so its bound, computed from any multipliers, is a lower bound over the domain.
//!
//! BM solves margins f(x)\[label\] - f(x)\[target\]; a constraint c^T f(x) + d of the property is the
//! margin between outputs 0 and 1 of the network whose last layer is replaced by the two rows
//! (c^T W, c^T b + d) and (0, 0) ([`objective_network`]).

use faer::Mat;

use super::Problem;
use super::relax::HiddenBounds;
use crate::bounds::{Interval, PreActivationBounds, interval, rounding};
use crate::error::Result;
use crate::io::vnnlib::OutputConstraint;
use crate::network::{Activation, Layer, Network};
use crate::verify::bm::Bm;
use crate::verify::sdp::{BoundSource, Relaxation};

/// The network whose margin f\[0\] - f\[1\] is c^T f(x) + d: `net` with its affine last layer
/// replaced by the rows (c^T W, c^T b + d) and (0, 0). Its weights are rounded: a bound on its
/// margin is a bound on c^T f(x) + d once [`folding_error`] is subtracted.
pub fn objective_network(net: &Network, c: &OutputConstraint) -> Result<Network> {
    let layers = net.layers();
    let last = &layers[layers.len() - 1];
    let w = last.weight();
    let row = |j: usize| -> f64 { (0..w.nrows()).map(|i| c.coeffs[i] * w[(i, j)]).sum() };
    let weight = Mat::<f64>::from_fn(2, w.ncols(), |r, j| if r == 0 { row(j) } else { 0.0 });
    let b0 = crate::linalg::dot(&c.coeffs, last.bias()) + c.constant;
    let mut out: Vec<Layer> = layers[..layers.len() - 1].to_vec();
    out.push(Layer::new(weight, vec![b0, 0.0], Activation::Identity));
    Network::new(net.input_shape().to_vec(), out)
}

/// How far the real margin of [`objective_network`] can lie from c^T f(x) + d, where `x_mag`
/// bounds the last layer's input: the folding's rounding, gamma_{m+2} |c|^T (|W| x_mag + |b|) + 2u |d|
/// ([`rounding::step_error`]).
pub fn folding_error(net: &Network, c: &OutputConstraint, x_mag: &[f64]) -> f64 {
    let last = &net.layers()[net.layers().len() - 1];
    rounding::step_error(&c.coeffs, &rounding::product_weights(last, x_mag), 0.0)
        + rounding::gamma(2) * c.constant.abs()
}

/// The lower bound BM-Full proves on c_j^T f(x) + d_j over the domain with hidden bounds
/// `bounds`, for each constraint j in `order` until one refutes the conjunction (see
/// [`Problem::refutes`]); NEG_INFINITY for the constraints not tried. `bm` sets the solver (its
/// `bounds` field is not used: the domain's bounds are).
pub(super) fn domain_bounds(p: &Problem<'_>, bounds: &HiddenBounds, order: &[usize], bm: &Bm) -> Result<Vec<f64>> {
    let mut values = vec![f64::NEG_INFINITY; p.constraints.len()];
    for &j in order {
        let net = objective_network(p.net, &p.constraints[j])?;
        let mut layers: Vec<Interval> = bounds
            .lower
            .iter()
            .zip(&bounds.upper)
            .map(|(l, u)| Interval { lower: l.clone(), upper: u.clone() })
            .collect();
        let last = &net.layers()[net.layers().len() - 1];
        let prev = &layers[layers.len() - 1];
        let (lo, hi) = interval::activate(prev, Activation::Relu);
        layers.push(interval::affine_box(last.weight(), last.bias(), &lo, &hi));
        let pre = PreActivationBounds { layers };
        let rel = Relaxation::from_bounds(&net, p.set, BoundSource::Optimized, pre)?;
        let report = bm.lower_bounds_with(&net, p.set, 0, &[1], rel)?;
        // The last hidden layer's outputs on the domain, for the folding's rounding.
        let x_mag: Vec<f64> = bounds.upper[bounds.upper.len() - 1].iter().map(|u| u.max(0.0)).collect();
        values[j] = rounding::lower(report.bounds[0].1, folding_error(p.net, &p.constraints[j], &x_mag));
        if p.refutes(&values) {
            break;
        }
    }
    Ok(values)
}
