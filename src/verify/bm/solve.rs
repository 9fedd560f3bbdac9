//! One BM-r solve as its steps ([`Solve`]): the start point, rounds of the augmented Lagrangian,
//! the proof of Proposition 3.1 at the current multipliers, the stop on the certified gap, the
//! rank lift, and the final repair and polish of the best multipliers.
//!
//! The solve ends when (in this order) a proven bound is positive in verdict mode, the point is
//! at the relaxation's optimum ([`Solve::at_optimum`]: nearly feasible, and the primal value
//! <F, Y Y^T> exceeds the proven bound by at most [`Bm::gap_tolerance`] (1 + |primal|)), the
//! iteration budget or the time limit is spent, or nothing moves any more: the budget decides,
//! not a count of outer iterations. Once a lift finds no direction the rounds go on at that rank
//! with the penalty allowed to grow to [`Bm::rho_final`] (a moderate penalty while the rank
//! grows, a large one to close the last infeasibility; docs/experiments.md, session 16): at a
//! positive semidefinite slack matrix below the largest rank in both modes, at the largest rank
//! in tight mode only.

use std::time::Instant;

use faer::Mat;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::alm::{Alm, constraint_scales, kkt_errors, lbfgs, values};
use super::{Bm, BmResult, may_prove};
use crate::attack::{PgdSettings, pgd};
use crate::error::{Error, Result};
use crate::network::{Activation, Network};
use crate::spec::{InputSet, Norm};
use crate::verify::sdp::{
    Certificate, Multipliers, Relaxation, SlackOperator, bound_from_multipliers, flatten, unflatten,
};

/// Infeasibility (of the scaled constraints) at or below which the primal value counts as that
/// of a feasible point for the gap stop: the objective's change to reach exact feasibility is
/// of the order of the multipliers times this.
pub(super) const NEAR_FEASIBLE: f64 = 1e-5;

/// The problem of one solve.
#[derive(Clone, Copy)]
pub(super) struct Target<'a> {
    pub net: &'a Network,
    pub set: &'a InputSet,
    pub rel: &'a Relaxation,
    pub label: usize,
    pub target: usize,
}

/// The state of one BM-r solve.
pub(super) struct Solve<'a> {
    bm: &'a Bm,
    p: Target<'a>,
    alm: Alm<'a>,
    /// The factor Y (n x r; column 0 is the candidate point u).
    y: Mat<f64>,
    like: Multipliers,
    start: Instant,
    /// Three quarters of the time limit: the rest is for the repair and polish.
    deadline: Instant,
    iterations: usize,
    budget: usize,
    infeasibility: f64,
    /// Sum of |multiplier| x violation after the last outer iteration ([`BmResult::primal_shift`]).
    shift: f64,
    rank_path: Vec<usize>,
    /// The best proof so far, and the best proof of the augmented Lagrangian's own multipliers
    /// (what the repair and polish start from).
    best: Option<Certificate>,
    best_alm: Option<Certificate>,
    attack_margin: f64,
    /// The proven bound of the augmented Lagrangian's best multipliers when they were last
    /// repaired and polished ([`Solve::polish`]): polishing them again gains nothing.
    polished: Option<f64>,
    /// Whether the last rank lift found no direction (the slack matrix PSD, or the largest rank):
    /// the penalty may then grow up to [`Bm::rho_final`].
    final_rank: bool,
    trace: bool,
}

fn keep(slot: &mut Option<Certificate>, c: &Certificate) {
    if slot.as_ref().is_none_or(|b| c.bound > b.bound) {
        *slot = Some(c.clone());
    }
}

