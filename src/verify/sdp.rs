//! The SDP-dual bound of Proposition 3.1 (Chiu & Zhang 2023, 000_2ff65a8857911c41.txt, eq. (SDD)),
//! its checkable certificate, and SDP-FO, a first-order optimizer of the multipliers (Dathathri
//! et al. 2020; 002_d479bbd419bd504e.txt, section 5).
//!
//! # The bound
//!
//! For a ReLU network with variables v = (1, x_0, x_1, ..., x_{L}) (input and hidden
//! post-activations), the quadratic formulation of problem (A) is
//!
//! ```text
//! min  lam^T (W_L x_L + b_L)                        (lam = e_label - e_target)
//! s.t. eps^2 - ||x_0 - x_hat||^2 >= 0     (y_ball)   or   (x_0i - lo_i)(hi_i - x_0i) >= 0  (y_coord)
//!      x_0 - lo >= 0, hi - x_0 >= 0       (y_lower, y_upper)
//!      x_{k+1} >= 0                       (y_nonneg)
//!      x_{k+1} - W_k x_k - b_k >= 0       (y_above)
//!      x_{k+1} ⊙ (x_{k+1} - W_k x_k - b_k) = 0     (z, free)
//!      (x_{k+1} - lo_{k+1})(hi_{k+1} - x_{k+1}) >= 0    (y_post: BM-Full's bound constraints)
//!      s_{k+1} ⊙ (W_k x_k + b_k) + d_{k+1} - x_{k+1} >= 0  (y_cut: the triangle's upper side)
//!      (x_0i - lo_i) x_1j >= 0, (hi_i - x_0i) x_1j >= 0,
//!      (x_0i - lo_i)(x_1j - w_j^T x_0 - b_j) >= 0, (hi_i - x_0i)(x_1j - w_j^T x_0 - b_j) >= 0
//!                                         (y_products: optional, see below)
//! ```
//!
//! The products (optional: [`Multipliers::products`] empty leaves them out) are the
//! reformulation-linearization (RLT) cuts of the input box with the first hidden layer's two
//! linear ReLU constraints: products of two nonnegative quantities, so valid on the whole feasible
//! set, and linear in X = v v^T. The plain SDP only has the box's diagonal constraints
//! (x_0i - lo_i)(hi_i - x_0i) >= 0, which leave the correlations of the inputs with the neurons
//! free; for l_inf sets that is where most of its gap lies (on adv-mnist-mlp-2x100 at l_inf 0.1,
//! image 87, target 5: BM's primal value -0.027 without the products, +0.111 with them, the exact
//! phi 0.118; docs/experiments.md).
//!
//! The last two rows come from pre-activation bounds l <= W_k x_k + b_k <= u of any sound method
//! ([`HiddenBoxes`]): lo = max(l, 0), hi = max(u, 0) are the post-activation bounds of Appendix
//! A.2 (written there as elementwise balls, the same constraint), and the cut is the upper side of
//! the triangle relaxation, so that the LP relaxation is the special case with zero quadratic
//! multipliers: the SDP bound with these rows is never worse than the LP on the same bounds, and
//! the LP (or CROWN) dual is a feasible starting point for SDP-FO.
//!
//! Its Lagrangian L(x; y, z) = f(x) - sum y g(x) + sum z h(x) is a quadratic form v^T M(y, z) v,
//! and for every feasible x and every y >= 0, f(x) >= L. With S = M - z0 e0 e0^T (the slack
//! matrix of (SDD); ours is the paper's up to the factor 1/2 and the sign convention of z) and
//! R^2 >= 1 + ||x||^2 over the feasible set,
//!
//! ```text
//! phi[c] >= z0 + R^2 min(0, lambda_min(S(y, z)))       for every y >= 0, z, z0   (Proposition 3.1)
//! ```
//!
//! z0 is free; writing M = [[m00, m^T], \[m, Q\]], the best z0 for a given t = lambda_min bound
//! is the Schur complement z0(t) = m00 - t - m^T (Q - t I)^{-1} m, so the bound is the concave
//! one-dimensional maximum over t < min(0, lambda_min(Q)) of m00 - m^T (Q - tI)^{-1} m + (R^2 - 1) t.
//! The reported number is proven: M - z0 e0 e0^T - t I ⪰ 0 is checked by a shifted Cholesky that
//! covers its own rounding and the rounding of M's entries ([`crate::linalg::psd`]), and R comes
//! from interval bounds ([`proven_r2`]), never from a solver's solution.
//!
//! The optimizer of the multipliers is [`super::sdp_fo::SdpFo`] (re-exported here).

