//! Feed-forward networks: a chain of affine layers, each followed by an element-wise activation.
//!
//! A layer's affine map is a dense matrix or a 2-D convolution applied as an operator
//! ([`Conv2d`]: forward by im2col and GEMM, backward by its transpose, never an n_out x n_in
//! matrix in the bound core); flattening a row-major (C, H, W) tensor is the identity on the flat
//! vector, so every network is a sequence of [`Layer`]s `x_{k+1} = sigma_k(W_k x_k + b_k)`; the
//! output of the last layer is the vector of logits. This is the form every verifier works on (the
//! papers' `x_{k+1} = ReLU(W_k x_k)`).

mod activation;
pub mod blocks;
pub mod conv;
pub mod sparse;

pub use activation::{Activation, CurvatureConstants, sigmoid, softplus};

use std::sync::{Arc, OnceLock};

use faer::{Mat, MatRef};

use crate::error::{Error, Result};
use crate::linalg;
pub use blocks::{Block, Blocks, Piece};
pub use conv::{Conv2d, Conv2dShape};
pub use sparse::Sparse;

/// How a layer applies W: a stored dense matrix, or a convolution whose dense matrix is built
/// only if a method asks for it ([`Layer::weight`]).
#[derive(Clone, Debug)]
enum Op {
    Dense {
        weight: Mat<f64>,
        /// W^T, kept because the backward passes read the weights by rows.
        weight_t: Mat<f64>,
        /// W W^T and the rows' norms, computed on first use ([`Layer::gram`]).
        gram: OnceLock<Arc<Gram>>,
    },
    Conv {
        conv: Arc<Conv2d>,
        /// (W, W^T), lowered on first use.
        dense: OnceLock<(Mat<f64>, Mat<f64>)>,
    },
    /// Pieces on segments of the input and output (residual networks, [`blocks`]).
    Blocks {
        blocks: Arc<Blocks>,
        /// (W, W^T), lowered on first use.
        dense: OnceLock<(Mat<f64>, Mat<f64>)>,
    },
}

/// The Gram matrix G = fl(W W^T) of a dense layer and the Euclidean norms of W's rows (each
/// rounded up), for the l2 ball's support through the layer without forming W^T lam
/// ([`crate::bounds::ball`]).
#[derive(Debug)]
pub struct Gram {
    /// fl(W W^T) (outputs x outputs).
    pub matrix: Mat<f64>,
    /// r_i >= ||W_i||_2 for every row i.
    pub row_norms: Vec<f64>,
}

/// One affine layer `z = W x + b` followed by an activation `sigma(z)`.
#[derive(Clone, Debug)]
pub struct Layer {
    op: Op,
    bias: Vec<f64>,
    activation: Activation,
}

impl Layer {
    /// A layer from its weight matrix (outputs x inputs), bias and activation. Shapes and
    /// finiteness are checked when the layer is put into a [`Network`].
    pub fn new(weight: Mat<f64>, bias: Vec<f64>, activation: Activation) -> Self {
        let weight_t = weight.transpose().to_owned();
        Self { op: Op::Dense { weight, weight_t, gram: OnceLock::new() }, bias, activation }
    }

    /// A convolution layer: `z = conv(x) + b` with one bias per output neuron (C' H' W' values; a
    /// per-channel bias repeated over the positions, or any other). The bound core applies it as
    /// an operator ([`Conv2d`]), never as a dense matrix.
    pub fn conv2d(conv: Conv2d, bias: Vec<f64>, activation: Activation) -> Self {
        Self { op: Op::Conv { conv: Arc::new(conv), dense: OnceLock::new() }, bias, activation }
    }

    /// A layer whose map is a block operator (a residual network's layer as a chain, see
    /// [`blocks`]), applied piece by piece in the bound core.
    pub fn blocks(blocks: Blocks, bias: Vec<f64>, activation: Activation) -> Self {
        Self { op: Op::Blocks { blocks: Arc::new(blocks), dense: OnceLock::new() }, bias, activation }
    }

    /// The same map with another activation.
    pub fn with_activation(&self, activation: Activation) -> Self {
        Self { activation, ..self.clone() }
    }

    /// A layer from the rows of its weight matrix; an error when the rows differ in length.
    pub fn from_rows(rows: &[Vec<f64>], bias: Vec<f64>, activation: Activation) -> Result<Self> {
        let ncols = rows.first().map_or(0, Vec::len);
        if let Some((i, r)) = rows.iter().enumerate().find(|(_, r)| r.len() != ncols) {
            return Err(Error::Shape {
                layer: 0,
                detail: format!("weight row {i} has {} entries, row 0 has {ncols}", r.len()),
            });
        }
        Ok(Self::new(Mat::from_fn(rows.len(), ncols, |i, j| rows[i][j]), bias, activation))
    }

