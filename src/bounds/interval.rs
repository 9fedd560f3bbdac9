//! Interval bound propagation (IBP).
//!
//! The first layer is bounded exactly over the input set (its pre-activations are linear in x, so
//! each bound is the support function [`InputSet::min_linear`]); later layers propagate boxes:
//! z = W x + b with x in \[lo, hi\] lies in W mid + b ± |W| rad with mid = (lo+hi)/2, rad = (hi-lo)/2.
//! All activations are monotone, so sigma(\[l, u\]) = [sigma(l), sigma(u)].

use faer::{Mat, MatRef};

use super::{Interval, PreActivationBounds, rounding};
use crate::linalg;
use crate::network::{Activation, Layer, Network};
use crate::spec::InputSet;

/// Exact bounds of the affine first layer z = W x + b over X.
pub(crate) fn first_layer(w: MatRef<'_, f64>, b: &[f64], set: &InputSet) -> Interval {
    let neg = Mat::from_fn(w.ncols(), w.nrows(), |j, i| -w[(i, j)]);
    let lower = set.min_linear_columns(w.transpose());
    let neg_upper = set.min_linear_columns(neg.as_ref());
    // The support values are sound; adding b rounds once more (rounding::lower covers it).
    Interval {
        lower: lower.iter().zip(b).map(|(l, b)| rounding::lower(l + b, 0.0)).collect(),
        upper: neg_upper.iter().zip(b).map(|(u, b)| rounding::upper(-u + b, 0.0)).collect(),
    }
}

/// [`first_layer`] for a network layer: a convolution's neurons grouped by position, each group's
/// support function over its receptive field only ([`InputSet::restrict`]).
pub(crate) fn first_layer_of(layer: &Layer, set: &InputSet) -> Interval {
    let Some(conv) = layer.conv() else {
        if layer.is_dense() {
            return first_layer(layer.weight(), layer.bias(), set);
        }
        // A block operator: grouped by its convolution pieces' positions.
        let blocks = layer.block_operator().expect("dense, convolution or block operator");
        return grouped_first_layer(layer, set, blocks.neuron_groups(GROUP_COLUMNS, BLOCK));
    };
    grouped_first_layer(layer, set, conv.neuron_groups(GROUP_COLUMNS.div_ceil(conv.output_shape()[0])))
}

/// [`first_layer`] for an operator layer, group by group, each group's support function over the
/// inputs its rows reach only.
fn grouped_first_layer(layer: &Layer, set: &InputSet, groups: Vec<Vec<usize>>) -> Interval {
    let n = layer.output_size();
    let b = layer.bias();
    let mut out = Interval { lower: vec![0.0; n], upper: vec![0.0; n] };
    for group in groups {
        let m = group.len();
        let unit = super::linear::plus_minus_identity(m);
        let (rows, lam) = layer.mul_t_rows(&group, unit.as_ref());
        let v = set.restrict(&rows).min_linear_columns(lam.as_ref());
        for (r, &i) in group.iter().enumerate() {
            out.lower[i] = rounding::lower(v[r] + b[i], 0.0);
            out.upper[i] = rounding::upper(-v[m + r] + b[i], 0.0);
        }
    }
    out
}

/// Output neurons per group (at least) where a convolution's neurons are bounded by position.
pub(crate) const GROUP_COLUMNS: usize = 32;

/// Columns per block where a layer's W^T is built piecewise.
pub(crate) const BLOCK: usize = 512;

/// Post-activation box of a pre-activation interval (ReLU and identity exactly; the smooth
/// activations' evaluation, a few ulps off, widened by 16 u).
pub(crate) fn activate(iv: &Interval, act: Activation) -> (Vec<f64>, Vec<f64>) {
    match act {
        Activation::Relu | Activation::Identity => {
            (iv.lower.iter().map(|&v| act.eval(v)).collect(), iv.upper.iter().map(|&v| act.eval(v)).collect())
        }
        _ => {
            let e = |y: f64| 16.0 * rounding::UNIT_ROUNDOFF * y.abs() + f64::MIN_POSITIVE;
            (
                iv.lower.iter().map(|&v| act.eval(v)).map(|y| rounding::lower(y, e(y))).collect(),
                iv.upper.iter().map(|&v| act.eval(v)).map(|y| rounding::upper(y, e(y))).collect(),
            )
        }
    }
}

/// Bounds of W x + b for x in the box \[lo, hi\], widened by their rounding error: the products
/// are within gamma_n |W| |mid| and gamma_n |W| rad, and mid and rad themselves within u of
/// (lo + hi) / 2 and (hi - lo) / 2 per coordinate, so gamma_{n+4} |W| (|mid| + rad) covers all
/// (see [`super::rounding`]).
pub(crate) fn affine_box(w: MatRef<'_, f64>, b: &[f64], lo: &[f64], hi: &[f64]) -> Interval {
    let abs_w = Mat::from_fn(w.nrows(), w.ncols(), |i, j| w[(i, j)].abs());
    box_bounds(|x| linalg::mat_vec(w, x), |x| linalg::mat_vec(abs_w.as_ref(), x), w.ncols(), b, lo, hi)
}

