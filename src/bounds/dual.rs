//! The Wong-Kolter dual objective, evaluated directly from its dual variables.
//!
//! Wong & Kolter 2018, Theorem 1 (as presented in 004_79c7a41c77cceb0d.txt, section 6, and
//! 001_b3d5e3f2d36bac59.txt, section 4): for the objective c^T z_K (z_K the logits) and
//! pre-activation bounds \[l, u\], the dual network
//!
//! ```text
//! nu_K = -c,   nu_hat_k = W_k^T nu_{k+1},   nu_k = D_k nu_hat_k,
//! D_k = 1 (active, l >= 0), 0 (inactive, u <= 0), u/(u-l) (unstable)
//! J = -sum_k nu_{k+1}^T b_k - x_hat^T nu_hat_1 - eps ||nu_hat_1||_* + sum_k sum_{j unstable} l_kj [nu_kj]_+
//! ```
//!
//! gives J <= min c^T z_K over the ReLU network with inputs in the eps-ball (||.||_* the dual norm:
//! l1 for l_inf balls, l2 for l2 balls). Implemented in the original's layer-by-layer form, with
//! no shared code with [`super::linear`], so that the test "Fast-Lin == Wong-Kolter" compares two
//! independent computations. ReLU networks without a domain box only.

use super::PreActivationBounds;
use crate::error::{Error, Result};
use crate::network::{Activation, Network};
use crate::spec::{InputSet, Norm};

/// J(x_hat, nu(c)) for the objective c^T f(x), with the given pre-activation bounds.
pub fn wong_kolter_objective(net: &Network, set: &InputSet, pre: &PreActivationBounds, c: &[f64]) -> Result<f64> {
    let layers = net.layers();
    if set.domain().is_some() {
        return Err(Error::Unsupported("the Wong-Kolter formula here has no domain box".into()));
    }
    if layers.last().map(|l| l.activation()) != Some(Activation::Identity)
        || layers[..layers.len() - 1].iter().any(|l| l.activation() != Activation::Relu)
    {
        return Err(Error::Unsupported("the Wong-Kolter dual needs ReLU hidden layers".into()));
    }
    // nu on the logits (pre-activation of the last layer).
    let mut nu: Vec<f64> = c.iter().map(|v| -v).collect();
    let mut j = 0.0;
    for k in (0..layers.len()).rev() {
        let w = layers[k].weight();
        j -= nu.iter().zip(layers[k].bias()).map(|(a, b)| a * b).sum::<f64>();
        // nu_hat = W^T nu, by explicit loops.
        let mut nu_hat = vec![0.0; w.ncols()];
        for (col, nh) in nu_hat.iter_mut().enumerate() {
            for (row, &v) in nu.iter().enumerate() {
                *nh += w[(row, col)] * v;
            }
        }
        if k == 0 {
            let xhat = set.center();
            j -= xhat.iter().zip(&nu_hat).map(|(a, b)| a * b).sum::<f64>();
            let dual_norm = match set.norm() {
                Norm::Linf => nu_hat.iter().map(|v| v.abs()).sum::<f64>(),
                Norm::L2 => nu_hat.iter().map(|v| v * v).sum::<f64>().sqrt(),
            };
            j -= set.eps() * dual_norm;
            break;
        }
        let iv = &pre.layers[k - 1];
        nu = nu_hat
            .iter()
            .enumerate()
            .map(|(i, &nh)| {
                let (l, u) = (iv.lower[i], iv.upper[i]);
                if l >= 0.0 {
                    nh
                } else if u <= 0.0 {
                    0.0
                } else {
                    let d = u / (u - l);
                    let v = d * nh;
                    j += l * v.max(0.0);
                    v
                }
            })
            .collect();
    }
    Ok(j)
}