pub use super::sdp_fo::SdpFo;

use faer::{Mat, MatRef, Side};
use serde::{Deserialize, Serialize};

use crate::bounds::{self, PreActivationBounds};
use crate::error::{Error, Result};
use crate::linalg::psd::{UNIT_ROUNDOFF, gamma, proves_psd};
use crate::network::{Activation, Network};
use crate::spec::{InputSet, Norm};

/// Lagrange multipliers of the quadratic formulation above. Inequality multipliers are clipped to
/// >= 0 wherever they are used, so any values give a valid bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Multipliers {
    /// l2 ball: eps^2 - ||x_0 - x_hat||^2 >= 0 (ignored for l_inf sets, where it is not valid).
    pub ball: f64,
    /// Per input coordinate: (x_0i - lo_i)(hi_i - x_0i) >= 0 over the bounding box of X.
    pub coord: Vec<f64>,
    /// Per input coordinate: x_0i - lo_i >= 0.
    pub lower: Vec<f64>,
    /// Per input coordinate: hi_i - x_0i >= 0.
    pub upper: Vec<f64>,
    /// Per hidden layer and neuron: x_{k+1} >= 0.
    pub nonneg: Vec<Vec<f64>>,
    /// Per hidden layer and neuron: x_{k+1} - W_k x_k - b_k >= 0.
    pub above: Vec<Vec<f64>>,
    /// Per hidden layer and neuron: (x_{k+1} - lo)(hi - x_{k+1}) >= 0 (post-activation box).
    pub post: Vec<Vec<f64>>,
    /// Per hidden layer and neuron: s (W_k x_k + b_k) + d - x_{k+1} >= 0 (triangle upper side).
    pub cut: Vec<Vec<f64>>,
    /// Per hidden layer and neuron (free): x_{k+1} (x_{k+1} - W_k x_k - b_k) = 0.
    pub relu: Vec<Vec<f64>>,
    /// The input-box products (RLT cuts) with the first hidden layer, or empty (not used): four
    /// blocks of n0 x n1 entries, each column-major (entry i + n0 j of a block is input i, neuron
    /// j; lo, hi the bounding box of X, s_j = x_1j - w_j^T x_0 - b_j): (x_0i - lo_i) x_1j >= 0,
    /// (hi_i - x_0i) x_1j >= 0, (x_0i - lo_i) s_j >= 0, (hi_i - x_0i) s_j >= 0.
    #[serde(default)]
    pub products: Vec<f64>,
}

impl Multipliers {
    /// A neutral starting point: z = `relu` everywhere, the input constraint weighted by 1.
    pub fn initial(net: &Network, set: &InputSet, relu: f64) -> Self {
        let n0 = set.dim();
        let hidden: Vec<usize> = net.layers()[..net.layers().len() - 1].iter().map(|l| l.output_size()).collect();
        Multipliers {
            ball: if set.norm() == Norm::L2 { 1.0 } else { 0.0 },
            coord: vec![if set.norm() == Norm::Linf { 1.0 } else { 0.0 }; n0],
            lower: vec![0.0; n0],
            upper: vec![0.0; n0],
            nonneg: hidden.iter().map(|&n| vec![0.0; n]).collect(),
            above: hidden.iter().map(|&n| vec![0.0; n]).collect(),
            post: hidden.iter().map(|&n| vec![0.0; n]).collect(),
            cut: hidden.iter().map(|&n| vec![0.0; n]).collect(),
            relu: hidden.iter().map(|&n| vec![relu; n]).collect(),
            products: Vec::new(),
        }
    }

    /// The same multipliers with the input-box products ([`Multipliers::products`]) switched on
    /// (all zero) or off.
    pub fn with_products(mut self, net: &Network, set: &InputSet, on: bool) -> Self {
        let n1 = net.layers()[0].output_size();
        self.products = if on && net.layers().len() >= 2 { vec![0.0; 4 * set.dim() * n1] } else { Vec::new() };
        self
    }

