//! BM-r: the Burer-Monteiro low-rank factorization of the SDP relaxation (Chiu & Zhang 2023,
//! 000_2ff65a8857911c41.txt, section 4, Algorithms 1-2, problem (BM-r) with u0 fixed to 1 as in
//! Appendix A.5), solved by an augmented Lagrangian method with an L-BFGS inner solver, whose
//! multipliers are handed to Proposition 3.1 ([`super::sdp`]) for a proven bound.
//!
//! The relaxation's matrix is X = Y_hat Y_hat^T with Y_hat = [[1, 0], \[u, V\]] ((n+1) x r): u is a
//! candidate point (input and hidden activations), V the low-rank correction. With the
//! constraints of [`super::sdp`] written as <G_i, X> >= 0 and <H_j, X> = 0, the augmented
//! Lagrangian (Powell-Hestenes-Rockafellar) is
//!
//! ```text
//! Phi(Y) = <F, X> + sum_j (z_j h_j + rho/2 h_j^2) + sum_i psi(g_i; y_i, rho),
//! psi = -y g + rho/2 g^2 if g <= y/rho, else -y^2/(2 rho),
//! ```
//!
//! and its gradient is 2 [M(y_hat, z_hat) Y_hat] (rows of x) with y_hat = max(0, y - rho g),
//! z_hat = z + rho h: one product with the matrix-free slack operator per evaluation, never an
//! n x n matrix. After each inner solve, (y, z) <- (y_hat, z_hat). The input constraints enter
//! divided by a power of their size ([`Bm::input_scaling`]), so that an l_inf box 1e5 times
//! smaller than the ReLU equalities is enforced as firmly; the certificate gets the multipliers of
//! the unscaled constraints. When -lambda_min(S(y, z)) is
//! not small, the eigenvector is appended as a new column of V (rank lifting, Algorithm 2 step 4).
//! The reported number is always the proven bound of Proposition 3.1 at the final multipliers:
//! the solver's quality decides how tight it is, never whether it is valid.
//!
//! Set the environment variable `NNCERT_BM_TRACE` to print the progress of each outer iteration
//! (objective, infeasibility, penalty, time) and each rank's proven bound to standard error.

use std::time::Instant;

use faer::Mat;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::sdp::{
    BoundSource, Certificate, HiddenBoxes, Multipliers, Relaxation, SlackOperator, bound_from_multipliers, flatten,
    unflatten,
};
use super::{BoundReport, Verifier};
use crate::attack::{PgdSettings, pgd};
use crate::error::{Error, Result};
use crate::network::{Activation, Network};
use crate::spec::{InputSet, Norm};

