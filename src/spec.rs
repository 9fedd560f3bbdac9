//! Input sets: the perturbation ball around an input, intersected with the valid input box.
//!
//! Every method in the crate answers the semi-targeted attack problem (A) of the BM-r paper
//! (000_2ff65a8857911c41.txt, section 2):
//!
//! ```text
//! phi[c] = min over x in X of f(x)[label] - f(x)[c],   X = {x : ||x - x_hat|| <= eps} ∩ domain box
//! ```
//!
//! This module defines X ([`InputSet`]), projections onto it (for PGD), and the support function
//! min over X of a^T x (for the linear bounds).

use faer::{Mat, MatRef};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::bounds::rounding::{UNIT_ROUNDOFF, gamma, lower};
use crate::error::{Error, Result};
use crate::linalg::norm2;

/// a^T b lowered by its rounding error (gamma_{n+2} |a|^T |b|).
/// The corner of the box lo..hi minimizing a^T x (the centre's coordinate, clamped, where a_i = 0).
fn box_corner(a: &[f64], lo: &[f64], hi: &[f64], c: &[f64]) -> Vec<f64> {
    a.iter()
        .enumerate()
        .map(|(i, &ai)| {
            if ai > 0.0 {
                lo[i]
            } else if ai < 0.0 {
                hi[i]
            } else {
                c[i].clamp(lo[i], hi[i])
            }
        })
        .collect()
}

fn sound_dot(a: &[f64], b: &[f64]) -> f64 {
    let (v, abs) = a.iter().zip(b).fold((0.0, 0.0), |(v, s), (x, y)| (v + x * y, s + (x * y).abs()));
    lower(v, gamma(a.len() + 2) * abs)
}

/// The norm of the perturbation ball.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Norm {
    /// Euclidean ball ||x - x_hat||_2 <= eps.
    L2,
    /// Box ||x - x_hat||_inf <= eps.
    Linf,
}

impl Norm {
    /// "l2" or "linf".
    pub fn name(self) -> &'static str {
        match self {
            Norm::L2 => "l2",
            Norm::Linf => "linf",
        }
    }
}

impl std::str::FromStr for Norm {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "l2" | "2" => Ok(Norm::L2),
            "linf" | "l_inf" | "inf" => Ok(Norm::Linf),
            _ => Err(Error::InvalidArgument(format!("unknown norm '{s}' (expected l2 or linf)"))),
        }
    }
}

/// A box lo <= x <= hi of valid inputs (for images scaled to \[0,1\], the unit box).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Domain {
    lo: Vec<f64>,
    hi: Vec<f64>,
}

impl Domain {
    /// A box with per-coordinate bounds; an error when lo > hi or a bound is NaN.
    pub fn new(lo: Vec<f64>, hi: Vec<f64>) -> Result<Self> {
        if lo.len() != hi.len() {
            return Err(Error::InvalidArgument(format!(
                "domain lower bounds have length {}, upper bounds {}",
                lo.len(),
                hi.len()
            )));
        }
        for (index, (&l, &h)) in lo.iter().zip(&hi).enumerate() {
            if l.is_nan() || h.is_nan() || l > h || l == f64::INFINITY || h == f64::NEG_INFINITY {
                return Err(Error::InvalidDomain { index, lo: l, hi: h });
            }
        }
        Ok(Self { lo, hi })
    }

    /// The same interval \[lo, hi\] for each of `n` coordinates.
    pub fn uniform(n: usize, lo: f64, hi: f64) -> Result<Self> {
        Self::new(vec![lo; n], vec![hi; n])
    }

    /// Lower bounds.
    pub fn lo(&self) -> &[f64] {
        &self.lo
    }
    /// Upper bounds.
    pub fn hi(&self) -> &[f64] {
        &self.hi
    }
}

/// The input set X = {x : ||x - center|| <= eps} ∩ domain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InputSet {
    center: Vec<f64>,
    eps: f64,
    norm: Norm,
    domain: Option<Domain>,
    /// The l_inf support function's set-up, computed on first use ([`InputSet::min_linear_columns`]).
    #[serde(skip)]
    box_parts: std::sync::OnceLock<BoxParts>,
    /// [`InputSet::bounding_box`], computed on first use.
    #[serde(skip)]
    bounds: std::sync::OnceLock<(Vec<f64>, Vec<f64>)>,
}

/// The bounding box as centre, radius and a bound on |x| (|mid| + rad), per coordinate.
#[derive(Clone, Debug)]
struct BoxParts {
    mid: Vec<f64>,
    rad: Vec<f64>,
    mag: Vec<f64>,
}

impl PartialEq for InputSet {
    /// The same set (the cached set-up is not compared).
    fn eq(&self, other: &Self) -> bool {
        self.center == other.center && self.eps == other.eps && self.norm == other.norm && self.domain == other.domain
    }
}

