//! The affine lowering of an ONNX graph: every tensor computed from the graph input is an
//! affine function of the segments carried from the last emitted layer, its linear part kept in
//! the cheapest exact form (identity, diagonal, sparse index map, convolution, a chain of index
//! maps and convolutions, or dense); each activation emits a [`Layer`].

use std::collections::HashMap;

use faer::Mat;

use crate::network::conv::{Conv2d, on_slice, per_channel};
use crate::network::{Activation, Block, Blocks, Layer, Piece, Sparse};

/// A linear map from one carried segment to a value, kept in the cheapest form.
#[derive(Clone)]
pub(super) enum Pending {
    /// The identity.
    Identity,
    /// x -> d ⊙ x.
    Diag(Vec<f64>),
    Dense(Mat<f64>),
    /// A convolution, kept as an operator while only per-channel scalings follow it.
    Conv(Box<Conv2d>),
    /// A sparse map (index maps, sums, their scalings).
    Sparse(Box<Sparse>),
    /// Convolutions and partial permutations ([`Sparse::is_partial_permutation`]) applied in
    /// order: a transposed or padded image into a convolution. Every entry of its product is a
    /// kernel value or 0, so its dense matrix is exact.
    Chain(Vec<Pending>),
}

impl Pending {
    /// The map as a dense matrix; `n` is its input size (the segment's).
    pub(super) fn dense(self, n: usize) -> Mat<f64> {
        match self {
            Pending::Identity => Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 }),
            Pending::Diag(d) => Mat::from_fn(n, n, |i, j| if i == j { d[i] } else { 0.0 }),
            Pending::Dense(w) => w,
            Pending::Conv(c) => c.lower(),
            Pending::Sparse(s) => s.lower(),
            chain @ Pending::Chain(_) => {
                let unit = Mat::from_fn(n, n, |i, j| if i == j { 1.0 } else { 0.0 });
                chain.piece(n).forward(unit.as_ref(), false)
            }
        }
    }

    /// Whether the map can be a plain dense or convolution layer.
    fn is_plain(&self) -> bool {
        !matches!(self, Pending::Sparse(_) | Pending::Chain(_))
    }

    /// x -> s (self x) for a sparse map s.
    fn then_sparse(self, s: &Sparse, n: usize) -> Pending {
        match self {
            Pending::Identity => Pending::Sparse(Box::new(s.clone())),
            Pending::Diag(d) => Pending::Sparse(Box::new(s.scale_cols(&d))),
            Pending::Sparse(t) => Pending::Sparse(Box::new(t.then(s))),
            Pending::Dense(w) => Pending::Dense(s.mul_dense(w.as_ref())),
            Pending::Conv(c) if s.is_partial_permutation() => {
                Pending::Chain(vec![Pending::Conv(c), Pending::Sparse(Box::new(s.clone()))])
            }
            Pending::Chain(mut p) if s.is_partial_permutation() => {
                match p.last_mut() {
                    Some(Pending::Sparse(t)) => **t = t.then(s),
                    _ => p.push(Pending::Sparse(Box::new(s.clone()))),
                }
                Pending::Chain(p)
            }
            other => Pending::Dense(s.mul_dense(other.dense(n).as_ref())),
        }
    }

    /// x -> m (self x).
    fn then_linear(self, m: &Mat<f64>, n: usize) -> Pending {
        Pending::Dense(match self {
            Pending::Identity => m.clone(),
            Pending::Diag(d) => Mat::from_fn(m.nrows(), m.ncols(), |i, j| m[(i, j)] * d[j]),
            Pending::Sparse(s) => s.dense_mul(m.as_ref()),
            Pending::Dense(w) => crate::linalg::mul(m.as_ref(), w.as_ref()),
            // An operator: m P = (P^T m^T)^T, through its transpose (m has few rows).
            other => other.piece(n).transpose(m.transpose(), None).transpose().to_owned(),
        })
    }

    /// x -> conv(self x): the convolution stays an operator after the identity or a scaling
    /// constant on each of its input channels.
    fn then_conv(self, conv: &Conv2d, n: usize) -> Pending {
        let [_, h, w] = conv.shape().input;
        match self {
            Pending::Identity => Pending::Conv(Box::new(conv.clone())),
            Pending::Diag(d) if per_channel(&d, h * w).is_some() => {
                let channel = per_channel(&d, h * w).expect("checked");
                Pending::Conv(Box::new(conv.scale_inputs(&channel)))
            }
            Pending::Sparse(s) if s.is_partial_permutation() => {
                Pending::Chain(vec![Pending::Sparse(s), Pending::Conv(Box::new(conv.clone()))])
            }
            Pending::Chain(mut p) => {
                p.push(Pending::Conv(Box::new(conv.clone())));
                Pending::Chain(p)
            }
            other => Pending::Dense(crate::linalg::mul(conv.lower().as_ref(), other.dense(n).as_ref())),
        }
    }

    /// x -> s ⊙ (self x).
    fn then_scale(self, s: &[f64]) -> Pending {
        match self {
            Pending::Identity => Pending::Diag(s.to_vec()),
            Pending::Diag(d) => Pending::Diag(d.iter().zip(s).map(|(a, b)| a * b).collect()),
            Pending::Conv(conv) => {
                let [_, oh, ow] = conv.output_shape();
                match per_channel(s, oh * ow) {
                    Some(channel) => Pending::Conv(Box::new(conv.scale_outputs(&channel))),
                    None => {
                        let mut w = conv.lower();
                        scale_rows(&mut w, s);
                        Pending::Dense(w)
                    }
                }
            }
            Pending::Dense(mut w) => {
                scale_rows(&mut w, s);
                Pending::Dense(w)
            }
            Pending::Sparse(sp) => Pending::Sparse(Box::new(sp.scale_rows(s))),
            Pending::Chain(mut p) => {
                // A per-channel scaling right after the chain's last convolution scales it.
                if let Some(Pending::Conv(conv)) = p.last() {
                    let [_, oh, ow] = conv.output_shape();
                    if let Some(channel) = per_channel(s, oh * ow) {
                        let scaled = conv.scale_outputs(&channel);
                        *p.last_mut().expect("non-empty") = Pending::Conv(Box::new(scaled));
                        return Pending::Chain(p);
                    }
                }
                let n = p[0].input_size_hint();
                let mut w = Pending::Chain(p).dense(n);
                scale_rows(&mut w, s);
                Pending::Dense(w)
            }
        }
    }

    /// The input size of a chain element (convolution or sparse map).
    fn input_size_hint(&self) -> usize {
        match self {
            Pending::Conv(c) => c.input_size(),
            Pending::Sparse(s) => s.ncols(),
            Pending::Diag(d) => d.len(),
            Pending::Dense(w) => w.ncols(),
            Pending::Chain(p) => p[0].input_size_hint(),
            Pending::Identity => 0,
        }
    }

    /// x -> self x + other x.
    fn plus(self, other: Pending, n: usize) -> Pending {
        let diag = |p: &Pending| match p {
            Pending::Identity => Some(vec![1.0; n]),
            Pending::Diag(d) => Some(d.clone()),
            _ => None,
        };
        if let (Some(a), Some(b)) = (diag(&self), diag(&other)) {
            return Pending::Diag(a.iter().zip(&b).map(|(x, y)| x + y).collect());
        }
        let sparse = |p: &Pending| match p {
            Pending::Sparse(s) => Some((**s).clone()),
            other => diag(other).map(|d| Sparse::diagonal(&d)),
        };
        if (matches!(self, Pending::Sparse(_)) || matches!(other, Pending::Sparse(_)))
            && let (Some(a), Some(b)) = (sparse(&self), sparse(&other))
            && a.nrows() == b.nrows()
        {
            return Pending::Sparse(Box::new(a.plus(&b)));
        }
        if let (Pending::Conv(a), Pending::Conv(b)) = (&self, &other)
            && a.shape() == b.shape()
        {
            let kernel = a.kernel().iter().zip(b.kernel()).map(|(x, y)| x + y).collect();
            if let Ok(c) = Conv2d::new(a.shape().clone(), kernel, 0) {
                return Pending::Conv(Box::new(c));
            }
        }
        let (a, b) = (self.dense(n), other.dense(n));
        Pending::Dense(Mat::from_fn(a.nrows(), a.ncols(), |i, j| a[(i, j)] + b[(i, j)]))
    }

    /// The map as a piece of a block operator.
    fn piece(self, n: usize) -> Piece {
        match self {
            Pending::Identity => Piece::Diag(vec![1.0; n]),
            Pending::Diag(d) => Piece::Diag(d),
            Pending::Dense(w) => Piece::Dense(w),
            Pending::Conv(c) => Piece::Conv(c),
            Pending::Sparse(s) => Piece::Sparse(s),
            Pending::Chain(p) => {
                let mut size = n;
                Piece::Chain(
                    p.into_iter()
                        .map(|q| {
                            let piece = q.piece(size);
                            size = piece.output_size();
                            piece
                        })
                        .collect(),
                )
            }
        }
    }
}

