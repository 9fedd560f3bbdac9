//! Data-set runs split over many machines: a [`Shard`] takes every N-th image, [`run_lines`]
//! appends one JSON line per finished image to its output (a killed task loses at most the images
//! it was on; a rerun skips the images already done), and [`merge`] joins the shards' files into
//! the [`RunReport`] an unsharded run gives.
//!
//! A lines file starts with a header line, `{"run": {...}}` ([`RunHeader`]: model, method, norm,
//! radius, domain and the shard), then holds one [`ImageEntry`] per line, in the order the images
//! finished. The shard index comes from `--shard K/N` or from the scheduler: Slurm job arrays
//! (`SLURM_ARRAY_TASK_ID`, `SLURM_ARRAY_TASK_MIN`, `SLURM_ARRAY_TASK_COUNT`) or Kubernetes indexed
//! Jobs (`JOB_COMPLETION_INDEX`); docs/cluster.md has a script for each.
//!
//! ```
//! use nncert::certify::shard::Shard;
//! let shard = Shard::parse("1/3", |_| None)?;
//! assert_eq!(shard.take(&[10, 11, 12, 13, 14, 15, 16]), vec![11, 14]);
//! // A Slurm array task 5 of an array 1-8:
//! let env = |k: &str| match k {
//!     "SLURM_ARRAY_TASK_ID" => Some("5".to_string()),
//!     "SLURM_ARRAY_TASK_MIN" => Some("1".to_string()),
//!     "SLURM_ARRAY_TASK_COUNT" => Some("8".to_string()),
//!     _ => None,
//! };
//! assert_eq!(Shard::parse("auto", env)?, Shard { index: 4, count: 8 });
//! assert!(Shard::parse("3/3", |_| None).is_err());
//! # Ok::<(), nncert::Error>(())
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{CertifyOptions, ImageEntry, ImageReport, RunReport, Summary, certify};
use crate::error::{Error, Result};
use crate::network::Network;
use crate::spec::{InputSet, Norm};
use crate::verify::Verifier;

/// One part of a data-set run: the images at positions `index`, `index + count`, ... of the
/// selected images (0 <= index < count).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    /// This shard, 0-based.
    pub index: usize,
    /// The number of shards.
    pub count: usize,
}

fn bad(detail: String) -> Error {
    Error::InvalidArgument(detail)
}

fn number(what: &str, v: &str) -> Result<usize> {
    v.trim().parse::<usize>().map_err(|_| bad(format!("{what}: expected a whole number >= 0, got {v:?}")))
}