impl InputSet {
    /// The ball of radius `eps` around `center` in `norm`, intersected with `domain` if given.
    ///
    /// Errors: `eps` negative or not finite, a non-finite center, a domain of another length, a
    /// center outside the domain (the set could then be empty).
    pub fn new(center: Vec<f64>, eps: f64, norm: Norm, domain: Option<Domain>) -> Result<Self> {
        if !eps.is_finite() || eps < 0.0 {
            return Err(Error::InvalidRadius(eps));
        }
        if let Some((index, &value)) = center.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFiniteInput { index, value });
        }
        if let Some(d) = &domain {
            if d.lo.len() != center.len() {
                return Err(Error::InputSize { expected: center.len(), got: d.lo.len() });
            }
            for (index, ((&value, &lo), &hi)) in center.iter().zip(&d.lo).zip(&d.hi).enumerate() {
                if value < lo || value > hi {
                    return Err(Error::CenterOutsideDomain { index, value, lo, hi });
                }
            }
        }
        Ok(Self {
            center,
            eps,
            norm,
            domain,
            box_parts: std::sync::OnceLock::new(),
            bounds: std::sync::OnceLock::new(),
        })
    }

    /// The set's projection on the coordinates `coords`: the same ball and box over those
    /// coordinates only. For a linear function that is zero on the other coordinates the minimum
    /// over X equals the minimum over this set (those coordinates can stay at the center, which
    /// lies in the box and costs no radius), so a support function of sparse coefficients needs
    /// only their nonzero coordinates.
    pub(crate) fn restrict(&self, coords: &[usize]) -> InputSet {
        InputSet {
            center: coords.iter().map(|&i| self.center[i]).collect(),
            eps: self.eps,
            norm: self.norm,
            domain: self.domain.as_ref().map(|d| Domain {
                lo: coords.iter().map(|&i| d.lo[i]).collect(),
                hi: coords.iter().map(|&i| d.hi[i]).collect(),
            }),
            box_parts: std::sync::OnceLock::new(),
            bounds: std::sync::OnceLock::new(),
        }
    }

    /// x_hat.
    pub fn center(&self) -> &[f64] {
        &self.center
    }
    /// eps.
    pub fn eps(&self) -> f64 {
        self.eps
    }
    /// The norm of the ball.
    pub fn norm(&self) -> Norm {
        self.norm
    }
    /// The domain box, if any.
    pub fn domain(&self) -> Option<&Domain> {
        self.domain.as_ref()
    }
    /// Dimension.
    pub fn dim(&self) -> usize {
        self.center.len()
    }

    /// A box containing X: exact for l_inf, \[c - eps, c + eps\] ∩ domain for l2. The ends are
    /// rounded outwards by one ulp so that the box contains the real (not only the floating-point)
    /// set, as the bounds require.
    pub fn bounding_box(&self) -> (Vec<f64>, Vec<f64>) {
        let (lo, hi) = self.bounding_box_ref();
        (lo.to_vec(), hi.to_vec())
    }

    /// [`InputSet::bounding_box`] without a copy (computed once per set).
    pub(crate) fn bounding_box_ref(&self) -> (&[f64], &[f64]) {
        let (lo, hi) = self.bounds.get_or_init(|| self.box_with_radius(self.eps, true));
        (lo, hi)
    }

    /// The radius used when constructing points that must lie in X (projection, sampling): eps
    /// shrunk by a relative 1e-12, far above the rounding error of computing a distance, so such
    /// points pass [`InputSet::contains`] and lie in the real set.
    fn inner_eps(&self) -> f64 {
        self.eps * (1.0 - 1e-12)
    }

    fn box_with_radius(&self, eps: f64, outward: bool) -> (Vec<f64>, Vec<f64>) {
        let (mut lo, mut hi): (Vec<f64>, Vec<f64>) = if outward && eps > 0.0 {
            (
                self.center.iter().map(|c| (c - eps).next_down()).collect(),
                self.center.iter().map(|c| (c + eps).next_up()).collect(),
            )
        } else {
            (self.center.iter().map(|c| c - eps).collect(), self.center.iter().map(|c| c + eps).collect())
        };
        if let Some(d) = &self.domain {
            for i in 0..lo.len() {
                lo[i] = lo[i].max(d.lo[i]);
                hi[i] = hi[i].min(d.hi[i]);
            }
        }
        (lo, hi)
    }

    /// Whether x lies in X, allowing `tol` of slack in the norm and the box.
    pub fn contains(&self, x: &[f64], tol: f64) -> bool {
        if x.len() != self.center.len() || x.iter().any(|v| !v.is_finite()) {
            return false;
        }
        if let Some(d) = &self.domain
            && x.iter().zip(&d.lo).zip(&d.hi).any(|((&v, &l), &h)| v < l - tol || v > h + tol)
        {
            return false;
        }
        self.distance(x) <= self.eps + tol
    }

    /// ||x - center|| in the set's norm.
    pub fn distance(&self, x: &[f64]) -> f64 {
        let d = x.iter().zip(&self.center).map(|(a, b)| a - b);
        match self.norm {
            Norm::L2 => d.map(|v| v * v).sum::<f64>().sqrt(),
            Norm::Linf => d.map(f64::abs).fold(0.0, f64::max),
        }
    }

    /// Euclidean projection of `x` onto X, in place.
    ///
    /// l_inf ∩ box is a box, so clipping is exact. For l2 ∩ box the projection is
    /// `x(t) = clip(c + t (x - c))` with the largest t in \[0, 1\] such that ||x(t) - c|| <= eps: the
    /// KKT conditions of min ||x - y||^2 s.t. ||x - c||^2 <= eps^2, lo <= x <= hi give
    /// x = clip((y + lambda c) / (1 + lambda)) with multiplier lambda = 1/t - 1, and ||x(t) - c|| is
    /// piecewise of the form sqrt(t^2 A + S) and non-decreasing in t (c lies in the box), so the
    /// crossing with eps is found exactly after sorting the coordinates' saturation times. The
    /// returned point always lies in X (checked, and moved towards the center if rounding put it
    /// outside).
    pub fn project(&self, x: &mut [f64]) {
        let eps = self.inner_eps();
        let (lo, hi) = self.box_with_radius(eps, false);
        match self.norm {
            Norm::Linf => {
                for i in 0..x.len() {
                    x[i] = x[i].clamp(lo[i], hi[i]);
                }
            }
            Norm::L2 => {
                let c = &self.center;
                let n = x.len();
                let (dlo, dhi): (Vec<f64>, Vec<f64>) = match &self.domain {
                    Some(d) => (d.lo.clone(), d.hi.clone()),
                    None => (vec![f64::NEG_INFINITY; n], vec![f64::INFINITY; n]),
                };
                let dir: Vec<f64> = x.iter().zip(c).map(|(a, b)| a - b).collect();
                let clipped: Vec<f64> = (0..n).map(|i| x[i].clamp(dlo[i], dhi[i])).collect();
                if self.distance(&clipped) <= eps {
                    // Already inside the ball once clipped: t = 1.
                    x.copy_from_slice(&clipped);
                    return;
                }
                let mut t = ray_exit_time(c, &dir, &dlo, &dhi, eps).min(1.0);
                let mut buf = vec![0.0; n];
                // Rounding can leave the point a hair outside; shrink t until the same distance
                // that `contains` computes accepts it (t = 0 gives the center, always inside).
                for k in 0..64 {
                    for i in 0..n {
                        buf[i] = (c[i] + t * dir[i]).clamp(dlo[i], dhi[i]);
                    }
                    if self.distance(&buf) <= eps {
                        break;
                    }
                    t *= 1.0 - (1e-15 * 2f64.powi(k)).min(1.0);
                }
                if self.distance(&buf) > eps {
                    buf.copy_from_slice(c);
                }
                x.copy_from_slice(&buf);
            }
        }
    }

    /// A random point of X (uniform in the l_inf box; for l2 uniform in the ball, then clipped to
    /// the domain, which keeps it in the ball because the center lies in the domain).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> Vec<f64> {
        let (lo, hi) = self.box_with_radius(self.inner_eps(), false);
        match self.norm {
            Norm::Linf => lo.iter().zip(&hi).map(|(&l, &h)| l + (h - l) * rng.random::<f64>()).collect(),
            Norm::L2 => {
                let n = self.dim();
                let dir: Vec<f64> = (0..n).map(|_| gaussian(rng)).collect();
                let nd = norm2(&dir).max(f64::MIN_POSITIVE);
                let r = self.inner_eps() * rng.random::<f64>().powf(1.0 / n as f64);
                let mut x: Vec<f64> = self.center.iter().zip(&dir).map(|(c, d)| c + r * d / nd).collect();
                if let Some(d) = &self.domain {
                    for i in 0..n {
                        x[i] = x[i].clamp(d.lo[i], d.hi[i]);
                    }
                }
                x
            }
        }
    }

    /// A lower bound on min over X of a^T x, exact up to rounding (the support function of X).
    ///
    /// * l_inf (∩ box): the minimum over the bounding box, coordinate by coordinate.
    /// * l2 without a domain: a^T c - eps ||a||_2 (Cauchy-Schwarz).
    /// * l2 ∩ box: the Lagrangian dual max over lambda >= 0 of
    ///   g(lambda) = sum_i min_{lo_i <= x_i <= hi_i} [a_i x_i + lambda/2 (x_i - c_i)^2] - lambda eps^2 / 2,
    ///   which is a valid lower bound for *every* lambda >= 0 (weak duality) and equals the minimum
    ///   at the optimal lambda (Slater holds when eps > 0). The optimal lambda is found exactly: with
    ///   t = 1/lambda the minimizer is x_i = c_i + clip(-a_i t, lo_i - c_i, hi_i - c_i) and
    ///   ||x(t) - c||^2 is piecewise quadratic in t with breakpoints where coordinates saturate.
    ///
    /// Sound in floating point: each value is lowered by an a-priori bound on its own rounding
    /// error (gamma_n |a|^T |x| for a sum of n products, see [`crate::bounds::rounding`]), so it
    /// is a lower bound on the exact minimum over the real set.
    pub fn min_linear(&self, a: &[f64]) -> f64 {
        debug_assert_eq!(a.len(), self.dim());
        match (self.norm, &self.domain) {
            _ if self.eps == 0.0 => sound_dot(a, &self.center),
            (Norm::Linf, _) => {
                let (lo, hi) = self.bounding_box_ref();
                let x = a.iter().zip(lo.iter().zip(hi)).map(|(&ai, (&l, &h))| if ai >= 0.0 { l } else { h });
                let (v, abs) = x.zip(a).fold((0.0, 0.0), |(v, abs), (x, ai)| (v + ai * x, abs + (ai * x).abs()));
                lower(v, gamma(a.len() + 2) * abs)
            }
            (Norm::L2, None) => self.min_linear_l2_ball(a),
            (Norm::L2, Some(d)) => self.min_linear_l2_box(a, d),
        }
    }

    /// a^T c - eps ||a||_2, lowered by its rounding error.
    fn min_linear_l2_ball(&self, a: &[f64]) -> f64 {
        let (v, abs, squares) = crate::linalg::dot_abs_squares(a, &self.center);
        // The plain sum of squares is within gamma_n of the exact one, except that a square may
        // underflow (by less than the smallest normal float each; n of them are added back) or
        // overflow (r = inf, the bound -inf): the norm below is >= ||a|| (1 - gamma_{n+2}), and
        // within gamma_{n+8} of it once multiplied by eps.
        let n = (squares + a.len() as f64 * f64::MIN_POSITIVE).sqrt();
        let r = self.eps * n;
        lower(v - r, gamma(a.len() + 2) * abs + gamma(a.len() + 8) * r)
    }

    /// The bounding box's centre, radius and magnitudes, computed once per set.
    fn box_parts(&self) -> &BoxParts {
        self.box_parts.get_or_init(|| {
            let (lo, hi) = self.bounding_box_ref();
            let mid: Vec<f64> = lo.iter().zip(hi).map(|(l, h)| 0.5 * (l + h)).collect();
            let rad: Vec<f64> = lo.iter().zip(hi).map(|(l, h)| 0.5 * (h - l)).collect();
            // |mid| + rad bounds |x| on the box; the rounding of mid and rad themselves (u
            // each) and of the 2n terms is within gamma_{2n+4} |a|^T (|mid| + rad).
            let mag: Vec<f64> = mid.iter().zip(&rad).map(|(m, r)| m.abs() + r).collect();
            BoxParts { mid, rad, mag }
        })
    }

    /// [`InputSet::min_linear`] of every column of `a` (dimension x columns), sharing the set-up.
    pub fn min_linear_columns(&self, a: MatRef<'_, f64>) -> Vec<f64> {
        debug_assert_eq!(a.nrows(), self.dim());
        if self.norm == Norm::Linf && self.eps > 0.0 {
            // a^T mid - |a|^T rad over the bounding box, as two matrix-vector products.
            let BoxParts { mid, rad, mag } = self.box_parts();
            let g = gamma(2 * a.nrows() + 4);
            return (0..a.ncols())
                .map(|j| {
                    // One pass: the value a^T mid - |a|^T rad and the magnitude |a|^T (|mid| + rad).
                    let mut buf = Vec::new();
                    let (v, abs) = crate::linalg::box_support(crate::linalg::column(a, j, &mut buf), mid, rad, mag);
                    lower(v, g * abs)
                })
                .collect();
        }
        let mut buf = Vec::new();
        (0..a.ncols()).map(|j| self.min_linear(crate::linalg::column(a, j, &mut buf))).collect()
    }

    /// Lower bounds on min_X a_c^T x for the columns `cols` of `a` (dimension x columns), then on
    /// min_X -a_c^T x for the same columns: `2 cols.len()` values, as [`InputSet::min_linear`]
    /// gives them, without negated copies. For l_inf, over the bounding box mid ± rad: the first
    /// is s = a^T mid - |a|^T rad, the second -s - 2 |a|^T rad.
    pub fn min_linear_both_signs(&self, a: MatRef<'_, f64>, cols: &[usize]) -> Vec<f64> {
        debug_assert_eq!(a.nrows(), self.dim());
        let m = cols.len();
        let mut out = vec![0.0; 2 * m];
        let mut buf = Vec::new();
        if self.norm == Norm::Linf && self.eps > 0.0 {
            let BoxParts { mid, rad, mag } = self.box_parts();
            let n = a.nrows();
            // s is a sum of 2n terms (within gamma_{2n} M, M = |a|^T (|mid| + rad)), |a|^T rad
            // one of n (within gamma_n M, doubled exactly), and -s - 2 r rounds once (u times
            // at most 3 M): within gamma_{4n+3} M; with the rounding of mid and rad themselves
            // (u each, as in `min_linear_columns`) within gamma_{4n+8} M.
            let (g1, g2) = (gamma(2 * n + 4), gamma(4 * n + 8));
            for (k, &c) in cols.iter().enumerate() {
                let col = crate::linalg::column(a, c, &mut buf);
                let (s, abs) = crate::linalg::box_support(col, mid, rad, mag);
                let r = crate::linalg::abs_dot(col, rad);
                out[k] = lower(s, g1 * abs);
                out[m + k] = lower(-s - 2.0 * r, g2 * abs);
            }
            return out;
        }
        for (k, &c) in cols.iter().enumerate() {
            let col = crate::linalg::column(a, c, &mut buf).to_vec();
            out[k] = self.min_linear(&col);
            let neg: Vec<f64> = col.iter().map(|v| -v).collect();
            out[m + k] = self.min_linear(&neg);
        }
        out
    }

    /// [`InputSet::argmin_linear`] for every column of `a` (inputs x columns), the bounding box
    /// computed once for l_inf.
    pub fn argmin_linear_columns(&self, a: MatRef<'_, f64>) -> Mat<f64> {
        debug_assert_eq!(a.nrows(), self.dim());
        let mut x = Mat::<f64>::zeros(a.nrows(), a.ncols());
        let linf_box = (self.norm == Norm::Linf && self.eps > 0.0).then(|| self.bounding_box_ref());
        let mut buf = Vec::new();
        for j in 0..a.ncols() {
            let col = crate::linalg::column(a, j, &mut buf);
            let xs = match &linf_box {
                Some((lo, hi)) => box_corner(col, lo, hi, &self.center),
                None => self.argmin_linear(col),
            };
            x.col_as_slice_mut(j).copy_from_slice(&xs);
        }
        x
    }

    /// A point of X where a^T x is (nearly) minimal: the primal side of [`InputSet::min_linear`].
    ///
    /// Used only as a search direction (the gradient of a bound with respect to relaxation
    /// slopes), never as a bound: l_inf takes the corner of the bounding box, l2 without a box
    /// x_hat - eps a / ||a||, l2 with a box clip(x_hat - t a) at the time t the ray leaves the ball.
    pub fn argmin_linear(&self, a: &[f64]) -> Vec<f64> {
        debug_assert_eq!(a.len(), self.dim());
        let c = &self.center;
        let corner = |lo: &[f64], hi: &[f64]| box_corner(a, lo, hi, c);
        match (self.norm, &self.domain) {
            _ if self.eps == 0.0 => c.clone(),
            (Norm::Linf, _) => {
                let (lo, hi) = self.bounding_box_ref();
                corner(lo, hi)
            }
            (Norm::L2, None) => {
                let n = norm2(a);
                if n == 0.0 { c.clone() } else { c.iter().zip(a).map(|(ci, ai)| ci - self.eps * ai / n).collect() }
            }
            (Norm::L2, Some(d)) => {
                let neg_a: Vec<f64> = a.iter().map(|v| -v).collect();
                let t = ray_exit_time(c, &neg_a, &d.lo, &d.hi, self.eps);
                if t.is_infinite() {
                    corner(&d.lo, &d.hi)
                } else if t <= 0.0 || t.is_nan() {
                    c.clone()
                } else {
                    (0..c.len()).map(|i| (c[i] - t * a[i]).clamp(d.lo[i], d.hi[i])).collect()
                }
            }
        }
    }

    fn min_linear_l2_box(&self, a: &[f64], d: &Domain) -> f64 {
        let c = &self.center;
        // eps^2 rounded down: the Lagrangian's - lambda eps^2 / 2 only grows.
        let eps2 = (self.eps * self.eps).next_down().max(0.0);
        let box_min = || -> f64 {
            let (v, abs) = (0..a.len()).fold((0.0, 0.0), |(v, s), i| {
                let t = if a[i] >= 0.0 { a[i] * d.lo[i] } else { a[i] * d.hi[i] };
                (v + t, s + t.abs())
            });
            lower(v, gamma(a.len() + 2) * abs)
        };
        // The minimizer of the Lagrangian at lambda = 1/t is clip(c - t a): a ray in direction -a.
        let neg_a: Vec<f64> = a.iter().map(|v| -v).collect();
        let t_star = ray_exit_time(c, &neg_a, &d.lo, &d.hi, self.eps);
        if t_star.is_infinite() {
            // The box minimizer lies in the ball: lambda* = 0.
            return box_min();
        }
        if t_star <= 0.0 || t_star.is_nan() {
            return box_min().max(self.min_linear_l2_ball(a));
        }
        let lambda = 1.0 / t_star;
        // The dual function at lambda, evaluated at the computed minimizer x~ of the separable
        // Lagrangian: the rounding of the 2n + 1 terms (a few operations each), and the excess
        // L(x~) - L(x*), second order in |x~ - x*| <= 4 u (|c_i| + |a_i| / lambda) per coordinate.
        let g = |lambda: f64| -> f64 {
            let mut v = -0.5 * lambda * eps2;
            let (mut abs, mut second) = (v.abs(), 0.0);
            for i in 0..a.len() {
                let xi = (c[i] - a[i] / lambda).clamp(d.lo[i], d.hi[i]);
                let dx = xi - c[i];
                let (t1, t2) = (a[i] * xi, 0.5 * lambda * dx * dx);
                v += t1 + t2;
                abs += t1.abs() + t2;
                let e = 4.0 * UNIT_ROUNDOFF * (c[i].abs() + a[i].abs() / lambda);
                second += 2.0 * lambda * e * e;
            }
            lower(v, gamma(2 * a.len() + 12) * abs + 2.0 * second)
        };
        g(lambda).max(box_min()).max(self.min_linear_l2_ball(a))
    }
}