    fn lowered(&self) -> (MatRef<'_, f64>, MatRef<'_, f64>) {
        match &self.op {
            Op::Dense { weight, weight_t, .. } => (weight.as_ref(), weight_t.as_ref()),
            Op::Conv { conv, dense } => {
                let (w, wt) = dense.get_or_init(|| {
                    let w = conv.lower();
                    let wt = w.transpose().to_owned();
                    (w, wt)
                });
                (w.as_ref(), wt.as_ref())
            }
            Op::Blocks { blocks, dense } => {
                let (w, wt) = dense.get_or_init(|| {
                    let w = blocks.lower();
                    let wt = w.transpose().to_owned();
                    (w, wt)
                });
                (w.as_ref(), wt.as_ref())
            }
        }
    }

    /// W (outputs x inputs). For a convolution or a block operator this is its dense lowering, built on the first call
    /// and kept (the LP and SDP builders use it; the bound core applies the operator instead).
    pub fn weight(&self) -> MatRef<'_, f64> {
        self.lowered().0
    }
    /// W^T (inputs x outputs), stored contiguously (lowered on first use for a convolution).
    pub fn weight_t(&self) -> MatRef<'_, f64> {
        self.lowered().1
    }
    /// The convolution, when the layer is one.
    pub fn conv(&self) -> Option<&Conv2d> {
        match &self.op {
            Op::Conv { conv, .. } => Some(conv),
            _ => None,
        }
    }
    /// The block operator, when the layer is one.
    pub fn block_operator(&self) -> Option<&Blocks> {
        match &self.op {
            Op::Blocks { blocks, .. } => Some(blocks),
            _ => None,
        }
    }
    /// Whether W is a stored dense matrix (not an operator lowered on demand).
    pub fn is_dense(&self) -> bool {
        matches!(self.op, Op::Dense { .. })
    }
    /// The neurons whose pre-activation is one input copied exactly (`z_i = x_j`, a zero bias):
    /// `(i, j)` pairs, sorted by i. Their bounds are the input's (a residual network's carried
    /// values, see [`blocks`]); empty for dense and convolution layers.
    pub fn pass_through(&self) -> Vec<(usize, usize)> {
        match &self.op {
            Op::Blocks { blocks, .. } => {
                blocks.pass_through().iter().copied().filter(|&(i, _)| self.bias[i] == 0.0).collect()
            }
            _ => Vec::new(),
        }
    }
    /// b.
    pub fn bias(&self) -> &[f64] {
        &self.bias
    }
    /// sigma.
    pub fn activation(&self) -> Activation {
        self.activation
    }
    /// Number of inputs.
    pub fn input_size(&self) -> usize {
        match &self.op {
            Op::Dense { weight, .. } => weight.ncols(),
            Op::Conv { conv, .. } => conv.input_size(),
            Op::Blocks { blocks, .. } => blocks.input_size(),
        }
    }
    /// The rounded operations an entry of W x or W^T lam can accumulate beyond one dot product
    /// over the layer's inputs or outputs (added to the n of the rounding allowances' gamma_n,
    /// [`crate::bounds::rounding`]): the inner sizes of a block operator's chained pieces (a
    /// transpose before a convolution), 0 for every other layer.
    pub fn chained_terms(&self) -> usize {
        match &self.op {
            Op::Blocks { blocks, .. } => blocks.chained_terms(),
            _ => 0,
        }
    }
    /// Number of outputs (neurons).
    pub fn output_size(&self) -> usize {
        match &self.op {
            Op::Dense { weight, .. } => weight.nrows(),
            Op::Conv { conv, .. } => conv.output_size(),
            Op::Blocks { blocks, .. } => blocks.output_size(),
        }
    }

    /// W X for every column of `x` (inputs x columns).
    pub fn mul(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        match &self.op {
            Op::Dense { weight, .. } => linalg::mul(weight.as_ref(), x),
            Op::Conv { conv, .. } => conv.forward(x),
            Op::Blocks { blocks, .. } => blocks.forward(x),
        }
    }

    /// The layer's [`Gram`] data, computed once: for dense layers with fewer outputs than inputs
    /// (where lam^T G lam costs less than W^T lam), None otherwise.
    pub fn gram(&self) -> Option<&Gram> {
        match &self.op {
            Op::Dense { weight, weight_t, gram } if weight.nrows() < weight.ncols() => Some(gram.get_or_init(|| {
                let matrix = linalg::mul(weight.as_ref(), weight_t.as_ref());
                let n = weight.ncols();
                let row_norms = (0..weight.nrows())
                    .map(|i| {
                        let row = weight_t.col(i).try_as_col_major().expect("owned").as_slice();
                        let (_, _, squares) = linalg::dot_abs_squares(row, row);
                        // The sum within gamma_n, underflowed squares added back, the square root
                        // and the factor within a few more roundings.
                        ((squares + n as f64 * f64::MIN_POSITIVE).sqrt()
                            * (1.0 + crate::bounds::rounding::gamma(n + 4)))
                        .next_up()
                    })
                    .collect();
                Arc::new(Gram { matrix, row_norms })
            })),
            _ => None,
        }
    }

    /// W x.
    pub fn mul_vec(&self, x: &[f64]) -> Vec<f64> {
        match &self.op {
            Op::Dense { weight, .. } => linalg::mat_vec(weight.as_ref(), x),
            Op::Conv { conv, .. } => conv::on_slice(x, |m| conv.forward(m)),
            Op::Blocks { blocks, .. } => conv::on_slice(x, |m| blocks.forward(m)),
        }
    }

    /// |W| x (entrywise magnitudes of W).
    pub fn abs_mul_vec(&self, x: &[f64]) -> Vec<f64> {
        match &self.op {
            Op::Dense { weight, .. } => crate::linalg::abs_mat_vec(weight.as_ref(), x),
            Op::Conv { conv, .. } => conv::on_slice(x, |m| conv.forward_abs(m)),
            Op::Blocks { blocks, .. } => conv::on_slice(x, |m| blocks.forward_abs(m)),
        }
    }

    /// W^T lam for every column of `lam` (outputs x columns). A dense layer leaves out the rows of
    /// lam that are zero in every column (neurons whose relaxed coefficient vanishes everywhere,
    /// such as inactive ReLUs); a convolution scatters sparse columns.
    pub fn mul_t(&self, lam: MatRef<'_, f64>) -> Mat<f64> {
        match &self.op {
            Op::Dense { weight_t, .. } => dense_t(weight_t, None, lam),
            Op::Conv { conv, .. } => conv.transpose(lam),
            Op::Blocks { blocks, .. } => blocks.transpose(lam),
        }
    }

    /// W^T lam for coefficients `lam` stored on the output neurons `rows` only (the others zero),
    /// as `(inputs, values)`: the values on the listed inputs, the others zero. A dense layer
    /// reaches every input; a convolution only the receptive fields of `rows`; a block operator
    /// the union of its pieces' ([`Blocks::transpose_rows`]).
    pub fn mul_t_rows(&self, rows: &[usize], lam: MatRef<'_, f64>) -> (Vec<usize>, Mat<f64>) {
        match &self.op {
            Op::Dense { weight_t, .. } => {
                let rows = (rows.len() < weight_t.ncols()).then_some(rows);
                ((0..weight_t.nrows()).collect(), dense_t(weight_t, rows, lam))
            }
            Op::Conv { conv, .. } => {
                if rows.len() == conv.output_size() {
                    ((0..conv.input_size()).collect(), conv.transpose(lam))
                } else {
                    conv.transpose_rows(rows, lam)
                }
            }
            Op::Blocks { blocks, .. } => {
                if rows.len() == blocks.output_size() {
                    ((0..blocks.input_size()).collect(), blocks.transpose(lam))
                } else {
                    blocks.transpose_rows(rows, lam)
                }
            }
        }
    }

    /// `f` applied to [`Layer::mul_t_rows`]' result (`(inputs, values)`), `f` giving one value per
    /// column: a dense layer, or a convolution with coefficients on all its outputs, forms the
    /// product a few columns at a time in one buffer and hands each block to `f` (the values
    /// concatenated), so that a reduction such as the input set's support function reads the
    /// product from cache and the whole of it is never stored.
    pub fn mul_t_rows_then(
        &self,
        rows: &[usize],
        lam: MatRef<'_, f64>,
        mut f: impl FnMut(&[usize], MatRef<'_, f64>) -> Vec<f64>,
    ) -> Vec<f64> {
        let factors;
        let (n_in, product): (usize, Box<BlockProduct<'_>>) = match &self.op {
            Op::Dense { weight_t, .. } => {
                let rows = (rows.len() < weight_t.ncols()).then_some(rows);
                factors = dense_t_factors(weight_t, rows, lam);
                let (w, l) = match &factors {
                    None => (weight_t.as_ref(), lam),
                    Some((w, sub)) => (w.as_ref(), sub.as_ref()),
                };
                let gemm = move |start: usize, len: usize, block: faer::MatMut<'_, f64>| {
                    faer::linalg::matmul::matmul(
                        block,
                        faer::Accum::Replace,
                        w,
                        l.subcols(start, len),
                        1.0,
                        faer::Par::Seq,
                    )
                };
                (weight_t.nrows(), Box::new(gemm))
            }
            Op::Conv { conv, .. } if rows.len() == conv.output_size() => (
                conv.input_size(),
                Box::new(move |start, len, block| conv.transpose_to(lam.subcols(start, len), block)),
            ),
            _ => {
                let (inputs, values) = self.mul_t_rows(rows, lam);
                return f(&inputs, values.as_ref());
            }
        };
        let inputs: Vec<usize> = (0..n_in).collect();
        let mut out = Vec::with_capacity(lam.ncols());
        let mut buf = Mat::<f64>::zeros(n_in, REDUCE_COLUMNS.min(lam.ncols()));
        for start in (0..lam.ncols()).step_by(REDUCE_COLUMNS) {
            let len = REDUCE_COLUMNS.min(lam.ncols() - start);
            product(start, len, buf.as_mut().subcols_mut(0, len));
            out.extend(f(&inputs, buf.as_ref().subcols(0, len)));
        }
        out
    }

    /// W^T v.
    pub fn mul_t_vec(&self, v: &[f64]) -> Vec<f64> {
        match &self.op {
            Op::Dense { weight_t, .. } => linalg::mat_vec(weight_t.as_ref(), v),
            Op::Conv { conv, .. } => conv::on_slice(v, |m| conv.transpose(m)),
            Op::Blocks { blocks, .. } => conv::on_slice(v, |m| blocks.transpose(m)),
        }
    }

    /// The columns `rows` of W^T: row i of W as a column, for each listed neuron i.
    pub fn rows_t(&self, rows: &[usize]) -> Mat<f64> {
        match &self.op {
            Op::Dense { weight_t, .. } => {
                let mut out = Mat::<f64>::zeros(weight_t.nrows(), rows.len());
                for (s, &i) in rows.iter().enumerate() {
                    out.col_mut(s).copy_from(weight_t.col(i));
                }
                out
            }
            Op::Conv { conv, .. } => conv.rows_transposed(rows),
            Op::Blocks { blocks, .. } => blocks.rows_transposed(rows),
        }
    }

    /// The same layer with its input replaced by `s ⊙ x + c` (W diag(s), b + W c): input
    /// normalization folded into the first layer. A convolution stays one when `s` is constant
    /// on each input channel (its bias becomes position-dependent where the padding meets c).
    pub fn precompose_scale_shift(&self, s: &[f64], c: &[f64]) -> Layer {
        let mut bias = self.mul_vec(c);
        bias.iter_mut().zip(&self.bias).for_each(|(v, b)| *v += b);
        if let Op::Conv { conv, .. } = &self.op {
            let [_, h, w] = conv.shape().input;
            if let Some(channel) = conv::per_channel(s, h * w) {
                return Layer::conv2d(conv.scale_inputs(&channel), bias, self.activation);
            }
        }
        let w = self.weight();
        Layer::new(Mat::from_fn(w.nrows(), w.ncols(), |i, j| w[(i, j)] * s[j]), bias, self.activation)
    }

    /// An error naming `layer` for an empty layer, a bias of the wrong length, or a non-finite
    /// weight, kernel value or bias.
    pub(crate) fn validate(&self, layer: usize) -> Result<()> {
        let (rows, cols) = (self.output_size(), self.input_size());
        if rows == 0 || cols == 0 {
            return Err(Error::Empty(format!("layer {layer} has a {rows}x{cols} weight matrix")));
        }
        if self.bias.len() != rows {
            return Err(Error::Shape {
                layer,
                detail: format!("bias has {} entries, weight has {rows} rows", self.bias.len()),
            });
        }
        match &self.op {
            Op::Dense { weight, .. } => {
                for j in 0..cols {
                    for i in 0..rows {
                        let v = weight[(i, j)];
                        if !v.is_finite() {
                            return Err(Error::NonFinite { layer, what: "weight", index: i * cols + j, value: v });
                        }
                    }
                }
            }
            Op::Conv { conv, .. } => {
                if let Some((index, &value)) = conv.kernel().iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    return Err(Error::NonFinite { layer, what: "kernel", index, value });
                }
            }
            Op::Blocks { blocks, .. } => {
                if let Some((index, value)) = blocks.values().enumerate().find(|(_, v)| !v.is_finite()) {
                    return Err(Error::NonFinite { layer, what: "block weight", index, value });
                }
            }
        }
        if let Some((index, &value)) = self.bias.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFinite { layer, what: "bias", index, value });
        }
        Ok(())
    }

    /// Hashes what defines the layer's map (for [`Network::fingerprint`]).
    fn hash_into(&self, h: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        (self.output_size(), self.input_size(), self.activation).hash(h);
        match &self.op {
            Op::Dense { weight, .. } => {
                for j in 0..weight.ncols() {
                    for i in 0..weight.nrows() {
                        weight[(i, j)].to_bits().hash(h);
                    }
                }
            }
            Op::Conv { conv, .. } => {
                conv.shape().hash(h);
                conv.kernel().iter().for_each(|v| v.to_bits().hash(h));
            }
            Op::Blocks { blocks, .. } => {
                blocks.hash_geometry(h);
                blocks.values().for_each(|v| v.to_bits().hash(h));
            }
        }
        self.bias.iter().for_each(|b| b.to_bits().hash(h));
    }
}

