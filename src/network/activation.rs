//! Element-wise activation functions, their derivatives and the constants the verifiers need.

use serde::{Deserialize, Serialize};

/// An element-wise activation applied after an affine layer.
///
/// All of them are monotone non-decreasing, which interval bound propagation relies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// max(0, z).
    Relu,
    /// 1 / (1 + exp(-z)).
    Sigmoid,
    /// tanh(z).
    Tanh,
    /// ln(1 + exp(z)).
    Softplus,
    /// z (written "none" in the JSON model format).
    #[serde(rename = "none", alias = "identity", alias = "linear")]
    Identity,
}

impl Activation {
    /// Parse the name used in the JSON model format ("relu", "sigmoid", "tanh", "softplus", "none").
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "relu" => Some(Self::Relu),
            "sigmoid" => Some(Self::Sigmoid),
            "tanh" => Some(Self::Tanh),
            "softplus" => Some(Self::Softplus),
            "none" | "identity" | "linear" => Some(Self::Identity),
            _ => None,
        }
    }

    /// The name used in the JSON model format.
    pub fn name(self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::Sigmoid => "sigmoid",
            Self::Tanh => "tanh",
            Self::Softplus => "softplus",
            Self::Identity => "none",
        }
    }

    /// sigma(z).
    #[inline]
    pub fn eval(self, z: f64) -> f64 {
        match self {
            Self::Relu => z.max(0.0),
            Self::Sigmoid => sigmoid(z),
            Self::Tanh => z.tanh(),
            Self::Softplus => softplus(z),
            Self::Identity => z,
        }
    }

    /// sigma'(z) (for ReLU, 0 at z <= 0 and 1 at z > 0, the subgradient PyTorch uses).
    #[inline]
    pub fn derivative(self, z: f64) -> f64 {
        match self {
            Self::Relu => {
                if z > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            Self::Sigmoid => {
                let s = sigmoid(z);
                s * (1.0 - s)
            }
            Self::Tanh => {
                let t = z.tanh();
                1.0 - t * t
            }
            Self::Softplus => sigmoid(z),
            Self::Identity => 1.0,
        }
    }

    /// sigma'(z) given z and a = sigma(z), reusing a where that avoids a transcendental call.
    #[inline]
    pub fn derivative_at(self, z: f64, a: f64) -> f64 {
        match self {
            Self::Sigmoid => a * (1.0 - a),
            Self::Tanh => 1.0 - a * a,
            _ => self.derivative(z),
        }
    }

    /// sigma''(z) (0 for ReLU away from its kink and for the identity).
    #[inline]
    pub fn second_derivative(self, z: f64) -> f64 {
        match self {
            Self::Relu | Self::Identity => 0.0,
            Self::Sigmoid => {
                let s = sigmoid(z);
                s * (1.0 - s) * (1.0 - 2.0 * s)
            }
            Self::Tanh => {
                let t = z.tanh();
                -2.0 * t * (1.0 - t * t)
            }
            Self::Softplus => {
                let s = sigmoid(z);
                s * (1.0 - s)
            }
        }
    }

    /// The global constants of the curvature bounds (CRC paper, 003_695cd43508ad1041.txt, Theorem 3
    /// and 4, Appendix E): sup |sigma'|, sup |sigma''|, inf sigma'' and sup sigma''. None for ReLU
    /// (not twice differentiable). Computed, not typed in: sigma' and sigma'' are evaluated on a
    /// grid of step 1e-3 over \[-40, 40\] (outside it every |sigma''| < 1e-17 and sigma' is monotone),
    /// each extremum is refined by golden-section search, and the result is widened by a relative
    /// 1e-9 plus 1e-15, which covers the refinement's error (the functions are smooth with bounded
    /// third derivatives, so the error of a located maximum is quadratic in the location error).
    pub fn curvature_constants(self) -> Option<CurvatureConstants> {
        match self {
            Self::Relu => None,
            Self::Identity => Some(CurvatureConstants { g: 1.0, h: 0.0, h_lower: 0.0, h_upper: 0.0 }),
            _ => {
                let widen = |v: f64| v.abs() * (1.0 + 1e-9) + 1e-15;
                let sup = |f: &dyn Fn(f64) -> f64| -> f64 {
                    let (mut best, mut at) = (f64::NEG_INFINITY, 0.0);
                    let mut z = -40.0;
                    while z <= 40.0 {
                        let v = f(z);
                        if v > best {
                            best = v;
                            at = z;
                        }
                        z += 1e-3;
                    }
                    let (mut a, mut b) = (at - 2e-3, at + 2e-3);
                    let r = 0.5 * (5f64.sqrt() - 1.0);
                    for _ in 0..80 {
                        let (c, d) = (b - r * (b - a), a + r * (b - a));
                        if f(c) > f(d) { b = d } else { a = c }
                    }
                    best.max(f(0.5 * (a + b)))
                };
                let g = widen(sup(&|z| self.derivative(z).abs()));
                let h_upper = sup(&|z| self.second_derivative(z));
                let h_lower = -sup(&|z| -self.second_derivative(z));
                let h_upper = if h_upper >= 0.0 { widen(h_upper) } else { h_upper };
                let h_lower = if h_lower <= 0.0 { -widen(h_lower) } else { h_lower };
                Some(CurvatureConstants { g, h: h_upper.abs().max(h_lower.abs()), h_lower, h_upper })
            }
        }
    }

    /// The points of (lo, hi) where sigma'(z) = slope, i.e. the only interior candidates for the
    /// extrema of sigma(z) - slope * z on \[lo, hi\]. Used to compute exact offsets of linear bounds
    /// (see `bounds::linear`). Empty for ReLU and the identity, whose extrema are at the ends or
    /// at the kink z = 0, which is returned for ReLU.
    pub fn stationary_points(self, slope: f64, lo: f64, hi: f64) -> Vec<f64> {
        let mut pts = Vec::with_capacity(2);
        match self {
            Self::Relu => pts.push(0.0),
            Self::Identity => {}
            Self::Sigmoid => {
                // s(1-s) = slope  =>  s = (1 +- sqrt(1 - 4 slope)) / 2, z = logit(s).
                if slope > 0.0 && slope < 0.25 {
                    let r = (1.0 - 4.0 * slope).sqrt();
                    for s in [(1.0 - r) / 2.0, (1.0 + r) / 2.0] {
                        if s > 0.0 && s < 1.0 {
                            pts.push((s / (1.0 - s)).ln());
                        }
                    }
                } else if slope == 0.25 {
                    pts.push(0.0);
                }
            }
            Self::Tanh => {
                // 1 - t^2 = slope  =>  t = +- sqrt(1 - slope), z = atanh(t).
                if slope > 0.0 && slope < 1.0 {
                    let t = (1.0 - slope).sqrt();
                    if t < 1.0 {
                        pts.push(t.atanh());
                        pts.push(-t.atanh());
                    }
                } else if slope == 1.0 {
                    pts.push(0.0);
                }
            }
            Self::Softplus => {
                // sigmoid(z) = slope  =>  z = logit(slope).
                if slope > 0.0 && slope < 1.0 {
                    pts.push((slope / (1.0 - slope)).ln());
                }
            }
        }
        pts.retain(|&z| z > lo && z < hi && z.is_finite());
        pts
    }
}

