//! Verifiers: methods that return a sound lower bound on phi\[c\] for each target class c.
//!
//! | name | method | norms | activations |
//! |---|---|---|---|
//! | `ibp` | [`Ibp`]: interval bound propagation | l2, l_inf | all |
//! | `fastlin` | [`FastLin`]: backward linear relaxation, slope u/(u-l) (= Wong-Kolter dual) | l2, l_inf | all |
//! | `crown` | [`Crown`]: backward linear relaxation, adaptive slope (CROWN-Ada) | l2, l_inf | all |
//! | `alpha-crown` | [`AlphaCrown`]: backward linear relaxation with the slopes optimized per bound, for every layer and the margins (LP-Full's quality, no LP solver) | l2, l_inf | ReLU |
//! | `lp` | [`lp::Lp`]: LP-Last, triangle relaxation on CROWN's bounds, one LP/SOCP per target | l2, l_inf | all (ReLU: convex hull) |
//! | `lp-full` | [`lp::LpFull`]: LP-ALL, every unstable neuron's bounds tightened by LPs first | l2, l_inf | all (ReLU: convex hull) |
//! | `sdp` | [`sdp::SdpFo`]: Proposition 3.1 of the BM-r paper with multipliers optimized by SDP-FO (small nets) | l2, l_inf | ReLU |
//! | `bm` | [`bm::Bm`]: BM-r (Burer-Monteiro, augmented Lagrangian + L-BFGS, rank lifting), bound by Proposition 3.1 | l2, l_inf | ReLU |
//! | `bm-full` | [`bm::Bm::full`]: BM-r with LP-Full-quality pre-activation bounds (optimized CROWN slopes) as post-activation boxes (BM-Full) | l2, l_inf | ReLU |
//! | `bm-full-lp` | [`bm::Bm::full_lp`]: BM-Full with LP-Full's own bounds, as the paper (slower, the same bounds within 1e-4 on the MNIST nets) | l2, l_inf | ReLU |
//! | `crc` | [`crc::Crc`]: curvature-based certificate (CRC), proven margin bound and certified radius | l2 | sigmoid, tanh, softplus |
//! | `exact` | [`exact::Exact`]: branch and bound over activation patterns, exact phi (tiny ReLU nets) | l2, l_inf | ReLU |
//! | `bab` | [`bab::Bab`]: complete branch and bound (ReLU splits bounded by beta-CROWN, or input splits bounded by CROWN), any size within a time limit | l2, l_inf | ReLU (input splitting: all) |
//!
//! Every bound is sound for whatever the method computes: the propagation methods involve no
//! solver, and the LP-based ones report the weak-duality bound at the solver's dual point (valid
//! for any dual point). Rounding in the propagation methods is of relative order 1e-15 and is not
//! yet accounted for by directed rounding; the LP dual bounds subtract an a-priori rounding bound.

pub mod bab;
pub mod bm;
pub mod bm_bounds;
pub mod crc;
pub mod exact;
pub mod lp;
pub mod property;
pub mod sdp;
pub mod sdp_fo;
#[cfg(feature = "sdp-reference")]
pub mod sdp_reference;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::bounds::{self, Propagation};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::spec::InputSet;

/// Statistics a verifier reports with its bounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Wall-clock seconds spent by the verifier on this image.
    pub seconds: f64,
    /// Hidden ReLU neurons whose sign the pre-activation bounds leave open (None for methods that
    /// do not compute pre-activation bounds).
    pub unstable_neurons: Option<usize>,
    /// LP/SOCP solves, their iterations and failures (LP-based methods only).
    pub lp: Option<crate::bounds::lp::LpStats>,
    /// The proven l2 radius around the center within which the label wins (CRC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certified_radius: Option<f64>,
    /// Per target solved by BM-r: its proven bound, primal value, certified gap, infeasibility,
    /// rank path and iterations (BM methods only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bm: Option<Vec<bm::BmTarget>>,
}

/// Lower bounds on phi\[c\] for the requested targets, in the order requested.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BoundReport {
    /// (target, lower bound on phi\[target\]).
    pub bounds: Vec<(usize, f64)>,
    /// What the run cost.
    pub stats: Stats,
    /// An input of the set where some target's margin is <= 0, when the method found one (branch
    /// and bound); [`crate::certify::certify`] checks it by a forward pass before reporting it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterexample: Option<crate::certify::Counterexample>,
}

/// A method that proves lower bounds on the margin over an input set.
///
/// Implementations must return, for every target c, a value `b` with
/// `b <= f(x)[label] - f(x)[c]` for **every** x in `set`, whatever their inner solvers did
/// (DESIGN.md, soundness rules). A method that cannot say anything returns `-inf`, not an error.
pub trait Verifier: Send + Sync {
    /// The name used on the command line (`--method NAME`).
    fn name(&self) -> &'static str;

