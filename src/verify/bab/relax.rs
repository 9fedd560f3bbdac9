//! The bounding step of ReLU branch and bound: the backward linear relaxation of
//! [`crate::bounds::linear`] over a *batch* of domains, each with its own pre-activation bounds,
//! split constraints, ReLU slopes (alpha) and split multipliers (beta), as in beta-CROWN
//! (Wang et al. 2021, "Beta-CROWN: Efficient Bound Propagation with Per-neuron Split Constraints
//! for Neural Network Robustness Verification", eq. (5)-(7) and Theorem 3.1).
//!
//! A domain is the part of X where every split holds: z_{k,i} >= 0 (active) or z_{k,i} <= 0
//! (inactive). On it a split neuron is linear (its bounds are clipped at 0, so the relaxation of
//! [`crate::bounds::linear`] takes its exact piece), and each split enters the bound as a
//! Lagrange multiplier beta >= 0:
//!
//! ```text
//! min over domain of c^T f(x)  >=  min over x in X of  c^T f_relaxed(x) + sum_splits beta s z_{k,i}(x)
//! ```
//!
//! with s = -1 for an active split (constraint -z <= 0) and s = +1 for an inactive one (z <= 0):
//! the added terms are <= 0 on the domain, so the right side is a lower bound for every choice of
//! beta >= 0 and of the slopes alpha in \[0, 1\] (weak duality; beta-CROWN's Theorem 3.1). In the backward
//! pass the term enters as beta s added to the coefficient of z_{k,i} after the relaxation of
//! layer k. The columns of all domains share the products with W_k^T, so a batch costs one
//! matrix-matrix product per layer.
//!
//! Gradients (no automatic differentiation, as in [`crate::bounds::optimized`]): at the minimizer
//! x* of the support function, d bound / d alpha_{k,i} = lam_{k+1,i} z_{k,i}(x*) where lam_{k+1}
//! is the coefficient on the layer's output and z the pre-activation of the relaxed network at
//! x*; d bound / d beta_{k,i} = s z_{k,i}(x*) (Danskin: the bound is a minimum of functions
//! affine in alpha and beta).

use faer::Mat;

use crate::bounds::rounding;
use crate::linalg;
use crate::network::Network;
use crate::spec::InputSet;

/// A split decision: hidden layer, neuron, and the side (z >= 0 when `active`, else z <= 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// Hidden layer index (0 = first hidden layer).
    pub layer: usize,
    /// Neuron index in the layer.
    pub neuron: usize,
    /// Active (z >= 0) or inactive (z <= 0).
    pub active: bool,
}

impl Split {
    /// The sign s of the Lagrangian term beta s z (see the module's documentation).
    pub fn sign(&self) -> f64 {
        if self.active { -1.0 } else { 1.0 }
    }
}

/// The multiplier a new split starts from (see [`Split::sign`]), given the coefficient `lam` on
/// the neuron's output and its lower slope `alpha` in the parent's relaxation. Where the parent
/// used the lower line (lam >= 0), the child's term lam z (active: relu(z) = z) or 0 (inactive)
/// plus the Lagrangian term beta s z equals the parent's lam alpha z for beta = lam (1 - alpha)
/// (active, s = -1) or beta = lam alpha (inactive, s = +1): with the parent's bounds the child
/// starts at the parent's bound rather than below it. Where the parent used the upper line, 0
/// (any beta >= 0 is sound).
pub fn matching_beta(split: Split, lam: f64, alpha: f64) -> f64 {
    if lam <= 0.0 || !lam.is_finite() {
        0.0
    } else if split.active {
        lam * (1.0 - alpha)
    } else {
        lam * alpha
    }
}

/// Pre-activation bounds of the hidden layers of a domain, valid on every point of the domain.
#[derive(Clone, Debug, PartialEq)]
pub struct HiddenBounds {
    /// Lower bounds, per hidden layer.
    pub lower: Vec<Vec<f64>>,
    /// Upper bounds, per hidden layer.
    pub upper: Vec<Vec<f64>>,
}