/// Settings of the BM-r verifier.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bm {
    /// Initial rank r (columns of Y, including u) (default 4: on adv-mnist-mlp-2x100 at l2 1.0,
    /// starting at rank 4 proves the same targets as starting at 2 and lifting, in a third of the
    /// time).
    pub rank: usize,
    /// Maximum rank after lifting (default 10).
    pub max_rank: usize,
    /// Outer (multiplier) iterations per rank (default 6).
    pub outer: usize,
    /// L-BFGS iterations per outer iteration (default 200).
    pub inner: usize,
    /// Target constraint violation (default 1e-6).
    pub feasibility: f64,
    /// Stop lifting when lambda_min(S) >= -this (default 1e-6).
    pub dual_tolerance: f64,
    /// L-BFGS iterations per target over all ranks (default 8400, what `outer` x `inner` allows
    /// on the 7 ranks from 4 to 10). A larger budget goes to further rounds of `outer` iterations
    /// at `max_rank`. This budget, not the clock, is what normally ends a target, so the verdict
    /// does not depend on the machine's load; in verdict mode it is spent in full only on targets
    /// that are not proven.
    pub max_iterations: usize,
    /// Verdict mode only: a target still unproven after `max_iterations` continues, from where
    /// it is, up to this many iterations in all when the relaxation may still prove it: its
    /// primal value is positive or its point not yet nearly feasible (default 25200; at most
    /// `max_iterations` turns it off). The primal value at a nearly feasible point bounds the
    /// relaxation's optimum from above, so a target whose primal value is negative there cannot
    /// be proven by more work on this relaxation and stops at `max_iterations`. On
    /// adv-mnist-mlp-2x100 at l_inf 0.1, 25200 iterations prove 16 of the 54 images of the first
    /// 1000 that BM-Full left unknown with 8400 iterations and two restarts; the failing targets
    /// of 37 of the other 38 have a negative primal value (docs/experiments.md).
    #[serde(default = "default_near_miss_iterations")]
    pub near_miss_iterations: usize,
    /// Wall-clock cap per target in seconds (default 60): three quarters for the augmented
    /// Lagrangian and rank lifting, the rest for repairing and polishing its multipliers. A cap
    /// only: a loaded machine that reaches it gets a looser (still sound) bound.
    pub time_limit: f64,
    /// Seed of the random initial V (default 0).
    pub seed: u64,
    /// Penalty growth factor when the infeasibility does not fall by 4x (default 2).
    pub rho_growth: f64,
    /// Largest penalty (default 10). A moderate penalty with many cheap outer iterations gives far
    /// better multipliers than a large one: on adv-mnist-mlp-2x100 (image 1, target 0, l2 1.0) the
    /// proven bound after rank lifting to 4 is 3.23 with 10 and -7.0 with 1e4, whose multipliers
    /// oscillate by about rho x infeasibility.
    pub rho_max: f64,
    /// Only the verdict matters (default true): skip targets CROWN already proves, stop a target
    /// as soon as a proven bound is positive, run the targets hardest first and, once one ends
    /// <= 0, give the rest CROWN's bound. Turn it off to get every target's tightest bound.
    pub stop_when_positive: bool,
    /// SDP-FO polishing steps on the final multipliers (default 300; 0 to disable).
    pub polish: usize,
    /// Pre-activation bounds for the hidden boxes and cuts: CROWN ∩ IBP (`bm`, default),
    /// CROWN with optimized slopes (`bm-full`: the bounds of LP-Full at a fraction of the cost,
    /// [`crate::bounds::optimized`]) or LP-Full itself (`bm-full-lp`, as the paper's BM-Full).
    pub bounds: BoundSource,
    /// Exponent p of the input constraints' scaling in the augmented Lagrangian: each enters
    /// divided by its natural size to the power p (an l_inf box of half-width r by r^2p, the l2
    /// ball by eps^2p), the same as a penalty and a multiplier step 1 / size^2p times larger for
    /// it. Default (None): 0.5 for l_inf, 0 (off) for l2. On nor-mnist-mlp-2x100 at l_inf 0.03
    /// (image 0, target 3, 8400 iterations) the proven bound is +4.20 with 0.5, -1.11 with 1 and
    /// -0.96 with 0 (0 needs 40000 iterations and rank 16 for +1.62); at l2, where the ball is of
    /// the size of the other constraints, 0.5 changes little (docs/experiments.md). Any value
    /// in [0, 2] gives a sound bound: it only changes how fast the multipliers converge.
    #[serde(default)]
    pub input_scaling: Option<f64>,
    /// Verdict mode only: extra solves from other random starts (seeds `seed + 1`, `seed + 2`, ...)
    /// for a target that ends as a near miss, its best proven bound in \[-q/4, 0\] where q > 0 is
    /// PGD's margin for it (default 2). BM-r is nonconvex and such targets are often proven from
    /// another start (adv-mnist-mlp-2x100, l2 1.0, image 20, target 7: BM-Full ends at -0.026 from
    /// seed 0 and at +0.005, +0.008, +0.021 from seeds 2-4). Not when the point is nearly
    /// feasible with a primal value <= 0: that bounds the relaxation's optimum below zero, which
    /// no start changes. Each restart has the budget of a solve; the best proven bound is kept.
    #[serde(default = "default_restarts")]
    pub restarts: usize,
    /// BM-Full only: tighten the pre-activation bounds of this many of the last hidden layer's
    /// unstable neurons with BM-r itself before the targets ([`super::bm_bounds`]; default 0 = off,
    /// as in the paper). Two extra BM-r solves per neuron, each with a quarter of the budget.
    #[serde(default)]
    pub tighten: usize,
    /// Add the input-box products (RLT cuts of the input box with the first hidden layer's linear
    /// ReLU constraints, [`Multipliers::products`]) of the first hidden layer's unstable neurons
    /// to the relaxation (default false): in verdict mode as a second solve, only for a target
    /// whose plain relaxation is short (unproven, PGD's margin positive, a primal value <= 0 at
    /// a nearly feasible point), keeping the better bound; in tight mode from the start. A
    /// tighter relaxation, mostly for l_inf: on adv-mnist-mlp-2x100 at l_inf 0.1 (image 87,
    /// target 5, exact phi 0.118) the primal value goes from -0.027 to +0.090, and 67200
    /// iterations (`near_miss_iterations`) prove +0.001 in about 300 s, against 8 s for the
    /// plain relaxation's -0.124. A stably inactive neuron's products are implied (its
    /// post-activation box zeroes its row of X); a stably active one's add little (all 100
    /// neurons' products: +0.103 to +0.116 on that target) at many more multipliers.
    #[serde(default)]
    pub products: bool,
}

fn default_restarts() -> usize {
    2
}

fn default_near_miss_iterations() -> usize {
    25200
}

/// Whether more work on a target may still prove it: not when its point is nearly feasible
/// (max violation <= 1e-3, as the augmented Lagrangian scales the constraints) with a primal
/// value <= 0, which then bounds the relaxation's optimum from above: no multipliers prove more
/// than that optimum, from any start or with any budget ([`Bm::restarts`],
/// [`Bm::near_miss_iterations`]).
fn may_prove(primal: f64, infeasibility: f64) -> bool {
    primal > 0.0 || infeasibility.is_nan() || infeasibility > 1e-3
}

