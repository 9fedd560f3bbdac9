//! Branch-and-bound trees in certificates: that the leaves cover the input set, and each leaf's
//! bound on its own region.
//!
//! A leaf's region is X cut by its branches: z >= 0 or z <= 0 for a ReLU split, x_i >= t or
//! x_i <= t for an input bisection. The leaves cover X when, at every node, either a leaf ends
//! there or all leaves below it branch on the same question and both answers are covered (the two
//! halves of a question make up the node's region). Each leaf is bounded by the Lagrangian of
//! lagrangian.rs on its own intervals, computed down the path as the search computed them: from
//! the root's (re-proven), each ReLU branch clips its neuron's interval at 0 and the layers after
//! it are recomputed under the clips so far (interval arithmetic and CROWN's lines on the node's
//! intervals, intersected with its parent's); each input branch recomputes every layer over the
//! node's box. A leaf whose intervals cross holds no point: its bound is +inf. The tree's bound
//! is the smallest leaf's.

use rayon::prelude::*;

use super::lagrangian::{self, Choice, Plain};
use super::{Intervals, Leaf, Lines, Split, choice};
use crate::spec::{Domain, InputSet, Norm};

/// The longest path from the root to a leaf the checker follows.
const MAX_DEPTH: usize = 4096;

/// The tree's bound on top^T z_L over X: the smallest leaf bound, or -inf when the leaves do not
/// cover X.
pub(super) fn bound(
    net: &Plain,
    set: &InputSet,
    root: &Intervals,
    top: &[f64],
    relaxations: &[Lines],
    leaves: &[Leaf],
) -> f64 {
    let paths: Vec<&[Split]> = leaves.iter().map(|l| l.splits.as_slice()).collect();
    // The coverage check recurses once per branch of a path: deeper trees are refused.
    if paths.iter().any(|p| p.len() > MAX_DEPTH) || !covers(&paths) {
        return f64::NEG_INFINITY;
    }
    leaves.par_iter().map(|leaf| leaf_bound(net, set, root, top, relaxations, leaf)).reduce(|| f64::INFINITY, f64::min)
}

/// Whether two branches answer the same question.
fn same_question(a: &Split, b: &Split) -> bool {
    match (a, b) {
        (Split::Relu { layer: l1, neuron: n1, .. }, Split::Relu { layer: l2, neuron: n2, .. }) => l1 == l2 && n1 == n2,
        (Split::Input { dim: d1, at: a1, .. }, Split::Input { dim: d2, at: a2, .. }) => {
            d1 == d2 && a1.to_bits() == a2.to_bits() && a1.is_finite()
        }
        _ => false,
    }
}

fn answer(s: &Split) -> bool {
    match s {
        Split::Relu { active, .. } => *active,
        Split::Input { upper, .. } => *upper,
    }
}

/// Whether leaves with these remaining paths cover their node's region.
fn covers(paths: &[&[Split]]) -> bool {
    if paths.iter().any(|p| p.is_empty()) {
        return true;
    }
    let Some(first) = paths.first() else {
        return false;
    };
    let question = first[0];
    if !paths.iter().all(|p| same_question(&p[0], &question)) {
        return false;
    }
    let (yes, no): (Vec<&[Split]>, Vec<&[Split]>) = {
        let (y, n): (Vec<&&[Split]>, Vec<&&[Split]>) = paths.iter().partition(|p| answer(&p[0]));
        (y.into_iter().map(|p| &p[1..]).collect(), n.into_iter().map(|p| &p[1..]).collect())
    };
    !yes.is_empty() && !no.is_empty() && covers(&yes) && covers(&no)
}

/// Intersects an interval layer with (l, u); false when the result crosses (no point).
fn intersect(iv: &mut (Vec<f64>, Vec<f64>), l: &[f64], u: &[f64]) -> bool {
    for n in 0..l.len() {
        iv.0[n] = iv.0[n].max(l[n]);
        iv.1[n] = iv.1[n].min(u[n]);
    }
    iv.0.iter().zip(&iv.1).all(|(a, b)| a <= b)
}

/// The input set of a leaf with input branches: its box lo..hi (X's bounding box cut by them),
/// with the l2 ball where the center lies in the box, else as a box.
fn region_set(set: &InputSet, lo: Vec<f64>, hi: Vec<f64>) -> crate::Result<InputSet> {
    let inside = set.center().iter().zip(lo.iter().zip(&hi)).all(|(c, (l, h))| l <= c && c <= h);
    if set.norm() == Norm::L2 && inside {
        return InputSet::new(set.center().to_vec(), set.eps(), Norm::L2, Some(Domain::new(lo, hi)?));
    }
    let center: Vec<f64> = lo.iter().zip(&hi).map(|(a, b)| (a + 0.5 * (b - a)).clamp(*a, *b)).collect();
    let eps = lo.iter().zip(&hi).map(|(a, b)| 0.5 * (b - a)).fold(0.0, f64::max) * (1.0 + 1e-12);
    InputSet::new(center, eps, Norm::Linf, Some(Domain::new(lo, hi)?))
}