impl HiddenBounds {
    /// Clips the split neuron's bounds at 0 (its side of the split).
    pub fn apply(&mut self, s: Split) {
        if s.active {
            self.lower[s.layer][s.neuron] = self.lower[s.layer][s.neuron].max(0.0);
        } else {
            self.upper[s.layer][s.neuron] = self.upper[s.layer][s.neuron].min(0.0);
        }
    }

    /// Whether some neuron's bounds cross by more than their rounding could explain (the domain is
    /// empty). Bounds that cross by less are kept: a domain is dropped only when it is certainly
    /// empty, since dropping one that is not would be unsound.
    pub fn is_empty_domain(&self) -> bool {
        self.lower
            .iter()
            .zip(&self.upper)
            .any(|(l, u)| l.iter().zip(u).any(|(a, b)| a - b > 1e-9 * (1.0 + a.abs() + b.abs())))
    }

    /// The unstable neurons (l < 0 < u), as (layer, neuron).
    pub fn unstable(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (k, (l, u)) in self.lower.iter().zip(&self.upper).enumerate() {
            for i in 0..l.len() {
                if l[i] < 0.0 && u[i] > 0.0 {
                    out.push((k, i));
                }
            }
        }
        out
    }
}

/// How one column of a batched backward pass relaxes the network: the bounds of its domain, its
/// slopes (None: CROWN's adaptive slope), its splits with their multipliers, and optionally one
/// extra split that is tried without being made (filtered smart branching).
#[derive(Clone, Copy)]
pub struct Column<'a> {
    /// The domain's bounds.
    pub bounds: &'a HiddenBounds,
    /// Lower slopes of the unstable ReLUs, per hidden layer (None: 1 if u > -l else 0).
    pub alpha: Option<&'a [Vec<f64>]>,
    /// The domain's splits.
    pub splits: &'a [Split],
    /// One multiplier per split (empty: none).
    pub beta: &'a [f64],
    /// A split applied to this column only.
    pub extra: Option<Split>,
}

/// Bounds \[l, u\] of neuron i of a layer, clipped at 0 on its side when `extra` (a split tried on
/// that layer, filtered smart branching) is on neuron i.
#[inline]
fn clip(extra: Option<Split>, i: usize, l: f64, u: f64) -> (f64, f64) {
    match extra {
        Some(s) if s.neuron == i && s.active => (l.max(0.0), u),
        Some(s) if s.neuron == i => (l, u.min(0.0)),
        _ => (l, u),
    }
}

/// The lower slope of an unstable ReLU with bounds \[l, u\]: the column's `alpha`, or CROWN's
/// adaptive choice (1 if u > -l, else 0).
#[inline]
fn lower_slope(alpha: Option<f64>, l: f64, u: f64) -> f64 {
    match alpha {
        Some(a) => a,
        None if u > -l => 1.0,
        None => 0.0,
    }
}

