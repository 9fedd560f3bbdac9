//! What a method hands over for a certificate ([`Evidence`]), before [`super::Certificate::seal`]
//! computes the numbers it proves.

use super::{LayerMultipliers, Lines, Multipliers, TargetEvidence};
use crate::error::Result;
use crate::network::Network;
use crate::spec::InputSet;

/// The evidence a method hands over for a certificate, before [`super::Certificate::seal`] computes the
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
