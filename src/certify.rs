//! Certify one image or a data set: the attack first, then a verifier on every open target.

pub mod shard;

use std::time::Instant;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::attack::{PgdSettings, pgd};
use crate::error::{Error, Result};
use crate::network::{Network, argmax};
use crate::spec::InputSet;
use crate::verify::Verifier;

/// The answer for one input.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every lower bound on phi\[c\], c != label, is > 0: no input of X changes the class.
    Robust,
    /// The attack found an input of X (confirmed by a forward pass) with a negative margin.
    NotRobust,
    /// Neither proven nor refuted.
    Unknown,
    /// The center itself is not classified as the label.
    Misclassified,
}

impl Verdict {
    /// "robust", "not_robust", "unknown" or "misclassified".
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Robust => "robust",
            Verdict::NotRobust => "not_robust",
            Verdict::Unknown => "unknown",
            Verdict::Misclassified => "misclassified",
        }
    }
}

/// An input of X whose margin against `target` is negative.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Counterexample {
    /// The class that beats the label.
    pub target: usize,
    /// f(x)\[label\] - f(x)\[target\] < 0.
    pub margin: f64,
    /// x, inside X.
    pub input: Vec<f64>,
}

/// Options of [`certify`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CertifyOptions {
    /// Run PGD first (default: yes, with default settings). Targets it breaks are not verified
    /// unless `all_targets` is set.
    pub attack: Option<PgdSettings>,
    /// Compute every target's lower bound even when the verdict is already known.
    pub all_targets: bool,
}

impl Default for CertifyOptions {
    fn default() -> Self {
        Self { attack: Some(PgdSettings::default()), all_targets: false }
    }
}

/// The result for one input.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageReport {
    /// The label.
    pub label: usize,
    /// argmax f(center).
    pub predicted: usize,
    /// The verdict.
    pub verdict: Verdict,
    /// Lower bound on phi\[c\] per class c (None for the label and for targets not computed).
    pub lower_bounds: Vec<Option<f64>>,
    /// PGD's margin per class c, an upper bound on phi\[c\] (None for the label or without attack).
    pub upper_bounds: Vec<Option<f64>>,
    /// The attack's best counterexample, when the verdict is `NotRobust`.
    pub counterexample: Option<Counterexample>,
    /// Wall-clock seconds for this input.
    pub seconds: f64,
    /// The proven l2 radius within which the label wins (CRC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certified_radius: Option<f64>,
    /// What BM-r did per target it solved (BM methods only; [`crate::verify::bm::BmTarget`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bm: Option<Vec<crate::verify::bm::BmTarget>>,
}

impl ImageReport {
    /// The targets with a lower bound, in class order.
    pub fn bounded_targets(&self) -> Vec<usize> {
        (0..self.lower_bounds.len()).filter(|&c| c != self.label && self.lower_bounds[c].is_some()).collect()
    }
}

/// The certificate of one input's report ([`crate::certificate`]): the counterexample of a
/// `not_robust` verdict, else the bounds of the verifier's evidence (None for a misclassified
/// center, a method that writes no certificates or no verifier (the attack alone, whose
/// counterexamples are named "pgd"), or a counterexample the checker's stricter test cannot
/// confirm). `image` is the input's index in its data set, if any.
pub fn certificate(
    net: &Network,
    set: &InputSet,
    image: Option<usize>,
    verifier: Option<&dyn Verifier>,
    report: &ImageReport,
) -> Result<Option<crate::certificate::Certificate>> {
    use crate::certificate::Certificate;
    let name = verifier.map_or("pgd", |v| v.name());
    match report.verdict {
        Verdict::Misclassified => Ok(None),
        Verdict::NotRobust => {
            let label = report.label;
            if let Some(c) = &report.counterexample
                && let Some(cert) = Certificate::counterexample(net, set, image, label, name, c.target, &c.input)?
            {
                return Ok(Some(cert));
            }
            // A report read back from a file has no input: the attack finds it again.
            let targets: Vec<usize> = (0..net.num_classes()).filter(|&c| c != label).collect();
            for r in pgd(net, set, label, &targets, &PgdSettings::default())? {
                if r.margin < 0.0
                    && let Some(cert) = Certificate::counterexample(net, set, image, label, name, r.target, &r.input)?
                {
                    return Ok(Some(cert));
                }
            }
            Ok(None)
        }
        Verdict::Robust | Verdict::Unknown => match verifier {
            Some(v) => match v.evidence(net, set, report.label, report)? {
                Some(e) => Certificate::seal(net, set, image, report.label, name, &e).map(Some),
                None => Ok(None),
            },
            None => Ok(None),
        },
    }
}

