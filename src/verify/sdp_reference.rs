//! The convex SDP relaxation (SDP-r with r = n + 1) of the quadratic formulation in
//! [`super::sdp`], solved by clarabel's PSD cone: a reference value to check SDP-FO and BM-r
//! against on small networks (feature `sdp-reference`, which links the system OpenBLAS).
//!
//! ```text
//! min <F, X>  s.t.  X_00 = 1,  <G_i, X> >= 0 (inequalities),  <H_j, X> = 0 (ReLU equalities),
//!                   tr(X) <= R^2,  X ⪰ 0
//! ```
//!
//! where F, G_i, H_j are the matrices of the objective and of each constraint term of the
//! Lagrangian (obtained from [`super::sdp::lagrangian_matrix`] with one multiplier at a time), so
//! the dual of this SDP is exactly max over (y >= 0, z, z0) of the bound of Proposition 3.1 with the
//! same R: its optimal value is the best bound any multiplier optimizer (SDP-FO, BM-r) can reach.
//! The value returned is clarabel's objective, not a certified bound.

use clarabel::algebra::CscMatrix;
use clarabel::solver::{DefaultSettingsBuilder, DefaultSolver, IPSolver, SolverStatus, SupportedConeT};
use faer::Mat;

use super::sdp::{Multipliers, Relaxation, flatten, lagrangian_matrix, unflatten};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::spec::InputSet;

/// The SDP's optimal value and the solver's status.
#[derive(Clone, Debug, PartialEq)]
pub struct ReferenceSdp {
    /// clarabel's primal objective.
    pub value: f64,
    /// clarabel's status (`Solved` when the value is to be trusted).
    pub status: String,
}

fn flat_len(m: &Multipliers) -> (usize, usize) {
    let n_eq: usize = m.relu.iter().map(Vec::len).sum();
    (flatten(m).len(), n_eq)
}

/// A multiplier set with a single entry (in flatten order: ball, coord, lower, upper, nonneg,
/// above, post, cut, relu) set to 1.
fn one_hot(like: &Multipliers, index: usize) -> Multipliers {
    let mut v = vec![0.0; flatten(like).len()];
    v[index] = 1.0;
    unflatten(&v, like)
}

/// Coefficients of <G, X> on the upper-triangle entries (column-major), X symmetric.
fn coefficients(g: &Mat<f64>) -> Vec<f64> {
    let n = g.nrows();
    let mut c = Vec::with_capacity(n * (n + 1) / 2);
    for col in 0..n {
        for row in 0..=col {
            c.push(if row == col { g[(row, col)] } else { g[(row, col)] + g[(col, row)] });
        }
    }
    c
}

/// Solves the SDP relaxation for phi\[target\] (small networks only: (n+1)(n+2)/2 variables).
pub fn reference_sdp(
    net: &Network,
    set: &InputSet,
    rel: &Relaxation,
    label: usize,
    target: usize,
) -> Result<ReferenceSdp> {
    let zero = {
        let mut m = Multipliers::initial(net, set, 0.0);
        m.ball = 0.0;
        m.coord.iter_mut().for_each(|v| *v = 0.0);
        m
    };
    let (f, _) = lagrangian_matrix(net, set, &rel.boxes, label, target, &zero)?;
    let n = f.nrows();
    if n > 130 {
        return Err(Error::Unsupported(format!("the reference SDP is for small networks; this one has n = {n}")));
    }
    let nv = n * (n + 1) / 2;
    let (total, n_eq) = flat_len(&zero);
    let n_ineq_mult = total - n_eq;
    let mut eq_rows: Vec<(Vec<f64>, f64)> = Vec::new();
    let mut ineq_rows: Vec<(Vec<f64>, f64)> = Vec::new();
    // X_00 = 1.
    let mut e00 = vec![0.0; nv];
    e00[0] = 1.0;
    eq_rows.push((e00, 1.0));
    for i in 0..total {
        let (m, _) = lagrangian_matrix(net, set, &rel.boxes, label, target, &one_hot(&zero, i))?;
        let g = Mat::from_fn(n, n, |a, b| m[(a, b)] - f[(a, b)]);
        let c = coefficients(&g);
        if c.iter().all(|v| *v == 0.0) {
            continue;
        }
        if i < n_ineq_mult {
            // Lagrangian term -y g: g(X) = <-G, X> >= 0, i.e. s = -c^T v >= 0 with A = c.
            ineq_rows.push((c, 0.0));
        } else {
            eq_rows.push((c, 0.0));
        }
    }
    // tr(X) <= R^2.
    let r2 = rel.r2;
    let mut tr = vec![0.0; nv];
    let mut idx = 0;
    for col in 0..n {
        for row in 0..=col {
            if row == col {
                tr[idx] = 1.0;
            }
            idx += 1;
        }
    }
    ineq_rows.push((tr, r2));
    // Assemble A (rows: equalities, inequalities, PSD block) and b.
    let (mut ti, mut tj, mut tv, mut b) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (row, rhs) in eq_rows.iter().chain(&ineq_rows) {
        let r = b.len();
        for (j, &v) in row.iter().enumerate() {
            if v != 0.0 {
                ti.push(r);
                tj.push(j);
                tv.push(v);
            }
        }
        b.push(*rhs);
    }
    let mut k = 0;
    for col in 0..n {
        for row in 0..=col {
            ti.push(b.len());
            tj.push(k);
            tv.push(if row == col { -1.0 } else { -std::f64::consts::SQRT_2 });
            b.push(0.0);
            k += 1;
        }
    }
    let a = CscMatrix::new_from_triplets(b.len(), nv, ti, tj, tv);
    let p = CscMatrix::zeros((nv, nv));
    let q = coefficients(&f);
    let cones = [
        SupportedConeT::ZeroConeT(eq_rows.len()),
        SupportedConeT::NonnegativeConeT(ineq_rows.len()),
        SupportedConeT::PSDTriangleConeT(n),
    ];
    // Tolerances of 1e-8: at 1e-9 the interior-point method stalls at `AlmostSolved` on a third of
    // the small test networks with some OpenBLAS builds (seen in CI, 2026-12); the comparisons
    // against it allow 1e-6.
    let settings = DefaultSettingsBuilder::default()
        .verbose(false)
        .max_iter(500)
        .tol_gap_abs(1e-8)
        .tol_gap_rel(1e-8)
        .tol_feas(1e-8)
        .direct_solve_method("faer".into())
        .build()
        .map_err(|e| Error::InvalidArgument(format!("clarabel settings: {e}")))?;
    let mut solver = DefaultSolver::new(&p, &q, &a, &b, &cones, settings)
        .map_err(|e| Error::InvalidArgument(format!("clarabel setup: {e}")))?;
    solver.solve();
    let status = solver.solution.status;
    Ok(ReferenceSdp {
        value: solver.solution.obj_val,
        status: if status == SolverStatus::Solved { "Solved".into() } else { format!("{status:?}") },
    })
}