impl Default for Bm {
    fn default() -> Self {
        Self {
            rank: 4,
            max_rank: 10,
            outer: 6,
            inner: 200,
            feasibility: 1e-6,
            dual_tolerance: 1e-6,
            max_iterations: 8400,
            near_miss_iterations: default_near_miss_iterations(),
            time_limit: 60.0,
            seed: 0,
            polish: 300,
            rho_growth: 2.0,
            rho_max: 10.0,
            stop_when_positive: true,
            bounds: BoundSource::CrownIbp,
            input_scaling: None,
            restarts: default_restarts(),
            tighten: 0,
            products: false,
        }
    }
}

impl Bm {
    /// The input scaling exponent used for sets of this norm ([`Bm::input_scaling`]), or an error
    /// unless it is in [0, 2].
    pub fn input_scaling_for(&self, norm: Norm) -> Result<f64> {
        let power = self.input_scaling.unwrap_or(if norm == Norm::Linf { 0.5 } else { 0.0 });
        if !(power.is_finite() && (0.0..=2.0).contains(&power)) {
            return Err(Error::InvalidArgument(format!("BM's input_scaling must be in [0, 2], got {power}")));
        }
        Ok(power)
    }

    /// BM-Full: BM-r with the hidden boxes and cuts from LP-Full-quality pre-activation bounds,
    /// computed by optimizing CROWN's slopes ([`BoundSource::Optimized`]). On the papers' 2x100
    /// MNIST networks they equal LP-Full's within 1e-4 in 20-50x less time (docs/experiments.md).
    pub fn full() -> Self {
        Self { bounds: BoundSource::Optimized, ..Self::default() }
    }

    /// BM-Full as in the paper: the boxes and cuts from LP-Full's bounds (one LP or SOCP per
    /// unstable neuron; [`BoundSource::LpFull`]).
    pub fn full_lp() -> Self {
        Self { bounds: BoundSource::LpFull, ..Self::default() }
    }
}

/// What one BM-r solve did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BmResult {
    /// The proven certificate (None if nothing could be proven).
    pub certificate: Option<Certificate>,
    /// The objective <F, X> at the final point (not a bound).
    pub primal: f64,
    /// Max constraint violation at the final point, of the constraints as the augmented Lagrangian
    /// sees them (the input constraints divided by their scale, [`Bm::input_scaling`]).
    pub infeasibility: f64,
    /// Ranks visited.
    pub rank_path: Vec<usize>,
    /// Total L-BFGS iterations.
    pub iterations: usize,
    /// KKT stationarity residual of the final point and multipliers: the max-norm of
    /// grad f + grad g y + grad h z = 2 M(y, z) Y_hat (rows of x), relative to 1 + max |F Y_hat|.
    pub kkt_residual: f64,
    /// Complementarity error: max over inequalities of |y_i g_i(Y)|.
    pub complementarity: f64,
    /// PGD's margin for the target (an upper bound on phi), from the attack that starts the solve.
    #[serde(default)]
    pub attack_margin: f64,
    /// Solves run: 1, plus the near-miss restarts ([`Bm::restarts`]). The other fields describe
    /// the solve whose certificate is kept.
    #[serde(default)]
    pub solves: usize,
}

/// Constraint values at X = Y_hat Y_hat^T in the layout of [`Multipliers`]: g (>= 0 feasible) for
/// inequalities, h (= 0 feasible) for the ReLU equalities; and the objective <F, X>.
fn values(
    net: &Network,
    set: &InputSet,
    boxes: &HiddenBoxes,
    label: usize,
    target: usize,
    y: &Mat<f64>,
    products: bool,
) -> (f64, Multipliers) {
    let n0 = set.dim();
    let r = y.ncols();
    let (lo, hi) = set.bounding_box();
    let c = set.center();
    let u = |i: usize| y[(i, 0)];
    // Squared row norms of Y, summed column by column (contiguous).
    let mut rowsq = vec![0.0; y.nrows()];
    for k in 0..r {
        for (s, v) in rowsq.iter_mut().zip(y.col(k).iter()) {
            *s += v * v;
        }
    }
    let sq = |i: usize| rowsq[i];
    let ball = if set.norm() == Norm::L2 {
        let quad: f64 = (0..n0).map(|i| sq(i) - 2.0 * c[i] * u(i) + c[i] * c[i]).sum();
        set.eps() * set.eps() - quad
    } else {
        0.0
    };
    let coord = (0..n0).map(|i| -sq(i) + (lo[i] + hi[i]) * u(i) - lo[i] * hi[i]).collect();
    let lower = (0..n0).map(|i| u(i) - lo[i]).collect();
    let upper = (0..n0).map(|i| hi[i] - u(i)).collect();
    let layers = net.layers();
    let (mut nonneg, mut above, mut relu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut post, mut cut) = (Vec::new(), Vec::new());
    let mut p = 0;
    let mut q = n0;
    for (k, layer) in layers[..layers.len() - 1].iter().enumerate() {
        let (n_in, n_out) = (layer.input_size(), layer.output_size());
        let yp = y.as_ref().subrows(p, n_in);
        let wy = crate::linalg::mul(layer.weight(), yp); // n_out x r
        let b = layer.bias();
        nonneg.push((0..n_out).map(|j| u(q + j)).collect());
        above.push((0..n_out).map(|j| u(q + j) - wy[(j, 0)] - b[j]).collect());
        let usable = |j: usize| boxes.usable(k, j);
        post.push(
            (0..n_out)
                .map(|j| {
                    let (lo, hi) = (boxes.lo[k][j], boxes.hi[k][j]);
                    if usable(j) { -sq(q + j) + (lo + hi) * u(q + j) - lo * hi } else { 0.0 }
                })
                .collect(),
        );
        cut.push(
            (0..n_out)
                .map(|j| {
                    if usable(j) {
                        boxes.slope[k][j] * (wy[(j, 0)] + b[j]) + boxes.offset[k][j] - u(q + j)
                    } else {
                        0.0
                    }
                })
                .collect(),
        );
        // diag[(Y - W Y_prev) Y^T] row by row, accumulated column by column.
        let mut cross = vec![0.0; n_out];
        for k in 0..r {
            let (yk, wk) = (y.col(k).subrows(q, n_out), wy.col(k));
            for ((c, a), w) in cross.iter_mut().zip(yk.iter()).zip(wk.iter()) {
                *c += a * w;
            }
        }
        relu.push((0..n_out).map(|j| sq(q + j) - cross[j] - b[j] * u(q + j)).collect());
        p = q;
        q += n_out;
    }
    let last = &layers[layers.len() - 1];
    let w = last.weight();
    let f = (0..w.ncols()).map(|i| (w[(label, i)] - w[(target, i)]) * u(p + i)).sum::<f64>() + last.bias()[label]
        - last.bias()[target];
    let products = if products { super::sdp::product_values(net, set, y.as_ref()) } else { Vec::new() };
    (f, Multipliers { ball, coord, lower, upper, nonneg, above, post, cut, relu, products })
}

