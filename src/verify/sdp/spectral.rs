//! The spectral step of Proposition 3.1: the best z0 and t for a Lagrangian matrix, the proven
//! bound with its rounding, and the certificate that anyone can check.

use faer::{Mat, MatRef, Side};
use serde::{Deserialize, Serialize};

use super::*;
use crate::error::{Error, Result};
use crate::linalg::psd::{UNIT_ROUNDOFF, proves_psd};
use crate::network::Network;
use crate::spec::InputSet;

/// The output of the spectral step: a bound z0 + R^2 t with M - z0 e0 e0^T - t I proven ⪰ 0.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SpectralBound {
    /// The proven lower bound on phi.
    pub bound: f64,
    /// t <= min(0, lambda_min(S)) (proven).
    pub t: f64,
    /// z0.
    pub z0: f64,
    /// The primal point x = -(Q - tI)^{-1} m of the Schur form (the minimizer of the relaxation's
    /// Lagrangian; its constraint values are the supergradient used by SDP-FO).
    pub point: Vec<f64>,
}

/// Above this size [`schur_optimum`] solves the secular equation by Newton steps on Cholesky
/// factors instead of a dense eigendecomposition (~10 n^3 work against n^3 / 3 per step).
pub(super) const SCHUR_NEWTON_MIN_DIM: usize = 128;

/// Best z0 and t for the Schur form of M (an estimate, not proven: [`certified_bound`] proves
/// whatever comes out): the maximum over t <= min(0, lambda_min(Q)) of the concave
/// f(t) = m00 + (R^2 - 1) t - m^T (Q - tI)^{-1} m, with z0 = m00 - t - m^T (Q - tI)^{-1} m and
/// the primal point x = -(Q - tI)^{-1} m. Large matrices use [`schur_optimum_newton`], falling
/// back to the eigendecomposition if it fails.
pub(super) fn schur_optimum(m: MatRef<'_, f64>, r2: f64) -> Option<(f64, f64, Vec<f64>)> {
    if m.nrows() > SCHUR_NEWTON_MIN_DIM
        && let Some(opt) = schur_optimum_newton(m, r2)
    {
        return Some(opt);
    }
    schur_optimum_eig(m, r2)
}

/// [`schur_optimum`] by dense eigendecomposition of Q: f'(t) = (R^2 - 1) - sum p_i^2 / (l_i - t)^2
/// in the eigenbasis, bisected.
pub(super) fn schur_optimum_eig(m: MatRef<'_, f64>, r2: f64) -> Option<(f64, f64, Vec<f64>)> {
    let n = m.nrows() - 1;
    let q = m.submatrix(1, 1, n, n);
    let eig = q.self_adjoint_eigen(Side::Lower).ok()?;
    let lam: Vec<f64> = (0..n).map(|i| eig.S()[i]).collect();
    let u = eig.U();
    let mt: Vec<f64> = (0..n).map(|i| m[(1 + i, 0)]).collect();
    let p: Vec<f64> = (0..n).map(|j| (0..n).map(|i| u[(i, j)] * mt[i]).sum()).collect();
    let l1 = lam.first().copied().unwrap_or(0.0);
    let scale = 1.0 + l1.abs() + lam.last().map_or(0.0, |v| v.abs());
    let t_hi = if l1 > 1e-9 * scale { 0.0f64.min(l1 - 1e-9 * scale) } else { l1 - 1e-9 * scale };
    let dphi = |t: f64| (r2 - 1.0) - lam.iter().zip(&p).map(|(l, pi)| pi * pi / ((l - t) * (l - t))).sum::<f64>();
    let t = if dphi(t_hi) >= 0.0 {
        t_hi
    } else {
        let mut lo_t = t_hi - scale;
        let mut k = 0;
        while dphi(lo_t) < 0.0 && k < 200 {
            lo_t = t_hi - (t_hi - lo_t) * 2.0;
            k += 1;
        }
        let mut hi_t = t_hi;
        for _ in 0..200 {
            let mid = 0.5 * (lo_t + hi_t);
            if mid <= lo_t || mid >= hi_t {
                break;
            }
            if dphi(mid) >= 0.0 {
                lo_t = mid;
            } else {
                hi_t = mid;
            }
        }
        lo_t
    };
    let coef: Vec<f64> = lam.iter().zip(&p).map(|(l, pi)| pi / (l - t)).collect();
    let x: Vec<f64> = (0..n).map(|i| -(0..n).map(|j| u[(i, j)] * coef[j]).sum::<f64>()).collect();
    let quad: f64 = p.iter().zip(&coef).map(|(pi, c)| pi * c).sum();
    let z0 = m[(0, 0)] - t - quad;
    Some((t, z0, x))
}

