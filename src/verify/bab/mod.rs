//! Complete verification: branch and bound over a bounding method.
//!
//! The question is always whether some x in an input set X gives outputs y = f(x) that satisfy a
//! conjunction of linear constraints c_j^T y + d_j <= 0 (a disjunct of a VNN-LIB property; for
//! robustness, the single constraint f(x)\[label\] - f(x)\[c\] <= 0). A bound refutes the conjunction
//! on a part of X when one constraint's lower bound is > 0 there. Branch and bound cuts X into
//! parts until every part is refuted (`unsat`: proven), a point is found whose forward pass
//! satisfies the conjunction (`sat`: a counterexample, checked on the real network), or the
//! resources run out (`unknown`, never a wrong answer):
//!
//! * [`Branching::Relu`] ([`relu`]): a part is a set of ReLU split decisions, bounded by the
//!   backward relaxation with optimized slopes and split multipliers (beta-CROWN, [`relax`]),
//!   with intermediate bounds recomputed under the splits; the branching neuron by filtered smart
//!   branching. For networks with many inputs. When CROWN leaves the property open at the root,
//!   the root's intermediate bounds are first refined by small searches of the same kind, one per
//!   unstable neuron ([`refine`], [`Bab::refined_bounds`]), so that fewer neurons need splits.
//! * [`Branching::Input`] ([`input`]): a part is a sub-box of the input box, bounded by CROWN; for
//!   networks with few inputs (ACAS Xu), any activation.
//!
//! [`Bab`] is also a [`Verifier`] (`--method bab`): per target, the lower bound it returns is the
//! minimum over the parts of their proven bounds (> 0 when the target is proven), or the worst
//! open part's bound when it stops early. [`check_property_bab`] answers a VNN-LIB property.
//!
//! Completeness: with ReLU splitting a part without unstable neurons is an affine network on a
//! polyhedron, solved exactly as an LP ([`crate::bounds::lp::TriangleProgram`]); so given time and
//! memory every instance is answered, except where the answer hinges on a tie within the LP
//! solver's accuracy (reported as unknown).

pub mod input;
pub mod refine;
pub use refine::RefineStats;
pub mod relax;
pub mod relu;
pub mod sdp;

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::property::{PropertyResult, region_set};
use super::{BoundReport, Stats, Verifier};
use crate::bounds;
use crate::error::{Error, Result};
use crate::io::vnnlib::{OutputConstraint, Property};
use crate::network::{Activation, Network};
use crate::spec::{Domain, InputSet, Norm};

/// What the search splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Branching {
    /// Input splitting for at most [`Bab::input_split_max_dim`] inputs on l_inf (box) sets, ReLU
    /// splitting otherwise.
    Auto,
    /// ReLU splitting (ReLU hidden layers, affine last layer).
    Relu,
    /// Input splitting (bisect the input box).
    Input,
}

impl std::str::FromStr for Branching {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Branching::Auto),
            "relu" => Ok(Branching::Relu),
            "input" => Ok(Branching::Input),
            _ => Err(Error::InvalidArgument(format!("unknown branching '{s}' (auto, relu, input)"))),
        }
    }
}

/// Branch-and-bound settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Bab {
    /// Wall-clock limit in seconds for one query (a property, or all targets of one image);
    /// reaching it gives "unknown" / "timeout" (default 300).
    pub timeout: f64,
    /// The most open domains held in memory; more gives "unknown" (default 200_000).
    pub max_domains: usize,
    /// Domains split per round (each gives two children bounded together; default 64; input
    /// splitting takes 4x as many boxes).
    pub batch: usize,
    /// What to split (default [`Branching::Auto`]).
    pub branching: Branching,
    /// Inputs up to which [`Branching::Auto`] splits the input (default 10).
    pub input_split_max_dim: usize,
    /// Adam steps on the slopes and split multipliers per child (default 20).
    pub iterations: usize,
    /// Slope steps for the root's intermediate bounds and its constraints (default 100).
    pub root_iterations: usize,
    /// Convergence tolerance of the root's intermediate-bound ascent (default 1e-3): a batch of
    /// neuron bounds stops before `root_iterations` once none rose by more than this, relative,
    /// over the last 10 steps ([`crate::bounds::optimized::SlopeSettings::tolerance`]).
    pub root_tolerance: f64,
    /// Candidates tried per branching decision (filtered smart branching; default 8).
    pub fsb_candidates: usize,
    /// Hidden layers after a split whose intermediate bounds a child recomputes (default: all).
    pub refresh_layers: usize,
    /// Attack steps at the root (default 100): batched PGD (2 x 5 starts) on the disjuncts that are
    /// margins, sign-gradient descent (5 starts) on the others.
    pub attack_steps: usize,
    /// Every this many rounds, attack from the worst domains' relaxation minimizers (0: never;
    /// default 5).
    pub attack_every: usize,
    /// A progress line on standard error every few seconds (default false).
    pub progress: bool,
    /// The share of [`Bab::timeout`] that ReLU splitting may spend refining the root's
    /// intermediate bounds by branch and bound, one small search per unstable neuron (see
    /// [`refine`]; default 0.3, 0 turns it off). Only run when the root's CROWN bound leaves the
    /// property open.
    pub refine: f64,
    /// Domains each of those searches may bound in the first pass over the layers (default 1024;
    /// 4 times as many in each later pass). A neuron's search ends sooner when it proves the
    /// neuron stable or comes near a point's value ([`refine`]). Large budgets pay on deep
    /// networks: a layer's loose bounds make every layer after it loose and its searches slow (on
    /// VNN-COMP's mnist_fc 256x6 prop_13_0.05, 256 domains left 680 unstable neurons after 90 s,
    /// the fourth hidden layer still searching; 1024 left 116, every layer reached).
    pub refine_domains: usize,
    /// With a refinement to come, the share of [`Bab::timeout`] a VNN-LIB property's search
    /// first runs on alpha-CROWN's root bounds alone (default 0.1): what it answers there costs no
    /// refinement; the disjuncts it leaves open are searched again over the refined bounds
    /// ([`check_property_bab`]; 0: refine first, as `certify`'s per-target searches do).
    pub quick: f64,
    /// The share of [`Bab::timeout`] that ReLU splitting may spend bounding domains with BM-Full,
    /// the SDP relaxation on a domain's split-tightened bounds ([`sdp`]; default 0: off). Once the
    /// search has bounded [`Bab::sdp_after`] domains without an answer, BM-Full bounds the root,
    /// then in each round the open domains with the fewest splits (each once), while the share
    /// lasts. The search waits for it (it does not run beside it).
    #[serde(default)]
    pub sdp_share: f64,
    /// Domains the search bounds before BM-Full starts (default 1000): a property the beta-CROWN
    /// search settles quickly never pays for an SDP.
    #[serde(default = "default_sdp_after")]
    pub sdp_after: usize,
}

