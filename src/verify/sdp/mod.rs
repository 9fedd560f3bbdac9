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

mod lagrangian;
mod multipliers;
mod operator;
mod relaxation;
mod spectral;

pub use super::sdp_fo::SdpFo;
pub(crate) use lagrangian::*;
pub use lagrangian::{lagrangian_matrix, proven_r2};
pub use multipliers::Multipliers;
pub(crate) use multipliers::*;
pub use operator::SlackOperator;
pub use relaxation::{BoundSource, HiddenBoxes, Relaxation};
pub use spectral::{Certificate, SpectralBound, bound_from_multipliers, certified_bound};
