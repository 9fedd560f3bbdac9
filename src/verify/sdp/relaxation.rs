//! What one image's relaxation is made of: the hidden post-activation boxes and triangle cuts
//! from pre-activation bounds, and where those bounds come from.

use serde::{Deserialize, Serialize};

use super::*;
use crate::bounds::{self, PreActivationBounds};
use crate::error::Result;
use crate::linalg::psd::UNIT_ROUNDOFF;
use crate::network::Network;
use crate::spec::InputSet;

/// Post-activation boxes lo <= x <= hi and triangle cuts x <= s z + d of the hidden ReLU neurons
/// (z = W x + b their pre-activation), derived from sound pre-activation bounds l <= z <= u:
/// lo = max(l, 0), hi = max(u, 0); s = u / (u - l), d >= -s l for unstable neurons (s = 1, d = 0
/// for active, s = 0, d = 0 for inactive ones). d is rounded up so that s l + d >= 0 and
/// s u + d >= u hold exactly for the stored floats: the cut is valid on [l, u] because
/// max(z, 0) is convex and the line lies above it at both ends.
#[derive(Clone, Debug, PartialEq)]
pub struct HiddenBoxes {
    /// Post-activation lower bounds per hidden layer.
    pub lo: Vec<Vec<f64>>,
    /// Post-activation upper bounds per hidden layer (+inf when unknown: the box and the cut of
    /// that neuron are then never used).
    pub hi: Vec<Vec<f64>>,
    /// Cut slopes s.
    pub slope: Vec<Vec<f64>>,
    /// Cut offsets d.
    pub offset: Vec<Vec<f64>>,
}

impl HiddenBoxes {
    /// The boxes and cuts of every hidden layer from pre-activation bounds of the same network.
    pub fn new(net: &Network, pre: &PreActivationBounds) -> Result<Self> {
        pre.check_shape(net)?;
        let layers = net.layers();
        let mut b = HiddenBoxes { lo: Vec::new(), hi: Vec::new(), slope: Vec::new(), offset: Vec::new() };
        for iv in &pre.layers[..layers.len() - 1] {
            let n = iv.len();
            let (mut lo, mut hi, mut s, mut d) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            for j in 0..n {
                let (l, u) = (iv.lower[j], iv.upper[j]);
                if !(l.is_finite() && u.is_finite() && l <= u) {
                    lo[j] = 0.0;
                    hi[j] = f64::INFINITY;
                    continue;
                }
                lo[j] = l.max(0.0);
                hi[j] = u.max(0.0);
                if l >= 0.0 {
                    s[j] = 1.0;
                } else if u > 0.0 {
                    let sj = u / (u - l);
                    let raw = (-sj * l).max(u - sj * u);
                    s[j] = sj;
                    d[j] = raw + 8.0 * UNIT_ROUNDOFF * ((sj * l).abs() + u + sj * u) + f64::MIN_POSITIVE;
                }
            }
            b.lo.push(lo);
            b.hi.push(hi);
            b.slope.push(s);
            b.offset.push(d);
        }
        Ok(b)
    }

    /// Whether neuron j of hidden layer k has a usable (finite) box.
    pub(crate) fn usable(&self, k: usize, j: usize) -> bool {
        self.hi[k][j].is_finite()
    }
}

/// Where the pre-activation bounds of a [`Relaxation`] come from. A certificate names it, so that
/// [`Certificate::check`] can recompute the same bounds from scratch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundSource {
    /// CROWN's bounds intersected with IBP's ([`bounds::crown_and_ibp`]): fast.
    #[default]
    CrownIbp,
    /// LP-Full's bounds ([`crate::verify::lp::lp_full_bounds`], default settings): what the paper's
    /// BM-Full uses; one LP per unstable neuron.
    LpFull,
    /// CROWN's bounds with the slopes optimized per neuron bound
    /// ([`bounds::optimized::optimized_bounds`], default settings): close to LP-Full's on networks
    /// with two hidden layers, without an LP solver.
    Optimized,
}

impl BoundSource {
    /// The pre-activation bounds of this source.
    pub fn compute(self, net: &Network, set: &InputSet) -> Result<PreActivationBounds> {
        match self {
            BoundSource::CrownIbp => bounds::crown_and_ibp(net, set),
            BoundSource::LpFull => {
                let (mut pre, _) =
                    crate::verify::lp::lp_full_bounds(net, set, &crate::bounds::lp::LpSettings::default())?;
                for (a, b) in pre.layers.iter_mut().zip(&bounds::interval::ibp(net, set).layers) {
                    a.intersect(b);
                }
                Ok(pre)
            }
            BoundSource::Optimized => {
                bounds::optimized::optimized_bounds(net, set, &bounds::optimized::SlopeSettings::default())
            }
        }
    }
}

/// Everything about one image's relaxation that does not depend on the target: the
/// pre-activation bounds, the hidden boxes and cuts built from them, and the proven R^2.
#[derive(Clone, Debug, PartialEq)]
pub struct Relaxation {
    /// Where `pre` came from.
    pub source: BoundSource,
    /// Pre-activation bounds of every layer.
    pub pre: PreActivationBounds,
    /// Hidden boxes and cuts from `pre`.
    pub boxes: HiddenBoxes,
    /// Proven R^2 ([`proven_r2`]).
    pub r2: f64,
}

impl Relaxation {
    /// Computes the bounds of `source` and everything derived from them.
    pub fn new(net: &Network, set: &InputSet, source: BoundSource) -> Result<Self> {
        check_network(net)?;
        crate::verify::check_query(net, set, 0, &[])?;
        let pre = source.compute(net, set)?;
        Self::from_bounds(net, set, source, pre)
    }

    /// From pre-activation bounds already computed by `source` (they must be sound for `set`;
    /// a certificate built on them is checked against a fresh computation).
    pub fn from_bounds(net: &Network, set: &InputSet, source: BoundSource, pre: PreActivationBounds) -> Result<Self> {
        check_network(net)?;
        let boxes = HiddenBoxes::new(net, &pre)?;
        let r2 = proven_r2(net, set, &pre);
        Ok(Relaxation { source, pre, boxes, r2 })
    }
}
