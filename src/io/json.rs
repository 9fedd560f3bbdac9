//! The JSON model format (docs/formats.md; the format of ../shared/data/models).
//!
//! ```text
//! { "input_shape": [C, H, W] (or [n]), "normalization": {"mean": [..], "std": [..]} (optional),
//!   "layers": [ {"type": "dense", "weight": [[out][in]], "bias": [out], "activation": "relu"|"none"|...},
//!               {"type": "conv2d", "weight": [out_c][in_c][kh][kw], "bias": [out_c], "stride": [sh, sw],
//!                "padding": [ph, pw], "input_shape": [C,H,W], "output_shape": [C,H,W], "activation": ...},
//!               {"type": "flatten", ...} ] }
//! ```
//!
//! Convolutions are lowered to dense matrices, flatten is the identity on the row-major vector,
//! and a per-channel normalization (x - mean) / std is folded into the first affine layer, so
//! the loaded [`Network`] takes raw inputs (e.g. pixels in \[0, 1\]). Other keys are ignored.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::network::conv::{Conv2d, Conv2dShape};
use crate::network::{Activation, Layer, Network};

#[derive(Deserialize, Serialize)]
struct ModelFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    architecture: Option<String>,
    input_shape: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    normalization: Option<Normalization>,
    layers: Vec<LayerFile>,
}

#[derive(Deserialize, Serialize)]
struct Normalization {
    mean: Vec<f64>,
    std: Vec<f64>,
}

fn default_activation() -> String {
    "none".into()
}

#[derive(Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum LayerFile {
    Dense {
        weight: Vec<Vec<f64>>,
        bias: Vec<f64>,
        #[serde(default = "default_activation")]
        activation: String,
    },
    Conv2d {
        weight: Vec<Vec<Vec<Vec<f64>>>>,
        bias: Vec<f64>,
        #[serde(default = "one_one")]
        stride: [usize; 2],
        #[serde(default)]
        padding: [usize; 2],
        #[serde(default = "one_one")]
        dilation: [usize; 2],
        #[serde(default)]
        input_shape: Option<[usize; 3]>,
        #[serde(default)]
        output_shape: Option<[usize; 3]>,
        #[serde(default = "default_activation")]
        activation: String,
    },
    Flatten {
        #[serde(default)]
        input_shape: Option<Vec<usize>>,
        #[serde(default)]
        output_size: Option<usize>,
    },
}

fn one_one() -> [usize; 2] {
    [1, 1]
}

fn format_err(path: Option<&Path>, detail: impl Into<String>) -> Error {
    Error::ModelFormat { path: path.map(Path::to_path_buf), detail: detail.into() }
}

/// Loads a model from a JSON file.
pub fn load_model(path: impl AsRef<Path>) -> Result<Network> {
    let path = path.as_ref();
    let bytes = super::read_maybe_gz(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|e| format_err(Some(path), format!("not UTF-8: {e}")))?;
    parse(text, Some(path))
}

/// Parses a model from JSON text.
pub fn model_from_json(text: &str) -> Result<Network> {
    parse(text, None)
}

fn parse(text: &str, path: Option<&Path>) -> Result<Network> {
    let file: ModelFile = serde_json::from_str(text).map_err(|e| format_err(path, e.to_string()))?;
    build(file, path)
}

