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

/// Column `j` of `a` as a slice: borrowed when it is contiguous, else copied into `buf`.
pub fn column<'a>(a: MatRef<'a, f64>, j: usize, buf: &'a mut Vec<f64>) -> &'a [f64] {
    match a.col(j).try_as_col_major() {
        Some(c) => c.as_slice(),
        None => {
            buf.clear();
            buf.extend(a.col(j).iter().copied());
            buf
        }
    }
}

/// Partial sums kept by the reductions below: independent accumulators the compiler can keep in
/// vector registers, instead of one chain of dependent additions. Any summation order is covered
/// by the rounding analysis of [`crate::bounds::rounding`] (gamma_n for n terms).
const LANES: usize = 8;

/// Runs a reduction compiled for the widest vector instructions this CPU has (AVX2 and FMA on
/// most x86-64 machines; the baseline SSE2 otherwise), chosen at run time by pulp, faer's own SIMD
/// layer: `wide!(Name(arg: type, ...) -> output => body)` defines a struct whose `with_simd` (inlined,
/// as every `_lanes` function it calls) pulp compiles once per instruction set. The arithmetic is
/// the same either way (Rust never fuses a multiply and an add on its own), so the result is bit
/// for bit the baseline's; only the register width changes. (A closure passed to pulp is not
/// enough: its call shim is inlined or not at the optimizer's whim.)
macro_rules! wide {
    ($name:ident($($arg:ident: $ty:ty),*) -> $out:ty => $body:expr) => {{
        struct $name<'a> {
            $($arg: $ty,)*
            _life: std::marker::PhantomData<&'a ()>,
        }
        impl pulp::WithSimd for $name<'_> {
            type Output = $out;
            #[inline(always)]
            fn with_simd<S: pulp::Simd>(self, _simd: S) -> $out {
                let $name { $($arg,)* .. } = self;
                $body
            }
        }
        pulp::Arch::new().dispatch($name { $($arg,)* _life: std::marker::PhantomData })
    }};
}

#[inline(always)]
fn lane_sum(s: [f64; LANES]) -> f64 {
    ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
}

/// (sum a_i b_i, sum |a_i b_i|, sum a_i^2) in one pass (slices of equal length).
pub fn dot_abs_squares(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    wide!(DotAbsSquares(a: &'a [f64], b: &'a [f64]) -> (f64, f64, f64) => dot_abs_squares_lanes(a, b))
}

#[inline(always)]
fn dot_abs_squares_lanes(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let (mut v, mut m, mut q) = ([0.0; LANES], [0.0; LANES], [0.0; LANES]);
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..LANES {
            let p = x[l] * y[l];
            v[l] += p;
            m[l] += p.abs();
            q[l] += x[l] * x[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rb).enumerate() {
        let p = x * y;
        v[l] += p;
        m[l] += p.abs();
        q[l] += x * x;
    }
    (lane_sum(v), lane_sum(m), lane_sum(q))
}

/// |W| x for a column-major W (rows x x.len()), column by column.
pub fn abs_mat_vec(w: MatRef<'_, f64>, x: &[f64]) -> Vec<f64> {
    wide!(AbsMatVec(w: MatRef<'a, f64>, x: &'a [f64]) -> Vec<f64> => abs_mat_vec_lanes(w, x))
}

#[inline(always)]
fn abs_mat_vec_lanes(w: MatRef<'_, f64>, x: &[f64]) -> Vec<f64> {
    let mut out = vec![0.0; w.nrows()];
    let mut buf = Vec::new();
    for (j, &xj) in x.iter().enumerate() {
        if xj == 0.0 {
            continue;
        }
        let col = column(w, j, &mut buf);
        out.iter_mut().zip(col).for_each(|(o, v)| *o += v.abs() * xj);
    }
    out
}

/// Each v_i replaced by v_i ls_i where v_i >= 0, by v_i us_i where not (a backward step through
/// the lower or upper lines), returning (sum t_i, sum |t_i|) of the offsets t_i = v_i lo_i or
/// v_i uo_i taken with them; `lines` = \[ls, lo, us, uo\], each as long as `v`.
pub fn relax_column(v: &mut [f64], lines: [&[f64]; 4]) -> (f64, f64) {
    wide!(RelaxColumn(v: &'a mut [f64], lines: [&'a [f64]; 4]) -> (f64, f64) => relax_column_lanes(v, lines))
}

#[inline(always)]
fn relax_column_lanes(v: &mut [f64], [ls, lo, us, uo]: [&[f64]; 4]) -> (f64, f64) {
    let n = v.len().min(ls.len()).min(lo.len()).min(us.len()).min(uo.len());
    let (v, ls, lo, us, uo) = (&mut v[..n], &ls[..n], &lo[..n], &us[..n], &uo[..n]);
    let (mut c, mut m) = ([0.0; LANES], [0.0; LANES]);
    for i in 0..n {
        let x = v[i];
        let (slope, offset) = if x >= 0.0 { (ls[i], lo[i]) } else { (us[i], uo[i]) };
        v[i] = x * slope;
        let t = x * offset;
        c[i % LANES] += t;
        m[i % LANES] += t.abs();
    }
    (lane_sum(c), lane_sum(m))
}

/// sum |a_i| w_i (slices of equal length).
pub fn abs_dot(a: &[f64], w: &[f64]) -> f64 {
    wide!(AbsDot(a: &'a [f64], w: &'a [f64]) -> f64 => abs_dot_lanes(a, w))
}

