//! Sound floating point for the bound-propagation core: a-priori bounds on the rounding error of
//! IBP, the backward linear relaxation (CROWN, Fast-Lin, alpha-CROWN, beta-CROWN's domains) and
//! the support function, subtracted from every lower bound (and added to every upper bound), so
//! that a bound holds for the real-number network the stored weights define, not only for its
//! floating-point evaluation (Jia & Rinard, "Exploiting Verified Neural Networks via Floating Point
//! Numerical Error", SAS 2021, build networks on which the difference decides the verdict).
//!
//! The model (Higham, *Accuracy and Stability of Numerical Algorithms*, sections 2.2 and 3.1):
//! every operation is exact up to a factor 1 + delta, |delta| <= u = 2^-53, and a dot product of
//! n terms summed in any order (faer's blocked, FMA products included) is within
//! gamma_n |a|^T |b| of the exact one, gamma_n = n u / (1 - n u).
//!
//! One step of the backward pass through layer k (activation sigma_k on z_k = W_k x_k + b_k) takes
//! the coefficients lam on sigma_k(z_k) to mu on x_k:
//! 1. relax: v_i = fl(lam_i s_i) and c = fl(sum_i lam_i o_i) for the line s_i z + o_i chosen by
//!    the sign of lam_i (the lines hold for the *stored* s_i, o_i: [`relu_chord`]);
//!    |lam_i s_i - v_i| |z_i| <= 2 u |v_i| Z_i (Z_i >= |z_i| on the set), and the sum is within
//!    gamma_{n+1} sum_i |lam_i o_i|;
//! 2. the bias: fl(v^T b_k) within gamma_{n+1} |v|^T |b_k|;
//! 3. the product mu = fl(W_k^T v), within gamma_{n+1} |W_k|^T |v| entrywise, which moves
//!    mu^T x_k by at most gamma_{n+1} |v|^T (|W_k| X_k) (X_k >= |x_k| on the set).
//!
//! n is the layer's larger size (max(n_in, n_out)): an entry of W_k^T v sums n_out products; a
//! convolution applied as an operator sums fewer (at most oc kh kw), in its own order, which the
//! same gamma covers.
//!
//! So the step's error is at most sum_i |v_i| w_i + gamma_{n+1} sum_i |lam_i o_i| with the
//! per-neuron weight w_i = gamma_{n+2} ((|W_k| X_k)_i + |b_i|) + 4 u Z_i ([`step_weights`]; 4 u
//! instead of 2 u also covers beta-CROWN's split multipliers added to v). The support function is
//! made sound where it is computed ([`crate::spec::InputSet::min_linear`]); the additions that
//! join the terms add u |sum| each ([`lower`]).

use super::{Interval, PreActivationBounds};
pub use crate::linalg::psd::{UNIT_ROUNDOFF, gamma};
use crate::network::{Activation, Layer, Network};
use crate::spec::InputSet;

/// A number <= x - err that survives the rounding of the subtraction (NaN and infinite x stay as
/// they are; an infinite or NaN `err` gives -inf).
pub fn lower(x: f64, err: f64) -> f64 {
    if !x.is_finite() {
        return x;
    }
    if !err.is_finite() {
        return f64::NEG_INFINITY;
    }
    (x - err - 2.0 * UNIT_ROUNDOFF * x.abs()).next_down()
}

/// A number >= x + err (the mirror of [`lower`]).
pub fn upper(x: f64, err: f64) -> f64 {
    -lower(-x, err)
}

/// The chord of a ReLU over \[l, u\] with l < 0 < u, as (slope, offset): s = u / (u - l) and an
/// offset rounded up so that s l + o >= 0 and s u + o >= u hold exactly for the stored floats
/// (the line then lies above max(z, 0) on \[l, u\], which is convex).
pub fn relu_chord(l: f64, u: f64) -> (f64, f64) {
    let s = u / (u - l);
    let raw = (-s * l).max(u - s * u);
    (s, raw + 4.0 * UNIT_ROUNDOFF * ((s * l).abs() + u + s * u) + f64::MIN_POSITIVE)
}

/// Bounds on |z| over an interval of pre-activations (per neuron).
pub fn magnitude(iv: &Interval) -> Vec<f64> {
    iv.lower.iter().zip(&iv.upper).map(|(l, u)| l.abs().max(u.abs())).collect()
}

/// Bounds on |sigma(z)| for z in the interval (sigma monotone: the larger end value).
pub fn activated_magnitude(iv: &Interval, act: Activation) -> Vec<f64> {
    iv.lower
        .iter()
        .zip(&iv.upper)
        .map(|(&l, &u)| {
            let (a, b) = (act.eval(l), act.eval(u));
            // The evaluation's own rounding (a few ulps for the smooth activations).
            a.abs().max(b.abs()) * (1.0 + 16.0 * UNIT_ROUNDOFF)
        })
        .collect()
}

