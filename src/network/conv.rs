//! 2-D convolution as an operator of the bound core, and its lowering to a dense matrix.
//!
//! A [`Conv2d`] applies itself (forward, W x) and its transpose (W^T lam, the backward pass of
//! every linear relaxation) to a batch of columns without forming the n_out x n_in matrix W:
//! * dense columns go through im2col and one GEMM with the kernel matrix (faer): forward
//!   Y = K cols(X), transpose C^T = L^T K followed by the scatter-add of C into the input
//!   (col2im), with eight columns side by side so that col2im adds runs of eight values;
//! * sparse columns (most entries zero, as the coefficients of one neuron's bound are: nonzero only
//!   on its receptive field) scatter each nonzero entry's kernel slice directly.
//!
//! Either way each output entry is a sum of at most ic kh kw (forward) or oc kh kw (transpose)
//! products, never more than the dense product's inner dimension, so the rounding allowances of
//! [`crate::bounds::rounding`], stated for the dense product in any summation order, cover it.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};

use crate::error::{Error, Result};

/// Geometry of a 2-D convolution (one group), as in the JSON model format and ONNX's `Conv`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dShape {
    /// Input (C, H, W).
    pub input: [usize; 3],
    /// Kernel (out_channels, in_channels, kh, kw).
    pub kernel: [usize; 4],
    /// Stride (sh, sw), both >= 1.
    pub stride: [usize; 2],
    /// Zero padding (ph, pw) on each side.
    pub padding: [usize; 2],
    /// Dilation (dh, dw), both >= 1 (1: a dense kernel).
    pub dilation: [usize; 2],
}

impl Conv2dShape {
    /// A geometry without dilation.
    pub fn new(input: [usize; 3], kernel: [usize; 4], stride: [usize; 2], padding: [usize; 2]) -> Self {
        Self { input, kernel, stride, padding, dilation: [1, 1] }
    }

    /// Output (C', H', W') = (out_channels, (H + 2 ph - dh (kh - 1) - 1) / sh + 1, likewise W').
    pub fn output(&self, layer: usize) -> Result<[usize; 3]> {
        let [c, h, w] = self.input;
        let [oc, ic, kh, kw] = self.kernel;
        let [sh, sw] = self.stride;
        let [ph, pw] = self.padding;
        let [dh, dw] = self.dilation;
        let err = |detail: String| Error::Shape { layer, detail };
        if ic != c {
            return Err(err(format!("kernel has {ic} input channels, input has {c}")));
        }
        if sh == 0 || sw == 0 {
            return Err(err("stride must be >= 1".into()));
        }
        if dh == 0 || dw == 0 {
            return Err(err("dilation must be >= 1".into()));
        }
        if oc == 0 || kh == 0 || kw == 0 || h == 0 || w == 0 {
            return Err(Error::Empty(format!("conv2d layer {layer} has a zero dimension")));
        }
        let (eh, ew) = (dh * (kh - 1) + 1, dw * (kw - 1) + 1);
        if h + 2 * ph < eh || w + 2 * pw < ew {
            return Err(err(format!("kernel extent {eh}x{ew} larger than padded input {}x{}", h + 2 * ph, w + 2 * pw)));
        }
        Ok([oc, (h + 2 * ph - eh) / sh + 1, (w + 2 * pw - ew) / sw + 1])
    }
}

/// Columns the transpose carries side by side (innermost) through its GEMM and col2im, so that
/// col2im adds runs of LANES values (one AVX-512 register, two AVX2 ones) instead of single ones.
const LANES: usize = 8;
/// Marks a kernel tap that falls on the zero padding.
const PAD: u32 = u32::MAX;