/// [`schur_optimum`] by the More-Sorensen iteration for the trust-region subproblem (Nocedal &
/// Wright, Algorithm 4.3, written in t = -lambda): f'(t) = (R^2 - 1) - ||s(t)||^2 with
/// s = (Q - tI)^{-1} m, so with Delta^2 = R^2 - 1 the optimum is t = 0 if Q ≻ 0 and
/// ||s(0)|| <= Delta, else the root of ||s(t)|| = Delta below lambda_min(Q), or lambda_min(Q)
/// itself when there is none (the "hard case"). Newton steps on 1/||s(t)|| = 1/Delta,
/// t <- t - (||s|| / ||L^{-1} s||)^2 (||s|| - Delta) / Delta with Q - tI = L L^T, each one
/// Cholesky factorization (n^3 / 3 flops, against ~10 n^3 for the eigendecomposition). The start
/// steps down from min(0, min_j Q_jj) >= lambda_min(Q) until Q - tI factors, so it usually lies
/// just below lambda_min(Q), above the root, where the steps descend to the root monotonically;
/// a step that would leave the range goes a tenth of the way to its end instead, and one that
/// fails to factor is halved back toward the last good t. Keeps the best f seen. None if nothing
/// factors (e.g. non-finite entries).
pub(super) fn schur_optimum_newton(m: MatRef<'_, f64>, r2: f64) -> Option<(f64, f64, Vec<f64>)> {
    use faer::linalg::triangular_solve::{solve_lower_triangular_in_place, solve_upper_triangular_in_place};
    let n = m.nrows() - 1;
    let delta2 = r2 - 1.0;
    if delta2.is_nan() || delta2 <= 0.0 || n == 0 {
        return None;
    }
    let q = m.submatrix(1, 1, n, n);
    let g: Vec<f64> = (0..n).map(|i| m[(1 + i, 0)]).collect();
    let c = m[(0, 0)];
    // Gershgorin: every eigenvalue of Q lies in [lo, hi]; lambda_min(Q) <= min_j Q_jj.
    let (mut lo, mut hi, mut min_diag) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY);
    for j in 0..n {
        let off: f64 = (0..n).filter(|&i| i != j).map(|i| q[(i, j)].abs()).sum();
        lo = lo.min(q[(j, j)] - off);
        hi = hi.max(q[(j, j)] + off);
        min_diag = min_diag.min(q[(j, j)]);
    }
    let scale = 1.0 + lo.abs() + hi.abs();
    // s = (Q - tI)^{-1} g and ||L^{-1} s||^2, or None if Q - tI does not factor.
    let solve = |t: f64| -> Option<(Vec<f64>, f64)> {
        let a = Mat::from_fn(n, n, |i, j| if i == j { q[(i, j)] - t } else { q[(i, j)] });
        let llt = a.llt(Side::Lower).ok()?;
        let l = llt.L();
        let mut sv = Mat::from_fn(n, 1, |i, _| g[i]);
        solve_lower_triangular_in_place(l, sv.as_mut(), faer::Par::Seq);
        solve_upper_triangular_in_place(l.transpose(), sv.as_mut(), faer::Par::Seq);
        let mut w = sv.clone();
        solve_lower_triangular_in_place(l, w.as_mut(), faer::Par::Seq);
        let s: Vec<f64> = sv.col(0).iter().copied().collect();
        let nw2 = w.col(0).squared_norm_l2();
        (s.iter().all(|v| v.is_finite()) && nw2.is_finite()).then_some((s, nw2))
    };
    let norm2 = |s: &[f64]| s.iter().map(|v| v * v).sum::<f64>();
    // m^T (Q - tI)^{-1} m = g^T s; f(t) = z0(t) + R^2 t.
    let quad = |s: &[f64]| g.iter().zip(s).map(|(a, b)| a * b).sum::<f64>();
    let value = |t: f64, s: &[f64]| c + delta2 * t - quad(s);
    let finish = |t: f64, s: &[f64]| (t, c - t - quad(s), s.iter().map(|v| -v).collect::<Vec<f64>>());
    // t = 0 when Q ≻ 0 and the unconstrained minimizer is inside the ball.
    let mut t_up = 0.0f64.min(min_diag);
    if min_diag > 0.0
        && let Some((s, _)) = solve(0.0)
        && norm2(&s) <= delta2
    {
        return Some(finish(0.0, &s));
    }
    // Step down from t_up (>= lambda_min(Q)) in growing steps until Q - tI factors; below the
    // floor it factors in exact arithmetic (Gershgorin).
    let floor = lo.min(t_up) - 1e-9 * scale;
    let mut d = 1e-6 * scale;
    let (mut t, (mut s, mut nw2)) = loop {
        let t = (t_up - d).max(floor);
        if let Some(r) = solve(t) {
            break (t, r);
        }
        if t <= floor {
            return None;
        }
        t_up = t;
        d *= 8.0;
    };
    let delta = delta2.sqrt();
    let mut best = (value(t, &s), t, s.clone());
    let mut failed = false;
    for _ in 0..40 {
        let ns2 = norm2(&s);
        // Converged, or (root at lambda_min(Q)) within a hair of the end of the range.
        if (ns2 - delta2).abs() <= 1e-10 * delta2 || t_up - t <= 1e-10 * scale {
            break;
        }
        let ns = ns2.sqrt();
        let mut next = if nw2 > 0.0 { t - (ns2 / nw2) * (ns - delta) / delta } else { t_up };
        // f is concave: the step can gain at most |f'(t)| |next - t|.
        if (delta2 - ns2).abs() * (next - t).abs() <= 1e-12 * (1.0 + best.0.abs()) {
            break;
        }
        if failed {
            next = 0.5 * (t + t_up);
        } else if !next.is_finite() || next >= t_up {
            next = t_up - 0.1 * (t_up - t);
        }
        match solve(next) {
            Some((s2, w2)) => {
                failed = false;
                t = next;
                s = s2;
                nw2 = w2;
                let v = value(t, &s);
                if v > best.0 {
                    best = (v, t, s.clone());
                }
            }
            None => {
                failed = true;
                t_up = next;
            }
        }
    }
    Some(finish(best.1, &best.2))
}

