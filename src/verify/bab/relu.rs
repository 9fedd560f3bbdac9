//! Branch and bound over ReLU splits (high-dimensional inputs).
//!
//! A domain is a set of split decisions ([`Split`]) with the pre-activation bounds that hold on
//! it. Each round takes the open domains with the worst bounds (a batch), splits each on the
//! neuron its branching score picks, and bounds the children:
//! 1. the children's intermediate bounds are recomputed under their splits (a backward pass per
//!    unstable neuron of every layer after the split, CROWN's slopes, batched over the children)
//!    and intersected with the parent's (both valid on the child);
//! 2. the bound on each constraint of the property is raised by projected gradient ascent (Adam)
//!    on the ReLU slopes alpha and the split multipliers beta ([`super::relax`]), warm-started from
//!    the parent's;
//! 3. the relaxation's minimizers are tried as counterexamples (a forward pass decides);
//! 4. open children get their branching decision: the candidates with the best BaBSR intercept
//!    score (Bunel et al. 2020) are tried by one extra backward pass each side (filtered smart
//!    branching, De Palma et al. 2021) and the split whose worse child bound is highest wins,
//!    that estimate floored at the parent's bound (which the child inherits) and ties going to
//!    the better child (see `choose_branches`).
//!
//! A domain with no unstable neuron left is exact: its linear program (the network is affine on
//! it) is solved by clarabel ([`TriangleProgram`]); the LP's dual bound decides it, or its primal
//! point, checked by a forward pass, is a counterexample.
//!
//! The same search, given a tracker with an incumbent (`Tracker::incumbent`), is the
//! root refinement's bound-tightening search ([`super::refine`]): points of X satisfying the
//! constraint update the incumbent instead of ending it, no attacks or leaf LPs are run (a leaf
//! keeps its relaxation's bound), and it stops once its bound comes near the incumbent.

use faer::Mat;
use rayon::prelude::*;

use super::relax::{self, Column, HiddenBounds, Split};
use super::{Bab, Outcome, Problem, StopReason, Tracker};
use crate::bounds::lp::{LpSettings, TriangleProgram};
use crate::bounds::optimized::{self, SlopeSettings};
use crate::bounds::{Interval, PreActivationBounds, rounding};
use crate::error::Result;
use crate::linalg;
use crate::network::Network;
use crate::spec::InputSet;
use crate::verify::bm::Bm;
use crate::verify::sdp::BoundSource;

/// An open domain of the search.
#[derive(Clone)]
struct Domain {
    bounds: HiddenBounds,
    splits: Vec<Split>,
    /// Slopes per constraint: \[constraint\]\[layer\]\[neuron\].
    alpha: Vec<Vec<Vec<f64>>>,
    /// Split multipliers per constraint: \[constraint\]\[split\].
    beta: Vec<Vec<f64>>,
    /// Lower bound on c_j^T f(x) + d_j over the domain, per constraint j.
    values: Vec<f64>,
    /// The branching decision, once made.
    branch: Option<Split>,
    /// The constraint whose relaxation chose the branch, and the coefficient lam on the branching
    /// neuron's output in that constraint's backward pass (what starts the split's multiplier).
    branch_lam: (usize, f64),
    /// The relaxation's minimizer for the constraint closest to refuting the domain.
    point: Vec<f64>,
    /// Bounded by BM-Full already (its children are not: their bounds are tighter).
    sdp_tried: bool,
}

