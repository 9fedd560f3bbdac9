//! Backward linear relaxation: Fast-Lin / Wong-Kolter and CROWN.
//!
//! Salman et al. 2019 (001_b3d5e3f2d36bac59.txt), section 4, "Greedily solving the dual with linear
//! bounds": when every activation is bounded by one linear function from below and one from above,
//!
//! ```text
//! alpha_L z + beta_L <= sigma(z) <= alpha_U z + beta_U      for z in [l, u]          (eq. 7)
//! ```
//!
//! a lower bound on lam^T z_j (z_j the pre-activation of layer j) follows by propagating lam
//! backwards: through an affine layer, lam <- W^T lam and const += lam^T b; through an activation,
//! each entry picks the lower line where it is >= 0 and the upper line where it is < 0 (so that
//! every term is bounded from below), lam_i <- lam_i alpha_i and const += lam_i beta_i. At the
//! input, min over X of lam^T x is the support function of X ([`InputSet::min_linear`]).
//!
//! For an unstable ReLU (l < 0 < u) the upper line is the chord u (z - l) / (u - l); the lower
//! slope is free in [0, 1]:
//! * [`Slope::FastLin`]: u / (u - l), the same as the upper slope. This is the bound of
//!   Wong & Kolter's dual network (their Theorem 1; 004_79c7a41c77cceb0d.txt): see [`super::dual`]
//!   for that formula evaluated independently, and the test that the two agree.
//! * [`Slope::Adaptive`]: CROWN-Ada, 1 when u > -l and 0 otherwise (auto_LiRPA's default).
//!
//! Sigmoid, tanh and softplus get lines with slopes chosen as in CROWN-general (tangent at the
//! midpoint on the convex/concave side, chord elsewhere) and *exact* offsets: beta_L is the
//! minimum of sigma(z) - alpha_L z over \[l, u\], attained at l, u or a point where
//! sigma'(z) = alpha_L, all computed in closed form ([`Activation::stationary_points`]). Any slope
//! is therefore sound, whatever the activation's shape.

use faer::{Mat, MatRef};

use super::ball::BallSupport;
use super::{Interval, PreActivationBounds, rounding};
use crate::linalg;
use crate::network::{Activation, Network};
use crate::spec::InputSet;

/// Lower slope of unstable ReLUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Slope {
    /// u / (u - l) (Fast-Lin, Wong-Kolter).
    FastLin,
    /// 1 if u > -l else 0 (CROWN-Ada).
    Adaptive,
}

/// Per-neuron linear bounds alpha_L z + beta_L <= sigma(z) <= alpha_U z + beta_U of one layer.
#[derive(Clone, Debug, PartialEq)]
pub struct Lines {
    /// alpha_L.
    pub lower_slope: Vec<f64>,
    /// beta_L.
    pub lower_offset: Vec<f64>,
    /// alpha_U.
    pub upper_slope: Vec<f64>,
    /// beta_U.
    pub upper_offset: Vec<f64>,
}

impl Lines {
    /// The lines of a layer with activation `act` and pre-activation bounds `iv`.
    pub fn new(act: Activation, iv: &Interval, slope: Slope) -> Self {
        let n = iv.len();
        let mut lines = Lines {
            lower_slope: Vec::with_capacity(n),
            lower_offset: Vec::with_capacity(n),
            upper_slope: Vec::with_capacity(n),
            upper_offset: Vec::with_capacity(n),
        };
        for i in 0..n {
            let (al, bl, au, bu) = relaxation(act, iv.lower[i], iv.upper[i], slope);
            lines.lower_slope.push(al);
            lines.lower_offset.push(bl);
            lines.upper_slope.push(au);
            lines.upper_offset.push(bu);
        }
        lines
    }

    fn identity(n: usize) -> Self {
        Lines {
            lower_slope: vec![1.0; n],
            lower_offset: vec![0.0; n],
            upper_slope: vec![1.0; n],
            upper_offset: vec![0.0; n],
        }
    }
}