/// The KKT errors of (Y, multipliers) reported in [`BmResult`].
#[allow(clippy::too_many_arguments)]
fn kkt_errors(
    net: &Network,
    set: &InputSet,
    rel: &Relaxation,
    label: usize,
    target: usize,
    y: &Mat<f64>,
    mult: &[f64],
    like: &Multipliers,
) -> Result<(f64, f64)> {
    let n = y.nrows();
    let apply = |m: &Multipliers| -> Result<f64> {
        let op = SlackOperator::new(net, set, &rel.boxes, label, target, m, 0.0)?;
        let (mut v, mut out) = (vec![0.0; n + 1], vec![0.0; n + 1]);
        let mut worst = 0.0f64;
        for k in 0..y.ncols() {
            v[0] = if k == 0 { 1.0 } else { 0.0 };
            for i in 0..n {
                v[1 + i] = y[(i, k)];
            }
            op.apply_vec(&v, &mut out);
            worst = out[1..].iter().fold(worst, |a, b| a.max(b.abs()));
        }
        Ok(worst)
    };
    let zero = unflatten(&vec![0.0; mult.len()], like);
    let scale = 1.0 + 2.0 * apply(&zero)?;
    let residual = 2.0 * apply(&unflatten(mult, like))? / scale;
    let (_, vals) = values(net, set, &rel.boxes, label, target, y, !like.products.is_empty());
    let g = flatten(&vals);
    let n_ineq = super::sdp::inequality_count(like);
    let skip_ball = set.norm() != Norm::L2;
    let complementarity =
        (0..n_ineq).filter(|&i| !(i == 0 && skip_ball)).map(|i| (mult[i] * g[i]).abs()).fold(0.0, f64::max);
    Ok((residual, complementarity))
}

/// The scales s_i of the constraints in the layout of [`Multipliers`]: the augmented Lagrangian
/// works with g_i / s_i. The input constraints get (their natural size)^`power` (the ball eps^2, a
/// coordinate box (x_0i - lo)(hi - x_0i) its squared half-width, the linear sides the box's width),
/// the hidden ones 1. With one penalty for all, an l_inf box of half-width 0.015 (at most 2.3e-4)
/// is barely enforced next to ReLU equalities of order 100 on a network with large weights; see
/// [`Bm::input_scaling`] for what it buys. Scaling the hidden constraints too (by their boxes) made
/// the ReLU equalities stall instead.
fn constraint_scales(net: &Network, set: &InputSet, power: f64, products: bool) -> Multipliers {
    let (lo, hi) = set.bounding_box();
    let lin = |w: f64| w.max(1e-3).powf(power);
    let quad = |w: f64| (w * w).max(1e-6).powf(power);
    let half: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| 0.5 * (h - l)).collect();
    let like = Multipliers::initial(net, set, 0.0).with_products(net, set, products);
    let mut m = unflatten(&vec![1.0; flatten(&like).len()], &like);
    m.ball = if set.norm() == Norm::L2 { quad(set.eps()) } else { 1.0 };
    m.coord = half.iter().map(|&r| quad(r)).collect();
    m.lower = half.iter().map(|&r| lin(2.0 * r)).collect();
    m.upper = m.lower.clone();
    // The input-box products stay unscaled: scaled like their input side ((2 r)^p), the augmented
    // Lagrangian ended at infeasibility 1.7e-3 and a plain bound of -382 on adv-mnist-mlp-2x100
    // (l_inf 0.1, image 87, target 5, 8400 iterations); unscaled at 4.3e-4 and -56.
    m
}

