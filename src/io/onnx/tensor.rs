//! Constant tensors of an ONNX graph, attributes, and the index arithmetic of its shape
//! operators (row-major flat positions).

use super::pb::{self, AttributeProto, NodeProto, TensorProto};
use crate::error::{Error, Result};

/// A constant tensor: row-major values and dimensions.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Tensor {
    pub dims: Vec<usize>,
    pub values: Vec<f64>,
}

pub(super) fn format_err(detail: impl Into<String>) -> Error {
    Error::ModelFormat { path: None, detail: detail.into() }
}

/// A TensorProto's values as f64 (float32, float64, int32, int64; typed fields or raw data).
pub(super) fn tensor(t: &TensorProto) -> Result<Tensor> {
    let name = &t.name;
    if t.data_location == Some(1) {
        return Err(Error::Unsupported(format!("tensor '{name}' keeps its data in an external file")));
    }
    let dims: Vec<usize> = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format_err(format!("tensor '{name}' has a negative dimension {d}"))))
        .collect::<Result<_>>()?;
    let numel = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let numel = numel.ok_or_else(|| format_err(format!("tensor '{name}' is too large")))?;
    let raw = &t.raw_data;
    let from_raw = |width: usize, f: &dyn Fn(&[u8]) -> f64| -> Result<Vec<f64>> {
        if Some(raw.len()) != numel.checked_mul(width) {
            return Err(format_err(format!(
                "tensor '{name}' has {} bytes of raw data, expected {numel} values of {width} bytes",
                raw.len(),
            )));
        }
        Ok(raw.chunks_exact(width).map(f).collect())
    };
    let values: Vec<f64> = match t.data_type {
        pb::FLOAT if !raw.is_empty() => from_raw(4, &|b| f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)?,
        pb::FLOAT => t.float_data.iter().map(|&v| v as f64).collect(),
        pb::DOUBLE if !raw.is_empty() => from_raw(8, &|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))?,
        pb::DOUBLE => t.double_data.clone(),
        pb::INT64 if !raw.is_empty() => from_raw(8, &|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f64)?,
        pb::INT64 => t.int64_data.iter().map(|&v| v as f64).collect(),
        pb::INT32 if !raw.is_empty() => from_raw(4, &|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as f64)?,
        pb::INT32 => t.int32_data.iter().map(|&v| v as f64).collect(),
        other => {
            return Err(Error::Unsupported(format!(
                "tensor '{name}' has ONNX data type {other} (float32, float64, int32 and int64 are supported)"
            )));
        }
    };
    if values.len() != numel {
        return Err(format_err(format!("tensor '{name}' has {} values for dimensions {dims:?}", values.len())));
    }
    Ok(Tensor { dims, values })
}

pub(super) fn attr<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

/// The integer list attribute `name`, or `default`.
pub(super) fn ints(node: &NodeProto, name: &str, default: Vec<i64>) -> Vec<i64> {
    attr(node, name).map_or(default, |a| a.ints.clone())
}

/// Row-major strides of a shape.
pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1usize; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1];
    }
    s
}

/// Calls `f(flat, index)` for every position of `shape`, in row-major order.
pub(super) fn for_each_index(shape: &[usize], mut f: impl FnMut(usize, &[usize])) {
    let n: usize = shape.iter().product();
    let mut idx = vec![0usize; shape.len()];
    for flat in 0..n {
        f(flat, &idx);
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
}

/// An axis attribute (negative counts from the end) as an index below `rank`.
pub(super) fn axis(a: i64, rank: usize) -> std::result::Result<usize, String> {
    let r = rank as i64;
    let v = if a < 0 { a + r } else { a };
    if v < 0 || v >= r { Err(format!("axis {a} is outside a tensor of rank {rank}")) } else { Ok(v as usize) }
}

/// The shape of numpy broadcasting between two shapes, or None.
pub(super) fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let r = a.len().max(b.len());
    let get = |s: &[usize], k: usize| if k + s.len() >= r { s[k + s.len() - r] } else { 1 };
    (0..r)
        .map(|k| {
            let (x, y) = (get(a, k), get(b, k));
            if x == y || y == 1 {
                Some(x)
            } else if x == 1 {
                Some(y)
            } else {
                None
            }
        })
        .collect()
}

/// Broadcasts a constant (numpy rules, right-aligned; leading dimensions of 1 dropped) to
/// `shape`, or None when it does not broadcast to exactly that shape.
pub(super) fn broadcast(c: &Tensor, shape: &[usize]) -> Option<Vec<f64>> {
    let mut dims = c.dims.clone();
    while dims.len() > shape.len() {
        if dims[0] != 1 {
            return None;
        }
        dims.remove(0);
    }
    let offset = shape.len() - dims.len();
    for (k, &d) in dims.iter().enumerate() {
        if d != 1 && d != shape[offset + k] {
            return None;
        }
    }
    let n: usize = shape.iter().product();
    let mut out = Vec::with_capacity(n);
    for_each_index(shape, |_, idx| {
        let mut flat = 0;
        for (k, &d) in dims.iter().enumerate() {
            flat = flat * d + if d == 1 { 0 } else { idx[offset + k] };
        }
        out.push(c.values[flat]);
    });
    Some(out)
}

/// The image dimensions (C, H, W) of a tensor of shape (1, C, H, W) or (C, H, W).
pub(super) fn chw(shape: &[usize]) -> Option<[usize; 3]> {
    match shape {
        [1, c, h, w] | [c, h, w] => Some([*c, *h, *w]),
        _ => None,
    }
}

/// `shape` with its last three dimensions replaced by an image's (C, H, W).
pub(super) fn with_chw(shape: &[usize], image: [usize; 3]) -> Vec<usize> {
    let mut out = shape[..shape.len() - 3].to_vec();
    out.extend(image);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_and_indices() {
        assert_eq!(broadcast_shape(&[1, 3, 4], &[4]), Some(vec![1, 3, 4]));
        assert_eq!(broadcast_shape(&[3, 1], &[1, 5]), Some(vec![3, 5]));
        assert_eq!(broadcast_shape(&[3], &[4]), None);
        let c = Tensor { dims: vec![3, 1], values: vec![1.0, 2.0, 3.0] };
        assert_eq!(broadcast(&c, &[1, 3, 2]), Some(vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0]));
        assert_eq!(strides(&[2, 3, 4]), vec![12, 4, 1]);
        let mut seen = Vec::new();
        for_each_index(&[2, 2], |f, i| seen.push((f, i.to_vec())));
        assert_eq!(seen[3], (3, vec![1, 1]));
        assert_eq!(axis(-1, 3), Ok(2));
        assert!(axis(3, 3).is_err());
    }
}