/// The proven bound min over ||(1, x)||^2 <= R^2 of (1, x)^T M (1, x) >= z0 + R^2 t, for M within
/// `err` (Frobenius) of the exact Lagrangian matrix. None if nothing could be proven.
pub fn certified_bound(m: MatRef<'_, f64>, r2: f64, err: f64) -> Option<SpectralBound> {
    if m.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) || !r2.is_finite() {
        return None;
    }
    let (t0, z00, point) = schur_optimum(m, r2)?;
    let scale = 1.0 + t0.abs() + z00.abs();
    for k in 1..40 {
        // Back off from the estimated optimum until the Cholesky proof goes through. At the
        // optimum itself S - tI is singular, so no proof can succeed without backing off: the
        // first try is one step away (it was enough for 241 of 243 proofs on MNIST 2x100).
        let back = 1e-10 * scale * 4f64.powi(k);
        let t = t0 - back;
        let z0 = z00 - back * 2.0 - 1e-12 * scale;
        let mut s = m.to_owned();
        s[(0, 0)] -= z0;
        if proves_psd(s.as_ref(), t, err) {
            let raw = z0 + r2 * t;
            let bound = raw - 4.0 * UNIT_ROUNDOFF * (z0.abs() + (r2 * t).abs());
            return Some(SpectralBound { bound, t, z0, point });
        }
    }
    None
}

