//! Exact phi\[c\] for small ReLU networks: branch and bound over activation patterns.
//!
//! phi\[c\] is the minimum over activation patterns of a convex problem (once every ReLU's phase is
//! fixed the network is affine on the region where that pattern holds, a polyhedron, and X is a
//! box or a ball ∩ box: an LP or an SOCP). Rather than enumerating all 2^k patterns, the search
//! splits one unstable neuron at a time (active: l = 0; inactive: u = 0), bounds each node with the
//! triangle LP/SOCP over CROWN bounds recomputed inside the split (a sound lower bound on the
//! node), and prunes nodes whose bound cannot beat the best margin found so far. Leaves (no
//! unstable neuron) are exact convex problems. Every primal point the solver returns is projected
//! into X and evaluated by a forward pass, so the upper bound is attained by a real input.
//!
//! The result brackets phi: `lower <= phi <= upper`, with `upper - lower` at most the tolerance when
//! the search completes (solver accuracy permitting). This is the ground truth of the project's
//! soundness tests.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::{BoundReport, Stats, Verifier};
use crate::bounds::lp::{LpSettings, LpStats, TriangleProgram};
use crate::bounds::{self, PreActivationBounds, linear};
use crate::error::{Error, Result};
use crate::network::{Activation, Network};
use crate::spec::InputSet;

/// Settings of the exact verifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exact {
    /// Refuse problems with more unstable neurons than this after CROWN ∩ IBP bounds (default 20).
    pub max_unstable: usize,
    /// Stop after this many nodes; the result is then still a valid bracket (default 200_000).
    pub max_nodes: usize,
    /// Absolute tolerance for pruning and for the final gap (default 1e-7).
    pub tolerance: f64,
    /// LP/SOCP settings (default: 200 iterations, tolerance 1e-10; `prune_inactive` is ignored:
    /// the inactive rows encode the splits).
    pub settings: LpSettings,
}

impl Default for Exact {
    fn default() -> Self {
        Self {
            max_unstable: 20,
            max_nodes: 200_000,
            tolerance: 1e-7,
            settings: LpSettings { max_iter: 200, tolerance: 1e-10, prune_inactive: false, ..LpSettings::default() },
        }
    }
}

/// The exact value of phi\[target\], bracketed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExactResult {
    /// The target class.
    pub target: usize,
    /// A sound lower bound on phi.
    pub lower: f64,
    /// f(x)\[label\] - f(x)\[target\] at `minimizer`: an upper bound on phi.
    pub upper: f64,
    /// A point of X attaining `upper`.
    pub minimizer: Vec<f64>,
    /// Branch-and-bound nodes solved.
    pub nodes: usize,
    /// Whether the search finished (otherwise `lower` comes from the open nodes).
    pub complete: bool,
    /// LP statistics.
    pub lp: LpStats,
}

fn is_unstable(l: f64, u: f64) -> bool {
    l < 0.0 && u > 0.0
}

impl Exact {
    /// Bounds for the search's root: CROWN ∩ IBP.
    fn root_bounds(&self, net: &Network, set: &InputSet) -> Result<PreActivationBounds> {
        bounds::crown_and_ibp(net, set)
    }