fn default_sdp_after() -> usize {
    1000
}

impl Default for Bab {
    fn default() -> Self {
        Self {
            timeout: 300.0,
            max_domains: 200_000,
            batch: 64,
            branching: Branching::Auto,
            input_split_max_dim: 10,
            iterations: 20,
            root_iterations: 100,
            root_tolerance: 1e-3,
            fsb_candidates: 8,
            refresh_layers: usize::MAX,
            attack_steps: 100,
            attack_every: 5,
            progress: false,
            refine: 0.3,
            refine_domains: 1024,
            quick: 0.1,
            sdp_share: 0.0,
            sdp_after: default_sdp_after(),
        }
    }
}

/// Why a search stopped without an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopReason {
    /// The wall-clock limit.
    Timeout,
    /// More open domains than [`Bab::max_domains`].
    DomainLimit,
    /// A domain that cannot be split further stayed open (a tie within the solver's accuracy).
    Stuck,
    /// A bound-tightening search (the root refinement's, [`refine`]) whose bound came within
    /// [`refine::GAP`] of the least value found at a point of X: more domains cannot raise it much.
    Converged,
}

/// The answer for one conjunction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Outcome {
    /// No point of X satisfies the conjunction; `bound` is a proven lower bound on
    /// min over X of max_j (c_j^T f(x) + d_j) (> 0 for non-strict constraints).
    Verified {
        /// The proven bound.
        bound: f64,
    },
    /// A point of X whose forward pass satisfies the conjunction.
    Falsified {
        /// The counterexample.
        input: Vec<f64>,
    },
    /// Neither, when the search stopped; `bound` is still a proven lower bound.
    Unknown {
        /// The proven bound.
        bound: f64,
        /// Why the search stopped.
        reason: StopReason,
    },
}

/// What a search cost.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SearchStats {
    /// Domains bounded.
    pub domains: usize,
    /// Domains without unstable neurons solved as LPs.
    pub leaves: usize,
    /// The most open domains at once.
    pub max_open: usize,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// The refinement of the root's intermediate bounds (zero when none ran; its domains are not
    /// counted in `domains`).
    pub refine: RefineStats,
    /// The domains bounded by BM-Full ([`Bab::sdp_share`]).
    #[serde(default)]
    pub sdp: SdpStats,
}

/// What BM-Full's bounding of domains did in one search ([`Bab::sdp_share`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SdpStats {
    /// Domains BM-Full bounded.
    pub domains: usize,
    /// Of those, the domains it refuted (beta-CROWN had left them open).
    pub refuted: usize,
    /// Wall-clock seconds it took.
    pub seconds: f64,
}

/// The deadline, the statistics and the progress line of one query.
pub(crate) struct Tracker {
    start: Instant,
    deadline: Instant,
    last: Instant,
    progress: bool,
    /// The most domains to bound (a refinement's search; usize::MAX otherwise).
    budget: usize,
    /// A refinement's bound-tightening search (None: an ordinary one): the least value of the
    /// constraint seen at a point of X so far. There such a point is not an answer but shows how
    /// far the bound can still rise; the search goes on until its bound is within [`refine::GAP`]
    /// of it (or the budget ends).
    pub(crate) incumbent: Option<f64>,
    pub(crate) stats: SearchStats,
    /// Every settled domain as a certificate's leaf, when recording a tree.
    pub(crate) leaves: Option<Vec<crate::certificate::Leaf>>,
}

impl Tracker {
    fn new(timeout: f64, progress: bool) -> Self {
        let start = Instant::now();
        let limit = crate::budget::duration(timeout);
        Self {
            start,
            deadline: start.checked_add(limit).unwrap_or(start + Duration::from_secs(1 << 40)),
            last: start,
            progress,
            budget: usize::MAX,
            incumbent: None,
            stats: SearchStats::default(),
            leaves: None,
        }
    }

