//! The Lagrangian matrix M(y, z): every term of L = f - sum y g + sum z h assembled into a sink
//! (the dense matrix with its rounding bound, or the border of the matrix-free operator), and the
//! proven radius R^2 of the feasible set.

use faer::Mat;

use super::*;
use crate::bounds::PreActivationBounds;
use crate::error::{Error, Result};
use crate::linalg::psd::{UNIT_ROUNDOFF, gamma};
use crate::network::{Activation, Network};
use crate::spec::{InputSet, Norm};

/// Offsets of the blocks of v = (1, x_0, x_1, ..., x_L).
pub(super) fn offsets(net: &Network, set: &InputSet) -> Vec<usize> {
    let mut off = vec![1];
    let mut n = 1 + set.dim();
    for layer in &net.layers()[..net.layers().len() - 1] {
        off.push(n);
        n += layer.output_size();
    }
    off.push(n);
    off
}

pub(crate) fn check_network(net: &Network) -> Result<()> {
    let layers = net.layers();
    if layers[layers.len() - 1].activation() != Activation::Identity
        || layers[..layers.len() - 1].iter().any(|l| l.activation() != Activation::Relu)
    {
        return Err(Error::Unsupported("the SDP relaxation needs ReLU hidden layers and an affine last layer".into()));
    }
    Ok(())
}

/// Receives the terms of the Lagrangian's quadratic form: `cross(i, j, c)` adds c v_i v_j (for
/// i == j, c v_i^2). The dense matrix and the matrix-free operator are two sinks of the same
/// assembly, so they cannot disagree.
pub(super) trait Sink {
    fn cross(&mut self, i: usize, j: usize, c: f64) {
        self.term(i, j, c, c.abs(), 0);
    }
    /// Adds c v_i v_j where c is a computed value within gamma(`depth` + 16) `abs` of the exact
    /// term (`depth`: the roundings inside it beyond the few of a plain product of data).
    fn term(&mut self, i: usize, j: usize, c: f64, abs: f64, depth: u32);
    /// Whether the sink needs every product term of the hidden layers' weights separately (the
    /// dense sink does, for its rounding bound); otherwise their border terms come summed, through
    /// one product with W^T per layer.
    fn per_term(&self) -> bool {
        true
    }
}

/// The dense matrix M, the matrix of summed absolute terms and, per entry, the number of terms
/// summed and the deepest rounding inside one term (for the rounding bound).
pub(super) struct DenseSink {
    m: Mat<f64>,
    a: Mat<f64>,
    count: Vec<u32>,
    depth: Vec<u32>,
}

impl DenseSink {
    fn new(n: usize) -> Self {
        DenseSink { m: Mat::zeros(n, n), a: Mat::zeros(n, n), count: vec![0; n * n], depth: vec![0; n * n] }
    }

    fn add(&mut self, i: usize, j: usize, c: f64, abs: f64, depth: u32) {
        let n = self.m.nrows();
        self.m[(i, j)] += c;
        self.a[(i, j)] += abs;
        let k = i + n * j;
        self.count[k] += 1;
        self.depth[k] = self.depth[k].max(depth);
    }

    /// A bound on the Frobenius norm of fl(M) - M: entry by entry, a recursive sum of N terms, each
    /// within gamma(depth + 16) of its exact value, is within gamma(N + depth + 16) times the sum of
    /// the terms' absolute values.
    fn error(&self) -> f64 {
        let n = self.m.nrows();
        let mut sq = 0.0;
        for j in 0..n {
            for i in 0..n {
                let k = i + n * j;
                if self.count[k] > 0 {
                    let e = gamma((self.count[k] + self.depth[k] + 16) as usize) * self.a[(i, j)];
                    sq += e * e;
                }
            }
        }
        // The sums of absolute values are computed in floating point too (relative error at most
        // gamma(N) < 1e-9 for fewer than 4e6 terms an entry): grow the bound to cover them.
        sq.sqrt() * (1.0 + 1e-9)
    }
}