/// A 2-D convolution without bias, x (C, H, W) row-major -> (C', H', W') row-major.
///
/// ```
/// use nncert::network::{Conv2d, Conv2dShape};
/// use nncert::verify::{Crown, Verifier};
/// use nncert::{Activation, Domain, InputSet, Layer, Network, Norm};
///
/// // A 1x4x4 image -> conv 2 channels 3x3, stride 1, padding 1 (2x4x4) -> ReLU -> dense 2 classes.
/// let shape = Conv2dShape::new([1, 4, 4], [2, 1, 3, 3], [1, 1], [1, 1]);
/// let kernel: Vec<f64> = (0..18).map(|i| if i % 2 == 0 { 0.2 } else { -0.1 }).collect();
/// let conv = Conv2d::new(shape, kernel, 0)?;
/// let bias = vec![0.05; conv.output_size()]; // one bias per output neuron
/// let hidden = Layer::conv2d(conv, bias, Activation::Relu);
/// let w = faer::Mat::from_fn(2, 32, |i, j| if (i + j) % 3 == 0 { 0.5 } else { -0.25 });
/// let out = Layer::new(w, vec![0.0, 0.1], Activation::Identity);
/// let net = Network::new(vec![1, 4, 4], vec![hidden, out])?;
///
/// let x = vec![0.5; 16];
/// let label = net.predict(&x)?;
/// let set = InputSet::new(x, 0.01, Norm::Linf, Some(Domain::uniform(16, 0.0, 1.0)?))?;
/// let report = Crown.lower_bounds(&net, &set, label, &[1 - label])?;
/// // The bound is sound: below the margin at the centre.
/// let centre = net.margin(set.center(), label, 1 - label)?;
/// assert!(report.bounds[0].1 <= centre);
/// # Ok::<(), nncert::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct Conv2d {
    shape: Conv2dShape,
    output: [usize; 3],
    /// (oc, ic, kh, kw) row-major.
    kernel: Vec<f64>,
    /// K as oc x (ic kh kw).
    k: Mat<f64>,
    /// |K|.
    k_abs: Mat<f64>,
    /// For output position p and tap r = (i, a, b): the input index read, or PAD
    /// (`taps[p * ic kh kw + r]`).
    taps: Vec<u32>,
    /// Per tap r = (i, a, b) of the kernel, the output positions whose tap r falls inside the
    /// input, and where: col2im one tap at a time (see [`TapSpan`]).
    spans: Vec<TapSpan>,
}

/// The output positions (y, x) in `ys` x `xs` read input `first + (y - ys.start) row + (x -
/// xs.start) col` through one kernel tap; the other positions read the padding.
#[derive(Clone, Debug)]
struct TapSpan {
    ys: std::ops::Range<usize>,
    xs: std::ops::Range<usize>,
    first: usize,
    row: usize,
    col: usize,
}

impl Conv2d {
    /// The operator of `shape` with `kernel` flat in (out_c, in_c, kh, kw) order; `layer` names the
    /// layer in errors.
    pub fn new(shape: Conv2dShape, kernel: Vec<f64>, layer: usize) -> Result<Self> {
        let output = shape.output(layer)?;
        let [oc, ic, kh, kw] = shape.kernel;
        if kernel.len() != oc * ic * kh * kw {
            return Err(Error::Shape {
                layer,
                detail: format!("kernel has {} values, expected {}", kernel.len(), oc * ic * kh * kw),
            });
        }
        let [c, h, w] = shape.input;
        if c * h * w >= PAD as usize {
            return Err(Error::Shape { layer, detail: format!("input of {} values is too large", c * h * w) });
        }
        let [_, oh, ow] = output;
        let [sh, sw] = shape.stride;
        let [ph, pw] = shape.padding;
        let [dh, dw] = shape.dilation;
        let ckk = ic * kh * kw;
        let mut taps = vec![PAD; oh * ow * ckk];
        for y in 0..oh {
            for x in 0..ow {
                let p = y * ow + x;
                for i in 0..ic {
                    for a in 0..kh {
                        let iy = (y * sh + a * dh) as isize - ph as isize;
                        if iy < 0 || iy >= h as isize {
                            continue;
                        }
                        for b in 0..kw {
                            let ix = (x * sw + b * dw) as isize - pw as isize;
                            if ix < 0 || ix >= w as isize {
                                continue;
                            }
                            taps[p * ckk + (i * kh + a) * kw + b] = ((i * h + iy as usize) * w + ix as usize) as u32;
                        }
                    }
                }
            }
        }
        let k = Mat::from_fn(oc, ckk, |o, r| kernel[o * ckk + r]);
        let k_abs = Mat::from_fn(oc, ckk, |o, r| kernel[o * ckk + r].abs());
        // Output coordinate u reads input u s + a d - p: inside [0, n) for u in [lo, hi).
        let valid = |n: usize, s: usize, a: usize, d: usize, p: usize, out: usize| {
            let lo = p.saturating_sub(a * d).div_ceil(s);
            let hi = ((n + p).saturating_sub(a * d)).div_ceil(s).min(out);
            lo..hi.max(lo)
        };
        let mut spans = Vec::with_capacity(ckk);
        for i in 0..ic {
            for a in 0..kh {
                for b in 0..kw {
                    let xs = valid(w, sw, b, dw, pw, ow);
                    let ys = if xs.is_empty() { 0..0 } else { valid(h, sh, a, dh, ph, oh) };
                    let first = if ys.is_empty() || xs.is_empty() {
                        0
                    } else {
                        (i * h + ys.start * sh + a * dh - ph) * w + xs.start * sw + b * dw - pw
                    };
                    spans.push(TapSpan { ys, xs, first, row: sh * w, col: sw });
                }
            }
        }
        Ok(Self { shape, output, kernel, k, k_abs, taps, spans })
    }

