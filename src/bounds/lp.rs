//! The triangle (LP) relaxation of a network prefix, solved with clarabel, and a lower bound that is
//! sound for whatever the solver returns.
//!
//! Salman et al. 2019 (001_b3d5e3f2d36bac59.txt), problem (C) with the convex hull of ReLU on
//! \[l, u\] (the "triangle", Ehlers 2017; eq. (9) of 004_79c7a41c77cceb0d.txt):
//!
//! ```text
//! z_k = W_k x_k + b_k,   l_k <= z_k <= u_k,
//! x_{k+1} = z_k              (l >= 0, active)
//! x_{k+1} = 0                (u <= 0, inactive)
//! x_{k+1} >= 0, x_{k+1} >= z_k, x_{k+1} <= u (z_k - l) / (u - l)     (unstable)
//! x_0 in X: box rows for l_inf ∩ box, a second-order cone ||x_0 - c|| <= eps (plus box rows) for l2.
//! ```
//!
//! Sigmoid, tanh and softplus get their two CROWN lines plus the box [sigma(l), sigma(u)] (a sound
//! polyhedral relaxation, not the convex hull).
//!
//! In clarabel's form `A v + s = b, s in K` the objective q^T v is bounded below, for **any**
//! z in the dual cone K* (the nonnegative orthant for inequalities, free for equalities, the
//! second-order cone itself), by weak duality:
//!
//! ```text
//! q^T v >= q^T v - z^T (b - A v) = r^T v - b^T z >= -b^T z + sum_i min(r_i lo_i, r_i hi_i),   r = q + A^T z,
//! ```
//!
//! where \[lo, hi\] is a box that contains every feasible v (the explicit l <= z <= u rows make it
//! one: input box, \[l, u\] for z, [sigma(l), sigma(u)] for x). The reported bound is this value at
//! the solver's dual point, first moved into K* (negative inequality multipliers set to 0, the
//! cone multiplier raised to the norm of its tail), minus an a-priori bound on the rounding error of
//! the sums (Neumaier & Shcherbina 2004). It is valid whether the solver converged, stopped early or
//! failed; with z = 0 it reduces to the interval bound over the box.

use clarabel::algebra::CscMatrix;
use clarabel::solver::{
    DefaultSettings, DefaultSettingsBuilder, DefaultSolver, IPSolver, SolverStatus, SupportedConeT,
};
use serde::{Deserialize, Serialize};

use super::linear::{Lines, Slope};
use super::{Interval, PreActivationBounds};
use crate::network::{Activation, Network};
use crate::spec::{InputSet, Norm};

/// Settings of the LP/SOCP solves.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LpSettings {
    /// clarabel's iteration limit (default 100).
    pub max_iter: u32,
    /// clarabel's time limit per solve in seconds (default: none).
    pub time_limit: f64,
    /// clarabel's gap and feasibility tolerances (default 1e-7).
    pub tolerance: f64,
    /// Leave out the rows of ReLUs that are inactive on the whole set (u <= 0): the
    /// constraint W_j x + b_j <= u is valid but rarely active, and its dense row dominates the
    /// factorization (2.6x faster LP-Last on the MNIST 2x100 networks). Dropping a valid
    /// constraint can only lower the bound, never make it unsound. Default true; the exact
    /// verifier turns it off, since there the inactive rows encode its splits.
    pub prune_inactive: bool,
}

impl Default for LpSettings {
    fn default() -> Self {
        Self { max_iter: 100, time_limit: f64::INFINITY, tolerance: 1e-7, prune_inactive: true }
    }
}

