//! Block operators: the affine maps of residual networks as layers of a chain.
//!
//! A residual block `y = relu(conv2(relu(conv1(x))) + shortcut(x))` is not a chain of layers,
//! but it is one once `x` rides along: the layer `[conv1; I] x` followed by ReLU gives
//! `[h; relu(x)] = [h; x]` when `x >= 0` (it is itself a ReLU's output), and the next layer
//! `[conv2, shortcut] [h; x]` is the block's sum. So a network graph with skip connections
//! becomes a chain whose layers' maps are block operators: each output segment the sum of pieces
//! (dense, convolution or diagonal) applied to input segments ([`Blocks`]). Every verifier works
//! on it unchanged. The carried neurons are exact: their pre-activation equals a ReLU output
//! (an identity row, [`Blocks::pass_through`]), so every bound method finds them stable and
//! relaxes them by their exact linear piece. (A value that can be negative, such as the network
//! input, rides as the pair relu(x), relu(-x), recombined as their difference: exact as a
//! function, relaxed where x's sign is unknown.)
//!
//! The operator is applied piece by piece (forward, its transpose, the magnitudes), never as a
//! dense matrix in the bound core; [`Blocks::lower`] builds the matrix for the LP and SDP builders.

use faer::{Mat, MatRef};

use super::conv::Conv2d;
use super::sparse::Sparse;
use crate::error::{Error, Result};
use crate::linalg;

/// A linear map from one input segment to one output segment.
#[derive(Clone, Debug)]
pub enum Piece {
    /// A dense matrix (outputs x inputs).
    Dense(Mat<f64>),
    /// A 2-D convolution, applied as an operator.
    Conv(Box<Conv2d>),
    /// x -> d ⊙ x (the identity when d is all ones).
    Diag(Vec<f64>),
    /// A sparse matrix: index maps (Transpose, Slice, Pad, Concat, Gather) and sums.
    Sparse(Box<Sparse>),
    /// A product of pieces, the first applied first (a transpose before a convolution): never
    /// multiplied out in the bound core. Each piece takes the previous one's outputs.
    Chain(Vec<Piece>),
}

