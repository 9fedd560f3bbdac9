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
//! The searches tighten bounds, they do not decide signs: a point of X where the neuron's value
//! is on the far side of 0 does not end one (as a counterexample ends an ordinary search) but
//! becomes its incumbent, the least value seen (`Tracker::incumbent`: at the relaxation's
//! minimizers, projected onto X; a domain without unstable neurons keeps its relaxation's bound,
//! without the exact LP an ordinary search solves there). A neuron that really is unstable still
//! gets the bound the search reaches, as a MIP solver's best bound: the triangle's largest gap,
//! -l u / (u - l), is about -l when u >> -l, so taking l from alpha-CROWN's -0.2 to a true minimum
//! of -0.05 cuts the neuron's relaxation by three quarters. Such a search stops once its bound is within [`GAP`] of the incumbent
//! (`converged`), and the neuron is not searched again.
//!
//! Sound whichever way a search ends: [`super::Outcome::Verified`] and [`super::Outcome::Unknown`]
//! carry a proven lower bound over the whole input set (every open and closed domain is covered;
//! the incumbent only decides when to stop). The whole refinement is limited to [`Bab::refine`]
//! times the time limit.

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Bab, Outcome, Problem, StopReason, Tracker};
use crate::bounds::optimized;
use crate::bounds::{Interval, PreActivationBounds};
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

/// The relative gap between a bound-tightening search's bound and its incumbent at which it stops
/// (`converged`): the neuron's relaxation could shrink by at most about this share more.
pub const GAP: f64 = 0.05;

/// Whether a bound-tightening search with proven `bound` and least value seen `incumbent` is done:
/// the incumbent is below 0 (the neuron is unstable, whatever the bound) and the bound within
/// [`GAP`] of it.
pub(crate) fn converged(bound: f64, incumbent: f64) -> bool {
    incumbent < 0.0 && bound >= incumbent - GAP * -incumbent
}

/// Whether `i` of `iv` is unstable.
fn unstable(l: f64, u: f64) -> bool {
    l < 0.0 && u > 0.0
}

/// The unstable neurons of one layer's bounds.
fn unstable_in(iv: &Interval) -> usize {
    (0..iv.len()).filter(|&i| unstable(iv.lower[i], iv.upper[i])).count()
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
    let count = |pre: &PreActivationBounds| -> usize { pre.layers[1..hidden].iter().map(unstable_in).sum() };
    let mut stats = RefineStats { unstable_before: count(pre), ..RefineStats::default() };
    let deadline = tracker.deadline.min(start + crate::budget::duration(budget));
    let mut domains = settings.refine_domains.max(1);
    // The neurons whose searches converged ([`converged`]): not searched again.
    let mut done: Vec<Vec<bool>> = pre.layers.iter().map(|iv| vec![false; iv.len()]).collect();
    loop {
        if Instant::now() >= deadline {
            break;
        }
        let (changed, stopped, reached) = pass(net, set, settings, pre, domains, deadline, &mut done, &mut stats)?;
        if reached < hidden && changed {
            // The time ran out before layer `reached`: it and the layers after it have not seen
            // the tighter bounds before them. alpha-CROWN over those (seconds, against the
            // searches' minutes) before the search starts, within the query's own deadline.
            let (t, before) = (Instant::now(), count(pre));
            let slopes = super::relu::root_slopes(settings, tracker.deadline);
            for j in reached..hidden {
                let iv = optimized::tighten_layer(net, set, pre, j, &slopes);
                pre.layers[j].intersect(&iv);
            }
            if settings.progress {
                eprintln!(
                    "bab: refinement: layers {reached}.. bounded again by alpha-CROWN in {:.1} s: {before} -> {} \
                     unstable",
                    t.elapsed().as_secs_f64(),
                    count(pre)
                );
            }
        }
        if !(changed && stopped) {
            break;
        }
        domains = domains.saturating_mul(4);
    }
    stats.unstable_after = count(pre);
    stats.seconds = start.elapsed().as_secs_f64();
    Ok(stats)
}

/// What one neuron's search gave: the side searched, the proven bound on s z (None when the time
/// ran out first), domains bounded, whether it stopped at its domain budget, and whether it
/// converged.
struct Searched {
    neuron: usize,
    lower_side: bool,
    bound: Option<f64>,
    domains: usize,
    stopped: bool,
    converged: bool,
}

/// One pass over hidden layers 1.. (module documentation, steps 1-3) with `domains` per search,
/// skipping the neurons marked `done` and marking those whose searches converge: whether it
/// tightened any bound, whether a search stopped at its budget, and the first layer it did not
/// reach before the deadline (`hidden` when it reached all).
#[allow(clippy::too_many_arguments)]
fn pass(
    net: &Network,
    set: &InputSet,
    settings: &Bab,
    pre: &mut PreActivationBounds,
    domains: usize,
    deadline: Instant,
    done: &mut [Vec<bool>],
    stats: &mut RefineStats,
) -> Result<(bool, bool, usize)> {
    let hidden = net.layers().len() - 1;
    let sub_settings = Bab { progress: false, refine: 0.0, sdp_share: 0.0, ..settings.clone() };
    let slopes = super::relu::root_slopes(settings, deadline);
    let (mut changed, mut stopped) = (false, false);
    let started = Instant::now();
    for j in 1..hidden {
        if Instant::now() >= deadline {
            return Ok((changed, stopped, j));
        }
        if changed {
            // The layers before j are tighter than when alpha-CROWN bounded layer j.
            let iv = optimized::tighten_layer(net, set, pre, j, &slopes);
            pre.layers[j].intersect(&iv);
        }
        let iv = &pre.layers[j];
        let mut order: Vec<usize> =
            (0..iv.len()).filter(|&i| unstable(iv.lower[i], iv.upper[i]) && !done[j][i]).collect();
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
                let mut t = Tracker::bounding(deadline, domains);
                let skipped =
                    Searched { neuron: i, lower_side, bound: None, domains: 0, stopped: false, converged: false };
                if t.timed_out() {
                    return Ok(skipped);
                }
                let (bound, reason) = match super::relu::search(&p, &sub_pre, &sub_settings, &mut t)? {
                    Outcome::Verified { bound } => (Some(bound), None),
                    Outcome::Unknown { bound, reason } => (Some(bound), Some(reason)),
                    // Not reached: a bound-tightening search takes points of X as incumbents.
                    Outcome::Falsified { .. } => return Ok(skipped),
                };
                Ok(Searched {
                    neuron: i,
                    lower_side,
                    bound,
                    domains: t.stats.domains,
                    stopped: reason == Some(StopReason::DomainLimit),
                    converged: reason == Some(StopReason::Converged),
                })
            })
            .collect();
        let iv = &mut pre.layers[j];
        let before = unstable_in(iv);
        for r in results {
            let Searched { neuron: i, lower_side, bound, domains: n, stopped: budget_hit, converged } = r?;
            stopped |= budget_hit;
            done[j][i] |= converged;
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
        if settings.progress {
            eprintln!(
                "bab: refinement: layer {j}, {domains} domains per search: {before} -> {} unstable, {:.1} s into the pass",
                unstable_in(iv),
                started.elapsed().as_secs_f64()
            );
        }
    }
    Ok((changed, stopped, hidden))
}