/// (alpha_L, beta_L, alpha_U, beta_U) for sigma on \[l, u\] (eq. 7 of Salman et al.).
pub fn relaxation(act: Activation, l: f64, u: f64, slope: Slope) -> (f64, f64, f64, f64) {
    match act {
        Activation::Identity => (1.0, 0.0, 1.0, 0.0),
        Activation::Relu => {
            if l >= 0.0 {
                (1.0, 0.0, 1.0, 0.0)
            } else if u <= 0.0 {
                (0.0, 0.0, 0.0, 0.0)
            } else {
                let (s, offset) = rounding::relu_chord(l, u);
                let lower = match slope {
                    Slope::FastLin => s,
                    Slope::Adaptive => {
                        if u > -l {
                            1.0
                        } else {
                            0.0
                        }
                    }
                };
                (lower, 0.0, s, offset)
            }
        }
        Activation::Sigmoid | Activation::Tanh | Activation::Softplus => smooth_relaxation(act, l, u),
    }
}

fn smooth_relaxation(act: Activation, l: f64, u: f64) -> (f64, f64, f64, f64) {
    let (fl, fu) = (act.eval(l), act.eval(u));
    if u - l <= 1e-12 * (1.0 + l.abs()) {
        // A (numerically) fixed input: constant bounds from monotonicity.
        return (0.0, fl, 0.0, fu);
    }
    let chord = (fu - fl) / (u - l);
    let tangent = act.derivative(0.5 * (l + u));
    // Convex on (-inf, 0] for sigmoid/tanh and everywhere for softplus; concave on [0, inf).
    let convex = matches!(act, Activation::Softplus) || u <= 0.0;
    let concave = !matches!(act, Activation::Softplus) && l >= 0.0;
    let (al, au) = if convex {
        (tangent, chord)
    } else if concave {
        (chord, tangent)
    } else {
        (chord, chord)
    };
    // Exact offsets: extrema of sigma(z) - alpha z over the candidates.
    let extreme = |alpha: f64, lower: bool| -> f64 {
        let mut cands = vec![l, u];
        cands.extend(act.stationary_points(alpha, l, u));
        let vals = cands.iter().map(|&z| act.eval(z) - alpha * z);
        let v = if lower { vals.fold(f64::INFINITY, f64::min) } else { vals.fold(f64::NEG_INFINITY, f64::max) };
        // Rounding slack of the few operations above.
        let slack = 8.0 * f64::EPSILON * (1.0 + v.abs() + (alpha * l).abs() + (alpha * u).abs());
        if lower { v - slack } else { v + slack }
    };
    (al, extreme(al, true), au, extreme(au, false))
}

/// Lam for the margin specification: column s is e_label - e_{targets\[s\]} (classes x targets).
pub fn margin_spec(classes: usize, label: usize, targets: &[usize]) -> Mat<f64> {
    let mut m = Mat::<f64>::zeros(classes, targets.len());
    for (s, &t) in targets.iter().enumerate() {
        m[(label, s)] += 1.0;
        m[(t, s)] -= 1.0;
    }
    m
}

/// Applies the relaxation of one activation layer to lam (the neurons `rows` x specs) in place;
/// returns per column the sum of |lam_i o_i| over the offsets used (for the rounding allowance).
fn relax(lam: &mut Mat<f64>, consts: &mut [f64], lines: &Lines, rows: &[usize]) -> Vec<f64> {
    // The lines of the rows, gathered once (the columns then run over plain slices).
    let gather = |v: &[f64]| -> Vec<f64> { rows.iter().map(|&i| v[i]).collect() };
    let (ls, lo) = (gather(&lines.lower_slope), gather(&lines.lower_offset));
    let (us, uo) = (gather(&lines.upper_slope), gather(&lines.upper_offset));
    (0..lam.ncols())
        .map(|s| {
            let col =
                lam.col_mut(s).try_as_col_major_mut().expect("owned matrices have contiguous columns").as_slice_mut();
            let (c, abs) = crate::linalg::relax_column(col, [&ls, &lo, &us, &uo]);
            consts[s] += c;
            abs
        })
        .collect()
}

/// The per-neuron weights of the rounding allowance of each layer's backward step
/// ([`rounding::step_weights`]), from the pre-activation bounds of layers 0..bounds.len().
pub(crate) fn step_weights(net: &Network, set: &InputSet, bounds: &[Interval]) -> Vec<Vec<f64>> {
    (0..bounds.len()).map(|k| layer_step_weights(net, set, bounds, k)).collect()
}