struct Alm<'a> {
    net: &'a Network,
    set: &'a InputSet,
    boxes: &'a HiddenBoxes,
    label: usize,
    target: usize,
    /// Flattened multipliers and which entries are inequalities.
    mult: Vec<f64>,
    n_ineq: usize,
    rho: f64,
    like: Multipliers,
    /// Constraint scales ([`constraint_scales`], flattened): `mult` multiplies g_i / s_i.
    scale: Vec<f64>,
    /// Constraints left out (flattened; empty: none): no penalty, multipliers kept at 0.
    skip: Vec<bool>,
}

impl Alm<'_> {
    /// Whether constraint i (flattened) is left out (`skip`).
    fn left_out(&self, i: usize) -> bool {
        self.skip.get(i).copied().unwrap_or(false)
    }

    /// Phi, its gradient (n x r, flattened column-major) and the scaled constraint values g_i / s_i
    /// at Y.
    fn eval(&self, y: &Mat<f64>) -> Result<(f64, Mat<f64>, Vec<f64>)> {
        let products = !self.like.products.is_empty();
        let (f, vals) = values(self.net, self.set, self.boxes, self.label, self.target, y, products);
        let mut g = flatten(&vals);
        for (v, s) in g.iter_mut().zip(&self.scale) {
            *v /= s;
        }
        let mut phi = f;
        let mut eff = vec![0.0; g.len()];
        for i in 0..g.len() {
            let (m, v, s) = (self.mult[i], g[i], self.scale[i]);
            if self.left_out(i) {
                continue;
            }
            if i < self.n_ineq {
                if i == 0 && self.set.norm() != Norm::L2 {
                    continue;
                }
                if v <= m / self.rho {
                    phi += -m * v + 0.5 * self.rho * v * v;
                    eff[i] = (m - self.rho * v) / s;
                } else {
                    phi += -m * m / (2.0 * self.rho);
                }
            } else {
                phi += m * v + 0.5 * self.rho * v * v;
                eff[i] = (m + self.rho * v) / s;
            }
        }
        let eff_m = unflatten(&eff, &self.like);
        let op = SlackOperator::new(self.net, self.set, self.boxes, self.label, self.target, &eff_m, 0.0)?;
        let n = y.nrows();
        let r = y.ncols();
        let v = Mat::from_fn(n + 1, r, |i, k| if i == 0 { if k == 0 { 1.0 } else { 0.0 } } else { y[(i - 1, k)] });
        let out = op.apply_mat(v.as_ref());
        let grad = Mat::from_fn(n, r, |i, k| 2.0 * out[(1 + i, k)]);
        Ok((phi, grad, g))
    }
}

fn dot(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (0..a.ncols()).map(|k| a.col(k).transpose() * b.col(k)).sum()
}

/// L-BFGS (memory 8) with Armijo backtracking on Phi; returns iterations used.
fn lbfgs(alm: &Alm<'_>, y: &mut Mat<f64>, iters: usize, deadline: Instant) -> Result<usize> {
    let (mut f, mut g, _) = alm.eval(y)?;
    let mut hist: Vec<(Mat<f64>, Mat<f64>, f64)> = Vec::new();
    let mut used = 0;
    for _ in 0..iters {
        if Instant::now() > deadline {
            break;
        }
        let gnorm = g.norm_max();
        if !gnorm.is_finite() || gnorm < 1e-9 * (1.0 + f.abs()) {
            break;
        }
        // Two-loop recursion.
        let mut d = g.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, yv, rho) in hist.iter().rev() {
            let a = rho * dot(s, &d);
            d -= yv * faer::Scale(a);
            alphas.push(a);
        }
        if let Some((s, yv, _)) = hist.last() {
            let gamma = dot(s, yv) / dot(yv, yv);
            d *= faer::Scale(gamma);
        }
        for ((s, yv, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(yv, &d);
            d += s * faer::Scale(a - b);
        }
        d *= faer::Scale(-1.0);
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            d = &g * faer::Scale(-1.0);
            slope = -dot(&g, &g);
            hist.clear();
        }
        let mut step = if hist.is_empty() { (1.0 / g.norm_l2().max(1e-12)).min(1.0) } else { 1.0 };
        let mut accepted = false;
        for _ in 0..30 {
            let trial = &*y + &d * faer::Scale(step);
            let (ft, gt, _) = alm.eval(&trial)?;
            if ft.is_finite() && ft <= f + 1e-4 * step * slope {
                let s = &trial - &*y;
                let yv = &gt - &g;
                let sy = dot(&s, &yv);
                if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&yv, &yv).sqrt() {
                    hist.push((s, yv, 1.0 / sy));
                    if hist.len() > 8 {
                        hist.remove(0);
                    }
                }
                *y = trial;
                f = ft;
                g = gt;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        used += 1;
        if !accepted {
            break;
        }
    }
    Ok(used)
}

