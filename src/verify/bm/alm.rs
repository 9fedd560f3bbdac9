//! The augmented Lagrangian of BM-r (module docs of [`super`]): the constraint values at a
//! factor Y, their scales, the function Phi with its gradient through the matrix-free slack
//! operator, and the L-BFGS inner solver.

use std::time::Instant;

use faer::Mat;

use crate::error::Result;
use crate::network::Network;
use crate::spec::{InputSet, Norm};
use crate::verify::sdp::{HiddenBoxes, Multipliers, Relaxation, SlackOperator, flatten, unflatten};

/// Constraint values at X = Y_hat Y_hat^T in the layout of [`Multipliers`]: g (>= 0 feasible) for
/// inequalities, h (= 0 feasible) for the ReLU equalities; and the objective <F, X>.
pub(super) fn values(
    net: &Network,
    set: &InputSet,
    boxes: &HiddenBoxes,
    label: usize,
    target: usize,
    y: &Mat<f64>,
    products: bool,
) -> (f64, Multipliers) {
    let n0 = set.dim();
    let r = y.ncols();
    let (lo, hi) = set.bounding_box();
    let c = set.center();
    let u = |i: usize| y[(i, 0)];
    // Squared row norms of Y, summed column by column (contiguous).
    let mut rowsq = vec![0.0; y.nrows()];
    for k in 0..r {
        for (s, v) in rowsq.iter_mut().zip(y.col(k).iter()) {
            *s += v * v;
        }
    }
    let sq = |i: usize| rowsq[i];
    let ball = if set.norm() == Norm::L2 {
        let quad: f64 = (0..n0).map(|i| sq(i) - 2.0 * c[i] * u(i) + c[i] * c[i]).sum();
        set.eps() * set.eps() - quad
    } else {
        0.0
    };
    let coord = (0..n0).map(|i| -sq(i) + (lo[i] + hi[i]) * u(i) - lo[i] * hi[i]).collect();
    let lower = (0..n0).map(|i| u(i) - lo[i]).collect();
    let upper = (0..n0).map(|i| hi[i] - u(i)).collect();
    let layers = net.layers();
    let (mut nonneg, mut above, mut relu) = (Vec::new(), Vec::new(), Vec::new());
    let (mut post, mut cut) = (Vec::new(), Vec::new());
    let mut p = 0;
    let mut q = n0;
    for (k, layer) in layers[..layers.len() - 1].iter().enumerate() {
        let (n_in, n_out) = (layer.input_size(), layer.output_size());
        let yp = y.as_ref().subrows(p, n_in);
        let wy = crate::linalg::mul(layer.weight(), yp); // n_out x r
        let b = layer.bias();
        nonneg.push((0..n_out).map(|j| u(q + j)).collect());
        above.push((0..n_out).map(|j| u(q + j) - wy[(j, 0)] - b[j]).collect());
        let usable = |j: usize| boxes.usable(k, j);
        post.push(
            (0..n_out)
                .map(|j| {
                    let (lo, hi) = (boxes.lo[k][j], boxes.hi[k][j]);
                    if usable(j) { -sq(q + j) + (lo + hi) * u(q + j) - lo * hi } else { 0.0 }
                })
                .collect(),
        );
        cut.push(
            (0..n_out)
                .map(|j| {
                    if usable(j) {
                        boxes.slope[k][j] * (wy[(j, 0)] + b[j]) + boxes.offset[k][j] - u(q + j)
                    } else {
                        0.0
                    }
                })
                .collect(),
        );
        // diag[(Y - W Y_prev) Y^T] row by row, accumulated column by column.
        let mut cross = vec![0.0; n_out];
        for k in 0..r {
            let (yk, wk) = (y.col(k).subrows(q, n_out), wy.col(k));
            for ((c, a), w) in cross.iter_mut().zip(yk.iter()).zip(wk.iter()) {
                *c += a * w;
            }
        }
        relu.push((0..n_out).map(|j| sq(q + j) - cross[j] - b[j] * u(q + j)).collect());
        p = q;
        q += n_out;
    }
    let last = &layers[layers.len() - 1];
    let w = last.weight();
    let f = (0..w.ncols()).map(|i| (w[(label, i)] - w[(target, i)]) * u(p + i)).sum::<f64>() + last.bias()[label]
        - last.bias()[target];
    let products = if products { crate::verify::sdp::product_values(net, set, y.as_ref()) } else { Vec::new() };
    (f, Multipliers { ball, coord, lower, upper, nonneg, above, post, cut, relu, products })
}