    fn check_shape(&self, net: &Network, set: &InputSet) -> Result<()> {
        let n0 = set.dim();
        let hidden: Vec<usize> = net.layers()[..net.layers().len() - 1].iter().map(|l| l.output_size()).collect();
        let n1 = net.layers()[0].output_size();
        let products_ok = self.products.is_empty() || (self.products.len() == 4 * n0 * n1 && net.layers().len() >= 2);
        let ok = products_ok
            && self.coord.len() == n0
            && self.lower.len() == n0
            && self.upper.len() == n0
            && [&self.nonneg, &self.above, &self.post, &self.cut, &self.relu]
                .iter()
                .all(|v| v.len() == hidden.len() && v.iter().zip(&hidden).all(|(a, &n)| a.len() == n));
        let finite = std::iter::once(self.ball)
            .chain(self.coord.iter().copied())
            .chain(self.lower.iter().copied())
            .chain(self.upper.iter().copied())
            .chain(self.nonneg.iter().flatten().copied())
            .chain(self.above.iter().flatten().copied())
            .chain(self.post.iter().flatten().copied())
            .chain(self.cut.iter().flatten().copied())
            .chain(self.relu.iter().flatten().copied())
            .chain(self.products.iter().copied())
            .all(f64::is_finite);
        if !ok {
            return Err(Error::InvalidArgument("multipliers do not match the network's layer sizes".into()));
        }
        if !finite {
            return Err(Error::InvalidArgument("multipliers must be finite".into()));
        }
        Ok(())
    }
}

