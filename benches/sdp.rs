//! The SDP-dual machinery at MNIST scale: products with S(y, z) (matrix-free and dense),
//! lambda_min (Krylov-Schur on the shifted operator, and dense), and the proven bound (dense
//! Schur form + shifted Cholesky), on adv-mnist-mlp-2x100 (n = 984) and adv-mnist-mlp-9x100
//! (n = 1684), with fixed pseudo-random multipliers. Skipped when ../shared/data is absent.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use nncert::verify::sdp::{BoundSource, Multipliers, Relaxation, SlackOperator, certified_bound, lagrangian_matrix};
use nncert::{Domain, InputSet, Norm};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn bench(c: &mut Criterion) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if !data.join("models").is_dir() {
        eprintln!("skipped SDP benchmarks: {} not found", data.display());
        return;
    }
    let (images, _) = nncert::io::read_idx_images(data.join("mnist/t10k-first1100-images-idx3-ubyte")).unwrap();
    let labels = nncert::io::read_idx_labels(data.join("mnist/t10k-first1100-labels-idx1-ubyte")).unwrap();
    let mut group = c.benchmark_group("sdp");
    group.sample_size(10);
    for model in ["adv-mnist-mlp-2x100", "adv-mnist-mlp-9x100"] {
        let net = nncert::io::load_model(data.join(format!("models/{model}.json"))).unwrap();
        let set =
            InputSet::new(images[0].clone(), 1.0, Norm::L2, Some(Domain::uniform(784, 0.0, 1.0).unwrap())).unwrap();
        let label = labels[0];
        let target = (label + 1) % 10;
        let mut rng = StdRng::seed_from_u64(1);
        let mut mult = Multipliers::initial(&net, &set, 1.0);
        for layer in mult.relu.iter_mut().chain(mult.above.iter_mut()) {
            layer.iter_mut().for_each(|v| *v = rng.random::<f64>());
        }
        let rel = Relaxation::new(&net, &set, BoundSource::CrownIbp).unwrap();
        let op = SlackOperator::new(&net, &set, &rel.boxes, label, target, &mult, 0.0).unwrap();
        let n = op.dim();
        let v: Vec<f64> = (0..n).map(|i| (i as f64 * 0.37).sin()).collect();
        let mut out = vec![0.0; n];
        group.bench_function(format!("{model}/slack-product-matrix-free"), |b| b.iter(|| op.apply_vec(&v, &mut out)));
        let (m, err) = lagrangian_matrix(&net, &set, &rel.boxes, label, target, &mult).unwrap();
        let vm = faer::Mat::from_fn(n, 1, |i, _| v[i]);
        group.bench_function(format!("{model}/slack-product-dense"), |b| {
            b.iter(|| nncert::linalg::mul(m.as_ref(), vm.as_ref()))
        });
        group.bench_function(format!("{model}/lambda-min-krylov"), |b| b.iter(|| op.lambda_min(1e-8)));
        group.bench_function(format!("{model}/lambda-min-dense"), |b| {
            b.iter(|| nncert::linalg::psd::lambda_min_estimate(m.as_ref()))
        });
        let r2 = rel.r2;
        group.bench_function(format!("{model}/dual-value-block-tridiagonal"), |b| {
            b.iter(|| nncert::verify::sdp_fo::dual_value(&op, r2, 1.0))
        });
        group
            .bench_function(format!("{model}/proven-bound-dense"), |b| b.iter(|| certified_bound(m.as_ref(), r2, err)));
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