/// The KKT errors of (Y, multipliers) reported in [`BmResult`].
#[allow(clippy::too_many_arguments)]
pub(super) fn kkt_errors(
    net: &Network,
    set: &InputSet,
    rel: &Relaxation,
    label: usize,
    target: usize,
    y: &Mat<f64>,
    mult: &[f64],
    like: &Multipliers,
) -> Result<(f64, f64)> {
    let n = y.nrows();
    let apply = |m: &Multipliers| -> Result<f64> {
        let op = SlackOperator::new(net, set, &rel.boxes, label, target, m, 0.0)?;
        let (mut v, mut out) = (vec![0.0; n + 1], vec![0.0; n + 1]);
        let mut worst = 0.0f64;
        for k in 0..y.ncols() {
            v[0] = if k == 0 { 1.0 } else { 0.0 };
            for i in 0..n {
                v[1 + i] = y[(i, k)];
            }
            op.apply_vec(&v, &mut out);
            worst = out[1..].iter().fold(worst, |a, b| a.max(b.abs()));
        }
        Ok(worst)
    };
    let zero = unflatten(&vec![0.0; mult.len()], like);
    let scale = 1.0 + 2.0 * apply(&zero)?;
    let residual = 2.0 * apply(&unflatten(mult, like))? / scale;
    let (_, vals) = values(net, set, &rel.boxes, label, target, y, !like.products.is_empty());
    let g = flatten(&vals);
    let n_ineq = crate::verify::sdp::inequality_count(like);
    let skip_ball = set.norm() != Norm::L2;
    let complementarity =
        (0..n_ineq).filter(|&i| !(i == 0 && skip_ball)).map(|i| (mult[i] * g[i]).abs()).fold(0.0, f64::max);
    Ok((residual, complementarity))
}

/// The scales s_i of the constraints in the layout of [`Multipliers`]: the augmented Lagrangian
/// works with g_i / s_i. The input constraints get (their natural size)^`power` (the ball eps^2, a
/// coordinate box (x_0i - lo)(hi - x_0i) its squared half-width, the linear sides the box's width),
/// the hidden ones 1. With one penalty for all, an l_inf box of half-width 0.015 (at most 2.3e-4)
/// is barely enforced next to ReLU equalities of order 100 on a network with large weights; see
/// [`Bm::input_scaling`] for what it buys. Scaling the hidden constraints too (by their boxes) made
/// the ReLU equalities stall instead.
pub(super) fn constraint_scales(net: &Network, set: &InputSet, power: f64, products: bool) -> Multipliers {
    let (lo, hi) = set.bounding_box();
    let lin = |w: f64| w.max(1e-3).powf(power);
    let quad = |w: f64| (w * w).max(1e-6).powf(power);
    let half: Vec<f64> = lo.iter().zip(&hi).map(|(l, h)| 0.5 * (h - l)).collect();
    let like = Multipliers::initial(net, set, 0.0).with_products(net, set, products);
    let mut m = unflatten(&vec![1.0; flatten(&like).len()], &like);
    m.ball = if set.norm() == Norm::L2 { quad(set.eps()) } else { 1.0 };
    m.coord = half.iter().map(|&r| quad(r)).collect();
    m.lower = half.iter().map(|&r| lin(2.0 * r)).collect();
    m.upper = m.lower.clone();
    // The input-box products stay unscaled: scaled like their input side ((2 r)^p), the augmented
    // Lagrangian ended at infeasibility 1.7e-3 and a plain bound of -382 on adv-mnist-mlp-2x100
    // (l_inf 0.1, image 87, target 5, 8400 iterations); unscaled at 4.3e-4 and -56.
    m
}

pub(super) struct Alm<'a> {
    pub(super) net: &'a Network,
    pub(super) set: &'a InputSet,
    pub(super) boxes: &'a HiddenBoxes,
    pub(super) label: usize,
    pub(super) target: usize,
    /// Flattened multipliers and which entries are inequalities.
    pub(super) mult: Vec<f64>,
    pub(super) n_ineq: usize,
    pub(super) rho: f64,
    pub(super) like: Multipliers,
    /// Constraint scales ([`constraint_scales`], flattened): `mult` multiplies g_i / s_i.
    pub(super) scale: Vec<f64>,
    /// Constraints left out (flattened; empty: none): no penalty, multipliers kept at 0.
    pub(super) skip: Vec<bool>,
}