/// Offsets of the blocks of v = (1, x_0, x_1, ..., x_L).
fn offsets(net: &Network, set: &InputSet) -> Vec<usize> {
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
trait Sink {
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
struct DenseSink {
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
struct BorderSink {
    border: Vec<f64>,
    diag: Vec<f64>,
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

/// Post-activation boxes lo <= x <= hi and triangle cuts x <= s z + d of the hidden ReLU neurons
/// (z = W x + b their pre-activation), derived from sound pre-activation bounds l <= z <= u:
/// lo = max(l, 0), hi = max(u, 0); s = u / (u - l), d >= -s l for unstable neurons (s = 1, d = 0
/// for active, s = 0, d = 0 for inactive ones). d is rounded up so that s l + d >= 0 and
/// s u + d >= u hold exactly for the stored floats: the cut is valid on [l, u] because
/// max(z, 0) is convex and the line lies above it at both ends.
#[derive(Clone, Debug, PartialEq)]
pub struct HiddenBoxes {
    /// Post-activation lower bounds per hidden layer.
    pub lo: Vec<Vec<f64>>,
    /// Post-activation upper bounds per hidden layer (+inf when unknown: the box and the cut of
    /// that neuron are then never used).
    pub hi: Vec<Vec<f64>>,
    /// Cut slopes s.
    pub slope: Vec<Vec<f64>>,
    /// Cut offsets d.
    pub offset: Vec<Vec<f64>>,
}

impl HiddenBoxes {
    /// The boxes and cuts of every hidden layer from pre-activation bounds of the same network.
    pub fn new(net: &Network, pre: &PreActivationBounds) -> Result<Self> {
        pre.check_shape(net)?;
        let layers = net.layers();
        let mut b = HiddenBoxes { lo: Vec::new(), hi: Vec::new(), slope: Vec::new(), offset: Vec::new() };
        for iv in &pre.layers[..layers.len() - 1] {
            let n = iv.len();
            let (mut lo, mut hi, mut s, mut d) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            for j in 0..n {
                let (l, u) = (iv.lower[j], iv.upper[j]);
                if !(l.is_finite() && u.is_finite() && l <= u) {
                    lo[j] = 0.0;
                    hi[j] = f64::INFINITY;
                    continue;
                }
                lo[j] = l.max(0.0);
                hi[j] = u.max(0.0);
                if l >= 0.0 {
                    s[j] = 1.0;
                } else if u > 0.0 {
                    let sj = u / (u - l);
                    let raw = (-sj * l).max(u - sj * u);
                    s[j] = sj;
                    d[j] = raw + 8.0 * UNIT_ROUNDOFF * ((sj * l).abs() + u + sj * u) + f64::MIN_POSITIVE;
                }
            }
            b.lo.push(lo);
            b.hi.push(hi);
            b.slope.push(s);
            b.offset.push(d);
        }
        Ok(b)
    }

    /// Whether neuron j of hidden layer k has a usable (finite) box.
    pub(crate) fn usable(&self, k: usize, j: usize) -> bool {
        self.hi[k][j].is_finite()
    }
}

/// Adds every term of the Lagrangian L = f - sum y g + sum z h to `sink`.
fn assemble(
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
fn product_blocks(products: &[f64], n0: usize, n1: usize) -> [Mat<f64>; 4] {
    let blk = n0 * n1;
    std::array::from_fn(|t| Mat::from_fn(n0, n1, |i, j| products[t * blk + i + n0 * j].max(0.0)))
}

/// The Lagrangian terms -sum y g of the input-box products (x_1 at offset `q`). With a_t the four
/// blocks of multipliers and s_j = x_1j - w_j^T x_0 - b_j:
/// -a0 (x_i - lo_i) x_1j - a1 (hi_i - x_i) x_1j - a2 (x_i - lo_i) s_j - a3 (hi_i - x_i) s_j.
/// The x_0-x_0 block sym((A2 - A3) W) is dense: the dense sink gets it entry by entry from two
/// matrix products (with their rounding); the operator applies it through W
/// ([`ProductBlocks`]).
fn assemble_products(net: &Network, set: &InputSet, products: &[f64], q: usize, sink: &mut impl Sink) {
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
const SCHUR_NEWTON_MIN_DIM: usize = 128;

/// Best z0 and t for the Schur form of M (an estimate, not proven: [`certified_bound`] proves
/// whatever comes out): the maximum over t <= min(0, lambda_min(Q)) of the concave
/// f(t) = m00 + (R^2 - 1) t - m^T (Q - tI)^{-1} m, with z0 = m00 - t - m^T (Q - tI)^{-1} m and
/// the primal point x = -(Q - tI)^{-1} m. Large matrices use [`schur_optimum_newton`], falling
/// back to the eigendecomposition if it fails.
fn schur_optimum(m: MatRef<'_, f64>, r2: f64) -> Option<(f64, f64, Vec<f64>)> {
    if m.nrows() > SCHUR_NEWTON_MIN_DIM
        && let Some(opt) = schur_optimum_newton(m, r2)
    {
        return Some(opt);
    }
    schur_optimum_eig(m, r2)
}

/// [`schur_optimum`] by dense eigendecomposition of Q: f'(t) = (R^2 - 1) - sum p_i^2 / (l_i - t)^2
/// in the eigenbasis, bisected.
fn schur_optimum_eig(m: MatRef<'_, f64>, r2: f64) -> Option<(f64, f64, Vec<f64>)> {
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
fn schur_optimum_newton(m: MatRef<'_, f64>, r2: f64) -> Option<(f64, f64, Vec<f64>)> {
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

/// Where the pre-activation bounds of a [`Relaxation`] come from. A certificate names it, so that
/// [`Certificate::check`] can recompute the same bounds from scratch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BoundSource {
    /// CROWN's bounds intersected with IBP's ([`bounds::crown_and_ibp`]): fast.
    #[default]
    CrownIbp,
    /// LP-Full's bounds ([`super::lp::lp_full_bounds`], default settings): what the paper's
    /// BM-Full uses; one LP per unstable neuron.
    LpFull,
    /// CROWN's bounds with the slopes optimized per neuron bound
    /// ([`bounds::optimized::optimized_bounds`], default settings): close to LP-Full's on networks
    /// with two hidden layers, without an LP solver.
    Optimized,
}

impl BoundSource {
    /// The pre-activation bounds of this source.
    pub fn compute(self, net: &Network, set: &InputSet) -> Result<PreActivationBounds> {
        match self {
            BoundSource::CrownIbp => bounds::crown_and_ibp(net, set),
            BoundSource::LpFull => {
                let (mut pre, _) = super::lp::lp_full_bounds(net, set, &crate::bounds::lp::LpSettings::default())?;
                for (a, b) in pre.layers.iter_mut().zip(&bounds::interval::ibp(net, set).layers) {
                    a.intersect(b);
                }
                Ok(pre)
            }
            BoundSource::Optimized => {
                bounds::optimized::optimized_bounds(net, set, &bounds::optimized::SlopeSettings::default())
            }
        }
    }
}

/// Everything about one image's relaxation that does not depend on the target: the
/// pre-activation bounds, the hidden boxes and cuts built from them, and the proven R^2.
#[derive(Clone, Debug, PartialEq)]
pub struct Relaxation {
    /// Where `pre` came from.
    pub source: BoundSource,
    /// Pre-activation bounds of every layer.
    pub pre: PreActivationBounds,
    /// Hidden boxes and cuts from `pre`.
    pub boxes: HiddenBoxes,
    /// Proven R^2 ([`proven_r2`]).
    pub r2: f64,
}

impl Relaxation {
    /// Computes the bounds of `source` and everything derived from them.
    pub fn new(net: &Network, set: &InputSet, source: BoundSource) -> Result<Self> {
        check_network(net)?;
        super::check_query(net, set, 0, &[])?;
        let pre = source.compute(net, set)?;
        Self::from_bounds(net, set, source, pre)
    }

    /// From pre-activation bounds already computed by `source` (they must be sound for `set`;
    /// a certificate built on them is checked against a fresh computation).
    pub fn from_bounds(net: &Network, set: &InputSet, source: BoundSource, pre: PreActivationBounds) -> Result<Self> {
        check_network(net)?;
        let boxes = HiddenBoxes::new(net, &pre)?;
        let r2 = proven_r2(net, set, &pre);
        Ok(Relaxation { source, pre, boxes, r2 })
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

/// The constraint terms at a point x (the supergradient of the dual function at the multipliers
/// whose Lagrangian x minimizes), in the layout of [`Multipliers`]: -g(x) for each inequality
/// g >= 0, h(x) for each equality; with `products`, the input-box products' too.
pub(crate) fn constraint_terms(
    net: &Network,
    set: &InputSet,
    boxes: &HiddenBoxes,
    x: &[f64],
    products: bool,
) -> Multipliers {
    let n0 = set.dim();
    let (lo, hi) = set.bounding_box();
    let c = set.center();
    let x0 = &x[..n0];
    let d2: f64 = x0.iter().zip(c).map(|(a, b)| (a - b) * (a - b)).sum();
    let mut g = Multipliers {
        ball: if set.norm() == Norm::L2 { -(set.eps() * set.eps() - d2) } else { 0.0 },
        coord: (0..n0).map(|i| -((x0[i] - lo[i]) * (hi[i] - x0[i]))).collect(),
        lower: (0..n0).map(|i| -(x0[i] - lo[i])).collect(),
        upper: (0..n0).map(|i| -(hi[i] - x0[i])).collect(),
        nonneg: Vec::new(),
        above: Vec::new(),
        post: Vec::new(),
        cut: Vec::new(),
        relu: Vec::new(),
        products: Vec::new(),
    };
    let layers = net.layers();
    let mut start = 0;
    let mut next = n0;
    for (k, layer) in layers[..layers.len() - 1].iter().enumerate() {
        let xin = &x[start..start + layer.input_size()];
        let xout = &x[next..next + layer.output_size()];
        let z = crate::linalg::mat_vec(layer.weight(), xin);
        let pre: Vec<f64> = z.iter().zip(layer.bias()).map(|(a, b)| a + b).collect();
        let usable = |j: usize| boxes.usable(k, j);
        g.nonneg.push(xout.iter().map(|v| -v).collect());
        g.above.push(xout.iter().zip(&pre).map(|(o, p)| -(o - p)).collect());
        g.post.push(
            (0..xout.len())
                .map(|j| if usable(j) { -((xout[j] - boxes.lo[k][j]) * (boxes.hi[k][j] - xout[j])) } else { 0.0 })
                .collect(),
        );
        g.cut.push(
            (0..xout.len())
                .map(|j| if usable(j) { -(boxes.slope[k][j] * pre[j] + boxes.offset[k][j] - xout[j]) } else { 0.0 })
                .collect(),
        );
        g.relu.push(xout.iter().zip(&pre).map(|(o, p)| o * (o - p)).collect());
        start = next;
        next += layer.output_size();
    }
    if products && layers.len() >= 2 {
        let point = MatRef::from_column_major_slice(x, x.len(), 1);
        g.products = product_values(net, set, point).into_iter().map(|v| -v).collect();
    }
    g
}

/// The input-box products ([`Multipliers::products`]) g >= 0 at X = Y_hat Y_hat^T (Y = [u V], the
/// rows of x without the leading 1; a point x is the one-column Y = x), in their layout:
/// with E[x_i x_1j] = <Y_i, Y_1j> and s = x_1 - W x_0 - b (rows S = Y_1 - W Y_0 - b e0^T),
/// E[x_i x_1j] - lo_i u_1j, hi_i u_1j - E[x_i x_1j], E[x_i s_j] - lo_i s_j0, hi_i s_j0 - E[x_i s_j].
pub(crate) fn product_values(net: &Network, set: &InputSet, y: MatRef<'_, f64>) -> Vec<f64> {
    let n0 = set.dim();
    let layer = &net.layers()[0];
    let n1 = layer.output_size();
    let r = y.ncols();
    let (lo, hi) = set.bounding_box();
    let yx = y.subrows(0, n0);
    let yz = y.subrows(n0, n1);
    let wy = crate::linalg::mul(layer.weight(), yx);
    let b = layer.bias();
    let sm = Mat::from_fn(n1, r, |j, c| yz[(j, c)] - wy[(j, c)] - if c == 0 { b[j] } else { 0.0 });
    let xz = crate::linalg::mul(yx, yz.transpose());
    let xs = crate::linalg::mul(yx, sm.transpose());
    let blk = n0 * n1;
    let mut out = vec![0.0; 4 * blk];
    for j in 0..n1 {
        let (zbar, sbar) = (yz[(j, 0)], sm[(j, 0)]);
        for i in 0..n0 {
            let k = i + n0 * j;
            out[k] = xz[(i, j)] - lo[i] * zbar;
            out[blk + k] = hi[i] * zbar - xz[(i, j)];
            out[2 * blk + k] = xs[(i, j)] - lo[i] * sbar;
            out[3 * blk + k] = hi[i] * sbar - xs[(i, j)];
        }
    }
    out
}

/// The multipliers as one vector: the inequality multipliers first, the free ReLU multipliers
/// z last (so the first `len - relu count` entries are the ones projected onto >= 0).
pub(crate) fn flatten(m: &Multipliers) -> Vec<f64> {
    let mut v = vec![m.ball];
    v.extend(&m.coord);
    v.extend(&m.lower);
    v.extend(&m.upper);
    for part in [&m.nonneg, &m.above, &m.post, &m.cut] {
        for layer in part {
            v.extend(layer);
        }
    }
    v.extend(&m.products);
    for layer in &m.relu {
        v.extend(layer);
    }
    v
}

/// The inverse of [`flatten`], with the layer sizes of `like`.
pub(crate) fn unflatten(v: &[f64], like: &Multipliers) -> Multipliers {
    let mut it = v.iter().copied();
    let mut take = |n: usize| -> Vec<f64> { (&mut it).take(n).collect() };
    let ball = take(1)[0];
    let coord = take(like.coord.len());
    let lower = take(like.lower.len());
    let upper = take(like.upper.len());
    let mut grab = |lens: &[usize]| lens.iter().map(|&n| take(n)).collect::<Vec<_>>();
    let lens = |part: &Vec<Vec<f64>>| part.iter().map(Vec::len).collect::<Vec<_>>();
    let nonneg = grab(&lens(&like.nonneg));
    let above = grab(&lens(&like.above));
    let post = grab(&lens(&like.post));
    let cut = grab(&lens(&like.cut));
    let products = grab(&[like.products.len()]).pop().unwrap_or_default();
    let relu = grab(&lens(&like.relu));
    Multipliers { ball, coord, lower, upper, nonneg, above, post, cut, relu, products }
}

/// The number of inequality multipliers in [`flatten`]'s layout.
pub(crate) fn inequality_count(m: &Multipliers) -> usize {
    flatten(m).len() - m.relu.iter().map(Vec::len).sum::<usize>()
}

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
struct Shifted<'a, 'b> {
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

#[cfg(test)]
mod tests {
    use super::*;
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
