//! The checker: every number of a certificate recomputed from the model, the input set and the
//! multipliers ([`check`]).

use serde::{Deserialize, Serialize};

use super::lagrangian::{self, Choice, Plain};
use super::{
    Certificate, FORMAT, LayerMultipliers, Lines, Multipliers, TargetEvidence, TargetProof, VERSION, curvature, digest,
    tree,
};
use crate::bounds::{Interval, PreActivationBounds};
use crate::certify::Verdict;
use crate::error::{Error, Result};
use crate::network::{Activation, Network};
use crate::spec::{InputSet, Norm};

/// What [`check`] re-proved.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checked {
    /// The verdict the re-proven numbers support.
    pub verdict: Verdict,
    /// Hidden-layer intervals re-proven (neurons, both ends).
    pub neurons: usize,
    /// (target, re-proven lower bound), in the certificate's order.
    pub bounds: Vec<(usize, f64)>,
    /// The margin at the counterexample (an upper bound on the float evaluation's margin), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub counterexample_margin: Option<f64>,
}

fn reject(why: impl Into<String>) -> Error {
    Error::Rejected(why.into())
}

/// Re-verifies `cert` against `net`: the digest, the input set, every interval and bound from the
/// multipliers (recomputed here, never read), the counterexample by a forward pass with its
/// rounding bound, and the claimed verdict. Returns what was re-proven, or
/// [`Error::Rejected`] with the reason.
pub fn check(net: &Network, cert: &Certificate) -> Result<Checked> {
    if cert.format != FORMAT || cert.version != VERSION {
        return Err(reject(format!(
            "format '{}' version {} (this checker reads '{FORMAT}' version {VERSION})",
            cert.format, cert.version
        )));
    }
    let d = digest(net);
    if cert.model.digest != d {
        return Err(reject(format!("made for the model {}, this model is {d}", cert.model.digest)));
    }
    let set = cert.input_set.to_set().map_err(|e| reject(format!("input set: {e}")))?;
    crate::verify::check_query(net, &set, cert.label, &[]).map_err(|e| reject(e.to_string()))?;
    let mut checked =
        Checked { verdict: Verdict::Unknown, neurons: 0, bounds: Vec::new(), counterexample_margin: None };
    if let Some(c) = &cert.counterexample {
        net.check_label(c.target).map_err(|e| reject(format!("counterexample: {e}")))?;
        if c.target == cert.label {
            return Err(reject("the counterexample's target is the label"));
        }
        if !surely_inside(&set, &c.input) {
            return Err(reject("the counterexample is not certainly inside the input set"));
        }
        if !net.surely_loses(&c.input, cert.label, c.target).map_err(|e| reject(e.to_string()))? {
            return Err(reject("at the counterexample the label does not certainly lose"));
        }
        checked.counterexample_margin = Some(net.margin(&c.input, cert.label, c.target)?);
        checked.verdict = Verdict::NotRobust;
    }
    if !cert.targets.is_empty() || !cert.layers.is_empty() {
        let (intervals, bounds) = reprove(net, &set, cert)?;
        for (k, (layer, (lo, hi))) in cert.layers.iter().zip(&intervals).enumerate() {
            if layer.lower.len() != lo.len() {
                return Err(reject(format!(
                    "hidden layer {k}: {} claimed intervals for {} neurons",
                    layer.lower.len(),
                    lo.len()
                )));
            }
            for n in 0..lo.len() {
                let (l, u) = (layer.lower[n], layer.upper[n]);
                if l.is_nan() || u.is_nan() || l > lo[n] || u < hi[n] {
                    return Err(reject(format!(
                        "hidden layer {k}, neuron {n}: the claimed interval [{}, {}] is not re-proven (re-proven [{}, {}])",
                        layer.lower[n], layer.upper[n], lo[n], hi[n]
                    )));
                }
            }
            checked.neurons += lo.len();
        }
        for (t, b) in cert.targets.iter().zip(bounds) {
            if t.bound.is_nan() || t.bound > b {
                return Err(reject(format!(
                    "target {}: the claimed bound {} is not re-proven (re-proven {b})",
                    t.target, t.bound
                )));
            }
            checked.bounds.push((t.target, b));
        }
        if checked.verdict != Verdict::NotRobust {
            let proven: Vec<TargetProof> = checked
                .bounds
                .iter()
                .map(|&(target, bound)| TargetProof { target, bound, proofs: Vec::new() })
                .collect();
            checked.verdict = verdict_of(net, cert.label, &proven);
        }
    }
    match (cert.verdict, checked.verdict) {
        (Verdict::Robust, Verdict::Robust) | (Verdict::NotRobust, Verdict::NotRobust) | (Verdict::Unknown, _) => {}
        (Verdict::Robust, Verdict::NotRobust) => return Err(reject("claims robust and holds a counterexample")),
        (claim, _) => {
            return Err(reject(format!("claims {} but re-proves {}", claim.name(), checked.verdict.name())));
        }
    }
    Ok(checked)
}