    /// The exact phi\[target\] = min over X of f(x)\[label\] - f(x)\[target\].
    pub fn phi(&self, net: &Network, set: &InputSet, label: usize, target: usize) -> Result<ExactResult> {
        let layers = net.layers();
        let k = layers.len();
        if layers[k - 1].activation() != Activation::Identity
            || layers[..k - 1].iter().any(|l| !matches!(l.activation(), Activation::Relu | Activation::Identity))
        {
            return Err(Error::Unsupported(
                "the exact verifier needs ReLU (or identity) hidden layers and an affine last layer".into(),
            ));
        }
        net.check_input(set.center())?;
        net.check_label(label)?;
        net.check_label(target)?;
        let root = self.root_bounds(net, set)?;
        let unstable = root.unstable_neurons();
        if unstable > self.max_unstable {
            return Err(Error::TooManyUnstable { unstable, limit: self.max_unstable });
        }
        let last = &layers[k - 1];
        let spec = linear::margin_spec(net.num_classes(), label, &[target]);
        let wt = last.weight_t();
        let w: Vec<f64> = (0..wt.nrows()).map(|i| (0..wt.ncols()).map(|j| wt[(i, j)] * spec[(j, 0)]).sum()).collect();
        let constant = last.bias()[label] - last.bias()[target];

        let mut best_x = set.center().to_vec();
        let mut best = net.margin(&best_x, label, target)?;
        let mut lp = LpStats::default();
        let mut settled = f64::INFINITY; // min of the bounds of closed nodes
        // (bounds of the node, lower bound inherited from its parent)
        let mut stack: Vec<(PreActivationBounds, f64)> = vec![(root, f64::NEG_INFINITY)];
        let mut nodes = 0;
        while let Some((node, parent_bound)) = stack.pop() {
            if parent_bound >= best - self.tolerance {
                settled = settled.min(parent_bound);
                continue;
            }
            if nodes >= self.max_nodes {
                stack.push((node, parent_bound));
                break;
            }
            nodes += 1;
            let program = TriangleProgram::new(net, set, &node, k - 1, false);
            let q = program.objective(&w);
            let out = program.solver(&q, &self.settings).minimize(&q, constant);
            lp.record(&out);
            if out.input.len() == set.dim() && out.input.iter().all(|v| v.is_finite()) {
                let mut x = out.input.clone();
                set.project(&mut x);
                let m = net.margin(&x, label, target)?;
                if m < best {
                    best = m;
                    best_x = x;
                }
            }
            let bound = out.bound.max(parent_bound);
            if bound >= best - self.tolerance {
                settled = settled.min(bound);
                continue;
            }
            // Branch on the unstable neuron with the largest triangle (-l u / (u - l)).
            let mut pick: Option<(usize, usize, f64)> = None;
            for (li, iv) in node.layers[..k - 1].iter().enumerate() {
                for j in 0..iv.len() {
                    let (l, u) = (iv.lower[j], iv.upper[j]);
                    if is_unstable(l, u) {
                        let score = -l * u / (u - l);
                        if pick.is_none_or(|p| score > p.2) {
                            pick = Some((li, j, score));
                        }
                    }
                }
            }
            let Some((li, j, _)) = pick else {
                // A leaf: the program is the exact convex problem of this pattern.
                settled = settled.min(bound);
                continue;
            };
            for active in [false, true] {
                let mut child = node.clone();
                if active {
                    child.layers[li].lower[j] = 0.0;
                } else {
                    child.layers[li].upper[j] = 0.0;
                }
                // Re-propagate inside the split: sound, and it fixes more neurons.
                let refined = linear::all_layer_bounds_within(net, set, linear::Slope::Adaptive, Some(&child));
                if refined.layers.iter().any(|iv| iv.lower.iter().zip(&iv.upper).any(|(l, u)| l > u)) {
                    // Empty region: this pattern is infeasible.
                    continue;
                }
                stack.push((refined, bound));
            }
        }
        let open = stack.iter().map(|(_, b)| *b).fold(f64::INFINITY, f64::min);
        let complete = stack.is_empty();
        let lower = settled.min(open).min(best);
        Ok(ExactResult { target, lower, upper: best, minimizer: best_x, nodes, complete, lp })
    }
}

impl Verifier for Exact {
    fn name(&self) -> &'static str {
        "exact"
    }
    fn lower_bounds(&self, network: &Network, set: &InputSet, label: usize, targets: &[usize]) -> Result<BoundReport> {
        let start = Instant::now();
        super::check_query(network, set, label, targets)?;
        let mut lp = LpStats::default();
        let mut out = Vec::with_capacity(targets.len());
        for &t in targets {
            let r = self.phi(network, set, label, t)?;
            lp.merge(&r.lp);
            out.push((t, r.lower));
        }
        let pre = self.root_bounds(network, set)?;
        Ok(BoundReport {
            bounds: out,
            stats: Stats {
                seconds: start.elapsed().as_secs_f64(),
                unstable_neurons: Some(pre.unstable_neurons()),
                lp: Some(lp),
                certified_radius: None,
                bm: None,
            },
            counterexample: None,
        })
    }
}
