//! Curvature-based robustness certificates (CRC; Singla & Feizi, 003_695cd43508ad1041.txt) for
//! networks with twice-differentiable activations (sigmoid, tanh, softplus).
//!
//! # Curvature bounds
//!
//! For the margin f = z_y - z_t, m I ⪯ ∇²f(x) ⪯ M I for every x ([`curvature_bounds`]):
//! * one hidden layer, Theorem 3: ∇²f = W1^T diag(v ⊙ σ''(z)) W1 with v = W2_y - W2_t, so
//!   N ⪯ ∇²f ⪯ P with P = W1^T diag(max(v h_U, v h_L)) W1, N = W1^T diag(min(v h_U, v h_L)) W1,
//!   and M = λ_max(P), m = λ_min(N), each **proven** by a shifted Cholesky of M' I - P (resp.
//!   N - m' I) that covers the rounding of forming P ([`crate::linalg::psd`]);
//! * deeper, Theorem 4 (eq. (6)-(7)), with per-layer constants: ||∇²f|| <= K =
//!   sum_I h_I r_I² max_j S_j^(I), r_1 = ||W1||, r_I = g_{I-1} ||W_I|| r_{I-1}, S^(L-1) = |v|,
//!   S^(I) = g_I S^(I+1) |W_{I+1}|; spectral norms proven the same way; M = K, m = -K.
//!
//! The activation constants g, h, h_L, h_U are computed ([`Activation::curvature_constants`]).
//!
//! # The certificate (Definition 1, Appendix C.2/C.4)
//!
//! p* = ½ dist(x0, {f = 0})² >= d(η) = min_x ½||x - x0||² + η f(x) for every η, and for
//! 0 <= η < -1/m the inner function F is strongly convex with modulus μ = 1 + η m, so
//! d(η) >= F(x) - ||∇F(x)||² / (2μ) at **any** x: the reported radius sqrt(2 max(0, ·)) is proven
//! whatever the majorization-minimization iterations (15) reached. Bisection on η as in C.4.
//!
//! # The margin bound (Definition 2, Appendix C.3/C.5)
//!
//! min over ||x - x0|| <= ρ of f(x) >= min_x f(x) + η/2 (||x - x0||² - ρ²) for η >= 0, strongly
//! convex with modulus η + m for η > -m: the same bound F(x) - ||∇F||² / (2(η + m)) gives a proven
//! lower bound on the margin over the l2 ball (and so over ball ∩ box), which is what the `crc`
//! verifier reports; the iterates (20), projected onto the ball, are the curvature attack.

use serde::{Deserialize, Serialize};

use super::{BoundReport, Stats, Verifier};
use crate::error::{Error, Result};
use crate::linalg::psd::{UNIT_ROUNDOFF, gamma, proves_psd};
use crate::network::{Activation, Network};
use crate::spec::{InputSet, Norm};
use faer::{Mat, Side};

/// Global bounds m I ⪯ ∇²(z_y - z_t) ⪯ M I, with K >= max(|m|, M).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvatureBounds {
    /// m (<= 0).
    pub lower: f64,
    /// M (>= 0).
    pub upper: f64,
    /// K = max(|m|, M).
    pub k: f64,
}

fn check_smooth(net: &Network) -> Result<Vec<crate::network::CurvatureConstants>> {
    let layers = net.layers();
    if layers[layers.len() - 1].activation() != Activation::Identity {
        return Err(Error::Unsupported("CRC needs an affine last layer".into()));
    }
    layers[..layers.len() - 1]
        .iter()
        .map(|l| {
            l.activation().curvature_constants().ok_or_else(|| {
                Error::Unsupported(
                    "CRC needs twice-differentiable activations (sigmoid, tanh, softplus); ReLU is not".into(),
                )
            })
        })
        .collect()
}

/// A proven upper bound on λ_max(A) for a symmetric A within `err` (Frobenius) of the exact one.
fn proven_lambda_max(a: &Mat<f64>, err: f64) -> Result<f64> {
    let n = a.nrows();
    let est = a
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| Error::InvalidArgument(format!("eigenvalues: {e:?}")))?
        .last()
        .copied()
        .unwrap_or(0.0);
    let neg = Mat::from_fn(n, n, |i, j| -a[(i, j)]);
    let scale = a.norm_max().max(f64::MIN_POSITIVE);
    let mut step = 1e-12 * scale + err;
    for _ in 0..80 {
        let t = est + step;
        // -A - (-t) I = t I - A ⪰ 0.
        if proves_psd(neg.as_ref(), -t, err) {
            return Ok(t);
        }
        step *= 4.0;
    }
    Err(Error::InvalidArgument("could not prove an eigenvalue bound (non-finite weights?)".into()))
}