    /// A silent tracker for a bound-tightening search ([`Tracker::incumbent`]) with a `deadline`
    /// that stops after `budget` bounded domains.
    fn bounding(deadline: Instant, budget: usize) -> Self {
        let start = Instant::now();
        Self {
            start,
            deadline,
            last: start,
            progress: false,
            budget,
            incumbent: Some(f64::INFINITY),
            stats: SearchStats::default(),
            leaves: None,
        }
    }

    /// Records a settled domain as a leaf (when recording).
    pub(crate) fn settle(&mut self, leaf: impl FnOnce() -> crate::certificate::Leaf) {
        if let Some(leaves) = &mut self.leaves {
            leaves.push(leaf());
        }
    }

    fn timed_out(&self) -> bool {
        Instant::now() >= self.deadline
    }

    /// The answer when a search loop must stop with `open` domains left, the worst of them
    /// bounded by `worst`, the closed ones by `settled` (`stuck`: one could not be decided):
    /// verified when none is open and none stuck, unknown on the deadline (first), when stuck, on
    /// the domain cap or (a bound-tightening search) converged; None to go on.
    /// Prints the progress line.
    fn stop(&mut self, open: usize, worst: f64, settled: f64, stuck: bool, max_domains: usize) -> Option<Outcome> {
        self.report(open, worst.min(settled));
        let bound = settled.min(worst);
        if open == 0 && !stuck {
            Some(Outcome::Verified { bound })
        } else if self.timed_out() {
            Some(Outcome::Unknown { bound, reason: StopReason::Timeout })
        } else if open == 0 {
            Some(Outcome::Unknown { bound, reason: StopReason::Stuck })
        } else if self.incumbent.is_some_and(|v| refine::converged(bound, v)) {
            Some(Outcome::Unknown { bound, reason: StopReason::Converged })
        } else if open > max_domains || self.stats.domains >= self.budget {
            Some(Outcome::Unknown { bound, reason: StopReason::DomainLimit })
        } else {
            None
        }
    }

    fn report(&mut self, open: usize, worst: f64) {
        if self.progress && self.last.elapsed().as_secs_f64() >= 5.0 {
            self.last = Instant::now();
            eprintln!(
                "bab: {} domains bounded, {} open, worst bound {:.5}, {:.1} s",
                self.stats.domains,
                open,
                worst,
                self.start.elapsed().as_secs_f64()
            );
        }
    }
}

/// The conjunction f(x)\[label\] - f(x)\[target\] <= 0: a point of the set satisfying it is a
/// counterexample to the margin's being positive.
fn margin_constraint(classes: usize, label: usize, target: usize) -> [OutputConstraint; 1] {
    let mut coeffs = vec![0.0; classes];
    coeffs[label] += 1.0;
    coeffs[target] -= 1.0;
    [OutputConstraint { coeffs, constant: 0.0, strict: false }]
}

/// Whether the hidden layers are ReLU and the last layer affine (what ReLU splitting and the
/// batched relaxation of [`relax`] handle).
pub(crate) fn relu_network(net: &Network) -> bool {
    let layers = net.layers();
    layers[..layers.len() - 1].iter().all(|l| l.activation() == Activation::Relu)
        && layers[layers.len() - 1].activation() == Activation::Identity
}

/// One conjunction on one input set.
pub(crate) struct Problem<'a> {
    pub(crate) net: &'a Network,
    pub(crate) set: &'a InputSet,
    pub(crate) constraints: &'a [OutputConstraint],
}

impl Problem<'_> {
    /// Whether lower bounds `values` on c_j^T f(x) + d_j prove that no point satisfies every
    /// constraint: one non-strict constraint bounded > 0, or a strict one bounded >= 0.
    pub(crate) fn refutes(&self, values: &[f64]) -> bool {
        values.iter().zip(self.constraints).any(|(v, c)| if c.strict { *v >= 0.0 } else { *v > 0.0 })
    }

    /// max_j (c_j^T y + d_j): the conjunction holds at outputs `y` when this is <= 0 (up to strict
    /// constraints), and lower bounds on its minimum over X are what a search proves.
    pub(crate) fn value(&self, y: &[f64]) -> f64 {
        self.constraints.iter().map(|c| c.value(y)).fold(f64::NEG_INFINITY, f64::max)
    }

    /// Whether outputs `y` satisfy every constraint.
    pub(crate) fn violated_by(&self, y: &[f64]) -> bool {
        self.constraints.iter().all(|c| c.holds(y))
    }

    /// Whether `x` is a counterexample of the real-number network: in the set, and every
    /// constraint holds beyond the forward pass's rounding ([`Network::forward_with_error`]).
    pub(crate) fn confirms(&self, x: &[f64]) -> bool {
        self.set.contains(x, 0.0)
            && self
                .net
                .forward_with_error(x)
                .is_ok_and(|(y, e)| self.constraints.iter().all(|c| c.surely_holds(&y, &e)))
    }
}

