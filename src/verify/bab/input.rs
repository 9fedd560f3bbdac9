//! Branch and bound over input boxes (low-dimensional inputs, e.g. ACAS Xu's 5).
//!
//! A domain is a sub-box of the input box. Each is bounded by CROWN over the box (every layer's
//! pre-activation bounds recomputed for it: on a small box most ReLUs become stable, so the bound
//! converges to the exact value as the boxes shrink; any activation works). An open box is
//! bisected along the coordinate with the largest gradient x width (the gradient of its worst
//! constraint at the box's centre), and every box's centre and CROWN minimizer are tried as
//! counterexamples by a forward pass.

use rayon::prelude::*;

use super::{Bab, Outcome, Problem, StopReason, Tracker};
use crate::bounds::{self, linear};
use crate::error::Result;
use crate::verify::property::box_set;

struct BoxDomain {
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// Lower bound on c_j^T f(x) + d_j over the box, per constraint j.
    values: Vec<f64>,
}

impl BoxDomain {
    fn score(&self) -> f64 {
        self.values.iter().copied().fold(f64::NEG_INFINITY, f64::max)
    }
}

/// CROWN's bounds on every constraint over the box lo..hi, and a counterexample if the box's
/// centre is one.
fn bound_box(p: &Problem<'_>, lo: Vec<f64>, hi: Vec<f64>) -> Result<(BoxDomain, Option<Vec<f64>>)> {
    let set = box_set(lo.clone(), hi.clone())?;
    let pre = bounds::crown_and_ibp(p.net, &set)?;
    let m = p.constraints.len();
    let lam = faer::Mat::from_fn(p.net.num_classes(), m, |i, j| p.constraints[j].coeffs[i]);
    let lower = linear::spec_lower_bounds(p.net, &set, &pre, lam.as_ref(), linear::Slope::Adaptive);
    let values = lower.iter().zip(p.constraints).map(|(v, c)| v + c.constant).collect();
    let centre = set.center().to_vec();
    let y = p.net.forward(&centre)?;
    let found = (p.violated_by(&y) && p.set.contains(&centre, 0.0)).then_some(centre);
    Ok((BoxDomain { lo, hi, values }, found))
}

/// The coordinate to bisect: the largest |gradient| x width of the box's worst constraint at the
/// centre, or the widest coordinate when the gradient vanishes.
fn split_dimension(p: &Problem<'_>, d: &BoxDomain) -> Result<Option<usize>> {
    let n = d.lo.len();
    let centre: Vec<f64> = d.lo.iter().zip(&d.hi).map(|(a, b)| a + 0.5 * (b - a)).collect();
    let j = (0..d.values.len()).max_by(|&a, &b| d.values[a].total_cmp(&d.values[b])).unwrap_or(0);
    let (_, g) = p.net.spec_gradient(&centre, &p.constraints[j].coeffs)?;
    let splittable = |i: usize| {
        let mid = d.lo[i] + 0.5 * (d.hi[i] - d.lo[i]);
        mid > d.lo[i] && mid < d.hi[i]
    };
    let score = |i: usize| g[i].abs() * (d.hi[i] - d.lo[i]);
    let best = (0..n).filter(|&i| splittable(i)).max_by(|&a, &b| score(a).total_cmp(&score(b)));
    Ok(match best {
        Some(i) if score(i) > 0.0 => Some(i),
        _ => (0..n)
            .filter(|&i| splittable(i))
            .max_by(|&a, &b| (d.hi[a] - d.lo[a]).total_cmp(&(d.hi[b] - d.lo[b]))),
    })
}

/// Runs the input-splitting search over the problem's box (its set must be a box: an l_inf set).
pub(super) fn search(p: &Problem<'_>, settings: &Bab, tracker: &mut Tracker) -> Result<Outcome> {
    let (lo, hi) = p.set.bounding_box();
    let (root, found) = bound_box(p, lo, hi)?;
    tracker.stats.domains += 1;
    if let Some(x) = found {
        return Ok(Outcome::Falsified { input: x });
    }
    if p.refutes(&root.values) {
        return Ok(Outcome::Verified { bound: root.score() });
    }
    let mut open = vec![root];
    let mut settled = f64::INFINITY;
    let mut stuck = false;
    let mut round = 0usize;
    loop {
        let worst = open.iter().map(BoxDomain::score).fold(f64::INFINITY, f64::min);
        tracker.report(open.len(), worst.min(settled));
        if open.is_empty() {
            return Ok(if stuck {
                Outcome::Unknown { bound: settled, reason: StopReason::Stuck }
            } else {
                Outcome::Verified { bound: settled }
            });
        }
        if tracker.timed_out() {
            return Ok(Outcome::Unknown { bound: settled.min(worst), reason: StopReason::Timeout });
        }
        if open.len() > settings.max_domains {
            return Ok(Outcome::Unknown { bound: settled.min(worst), reason: StopReason::DomainLimit });
        }
        round += 1;
        open.sort_by(|a, b| b.score().total_cmp(&a.score()));
        let take = (4 * settings.batch).min(open.len());
        let batch: Vec<BoxDomain> = open.split_off(open.len() - take);
        if settings.attack_every > 0 && round % settings.attack_every == 0 {
            let worst = &batch[batch.len() - 1];
            let centre: Vec<f64> = worst.lo.iter().zip(&worst.hi).map(|(a, b)| a + 0.5 * (b - a)).collect();
            if let Some(x) = super::attack_from(p, centre, settings.attack_steps / 4 + 1)? {
                return Ok(Outcome::Falsified { input: x });
            }
        }
        let results: Vec<Result<Vec<(BoxDomain, Option<Vec<f64>>)>>> = batch
            .par_iter()
            .map(|d| -> Result<Vec<(BoxDomain, Option<Vec<f64>>)>> {
                let Some(i) = split_dimension(p, d)? else {
                    return Ok(Vec::new());
                };
                let mid = d.lo[i] + 0.5 * (d.hi[i] - d.lo[i]);
                let (mut hi_left, mut lo_right) = (d.hi.clone(), d.lo.clone());
                hi_left[i] = mid;
                lo_right[i] = mid;
                Ok(vec![bound_box(p, d.lo.clone(), hi_left)?, bound_box(p, lo_right, d.hi.clone())?])
            })
            .collect();
        for (d, r) in batch.iter().zip(results) {
            let children = r?;
            if children.is_empty() {
                // A box too small to bisect in floating point and still open.
                stuck = true;
                settled = settled.min(d.score());
                continue;
            }
            tracker.stats.domains += children.len();
            for (child, found) in children {
                if let Some(x) = found {
                    return Ok(Outcome::Falsified { input: x });
                }
                if p.refutes(&child.values) {
                    settled = settled.min(child.score());
                } else {
                    open.push(child);
                }
            }
        }
        tracker.stats.max_open = tracker.stats.max_open.max(open.len());
    }
}