/// W^T diag(d) W and a Frobenius bound on its rounding error.
fn congruence(w: faer::MatRef<'_, f64>, d: &[f64]) -> (Mat<f64>, f64) {
    let scaled = Mat::from_fn(w.nrows(), w.ncols(), |i, j| d[i] * w[(i, j)]);
    let p = crate::linalg::mul(w.transpose(), scaled.as_ref());
    let abs_scaled = Mat::from_fn(w.nrows(), w.ncols(), |i, j| (d[i] * w[(i, j)]).abs());
    let abs_w = Mat::from_fn(w.nrows(), w.ncols(), |i, j| w[(i, j)].abs());
    let a = crate::linalg::mul(abs_w.transpose(), abs_scaled.as_ref());
    let sym = Mat::from_fn(p.nrows(), p.ncols(), |i, j| 0.5 * (p[(i, j)] + p[(j, i)]));
    (sym, gamma(w.nrows() + 4) * a.norm_l2())
}

/// A proven upper bound on the spectral norm ||W||.
pub fn spectral_norm_upper(w: faer::MatRef<'_, f64>) -> Result<f64> {
    let (g, err) = if w.ncols() <= w.nrows() {
        congruence(w, &vec![1.0; w.nrows()])
    } else {
        congruence(w.transpose(), &vec![1.0; w.ncols()])
    };
    let l = proven_lambda_max(&g, err)?;
    Ok(l.max(0.0).sqrt() * (1.0 + 4.0 * UNIT_ROUNDOFF))
}

/// The curvature bounds of the margin z_label - z_target (Theorem 3 for one hidden layer, Theorem
/// 4 otherwise). They depend on the network and the class pair only, not on the input: each pair
/// is computed once per process and network ([`Network::fingerprint`]) and shared by every image
/// and thread (the first caller computes, the others wait for it): on a 784-1024-10 softplus
/// network one eigenvalue problem of order 784 per class pair, instead of one per image and pair.
pub fn curvature_bounds(net: &Network, label: usize, target: usize) -> Result<CurvatureBounds> {
    let consts = check_smooth(net)?;
    net.check_label(label)?;
    net.check_label(target)?;
    type Slot = std::sync::Arc<std::sync::OnceLock<std::result::Result<CurvatureBounds, String>>>;
    type Cache = std::sync::Mutex<std::collections::HashMap<(u64, usize, usize), Slot>>;
    static CACHE: std::sync::OnceLock<Cache> = std::sync::OnceLock::new();
    let key = (net.fingerprint(), label, target);
    let slot: Slot = {
        let mut map = CACHE.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
        map.entry(key).or_default().clone()
    };
    slot.get_or_init(|| compute_curvature_bounds(net, &consts, label, target).map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::InvalidArgument)
}

/// [`curvature_bounds`] without the cache, from the activations' constants ([`check_smooth`]).
fn compute_curvature_bounds(
    net: &Network,
    consts: &[crate::network::CurvatureConstants],
    label: usize,
    target: usize,
) -> Result<CurvatureBounds> {
    let layers = net.layers();
    let last = &layers[layers.len() - 1];
    let wl = last.weight();
    let v: Vec<f64> = (0..wl.ncols()).map(|i| wl[(label, i)] - wl[(target, i)]).collect();
    if layers.len() == 1 {
        return Ok(CurvatureBounds { lower: 0.0, upper: 0.0, k: 0.0 });
    }
    if layers.len() == 2 {
        let c = consts[0];
        let w1 = layers[0].weight();
        let hi: Vec<f64> = v.iter().map(|&vi| (vi * c.h_upper).max(vi * c.h_lower)).collect();
        let lo: Vec<f64> = v.iter().map(|&vi| (vi * c.h_upper).min(vi * c.h_lower)).collect();
        let (p, ep) = congruence(w1, &hi);
        let (nmat, en) = congruence(w1, &lo);
        let upper = proven_lambda_max(&p, ep)?.max(0.0);
        let neg_n = Mat::from_fn(nmat.nrows(), nmat.ncols(), |i, j| -nmat[(i, j)]);
        let lower = (-proven_lambda_max(&neg_n, en)?).min(0.0);
        return Ok(CurvatureBounds { lower, upper, k: upper.max(-lower) });
    }
    // Theorem 4. Hidden layers 0..L-2 (0-based); r_I for each, S^(I) rows.
    let hidden = layers.len() - 1;
    let mut r = Vec::with_capacity(hidden);
    for (i, layer) in layers[..hidden].iter().enumerate() {
        let norm = spectral_norm_upper(layer.weight())?;
        r.push(if i == 0 { norm } else { consts[i - 1].g * norm * r[i - 1] });
    }
    let mut k = 0.0;
    let mut s: Vec<f64> = v.iter().map(|x| x.abs()).collect();
    for i in (0..hidden).rev() {
        let smax = s.iter().fold(0.0f64, |a, &b| a.max(b));
        k += consts[i].h * r[i] * r[i] * smax;
        if i > 0 {
            // S^(I-1) = g_{I-1} S^(I) |W_I|.
            let w = layers[i].weight();
            s = (0..w.ncols())
                .map(|c| consts[i - 1].g * (0..w.nrows()).map(|j| s[j] * w[(j, c)].abs()).sum::<f64>())
                .collect();
        }
    }
    // The sums above are rounded: widen by a relative bound on their error.
    let k = k * (1.0 + gamma(4 * layers.iter().map(|l| l.input_size()).sum::<usize>()));
    Ok(CurvatureBounds { lower: -k, upper: k, k })
}