    /// The geometry.
    pub fn shape(&self) -> &Conv2dShape {
        &self.shape
    }
    /// The kernel, flat in (out_c, in_c, kh, kw) order.
    pub fn kernel(&self) -> &[f64] {
        &self.kernel
    }
    /// Output (C', H', W').
    pub fn output_shape(&self) -> [usize; 3] {
        self.output
    }
    /// Number of inputs C H W.
    pub fn input_size(&self) -> usize {
        self.shape.input.iter().product()
    }
    /// Number of outputs C' H' W'.
    pub fn output_size(&self) -> usize {
        self.output.iter().product()
    }
    fn positions(&self) -> usize {
        self.output[1] * self.output[2]
    }
    fn taps_per_position(&self) -> usize {
        self.k.ncols()
    }

    /// The same convolution with its kernel scaled per output channel (`s[o]`).
    pub fn scale_outputs(&self, s: &[f64]) -> Self {
        let per = self.taps_per_position();
        let kernel = self.kernel.iter().enumerate().map(|(j, v)| v * s[j / per]).collect();
        Self::new(self.shape.clone(), kernel, 0).expect("same geometry")
    }

    /// The same convolution with its kernel scaled per input channel (`s[i]`): conv(s ⊙ x).
    pub fn scale_inputs(&self, s: &[f64]) -> Self {
        let [_, ic, kh, kw] = self.shape.kernel;
        let kernel = self.kernel.iter().enumerate().map(|(j, v)| v * s[(j / (kh * kw)) % ic]).collect();
        Self::new(self.shape.clone(), kernel, 0).expect("same geometry")
    }

    /// W X for every column of `x` (inputs x columns).
    pub fn forward(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        self.forward_with(self.k.as_ref(), x)
    }

    /// |W| X (the kernel's magnitudes).
    pub fn forward_abs(&self, x: MatRef<'_, f64>) -> Mat<f64> {
        self.forward_with(self.k_abs.as_ref(), x)
    }

    fn forward_with(&self, k: MatRef<'_, f64>, x: MatRef<'_, f64>) -> Mat<f64> {
        let (np, ckk, oc) = (self.positions(), self.taps_per_position(), self.output[0]);
        let mut out = Mat::<f64>::zeros(self.output_size(), x.ncols());
        for (start, len) in chunks(x.ncols(), np, ckk.max(oc)) {
            // im2col: column p + np s' holds the taps of position p for input column start + s'.
            let mut cols = Mat::<f64>::zeros(ckk, np * len);
            for s in 0..len {
                let xs = x.col(start + s);
                for p in 0..np {
                    let taps = &self.taps[p * ckk..(p + 1) * ckk];
                    let dst = cols.col_mut(p + np * s).try_as_col_major_mut().expect("owned").as_slice_mut();
                    for (d, &t) in dst.iter_mut().zip(taps) {
                        if t != PAD {
                            *d = xs[t as usize];
                        }
                    }
                }
            }
            let mut y = Mat::<f64>::zeros(oc, np * len);
            matmul(y.as_mut(), Accum::Replace, k, cols.as_ref(), 1.0, Par::Seq);
            for s in 0..len {
                let dst = out.col_mut(start + s).try_as_col_major_mut().expect("owned").as_slice_mut();
                for o in 0..oc {
                    for p in 0..np {
                        dst[o * np + p] = y[(o, p + np * s)];
                    }
                }
            }
        }
        out
    }

    /// W^T lam for every column of `lam` (outputs x columns): scatters the nonzero entries when
    /// few are, else im2col's transpose through one GEMM.
    pub fn transpose(&self, lam: MatRef<'_, f64>) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(self.input_size(), lam.ncols());
        self.transpose_to(lam, out.as_mut());
        out
    }