/// Gradient descent on the most violated constraint from `x` inside the set (sign steps for
/// l_inf, normalized for l2, each followed by the projection onto X; the step `first_step` times
/// the radius, decaying linearly); a point of X whose forward pass satisfies the conjunction, if
/// one is met.
pub(crate) fn attack_from(p: &Problem<'_>, mut x: Vec<f64>, steps: usize, first_step: f64) -> Result<Option<Vec<f64>>> {
    let set = p.set;
    set.project(&mut x);
    let radius = set.eps();
    for k in 0..=steps {
        let y = p.net.forward(&x)?;
        if p.violated_by(&y) && p.confirms(&x) {
            return Ok(Some(x));
        }
        if k == steps || p.constraints.is_empty() {
            break;
        }
        let (worst, _) = p
            .constraints
            .iter()
            .map(|c| c.value(&y))
            .enumerate()
            .fold((0, f64::NEG_INFINITY), |b, (i, v)| if v > b.1 { (i, v) } else { b });
        let (_, g) = p.net.spec_gradient(&x, &p.constraints[worst].coeffs)?;
        let step = radius * (first_step * (1.0 - k as f64 / steps as f64) + 0.01);
        match set.norm() {
            Norm::Linf => x.iter_mut().zip(&g).for_each(|(v, g)| *v -= step * g.signum()),
            Norm::L2 => {
                let n = crate::linalg::norm2(&g);
                if n > 0.0 {
                    x.iter_mut().zip(&g).for_each(|(v, g)| *v -= step * g / n);
                }
            }
        }
        set.project(&mut x);
    }
    Ok(None)
}

impl Bab {
    fn check(&self) -> Result<()> {
        if self.timeout.is_nan() || self.timeout < 0.0 || self.batch == 0 || self.max_domains == 0 {
            return Err(Error::InvalidArgument(format!(
                "branch and bound needs timeout >= 0, batch >= 1 and max_domains >= 1 (got {}, {}, {})",
                self.timeout, self.batch, self.max_domains
            )));
        }
        if [self.refine, self.sdp_share, self.quick].iter().any(|v| !(0.0..=1.0).contains(v)) {
            return Err(Error::InvalidArgument(format!(
                "refine, sdp_share and quick are shares of the time limit, in [0, 1] (got {}, {} and {})",
                self.refine, self.sdp_share, self.quick
            )));
        }
        if !(self.root_tolerance.is_finite() && self.root_tolerance >= 0.0) {
            return Err(Error::InvalidArgument(format!("root_tolerance must be >= 0, got {}", self.root_tolerance)));
        }
        Ok(())
    }

    /// alpha-CROWN's pre-activation bounds of a ReLU network over `set`, with the hidden layers
    /// after the first refined by branch and bound: one small search per unstable neuron, within
    /// `self.refine * self.timeout` seconds and [`Bab::refine_domains`] domains per search (see
    /// [`refine`]). What ReLU splitting starts from when CROWN
    /// leaves a property open; also a way to hand tighter bounds to the LP, SDP and BM bounds.
    ///
    /// ```
    /// use nncert::bounds::optimized::{optimized_bounds, SlopeSettings};
    /// use nncert::verify::bab::Bab;
    /// use nncert::{Activation, InputSet, Layer, Network, Norm};
    ///
    /// // z2 = relu(x) - relu(x) + 0.1 = 0.1 on [-1, 1]; the triangle relaxation of the two copies of
    /// // relu(x) puts z2's lower bound at -0.4 whatever the slopes, so z2's ReLU looks unstable.
    /// let l1 = Layer::from_rows(&[vec![1.0], vec![1.0]], vec![0.0, 0.0], Activation::Relu)?;
    /// let l2 = Layer::from_rows(&[vec![1.0, -1.0]], vec![0.1], Activation::Relu)?;
    /// let out = Layer::from_rows(&[vec![1.0], vec![-1.0]], vec![0.0, 0.0], Activation::Identity)?;
    /// let net = Network::new(vec![1], vec![l1, l2, out])?;
    /// let set = InputSet::new(vec![0.0], 1.0, Norm::Linf, None)?;
    /// let alpha = optimized_bounds(&net, &set, &SlopeSettings::default())?;
    /// let (refined, stats) = Bab { refine: 1.0, timeout: 10.0, ..Bab::default() }.refined_bounds(&net, &set)?;
    /// assert!(alpha.layers[1].lower[0] < -0.39);
    /// // Proven stable: the search's bound is > 0 (and, being sound, at most the minimum 0.1).
    /// assert!(refined.layers[1].lower[0] > 0.0 && refined.layers[1].lower[0] <= 0.1 + 1e-9);
    /// assert_eq!((stats.searches, stats.unstable_before, stats.unstable_after), (1, 1, 0));
    /// # Ok::<(), nncert::Error>(())
    /// ```
    pub fn refined_bounds(&self, net: &Network, set: &InputSet) -> Result<(bounds::PreActivationBounds, RefineStats)> {
        self.check()?;
        super::check_set(net, set)?;
        if !relu_network(net) {
            return Err(Error::Unsupported(
                "refined bounds split ReLUs: they need ReLU hidden layers and an affine last layer".into(),
            ));
        }
        let tracker = Tracker::new(self.timeout, self.progress);
        let mut pre = relu::root_bounds(net, set, self, tracker.deadline)?;
        let stats = refine::refine(net, set, self, &mut pre, self.refine * self.timeout, &tracker)?;
        Ok((pre, stats))
    }

    /// The ReLU search's root bounds: alpha-CROWN's ([`relu::root_bounds`]), refined by branch and
    /// bound ([`refine`]) when `open` says that CROWN's bound over them leaves the question open.
    fn root_bounds(
        &self,
        net: &Network,
        set: &InputSet,
        tracker: &mut Tracker,
        open: impl Fn(&bounds::PreActivationBounds) -> bool,
    ) -> Result<bounds::PreActivationBounds> {
        let mut pre = relu::root_bounds(net, set, self, tracker.deadline)?;
        if self.refines(net) && open(&pre) {
            self.refine_root(net, set, &mut pre, tracker)?;
        }
        Ok(pre)
    }

