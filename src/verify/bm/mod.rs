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
//! **The certified gap.** At any point Y, the primal value <F, Y Y^T> is the relaxation's
//! objective at a candidate solution: once Y is nearly feasible it bounds the relaxation's optimum
//! from above, while the proven bound bounds it from below. Their difference, the certified gap
//! ([`BmResult::gap`]), says how far from the relaxation's optimum the answer can be; a solve
//! continues, round after round of outer iterations and rank lifts, until that gap is below
//! [`Bm::gap_tolerance`] (1 + |primal|) at a nearly feasible point ([`BmResult::at_optimum`]),
//! a proven bound is positive in verdict mode, or the iteration budget ([`Bm::max_iterations`],
//! extended by [`Bm::tight_iterations`] in tight mode and [`Bm::near_miss_iterations`] in verdict
//! mode) is spent. The penalty is capped at [`Bm::rho_max`], in tight mode at [`Bm::rho_final`]
//! once the rank is final. The steps are in `bm/solve.rs`, the augmented Lagrangian in
//! `bm/alm.rs`.
//!
//! Set the environment variable `NNCERT_BM_TRACE` to print the progress of each outer iteration
//! (objective, infeasibility, penalty, time) and each round's proven bound to standard error.

mod alm;
mod solve;

use serde::{Deserialize, Serialize};

use super::sdp::{BoundSource, Certificate, Relaxation};
use super::{BoundReport, Verifier};
use crate::error::{Error, Result};
use crate::network::Network;
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
    /// Tight mode only (`stop_when_positive` false): a target not at its relaxation's optimum
    /// ([`BmResult::at_optimum`]) after `max_iterations` continues up to this many iterations in
    /// all (default 50400; at most `max_iterations` turns it off). On the 100 seeded networks of
    /// `rho_final`, 25200 iterations reach within 1e-3 of the exact relaxation in 86 cases,
    /// 50400 in 95 (about 2 s per target).
    #[serde(default = "default_tight_iterations")]
    pub tight_iterations: usize,
    /// Wall-clock cap per target in seconds (default 60): three quarters for the augmented
    /// Lagrangian and rank lifting, the rest for repairing and polishing its multipliers. A cap
    /// only: a loaded machine that reaches it gets a looser (still sound) bound.
    pub time_limit: f64,
    /// Seed of the random initial V (default 0).
    pub seed: u64,
    /// Penalty growth factor when the infeasibility does not fall by 4x (default 2).
    pub rho_growth: f64,
    /// Largest penalty while the rank still grows (default 10). A moderate penalty with many cheap
    /// outer iterations gives far better multipliers than a large one: on adv-mnist-mlp-2x100
    /// (image 1, target 0, l2 1.0) the proven bound after rank lifting to 4 is 3.23 with 10 and
    /// -7.0 with 1e4, whose multipliers oscillate by about rho x infeasibility.
    pub rho_max: f64,
    /// The largest penalty once the rank is final, reached by the same `rho_growth` rule (default
    /// 3000): when a lift finds no direction below `max_rank` (the slack matrix is PSD: only the
    /// infeasibility is left), and in tight mode (`stop_when_positive` false) also at `max_rank`.
    /// At rho 10 the last infeasibility falls by a few percent per outer iteration; on 100 seeded
    /// networks of 10-40 inputs, tight-mode `bm-full` comes within 1e-3 of the exact relaxation in
    /// 86 of 100 cases with 3000 against 39 with 10 (25200 iterations). Verdict mode keeps
    /// `rho_max` at `max_rank`: on adv-mnist-mlp-2x100 at l_inf 0.1 (image 405, target 9) the
    /// near-miss budget proves the target with 10 and leaves it at -0.059 with 3000, whose
    /// multipliers oscillate (docs/experiments.md).
    #[serde(default = "default_rho_final")]
    pub rho_final: f64,
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
    /// Stop a target once its certified gap (primal value minus proven bound, [`BmResult::gap`])
    /// is at most this times 1 + |primal| at a nearly feasible point (default 1e-4).
    #[serde(default = "default_gap_tolerance")]
    pub gap_tolerance: f64,
    /// Add the input-box products (RLT cuts of the input box with the first hidden layer's linear
    /// ReLU constraints, [`crate::verify::sdp::Multipliers::products`]) of the first hidden layer's unstable neurons
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

fn default_gap_tolerance() -> f64 {
    1e-4
}

fn default_near_miss_iterations() -> usize {
    25200
}

fn default_tight_iterations() -> usize {
    50400
}

fn default_rho_final() -> f64 {
    3000.0
}