impl<'a> Solve<'a> {
    /// The start of Appendix A.5: u at PGD's point for the target (with its hidden activations),
    /// V small and random (from `seed`), multipliers 0, penalty 1.
    pub(super) fn new(bm: &'a Bm, p: Target<'a>, seed: u64, products: bool) -> Result<Self> {
        let layers = p.net.layers();
        if layers[layers.len() - 1].activation() != Activation::Identity
            || layers[..layers.len() - 1].iter().any(|l| l.activation() != Activation::Relu)
        {
            return Err(Error::Unsupported("BM-r needs ReLU hidden layers and an affine last layer".into()));
        }
        let start = Instant::now();
        let deadline = start + crate::budget::duration(0.75 * bm.time_limit);
        let attack =
            pgd(p.net, p.set, p.label, &[p.target], &PgdSettings { steps: 50, restarts: 2, ..Default::default() })?;
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
        let mut rng = StdRng::seed_from_u64(seed);
        let r0 = bm.rank.max(1);
        let y = Mat::from_fn(u.len(), r0, |i, k| if k == 0 { u[i] } else { 1e-3 * (rng.random::<f64>() - 0.5) });
        let like = Multipliers::initial(p.net, p.set, 0.0).with_products(p.net, p.set, products);
        let mult = vec![0.0; flatten(&like).len()];
        let n_ineq = mult.len() - like.relu.iter().map(Vec::len).sum::<usize>();
        let scale = flatten(&constraint_scales(p.net, p.set, bm.input_scaling_for(p.set.norm())?, products));
        let mut alm = Alm {
            net: p.net,
            set: p.set,
            boxes: &p.rel.boxes,
            label: p.label,
            target: p.target,
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
            let (n0, first) = (p.set.dim(), &p.rel.pre.layers[0]);
            let from = n_ineq - like.products.len();
            alm.skip = vec![false; alm.mult.len()];
            for k in 0..like.products.len() {
                let j = (k % (n0 * first.lower.len())) / n0;
                alm.skip[from + k] = !(first.lower[j] < 0.0 && first.upper[j] > 0.0);
            }
        }
        Ok(Solve {
            bm,
            p,
            alm,
            y,
            like,
            start,
            deadline,
            iterations: 0,
            budget: bm.max_iterations,
            infeasibility: f64::INFINITY,
            shift: f64::INFINITY,
            rank_path: vec![r0],
            best: None,
            best_alm: None,
            attack_margin: attack[0].margin,
            polished: None,
            final_rank: false,
            trace: std::env::var_os("NNCERT_BM_TRACE").is_some(),
        })
    }

    /// Whether the target is settled in verdict mode (a positive proven bound).
    fn settled(&self) -> bool {
        self.bm.stop_when_positive && self.best.as_ref().is_some_and(|c| c.bound > 0.0)
    }

    fn out_of_budget(&self) -> bool {
        self.iterations >= self.budget || Instant::now() > self.deadline
    }

    /// The objective <F, Y Y^T> at the current point.
    fn primal(&self) -> f64 {
        let p = &self.p;
        values(p.net, p.set, &p.rel.boxes, p.label, p.target, &self.y, false).0
    }

    /// The multipliers of the original (unscaled) constraints, flattened (`alm.mult` is for
    /// g_i / s_i).
    fn original(&self) -> Vec<f64> {
        self.alm.mult.iter().zip(&self.alm.scale).map(|(m, s)| m / s).collect()
    }

    /// The multipliers of the original (unscaled) constraints.
    fn multipliers(&self) -> Multipliers {
        unflatten(&self.original(), &self.like)
    }

    /// Up to [`Bm::outer`] outer iterations: an L-BFGS solve of the augmented Lagrangian, then the
    /// multiplier step and the penalty rule (x [`Bm::rho_growth`] when the infeasibility did not
    /// fall 4x, up to [`Bm::rho_max`], and up to [`Bm::rho_final`] once the rank is final: below
    /// the largest rank in both modes, at it in tight mode only). Returns the L-BFGS iterations
    /// used.
    pub(super) fn round(&mut self) -> Result<usize> {
        let before = self.iterations;
        let mut prev = f64::INFINITY;
        for _ in 0..self.bm.outer {
            let left = self.budget.saturating_sub(self.iterations);
            if left == 0 || Instant::now() > self.deadline {
                break;
            }
            self.iterations += lbfgs(&self.alm, &mut self.y, self.bm.inner.min(left), self.deadline)?;
            let (_, _, g) = self.alm.eval(&self.y)?;
            let alm = &mut self.alm;
            let mut infeasibility = 0.0f64;
            let mut shift = 0.0;
            for (i, &gi) in g.iter().enumerate() {
                if alm.left_out(i) {
                    continue;
                }
                if i < alm.n_ineq {
                    if i == 0 && self.p.set.norm() != Norm::L2 {
                        continue;
                    }
                    infeasibility = infeasibility.max((-gi).max(0.0));
                    alm.mult[i] = (alm.mult[i] - alm.rho * gi).max(0.0);
                    shift += alm.mult[i] * (-gi).max(0.0);
                } else {
                    infeasibility = infeasibility.max(gi.abs());
                    alm.mult[i] += alm.rho * gi;
                    shift += alm.mult[i].abs() * gi.abs();
                }
            }
            self.shift = shift;
            let rho = alm.rho;
            self.infeasibility = infeasibility;
            if self.trace {
                eprintln!(
                    "bm rank {} outer: f {:.5} infeas {infeasibility:.2e} rho {rho:.1e} iters {} t {:.1}s",
                    self.y.ncols(),
                    self.primal(),
                    self.iterations,
                    self.start.elapsed().as_secs_f64()
                );
            }
            if infeasibility < self.bm.feasibility {
                break;
            }
            if infeasibility > 0.25 * prev {
                // At a PSD slack matrix below the largest rank only the infeasibility is left, and
                // a larger penalty closes it; at the largest rank (a direction the rank cannot
                // take) only in tight mode: in verdict mode on MNIST it stops the near-miss budget
                // from proving (docs/experiments.md, session 16).
                let below = self.y.ncols() < self.bm.max_rank;
                let fin = self.final_rank && (below || !self.bm.stop_when_positive);
                let cap = if fin { self.bm.rho_final.max(self.bm.rho_max) } else { self.bm.rho_max };
                let alm = &mut self.alm;
                alm.rho = (alm.rho * self.bm.rho_growth).min(cap).max(alm.rho);
            }
            prev = infeasibility;
        }
        Ok(self.iterations - before)
    }

