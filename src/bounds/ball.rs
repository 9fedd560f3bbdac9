//! The support function of an l2 ball through a dense first layer, without forming W^T lam.
//!
//! The backward relaxation ends, for coefficients lam on the first layer's pre-activation
//! z = W x + b, with min over ||x - c||_2 <= eps of (W^T lam)^T x = lam^T (W c) - eps ||W^T lam||_2.
//! Forming W^T lam costs n_out n_in per column; but ||W^T lam||^2 = lam^T G lam with the Gram
//! matrix G = W W^T, which costs n_out^2: on the MNIST networks (784 inputs, 100-1024 first-layer
//! neurons) most of CROWN's l2 time went into that product. Only for the plain ball: with the
//! [0, 1] box the support function needs every coordinate of W^T lam.
//!
//! Sound in floating point (the model of [`super::rounding`]): with r_i >= ||W_i||_2 and
//! h = sum_i |lam_i| r_i, Cauchy-Schwarz gives |G_ij| <= (|W| |W|^T)_ij <= r_i r_j, so
//! * fl(W W^T) is within gamma_{n_in} (|W| |W|^T) <= gamma_{n_in} r r^T of G entrywise, and
//!   fl(lam^T fl(G lam)) within gamma_{2 n_out + 1} |lam|^T |G| |lam| of lam^T G lam: the exact
//!   lam^T G lam is at most the computed one plus gamma_{n_in + 2 n_out + 8} h^2;
//! * lam^T fl(W c) is within gamma_{n_in + n_out + 2} |lam|^T (|W| |c|) of lam^T W c.

use faer::MatRef;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};

use super::rounding::{UNIT_ROUNDOFF, gamma, lower};
use crate::linalg;
use crate::network::Layer;
use crate::spec::{InputSet, Norm};

/// What the ball's support through `layer` needs per set: the layer's Gram data, fl(W c) and
/// |W| |c| (rounded up).
pub struct BallSupport<'a> {
    gram: &'a crate::network::Gram,
    eps: f64,
    wc: Vec<f64>,
    wc_mag: Vec<f64>,
    n_in: usize,
}

impl<'a> BallSupport<'a> {
    /// The set-up for `set` (an l2 ball without a box, eps > 0) through the first layer `layer`
    /// (dense, fewer outputs than inputs); None where it does not apply.
    pub fn new(layer: &'a Layer, set: &InputSet) -> Option<Self> {
        if set.norm() != Norm::L2 || set.domain().is_some() || set.eps() <= 0.0 || !set.eps().is_finite() {
            return None;
        }
        let gram = layer.gram()?;
        let c = set.center();
        let wc = layer.mul_vec(c);
        let c_abs: Vec<f64> = c.iter().map(|v| v.abs()).collect();
        let up = 1.0 + gamma(layer.input_size() + 2);
        let wc_mag = layer.abs_mul_vec(&c_abs).into_iter().map(|v| v * up).collect();
        Some(Self { gram, eps: set.eps(), wc, wc_mag, n_in: layer.input_size() })
    }

    /// Lower bounds on min over the ball of (W x)_i and of -(W x)_i for the outputs i in `group`
    /// (all the first, then all the second): (W c)_i -/+ ... - eps r_i, no Gram product needed.
    pub fn unit_supports(&self, group: &[usize]) -> Vec<f64> {
        let g_lin = gamma(self.n_in + 2) * (1.0 + 1e-10);
        let one = |i: usize, sign: f64| {
            let r = self.eps * self.gram.row_norms[i];
            lower(sign * self.wc[i] - r, g_lin * self.wc_mag[i] + 2.0 * UNIT_ROUNDOFF * r)
        };
        group.iter().map(|&i| one(i, 1.0)).chain(group.iter().map(|&i| one(i, -1.0))).collect()
    }