    /// [`Conv2d::transpose`] written into `out` (inputs x columns of `lam`, contiguous columns;
    /// its contents are overwritten).
    pub fn transpose_to(&self, lam: MatRef<'_, f64>, mut out: faer::MatMut<'_, f64>) {
        let (np, ckk, oc) = (self.positions(), self.taps_per_position(), self.output[0]);
        assert_eq!((out.nrows(), out.ncols()), (self.input_size(), lam.ncols()), "transpose_to: output shape");
        if mostly_zero(lam) {
            out.fill(0.0);
            for s in 0..lam.ncols() {
                let dst = out.as_mut().col_mut(s).try_as_col_major_mut().expect("contiguous columns").as_slice_mut();
                for (j, &v) in lam.col(s).iter().enumerate() {
                    self.scatter(dst, j, v, |t| t);
                }
            }
            return;
        }
        let (ow, n_in) = (self.output[2], self.input_size());
        let mut lt = Mat::<f64>::zeros(LANES * np, oc);
        let mut ct = Mat::<f64>::zeros(LANES * np, ckk);
        let mut d = vec![[0.0; LANES]; n_in];
        let mut copy = None;
        let lam = contiguous(lam, &mut copy);
        for start in (0..lam.ncols()).step_by(LANES) {
            let len = LANES.min(lam.ncols() - start);
            // The columns innermost, LANES at a time: L^T (LANES np x oc) with L^T[s + LANES p,
            // o] = lam[o np + p, start + s] (zero past the last column), then C^T = L^T K:
            // C^T[s + LANES p, r] is tap r of position p for column start + s.
            let cols: Vec<&[f64]> =
                (start..start + len).map(|s| lam.col(s).try_as_col_major().expect("contiguous").as_slice()).collect();
            for o in 0..oc {
                let dst = lt.col_mut(o).try_as_col_major_mut().expect("owned").as_slice_mut();
                let (dst, _) = dst.as_chunks_mut::<LANES>();
                for (p, d) in dst.iter_mut().enumerate() {
                    *d = std::array::from_fn(|s| if s < len { cols[s][o * np + p] } else { 0.0 });
                }
            }
            matmul(ct.as_mut(), Accum::Replace, lt.as_ref(), self.k.as_ref(), 1.0, Par::Seq);
            // col2im one tap at a time: the input a position's tap r reads gains the tap's
            // LANES values.
            d.iter_mut().for_each(|v| *v = [0.0; LANES]);
            for (r, span) in self.spans.iter().enumerate() {
                let src = ct.col(r).try_as_col_major().expect("owned").as_slice();
                let (src, _) = src.as_chunks::<LANES>();
                for (k, y) in span.ys.clone().enumerate() {
                    let row = &src[y * ow + span.xs.start..y * ow + span.xs.end];
                    let window = d[span.first + k * span.row..].iter_mut().step_by(span.col);
                    for (dst, add) in window.zip(row) {
                        let sum: [f64; LANES] = std::array::from_fn(|l| dst[l] + add[l]);
                        *dst = sum;
                    }
                }
            }
            unpack_lanes(&d, out.as_mut().subcols_mut(start, len));
        }
    }