/// A certificate for phi\[target\] >= bound: the multipliers and the numbers of the bound, checkable
/// from scratch by [`Certificate::check`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Certificate {
    /// Which pre-activation bounds define the hidden boxes and cuts (and R).
    #[serde(default)]
    pub bounds: BoundSource,
    /// The label.
    pub label: usize,
    /// The target class c.
    pub target: usize,
    /// y and z.
    pub multipliers: Multipliers,
    /// R^2 used.
    pub r2: f64,
    /// t <= lambda_min(S(y, z)) with S = M - z0 e0 e0^T.
    pub t: f64,
    /// z0.
    pub z0: f64,
    /// The claimed bound z0 + R^2 t (rounded down).
    pub bound: f64,
}

impl Certificate {
    /// Recomputes M(y, z) from the multipliers, R^2 from fresh interval bounds, and proves
    /// M - z0 e0 e0^T - t I ⪰ 0; returns the bound that this proves, or an error saying why the
    /// certificate is rejected (a claimed bound above what the data prove, an R^2 below the proven
    /// one with t < 0, or a matrix that is not PSD at the claimed shift).
    pub fn check(&self, net: &Network, set: &InputSet) -> Result<f64> {
        let rel = Relaxation::new(net, set, self.bounds)?;
        let (m, err) = lagrangian_matrix(net, set, &rel.boxes, self.label, self.target, &self.multipliers)?;
        let r2 = rel.r2;
        if self.t > 0.0 || !self.t.is_finite() || !self.z0.is_finite() {
            return Err(Error::InvalidArgument(format!("certificate rejected: t = {} must be <= 0", self.t)));
        }
        let mut s = m;
        s[(0, 0)] -= self.z0;
        if !proves_psd(s.as_ref(), self.t, err) {
            return Err(Error::InvalidArgument("certificate rejected: S(y, z) - t I is not proven PSD".into()));
        }
        let proven = self.z0 + r2 * self.t - 4.0 * UNIT_ROUNDOFF * (self.z0.abs() + (r2 * self.t).abs());
        if self.bound > proven {
            return Err(Error::InvalidArgument(format!(
                "certificate rejected: claimed bound {} exceeds the proven {proven} (R^2 {} vs proven {r2})",
                self.bound, self.r2
            )));
        }
        Ok(proven)
    }
}