fn build(file: ModelFile, path: Option<&Path>) -> Result<Network> {
    let mut shape = file.input_shape.clone();
    if shape.is_empty() || shape.contains(&0) {
        return Err(format_err(path, format!("input_shape {shape:?} must be non-empty with positive sizes")));
    }
    let mut layers: Vec<Layer> = Vec::new();
    for (k, lf) in file.layers.into_iter().enumerate() {
        let activation = |name: &str| {
            Activation::from_name(name)
                .ok_or_else(|| format_err(path, format!("layer {k}: unknown activation '{name}'")))
        };
        match lf {
            LayerFile::Dense { weight, bias, activation: act } => {
                let act = activation(&act)?;
                let numel: usize = shape.iter().product();
                let mut layer = Layer::from_rows(&weight, bias, act).map_err(|e| relabel(e, k))?;
                if layer.input_size() != numel {
                    return Err(Error::Shape {
                        layer: k,
                        detail: format!(
                            "dense layer takes {} inputs, previous output has shape {shape:?}",
                            layer.input_size()
                        ),
                    });
                }
                shape = vec![layer.output_size()];
                layer = check_finite(layer, k)?;
                layers.push(layer);
            }
            LayerFile::Conv2d {
                weight,
                bias,
                stride,
                padding,
                dilation,
                input_shape,
                output_shape,
                activation: act,
            } => {
                let act = activation(&act)?;
                let input: [usize; 3] = match (input_shape, shape.as_slice()) {
                    (Some(s), _) => s,
                    (None, &[c, h, w]) => [c, h, w],
                    (None, s) => {
                        return Err(Error::Shape {
                            layer: k,
                            detail: format!("conv2d needs a (C, H, W) input, found {s:?}"),
                        });
                    }
                };
                if input.iter().product::<usize>() != shape.iter().product::<usize>() {
                    return Err(Error::Shape {
                        layer: k,
                        detail: format!("conv2d input_shape {input:?} does not match the previous output {shape:?}"),
                    });
                }
                let oc = weight.len();
                let ic = weight.first().map_or(0, Vec::len);
                let kh = weight.first().and_then(|w| w.first()).map_or(0, Vec::len);
                let kw = weight.first().and_then(|w| w.first()).and_then(|w| w.first()).map_or(0, Vec::len);
                let mut flat = Vec::with_capacity(oc * ic * kh * kw);
                for w_o in &weight {
                    if w_o.len() != ic {
                        return Err(Error::Shape { layer: k, detail: "ragged conv2d weight (input channels)".into() });
                    }
                    for w_i in w_o {
                        if w_i.len() != kh || w_i.iter().any(|r| r.len() != kw) {
                            return Err(Error::Shape { layer: k, detail: "ragged conv2d weight (kernel)".into() });
                        }
                        for r in w_i {
                            flat.extend_from_slice(r);
                        }
                    }
                }
                let cs = Conv2dShape { input, kernel: [oc, ic, kh, kw], stride, padding, dilation };
                let out = cs.output(k)?;
                if let Some(declared) = output_shape
                    && declared != out
                {
                    return Err(Error::Shape {
                        layer: k,
                        detail: format!("declared output_shape {declared:?}, the geometry gives {out:?}"),
                    });
                }
                if bias.len() != oc {
                    return Err(Error::Shape {
                        layer: k,
                        detail: format!("bias has {} values, expected {oc}", bias.len()),
                    });
                }
                let per = out[1] * out[2];
                let b = (0..oc * per).map(|j| bias[j / per]).collect();
                layers.push(check_finite(Layer::conv2d(Conv2d::new(cs, flat, k)?, b, act), k)?);
                shape = out.to_vec();
            }
            LayerFile::Flatten { output_size, .. } => {
                let numel: usize = shape.iter().product();
                if let Some(n) = output_size
                    && n != numel
                {
                    return Err(Error::Shape {
                        layer: k,
                        detail: format!("flatten of {shape:?} gives {numel}, file says {n}"),
                    });
                }
                shape = vec![numel];
            }
        }
    }
    if layers.is_empty() {
        return Err(Error::Empty("the model has no dense or conv2d layer".into()));
    }
    if let Some(norm) = file.normalization {
        fold_normalization(&mut layers[0], &norm, &file.input_shape, path)?;
    }
    Network::new(file.input_shape, layers)
}

fn relabel(e: Error, layer: usize) -> Error {
    match e {
        Error::Shape { detail, .. } => Error::Shape { layer, detail },
        other => other,
    }
}

/// The layer's own checks ([`Layer::validate`]) with the file's layer index (the Network
/// re-checks with its own indices).
fn check_finite(layer: Layer, k: usize) -> Result<Layer> {
    layer.validate(k)?;
    Ok(layer)
}

/// x_norm = (x - mean_c) / std_c per channel c of a row-major (C, ...) input, folded into the
/// first layer: W' = W diag(1/std), b' = b - W (mean/std).
fn fold_normalization(
    first: &mut Layer,
    norm: &Normalization,
    input_shape: &[usize],
    path: Option<&Path>,
) -> Result<()> {
    let channels = if input_shape.len() >= 2 { input_shape[0] } else { 1 };
    let n = first.input_size();
    let per = n / channels.max(1);
    let ok_len = |v: &Vec<f64>| v.len() == 1 || v.len() == channels;
    if !ok_len(&norm.mean) || !ok_len(&norm.std) {
        return Err(format_err(path, format!("normalization needs 1 or {channels} values per field")));
    }
    for (what, v) in [("normalization mean", &norm.mean), ("normalization std", &norm.std)] {
        if let Some((index, &value)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(Error::NonFinite { layer: 0, what, index, value });
        }
    }
    if let Some(s) = norm.std.iter().find(|s| **s == 0.0) {
        return Err(format_err(path, format!("normalization std {s} must be non-zero")));
    }
    let at = |v: &Vec<f64>, i: usize| if v.len() == 1 { v[0] } else { v[i / per] };
    if norm.mean.iter().all(|m| *m == 0.0) && norm.std.iter().all(|s| *s == 1.0) {
        return Ok(());
    }
    let s: Vec<f64> = (0..n).map(|j| 1.0 / at(&norm.std, j)).collect();
    let c: Vec<f64> = (0..n).map(|j| -at(&norm.mean, j) / at(&norm.std, j)).collect();
    *first = first.precompose_scale_shift(&s, &c);
    Ok(())
}

/// Serializes a network in the JSON model format (every layer as "dense"; no normalization).
pub fn model_to_json(net: &Network) -> String {
    let layers = net
        .layers()
        .iter()
        .map(|l| {
            let w = l.weight();
            LayerFile::Dense {
                weight: (0..w.nrows()).map(|i| (0..w.ncols()).map(|j| w[(i, j)]).collect()).collect(),
                bias: l.bias().to_vec(),
                activation: l.activation().name().to_string(),
            }
        })
        .collect();
    let file = ModelFile {
        source: Some("nncert".into()),
        architecture: None,
        input_shape: net.input_shape().to_vec(),
        normalization: None,
        layers,
    };
    serde_json::to_string(&file).unwrap_or_default()
}