    /// Whether ReLU splitting on `net` refines its root bounds ([`Bab::refine`]).
    fn refines(&self, net: &Network) -> bool {
        self.refine > 0.0 && net.layers().len() > 2
    }

    /// [`refine`] on `pre`, its statistics added to the tracker's.
    fn refine_root(
        &self,
        net: &Network,
        set: &InputSet,
        pre: &mut bounds::PreActivationBounds,
        tracker: &mut Tracker,
    ) -> Result<()> {
        {
            let r = refine::refine(net, set, self, pre, self.refine * self.timeout, tracker)?;
            let t = &mut tracker.stats.refine;
            t.unstable_before += r.unstable_before;
            t.unstable_after += r.unstable_after;
            t.searches += r.searches;
            t.domains += r.domains;
            t.seconds += r.seconds;
            if self.progress {
                eprintln!(
                    "bab: root bounds refined by {} searches ({} domains) in {:.1} s: {} -> {} unstable neurons \
                     after the first layer",
                    r.searches, r.domains, r.seconds, r.unstable_before, r.unstable_after
                );
            }
        }
        Ok(())
    }

    /// The branching this network and set get: [`Branching::Auto`] resolved, and an error when
    /// ReLU splitting is asked of a network it does not apply to.
    pub fn branching_for(&self, net: &Network, set: &InputSet) -> Result<Branching> {
        let relu = relu_network(net);
        let few_inputs = net.input_size() <= self.input_split_max_dim && set.norm() == Norm::Linf;
        match self.branching {
            Branching::Input => Ok(Branching::Input),
            Branching::Auto if few_inputs || !relu => {
                if !relu && !few_inputs {
                    return Err(Error::Unsupported(format!(
                        "branch and bound splits ReLUs, and this network has other activations with {} inputs: use \
                         crown, alpha-crown or crc, or force input splitting (--branching input)",
                        net.input_size()
                    )));
                }
                Ok(Branching::Input)
            }
            Branching::Auto => Ok(Branching::Relu),
            Branching::Relu if !relu => Err(Error::Unsupported(
                "ReLU splitting needs ReLU hidden layers and an affine last layer: use input splitting \
                 (--branching input) or crown, alpha-crown or crc"
                    .into(),
            )),
            Branching::Relu => Ok(Branching::Relu),
        }
    }

    /// Branch and bound on one conjunction of output constraints c_j^T f(x) + d_j <= 0 (or < 0)
    /// over `set`: verified (no point of `set` satisfies them all), falsified (a counterexample,
    /// checked by a forward pass) or unknown, with what the search cost.
    pub fn solve_conjunction(
        &self,
        net: &Network,
        set: &InputSet,
        constraints: &[OutputConstraint],
    ) -> Result<(Outcome, SearchStats)> {
        self.check()?;
        super::check_set(net, set)?;
        if let Some(c) = constraints.iter().find(|c| c.coeffs.len() != net.num_classes()) {
            return Err(Error::InvalidArgument(format!(
                "a constraint has {} coefficients, the network {} outputs",
                c.coeffs.len(),
                net.num_classes()
            )));
        }
        if let Some(c) = constraints.iter().find(|c| !c.constant.is_finite() || c.coeffs.iter().any(|v| !v.is_finite()))
        {
            return Err(Error::InvalidArgument(format!("a constraint has a non-finite coefficient: {c:?}")));
        }
        let mut tracker = Tracker::new(self.timeout, self.progress);
        let p = Problem { net, set, constraints };
        let outcome = self.solve(&p, None, &mut tracker)?;
        tracker.stats.seconds = tracker.start.elapsed().as_secs_f64();
        Ok((outcome, tracker.stats))
    }

    /// Branch and bound on the margin f(x)\[label\] - f(x)\[target\] over `set`: verified means
    /// the margin is > 0 on the whole set (the bound is a proven lower bound on phi\[target\]),
    /// falsified gives an input of the set where it is <= 0.
    ///
    /// ```
    /// use nncert::verify::bab::{Bab, Outcome};
    /// use nncert::{Activation, InputSet, Layer, Network, Norm};
    ///
    /// // f(x)[0] - f(x)[1] = relu(x) - relu(x) + 0.1 = 0.1 on [-1, 1]; the triangle relaxation
    /// // alone gives -0.4.
    /// let hidden = Layer::from_rows(&[vec![1.0], vec![1.0]], vec![0.0, 0.0], Activation::Relu)?;
    /// let out = Layer::from_rows(&[vec![1.0, -1.0], vec![0.0, 0.0]], vec![0.1, 0.0], Activation::Identity)?;
    /// let net = Network::new(vec![1], vec![hidden, out])?;
    /// let set = InputSet::new(vec![0.0], 1.0, Norm::Linf, None)?;
    /// let (outcome, _) = Bab { branching: nncert::verify::bab::Branching::Relu, ..Bab::default() }
    ///     .solve_margin(&net, &set, 0, 1)?;
    /// let Outcome::Verified { bound } = outcome else { panic!("{outcome:?}") };
    /// assert!(bound > 0.0 && bound <= 0.1 + 1e-9);
    /// # Ok::<(), nncert::Error>(())
    /// ```
    pub fn solve_margin(
        &self,
        net: &Network,
        set: &InputSet,
        label: usize,
        target: usize,
    ) -> Result<(Outcome, SearchStats)> {
        super::check_query(net, set, label, &[target])?;
        if label == target {
            return Err(Error::InvalidArgument(format!("the target {target} is the label")));
        }
        self.solve_conjunction(net, set, &margin_constraint(net.num_classes(), label, target))
    }