impl Sink for DenseSink {
    fn term(&mut self, i: usize, j: usize, c: f64, abs: f64, depth: u32) {
        if i == j {
            self.add(i, i, c, abs, depth);
        } else {
            self.add(i, j, 0.5 * c, 0.5 * abs, depth);
            self.add(j, i, 0.5 * c, 0.5 * abs, depth);
        }
    }
}

/// The first row and the diagonal of M; the hidden-to-hidden coupling -diag(z) W / 2 is left to
/// the operator, which applies it through W.
pub(super) struct BorderSink {
    pub(super) border: Vec<f64>,
    pub(super) diag: Vec<f64>,
}

impl Sink for BorderSink {
    fn per_term(&self) -> bool {
        false
    }
    fn term(&mut self, i: usize, j: usize, c: f64, _abs: f64, _depth: u32) {
        if i == j {
            self.diag[i] += c;
        } else if i == 0 {
            self.border[j] += 0.5 * c;
        } else if j == 0 {
            self.border[i] += 0.5 * c;
        }
    }
}

/// Adds every term of the Lagrangian L = f - sum y g + sum z h to `sink`.
pub(super) fn assemble(
    net: &Network,
    set: &InputSet,
    boxes: &HiddenBoxes,
    label: usize,
    target: usize,
    mult: &Multipliers,
    sink: &mut impl Sink,
) -> Result<Vec<usize>> {
    check_network(net)?;
    net.check_label(label)?;
    net.check_label(target)?;
    mult.check_shape(net, set)?;
    if boxes.lo.len() + 1 != net.layers().len() {
        return Err(Error::InvalidArgument("hidden boxes do not match the network".into()));
    }
    let off = offsets(net, set);
    let pos = |v: f64| v.max(0.0);
    let layers = net.layers();
    let last = &layers[layers.len() - 1];
    let c = set.center();
    let (lo, hi) = set.bounding_box();
    // Objective lam^T (W_L x_L + b_L).
    let xl = off[layers.len() - 1];
    let wt = last.weight_t();
    for i in 0..wt.nrows() {
        sink.cross(0, xl + i, wt[(i, label)] - wt[(i, target)]);
    }
    sink.cross(0, 0, last.bias()[label] - last.bias()[target]);
    // Input set. The ball constraint is only valid for l2 sets: for l_inf its multiplier is ignored.
    let yb = if set.norm() == Norm::L2 { pos(mult.ball) } else { 0.0 };
    if yb > 0.0 {
        let c2: f64 = c.iter().map(|v| v * v).sum();
        sink.cross(0, 0, yb * c2);
        sink.cross(0, 0, -yb * (set.eps() * set.eps()));
        for i in 0..c.len() {
            sink.cross(1 + i, 1 + i, yb);
            sink.cross(0, 1 + i, -2.0 * yb * c[i]);
        }
    }
    for i in 0..c.len() {
        let (y, yl, yu) = (pos(mult.coord[i]), pos(mult.lower[i]), pos(mult.upper[i]));
        if y > 0.0 {
            sink.cross(1 + i, 1 + i, y);
            sink.cross(0, 1 + i, -y * (lo[i] + hi[i]));
            sink.cross(0, 0, y * lo[i] * hi[i]);
        }
        if yl > 0.0 {
            sink.cross(0, 1 + i, -yl);
            sink.cross(0, 0, yl * lo[i]);
        }
        if yu > 0.0 {
            sink.cross(0, 1 + i, yu);
            sink.cross(0, 0, -yu * hi[i]);
        }
    }
    // Hidden layers: x_k at off[k], x_{k+1} at off[k+1].
    for k in 0..layers.len() - 1 {
        let (p, q) = (off[k], off[k + 1]);
        let w = layers[k].weight();
        let b = layers[k].bias();
        let per_term = sink.per_term();
        let mut summed = if per_term { Vec::new() } else { vec![0.0; w.nrows()] };
        for j in 0..w.nrows() {
            let (y1, y2, z) = (pos(mult.nonneg[k][j]), pos(mult.above[k][j]), mult.relu[k][j]);
            let (yp, yc) = if boxes.usable(k, j) { (pos(mult.post[k][j]), pos(mult.cut[k][j])) } else { (0.0, 0.0) };
            let (blo, bhi, s, d) = (boxes.lo[k][j], boxes.hi[k][j], boxes.slope[k][j], boxes.offset[k][j]);
            // One term per product: the dense sink's rounding bound sums their absolute values.
            sink.cross(0, q + j, -y1);
            sink.cross(0, q + j, -y2);
            sink.cross(0, q + j, -z * b[j]);
            sink.cross(0, 0, y2 * b[j]);
            sink.cross(q + j, q + j, z);
            if yp > 0.0 {
                sink.cross(q + j, q + j, yp);
                sink.cross(0, q + j, -yp * (blo + bhi));
                sink.cross(0, 0, yp * blo * bhi);
            }
            let ycs = yc * s;
            if yc > 0.0 {
                sink.cross(0, q + j, yc);
                sink.cross(0, 0, -ycs * b[j]);
                sink.cross(0, 0, -yc * d);
            }
            if !per_term {
                // The border terms (y2 - yc s) w_ji, summed over j below; the z terms are
                // off the border and the diagonal.
                summed[j] = y2 - ycs;
                continue;
            }
            for i in 0..w.ncols() {
                let wji = w[(j, i)];
                if wji != 0.0 {
                    if y2 != 0.0 {
                        sink.cross(0, p + i, y2 * wji);
                    }
                    if ycs != 0.0 {
                        sink.cross(0, p + i, -ycs * wji);
                    }
                    if z != 0.0 {
                        sink.cross(q + j, p + i, -z * wji);
                    }
                }
            }
        }
        if !per_term {
            let t = crate::linalg::mat_vec(layers[k].weight_t(), &summed);
            for (i, v) in t.into_iter().enumerate() {
                sink.cross(0, p + i, v);
            }
        }
    }
    if !mult.products.is_empty() {
        assemble_products(net, set, &mult.products, off[1], sink);
    }
    Ok(off)
}

