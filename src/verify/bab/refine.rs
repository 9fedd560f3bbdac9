//! The root's intermediate bounds refined by branch and bound.
//!
//! Every split of a deep network is bounded through the pre-activation bounds of the layers
//! before it; an unstable neuron whose interval alpha-CROWN leaves at, say, \[-0.2, 3\] is relaxed
//! by the triangle in every domain that does not split it, and becomes a branching candidate.
//! alpha-beta-CROWN's answer on deep VNN-COMP networks (`bab-refine`) is to spend most of the
//! time limit tightening these bounds with a MIP solver before the search. Here the tightening
//! is this module's own ReLU branch and bound ([`super::relu`]), so no commercial solver is
//! needed: for hidden layer j = 1, 2, ... in turn,
//! 1. layer j's bounds are tightened by alpha-CROWN over the (refined) bounds of the layers before
//!    it ([`crate::bounds::optimized`]);
//! 2. each unstable neuron of layer j, the nearest to stable first (min(-l, u) / (u - l)), gets a
//!    search of its own on the network cut after layer j, with the property "z_{j,i} <= 0" when
//!    u < -l (the search's bound is a lower bound on min over X of z_{j,i}) or "-z_{j,i} <= 0"
//!    otherwise, stopped after [`Bab::refine_domains`] bounded domains;
//! 3. the neuron's bound on that side becomes the search's proven bound when it is tighter: a
//!    neuron whose search finishes is stable, and one whose search stops still gets the worst
//!    open domain's bound.
//!
//! Sound whichever way a search ends: [`super::Outcome::Verified`] and [`super::Outcome::Unknown`]
//! carry a proven lower bound over the whole input set (every open and closed domain is covered),
//! and a counterexample leaves the bound as it was. The whole refinement is limited to
//! [`Bab::refine`] times the time limit.

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Bab, Outcome, Problem, StopReason, Tracker};
use crate::bounds::PreActivationBounds;
use crate::bounds::optimized;
use crate::error::Result;
use crate::io::vnnlib::OutputConstraint;
use crate::network::{Activation, Layer, Network};
use crate::spec::InputSet;

/// What a refinement did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RefineStats {
    /// Unstable neurons of the hidden layers after the first, before the refinement.
    pub unstable_before: usize,
    /// The same after it.
    pub unstable_after: usize,
    /// Searches run (one per neuron reached within the time).
    pub searches: usize,
    /// Domains bounded by them.
    pub domains: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
}

/// Whether `i` of `iv` is unstable.
fn unstable(l: f64, u: f64) -> bool {
    l < 0.0 && u > 0.0
}

