//! The shape operators of an ONNX graph as sparse maps from the input's flat positions to the
//! output's (row-major): Transpose, Slice, Pad, Gather, Concat's embeddings, broadcasting,
//! ReduceSum/ReduceMean, and the MatMul of a constant with an identity factor.

use super::tensor::{for_each_index, strides};
use crate::network::Sparse;

type Res<T> = std::result::Result<T, String>;

fn selection(ncols: usize, src: &[Option<usize>]) -> Res<Sparse> {
    Sparse::selection(ncols, src).map_err(|e| e.to_string())
}

/// Transpose by `perm` (output axis k is input axis perm\[k\]).
pub(super) fn transpose(shape: &[usize], perm: &[usize]) -> Res<(Sparse, Vec<usize>)> {
    let r = shape.len();
    let mut seen = vec![false; r];
    if perm.len() != r || perm.iter().any(|&p| p >= r || std::mem::replace(&mut seen[p], true)) {
        return Err(format!("perm {perm:?} is not a permutation of the {r} axes of {shape:?}"));
    }
    let out: Vec<usize> = perm.iter().map(|&p| shape[p]).collect();
    let st = strides(shape);
    let mut src = Vec::with_capacity(shape.iter().product());
    for_each_index(&out, |_, idx| src.push(Some(idx.iter().zip(perm).map(|(&i, &p)| i * st[p]).sum())));
    Ok((selection(shape.iter().product(), &src)?, out))
}

/// Slice along `axes` from `starts` to `ends` by `steps` (ONNX semantics: negative values count
/// from the end, ends clamped).
pub(super) fn slice(
    shape: &[usize],
    starts: &[i64],
    ends: &[i64],
    axes: &[usize],
    steps: &[i64],
) -> Res<(Sparse, Vec<usize>)> {
    let r = shape.len();
    // Per axis: the input positions kept, in output order.
    let mut keep: Vec<Vec<usize>> = shape.iter().map(|&d| (0..d).collect()).collect();
    for (k, &a) in axes.iter().enumerate() {
        if a >= r {
            return Err(format!("axis {a} is outside a tensor of rank {r}"));
        }
        let d = shape[a] as i64;
        let step = steps.get(k).copied().unwrap_or(1);
        if step == 0 {
            return Err("a slice step of 0".into());
        }
        let norm = |v: i64| if v < 0 { v + d } else { v };
        let (mut s, mut e) = (norm(starts[k]), norm(ends[k]));
        let mut kept = Vec::new();
        if step > 0 {
            s = s.clamp(0, d);
            e = e.clamp(0, d);
            let mut i = s;
            while i < e {
                kept.push(i as usize);
                i += step;
            }
        } else {
            s = s.clamp(-1, d - 1);
            e = e.clamp(-1, d - 1);
            let mut i = s;
            while i > e {
                kept.push(i as usize);
                i += step;
            }
        }
        keep[a] = kept;
    }
    let out: Vec<usize> = keep.iter().map(Vec::len).collect();
    let st = strides(shape);
    let mut src = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |_, idx| src.push(Some(idx.iter().enumerate().map(|(k, &i)| keep[k][i] * st[k]).sum())));
    Ok((selection(shape.iter().product(), &src)?, out))
}

/// Constant padding: `pads` = \[begin_0, ..., begin_{r-1}, end_0, ..., end_{r-1}\] (negative
/// values crop). Returns the map and which outputs are padding (they take the pad value).
pub(super) fn pad(shape: &[usize], pads: &[i64]) -> Res<(Sparse, Vec<usize>, Vec<bool>)> {
    let r = shape.len();
    if pads.len() != 2 * r {
        return Err(format!("{} pads for a tensor of rank {r}", pads.len()));
    }
    let out: Vec<i64> = (0..r).map(|k| shape[k] as i64 + pads[k] + pads[k + r]).collect();
    if out.iter().any(|&d| d < 0) {
        return Err(format!("pads {pads:?} crop more than the tensor {shape:?} holds"));
    }
    let out: Vec<usize> = out.iter().map(|&d| d as usize).collect();
    let st = strides(shape);
    let mut src = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |_, idx| {
        let mut flat = 0;
        for k in 0..r {
            let i = idx[k] as i64 - pads[k];
            if i < 0 || i >= shape[k] as i64 {
                src.push(None);
                return;
            }
            flat += i as usize * st[k];
        }
        src.push(Some(flat));
    });
    let padding = src.iter().map(Option::is_none).collect();
    Ok((selection(shape.iter().product(), &src)?, out, padding))
}