/// For the ray t -> clip(c + t d, lo, hi) (with lo <= c <= hi), the time t at which
/// ||clip(c + t d) - c||_2 reaches `radius`, or +inf if it never does.
///
/// Each coordinate moves linearly until it saturates at the box, so in u = t^2 the squared
/// distance is N(u) = sum_i min(u d_i^2, s_i^2) (s_i the offset to the face the coordinate hits):
/// piecewise linear, increasing and concave. Newton's method from u = 0 therefore increases
/// monotonically towards the crossing without passing it (the tangent of a concave function lies
/// above it) and stops after at most one step per breakpoint, in practice a handful of O(n)
/// passes: no sorting, no allocation.
fn ray_exit_time(c: &[f64], d: &[f64], lo: &[f64], hi: &[f64], radius: f64) -> f64 {
    let r2 = radius * radius;
    let offset = |i: usize| if d[i] > 0.0 { hi[i] - c[i] } else { lo[i] - c[i] };
    let total: f64 = (0..d.len()).filter(|&i| d[i] != 0.0).map(|i| offset(i) * offset(i)).sum();
    if total <= r2 {
        return f64::INFINITY;
    }
    let mut u = 0.0f64;
    for _ in 0..4 * d.len() + 8 {
        let (mut value, mut slope) = (0.0, 0.0);
        for i in 0..d.len() {
            let d2 = d[i] * d[i];
            if d2 == 0.0 {
                continue;
            }
            let s = offset(i);
            let s2 = s * s;
            if u * d2 < s2 {
                value += u * d2;
                slope += d2;
            } else {
                value += s2;
            }
        }
        if value >= r2 || slope == 0.0 {
            break;
        }
        let next = u + (r2 - value) / slope;
        if next <= u {
            break;
        }
        u = next;
    }
    u.sqrt()
}

