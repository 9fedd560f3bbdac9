//! Sparse linear maps: the index maps and sums of an ONNX graph (Transpose, Slice, Gather, Pad,
//! Concat, Split, ReduceSum, a MatMul with an identity factor) as one matrix in compressed rows.
//!
//! A tensor reordered, cut, padded or summed is the same vector multiplied by a matrix with a
//! few entries per row (a permutation, a selection, rows of ones), so the graph's linear
//! operators compose into pieces of a layer's map ([`super::blocks::Piece::Sparse`]) that the
//! bound core applies like any other: forward, transpose, magnitudes. Each entry of a product
//! sums at most [`Sparse::max_terms`] products, so the layer's rounding allowance covers it.

use faer::{Mat, MatRef};

use crate::error::{Error, Result};

/// An `nrows x ncols` matrix stored by rows (CSR) and by columns (for the transpose).
#[derive(Clone, Debug, PartialEq)]
pub struct Sparse {
    nrows: usize,
    ncols: usize,
    row_ptr: Vec<usize>,
    col: Vec<usize>,
    val: Vec<f64>,
    col_ptr: Vec<usize>,
    row: Vec<usize>,
    tval: Vec<f64>,
}

impl Sparse {
    /// A matrix from `(row, column, value)` entries (repeated positions are summed, zeros kept
    /// out); an error when an entry lies outside the matrix or is not finite.
    pub fn from_entries(nrows: usize, ncols: usize, entries: Vec<(usize, usize, f64)>) -> Result<Self> {
        if let Some(&(i, j, _)) = entries.iter().find(|&&(i, j, _)| i >= nrows || j >= ncols) {
            return Err(Error::Shape {
                layer: 0,
                detail: format!("sparse entry ({i}, {j}) outside a {nrows}x{ncols} matrix"),
            });
        }
        if let Some((index, &(_, _, value))) = entries.iter().enumerate().find(|(_, e)| !e.2.is_finite()) {
            return Err(Error::NonFinite { layer: 0, what: "sparse entry", index, value });
        }
        Ok(Self::merged(nrows, ncols, entries))
    }

    /// A matrix from entries inside its shape, repeated positions summed (values unchecked: a
    /// non-finite one from a user's weights is reported where the layer is validated).
    fn merged(nrows: usize, ncols: usize, mut entries: Vec<(usize, usize, f64)>) -> Self {
        entries.sort_unstable_by_key(|&(i, j, _)| (i, j));
        let mut merged: Vec<(usize, usize, f64)> = Vec::with_capacity(entries.len());
        for (i, j, v) in entries {
            match merged.last_mut() {
                Some(last) if last.0 == i && last.1 == j => last.2 += v,
                _ => merged.push((i, j, v)),
            }
        }
        merged.retain(|e| e.2 != 0.0);
        Self::from_sorted(nrows, ncols, &merged)
    }

    /// Row i of the result is the unit vector of input `src[i]` (a zero row for None): a
    /// permutation, a selection or an embedding.
    pub fn selection(ncols: usize, src: &[Option<usize>]) -> Result<Self> {
        let entries = src.iter().enumerate().filter_map(|(i, s)| s.map(|j| (i, j, 1.0))).collect();
        Self::from_entries(src.len(), ncols, entries)
    }

    /// diag(d) (values unchecked, as [`Sparse::then`]'s).
    pub fn diagonal(d: &[f64]) -> Self {
        Self::merged(d.len(), d.len(), d.iter().enumerate().map(|(i, &v)| (i, i, v)).collect())
    }

    fn from_sorted(nrows: usize, ncols: usize, entries: &[(usize, usize, f64)]) -> Self {
        let mut row_ptr = vec![0usize; nrows + 1];
        let mut col_ptr = vec![0usize; ncols + 1];
        for &(i, j, _) in entries {
            row_ptr[i + 1] += 1;
            col_ptr[j + 1] += 1;
        }
        for k in 0..nrows {
            row_ptr[k + 1] += row_ptr[k];
        }
        for k in 0..ncols {
            col_ptr[k + 1] += col_ptr[k];
        }
        let col = entries.iter().map(|e| e.1).collect();
        let val = entries.iter().map(|e| e.2).collect();
        let mut next = col_ptr.clone();
        let mut row = vec![0usize; entries.len()];
        let mut tval = vec![0.0; entries.len()];
        for &(i, j, v) in entries {
            row[next[j]] = i;
            tval[next[j]] = v;
            next[j] += 1;
        }
        Self { nrows, ncols, row_ptr, col, val, col_ptr, row, tval }
    }

