//! BM-r: sound against the exact phi, close to the convex SDP where it converges, and robust to
//! sabotage (a truncated solver only weakens the bound).

mod common;

use nncert::attack::{PgdSettings, pgd};
use nncert::verify::bm::Bm;
use nncert::verify::exact::Exact;
use nncert::verify::sdp::{BoundSource, Relaxation};
use nncert::{InputSet, Network};

fn cases() -> Vec<(Network, InputSet, usize)> {
    common::small_relu_cases(24)
}

#[test]
fn bm_is_sound_and_tight_on_small_networks() {
    let bm = Bm { feasibility: 1e-9, outer: 60, stop_when_positive: false, ..Bm::default() };
    let mut gaps = Vec::new();
    for (ci, (net, set, label)) in cases().iter().enumerate() {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let attack = pgd(net, set, *label, &[target], &PgdSettings::default()).unwrap();
        let r = bm.solve_target(net, set, &rel, *label, target).unwrap();
        let cert = r.certificate.expect("a proven bound");
        assert!(cert.bound <= exact.lower + 1e-9, "case {ci}: BM {} > exact {}", cert.bound, exact.lower);
        assert!(cert.bound <= attack[0].margin + 1e-9);
        assert!(cert.check(net, set).is_ok());
        eprintln!(
            "case {ci}: exact {:.5} BM {:.5} primal {:.5} infeas {:.1e} ranks {:?} iters {}",
            exact.upper, cert.bound, r.primal, r.infeasibility, r.rank_path, r.iterations
        );
        gaps.push(exact.upper - cert.bound);
    }
    gaps.sort_by(f64::total_cmp);
    let median = gaps[gaps.len() / 2];
    eprintln!("BM gap to exact: median {median:.2e}, max {:.2e}", gaps[gaps.len() - 1]);
    // Where the SDP relaxation is tight BM reaches it: the median gap to the exact phi is small.
    assert!(median < 1e-3, "BM median gap to exact {median}");
}

#[test]
fn sabotaged_bm_stays_sound() {
    let truncated = Bm { outer: 1, inner: 2, max_rank: 2, stop_when_positive: false, ..Bm::default() };
    for (ci, (net, set, label)) in cases().iter().enumerate().take(10) {
        let rel = Relaxation::new(net, set, BoundSource::CrownIbp).unwrap();
        let target = (label + 1) % 3;
        let exact = Exact::default().phi(net, set, *label, target).unwrap();
        let r = truncated.solve_target(net, set, &rel, *label, target).unwrap();
        if let Some(c) = r.certificate {
            assert!(c.bound <= exact.lower + 1e-9, "case {ci}: truncated BM {} > exact {}", c.bound, exact.lower);
            // Perturbed multipliers: the checker proves whatever they give, never more than phi.
            let mut m = c.multipliers.clone();
            m.relu.iter_mut().flatten().for_each(|v| *v *= 1.7);
            m.above.iter_mut().flatten().for_each(|v| *v += 0.3);
            if let Some((c2, _)) =
                nncert::verify::sdp::bound_from_multipliers(net, set, &rel, *label, target, &m).unwrap()
            {
                assert!(c2.bound <= exact.lower + 1e-9);
            }
        }
    }
}