/// Global bounds on an activation's derivatives: |sigma'| <= g, |sigma''| <= h and
/// h_lower <= sigma'' <= h_upper everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct CurvatureConstants {
    /// sup |sigma'|.
    pub g: f64,
    /// sup |sigma''|.
    pub h: f64,
    /// inf sigma'' (<= 0 for the activations here).
    pub h_lower: f64,
    /// sup sigma'' (>= 0).
    pub h_upper: f64,
}

/// Numerically stable logistic function.
#[inline]
pub fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Numerically stable softplus ln(1 + e^z).
#[inline]
pub fn softplus(z: f64) -> f64 {
    if z > 0.0 { z + (-z).exp().ln_1p() } else { z.exp().ln_1p() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derivatives_match_finite_differences() {
        for act in [Activation::Sigmoid, Activation::Tanh, Activation::Softplus, Activation::Identity] {
            for &z in &[-7.0, -1.3, -0.2, 0.4, 2.5, 9.0] {
                let h = 1e-6;
                let fd = (act.eval(z + h) - act.eval(z - h)) / (2.0 * h);
                assert!((fd - act.derivative(z)).abs() < 1e-8, "{act:?} at {z}: {fd} vs {}", act.derivative(z));
            }
        }
    }

    #[test]
    fn stationary_points_have_the_requested_slope() {
        for act in [Activation::Sigmoid, Activation::Tanh, Activation::Softplus] {
            for &slope in &[0.01, 0.1, 0.2, 0.24] {
                let pts = act.stationary_points(slope, -50.0, 50.0);
                assert!(!pts.is_empty(), "{act:?} slope {slope}");
                for z in pts {
                    assert!((act.derivative(z) - slope).abs() < 1e-12, "{act:?} {slope} {z}");
                }
            }
        }
        assert_eq!(Activation::Sigmoid.stationary_points(0.3, -5.0, 5.0), Vec::<f64>::new());
    }

    #[test]
    fn stable_formulas_at_extremes() {
        assert_eq!(sigmoid(-1000.0), 0.0);
        assert_eq!(sigmoid(1000.0), 1.0);
        assert_eq!(softplus(1000.0), 1000.0);
        assert!(softplus(-1000.0) >= 0.0);
        assert_eq!(Activation::from_name("none"), Some(Activation::Identity));
        assert_eq!(Activation::from_name("gelu"), None);
    }
}