/// Settings of the certificate and attack optimizations (Appendix C.4/C.5).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Crc {
    /// Bisection steps on η (default 30, as the paper).
    pub bisection: usize,
    /// Majorization-minimization iterations per η (default 20, as the paper).
    pub inner: usize,
}

impl Default for Crc {
    fn default() -> Self {
        Self { bisection: 30, inner: 20 }
    }
}

/// A proven radius and the point of the best dual.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    /// Proven lower bound on the l2 distance from x0 to {z_label = z_target}.
    pub radius: f64,
    /// The η of the best dual bound.
    pub eta: f64,
    /// The curvature bounds used.
    pub curvature: CurvatureBounds,
}

impl Crc {
    /// The certified l2 radius against one target (0 when x0 is not classified above it).
    pub fn certify_target(&self, net: &Network, x0: &[f64], label: usize, target: usize) -> Result<Certificate> {
        let curvature = curvature_bounds(net, label, target)?;
        net.check_input(x0)?;
        let (f0, _) = net.margin_gradient(x0, label, target)?;
        if f0.is_nan() || f0 <= 0.0 {
            return Ok(Certificate { radius: 0.0, eta: 0.0, curvature });
        }
        let (m, k) = (curvature.lower, curvature.k);
        // η in [0, -1/m); with m = 0 the margin is affine-bounded: take a wide range.
        let mut eta_hi = if m < 0.0 { -1.0 / m } else { 1e6 };
        let mut eta_lo = 0.0;
        let mut x = x0.to_vec();
        let mut best = (0.0f64, 0.0f64);
        for _ in 0..self.bisection {
            let eta = 0.5 * (eta_lo + eta_hi);
            let mu = 1.0 + eta * m.min(0.0);
            for _ in 0..self.inner {
                let (_, g) = net.margin_gradient(&x, label, target)?;
                let a = (eta * k).abs();
                x = (0..x.len()).map(|i| (x0[i] + a * x[i] - eta * g[i]) / (1.0 + a)).collect();
            }
            let (f, g) = net.margin_gradient(&x, label, target)?;
            let d2: f64 = x.iter().zip(x0).map(|(a, b)| (a - b) * (a - b)).sum();
            let value = 0.5 * d2 + eta * f;
            let grad2: f64 = (0..x.len()).map(|i| (x[i] - x0[i] + eta * g[i]).powi(2)).sum();
            let lb = value - grad2 / (2.0 * mu);
            let lb = lb - 1e-12 * (value.abs() + grad2 / mu + 1.0);
            if lb > best.0 {
                best = (lb, eta);
            }
            if f > 0.0 {
                eta_lo = eta;
            } else {
                eta_hi = eta;
            }
        }
        let radius = if best.0 > 0.0 { (2.0 * best.0).sqrt() * (1.0 - 1e-12) } else { 0.0 };
        Ok(Certificate { radius, eta: best.1, curvature })
    }

    /// The certified radius against every other class: the minimum over targets.
    pub fn certified_radius(&self, net: &Network, x0: &[f64], label: usize) -> Result<f64> {
        let mut r = f64::INFINITY;
        for t in (0..net.num_classes()).filter(|&t| t != label) {
            r = r.min(self.certify_target(net, x0, label, t)?.radius);
        }
        Ok(r)
    }

    /// A proven lower bound on min over ||x - x0|| <= rho of z_label - z_target (the dual of
    /// Definition 2), and the best attack point found (projected into the ball) with its margin.
    pub fn margin_bound(
        &self,
        net: &Network,
        x0: &[f64],
        rho: f64,
        label: usize,
        target: usize,
    ) -> Result<(f64, Vec<f64>, f64)> {
        let (best, attack, margin, _) = self.margin_bound_traced(net, x0, rho, label, target)?;
        Ok((best, attack, margin))
    }