/// W^T lam for lam on the neurons `rows` (None: all of them, in order), leaving out the rows of
/// lam that are zero in every column (neurons whose relaxed coefficient vanishes everywhere, such
/// as inactive ReLUs): they drop out of the product.
fn dense_t(weight_t: &Mat<f64>, rows: Option<&[usize]>, lam: MatRef<'_, f64>) -> Mat<f64> {
    match dense_t_factors(weight_t, rows, lam) {
        None => linalg::mul(weight_t.as_ref(), lam),
        Some((w, sub)) => linalg::mul(w.as_ref(), sub.as_ref()),
    }
}

/// The factors of [`dense_t`]'s product: W^T's columns and lam's rows for the rows of lam that
/// are nonzero somewhere, or None when the whole W^T lam costs less.
fn dense_t_factors(weight_t: &Mat<f64>, rows: Option<&[usize]>, lam: MatRef<'_, f64>) -> Option<(Mat<f64>, Mat<f64>)> {
    // Rows of lam that are nonzero in some column, scanned column by column (contiguous).
    let mut used = vec![false; lam.nrows()];
    let mut left = lam.nrows();
    for s in 0..lam.ncols() {
        if left == 0 {
            break;
        }
        let col = lam.col(s);
        for (r, u) in used.iter_mut().enumerate() {
            if !*u && col[r] != 0.0 {
                *u = true;
                left -= 1;
            }
        }
    }
    let nonzero: Vec<usize> = (0..lam.nrows()).filter(|&r| used[r]).collect();
    // With most rows in use, multiplying through the zero rows costs less than gathering W^T's
    // columns and lam's rows.
    if rows.is_none() && 4 * nonzero.len() >= 3 * lam.nrows() {
        return None;
    }
    let mut wt_sub = Mat::<f64>::zeros(weight_t.nrows(), nonzero.len());
    for (c, &r) in nonzero.iter().enumerate() {
        wt_sub.col_mut(c).copy_from(weight_t.col(rows.map_or(r, |rs| rs[r])));
    }
    // lam's nonzero rows, gathered column by column (contiguous writes).
    let sub = Mat::<f64>::from_fn(nonzero.len(), lam.ncols(), |c, s| lam[(nonzero[c], s)]);
    Some((wt_sub, sub))
}