    /// W^T lam for coefficients `lam` stored on the output neurons `rows` only (the others zero),
    /// returned on the inputs they reach (sorted, as `(inputs, values)`): the receptive fields of
    /// `rows`, so that coefficients local in space stay small.
    pub fn transpose_rows(&self, rows: &[usize], lam: MatRef<'_, f64>) -> (Vec<usize>, Mat<f64>) {
        let (np, ckk) = (self.positions(), self.taps_per_position());
        let mut slot = vec![PAD; self.input_size()];
        let mut touched: Vec<usize> = Vec::new();
        for &j in rows {
            let p = j % np;
            for &t in &self.taps[p * ckk..(p + 1) * ckk] {
                if t != PAD && slot[t as usize] == PAD {
                    slot[t as usize] = 0;
                    touched.push(t as usize);
                }
            }
        }
        touched.sort_unstable();
        for (r, &t) in touched.iter().enumerate() {
            slot[t] = r as u32;
        }
        let mut out = Mat::<f64>::zeros(touched.len(), lam.ncols());
        if mostly_zero(lam) {
            for s in 0..lam.ncols() {
                let dst = out.col_mut(s).try_as_col_major_mut().expect("owned").as_slice_mut();
                for (&j, &v) in rows.iter().zip(lam.col(s).iter()) {
                    self.scatter(dst, j, v, |t| slot[t] as usize);
                }
            }
            return (touched, out);
        }
        // The positions present; per position and column, the channel stack as one column of
        // L (oc x positions columns), one GEMM with K^T, then the patches added into place.
        let oc = self.output[0];
        let mut at = vec![usize::MAX; np];
        let mut positions: Vec<usize> = Vec::new();
        for &j in rows {
            let p = j % np;
            if at[p] == usize::MAX {
                at[p] = positions.len();
                positions.push(p);
            }
        }
        let npg = positions.len();
        let mut copy = None;
        let lam = contiguous(lam, &mut copy);
        // As in `transpose`, LANES columns at a time innermost: L^T[s + LANES at[p], o] =
        // lam[(o, p), start + s], C^T = L^T K, and each present position's taps add their LANES
        // values into the inputs they read.
        let mut lt = Mat::<f64>::zeros(LANES * npg, oc);
        let mut ct = Mat::<f64>::zeros(LANES * npg, ckk);
        let mut d = vec![[0.0; LANES]; touched.len()];
        for start in (0..lam.ncols()).step_by(LANES) {
            let len = LANES.min(lam.ncols() - start);
            let cols: Vec<&[f64]> =
                (start..start + len).map(|s| lam.col(s).try_as_col_major().expect("contiguous").as_slice()).collect();
            // (rows not listed stay zero: the same rows in every chunk)
            for (i, &j) in rows.iter().enumerate() {
                let (o, pi) = (j / np, at[j % np]);
                let dst = lt.col_mut(o).try_as_col_major_mut().expect("owned").as_slice_mut();
                let dst = &mut dst.as_chunks_mut::<LANES>().0[pi];
                *dst = std::array::from_fn(|s| if s < len { cols[s][i] } else { 0.0 });
            }
            matmul(ct.as_mut(), Accum::Replace, lt.as_ref(), self.k.as_ref(), 1.0, Par::Seq);
            d.iter_mut().for_each(|v| *v = [0.0; LANES]);
            for r in 0..ckk {
                let (src, _) = ct.col(r).try_as_col_major().expect("owned").as_slice().as_chunks::<LANES>();
                for (&p, add) in positions.iter().zip(src) {
                    let t = self.taps[p * ckk + r];
                    if t != PAD {
                        let dst = &mut d[slot[t as usize] as usize];
                        *dst = std::array::from_fn(|l| dst[l] + add[l]);
                    }
                }
            }
            unpack_lanes(&d, out.as_mut().subcols_mut(start, len));
        }
        (touched, out)
    }

    /// The output neurons grouped by position: every channel at `per_group` consecutive output
    /// positions (row-major) per group. Neurons of one group share most of their receptive field.
    pub fn neuron_groups(&self, per_group: usize) -> Vec<Vec<usize>> {
        let (np, oc) = (self.positions(), self.output[0]);
        (0..np)
            .step_by(per_group.max(1))
            .map(|p0| {
                let ps = p0..(p0 + per_group.max(1)).min(np);
                (0..oc).flat_map(|o| ps.clone().map(move |p| o * np + p)).collect()
            })
            .collect()
    }

    /// Columns `rows` of W^T (the rows of W as columns), each scattered from the kernel.
    pub fn rows_transposed(&self, rows: &[usize]) -> Mat<f64> {
        let mut out = Mat::<f64>::zeros(self.input_size(), rows.len());
        for (s, &j) in rows.iter().enumerate() {
            let dst = out.col_mut(s).try_as_col_major_mut().expect("owned").as_slice_mut();
            self.scatter(dst, j, 1.0, |t| t);
        }
        out
    }

    /// Adds v times output neuron j's kernel slice to `dst`, input t landing at `at(t)`: one
    /// entry of W^T lam by scattering (nothing for v = 0).
    fn scatter(&self, dst: &mut [f64], j: usize, v: f64, at: impl Fn(usize) -> usize) {
        if v == 0.0 {
            return;
        }
        let (np, ckk) = (self.positions(), self.taps_per_position());
        let (o, p) = (j / np, j % np);
        let taps = &self.taps[p * ckk..(p + 1) * ckk];
        for (&t, &kv) in taps.iter().zip(&self.kernel[o * ckk..(o + 1) * ckk]) {
            if t != PAD {
                dst[at(t as usize)] += v * kv;
            }
        }
    }