/// [`affine_box`] for a network layer (a convolution or a block operator applied as an
/// operator). A neuron that copies one input exactly ([`Layer::pass_through`]) gets that input's
/// box, without rounding allowance: a residual network's carried ReLU outputs stay stable.
pub(crate) fn affine_box_layer(layer: &Layer, lo: &[f64], hi: &[f64]) -> Interval {
    if layer.is_dense() {
        return affine_box(layer.weight(), layer.bias(), lo, hi);
    }
    let mut iv = box_bounds(
        |x| layer.mul_vec(x),
        |x| layer.abs_mul_vec(x),
        layer.input_size() + layer.chained_terms(),
        layer.bias(),
        lo,
        hi,
    );
    for (i, j) in layer.pass_through() {
        iv.lower[i] = iv.lower[i].max(lo[j]);
        iv.upper[i] = iv.upper[i].min(hi[j]);
    }
    iv
}

/// [`affine_box`] with W x and |W| x given as functions (`n` inputs).
fn box_bounds(
    mul: impl Fn(&[f64]) -> Vec<f64>,
    abs_mul: impl Fn(&[f64]) -> Vec<f64>,
    n: usize,
    b: &[f64],
    lo: &[f64],
    hi: &[f64],
) -> Interval {
    let mid: Vec<f64> = lo.iter().zip(hi).map(|(l, h)| 0.5 * (l + h)).collect();
    let rad: Vec<f64> = lo.iter().zip(hi).map(|(l, h)| 0.5 * (h - l)).collect();
    let c = mul(&mid);
    let r = abs_mul(&rad);
    let mag: Vec<f64> = mid.iter().zip(&rad).map(|(m, r)| m.abs() + r).collect();
    let g = rounding::gamma(n + 4);
    let e: Vec<f64> = abs_mul(&mag).into_iter().map(|v| g * v * (1.0 + 1e-12)).collect();
    Interval {
        lower: (0..c.len()).map(|i| rounding::lower(c[i] - r[i] + b[i], e[i])).collect(),
        upper: (0..c.len()).map(|i| rounding::upper(c[i] + r[i] + b[i], e[i])).collect(),
    }
}

/// IBP bounds on the pre-activations of every layer.
pub fn ibp(net: &Network, set: &InputSet) -> PreActivationBounds {
    let layers = net.layers();
    let mut out = Vec::with_capacity(layers.len());
    out.push(first_layer_of(&layers[0], set));
    for k in 1..layers.len() {
        let (lo, hi) = activate(&out[k - 1], layers[k - 1].activation());
        out.push(affine_box_layer(&layers[k], &lo, &hi));
    }
    PreActivationBounds { layers: out }
}

/// IBP lower bounds on lam[:, s]^T f(x) for each column s of `lam` (outputs x specs). When the last
/// layer is affine (activation "none") the specification is folded into it first (the C-matrix
/// trick), which is tighter than subtracting logit intervals.
pub fn spec_lower_bounds(net: &Network, set: &InputSet, pre: &PreActivationBounds, lam: MatRef<'_, f64>) -> Vec<f64> {
    let layers = net.layers();
    let last = layers.len() - 1;
    let m = lam.ncols();
    if layers[last].activation() != Activation::Identity {
        // Spec on sigma(z_last) with z_last in the interval: monotone activation.
        let (lo, hi) = activate(&pre.layers[last], layers[last].activation());
        return (0..m)
            .map(|s| {
                let (v, abs) = (0..lo.len()).fold((0.0, 0.0), |(v, a), i| {
                    let c = lam[(i, s)];
                    let t = if c >= 0.0 { c * lo[i] } else { c * hi[i] };
                    (v + t, a + t.abs())
                });
                rounding::lower(v, rounding::gamma(lo.len() + 2) * abs)
            })
            .collect();
    }
    // Folded last layer: lam^T W x + lam^T b, lowered by the rounding of the folding itself
    // (gamma_{n+2} |lam|^T (|W| X + |b|), X bounding |x| on the set).
    let folded_w = layers[last].mul_t(lam).transpose().to_owned();
    let folded_b: Vec<f64> =
        (0..m).map(|s| (0..lam.nrows()).map(|i| lam[(i, s)] * layers[last].bias()[i]).sum()).collect();
    let iv = if last == 0 {
        first_layer(folded_w.as_ref(), &folded_b, set)
    } else {
        let (lo, hi) = activate(&pre.layers[last - 1], layers[last - 1].activation());
        affine_box(folded_w.as_ref(), &folded_b, &lo, &hi)
    };
    let w = rounding::product_weights(&layers[last], &rounding::last_input_magnitude(net, set, Some(pre)));
    (0..m)
        .map(|s| {
            let col: Vec<f64> = (0..lam.nrows()).map(|i| lam[(i, s)]).collect();
            rounding::lower(iv.lower[s], rounding::step_error(&col, &w, 0.0))
        })
        .collect()
}