/// The proven bound of Proposition 3.1 for given multipliers, as a certificate, with the Schur
/// point of the bound (the minimizer of the relaxation's Lagrangian).
pub fn bound_from_multipliers(
    net: &Network,
    set: &InputSet,
    rel: &Relaxation,
    label: usize,
    target: usize,
    mult: &Multipliers,
) -> Result<Option<(Certificate, Vec<f64>)>> {
    let (m, err) = lagrangian_matrix(net, set, &rel.boxes, label, target, mult)?;
    let r2 = rel.r2;
    Ok(certified_bound(m.as_ref(), r2, err).map(|sb| {
        let cert = Certificate {
            bounds: rel.source,
            label,
            target,
            multipliers: mult.clone(),
            r2,
            t: sb.t,
            z0: sb.z0,
            bound: sb.bound,
        };
        (cert, sb.point)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Norm;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    /// M = [[c, g^T], [g, Q]] with Q = U diag(lam) U^T for a random orthogonal U; `along_first`
    /// sets g's component along the eigenvector of lam[0] (lam sorted ascending).
    fn matrix(lam: &[f64], g_norm: f64, along_first: Option<f64>, seed: u64) -> (Mat<f64>, Vec<f64>) {
        let n = lam.len();
        let mut rng = StdRng::seed_from_u64(seed);
        let a = Mat::from_fn(n, n, |_, _| rng.random::<f64>() - 0.5);
        let sym = &a + a.transpose();
        let u = sym.self_adjoint_eigen(Side::Lower).unwrap().U().to_owned();
        let q = &u * Mat::from_fn(n, n, |i, j| if i == j { lam[i] } else { 0.0 }) * u.transpose();
        let mut coef: Vec<f64> = (0..n).map(|_| rng.random::<f64>() - 0.5).collect();
        let norm = coef.iter().map(|v| v * v).sum::<f64>().sqrt();
        coef.iter_mut().for_each(|v| *v *= g_norm / norm);
        if let Some(first) = along_first {
            coef[0] = first;
        }
        let g: Vec<f64> = (0..n).map(|i| (0..n).map(|k| u[(i, k)] * coef[k]).sum()).collect();
        let m = Mat::from_fn(n + 1, n + 1, |i, j| match (i, j) {
            (0, 0) => 1.5,
            (0, j) => g[j - 1],
            (i, 0) => g[i - 1],
            (i, j) => q[(i - 1, j - 1)],
        });
        (m, coef)
    }

    /// The optimum from the construction: max over t <= min(0, lam[0]) of
    /// 1.5 + (r2 - 1) t - sum coef_k^2 / (lam_k - t), by bisection on its derivative (terms with
    /// coef_k = 0 drop out, so t = lam[0] is allowed in the hard case).
    fn reference(lam: &[f64], coef: &[f64], r2: f64) -> f64 {
        let f = |t: f64| {
            1.5 + (r2 - 1.0) * t
                - lam.iter().zip(coef).filter(|(_, c)| **c != 0.0).map(|(l, c)| c * c / (l - t)).sum::<f64>()
        };
        let df = |t: f64| {
            (r2 - 1.0)
                - lam
                    .iter()
                    .zip(coef)
                    .filter(|(_, c)| **c != 0.0)
                    .map(|(l, c)| c * c / ((l - t) * (l - t)))
                    .sum::<f64>()
        };
        let top = if coef[0] == 0.0 { lam[0].min(0.0) } else { lam[0].min(0.0) - 1e-300 };
        if coef[0] == 0.0 && df(top) >= 0.0 || lam[0] > 0.0 && df(0.0) >= 0.0 {
            return f(top);
        }
        let (mut a, mut b) = (top - 100.0, top);
        for _ in 0..200 {
            let mid = 0.5 * (a + b);
            if df(mid) >= 0.0 { a = mid } else { b = mid }
        }
        f(a)
    }

    fn spectrum(n: usize, lo: f64, hi: f64) -> Vec<f64> {
        (0..n).map(|i| lo + (hi - lo) * i as f64 / (n - 1) as f64).collect()
    }

    /// The Newton (More-Sorensen) optimum of the Schur form agrees with the eigendecomposition's
    /// in every regime: interior t = 0, a root below lambda_min(Q) (definite and indefinite Q,
    /// a cluster at the bottom of the spectrum as BM's repaired multipliers leave), and the hard
    /// and nearly hard cases where the optimum sits at lambda_min(Q).
    #[test]
    fn newton_schur_optimum_matches_the_eigendecomposition() {
        let n = 150;
        let r2 = 50.0;
        let mut clustered = spectrum(n, 0.0, 3.0);
        for (i, v) in clustered.iter_mut().take(40).enumerate() {
            *v = -1e-3 + 1e-7 * i as f64;
        }
        let cases: Vec<(&str, Vec<f64>, f64, Option<f64>)> = vec![
            ("interior t = 0", spectrum(n, 0.5, 2.0), 0.5, None),
            ("definite, root below 0", spectrum(n, 0.5, 2.0), 20.0, None),
            ("indefinite", spectrum(n, -0.3, 2.0), 3.0, None),
            ("clustered bottom", clustered, 1.0, None),
            ("hard case", spectrum(n, -0.3, 2.0), 0.5, Some(0.0)),
            ("nearly hard", spectrum(n, -0.3, 2.0), 0.5, Some(1e-6)),
            ("zero linear part", spectrum(n, -0.3, 2.0), 0.0, Some(0.0)),
        ];
        for (seed, (name, lam, g_norm, first)) in cases.into_iter().enumerate() {
            let (m, coef) = matrix(&lam, g_norm, first, seed as u64);
            let exact = reference(&lam, &coef, r2);
            let (te, ze, _) = schur_optimum_eig(m.as_ref(), r2).unwrap();
            let (tn, zn, x) = schur_optimum_newton(m.as_ref(), r2).unwrap();
            let (fe, fnw) = (ze + r2 * te, zn + r2 * tn);
            assert!(tn <= 0.0 && tn < lam[0], "{name}: t {tn} not below min(0, lambda_min {})", lam[0]);
            assert!((fe - exact).abs() <= 1e-6 * (1.0 + exact.abs()), "{name}: eig {fe} exact {exact}");
            assert!(
                (fnw - exact).abs() <= 1e-6 * (1.0 + exact.abs()),
                "{name}: newton {fnw} exact {exact} (t {tn}, eig t {te})"
            );
            // The point is -(Q - tI)^{-1} g: (Q - tI) x + g = 0.
            let res: f64 = (0..n)
                .map(|i| {
                    let row: f64 = (0..n).map(|j| (m[(1 + i, 1 + j)] - if i == j { tn } else { 0.0 }) * x[j]).sum();
                    (row + m[(1 + i, 0)]).abs()
                })
                .fold(0.0, f64::max);
            assert!(res <= 1e-8 * (1.0 + g_norm), "{name}: residual {res}");
            // And the proven bound is the optimum, less a hair.
            let proven = certified_bound(m.as_ref(), r2, 0.0).unwrap().bound;
            let hair = 1e-6 * (1.0 + exact.abs());
            assert!(proven <= exact + 1e-9 && proven >= exact - hair, "{name}: proven {proven} exact {exact}");
        }
    }

    /// v^T M(y, z) v = f(x) - sum y g(x) + sum z h(x) at arbitrary points v = (1, x) (not only
    /// feasible ones), for random multipliers of every constraint including the input-box
    /// products: the dense assembly, its rounding bound and the matrix-free operator all agree
    /// with the constraints as written, term by term.
    #[test]
    fn lagrangian_identity_holds_with_the_input_products() {
        use crate::network::{Activation, Layer, Network};
        use crate::spec::Domain;
        let mut rng = StdRng::seed_from_u64(11);
        for case in 0..12 {
            let sizes = [3 + case % 3, 4 + case % 2, 3, 3];
            let layers: Vec<Layer> = (0..3)
                .map(|k| {
                    let rows: Vec<Vec<f64>> = (0..sizes[k + 1])
                        .map(|_| (0..sizes[k]).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect())
                        .collect();
                    let bias = (0..sizes[k + 1]).map(|_| rng.random::<f64>() - 0.5).collect();
                    let act = if k == 2 { Activation::Identity } else { Activation::Relu };
                    Layer::from_rows(&rows, bias, act).unwrap()
                })
                .collect();
            let net = Network::new(vec![sizes[0]], layers).unwrap();
            let n0 = sizes[0];
            let center: Vec<f64> = (0..n0).map(|_| rng.random::<f64>()).collect();
            let norm = if case % 2 == 0 { Norm::Linf } else { Norm::L2 };
            let set = InputSet::new(center, 0.2, norm, Some(Domain::uniform(n0, 0.0, 1.0).unwrap())).unwrap();
            let rel = Relaxation::new(&net, &set, BoundSource::CrownIbp).unwrap();
            let mut m = Multipliers::initial(&net, &set, 0.0).with_products(&net, &set, true);
            let like = m.clone();
            let mut v = flatten(&m);
            let n_ineq = inequality_count(&like);
            for (i, x) in v.iter_mut().enumerate() {
                *x = if i < n_ineq { rng.random::<f64>() * 3.0 } else { rng.random::<f64>() * 4.0 - 2.0 };
            }
            if norm != Norm::L2 {
                v[0] = 0.0;
            }
            m = unflatten(&v, &like);
            let (label, target) = (0, 2);
            let (mat, err) = lagrangian_matrix(&net, &set, &rel.boxes, label, target, &m).unwrap();
            assert!(err > 0.0 && err < 1e-9, "rounding bound {err}");
            let op = SlackOperator::new(&net, &set, &rel.boxes, label, target, &m, 0.0).unwrap();
            let n = mat.nrows();
            for _ in 0..5 {
                let x: Vec<f64> = (0..n - 1).map(|_| rng.random::<f64>() * 2.0 - 0.5).collect();
                let vv: Vec<f64> = std::iter::once(1.0).chain(x.iter().copied()).collect();
                let quad: f64 = (0..n).map(|i| (0..n).map(|j| vv[i] * mat[(i, j)] * vv[j]).sum::<f64>()).sum();
                let mut out = vec![0.0; n];
                op.apply_vec(&vv, &mut out);
                let quad_op: f64 = vv.iter().zip(&out).map(|(a, b)| a * b).sum();
                // f(x) + sum of multiplier x (-g or h) over the constraints, products by hand.
                let last = &net.layers()[2];
                let xl = &x[n0 + sizes[1]..];
                let f: f64 = (0..sizes[2])
                    .map(|i| (last.weight()[(label, i)] - last.weight()[(target, i)]) * xl[i])
                    .sum::<f64>()
                    + last.bias()[label]
                    - last.bias()[target];
                let terms = flatten(&constraint_terms(&net, &set, &rel.boxes, &x, false));
                let plain = flatten(&Multipliers { products: Vec::new(), ..m.clone() });
                let mut lag = f + plain.iter().zip(&terms).map(|(a, b)| a * b).sum::<f64>();
                // The same through constraint_terms' products.
                let all = flatten(&constraint_terms(&net, &set, &rel.boxes, &x, true));
                let lag_all = f + flatten(&m).iter().zip(&all).map(|(a, b)| a * b).sum::<f64>();
                let (lo, hi) = set.bounding_box();
                let first = &net.layers()[0];
                let n1 = sizes[1];
                for j in 0..n1 {
                    let z = x[n0 + j];
                    let s = z - (0..n0).map(|i| first.weight()[(j, i)] * x[i]).sum::<f64>() - first.bias()[j];
                    for i in 0..n0 {
                        let g = [(x[i] - lo[i]) * z, (hi[i] - x[i]) * z, (x[i] - lo[i]) * s, (hi[i] - x[i]) * s];
                        for (t, gt) in g.iter().enumerate() {
                            lag -= m.products[t * n0 * n1 + i + n0 * j] * gt;
                        }
                    }
                }
                assert!((quad - lag).abs() < 1e-10 * (1.0 + lag.abs()), "case {case}: v^T M v {quad} vs L {lag}");
                assert!((lag_all - lag).abs() < 1e-10 * (1.0 + lag.abs()), "case {case}: {lag_all} vs L {lag}");
                assert!(
                    (quad_op - lag).abs() < 1e-10 * (1.0 + lag.abs()),
                    "case {case}: operator {quad_op} vs L {lag}"
                );
            }
        }
    }
}
