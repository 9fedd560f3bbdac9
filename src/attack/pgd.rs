//! Projected gradient descent on the margin (Madry et al.; the FGSM of 004_79c7a41c77cceb0d.txt
//! iterated), targeted, for l2 and l_inf balls intersected with the domain box.
//!
//! For each target c it minimizes m_c(x) = f(x)\[label\] - f(x)\[c\] over X by
//! x <- Proj_X(x - step * d), with d = sign(grad) for l_inf and d = grad / ||grad||_2 for l2, and a
//! cosine-decaying step. Restart 0 starts at the center, the others at random points of X. All
//! targets and restarts run as the columns of one batch, so each step is a matrix-matrix product.

use faer::Mat;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::linalg::norm2;
use crate::network::Network;
use crate::spec::{InputSet, Norm};

/// Settings of [`pgd`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PgdSettings {
    /// Gradient steps per restart (default 100).
    pub steps: usize,
    /// Number of starts: the center, a random point, the two far corners of X along the all-ones
    /// direction, then random points of X (default 3: the center, a random point, the upper corner).
    pub restarts: usize,
    /// Initial step as a fraction of eps; it decays to 0 along a cosine (default 0.25).
    pub step_fraction: f64,
    /// Seed of the random starts (default 0), so runs are reproducible.
    pub seed: u64,
    /// A wall-clock limit (None: none): once it has passed, the attack stops after the current
    /// step and reports the best points found so far (checked as always).
    #[serde(skip)]
    pub deadline: Option<std::time::Instant>,
}

impl Default for PgdSettings {
    fn default() -> Self {
        Self { steps: 100, restarts: 3, step_fraction: 0.25, seed: 0, deadline: None }
    }
}

/// The best point the attack found for one target.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttackResult {
    /// Target class c.
    pub target: usize,
    /// f(x)\[label\] - f(x)\[c\] at `input`, recomputed by a forward pass: an upper bound on phi\[c\].
    pub margin: f64,
    /// The input, which lies in X (checked).
    pub input: Vec<f64>,
}

/// The start of restart `r`: the center, a random point of X, the two far corners of X along the
/// all-ones direction (x = Proj_X(c + eps u) and Proj_X(c - eps u), u = (1, ..., 1) scaled to the
/// norm's unit sphere), then random points of X. (The random point comes before the corners so
/// that two restarts, BM-r's start, are what they were before the corners.)
///
/// The corners are there because gradient steps from the center can stay in the center's basin:
/// on VNN-COMP 2022's mnist_fc 256x6 prop_1_0.05 every one of 50 PGD starts from the center and
/// uniform points ends at margin +0.81, a single start at the upper corner reaches -0.90.
pub(crate) fn start_point(set: &InputSet, r: usize, rng: &mut StdRng) -> Vec<f64> {
    match r {
        0 => set.center().to_vec(),
        2 | 3 => {
            let n = set.dim().max(1) as f64;
            let step = match set.norm() {
                Norm::Linf => set.eps(),
                Norm::L2 => set.eps() / n.sqrt(),
            };
            let sign = if r == 2 { 1.0 } else { -1.0 };
            let mut x: Vec<f64> = set.center().iter().map(|c| c + sign * step).collect();
            set.project(&mut x);
            x
        }
        _ => set.sample(rng),
    }
}