impl Piece {
    /// Number of inputs.
    pub fn input_size(&self) -> usize {
        match self {
            Piece::Dense(w) => w.ncols(),
            Piece::Conv(c) => c.input_size(),
            Piece::Diag(d) => d.len(),
            Piece::Sparse(s) => s.ncols(),
            Piece::Chain(p) => p.first().map_or(0, Piece::input_size),
        }
    }
    /// Number of outputs.
    pub fn output_size(&self) -> usize {
        match self {
            Piece::Dense(w) => w.nrows(),
            Piece::Conv(c) => c.output_size(),
            Piece::Diag(d) => d.len(),
            Piece::Sparse(s) => s.nrows(),
            Piece::Chain(p) => p.last().map_or(0, Piece::output_size),
        }
    }
    fn values(&self) -> Box<dyn Iterator<Item = f64> + '_> {
        match self {
            Piece::Dense(w) => Box::new((0..w.ncols()).flat_map(move |j| (0..w.nrows()).map(move |i| w[(i, j)]))),
            Piece::Conv(c) => Box::new(c.kernel().iter().copied()),
            Piece::Diag(d) => Box::new(d.iter().copied()),
            Piece::Sparse(s) => Box::new(s.values().iter().copied()),
            Piece::Chain(p) => Box::new(p.iter().flat_map(Piece::values)),
        }
    }

    fn hash_geometry(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        (self.input_size(), self.output_size()).hash(h);
        match self {
            Piece::Dense(_) => 0u8.hash(h),
            Piece::Conv(c) => {
                1u8.hash(h);
                c.shape().hash(h);
            }
            Piece::Diag(_) => 2u8.hash(h),
            Piece::Sparse(sp) => {
                3u8.hash(h);
                sp.entries().for_each(|(i, j, _)| (i, j).hash(h));
            }
            Piece::Chain(p) => {
                4u8.hash(h);
                p.iter().for_each(|q| q.hash_geometry(h));
            }
        }
    }

    /// An error when the pieces of a chain do not fit one another.
    fn check_chain(&self) -> std::result::Result<(), String> {
        if let Piece::Chain(p) = self {
            if p.is_empty() {
                return Err("an empty chain".into());
            }
            for (k, w) in p.windows(2).enumerate() {
                if w[0].output_size() != w[1].input_size() {
                    return Err(format!(
                        "chain piece {k} has {} outputs, piece {} takes {} inputs",
                        w[0].output_size(),
                        k + 1,
                        w[1].input_size()
                    ));
                }
            }
            p.iter().try_for_each(Piece::check_chain)?;
        }
        Ok(())
    }

    /// The number of rounded operations an entry of the piece's product (either way) can
    /// accumulate in the bound core: its larger size, summed over a chain's pieces (a product
    /// of factors rounds in each; Higham's gamma_a + gamma_b + gamma_a gamma_b <= gamma_{a+b}).
    pub fn rounding_terms(&self) -> usize {
        match self {
            Piece::Chain(p) => p.iter().map(Piece::rounding_terms).sum(),
            other => other.input_size().max(other.output_size()),
        }
    }

    /// W X, or |W| X with `abs` (for a chain the product of the magnitudes, >= |W| X).
    pub fn forward(&self, x: MatRef<'_, f64>, abs: bool) -> Mat<f64> {
        match self {
            Piece::Dense(w) if abs => {
                let a = Mat::from_fn(w.nrows(), w.ncols(), |i, j| w[(i, j)].abs());
                linalg::mul(a.as_ref(), x)
            }
            Piece::Dense(w) => linalg::mul(w.as_ref(), x),
            Piece::Conv(c) if abs => c.forward_abs(x),
            Piece::Conv(c) => c.forward(x),
            Piece::Diag(d) => Mat::from_fn(d.len(), x.ncols(), |r, s| if abs { d[r].abs() } else { d[r] } * x[(r, s)]),
            Piece::Sparse(sp) => sp.forward(x, abs),
            Piece::Chain(p) => {
                let mut cur = p[0].forward(x, abs);
                for q in &p[1..] {
                    cur = q.forward(cur.as_ref(), abs);
                }
                cur
            }
        }
    }

    /// W^T lam (`wt`: W^T when stored).
    pub(crate) fn transpose(&self, lam: MatRef<'_, f64>, wt: Option<&Mat<f64>>) -> Mat<f64> {
        match self {
            Piece::Dense(w) => match wt {
                Some(wt) => linalg::mul(wt.as_ref(), lam),
                None => linalg::mul(w.transpose(), lam),
            },
            Piece::Conv(c) => c.transpose(lam),
            Piece::Diag(d) => Mat::from_fn(d.len(), lam.ncols(), |r, s| d[r] * lam[(r, s)]),
            Piece::Sparse(sp) => sp.transpose(lam),
            Piece::Chain(p) => {
                let mut cur = p[p.len() - 1].transpose(lam, None);
                for q in p[..p.len() - 1].iter().rev() {
                    cur = q.transpose(cur.as_ref(), None);
                }
                cur
            }
        }
    }

    /// W^T lam for `lam` on the outputs `local` only (sorted), on the inputs they reach.
    fn transpose_rows(&self, local: &[usize], lam: MatRef<'_, f64>, wt: Option<&Mat<f64>>) -> (Vec<usize>, Mat<f64>) {
        match self {
            Piece::Dense(w) => {
                let ni = w.ncols();
                let wt_sub = Mat::from_fn(ni, local.len(), |j, k| wt.map_or(w[(local[k], j)], |t| t[(j, local[k])]));
                ((0..ni).collect(), linalg::mul(wt_sub.as_ref(), lam))
            }
            Piece::Conv(c) => c.transpose_rows(local, lam),
            Piece::Diag(d) => {
                let values = Mat::from_fn(local.len(), lam.ncols(), |k, s| d[local[k]] * lam[(k, s)]);
                (local.to_vec(), values)
            }
            Piece::Sparse(sp) => sp.transpose_rows(local, lam),
            Piece::Chain(p) => {
                let (mut rows, mut cur) = p[p.len() - 1].transpose_rows(local, lam, None);
                for q in p[..p.len() - 1].iter().rev() {
                    (rows, cur) = q.transpose_rows(&rows, cur.as_ref(), None);
                }
                (rows, cur)
            }
        }
    }
}

