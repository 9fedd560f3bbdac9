//! Branch and bound over input boxes (low-dimensional inputs, e.g. ACAS Xu's 5).
//!
//! A domain is a sub-box of the input box. Each is bounded by CROWN over the box (every layer's
//! pre-activation bounds recomputed for it: on a small box most ReLUs become stable, so the bound
//! converges to the exact value as the boxes shrink; any activation works). For ReLU networks a
//! box's hidden bounds start from its parent's (they hold on the sub-box), so a neuron the parent
//! has made stable costs nothing more and the child's bounds are never looser. An open box is
//! bisected along the coordinate with the largest |CROWN input coefficient| x width (the bound's
//! own sensitivity to the coordinate's width), and every box's centre is tried as a
//! counterexample by a forward pass.

use rayon::prelude::*;

use super::relax::{Column, HiddenBounds};
use super::relu::Spec;
use super::{Bab, Outcome, Problem, Tracker};
use crate::bounds::{self, interval, linear};
use crate::error::Result;
use crate::verify::property::box_set;

struct BoxDomain {
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// Lower bound on c_j^T f(x) + d_j over the box, per constraint j.
    values: Vec<f64>,
    /// How much bisecting each coordinate is expected to raise the bound.
    score: Vec<f64>,
    /// The hidden layers' pre-activation bounds over the box (ReLU networks of at most
    /// [`INHERIT_MAX_NEURONS`] hidden neurons): they hold on every sub-box too, so the children
    /// start from them.
    hidden: Option<HiddenBounds>,
    /// The bisections from the root box to this one (for a certificate's tree).
    path: Vec<crate::certificate::Split>,
}

/// Up to this many hidden neurons a box keeps its hidden bounds for its children (at the domain
/// cap of 200,000 open boxes, 3.3 GB).
const INHERIT_MAX_NEURONS: usize = 1024;