/// Writes the product's columns `start..start + len` into the given block.
type BlockProduct<'a> = dyn Fn(usize, usize, faer::MatMut<'_, f64>) + 'a;

/// Columns of W^T lam that [`Layer::mul_t_rows_then`] forms at a time: 32 columns of 784 inputs
/// are 200 KiB, of a 3x32x32 image 768 KiB, in cache while they are reduced.
const REDUCE_COLUMNS: usize = 32;

/// A validated feed-forward network.
///
/// ```
/// use nncert::{Activation, Layer, Network};
/// let hidden = Layer::from_rows(&[vec![1.0, -1.0], vec![0.5, 2.0]], vec![0.0, -1.0], Activation::Relu)?;
/// let out = Layer::from_rows(&[vec![1.0, 0.0], vec![0.0, 1.0]], vec![0.0, 0.0], Activation::Identity)?;
/// let net = Network::new(vec![2], vec![hidden, out])?;
/// assert_eq!(net.forward(&[1.0, 0.5])?, vec![0.5, 0.5]);
/// # Ok::<(), nncert::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Network {
    input_shape: Vec<usize>,
    layers: Vec<Layer>,
    /// [`Network::fingerprint`], computed on first use (a network never changes once built).
    fingerprint: std::sync::OnceLock<u64>,
}

