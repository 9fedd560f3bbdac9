//! The checker's bound for networks with smooth activations (CRC: Singla & Feizi,
//! 003_695cd43508ad1041.txt, Definition 2 and Appendix C.3): a margin f with m I ⪯ ∇²f everywhere
//! (m <= 0 from [`crate::verify::crc::curvature_bounds`], proven by Cholesky) satisfies, on the l2
//! ball of radius rho around x0,
//!
//! ```text
//! f(x) >= f(x0) - ||∇f(x0)|| rho + m rho² / 2                                   (Taylor)
//! min f >= F(x̄) - ||∇F(x̄)||² / (2 (eta + m)),  F(x) = f(x) + eta/2 (||x - x0||² - rho²)
//!                                              for any eta > -m and any point x̄   (dual)
//! ```
//!
//! (F is (eta + m)-strongly convex, and min over the ball of f >= min over all x of F for eta >= 0.)
//! Both need f and ∇f at one point of the real-number network: computed in floating point, each
//! with an a-priori bound on its distance to the real value ([`value_and_gradient`]), and every
//! term rounded down.

use crate::bounds::rounding::{UNIT_ROUNDOFF, gamma, lower, upper};
use crate::network::{Activation, Network};

/// c^T f(x) and its input gradient in floating point, with a bound on the distance of each to the
/// real-number value for the stored weights: (value, its error, gradient, entrywise error).
///
/// Forward: fl(W h + b) is within gamma_{n+1} (|W| |h| + |b|) of W h + b, and an error e_h in h
/// moves it by |W| e_h; sigma is g-Lipschitz (g = sup |sigma'|) and its evaluation is within
/// 16 u of its value. Backward: the gradient on z is sigma'(z) times the gradient on sigma(z);
/// sigma' is h-Lipschitz (h = sup |sigma''|), so the computed z's error e_z moves it by h e_z, its
/// evaluation by 16 u; fl(W^T v) is within gamma_{n+1} |W|^T |v| of W^T v, and an error E_v in v
/// moves it by |W|^T E_v. Smooth activations and identity only.
pub(super) fn value_and_gradient(net: &Network, x: &[f64], c: &[f64]) -> Option<(f64, f64, Vec<f64>, Vec<f64>)> {
    let layers = net.layers();
    let slack = |v: f64| 16.0 * UNIT_ROUNDOFF * v.abs() + f64::MIN_POSITIVE;
    let mut h = x.to_vec();
    let mut e_h = vec![0.0; x.len()];
    // Per layer: computed pre-activation and its error.
    let mut zs: Vec<(Vec<f64>, Vec<f64>)> = Vec::with_capacity(layers.len());
    for layer in layers {
        let w = layer.weight();
        let g = gamma(layer.input_size() + 1);
        let consts = layer.activation().curvature_constants();
        if consts.is_none() && layer.activation() != Activation::Identity {
            return None;
        }
        let lipschitz = consts.map_or(1.0, |c| c.g);
        let (mut z, mut e_z) = (Vec::with_capacity(w.nrows()), Vec::with_capacity(w.nrows()));
        for i in 0..w.nrows() {
            let (mut v, mut mag, mut carried) = (0.0, 0.0, 0.0);
            for j in 0..w.ncols() {
                v += w[(i, j)] * h[j];
                mag += (w[(i, j)] * h[j]).abs();
                carried += w[(i, j)].abs() * e_h[j];
            }
            let b = layer.bias()[i];
            z.push(v + b);
            e_z.push(((g * (mag + b.abs()) + carried) * (1.0 + 4.0 * UNIT_ROUNDOFF)).next_up());
        }
        let act = layer.activation();
        h = z.iter().map(|&v| act.eval(v)).collect();
        e_h = if act == Activation::Identity {
            e_z.clone()
        } else {
            h.iter().zip(&e_z).map(|(a, e)| (lipschitz * e + slack(*a)) * (1.0 + 4.0 * UNIT_ROUNDOFF)).collect()
        };
        zs.push((z, e_z));
    }
    if h.iter().chain(&e_h).any(|v| !v.is_finite()) {
        return None;
    }
    let (value, value_mag) = c.iter().zip(&h).fold((0.0, 0.0), |(v, m), (a, b)| (v + a * b, m + (a * b).abs()));
    let value_err = c.iter().zip(&e_h).map(|(a, e)| a.abs() * e).sum::<f64>() * (1.0 + gamma(c.len() + 2))
        + gamma(c.len() + 2) * value_mag;
    // Backward: v on the output z of the last layer is c, exact.
    let mut v = c.to_vec();
    let mut e_v = vec![0.0; c.len()];
    for (k, layer) in layers.iter().enumerate().rev() {
        if k + 1 < layers.len() {
            // v is the gradient on h_{k+1} = sigma(z_{k+1}): times sigma'(z_{k+1}).
            let act = layer.activation();
            let (z, e_z) = &zs[k];
            if act != Activation::Identity {
                let hh = act.curvature_constants().map_or(0.0, |c| c.h);
                for i in 0..v.len() {
                    let d = act.derivative(z[i]);
                    let e_d = hh * e_z[i] + slack(d);
                    let nv = v[i] * d;
                    e_v[i] = ((d.abs() * e_v[i] + e_d * (v[i].abs() + e_v[i]) + UNIT_ROUNDOFF * nv.abs())
                        * (1.0 + 4.0 * UNIT_ROUNDOFF))
                        .next_up();
                    v[i] = nv;
                }
            }
        }
        // Through z_k = W_k h_k + b_k: the gradient on h_k is W_k^T v.
        let w = layer.weight();
        let g = gamma(w.nrows() + 1);
        let (mut nv, mut ne) = (vec![0.0; w.ncols()], vec![0.0; w.ncols()]);
        for j in 0..w.ncols() {
            let (mut s, mut mag, mut carried) = (0.0, 0.0, 0.0);
            for i in 0..w.nrows() {
                s += w[(i, j)] * v[i];
                mag += (w[(i, j)] * v[i]).abs();
                carried += w[(i, j)].abs() * e_v[i];
            }
            nv[j] = s;
            ne[j] = ((g * mag + carried) * (1.0 + 4.0 * UNIT_ROUNDOFF)).next_up();
        }
        v = nv;
        e_v = ne;
    }
    if v.iter().chain(&e_v).any(|x| !x.is_finite()) || !value.is_finite() || !value_err.is_finite() {
        return None;
    }
    Some((value, value_err, v, e_v))
}

