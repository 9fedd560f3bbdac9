//! Rigorous spectral bounds for dense symmetric matrices.
//!
//! An eigensolver's lambda_min is an estimate; a bound that enters a certificate must be proven.
//! The tool is a Cholesky factorization that succeeds in floating point (Demmel 1989; Higham,
//! *Accuracy and Stability of Numerical Algorithms*, Theorem 10.5; Rump 2006, "Verification of
//! positive definiteness"): if the floating-point Cholesky of a symmetric n x n matrix B runs to
//! completion, then B + dB = R^T R with |dB| <= gamma_{n+1} |R^T| |R|, and since
//! ||(|R^T| |R|)||_2 <= trace(R^T R) <= (1 + gamma_{n+1}) sum_i b_ii,
//!
//! ```text
//! lambda_min(B) >= -2 gamma_{n+1} sum_i |b_ii|        (gamma_k = k u / (1 - k u), u = 2^-53).
//! ```
//!
//! So to prove A - t I ⪰ 0 we factor B = fl(A - (t + c) I) with a shift c that covers this
//! term, the rounding of the shift itself and a caller-supplied bound on the error of A. We use
//! twice the constant of the theorem, to cover faer's blocked algorithm (whose inner products are
//! summed in another order: the same bound with the same constant holds for any order).

use faer::{Mat, MatRef, Side};

/// Unit roundoff of f64.
pub const UNIT_ROUNDOFF: f64 = f64::EPSILON / 2.0;

/// gamma_k = k u / (1 - k u).
pub fn gamma(k: usize) -> f64 {
    let ku = k as f64 * UNIT_ROUNDOFF;
    ku / (1.0 - ku)
}

/// The shift c that makes a successful Cholesky of fl(A - (t + c) I) a proof of A - t I ⪰ 0,
/// for a matrix whose diagonal after the shift sums (in absolute value) to at most `abs_trace` and
/// whose entries are within `error_norm` (spectral or Frobenius norm) of the exact matrix.
pub fn cholesky_shift(n: usize, abs_trace: f64, max_abs_diag: f64, error_norm: f64) -> f64 {
    // Cholesky backward error (doubled), the rounding of forming a_ii - t - c, and A's own error.
    let c = 4.0 * gamma(n + 1) * abs_trace + 2.0 * UNIT_ROUNDOFF * max_abs_diag + error_norm;
    // Grow it a little so that the trace of the shifted matrix (which includes c) stays covered.
    c * (1.0 + 1e-6) + f64::MIN_POSITIVE
}

/// Whether A - t I is proven positive semidefinite (A symmetric, entries within `error_norm` of
/// the exact matrix in spectral or Frobenius norm).
pub fn proves_psd(a: MatRef<'_, f64>, t: f64, error_norm: f64) -> bool {
    let n = a.nrows();
    if n == 0 {
        return true;
    }
    let mut abs_trace = 0.0;
    let mut max_abs = 0.0f64;
    for i in 0..n {
        let d = a[(i, i)] - t;
        abs_trace += d.abs();
        max_abs = max_abs.max(a[(i, i)].abs()).max(t.abs());
    }
    let c = cholesky_shift(n, abs_trace + n as f64 * (t.abs() * 1e-9), max_abs, error_norm);
    if !c.is_finite() {
        return false;
    }
    let mut b = a.to_owned();
    for i in 0..n {
        b[(i, i)] = a[(i, i)] - t - c;
    }
    if b.as_ref().col_iter().any(|col| col.iter().any(|v| !v.is_finite())) {
        return false;
    }
    b.llt(Side::Lower).is_ok()
}