/// One piece placed in the operator: it reads inputs `input..input + piece.input_size()` and
/// adds into outputs `output..output + piece.output_size()`.
#[derive(Clone, Debug)]
pub struct Block {
    /// First output row.
    pub output: usize,
    /// First input column.
    pub input: usize,
    /// The map.
    pub piece: Piece,
}

/// A linear operator (outputs x inputs) made of pieces on segments of its input and output; an
/// output row reached by no piece is zero.
#[derive(Clone, Debug)]
pub struct Blocks {
    input_size: usize,
    output_size: usize,
    blocks: Vec<Block>,
    /// The dense pieces' transposes (None for the others), for the backward passes.
    transposed: Vec<Option<Mat<f64>>>,
    /// (output row, input) for the rows whose only entry is a 1 (see [`Blocks::pass_through`]).
    pass: Vec<(usize, usize)>,
}

impl Blocks {
    /// An operator from its pieces; an error when a piece reaches outside the given sizes or
    /// holds a non-finite value (named with `layer`).
    pub fn new(input_size: usize, output_size: usize, blocks: Vec<Block>, layer: usize) -> Result<Self> {
        for (k, b) in blocks.iter().enumerate() {
            let (ni, no) = (b.piece.input_size(), b.piece.output_size());
            if b.input + ni > input_size || b.output + no > output_size {
                return Err(Error::Shape {
                    layer,
                    detail: format!(
                        "block {k} maps inputs {}..{} to outputs {}..{}, the operator is {output_size}x{input_size}",
                        b.input,
                        b.input + ni,
                        b.output,
                        b.output + no
                    ),
                });
            }
            if let Err(detail) = b.piece.check_chain() {
                return Err(Error::Shape { layer, detail: format!("block {k}: {detail}") });
            }
            if let Some((index, value)) = b.piece.values().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFinite { layer, what: "block weight", index, value });
            }
        }
        let transposed = blocks
            .iter()
            .map(|b| match &b.piece {
                Piece::Dense(w) => Some(w.transpose().to_owned()),
                _ => None,
            })
            .collect();
        // Rows reached by exactly one piece, a diagonal one with entry 1 there.
        let mut reach = vec![0u32; output_size];
        for b in &blocks {
            reach[b.output..b.output + b.piece.output_size()].iter_mut().for_each(|r| *r += 1);
        }
        let mut pass = Vec::new();
        for b in &blocks {
            if let Piece::Diag(d) = &b.piece {
                for (r, &v) in d.iter().enumerate() {
                    if v == 1.0 && reach[b.output + r] == 1 {
                        pass.push((b.output + r, b.input + r));
                    }
                }
            }
        }
        pass.sort_unstable();
        Ok(Self { input_size, output_size, blocks, transposed, pass })
    }

    /// Number of inputs.
    pub fn input_size(&self) -> usize {
        self.input_size
    }
    /// Number of outputs.
    pub fn output_size(&self) -> usize {
        self.output_size
    }
    /// The rounded operations an entry of the operator's product (either way) can accumulate
    /// beyond one dot product over its inputs or outputs: the chained pieces' sizes (see
    /// [`Piece::rounding_terms`]), 0 without chains.
    pub fn chained_terms(&self) -> usize {
        self.blocks.iter().filter(|b| matches!(b.piece, Piece::Chain(_))).map(|b| b.piece.rounding_terms()).sum()
    }

    /// The pieces.
    pub fn blocks(&self) -> &[Block] {
        &self.blocks
    }

    /// The output rows that copy one input exactly, as `(row, input)`, sorted by row: row i of
    /// the operator is the unit vector of that input, so the pre-activation `z_i = x_input + b_i`
    /// is computed without rounding when `b_i = 0`, and its bounds are the input's.
    pub fn pass_through(&self) -> &[(usize, usize)] {
        &self.pass
    }

    /// W X for every column of `x` (inputs x columns).
    pub fn forward(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        self.apply(x, false)
    }

    /// |W| X (the pieces' magnitudes).
    pub fn forward_abs(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        self.apply(x, true)
    }

    fn apply(&self, x: MatRef<'_, f64>, abs: bool) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(self.output_size, x.ncols());
        for b in &self.blocks {
            let part = b.piece.forward(x.subrows(b.input, b.piece.input_size()), abs);
            add_rows(&mut out, b.output, part.as_ref());
        }
        out
    }

    /// W^T lam for every column of `lam` (outputs x columns).
    pub fn transpose(&self, lam: MatRef<'_, f64>) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(self.input_size, lam.ncols());
        for (b, wt) in self.blocks.iter().zip(&self.transposed) {
            let part = b.piece.transpose(lam.subrows(b.output, b.piece.output_size()), wt.as_ref());
            add_rows(&mut out, b.input, part.as_ref());
        }
        out
    }

    /// W^T lam for coefficients `lam` stored on the outputs `rows` only (sorted; the others zero),
    /// returned on the inputs they reach (sorted, as `(inputs, values)`): a convolution piece's
    /// receptive fields, a diagonal piece's own inputs, a dense piece's every input.
    pub fn transpose_rows(&self, rows: &[usize], lam: MatRef<'_, f64>) -> (Vec<usize>, Mat<f64>) {
        let cols = lam.ncols();
        let mut parts: Vec<(Vec<usize>, Mat<f64>)> = Vec::new();
        for (b, wt) in self.blocks.iter().zip(&self.transposed) {
            let no = b.piece.output_size();
            let (at, local): (Vec<usize>, Vec<usize>) = rows
                .iter()
                .enumerate()
                .filter(|&(_, &i)| i >= b.output && i < b.output + no)
                .map(|(k, &i)| (k, i - b.output))
                .unzip();
            if local.is_empty() {
                continue;
            }
            let sub = Mat::from_fn(local.len(), cols, |k, s| lam[(at[k], s)]);
            let (inputs, values) = b.piece.transpose_rows(&local, sub.as_ref(), wt.as_ref());
            parts.push((inputs.into_iter().map(|j| j + b.input).collect(), values));
        }
        let mut all: Vec<usize> = parts.iter().flat_map(|(inputs, _)| inputs.iter().copied()).collect();
        all.sort_unstable();
        all.dedup();
        let mut out = Mat::<f64>::zeros(all.len(), cols);
        for (inputs, values) in parts {
            let at: Vec<usize> = inputs.iter().map(|j| all.binary_search(j).expect("in the union")).collect();
            for s in 0..cols {
                for (k, &r) in at.iter().enumerate() {
                    out[(r, s)] += values[(k, s)];
                }
            }
        }
        (all, out)
    }

    /// The outputs grouped so that a group's rows share most of their inputs: the rows of each
    /// convolution piece by position (`per_group` outputs per group at least, every channel at a
    /// few positions), the others in consecutive runs of `run`. Every output is in one group.
    pub fn neuron_groups(&self, per_group: usize, run: usize) -> Vec<Vec<usize>> {
        let mut assigned = vec![false; self.output_size];
        let mut groups = Vec::new();
        for b in &self.blocks {
            if let Piece::Conv(c) = &b.piece {
                for g in c.neuron_groups(per_group.div_ceil(c.output_shape()[0])) {
                    let g: Vec<usize> = g.into_iter().map(|i| i + b.output).filter(|&i| !assigned[i]).collect();
                    g.iter().for_each(|&i| assigned[i] = true);
                    if !g.is_empty() {
                        groups.push(g);
                    }
                }
            }
        }
        let rest: Vec<usize> = (0..self.output_size).filter(|&i| !assigned[i]).collect();
        groups.extend(rest.chunks(run.max(1)).map(<[usize]>::to_vec));
        groups
    }

    /// Columns `rows` of W^T (row i of W as a column, for each listed output i).
    pub fn rows_transposed(&self, rows: &[usize]) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(self.input_size, rows.len());
        for (b, wt) in self.blocks.iter().zip(&self.transposed) {
            let no = b.piece.output_size();
            let local: Vec<(usize, usize)> = rows
                .iter()
                .enumerate()
                .filter(|&(_, &i)| i >= b.output && i < b.output + no)
                .map(|(s, &i)| (s, i - b.output))
                .collect();
            if local.is_empty() {
                continue;
            }
            match (&b.piece, wt) {
                (Piece::Dense(w), wt) => {
                    for &(s, r) in &local {
                        for j in 0..w.ncols() {
                            out[(b.input + j, s)] += wt.as_ref().map_or(w[(r, j)], |t| t[(j, r)]);
                        }
                    }
                }
                (Piece::Conv(c), _) => {
                    let idx: Vec<usize> = local.iter().map(|&(_, r)| r).collect();
                    let cols = c.rows_transposed(&idx);
                    for (k, &(s, _)) in local.iter().enumerate() {
                        for j in 0..cols.nrows() {
                            out[(b.input + j, s)] += cols[(j, k)];
                        }
                    }
                }
                (Piece::Diag(d), _) => {
                    for &(s, r) in &local {
                        out[(b.input + r, s)] += d[r];
                    }
                }
                (piece, _) => {
                    // Through the piece's own transpose, one unit column per distinct row.
                    let mut distinct: Vec<usize> = local.iter().map(|&(_, r)| r).collect();
                    distinct.sort_unstable();
                    distinct.dedup();
                    let n = distinct.len();
                    let unit = Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 });
                    let (inputs, cols) = piece.transpose_rows(&distinct, unit.as_ref(), None);
                    for &(s, r) in &local {
                        let k = distinct.binary_search(&r).expect("listed");
                        for (q, &j) in inputs.iter().enumerate() {
                            out[(b.input + j, s)] += cols[(q, k)];
                        }
                    }
                }
            }
        }
        out
    }

    /// The dense matrix (outputs x inputs).
    pub fn lower(&self) -> Mat<f64> {
        let all: Vec<usize> = (0..self.output_size).collect();
        self.rows_transposed(&all).transpose().to_owned()
    }

    /// Every stored value, piece by piece (for hashing and validation).
    pub(crate) fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.blocks.iter().flat_map(|b| b.piece.values())
    }

    /// Hashes the geometry (for [`super::Network::fingerprint`]).
    pub(crate) fn hash_geometry(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        (self.input_size, self.output_size).hash(h);
        for b in &self.blocks {
            (b.output, b.input).hash(h);
            b.piece.hash_geometry(h);
        }
    }
}

