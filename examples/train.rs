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
            let g = model.loss_grad(&x, &y);
            total += g.loss * chunk.len() as f64;
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
            eprintln!("epoch {:>3}: mean loss {:.4}", epoch + 1, total / train.len() as f64);
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