/// One segment of the vector carried from the last emitted layer (or the network input).
#[derive(Clone, Copy)]
pub(super) struct Segment {
    pub size: usize,
    /// A ReLU's output: carried through the next ReLU as itself.
    pub nonneg: bool,
}

/// A tensor of the graph as an affine function of the carried segments: `sum of map(segment)
/// + bias`, at most one term per segment.
#[derive(Clone)]
pub(super) struct Value {
    pub shape: Vec<usize>,
    pub terms: Vec<(usize, Pending)>,
    pub bias: Vec<f64>,
}

impl Value {
    /// A constant tensor as a value without terms.
    pub fn constant(shape: Vec<usize>, values: Vec<f64>) -> Value {
        Value { shape, terms: Vec::new(), bias: values }
    }

    pub fn size(&self) -> usize {
        self.shape.iter().product()
    }

    /// Composes x -> m x + c.
    pub fn linear(&mut self, m: Mat<f64>, c: Vec<f64>, segs: &[Segment]) {
        let bias = crate::linalg::mat_vec(m.as_ref(), &self.bias).iter().zip(&c).map(|(a, b)| a + b).collect();
        for (seg, map) in &mut self.terms {
            *map = std::mem::replace(map, Pending::Identity).then_linear(&m, segs[*seg].size);
        }
        self.bias = bias;
    }