/// Layer k's rounding weights from the bounds of layers 0..=k.
fn layer_step_weights(net: &Network, set: &InputSet, bounds: &[Interval], k: usize) -> Vec<f64> {
    let layers = net.layers();
    let x_mag = match k {
        0 => rounding::input_magnitude(set),
        _ => rounding::activated_magnitude(&bounds[k - 1], layers[k - 1].activation()),
    };
    rounding::step_weights(&layers[k], &x_mag, &rounding::magnitude(&bounds[k]))
}

/// Lower bounds on lam[:, s]^T x_j + consts\[s\] for every column s, where lam lies on the *input*
/// x_j of layer j (x_0 is the network input) and `lines[k]` relaxes the activation of layer k < j;
/// `weights[k]` are layer k's rounding weights ([`step_weights`]): every bound is lowered by the
/// a-priori bound on its rounding error ([`rounding`]).
#[allow(clippy::too_many_arguments)]
fn backward(
    net: &Network,
    set: &InputSet,
    ball: Option<&BallSupport<'_>>,
    lines: &[Lines],
    weights: &[Vec<f64>],
    j: usize,
    lam: Mat<f64>,
    consts: Vec<f64>,
) -> Vec<f64> {
    let rows = (0..lam.nrows()).collect();
    backward_rows(net, set, ball, lines, weights, j, rows, lam, consts)
}

/// [`backward`] with lam stored on the entries `rows` of x_j only (the others zero): each step
/// keeps the coefficients on the neurons they reach (a convolution's receptive fields), so the
/// bound of one neuron of a convolutional layer costs its receptive field, not the layer's width.
#[allow(clippy::too_many_arguments)]
fn backward_rows(
    net: &Network,
    set: &InputSet,
    ball: Option<&BallSupport<'_>>,
    lines: &[Lines],
    weights: &[Vec<f64>],
    j: usize,
    mut rows: Vec<usize>,
    mut lam: Mat<f64>,
    mut consts: Vec<f64>,
) -> Vec<f64> {
    let layers = net.layers();
    let mut err = vec![0.0; lam.ncols()];
    let mut abs_consts: Vec<f64> = consts.iter().map(|c| c.abs()).collect();
    // The plain l2 ball ends through the first layer's Gram matrix instead of W_0^T lam.
    let ball = ball.filter(|_| j > 0 && rows.len() == layers[0].output_size());
    let mut support = None;
    for k in (0..j).rev() {
        // lam on x_{k+1} = sigma_k(z_k): relax, then through z_k = W_k x_k + b_k.
        let offsets = relax(&mut lam, &mut consts, &lines[k], &rows);
        let layer = &layers[k];
        let w: Vec<f64> = rows.iter().map(|&i| weights[k][i]).collect();
        let b: Vec<f64> = rows.iter().map(|&i| layer.bias()[i]).collect();
        for (s, c) in consts.iter_mut().enumerate() {
            let v = column(&lam, s);
            err[s] += rounding::step_error(v, &w, offsets[s]);
            *c += linalg::dot(v, &b);
            abs_consts[s] += c.abs();
        }
        if k == 0
            && let Some(ball) = ball
        {
            support = Some(ball.support_columns(lam.as_ref()));
            break;
        }
        if k == 0 {
            // W_0^T lam formed and reduced a block of columns at a time.
            let restricted = std::cell::OnceCell::new();
            support =
                Some(layer.mul_t_rows_then(&rows, lam.as_ref(), |inputs, block| {
                    input_support(set, inputs, &restricted, block)
                }));
            break;
        }
        (rows, lam) = layer.mul_t_rows(&rows, lam.as_ref());
    }
    // j = 0: lam is on the input already.
    let support = support.unwrap_or_else(|| input_support(set, &rows, &std::cell::OnceCell::new(), lam.as_ref()));
    let g = rounding::gamma(j + 3);
    (0..consts.len())
        .map(|s| {
            let v = support[s] + consts[s];
            rounding::lower(v, err[s] + g * (abs_consts[s] + support[s].abs()))
        })
        .collect()
}

