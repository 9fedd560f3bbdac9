//! The slack matrix S(y, z) = M(y, z) - z0 e0 e0^T as a matrix-free operator (for BM-r and
//! lambda_min), assembled by the same code as the dense matrix.

use faer::{Mat, MatRef, Side};

use super::*;
use crate::error::Result;
use crate::network::Network;
use crate::spec::InputSet;

/// S(y, z) = M(y, z) - z0 e0 e0^T as a matrix-free operator: the Lagrangian matrix is bordered
/// block-tridiagonal, with diagonal blocks diagonal and off-diagonal blocks -diag(z_k) W_k / 2, so a
/// product costs two products with each W_k (it never forms them densely).
#[derive(Clone, Debug)]
pub struct SlackOperator<'a> {
    pub(crate) net: &'a Network,
    /// Block offsets in v (as [`offsets`]).
    pub(crate) off: Vec<usize>,
    /// First row/column of M (index 0 unused).
    pub(crate) border: Vec<f64>,
    /// Diagonal of M (m00 - z0 at index 0), less the input-box products' part ([`ProductBlocks`]).
    pub(crate) diag: Vec<f64>,
    /// z per hidden layer.
    pub(crate) relu: Vec<Vec<f64>>,
    /// The input-box products' off-border, off-diagonal blocks, if any.
    pub(crate) products: Option<ProductBlocks>,
}

/// What the input-box products add to M off the border: the x_0-x_1 block -C / 2 with
/// C = A0 - A1 + A2 - A3, and the x_0-x_0 block sym(D W) with D = A2 - A3 (its diagonal included:
/// the operator's `diag` leaves it out).
#[derive(Clone, Debug)]
pub(crate) struct ProductBlocks {
    pub(crate) c: Mat<f64>,
    pub(crate) d: Mat<f64>,
}

impl ProductBlocks {
    fn new(net: &Network, n0: usize, products: &[f64]) -> Self {
        let layer = &net.layers()[0];
        let n1 = layer.output_size();
        let [a0, a1, a2, a3] = product_blocks(products, n0, n1);
        let c = &(&a0 - &a1) + &(&a2 - &a3);
        let d = &a2 - &a3;
        ProductBlocks { c, d }
    }

    /// out += (the blocks) v, for v and out of the operator's size (x_0 at 1, x_1 at `q`).
    fn apply(&self, net: &Network, q: usize, v: MatRef<'_, f64>, out: &mut Mat<f64>) {
        let (n0, n1) = self.c.shape();
        let w = net.layers()[0].weight();
        let vx = v.subrows(1, n0);
        let vz = v.subrows(q, n1);
        let cvz = crate::linalg::mul(self.c.as_ref(), vz);
        let ctvx = crate::linalg::mul(self.c.transpose(), vx);
        let wvx = crate::linalg::mul(w, vx);
        let dwvx = crate::linalg::mul(self.d.as_ref(), wvx.as_ref());
        let dtvx = crate::linalg::mul(self.d.transpose(), vx);
        let wtdtvx = crate::linalg::mul(net.layers()[0].weight_t(), dtvx.as_ref());
        for col in 0..v.ncols() {
            for i in 0..n0 {
                out[(1 + i, col)] += -0.5 * cvz[(i, col)] + 0.5 * (dwvx[(i, col)] + wtdtvx[(i, col)]);
            }
            for j in 0..n1 {
                out[(q + j, col)] -= 0.5 * ctvx[(j, col)];
            }
        }
    }

    /// Row sums of the blocks' absolute values (an upper bound), added to `row`.
    fn gershgorin_rows(&self, net: &Network, q: usize, row: &mut [f64]) {
        let (n0, n1) = self.c.shape();
        let w = net.layers()[0].weight();
        let wrow: Vec<f64> = (0..n1).map(|j| (0..n0).map(|k| w[(j, k)].abs()).sum()).collect();
        let mut dcol = vec![0.0; n1];
        for j in 0..n1 {
            for i in 0..n0 {
                let (c, d) = (self.c[(i, j)].abs(), self.d[(i, j)].abs());
                row[1 + i] += 0.5 * c + 0.5 * d * wrow[j];
                row[q + j] += 0.5 * c;
                dcol[j] += d;
            }
        }
        // The transposed half: sum_k |(D W)_ki| <= sum_j |w_ji| sum_k |d_kj|.
        for i in 0..n0 {
            row[1 + i] += 0.5 * (0..n1).map(|j| w[(j, i)].abs() * dcol[j]).sum::<f64>();
        }
    }
}

