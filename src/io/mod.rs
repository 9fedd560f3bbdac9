//! File formats: the JSON model format, ONNX models, ACAS Xu `.nnet` files, VNN-LIB properties, and
//! IDX image/label files (docs/formats.md).

pub mod idx;
pub mod json;
pub mod nnet;
pub mod onnx;
pub mod onnx_proto;
pub mod vnnlib;

pub use idx::{IdxArray, parse_idx, read_idx, read_idx_images, read_idx_labels};
pub use json::{load_model, model_from_json, model_to_json, save_model};
pub use nnet::{NnetModel, load_nnet, nnet_from_str};
pub use onnx::{load_onnx, onnx_from_bytes};
pub use vnnlib::{Property, load_vnnlib, vnnlib_from_str};

/// Loads a network by file extension: `.onnx` through [`load_onnx`], anything else as the JSON
/// model format ([`load_model`]).
pub fn load_network(path: impl AsRef<Path>) -> Result<crate::network::Network> {
    let path = path.as_ref();
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("onnx")) { load_onnx(path) } else { load_model(path) }
}

use std::path::Path;

use crate::error::{Error, Result};

/// Reads a whole file, decompressing it when it starts with the gzip magic bytes.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        let mut dec = flate2::read::GzDecoder::new(bytes.as_slice());
        std::io::Read::read_to_end(&mut dec, &mut out)
            .map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
        Ok(out)
    } else {
        Ok(bytes)
    }
}

/// A whole text file (gzip allowed), as UTF-8.
pub(crate) fn read_text(path: &Path) -> Result<String> {
    let bytes = read_maybe_gz(path)?;
    String::from_utf8(bytes)
        .map_err(|e| Error::ModelFormat { path: Some(path.to_path_buf()), detail: format!("not UTF-8: {e}") })
}

/// Names the file in a format error raised while parsing its contents.
pub(crate) fn with_path(e: Error, path: &Path) -> Error {
    match e {
        Error::ModelFormat { path: None, detail } => Error::ModelFormat { path: Some(path.to_path_buf()), detail },
        other => other,
    }
}
