//! IDX files (the MNIST format): a big-endian header `0 0 type ndims`, `ndims` u32 sizes, then the
//! values in row-major order. Optionally gzip-compressed (detected from the content).

use std::path::Path;

use crate::error::{Error, Result};

/// An IDX array: its dimensions and its values widened to f64.
#[derive(Clone, Debug, PartialEq)]
pub struct IdxArray {
    /// Sizes, outermost first (for images: count, rows, columns).
    pub dims: Vec<usize>,
    /// Values in row-major order.
    pub data: Vec<f64>,
    /// The element type code (0x08 u8, 0x09 i8, 0x0B i16, 0x0C i32, 0x0D f32, 0x0E f64).
    pub type_code: u8,
}

fn err(path: Option<&Path>, detail: impl Into<String>) -> Error {
    Error::Idx { path: path.map(Path::to_path_buf), detail: detail.into() }
}

/// Parses IDX bytes (already decompressed).
pub fn parse_idx(bytes: &[u8]) -> Result<IdxArray> {
    parse(bytes, None)
}

fn parse(bytes: &[u8], path: Option<&Path>) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(err(path, format!("{} bytes, too short for the 4-byte magic number", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(err(
            path,
            format!(
                "bad magic number {:02x}{:02x}{:02x}{:02x}: must start with 0000",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    let type_code = bytes[2];
    let size = match type_code {
        0x08 | 0x09 => 1,
        0x0B => 2,
        0x0C | 0x0D => 4,
        0x0E => 8,
        t => return Err(err(path, format!("unknown element type 0x{t:02x} in the magic number"))),
    };
    let ndims = bytes[3] as usize;
    if ndims == 0 {
        return Err(err(path, "zero dimensions"));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(err(
            path,
            format!("truncated header: {} dimensions need {header} bytes, file has {}", ndims, bytes.len()),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|d| u32::from_be_bytes([bytes[4 + 4 * d], bytes[5 + 4 * d], bytes[6 + 4 * d], bytes[7 + 4 * d]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .and_then(|c| c.checked_mul(size))
        .ok_or_else(|| err(path, format!("dimensions {dims:?} overflow")))?;
    let body = &bytes[header..];
    if body.len() < count {
        return Err(err(
            path,
            format!("truncated data: dimensions {dims:?} need {count} bytes, file has {}", body.len()),
        ));
    }
    if body.len() > count {
        return Err(err(path, format!("{} trailing bytes after the data of dimensions {dims:?}", body.len() - count)));
    }
    let data: Vec<f64> = match type_code {
        0x08 => body.iter().map(|&b| b as f64).collect(),
        0x09 => body.iter().map(|&b| b as i8 as f64).collect(),
        0x0B => body.chunks_exact(2).map(|c| i16::from_be_bytes([c[0], c[1]]) as f64).collect(),
        0x0C => body.chunks_exact(4).map(|c| i32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        0x0D => body.chunks_exact(4).map(|c| f32::from_be_bytes([c[0], c[1], c[2], c[3]]) as f64).collect(),
        _ => {
            body.chunks_exact(8).map(|c| f64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])).collect()
        }
    };
    Ok(IdxArray { dims, data, type_code })
}

/// Reads an IDX file (plain or gzip-compressed).
pub fn read_idx(path: impl AsRef<Path>) -> Result<IdxArray> {
    let path = path.as_ref();
    let bytes = super::read_maybe_gz(path)?;
    parse(&bytes, Some(path))
}

/// Reads images: an IDX array of N x ... values becomes N flat images (row-major). Unsigned-byte
/// pixels are scaled by 1/255 to \[0, 1\]; other types are returned as stored. Also returns the shape
/// of one image.
pub fn read_idx_images(path: impl AsRef<Path>) -> Result<(Vec<Vec<f64>>, Vec<usize>)> {
    let path = path.as_ref();
    let a = read_idx(path)?;
    if a.dims.len() < 2 {
        return Err(err(Some(path), format!("images need at least 2 dimensions, found {:?}", a.dims)));
    }
    let per: usize = a.dims[1..].iter().product();
    let scale = if a.type_code == 0x08 { 1.0 / 255.0 } else { 1.0 };
    let images = if per == 0 {
        vec![Vec::new(); a.dims[0]]
    } else {
        a.data.chunks(per).map(|c| c.iter().map(|v| v * scale).collect()).collect()
    };
    Ok((images, a.dims[1..].to_vec()))
}

/// Reads labels: a one-dimensional IDX array of non-negative integers.
pub fn read_idx_labels(path: impl AsRef<Path>) -> Result<Vec<usize>> {
    let path = path.as_ref();
    let a = read_idx(path)?;
    if a.dims.len() != 1 || matches!(a.type_code, 0x0D | 0x0E) {
        return Err(err(
            Some(path),
            format!("labels must be a 1-D integer array, found dims {:?} type 0x{:02x}", a.dims, a.type_code),
        ));
    }
    a.data
        .iter()
        .enumerate()
        .map(
            |(i, &v)| {
                if v < 0.0 { Err(err(Some(path), format!("negative label {v} at index {i}"))) } else { Ok(v as usize) }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u8_file(dims: &[u32], data: &[u8]) -> Vec<u8> {
        let mut b = vec![0, 0, 0x08, dims.len() as u8];
        for d in dims {
            b.extend_from_slice(&d.to_be_bytes());
        }
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn parses_every_type() {
        let a = parse_idx(&u8_file(&[2, 3], &[0, 1, 2, 3, 4, 255])).unwrap();
        assert_eq!(a.dims, vec![2, 3]);
        assert_eq!(a.data, vec![0.0, 1.0, 2.0, 3.0, 4.0, 255.0]);
        let mut f = vec![0, 0, 0x0D, 1, 0, 0, 0, 2];
        f.extend_from_slice(&1.5f32.to_be_bytes());
        f.extend_from_slice(&(-2.25f32).to_be_bytes());
        assert_eq!(parse_idx(&f).unwrap().data, vec![1.5, -2.25]);
        let mut i = vec![0, 0, 0x0B, 1, 0, 0, 0, 1];
        i.extend_from_slice(&(-300i16).to_be_bytes());
        assert_eq!(parse_idx(&i).unwrap().data, vec![-300.0]);
    }

    #[test]
    fn malformed_files_are_errors() {
        assert!(matches!(parse_idx(&[0, 0]), Err(Error::Idx { .. })));
        let mut bad_magic = u8_file(&[1], &[3]);
        bad_magic[0] = 8;
        assert!(parse_idx(&bad_magic).unwrap_err().to_string().contains("magic"));
        let mut bad_type = u8_file(&[1], &[3]);
        bad_type[2] = 0x07;
        assert!(parse_idx(&bad_type).unwrap_err().to_string().contains("type"));
        assert!(parse_idx(&u8_file(&[2, 3], &[1, 2, 3])).unwrap_err().to_string().contains("truncated"));
        assert!(parse_idx(&u8_file(&[1], &[1, 2])).unwrap_err().to_string().contains("trailing"));
        assert!(parse_idx(&[0, 0, 8, 3, 0, 0]).unwrap_err().to_string().contains("truncated header"));
        assert!(parse_idx(&u8_file(&[0xffff_ffff, 0xffff_ffff, 0xffff_ffff], &[])).is_err());
    }

    #[test]
    fn gzip_and_images_and_labels_round_trip() {
        use std::io::Write;
        let dir = std::env::temp_dir().join(format!("nncert-idx-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let img = dir.join("img.idx.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(&u8_file(&[2, 2, 2], &[0, 51, 102, 255, 0, 0, 0, 255])).unwrap();
        std::fs::write(&img, enc.finish().unwrap()).unwrap();
        let (images, shape) = read_idx_images(&img).unwrap();
        assert_eq!(shape, vec![2, 2]);
        assert_eq!(images[0], vec![0.0, 0.2, 0.4, 1.0]);
        let lab = dir.join("lab.idx");
        std::fs::write(&lab, u8_file(&[3], &[7, 0, 9])).unwrap();
        assert_eq!(read_idx_labels(&lab).unwrap(), vec![7, 0, 9]);
        assert!(read_idx_labels(&img).is_err());
        assert!(matches!(read_idx(dir.join("missing")), Err(Error::Io { .. })));
        std::fs::remove_dir_all(&dir).ok();
    }
}