/// The input-box products' multipliers `products` ([`Multipliers::products`]) clipped to >= 0,
/// as the four n0 x n1 blocks.
pub(super) fn product_blocks(products: &[f64], n0: usize, n1: usize) -> [Mat<f64>; 4] {
    let blk = n0 * n1;
    std::array::from_fn(|t| Mat::from_fn(n0, n1, |i, j| products[t * blk + i + n0 * j].max(0.0)))
}

/// The Lagrangian terms -sum y g of the input-box products (x_1 at offset `q`). With a_t the four
/// blocks of multipliers and s_j = x_1j - w_j^T x_0 - b_j:
/// -a0 (x_i - lo_i) x_1j - a1 (hi_i - x_i) x_1j - a2 (x_i - lo_i) s_j - a3 (hi_i - x_i) s_j.
/// The x_0-x_0 block sym((A2 - A3) W) is dense: the dense sink gets it entry by entry from two
/// matrix products (with their rounding); the operator applies it through W
/// ([`ProductBlocks`]).
pub(super) fn assemble_products(net: &Network, set: &InputSet, products: &[f64], q: usize, sink: &mut impl Sink) {
    let n0 = set.dim();
    let layer = &net.layers()[0];
    let (w, b) = (layer.weight(), layer.bias());
    let n1 = layer.output_size();
    let (lo, hi) = set.bounding_box();
    let [a0, a1, a2, a3] = product_blocks(products, n0, n1);
    let per_term = sink.per_term();
    // e_j = sum_i (a3_ij hi_i - a2_ij lo_i), the coefficient of w_j^T x_0 in the border.
    let mut e = vec![0.0; n1];
    let mut e_abs = vec![0.0; n1];
    for j in 0..n1 {
        for i in 0..n0 {
            let (y0, y1, y2, y3) = (a0[(i, j)], a1[(i, j)], a2[(i, j)], a3[(i, j)]);
            if y0 == 0.0 && y1 == 0.0 && y2 == 0.0 && y3 == 0.0 {
                continue;
            }
            sink.cross(0, q + j, y0 * lo[i]);
            sink.cross(0, q + j, -y1 * hi[i]);
            sink.cross(0, q + j, y2 * lo[i]);
            sink.cross(0, q + j, -y3 * hi[i]);
            sink.cross(0, 1 + i, y2 * b[j]);
            sink.cross(0, 1 + i, -y3 * b[j]);
            sink.cross(0, 0, -y2 * lo[i] * b[j]);
            sink.cross(0, 0, y3 * hi[i] * b[j]);
            if per_term {
                sink.cross(1 + i, q + j, -y0);
                sink.cross(1 + i, q + j, y1);
                sink.cross(1 + i, q + j, -y2);
                sink.cross(1 + i, q + j, y3);
            }
            e[j] += y3 * hi[i] - y2 * lo[i];
            e_abs[j] += y3 * hi[i].abs() + y2 * lo[i].abs();
        }
    }
    let grow = 1.0 + 1e-10;
    if per_term {
        // Border: e_j w_jk for each (j, k), e_j a sum of 2 n0 terms.
        let depth = 2 * n0 as u32 + 4;
        for j in 0..n1 {
            if e_abs[j] == 0.0 {
                continue;
            }
            for k in 0..n0 {
                let wjk = w[(j, k)];
                if wjk != 0.0 {
                    sink.term(0, 1 + k, e[j] * wjk, grow * e_abs[j] * wjk.abs(), depth);
                }
            }
        }
        // The x_0-x_0 block: (A2 W - A3 W)_ik as a term of (i, k), each product a sum of n1 terms.
        let p2 = crate::linalg::mul(a2.as_ref(), w);
        let p3 = crate::linalg::mul(a3.as_ref(), w);
        let sum = &a2 + &a3;
        let wabs = Mat::from_fn(w.nrows(), w.ncols(), |j, k| w[(j, k)].abs());
        let pabs = crate::linalg::mul(sum.as_ref(), wabs.as_ref());
        let depth = n1 as u32 + 4;
        for k in 0..n0 {
            for i in 0..n0 {
                let c = p2[(i, k)] - p3[(i, k)];
                if pabs[(i, k)] != 0.0 {
                    sink.term(1 + i, 1 + k, c, grow * pabs[(i, k)], depth);
                }
            }
        }
    } else {
        let t = crate::linalg::mat_vec(layer.weight_t(), &e);
        for (k, v) in t.into_iter().enumerate() {
            sink.cross(0, 1 + k, v);
        }
    }
}

