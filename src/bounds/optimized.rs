//! Pre-activation bounds from the backward relaxation with optimized ReLU slopes ("alpha-CROWN").
//!
//! Salman et al. 2019 (001_b3d5e3f2d36bac59.txt), section 4: for an unstable ReLU with bounds
//! l < 0 < u, every lower line a z with a in \[0, 1\] is valid, and the greedy backward bound of
//! [`super::linear`] (eq. 7-10) is valid for *any* choice, made separately for every
//! specification (every column of lam). Here each neuron bound of a hidden layer gets its own
//! slopes, raised by projected gradient ascent (Adam) on the bound itself. Every iterate is a
//! sound bound, so the best one per neuron is kept and an early stop only loosens it.
//!
//! How tight: the bound as a function of the slopes is concave (a minimum over X of functions
//! affine in the slopes), and its maximum over \[0, 1\] is, by the minimax theorem, the value of
//! min over X of the relaxed network with each unstable ReLU replaced by max(0, z) from below and
//! its chord from above, which is the triangle LP of LP-Full ([`crate::verify::lp`]) whenever the
//! bounds of the relaxed layers are implied by X, as on the first hidden layer (its bounds are
//! the exact support function). So on networks with two hidden layers, the layer whose bounds
//! BM-Full needs, the optimum equals LP-Full's bound; deeper, LP-Full can also use the
//! intermediate intervals as constraints, and can be tighter. The ascent stops after a fixed
//! number of steps, so the bounds come close to LP-Full's rather than reach them (measured in
//! docs/experiments.md); [`crate::verify::sdp::BoundSource::Optimized`] uses them for BM-Full.
//!
//! The gradient needs no automatic differentiation: the derivative of the bound with respect to
//! the slope of neuron i of layer k in column s is lam_{k+1}\[i, s\] z_k\[i\](x*), where x* is the
//! minimizer of the support function at the input ([`InputSet::argmin_linear`]) and z_k(x*) the
//! pre-activation reached by the *relaxed* network (each neuron following the line its column
//! chose) on x*: one forward pass per step, the same cost as the backward pass.

use faer::Mat;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Interval, PreActivationBounds};
use crate::error::{Error, Result};
use crate::linalg;
use crate::network::{Activation, Network};
use crate::spec::InputSet;

/// Settings of the slope ascent.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlopeSettings {
    /// Gradient steps per hidden layer (0: CROWN's slopes, evaluated per neuron).
    pub iterations: usize,
    /// Adam's step size on the slopes (which live in \[0, 1\]).
    pub learning_rate: f64,
    /// Convergence test (0: off, every step runs): a batch of bounds stops once none of them rose
    /// by more than `tolerance * (1 + |bound|)` over the last [`WINDOW`] steps.
    #[serde(default)]
    pub tolerance: f64,
    /// A wall-clock limit (None: none): once it has passed, the ascent stops at its best bound so
    /// far and the layers not reached keep CROWN's bounds (every slope gives a sound bound).
    #[serde(skip)]
    pub deadline: Option<std::time::Instant>,
}

impl SlopeSettings {
    /// Whether [`SlopeSettings::deadline`] has passed.
    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| std::time::Instant::now() >= d)
    }
}

/// Steps over which [`SlopeSettings::tolerance`] measures progress.
pub const WINDOW: usize = 10;

impl Default for SlopeSettings {
    fn default() -> Self {
        Self { iterations: 100, learning_rate: 0.1, tolerance: 0.0, deadline: None }
    }
}