impl BoxDomain {
    fn score(&self) -> f64 {
        self.values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

/// A bounded box and a counterexample found at its centre.
type Bounded = (BoxDomain, Option<Vec<f64>>);

/// CROWN's bounds on every constraint over the box lo..hi, the score of each coordinate for
/// bisection, and a counterexample if the box's centre is one.
///
/// The score: CROWN's bound is a^T x over the box plus a constant, whose minimum is
/// a^T centre - sum_i |a_i| r_i (r the half widths): halving coordinate i raises it by
/// |a_i| r_i / 2 before any intermediate bound tightens. For ReLU networks a comes from the
/// backward pass itself ([`super::relax::backward`] with CROWN's slopes, the same bound; `spec`
/// is the constraints pulled back once per search, given for ReLU networks only); for other
/// activations the gradient of the constraint at the centre stands in for it.
fn bound_box(
    p: &Problem<'_>,
    spec: Option<&Spec>,
    lo: Vec<f64>,
    hi: Vec<f64>,
    parent: Option<&HiddenBounds>,
) -> Result<Bounded> {
    let set = box_set(lo.clone(), hi.clone())?;
    let m = p.constraints.len();
    let mut kept = None;
    let (values, coeffs): (Vec<f64>, Option<faer::Mat<f64>>) = match spec {
        Some(spec) => {
            let hb = relu_bounds(p, &set, parent);
            let cols: Vec<Column<'_>> =
                (0..m).map(|_| Column { bounds: &hb, alpha: None, splits: &[], beta: &[], extra: None }).collect();
            let hidden = p.net.layers().len() - 1;
            let back = super::relax::backward(p.net, &set, hidden, spec.top.clone(), spec.consts.clone(), &cols, false);
            let neurons: usize = hb.lower.iter().map(Vec::len).sum();
            if neurons <= INHERIT_MAX_NEURONS {
                kept = Some(hb);
            }
            (back.values, Some(back.input_coeffs))
        }
        None => {
            let lam = faer::Mat::from_fn(p.net.num_classes(), m, |i, j| p.constraints[j].coeffs[i]);
            let pre = bounds::crown_and_ibp(p.net, &set)?;
            let lower = linear::spec_lower_bounds(p.net, &set, &pre, lam.as_ref(), linear::Slope::Adaptive);
            (lower.iter().zip(p.constraints).map(|(v, c)| v + c.constant).collect(), None)
        }
    };
    let centre = set.center().to_vec();
    let j = (0..m).max_by(|&a, &b| values[a].total_cmp(&values[b])).unwrap_or(0);
    let sensitivity: Vec<f64> = match &coeffs {
        Some(a) => a.col_as_slice(j).iter().map(|v| v.abs()).collect(),
        None => p.net.spec_gradient(&centre, &p.constraints[j].coeffs)?.1.iter().map(|v| v.abs()).collect(),
    };
    let score = sensitivity.iter().zip(lo.iter().zip(&hi)).map(|(a, (l, h))| a * (h - l)).collect();
    let y = p.net.forward(&centre)?;
    let found = (p.violated_by(&y) && p.confirms(&centre)).then_some(centre);
    Ok((BoxDomain { lo, hi, values, score, hidden: kept, path: Vec::new() }, found))
}

/// [`bound_box`] for a batch of boxes of a ReLU network (`spec` given): every layer's backward
/// passes and the constraints' run for all boxes at once ([`super::relax::backward_sets`]), so
/// the per-call costs of the small products (ACAS Xu's layers have 50 neurons) are shared. The
/// same bounds as box by box.
fn bound_boxes(
    p: &Problem<'_>,
    spec: &Spec,
    boxes: Vec<(Vec<f64>, Vec<f64>, Option<&HiddenBounds>)>,
) -> Result<Vec<Bounded>> {
    if boxes.is_empty() {
        return Ok(Vec::new());
    }
    let m = p.constraints.len();
    let layers = p.net.layers();
    let hidden = layers.len() - 1;
    let sets: Vec<crate::spec::InputSet> =
        boxes.iter().map(|(lo, hi, _)| box_set(lo.clone(), hi.clone())).collect::<Result<_>>()?;
    // The hull of the boxes: its magnitudes bound every box's in the rounding allowance.
    let n = boxes[0].0.len();
    let hull_lo: Vec<f64> = (0..n).map(|i| boxes.iter().map(|b| b.0[i]).fold(f64::INFINITY, f64::min)).collect();
    let hull_hi: Vec<f64> = (0..n).map(|i| boxes.iter().map(|b| b.1[i]).fold(f64::NEG_INFINITY, f64::max)).collect();
    let outer = box_set(hull_lo, hull_hi)?;
    let set_refs: Vec<&crate::spec::InputSet> = sets.iter().collect();
    let mut hbs: Vec<HiddenBounds> = (0..boxes.len())
        .map(|_| HiddenBounds { lower: Vec::with_capacity(hidden), upper: Vec::with_capacity(hidden) })
        .collect();
    for j in 0..hidden {
        for (b, hb) in hbs.iter_mut().enumerate() {
            let (lower, upper) = layer_box_bounds(p, &sets[b], hb, boxes[b].2, j);
            hb.lower.push(lower);
            hb.upper.push(upper);
        }
        if j > 0 {
            let mut refs: Vec<&mut HiddenBounds> = hbs.iter_mut().collect();
            super::relax::tighten_layer_sets(p.net, &outer, &set_refs, &mut refs, j);
        }
    }
    let back = {
        let cols: Vec<Column<'_>> = hbs
            .iter()
            .flat_map(|hb| (0..m).map(move |_| Column { bounds: hb, alpha: None, splits: &[], beta: &[], extra: None }))
            .collect();
        let per_col: Vec<&crate::spec::InputSet> = sets.iter().flat_map(|x| std::iter::repeat_n(x, m)).collect();
        let top = faer::Mat::<f64>::from_fn(spec.top.nrows(), cols.len(), |r, c| spec.top[(r, c % m)]);
        let consts: Vec<f64> = (0..cols.len()).map(|c| spec.consts[c % m]).collect();
        super::relax::backward_sets(p.net, &outer, &per_col, hidden, top, consts, &cols, false)
    };
    let mut out = Vec::with_capacity(boxes.len());
    for (b, ((lo, hi, _), hb)) in boxes.into_iter().zip(hbs).enumerate() {
        let values = back.values[b * m..(b + 1) * m].to_vec();
        let j = (0..m).max_by(|&a, &c| values[a].total_cmp(&values[c])).unwrap_or(0);
        let a = back.input_coeffs.col_as_slice(b * m + j);
        let score = a.iter().zip(lo.iter().zip(&hi)).map(|(a, (l, h))| a.abs() * (h - l)).collect();
        let neurons: usize = hb.lower.iter().map(Vec::len).sum();
        let kept = (neurons <= INHERIT_MAX_NEURONS).then_some(hb);
        let centre = sets[b].center().to_vec();
        let y = p.net.forward(&centre)?;
        let found = (p.violated_by(&y) && p.confirms(&centre)).then_some(centre);
        out.push((BoxDomain { lo, hi, values, score, hidden: kept, path: Vec::new() }, found));
    }
    Ok(out)
}

/// Layer j's bounds over a box before its backward passes: the first layer's exact interval, or
/// IBP from the previous layer's final bounds, intersected with the parent box's (see
/// [`relu_bounds`]).
fn layer_box_bounds(
    p: &Problem<'_>,
    set: &crate::spec::InputSet,
    hb: &HiddenBounds,
    parent: Option<&HiddenBounds>,
    j: usize,
) -> (Vec<f64>, Vec<f64>) {
    let layers = p.net.layers();
    let iv = if j == 0 {
        interval::first_layer_of(&layers[0], set)
    } else {
        let lo: Vec<f64> = hb.lower[j - 1].iter().map(|v| v.max(0.0)).collect();
        let hi: Vec<f64> = hb.upper[j - 1].iter().map(|v| v.max(0.0)).collect();
        interval::affine_box_layer(&layers[j], &lo, &hi)
    };
    let (mut lower, mut upper) = (iv.lower, iv.upper);
    if let Some(parent) = parent {
        for i in 0..lower.len() {
            let (l, u) = (lower[i].max(parent.lower[j][i]), upper[i].min(parent.upper[j][i]));
            // Both hold on the box; bounds that cross can only do so by rounding, and then the
            // interval between them is kept.
            (lower[i], upper[i]) = if l <= u { (l, u) } else { (u, l) };
        }
    }
    (lower, upper)
}

/// CROWN ∩ IBP bounds of the hidden layers of a ReLU network over `set`, intersected with the
/// bounds of the box it was cut from (`parent`), layer by layer: each layer's IBP box comes from
/// the previous layer's final bounds, CROWN's backward passes run only for the neurons still
/// unstable (on a small box most are stable, and a stable ReLU's relaxation is exact whatever its
/// bounds): the relaxation of [`bounds::crown_and_ibp`] or tighter, at a fraction of the cost.
fn relu_bounds(p: &Problem<'_>, set: &crate::spec::InputSet, parent: Option<&HiddenBounds>) -> HiddenBounds {
    let hidden = p.net.layers().len() - 1;
    let mut hb = HiddenBounds { lower: Vec::with_capacity(hidden), upper: Vec::with_capacity(hidden) };
    for j in 0..hidden {
        let (lower, upper) = layer_box_bounds(p, set, &hb, parent, j);
        hb.lower.push(lower);
        hb.upper.push(upper);
        if j > 0 {
            super::relax::tighten_layer(p.net, set, &mut [&mut hb], j);
        }
    }
    hb
}

/// The coordinate to bisect: the best score (see [`bound_box`]) when bisecting it can close the
/// box's gap (score / 4 >= -bound: the linear part of the bound rises by |a_i| w_i / 4); otherwise
/// the gap comes from the relaxed ReLUs, which every coordinate's width feeds, and the widest
/// coordinate relative to the root box is bisected. None when no coordinate can be halved in
/// floating point.
fn split_dimension(d: &BoxDomain, root_width: &[f64]) -> Option<usize> {
    let n = d.lo.len();
    let splittable = |i: usize| {
        let mid = d.lo[i] + 0.5 * (d.hi[i] - d.lo[i]);
        mid > d.lo[i] && mid < d.hi[i]
    };
    let best = (0..n).filter(|&i| splittable(i)).max_by(|&a, &b| d.score[a].total_cmp(&d.score[b]));
    let gap = -d.score();
    match best {
        Some(i) if d.score[i] > 0.0 && d.score[i] / 4.0 >= gap => Some(i),
        _ => {
            let rel = |i: usize| if root_width[i] > 0.0 { (d.hi[i] - d.lo[i]) / root_width[i] } else { 0.0 };
            (0..n).filter(|&i| splittable(i)).max_by(|&a, &b| rel(a).total_cmp(&rel(b)))
        }
    }
}

/// Bisects every box of `batch` (none for a box too small to bisect) and bounds the children,
/// in one [`bound_boxes`] call per thread for ReLU networks, box by box otherwise.
fn bisect_batch(
    p: &Problem<'_>,
    spec: Option<&Spec>,
    batch: &[BoxDomain],
    root_width: &[f64],
) -> Result<Vec<Vec<Bounded>>> {
    // The children's boxes: (parent, lo, hi, the split).
    let mut jobs: Vec<(usize, Vec<f64>, Vec<f64>, crate::certificate::Split)> = Vec::new();
    for (di, d) in batch.iter().enumerate() {
        let Some(i) = split_dimension(d, root_width) else { continue };
        let mid = d.lo[i] + 0.5 * (d.hi[i] - d.lo[i]);
        let (mut hi_left, mut lo_right) = (d.hi.clone(), d.lo.clone());
        hi_left[i] = mid;
        lo_right[i] = mid;
        jobs.push((di, d.lo.clone(), hi_left, crate::certificate::Split::Input { dim: i, at: mid, upper: false }));
        jobs.push((di, lo_right, d.hi.clone(), crate::certificate::Split::Input { dim: i, at: mid, upper: true }));
    }
    let chunk = jobs.len().div_ceil(rayon::current_num_threads().max(1)).max(2);
    let bounded: Vec<Result<Vec<Bounded>>> = jobs
        .par_chunks(chunk)
        .map(|part| match spec {
            Some(spec) => bound_boxes(
                p,
                spec,
                part.iter().map(|(di, lo, hi, _)| (lo.clone(), hi.clone(), batch[*di].hidden.as_ref())).collect(),
            ),
            None => part
                .iter()
                .map(|(di, lo, hi, _)| bound_box(p, None, lo.clone(), hi.clone(), batch[*di].hidden.as_ref()))
                .collect(),
        })
        .collect();
    let mut out: Vec<Vec<Bounded>> = (0..batch.len()).map(|_| Vec::new()).collect();
    let mut it = jobs.iter();
    for part in bounded {
        for (mut child, found) in part? {
            let (di, _, _, split) = it.next().expect("one bounded box per job");
            child.path = batch[*di].path.clone();
            child.path.push(*split);
            out[*di].push((child, found));
        }
    }
    Ok(out)
}

/// Runs the input-splitting search over the problem's box (its set must be a box: an l_inf set).
pub(super) fn search(p: &Problem<'_>, settings: &Bab, tracker: &mut Tracker) -> Result<Outcome> {
    let (lo, hi) = p.set.bounding_box();
    // The constraints pulled back onto the last hidden layer once (ReLU networks).
    let spec = super::relu_network(p.net).then(|| Spec::new(p, None));
    let (root, found) = bound_box(p, spec.as_ref(), lo, hi, None)?;
    tracker.stats.domains += 1;
    if let Some(x) = found {
        return Ok(Outcome::Falsified { input: x });
    }
    if p.refutes(&root.values) {
        tracker.settle(|| crate::certificate::Leaf { splits: Vec::new(), proofs: Vec::new() });
        return Ok(Outcome::Verified { bound: root.score() });
    }
    let root_width: Vec<f64> = root.lo.iter().zip(&root.hi).map(|(l, h)| h - l).collect();
    let mut open = vec![root];
    let mut settled = f64::INFINITY;
    let mut stuck = false;
    let mut round = 0usize;
    loop {
        let worst = open.iter().map(BoxDomain::score).fold(f64::INFINITY, f64::min);
        if let Some(outcome) = tracker.stop(open.len(), worst, settled, stuck, settings.max_domains) {
            return Ok(outcome);
        }
        round += 1;
        open.sort_by(|a, b| b.score().total_cmp(&a.score()));
        let take = (4 * settings.batch).min(open.len());
        let batch: Vec<BoxDomain> = open.split_off(open.len() - take);
        if settings.attack_every > 0 && round.is_multiple_of(settings.attack_every) {
            let worst = &batch[batch.len() - 1];
            let centre: Vec<f64> = worst.lo.iter().zip(&worst.hi).map(|(a, b)| a + 0.5 * (b - a)).collect();
            if let Some(x) = super::attack_from(p, centre, settings.attack_steps / 4 + 1, 0.25)? {
                return Ok(Outcome::Falsified { input: x });
            }
        }
        let results = bisect_batch(p, spec.as_ref(), &batch, &root_width)?;
        for (d, children) in batch.iter().zip(results) {
            if children.is_empty() {
                // A box too small to bisect in floating point and still open.
                stuck = true;
                settled = settled.min(d.score());
                continue;
            }
            tracker.stats.domains += children.len();
            for (mut child, found) in children {
                // The parent's bounds hold on the child's box too.
                for (c, p) in child.values.iter_mut().zip(&d.values) {
                    *c = c.max(*p);
                }
                if let Some(x) = found {
                    return Ok(Outcome::Falsified { input: x });
                }
                if p.refutes(&child.values) {
                    settled = settled.min(child.score());
                    tracker.settle(|| crate::certificate::Leaf { splits: child.path.clone(), proofs: Vec::new() });
                } else {
                    open.push(child);
                }
            }
        }
        tracker.stats.max_open = tracker.stats.max_open.max(open.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::vnnlib::OutputConstraint;
    use crate::{Activation, Layer, Network};
    use faer::Mat;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn network(seed: u64) -> Network {
        let mut rng = StdRng::seed_from_u64(seed);
        let sizes = [5, 12, 12, 12, 3];
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(k, w)| {
                let weight = Mat::from_fn(w[1], w[0], |_, _| rng.random::<f64>() * 2.0 - 1.0);
                let bias = (0..w[1]).map(|_| rng.random::<f64>() * 0.2 - 0.1).collect();
                let act = if k + 2 < sizes.len() { Activation::Relu } else { Activation::Identity };
                Layer::new(weight, bias, act)
            })
            .collect();
        Network::new(vec![5], layers).unwrap()
    }

    #[test]
    fn boxes_bounded_in_one_batch_get_the_bounds_of_one_at_a_time() {
        for seed in 0..4 {
            let net = network(seed);
            let mut rng = StdRng::seed_from_u64(100 + seed);
            let root = box_set(vec![-1.0; 5], vec![1.0; 5]).unwrap();
            let constraints = [OutputConstraint { coeffs: vec![1.0, -1.0, 0.0], constant: 0.0, strict: false }];
            let p = Problem { net: &net, set: &root, constraints: &constraints };
            let spec = Spec::new(&p, None);
            let parent = relu_bounds(&p, &root, None);
            let boxes: Vec<(Vec<f64>, Vec<f64>)> = (0..9)
                .map(|_| {
                    let a: Vec<f64> = (0..5).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
                    let w: Vec<f64> = (0..5).map(|_| rng.random::<f64>() * 0.5).collect();
                    let lo: Vec<f64> = a.iter().zip(&w).map(|(a, w)| (a - w).max(-1.0)).collect();
                    let hi: Vec<f64> = a.iter().zip(&w).map(|(a, w)| (a + w).min(1.0)).collect();
                    (lo, hi)
                })
                .collect();
            for with_parent in [false, true] {
                let par = with_parent.then_some(&parent);
                let batch =
                    bound_boxes(&p, &spec, boxes.iter().map(|(l, h)| (l.clone(), h.clone(), par)).collect()).unwrap();
                for ((lo, hi), (b, _)) in boxes.iter().zip(&batch) {
                    let (one, _) = bound_box(&p, Some(&spec), lo.clone(), hi.clone(), par).unwrap();
                    assert!(one.values[0].is_finite());
                    let close = |x: f64, y: f64| (x - y).abs() <= 1e-12 * (1.0 + x.abs());
                    assert!(close(one.values[0], b.values[0]), "seed {seed}: {} vs {}", one.values[0], b.values[0]);
                    for (s, t) in one.score.iter().zip(&b.score) {
                        assert!(close(*s, *t));
                    }
                    let (h1, h2) = (one.hidden.as_ref().unwrap(), b.hidden.as_ref().unwrap());
                    for (l1, l2) in h1.lower.iter().chain(&h1.upper).zip(h2.lower.iter().chain(&h2.upper)) {
                        assert!(l1.iter().zip(l2).all(|(x, y)| close(*x, *y)));
                    }
                }
            }
        }
    }
}