    /// Branch and bound on one conjunction over `set`; `root` is the ReLU search's root bounds
    /// (computed here when None).
    fn solve(
        &self,
        p: &Problem<'_>,
        root: Option<&bounds::PreActivationBounds>,
        tracker: &mut Tracker,
    ) -> Result<Outcome> {
        if p.constraints.is_empty() {
            // No constraint: every point satisfies the conjunction.
            return Ok(Outcome::Falsified { input: p.set.center().to_vec() });
        }
        match self.branching_for(p.net, p.set)? {
            Branching::Input => input::search(p, self, tracker),
            _ => match root {
                Some(pre) => relu::search(p, pre, self, tracker),
                None => {
                    let pre = self.root_bounds(p.net, p.set, tracker, |pre| {
                        crown_score(p.net, p.set, pre, p.constraints) <= 0.0
                    })?;
                    relu::search(p, &pre, self, tracker)
                }
            },
        }
    }
}

/// A VNN-LIB answer with what it cost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PropertyReport {
    /// The answer.
    pub result: PropertyResult,
    /// Why the search stopped, when the answer is unknown.
    pub reason: Option<StopReason>,
    /// The statistics of every search, summed.
    pub stats: SearchStats,
}

/// Answers a VNN-LIB property by branch and bound: every region (input box ∩ `domain`) and every
/// disjunct of it is a search; `unsat` when all are verified, `sat` with the first confirmed
/// counterexample, otherwise `unknown` (or [`PropertyResult::Timeout`] when the clock ran out).
///
/// ```
/// use nncert::io::vnnlib_from_str;
/// use nncert::verify::bab::{Bab, check_property_bab};
/// use nncert::verify::property::PropertyResult;
/// use nncert::{Activation, Layer, Network};
///
/// // y0 - y1 = relu(x) - relu(x) + 0.1 = 0.1 on [-1, 1]: the violation y0 <= y1 is impossible,
/// // but the triangle relaxation relaxes the two copies of relu(x) independently (its bound is
/// // -0.4): it takes the splits at 0.
/// let hidden = Layer::from_rows(&[vec![1.0], vec![1.0]], vec![0.0, 0.0], Activation::Relu)?;
/// let out = Layer::from_rows(&[vec![1.0, -1.0], vec![0.0, 0.0]], vec![0.1, 0.0], Activation::Identity)?;
/// let net = Network::new(vec![1], vec![hidden, out])?;
/// let prop = vnnlib_from_str(
///     "(declare-const X_0 Real)(declare-const Y_0 Real)(declare-const Y_1 Real)
///      (assert (>= X_0 -1))(assert (<= X_0 1))(assert (<= Y_0 Y_1))",
/// )?;
/// let report = check_property_bab(&net, &prop, None, &Bab::default())?;
/// assert_eq!(report.result, PropertyResult::Unsat);
/// # Ok::<(), nncert::Error>(())
/// ```
pub fn check_property_bab(
    net: &Network,
    prop: &Property,
    domain: Option<&Domain>,
    settings: &Bab,
) -> Result<PropertyReport> {
    settings.check()?;
    super::property::check_shapes(net, prop)?;
    let mut tracker = Tracker::new(settings.timeout, settings.progress);
    let mut reason = None;
    for region in &prop.regions {
        let Some(set) = region_set(net, region, domain)? else {
            continue;
        };
        let branching = settings.branching_for(net, &set)?;
        let (lo, hi) = set.bounding_box();
        // The attack first: a confirmed counterexample settles the property.
        if let Some(x) = margin_attack(net, &set, &region.disjuncts, settings, &tracker)? {
            return Ok(found(net, x, tracker));
        }
        // Sign-gradient descent on the disjuncts the batched PGD did not attack.
        let others: Vec<Vec<OutputConstraint>> =
            region.disjuncts.iter().filter(|d| margin_pair(d).is_none()).cloned().collect();
        if let Some(x) = super::property::attack(net, &others, &lo, &hi, settings.attack_steps)? {
            return Ok(found(net, x, tracker));
        }
        let mut root = match branching {
            Branching::Relu => Some(relu::root_bounds(net, &set, settings, tracker.deadline)?),
            _ => None,
        };
        // Cheapest first (the root's CROWN bound, largest first), so that a hard disjunct that
        // runs out of time comes last.
        let mut order: Vec<usize> = (0..region.disjuncts.len()).collect();
        if let Some(pre) = &root {
            let key: Vec<f64> = region.disjuncts.iter().map(|d| crown_score(net, &set, pre, d)).collect();
            order.sort_by(|&a, &b| key[b].total_cmp(&key[a]));
        }
        // With a refinement to come, a quick search on alpha-CROWN's bounds first (Bab::quick),
        // then the refinement and the search again on what is left.
        let mut refine_next = root.is_some() && settings.refines(net);
        if refine_next && settings.quick == 0.0 {
            // Refine first, when some disjunct is open at the root.
            refine_next = false;
            if let Some(pre) = root.as_mut()
                && region.disjuncts.iter().any(|d| crown_score(net, &set, pre, d) <= 0.0)
            {
                settings.refine_root(net, &set, pre, &mut tracker)?;
            }
        }
        loop {
            let full = tracker.deadline;
            if refine_next {
                let quick = crate::budget::duration(settings.quick * settings.timeout);
                tracker.deadline = full.min(Instant::now().checked_add(quick).unwrap_or(full));
            }
            let mut left = Vec::new();
            reason = None;
            for (pos, &k) in order.iter().enumerate() {
                let p = Problem { net, set: &set, constraints: &region.disjuncts[k] };
                match settings.solve(&p, root.as_ref(), &mut tracker)? {
                    Outcome::Verified { .. } => {}
                    Outcome::Falsified { input } => return Ok(found(net, input, tracker)),
                    Outcome::Unknown { reason: r, .. } => {
                        reason = Some(r);
                        if r == StopReason::Timeout {
                            left.extend_from_slice(&order[pos..]);
                            break;
                        }
                        left.push(k);
                    }
                }
            }
            tracker.deadline = full;
            if left.is_empty() || !refine_next || tracker.timed_out() {
                break;
            }
            refine_next = false;
            if let Some(pre) = root.as_mut() {
                settings.refine_root(net, &set, pre, &mut tracker)?;
            }
            order = left;
        }
        if reason == Some(StopReason::Timeout) {
            break;
        }
    }
    tracker.stats.seconds = tracker.start.elapsed().as_secs_f64();
    let result = match reason {
        None => PropertyResult::Unsat,
        Some(StopReason::Timeout) => PropertyResult::Timeout,
        Some(_) => PropertyResult::Unknown,
    };
    Ok(PropertyReport { result, reason, stats: tracker.stats })
}