    /// The dense matrix M (out x in) with M x = conv(x).
    pub fn lower(&self) -> Mat<f64> {
        let all: Vec<usize> = (0..self.output_size()).collect();
        self.rows_transposed(&all).transpose().to_owned()
    }
}

/// Whether fewer than 1 in 8 entries of `lam` are nonzero: then scattering them beats the GEMM
/// (a GEMM flop is ~8 times cheaper than a scattered one).
fn mostly_zero(lam: MatRef<'_, f64>) -> bool {
    let nnz: usize = (0..lam.ncols()).map(|s| lam.col(s).iter().filter(|v| **v != 0.0).count()).sum();
    nnz * 8 < lam.nrows() * lam.ncols()
}

/// `lam` itself when its columns are contiguous, else a contiguous copy kept in `copy`.
fn contiguous<'a>(lam: MatRef<'a, f64>, copy: &'a mut Option<Mat<f64>>) -> MatRef<'a, f64> {
    if lam.row_stride() == 1 {
        return lam;
    }
    copy.insert(lam.to_owned()).as_ref()
}

/// Column s of `out` (the first `out.ncols()` <= LANES) = lane s of every entry of `d`.
fn unpack_lanes(d: &[[f64; LANES]], mut out: faer::MatMut<'_, f64>) {
    let mut outs: Vec<&mut [f64]> = out
        .as_mut()
        .col_iter_mut()
        .map(|c| c.try_as_col_major_mut().expect("contiguous columns").as_slice_mut())
        .collect();
    for (q, v) in d.iter().enumerate() {
        for (o, x) in outs.iter_mut().zip(v) {
            o[q] = *x;
        }
    }
}