/// The result of one solve.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LpOutcome {
    /// A sound lower bound on the minimum (the dual bound above); `+inf` only for a proven
    /// infeasible program.
    pub bound: f64,
    /// The solver's primal objective (not a bound; for statistics).
    pub primal: f64,
    /// The solver's status, as clarabel names it.
    pub status: String,
    /// Interior-point iterations.
    pub iterations: u32,
    /// The primal point's input part x_0 (for the exact verifier's upper bounds).
    pub input: Vec<f64>,
    /// The dual point's multipliers of the layer equalities z = W x + b, per relaxed layer and
    /// neuron (0 where a neuron has no such row), with the sign of the Lagrangian
    /// objective + nu^T (W x + b - z): the evidence of a certificate ([`crate::certificate`]).
    #[serde(skip)]
    pub multipliers: Vec<Vec<f64>>,
}

/// One row `a^T v (+ s) = b` of the constraint matrix, sparse.
struct Row {
    idx: Vec<usize>,
    val: Vec<f64>,
    rhs: f64,
}

impl Row {
    fn new(entries: &[(usize, f64)], rhs: f64) -> Self {
        Row { idx: entries.iter().map(|e| e.0).collect(), val: entries.iter().map(|e| e.1).collect(), rhs }
    }
}

/// The relaxation of the first `depth` layers of a network over an input set, with the variables
/// v = (x_0, z_0, x_1, z_1, ..., z_{depth-1}, x_depth); objectives are linear in x_depth.
pub struct TriangleProgram {
    n_vars: usize,
    /// Offset of x_k in v, for k = 0..=depth.
    x_offset: Vec<usize>,
    x_len: Vec<usize>,
    a: CscMatrix<f64>,
    b: Vec<f64>,
    cones: Vec<SupportedConeT<f64>>,
    /// Multiplier-cone kind of each row, to clip dual points into K*.
    row_kind: Vec<RowKind>,
    /// Start of the second-order cone rows, if any.
    soc: Option<(usize, usize)>,
    lo: Vec<f64>,
    hi: Vec<f64>,
    /// Row of the equality z_j = W_j x_k + b_j of each layer k < depth and neuron j, if any.
    layer_rows: Vec<Vec<Option<usize>>>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum RowKind {
    Equality,
    Inequality,
    Cone,
}

impl TriangleProgram {
    /// The relaxation of layers 0..depth with pre-activation bounds `pre.layers[k]` for k < depth.
    /// With `prune_inactive`, ReLUs with u <= 0 get only x = 0 (see [`LpSettings::prune_inactive`]).
    pub fn new(net: &Network, set: &InputSet, pre: &PreActivationBounds, depth: usize, prune_inactive: bool) -> Self {
        let layers = net.layers();
        let n0 = set.dim();
        let mut x_offset = vec![0];
        let mut x_len = vec![n0];
        let mut z_offset = Vec::new();
        let mut n_vars = n0;
        for layer in &layers[..depth] {
            z_offset.push(n_vars);
            n_vars += layer.output_size();
            x_offset.push(n_vars);
            x_len.push(layer.output_size());
            n_vars += layer.output_size();
        }
        let mut lo = vec![f64::NEG_INFINITY; n_vars];
        let mut hi = vec![f64::INFINITY; n_vars];
        let mut eq: Vec<Row> = Vec::new();
        let mut ineq: Vec<Row> = Vec::new();

        // Input set.
        let (blo, bhi) = set.bounding_box();
        lo[..n0].copy_from_slice(&blo);
        hi[..n0].copy_from_slice(&bhi);
        let box_rows = match set.norm() {
            Norm::Linf => Some((blo.clone(), bhi.clone())),
            Norm::L2 => set.domain().map(|d| (d.lo().to_vec(), d.hi().to_vec())),
        };
        if let Some((l, h)) = box_rows {
            for i in 0..n0 {
                if h[i].is_finite() {
                    ineq.push(Row::new(&[(i, 1.0)], h[i]));
                }
                if l[i].is_finite() {
                    ineq.push(Row::new(&[(i, -1.0)], -l[i]));
                }
            }
        }
        let mut soc_rows: Vec<Row> = Vec::new();
        if set.norm() == Norm::L2 {
            // s_0 = eps, s_i = x_i - c_i: (s_0, s_1..) in the second-order cone.
            soc_rows.push(Row::new(&[], set.eps()));
            for (i, &c) in set.center().iter().enumerate() {
                soc_rows.push(Row::new(&[(i, -1.0)], -c));
            }
        }

        // Layers.
        let mut layer_rows: Vec<Vec<Option<usize>>> = Vec::with_capacity(depth);
        for k in 0..depth {
            layer_rows.push(vec![None; layers[k].output_size()]);
            let layer = &layers[k];
            let iv = &pre.layers[k];
            let (xin, zo, xo) = (x_offset[k], z_offset[k], x_offset[k + 1]);
            let w = layer.weight_t();
            let act = layer.activation();
            let lines =
                (act != Activation::Relu && act != Activation::Identity).then(|| Lines::new(act, iv, Slope::Adaptive));
            for j in 0..layer.output_size() {
                let (l, u) = (iv.lower[j], iv.upper[j]);
                let z = zo + j;
                let x = xo + j;
                if prune_inactive && act == Activation::Relu && u <= 0.0 {
                    // Inactive: x = 0 and z is used nowhere else, so it needs no constraint (its
                    // dual residual is zero); dropping the dense row W_j keeps the KKT system small.
                    eq.push(Row::new(&[(x, 1.0)], 0.0));
                    lo[x] = 0.0;
                    hi[x] = 0.0;
                    lo[z] = 0.0;
                    hi[z] = 0.0;
                    continue;
                }
                // z_j - W_j x_k = b_j.
                let mut entries: Vec<(usize, f64)> = Vec::with_capacity(w.nrows() + 1);
                entries.push((z, 1.0));
                let col = w.col(j);
                for i in 0..w.nrows() {
                    let v = col[i];
                    if v != 0.0 {
                        entries.push((xin + i, -v));
                    }
                }
                // Equalities come first in the assembled rows: this is the row's index.
                layer_rows[k][j] = Some(eq.len());
                eq.push(Row::new(&entries, layer.bias()[j]));
                if u.is_finite() {
                    ineq.push(Row::new(&[(z, 1.0)], u));
                }
                if l.is_finite() {
                    ineq.push(Row::new(&[(z, -1.0)], -l));
                }
                lo[z] = l;
                hi[z] = u;
                match act {
                    Activation::Identity => {
                        eq.push(Row::new(&[(x, 1.0), (z, -1.0)], 0.0));
                        lo[x] = l;
                        hi[x] = u;
                    }
                    Activation::Relu => {
                        if l >= 0.0 {
                            eq.push(Row::new(&[(x, 1.0), (z, -1.0)], 0.0));
                        } else if u <= 0.0 {
                            eq.push(Row::new(&[(x, 1.0)], 0.0));
                        } else {
                            let s = u / (u - l);
                            ineq.push(Row::new(&[(x, -1.0)], 0.0));
                            ineq.push(Row::new(&[(z, 1.0), (x, -1.0)], 0.0));
                            ineq.push(Row::new(&[(x, 1.0), (z, -s)], -s * l));
                        }
                        lo[x] = l.max(0.0);
                        hi[x] = u.max(0.0);
                    }
                    _ => {
                        let lines = lines.as_ref().expect("lines for smooth activations");
                        let (al, bl) = (lines.lower_slope[j], lines.lower_offset[j]);
                        let (au, bu) = (lines.upper_slope[j], lines.upper_offset[j]);
                        // al z + bl <= x <= au z + bu, sigma(l) <= x <= sigma(u).
                        ineq.push(Row::new(&[(z, al), (x, -1.0)], -bl));
                        ineq.push(Row::new(&[(x, 1.0), (z, -au)], bu));
                        let (sl, su) = (act.eval(l), act.eval(u));
                        ineq.push(Row::new(&[(x, 1.0)], su));
                        ineq.push(Row::new(&[(x, -1.0)], -sl));
                        lo[x] = sl;
                        hi[x] = su;
                    }
                }
            }
        }

        // Assemble: equalities, inequalities, then the cone.
        let mut row_kind = Vec::new();
        let mut trip_i = Vec::new();
        let mut trip_j = Vec::new();
        let mut trip_v = Vec::new();
        let mut b = Vec::new();
        let mut push = |rows: &[Row], kind: RowKind, row_kind: &mut Vec<RowKind>| {
            for r in rows {
                let ri = b.len();
                for (&j, &v) in r.idx.iter().zip(&r.val) {
                    trip_i.push(ri);
                    trip_j.push(j);
                    trip_v.push(v);
                }
                b.push(r.rhs);
                row_kind.push(kind);
            }
        };
        push(&eq, RowKind::Equality, &mut row_kind);
        push(&ineq, RowKind::Inequality, &mut row_kind);
        let soc_start = row_kind.len();
        push(&soc_rows, RowKind::Cone, &mut row_kind);
        let m = b.len();
        let a = CscMatrix::new_from_triplets(m, n_vars, trip_i, trip_j, trip_v);
        let mut cones = Vec::new();
        if !eq.is_empty() {
            cones.push(SupportedConeT::ZeroConeT(eq.len()));
        }
        if !ineq.is_empty() {
            cones.push(SupportedConeT::NonnegativeConeT(ineq.len()));
        }
        let soc = (!soc_rows.is_empty()).then(|| {
            cones.push(SupportedConeT::SecondOrderConeT(soc_rows.len()));
            (soc_start, soc_rows.len())
        });
        TriangleProgram { n_vars, x_offset, x_len, a, b, cones, row_kind, soc, lo, hi, layer_rows }
    }