impl Alm<'_> {
    /// Whether constraint i (flattened) is left out (`skip`).
    pub(super) fn left_out(&self, i: usize) -> bool {
        self.skip.get(i).copied().unwrap_or(false)
    }

    /// Phi, its gradient (n x r, flattened column-major) and the scaled constraint values g_i / s_i
    /// at Y.
    pub(super) fn eval(&self, y: &Mat<f64>) -> Result<(f64, Mat<f64>, Vec<f64>)> {
        let products = !self.like.products.is_empty();
        let (f, vals) = values(self.net, self.set, self.boxes, self.label, self.target, y, products);
        let mut g = flatten(&vals);
        for (v, s) in g.iter_mut().zip(&self.scale) {
            *v /= s;
        }
        let mut phi = f;
        let mut eff = vec![0.0; g.len()];
        for i in 0..g.len() {
            let (m, v, s) = (self.mult[i], g[i], self.scale[i]);
            if self.left_out(i) {
                continue;
            }
            if i < self.n_ineq {
                if i == 0 && self.set.norm() != Norm::L2 {
                    continue;
                }
                if v <= m / self.rho {
                    phi += -m * v + 0.5 * self.rho * v * v;
                    eff[i] = (m - self.rho * v) / s;
                } else {
                    phi += -m * m / (2.0 * self.rho);
                }
            } else {
                phi += m * v + 0.5 * self.rho * v * v;
                eff[i] = (m + self.rho * v) / s;
            }
        }
        let eff_m = unflatten(&eff, &self.like);
        let op = SlackOperator::new(self.net, self.set, self.boxes, self.label, self.target, &eff_m, 0.0)?;
        let n = y.nrows();
        let r = y.ncols();
        let v = Mat::from_fn(n + 1, r, |i, k| if i == 0 { if k == 0 { 1.0 } else { 0.0 } } else { y[(i - 1, k)] });
        let out = op.apply_mat(v.as_ref());
        let grad = Mat::from_fn(n, r, |i, k| 2.0 * out[(1 + i, k)]);
        Ok((phi, grad, g))
    }
}

fn dot(a: &Mat<f64>, b: &Mat<f64>) -> f64 {
    (0..a.ncols()).map(|k| a.col(k).transpose() * b.col(k)).sum()
}

/// L-BFGS (memory 8) with Armijo backtracking on Phi; returns iterations used.
pub(super) fn lbfgs(alm: &Alm<'_>, y: &mut Mat<f64>, iters: usize, deadline: Instant) -> Result<usize> {
    let (mut f, mut g, _) = alm.eval(y)?;
    let mut hist: Vec<(Mat<f64>, Mat<f64>, f64)> = Vec::new();
    let mut used = 0;
    for _ in 0..iters {
        if Instant::now() > deadline {
            break;
        }
        let gnorm = g.norm_max();
        if !gnorm.is_finite() || gnorm < 1e-9 * (1.0 + f.abs()) {
            break;
        }
        // Two-loop recursion.
        let mut d = g.clone();
        let mut alphas = Vec::with_capacity(hist.len());
        for (s, yv, rho) in hist.iter().rev() {
            let a = rho * dot(s, &d);
            d -= yv * faer::Scale(a);
            alphas.push(a);
        }
        if let Some((s, yv, _)) = hist.last() {
            let gamma = dot(s, yv) / dot(yv, yv);
            d *= faer::Scale(gamma);
        }
        for ((s, yv, rho), a) in hist.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(yv, &d);
            d += s * faer::Scale(a - b);
        }
        d *= faer::Scale(-1.0);
        let mut slope = dot(&g, &d);
        if slope >= 0.0 {
            d = &g * faer::Scale(-1.0);
            slope = -dot(&g, &g);
            hist.clear();
        }
        let mut step = if hist.is_empty() { (1.0 / g.norm_l2().max(1e-12)).min(1.0) } else { 1.0 };
        let mut accepted = false;
        for _ in 0..30 {
            let trial = &*y + &d * faer::Scale(step);
            let (ft, gt, _) = alm.eval(&trial)?;
            if ft.is_finite() && ft <= f + 1e-4 * step * slope {
                let s = &trial - &*y;
                let yv = &gt - &g;
                let sy = dot(&s, &yv);
                if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&yv, &yv).sqrt() {
                    hist.push((s, yv, 1.0 / sy));
                    if hist.len() > 8 {
                        hist.remove(0);
                    }
                }
                *y = trial;
                f = ft;
                g = gt;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        used += 1;
        if !accepted {
            break;
        }
    }
    Ok(used)
}