impl Bm {
    /// Runs BM-r for one target and returns the proven certificate with the solver's statistics.
    pub fn solve_target(
        &self,
        net: &Network,
        set: &InputSet,
        rel: &Relaxation,
        label: usize,
        target: usize,
    ) -> Result<BmResult> {
        // In tight mode the products are in from the start; in verdict mode only a target the
        // plain relaxation cannot prove gets them (below).
        let tight_products = self.products && !self.stop_when_positive;
        let mut result = self.solve_once(net, set, rel, label, target, self.seed, tight_products)?;
        if !self.stop_when_positive {
            return Ok(result);
        }
        // Near-miss restarts (Bm::restarts): a fresh start, keeping the best proven bound.
        let bound = |r: &BmResult| r.certificate.as_ref().map(|c| c.bound);
        let mut solves = 1;
        for k in 1..=self.restarts {
            let q = result.attack_margin;
            let near_miss = bound(&result).is_some_and(|b| b <= 0.0 && q > 0.0 && b >= -0.25 * q);
            if !near_miss || !may_prove(result.primal, result.infeasibility) {
                break;
            }
            let again = self.solve_once(net, set, rel, label, target, self.seed.wrapping_add(k as u64), false)?;
            solves += 1;
            if bound(&again) > bound(&result) {
                result = again;
            }
        }
        // The products (Bm::products) for a target whose plain relaxation is short: PGD's margin
        // is positive but the primal value at a nearly feasible point is not. (Starting from where
        // the plain solve ended measured no faster: the products' multipliers start at 0 anyway.)
        let proven = bound(&result).is_some_and(|b| b > 0.0);
        if self.products && !proven && result.attack_margin > 0.0 && !may_prove(result.primal, result.infeasibility) {
            let again = self.solve_once(net, set, rel, label, target, self.seed, true)?;
            solves += 1;
            if bound(&again) > bound(&result) {
                result = again;
            }
        }
        result.solves = solves;
        Ok(result)
    }