/// The Lagrangian matrix M(y, z) (so that L = v^T M v) and the Frobenius norm of a bound on
/// its rounding error (gamma_k times the matrix of summed absolute terms).
pub fn lagrangian_matrix(
    net: &Network,
    set: &InputSet,
    boxes: &HiddenBoxes,
    label: usize,
    target: usize,
    mult: &Multipliers,
) -> Result<(Mat<f64>, f64)> {
    let n = 1 + set.dim() + net.hidden_neurons();
    let mut sink = DenseSink::new(n);
    assemble(net, set, boxes, label, target, mult, &mut sink)?;
    let err = sink.error();
    Ok((sink.m, err))
}

/// A proven R^2 >= 1 + ||(x_0, x_1, ..., x_L)||^2 over the feasible set, from the bounding box of X
/// (and the ball, for l2) and the pre-activation bounds of the hidden layers (ReLU outputs lie in
/// [max(l, 0), max(u, 0)]). Rounded up.
pub fn proven_r2(net: &Network, set: &InputSet, pre: &PreActivationBounds) -> f64 {
    let (lo, hi) = set.bounding_box();
    let mut input: f64 = lo.iter().zip(&hi).map(|(l, h)| l.abs().max(h.abs()).powi(2)).sum();
    if set.norm() == Norm::L2 {
        let cn: f64 = set.center().iter().map(|v| v * v).sum::<f64>().sqrt();
        input = input.min((cn + set.eps()).powi(2));
    }
    let mut r2 = 1.0 + input;
    for iv in &pre.layers[..net.layers().len() - 1] {
        r2 += iv.upper.iter().map(|u| u.max(0.0).powi(2)).sum::<f64>();
    }
    let terms = (set.dim() + net.hidden_neurons() + 4) as f64;
    r2 * (1.0 + 2.0 * terms * UNIT_ROUNDOFF) + f64::MIN_POSITIVE
}