impl Network {
    /// A 64-bit hash (SipHash) of the input shape, every layer's shape, weights, biases (their
    /// bits) and activations: the key under which results that depend only on the network are
    /// shared between calls (CRC's curvature bounds). Computed once per network.
    pub fn fingerprint(&self) -> u64 {
        *self.fingerprint.get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.input_shape.hash(&mut h);
            for layer in &self.layers {
                layer.hash_into(&mut h);
            }
            h.finish()
        })
    }

    /// A network from its layers; `input_shape` (e.g. `[1, 28, 28]`) must have as many elements as
    /// the first layer has inputs. Errors on empty networks, layers that do not chain and
    /// non-finite weights.
    pub fn new(input_shape: Vec<usize>, layers: Vec<Layer>) -> Result<Self> {
        if layers.is_empty() {
            return Err(Error::Empty("the network has no layers".into()));
        }
        let numel: usize = input_shape.iter().product();
        if input_shape.is_empty() || numel != layers[0].input_size() {
            return Err(Error::Shape {
                layer: 0,
                detail: format!(
                    "input shape {input_shape:?} has {numel} elements, the first layer takes {}",
                    layers[0].input_size()
                ),
            });
        }
        for (k, layer) in layers.iter().enumerate() {
            layer.validate(k)?;
            if k > 0 && layers[k - 1].output_size() != layer.input_size() {
                return Err(Error::Shape {
                    layer: k,
                    detail: format!(
                        "takes {} inputs but layer {} has {} outputs",
                        layer.input_size(),
                        k - 1,
                        layers[k - 1].output_size()
                    ),
                });
            }
        }
        Ok(Self { input_shape, layers, fingerprint: std::sync::OnceLock::new() })
    }

    /// The layers, first to last.
    pub fn layers(&self) -> &[Layer] {
        &self.layers
    }
    /// The declared input shape (for images, (C, H, W)).
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }
    /// Number of inputs.
    pub fn input_size(&self) -> usize {
        self.layers[0].input_size()
    }
    /// Number of outputs (classes).
    pub fn num_classes(&self) -> usize {
        self.layers[self.layers.len() - 1].output_size()
    }
    /// Number of hidden neurons: the outputs of every layer but the last.
    pub fn hidden_neurons(&self) -> usize {
        self.layers[..self.layers.len() - 1].iter().map(Layer::output_size).sum()
    }

    /// An error unless `x` has the input size and only finite values.
    pub fn check_input(&self, x: &[f64]) -> Result<()> {
        if x.len() != self.input_size() {
            return Err(Error::InputSize { expected: self.input_size(), got: x.len() });
        }
        if let Some((index, &value)) = x.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFiniteInput { index, value });
        }
        Ok(())
    }

    /// An error unless `label` is a valid class.
    pub fn check_label(&self, label: usize) -> Result<()> {
        if label >= self.num_classes() {
            return Err(Error::LabelOutOfRange { label, classes: self.num_classes() });
        }
        Ok(())
    }

    /// The logits f(x).
    pub fn forward(&self, x: &[f64]) -> Result<Vec<f64>> {
        self.check_input(x)?;
        Ok(self.forward_unchecked(x))
    }

    pub(crate) fn forward_unchecked(&self, x: &[f64]) -> Vec<f64> {
        let mut h = x.to_vec();
        for layer in &self.layers {
            let mut z = layer.mul_vec(&h);
            for (zi, bi) in z.iter_mut().zip(&layer.bias) {
                *zi = layer.activation.eval(*zi + bi);
            }
            h = z;
        }
        h
    }

    /// f(x) in floating point with, per output, a bound on its distance to the real-number
    /// f(x) of the stored weights: |y_float - y_real| <= err. Per layer, the float z = fl(W h + b)
    /// is within gamma_{n+1} (|W| |h| + |b|) of W h + b, and the error already in h moves it by
    /// at most |W| e_h; the activation is 1-Lipschitz (sigmoid 1/4) and its own evaluation is
    /// exact (ReLU, identity) or within 16 u of its value (see [`crate::bounds::rounding`]).
    pub fn forward_with_error(&self, x: &[f64]) -> Result<(Vec<f64>, Vec<f64>)> {
        use crate::bounds::rounding::{UNIT_ROUNDOFF, abs_affine, gamma};
        self.check_input(x)?;
        let mut h = x.to_vec();
        let mut e = vec![0.0; x.len()];
        for layer in &self.layers {
            let h_abs: Vec<f64> = h.iter().map(|v| v.abs()).collect();
            let round = abs_affine(layer, &layer.bias, &h_abs, gamma(layer.input_size() + layer.chained_terms() + 1));
            let carried = abs_affine(layer, &vec![0.0; layer.output_size()], &e, 1.0);
            let mut z = layer.mul_vec(&h);
            let lipschitz = if layer.activation == Activation::Sigmoid { 0.25 } else { 1.0 };
            let exact = matches!(layer.activation, Activation::Relu | Activation::Identity);
            e = (0..z.len())
                .map(|i| {
                    z[i] = layer.activation.eval(z[i] + layer.bias[i]);
                    let own = if exact { 0.0 } else { 16.0 * UNIT_ROUNDOFF * z[i].abs() + f64::MIN_POSITIVE };
                    // The bias addition rounds too (u |z|, inside gamma_{n+1}).
                    (lipschitz * (round[i] + carried[i]) + own) * (1.0 + 1e-12)
                })
                .collect();
            h = z;
        }
        Ok((h, e))
    }

    /// Whether the real-number network's margin f(x)\[label\] - f(x)\[target\] is certainly < 0 at
    /// `x` (the float margin plus its rounding bound, [`Network::forward_with_error`], is < 0):
    /// what a reported counterexample must satisfy.
    pub fn surely_loses(&self, x: &[f64], label: usize, target: usize) -> Result<bool> {
        self.check_label(label)?;
        self.check_label(target)?;
        let (y, e) = self.forward_with_error(x)?;
        let m = y[label] - y[target];
        let err = e[label] + e[target] + crate::bounds::rounding::UNIT_ROUNDOFF * m.abs() * 2.0;
        Ok(m + err < 0.0)
    }

    /// The predicted class argmax f(x) (the first one on ties).
    pub fn predict(&self, x: &[f64]) -> Result<usize> {
        Ok(argmax(&self.forward(x)?))
    }

    /// The margin f(x)\[label\] - f(x)\[target\] (the objective of problem (A) of the BM-r paper).
    pub fn margin(&self, x: &[f64], label: usize, target: usize) -> Result<f64> {
        self.check_label(label)?;
        self.check_label(target)?;
        let f = self.forward(x)?;
        Ok(f[label] - f[target])
    }

    /// The margin and its gradient with respect to the input, by backpropagation.
    pub fn margin_gradient(&self, x: &[f64], label: usize, target: usize) -> Result<(f64, Vec<f64>)> {
        self.check_label(label)?;
        self.check_label(target)?;
        self.check_input(x)?;
        let xm = Mat::from_fn(x.len(), 1, |i, _| x[i]);
        let (vals, grads) = self.margin_gradients_batch(xm.as_ref(), &[(label, target)]);
        Ok((vals[0], grads.col(0).iter().copied().collect()))
    }

    /// Logits of every column of `x` (inputs x samples). Inputs are not checked: non-finite values
    /// propagate to the outputs.
    pub fn forward_batch(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        let mut h = x.to_owned();
        for layer in &self.layers {
            let mut z = layer.mul(h.as_ref());
            apply_bias_activation(&mut z, layer, |v| layer.activation.eval(v));
            h = z;
        }
        h
    }

    /// The value c^T f(x) of a linear function of the outputs and its input gradient.
    pub fn spec_gradient(&self, x: &[f64], c: &[f64]) -> Result<(f64, Vec<f64>)> {
        self.check_input(x)?;
        if c.len() != self.num_classes() {
            return Err(Error::InvalidArgument(format!(
                "the output specification has {} coefficients, the network {} outputs",
                c.len(),
                self.num_classes()
            )));
        }
        let xm = Mat::from_fn(x.len(), 1, |i, _| x[i]);
        let cm = Mat::from_fn(c.len(), 1, |i, _| c[i]);
        let (vals, grads) = self.spec_gradients_batch(xm.as_ref(), cm.as_ref());
        Ok((vals[0], grads.col(0).iter().copied().collect()))
    }

    /// For each column j of `x`, the margin f(x_j)\[l_j\] - f(x_j)\[t_j\] and its input gradient
    /// (column j of the returned matrix), where `pairs[j] = (l_j, t_j)`.
    pub(crate) fn margin_gradients_batch(&self, x: MatRef<'_, f64>, pairs: &[(usize, usize)]) -> (Vec<f64>, Mat<f64>) {
        let mut c = Mat::<f64>::zeros(self.num_classes(), pairs.len());
        for (j, &(l, t)) in pairs.iter().enumerate() {
            c[(l, j)] += 1.0;
            c[(t, j)] -= 1.0;
        }
        self.spec_gradients_batch(x, c.as_ref())
    }

    /// For each column j of `x` and of `c` (outputs x columns), c_j^T f(x_j) and its input gradient
    /// (column j of the returned matrix), by backpropagation.
    pub(crate) fn spec_gradients_batch(&self, x: MatRef<'_, f64>, c: MatRef<'_, f64>) -> (Vec<f64>, Mat<f64>) {
        // (pre-activation, post-activation) of every layer.
        let mut cache: Vec<(Mat<f64>, Mat<f64>)> = Vec::with_capacity(self.layers.len());
        let mut h = x.to_owned();
        for layer in &self.layers {
            let mut z = layer.mul(h.as_ref());
            apply_bias_activation(&mut z, layer, |v| v);
            let a = Mat::from_fn(z.nrows(), z.ncols(), |i, j| layer.activation.eval(z[(i, j)]));
            h = a.clone();
            cache.push((z, a));
        }
        let values = (0..c.ncols()).map(|j| (0..c.nrows()).map(|i| c[(i, j)] * h[(i, j)]).sum()).collect();
        let mut g = c.to_owned();
        for (layer, (z, a)) in self.layers.iter().zip(&cache).rev() {
            if layer.activation != Activation::Identity {
                for j in 0..g.ncols() {
                    for i in 0..g.nrows() {
                        g[(i, j)] *= layer.activation.derivative_at(z[(i, j)], a[(i, j)]);
                    }
                }
            }
            g = layer.mul_t(g.as_ref());
        }
        (values, g)
    }
}