    /// One BM-r solve, with or without the input-box products, from the random start of `seed`.
    #[allow(clippy::too_many_arguments)]
    fn solve_once(
        &self,
        net: &Network,
        set: &InputSet,
        rel: &Relaxation,
        label: usize,
        target: usize,
        seed: u64,
        products: bool,
    ) -> Result<BmResult> {
        let layers = net.layers();
        if layers[layers.len() - 1].activation() != Activation::Identity
            || layers[..layers.len() - 1].iter().any(|l| l.activation() != Activation::Relu)
        {
            return Err(Error::Unsupported("BM-r needs ReLU hidden layers and an affine last layer".into()));
        }
        let start = Instant::now();
        // Three quarters of the budget for the augmented Lagrangian and rank lifting, the rest for
        // repairing and polishing its multipliers.
        let deadline = start + std::time::Duration::from_secs_f64(0.75 * self.time_limit.max(0.0));
        // Start from the PGD point (u) and a small random V, as Appendix A.5 does.
        let attack = pgd(net, set, label, &[target], &PgdSettings { steps: 50, restarts: 2, ..Default::default() })?;
        let x0 = &attack[0].input;
        let mut u = x0.clone();
        let mut h = x0.clone();
        for layer in &layers[..layers.len() - 1] {
            h = crate::linalg::mat_vec(layer.weight(), &h)
                .iter()
                .zip(layer.bias())
                .map(|(a, b)| (a + b).max(0.0))
                .collect();
            u.extend(&h);
        }
        let n = u.len();
        let mut rng = StdRng::seed_from_u64(seed);
        let r0 = self.rank.max(1);
        let mut y = Mat::from_fn(n, r0, |i, k| if k == 0 { u[i] } else { 1e-3 * (rng.random::<f64>() - 0.5) });
        let like = Multipliers::initial(net, set, 0.0).with_products(net, set, products);
        let mult: Vec<f64> = flatten(&like).iter().map(|_| 0.0).collect();
        let n_ineq = mult.len() - like.relu.iter().map(Vec::len).sum::<usize>();
        let scale = flatten(&constraint_scales(net, set, self.input_scaling_for(set.norm())?, products));
        let mut alm = Alm {
            net,
            set,
            boxes: &rel.boxes,
            label,
            target,
            mult,
            n_ineq,
            rho: 1.0,
            like: like.clone(),
            scale,
            skip: Vec::new(),
        };
        if !like.products.is_empty() {
            // The input-box products of the first hidden layer's unstable neurons only
            // (Bm::products): the others' entries are left out and their multipliers stay 0.
            let (n0, first) = (set.dim(), &rel.pre.layers[0]);
            let start = n_ineq - like.products.len();
            alm.skip = vec![false; alm.mult.len()];
            for k in 0..like.products.len() {
                let j = (k % (n0 * first.lower.len())) / n0;
                alm.skip[start + k] = !(first.lower[j] < 0.0 && first.upper[j] > 0.0);
            }
        }
        // The multipliers of the original constraints g_i (`alm.mult` is for g_i / s_i).
        let original = |alm: &Alm<'_>| -> Vec<f64> { alm.mult.iter().zip(&alm.scale).map(|(m, s)| m / s).collect() };
        let mut rank_path = vec![r0];
        let mut iterations = 0;
        // The iteration budget, raised once to near_miss_iterations when the relaxation may still
        // prove the target (may_prove, Bm::near_miss_iterations).
        let mut budget = self.max_iterations;
        let mut infeasibility = f64::INFINITY;
        let trace = std::env::var_os("NNCERT_BM_TRACE").is_some();
        // The best proof so far, and the best augmented-Lagrangian multipliers (by their own
        // proof) to repair and polish at the end.
        let mut best: Option<Certificate> = None;
        let mut best_alm: Option<Certificate> = None;
        let keep = |slot: &mut Option<Certificate>, c: &Certificate| {
            if slot.as_ref().is_none_or(|b| c.bound > b.bound) {
                *slot = Some(c.clone());
            }
        };
        let settled = |b: &Option<Certificate>| self.stop_when_positive && b.as_ref().is_some_and(|c| c.bound > 0.0);
        // Lift the quadratic part of some multipliers (repair_quadratic_part), then prove their bound.
        let repair_and_prove = |m: &Multipliers, steps: usize| -> Result<(Multipliers, Option<Certificate>)> {
            let repaired = super::sdp_fo::repair_quadratic_part(net, set, rel, label, target, m, steps)?;
            let proof = bound_from_multipliers(net, set, rel, label, target, &repaired)?.map(|(c, _)| c);
            Ok((repaired, proof))
        };
        loop {
            let mut prev = f64::INFINITY;
            let round_start = iterations;
            for _ in 0..self.outer {
                let left = budget.saturating_sub(iterations);
                if left == 0 || Instant::now() > deadline {
                    break;
                }
                iterations += lbfgs(&alm, &mut y, self.inner.min(left), deadline)?;
                let (_, _, g) = alm.eval(&y)?;
                infeasibility = 0.0;
                for i in 0..g.len() {
                    if alm.left_out(i) {
                        continue;
                    }
                    if i < n_ineq {
                        if i == 0 && set.norm() != Norm::L2 {
                            continue;
                        }
                        infeasibility = infeasibility.max((-g[i]).max(0.0));
                        alm.mult[i] = (alm.mult[i] - alm.rho * g[i]).max(0.0);
                    } else {
                        infeasibility = infeasibility.max(g[i].abs());
                        alm.mult[i] += alm.rho * g[i];
                    }
                }
                if trace {
                    let (f, _) = values(net, set, &rel.boxes, label, target, &y, false);
                    eprintln!(
                        "bm rank {} outer: f {f:.5} infeas {infeasibility:.2e} rho {:.1e} iters {iterations} t {:.1}s",
                        y.ncols(),
                        alm.rho,
                        start.elapsed().as_secs_f64()
                    );
                }
                if infeasibility < self.feasibility {
                    break;
                }
                if infeasibility > 0.25 * prev {
                    alm.rho = (alm.rho * self.rho_growth).min(self.rho_max);
                }
                prev = infeasibility;
            }
            let mult = unflatten(&original(&alm), &like);
            // For a verdict, a cheap repair of this rank's multipliers often proves the target at
            // once (their own bound is then negative: R^2 magnifies a slightly indefinite
            // quadratic part); try it first, so a proven rank pays for one proof of Proposition
            // 3.1 (a dense eigendecomposition) instead of two.
            if self.stop_when_positive
                && let (_, Some(c)) = repair_and_prove(&mult, 10)?
            {
                keep(&mut best, &c);
            }
            let cert = if settled(&best) {
                None
            } else {
                bound_from_multipliers(net, set, rel, label, target, &mult)?.map(|(c, _)| c)
            };
            if let Some(c) = &cert {
                keep(&mut best, c);
                keep(&mut best_alm, c);
            }
            if trace {
                // The plain bound is skipped when the repaired multipliers already settled the target.
                let plain = match &cert {
                    Some(c) => format!("{:.6} (t {:.3e})", c.bound, c.t),
                    None if settled(&best) => "skipped".to_string(),
                    None => "none proven".to_string(),
                };
                eprintln!(
                    "bm rank {} plain bound {plain}, best {:?} at {:.1}s",
                    y.ncols(),
                    best.as_ref().map(|c| c.bound),
                    start.elapsed().as_secs_f64()
                );
            }
            if settled(&best) {
                break;
            }
            let r = y.ncols();
            if iterations >= budget && self.stop_when_positive && budget < self.near_miss_iterations {
                let (primal, _) = values(net, set, &rel.boxes, label, target, &y, false);
                if may_prove(primal, infeasibility) {
                    budget = self.near_miss_iterations;
                    if trace {
                        eprintln!(
                            "bm primal {primal:.4}, infeasibility {infeasibility:.1e}: budget raised to {budget}"
                        );
                    }
                }
            }
            if iterations >= budget || Instant::now() > deadline {
                break;
            }
            if r >= self.max_rank {
                // At the largest rank the rest of the budget goes to more rounds of outer
                // iterations, unless this round used less than half of its iterations (L-BFGS
                // converged or stalled) or the point is feasible.
                if 2 * (iterations - round_start) < self.outer * self.inner || infeasibility < self.feasibility {
                    break;
                }
                continue;
            }
            // Rank lifting when the dual slack matrix is not PSD.
            let z0 = cert.as_ref().map_or(0.0, |c| c.z0);
            let op = SlackOperator::new(net, set, &rel.boxes, label, target, &mult, z0)?;
            let Some((lam, vec)) = op.lambda_min(1e-6) else { break };
            if lam >= -self.dual_tolerance {
                break;
            }
            let scale = 1e-2 * (1.0 + y.norm_max());
            let mut lifted = Mat::<f64>::zeros(n, r + 1);
            lifted.as_mut().subcols_mut(0, r).copy_from(&y);
            let vnorm: f64 = vec[1..].iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
            for i in 0..n {
                lifted[(i, r)] = scale * vec[1 + i] / vnorm;
            }
            y = lifted;
            rank_path.push(r + 1);
        }
        // Repair, then polish the best multipliers of the augmented Lagrangian: they leave the
        // quadratic part slightly indefinite, which R^2 magnifies. The box multipliers lift it
        // cheaply (repair_quadratic_part), then SDP-FO's ascent polishes; only a better proven bound
        // is ever kept.
        if let Some(b) = best_alm.clone()
            && self.polish > 0
            && !settled(&best)
        {
            let (repaired, proof) = repair_and_prove(&b.multipliers, 30)?;
            if let Some(c) = proof {
                keep(&mut best, &c);
            }
            if trace {
                eprintln!(
                    "bm repaired bound {:?} t {:.1}s",
                    best.as_ref().map(|c| c.bound),
                    start.elapsed().as_secs_f64()
                );
            }
            if !settled(&best) {
                let fo = super::sdp_fo::SdpFo {
                    iterations: self.polish,
                    time_limit: (self.time_limit - start.elapsed().as_secs_f64()).max(1.0),
                    stop_when_positive: self.stop_when_positive,
                    bounds: self.bounds,
                    ..Default::default()
                };
                if let Some(c) = fo.run(net, set, rel, label, target, Some(&repaired))?.certificate {
                    keep(&mut best, &c);
                }
            }
        }
        let (primal, _) = values(net, set, &rel.boxes, label, target, &y, false);
        let (kkt_residual, complementarity) = kkt_errors(net, set, rel, label, target, &y, &original(&alm), &like)?;
        Ok(BmResult {
            certificate: best,
            primal,
            infeasibility,
            rank_path,
            iterations,
            kkt_residual,
            complementarity,
            attack_margin: attack[0].margin,
            solves: 1,
        })
    }
}