#[inline(always)]
fn abs_dot_lanes(a: &[f64], w: &[f64]) -> f64 {
    let n = a.len().min(w.len());
    let (a, w) = (&a[..n], &w[..n]);
    let mut s = [0.0; LANES];
    let (ca, cw) = (a.chunks_exact(LANES), w.chunks_exact(LANES));
    let (ra, rw) = (ca.remainder(), cw.remainder());
    for (x, y) in ca.zip(cw) {
        for l in 0..LANES {
            s[l] += x[l].abs() * y[l];
        }
    }
    for (l, (x, y)) in ra.iter().zip(rw).enumerate() {
        s[l] += x.abs() * y;
    }
    lane_sum(s)
}

/// (sum a_i m_i - |a_i| r_i, sum |a_i| g_i): the minimum of a^T x over the box mid ± rad and a
/// bound on the magnitudes summed (slices of equal length).
pub fn box_support(a: &[f64], mid: &[f64], rad: &[f64], g: &[f64]) -> (f64, f64) {
    wide!(BoxSupport(a: &'a [f64], mid: &'a [f64], rad: &'a [f64], g: &'a [f64]) -> (f64, f64) => box_support_lanes(a, mid, rad, g))
}

#[inline(always)]
fn box_support_lanes(a: &[f64], mid: &[f64], rad: &[f64], g: &[f64]) -> (f64, f64) {
    let n = a.len().min(mid.len()).min(rad.len()).min(g.len());
    let (a, mid, rad, g) = (&a[..n], &mid[..n], &rad[..n], &g[..n]);
    let (mut v, mut m) = ([0.0; LANES], [0.0; LANES]);
    let chunks = n / LANES;
    for c in 0..chunks {
        let o = c * LANES;
        let (x, md, rd, gg) = (&a[o..o + LANES], &mid[o..o + LANES], &rad[o..o + LANES], &g[o..o + LANES]);
        for l in 0..LANES {
            let ax = x[l].abs();
            v[l] += x[l] * md[l] - ax * rd[l];
            m[l] += ax * gg[l];
        }
    }
    for i in chunks * LANES..n {
        let ax = a[i].abs();
        v[i % LANES] += a[i] * mid[i] - ax * rad[i];
        m[i % LANES] += ax * g[i];
    }
    (lane_sum(v), lane_sum(m))
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

    #[test]
    fn lane_reductions_agree_with_loops() {
        // Lengths around the lane count (remainders of every size); integer-valued entries, so
        // every sum is exact and any order gives the same float.
        for n in [0, 1, 7, 8, 9, 16, 23, 784] {
            let a: Vec<f64> = (0..n).map(|i| ((i * 7) % 11) as f64 - 5.0).collect();
            let b: Vec<f64> = (0..n).map(|i| ((i * 3) % 5) as f64 - 2.0).collect();
            let c: Vec<f64> = (0..n).map(|i| (i % 4) as f64).collect();
            let (v, m, q) = dot_abs_squares(&a, &b);
            assert_eq!(v, (0..n).map(|i| a[i] * b[i]).sum::<f64>());
            assert_eq!(m, (0..n).map(|i| (a[i] * b[i]).abs()).sum::<f64>());
            assert_eq!(q, (0..n).map(|i| a[i] * a[i]).sum::<f64>());
            assert_eq!(abs_dot(&a, &c), (0..n).map(|i| a[i].abs() * c[i]).sum::<f64>());
            let (s, g) = box_support(&a, &b, &c, &c);
            assert_eq!(s, (0..n).map(|i| a[i] * b[i] - a[i].abs() * c[i]).sum::<f64>());
            assert_eq!(g, (0..n).map(|i| a[i].abs() * c[i]).sum::<f64>());
        }
    }

    #[test]
    fn relax_column_agrees_with_a_loop() {
        // Integer-valued lines and coefficients (exact sums in any order); zero and negative
        // coefficients take the lower and the upper line respectively.
        for n in [0, 1, 7, 8, 9, 100, 785] {
            let v0: Vec<f64> = (0..n).map(|i| ((i * 7) % 9) as f64 - 4.0).collect();
            let line = |k: usize| -> Vec<f64> { (0..n).map(|i| ((i * k) % 5) as f64 - 2.0).collect() };
            let (ls, lo, us, uo) = (line(1), line(2), line(3), line(4));
            let mut v = v0.clone();
            let (c, m) = relax_column(&mut v, [&ls, &lo, &us, &uo]);
            let (mut ce, mut me) = (0.0, 0.0);
            for i in 0..n {
                let (s, o) = if v0[i] >= 0.0 { (ls[i], lo[i]) } else { (us[i], uo[i]) };
                assert_eq!(v[i], v0[i] * s, "n {n} i {i}");
                ce += v0[i] * o;
                me += (v0[i] * o).abs();
            }
            assert_eq!((c, m), (ce, me), "n {n}");
        }
    }

    #[test]
    fn abs_mat_vec_agrees_with_a_loop() {
        // Integer-valued, so every order of the sums gives the same float; a zero entry of x skips
        // its column.
        for (rows, cols) in [(1, 1), (3, 5), (9, 17), (100, 784)] {
            let w = Mat::from_fn(rows, cols, |i, j| ((i * 5 + j * 3) % 13) as f64 - 6.0);
            let x: Vec<f64> = (0..cols).map(|j| ((j * 7) % 5) as f64 - 1.0).collect();
            let got = abs_mat_vec(w.as_ref(), &x);
            for (i, g) in got.iter().enumerate() {
                assert_eq!(*g, (0..cols).map(|j| w[(i, j)].abs() * x[j]).sum::<f64>(), "{rows}x{cols} row {i}");
            }
        }
    }
}
