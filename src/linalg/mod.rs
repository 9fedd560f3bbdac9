//! Small linear-algebra helpers over faer that the rest of the crate shares.
//!
//! Products run sequentially ([`Par::Seq`]): the crate parallelizes across images and targets
//! with rayon, and nesting faer's own parallelism inside that only adds contention on small
//! matrices such as the 100x784 layers of the MNIST networks.

pub mod psd;

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

/// `a * b` into a new matrix, sequentially.
pub fn mul(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

/// `w * x` for a vector `x`, into a new vector.
pub fn mat_vec(w: MatRef<'_, f64>, x: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; w.nrows()];
    let xr = faer::ColRef::from_slice(x);
    let dst = faer::ColMut::from_slice_mut(&mut out);
    matmul(dst.as_mat_mut(), Accum::Replace, w, xr.as_mat(), 1.0, Par::Seq);
    out
}

/// Euclidean norm of a slice.
pub fn norm2(x: &[f64]) -> f64 {
    faer::ColRef::from_slice(x).norm_l2()
}

/// Dot product of two slices of equal length.
pub fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn products_agree_with_loops() {
        let a = Mat::from_fn(3, 4, |i, j| (i * 4 + j) as f64 - 5.0);
        let b = Mat::from_fn(4, 2, |i, j| (i + 2 * j) as f64 * 0.5);
        let c = mul(a.as_ref(), b.as_ref());
        for i in 0..3 {
            for j in 0..2 {
                let e: f64 = (0..4).map(|k| a[(i, k)] * b[(k, j)]).sum();
                assert_eq!(c[(i, j)], e);
            }
        }
        let x = [1.0, -2.0, 0.5, 3.0];
        let y = mat_vec(a.as_ref(), &x);
        for i in 0..3 {
            assert_eq!(y[i], (0..4).map(|k| a[(i, k)] * x[k]).sum::<f64>());
        }
        assert_eq!(norm2(&[3.0, 4.0]), 5.0);
        assert_eq!(dot(&[1.0, 2.0], &[3.0, 4.0]), 11.0);
    }
}
