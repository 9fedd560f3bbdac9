//! LP-Last and LP-Full (Salman et al. 2019, 001_b3d5e3f2d36bac59.txt, section 5: "LP" with
//! intermediate bounds from a greedy method, and "LP-ALL" with every intermediate bound tightened
//! by its own LP), on the triangle relaxation of [`crate::bounds::lp`]. For l2 balls the
//! programs are SOCPs. Each reported number is the weak-duality bound at clarabel's dual point,
//! valid whatever the solver did.

use std::time::Instant;

use super::{BoundReport, Stats, Verifier};
use crate::bounds::lp::{LpOutcome, LpSettings, LpStats, NeuronMultipliers, TriangleProgram, tighten_layer_traced};
use crate::bounds::{self, PreActivationBounds, Propagation, linear};
use crate::error::Result;
use crate::network::{Activation, Network};
use crate::spec::InputSet;

/// Lower bounds on the margin for `targets` from the LP over the relaxation with bounds `pre`,
/// together with the solves' statistics. Each bound is the LP's dual bound; callers may take the
/// maximum with any other sound bound.
pub fn margin_lp_bounds(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    label: usize,
    targets: &[usize],
    settings: &LpSettings,
) -> (Vec<f64>, LpStats) {
    let spec = linear::margin_spec(net.num_classes(), label, targets);
    spec_lp_bounds(net, set, pre, spec.as_ref(), settings)
}

/// Lower bounds on lam\[:, s\]^T f(x) over the set for each column s of `lam` (outputs x specs)
/// from the LP over the relaxation with bounds `pre`, with the solves' statistics.
pub fn spec_lp_bounds(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    lam: faer::MatRef<'_, f64>,
    settings: &LpSettings,
) -> (Vec<f64>, LpStats) {
    let (out, stats) = spec_lp_outcomes(net, set, pre, lam, settings);
    (out.into_iter().map(|o| o.bound).collect(), stats)
}

/// [`spec_lp_bounds`] with each solve's outcome (its bound and multipliers).
pub fn spec_lp_outcomes(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    lam: faer::MatRef<'_, f64>,
    settings: &LpSettings,
) -> (Vec<LpOutcome>, LpStats) {
    let layers = net.layers();
    let k = layers.len();
    let last = &layers[k - 1];
    // With an affine last layer the specification is linear in x_{K-1}: fold it (the C-matrix trick).
    let depth = if last.activation() == Activation::Identity { k - 1 } else { k };
    let program = TriangleProgram::new(net, set, pre, depth, settings.prune_inactive);
    let mut stats = LpStats::default();
    let mut solver = None;
    let mut out = Vec::with_capacity(lam.ncols());
    for s in 0..lam.ncols() {
        let col: Vec<f64> = lam.col(s).iter().copied().collect();
        let (w, constant) = if depth == k - 1 {
            let wt = last.weight_t();
            let w: Vec<f64> = (0..wt.nrows()).map(|i| (0..wt.ncols()).map(|j| wt[(i, j)] * col[j]).sum()).collect();
            let c: f64 = col.iter().zip(last.bias()).map(|(a, b)| a * b).sum();
            (w, c)
        } else {
            (col, 0.0)
        };
        let q = program.objective(&w);
        let solver = solver.get_or_insert_with(|| program.solver(&q, settings));
        let res = solver.minimize(&q, constant);
        stats.record(&res);
        out.push(res);
    }
    (out, stats)
}

/// LP-Full's pre-activation bounds: CROWN's, then every hidden layer from the second on tightened
/// neuron by neuron by LPs over the relaxation of the layers before it.
pub fn lp_full_bounds(net: &Network, set: &InputSet, settings: &LpSettings) -> Result<(PreActivationBounds, LpStats)> {
    let (pre, stats, _) = lp_full_bounds_traced(net, set, settings)?;
    Ok((pre, stats))
}

/// [`lp_full_bounds`] with, per hidden layer and neuron, the multipliers of its LPs (for a
/// certificate; none on the first hidden layer, whose CROWN bounds are exact).
#[allow(clippy::type_complexity)]
pub fn lp_full_bounds_traced(
    net: &Network,
    set: &InputSet,
    settings: &LpSettings,
) -> Result<(PreActivationBounds, LpStats, Vec<Vec<NeuronMultipliers>>)> {
    let mut pre = bounds::pre_activation_bounds(net, set, Propagation::Crown)?;
    let mut stats = LpStats::default();
    let k = net.layers().len();
    let mut traced = vec![vec![(None, None); net.layers()[0].output_size()]];
    for depth in 1..k - 1 {
        let (iv, st, t) = tighten_layer_traced(net, set, &pre, depth, settings);
        pre.layers[depth].intersect(&iv);
        stats.merge(&st);
        traced.push(t);
    }
    Ok((pre, stats, traced))
}

/// The certificate evidence of the LP on `pre` for `targets`: `evidence` (the relaxations and
/// the hidden intervals' evidence) with each target's LP multipliers and CROWN's lines on `pre`
/// (the report keeps the better of the two).
fn lp_evidence(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    label: usize,
    targets: &[usize],
    settings: &LpSettings,
    mut evidence: crate::certificate::Evidence,
) -> crate::certificate::Evidence {
    use crate::certificate::{Lines, Multipliers, TargetEvidence};
    let spec = linear::margin_spec(net.num_classes(), label, targets);
    let (outcomes, _) = spec_lp_outcomes(net, set, pre, spec.as_ref(), settings);
    evidence.relaxations.push(Lines::of(net, pre));
    let greedy = Multipliers::Relaxation(evidence.relaxations.len() - 1);
    evidence.targets = targets
        .iter()
        .zip(outcomes)
        .map(|(&t, o)| {
            (
                t,
                vec![
                    TargetEvidence::Linear(Multipliers::Vectors(o.multipliers)),
                    TargetEvidence::Linear(greedy.clone()),
                ],
            )
        })
        .collect();
    evidence
}