    /// Number of variables.
    pub fn num_vars(&self) -> usize {
        self.n_vars
    }

    /// Number of constraint rows.
    pub fn num_rows(&self) -> usize {
        self.b.len()
    }

    /// The full objective vector for `w^T x_depth` (w of the length of x_depth).
    pub fn objective(&self, w: &[f64]) -> Vec<f64> {
        let depth = self.x_offset.len() - 1;
        debug_assert_eq!(w.len(), self.x_len[depth]);
        let mut q = vec![0.0; self.n_vars];
        q[self.x_offset[depth]..self.x_offset[depth] + w.len()].copy_from_slice(w);
        q
    }

    /// A solver for this program with objective `q` (reuse it for other objectives with
    /// [`LpSolver::minimize`]).
    pub fn solver(&self, q: &[f64], settings: &LpSettings) -> LpSolver<'_> {
        let p = CscMatrix::zeros((self.n_vars, self.n_vars));
        let s: DefaultSettings<f64> = DefaultSettingsBuilder::default()
            .verbose(false)
            .max_iter(settings.max_iter)
            .time_limit(settings.time_limit)
            .tol_gap_abs(settings.tolerance)
            .tol_gap_rel(settings.tolerance)
            .tol_feas(settings.tolerance)
            .presolve_enable(false)
            .build()
            .expect("valid clarabel settings");
        let solver = DefaultSolver::new(&p, q, &self.a, &self.b, &self.cones, s).ok();
        LpSolver { program: self, solver }
    }

