//! The checker's one bound: the Lagrangian of the network's layer equalities, evaluated soundly
//! for any multipliers.
//!
//! For an objective nu_k^T z_k on the output z_k = W_k x_k + b_k of layer k (x_0 the input, x_{j+1}
//! = sigma_j(z_j) with z_j in \[l_j, u_j\] for every x in X), and *any* vectors nu_0, ..., nu_{k-1},
//!
//! ```text
//! nu_k^T z_k = sum_{j<=k} nu_j^T b_j + (W_0^T nu_0)^T x_0
//!              + sum_{j<k} [ g_j^T sigma_j(z_j) - nu_j^T z_j ],      g_j = W_{j+1}^T nu_{j+1}
//! ```
//!
//! holds at every point of the network (substitute z_j = W_j x_j + b_j), so minimizing each term
//! on its own gives a lower bound over X:
//!
//! ```text
//! nu_k^T z_k >= sum_{j<=k} nu_j^T b_j + h_X(W_0^T nu_0) + sum_{j<k} sum_n phi(g_jn, nu_jn, [l_jn, u_jn])
//! phi(g, nu, [l, u]) = min over z in [l, u] of g relu(z) - nu z   (attained at l, u or 0)
//! ```
//!
//! with h_X the support function of X. This is the Lagrangian (dual) function of the exact
//! problem with the layer equalities relaxed (Wong & Kolter 2018 and Salman et al. 2019, section
//! 4, derive their duals from the same Lagrangian; here every neuron is minimized exactly instead
//! of through its linear relaxation, so the value is never below the backward relaxation's with
//! the same multipliers: CROWN's nu_j = alpha g_j (g_j >= 0) or s g_j (g_j < 0) gives exactly
//! CROWN's bound, the LP's optimal multipliers the LP's).
//!
//! Nothing about the multipliers needs trust: every choice gives a valid bound. Floating point:
//! g_j = W_{j+1}^T nu_{j+1} is computed with an error e <= gamma_{n+4} |W|^T |nu| per entry, so
//! each phi is taken at the worst g in \[g - e, g + e\] (g - e, since relu >= 0), the support
//! function at the computed g is lowered by max|x|^T e, and every sum is lowered by its own
//! a-priori rounding bound (Higham: gamma_n sum |terms|). The result is a lower bound on the real
//! number objective over the real set X for the network whose weights are the stored floats.

use rayon::prelude::*;

use crate::bounds::rounding::{UNIT_ROUNDOFF, gamma, input_magnitude, lower};
use crate::network::{Activation, Network};
use crate::spec::InputSet;

/// One layer's weights as the checker reads them: W's columns (the rows of W^T) contiguous.
pub(crate) struct Weights {
    /// Column c of W (length rows), for each input c.
    cols: Vec<Vec<f64>>,
    bias: Vec<f64>,
    activation: Activation,
}

/// The network, copied once per check into plain vectors (the checker does its own arithmetic).
pub(crate) struct Plain {
    pub(crate) layers: Vec<Weights>,
}

impl Plain {
    pub(crate) fn new(net: &Network) -> Self {
        let layers = net
            .layers()
            .iter()
            .map(|l| {
                let w = l.weight();
                Weights {
                    cols: (0..w.ncols()).map(|c| (0..w.nrows()).map(|r| w[(r, c)]).collect()).collect(),
                    bias: l.bias().to_vec(),
                    activation: l.activation(),
                }
            })
            .collect();
        Plain { layers }
    }
}

/// How the multipliers nu_0..nu_{k-1} of one bound are chosen (nu_k is the objective).
#[derive(Clone, Copy)]
pub(crate) enum Choice<'a> {
    /// nu_j = 0 below the objective's layer: interval arithmetic on the layer below.
    Zero,
    /// nu_j from g_j through one linear relaxation per neuron, as the backward relaxation passes
    /// its coefficients: lower\[j\]\[n\] g where g >= 0 (the lower line's slope), upper\[j\]\[n\] g
    /// elsewhere (the upper line's).
    Lines { lower: &'a [Vec<f64>], upper: &'a [Vec<f64>] },
    /// nu_j given.
    Vectors(&'a [Vec<f64>]),
    /// nu_j through CROWN-Ada's lines on the intervals themselves (as [`super::Lines::of`]).
    Adaptive,
}

/// W^T nu and a bound on its rounding error, entry by entry, in a fixed order.
fn transpose_times(w: &Weights, nu: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let g = gamma(nu.len() + 4);
    w.cols
        .iter()
        .map(|col| {
            let (mut v, mut a) = (0.0, 0.0);
            for (x, y) in col.iter().zip(nu) {
                v += x * y;
                a += (x * y).abs();
            }
            (v, g * a * (1.0 + 4.0 * UNIT_ROUNDOFF))
        })
        .unzip()
}

/// min over z in \[l, u\] of g sigma(z) - nu z for every g in \[g_hat - e, g_hat + e\], rounded down.
fn phi(act: Activation, g_hat: f64, e: f64, nu: f64, l: f64, u: f64) -> f64 {
    if !(g_hat.is_finite() && e.is_finite() && nu.is_finite() && l.is_finite() && u.is_finite()) {
        return f64::NEG_INFINITY;
    }
    let eval = |z: f64| -> f64 {
        let (term, mag) = match act {
            Activation::Relu => {
                let r = z.max(0.0);
                let gl = g_hat - e;
                (gl * r - nu * z, (g_hat.abs() + e) * r + (nu * z).abs())
            }
            // sigma(z) = z: g z - nu z at the worst g is (g_hat - nu) z - e |z|.
            _ => (g_hat * z - nu * z - e * z.abs(), (g_hat.abs() + e + nu.abs()) * z.abs()),
        };
        lower(term, 8.0 * UNIT_ROUNDOFF * mag + f64::MIN_POSITIVE)
    };
    let mut best = eval(l).min(eval(u));
    if act == Activation::Relu && l < 0.0 && u > 0.0 {
        best = best.min(eval(0.0));
    }
    best
}