    /// Composes x -> conv(x) + c.
    pub fn conv(&mut self, conv: Conv2d, c: Vec<f64>, segs: &[Segment]) {
        let bias: Vec<f64> = on_slice(&self.bias, |m| conv.forward(m)).iter().zip(&c).map(|(a, b)| a + b).collect();
        for (seg, map) in &mut self.terms {
            *map = std::mem::replace(map, Pending::Identity).then_conv(&conv, segs[*seg].size);
        }
        self.bias = bias;
    }

    /// Composes x -> s ⊙ x + c (elementwise).
    pub fn scale_shift(&mut self, s: &[f64], c: &[f64]) {
        for (_, map) in &mut self.terms {
            *map = std::mem::replace(map, Pending::Identity).then_scale(s);
        }
        for (i, b) in self.bias.iter_mut().enumerate() {
            *b = *b * s[i] + c[i];
        }
    }

    /// Composes x -> s x + c for a sparse map s.
    pub fn sparse(&mut self, s: &Sparse, c: &[f64], segs: &[Segment]) {
        let bias = on_slice(&self.bias, |m| s.forward(m, false));
        for (seg, map) in &mut self.terms {
            *map = std::mem::replace(map, Pending::Identity).then_sparse(s, segs[*seg].size);
        }
        self.bias = bias.iter().zip(c).map(|(a, b)| a + b).collect();
    }

    /// self + other (the same shape).
    pub fn plus(mut self, other: Value, segs: &[Segment]) -> Value {
        for (seg, map) in other.terms {
            match self.terms.iter().position(|(s, _)| *s == seg) {
                Some(k) => {
                    let mine = std::mem::replace(&mut self.terms[k].1, Pending::Identity);
                    self.terms[k].1 = mine.plus(map, segs[seg].size);
                }
                None => self.terms.push((seg, map)),
            }
        }
        self.bias.iter_mut().zip(&other.bias).for_each(|(a, b)| *a += b);
        self
    }
}