    /// The sound lower bound on min q^T v over the program for a dual point z (any z: it is first
    /// moved into the dual cone).
    pub fn dual_bound(&self, q: &[f64], z: &[f64]) -> f64 {
        let mut z: Vec<f64> = z.iter().map(|v| if v.is_finite() { *v } else { 0.0 }).collect();
        if z.len() != self.b.len() {
            z = vec![0.0; self.b.len()];
        }
        for (zi, kind) in z.iter_mut().zip(&self.row_kind) {
            if *kind == RowKind::Inequality && *zi < 0.0 {
                *zi = 0.0;
            }
        }
        if let Some((start, len)) = self.soc {
            let tail: f64 = z[start + 1..start + len].iter().map(|v| v * v).sum::<f64>().sqrt();
            // Raise the head to the norm of the tail (rounded up) so that z lies in the cone.
            if z[start] < tail {
                z[start] = tail * (1.0 + 4.0 * f64::EPSILON);
            }
        }
        // r = q + A^T z, column by column; |A|^T |z| for the rounding allowance.
        let mut r = q.to_vec();
        let mut abs_r = q.iter().map(|v| v.abs()).collect::<Vec<_>>();
        let mut max_col = 0usize;
        for j in 0..self.n_vars {
            let (s, e) = (self.a.colptr[j], self.a.colptr[j + 1]);
            max_col = max_col.max(e - s);
            for p in s..e {
                let t = self.a.nzval[p] * z[self.a.rowval[p]];
                r[j] += t;
                abs_r[j] += t.abs();
            }
        }
        let mut value = 0.0;
        let mut magnitude = 0.0;
        for (bi, zi) in self.b.iter().zip(&z) {
            value -= bi * zi;
            magnitude += (bi * zi).abs();
        }
        for j in 0..self.n_vars {
            let v = if r[j] > 0.0 {
                r[j] * self.lo[j]
            } else if r[j] < 0.0 {
                r[j] * self.hi[j]
            } else {
                0.0
            };
            if v.is_nan() || v == f64::NEG_INFINITY {
                return f64::NEG_INFINITY;
            }
            value += v;
            let bound = self.lo[j].abs().max(self.hi[j].abs());
            magnitude += abs_r[j] * bound + v.abs();
        }
        // Every partial sum above has at most (terms + 2) roundings of relative size eps.
        let terms = (self.b.len() + self.n_vars + max_col + 2) as f64;
        value - 2.0 * terms * f64::EPSILON * magnitude
    }