    /// The entries, row by row.
    pub fn entries(&self) -> impl Iterator<Item = (usize, usize, f64)> + '_ {
        (0..self.nrows)
            .flat_map(move |i| (self.row_ptr[i]..self.row_ptr[i + 1]).map(move |k| (i, self.col[k], self.val[k])))
    }

    /// Number of rows (outputs).
    pub fn nrows(&self) -> usize {
        self.nrows
    }
    /// Number of columns (inputs).
    pub fn ncols(&self) -> usize {
        self.ncols
    }
    /// Number of stored entries.
    pub fn nnz(&self) -> usize {
        self.val.len()
    }
    /// The stored values.
    pub fn values(&self) -> &[f64] {
        &self.val
    }
    /// Whether every entry is 1 and no row or column holds two (a permutation, a selection or an
    /// embedding): the map copies values, and a product with it involves no rounding.
    pub fn is_partial_permutation(&self) -> bool {
        self.val.iter().all(|&v| v == 1.0) && self.max_terms() <= 1
    }

    /// The most products an entry of S x or S^T lam sums (the longest row or column).
    pub fn max_terms(&self) -> usize {
        let rows = self.row_ptr.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let cols = self.col_ptr.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        rows.max(cols)
    }

    /// S X (or |S| X) for every column of `x` (ncols x columns).
    pub fn forward(&self, x: MatRef<'_, f64>, abs: bool) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(self.nrows, x.ncols());
        for s in 0..x.ncols() {
            let xs = x.col(s);
            let mut o = out.col_mut(s);
            for i in 0..self.nrows {
                let mut acc = 0.0;
                for k in self.row_ptr[i]..self.row_ptr[i + 1] {
                    let v = if abs { self.val[k].abs() } else { self.val[k] };
                    acc += v * xs[self.col[k]];
                }
                o[i] = acc;
            }
        }
        out
    }

    /// S^T lam for every column of `lam` (nrows x columns).
    pub fn transpose(&self, lam: MatRef<'_, f64>) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(self.ncols, lam.ncols());
        for s in 0..lam.ncols() {
            let ls = lam.col(s);
            let mut o = out.col_mut(s);
            for j in 0..self.ncols {
                let mut acc = 0.0;
                for k in self.col_ptr[j]..self.col_ptr[j + 1] {
                    acc += self.tval[k] * ls[self.row[k]];
                }
                o[j] = acc;
            }
        }
        out
    }

    /// S^T lam for `lam` on the rows `rows` only (sorted; the others zero), on the inputs those
    /// rows reach (sorted, as `(inputs, values)`).
    pub fn transpose_rows(&self, rows: &[usize], lam: MatRef<'_, f64>) -> (Vec<usize>, Mat<f64>) {
        let mut inputs: Vec<usize> =
            rows.iter().flat_map(|&i| self.col[self.row_ptr[i]..self.row_ptr[i + 1]].iter().copied()).collect();
        inputs.sort_unstable();
        inputs.dedup();
        let mut out = Mat::<f64>::zeros(inputs.len(), lam.ncols());
        let at: Vec<Vec<usize>> = rows
            .iter()
            .map(|&i| {
                self.col[self.row_ptr[i]..self.row_ptr[i + 1]]
                    .iter()
                    .map(|j| inputs.binary_search(j).expect("in the union"))
                    .collect()
            })
            .collect();
        for s in 0..lam.ncols() {
            for (r, &i) in rows.iter().enumerate() {
                let l = lam[(r, s)];
                if l == 0.0 {
                    continue;
                }
                for (q, k) in (self.row_ptr[i]..self.row_ptr[i + 1]).enumerate() {
                    out[(at[r][q], s)] += self.val[k] * l;
                }
            }
        }
        (inputs, out)
    }

    /// The map x -> after (self x), i.e. the product `after * self` (`after` takes self's
    /// outputs).
    pub fn then(&self, after: &Sparse) -> Sparse {
        // Row i of the product combines the rows of self that row i of `after` reads.
        let mut entries = Vec::new();
        for i in 0..after.nrows {
            for k in after.row_ptr[i]..after.row_ptr[i + 1] {
                let (m, a) = (after.col[k], after.val[k]);
                for q in self.row_ptr[m]..self.row_ptr[m + 1] {
                    entries.push((i, self.col[q], a * self.val[q]));
                }
            }
        }
        Sparse::merged(after.nrows, self.ncols, entries)
    }

    /// S W for a dense W (ncols rows).
    pub fn mul_dense(&self, w: MatRef<'_, f64>) -> Mat<f64> {
        self.forward(w, false)
    }

    /// W S for a dense W (nrows columns).
    pub fn dense_mul(&self, w: MatRef<'_, f64>) -> Mat<f64> {
        // (W S)^T = S^T W^T.
        self.transpose(w.transpose()).transpose().to_owned()
    }

    /// diag(s) S.
    pub fn scale_rows(&self, s: &[f64]) -> Sparse {
        let entries = self.entries().map(|(i, j, v)| (i, j, v * s[i])).collect();
        Sparse::merged(self.nrows, self.ncols, entries)
    }

    /// S diag(d).
    pub fn scale_cols(&self, d: &[f64]) -> Sparse {
        let entries = self.entries().map(|(i, j, v)| (i, j, v * d[j])).collect();
        Sparse::merged(self.nrows, self.ncols, entries)
    }

    /// S + T (the same shape).
    pub fn plus(&self, other: &Sparse) -> Sparse {
        let entries = self.entries().chain(other.entries()).collect();
        Sparse::merged(self.nrows, self.ncols, entries)
    }

    /// Columns `rows` of S^T (row i of S as a column, for each listed i).
    pub fn rows_transposed(&self, rows: &[usize]) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(self.ncols, rows.len());
        for (s, &i) in rows.iter().enumerate() {
            for k in self.row_ptr[i]..self.row_ptr[i + 1] {
                out[(self.col[k], s)] += self.val[k];
            }
        }
        out
    }

    /// The dense matrix.
    pub fn lower(&self) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(self.nrows, self.ncols);
        for (i, j, v) in self.entries() {
            out[(i, j)] += v;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg;

    fn close(a: MatRef<'_, f64>, b: MatRef<'_, f64>) {
        assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
        for j in 0..a.ncols() {
            for i in 0..a.nrows() {
                assert!((a[(i, j)] - b[(i, j)]).abs() <= 1e-12, "({i},{j}) {} vs {}", a[(i, j)], b[(i, j)]);
            }
        }
    }

    #[test]
    fn every_product_agrees_with_the_dense_matrix() {
        let mut seed = 3u64;
        let mut r = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) * 2.0 - 1.0
        };
        let entries: Vec<(usize, usize, f64)> =
            (0..25).map(|k| ((k * 7) % 9, (k * 5) % 11, r())).chain([(2, 3, 1.0), (2, 3, -0.5)]).collect();
        let s = Sparse::from_entries(9, 11, entries).unwrap();
        let m = s.lower();
        let x = Mat::from_fn(11, 3, |_, _| r());
        let lam = Mat::from_fn(9, 4, |_, _| r());
        close(s.forward(x.as_ref(), false).as_ref(), linalg::mul(m.as_ref(), x.as_ref()).as_ref());
        let am = Mat::from_fn(9, 11, |i, j| m[(i, j)].abs());
        close(s.forward(x.as_ref(), true).as_ref(), linalg::mul(am.as_ref(), x.as_ref()).as_ref());
        close(s.transpose(lam.as_ref()).as_ref(), linalg::mul(m.transpose(), lam.as_ref()).as_ref());
        let rows = [1usize, 2, 7];
        let sub = Mat::from_fn(3, 2, |k, c| lam[(rows[k], c)]);
        let (inputs, values) = s.transpose_rows(&rows, sub.as_ref());
        let mut full = Mat::<f64>::zeros(9, 2);
        for (k, &i) in rows.iter().enumerate() {
            for c in 0..2 {
                full[(i, c)] = sub[(k, c)];
            }
        }
        let want = linalg::mul(m.transpose(), full.as_ref());
        for j in 0..11 {
            for c in 0..2 {
                let got = inputs.binary_search(&j).map_or(0.0, |q| values[(q, c)]);
                assert!((got - want[(j, c)]).abs() <= 1e-12);
            }
        }
        let t = Sparse::from_entries(5, 9, (0..12).map(|k| (k % 5, (k * 4) % 9, r())).collect()).unwrap();
        close(s.then(&t).lower().as_ref(), linalg::mul(t.lower().as_ref(), m.as_ref()).as_ref());
        let w = Mat::from_fn(4, 9, |_, _| r());
        close(s.dense_mul(w.as_ref()).as_ref(), linalg::mul(w.as_ref(), m.as_ref()).as_ref());
        let cols = s.rows_transposed(&rows);
        close(cols.as_ref(), Mat::from_fn(11, 3, |j, k| m[(rows[k], j)]).as_ref());
        assert!(s.max_terms() >= 1);
    }

    #[test]
    fn bad_entries_are_errors() {
        assert!(matches!(Sparse::from_entries(2, 2, vec![(2, 0, 1.0)]), Err(Error::Shape { .. })));
        assert!(matches!(Sparse::from_entries(2, 2, vec![(0, 0, f64::NAN)]), Err(Error::NonFinite { .. })));
        let p = Sparse::selection(3, &[Some(2), None, Some(0)]).unwrap();
        assert_eq!(p.lower()[(0, 2)], 1.0);
        assert_eq!(p.nnz(), 2);
    }
}