    /// [`Crc::margin_bound`] with the (eta, point) of its best dual bound (None: the Taylor bound
    /// at x0 was the best), the evidence of a certificate ([`crate::certificate`]).
    #[allow(clippy::type_complexity)]
    pub fn margin_bound_traced(
        &self,
        net: &Network,
        x0: &[f64],
        rho: f64,
        label: usize,
        target: usize,
    ) -> Result<(f64, Vec<f64>, f64, Option<(f64, Vec<f64>)>)> {
        let curvature = curvature_bounds(net, label, target)?;
        net.check_input(x0)?;
        let (m, k) = (curvature.lower.min(0.0), curvature.k.max(1e-300));
        let (f0, g0) = net.margin_gradient(x0, label, target)?;
        // The Taylor bound with the global curvature: always valid.
        let gn = g0.iter().map(|v| v * v).sum::<f64>().sqrt();
        let mut best = f0 - gn * rho + 0.5 * m * rho * rho;
        let mut dual = None;
        let mut attack = (x0.to_vec(), f0);
        let (mut eta_lo, mut eta_hi) = (-m, 20.0 * (1.0 - m));
        let mut x = x0.to_vec();
        for _ in 0..self.bisection {
            let eta = 0.5 * (eta_lo + eta_hi);
            let mu = eta + m;
            if mu <= 0.0 {
                eta_lo = eta;
                continue;
            }
            for _ in 0..self.inner {
                let (_, g) = net.margin_gradient(&x, label, target)?;
                x = (0..x.len()).map(|i| (k * x[i] + eta * x0[i] - g[i]) / (k + eta)).collect();
            }
            let (f, g) = net.margin_gradient(&x, label, target)?;
            let d2: f64 = x.iter().zip(x0).map(|(a, b)| (a - b) * (a - b)).sum();
            let value = f + 0.5 * eta * (d2 - rho * rho);
            let grad2: f64 = (0..x.len()).map(|i| (g[i] + eta * (x[i] - x0[i])).powi(2)).sum();
            let lb = value - grad2 / (2.0 * mu) - 1e-12 * (value.abs() + grad2 / mu + 1.0);
            if lb > best {
                best = lb;
                dual = Some((eta, x.clone()));
            }
            // The iterate, projected into the ball, is an attack.
            let dist = d2.sqrt();
            let p: Vec<f64> = if dist > rho {
                (0..x.len()).map(|i| x0[i] + (x[i] - x0[i]) * rho / dist).collect()
            } else {
                x.clone()
            };
            let fp = net.margin(&p, label, target)?;
            if fp < attack.1 {
                attack = (p, fp);
            }
            if dist <= rho {
                eta_hi = eta;
            } else {
                eta_lo = eta;
            }
        }
        Ok((best, attack.0, attack.1, dual))
    }
}

impl Verifier for Crc {
    fn name(&self) -> &'static str {
        "crc"
    }

    /// Per bounded target, the (eta, point) of its best dual bound (the margin bound is
    /// recomputed; the checker also tries the Taylor bound at the center).
    fn evidence(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        report: &crate::certify::ImageReport,
    ) -> Result<Option<crate::certificate::Evidence>> {
        use crate::certificate::{Evidence, TargetEvidence};
        let mut targets = Vec::new();
        for t in report.bounded_targets() {
            let (_, _, _, dual) = self.margin_bound_traced(network, set.center(), set.eps(), label, t)?;
            let proofs = match dual {
                Some((eta, point)) => vec![TargetEvidence::Curvature { eta, point }],
                None => Vec::new(),
            };
            targets.push((t, proofs));
        }
        Ok(Some(Evidence { relaxations: Vec::new(), layers: Vec::new(), targets }))
    }
    fn lower_bounds(&self, network: &Network, set: &InputSet, label: usize, targets: &[usize]) -> Result<BoundReport> {
        let start = std::time::Instant::now();
        super::check_query(network, set, label, targets)?;
        if set.norm() != Norm::L2 {
            return Err(Error::Unsupported("CRC certifies l2 balls; use --norm l2".into()));
        }
        check_smooth(network)?;
        let x0 = set.center();
        let mut bounds = Vec::with_capacity(targets.len());
        let mut radius = f64::INFINITY;
        for &t in targets {
            let (lb, _, _) = self.margin_bound(network, x0, set.eps(), label, t)?;
            bounds.push((t, lb));
            radius = radius.min(self.certify_target(network, x0, label, t)?.radius);
        }
        Ok(BoundReport {
            bounds,
            stats: Stats {
                seconds: start.elapsed().as_secs_f64(),
                unstable_neurons: None,
                lp: None,
                certified_radius: Some(radius),
                bm: None,
            },
            counterexample: None,
        })
    }
}
