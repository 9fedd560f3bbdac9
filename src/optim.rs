//! A small projected L-BFGS for minimizing a smooth function over {x : x_i >= 0 for i < n_bounded}
//! (the first entries bounded below by zero, the rest free), used by SDP-FO's ascent on the
//! multipliers (where the bounded entries are the inequality multipliers y >= 0).
//!
//! The function may be undefined at some points (`None`: for SDP-FO, a Lagrangian whose
//! quadratic part is not positive definite); the line search treats them as +inf and backtracks.
//! Each iteration: the two-loop recursion (memory `memory`) on the free variables (the bounded
//! variables at zero whose gradient pushes them outwards are held fixed), a projected
//! backtracking line search with an Armijo condition on the projected step, and the curvature
//! pair kept only when s^T y > 0. This is the projected quasi-Newton scheme of Bertsekas (1982)
//! in its simplest form: enough for a concave dual function with simple bounds.

use std::time::Instant;

/// Settings of [`minimize`].
#[derive(Clone, Debug, PartialEq)]
pub struct Lbfgs {
    /// Iterations (each one gradient plus line-search evaluations).
    pub iterations: usize,
    /// Curvature pairs kept.
    pub memory: usize,
    /// Size of the first step in the max norm (the first direction is the gradient).
    pub first_step: f64,
    /// Stop when the projected gradient's max norm falls below this.
    pub tolerance: f64,
    /// Wall-clock deadline.
    pub deadline: Option<Instant>,
}

/// The outcome of [`minimize`].
#[derive(Clone, Debug, PartialEq)]
pub struct Minimized {
    /// The best point found (feasible and with a defined value).
    pub x: Vec<f64>,
    /// Its value.
    pub value: f64,
    /// Iterations taken.
    pub iterations: usize,
    /// Function evaluations.
    pub evaluations: usize,
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Minimizes `f` from `x0` (projected onto the bounds first). `f(x)` returns the value and the
/// gradient, or None where f is undefined. `observe(iteration, value)` is called after every
/// accepted step and may stop the run by returning false. Returns None when `f(x0)` is undefined.
pub fn minimize(
    settings: &Lbfgs,
    x0: &[f64],
    n_bounded: usize,
    mut f: impl FnMut(&[f64]) -> Option<(f64, Vec<f64>)>,
    mut observe: impl FnMut(usize, f64) -> bool,
) -> Option<Minimized> {
    let project = |x: &mut [f64]| x[..n_bounded].iter_mut().for_each(|v| *v = v.max(0.0));
    let mut x = x0.to_vec();
    project(&mut x);
    let (mut fx, mut g) = f(&x)?;
    let mut evaluations = 1;
    let mut pairs: Vec<(Vec<f64>, Vec<f64>, f64)> = Vec::new();
    let mut iterations = 0;
    for it in 0..settings.iterations {
        if settings.deadline.is_some_and(|d| Instant::now() > d) {
            break;
        }
        // Variables held at their bound: at zero with the gradient pushing outwards.
        let held: Vec<bool> = (0..x.len()).map(|i| i < n_bounded && x[i] <= 0.0 && g[i] > 0.0).collect();
        let pg_max = g.iter().zip(&held).filter(|(_, h)| !**h).map(|(v, _)| v.abs()).fold(0.0, f64::max);
        if !pg_max.is_finite() || pg_max <= settings.tolerance {
            break;
        }
        let mut d: Vec<f64> = g.iter().zip(&held).map(|(v, h)| if *h { 0.0 } else { *v }).collect();
        let mut alphas = Vec::with_capacity(pairs.len());
        for (s, y, rho) in pairs.iter().rev() {
            let a = rho * dot(s, &d);
            d.iter_mut().zip(y).for_each(|(di, yi)| *di -= a * yi);
            alphas.push(a);
        }
        if let Some((s, y, _)) = pairs.last() {
            let scale = dot(s, y) / dot(y, y);
            d.iter_mut().for_each(|v| *v *= scale);
        }
        for ((s, y, rho), a) in pairs.iter().zip(alphas.iter().rev()) {
            let b = rho * dot(y, &d);
            d.iter_mut().zip(s).for_each(|(di, si)| *di += (a - b) * si);
        }
        d.iter_mut().zip(&held).for_each(|(v, h)| {
            *v = if *h { 0.0 } else { -*v };
        });
        if dot(&d, &g) >= 0.0 {
            // Not a descent direction: restart from the (free) negative gradient.
            pairs.clear();
            d = g.iter().zip(&held).map(|(v, h)| if *h { 0.0 } else { -*v }).collect();
        }
        let mut step = if pairs.is_empty() {
            let dmax = d.iter().fold(0.0f64, |m, v| m.max(v.abs()));
            (settings.first_step / dmax.max(f64::MIN_POSITIVE)).min(1.0)
        } else {
            1.0
        };
        let mut accepted = None;
        for _ in 0..40 {
            let mut trial: Vec<f64> = x.iter().zip(&d).map(|(a, b)| a + step * b).collect();
            project(&mut trial);
            evaluations += 1;
            if let Some((ft, gt)) = f(&trial) {
                let decrease: f64 = g.iter().zip(trial.iter().zip(&x)).map(|(gi, (t, xi))| gi * (t - xi)).sum();
                if ft.is_finite() && ft <= fx + 1e-4 * decrease.min(0.0) && ft <= fx {
                    accepted = Some((trial, ft, gt));
                    break;
                }
            }
            step *= 0.5;
        }
        let Some((xn, fnew, gn)) = accepted else { break };
        let s: Vec<f64> = xn.iter().zip(&x).map(|(a, b)| a - b).collect();
        let y: Vec<f64> = gn.iter().zip(&g).map(|(a, b)| a - b).collect();
        let sy = dot(&s, &y);
        if sy > 1e-12 * dot(&s, &s).sqrt() * dot(&y, &y).sqrt() && sy > 0.0 {
            pairs.push((s, y, 1.0 / sy));
            if pairs.len() > settings.memory {
                pairs.remove(0);
            }
        }
        x = xn;
        fx = fnew;
        g = gn;
        iterations = it + 1;
        if !observe(iterations, fx) {
            break;
        }
    }
    Some(Minimized { x, value: fx, iterations, evaluations })
}