impl Column<'_> {
    fn neuron_bounds(&self, k: usize, i: usize) -> (f64, f64) {
        clip(self.extra.filter(|s| s.layer == k), i, self.bounds.lower[k][i], self.bounds.upper[k][i])
    }

    /// The lower slope of unstable neuron i of layer k with bounds \[l, u\] (see [`lower_slope`]).
    fn lower_slope(&self, k: usize, i: usize, l: f64, u: f64) -> f64 {
        lower_slope(self.alpha.map(|a| a[k][i]), l, u)
    }

    /// Relaxes hidden layer k's ReLU for the coefficient vector `lam` (on the layer's output) in
    /// place, turning it into the coefficient on the pre-activation; returns the constant and the
    /// sum of |lam_i o_i| over the offsets used (for the rounding allowance).
    fn relax(&self, k: usize, lam: &mut [f64]) -> (f64, f64) {
        let (mut c, mut offsets) = (0.0, 0.0);
        // The layer's bounds and slopes as slices (no per-neuron lookups); the extra split
        // (filtered smart branching) clips its neuron's bounds ([`clip`]).
        let (lower, upper) = (&self.bounds.lower[k][..lam.len()], &self.bounds.upper[k][..lam.len()]);
        let alpha = self.alpha.map(|a| &a[k][..lam.len()]);
        let extra = self.extra.filter(|s| s.layer == k);
        for (i, (v, (&l0, &u0))) in lam.iter_mut().zip(lower.iter().zip(upper)).enumerate() {
            let x = *v;
            if x == 0.0 {
                continue;
            }
            let (l, u) = clip(extra, i, l0, u0);
            if l >= 0.0 {
                continue;
            }
            if u <= 0.0 {
                *v = 0.0;
                continue;
            }
            if x >= 0.0 {
                *v = x * lower_slope(alpha.map(|a| a[i]), l, u);
            } else {
                let (s, o) = rounding::relu_chord(l, u);
                *v = x * s;
                c += x * o;
                offsets += (x * o).abs();
            }
        }
        for (s, b) in self.splits.iter().zip(self.beta) {
            if s.layer == k {
                lam[s.neuron] += s.sign() * b;
            }
        }
        (c, offsets)
    }
}