/// A standard normal sample (Box-Muller), so that `rand` alone suffices.
pub(crate) fn gaussian<R: Rng + ?Sized>(rng: &mut R) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::dot;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn set(norm: Norm, eps: f64, with_box: bool) -> InputSet {
        let c = vec![0.1, 0.9, 0.5, 0.0, 1.0];
        let d = with_box.then(|| Domain::uniform(5, 0.0, 1.0).unwrap());
        InputSet::new(c, eps, norm, d).unwrap()
    }

    #[test]
    fn the_support_of_sparse_coefficients_needs_only_their_coordinates() {
        // a is zero outside `coords`: the minimum over X equals the minimum over X restricted to
        // coords (up to the two computations' rounding allowances), for every norm, with and
        // without the box, and the restricted set's minimizer extends by the centre.
        let mut rng = StdRng::seed_from_u64(3);
        for norm in [Norm::Linf, Norm::L2] {
            for with_box in [false, true] {
                for eps in [0.0, 0.05, 0.3, 2.0] {
                    let x = set(norm, eps, with_box);
                    for coords in [vec![0, 2], vec![1, 3, 4], vec![4], vec![0, 1, 2, 3, 4]] {
                        let mut a = vec![0.0; 5];
                        for &i in &coords {
                            a[i] = rand::Rng::random::<f64>(&mut rng) * 2.0 - 1.0;
                        }
                        let sub: Vec<f64> = coords.iter().map(|&i| a[i]).collect();
                        let full = x.min_linear(&a);
                        let restricted = x.restrict(&coords);
                        let part = restricted.min_linear(&sub);
                        assert!(
                            (full - part).abs() <= 1e-14,
                            "{norm:?} box {with_box} eps {eps} {coords:?}: {full} vs {part}"
                        );
                        let mut point = x.center().to_vec();
                        for (&i, v) in coords.iter().zip(restricted.argmin_linear(&sub)) {
                            point[i] = v;
                        }
                        assert!(x.contains(&point, 1e-12));
                        assert!(dot(&a, &point) >= full - 1e-12);
                    }
                }
            }
        }
    }

    #[test]
    fn the_batched_support_is_the_single_one_and_keeps_its_set_up() {
        // min_linear_columns (its set-up computed on the first call and kept) against min_linear
        // column by column: each a valid lower bound within a few ulps of the other, on every call,
        // and a clone or a deserialized copy (no set-up yet) equal to the set and giving the same.
        let mut rng = StdRng::seed_from_u64(5);
        let a = Mat::from_fn(5, 7, |_, _| rand::Rng::random::<f64>(&mut rng) * 2.0 - 1.0);
        for norm in [Norm::Linf, Norm::L2] {
            for with_box in [false, true] {
                let x = set(norm, 0.2, with_box);
                let single: Vec<f64> =
                    (0..7).map(|j| x.min_linear(&a.col(j).iter().copied().collect::<Vec<_>>())).collect();
                let first = x.min_linear_columns(a.as_ref());
                let copy: InputSet = serde_json::from_str(&serde_json::to_string(&x).unwrap()).unwrap();
                assert_eq!(copy, x);
                for again in [
                    x.min_linear_columns(a.as_ref()),
                    x.clone().min_linear_columns(a.as_ref()),
                    copy.min_linear_columns(a.as_ref()),
                ] {
                    assert_eq!(again, first, "{norm:?} box {with_box}");
                }
                for (b, s) in first.iter().zip(&single) {
                    assert!((b - s).abs() <= 1e-14, "{norm:?} box {with_box}: {b} vs {s}");
                }
            }
        }
    }

    #[test]
    fn both_signs_are_the_single_supports_of_the_columns_and_their_negations() {
        // min_linear_both_signs against min_linear on each listed column and on its negation:
        // within a few ulps, and below the value at the set's extreme point for that column
        // (the exact minimum for l_inf, a point of X for l2).
        let mut rng = StdRng::seed_from_u64(8);
        let a = Mat::from_fn(5, 6, |_, _| rand::Rng::random::<f64>(&mut rng) * 2.0 - 1.0);
        let cols = [4, 0, 2];
        for norm in [Norm::Linf, Norm::L2] {
            for with_box in [false, true] {
                for eps in [0.0, 0.2, 3.0] {
                    let x = set(norm, eps, with_box);
                    let both = x.min_linear_both_signs(a.as_ref(), &cols);
                    assert_eq!(both.len(), 6);
                    for (k, &c) in cols.iter().enumerate() {
                        let col: Vec<f64> = a.col(c).iter().copied().collect();
                        let neg: Vec<f64> = col.iter().map(|v| -v).collect();
                        for (got, a) in [(both[k], &col), (both[3 + k], &neg)] {
                            let want = x.min_linear(a);
                            let tol = 1e-14 * (1.0 + want.abs());
                            assert!((got - want).abs() <= tol, "{norm:?} box {with_box} eps {eps}: {got} vs {want}");
                            let at = dot(a, &x.argmin_linear(a));
                            assert!(got <= at + 1e-15 && at - got <= 1e-12, "{norm:?} {with_box} {eps}: {got} vs {at}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn the_batched_minimizers_are_the_single_ones() {
        // Columns with zeros (the centre's coordinate, clamped), signs of both kinds, a zero column.
        let a = Mat::from_fn(5, 4, |i, j| if (i + j) % 3 == 0 { 0.0 } else { (i as f64 - 2.0) * (j as f64 + 0.5) });
        for norm in [Norm::Linf, Norm::L2] {
            for with_box in [false, true] {
                for eps in [0.0, 0.05, 0.3, 2.0] {
                    let x = set(norm, eps, with_box);
                    let batch = x.argmin_linear_columns(a.as_ref());
                    for j in 0..a.ncols() {
                        let col: Vec<f64> = (0..a.nrows()).map(|i| a[(i, j)]).collect();
                        assert_eq!(
                            batch.col_as_slice(j),
                            x.argmin_linear(&col).as_slice(),
                            "{norm:?} {with_box} {eps}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn invalid_sets_are_errors() {
        assert!(matches!(InputSet::new(vec![0.0], -0.1, Norm::L2, None), Err(Error::InvalidRadius(_))));
        assert!(matches!(InputSet::new(vec![0.0], f64::NAN, Norm::L2, None), Err(Error::InvalidRadius(_))));
        assert!(matches!(
            InputSet::new(vec![2.0], 0.1, Norm::L2, Some(Domain::uniform(1, 0.0, 1.0).unwrap())),
            Err(Error::CenterOutsideDomain { index: 0, .. })
        ));
        assert!(matches!(Domain::uniform(2, 1.0, 0.0), Err(Error::InvalidDomain { .. })));
        assert!("l3".parse::<Norm>().is_err());
    }

    #[test]
    fn projection_is_feasible_and_closest() {
        let mut rng = StdRng::seed_from_u64(7);
        for norm in [Norm::L2, Norm::Linf] {
            for with_box in [false, true] {
                let s = set(norm, 0.3, with_box);
                for _ in 0..200 {
                    let y: Vec<f64> = (0..5).map(|_| rng.random::<f64>() * 3.0 - 1.0).collect();
                    let mut p = y.clone();
                    s.project(&mut p);
                    assert!(s.contains(&p, 0.0), "{norm:?} {with_box}: {p:?}");
                    let dp = norm2(&p.iter().zip(&y).map(|(a, b)| a - b).collect::<Vec<_>>());
                    // No sampled point of X is closer to y than the projection.
                    for _ in 0..50 {
                        let q = s.sample(&mut rng);
                        let dq = norm2(&q.iter().zip(&y).map(|(a, b)| a - b).collect::<Vec<_>>());
                        assert!(dp <= dq + 1e-9, "{norm:?} box {with_box}: {dp} > {dq}");
                    }
                }
            }
        }
    }

    #[test]
    fn l2_box_projection_satisfies_kkt() {
        // x = clip((y + lambda c)/(1 + lambda)) with ||x - c|| = eps for some lambda >= 0.
        let s = set(Norm::L2, 0.4, true);
        let y = vec![2.0, -1.0, 0.7, 0.6, 0.2];
        let mut p = y.clone();
        s.project(&mut p);
        assert!((s.distance(&p) - 0.4).abs() < 1e-11);
        let c = s.center();
        // Recover t from a coordinate that is not clipped: p_i = c_i + t (y_i - c_i).
        let t = (p[2] - c[2]) / (y[2] - c[2]);
        for i in 0..5 {
            let expect = (c[i] + t * (y[i] - c[i])).clamp(0.0, 1.0);
            assert!((p[i] - expect).abs() < 1e-12, "coord {i}");
        }
    }

    #[test]
    fn min_linear_is_a_tight_lower_bound() {
        let mut rng = StdRng::seed_from_u64(11);
        for norm in [Norm::L2, Norm::Linf] {
            for with_box in [false, true] {
                for eps in [0.0, 0.05, 0.3, 2.0] {
                    let s = set(norm, eps, with_box);
                    for _ in 0..50 {
                        let a: Vec<f64> = (0..5).map(|_| rng.random::<f64>() * 2.0 - 1.0).collect();
                        let lb = s.min_linear(&a);
                        // Lower bound: below a^T x at sampled points and at the projected minimizer.
                        let mut best = f64::INFINITY;
                        for _ in 0..300 {
                            best = best.min(dot(&a, &s.sample(&mut rng)));
                        }
                        // Tightness: the projection of c - T a for a huge T tends to the minimizer.
                        let mut x: Vec<f64> = s.center().iter().zip(&a).map(|(c, a)| c - 1e9 * a).collect();
                        s.project(&mut x);
                        let pgd = dot(&a, &x);
                        assert!(lb <= best + 1e-12, "{norm:?} {with_box} {eps}: {lb} > {best}");
                        assert!(lb <= pgd + 1e-12, "{norm:?} {with_box} {eps}: {lb} > {pgd}");
                        assert!(pgd - lb < 1e-6, "{norm:?} {with_box} {eps}: gap {}", pgd - lb);
                        // The primal point: inside X, and a^T x* matches the bound.
                        let xs = s.argmin_linear(&a);
                        assert!(s.contains(&xs, 1e-9), "{norm:?} {with_box} {eps}: argmin outside X");
                        assert!(
                            (dot(&a, &xs) - lb).abs() < 1e-6,
                            "{norm:?} {with_box} {eps}: argmin {}",
                            dot(&a, &xs) - lb
                        );
                    }
                }
            }
        }
    }
}
