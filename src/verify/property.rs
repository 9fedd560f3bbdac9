//! Checking a VNN-LIB [`Property`] on a network: `sat` with a counterexample found by an attack
//! and confirmed by a forward pass, `unsat` when every disjunct of the violation region has a
//! constraint that the bounds prove impossible on the input box, `unknown` otherwise.
//!
//! A disjunct (a conjunction of c^T y + d <= 0) is impossible when for one of its constraints the
//! lower bound of c^T f(x) + d over the box is > 0 (>= 0 for a strict one). The bounds come from
//! IBP, CROWN (the backward linear relaxation, any activation), alpha-CROWN (ReLU), or from the
//! triangle LP on CROWN's pre-activation bounds (`lp`) or on LP-Full's (`lp-full`). Complete
//! answers (branch and bound) come from [`crate::verify::bab::check_property_bab`].

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::bounds::lp::LpSettings;
use crate::bounds::{self, linear};
use crate::error::{Error, Result};
use crate::io::vnnlib::{OutputConstraint, Property, Region};
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
    /// Neither could be shown before the time limit (branch and bound).
    Timeout,
}

impl PropertyResult {
    /// The VNN-COMP result file text: `unsat`, `unknown`, or `sat` followed by the assignment
    /// `((X_0 v) ... (Y_0 v) ...)`.
    pub fn to_vnncomp(&self) -> String {
        match self {
            PropertyResult::Unsat => "unsat\n".into(),
            PropertyResult::Unknown => "unknown\n".into(),
            PropertyResult::Timeout => "timeout\n".into(),
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
    /// Interval bound propagation.
    Ibp,
    /// CROWN.
    Crown,
    /// CROWN with the ReLU slopes optimized for every intermediate bound and every constraint
    /// (ReLU networks).
    AlphaCrown,
    /// The triangle LP on CROWN's pre-activation bounds (ReLU networks: the convex hull).
    Lp,
    /// The triangle LP on LP-Full's pre-activation bounds.
    LpFull,
    /// BM-Full (the SDP relaxation of the BM-r paper, Proposition 3.1, solved by BM-r with
    /// optimized-slope pre-activation bounds) on each constraint, as the margin of the network
    /// whose last layer is the constraint ([`super::bab::sdp::objective_network`]; ReLU networks).
    BmFull,
}

/// Checks `prop` on `net` over the property's input boxes intersected with `domain` (e.g. the
/// input box of a `.nnet` file, on which its folded network is exact): `unsat` when every region
/// is proven, `sat` as soon as one has a confirmed counterexample.
pub fn check_property(
    net: &Network,
    prop: &Property,
    domain: Option<&Domain>,
    method: PropertyMethod,
    attack_steps: usize,
) -> Result<PropertyResult> {
    let mut all_unsat = true;
    for region in &prop.regions {
        match check_region(net, prop.outputs, region, domain, method, attack_steps)? {
            sat @ PropertyResult::Sat { .. } => return Ok(sat),
            PropertyResult::Unknown | PropertyResult::Timeout => all_unsat = false,
            PropertyResult::Unsat => {}
        }
    }
    Ok(if all_unsat { PropertyResult::Unsat } else { PropertyResult::Unknown })
}

/// An error unless the property's inputs and outputs match the network's.
pub(crate) fn check_shapes(net: &Network, prop: &Property) -> Result<()> {
    let n = net.input_size();
    if prop.inputs() != n || prop.outputs != net.num_classes() {
        return Err(Error::InvalidArgument(format!(
            "the property has {} inputs and {} outputs, the network {n} and {}",
            prop.inputs(),
            prop.outputs,
            net.num_classes()
        )));
    }
    Ok(())
}

/// The box of `region` intersected with `domain`, as an l_inf [`InputSet`] (center the box's
/// midpoint, the box itself as the set's domain); `None` when the two do not meet (no valid
/// input, nothing can violate).
pub(crate) fn region_set(net: &Network, region: &Region, domain: Option<&Domain>) -> Result<Option<InputSet>> {
    let n = net.input_size();
    if region.input_lo.len() != n {
        return Err(Error::InvalidArgument(format!(
            "the property has {} inputs, the network {n}",
            region.input_lo.len()
        )));
    }
    let (mut lo, mut hi) = (region.input_lo.clone(), region.input_hi.clone());
    if let Some(d) = domain {
        if d.lo().len() != n {
            return Err(Error::InvalidArgument("the domain does not match the network's input size".into()));
        }
        for i in 0..n {
            lo[i] = lo[i].max(d.lo()[i]);
            hi[i] = hi[i].min(d.hi()[i]);
            if lo[i] > hi[i] {
                return Ok(None);
            }
        }
    }
    Ok(Some(box_set(lo, hi)?))
}

/// The box lo <= x <= hi as an l_inf [`InputSet`]: center the midpoint, radius the largest half
/// width (raised by a relative 1e-12 so that the ball covers the box despite rounding), the box
/// itself as the domain, so that the set is exactly the box.
pub(crate) fn box_set(lo: Vec<f64>, hi: Vec<f64>) -> Result<InputSet> {
    // The midpoint, clamped into the box: lo + (hi - lo) / 2 can round outside on extreme values.
    let center: Vec<f64> = lo.iter().zip(&hi).map(|(a, b)| (a + 0.5 * (b - a)).clamp(*a, *b)).collect();
    let eps = lo.iter().zip(&hi).map(|(a, b)| 0.5 * (b - a)).fold(0.0, f64::max) * (1.0 + 1e-12);
    InputSet::new(center, eps, Norm::Linf, Some(Domain::new(lo, hi)?))
}

/// [`check_property`] on one region.
fn check_region(
    net: &Network,
    outputs: usize,
    region: &Region,
    domain: Option<&Domain>,
    method: PropertyMethod,
    attack_steps: usize,
) -> Result<PropertyResult> {
    if outputs != net.num_classes() {
        return Err(Error::InvalidArgument(format!(
            "the property has {outputs} outputs, the network {}",
            net.num_classes()
        )));
    }
    let Some(set) = region_set(net, region, domain)? else {
        return Ok(PropertyResult::Unsat);
    };
    let (lo, hi) = (set.domain().expect("a box").lo().to_vec(), set.domain().expect("a box").hi().to_vec());
    // The attack first: a confirmed counterexample settles the answer.
    if let Some(x) = attack(net, &region.disjuncts, &lo, &hi, attack_steps)? {
        let output = net.forward(&x)?;
        return Ok(PropertyResult::Sat { input: x, output });
    }
    // Bounds on every constraint of every disjunct at once.
    let constraints: Vec<&crate::io::vnnlib::OutputConstraint> = region.disjuncts.iter().flatten().collect();
    if constraints.is_empty() {
        return Ok(PropertyResult::Unknown);
    }
    let lam = faer::Mat::from_fn(outputs, constraints.len(), |j, s| constraints[s].coeffs[j]);
    let lower = match method {
        PropertyMethod::Ibp => {
            let pre = bounds::interval::ibp(net, &set);
            bounds::interval::spec_lower_bounds(net, &set, &pre, lam.as_ref())
        }
        PropertyMethod::Crown => {
            let pre = bounds::crown_and_ibp(net, &set)?;
            linear::spec_lower_bounds(net, &set, &pre, lam.as_ref(), linear::Slope::Adaptive)
        }
        PropertyMethod::AlphaCrown => {
            let settings = bounds::optimized::SlopeSettings::default();
            let pre = bounds::optimized::optimized_bounds(net, &set, &settings)?;
            bounds::optimized::optimized_spec_bounds(net, &set, &pre, lam.as_ref(), &settings)?
        }
        PropertyMethod::Lp | PropertyMethod::LpFull => {
            let pre = if method == PropertyMethod::LpFull {
                super::lp::lp_full_bounds(net, &set, &LpSettings::default())?.0
            } else {
                bounds::crown_and_ibp(net, &set)?
            };
            let mut lower = linear::spec_lower_bounds(net, &set, &pre, lam.as_ref(), linear::Slope::Adaptive);
            let (lp, _) = super::lp::spec_lp_bounds(net, &set, &pre, lam.as_ref(), &LpSettings::default());
            lower.iter_mut().zip(lp).for_each(|(a, b)| *a = a.max(b));
            lower
        }
        PropertyMethod::BmFull => {
            let bm = super::bm::Bm::full();
            // The last layer's input magnitudes on the set (IBP), for the folding's rounding.
            let x_mag = crate::bounds::rounding::last_input_magnitude(net, &set, None);
            let mut lower = Vec::with_capacity(constraints.len());
            for c in &constraints {
                // The bound on c^T f(x) alone (the constant is added below).
                let zero = crate::io::vnnlib::OutputConstraint { constant: 0.0, ..(*c).clone() };
                let objective = super::bab::sdp::objective_network(net, &zero)?;
                let b = super::Verifier::lower_bounds(&bm, &objective, &set, 0, &[1])?.bounds[0].1;
                let e = super::bab::sdp::folding_error(net, &zero, &x_mag);
                lower.push(crate::bounds::rounding::lower(b, e));
            }
            lower
        }
    };
    let mut k = 0;
    for d in &region.disjuncts {
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
/// starts of PGD ([`crate::attack::pgd()`]: the center, the box's upper and lower corners and random
/// points); returns an input whose forward pass violates the property.
pub(crate) fn attack(
    net: &Network,
    disjuncts: &[Vec<OutputConstraint>],
    lo: &[f64],
    hi: &[f64],
    steps: usize,
) -> Result<Option<Vec<f64>>> {
    let mut rng = StdRng::seed_from_u64(0);
    let set = box_set(lo.to_vec(), hi.to_vec())?;
    for d in disjuncts {
        if d.is_empty() {
            return Ok(Some(set.center().to_vec()));
        }
        // PGD's starts over the box: the center, a random point, the upper and lower corners, a
        // random point.
        for restart in 0..5 {
            let x = crate::attack::start_point(&set, restart, &mut rng);
            if let Some(x) = descend(net, d, lo, hi, x, steps, 0.25)? {
                return Ok(Some(x));
            }
        }
    }
    Ok(None)
}

/// Sign-gradient descent on the most violated constraint of the conjunction `d` over the box
/// lo <= x <= hi from `x`, with a step of `step` times the box's width decaying linearly; returns
/// the first point (in the box) whose forward pass satisfies every constraint of `d`.
pub(crate) fn descend(
    net: &Network,
    d: &[OutputConstraint],
    lo: &[f64],
    hi: &[f64],
    mut x: Vec<f64>,
    steps: usize,
    step: f64,
) -> Result<Option<Vec<f64>>> {
    for (i, v) in x.iter_mut().enumerate() {
        *v = v.clamp(lo[i], hi[i]);
    }
    for k in 0..=steps {
        let y = net.forward(&x)?;
        if d.iter().all(|c| c.holds(&y)) {
            // Confirmed for the real-number network, beyond the forward pass's rounding.
            let (y, e) = net.forward_with_error(&x)?;
            if d.iter().all(|c| c.surely_holds(&y, &e)) {
                return Ok(Some(x));
            }
        }
        if k == steps || d.is_empty() {
            break;
        }
        // The most violated constraint of this disjunct.
        let (worst, _) = d
            .iter()
            .map(|c| c.value(&y))
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |best, (i, v)| if v > best.1 { (i, v) } else { best });
        let (_, g) = net.spec_gradient(&x, &d[worst].coeffs)?;
        let alpha = step * (1.0 - k as f64 / steps as f64) + 0.01;
        for i in 0..x.len() {
            x[i] = (x[i] - alpha * (hi[i] - lo[i]) * g[i].signum()).clamp(lo[i], hi[i]);
        }
    }
    Ok(None)
}