    /// Lower bounds on phi\[c\] for each c in `targets` (classes other than `label`).
    fn lower_bounds(&self, network: &Network, set: &InputSet, label: usize, targets: &[usize]) -> Result<BoundReport>;

    /// The evidence behind this method's bounds for a certificate ([`crate::certificate`]), for
    /// the targets `report` (this method's [`crate::certify::certify`] report on the same query)
    /// has bounds for, taken from the report or recomputed; None for methods that do not write
    /// certificates (the default).
    fn evidence(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        report: &crate::certify::ImageReport,
    ) -> Result<Option<crate::certificate::Evidence>> {
        let _ = (network, set, label, report);
        Ok(None)
    }
}

/// The set has the network's input size and a finite center.
pub(crate) fn check_set(net: &Network, set: &InputSet) -> Result<()> {
    if set.dim() != net.input_size() {
        return Err(Error::InputSize { expected: net.input_size(), got: set.dim() });
    }
    net.check_input(set.center())
}

/// The checks every verifier makes before any work: the set has the network's input size, its
/// center is finite, and the label and targets are classes of the network.
pub(crate) fn check_query(net: &Network, set: &InputSet, label: usize, targets: &[usize]) -> Result<()> {
    check_set(net, set)?;
    net.check_label(label)?;
    targets.iter().try_for_each(|&t| net.check_label(t))
}

/// The certificate evidence of [`per_target_report`]'s CROWN part for `targets`: alpha-CROWN's
/// slopes (50 steps, as the report's bounds) on the intervals of `source` as a slope certificate
/// can prove them (CROWN ∩ IBP's; alpha-CROWN's per neuron for the other sources, whose LP-Full
/// intervals it cannot always reach). The SDP verifiers add their multipliers to it.
pub(crate) fn per_target_evidence(
    network: &Network,
    set: &InputSet,
    label: usize,
    targets: &[usize],
    source: sdp::BoundSource,
) -> Result<crate::certificate::Evidence> {
    use bounds::optimized::SlopeSettings;
    let layers = SlopeSettings::default();
    let layers = (source != sdp::BoundSource::CrownIbp).then_some(&layers);
    let margins = SlopeSettings { iterations: 50, ..Default::default() };
    crate::certificate::Evidence::optimized(network, set, label, targets, layers, &margins)
}

/// A report for the verifiers that prove one target at a time on one [`sdp::Relaxation`]
/// (SDP-FO, BM-r): `bound(relaxation, target)` returns the proven bound, if any. CROWN on the
/// relaxation's pre-activation bounds (computed here for all targets at once, with its slopes
/// optimized on ReLU networks: [`bounds::optimized::optimized_margin_bounds`], 50 steps) is sound
/// too, so each reported bound is the better of the two; "CROWN" below means this bound.
///
/// With `verdict_only`, targets CROWN already proves keep CROWN's bound, the others run hardest
/// first (smallest CROWN bound), and once one ends with a bound <= 0 the input's verdict cannot be
/// "robust": the remaining targets get CROWN's bound alone (sound, and cheap) instead of the
/// method's.
///
/// `prebuilt` is a relaxation of `set` computed earlier (e.g. LP-Full's bounds shared with
/// LP-Full itself); otherwise it is built here from `source`.
///
/// The targets run in parallel on rayon's pool, each worker taking the next target in order (so
/// hardest first in verdict mode). In verdict mode a target that has not started when another one
/// ends <= 0 is skipped; those already running finish (their bounds are sound too). Which targets
/// get the method's bound may then depend on timing, the verdict does not: it is "robust" only if
/// every target's bound is > 0.
#[allow(clippy::too_many_arguments)]
pub(crate) fn per_target_report(
    network: &Network,
    set: &InputSet,
    label: usize,
    targets: &[usize],
    source: sdp::BoundSource,
    prebuilt: Option<sdp::Relaxation>,
    verdict_only: bool,
    bound: impl Fn(&sdp::Relaxation, usize) -> Result<(Option<f64>, Option<bm::BmTarget>)> + Sync,
) -> Result<BoundReport> {
    let start = Instant::now();
    check_query(network, set, label, targets)?;
    let rel = match prebuilt {
        Some(rel) => rel,
        None => sdp::Relaxation::new(network, set, source)?,
    };
    let pre = &rel.pre;
    // CROWN's bounds on these pre-activation bounds, raised by optimized slopes where they apply
    // (ReLU networks; the same relaxation, a few milliseconds): the targets they already prove
    // are not re-run, and every target's bound is at least theirs.
    let mut crown = bounds::margin_lower_bounds(network, set, pre, Propagation::Crown, label, targets)?;
    let slopes = bounds::optimized::SlopeSettings { iterations: 50, ..Default::default() };
    if let Ok(alpha) = bounds::optimized::optimized_margin_bounds(network, set, pre, label, targets, &slopes) {
        for (c, a) in crown.iter_mut().zip(alpha) {
            *c = c.max(a);
        }
    }
    let mut order: Vec<usize> = (0..targets.len()).collect();
    if verdict_only {
        order.sort_by(|&a, &b| crown[a].total_cmp(&crown[b]));
    }
    // A positive CROWN bound already settles the target's verdict.
    order.retain(|&k| !(verdict_only && crown[k] > 0.0));
    let mut out: Vec<(usize, f64)> = targets.iter().copied().zip(crown.iter().copied()).collect();
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    type Found = Result<(Option<f64>, Option<bm::BmTarget>)>;
    let results: Mutex<Vec<(usize, Found)>> = Mutex::new(Vec::new());
    let worker = || {
        loop {
            let i = next.fetch_add(1, Ordering::SeqCst);
            if i >= order.len() || (verdict_only && failed.load(Ordering::SeqCst)) {
                break;
            }
            let k = order[i];
            let r = bound(&rel, targets[k]);
            let settled_bad = r.as_ref().map_or(true, |b| b.0.unwrap_or(f64::NEG_INFINITY).max(crown[k]) <= 0.0);
            if settled_bad {
                failed.store(true, Ordering::SeqCst);
            }
            results.lock().unwrap_or_else(|e| e.into_inner()).push((k, r));
        }
    };
    let workers = rayon::current_num_threads().min(order.len());
    if workers <= 1 {
        worker();
    } else {
        rayon::scope(|s| {
            for _ in 0..workers {
                s.spawn(|_| worker());
            }
        });
    }
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|(k, _)| *k);
    let mut bm_stats = Vec::new();
    for (k, r) in results {
        let (b, stats) = r?;
        out[k].1 = b.unwrap_or(f64::NEG_INFINITY).max(crown[k]);
        bm_stats.extend(stats);
    }
    Ok(BoundReport {
        bounds: out,
        stats: Stats {
            seconds: start.elapsed().as_secs_f64(),
            unstable_neurons: Some(pre.unstable_neurons()),
            lp: None,
            certified_radius: None,
            bm: (!bm_stats.is_empty()).then_some(bm_stats),
        },
        counterexample: None,
    })
}

