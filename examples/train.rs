//! Train a small MLP on the bundled 8x8 digits (optionally with PGD adversarial training) and
//! save it in the JSON model format.
//!
//! ```text
//! cargo run --release --example train -- --activation relu --adv-eps 0.1 --out data/models/digits-relu-adv.json
//! cargo run --release --example train -- --activation tanh --adv-eps 0.1 --out data/models/digits-tanh-adv.json
//! ```
//!
//! Adam on the softmax cross-entropy, mini-batches of 32, He/Glorot-scaled uniform initialization
//! from a fixed seed. With `--adv-eps E > 0`, each batch is half clean and half l_inf PGD examples
//! (7 steps of size E/4 on the loss, inside [0, 1]), the adversarial training of Madry et al.
//! With `--curvature G > 0` (smooth activations), G times the mean curvature bound K of Theorem 4
//! of the CRC paper is added to the loss (its curvature-regularized training), which makes the
//! `crc` verifier's certificates tighter:
//!
//! ```text
//! cargo run --release --example train -- --activation tanh --hidden 32 --curvature 0.01 --out data/models/digits-tanh-crt.json
//! ```

use std::path::PathBuf;

use clap::Parser;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use nncert::attack::PgdSettings;
use nncert::certify::{CertifyOptions, certify};
use nncert::{Activation, Domain, InputSet, Layer, Network, Norm, Verdict};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

#[derive(Parser, Debug)]
#[command(about = "Train an MLP on the bundled digits data set")]
struct Args {
    /// relu, sigmoid, tanh or softplus.
    #[arg(long, default_value = "relu")]
    activation: String,
    /// Hidden layer widths, comma separated.
    #[arg(long, default_value = "32,32")]
    hidden: String,
    /// Epochs.
    #[arg(long, default_value_t = 80)]
    epochs: usize,
    /// Adam learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// l_inf radius of PGD adversarial training (0: plain training).
    #[arg(long, default_value_t = 0.0)]
    adv_eps: f64,
    /// Curvature regularization gamma (CRT of the CRC paper): gamma times the mean over class pairs
    /// of the Theorem 4 curvature bound K(W, y, t) is added to the loss (smooth activations only).
    #[arg(long, default_value_t = 0.0)]
    curvature: f64,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Output model file.
    #[arg(long)]
    out: PathBuf,
}

struct Model {
    /// Weights, column-major, with their (rows, cols).
    w: Vec<Vec<f64>>,
    dims: Vec<(usize, usize)>,
    b: Vec<Vec<f64>>,
    act: Activation,
}

struct Grads {
    w: Vec<Vec<f64>>,
    b: Vec<Vec<f64>>,
    input: Mat<f64>,
    loss: f64,
}