impl Shard {
    /// The whole run as one shard.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// Parses `K/N` (0 <= K < N), `auto/N` (K from the scheduler) or `auto` (K and N from the
    /// scheduler). `env` looks up an environment variable (pass `|k| std::env::var(k).ok()`):
    /// Slurm's `SLURM_ARRAY_TASK_ID` minus `SLURM_ARRAY_TASK_MIN` (0 when unset) with
    /// `SLURM_ARRAY_TASK_COUNT`, else Kubernetes' `JOB_COMPLETION_INDEX` (whose Job gives no count:
    /// `auto/N` then).
    pub fn parse(s: &str, env: impl Fn(&str) -> Option<String>) -> Result<Shard> {
        let (k, n) = match s.split_once('/') {
            Some((k, n)) => (k.trim(), Some(n.trim())),
            None => (s.trim(), None),
        };
        if k != "auto" && n.is_none() {
            return Err(bad(format!("--shard expects K/N, auto/N or auto, got {s:?}")));
        }
        let count = match n {
            Some(n) => number("--shard N", n)?,
            None => match env("SLURM_ARRAY_TASK_COUNT") {
                Some(c) => number("SLURM_ARRAY_TASK_COUNT", &c)?,
                None => {
                    return Err(bad(
                        "--shard auto: SLURM_ARRAY_TASK_COUNT is not set (with Kubernetes' JOB_COMPLETION_INDEX, \
                         give the count: --shard auto/N)"
                            .into(),
                    ));
                }
            },
        };
        let index = if k == "auto" {
            match (env("SLURM_ARRAY_TASK_ID"), env("JOB_COMPLETION_INDEX")) {
                (Some(id), _) => {
                    let id = number("SLURM_ARRAY_TASK_ID", &id)?;
                    let min = env("SLURM_ARRAY_TASK_MIN").map(|m| number("SLURM_ARRAY_TASK_MIN", &m)).transpose()?;
                    id.checked_sub(min.unwrap_or(0))
                        .ok_or_else(|| bad(format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN")))?
                }
                (None, Some(i)) => number("JOB_COMPLETION_INDEX", &i)?,
                (None, None) => {
                    return Err(
                        bad("--shard auto: neither SLURM_ARRAY_TASK_ID nor JOB_COMPLETION_INDEX is set".into()),
                    );
                }
            }
        } else {
            number("--shard K", k)?
        };
        if count == 0 || index >= count {
            return Err(bad(format!("shard {index} of {count}: need 0 <= K < N (K counts from 0)")));
        }
        Ok(Shard { index, count })
    }

    /// This shard's items: every `count`-th from position `index`.
    pub fn take<T: Clone>(&self, items: &[T]) -> Vec<T> {
        items.iter().skip(self.index).step_by(self.count.max(1)).cloned().collect()
    }
}

/// The first line of a lines file: what was run, so that a rerun or a merge refuses a file of
/// another run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunHeader {
    /// Model path.
    pub model: String,
    /// Method name.
    pub method: String,
    /// The norm.
    pub norm: Norm,
    /// Radius.
    pub eps: f64,
    /// \[lo, hi\] or null.
    pub domain: Option<[f64; 2]>,
    /// The shard this file holds.
    pub shard: Shard,
}

impl RunHeader {
    /// Whether two headers describe the same run (up to the shard).
    fn same_run(&self, other: &RunHeader) -> bool {
        RunHeader { shard: Shard::ALL, ..self.clone() } == RunHeader { shard: Shard::ALL, ..other.clone() }
    }
}

#[derive(Serialize, Deserialize)]
struct HeaderLine {
    run: RunHeader,
}

fn io(path: &Path, source: std::io::Error) -> Error {
    Error::Io { path: path.to_path_buf(), source }
}

/// Reads a lines file: its header and its complete entries. A last line cut short (the task was
/// killed while writing it) is left out; any other malformed line is an error naming it.
pub fn read_lines(path: impl AsRef<Path>) -> Result<(RunHeader, Vec<ImageEntry>)> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|e| io(path, e))?;
    parse_lines(path, &text)
}

fn parse_lines(path: &Path, text: &str) -> Result<(RunHeader, Vec<ImageEntry>)> {
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    let malformed = |line: usize, e: String| bad(format!("{}, line {line}: {e}", path.display()));
    let mut lines = complete.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let Some((_, first)) = lines.next() else {
        return Err(malformed(1, "no header line (an empty or cut-short file)".into()));
    };
    let header = serde_json::from_str::<HeaderLine>(first).map_err(|e| malformed(1, e.to_string()))?.run;
    let mut entries = Vec::new();
    for (i, line) in lines {
        entries.push(serde_json::from_str::<ImageEntry>(line).map_err(|e| malformed(i + 1, e.to_string()))?);
    }
    Ok((header, entries))
}