/// Runs PGD for every target; one result per target, in order.
pub fn pgd(
    net: &Network,
    set: &InputSet,
    label: usize,
    targets: &[usize],
    settings: &PgdSettings,
) -> Result<Vec<AttackResult>> {
    net.check_input(set.center())?;
    net.check_label(label)?;
    for &t in targets {
        net.check_label(t)?;
    }
    if settings.restarts == 0 || !(settings.step_fraction.is_finite() && settings.step_fraction > 0.0) {
        return Err(Error::InvalidArgument("PGD needs restarts >= 1 and step_fraction > 0".into()));
    }
    let n = set.dim();
    let cols = targets.len() * settings.restarts;
    let pairs: Vec<(usize, usize)> = (0..cols).map(|j| (label, targets[j % targets.len().max(1)])).collect();
    let mut rng = StdRng::seed_from_u64(settings.seed);
    let mut x = Mat::<f64>::zeros(n, cols);
    for j in 0..cols {
        let start = start_point(set, j / targets.len().max(1), &mut rng);
        for i in 0..n {
            x[(i, j)] = start[i];
        }
    }
    let mut best: Vec<(f64, Vec<f64>)> = vec![(f64::INFINITY, Vec::new()); cols];
    let mut col = vec![0.0; n];
    let eps = set.eps();
    for step in 0..=settings.steps {
        let (values, grads) = net.margin_gradients_batch(x.as_ref(), &pairs);
        for j in 0..cols {
            if values[j] < best[j].0 {
                best[j] = (values[j], x.col(j).iter().copied().collect());
            }
        }
        if step == settings.steps || eps == 0.0 || settings.deadline.is_some_and(|d| std::time::Instant::now() >= d) {
            break;
        }
        let t = step as f64 / settings.steps as f64;
        let alpha = settings.step_fraction * eps * 0.5 * (1.0 + (std::f64::consts::PI * t).cos());
        for j in 0..cols {
            let g: Vec<f64> = grads.col(j).iter().copied().collect();
            let scale = match set.norm() {
                Norm::Linf => 1.0,
                Norm::L2 => {
                    let ng = norm2(&g);
                    if ng > 0.0 { 1.0 / ng } else { 0.0 }
                }
            };
            for i in 0..n {
                let d = match set.norm() {
                    Norm::Linf => g[i].signum() * (g[i] != 0.0) as u8 as f64,
                    Norm::L2 => g[i] * scale,
                };
                col[i] = x[(i, j)] - alpha * d;
            }
            set.project(&mut col);
            for i in 0..n {
                x[(i, j)] = col[i];
            }
        }
    }
    // Best over restarts, confirmed by a forward pass and a membership check.
    let mut out = Vec::with_capacity(targets.len());
    for (ti, &target) in targets.iter().enumerate() {
        let mut chosen: Option<AttackResult> = None;
        for r in 0..settings.restarts {
            let (_, input) = &best[r * targets.len() + ti];
            if input.is_empty() || !set.contains(input, 0.0) {
                continue;
            }
            let margin = net.margin(input, label, target)?;
            if chosen.as_ref().is_none_or(|c| margin < c.margin) {
                chosen = Some(AttackResult { target, margin, input: input.clone() });
            }
        }
        let result = match chosen {
            Some(c) => c,
            None => {
                AttackResult { target, margin: net.margin(set.center(), label, target)?, input: set.center().to_vec() }
            }
        };
        out.push(result);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::network::{Activation, Layer};
    use crate::spec::Domain;

    /// margin(x) = 0.5 + m - 10 relu(m - 0.8), m the mean of x in [0, 1]^20: rising from the
    /// center (m = 0.5, margin 1) in every direction that raises m, so descent from the center
    /// or from uniform points (m within ~0.2 of 0.5) ends at x = 0 (margin 0.5); negative only
    /// where m > 0.85, e.g. at the upper corner (margin -0.5).
    fn valley_network(n: usize) -> Network {
        let w1 = Mat::from_fn(2, n, |_, _| 1.0 / n as f64);
        let hidden = Layer::new(w1, vec![0.0, -0.8], Activation::Relu);
        let w2 = Mat::from_fn(2, 2, |i, j| match (i, j) {
            (0, 0) => 1.0,
            (0, 1) => -10.0,
            _ => 0.0,
        });
        let out = Layer::new(w2, vec![0.5, 0.0], Activation::Identity);
        Network::new(vec![n], vec![hidden, out]).unwrap()
    }

    #[test]
    fn the_corner_starts_reach_what_descent_from_the_center_cannot() {
        let n = 20;
        let net = valley_network(n);
        let set = InputSet::new(vec![0.5; n], 0.5, Norm::Linf, Some(Domain::uniform(n, 0.0, 1.0).unwrap())).unwrap();
        assert!((net.margin(set.center(), 0, 1).unwrap() - 1.0).abs() < 1e-12);
        // The center only: descent ends at the lower corner.
        let center_only = pgd(&net, &set, 0, &[1], &PgdSettings { restarts: 1, ..Default::default() }).unwrap();
        assert!((center_only[0].margin - 0.5).abs() < 1e-9, "{}", center_only[0].margin);
        // The default three starts (center, random, upper corner): the upper corner, margin -0.5.
        let r = pgd(&net, &set, 0, &[1], &PgdSettings::default()).unwrap();
        assert!((r[0].margin + 0.5).abs() < 1e-9, "{}", r[0].margin);
        assert!(set.contains(&r[0].input, 0.0));
        // The l2 corner: c + eps (1, ..., 1) / sqrt(n), inside the ball.
        let l2 = InputSet::new(vec![0.5; n], 0.5, Norm::L2, Some(Domain::uniform(n, 0.0, 1.0).unwrap())).unwrap();
        let mut rng = StdRng::seed_from_u64(0);
        let up = start_point(&l2, 2, &mut rng);
        assert!(l2.contains(&up, 1e-12));
        assert!((up[0] - (0.5 + 0.5 / (n as f64).sqrt())).abs() < 1e-12);
    }
}