/// One leaf's bound on top^T z_L over its region.
fn leaf_bound(net: &Plain, set: &InputSet, root: &Intervals, top: &[f64], relaxations: &[Lines], leaf: &Leaf) -> f64 {
    if !leaf.splits.iter().any(|s| matches!(s, Split::Input { .. })) {
        return relu_leaf_bound(net, set, root.clone(), None, top, relaxations, leaf);
    }
    // Input branches: the intervals of every node on the path down to the leaf, each recomputed
    // over the node's box and intersected with its parent's (they hold on the smaller box too),
    // from the root's intervals and, since CROWN's slope choice is not monotone in the intervals,
    // also afresh from the root box (as the search itself does); the better bound counts.
    let fresh: Intervals =
        root.iter().map(|(l, _)| (vec![f64::NEG_INFINITY; l.len()], vec![f64::INFINITY; l.len()])).collect();
    let mut best = f64::NEG_INFINITY;
    for (start, from_root_box) in [(root.clone(), false), (fresh, true)] {
        let b = match input_chain(net, set, start, from_root_box, &leaf.splits) {
            Chain::Empty => f64::INFINITY,
            Chain::Invalid => f64::NEG_INFINITY,
            Chain::Region(iv, region) => relu_leaf_bound(net, set, iv, Some(&region), top, relaxations, leaf),
        };
        best = best.max(b);
    }
    best
}

enum Chain {
    /// The leaf holds no point of X.
    Empty,
    /// A branch that does not fit the input.
    Invalid,
    /// The leaf's intervals and input set.
    Region(Intervals, Box<InputSet>),
}

/// The intervals over the leaf's box by the path of input branches (see [`leaf_bound`]).
fn input_chain(net: &Plain, set: &InputSet, mut iv: Intervals, from_root_box: bool, splits: &[Split]) -> Chain {
    let hidden = iv.len();
    let (mut lo, mut hi) = set.bounding_box();
    let mut nodes: Vec<(Vec<f64>, Vec<f64>)> = if from_root_box { vec![(lo.clone(), hi.clone())] } else { Vec::new() };
    for s in splits {
        let Split::Input { dim, at, upper } = *s else {
            continue;
        };
        if dim >= lo.len() || !at.is_finite() {
            return Chain::Invalid;
        }
        if upper {
            lo[dim] = lo[dim].max(at);
        } else {
            hi[dim] = hi[dim].min(at);
        }
        if lo.iter().zip(&hi).any(|(l, h)| l > h) {
            return Chain::Empty;
        }
        nodes.push((lo.clone(), hi.clone()));
    }
    let mut region = None;
    for (lo, hi) in nodes {
        let Ok(node) = region_set(set, lo, hi) else {
            return Chain::Invalid;
        };
        for k in 0..hidden {
            let (l, u) = lagrangian::layer_interval(net, &node, &iv[..k], k, |_, _| vec![Choice::Adaptive]);
            if !intersect(&mut iv[k], &l, &u) {
                return Chain::Empty;
            }
        }
        region = Some(node);
    }
    match region {
        Some(r) => Chain::Region(iv, Box::new(r)),
        None => Chain::Invalid,
    }
}

/// A leaf's bound from intervals `iv` valid on its region (`region`, or X): the ReLU branches
/// clip their neurons at 0 and the layers after the first one are recomputed.
fn relu_leaf_bound(
    net: &Plain,
    set: &InputSet,
    mut iv: Intervals,
    region: Option<&InputSet>,
    top: &[f64],
    relaxations: &[Lines],
    leaf: &Leaf,
) -> f64 {
    let hidden = iv.len();
    let region_set = region.unwrap_or(set);
    // ReLU branches in the order they were made, as the search did: each clips its neuron at 0,
    // then the layers after it are recomputed under the clips so far (intersected: every node's
    // intervals hold on its descendants).
    for s in &leaf.splits {
        let Split::Relu { layer, neuron, active } = *s else {
            continue;
        };
        if layer >= hidden || neuron >= iv[layer].0.len() {
            return f64::NEG_INFINITY;
        }
        if active {
            iv[layer].0[neuron] = iv[layer].0[neuron].max(0.0);
        } else {
            iv[layer].1[neuron] = iv[layer].1[neuron].min(0.0);
        }
        if iv[layer].0[neuron] > iv[layer].1[neuron] {
            // Sound enclosures that cross: the region holds no point.
            return f64::INFINITY;
        }
        for k in layer + 1..hidden {
            let (l, u) = lagrangian::layer_interval(net, region_set, &iv[..k], k, |_, _| vec![Choice::Adaptive]);
            if !intersect(&mut iv[k], &l, &u) {
                return f64::INFINITY;
            }
        }
    }
    let mut best = lagrangian::bound(net, region_set, &iv, hidden, top, Choice::Zero);
    best = best.max(lagrangian::bound(net, region_set, &iv, hidden, top, Choice::Adaptive));
    for m in &leaf.proofs {
        best = best.max(lagrangian::bound(net, region_set, &iv, hidden, top, choice(relaxations, m)));
    }
    best
}