impl<'a> SlackOperator<'a> {
    /// The operator for M(y, z) - z0 e0 e0^T: the same assembly as [`lagrangian_matrix`], keeping
    /// only the border and the diagonal (the off-diagonal blocks are applied through W).
    pub fn new(
        net: &'a Network,
        set: &InputSet,
        boxes: &HiddenBoxes,
        label: usize,
        target: usize,
        mult: &Multipliers,
        z0: f64,
    ) -> Result<Self> {
        let n = 1 + set.dim() + net.hidden_neurons();
        let mut sink = BorderSink { border: vec![0.0; n], diag: vec![0.0; n] };
        let off = assemble(net, set, boxes, label, target, mult, &mut sink)?;
        let BorderSink { border, mut diag } = sink;
        diag[0] -= z0;
        let products = (!mult.products.is_empty()).then(|| ProductBlocks::new(net, set.dim(), &mult.products));
        Ok(SlackOperator { net, off, border, diag, relu: mult.relu.clone(), products })
    }

    /// The operator of [[g, 0], [0, Q]]: the quadratic part Q alone, with the e0 entry set to the
    /// Gershgorin bound g of the whole operator (so it never is the smallest eigenvalue).
    pub fn quadratic_part(mut self) -> Self {
        let g = self.gershgorin();
        self.border.iter_mut().for_each(|v| *v = 0.0);
        self.diag[0] = g.max(1.0);
        self
    }

    /// Dimension n + 1.
    pub fn dim(&self) -> usize {
        self.diag.len()
    }

    /// out = S v.
    pub fn apply_vec(&self, v: &[f64], out: &mut [f64]) {
        let n = self.dim();
        out[0] = self.diag[0] * v[0];
        for i in 1..n {
            out[0] += self.border[i] * v[i];
            out[i] = self.border[i] * v[0] + self.diag[i] * v[i];
        }
        let layers = self.net.layers();
        for k in 0..layers.len() - 1 {
            let (p, q) = (self.off[k], self.off[k + 1]);
            let (n_in, n_out) = (layers[k].input_size(), layers[k].output_size());
            let z = &self.relu[k];
            // Block (x_{k+1}, x_k) = -diag(z) W / 2 and its transpose.
            let wv = crate::linalg::mat_vec(layers[k].weight(), &v[p..p + n_in]);
            for j in 0..n_out {
                out[q + j] -= 0.5 * z[j] * wv[j];
            }
            let zv: Vec<f64> = (0..n_out).map(|j| z[j] * v[q + j]).collect();
            let wtz = crate::linalg::mat_vec(layers[k].weight_t(), &zv);
            for i in 0..n_in {
                out[p + i] -= 0.5 * wtz[i];
            }
        }
        if let Some(pb) = &self.products {
            let vm = faer::MatRef::from_column_major_slice(v, n, 1);
            let mut extra = Mat::<f64>::zeros(n, 1);
            pb.apply(self.net, self.off[1], vm, &mut extra);
            for i in 0..n {
                out[i] += extra[(i, 0)];
            }
        }
    }

    /// S V for a block of columns V ((n + 1) x r): the same as [`Self::apply_vec`] per column, with
    /// the weight products done as matrix products.
    pub fn apply_mat(&self, v: MatRef<'_, f64>) -> Mat<f64> {
        let n = self.dim();
        let r = v.ncols();
        let mut out = Mat::<f64>::zeros(n, r);
        for c in 0..r {
            let mut top = self.diag[0] * v[(0, c)];
            for i in 1..n {
                top += self.border[i] * v[(i, c)];
                out[(i, c)] = self.border[i] * v[(0, c)] + self.diag[i] * v[(i, c)];
            }
            out[(0, c)] = top;
        }
        let layers = self.net.layers();
        for k in 0..layers.len() - 1 {
            let (p, q) = (self.off[k], self.off[k + 1]);
            let (n_in, n_out) = (layers[k].input_size(), layers[k].output_size());
            let z = &self.relu[k];
            let wv = crate::linalg::mul(layers[k].weight(), v.subrows(p, n_in));
            let zv = Mat::from_fn(n_out, r, |j, c| z[j] * v[(q + j, c)]);
            let wtz = crate::linalg::mul(layers[k].weight_t(), zv.as_ref());
            for c in 0..r {
                for j in 0..n_out {
                    out[(q + j, c)] -= 0.5 * z[j] * wv[(j, c)];
                }
                for i in 0..n_in {
                    out[(p + i, c)] -= 0.5 * wtz[(i, c)];
                }
            }
        }
        if let Some(pb) = &self.products {
            pb.apply(self.net, self.off[1], v, &mut out);
        }
        out
    }

    /// A Gershgorin bound: every eigenvalue of S lies in \[-g, g\].
    pub fn gershgorin(&self) -> f64 {
        let n = self.dim();
        let mut row: Vec<f64> =
            (0..n).map(|i| self.diag[i].abs() + if i > 0 { self.border[i].abs() } else { 0.0 }).collect();
        row[0] += self.border[1..].iter().map(|v| v.abs()).sum::<f64>();
        let layers = self.net.layers();
        for k in 0..layers.len() - 1 {
            let (p, q) = (self.off[k], self.off[k + 1]);
            let w = layers[k].weight();
            for j in 0..w.nrows() {
                let zj = 0.5 * self.relu[k][j].abs();
                for i in 0..w.ncols() {
                    let a = zj * w[(j, i)].abs();
                    row[q + j] += a;
                    row[p + i] += a;
                }
            }
        }
        if let Some(pb) = &self.products {
            pb.gershgorin_rows(self.net, self.off[1], &mut row);
        }
        row.into_iter().fold(0.0, f64::max) * (1.0 + 1e-12)
    }