/// Bounds on |x| over the set's bounding box (the network input's magnitudes).
pub fn input_magnitude(set: &InputSet) -> Vec<f64> {
    let (lo, hi) = set.bounding_box_ref();
    lo.iter().zip(hi).map(|(l, h)| l.abs().max(h.abs())).collect()
}

/// Bounds on the magnitudes of the last layer's input on the set: the network input for a
/// single-layer network, else the last hidden layer's activated bounds from `pre` (None: IBP's).
pub fn last_input_magnitude(net: &Network, set: &InputSet, pre: Option<&PreActivationBounds>) -> Vec<f64> {
    let layers = net.layers();
    if layers.len() == 1 {
        return input_magnitude(set);
    }
    let ibp;
    let pre = match pre {
        Some(pre) => pre,
        None => {
            ibp = super::interval::ibp(net, set);
            &ibp
        }
    };
    let k = layers.len() - 2;
    activated_magnitude(&pre.layers[k], layers[k].activation())
}

/// gamma_{n+2} (|W| x_mag + |b|) for each neuron of `layer`: the weights of the rounding of a
/// product of coefficients on the layer's output with W and b, with no relaxation before it
/// (`x_mag` bounds the layer's input). n is the larger of the layer's two sizes: an entry of
/// W^T v sums n_out products, v^T b as many, and the checks' own forward products n_in.
pub fn product_weights(layer: &Layer, x_mag: &[f64]) -> Vec<f64> {
    abs_affine(
        layer,
        layer.bias(),
        x_mag,
        gamma(layer.input_size().max(layer.output_size()) + layer.chained_terms() + 2),
    )
}

/// gamma_{n+2} (|W| x_mag + |b|) + 4 u z_mag for each neuron of `layer` (see the module's
/// documentation): `x_mag` bounds the layer's input, `z_mag` its pre-activation.
pub fn step_weights(layer: &Layer, x_mag: &[f64], z_mag: &[f64]) -> Vec<f64> {
    product_weights(layer, x_mag).into_iter().zip(z_mag).map(|(a, z)| a + 4.0 * UNIT_ROUNDOFF * z).collect()
}

/// g (|W| x + |b|) per neuron of `layer` (x >= 0; `b` as long as the layer's output), with the
/// rounding of this very computation covered by a relative 1e-12.
pub fn abs_affine(layer: &Layer, b: &[f64], x: &[f64], g: f64) -> Vec<f64> {
    let g = g * (1.0 + 1e-12);
    layer.abs_mul_vec(x).iter().zip(b).map(|(a, b)| (a + b.abs()) * g).collect()
}

/// The error of one backward step for one column: sum_i |v_i| w_i plus gamma_{n+1} times
/// `offsets` (sum_i |lam_i o_i|, accumulated by the relaxation), with v the relaxed coefficients.
pub fn step_error(v: &[f64], w: &[f64], offsets: f64) -> f64 {
    let s = crate::linalg::abs_dot(v, w);
    (s + gamma(v.len() + 1) * offsets) * (1.0 + 1e-12)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chord_lies_above_the_relu_at_both_ends_in_exact_arithmetic() {
        // s l + o >= 0 and s u + o >= u for the stored floats: the error-free product gives s l
        // exactly as p + e (p = fl(s l), e = fma(s, l, -p)); the margin o leaves over -p is
        // several ulps of p, far above the rounding of the checks' own sums.
        let two_prod = |a: f64, b: f64| {
            let p = a * b;
            (p, a.mul_add(b, -p))
        };
        let cases = [(-1.0, 3.0), (-0.3, 1e-9), (-1e-9, 0.7), (-123.456, 0.001), (-0.1, 0.2), (-7.0, 7.0)];
        for (l, u) in cases {
            let (s, o) = relu_chord(l, u);
            let (p, e) = two_prod(s, l);
            // s l + o = p + e + o >= 0.
            assert!(p + o >= 0.0 && (p + o) + e >= 0.0, "{l} {u}");
            let (q, f) = two_prod(s, u);
            assert!((q + o - u) + f >= 0.0, "{l} {u}");
        }
    }

    #[test]
    fn lower_and_upper_move_outwards() {
        assert!(lower(1.0, 0.0) < 1.0 && upper(1.0, 0.0) > 1.0);
        assert!(lower(1.0, 1e-3) <= 1.0 - 1e-3);
        assert_eq!(lower(1.0, f64::INFINITY), f64::NEG_INFINITY);
        assert!(lower(f64::NAN, 0.0).is_nan());
        assert_eq!(lower(f64::NEG_INFINITY, 1.0), f64::NEG_INFINITY);
        assert_eq!(upper(f64::INFINITY, 1.0), f64::INFINITY);
    }
}