    /// Proposition 3.1 at the current multipliers (after a cheap repair first in verdict mode,
    /// which often proves the target at once); keeps the best proofs. Returns the plain proof.
    pub(super) fn prove(&mut self) -> Result<Option<Certificate>> {
        let mult = self.multipliers();
        if self.bm.stop_when_positive
            && let Some(c) = self.repair_and_prove(&mult, 10)?
        {
            keep(&mut self.best, &c);
        }
        let cert = if self.settled() { None } else { self.proof(&mult)? };
        if let Some(c) = &cert {
            keep(&mut self.best, c);
            keep(&mut self.best_alm, c);
        }
        if self.trace {
            let plain = match &cert {
                Some(c) => format!("{:.6} (t {:.3e})", c.bound, c.t),
                None if self.settled() => "skipped".to_string(),
                None => "none proven".to_string(),
            };
            eprintln!(
                "bm rank {} plain bound {plain}, best {:?}, primal {:.6} (shift {:.1e}), infeas {:.1e} at {:.1}s",
                self.y.ncols(),
                self.best.as_ref().map(|c| c.bound),
                self.primal(),
                self.shift,
                self.infeasibility,
                self.start.elapsed().as_secs_f64()
            );
        }
        Ok(cert)
    }

    fn proof(&self, m: &Multipliers) -> Result<Option<Certificate>> {
        let p = &self.p;
        Ok(bound_from_multipliers(p.net, p.set, p.rel, p.label, p.target, m)?.map(|(c, _)| c))
    }

    /// The box multipliers raised until the quadratic part is PSD
    /// ([`crate::verify::sdp_fo::repair_quadratic_part`]), and their proof.
    fn repair_and_prove(&self, m: &Multipliers, steps: usize) -> Result<Option<Certificate>> {
        self.repair(m, steps).and_then(|r| self.proof(&r))
    }

    fn repair(&self, m: &Multipliers, steps: usize) -> Result<Multipliers> {
        let p = &self.p;
        crate::verify::sdp_fo::repair_quadratic_part(p.net, p.set, p.rel, p.label, p.target, m, steps)
    }

    /// The certified gap at primal value `primal`: minus the best proven bound (+inf before any
    /// proof).
    fn gap(&self, primal: f64) -> f64 {
        self.best.as_ref().map_or(f64::INFINITY, |c| primal - c.bound)
    }

    /// Whether the solve is at the relaxation's optimum: the point nearly feasible
    /// ([`NEAR_FEASIBLE`]) and the certified gap at most [`Bm::gap_tolerance`] (1 + |primal|) in
    /// absolute value. The proven bound is then within that gap of the optimum (up to the
    /// infeasibility's effect on the primal value), and no budget can prove more than the
    /// optimum. A primal value below the proven bound by more than the tolerance says that the
    /// remaining infeasibility still lowers it: not there yet.
    pub(super) fn at_optimum(&self) -> bool {
        let primal = self.primal();
        self.infeasibility <= NEAR_FEASIBLE && self.gap(primal).abs() <= self.bm.gap_tolerance * (1.0 + primal.abs())
    }