fn apply_bias_activation(z: &mut Mat<f64>, layer: &Layer, f: impl Fn(f64) -> f64) {
    for j in 0..z.ncols() {
        for (v, b) in z.col_mut(j).iter_mut().zip(&layer.bias) {
            *v = f(*v + b);
        }
    }
}

/// Index of the largest value (the first one on ties; NaN never wins).
pub fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(act: Activation) -> Network {
        let l0 = Layer::from_rows(
            &[vec![1.0, -2.0, 0.5], vec![0.3, 0.7, -1.1], vec![-0.4, 0.2, 0.9], vec![1.5, 0.1, 0.2]],
            vec![0.1, -0.2, 0.3, 0.0],
            act,
        )
        .unwrap();
        let l1 = Layer::from_rows(
            &[vec![0.5, -1.0, 2.0, 0.3], vec![-0.7, 0.4, 0.1, 1.2], vec![0.2, 0.2, -0.5, -0.9]],
            vec![0.0, 0.1, -0.1],
            Activation::Identity,
        )
        .unwrap();
        Network::new(vec![3], vec![l0, l1]).unwrap()
    }

    #[test]
    fn products_reduced_in_blocks_are_the_whole_product_reduced() {
        // mul_t_rows_then (blocks of REDUCE_COLUMNS columns into one buffer) against mul_t_rows
        // reduced at once: the same inputs and the same values, for a dense layer (all rows, a
        // row subset, rows of lam zero everywhere) and a convolution, with a last partial block.
        let wave = |i: usize, j: usize| ((i * 31 + j * 17) % 23) as f64 / 11.0 - 1.0;
        let dense = Layer::new(Mat::from_fn(9, 40, wave), vec![0.0; 9], Activation::Relu);
        let shape = conv::Conv2dShape::new([2, 6, 6], [3, 2, 3, 3], [2, 2], [1, 1]);
        let conv = Conv2d::new(shape, (0..54).map(|k| wave(k, 3)).collect(), 0).unwrap();
        let conv = Layer::conv2d(conv, vec![0.0; 27], Activation::Relu);
        let cols = 2 * REDUCE_COLUMNS + 5;
        let sums = |inputs: &[usize], m: MatRef<'_, f64>| -> Vec<f64> {
            (0..m.ncols()).map(|s| (0..m.nrows()).map(|r| m[(r, s)] * (1.0 + inputs[r] as f64)).sum()).collect()
        };
        for (layer, rows) in [(&dense, (0..9).collect::<Vec<_>>()), (&dense, vec![1, 4, 8]), (&conv, (0..27).collect())]
        {
            let lam = Mat::from_fn(rows.len(), cols, |i, s| if i % 4 == 2 { 0.0 } else { wave(i, s) });
            let (inputs, values) = layer.mul_t_rows(&rows, lam.as_ref());
            let want = sums(&inputs, values.as_ref());
            let got = layer.mul_t_rows_then(&rows, lam.as_ref(), sums);
            assert_eq!(got.len(), cols);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-12 * (1.0 + w.abs()), "{g} vs {w}");
            }
        }
    }

    #[test]
    fn forward_by_hand() {
        let net = tiny(Activation::Relu);
        let x = [0.2, -0.1, 0.4];
        // z0 = (0.2+0.2+0.2+0.1, 0.06-0.07-0.44-0.2, -0.08-0.02+0.36+0.3, 0.3-0.01+0.08) = (0.7, -0.65, 0.56, 0.37)
        let h = [0.7, 0.0, 0.56, 0.37];
        let f = net.forward(&x).unwrap();
        let expect = [
            0.5 * h[0] - h[1] + 2.0 * h[2] + 0.3 * h[3],
            -0.7 * h[0] + 0.4 * h[1] + 0.1 * h[2] + 1.2 * h[3] + 0.1,
            0.2 * h[0] + 0.2 * h[1] - 0.5 * h[2] - 0.9 * h[3] - 0.1,
        ];
        for i in 0..3 {
            assert!((f[i] - expect[i]).abs() < 1e-12);
        }
        assert_eq!(net.predict(&x).unwrap(), 0);
    }

    #[test]
    fn gradient_matches_finite_differences() {
        for act in [Activation::Relu, Activation::Sigmoid, Activation::Tanh, Activation::Softplus] {
            let net = tiny(act);
            let x = [0.33, -0.21, 0.47];
            let (m, g) = net.margin_gradient(&x, 0, 2).unwrap();
            assert!((m - net.margin(&x, 0, 2).unwrap()).abs() < 1e-14);
            for i in 0..3 {
                let h = 1e-6;
                let mut xp = x;
                xp[i] += h;
                let mut xm = x;
                xm[i] -= h;
                let fd = (net.margin(&xp, 0, 2).unwrap() - net.margin(&xm, 0, 2).unwrap()) / (2.0 * h);
                assert!((fd - g[i]).abs() < 1e-7, "{act:?} coord {i}: fd {fd} vs {}", g[i]);
            }
        }
    }

    #[test]
    fn invalid_networks_are_typed_errors() {
        let ok = || Layer::from_rows(&[vec![1.0, 2.0]], vec![0.0], Activation::Relu).unwrap();
        assert!(matches!(Network::new(vec![2], vec![]), Err(Error::Empty(_))));
        assert!(matches!(Network::new(vec![3], vec![ok()]), Err(Error::Shape { layer: 0, .. })));
        let bad_chain = Layer::from_rows(&[vec![1.0, 2.0]], vec![0.0], Activation::Identity).unwrap();
        assert!(matches!(Network::new(vec![2], vec![ok(), bad_chain]), Err(Error::Shape { layer: 1, .. })));
        let nan = Layer::from_rows(&[vec![1.0, f64::NAN]], vec![0.0], Activation::Relu).unwrap();
        assert!(matches!(
            Network::new(vec![2], vec![nan]),
            Err(Error::NonFinite { layer: 0, what: "weight", index: 1, .. })
        ));
        let inf_bias = Layer::from_rows(&[vec![1.0, 1.0]], vec![f64::INFINITY], Activation::Relu).unwrap();
        assert!(matches!(Network::new(vec![2], vec![inf_bias]), Err(Error::NonFinite { what: "bias", .. })));
        let short_bias = Layer::from_rows(&[vec![1.0, 1.0]], vec![], Activation::Relu).unwrap();
        assert!(matches!(Network::new(vec![2], vec![short_bias]), Err(Error::Shape { .. })));
        assert!(Layer::from_rows(&[vec![1.0], vec![1.0, 2.0]], vec![0.0, 0.0], Activation::Relu).is_err());
        let net = Network::new(vec![2], vec![ok()]).unwrap();
        assert!(matches!(net.forward(&[1.0]), Err(Error::InputSize { expected: 2, got: 1 })));
        assert!(matches!(net.forward(&[1.0, f64::NAN]), Err(Error::NonFiniteInput { index: 1, .. })));
        assert!(matches!(net.margin(&[1.0, 0.0], 0, 4), Err(Error::LabelOutOfRange { label: 4, classes: 1 })));
    }
}