impl Domain {
    /// max_j values\[j\]: the domain is refuted when this is > 0 (see [`Problem::refutes`]).
    fn score(&self) -> f64 {
        self.values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

/// The property's constraints as a matrix (outputs x constraints) with their constants.
pub(super) struct Spec {
    /// W_last^T C: the constraints pulled back onto the last hidden layer's output.
    pub(super) top: Mat<f64>,
    /// C^T b_last + d.
    pub(super) consts: Vec<f64>,
}

impl Spec {
    /// `pre` bounds the pre-activations on every domain to be bounded (e.g. the root's; None:
    /// IBP's over the problem's set): the constants are lowered by the rounding error of the
    /// products C^T W and C^T b ([`crate::bounds::rounding`]), so that the backward passes from
    /// `top` stay sound.
    pub(super) fn new(p: &Problem<'_>, pre: Option<&PreActivationBounds>) -> Self {
        let layers = p.net.layers();
        let last = &layers[layers.len() - 1];
        let m = p.constraints.len();
        let c = Mat::<f64>::from_fn(p.net.num_classes(), m, |i, j| p.constraints[j].coeffs[i]);
        let top = last.mul_t(c.as_ref());
        // The same folding as the objective networks of BM-Full's bounding ([`super::sdp`]).
        let x_mag = rounding::last_input_magnitude(p.net, p.set, pre);
        let consts = p
            .constraints
            .iter()
            .map(|cj| {
                let v = linalg::dot(&cj.coeffs, last.bias()) + cj.constant;
                rounding::lower(v, super::sdp::folding_error(p.net, cj, &x_mag))
            })
            .collect();
        Self { top, consts }
    }
}

/// Runs the search; `tracker` holds the deadline, the statistics and the progress line.
pub(super) fn search(
    p: &Problem<'_>,
    pre: &PreActivationBounds,
    settings: &Bab,
    tracker: &mut Tracker,
) -> Result<Outcome> {
    let net = p.net;
    let hidden = net.layers().len() - 1;
    let m = p.constraints.len();
    let spec = Spec::new(p, Some(pre));
    let bounds = HiddenBounds {
        lower: pre.layers[..hidden].iter().map(|iv| iv.lower.clone()).collect(),
        upper: pre.layers[..hidden].iter().map(|iv| iv.upper.clone()).collect(),
    };
    let mut root = Domain {
        alpha: vec![initial_alpha(&bounds); m],
        beta: vec![Vec::new(); m],
        values: vec![f64::NEG_INFINITY; m],
        branch: None,
        branch_lam: (0, 0.0),
        point: p.set.center().to_vec(),
        bounds,
        splits: Vec::new(),
        sdp_tried: false,
    };
    // A bound-tightening search (a refinement's, with an incumbent): points of X are not answers.
    let bounding = tracker.incumbent.is_some();
    let iterations = settings.root_iterations;
    if let Some(x) = optimize(p, &spec, std::slice::from_mut(&mut root), iterations, tracker.incumbent.as_mut()) {
        return Ok(Outcome::Falsified { input: x });
    }
    tracker.stats.domains += 1;
    if p.refutes(&root.values) {
        tracker.settle(|| leaf(p, &spec, &root));
        return Ok(Outcome::Verified { bound: root.score() });
    }
    if root.bounds.unstable().is_empty() {
        return leaf_only(p, &spec, root, tracker);
    }
    choose_branches(p, &spec, std::slice::from_mut(&mut root), settings);
    // The root, kept for BM-Full's first bound (Bab::sdp_share).
    let mut sdp_root = (settings.sdp_share > 0.0).then(|| root.clone());
    let mut open: Vec<Domain> = vec![root];
    let mut settled = f64::INFINITY;
    let mut stuck = false;
    let mut round = 0usize;
    let mut per_child: Option<f64> = None;
    loop {
        let worst = open.iter().map(Domain::score).fold(f64::INFINITY, f64::min);
        if let Some(outcome) = tracker.stop(open.len(), worst, settled, stuck, settings.max_domains) {
            return Ok(outcome);
        }
        round += 1;
        if settings.sdp_share > 0.0 && tracker.stats.domains >= settings.sdp_after {
            if let Some(outcome) = sdp_round(p, &mut open, &mut sdp_root, &mut settled, settings, tracker)? {
                return Ok(outcome);
            }
            if open.is_empty() {
                continue;
            }
        }
        // The worst domains first: sort descending and take from the end. Near the deadline, no
        // more than the time left can bound (from the last rounds' seconds per child), so that
        // a large network's round does not overrun the time limit.
        open.sort_by(|a, b| b.score().total_cmp(&a.score()));
        let left = tracker.deadline.saturating_duration_since(std::time::Instant::now()).as_secs_f64();
        let fits = per_child.map_or(usize::MAX, |t: f64| (left / (2.0 * t)).floor() as usize);
        let take = settings.batch.min(open.len()).min(fits.max(1));
        let batch: Vec<Domain> = open.split_off(open.len() - take);
        // Counterexample search from the worst domains' minimizers, now and then.
        if settings.attack_every > 0 && round.is_multiple_of(settings.attack_every) && !bounding {
            let starts: Vec<&Vec<f64>> = batch.iter().rev().take(2).map(|d| &d.point).collect();
            for x0 in starts {
                if let Some(x) = super::attack_from(p, x0.clone(), settings.attack_steps / 4 + 1, 0.25)? {
                    return Ok(Outcome::Falsified { input: x });
                }
            }
        }
        let mut children = Vec::with_capacity(2 * batch.len());
        for d in batch {
            let Some(s) = d.branch else {
                continue;
            };
            let mut a = d.clone();
            let mut b = d;
            for (child, active) in [(&mut a, true), (&mut b, false)] {
                let split = Split { active, ..s };
                child.bounds.apply(split);
                child.splits.push(split);
                let (j, lam) = child.branch_lam;
                for (c, v) in child.beta.iter_mut().enumerate() {
                    let slope = child.alpha[c][s.layer][s.neuron];
                    v.push(if c == j { relax::matching_beta(split, lam, slope) } else { 0.0 });
                }
                child.branch = None;
                child.sdp_tried = false;
            }
            children.push(a);
            children.push(b);
        }
        let round_start = std::time::Instant::now();
        let chunk = children.len().div_ceil(rayon::current_num_threads().max(1)).max(1);
        let found: Vec<(Option<Vec<f64>>, f64)> = children
            .par_chunks_mut(chunk)
            .map(|part| {
                refresh_intermediate(p, part, settings.refresh_layers);
                let live: Vec<usize> = (0..part.len()).filter(|&i| !part[i].bounds.is_empty_domain()).collect();
                let mut sub: Vec<Domain> = live.iter().map(|&i| part[i].clone()).collect();
                let mut least = f64::INFINITY;
                let x = optimize(p, &spec, &mut sub, settings.iterations, bounding.then_some(&mut least));
                let open: Vec<usize> = (0..sub.len()).filter(|&i| !p.refutes(&sub[i].values)).collect();
                let mut to_branch: Vec<Domain> = open.iter().map(|&i| sub[i].clone()).collect();
                choose_branches(p, &spec, &mut to_branch, settings);
                for (&i, d) in open.iter().zip(to_branch) {
                    sub[i] = d;
                }
                for (&i, d) in live.iter().zip(sub) {
                    part[i] = d;
                }
                (x, least)
            })
            .collect();
        tracker.stats.domains += children.len();
        if !children.is_empty() {
            // Seconds per child, a round with fewer children than threads counted as a full one.
            let threads = rayon::current_num_threads().max(1);
            let t = round_start.elapsed().as_secs_f64() / children.len().max(threads) as f64;
            per_child = Some(per_child.map_or(t, |old| 0.5 * (old + t)));
        }
        for (x, least) in found {
            if let Some(x) = x {
                return Ok(Outcome::Falsified { input: x });
            }
            if let Some(v) = &mut tracker.incumbent {
                *v = v.min(least);
            }
        }
        for d in children {
            if d.bounds.is_empty_domain() {
                tracker.settle(|| leaf(p, &spec, &d));
                continue;
            }
            if p.refutes(&d.values) {
                settled = settled.min(d.score());
                tracker.settle(|| leaf(p, &spec, &d));
                continue;
            }
            if d.branch.is_none() {
                // A bound-tightening search (a refinement's) takes the relaxation's bound, as it
                // does at the deadline (then the search ends at the deadline's check, not
                // verified). Its LP would be exact, but on mnist_fc's 256x6 prop_13_0.05 the
                // refinement's LPs made a 90 s share last 146 s (the deadline is checked between
                // rounds) for the same bounds (117 against 116 unstable neurons without them).
                if tracker.timed_out() || bounding {
                    settled = settled.min(d.score());
                    stuck |= !bounding;
                    continue;
                }
                // No unstable neuron left: the domain's LP is exact.
                tracker.stats.leaves += 1;
                match solve_leaf(p, &d)? {
                    Leaf::Refuted(v) => {
                        settled = settled.min(v);
                        tracker.settle(|| leaf(p, &spec, &d));
                    }
                    Leaf::Counterexample(x, _) => return Ok(Outcome::Falsified { input: x }),
                    Leaf::Unresolved(v) => {
                        stuck = true;
                        settled = settled.min(v);
                    }
                }
                continue;
            }
            open.push(d);
        }
        tracker.stats.max_open = tracker.stats.max_open.max(open.len());
    }
}

/// One round of BM-Full bounding ([`Bab::sdp_share`]): the root first (kept in `sdp_root` until
/// then; refuting it verifies the query), then the open domains with the fewest splits not yet
/// tried, one per thread; the refuted ones leave `open` and lower `settled` to their bound.
fn sdp_round(
    p: &Problem<'_>,
    open: &mut Vec<Domain>,
    sdp_root: &mut Option<Domain>,
    settled: &mut f64,
    settings: &Bab,
    tracker: &mut Tracker,
) -> Result<Option<Outcome>> {
    if let Some(mut root) = sdp_root.take() {
        sdp_bound(p, std::slice::from_mut(&mut root), settings, tracker)?;
        if p.refutes(&root.values) {
            // BM-Full's proof is not recorded: the leaf carries none (the checker bounds it alone).
            tracker.settle(|| bare_leaf(&root));
            return Ok(Some(Outcome::Verified { bound: root.score() }));
        }
    }
    let mut fresh: Vec<usize> = (0..open.len()).filter(|&i| !open[i].sdp_tried).collect();
    fresh.sort_by_key(|&i| (open[i].splits.len(), std::cmp::Reverse(i)));
    fresh.truncate(rayon::current_num_threads().max(1));
    if fresh.is_empty() || tracker.stats.sdp.seconds >= settings.sdp_share * settings.timeout {
        return Ok(None);
    }
    // Removed from the highest index down, so that swap_remove leaves the others in place.
    fresh.sort_unstable_by(|a, b| b.cmp(a));
    let mut picked: Vec<Domain> = fresh.iter().map(|&i| open.swap_remove(i)).collect();
    sdp_bound(p, &mut picked, settings, tracker)?;
    for mut d in picked {
        d.sdp_tried = true;
        if p.refutes(&d.values) {
            *settled = settled.min(d.score());
            tracker.settle(|| bare_leaf(&d));
        } else {
            open.push(d);
        }
    }
    Ok(None)
}

/// Bounds `domains` by BM-Full ([`super::sdp`]) in parallel, a few at a time (one per thread)
/// while [`Bab::sdp_share`] of the time limit lasts; each domain's values become the larger of
/// beta-CROWN's and BM-Full's.
fn sdp_bound(p: &Problem<'_>, domains: &mut [Domain], settings: &Bab, tracker: &mut Tracker) -> Result<()> {
    let threads = rayon::current_num_threads().max(1);
    let budget = settings.sdp_share * settings.timeout;
    for group in domains.chunks_mut(threads) {
        let left = (budget - tracker.stats.sdp.seconds)
            .min(tracker.deadline.saturating_duration_since(std::time::Instant::now()).as_secs_f64());
        if left <= 0.0 {
            break;
        }
        // One solve per constraint within the time left (no near-miss restarts or extended budget:
        // each would get the whole time limit again).
        let bm = Bm {
            bounds: BoundSource::Optimized,
            time_limit: left,
            restarts: 0,
            near_miss_iterations: Bm::default().max_iterations,
            ..Bm::default()
        };
        let start = std::time::Instant::now();
        let found: Vec<Result<Vec<f64>>> = group
            .par_iter()
            .map(|d| {
                let mut order: Vec<usize> = (0..d.values.len()).collect();
                order.sort_by(|&a, &b| d.values[b].total_cmp(&d.values[a]));
                super::sdp::domain_bounds(p, &d.bounds, &order, &bm)
            })
            .collect();
        tracker.stats.sdp.seconds += start.elapsed().as_secs_f64();
        for (d, v) in group.iter_mut().zip(found) {
            let v = v?;
            tracker.stats.sdp.domains += 1;
            for (a, b) in d.values.iter_mut().zip(v) {
                *a = a.max(b);
            }
            if p.refutes(&d.values) {
                tracker.stats.sdp.refuted += 1;
            }
        }
    }
    Ok(())
}

/// The search when the root has no unstable neuron: the root's LP decides.
fn leaf_only(p: &Problem<'_>, spec: &Spec, root: Domain, tracker: &mut Tracker) -> Result<Outcome> {
    tracker.stats.leaves += 1;
    Ok(match solve_leaf(p, &root)? {
        Leaf::Refuted(v) => {
            tracker.settle(|| leaf(p, spec, &root));
            Outcome::Verified { bound: v }
        }
        Leaf::Counterexample(x, v) => match tracker.incumbent {
            // A bound-tightening search (a refinement's): the LP's value is the minimum.
            Some(_) => Outcome::Unknown { bound: v, reason: StopReason::Converged },
            None => Outcome::Falsified { input: x },
        },
        Leaf::Unresolved(v) => Outcome::Unknown { bound: v, reason: StopReason::Stuck },
    })
}

/// A settled domain as a certificate's leaf without multipliers.
fn bare_leaf(d: &Domain) -> crate::certificate::Leaf {
    crate::certificate::Leaf { splits: branches(&d.splits), proofs: Vec::new() }
}

fn branches(splits: &[Split]) -> Vec<crate::certificate::Split> {
    splits
        .iter()
        .map(|s| crate::certificate::Split::Relu { layer: s.layer, neuron: s.neuron, active: s.active })
        .collect()
}

/// A settled domain as a certificate's leaf: its splits, and the multipliers of the backward
/// pass of its best constraint with its slopes and split multipliers.
fn leaf(p: &Problem<'_>, spec: &Spec, d: &Domain) -> crate::certificate::Leaf {
    let j = (0..d.values.len()).max_by(|&a, &b| d.values[a].total_cmp(&d.values[b])).unwrap_or(0);
    let col = relax::Column {
        bounds: &d.bounds,
        alpha: d.alpha.get(j).map(|a| a.as_slice()),
        splits: &d.splits,
        beta: d.beta.get(j).map_or(&[], |b| b.as_slice()),
        extra: None,
    };
    let lam: Vec<f64> = (0..spec.top.nrows()).map(|i| spec.top[(i, j)]).collect();
    let nu = relax::multipliers(p.net, &lam, &col);
    crate::certificate::Leaf { splits: branches(&d.splits), proofs: vec![crate::certificate::Multipliers::Vectors(nu)] }
}

/// CROWN's adaptive slopes as the starting point of the ascent.
fn initial_alpha(b: &HiddenBounds) -> Vec<Vec<f64>> {
    b.lower
        .iter()
        .zip(&b.upper)
        .map(|(l, u)| l.iter().zip(u).map(|(l, u)| if *u > -*l { 1.0 } else { 0.0 }).collect())
        .collect()
}

/// Recomputes the bounds of the unstable neurons of the `depth` hidden layers after each domain's
/// last split, intersecting them with the domain's (the layers further on keep the parent's
/// bounds, which hold on the child too).
fn refresh_intermediate(p: &Problem<'_>, domains: &mut [Domain], depth: usize) {
    let net = p.net;
    let layers = net.layers();
    let hidden = layers.len() - 1;
    let from: Vec<usize> = domains.iter().map(|d| d.splits.last().map_or(1, |s| s.layer + 1)).collect();
    for j in 1..hidden {
        let mut live: Vec<&mut HiddenBounds> = domains
            .iter_mut()
            .zip(&from)
            .filter(|(d, f)| **f <= j && j < f.saturating_add(depth) && !d.bounds.is_empty_domain())
            .map(|(d, _)| &mut d.bounds)
            .collect();
        relax::tighten_layer(net, p.set, &mut live, j);
    }
}

/// Raises every domain's bounds by `iterations` steps of Adam on its slopes and multipliers,
/// keeping the best value of each constraint (every step's value is a valid bound) and the slopes
/// and multipliers that gave it. Returns a counterexample if a relaxation minimizer is one.
///
/// A domain leaves the batch once one constraint refutes it. (Dropping columns whose bound has not
/// risen for a few steps as well was tried and is worse: Adam's path often falls before it rises,
/// and with 3 or 5 such steps the root of 256x4 prop_7_0.05 ended at -0.58 / -0.39 instead of
/// -0.15.)
fn optimize(
    p: &Problem<'_>,
    spec: &Spec,
    domains: &mut [Domain],
    iterations: usize,
    mut incumbent: Option<&mut f64>,
) -> Option<Vec<f64>> {
    if domains.is_empty() {
        return None;
    }
    let net = p.net;
    let hidden = net.layers().len() - 1;
    let m = p.constraints.len();
    let ncols = domains.len() * m;
    // Working copies of alpha and beta, per column; Adam's moments.
    let mut alpha: Vec<Vec<Vec<f64>>> = domains.iter().flat_map(|d| d.alpha.iter().cloned()).collect();
    let mut beta: Vec<Vec<f64>> = domains.iter().flat_map(|d| d.beta.iter().cloned()).collect();
    let zeros_a = |a: &Vec<Vec<Vec<f64>>>| -> Vec<Vec<Vec<f64>>> {
        a.iter().map(|c| c.iter().map(|l| vec![0.0; l.len()]).collect()).collect()
    };
    let (mut ma, mut va) = (zeros_a(&alpha), zeros_a(&alpha));
    let (mut mb, mut vb): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
        (beta.iter().map(|b| vec![0.0; b.len()]).collect(), beta.iter().map(|b| vec![0.0; b.len()]).collect());
    let mut best = vec![f64::NEG_INFINITY; ncols];
    let mut best_point: Vec<Vec<f64>> = vec![Vec::new(); ncols];
    let mut best_alpha: Vec<Option<Vec<Vec<f64>>>> = vec![None; ncols];
    let mut best_beta: Vec<Option<Vec<f64>>> = vec![None; ncols];
    let (lr_a, lr_b, b1, b2): (f64, f64, f64, f64) = (0.1, 0.05, 0.9, 0.999);
    let mut found = None;
    // The columns still stepped.
    let mut act: Vec<usize> = (0..ncols).collect();
    for step in 0..=iterations {
        let cols: Vec<Column<'_>> = act
            .iter()
            .map(|&c| {
                let d = &domains[c / m];
                Column { bounds: &d.bounds, alpha: Some(&alpha[c]), splits: &d.splits, beta: &beta[c], extra: None }
            })
            .collect();
        let top = Mat::<f64>::from_fn(spec.top.nrows(), act.len(), |r, a| spec.top[(r, act[a] % m)]);
        let consts: Vec<f64> = act.iter().map(|&c| spec.consts[c % m]).collect();
        let back = relax::backward(net, p.set, hidden, top, consts, &cols, step < iterations);
        let x = relax::minimizers(p.set, &back.input_coeffs);
        for (a, &c) in act.iter().enumerate() {
            let v = back.values[a];
            if v > best[c] {
                best[c] = v;
                best_point[c] = x.col_as_slice(a).to_vec();
                best_alpha[c] = Some(alpha[c].clone());
                best_beta[c] = Some(beta[c].clone());
            }
        }
        // Every domain's minimizers are candidate counterexamples (checked on the real network);
        // in a bound-tightening search, points whose values only stop the search when its bound
        // comes near them.
        if let Some(inc) = incumbent.as_deref_mut()
            && (step == 0 || step == iterations)
        {
            let mut xs = x.clone();
            for a in 0..act.len() {
                p.set.project(xs.col_as_slice_mut(a));
            }
            let y = net.forward_batch(xs.as_ref());
            for a in 0..act.len() {
                *inc = inc.min(p.value(y.col_as_slice(a)));
            }
        } else if step == 0 || step == iterations {
            let y = net.forward_batch(x.as_ref());
            for a in 0..act.len() {
                let yc: Vec<f64> = y.col_as_slice(a).to_vec();
                if p.violated_by(&yc) {
                    // Confirmed at the projection onto X (the minimizer may lie on the bounding
                    // box's outward-rounded corner).
                    let mut xc = x.col_as_slice(a).to_vec();
                    p.set.project(&mut xc);
                    if p.confirms(&xc) {
                        found = Some(xc);
                    }
                }
            }
            if found.is_some() {
                break;
            }
        }
        if step == iterations {
            break;
        }
        // Which columns take the next step.
        let keep: Vec<bool> = act.iter().map(|&c| !p.refutes(&best[c / m * m..(c / m + 1) * m])).collect();
        if !keep.contains(&true) {
            break;
        }
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        let mut ga: Vec<(usize, usize, usize, f64)> = Vec::new();
        let mut gb: Vec<(usize, usize, f64)> = Vec::new();
        relax::gradients(net, &x, &back, &cols, |a, k, i, g| ga.push((a, k, i, g)), |a, j, g| gb.push((a, j, g)));
        drop(cols);
        for (a, k, i, g) in ga {
            let c = act[a];
            let (mm, vv) = (&mut ma[c][k][i], &mut va[c][k][i]);
            *mm = b1 * *mm + (1.0 - b1) * g;
            *vv = b2 * *vv + (1.0 - b2) * g * g;
            let a = &mut alpha[c][k][i];
            *a = (*a + lr_a * (*mm / c1) / ((*vv / c2).sqrt() + 1e-12)).clamp(0.0, 1.0);
        }
        for (a, j, g) in gb {
            let c = act[a];
            let (mm, vv) = (&mut mb[c][j], &mut vb[c][j]);
            *mm = b1 * *mm + (1.0 - b1) * g;
            *vv = b2 * *vv + (1.0 - b2) * g * g;
            let b = &mut beta[c][j];
            *b = (*b + lr_b * (*mm / c1) / ((*vv / c2).sqrt() + 1e-12)).max(0.0);
        }
        act = act.iter().zip(&keep).filter(|(_, k)| **k).map(|(c, _)| *c).collect();
    }
    for (di, d) in domains.iter_mut().enumerate() {
        for j in 0..m {
            let c = di * m + j;
            if best[c] > d.values[j] {
                d.values[j] = best[c];
                if let (Some(a), Some(b)) = (best_alpha[c].take(), best_beta[c].take()) {
                    d.alpha[j] = a;
                    d.beta[j] = b;
                }
            }
        }
        let jbest = (0..m).max_by(|&a, &b| best[di * m + a].total_cmp(&best[di * m + b])).unwrap_or(0);
        if !best_point[di * m + jbest].is_empty() {
            d.point = best_point[di * m + jbest].clone();
        }
    }
    found
}

/// Picks each domain's branching neuron (None when no neuron is unstable): the `fsb_candidates`
/// unstable neurons with the best BaBSR intercept score for the constraint closest to refuting
/// the domain, each tried on both sides by one backward pass with the domain's slopes and
/// multipliers; the neuron whose worse side is best wins, ties going to the better side.
///
/// The worse side's estimate is the larger of its trial pass and the domain's own bound v: a
/// child keeps its parent's bound when its own ascent does worse ([`optimize`]), so v is what it
/// will have at least. The trial pass alone is pessimistic exactly for the neurons that matter: it
/// has no multiplier for the new split, so the active side's identity piece (or the inactive
/// side's zero) holds on the whole interval \[l, u\] instead of on its half, and a neuron with a
/// large coefficient and a wide interval comes out far below v on one side (on 256x4 prop_7_0.05
/// of VNN-COMP's mnist_fc, -3.4 against v = -0.25 while its other side rose to -0.05). Compared
/// without the floor, every candidate of such a domain was below v and the least harmful won:
/// neurons with coefficients near 0, whose children kept v, and the search stalled at one bound
/// for minutes; with it those ties go to the candidate whose better side gains most.
fn choose_branches(p: &Problem<'_>, spec: &Spec, domains: &mut [Domain], settings: &Bab) {
    let net = p.net;
    let hidden = net.layers().len() - 1;
    let m = p.constraints.len();
    // The coefficients on every hidden layer's output for each domain's chosen constraint.
    let chosen: Vec<usize> =
        domains.iter().map(|d| (0..m).max_by(|&a, &b| d.values[a].total_cmp(&d.values[b])).unwrap_or(0)).collect();
    let back = {
        let cols: Vec<Column<'_>> = domains
            .iter()
            .zip(&chosen)
            .map(|(d, &j)| Column {
                bounds: &d.bounds,
                alpha: Some(&d.alpha[j]),
                splits: &d.splits,
                beta: &d.beta[j],
                extra: None,
            })
            .collect();
        let top = Mat::<f64>::from_fn(spec.top.nrows(), domains.len(), |r, c| spec.top[(r, chosen[c])]);
        let consts: Vec<f64> = chosen.iter().map(|&j| spec.consts[j]).collect();
        relax::backward(net, p.set, hidden, top, consts, &cols, true)
    };
    let mut candidates: Vec<Vec<Split>> = Vec::with_capacity(domains.len());
    for (di, d) in domains.iter().enumerate() {
        let mut scored: Vec<(f64, Split)> = Vec::new();
        for (k, i) in d.bounds.unstable() {
            let (l, u) = (d.bounds.lower[k][i], d.bounds.upper[k][i]);
            let lam = back.saved[k][(i, di)];
            let a = d.alpha[chosen[di]][k][i];
            // What the relaxation of this neuron costs the bound: the chord's intercept where the
            // upper line is used, the gap between ReLU and the lower line where it is not.
            let score = if lam < 0.0 { -lam * (-l * u / (u - l)) } else { lam * (u * (1.0 - a)).min(-l * a) };
            scored.push((score + 1e-9 * (u - l), Split { layer: k, neuron: i, active: true }));
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        scored.truncate(settings.fsb_candidates.max(1));
        candidates.push(scored.into_iter().map(|s| s.1).collect());
    }
    // Both sides of every candidate, in one backward pass.
    let mut jobs: Vec<(usize, Split)> = Vec::new();
    for (di, cands) in candidates.iter().enumerate() {
        if cands.len() > 1 {
            for s in cands {
                jobs.push((di, *s));
                jobs.push((di, Split { active: false, ..*s }));
            }
        }
    }
    let mut trial = vec![f64::NEG_INFINITY; jobs.len()];
    if !jobs.is_empty() {
        let cols: Vec<Column<'_>> = jobs
            .iter()
            .map(|&(di, s)| {
                let d = &domains[di];
                let j = chosen[di];
                Column {
                    bounds: &d.bounds,
                    alpha: Some(&d.alpha[j]),
                    splits: &d.splits,
                    beta: &d.beta[j],
                    extra: Some(s),
                }
            })
            .collect();
        let top = Mat::<f64>::from_fn(spec.top.nrows(), jobs.len(), |r, c| spec.top[(r, chosen[jobs[c].0])]);
        let consts: Vec<f64> = jobs.iter().map(|&(di, _)| spec.consts[chosen[di]]).collect();
        trial = relax::backward(net, p.set, hidden, top, consts, &cols, false).values;
    }
    let mut best: Vec<((f64, f64), Option<Split>)> =
        candidates.iter().map(|c| ((f64::NEG_INFINITY, f64::NEG_INFINITY), c.first().copied())).collect();
    for (pair, values) in jobs.chunks(2).zip(trial.chunks(2)) {
        let (di, s) = pair[0];
        // (worse side, better side), the worse floored at the domain's bound.
        let v = domains[di].values[chosen[di]];
        let key = (values[0].max(v).min(values[1].max(v)), values[0].max(values[1]));
        if key > best[di].0 {
            best[di] = (key, Some(s));
        }
    }
    for (di, (d, (_, s))) in domains.iter_mut().zip(best).enumerate() {
        d.branch = s;
        d.branch_lam = (chosen[di], s.map_or(0.0, |s| back.saved[s.layer][(s.neuron, di)]));
    }
}

enum Leaf {
    /// Every point of the domain refutes the conjunction; the value is the bound.
    Refuted(f64),
    /// A counterexample (checked by a forward pass), with the LP's bound.
    Counterexample(Vec<f64>, f64),
    /// Neither (the LP's point did not confirm, e.g. a tie at 0 within the solver's accuracy).
    Unresolved(f64),
}

/// A domain without unstable neurons: the network is affine on it, and the LP over the domain
/// (input set, every layer's bounds, the fixed phases) is exact.
fn solve_leaf(p: &Problem<'_>, d: &Domain) -> Result<Leaf> {
    let net = p.net;
    let layers = net.layers();
    let k = layers.len();
    let mut pre_layers: Vec<Interval> = d
        .bounds
        .lower
        .iter()
        .zip(&d.bounds.upper)
        .map(|(l, u)| Interval { lower: l.clone(), upper: u.clone() })
        .collect();
    let nout = layers[k - 1].output_size();
    pre_layers.push(Interval { lower: vec![f64::NEG_INFINITY; nout], upper: vec![f64::INFINITY; nout] });
    let pre = PreActivationBounds { layers: pre_layers };
    let program = TriangleProgram::new(net, p.set, &pre, k - 1, false);
    let settings = LpSettings { max_iter: 200, tolerance: 1e-10, prune_inactive: false, ..LpSettings::default() };
    let mut best_value = f64::NEG_INFINITY;
    let mut values = Vec::with_capacity(p.constraints.len());
    let mut points = Vec::new();
    for c in p.constraints {
        let w = layers[k - 1].mul_t_vec(&c.coeffs);
        let constant = linalg::dot(&c.coeffs, layers[k - 1].bias()) + c.constant;
        let q = program.objective(&w);
        let out = program.solver(&q, &settings).minimize(&q, constant);
        values.push(out.bound);
        best_value = best_value.max(out.bound);
        if out.input.len() == p.set.dim() {
            points.push(out.input);
        }
    }
    if p.refutes(&values) {
        return Ok(Leaf::Refuted(best_value));
    }
    for mut x in points {
        p.set.project(&mut x);
        if let Ok(y) = net.forward(&x)
            && p.violated_by(&y)
            && p.confirms(&x)
        {
            return Ok(Leaf::Counterexample(x, best_value));
        }
    }
    Ok(Leaf::Unresolved(best_value))
}

/// The root's intermediate bounds: alpha-CROWN's (CROWN ∩ IBP, then every hidden layer from the
/// second on with optimized slopes), shared by every constraint on the same input set.
pub(super) fn root_bounds(
    net: &Network,
    set: &InputSet,
    settings: &Bab,
    deadline: std::time::Instant,
) -> Result<PreActivationBounds> {
    optimized::optimized_bounds(net, set, &root_slopes(settings, deadline))
}

/// The slope ascent of the root's bounds and of their refinement: [`Bab::root_iterations`] steps,
/// [`Bab::root_tolerance`], stopped at `deadline`.
pub(super) fn root_slopes(settings: &Bab, deadline: std::time::Instant) -> SlopeSettings {
    SlopeSettings {
        iterations: settings.root_iterations,
        tolerance: settings.root_tolerance,
        deadline: Some(deadline),
        ..Default::default()
    }
}