impl Bm {
    /// [`Verifier::lower_bounds`] on a relaxation computed earlier for the same `set` (e.g. for
    /// BM-Full with LP-Full's bounds, those of [`crate::verify::lp::lp_full_bounds`], so that LP-Full
    /// and BM-Full on one input pay for those LPs once). Its bounds must be sound for `set`: the
    /// proof uses them as given.
    pub fn lower_bounds_with(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        targets: &[usize],
        relaxation: Relaxation,
    ) -> Result<BoundReport> {
        self.report(network, set, label, targets, Some(relaxation))
    }

    fn report(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        targets: &[usize],
        prebuilt: Option<Relaxation>,
    ) -> Result<BoundReport> {
        let verdict = self.stop_when_positive;
        let prebuilt = if self.tighten > 0 && self.bounds != BoundSource::CrownIbp && network.layers().len() >= 3 {
            super::check_query(network, set, label, targets)?;
            let rel = match prebuilt {
                Some(rel) => rel,
                None => Relaxation::new(network, set, self.bounds)?,
            };
            let neuron_bm = Bm {
                stop_when_positive: false,
                tighten: 0,
                max_iterations: self.max_iterations / 4,
                time_limit: self.time_limit / 4.0,
                ..self.clone()
            };
            let pre = super::bm_bounds::tighten_last_hidden(network, set, &rel.pre, label, self.tighten, &neuron_bm)?;
            Some(Relaxation::from_bounds(network, set, self.bounds, pre)?)
        } else {
            prebuilt
        };
        super::per_target_report(network, set, label, targets, self.bounds, prebuilt, verdict, |rel, t| {
            self.solve_target(network, set, rel, label, t).map(|r| r.certificate.map(|c| c.bound))
        })
    }
}

impl Verifier for Bm {
    fn name(&self) -> &'static str {
        match self.bounds {
            BoundSource::CrownIbp => "bm",
            BoundSource::LpFull => "bm-full-lp",
            BoundSource::Optimized => "bm-full",
        }
    }
    fn lower_bounds(&self, network: &Network, set: &InputSet, label: usize, targets: &[usize]) -> Result<BoundReport> {
        self.report(network, set, label, targets, None)
    }
}