/// Refines `pre` (valid for `set`, e.g. alpha-CROWN's) in place, within `budget` seconds (and the
/// tracker's deadline): passes over the layers with [`Bab::refine_domains`] domains per search,
/// then 4 times as many on the neurons still unstable, and so on while time is left and a pass
/// tightened something with a search that stopped at its budget (one that finished cannot do better
/// with more domains).
pub(super) fn refine(
    net: &Network,
    set: &InputSet,
    settings: &Bab,
    pre: &mut PreActivationBounds,
    budget: f64,
    tracker: &Tracker,
) -> Result<RefineStats> {
    let start = Instant::now();
    let hidden = net.layers().len() - 1;
    let count = |pre: &PreActivationBounds| -> usize {
        pre.layers[1..hidden]
            .iter()
            .map(|iv| (0..iv.len()).filter(|&i| unstable(iv.lower[i], iv.upper[i])).count())
            .sum()
    };
    let mut stats = RefineStats { unstable_before: count(pre), ..RefineStats::default() };
    let deadline = tracker.deadline.min(start + std::time::Duration::from_secs_f64(budget.max(0.0)));
    let mut domains = settings.refine_domains.max(1);
    while Instant::now() < deadline && pass(net, set, settings, pre, domains, deadline, &mut stats)? == (true, true) {
        domains = domains.saturating_mul(4);
    }
    stats.unstable_after = count(pre);
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// What one neuron's search gave: the side searched, the proven bound on s z (None after a
/// counterexample or when the time ran out first), domains bounded, and whether it stopped at its
/// domain budget.
struct Searched {
    neuron: usize,
    lower_side: bool,
    bound: Option<f64>,
    domains: usize,
    stopped: bool,
}

/// One pass over hidden layers 1.. (module documentation, steps 1-3) with `domains` per search:
/// whether it tightened any bound, and whether a search stopped at its budget.
fn pass(
    net: &Network,
    set: &InputSet,
    settings: &Bab,
    pre: &mut PreActivationBounds,
    domains: usize,
    deadline: Instant,
    stats: &mut RefineStats,
) -> Result<(bool, bool)> {
    let hidden = net.layers().len() - 1;
    let sub_settings = Bab { progress: false, refine: 0.0, sdp_share: 0.0, ..settings.clone() };
    let slopes = super::relu::root_slopes(settings, deadline);
    let (mut changed, mut stopped) = (false, false);
    for j in 1..hidden {
        if Instant::now() >= deadline {
            break;
        }
        if changed {
            // The layers before j are tighter than when alpha-CROWN bounded layer j.
            let iv = optimized::tighten_layer(net, set, pre, j, &slopes);
            pre.layers[j].intersect(&iv);
        }
        let iv = &pre.layers[j];
        let mut order: Vec<usize> = (0..iv.len()).filter(|&i| unstable(iv.lower[i], iv.upper[i])).collect();
        if order.is_empty() {
            continue;
        }
        let nearness = |i: usize| (-iv.lower[i]).min(iv.upper[i]) / (iv.upper[i] - iv.lower[i]);
        order.sort_by(|&a, &b| nearness(a).total_cmp(&nearness(b)));
        // The network cut after layer j, whose outputs are layer j's pre-activations.
        let layer = &net.layers()[j];
        let mut layers: Vec<Layer> = net.layers()[..j].to_vec();
        layers.push(layer.with_activation(Activation::Identity));
        let sub = Network::new(net.input_shape().to_vec(), layers)?;
        let sub_pre = PreActivationBounds { layers: pre.layers[..=j].to_vec() };
        let results: Vec<Result<Searched>> = order
            .par_iter()
            .map(|&i| {
                // Lower side (prove z > 0) when the neuron is nearer to active.
                let lower_side = iv.upper[i] > -iv.lower[i];
                let mut coeffs = vec![0.0; iv.len()];
                coeffs[i] = if lower_side { 1.0 } else { -1.0 };
                let constraint = [OutputConstraint { coeffs, constant: 0.0, strict: false }];
                let p = Problem { net: &sub, set, constraints: &constraint };
                let mut t = Tracker::until(deadline, domains);
                if t.timed_out() {
                    return Ok(Searched { neuron: i, lower_side, bound: None, domains: 0, stopped: false });
                }
                let (bound, stopped) = match super::relu::search(&p, &sub_pre, &sub_settings, &mut t)? {
                    Outcome::Verified { bound } => (Some(bound), false),
                    Outcome::Unknown { bound, reason } => (Some(bound), reason == StopReason::DomainLimit),
                    Outcome::Falsified { .. } => (None, false),
                };
                Ok(Searched { neuron: i, lower_side, bound, domains: t.stats.domains, stopped })
            })
            .collect();
        let iv = &mut pre.layers[j];
        for r in results {
            let Searched { neuron: i, lower_side, bound, domains: n, stopped: budget_hit } = r?;
            stopped |= budget_hit;
            stats.searches += usize::from(n > 0);
            stats.domains += n;
            let Some(b) = bound.filter(|b| b.is_finite()) else { continue };
            if lower_side && b > iv.lower[i] {
                iv.lower[i] = b;
                changed = true;
            } else if !lower_side && -b < iv.upper[i] {
                iv.upper[i] = -b;
                changed = true;
            }
        }
    }
    Ok((changed, stopped))
}