/// min over X of a^T x for each column of `a`, whose rows are the input coordinates `inputs`: on
/// part of the input the support function over those coordinates only (the restricted set kept
/// in `restricted` for the next block of the same inputs).
fn input_support(
    set: &InputSet,
    inputs: &[usize],
    restricted: &std::cell::OnceCell<InputSet>,
    a: MatRef<'_, f64>,
) -> Vec<f64> {
    if inputs.len() < set.dim() {
        restricted.get_or_init(|| set.restrict(inputs)).min_linear_columns(a)
    } else {
        set.min_linear_columns(a)
    }
}

fn column(m: &Mat<f64>, s: usize) -> &[f64] {
    m.col(s).try_as_col_major().expect("owned matrices have contiguous columns").as_slice()
}

fn layer_lines(net: &Network, k: usize, iv: &Interval, slope: Slope) -> Lines {
    let act = net.layers()[k].activation();
    if act == Activation::Identity { Lines::identity(iv.len()) } else { Lines::new(act, iv, slope) }
}

/// Pre-activation bounds of every layer, each from its own backward pass over the relaxations of
/// the layers before it, intersected with interval arithmetic's for the neurons it proves stable
/// (auto_LiRPA's method "CROWN" for [`Slope::Adaptive`]: the same margins).
pub fn all_layer_bounds(net: &Network, set: &InputSet, slope: Slope) -> PreActivationBounds {
    all_layer_bounds_within(net, set, slope, None)
}

/// [`all_layer_bounds`], intersecting each layer's result with `within` (known valid bounds, e.g.
/// from a split in branch and bound, or from another method) before it is used to relax the next
/// layers.
pub fn all_layer_bounds_within(
    net: &Network,
    set: &InputSet,
    slope: Slope,
    within: Option<&PreActivationBounds>,
) -> PreActivationBounds {
    layer_bounds(net, set, slope, within, false)
}

/// The pre-activation bounds a margin bound needs, at a fraction of [`all_layer_bounds`]' cost on
/// wide layers: a backward pass only for the ReLUs that interval arithmetic leaves unstable; the
/// others keep interval arithmetic's bounds (auto_LiRPA's sparse intermediate bounds). Every
/// margin bound is the same as from [`all_layer_bounds`] (a stable ReLU's lines do not depend on
/// its bounds), up to the rounding allowance; the stable neurons' intervals are looser, so the
/// LP and SDP relaxations, which use them as constraints, take [`all_layer_bounds`].
pub fn unstable_layer_bounds(net: &Network, set: &InputSet, slope: Slope) -> PreActivationBounds {
    layer_bounds(net, set, slope, None, true)
}

/// The neurons `todo` of layer `j` in blocks that share their coefficients' support: a dense
/// layer's in blocks of [`super::interval::BLOCK`], a convolution's by position (every channel at
/// one or a few positions: one receptive field), a block operator's by its convolution pieces'
/// positions.
fn neuron_blocks(net: &Network, j: usize, todo: &[bool]) -> Vec<Vec<usize>> {
    let layer = &net.layers()[j];
    let groups: Vec<Vec<usize>> = match (layer.conv(), layer.block_operator()) {
        (Some(conv), _) => conv.neuron_groups(super::interval::GROUP_COLUMNS.div_ceil(conv.output_shape()[0])),
        (None, Some(blocks)) => blocks.neuron_groups(super::interval::GROUP_COLUMNS, super::interval::BLOCK),
        _ => vec![(0..todo.len()).collect()],
    };
    let mut out = Vec::new();
    for g in groups {
        let kept: Vec<usize> = g.into_iter().filter(|&i| todo[i]).collect();
        out.extend(kept.chunks(super::interval::BLOCK).map(<[usize]>::to_vec));
    }
    out
}