/// CROWN's bounds (intersected with IBP's), then every hidden layer from the second on tightened
/// neuron by neuron with optimized slopes, layer by layer (each layer relaxes the ones before it
/// with their tightened bounds). ReLU hidden layers only.
///
/// ```
/// use nncert::bounds::{crown_and_ibp, optimized::{optimized_bounds, SlopeSettings}};
/// use nncert::{Activation, InputSet, Layer, Network, Norm};
///
/// // 2 inputs, two hidden ReLU layers of 2, 2 outputs.
/// let l1 = Layer::from_rows(&[vec![1.0, -1.0], vec![1.0, 1.0]], vec![0.0, -0.5], Activation::Relu)?;
/// let l2 = Layer::from_rows(&[vec![1.0, -2.0], vec![-1.0, 1.0]], vec![0.1, 0.2], Activation::Relu)?;
/// let out = Layer::from_rows(&[vec![1.0, 0.0], vec![0.0, 1.0]], vec![0.0, 0.0], Activation::Identity)?;
/// let net = Network::new(vec![2], vec![l1, l2, out])?;
/// let set = InputSet::new(vec![0.5, 0.5], 0.5, Norm::L2, None)?;
///
/// let crown = crown_and_ibp(&net, &set)?;
/// let opt = optimized_bounds(&net, &set, &SlopeSettings::default())?;
/// // Never looser than CROWN's; here strictly tighter on the second hidden layer.
/// let (c, o) = (&crown.layers[1], &opt.layers[1]);
/// assert!(o.lower.iter().zip(&c.lower).all(|(o, c)| o >= c));
/// assert!(o.upper.iter().zip(&c.upper).all(|(o, c)| o <= c));
/// let width = |iv: &nncert::bounds::Interval| iv.upper.iter().zip(&iv.lower).map(|(u, l)| u - l).sum::<f64>();
/// assert!(width(o) < width(c) - 1e-3);
/// # Ok::<(), nncert::Error>(())
/// ```
pub fn optimized_bounds(net: &Network, set: &InputSet, settings: &SlopeSettings) -> Result<PreActivationBounds> {
    Ok(bounds_with_slopes(net, set, settings, false)?.0)
}

/// Lower slopes of the ReLUs, per hidden layer from the first (one entry per neuron: 1 for
/// active neurons, 0 for inactive ones).
pub type Slopes = Vec<Vec<f64>>;

/// The slopes behind one neuron's interval: (lower end, upper end), None where the end is
/// CROWN's or IBP's (a stable neuron, or the first hidden layer).
pub type NeuronSlopes = (Option<Slopes>, Option<Slopes>);

/// [`optimized_bounds`] with, per hidden layer and neuron, the slopes that prove each end (for
/// a certificate, [`crate::certificate`]).
pub fn optimized_bounds_traced(
    net: &Network,
    set: &InputSet,
    settings: &SlopeSettings,
) -> Result<(PreActivationBounds, Vec<Vec<NeuronSlopes>>)> {
    bounds_with_slopes(net, set, settings, true)
}

fn bounds_with_slopes(
    net: &Network,
    set: &InputSet,
    settings: &SlopeSettings,
    keep: bool,
) -> Result<(PreActivationBounds, Vec<Vec<NeuronSlopes>>)> {
    check_supported(net, settings)?;
    let layers = net.layers();
    let mut pre = super::crown_and_ibp(net, set)?;
    let hidden = layers.len().saturating_sub(1);
    let mut traced: Vec<Vec<NeuronSlopes>> = (0..hidden).map(|k| vec![(None, None); layers[k].output_size()]).collect();
    for j in 1..hidden {
        if settings.expired() {
            break;
        }
        let (iv, slopes) = tighten_layer_traced(net, set, &pre, j, settings, keep);
        pre.layers[j].intersect(&iv);
        if keep {
            traced[j] = slopes;
        }
    }
    Ok((pre, traced))
}

/// Lower bounds on the margins f(x)\[label\] - f(x)\[t\] for each t in `targets`, from the backward
/// relaxation over `pre` (pre-activation bounds valid for `set`, e.g. [`optimized_bounds`]) with
/// the slopes optimized per target. Never below CROWN's bound on the same `pre` (the ascent starts
/// at CROWN's slopes and keeps its best step) beyond rounding. ReLU hidden layers only.
pub fn optimized_margin_bounds(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    label: usize,
    targets: &[usize],
    settings: &SlopeSettings,
) -> Result<Vec<f64>> {
    Ok(margin_bounds(net, set, pre, label, targets, settings, false)?.0)
}

/// [`optimized_margin_bounds`] with each target's best slopes (for a certificate).
pub fn optimized_margin_bounds_traced(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    label: usize,
    targets: &[usize],
    settings: &SlopeSettings,
) -> Result<(Vec<f64>, Vec<Slopes>)> {
    margin_bounds(net, set, pre, label, targets, settings, true)
}

/// The ascent on the margins, with each target's best slopes when `keep`.
fn margin_bounds(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    label: usize,
    targets: &[usize],
    settings: &SlopeSettings,
    keep: bool,
) -> Result<(Vec<f64>, Vec<Slopes>)> {
    check_supported(net, settings)?;
    net.check_input(set.center())?;
    net.check_label(label)?;
    for &t in targets {
        net.check_label(t)?;
    }
    pre.check_shape(net)?;
    if targets.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let depth = net.layers().len() - 1;
    let relaxed = Relaxed::new(net, set, pre, depth);
    let spec = super::linear::margin_spec(net.num_classes(), label, targets);
    Ok(ascend(net, set, &relaxed, depth, &spec, settings, keep))
}