    /// The multipliers of the layer equalities at the dual point z ([`LpOutcome::multipliers`]).
    fn layer_multipliers(&self, z: &[f64]) -> Vec<Vec<f64>> {
        let at = |r: &Option<usize>| r.and_then(|r| z.get(r)).map_or(0.0, |v| if v.is_finite() { -v } else { 0.0 });
        self.layer_rows.iter().map(|rows| rows.iter().map(at).collect()).collect()
    }

    /// The x_0 part of a primal vector.
    fn input_part(&self, v: &[f64]) -> Vec<f64> {
        v[..self.x_len[0]].to_vec()
    }
}

/// A clarabel solver bound to a [`TriangleProgram`].
pub struct LpSolver<'a> {
    program: &'a TriangleProgram,
    solver: Option<DefaultSolver<f64>>,
}

impl LpSolver<'_> {
    /// min q^T v (+ `constant`) over the program: a sound bound and the solver's statistics.
    pub fn minimize(&mut self, q: &[f64], constant: f64) -> LpOutcome {
        let fallback = |status: &str| LpOutcome {
            bound: self.program.dual_bound(q, &[]) + constant,
            primal: f64::NAN,
            status: status.to_string(),
            iterations: 0,
            input: Vec::new(),
            multipliers: Vec::new(),
        };
        let Some(solver) = self.solver.as_mut() else {
            return fallback("SetupFailed");
        };
        if solver.update_q(&q.to_vec()).is_err() {
            return fallback("UpdateFailed");
        }
        solver.solve();
        let sol = &solver.solution;
        let mut bound = self.program.dual_bound(q, &sol.z);
        if matches!(sol.status, SolverStatus::PrimalInfeasible | SolverStatus::AlmostPrimalInfeasible) {
            // z is a certificate of infeasibility: the bound grows along t z for t -> inf; take
            // the best of a few scalings (each one is valid).
            for t in [1e2, 1e4, 1e6, 1e8] {
                let scaled: Vec<f64> = sol.z.iter().map(|v| v * t).collect();
                bound = bound.max(self.program.dual_bound(q, &scaled));
            }
        }
        LpOutcome {
            bound: bound + constant,
            primal: sol.obj_val + constant,
            status: format!("{:?}", sol.status),
            iterations: sol.iterations,
            input: self.program.input_part(&sol.x),
            multipliers: self.program.layer_multipliers(&sol.z),
        }
    }
}