/// Writes a network to a JSON file ([`model_to_json`]).
pub fn save_model(net: &Network, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    std::fs::write(path, model_to_json(net)).map_err(|source| Error::Io { path: path.to_path_buf(), source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_normalization() {
        let text = r#"{"input_shape":[2,1,2],"normalization":{"mean":[0.5,1.0],"std":[2.0,4.0]},
            "layers":[{"type":"flatten"},{"type":"dense","weight":[[1,2,3,4],[0,1,0,-1]],"bias":[0.5,0],"activation":"relu"},
                      {"type":"dense","weight":[[1,-1]],"bias":[0]}]}"#;
        let net = model_from_json(text).unwrap();
        let x = [0.3, 0.9, 2.0, -1.0];
        let norm = [(0.3 - 0.5) / 2.0, (0.9 - 0.5) / 2.0, (2.0 - 1.0) / 4.0, (-1.0 - 1.0) / 4.0];
        let h0 = (norm[0] + 2.0 * norm[1] + 3.0 * norm[2] + 4.0 * norm[3] + 0.5f64).max(0.0);
        let h1 = (norm[1] - norm[3]).max(0.0);
        let f = net.forward(&x).unwrap();
        assert!((f[0] - (h0 - h1)).abs() < 1e-12);
        let again = model_from_json(&model_to_json(&net)).unwrap();
        assert_eq!(again.forward(&x).unwrap(), f);
        assert_eq!(again.input_shape(), &[2, 1, 2]);
    }

    #[test]
    fn conv_models_load() {
        let text = r#"{"input_shape":[1,3,3],"layers":[
            {"type":"conv2d","weight":[[[[1,0],[0,1]]]],"bias":[0.5],"stride":[1,1],"padding":[0,0],"output_shape":[1,2,2],"activation":"relu"},
            {"type":"flatten","output_size":4},
            {"type":"dense","weight":[[1,1,1,1]],"bias":[0]}]}"#;
        let net = model_from_json(text).unwrap();
        // out(y,x) = in(y,x) + in(y+1,x+1) + 0.5
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
        let expect = (1.0 + 5.0 + 0.5) + (2.0 + 6.0 + 0.5) + (4.0 + 8.0 + 0.5) + (5.0 + 9.0 + 0.5);
        assert_eq!(net.forward(&x).unwrap(), vec![expect]);
    }

    #[test]
    fn malformed_models_are_typed_errors() {
        let e = model_from_json("{\"input_shape\": [2], \"layers\": [").unwrap_err();
        assert!(matches!(e, Error::ModelFormat { .. }) && e.to_string().contains("line"), "{e}");
        let e = model_from_json(
            r#"{"input_shape":[2],"layers":[{"type":"dense","weight":[[1,2]],"bias":[0],"activation":"gelu"}]}"#,
        )
        .unwrap_err();
        assert!(e.to_string().contains("gelu"));
        let e = model_from_json(r#"{"input_shape":[3],"layers":[{"type":"dense","weight":[[1,2]],"bias":[0]}]}"#)
            .unwrap_err();
        assert!(matches!(e, Error::Shape { layer: 0, .. }));
        let e = model_from_json(r#"{"input_shape":[2],"layers":[{"type":"dense","weight":[[1,2]],"bias":[0,1]}]}"#)
            .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }));
        let e = model_from_json(r#"{"input_shape":[2],"layers":[{"type":"pool"}]}"#).unwrap_err();
        assert!(matches!(e, Error::ModelFormat { .. }));
        let e = model_from_json(r#"{"input_shape":[2],"layers":[]}"#).unwrap_err();
        assert!(matches!(e, Error::Empty(_)));
        let e = model_from_json(
            r#"{"input_shape":[1,2,2],"layers":[{"type":"conv2d","weight":[[[[1,0,1],[0,1,1],[1,1,1]]]],"bias":[0]}]}"#,
        )
        .unwrap_err();
        assert!(matches!(e, Error::Shape { .. }), "{e}");
        let e = model_from_json(r#"{"input_shape":[2],"normalization":{"mean":[0],"std":[0]},"layers":[{"type":"dense","weight":[[1,2]],"bias":[0]}]}"#).unwrap_err();
        assert!(e.to_string().contains("std"));
        // NaN is not valid JSON; huge numbers overflow to an error from serde_json too.
        assert!(
            model_from_json(r#"{"input_shape":[2],"layers":[{"type":"dense","weight":[[NaN,2]],"bias":[0]}]}"#)
                .is_err()
        );
        assert!(
            model_from_json(r#"{"input_shape":[2],"layers":[{"type":"dense","weight":[[1e999,2]],"bias":[0]}]}"#)
                .is_err()
        );
    }
}