fn propagate(
    method: Propagation,
    network: &Network,
    set: &InputSet,
    label: usize,
    targets: &[usize],
) -> Result<BoundReport> {
    let start = Instant::now();
    check_query(network, set, label, targets)?;
    // The margins need backward passes only for the neurons interval arithmetic leaves unstable.
    let pre = match method {
        Propagation::Ibp => bounds::pre_activation_bounds(network, set, method)?,
        Propagation::FastLin => bounds::linear::unstable_layer_bounds(network, set, bounds::linear::Slope::FastLin),
        Propagation::Crown => bounds::linear::unstable_layer_bounds(network, set, bounds::linear::Slope::Adaptive),
    };
    let lbs = bounds::margin_lower_bounds(network, set, &pre, method, label, targets)?;
    Ok(propagation_report(targets, lbs, &pre, start))
}

/// The report of a propagation method: its margin bounds, and the time since `start`.
fn propagation_report(
    targets: &[usize],
    lbs: Vec<f64>,
    pre: &bounds::PreActivationBounds,
    start: Instant,
) -> BoundReport {
    BoundReport {
        bounds: targets.iter().copied().zip(lbs).collect(),
        stats: Stats {
            seconds: start.elapsed().as_secs_f64(),
            unstable_neurons: Some(pre.unstable_neurons()),
            lp: None,
            certified_radius: None,
            bm: None,
        },
        counterexample: None,
    }
}

macro_rules! propagation_verifier {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $method:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct $ty;

        impl Verifier for $ty {
            fn name(&self) -> &'static str {
                $name
            }
            fn lower_bounds(
                &self,
                network: &Network,
                set: &InputSet,
                label: usize,
                targets: &[usize],
            ) -> Result<BoundReport> {
                propagate($method, network, set, label, targets)
            }
            /// Its lines on its own intervals (IBP: interval arithmetic alone); the certificate's
            /// bound is never below the method's (the checker minimizes every neuron exactly and
            /// also tries interval arithmetic).
            fn evidence(
                &self,
                network: &Network,
                set: &InputSet,
                _label: usize,
                report: &crate::certify::ImageReport,
            ) -> Result<Option<crate::certificate::Evidence>> {
                crate::certificate::Evidence::propagation(network, set, &report.bounded_targets(), $method).map(Some)
            }
        }
    };
}