/// A proven lower bound on lambda_min(A) for a symmetric A whose entries are within
/// `error_norm` of the exact matrix: the eigensolver's estimate, lowered until a shifted Cholesky
/// proves it (see the module docs). Returns -inf if nothing could be proven (non-finite input).
pub fn rigorous_lambda_min(a: MatRef<'_, f64>, error_norm: f64) -> f64 {
    let n = a.nrows();
    if n == 0 {
        return f64::INFINITY;
    }
    let Some(est) = lambda_min_estimate(a) else {
        return f64::NEG_INFINITY;
    };
    let scale = a.norm_max().max(f64::MIN_POSITIVE);
    let mut step = 1e-12 * scale + error_norm;
    let mut t = est - step;
    for _ in 0..80 {
        if proves_psd(a, t, error_norm) {
            return t;
        }
        step *= 4.0;
        t = est - step;
    }
    f64::NEG_INFINITY
}

/// lambda_min of a symmetric matrix by faer's dense self-adjoint eigensolver (an estimate).
pub fn lambda_min_estimate(a: MatRef<'_, f64>) -> Option<f64> {
    if a.col_iter().any(|c| c.iter().any(|v| !v.is_finite())) {
        return None;
    }
    let ev = a.self_adjoint_eigenvalues(Side::Lower).ok()?;
    ev.first().copied()
}

/// The symmetric matrix Q diag(values) Q^T for a random orthogonal Q (from a seeded QR), for tests.
pub fn with_spectrum(values: &[f64], seed: u64) -> Mat<f64> {
    use rand::{Rng, SeedableRng};
    let n = values.len();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let g = Mat::from_fn(n, n, |_, _| rng.random::<f64>() * 2.0 - 1.0);
    let q = g.qr().compute_Q();
    let d = Mat::from_fn(n, n, |i, j| q[(i, j)] * values[j]);
    let a = crate::linalg::mul(d.as_ref(), q.as_ref().transpose());
    // Symmetrize exactly.
    Mat::from_fn(n, n, |i, j| 0.5 * (a[(i, j)] + a[(j, i)]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rigorous_lambda_min_is_below_and_close() {
        for (k, n) in [5usize, 20, 60, 120].iter().enumerate() {
            let values: Vec<f64> = (0..*n).map(|i| -2.0 + 5.0 * i as f64 / *n as f64 + 0.1 * k as f64).collect();
            let a = with_spectrum(&values, k as u64);
            let truth = values[0];
            let est = lambda_min_estimate(a.as_ref()).unwrap();
            assert!((est - truth).abs() < 1e-9 * (1.0 + truth.abs()), "estimate {est} vs {truth}");
            let lb = rigorous_lambda_min(a.as_ref(), 0.0);
            // The matrix was formed in floating point: its true spectrum is within ~n u ||A|| of values.
            let slack = 1e3 * *n as f64 * UNIT_ROUNDOFF * 5.0;
            assert!(lb <= truth + slack, "rigorous {lb} above {truth}");
            assert!(truth - lb < 1e-8 * (1.0 + truth.abs()), "rigorous {lb} too far below {truth}");
        }
    }

    #[test]
    fn nearly_singular_and_indefinite() {
        let mut values: Vec<f64> = (0..40).map(|i| 1.0 + i as f64).collect();
        values[0] = 1e-13;
        let a = with_spectrum(&values, 9);
        let lb = rigorous_lambda_min(a.as_ref(), 0.0);
        assert!(lb <= 1e-13 + 1e-11 && lb > -1e-9, "{lb}");
        // PSD is not proven for a matrix with a negative eigenvalue, at any shift above it.
        values[0] = -1e-6;
        let b = with_spectrum(&values, 9);
        assert!(!proves_psd(b.as_ref(), 0.0, 0.0));
        assert!(proves_psd(b.as_ref(), -2e-6, 0.0));
        // A claimed error in the entries makes the proof harder, never easier.
        assert!(!proves_psd(b.as_ref(), -2e-6, 1e-3));
        assert_eq!(rigorous_lambda_min(Mat::from_fn(2, 2, |_, _| f64::NAN).as_ref(), 0.0), f64::NEG_INFINITY);
    }
}