/// Lower bounds on spec\[:, s\]^T f(x) for each column s of `spec` (outputs x specifications),
/// from the backward relaxation over `pre` with the slopes optimized per column (as
/// [`optimized_margin_bounds`] for any linear specification). ReLU hidden layers only.
pub fn optimized_spec_bounds(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    spec: faer::MatRef<'_, f64>,
    settings: &SlopeSettings,
) -> Result<Vec<f64>> {
    check_supported(net, settings)?;
    net.check_input(set.center())?;
    pre.check_shape(net)?;
    if spec.nrows() != net.num_classes() {
        return Err(Error::InvalidArgument(format!(
            "the specification has {} rows, the network {} outputs",
            spec.nrows(),
            net.num_classes()
        )));
    }
    if spec.ncols() == 0 {
        return Ok(Vec::new());
    }
    let depth = net.layers().len() - 1;
    let relaxed = Relaxed::new(net, set, pre, depth);
    Ok(ascend(net, set, &relaxed, depth, &spec.to_owned(), settings, false).0)
}

/// An error unless the hidden layers are ReLU and the step size and tolerance are finite and >= 0.
fn check_supported(net: &Network, settings: &SlopeSettings) -> Result<()> {
    let layers = net.layers();
    if layers[..layers.len() - 1].iter().any(|l| l.activation() != Activation::Relu) {
        return Err(Error::Unsupported("optimized slopes need ReLU hidden layers".into()));
    }
    if !(settings.tolerance.is_finite() && settings.tolerance >= 0.0) {
        return Err(Error::InvalidArgument(format!(
            "slope tolerance must be finite and >= 0, got {}",
            settings.tolerance
        )));
    }
    if !settings.learning_rate.is_finite() || settings.learning_rate < 0.0 {
        return Err(Error::InvalidArgument(format!(
            "slope learning rate must be finite and >= 0, got {}",
            settings.learning_rate
        )));
    }
    Ok(())
}

/// The ReLU relaxation of one neuron with bounds \[l, u\].
#[derive(Clone, Copy)]
enum Neuron {
    Active,
    Inactive,
    /// Chord slope u / (u - l) and offset -l u / (u - l), rounded up
    /// ([`super::rounding::relu_chord`]).
    Unstable {
        slope: f64,
        offset: f64,
    },
}

fn neurons(iv: &Interval) -> Vec<Neuron> {
    iv.lower
        .iter()
        .zip(&iv.upper)
        .map(|(&l, &u)| {
            if l >= 0.0 {
                Neuron::Active
            } else if u <= 0.0 {
                Neuron::Inactive
            } else {
                let (slope, offset) = super::rounding::relu_chord(l, u);
                Neuron::Unstable { slope, offset }
            }
        })
        .collect()
}

/// Bounds of the unstable neurons of hidden layer `depth` (the others keep `pre`'s), each from the
/// backward relaxation over `pre`'s bounds of the layers before it with slopes optimized per neuron.
pub(crate) fn tighten_layer(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    depth: usize,
    settings: &SlopeSettings,
) -> Interval {
    tighten_layer_traced(net, set, pre, depth, settings, false).0
}

/// [`tighten_layer`], with the slopes of each unstable neuron's ends when `keep`.
fn tighten_layer_traced(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    depth: usize,
    settings: &SlopeSettings,
    keep: bool,
) -> (Interval, Vec<NeuronSlopes>) {
    let mut iv = pre.layers[depth].clone();
    let mut traced: Vec<NeuronSlopes> = vec![(None, None); if keep { iv.len() } else { 0 }];
    let unstable: Vec<usize> = (0..iv.len()).filter(|&i| iv.lower[i] < 0.0 && iv.upper[i] > 0.0).collect();
    if unstable.is_empty() {
        return (iv, traced);
    }
    // Columns (neuron, sign): +1 bounds z_i from below, -1 bounds -z_i from below.
    let jobs: Vec<(usize, f64)> = unstable.iter().flat_map(|&i| [(i, 1.0), (i, -1.0)]).collect();
    let relaxed = Relaxed::new(net, set, pre, depth);
    // Columns are independent; fixed chunks (not one per thread) keep the result the same on any
    // number of threads, so that a certificate's check recomputes exactly these bounds.
    let n_out = iv.len();
    let values: Vec<(f64, Option<Slopes>)> = jobs
        .par_chunks(32)
        .flat_map_iter(|part| {
            if settings.expired() {
                // Out of time: these columns keep the bounds they have.
                return vec![(f64::NEG_INFINITY, None); part.len()].into_iter();
            }
            let spec = Mat::<f64>::from_fn(n_out, part.len(), |i, s| if part[s].0 == i { part[s].1 } else { 0.0 });
            let (v, mut slopes) = ascend(net, set, &relaxed, depth, &spec, settings, keep);
            slopes.resize(v.len(), Vec::new());
            v.into_iter().zip(slopes).map(|(v, s)| (v, keep.then_some(s))).collect::<Vec<_>>().into_iter()
        })
        .collect();
    for (&(i, sign), (v, slopes)) in jobs.iter().zip(values) {
        if sign > 0.0 {
            iv.lower[i] = iv.lower[i].max(v);
        } else {
            iv.upper[i] = iv.upper[i].min(-v);
        }
        if keep {
            let end = if sign > 0.0 { &mut traced[i].0 } else { &mut traced[i].1 };
            *end = slopes;
        }
    }
    (iv, traced)
}

