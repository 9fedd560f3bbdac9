//! The Lagrange multipliers of the quadratic formulation ([`super`]), their flat layout, and the
//! constraint values at a point (the dual function's supergradient, the input-box products at a
//! factor).

use faer::{Mat, MatRef};
use serde::{Deserialize, Serialize};

use super::*;
use crate::error::{Error, Result};
use crate::network::Network;
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

    pub(super) fn check_shape(&self, net: &Network, set: &InputSet) -> Result<()> {
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