/// The graph being lowered: the carried segments, the live tensors as affine functions of them,
/// and the layers emitted so far.
pub(super) struct Lowering {
    pub segments: Vec<Segment>,
    pub values: HashMap<String, Value>,
    pub layers: Vec<Layer>,
}

impl Lowering {
    /// Emits the layer `act(value)`, carrying along every segment a live tensor (`self.values`)
    /// still reads (a ReLU output as itself, anything else as the pair relu(x), relu(-x)), and
    /// returns the activation's output as a new value.
    pub fn emit(&mut self, value: Value, act: Activation) -> std::result::Result<Value, String> {
        let mut needed: Vec<usize> = self.values.values().flat_map(|v| v.terms.iter().map(|(s, _)| *s)).collect();
        needed.sort_unstable();
        needed.dedup();
        if !needed.is_empty() && act != Activation::Relu {
            return Err(format!(
                "a tensor computed before this {act:?} activation is used after it (a skip connection): \
                 only ReLU layers can carry values along"
            ));
        }
        let n = value.size();
        let layer = self.layers.len();
        let plain =
            needed.is_empty() && self.segments.len() == 1 && value.terms.len() == 1 && value.terms[0].1.is_plain();
        let new_layer = if plain {
            let (seg, map) = value.terms.into_iter().next().expect("one term");
            match map {
                Pending::Conv(conv) => Layer::conv2d(*conv, value.bias, act),
                other => Layer::new(other.dense(self.segments[seg].size), value.bias, act),
            }
        } else {
            let offsets: Vec<usize> = self
                .segments
                .iter()
                .scan(0, |o, s| {
                    let here = *o;
                    *o += s.size;
                    Some(here)
                })
                .collect();
            let input_size: usize = self.segments.iter().map(|s| s.size).sum();
            let mut blocks: Vec<Block> = value
                .terms
                .into_iter()
                .map(|(seg, map)| Block { output: 0, input: offsets[seg], piece: map.piece(self.segments[seg].size) })
                .collect();
            // New segments: the activation's output, then the carried ones.
            let mut segments = vec![Segment { size: n, nonneg: act == Activation::Relu }];
            let mut out = n;
            let mut remap: HashMap<usize, (usize, Option<usize>)> = HashMap::new();
            for &s in &needed {
                let size = self.segments[s].size;
                let pos = segments.len();
                blocks.push(Block { output: out, input: offsets[s], piece: Piece::Diag(vec![1.0; size]) });
                segments.push(Segment { size, nonneg: true });
                out += size;
                let neg = (!self.segments[s].nonneg).then(|| {
                    blocks.push(Block { output: out, input: offsets[s], piece: Piece::Diag(vec![-1.0; size]) });
                    segments.push(Segment { size, nonneg: true });
                    out += size;
                    pos + 1
                });
                remap.insert(s, (pos, neg));
            }
            let mut bias = value.bias;
            bias.resize(out, 0.0);
            let op = Blocks::new(input_size, out, blocks, layer).map_err(|e| e.to_string())?;
            for v in self.values.values_mut() {
                let terms = std::mem::take(&mut v.terms);
                for (s, map) in terms {
                    let (pos, neg) = remap[&s];
                    if let Some(neg) = neg {
                        // x = relu(x) - relu(-x).
                        v.terms.push((neg, map.clone().then_scale(&vec![-1.0; v.size()])));
                    }
                    v.terms.push((pos, map));
                }
            }
            self.segments = segments;
            Layer::blocks(op, bias, act)
        };
        if plain {
            self.segments = vec![Segment { size: n, nonneg: act == Activation::Relu }];
        }
        self.layers.push(new_layer);
        Ok(Value { shape: value.shape, terms: vec![(0, Pending::Identity)], bias: vec![0.0; n] })
    }
}

fn scale_rows(w: &mut Mat<f64>, s: &[f64]) {
    for j in 0..w.ncols() {
        for (i, v) in w.col_mut(j).iter_mut().enumerate() {
            *v *= s[i];
        }
    }
}