/// The relaxation of the layers before `depth` with the weights of their rounding allowance.
struct Relaxed {
    /// Per layer k < depth, per neuron.
    neurons: Vec<Vec<Neuron>>,
    /// Layer k's rounding weights ([`super::rounding::step_weights`]), k < depth.
    weights: Vec<Vec<f64>>,
    /// Those of layer `depth` itself (the product with the specification).
    top: Vec<f64>,
}

impl Relaxed {
    fn new(net: &Network, set: &InputSet, pre: &PreActivationBounds, depth: usize) -> Self {
        let layers = net.layers();
        let x = match depth {
            0 => super::rounding::input_magnitude(set),
            _ => super::rounding::activated_magnitude(&pre.layers[depth - 1], layers[depth - 1].activation()),
        };
        Self {
            neurons: (0..depth).map(|k| neurons(&pre.layers[k])).collect(),
            weights: super::linear::step_weights(net, set, &pre.layers[..depth]),
            top: super::rounding::product_weights(&layers[depth], &x),
        }
    }
}

/// The best lower bound found on spec\[:, s\]^T z_depth for each column s, relaxing the activations
/// of the layers before `depth` (`relaxed`), each lowered by its rounding allowance
/// ([`super::rounding`]).
fn ascend(
    net: &Network,
    set: &InputSet,
    relaxed: &Relaxed,
    depth: usize,
    spec: &Mat<f64>,
    settings: &SlopeSettings,
    keep: bool,
) -> (Vec<f64>, Vec<Slopes>) {
    let layers = net.layers();
    let cols = spec.ncols();
    // lam on x_depth (the input of layer `depth`): W^T spec, constant spec^T b.
    let lam_top = layers[depth].mul_t(spec.as_ref());
    let const_top: Vec<f64> =
        (0..cols).map(|s| (0..spec.nrows()).map(|i| spec[(i, s)] * layers[depth].bias()[i]).sum()).collect();
    // The rounding error of that first step, per column.
    let err_top: Vec<f64> = (0..cols)
        .map(|s| {
            let col: Vec<f64> = (0..spec.nrows()).map(|i| spec[(i, s)]).collect();
            super::rounding::step_error(&col, &relaxed.top, 0.0)
        })
        .collect();
    let relaxed_weights = &relaxed.weights;
    let relaxed = &relaxed.neurons;
    // Slopes, started at CROWN-Ada's (1 if u > -l else 0), and Adam's moments.
    let mut alpha: Vec<Mat<f64>> = relaxed
        .iter()
        .map(|ns| {
            Mat::from_fn(ns.len(), cols, |i, _| match ns[i] {
                Neuron::Unstable { slope, .. } if slope > 0.5 => 1.0,
                _ => 0.0,
            })
        })
        .collect();
    let mut m1: Vec<Mat<f64>> = alpha.iter().map(|a| Mat::zeros(a.nrows(), cols)).collect();
    let mut m2: Vec<Mat<f64>> = m1.clone();
    let (beta1, beta2): (f64, f64) = (0.9, 0.999);
    let mut best = vec![f64::NEG_INFINITY; cols];
    // `best` WINDOW steps ago (SlopeSettings::tolerance).
    let mut mark = vec![f64::NEG_INFINITY; cols];
    let mut saved: Vec<Mat<f64>> = alpha.iter().map(|a| Mat::zeros(a.nrows(), cols)).collect();
    // The slopes of each column's best bound (when `keep`).
    let mut best_slopes: Vec<Slopes> = if keep { vec![Vec::new(); cols] } else { Vec::new() };
    for step in 0..=settings.iterations {
        // The backward pass of super::linear with per-column slopes; lam on x_{k+1} is kept for
        // the gradient.
        let mut lam = lam_top.clone();
        let mut consts = const_top.clone();
        let mut err = err_top.clone();
        let mut abs_consts: Vec<f64> = consts.iter().map(|c| c.abs()).collect();
        for k in (0..depth).rev() {
            saved[k].copy_from(&lam);
            for s in 0..cols {
                let (mut c, mut offsets) = (0.0, 0.0);
                let slopes = alpha[k].col_as_slice(s);
                for ((x, n), &a) in lam.col_as_slice_mut(s).iter_mut().zip(&relaxed[k]).zip(slopes) {
                    *x = match *n {
                        Neuron::Active => *x,
                        Neuron::Inactive => 0.0,
                        Neuron::Unstable { slope, offset } => {
                            if *x >= 0.0 {
                                *x * a
                            } else {
                                c += *x * offset;
                                offsets += (*x * offset).abs();
                                *x * slope
                            }
                        }
                    };
                }
                let v = lam.col_as_slice(s);
                err[s] += super::rounding::step_error(v, &relaxed_weights[k], offsets);
                consts[s] += c + linalg::dot(v, layers[k].bias());
                abs_consts[s] += consts[s].abs();
            }
            lam = layers[k].mul_t(lam.as_ref());
        }
        let support = set.min_linear_columns(lam.as_ref());
        let g = super::rounding::gamma(depth + 3);
        for s in 0..cols {
            let v = super::rounding::lower(support[s] + consts[s], err[s] + g * (abs_consts[s] + support[s].abs()));
            if v > best[s] {
                best[s] = v;
                if keep {
                    // Full lower slopes: 1 on active neurons, 0 on inactive ones.
                    best_slopes[s] = alpha
                        .iter()
                        .zip(relaxed)
                        .map(|(a, ns)| {
                            (0..a.nrows())
                                .map(|i| match ns[i] {
                                    Neuron::Active => 1.0,
                                    Neuron::Inactive => 0.0,
                                    Neuron::Unstable { .. } => a[(i, s)],
                                })
                                .collect()
                        })
                        .collect();
                }
            }
        }
        if step == settings.iterations || settings.expired() {
            break;
        }
        if settings.tolerance > 0.0 && step % WINDOW == 0 {
            let risen = best.iter().zip(&mark).any(|(b, m)| b - m > settings.tolerance * (1.0 + b.abs()));
            if step > 0 && !risen {
                break;
            }
            mark.copy_from_slice(&best);
        }
        // The gradient: the relaxed network's forward pass from the support function's minimizers.
        let mut x = set.argmin_linear_columns(lam.as_ref());
        let t = (step + 1) as i32;
        let (c1, c2) = (1.0 - beta1.powi(t), 1.0 - beta2.powi(t));
        for k in 0..depth {
            let mut z = layers[k].mul(x.as_ref());
            let bias = layers[k].bias();
            for s in 0..cols {
                let (zs, ls) = (z.col_as_slice_mut(s), saved[k].col_as_slice(s));
                let (al, mm, vv) = (alpha[k].col_as_slice_mut(s), m1[k].col_as_slice_mut(s), m2[k].col_as_slice_mut(s));
                for (i, n) in relaxed[k].iter().enumerate() {
                    let zi = zs[i] + bias[i];
                    zs[i] = match *n {
                        Neuron::Active => zi,
                        Neuron::Inactive => 0.0,
                        Neuron::Unstable { slope, offset } => {
                            if ls[i] >= 0.0 {
                                // Adam ascent on this slope: d bound / d alpha = lam * z.
                                let g = ls[i] * zi;
                                mm[i] = beta1 * mm[i] + (1.0 - beta1) * g;
                                vv[i] = beta2 * vv[i] + (1.0 - beta2) * g * g;
                                let (mhat, vhat) = (mm[i] / c1, vv[i] / c2);
                                let out = al[i] * zi;
                                al[i] = (al[i] + settings.learning_rate * mhat / (vhat.sqrt() + 1e-12)).clamp(0.0, 1.0);
                                out
                            } else {
                                slope * zi + offset
                            }
                        }
                    };
                }
            }
            x = z;
        }
    }
    (best, best_slopes)
}