/// Certifies the `inputs` (image index in its file, image, label) of this run, appending one
/// line per finished image to `path`. When `path` already holds lines of the same run (`header`,
/// shard included), the images in it are not run again and a last line cut short is dropped; a
/// file of another run is an error. Returns every entry of the file (old and new), by index.
/// `progress` is called after each new image with the number done in this call.
#[allow(clippy::too_many_arguments)]
pub fn run_lines<F>(
    path: impl AsRef<Path>,
    header: &RunHeader,
    net: &Network,
    inputs: &[(usize, Vec<f64>, usize)],
    make_set: F,
    verifier: Option<&dyn Verifier>,
    options: &CertifyOptions,
    progress: Option<&super::Progress<'_>>,
) -> Result<Vec<ImageEntry>>
where
    F: Fn(&[f64]) -> Result<InputSet> + Sync,
{
    let path = path.as_ref();
    let mut file =
        std::fs::OpenOptions::new().read(true).append(true).create(true).open(path).map_err(|e| io(path, e))?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(|e| io(path, e))?;
    let mut done: BTreeMap<usize, ImageEntry> = BTreeMap::new();
    if !text.contains('\n') {
        // New, or killed before its header line was whole: start it afresh.
        file.set_len(0).map_err(|e| io(path, e))?;
        let line = serde_json::to_string(&HeaderLine { run: header.clone() }).map_err(|e| bad(e.to_string()))?;
        writeln!(file, "{line}").map_err(|e| io(path, e))?;
    } else {
        let (old, entries) = parse_lines(path, &text)?;
        if old != *header {
            return Err(bad(format!(
                "{} holds another run ({} {} eps {} on {}, shard {}/{}); this run is {} {} eps {} on {}, shard {}/{}",
                path.display(),
                old.method,
                old.norm.name(),
                old.eps,
                old.model,
                old.shard.index,
                old.shard.count,
                header.method,
                header.norm.name(),
                header.eps,
                header.model,
                header.shard.index,
                header.shard.count
            )));
        }
        // Drop a last line cut short, so that the next line starts on a line of its own.
        let keep = text.rfind('\n').map_or(0, |i| i + 1);
        if keep < text.len() {
            file.set_len(keep as u64).map_err(|e| io(path, e))?;
            file.seek(std::io::SeekFrom::End(0)).map_err(|e| io(path, e))?;
        }
        for e in entries {
            done.entry(e.index).or_insert(e);
        }
    }
    let todo: Vec<&(usize, Vec<f64>, usize)> = inputs.iter().filter(|(i, _, _)| !done.contains_key(i)).collect();
    let file = Mutex::new(file);
    let count = std::sync::atomic::AtomicUsize::new(0);
    let new: Vec<ImageEntry> = todo
        .par_iter()
        .map(|(index, x, label)| {
            let set = make_set(x)?;
            let r: ImageReport = certify(net, &set, *label, verifier, options)?;
            let entry = ImageEntry::new(*index, &r);
            let line = serde_json::to_string(&entry).map_err(|e| bad(e.to_string()))?;
            {
                // One write of the whole line, flushed before the next image counts as done.
                let mut f = file.lock().unwrap_or_else(|p| p.into_inner());
                f.write_all(format!("{line}\n").as_bytes()).and_then(|_| f.flush()).map_err(|e| io(path, e))?;
            }
            let k = count.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if let Some(p) = progress {
                p(k, &r);
            }
            Ok(entry)
        })
        .collect::<Result<_>>()?;
    for e in new {
        done.insert(e.index, e);
    }
    Ok(done.into_values().collect())
}

/// Joins the lines files of a sharded run into the report an unsharded run gives: the images by
/// index, each once, with the summary over them. The files must hold the same run (model,
/// method, norm, radius, domain) and the same shard count; a shard missing or an image in two
/// files with different verdicts is an error. `expected`, when given, is the number of images
/// the whole run selected: fewer is an error naming the count (a shard not finished).
pub fn merge(paths: &[PathBuf], expected: Option<usize>) -> Result<RunReport> {
    let mut header: Option<RunHeader> = None;
    let mut shards = Vec::new();
    let mut all: BTreeMap<usize, ImageEntry> = BTreeMap::new();
    for path in paths {
        let (h, entries) = read_lines(path)?;
        if let Some(first) = &header {
            if !first.same_run(&h) || first.shard.count != h.shard.count {
                return Err(bad(format!("{} holds another run than {}", path.display(), paths[0].display())));
            }
        } else {
            header = Some(h.clone());
        }
        shards.push(h.shard.index);
        for e in entries {
            if let Some(old) = all.get(&e.index)
                && old.verdict != e.verdict
            {
                return Err(bad(format!(
                    "image {} is {} in one file and {} in {}",
                    e.index,
                    old.verdict.name(),
                    e.verdict.name(),
                    path.display()
                )));
            }
            all.entry(e.index).or_insert(e);
        }
    }
    let Some(header) = header else { return Err(bad("merge: no files given".into())) };
    shards.sort_unstable();
    shards.dedup();
    let missing: Vec<usize> = (0..header.shard.count).filter(|k| shards.binary_search(k).is_err()).collect();
    if !missing.is_empty() {
        return Err(bad(format!("merge: shards {missing:?} of {} are missing", header.shard.count)));
    }
    let images: Vec<ImageEntry> = all.into_values().collect();
    if let Some(n) = expected
        && images.len() != n
    {
        return Err(bad(format!("merge: {} images in the files, the run selects {n}", images.len())));
    }
    let summary = Summary::of_entries(&images);
    Ok(RunReport {
        model: header.model,
        method: header.method,
        norm: header.norm,
        eps: header.eps,
        domain: header.domain,
        images,
        summary,
    })
}