    /// An estimate of lambda_min(S) and its eigenvector by Krylov-Schur (faer's
    /// `partial_self_adjoint_eigen`) on the shifted operator g I - S, g the Gershgorin bound, whose
    /// largest eigenvalue is g - lambda_min(S).
    pub fn lambda_min(&self, tolerance: f64) -> Option<(f64, Vec<f64>)> {
        self.lambda_min_from(tolerance, None)
    }

    /// [`Self::lambda_min`] started from `start` (e.g. the eigenvector of a nearby operator, which
    /// cuts the Krylov iterations of a sequence of small updates; length [`Self::dim`]).
    pub fn lambda_min_from(&self, tolerance: f64, start: Option<&[f64]>) -> Option<(f64, Vec<f64>)> {
        use faer::dyn_stack::{MemBuffer, MemStack};
        use faer::matrix_free::eigen::{
            PartialEigenParams, partial_self_adjoint_eigen, partial_self_adjoint_eigen_scratch,
        };
        let g = self.gershgorin();
        let n = self.dim();
        if n <= 64 {
            // Small: a dense eigendecomposition (faer's Krylov-Schur needs a subspace smaller than n).
            let mut dense = Mat::<f64>::zeros(n, n);
            let mut e = vec![0.0; n];
            let mut col = vec![0.0; n];
            for j in 0..n {
                e.iter_mut().for_each(|v| *v = 0.0);
                e[j] = 1.0;
                self.apply_vec(&e, &mut col);
                for i in 0..n {
                    dense[(i, j)] = col[i];
                }
            }
            let eig = dense.self_adjoint_eigen(Side::Lower).ok()?;
            return Some((eig.S()[0], eig.U().col(0).iter().copied().collect()));
        }
        let op = Shifted { inner: self, shift: g };
        let v0 = match start {
            // A small generic component keeps the start from being orthogonal to the answer.
            Some(s) if s.len() == n && s.iter().all(|v| v.is_finite()) => {
                faer::Col::from_fn(n, |i| s[i] + 1e-3 * (1.0 + (i % 7) as f64 * 0.1) / (n as f64).sqrt())
            }
            _ => faer::Col::from_fn(n, |i| 1.0 + (i % 7) as f64 * 0.1),
        };
        let mut vecs = Mat::<f64>::zeros(n, 1);
        let mut vals = vec![0.0; 1];
        let params = PartialEigenParams { min_dim: 20, max_dim: 60, max_restarts: 200, ..Default::default() };
        let mut mem = MemBuffer::new(partial_self_adjoint_eigen_scratch(&op, 1, faer::Par::Seq, params));
        let info = partial_self_adjoint_eigen(
            vecs.as_mut(),
            &mut vals,
            &op,
            v0.as_ref(),
            tolerance,
            faer::Par::Seq,
            MemStack::new(&mut mem),
            params,
        );
        if info.n_converged_eigen == 0 {
            return None;
        }
        Some((g - vals[0], vecs.col(0).iter().copied().collect()))
    }
}

#[derive(Debug)]
pub(super) struct Shifted<'a, 'b> {
    inner: &'b SlackOperator<'a>,
    shift: f64,
}

impl faer::matrix_free::LinOp<f64> for Shifted<'_, '_> {
    fn apply_scratch(&self, _rhs_ncols: usize, _par: faer::Par) -> faer::dyn_stack::StackReq {
        faer::dyn_stack::StackReq::EMPTY
    }
    fn nrows(&self) -> usize {
        self.inner.dim()
    }
    fn ncols(&self) -> usize {
        self.inner.dim()
    }
    fn apply(
        &self,
        mut out: faer::MatMut<'_, f64>,
        rhs: MatRef<'_, f64>,
        _par: faer::Par,
        _stack: &mut faer::dyn_stack::MemStack,
    ) {
        let n = self.inner.dim();
        let mut v = vec![0.0; n];
        let mut o = vec![0.0; n];
        for c in 0..rhs.ncols() {
            for i in 0..n {
                v[i] = rhs[(i, c)];
            }
            self.inner.apply_vec(&v, &mut o);
            for i in 0..n {
                out[(i, c)] = self.shift * v[i] - o[i];
            }
        }
    }
    fn conj_apply(
        &self,
        out: faer::MatMut<'_, f64>,
        rhs: MatRef<'_, f64>,
        par: faer::Par,
        stack: &mut faer::dyn_stack::MemStack,
    ) {
        self.apply(out, rhs, par, stack);
    }
}