/// The rounding weights of hidden layers 0..top ([`rounding::step_weights`]) for a batch of
/// columns, from magnitudes valid on every column's domain (the largest over the domains).
fn batch_weights(net: &Network, set: &InputSet, top: usize, cols: &[Column<'_>]) -> Vec<Vec<f64>> {
    let layers = net.layers();
    let mut distinct: Vec<&HiddenBounds> = Vec::new();
    for c in cols {
        if !distinct.last().is_some_and(|d| std::ptr::eq(*d, c.bounds)) {
            distinct.push(c.bounds);
        }
    }
    let mut x_mag = rounding::input_magnitude(set);
    let mut out = Vec::with_capacity(top);
    for (k, layer) in layers.iter().enumerate().take(top) {
        let n = layer.output_size();
        let (mut z_mag, mut next) = (vec![0.0f64; n], vec![0.0f64; n]);
        for b in &distinct {
            for i in 0..n {
                let (l, u) = (b.lower[k][i], b.upper[k][i]);
                z_mag[i] = z_mag[i].max(l.abs()).max(u.abs());
                next[i] = next[i].max(u);
            }
        }
        out.push(rounding::step_weights(layer, &x_mag, &z_mag));
        x_mag = next;
    }
    out
}

/// The result of a batched backward pass.
pub struct Backward {
    /// Lower bound per column.
    pub values: Vec<f64>,
    /// The coefficients on the input, per column (input dimension x columns).
    pub input_coeffs: Mat<f64>,
    /// The coefficient on the output of each hidden layer below `top`, before its relaxation
    /// (neurons x columns), when asked for.
    pub saved: Vec<Mat<f64>>,
}

/// Lower bounds on lam\[:, s\]^T x_top + consts\[s\] over X for each column s, relaxing hidden
/// layers 0..top with column s's relaxation `cols[s]` (x_top is the output of hidden layer top-1,
/// the input of layer `top`).
pub fn backward(
    net: &Network,
    set: &InputSet,
    top: usize,
    lam: Mat<f64>,
    consts: Vec<f64>,
    cols: &[Column<'_>],
    save: bool,
) -> Backward {
    backward_over(net, set, None, top, lam, consts, cols, save)
}

/// [`backward`] with an input set per column (`sets[s]` for column s, each within `outer`, whose
/// magnitudes bound the input's in the rounding allowance): the boxes of input splitting, bounded
/// in one batch.
#[allow(clippy::too_many_arguments)]
pub fn backward_sets(
    net: &Network,
    outer: &InputSet,
    sets: &[&InputSet],
    top: usize,
    lam: Mat<f64>,
    consts: Vec<f64>,
    cols: &[Column<'_>],
    save: bool,
) -> Backward {
    assert_eq!(sets.len(), cols.len(), "one input set per column");
    backward_over(net, outer, Some(sets), top, lam, consts, cols, save)
}

#[allow(clippy::too_many_arguments)]
fn backward_over(
    net: &Network,
    set: &InputSet,
    sets: Option<&[&InputSet]>,
    top: usize,
    mut lam: Mat<f64>,
    mut consts: Vec<f64>,
    cols: &[Column<'_>],
    save: bool,
) -> Backward {
    let layers = net.layers();
    let mut saved = Vec::new();
    let weights = batch_weights(net, set, top, cols);
    let mut err = vec![0.0; cols.len()];
    let mut abs_consts: Vec<f64> = consts.iter().map(|c| c.abs()).collect();
    for k in (0..top).rev() {
        if save {
            saved.push(lam.clone());
        }
        for (s, col) in cols.iter().enumerate() {
            let v = lam.col_as_slice_mut(s);
            let (c, offsets) = col.relax(k, v);
            err[s] += rounding::step_error(v, &weights[k], offsets);
            consts[s] += c;
            consts[s] += linalg::dot(v, layers[k].bias());
            abs_consts[s] += consts[s].abs();
        }
        lam = layers[k].mul_t(lam.as_ref());
    }
    saved.reverse();
    // Sound in floating point: the support function is, and each value is lowered by the
    // a-priori bound on the backward pass's rounding ([`rounding`]).
    let support = match sets {
        None => set.min_linear_columns(lam.as_ref()),
        Some(sets) => sets.iter().enumerate().map(|(s, x)| x.min_linear(lam.col_as_slice(s))).collect(),
    };
    let g = rounding::gamma(top + 3);
    let values = (0..consts.len())
        .map(|s| rounding::lower(support[s] + consts[s], err[s] + g * (abs_consts[s] + support[s].abs())))
        .collect();
    Backward { values, input_coeffs: lam, saved }
}

/// The coefficient on each hidden layer's pre-activation, after its relaxation and the split
/// multipliers, in `col`'s backward pass from `lam` on the last hidden layer's output: the
/// multipliers of the Lagrangian a certificate stores for a domain ([`crate::certificate`]).
pub fn multipliers(net: &Network, lam: &[f64], col: &Column<'_>) -> Vec<Vec<f64>> {
    let layers = net.layers();
    let top = layers.len() - 1;
    let mut v = lam.to_vec();
    let mut out = vec![Vec::new(); top];
    for k in (0..top).rev() {
        col.relax(k, &mut v);
        out[k] = v.clone();
        v = layers[k].mul_t_vec(&v);
    }
    out
}

/// Tightens the bounds of the unstable neurons of hidden layer `j` in each of `domains` by one
/// backward pass each way (CROWN's slopes over the domain's own bounds of the layers before `j`,
/// no multipliers), all domains in one batch, intersecting the results with the bounds held.
pub fn tighten_layer(net: &Network, set: &InputSet, domains: &mut [&mut HiddenBounds], j: usize) {
    tighten_layer_over(net, set, None, domains, j);
}

/// [`tighten_layer`] with an input set per domain (`sets[d]` for domain d, each within `outer`):
/// the boxes of input splitting.
pub fn tighten_layer_sets(
    net: &Network,
    outer: &InputSet,
    sets: &[&InputSet],
    domains: &mut [&mut HiddenBounds],
    j: usize,
) {
    assert_eq!(sets.len(), domains.len(), "one input set per domain");
    tighten_layer_over(net, outer, Some(sets), domains, j);
}

fn tighten_layer_over(
    net: &Network,
    set: &InputSet,
    sets: Option<&[&InputSet]>,
    domains: &mut [&mut HiddenBounds],
    j: usize,
) {
    let layer = &net.layers()[j];
    // Columns: (domain, neuron, sign).
    let mut jobs: Vec<(usize, usize, f64)> = Vec::new();
    for (di, b) in domains.iter().enumerate() {
        for i in 0..b.lower[j].len() {
            if b.lower[j][i] < 0.0 && b.upper[j][i] > 0.0 {
                jobs.push((di, i, 1.0));
                jobs.push((di, i, -1.0));
            }
        }
    }
    if jobs.is_empty() {
        return;
    }
    let mut lam = layer.rows_t(&jobs.iter().map(|j| j.1).collect::<Vec<_>>());
    for (s, job) in jobs.iter().enumerate() {
        if job.2 < 0.0 {
            lam.col_mut(s).iter_mut().for_each(|v| *v = -*v);
        }
    }
    let consts: Vec<f64> = jobs.iter().map(|&(_, i, sg)| sg * layer.bias()[i]).collect();
    let values = {
        let cols: Vec<Column<'_>> = jobs
            .iter()
            .map(|&(di, _, _)| Column { bounds: &*domains[di], alpha: None, splits: &[], beta: &[], extra: None })
            .collect();
        match sets {
            None => backward(net, set, j, lam, consts, &cols, false).values,
            Some(sets) => {
                let per_col: Vec<&InputSet> = jobs.iter().map(|&(di, _, _)| sets[di]).collect();
                backward_sets(net, set, &per_col, j, lam, consts, &cols, false).values
            }
        }
    };
    for (&(di, i, sg), v) in jobs.iter().zip(values) {
        let b = &mut *domains[di];
        if sg > 0.0 {
            b.lower[j][i] = b.lower[j][i].max(v);
        } else {
            b.upper[j][i] = b.upper[j][i].min(-v);
        }
    }
}

/// The minimizers x* of the support function for each column of `coeffs` (input x columns).
pub fn minimizers(set: &InputSet, coeffs: &Mat<f64>) -> Mat<f64> {
    set.argmin_linear_columns(coeffs.as_ref())
}

/// Gradients of each column's bound with respect to its slopes and its multipliers at the
/// minimizers `x` (input x columns), from the saved coefficients of [`backward`] (`top` = the
/// number of hidden layers). Calls `alpha_grad(column, layer, neuron, g)` for every unstable neuron
/// whose lower line was used and `beta_grad(column, split index, g)` for every split.
pub fn gradients(
    net: &Network,
    x: &Mat<f64>,
    back: &Backward,
    cols: &[Column<'_>],
    mut alpha_grad: impl FnMut(usize, usize, usize, f64),
    mut beta_grad: impl FnMut(usize, usize, f64),
) {
    let layers = net.layers();
    let mut h = x.clone();
    for (k, lam) in back.saved.iter().enumerate() {
        let mut z = layers[k].mul(h.as_ref());
        let b = layers[k].bias();
        for (s, col) in cols.iter().enumerate() {
            let zc = z.col_as_slice_mut(s);
            let lc = lam.col_as_slice(s);
            for i in 0..zc.len() {
                zc[i] += b[i];
            }
            for (j, sp) in col.splits.iter().enumerate() {
                if sp.layer == k {
                    beta_grad(s, j, sp.sign() * zc[sp.neuron]);
                }
            }
            for (i, (z, &lam)) in zc.iter_mut().zip(lc).enumerate() {
                let (l, u) = col.neuron_bounds(k, i);
                *z = if l >= 0.0 {
                    *z
                } else if u <= 0.0 {
                    0.0
                } else if lam >= 0.0 {
                    if col.alpha.is_some() {
                        alpha_grad(s, k, i, lam * *z);
                    }
                    col.lower_slope(k, i, l, u) * *z
                } else {
                    // The relaxed network's output on the upper line.
                    let (sl, o) = rounding::relu_chord(l, u);
                    sl * *z + o
                };
            }
        }
        h = z;
    }
}