/// An upper bound on the Euclidean norm of a vector known to within `err` entrywise of `v`.
fn norm_upper(v: &[f64], err: &[f64]) -> f64 {
    let s: f64 = v.iter().zip(err).map(|(a, e)| (a.abs() + e).powi(2)).sum();
    upper(s.sqrt(), gamma(v.len() + 4) * s.sqrt())
}

/// The Taylor bound at the center x0 on the ball of radius `rho` (see the module's text), or
/// -inf when the network's values are not finite.
pub(super) fn taylor_bound(net: &Network, x0: &[f64], c: &[f64], rho: f64, m: f64) -> f64 {
    let Some((f, e_f, g, e_g)) = value_and_gradient(net, x0, c) else {
        return f64::NEG_INFINITY;
    };
    let gn = norm_upper(&g, &e_g);
    let m = m.min(0.0);
    let terms = [f - e_f, -(gn * rho), 0.5 * m * rho * rho];
    let mag: f64 = terms.iter().map(|t| t.abs()).sum();
    lower(terms.iter().sum(), 8.0 * UNIT_ROUNDOFF * mag + e_f.abs() * 4.0 * UNIT_ROUNDOFF)
}

/// The dual bound at (eta, point) on the ball of radius `rho` around x0 (see the module's text):
/// -inf unless eta >= 0 and eta + m > 0.
pub(super) fn dual_bound(net: &Network, x0: &[f64], c: &[f64], rho: f64, m: f64, eta: f64, point: &[f64]) -> f64 {
    let m = m.min(0.0);
    let mu = eta + m;
    if !(eta.is_finite() && eta >= 0.0 && mu > 0.0) || point.len() != x0.len() {
        return f64::NEG_INFINITY;
    }
    let Some((f, e_f, g, e_g)) = value_and_gradient(net, point, c) else {
        return f64::NEG_INFINITY;
    };
    // ||x̄ - x0||², bracketed: each difference within u of its value, the sum within gamma_n.
    let d: Vec<f64> = point.iter().zip(x0).map(|(a, b)| a - b).collect();
    let d2: f64 = d.iter().map(|v| v * v).sum();
    let d2_low = (d2 * (1.0 - gamma(d.len() + 4))).max(0.0);
    // ∇F = ∇f + eta (x̄ - x0): entrywise error e_g plus the rounding of the sum and of eta d.
    let grad: Vec<f64> = g.iter().zip(&d).map(|(a, b)| a + eta * b).collect();
    let err: Vec<f64> = e_g
        .iter()
        .zip(g.iter().zip(&d))
        .map(|(e, (a, b))| e + 4.0 * UNIT_ROUNDOFF * (a.abs() + (eta * b).abs()) + f64::MIN_POSITIVE)
        .collect();
    let gn = norm_upper(&grad, &err);
    let quad = upper(gn * gn / (2.0 * mu), 8.0 * UNIT_ROUNDOFF * gn * gn / mu);
    let terms = [f - e_f, 0.5 * eta * d2_low, -0.5 * eta * rho * rho, -quad];
    let mag: f64 = terms.iter().map(|t| t.abs()).sum();
    lower(terms.iter().sum(), 8.0 * UNIT_ROUNDOFF * mag)
}