    /// When the budget runs out: in tight mode, a target not at its optimum gets
    /// [`Bm::tight_iterations`] in all; in verdict mode, a target still unproven gets
    /// [`Bm::near_miss_iterations`] in all when the relaxation may still prove it ([`may_prove`]).
    fn extend_budget(&mut self) {
        if self.iterations >= self.budget && !self.bm.stop_when_positive && self.budget < self.bm.tight_iterations {
            self.budget = self.bm.tight_iterations;
            return;
        }
        if self.iterations >= self.budget && self.bm.stop_when_positive && self.budget < self.bm.near_miss_iterations {
            let primal = self.primal();
            if may_prove(primal, self.infeasibility, self.shift) {
                self.budget = self.bm.near_miss_iterations;
                if self.trace {
                    eprintln!(
                        "bm primal {primal:.4}, infeasibility {:.1e}: budget raised to {}",
                        self.infeasibility, self.budget
                    );
                }
            }
        }
    }

    /// Rank lifting (Algorithm 2, step 4): when lambda_min of the slack matrix at the current
    /// multipliers (with the proof's z0) is below -[`Bm::dual_tolerance`], its eigenvector becomes
    /// a new column of V. Returns whether the rank grew.
    pub(super) fn lift(&mut self, proof: Option<&Certificate>) -> Result<bool> {
        let r = self.y.ncols();
        if r >= self.bm.max_rank {
            return Ok(false);
        }
        let p = &self.p;
        let z0 = proof.map_or(0.0, |c| c.z0);
        let mult = self.multipliers();
        let op = SlackOperator::new(p.net, p.set, &p.rel.boxes, p.label, p.target, &mult, z0)?;
        let Some((lam, vec)) = op.lambda_min(1e-6) else { return Ok(false) };
        if lam >= -self.bm.dual_tolerance {
            return Ok(false);
        }
        let n = self.y.nrows();
        let scale = 1e-2 * (1.0 + self.y.norm_max());
        let mut lifted = Mat::<f64>::zeros(n, r + 1);
        lifted.as_mut().subcols_mut(0, r).copy_from(&self.y);
        let vnorm: f64 = vec[1..].iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-300);
        for i in 0..n {
            lifted[(i, r)] = scale * vec[1 + i] / vnorm;
        }
        self.y = lifted;
        self.rank_path.push(r + 1);
        Ok(true)
    }

    /// The augmented Lagrangian with rank lifting until a stop of the module docs. In verdict
    /// mode, at the final rank, the best multipliers are repaired and polished at once (which
    /// often proves the target) before more rounds; and a target whose point is nearly feasible
    /// with a primal value <= 0 ([`may_prove`]) stops, as no multipliers can prove more than the
    /// relaxation's optimum.
    pub(super) fn run(&mut self) -> Result<()> {
        let verdict = self.bm.stop_when_positive;
        loop {
            let used = self.round()?;
            let proof = self.prove()?;
            if self.settled() || self.at_optimum() {
                break;
            }
            if verdict && !may_prove(self.primal(), self.infeasibility, self.shift) {
                break;
            }
            self.extend_budget();
            if self.out_of_budget() {
                break;
            }
            let lifted = self.lift(proof.as_ref())?;
            // No new column (the slack matrix PSD, or the largest rank): the rounds go on at this
            // rank, with the larger penalty cap (Solve::round), until a stop above.
            self.final_rank = !lifted;
            if !lifted && verdict {
                self.polish()?;
                if self.settled() {
                    break;
                }
            }
            // Nothing moves: no new column, and L-BFGS took no step at all in the round, or at most
            // one per outer iteration at a feasible point (a stationary point of the augmented
            // Lagrangian whose multiplier steps change nothing). The budget counts L-BFGS
            // iterations, so a round without any must end the solve.
            if !lifted && (used == 0 || (used <= self.bm.outer && self.infeasibility < self.bm.feasibility)) {
                break;
            }
        }
        Ok(())
    }

    /// Repairs, then polishes the best multipliers of the augmented Lagrangian: they leave the
    /// quadratic part slightly indefinite, which R^2 magnifies. The box multipliers lift it
    /// cheaply, then SDP-FO's ascent polishes; only a better proven bound is ever kept. Skipped
    /// when the target is settled or at the optimum already, or when these multipliers were
    /// polished before.
    pub(super) fn polish(&mut self) -> Result<()> {
        if self.bm.polish == 0 || self.settled() || self.at_optimum() {
            return Ok(());
        }
        let Some(b) = self.best_alm.clone() else { return Ok(()) };
        if self.polished.is_some_and(|p| p >= b.bound) {
            return Ok(());
        }
        self.polished = Some(b.bound);
        let repaired = self.repair(&b.multipliers, 30)?;
        if let Some(c) = self.proof(&repaired)? {
            keep(&mut self.best, &c);
        }
        if self.trace {
            eprintln!(
                "bm repaired bound {:?} t {:.1}s",
                self.best.as_ref().map(|c| c.bound),
                self.start.elapsed().as_secs_f64()
            );
        }
        if !self.settled() {
            let fo = crate::verify::sdp_fo::SdpFo {
                iterations: self.bm.polish,
                time_limit: (self.bm.time_limit - self.start.elapsed().as_secs_f64()).max(1.0),
                stop_when_positive: self.bm.stop_when_positive,
                bounds: self.bm.bounds,
                ..Default::default()
            };
            let p = &self.p;
            if let Some(c) = fo.run(p.net, p.set, p.rel, p.label, p.target, Some(&repaired))?.certificate {
                keep(&mut self.best, &c);
            }
        }
        Ok(())
    }

    /// The result: the best proof with the solver's statistics.
    pub(super) fn finish(self) -> Result<BmResult> {
        let p = &self.p;
        let primal = self.primal();
        let at_optimum = self.at_optimum();
        let gap = self.best.is_some().then(|| self.gap(primal));
        let (kkt_residual, complementarity) =
            kkt_errors(p.net, p.set, p.rel, p.label, p.target, &self.y, &self.original(), &self.like)?;
        Ok(BmResult {
            certificate: self.best,
            primal,
            gap,
            at_optimum,
            infeasibility: self.infeasibility,
            primal_shift: self.shift,
            rank_path: self.rank_path,
            iterations: self.iterations,
            kkt_residual,
            complementarity,
            attack_margin: self.attack_margin,
            solves: 1,
        })
    }
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
        let p = Target { net, set, rel, label, target };
        // In tight mode the products are in from the start; in verdict mode only a target the
        // plain relaxation cannot prove gets them (below).
        let tight_products = self.products && !self.stop_when_positive;
        let mut result = self.solve_once(p, self.seed, tight_products)?;
        if !self.stop_when_positive {
            return Ok(result);
        }
        // Near-miss restarts (Bm::restarts): a fresh start, keeping the best proven bound.
        let bound = |r: &BmResult| r.certificate.as_ref().map(|c| c.bound);
        let mut solves = 1;
        for k in 1..=self.restarts {
            let q = result.attack_margin;
            let near_miss = bound(&result).is_some_and(|b| b <= 0.0 && q > 0.0 && b >= -0.25 * q);
            if !near_miss || result.at_optimum || !may_prove(result.primal, result.infeasibility, result.primal_shift) {
                break;
            }
            let again = self.solve_once(p, self.seed.wrapping_add(k as u64), false)?;
            solves += 1;
            if bound(&again) > bound(&result) {
                result = again;
            }
        }
        // The products (Bm::products) for a target whose plain relaxation is short: PGD's margin
        // is positive but the primal value at a nearly feasible point is not. (Starting from where
        // the plain solve ended measured no faster: the products' multipliers start at 0 anyway.)
        let proven = bound(&result).is_some_and(|b| b > 0.0);
        if self.products
            && !proven
            && result.attack_margin > 0.0
            && !may_prove(result.primal, result.infeasibility, result.primal_shift)
        {
            let again = self.solve_once(p, self.seed, true)?;
            solves += 1;
            if bound(&again) > bound(&result) {
                result = again;
            }
        }
        result.solves = solves;
        Ok(result)
    }

    /// One BM-r solve, with or without the input-box products, from the random start of `seed`.
    fn solve_once(&self, p: Target<'_>, seed: u64, products: bool) -> Result<BmResult> {
        let mut solve = Solve::new(self, p, seed, products)?;
        solve.run()?;
        solve.polish()?;
        solve.finish()
    }
}