/// Robust when every class other than the label has a bound > 0.
pub(super) fn verdict_of(net: &Network, label: usize, targets: &[TargetProof]) -> Verdict {
    let all =
        (0..net.num_classes()).filter(|&c| c != label).all(|c| targets.iter().any(|t| t.target == c && t.bound > 0.0));
    if all { Verdict::Robust } else { Verdict::Unknown }
}

/// x lies in the real set X, with the rounding of the distance's computation accounted for.
pub(super) fn surely_inside(set: &InputSet, x: &[f64]) -> bool {
    use crate::bounds::rounding::{UNIT_ROUNDOFF, gamma};
    if x.len() != set.dim() || x.iter().any(|v| !v.is_finite()) {
        return false;
    }
    if let Some(d) = set.domain()
        && x.iter().zip(d.lo().iter().zip(d.hi())).any(|(v, (l, h))| v < l || v > h)
    {
        return false;
    }
    let eps = set.eps();
    let diffs = x.iter().zip(set.center()).map(|(a, b)| a - b);
    match set.norm() {
        // |fl(x - c)| is within u of |x - c|.
        Norm::Linf => diffs.map(|d| d.abs() * (1.0 + 2.0 * UNIT_ROUNDOFF)).all(|d| d <= eps),
        Norm::L2 => {
            let s: f64 = diffs.map(|d| d * d).sum();
            s * (1.0 + gamma(set.dim() + 4)) <= eps * eps * (1.0 - 4.0 * UNIT_ROUNDOFF)
        }
    }
}

/// The intervals and target bounds the certificate's evidence proves (not compared with its
/// claims). Errors when the evidence does not fit the network.
/// (lower, upper) ends per hidden layer.
pub(crate) type Intervals = Vec<(Vec<f64>, Vec<f64>)>;

pub(super) fn reprove(net: &Network, set: &InputSet, cert: &Certificate) -> Result<(Intervals, Vec<f64>)> {
    let layers = net.layers();
    let hidden = layers.len() - 1;
    if let Some(l) =
        layers[..hidden].iter().find(|l| !matches!(l.activation(), Activation::Relu | Activation::Identity))
    {
        if cert.layers.is_empty() {
            return Ok((Vec::new(), curvature_bounds(net, set, cert)?));
        }
        return Err(reject(format!(
            "intervals need ReLU hidden layers, this network has {:?} (its certificates are CRC's)",
            l.activation()
        )));
    }
    if layers[hidden].activation() != Activation::Identity {
        return Err(reject("the output layer has an activation: margins are bounded on linear outputs"));
    }
    if cert.layers.len() != hidden {
        return Err(reject(format!("{} hidden layers in the certificate, {hidden} in the model", cert.layers.len())));
    }
    let plain = Plain::new(net);
    let mut intervals: Intervals = Vec::with_capacity(hidden);
    for (k, layer) in cert.layers.iter().enumerate() {
        let n = layers[k].output_size();
        if layer.lower.len() != n && !layer.lower.is_empty() || layer.upper.len() != layer.lower.len() {
            return Err(reject(format!("hidden layer {k}: intervals of the wrong length (the layer has {n} neurons)")));
        }
        if let LayerMultipliers::PerNeuron { lower, upper } = &layer.multipliers
            && (lower.len() != n || upper.len() != n)
        {
            return Err(reject(format!(
                "hidden layer {k}: multipliers for {} / {} neurons, not {n}",
                lower.len(),
                upper.len()
            )));
        }
        let iv = lagrangian::layer_interval(&plain, set, &intervals, k, |neuron, sign| {
            let list = match &layer.multipliers {
                LayerMultipliers::All(list) => list,
                LayerMultipliers::PerNeuron { lower, upper } => {
                    if sign > 0.0 {
                        &lower[neuron]
                    } else {
                        &upper[neuron]
                    }
                }
            };
            list.iter().map(|m| choice(&cert.relaxations, m)).collect()
        });
        intervals.push(iv);
    }
    let mut pre: Option<PreActivationBounds> = None;
    let mut bounds = Vec::with_capacity(cert.targets.len());
    for (t, top) in cert.targets.iter().zip(margin_objectives(net, cert)?) {
        let mut best = lagrangian::bound(&plain, set, &intervals, hidden, &top, Choice::Zero);
        for proof in &t.proofs {
            let b = match proof {
                TargetEvidence::Linear(m) => {
                    lagrangian::bound(&plain, set, &intervals, hidden, &top, choice(&cert.relaxations, m))
                }
                TargetEvidence::Sdp(m) => {
                    let pre = pre.get_or_insert_with(|| {
                        // The relaxation's shape has the output layer too (CROWN's bounds on it).
                        let out = lagrangian::layer_interval(&plain, set, &intervals, hidden, |_, _| Vec::new());
                        let all = intervals.iter().chain(std::iter::once(&out));
                        PreActivationBounds {
                            layers: all.map(|(l, u)| Interval { lower: l.clone(), upper: u.clone() }).collect(),
                        }
                    });
                    sdp_bound(net, set, pre, cert.label, t.target, m)
                        .map_err(|e| reject(format!("target {}: SDP multipliers: {e}", t.target)))?
                }
                TargetEvidence::Tree(leaves) => tree::bound(&plain, set, &intervals, &top, &cert.relaxations, leaves),
                TargetEvidence::Curvature { .. } => {
                    return Err(reject("curvature evidence is for networks with smooth activations"));
                }
            };
            best = best.max(b);
        }
        bounds.push(best);
    }
    Ok((intervals, bounds))
}