    /// Lower bounds on min over the ball of lam\[:, s\]^T (W x) for every column s of `lam` (on the
    /// layer's outputs).
    pub fn support_columns(&self, lam: MatRef<'_, f64>) -> Vec<f64> {
        let n_out = lam.nrows();
        let mut glam = Mat::<f64>::zeros(n_out, lam.ncols());
        matmul(glam.as_mut(), Accum::Replace, self.gram.matrix.as_ref(), lam, 1.0, Par::Seq);
        let g_quad = gamma(self.n_in + 2 * n_out + 8) * (1.0 + 1e-10);
        let g_lin = gamma(self.n_in + n_out + 2) * (1.0 + 1e-10);
        // The rounding of the sums of nonnegative terms that bound the errors.
        let h_up = 1.0 + gamma(n_out + 2);
        let mut buf = Vec::new();
        (0..lam.ncols())
            .map(|s| {
                let l = linalg::column(lam, s, &mut buf);
                let gl = glam.col(s).try_as_col_major().expect("owned").as_slice();
                let q = linalg::dot(l, gl).max(0.0);
                let h = linalg::abs_dot(l, &self.gram.row_norms) * h_up;
                let norm = ((q + g_quad * h * h).sqrt() * (1.0 + 4.0 * UNIT_ROUNDOFF)).next_up();
                let r = self.eps * norm;
                let t = linalg::dot(l, &self.wc);
                let err = g_lin * linalg::abs_dot(l, &self.wc_mag) * h_up + 2.0 * UNIT_ROUNDOFF * r;
                lower(t - r, err)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Activation;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    #[test]
    fn the_gram_support_is_the_ball_support_from_below() {
        // Against min_linear of W^T lam (itself sound): equal up to both allowances, never above
        // the exact value lam^T W c - eps ||W^T lam|| computed in higher care below.
        let mut rng = StdRng::seed_from_u64(11);
        for (n_in, n_out) in [(5, 3), (40, 12), (784, 100)] {
            let w = Mat::from_fn(n_out, n_in, |_, _| rng.random::<f64>() * 2.0 - 1.0);
            let layer = Layer::new(w.clone(), vec![0.0; n_out], Activation::Relu);
            let c: Vec<f64> = (0..n_in).map(|_| rng.random::<f64>()).collect();
            for eps in [0.01, 0.5, 3.0] {
                let set = InputSet::new(c.clone(), eps, Norm::L2, None).unwrap();
                let ball = BallSupport::new(&layer, &set).expect("applies");
                let lam = Mat::from_fn(n_out, 6, |i, j| if (i + j) % 4 == 0 { 0.0 } else { rng.random::<f64>() - 0.5 });
                let got = ball.support_columns(lam.as_ref());
                let wt_lam = linalg::mul(w.transpose(), lam.as_ref());
                let direct = set.min_linear_columns(wt_lam.as_ref());
                for s in 0..6 {
                    let scale = 1.0 + direct[s].abs();
                    assert!((got[s] - direct[s]).abs() <= 1e-9 * scale, "{n_in} {eps}: {} vs {}", got[s], direct[s]);
                    // The exact value, with the dot products accumulated in pairs of floats.
                    let col: Vec<f64> = (0..n_in).map(|i| wt_lam[(i, s)]).collect();
                    let exact = linalg::dot(&col, &c) - eps * linalg::norm2(&col);
                    assert!(got[s] <= exact + 1e-12 * scale, "{} > {}", got[s], exact);
                }
            }
        }
    }

    #[test]
    fn it_applies_only_to_the_plain_ball_and_narrowing_dense_layers() {
        let layer = Layer::new(Mat::from_fn(2, 3, |i, j| (i + j) as f64), vec![0.0; 2], Activation::Relu);
        let wide = Layer::new(Mat::from_fn(4, 3, |i, j| (i + j) as f64), vec![0.0; 4], Activation::Relu);
        let ball = InputSet::new(vec![0.5; 3], 0.1, Norm::L2, None).unwrap();
        let boxed =
            InputSet::new(vec![0.5; 3], 0.1, Norm::L2, Some(crate::Domain::uniform(3, 0.0, 1.0).unwrap())).unwrap();
        let linf = InputSet::new(vec![0.5; 3], 0.1, Norm::Linf, None).unwrap();
        assert!(BallSupport::new(&layer, &ball).is_some());
        assert!(BallSupport::new(&wide, &ball).is_none());
        assert!(BallSupport::new(&layer, &boxed).is_none());
        assert!(BallSupport::new(&layer, &linf).is_none());
    }
}