/// out[start.., :] += part.
fn add_rows(out: &mut Mat<f64>, start: usize, part: MatRef<'_, f64>) {
    for s in 0..part.ncols() {
        let dst =
            &mut out.col_mut(s).try_as_col_major_mut().expect("owned").as_slice_mut()[start..start + part.nrows()];
        dst.iter_mut().zip(part.col(s).iter()).for_each(|(o, v)| *o += v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::conv::Conv2dShape;

    fn rng(seed: u64) -> impl FnMut() -> f64 {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    }

    /// [conv, I] from [c, x] plus a dense shortcut: every operation against the dense matrix.
    #[test]
    fn blocks_agree_with_their_dense_matrix() {
        let mut r = rng(7);
        let shape = Conv2dShape::new([2, 5, 5], [3, 2, 3, 3], [1, 1], [1, 1]);
        let conv = Conv2d::new(shape, (0..54).map(|_| r()).collect(), 0).unwrap();
        let (ci, co) = (conv.input_size(), conv.output_size()); // 50, 75
        let dense = Mat::from_fn(co, 10, |_, _| r());
        let blocks = vec![
            Block { output: 0, input: 0, piece: Piece::Conv(Box::new(conv)) },
            Block { output: 0, input: ci, piece: Piece::Dense(dense) },
            Block { output: co, input: ci, piece: Piece::Diag(vec![1.0; 10]) },
            Block { output: co + 10, input: 3, piece: Piece::Diag((0..4).map(|_| r()).collect()) },
        ];
        let op = Blocks::new(ci + 10, co + 14, blocks, 0).unwrap();
        let m = op.lower();
        // Lowered by hand: the conv's columns, the dense block and the diagonals.
        assert_eq!((m.nrows(), m.ncols()), (co + 14, ci + 10));
        for k in 0..10 {
            assert_eq!(m[(co + k, ci + k)], 1.0);
        }
        assert_eq!(op.pass_through(), (0..10).map(|k| (co + k, ci + k)).collect::<Vec<_>>().as_slice());
        let x = Mat::from_fn(ci + 10, 3, |_, _| r());
        let lam = Mat::from_fn(co + 14, 4, |_, _| r());
        let close = |a: MatRef<'_, f64>, b: MatRef<'_, f64>| {
            assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
            for j in 0..a.ncols() {
                for i in 0..a.nrows() {
                    assert!((a[(i, j)] - b[(i, j)]).abs() <= 1e-12, "({i},{j}) {} vs {}", a[(i, j)], b[(i, j)]);
                }
            }
        };
        close(op.forward(x.as_ref()).as_ref(), linalg::mul(m.as_ref(), x.as_ref()).as_ref());
        let abs = Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)].abs());
        // |W| x differs where the conv and the dense block overlap: |a + b| <= |a| + |b|.
        let xa = Mat::from_fn(ci + 10, 3, |i, j| x[(i, j)].abs());
        let fa = op.forward_abs(xa.as_ref());
        let da = linalg::mul(abs.as_ref(), xa.as_ref());
        for j in 0..3 {
            for i in 0..m.nrows() {
                assert!(fa[(i, j)] >= da[(i, j)] - 1e-12);
            }
        }
        close(op.transpose(lam.as_ref()).as_ref(), linalg::mul(m.transpose(), lam.as_ref()).as_ref());
        let rows = [0usize, 7, co - 1, co + 3, co + 12];
        // W^T lam on the listed rows, on the inputs they reach.
        let sub = Mat::from_fn(rows.len(), 2, |k, s| lam[(rows[k], s)]);
        let (inputs, values) = op.transpose_rows(&rows, sub.as_ref());
        let mut full = Mat::<f64>::zeros(co + 14, 2);
        for (k, &i) in rows.iter().enumerate() {
            for s in 0..2 {
                full[(i, s)] = sub[(k, s)];
            }
        }
        let want = linalg::mul(m.transpose(), full.as_ref());
        for j in 0..ci + 10 {
            for s in 0..2 {
                let got = inputs.binary_search(&j).map_or(0.0, |r| values[(r, s)]);
                assert!((got - want[(j, s)]).abs() <= 1e-12, "transpose_rows ({j},{s})");
            }
        }
        assert!(inputs.len() < ci + 10, "a convolution's rows reach only their receptive fields");
        let groups = op.neuron_groups(6, 4);
        let mut seen: Vec<usize> = groups.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..co + 14).collect::<Vec<_>>());
        let cols = op.rows_transposed(&rows);
        let want = Mat::from_fn(ci + 10, rows.len(), |j, s| m[(rows[s], j)]);
        close(cols.as_ref(), want.as_ref());
    }

    #[test]
    fn blocks_outside_the_operator_or_non_finite_are_errors() {
        let b = vec![Block { output: 2, input: 0, piece: Piece::Diag(vec![1.0; 3]) }];
        assert!(matches!(Blocks::new(3, 4, b, 1), Err(Error::Shape { layer: 1, .. })));
        let b = vec![Block { output: 0, input: 0, piece: Piece::Diag(vec![1.0, f64::NAN]) }];
        assert!(matches!(Blocks::new(2, 2, b, 0), Err(Error::NonFinite { index: 1, .. })));
    }
}
