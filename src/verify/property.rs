//! Checking a VNN-LIB [`Property`] on a network: `sat` with a counterexample found by an attack
//! and confirmed by a forward pass, `unsat` when every disjunct of the violation region has a
//! constraint that the bounds prove impossible on the input box, `unknown` otherwise.
//!
//! A disjunct (a conjunction of c^T y + d <= 0) is impossible when for one of its constraints the
//! lower bound of c^T f(x) + d over the box is > 0 (>= 0 for a strict one). The bounds come from
//! CROWN (the backward linear relaxation, any activation) or from the triangle LP on CROWN's
//! pre-activation bounds (`lp`) or on LP-Full's (`lp-full`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::bounds::lp::LpSettings;
use crate::bounds::{self, linear};
use crate::error::{Error, Result};
use crate::io::vnnlib::Property;
use crate::network::Network;
use crate::spec::{Domain, InputSet, Norm};

/// The answer for a property, in VNN-COMP's terms.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "lowercase")]
pub enum PropertyResult {
    /// No input in the box violates the property (proven).
    Unsat,
    /// A counterexample: an input in the box whose outputs lie in the violation region.
    Sat {
        /// The input.
        input: Vec<f64>,
        /// The network's outputs at it.
        output: Vec<f64>,
    },
    /// Neither could be shown.
    Unknown,
}

impl PropertyResult {
    /// The VNN-COMP result file text: `unsat`, `unknown`, or `sat` followed by the assignment
    /// `((X_0 v) ... (Y_0 v) ...)`.
    pub fn to_vnncomp(&self) -> String {
        match self {
            PropertyResult::Unsat => "unsat\n".into(),
            PropertyResult::Unknown => "unknown\n".into(),
            PropertyResult::Sat { input, output } => {
                let mut s = String::from("sat\n(");
                let vars = input.iter().enumerate().map(|(i, v)| format!("(X_{i} {v:e})"));
                let outs = output.iter().enumerate().map(|(j, v)| format!("(Y_{j} {v:e})"));
                let all: Vec<String> = vars.chain(outs).collect();
                s.push_str(&all.join("\n "));
                s.push_str(")\n");
                s
            }
        }
    }
}

/// How to bound the outputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PropertyMethod {
    /// CROWN.
    Crown,
    /// The triangle LP on CROWN's pre-activation bounds (ReLU networks: the convex hull).
    Lp,
    /// The triangle LP on LP-Full's pre-activation bounds.
    LpFull,
}

/// Checks `prop` on `net` over the property's input box intersected with `domain` (e.g. the input
/// box of a `.nnet` file, on which its folded network is exact).
pub fn check_property(
    net: &Network,
    prop: &Property,
    domain: Option<&Domain>,
    method: PropertyMethod,
    attack_steps: usize,
) -> Result<PropertyResult> {
    let n = net.input_size();
    if prop.input_lo.len() != n || prop.outputs != net.num_classes() {
        return Err(Error::InvalidArgument(format!(
            "the property has {} inputs and {} outputs, the network {n} and {}",
            prop.input_lo.len(),
            prop.outputs,
            net.num_classes()
        )));
    }
    let (mut lo, mut hi) = (prop.input_lo.clone(), prop.input_hi.clone());
    if let Some(d) = domain {
        if d.lo().len() != n {
            return Err(Error::InvalidArgument("the domain does not match the network's input size".into()));
        }
        for i in 0..n {
            lo[i] = lo[i].max(d.lo()[i]);
            hi[i] = hi[i].min(d.hi()[i]);
            if lo[i] > hi[i] {
                // The box misses the network's domain: no valid input, nothing can violate.
                return Ok(PropertyResult::Unsat);
            }
        }
    }
    let center: Vec<f64> = lo.iter().zip(&hi).map(|(a, b)| 0.5 * (a + b)).collect();
    let eps = lo.iter().zip(&hi).map(|(a, b)| 0.5 * (b - a)).fold(0.0, f64::max) * (1.0 + 1e-12);
    let set = InputSet::new(center.clone(), eps, Norm::Linf, Some(Domain::new(lo.clone(), hi.clone())?))?;
    // The attack first: a confirmed counterexample settles the answer.
    if let Some(x) = attack(net, prop, &lo, &hi, attack_steps)? {
        let output = net.forward(&x)?;
        return Ok(PropertyResult::Sat { input: x, output });
    }
    // Bounds on every constraint of every disjunct at once.
    let constraints: Vec<&crate::io::vnnlib::OutputConstraint> = prop.disjuncts.iter().flatten().collect();
    if constraints.is_empty() {
        return Ok(PropertyResult::Unknown);
    }
    let lam = faer::Mat::from_fn(prop.outputs, constraints.len(), |j, s| constraints[s].coeffs[j]);
    let mut pre = bounds::crown_and_ibp(net, &set)?;
    if method == PropertyMethod::LpFull {
        pre = super::lp::lp_full_bounds(net, &set, &LpSettings::default())?.0;
    }
    let mut lower = linear::spec_lower_bounds(net, &set, &pre, lam.as_ref(), linear::Slope::Adaptive);
    if method != PropertyMethod::Crown {
        let (lp, _) = super::lp::spec_lp_bounds(net, &set, &pre, lam.as_ref(), &LpSettings::default());
        lower.iter_mut().zip(lp).for_each(|(a, b)| *a = a.max(b));
    }
    let mut k = 0;
    for d in &prop.disjuncts {
        let mut impossible = false;
        for c in d {
            let lb = lower[k] + c.constant;
            impossible |= if c.strict { lb >= 0.0 } else { lb > 0.0 };
            k += 1;
        }
        if !impossible {
            return Ok(PropertyResult::Unknown);
        }
    }
    Ok(PropertyResult::Unsat)
}

/// Sign-gradient descent on max_k (c_k^T f(x) + d_k) over the box for each disjunct, from the
/// center and random starts; returns an input whose forward pass violates the property.
fn attack(net: &Network, prop: &Property, lo: &[f64], hi: &[f64], steps: usize) -> Result<Option<Vec<f64>>> {
    let n = lo.len();
    let mut rng = StdRng::seed_from_u64(0);
    for d in &prop.disjuncts {
        if d.is_empty() {
            let x: Vec<f64> = lo.iter().zip(hi).map(|(a, b)| 0.5 * (a + b)).collect();
            return Ok(Some(x));
        }
        for restart in 0..3 {
            let mut x: Vec<f64> =
                (0..n)
                    .map(|i| {
                        if restart == 0 { 0.5 * (lo[i] + hi[i]) } else { lo[i] + rng.random::<f64>() * (hi[i] - lo[i]) }
                    })
                    .collect();
            for step in 0..=steps {
                let y = net.forward(&x)?;
                if prop.violated_by(&y) {
                    return Ok(Some(x));
                }
                if step == steps {
                    break;
                }
                // The most violated constraint of this disjunct.
                let (worst, _) = d
                    .iter()
                    .map(|c| c.coeffs.iter().zip(&y).map(|(a, b)| a * b).sum::<f64>() + c.constant)
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |best, (i, v)| if v > best.1 { (i, v) } else { best });
                let (_, g) = net.spec_gradient(&x, &d[worst].coeffs)?;
                let alpha = 0.25 * (1.0 - step as f64 / steps as f64) + 0.01;
                for i in 0..n {
                    x[i] = (x[i] - alpha * (hi[i] - lo[i]) * g[i].signum()).clamp(lo[i], hi[i]);
                }
            }
        }
    }
    Ok(None)
}