/// The margin e_label - e_target on the outputs for each of the certificate's targets; a
/// rejection for a target that is not a class other than the label, or repeats one.
fn margin_objectives(net: &Network, cert: &Certificate) -> Result<Vec<Vec<f64>>> {
    let classes = net.num_classes();
    let mut seen = vec![false; classes];
    cert.targets
        .iter()
        .map(|t| {
            if t.target >= classes || t.target == cert.label || seen[t.target] {
                return Err(reject(format!("target {}: not a class other than the label, or repeated", t.target)));
            }
            seen[t.target] = true;
            let mut c = vec![0.0; classes];
            c[cert.label] = 1.0;
            c[t.target] = -1.0;
            Ok(c)
        })
        .collect()
}

/// The multipliers as the Lagrangian takes them (an unknown relaxation index: no lines, so the
/// bound is -inf).
pub(crate) fn choice<'a>(relaxations: &'a [Lines], m: &'a Multipliers) -> Choice<'a> {
    const NONE: &[Vec<f64>] = &[];
    match m {
        Multipliers::Relaxation(i) => match relaxations.get(*i) {
            Some(r) => Choice::Lines { lower: &r.lower, upper: &r.upper },
            None => Choice::Lines { lower: NONE, upper: NONE },
        },
        Multipliers::Slopes { relaxation, lower } => match relaxations.get(*relaxation) {
            Some(r) => Choice::Lines { lower, upper: &r.upper },
            None => Choice::Lines { lower: NONE, upper: NONE },
        },
        Multipliers::Vectors(v) => Choice::Vectors(v),
    }
}

/// The target bounds of a network with smooth activations: CRC's Taylor bound at the center and
/// its dual bound at each piece of curvature evidence, on the l2 ball containing X.
fn curvature_bounds(net: &Network, set: &InputSet, cert: &Certificate) -> Result<Vec<f64>> {
    let rho = match set.norm() {
        Norm::L2 => set.eps(),
        // The l_inf ball lies in the l2 ball of radius eps sqrt(n).
        Norm::Linf => {
            let r = set.eps() * (set.dim() as f64).sqrt();
            r * (1.0 + 4.0 * crate::bounds::rounding::UNIT_ROUNDOFF)
        }
    };
    let mut out = Vec::with_capacity(cert.targets.len());
    for (t, c) in cert.targets.iter().zip(margin_objectives(net, cert)?) {
        let m = crate::verify::crc::curvature_bounds(net, cert.label, t.target)
            .map_err(|e| reject(format!("target {}: curvature bounds: {e}", t.target)))?
            .lower;
        let mut best = curvature::taylor_bound(net, set.center(), &c, rho, m);
        for proof in &t.proofs {
            match proof {
                TargetEvidence::Curvature { eta, point } => {
                    best = best.max(curvature::dual_bound(net, set.center(), &c, rho, m, *eta, point));
                }
                _ => return Err(reject("only curvature evidence applies to networks with smooth activations")),
            }
        }
        out.push(best);
    }
    Ok(out)
}

/// Proposition 3.1's bound at the multipliers, on the boxes and cuts of `pre` and the R^2 it
/// proves (-inf when the slack matrix is not proven PSD at any shift).
fn sdp_bound(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    label: usize,
    target: usize,
    m: &crate::verify::sdp::Multipliers,
) -> Result<f64> {
    use crate::verify::sdp::{HiddenBoxes, certified_bound, lagrangian_matrix, proven_r2};
    let boxes = HiddenBoxes::new(net, pre)?;
    let r2 = proven_r2(net, set, pre);
    let (matrix, err) = lagrangian_matrix(net, set, &boxes, label, target, m)?;
    Ok(certified_bound(matrix.as_ref(), r2, err).map_or(f64::NEG_INFINITY, |b| b.bound))
}