fn mul(a: faer::MatRef<'_, f64>, b: faer::MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

impl Model {
    fn new(sizes: &[usize], act: Activation, rng: &mut StdRng) -> Self {
        let mut w = Vec::new();
        let mut b = Vec::new();
        let mut dims = Vec::new();
        for k in 0..sizes.len() - 1 {
            let scale = (6.0 / sizes[k] as f64).sqrt();
            w.push((0..sizes[k + 1] * sizes[k]).map(|_| (rng.random::<f64>() * 2.0 - 1.0) * scale * 0.5).collect());
            dims.push((sizes[k + 1], sizes[k]));
            b.push(vec![0.0; sizes[k + 1]]);
        }
        Self { w, dims, b, act }
    }

    fn weight(&self, i: usize) -> faer::MatRef<'_, f64> {
        faer::MatRef::from_column_major_slice(&self.w[i], self.dims[i].0, self.dims[i].1)
    }

    /// Mean cross-entropy over the batch (columns of x) and its gradients.
    fn loss_grad(&self, x: &Mat<f64>, y: &[usize]) -> Grads {
        let k = self.w.len();
        let mut hs = vec![x.clone()];
        let mut zs = Vec::new();
        for i in 0..k {
            let mut z = mul(self.weight(i), hs[i].as_ref());
            for c in 0..z.ncols() {
                for r in 0..z.nrows() {
                    z[(r, c)] += self.b[i][r];
                }
            }
            let act = if i + 1 == k { Activation::Identity } else { self.act };
            hs.push(Mat::from_fn(z.nrows(), z.ncols(), |r, c| act.eval(z[(r, c)])));
            zs.push(z);
        }
        let logits = &hs[k];
        let bsz = x.ncols() as f64;
        let mut g = Mat::zeros(logits.nrows(), logits.ncols());
        let mut loss = 0.0;
        for c in 0..logits.ncols() {
            let m = (0..logits.nrows()).map(|r| logits[(r, c)]).fold(f64::NEG_INFINITY, f64::max);
            let s: f64 = (0..logits.nrows()).map(|r| (logits[(r, c)] - m).exp()).sum();
            loss += -(logits[(y[c], c)] - m - s.ln());
            for r in 0..logits.nrows() {
                g[(r, c)] = ((logits[(r, c)] - m).exp() / s - if r == y[c] { 1.0 } else { 0.0 }) / bsz;
            }
        }
        let mut gw = vec![Vec::new(); k];
        let mut gb = vec![Vec::new(); k];
        for i in (0..k).rev() {
            if i + 1 < k {
                for c in 0..g.ncols() {
                    for r in 0..g.nrows() {
                        g[(r, c)] *= self.act.derivative(zs[i][(r, c)]);
                    }
                }
            }
            let m = mul(g.as_ref(), hs[i].as_ref().transpose());
            gw[i] = (0..m.ncols()).flat_map(|c| (0..m.nrows()).map(move |r| (r, c))).map(|(r, c)| m[(r, c)]).collect();
            gb[i] = (0..g.nrows()).map(|r| (0..g.ncols()).map(|c| g[(r, c)]).sum()).collect();
            g = mul(self.weight(i).transpose(), g.as_ref());
        }
        Grads { w: gw, b: gb, input: g, loss: loss / bsz }
    }

    /// The mean over unordered class pairs (y, t) of the curvature bound K(W, y, t) of Theorem 4
    /// (CRC paper, eq. (6)-(7)) and its gradient with respect to every weight matrix (column-major,
    /// like `w`). K = sum_I h r_I^2 max_j S^(I)_j with r_I = g^(I-1) prod_(k <= I) ||W_k|| and
    /// S^(I) = g^(H-I) |v|^T |W_H| ... |W_(I+1)|, v = W_L[y] - W_L[t]; the spectral norms'
    /// gradients are u v^T of the top singular pair, the max's gradient flows through its argmax.
    fn curvature_penalty(&self) -> (f64, Vec<Vec<f64>>) {
        let c = self.act.curvature_constants().expect("a smooth activation");
        let (g, h) = (c.g, c.h);
        let k = self.w.len();
        let hidden = k - 1;
        let mut grads: Vec<Mat<f64>> = (0..k).map(|i| Mat::zeros(self.dims[i].0, self.dims[i].1)).collect();
        // Spectral norms and top singular pairs of the hidden layers' weights.
        let mut sigma = Vec::new();
        let mut pairs = Vec::new();
        for i in 0..hidden {
            let svd = self.weight(i).thin_svd().expect("svd of a finite matrix");
            sigma.push(svd.S()[0]);
            pairs.push((svd.U().col(0).to_owned(), svd.V().col(0).to_owned()));
        }
        // r_I for I = 1..=hidden (index I-1).
        let mut r = Vec::new();
        for i in 0..hidden {
            r.push(if i == 0 { sigma[0] } else { g * sigma[i] * r[i - 1] });
        }
        let abs = |i: usize| {
            let w = self.weight(i);
            Mat::from_fn(w.nrows(), w.ncols(), |a, b| w[(a, b)].abs())
        };
        let abs_w: Vec<Mat<f64>> = (0..k).map(abs).collect();
        let wl = self.weight(k - 1);
        let classes = wl.nrows();
        let mut total = 0.0;
        let mut count = 0.0;
        for y in 0..classes {
            for t in y + 1..classes {
                count += 1.0;
                let v: Vec<f64> = (0..wl.ncols()).map(|j| wl[(y, j)] - wl[(t, j)]).collect();
                // left[l] = |v|^T |W_H| ... |W_(l+1)| over layer-l units, l = hidden..=1 (index l).
                let mut left: Vec<Vec<f64>> = vec![Vec::new(); hidden + 1];
                left[hidden] = v.iter().map(|x| x.abs()).collect();
                for l in (1..hidden).rev() {
                    // W_(l+1) is weight index l: rows = layer l+1 units, cols = layer l units.
                    let w = &abs_w[l];
                    left[l] = (0..w.ncols())
                        .map(|col| (0..w.nrows()).map(|row| left[l + 1][row] * w[(row, col)]).sum())
                        .collect();
                }
                let mut d_sigma = vec![0.0; hidden];
                for layer in 1..=hidden {
                    let scale = g.powi((hidden - layer) as i32);
                    let s: Vec<f64> = left[layer].iter().map(|x| x * scale).collect();
                    let (jmax, a) = s
                        .iter()
                        .enumerate()
                        .fold((0, f64::NEG_INFINITY), |b, (j, &x)| if x > b.1 { (j, x) } else { b });
                    let rr = r[layer - 1];
                    total += h * rr * rr * a;
                    for kk in 1..=layer {
                        d_sigma[kk - 1] += 2.0 * h * rr * rr * a / sigma[kk - 1];
                    }
                    // Through the max: right vectors from e_jmax upwards.
                    let coef = h * rr * rr * scale;
                    let mut right = vec![0.0; s.len()];
                    right[jmax] = 1.0;
                    for kk in layer + 1..=hidden {
                        // dK/dW_kk += coef sign(W_kk) ⊙ left[kk] right^T; W_kk is weight index kk-1.
                        let w = self.weight(kk - 1);
                        for row in 0..w.nrows() {
                            for col in 0..w.ncols() {
                                grads[kk - 1][(row, col)] += coef * w[(row, col)].signum() * left[kk][row] * right[col];
                            }
                        }
                        right = (0..w.nrows())
                            .map(|row| (0..w.ncols()).map(|col| abs_w[kk - 1][(row, col)] * right[col]).sum())
                            .collect();
                    }
                    for j in 0..v.len() {
                        let dv = coef * v[j].signum() * right[j];
                        grads[k - 1][(y, j)] += dv;
                        grads[k - 1][(t, j)] -= dv;
                    }
                }
                for i in 0..hidden {
                    let (u, vv) = &pairs[i];
                    for row in 0..u.nrows() {
                        for col in 0..vv.nrows() {
                            grads[i][(row, col)] += d_sigma[i] * u[row] * vv[col];
                        }
                    }
                }
            }
        }
        let flat = grads
            .iter()
            .map(|m| (0..m.ncols()).flat_map(|c| (0..m.nrows()).map(move |r| m[(r, c)] / count)).collect())
            .collect();
        (total / count, flat)
    }

    fn network(&self) -> Network {
        let k = self.w.len();
        let layers = (0..k)
            .map(|i| {
                Layer::new(
                    self.weight(i).to_owned(),
                    self.b[i].clone(),
                    if i + 1 == k { Activation::Identity } else { self.act },
                )
            })
            .collect();
        Network::new(vec![1, 8, 8], layers).expect("trained weights are finite")
    }
}

