//! The `.nnet` text format of the ACAS Xu networks (Julian et al.; read by Reluplex, Marabou, NNV):
//! `//` comment lines, then
//!
//! ```text
//! numLayers, inputSize, outputSize, maxLayerSize
//! layer sizes (numLayers + 1 values, input first)
//! symmetric flag (unused)
//! input minimums (inputSize values)
//! input maximums (inputSize values)
//! means (inputSize + 1 values: the inputs', then the outputs')
//! ranges (inputSize + 1 values)
//! for each layer: its weight rows (one line per output neuron), then its biases (one per line)
//! ```
//!
//! Hidden layers are ReLU, the last is affine. The network evaluates
//! y = f((x - mean_in) / range_in) * range_out + mean_out on inputs clipped to [min, max]; the
//! normalization is folded into the first and last layers, and the clipping box is returned as the
//! [`Domain`] to verify over (the folded network is exact on it).

use std::path::Path;

use faer::Mat;

use crate::error::{Error, Result};
use crate::network::{Activation, Layer, Network};
use crate::spec::Domain;

/// A network read from a `.nnet` file with its input box.
#[derive(Clone, Debug)]
pub struct NnetModel {
    /// The network with the input and output normalization folded in.
    pub network: Network,
    /// The input box [min, max] of the file (the network's valid input domain).
    pub domain: Domain,
}

/// Loads a `.nnet` file.
pub fn load_nnet(path: impl AsRef<Path>) -> Result<NnetModel> {
    let path = path.as_ref();
    nnet_from_str(&super::read_text(path)?).map_err(|e| super::with_path(e, path))
}

/// Parses the text of a `.nnet` file.
pub fn nnet_from_str(text: &str) -> Result<NnetModel> {
    let err = |line: usize, detail: String| Error::ModelFormat { path: None, detail: format!("line {line}: {detail}") };
    // Numeric lines with their 1-based line numbers, comments dropped.
    let mut lines = text.lines().enumerate().filter_map(|(i, l)| {
        let t = l.trim();
        (!t.is_empty() && !t.starts_with("//")).then_some((i + 1, t))
    });
    let mut last_line = 0;
    let mut next = |want: Option<usize>, what: &str| -> Result<(usize, Vec<f64>)> {
        let (no, l) =
            lines.next().ok_or_else(|| err(last_line + 1, format!("unexpected end of file: {what} expected")))?;
        last_line = no;
        let vals: Vec<f64> = l
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<f64>().map_err(|_| err(no, format!("'{s}' is not a number ({what})"))))
            .collect::<Result<_>>()?;
        if let Some(n) = want
            && vals.len() < n
        {
            return Err(err(no, format!("{what}: {} values, expected {n}", vals.len())));
        }
        Ok((no, vals))
    };
    let count = |v: f64, no: usize, what: &str| -> Result<usize> {
        if v >= 1.0 && v.fract() == 0.0 && v < 1e7 {
            Ok(v as usize)
        } else {
            Err(err(no, format!("{what} must be a positive integer, got {v}")))
        }
    };
    let (no, head) = next(Some(4), "numLayers, inputSize, outputSize, maxLayerSize")?;
    let n_layers = count(head[0], no, "numLayers")?;
    let (n_in, n_out) = (count(head[1], no, "inputSize")?, count(head[2], no, "outputSize")?);
    let (no, sizes) = next(Some(n_layers + 1), "layer sizes")?;
    let sizes: Vec<usize> =
        sizes[..n_layers + 1].iter().map(|&v| count(v, no, "a layer size")).collect::<Result<_>>()?;
    if sizes[0] != n_in || sizes[n_layers] != n_out {
        return Err(err(no, format!("layer sizes {sizes:?} do not start at {n_in} and end at {n_out}")));
    }
    next(None, "the symmetric flag")?;
    let (_, min) = next(Some(n_in), "input minimums")?;
    let (no_max, max) = next(Some(n_in), "input maximums")?;
    let (_, mean) = next(Some(n_in + 1), "means")?;
    let (no_range, range) = next(Some(n_in + 1), "ranges")?;
    if range.iter().take(n_in + 1).any(|r| !(r.is_finite() && *r != 0.0)) {
        return Err(err(no_range, "ranges must be finite and nonzero".into()));
    }
    let domain =
        Domain::new(min[..n_in].to_vec(), max[..n_in].to_vec()).map_err(|e| err(no_max, format!("input box: {e}")))?;
    let mut layers = Vec::with_capacity(n_layers);
    for k in 0..n_layers {
        let (rows, cols) = (sizes[k + 1], sizes[k]);
        let mut w = Mat::<f64>::zeros(rows, cols);
        for r in 0..rows {
            let (_, v) = next(Some(cols), &format!("layer {k} weight row {r}"))?;
            for c in 0..cols {
                w[(r, c)] = v[c];
            }
        }
        let mut b = vec![0.0; rows];
        for (r, br) in b.iter_mut().enumerate() {
            *br = next(Some(1), &format!("layer {k} bias {r}"))?.1[0];
        }
        let act = if k + 1 == n_layers { Activation::Identity } else { Activation::Relu };
        layers.push((w, b, act));
    }
    if let Some((no, l)) = lines.next() {
        return Err(err(no, format!("unexpected line after the last layer: '{l}'")));
    }
    // Fold the input normalization into the first layer: W (x - m) / r + b.
    {
        let (w, b, _) = &mut layers[0];
        for c in 0..n_in {
            let (m, r) = (mean[c], range[c]);
            for row in 0..w.nrows() {
                b[row] -= w[(row, c)] * m / r;
                w[(row, c)] /= r;
            }
        }
    }
    // And the output scaling into the last: y * range_out + mean_out.
    {
        let (w, b, _) = layers.last_mut().expect("at least one layer");
        let (m, r) = (mean[n_in], range[n_in]);
        for row in 0..w.nrows() {
            for c in 0..w.ncols() {
                w[(row, c)] *= r;
            }
            b[row] = b[row] * r + m;
        }
    }
    let layers = layers.into_iter().map(|(w, b, a)| Layer::new(w, b, a)).collect();
    let network = Network::new(vec![n_in], layers)?;
    Ok(NnetModel { network, domain })
}