propagation_verifier!(
    /// Interval bound propagation, with the margin folded into the last layer.
    Ibp,
    "ibp",
    Propagation::Ibp
);
propagation_verifier!(
    /// Fast-Lin: backward linear relaxation with lower slope u/(u-l) at every layer; equal to the
    /// Wong-Kolter dual network bound.
    FastLin,
    "fastlin",
    Propagation::FastLin
);
propagation_verifier!(
    /// CROWN-Ada: backward linear relaxation with the adaptive lower slope, every layer's
    /// pre-activation bounds from their own backward pass (auto_LiRPA's method "CROWN").
    Crown,
    "crown",
    Propagation::Crown
);

/// alpha-CROWN: every hidden layer's pre-activation bounds and every margin bound from the
/// backward relaxation with the ReLU slopes optimized per bound ([`bounds::optimized`]). Close to
/// LP-Full's bounds without an LP solver (LP-Full can be a little tighter on the margins: its LP
/// also uses the last hidden layer's intervals as constraints).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AlphaCrown {
    /// The slope ascent's settings (for the pre-activation bounds and the margins).
    pub settings: bounds::optimized::SlopeSettings,
}

impl Verifier for AlphaCrown {
    fn name(&self) -> &'static str {
        "alpha-crown"
    }
    fn lower_bounds(&self, network: &Network, set: &InputSet, label: usize, targets: &[usize]) -> Result<BoundReport> {
        let start = Instant::now();
        check_query(network, set, label, targets)?;
        let pre = bounds::optimized::optimized_bounds(network, set, &self.settings)?;
        let lbs = bounds::optimized::optimized_margin_bounds(network, set, &pre, label, targets, &self.settings)?;
        Ok(propagation_report(targets, lbs, &pre, start))
    }

    /// The optimized slopes of every interval end and every target (recomputed: the ascent is
    /// deterministic, so they are the slopes of the reported bounds).
    fn evidence(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        report: &crate::certify::ImageReport,
    ) -> Result<Option<crate::certificate::Evidence>> {
        let targets = report.bounded_targets();
        let s = &self.settings;
        crate::certificate::Evidence::optimized(network, set, label, &targets, Some(s), s).map(Some)
    }
}

/// The names accepted by [`by_name`].
pub const METHODS: &[&str] = &[
    "ibp",
    "fastlin",
    "crown",
    "alpha-crown",
    "lp",
    "lp-full",
    "exact",
    "sdp",
    "bm",
    "bm-full",
    "bm-full-lp",
    "crc",
    "bab",
];

/// The methods whose bounds come with a certificate ([`Verifier::evidence`],
/// [`crate::certificate`]); every method's counterexamples do.
pub const CERTIFICATE_METHODS: &[&str] =
    &["ibp", "fastlin", "crown", "alpha-crown", "lp", "lp-full", "sdp", "bm", "bm-full", "bm-full-lp", "bab", "crc"];

/// The verifier with the given command-line name, configured to compute every target's tightest
/// bound: the iterative methods (`sdp`, `bm`, `bm-full`) neither stop at the first positive bound
/// nor skip the targets after a failed one, as they do by default when only the verdict matters.
pub fn by_name_all_targets(name: &str) -> Result<Box<dyn Verifier>> {
    match name {
        "sdp" | "sdp-fo" => Ok(Box::new(sdp_fo::SdpFo { stop_when_positive: false, ..Default::default() })),
        "bm" => Ok(Box::new(bm::Bm { stop_when_positive: false, ..Default::default() })),
        "bm-full" => Ok(Box::new(bm::Bm { stop_when_positive: false, ..bm::Bm::full() })),
        "bm-full-lp" => Ok(Box::new(bm::Bm { stop_when_positive: false, ..bm::Bm::full_lp() })),
        _ => by_name(name),
    }
}

/// The verifier with the given command-line name.
pub fn by_name(name: &str) -> Result<Box<dyn Verifier>> {
    match name {
        "ibp" => Ok(Box::new(Ibp)),
        "fastlin" | "fast-lin" | "wong-kolter" => Ok(Box::new(FastLin)),
        "crown" => Ok(Box::new(Crown)),
        "alpha-crown" => Ok(Box::new(AlphaCrown::default())),
        "lp" | "lp-last" => Ok(Box::new(lp::Lp::default())),
        "lp-full" | "lp-all" => Ok(Box::new(lp::LpFull::default())),
        "exact" => Ok(Box::new(exact::Exact::default())),
        "sdp" | "sdp-fo" => Ok(Box::new(sdp_fo::SdpFo::default())),
        "bm" => Ok(Box::new(bm::Bm::default())),
        "bm-full" => Ok(Box::new(bm::Bm::full())),
        "bm-full-lp" => Ok(Box::new(bm::Bm::full_lp())),
        "crc" => Ok(Box::new(crc::Crc::default())),
        "bab" => Ok(Box::new(bab::Bab::default())),
        _ => Err(Error::InvalidArgument(format!("unknown method '{name}' (available: {}, pgd)", METHODS.join(", ")))),
    }
}