/// Writes [`certificate`] of one input to `dir/<index>.json` (creating `dir`); returns the path,
/// or None when the input gets no certificate.
pub fn write_certificate(
    dir: &std::path::Path,
    index: usize,
    net: &Network,
    set: &InputSet,
    verifier: Option<&dyn Verifier>,
    report: &ImageReport,
) -> Result<Option<std::path::PathBuf>> {
    let Some(cert) = certificate(net, set, Some(index), verifier, report)? else {
        return Ok(None);
    };
    let io = |path: &std::path::Path, source| Error::Io { path: path.to_path_buf(), source };
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let path = dir.join(format!("{index}.json"));
    std::fs::write(&path, cert.to_json()?).map_err(|e| io(&path, e))?;
    Ok(Some(path))
}

/// Certifies one input: classify the center, attack every target, then bound the targets the
/// attack did not break (all of them with `all_targets`).
pub fn certify(
    net: &Network,
    set: &InputSet,
    label: usize,
    verifier: Option<&dyn Verifier>,
    options: &CertifyOptions,
) -> Result<ImageReport> {
    let start = Instant::now();
    net.check_label(label)?;
    let logits = net.forward(set.center())?;
    let predicted = argmax(&logits);
    let classes = net.num_classes();
    let mut report = ImageReport {
        label,
        predicted,
        verdict: Verdict::Unknown,
        lower_bounds: vec![None; classes],
        upper_bounds: vec![None; classes],
        counterexample: None,
        seconds: 0.0,
        certified_radius: None,
        bm: None,
    };
    if predicted != label {
        report.verdict = Verdict::Misclassified;
        report.seconds = start.elapsed().as_secs_f64();
        return Ok(report);
    }
    let targets: Vec<usize> = (0..classes).filter(|&c| c != label).collect();
    let mut open = targets.clone();
    if let Some(settings) = &options.attack {
        for r in pgd(net, set, label, &targets, settings)? {
            report.upper_bounds[r.target] = Some(r.margin);
            // A counterexample only where the real network's margin is certainly negative (the
            // float margin beyond its rounding bound).
            if r.margin < 0.0 && net.surely_loses(&r.input, label, r.target)? {
                let better = report.counterexample.as_ref().is_none_or(|c| r.margin < c.margin);
                if better {
                    report.counterexample = Some(Counterexample { target: r.target, margin: r.margin, input: r.input });
                }
            }
        }
        if !options.all_targets {
            open.retain(|&c| report.upper_bounds[c].is_none_or(|m| m >= 0.0));
        }
    }
    let mut broken = report.counterexample.is_some();
    if let Some(v) = verifier
        && (!broken || options.all_targets)
        && !open.is_empty()
    {
        let bounds = v.lower_bounds(net, set, label, &open)?;
        for (c, lb) in bounds.bounds {
            report.lower_bounds[c] = Some(lb);
        }
        // A counterexample the verifier found (branch and bound) counts once a forward pass
        // confirms it: in X, and the label loses.
        if let Some(c) = bounds.counterexample
            && report.counterexample.is_none()
            && set.contains(&c.input, 0.0)
            && net.surely_loses(&c.input, label, c.target)?
        {
            let margin = net.margin(&c.input, label, c.target)?;
            report.upper_bounds[c.target] = Some(report.upper_bounds[c.target].map_or(margin, |u| u.min(margin)));
            report.counterexample = Some(Counterexample { margin, ..c });
        }
        report.certified_radius = bounds.stats.certified_radius;
        report.bm = bounds.stats.bm.clone();
        broken |= report.counterexample.is_some();
    }
    // A certified l2 radius beyond eps proves the whole ball (so ball ∩ box) keeps the label, when
    // it was computed against every target.
    let by_radius = set.norm() == crate::spec::Norm::L2
        && open.len() == targets.len()
        && report.certified_radius.is_some_and(|r| r > set.eps());
    report.verdict = if broken {
        Verdict::NotRobust
    } else if verifier.is_some()
        && (by_radius || targets.iter().all(|&c| report.lower_bounds[c].is_some_and(|b| b > 0.0)))
    {
        Verdict::Robust
    } else {
        Verdict::Unknown
    };
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// Counts over a data set run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Inputs run.
    pub images: usize,
    /// Verdict counts.
    pub robust: usize,
    /// Verdict counts.
    pub not_robust: usize,
    /// Verdict counts.
    pub unknown: usize,
    /// Verdict counts.
    pub misclassified: usize,
    /// Mean wall-clock seconds per input.
    pub seconds_per_image: f64,
    /// Targets solved by BM-r (BM methods), and how many of them ended at the relaxation's
    /// optimum ([`crate::verify::bm::BmTarget::at_optimum`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bm_targets: Option<usize>,
    /// See `bm_targets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bm_at_optimum: Option<usize>,
}

impl Summary {
    /// Tallies the reports.
    pub fn of(reports: &[ImageReport]) -> Self {
        Self::tally(reports.iter().map(|r| (r.verdict, r.seconds, r.bm.as_deref())))
    }

    /// Tallies the entries of a [`RunReport`] (the same counts as [`Summary::of`] their reports).
    pub fn of_entries(entries: &[ImageEntry]) -> Self {
        Self::tally(entries.iter().map(|e| (e.verdict, e.seconds, e.bm.as_deref())))
    }