/// Whether more work on a target may still prove it: not when its point is nearly feasible
/// (max violation <= 1e-3, as the augmented Lagrangian scales the constraints) with a primal
/// value <= 0 even after adding `shift` ([`BmResult::primal_shift`], how far the remaining
/// violations may hold the primal value below the optimum, to first order): that value then
/// bounds the relaxation's optimum from above, and no multipliers prove more than that optimum,
/// from any start or with any budget ([`Bm::restarts`], [`Bm::near_miss_iterations`]). Without
/// the shift, a 6-input network's target stopped at primal -0.0077 (violation 7e-4) whose
/// optimum is +0.0008.
fn may_prove(primal: f64, infeasibility: f64, shift: f64) -> bool {
    primal + 2.0 * shift > 0.0 || infeasibility.is_nan() || infeasibility > 1e-3
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
            tight_iterations: default_tight_iterations(),
            time_limit: 60.0,
            seed: 0,
            polish: 300,
            rho_growth: 2.0,
            rho_max: 10.0,
            rho_final: default_rho_final(),
            stop_when_positive: true,
            bounds: BoundSource::CrownIbp,
            input_scaling: None,
            restarts: default_restarts(),
            gap_tolerance: default_gap_tolerance(),
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
    /// The objective <F, X> at the final point (an upper limit on the relaxation's optimum only
    /// when the point is nearly feasible).
    pub primal: f64,
    /// The certified gap: `primal` minus the proven bound (None when nothing was proven).
    #[serde(default)]
    pub gap: Option<f64>,
    /// Whether the solve ended at the relaxation's optimum: nearly feasible (infeasibility <= 1e-5)
    /// with a gap of at most [`Bm::gap_tolerance`] (1 + |primal|).
    #[serde(default)]
    pub at_optimum: bool,
    /// Max constraint violation at the final point, of the constraints as the augmented Lagrangian
    /// sees them (the input constraints divided by their scale, [`Bm::input_scaling`]).
    pub infeasibility: f64,
    /// Sum over the constraints of |multiplier| x violation at the final point: to first order,
    /// how far below the relaxation's optimum the remaining violations can hold the primal value
    /// (the optimum's sensitivity to a constraint is its multiplier).
    #[serde(default)]
    pub primal_shift: f64,
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

/// What BM-r did on one target, as `certify --json` reports it ([`super::Stats::bm`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BmTarget {
    /// The target class.
    pub target: usize,
    /// BM-r's proven bound (before the maximum with CROWN's; None when nothing was proven).
    pub bound: Option<f64>,
    /// The primal value <F, Y Y^T> at the final point.
    pub primal: f64,
    /// `primal` minus `bound`.
    pub gap: Option<f64>,
    /// Ended at the relaxation's optimum ([`BmResult::at_optimum`]).
    pub at_optimum: bool,
    /// Max violation of the (scaled) constraints at the final point.
    pub infeasibility: f64,
    /// Ranks visited.
    pub rank_path: Vec<usize>,
    /// L-BFGS iterations.
    pub iterations: usize,
    /// Solves run (near-miss restarts, products).
    pub solves: usize,
    /// The multipliers of the proven bound, for a certificate (not written to JSON reports).
    #[serde(skip)]
    pub multipliers: Option<super::sdp::Multipliers>,
}

impl BmTarget {
    fn of(target: usize, r: &BmResult) -> Self {
        BmTarget {
            target,
            bound: r.certificate.as_ref().map(|c| c.bound),
            primal: r.primal,
            gap: r.gap,
            at_optimum: r.at_optimum,
            infeasibility: r.infeasibility,
            rank_path: r.rank_path.clone(),
            iterations: r.iterations,
            solves: r.solves,
            multipliers: r.certificate.as_ref().map(|c| c.multipliers.clone()),
        }
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
        super::per_target_report(network, set, label, targets, self.bounds, prebuilt, verdict, |rel, t| {
            let r = self.solve_target(network, set, rel, label, t)?;
            let stats = BmTarget::of(t, &r);
            Ok((r.certificate.map(|c| c.bound), Some(stats)))
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

    /// The SDP multipliers of every target BM proved, with the CROWN part of the report
    /// (alpha-CROWN's slopes on the relaxation's intervals).
    fn evidence(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        report: &crate::certify::ImageReport,
    ) -> Result<Option<crate::certificate::Evidence>> {
        use crate::certificate::TargetEvidence;
        let mut evidence = super::per_target_evidence(network, set, label, &report.bounded_targets(), self.bounds)?;
        let bm = report.bm.as_deref().unwrap_or(&[]);
        for (t, proofs) in &mut evidence.targets {
            if let Some(m) = bm.iter().find(|b| b.target == *t).and_then(|b| b.multipliers.clone()) {
                proofs.push(TargetEvidence::Sdp(m));
            }
        }
        Ok(Some(evidence))
    }
}