/// Gather along `axis` with constant `indices` (of shape `ind_shape`; negative wrap).
pub(super) fn gather(shape: &[usize], axis: usize, indices: &[f64], ind_shape: &[usize]) -> Res<(Sparse, Vec<usize>)> {
    let d = shape[axis] as i64;
    let ind: Vec<usize> = indices
        .iter()
        .map(|&v| {
            let i = v as i64;
            let j = if i < 0 { i + d } else { i };
            if v.fract() != 0.0 || j < 0 || j >= d {
                Err(format!("index {v} is outside axis {axis} of size {d}"))
            } else {
                Ok(j as usize)
            }
        })
        .collect::<Res<_>>()?;
    let mut out = shape[..axis].to_vec();
    out.extend(ind_shape);
    out.extend(&shape[axis + 1..]);
    let st = strides(shape);
    let q = ind_shape.len();
    let ist = strides(ind_shape);
    let mut src = Vec::with_capacity(out.iter().product());
    for_each_index(&out, |_, idx| {
        let pos: usize = (0..q).map(|k| idx[axis + k] * ist[k]).sum();
        let mut flat = ind[pos] * st[axis];
        for k in 0..axis {
            flat += idx[k] * st[k];
        }
        for k in axis + 1..shape.len() {
            flat += idx[k + q - 1] * st[k];
        }
        src.push(Some(flat));
    });
    Ok((selection(shape.iter().product(), &src)?, out))
}

/// The embedding of a tensor of shape `part` into a concatenation of shape `whole` along
/// `axis`, at `offset` on that axis.
pub(super) fn embed(part: &[usize], whole: &[usize], axis: usize, offset: usize) -> Res<Sparse> {
    let st = strides(part);
    let mut src = Vec::with_capacity(whole.iter().product());
    for_each_index(whole, |_, idx| {
        let i = idx[axis];
        if i < offset || i >= offset + part[axis] {
            src.push(None);
        } else {
            src.push(Some(idx.iter().enumerate().map(|(k, &v)| if k == axis { v - offset } else { v } * st[k]).sum()));
        }
    });
    selection(part.iter().product(), &src)
}

/// Numpy broadcasting of a tensor of shape `from` to the shape `to` (copies along the axes of
/// size 1).
pub(super) fn broadcast_to(from: &[usize], to: &[usize]) -> Res<Sparse> {
    let off = to.len() - from.len();
    let st = strides(from);
    let mut src = Vec::with_capacity(to.iter().product());
    for_each_index(to, |_, idx| {
        src.push(Some((0..from.len()).map(|k| if from[k] == 1 { 0 } else { idx[k + off] * st[k] }).sum()))
    });
    selection(from.iter().product(), &src)
}

/// Sum (or mean) over `axes`; with `keep` the reduced axes stay as size 1.
pub(super) fn reduce(shape: &[usize], axes: &[usize], keep: bool, mean: bool) -> Res<(Sparse, Vec<usize>)> {
    let kept: Vec<usize> = shape.iter().enumerate().map(|(k, &d)| if axes.contains(&k) { 1 } else { d }).collect();
    let count: usize = axes.iter().map(|&a| shape[a]).product();
    let w = if mean { 1.0 / count as f64 } else { 1.0 };
    let kst = strides(&kept);
    let mut entries = Vec::with_capacity(shape.iter().product());
    for_each_index(shape, |flat, idx| {
        let row: usize = idx.iter().enumerate().map(|(k, &i)| if axes.contains(&k) { 0 } else { i * kst[k] }).sum();
        entries.push((row, flat, w));
    });
    let s = Sparse::from_entries(kept.iter().product(), shape.iter().product(), entries).map_err(|e| e.to_string())?;
    let out = if keep {
        kept
    } else {
        shape.iter().enumerate().filter(|(k, _)| !axes.contains(k)).map(|(_, &d)| d).collect()
    };
    Ok((s, out))
}