/// Lower bounds on z_j[i] and on -z_j[i] for the neurons `group` of layer j, by one backward pass
/// each over the relaxations `lines` of the layers before (`(lower, -upper)` per neuron).
#[allow(clippy::too_many_arguments)]
fn neuron_bounds(
    net: &Network,
    set: &InputSet,
    ball: Option<&BallSupport<'_>>,
    lines: &[Lines],
    weights: &[Vec<f64>],
    j: usize,
    group: &[usize],
) -> Vec<f64> {
    let layer = &net.layers()[j];
    if j == 0 && (ball.is_some() || layer.is_dense()) {
        // z_0 = W_0 x + b_0 directly, both ends of each row from the row itself: for the plain
        // l2 ball (W c)_i -/+ eps ||W_i|| from the rows' norms, else the set's support function.
        let support = match ball {
            Some(ball) => ball.unit_supports(group),
            None => set.min_linear_both_signs(layer.weight_t(), group),
        };
        let b = layer.bias();
        let m = group.len();
        let g = rounding::gamma(3);
        return (0..2 * m)
            .map(|s| {
                let bias = if s < m { b[group[s]] } else { -b[group[s - m]] };
                rounding::lower(support[s] + bias, g * (bias.abs() + support[s].abs()))
            })
            .collect();
    }
    // lam = [I, -I] on z_j, pushed through W_j directly: [W_j^T, -W_j^T] with consts [b, -b]; a
    // convolution's coefficients live on the group's receptive field only.
    let m = group.len();
    let (rows, lam) = match layer.is_dense() {
        false => {
            let unit = plus_minus_identity(m);
            layer.mul_t_rows(group, unit.as_ref())
        }
        true => {
            let wt = layer.weight_t();
            let n = wt.nrows();
            let mut lam = Mat::<f64>::zeros(n, 2 * m);
            for (c, &i) in group.iter().enumerate() {
                let src = wt.col(i);
                lam.col_mut(c).copy_from(src);
                for (r, v) in lam.col_mut(m + c).iter_mut().enumerate() {
                    *v = -src[r];
                }
            }
            ((0..n).collect(), lam)
        }
    };
    let b: Vec<f64> = group.iter().map(|&i| layer.bias()[i]).collect();
    let consts: Vec<f64> = b.iter().copied().chain(b.iter().map(|v| -v)).collect();
    backward_rows(net, set, ball, lines, weights, j, rows, lam, consts)
}

/// [I, -I] (m x 2m): the coefficients of both ends of m neurons' bounds.
pub(crate) fn plus_minus_identity(m: usize) -> Mat<f64> {
    Mat::from_fn(m, 2 * m, |r, c| {
        if c == r {
            1.0
        } else if c == r + m {
            -1.0
        } else {
            0.0
        }
    })
}

fn layer_bounds(
    net: &Network,
    set: &InputSet,
    slope: Slope,
    within: Option<&PreActivationBounds>,
    unstable_only: bool,
) -> PreActivationBounds {
    let layers = net.layers();
    let mut bounds: Vec<Interval> = Vec::with_capacity(layers.len());
    let mut basis: Vec<Interval> = Vec::with_capacity(layers.len());
    let mut lines: Vec<Lines> = Vec::with_capacity(layers.len());
    let mut weights: Vec<Vec<f64>> = Vec::new();
    let ball = BallSupport::new(&layers[0], set);
    for j in 0..layers.len() {
        let n = layers[j].output_size();
        // A ReLU that interval arithmetic on the previous layer's bounds proves stable is
        // stable, as in auto_LiRPA (its "sparse intermediate bounds" with IBP references):
        // the stable set grows, and the margins equal auto_LiRPA's (docs/experiments.md).
        // auto_LiRPA gives such a neuron the IBP bounds, and the next layers' IBP starts from
        // them (`rule`); the bounds returned here are the intersection with CROWN's (unless
        // `unstable_only`), never looser than either. The unstable neurons keep CROWN's alone:
        // CROWN-Ada's slope choice is not monotone in the intervals, so tightening them can
        // loosen the margins.
        let ibp = (j > 0 && layers[j].activation() == Activation::Relu).then(|| {
            let (lo, hi) = super::interval::activate(&basis[j - 1], layers[j - 1].activation());
            super::interval::affine_box_layer(&layers[j], &lo, &hi)
        });
        let stable = |i: usize| ibp.as_ref().is_some_and(|b| b.lower[i] >= 0.0 || b.upper[i] <= 0.0);
        let todo: Vec<bool> = (0..n).map(|i| !(unstable_only && stable(i))).collect();
        let mut iv = match (&ibp, unstable_only) {
            (Some(b), true) => b.clone(),
            _ => Interval { lower: vec![f64::NEG_INFINITY; n], upper: vec![f64::INFINITY; n] },
        };
        for group in neuron_blocks(net, j, &todo) {
            let lb = neuron_bounds(net, set, ball.as_ref(), &lines, &weights, j, &group);
            let m = group.len();
            for (r, &i) in group.iter().enumerate() {
                iv.lower[i] = lb[r];
                iv.upper[i] = -lb[m + r];
            }
        }
        // `rule`: the bounds the next layers' interval arithmetic starts from, as auto_LiRPA's.
        let mut rule = iv.clone();
        if let Some(ibp) = &ibp {
            for i in (0..n).filter(|&i| stable(i)) {
                rule.lower[i] = ibp.lower[i];
                rule.upper[i] = ibp.upper[i];
                iv.lower[i] = iv.lower[i].max(ibp.lower[i]);
                iv.upper[i] = iv.upper[i].min(ibp.upper[i]);
            }
        }
        if let Some(w) = within {
            iv.intersect(&w.layers[j]);
            rule.intersect(&w.layers[j]);
        }
        basis.push(rule);
        lines.push(layer_lines(net, j, &iv, slope));
        bounds.push(iv);
        // This layer's rounding weights (the earlier layers' do not change).
        weights.push(layer_step_weights(net, set, &bounds, j));
    }
    PreActivationBounds { layers: bounds }
}