/// Batched PGD ([`crate::attack::pgd`], 2 x 5 starts) on the disjuncts that are margins
/// y\[a\] - y\[b\] <= 0 (robustness properties: some class scores at least the label's), grouped
/// by a; a point whose forward pass violates one of them, if found.
fn margin_attack(
    net: &Network,
    set: &InputSet,
    disjuncts: &[Vec<OutputConstraint>],
    settings: &Bab,
    tracker: &Tracker,
) -> Result<Option<Vec<f64>>> {
    if settings.attack_steps == 0 {
        return Ok(None);
    }
    // At most ATTACK_SHARE of the time limit (on a large network 2 x 5 starts of 100 steps take
    // longer than CROWN: ResNet-4B ~15-30 s).
    let budget = crate::budget::duration(ATTACK_SHARE * settings.timeout);
    let deadline = Some(tracker.deadline.min(Instant::now().checked_add(budget).unwrap_or(tracker.deadline)));
    let pairs: Vec<(usize, usize)> = disjuncts.iter().filter_map(|d| margin_pair(d)).collect();
    let mut labels: Vec<usize> = pairs.iter().map(|p| p.0).collect();
    labels.sort_unstable();
    labels.dedup();
    // Two step sizes (the whole radius, then a quarter of it, both decaying): a large first step
    // reaches corners a small one does not (measured on VNN-COMP's mnist_fc: margin -0.92 with a
    // first step of eps where 50 starts with eps / 4 end at +0.03).
    let runs = [
        crate::attack::PgdSettings { steps: settings.attack_steps, restarts: 5, step_fraction: 1.0, seed: 1, deadline },
        crate::attack::PgdSettings {
            steps: settings.attack_steps,
            restarts: 5,
            step_fraction: 0.25,
            seed: 2,
            deadline,
        },
    ];
    for (label, pgd) in labels.iter().flat_map(|l| runs.iter().map(move |r| (*l, r))) {
        let targets: Vec<usize> = pairs.iter().filter(|p| p.0 == label).map(|p| p.1).collect();
        for r in crate::attack::pgd(net, set, label, &targets, pgd)? {
            if r.margin <= 0.0 {
                let (y, e) = net.forward_with_error(&r.input)?;
                if disjuncts.iter().any(|d| d.iter().all(|c| c.surely_holds(&y, &e))) && set.contains(&r.input, 0.0) {
                    return Ok(Some(r.input));
                }
            }
        }
    }
    Ok(None)
}

/// The share of [`Bab::timeout`] that [`margin_attack`] may take.
const ATTACK_SHARE: f64 = 0.1;

/// The classes (label, target) when the conjunction is the single constraint
/// y\[label\] - y\[target\] <= 0 (a robustness margin), which [`margin_attack`] attacks.
fn margin_pair(d: &[OutputConstraint]) -> Option<(usize, usize)> {
    let [c] = d else { return None };
    if c.constant != 0.0 || c.strict {
        return None;
    }
    let pos: Vec<usize> = (0..c.coeffs.len()).filter(|&i| c.coeffs[i] == 1.0).collect();
    let neg: Vec<usize> = (0..c.coeffs.len()).filter(|&i| c.coeffs[i] == -1.0).collect();
    let zeros = c.coeffs.iter().filter(|v| **v == 0.0).count();
    (pos.len() == 1 && neg.len() == 1 && zeros + 2 == c.coeffs.len()).then(|| (pos[0], neg[0]))
}