/// I_batch ⊗ M as a sparse map on row-major blocks: `batch` independent copies of the
/// (rows x cols) matrix `m(i, j)`, the copy b reading inputs b cols.. and writing outputs b rows..
/// (`interleave` = k > 1 puts the copies on the inner axis instead: output (i, t) from inputs
/// (j, t) of a (cols, k) tensor, as A X for a constant A).
pub(super) fn kron(batch: usize, rows: usize, cols: usize, k: usize, m: impl Fn(usize, usize) -> f64) -> Res<Sparse> {
    let mut entries = Vec::with_capacity(batch * rows * cols * k);
    for b in 0..batch {
        for i in 0..rows {
            for j in 0..cols {
                let v = m(i, j);
                if v == 0.0 {
                    continue;
                }
                for t in 0..k {
                    entries.push(((b * rows + i) * k + t, (b * cols + j) * k + t, v));
                }
            }
        }
    }
    Sparse::from_entries(batch * rows * k, batch * cols * k, entries).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(s: &Sparse, x: &[f64]) -> Vec<f64> {
        crate::network::conv::on_slice(x, |m| s.forward(m, false))
    }

    #[test]
    fn index_maps_move_the_right_entries() {
        let x: Vec<f64> = (0..24).map(f64::from).collect(); // shape (2, 3, 4)
        let (t, out) = transpose(&[2, 3, 4], &[2, 0, 1]).unwrap();
        assert_eq!(out, vec![4, 2, 3]);
        // y[c, a, b] = x[a, b, c]: y[1, 1, 2] = x[1, 2, 1] = 12 + 8 + 1.
        assert_eq!(apply(&t, &x)[6 + 3 + 2], 21.0);
        let (s, out) = slice(&[2, 3, 4], &[1, -1], &[3, -5], &[1, 2], &[1, -2]).unwrap();
        assert_eq!(out, vec![2, 2, 2]);
        // axis 1: 1, 2; axis 2: 3, 1.
        assert_eq!(apply(&s, &x), vec![7.0, 5.0, 11.0, 9.0, 19.0, 17.0, 23.0, 21.0]);
        let (p, out, padding) = pad(&[2, 2], &[0, 1, 1, -1]).unwrap();
        assert_eq!(out, vec![3, 2]);
        assert_eq!(apply(&p, &[1.0, 2.0, 3.0, 4.0]), vec![0.0, 1.0, 0.0, 3.0, 0.0, 0.0]);
        assert_eq!(padding, vec![true, false, true, false, true, true]);
        let (g, out) = gather(&[2, 3, 4], 2, &[3.0, -4.0], &[2]).unwrap();
        assert_eq!(out, vec![2, 3, 2]);
        assert_eq!(apply(&g, &x)[..4], [3.0, 0.0, 7.0, 4.0]);
        let e = embed(&[1, 2], &[1, 5], 1, 3).unwrap();
        assert_eq!(apply(&e, &[7.0, 8.0]), vec![0.0, 0.0, 0.0, 7.0, 8.0]);
        let b = broadcast_to(&[2, 1], &[3, 2, 2]).unwrap();
        assert_eq!(apply(&b, &[1.0, 2.0])[..4], [1.0, 1.0, 2.0, 2.0]);
        let (r, out) = reduce(&[2, 3, 4], &[1], false, true).unwrap();
        assert_eq!(out, vec![2, 4]);
        assert_eq!(apply(&r, &x)[0], (0.0 + 4.0 + 8.0) / 3.0);
        let k = kron(1, 2, 3, 2, |i, j| (i * 3 + j) as f64).unwrap();
        // A (2x3) times X (3x2): out[1, 0] = sum_j A[1, j] X[j, 0] = 3*0 + 4*2 + 5*4.
        assert_eq!(apply(&k, &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0])[2], 28.0);
        assert!(transpose(&[2, 3], &[0, 0]).is_err());
        assert!(gather(&[2], 0, &[2.0], &[1]).is_err());
    }
}