fn report(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    label: usize,
    targets: &[usize],
    settings: &LpSettings,
    mut stats: LpStats,
) -> Result<BoundReport> {
    let start = Instant::now();
    let (lp, st) = margin_lp_bounds(net, set, pre, label, targets, settings);
    stats.merge(&st);
    // The linear relaxation over the same bounds is also sound; keep the better of the two, so a
    // solver failure never makes the answer worse than CROWN on these bounds.
    let greedy = bounds::margin_lower_bounds(net, set, pre, Propagation::Crown, label, targets)?;
    let values = lp.iter().zip(&greedy).map(|(a, b)| a.max(*b));
    Ok(BoundReport {
        bounds: targets.iter().copied().zip(values).collect(),
        stats: Stats {
            seconds: start.elapsed().as_secs_f64(),
            unstable_neurons: Some(pre.unstable_neurons()),
            lp: Some(stats),
            certified_radius: None,
            bm: None,
        },
        counterexample: None,
    })
}

/// LP-Last: intermediate bounds from CROWN, one LP (l_inf) or SOCP (l2) per target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Lp {
    /// Solver settings.
    pub settings: LpSettings,
}

impl Verifier for Lp {
    fn name(&self) -> &'static str {
        "lp"
    }
    fn lower_bounds(&self, network: &Network, set: &InputSet, label: usize, targets: &[usize]) -> Result<BoundReport> {
        let start = Instant::now();
        super::check_query(network, set, label, targets)?;
        let pre = bounds::pre_activation_bounds(network, set, Propagation::Crown)?;
        let mut r = report(network, set, &pre, label, targets, &self.settings, LpStats::default())?;
        r.stats.seconds = start.elapsed().as_secs_f64();
        Ok(r)
    }

    /// Each target's LP multipliers (the LPs are solved again) on CROWN's intervals.
    fn evidence(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        report: &crate::certify::ImageReport,
    ) -> Result<Option<crate::certificate::Evidence>> {
        use crate::certificate::{Evidence, LayerMultipliers, Lines, Multipliers};
        let pre = bounds::pre_activation_bounds(network, set, Propagation::Crown)?;
        let layers = vec![LayerMultipliers::All(vec![Multipliers::Relaxation(0)]); network.layers().len() - 1];
        let targets = report.bounded_targets();
        let evidence = Evidence { relaxations: vec![Lines::of(network, &pre)], layers, targets: Vec::new() };
        Ok(Some(lp_evidence(network, set, &pre, label, &targets, &self.settings, evidence)))
    }
}

/// LP-Full (LP-ALL): every unstable pre-activation bound tightened by its own LP/SOCP, layer by
/// layer, then one LP/SOCP per target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LpFull {
    /// Solver settings.
    pub settings: LpSettings,
}

impl LpFull {
    /// [`Verifier::lower_bounds`] from pre-activation bounds computed earlier for the same `set` by
    /// [`lp_full_bounds`] (one LP/SOCP per target on them), so LP-Full and BM-Full on one input pay
    /// for the per-neuron LPs once. The bounds must be sound for `set`.
    pub fn lower_bounds_with(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        targets: &[usize],
        pre: &PreActivationBounds,
    ) -> Result<BoundReport> {
        let start = Instant::now();
        super::check_query(network, set, label, targets)?;
        pre.check_shape(network)?;
        let mut r = report(network, set, pre, label, targets, &self.settings, LpStats::default())?;
        r.stats.seconds = start.elapsed().as_secs_f64();
        Ok(r)
    }
}

impl Verifier for LpFull {
    fn name(&self) -> &'static str {
        "lp-full"
    }
    fn lower_bounds(&self, network: &Network, set: &InputSet, label: usize, targets: &[usize]) -> Result<BoundReport> {
        let start = Instant::now();
        super::check_query(network, set, label, targets)?;
        let (pre, stats) = lp_full_bounds(network, set, &self.settings)?;
        let mut r = report(network, set, &pre, label, targets, &self.settings, stats)?;
        r.stats.seconds = start.elapsed().as_secs_f64();
        Ok(r)
    }

    /// The LP multipliers of every interval end and every target (LP-Full is solved again), with
    /// CROWN's lines for the CROWN part of the intervals.
    fn evidence(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        report: &crate::certify::ImageReport,
    ) -> Result<Option<crate::certificate::Evidence>> {
        use crate::certificate::{Evidence, LayerMultipliers, Lines, Multipliers};
        let crown = bounds::pre_activation_bounds(network, set, Propagation::Crown)?;
        let (pre, _, traced) = lp_full_bounds_traced(network, set, &self.settings)?;
        let base = [Multipliers::Relaxation(0)];
        let layers = traced.into_iter().map(|t| LayerMultipliers::from_lp(t, &base)).collect();
        let targets = report.bounded_targets();
        let evidence = Evidence { relaxations: vec![Lines::of(network, &crown)], layers, targets: Vec::new() };
        Ok(Some(lp_evidence(network, set, &pre, label, &targets, &self.settings, evidence)))
    }
}