/// The best CROWN bound among a conjunction's constraints over `pre`.
fn crown_score(net: &Network, set: &InputSet, pre: &bounds::PreActivationBounds, d: &[OutputConstraint]) -> f64 {
    if d.is_empty() {
        return f64::NEG_INFINITY;
    }
    let lam = faer::Mat::from_fn(net.num_classes(), d.len(), |i, j| d[j].coeffs[i]);
    let v = bounds::linear::spec_lower_bounds(net, set, pre, lam.as_ref(), bounds::linear::Slope::Adaptive);
    v.iter().zip(d).map(|(v, c)| v + c.constant).fold(f64::NEG_INFINITY, f64::max)
}

fn found(net: &Network, input: Vec<f64>, mut tracker: Tracker) -> PropertyReport {
    tracker.stats.seconds = tracker.start.elapsed().as_secs_f64();
    let output = net.forward_unchecked(&input);
    PropertyReport { result: PropertyResult::Sat { input, output }, reason: None, stats: tracker.stats }
}

impl Verifier for Bab {
    fn name(&self) -> &'static str {
        "bab"
    }

    /// alpha-CROWN's evidence for every bounded target, and for each target the report proves
    /// (bound > 0) the tree of a new search (recorded: its settled domains' branches; the
    /// checker bounds each leaf on its own region). ReLU networks only.
    fn evidence(
        &self,
        network: &Network,
        set: &InputSet,
        label: usize,
        report: &crate::certify::ImageReport,
    ) -> Result<Option<crate::certificate::Evidence>> {
        use crate::certificate::{Evidence, TargetEvidence};
        if !relu_network(network) {
            return Ok(None);
        }
        let targets = report.bounded_targets();
        let slopes = bounds::optimized::SlopeSettings::default();
        let mut evidence = Evidence::optimized(network, set, label, &targets, Some(&slopes), &slopes)?;
        for (t, proofs) in &mut evidence.targets {
            if !report.lower_bounds[*t].is_some_and(|b| b > 0.0) {
                continue;
            }
            let constraint = margin_constraint(network.num_classes(), label, *t);
            let p = Problem { net: network, set, constraints: &constraint };
            let mut tracker = Tracker::new(self.timeout, false);
            tracker.leaves = Some(Vec::new());
            // Without the root's refinement and BM-Full's bounding: the tree then stands on the
            // root intervals the certificate proves (alpha-CROWN's) and on multipliers alone.
            let plain = Bab { refine: 0.0, sdp_share: 0.0, ..self.clone() };
            if let Outcome::Verified { .. } = plain.solve(&p, None, &mut tracker)? {
                proofs.push(TargetEvidence::Tree(tracker.leaves.take().unwrap_or_default()));
            }
        }
        Ok(Some(evidence))
    }

    /// Per target, branch and bound on f(x)\[label\] - f(x)\[target\] <= 0 within the shared time
    /// limit; once a target is not proven (counterexample, timeout) the image cannot be robust
    /// and the remaining targets get CROWN's bound on the root's bounds (sound, and cheap).
    fn lower_bounds(&self, network: &Network, set: &InputSet, label: usize, targets: &[usize]) -> Result<BoundReport> {
        self.check()?;
        super::check_query(network, set, label, targets)?;
        let mut tracker = Tracker::new(self.timeout, self.progress);
        let branching = self.branching_for(network, set)?;
        let root = match branching {
            Branching::Relu => Some(self.root_bounds(network, set, &mut tracker, |pre| {
                bounds::margin_lower_bounds(network, set, pre, bounds::Propagation::Crown, label, targets)
                    .is_ok_and(|v| v.iter().any(|b| *b <= 0.0))
            })?),
            _ => None,
        };
        let pre = match &root {
            Some(pre) => pre.clone(),
            None => bounds::crown_and_ibp(network, set)?,
        };
        let crown = bounds::margin_lower_bounds(network, set, &pre, bounds::Propagation::Crown, label, targets)?;
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by(|&a, &b| crown[b].total_cmp(&crown[a]));
        let mut out: Vec<(usize, f64)> = targets.iter().copied().zip(crown.iter().copied()).collect();
        let mut open = true;
        let mut counterexample = None;
        let mut rng = StdRng::seed_from_u64(0);
        for k in order {
            if !open {
                break;
            }
            let constraint = margin_constraint(network.num_classes(), label, targets[k]);
            let p = Problem { net: network, set, constraints: &constraint };
            // A few starts of the attack before the search.
            let mut broken = None;
            for (start, first_step) in [1.0, 0.25, 0.25].into_iter().enumerate() {
                let x0 = if start == 0 { set.center().to_vec() } else { set.sample(&mut rng) };
                if let Some(x) = attack_from(&p, x0, self.attack_steps, first_step)? {
                    broken = Some(x);
                    break;
                }
            }
            let outcome = match broken {
                Some(input) => Outcome::Falsified { input },
                None => self.solve(&p, root.as_ref(), &mut tracker)?,
            };
            match outcome {
                Outcome::Verified { bound } => out[k].1 = out[k].1.max(bound),
                Outcome::Falsified { input } => {
                    open = false;
                    let margin = network.margin(&input, label, targets[k])?;
                    counterexample = Some(crate::certify::Counterexample { target: targets[k], margin, input });
                }
                Outcome::Unknown { bound, .. } => {
                    out[k].1 = out[k].1.max(bound);
                    open = false;
                }
            }
        }
        Ok(BoundReport {
            bounds: out,
            stats: Stats {
                seconds: tracker.start.elapsed().as_secs_f64(),
                unstable_neurons: Some(pre.unstable_neurons()),
                lp: None,
                certified_radius: None,
                bm: None,
            },
            counterexample,
        })
    }
}