/// The sound lower bound on top^T z_k over X (z_k the output of layer `k`), with the multipliers
/// of `choice` and the intervals `iv` (lower, upper) of the outputs of layers 0..k. -inf when a
/// value is not finite or a given multiplier has the wrong length.
pub(crate) fn bound(
    net: &Plain,
    set: &InputSet,
    iv: &[(Vec<f64>, Vec<f64>)],
    k: usize,
    top: &[f64],
    choice: Choice<'_>,
) -> f64 {
    let layers = &net.layers;
    let mut sum = Sum::default();
    let dot_bias = |nu: &[f64], b: &[f64]| -> f64 {
        let (v, a) = nu.iter().zip(b).fold((0.0, 0.0), |(v, a), (x, y)| (v + x * y, a + (x * y).abs()));
        lower(v, gamma(nu.len() + 2) * a)
    };
    let mut nu = top.to_vec();
    sum.add(dot_bias(&nu, &layers[k].bias));
    for j in (0..k).rev() {
        let (g, e) = transpose_times(&layers[j + 1], &nu);
        let (lo, hi) = &iv[j];
        let act = layers[j].activation;
        let below: Vec<f64> = match choice {
            Choice::Zero => vec![0.0; g.len()],
            Choice::Lines { lower, upper } => match (lower.get(j), upper.get(j)) {
                (Some(a), Some(b)) if a.len() == g.len() && b.len() == g.len() => {
                    (0..g.len()).map(|n| if g[n] >= 0.0 { a[n] * g[n] } else { b[n] * g[n] }).collect()
                }
                _ => return f64::NEG_INFINITY,
            },
            Choice::Adaptive => (0..g.len())
                .map(|n| {
                    let (l, u) = (lo[n], hi[n]);
                    let slope = if act != Activation::Relu || l >= 0.0 {
                        1.0
                    } else if u <= 0.0 {
                        0.0
                    } else if g[n] >= 0.0 {
                        if u > -l { 1.0 } else { 0.0 }
                    } else {
                        u / (u - l)
                    };
                    slope * g[n]
                })
                .collect(),
            Choice::Vectors(v) => match v.get(j) {
                Some(v) if v.len() == g.len() => v.clone(),
                _ => return f64::NEG_INFINITY,
            },
        };
        (0..g.len()).for_each(|n| sum.add(phi(act, g[n], e[n], below[n], lo[n], hi[n])));
        if matches!(choice, Choice::Zero) {
            // Nothing below contributes: the layer's interval has been used as a box.
            return sum.lower();
        }
        nu = below;
        sum.add(dot_bias(&nu, &layers[j].bias));
    }
    // The input: h_X(W_0^T nu_0) at the computed product, lowered by max|x|^T e.
    let (g, e) = transpose_times(&layers[0], &nu);
    let xmag = input_magnitude(set);
    let slack: f64 = e.iter().zip(&xmag).map(|(e, x)| e * x).sum::<f64>() * (1.0 + gamma(e.len() + 2));
    sum.add(lower(set.min_linear(&g), slack));
    sum.lower()
}

/// A sum of terms with the a-priori bound on its rounding error.
#[derive(Default)]
struct Sum {
    total: f64,
    magnitude: f64,
    count: usize,
}

impl Sum {
    fn add(&mut self, v: f64) {
        self.total += v;
        self.magnitude += v.abs();
        self.count += 1;
    }

    /// The sum rounded down (-inf if a term was not finite).
    fn lower(&self) -> f64 {
        if !self.total.is_finite() {
            return f64::NEG_INFINITY;
        }
        lower(self.total, gamma(self.count + 1) * self.magnitude)
    }
}

/// The intervals of the outputs of hidden layer `k`, neuron by neuron: each side the best of
/// the given multipliers (`choices(neuron, side)`, side +1 lower, -1 upper) and interval
/// arithmetic on the layer below (for the first layer every choice gives the exact support
/// function).
pub(crate) fn layer_interval<'a, F>(
    net: &Plain,
    set: &InputSet,
    iv: &[(Vec<f64>, Vec<f64>)],
    k: usize,
    choices: F,
) -> (Vec<f64>, Vec<f64>)
where
    F: Fn(usize, f64) -> Vec<Choice<'a>> + Sync,
{
    let n = net.layers[k].bias.len();
    let sides: Vec<f64> = (0..2 * n)
        .into_par_iter()
        .map(|i| {
            let (neuron, sign) = (i / 2, if i % 2 == 0 { 1.0 } else { -1.0 });
            let mut top = vec![0.0; n];
            top[neuron] = sign;
            let mut b = bound(net, set, iv, k, &top, Choice::Zero);
            for c in choices(neuron, sign) {
                b = b.max(bound(net, set, iv, k, &top, c));
            }
            b
        })
        .collect();
    let lower_side = (0..n).map(|i| sides[2 * i]).collect();
    let upper_side = (0..n).map(|i| -sides[2 * i + 1]).collect();
    (lower_side, upper_side)
}