/// Pre-activation bounds of layer `depth` tightened by one LP per unstable neuron and direction
/// (LP-Full / LP-ALL). Neurons already stable under `pre.layers[depth]` keep their bounds: the
/// relaxation of a stable ReLU is exact whatever its bounds. Runs the neurons in parallel (rayon),
/// one clarabel solver per worker, reused across neurons through `update_q`.
pub fn tighten_layer(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    depth: usize,
    settings: &LpSettings,
) -> (Interval, LpStats) {
    let (iv, stats, _) = tighten_layer_traced(net, set, pre, depth, settings);
    (iv, stats)
}

/// Per neuron of a layer: the LP multipliers of its (lower, upper) bound, None where no LP ran.
pub type NeuronMultipliers = (Option<Vec<Vec<f64>>>, Option<Vec<Vec<f64>>>);

/// [`tighten_layer`] with each LP's multipliers ([`LpOutcome::multipliers`]), per neuron.
pub fn tighten_layer_traced(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    depth: usize,
    settings: &LpSettings,
) -> (Interval, LpStats, Vec<NeuronMultipliers>) {
    use rayon::prelude::*;
    let program = TriangleProgram::new(net, set, pre, depth, settings.prune_inactive);
    let layer = &net.layers()[depth];
    let act = layer.activation();
    let mut iv = pre.layers[depth].clone();
    let needs = |j: usize| match act {
        Activation::Relu => iv.lower[j] < 0.0 && iv.upper[j] > 0.0,
        Activation::Identity => false,
        _ => iv.upper[j] > iv.lower[j],
    };
    // Jobs: (neuron, sign) with sign +1 for the lower bound, -1 for the upper.
    let jobs: Vec<(usize, f64)> =
        (0..layer.output_size()).filter(|&j| needs(j)).flat_map(|j| [(j, 1.0), (j, -1.0)]).collect();
    let wt = layer.weight_t();
    let results: Vec<(usize, f64, LpOutcome)> = jobs
        .par_iter()
        .map_init(
            || None::<LpSolver<'_>>,
            |slot, &(j, sign)| {
                let w: Vec<f64> = wt.col(j).iter().map(|v| sign * v).collect();
                let q = program.objective(&w);
                let solver = slot.get_or_insert_with(|| program.solver(&q, settings));
                let out = solver.minimize(&q, sign * layer.bias()[j]);
                (j, sign, out)
            },
        )
        .collect();
    let mut stats = LpStats::default();
    let mut traced: Vec<NeuronMultipliers> = vec![(None, None); layer.output_size()];
    for (j, sign, out) in results {
        stats.record(&out);
        if sign > 0.0 {
            iv.lower[j] = iv.lower[j].max(out.bound);
            traced[j].0 = Some(out.multipliers);
        } else {
            iv.upper[j] = iv.upper[j].min(-out.bound);
            traced[j].1 = Some(out.multipliers);
        }
    }
    (iv, stats, traced)
}

/// Counts over many solves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LpStats {
    /// Number of LP/SOCP solves.
    pub solves: usize,
    /// Total interior-point iterations.
    pub iterations: u64,
    /// Solves whose status was not `Solved` (their bounds are valid but may be weak).
    pub not_solved: usize,
    /// The last status other than `Solved`, if any.
    pub last_failure: Option<String>,
}

impl LpStats {
    /// Adds one solve.
    pub fn record(&mut self, out: &LpOutcome) {
        self.solves += 1;
        self.iterations += out.iterations as u64;
        if out.status != "Solved" {
            self.not_solved += 1;
            self.last_failure = Some(out.status.clone());
        }
    }

    /// Adds another set of counts.
    pub fn merge(&mut self, other: &LpStats) {
        self.solves += other.solves;
        self.iterations += other.iterations;
        self.not_solved += other.not_solved;
        if other.last_failure.is_some() {
            self.last_failure = other.last_failure.clone();
        }
    }
}