struct Adam {
    m: Vec<Vec<f64>>,
    v: Vec<Vec<f64>>,
    t: i32,
}

impl Adam {
    fn step(&mut self, params: Vec<&mut [f64]>, grads: Vec<&[f64]>, lr: f64) {
        self.t += 1;
        let (b1, b2) = (0.9f64, 0.999f64);
        for (p_i, (p, g)) in params.into_iter().zip(grads).enumerate() {
            if self.m.len() <= p_i {
                self.m.push(vec![0.0; p.len()]);
                self.v.push(vec![0.0; p.len()]);
            }
            for j in 0..p.len() {
                self.m[p_i][j] = b1 * self.m[p_i][j] + (1.0 - b1) * g[j];
                self.v[p_i][j] = b2 * self.v[p_i][j] + (1.0 - b2) * g[j] * g[j];
                let mh = self.m[p_i][j] / (1.0 - b1.powi(self.t));
                let vh = self.v[p_i][j] / (1.0 - b2.powi(self.t));
                p[j] -= lr * mh / (vh.sqrt() + 1e-8);
            }
        }
    }
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let act = Activation::from_name(&args.activation).ok_or(format!("unknown activation {}", args.activation))?;
    if args.curvature > 0.0 && act.curvature_constants().is_none() {
        return Err("--curvature needs a smooth activation (sigmoid, tanh or softplus)".into());
    }
    let mut sizes = vec![64];
    for h in args.hidden.split(',') {
        sizes.push(h.trim().parse::<usize>()?);
    }
    sizes.push(10);
    let (train, test) = nncert::data::digits_split()?;
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut model = Model::new(&sizes, act, &mut rng);
    let mut adam = Adam { m: Vec::new(), v: Vec::new(), t: 0 };
    let mut order: Vec<usize> = (0..train.len()).collect();
    let batch = 32;
    for epoch in 0..args.epochs {
        order.shuffle(&mut rng);
        let lr = args.lr * 0.5 * (1.0 + (std::f64::consts::PI * epoch as f64 / args.epochs as f64).cos());
        let mut total = 0.0;
        for chunk in order.chunks(batch) {
            let y: Vec<usize> = chunk.iter().map(|&i| train.labels[i]).collect();
            let mut x = Mat::from_fn(64, chunk.len(), |r, c| train.images[chunk[c]][r]);
            if args.adv_eps > 0.0 {
                // PGD on the loss for the second half of the batch, l_inf ball ∩ [0, 1].
                let x0 = x.clone();
                let half = chunk.len() / 2;
                for _ in 0..7 {
                    let g = model.loss_grad(&x, &y).input;
                    for c in half..chunk.len() {
                        for r in 0..64 {
                            let v = x[(r, c)] + args.adv_eps / 4.0 * g[(r, c)].signum();
                            x[(r, c)] = v.clamp(x0[(r, c)] - args.adv_eps, x0[(r, c)] + args.adv_eps).clamp(0.0, 1.0);
                        }
                    }
                }
            }
            let mut g = model.loss_grad(&x, &y);
            total += g.loss * chunk.len() as f64;
            if args.curvature > 0.0 {
                let (_, gk) = model.curvature_penalty();
                for (gw, gkw) in g.w.iter_mut().zip(&gk) {
                    gw.iter_mut().zip(gkw).for_each(|(a, b)| *a += args.curvature * b);
                }
            }
            let mut params: Vec<&mut [f64]> = Vec::new();
            let mut grads: Vec<&[f64]> = Vec::new();
            for (w, gw) in model.w.iter_mut().zip(&g.w) {
                params.push(w.as_mut_slice());
                grads.push(gw.as_slice());
            }
            for (b, gb) in model.b.iter_mut().zip(&g.b) {
                params.push(b.as_mut_slice());
                grads.push(gb.as_slice());
            }
            adam.step(params, grads, lr);
        }
        if epoch % 10 == 9 || epoch + 1 == args.epochs {
            let k = if act.curvature_constants().is_some() && model.w.len() > 1 {
                format!(", mean curvature bound K {:.3}", model.curvature_penalty().0)
            } else {
                String::new()
            };
            eprintln!("epoch {:>3}: mean loss {:.4}{k}", epoch + 1, total / train.len() as f64);
        }
    }
    let net = model.network();
    let correct =
        test.images.iter().zip(&test.labels).filter(|(x, y)| net.predict(x).unwrap_or(usize::MAX) == **y).count();
    println!("test accuracy {}/{} = {:.4}", correct, test.len(), correct as f64 / test.len() as f64);
    if args.adv_eps > 0.0 {
        let options = CertifyOptions { attack: Some(PgdSettings::default()), all_targets: false };
        let mut pgd_ok = 0;
        for (x, &y) in test.images.iter().zip(&test.labels) {
            let set = InputSet::new(x.clone(), args.adv_eps, Norm::Linf, Some(Domain::uniform(64, 0.0, 1.0)?))?;
            let r = certify(&net, &set, y, None, &options)?;
            if r.verdict == Verdict::Unknown {
                pgd_ok += 1;
            }
        }
        println!(
            "PGD accuracy at l_inf {}: {}/{} = {:.4}",
            args.adv_eps,
            pgd_ok,
            test.len(),
            pgd_ok as f64 / test.len() as f64
        );
    }
    nncert::io::save_model(&net, &args.out)?;
    println!("saved {}", args.out.display());
    Ok(())
}