/// Lower bounds on lam[:, s]^T f(x) for each column s of `lam` (outputs x specs), relaxing every
/// activation with the bounds `pre` (from any method, for the same input set).
pub fn spec_lower_bounds(
    net: &Network,
    set: &InputSet,
    pre: &PreActivationBounds,
    lam: MatRef<'_, f64>,
    slope: Slope,
) -> Vec<f64> {
    let k = net.layers().len();
    let lines: Vec<Lines> = (0..k).map(|j| layer_lines(net, j, &pre.layers[j], slope)).collect();
    let weights = step_weights(net, set, &pre.layers);
    let ball = BallSupport::new(&net.layers()[0], set);
    backward(net, set, ball.as_ref(), &lines, &weights, k, lam.to_owned(), vec![0.0; lam.ncols()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaxation_lines_enclose_the_activation() {
        let intervals = [(-3.0, -1.0), (-2.0, 0.5), (-0.3, 4.0), (0.2, 2.0), (-8.0, 8.0), (-1e-3, 1e-3), (1.0, 1.0)];
        for act in [Activation::Relu, Activation::Sigmoid, Activation::Tanh, Activation::Softplus, Activation::Identity]
        {
            for slope in [Slope::FastLin, Slope::Adaptive] {
                for &(l, u) in &intervals {
                    let (al, bl, au, bu) = relaxation(act, l, u, slope);
                    for k in 0..=1000 {
                        let z = l + (u - l) * k as f64 / 1000.0;
                        let s = act.eval(z);
                        assert!(al * z + bl <= s + 1e-15, "{act:?} [{l},{u}] lower at {z}");
                        assert!(au * z + bu >= s - 1e-15, "{act:?} [{l},{u}] upper at {z}");
                    }
                }
            }
        }
    }

    #[test]
    fn smooth_lines_are_tight_somewhere() {
        // Exact offsets: each line touches the curve (up to the rounding slack) on [l, u].
        for act in [Activation::Sigmoid, Activation::Tanh, Activation::Softplus] {
            for &(l, u) in &[(-3.0, -1.0), (-2.0, 0.5), (0.2, 2.0)] {
                let (al, bl, au, bu) = relaxation(act, l, u, Slope::Adaptive);
                let gap = |a: f64, b: f64, lower: bool| {
                    (0..=4000)
                        .map(|k| {
                            let z = l + (u - l) * k as f64 / 4000.0;
                            if lower { act.eval(z) - a * z - b } else { a * z + b - act.eval(z) }
                        })
                        .fold(f64::INFINITY, f64::min)
                };
                assert!(gap(al, bl, true) < 1e-6, "{act:?} [{l},{u}] lower");
                assert!(gap(au, bu, false) < 1e-6, "{act:?} [{l},{u}] upper");
            }
        }
    }
}