    fn tally<'a>(rows: impl Iterator<Item = (Verdict, f64, Option<&'a [crate::verify::bm::BmTarget]>)>) -> Self {
        let mut s = Summary::default();
        let (mut seconds, mut any_bm, mut bm_targets, mut at_optimum) = (0.0, false, 0, 0);
        for (verdict, secs, bm) in rows {
            s.images += 1;
            match verdict {
                Verdict::Robust => s.robust += 1,
                Verdict::NotRobust => s.not_robust += 1,
                Verdict::Unknown => s.unknown += 1,
                Verdict::Misclassified => s.misclassified += 1,
            }
            seconds += secs;
            if let Some(targets) = bm {
                any_bm = true;
                bm_targets += targets.len();
                at_optimum += targets.iter().filter(|t| t.at_optimum).count();
            }
        }
        if s.images > 0 {
            s.seconds_per_image = seconds / s.images as f64;
        }
        if any_bm {
            s.bm_targets = Some(bm_targets);
            s.bm_at_optimum = Some(at_optimum);
        }
        s
    }
}

/// A progress callback: called with the number of inputs done so far and the latest report.
pub type Progress<'a> = dyn Fn(usize, &ImageReport) + Sync + 'a;

/// Certifies many inputs in parallel (rayon). `make_set` builds the input set around each image
/// (e.g. the same radius and domain for all); `progress` is called after each image with the
/// number done so far. Results come back in input order.
pub fn certify_many<F>(
    net: &Network,
    inputs: &[(Vec<f64>, usize)],
    make_set: F,
    verifier: Option<&dyn Verifier>,
    options: &CertifyOptions,
    progress: Option<&Progress<'_>>,
) -> Result<Vec<ImageReport>>
where
    F: Fn(&[f64]) -> Result<InputSet> + Sync,
{
    let done = std::sync::atomic::AtomicUsize::new(0);
    inputs
        .par_iter()
        .map(|(x, label)| {
            let set = make_set(x)?;
            let r = certify(net, &set, *label, verifier, options)?;
            let k = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if let Some(p) = progress {
                p(k, &r);
            }
            Ok(r)
        })
        .collect()
}

/// One image of a [`RunReport`]: its index in the source file and its [`ImageReport`] fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageEntry {
    /// Index in the image file.
    pub index: usize,
    /// The label.
    pub label: usize,
    /// argmax f(center).
    pub predicted: usize,
    /// The verdict.
    pub verdict: Verdict,
    /// Lower bound per class (null for the label and for targets not computed).
    pub lower_bounds: Vec<Option<f64>>,
    /// PGD margin per class (null for the label or without attack).
    pub upper_bounds: Vec<Option<f64>>,
    /// Seconds for this image.
    pub seconds: f64,
    /// The proven l2 radius within which the label wins (CRC only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certified_radius: Option<f64>,
    /// What BM-r did per target it solved (BM methods only): proven bound, primal value, certified
    /// gap, infeasibility, rank path, iterations ([`crate::verify::bm::BmTarget`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bm: Option<Vec<crate::verify::bm::BmTarget>>,
}

impl ImageEntry {
    /// The report this entry was made from (without the counterexample's input, which entries
    /// do not keep).
    pub fn report(&self) -> ImageReport {
        ImageReport {
            label: self.label,
            predicted: self.predicted,
            verdict: self.verdict,
            lower_bounds: self.lower_bounds.clone(),
            upper_bounds: self.upper_bounds.clone(),
            counterexample: None,
            seconds: self.seconds,
            certified_radius: self.certified_radius,
            bm: self.bm.clone(),
        }
    }

    /// The entry of the image at `index` of its file.
    pub fn new(index: usize, r: &ImageReport) -> Self {
        ImageEntry {
            index,
            label: r.label,
            predicted: r.predicted,
            verdict: r.verdict,
            lower_bounds: r.lower_bounds.clone(),
            upper_bounds: r.upper_bounds.clone(),
            seconds: r.seconds,
            certified_radius: r.certified_radius,
            bm: r.bm.clone(),
        }
    }
}

/// The JSON document the `certify` example writes with `--json` (docs/formats.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunReport {
    /// Model path.
    pub model: String,
    /// Method name.
    pub method: String,
    /// "l2" or "linf".
    pub norm: crate::spec::Norm,
    /// Radius.
    pub eps: f64,
    /// \[lo, hi\] or null.
    pub domain: Option<[f64; 2]>,
    /// Per image, in run order.
    pub images: Vec<ImageEntry>,
    /// Counts and mean time.
    pub summary: Summary,
}

impl RunReport {
    /// Builds the document from the image indices and their reports.
    pub fn new(
        model: String,
        method: String,
        set_norm: crate::spec::Norm,
        eps: f64,
        domain: Option<[f64; 2]>,
        indices: &[usize],
        reports: &[ImageReport],
    ) -> Self {
        let images = indices.iter().zip(reports).map(|(&index, r)| ImageEntry::new(index, r)).collect();
        RunReport { model, method, norm: set_norm, eps, domain, images, summary: Summary::of(reports) }
    }
}