/// `f` (an operator on columns) applied to the single column `x`.
pub(crate) fn on_slice(x: &[f64], f: impl FnOnce(MatRef<'_, f64>) -> Mat<f64>) -> Vec<f64> {
    f(faer::ColRef::from_slice(x).as_mat()).col(0).iter().copied().collect()
}

/// The per-channel values of `v` (C blocks of `per` entries each) when each block is constant.
pub(crate) fn per_channel(v: &[f64], per: usize) -> Option<Vec<f64>> {
    let per = per.max(1);
    (0..v.len()).all(|j| v[j] == v[(j / per) * per]).then(|| v.iter().step_by(per).copied().collect())
}

/// Column ranges small enough that the im2col buffers (taps x positions x columns) stay near
/// 2^19 entries (4 MiB).
fn chunks(ncols: usize, np: usize, ckk: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = ((1usize << 19) / (np * ckk).max(1)).clamp(1, 256);
    (0..ncols).step_by(step).map(move |s| (s, step.min(ncols - s)))
}

/// The dense matrix M (out x in) with M x = conv(x) for x flattened row-major (C, H, W), and the
/// bias repeated over the output positions. `kernel` is flat in (out_c, in_c, kh, kw) order.
pub fn lower_conv2d(shape: &Conv2dShape, kernel: &[f64], bias: &[f64], layer: usize) -> Result<(Mat<f64>, Vec<f64>)> {
    let conv = Conv2d::new(shape.clone(), kernel.to_vec(), layer)?;
    let [oc, oh, ow] = conv.output_shape();
    if bias.len() != oc {
        return Err(Error::Shape { layer, detail: format!("bias has {} values, expected {oc}", bias.len()) });
    }
    let b = (0..oc * oh * ow).map(|j| bias[j / (oh * ow)]).collect();
    Ok((conv.lower(), b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Direct convolution, written independently of the lowering (loops over input positions).
    fn direct_conv(shape: &Conv2dShape, k: &[f64], bias: &[f64], input: &[f64]) -> Vec<f64> {
        let [c, h, w] = shape.input;
        let [oc, _, kh, kw] = shape.kernel;
        let [oc2, oh, ow] = shape.output(0).unwrap();
        let [dh, dw] = shape.dilation;
        assert_eq!(oc, oc2);
        let mut padded = vec![0.0; c * (h + 2 * shape.padding[0]) * (w + 2 * shape.padding[1])];
        let (hp, wp) = (h + 2 * shape.padding[0], w + 2 * shape.padding[1]);
        for i in 0..c {
            for y in 0..h {
                for x in 0..w {
                    padded[(i * hp + y + shape.padding[0]) * wp + x + shape.padding[1]] = input[(i * h + y) * w + x];
                }
            }
        }
        let mut out = vec![0.0; oc * oh * ow];
        for o in 0..oc {
            for y in 0..oh {
                for x in 0..ow {
                    let mut s = bias[o];
                    for i in 0..c {
                        for a in 0..kh {
                            for b in 0..kw {
                                s += k[((o * c + i) * kh + a) * kw + b]
                                    * padded
                                        [(i * hp + y * shape.stride[0] + a * dh) * wp + x * shape.stride[1] + b * dw];
                            }
                        }
                    }
                    out[(o * oh + y) * ow + x] = s;
                }
            }
        }
        out
    }

    fn rnd_source(mut seed: u64) -> impl FnMut() -> f64 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        }
    }

    /// Geometries with several strides, paddings, dilations and channel counts.
    fn geometries() -> Vec<Conv2dShape> {
        vec![
            Conv2dShape::new([2, 7, 6], [3, 2, 3, 3], [1, 1], [0, 0]),
            Conv2dShape::new([1, 8, 8], [4, 1, 4, 4], [2, 2], [1, 1]),
            Conv2dShape::new([3, 5, 9], [2, 3, 2, 4], [2, 3], [1, 2]),
            Conv2dShape { input: [2, 9, 8], kernel: [3, 2, 3, 2], stride: [1, 2], padding: [2, 1], dilation: [2, 3] },
            Conv2dShape { input: [4, 6, 6], kernel: [5, 4, 2, 2], stride: [3, 1], padding: [0, 1], dilation: [3, 1] },
            // Every position's only tap reads the padding.
            Conv2dShape::new([1, 2, 2], [2, 1, 1, 1], [3, 3], [1, 1]),
            // Some taps read the padding at every position.
            Conv2dShape::new([2, 3, 4], [2, 2, 3, 3], [4, 4], [2, 2]),
        ]
    }

    #[test]
    fn lowering_matches_direct_convolution() {
        let mut rnd = rnd_source(1);
        for shape in geometries() {
            let kernel = shape.kernel;
            let k: Vec<f64> = (0..kernel.iter().product::<usize>()).map(|_| rnd()).collect();
            let bias: Vec<f64> = (0..kernel[0]).map(|_| rnd()).collect();
            let x: Vec<f64> = (0..shape.input.iter().product::<usize>()).map(|_| rnd()).collect();
            let (m, b) = lower_conv2d(&shape, &k, &bias, 0).unwrap();
            let expect = direct_conv(&shape, &k, &bias, &x);
            assert_eq!(m.nrows(), expect.len());
            for r in 0..m.nrows() {
                let got: f64 = (0..m.ncols()).map(|j| m[(r, j)] * x[j]).sum::<f64>() + b[r];
                assert!((got - expect[r]).abs() < 1e-12, "row {r}: {got} vs {}", expect[r]);
            }
        }
    }

    #[test]
    fn the_operator_applies_the_lowered_matrix_and_its_transpose() {
        let mut rnd = rnd_source(7);
        for shape in geometries() {
            let k: Vec<f64> = (0..shape.kernel.iter().product::<usize>()).map(|_| rnd()).collect();
            let conv = Conv2d::new(shape.clone(), k, 0).unwrap();
            let m = conv.lower();
            let (n_out, n_in) = (conv.output_size(), conv.input_size());
            assert_eq!((m.nrows(), m.ncols()), (n_out, n_in));
            let close = |a: &Mat<f64>, b: &Mat<f64>| {
                assert_eq!((a.nrows(), a.ncols()), (b.nrows(), b.ncols()));
                for j in 0..a.ncols() {
                    for i in 0..a.nrows() {
                        assert!((a[(i, j)] - b[(i, j)]).abs() < 1e-12, "{shape:?} ({i}, {j})");
                    }
                }
            };
            // 300 columns: more than one im2col chunk on the small geometries.
            let x = Mat::from_fn(n_in, 300, |_, _| rnd());
            close(&conv.forward(x.as_ref()), &crate::linalg::mul(m.as_ref(), x.as_ref()));
            let m_abs = Mat::from_fn(n_out, n_in, |i, j| m[(i, j)].abs());
            close(&conv.forward_abs(x.as_ref()), &crate::linalg::mul(m_abs.as_ref(), x.as_ref()));
            // Dense coefficients (the GEMM path) and sparse ones (the scatter path).
            // 43 columns: a last chunk of fewer than LANES.
            let dense = Mat::from_fn(n_out, 43, |_, _| rnd());
            let sparse = Mat::from_fn(n_out, 43, |i, j| if (i * 7 + j * 3) % 23 == 0 { rnd() } else { 0.0 });
            for lam in [dense, sparse] {
                let want = crate::linalg::mul(m.transpose(), lam.as_ref());
                close(&conv.transpose(lam.as_ref()), &want);
                // A view whose columns are not contiguous (a transposed row-major copy).
                let row_major = lam.transpose().to_owned();
                close(&conv.transpose(row_major.transpose()), &want);
                // The same coefficients on every third output neuron only, through `transpose_rows`.
                let rows: Vec<usize> = (0..n_out).filter(|j| j % 3 == 1).collect();
                let sub = Mat::from_fn(rows.len(), lam.ncols(), |i, s| lam[(rows[i], s)]);
                let full = Mat::from_fn(n_out, lam.ncols(), |j, s| if j % 3 == 1 { lam[(j, s)] } else { 0.0 });
                let want = crate::linalg::mul(m.transpose(), full.as_ref());
                let (inputs, values) = conv.transpose_rows(&rows, sub.as_ref());
                for q in 0..n_in {
                    let at = inputs.iter().position(|&t| t == q);
                    for s in 0..lam.ncols() {
                        let got = at.map_or(0.0, |r| values[(r, s)]);
                        assert!((got - want[(q, s)]).abs() < 1e-12, "{shape:?} rows ({q}, {s})");
                    }
                }
            }
            let rows = [0, n_out / 2, n_out - 1];
            let got = conv.rows_transposed(&rows);
            for (s, &r) in rows.iter().enumerate() {
                for j in 0..n_in {
                    assert_eq!(got[(j, s)], m[(r, j)]);
                }
            }
        }
    }

    #[test]
    fn scaling_channels_scales_the_kernel() {
        let mut rnd = rnd_source(3);
        let shape = Conv2dShape::new([2, 5, 5], [3, 2, 3, 3], [1, 1], [1, 1]);
        let k: Vec<f64> = (0..54).map(|_| rnd()).collect();
        let conv = Conv2d::new(shape, k, 0).unwrap();
        let x = Mat::from_fn(50, 1, |_, _| rnd());
        let y = conv.forward(x.as_ref());
        let out = conv.scale_outputs(&[2.0, -1.0, 0.5]).forward(x.as_ref());
        for j in 0..75 {
            let s = [2.0, -1.0, 0.5][j / 25];
            assert!((out[(j, 0)] - s * y[(j, 0)]).abs() < 1e-12);
        }
        let xs = Mat::from_fn(50, 1, |i, _| x[(i, 0)] * [3.0, -0.25][i / 25]);
        let a = conv.scale_inputs(&[3.0, -0.25]).forward(x.as_ref());
        let b = conv.forward(xs.as_ref());
        for j in 0..75 {
            assert!((a[(j, 0)] - b[(j, 0)]).abs() < 1e-12);
        }
    }

    #[test]
    fn bad_geometry_is_an_error() {
        let s = Conv2dShape::new([1, 2, 2], [1, 1, 5, 5], [1, 1], [0, 0]);
        assert!(matches!(s.output(3), Err(Error::Shape { layer: 3, .. })));
        let s = Conv2dShape::new([2, 4, 4], [1, 1, 2, 2], [1, 1], [0, 0]);
        assert!(s.output(0).is_err());
        let s = Conv2dShape::new([1, 4, 4], [1, 1, 2, 2], [0, 1], [0, 0]);
        assert!(s.output(0).is_err());
        let s = Conv2dShape { dilation: [1, 0], ..Conv2dShape::new([1, 4, 4], [1, 1, 2, 2], [1, 1], [0, 0]) };
        assert!(s.output(0).is_err());
        let s = Conv2dShape { dilation: [3, 1], ..Conv2dShape::new([1, 4, 4], [1, 1, 2, 2], [1, 1], [0, 0]) };
        assert!(s.output(0).is_ok());
        let s = Conv2dShape { dilation: [4, 1], ..Conv2dShape::new([1, 4, 4], [1, 1, 2, 2], [1, 1], [0, 0]) };
        assert!(s.output(0).is_err());
    }
}
