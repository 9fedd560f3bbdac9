//! LP-Last and LP-Full per image (all 9 targets) on adv-mnist-mlp-2x100, l_inf 0.1 with the [0,1]
//! box and l2 1.0 with the box, on the first correctly classified test image; and LP-Full's
//! pre-activation bounds alone against the same bounds from optimized slopes
//! (`bounds::optimized`, what BM-Full uses). Skipped when ../shared/data is absent.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use nncert::bounds::lp::LpSettings;
use nncert::bounds::optimized::{SlopeSettings, optimized_bounds};
use nncert::verify::Verifier;
use nncert::verify::lp::{Lp, LpFull, lp_full_bounds};
use nncert::{Domain, InputSet, Norm};

fn bench(c: &mut Criterion) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if !data.join("models").is_dir() {
        eprintln!("skipped LP benchmarks: {} not found", data.display());
        return;
    }
    let net = nncert::io::load_model(data.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let (images, _) = nncert::io::read_idx_images(data.join("mnist/t10k-first1100-images-idx3-ubyte")).unwrap();
    let labels = nncert::io::read_idx_labels(data.join("mnist/t10k-first1100-labels-idx1-ubyte")).unwrap();
    let i = (0..images.len()).find(|&i| net.predict(&images[i]).unwrap() == labels[i]).unwrap();
    let (x, y) = (&images[i], labels[i]);
    let targets: Vec<usize> = (0..10).filter(|&t| t != y).collect();
    let mut group = c.benchmark_group("lp/adv-mnist-mlp-2x100");
    group.sample_size(10);
    for (name, norm, eps) in [("linf-0.1-box", Norm::Linf, 0.1), ("l2-1.0-box", Norm::L2, 1.0)] {
        let set = InputSet::new(x.clone(), eps, norm, Some(Domain::uniform(784, 0.0, 1.0).unwrap())).unwrap();
        group.bench_function(format!("lp/{name}/per-image"), |b| {
            b.iter(|| Lp::default().lower_bounds(&net, &set, y, &targets).unwrap())
        });
        group.bench_function(format!("lp-full/{name}/per-image"), |b| {
            b.iter(|| LpFull::default().lower_bounds(&net, &set, y, &targets).unwrap())
        });
        group.bench_function(format!("bounds-lp-full/{name}/per-image"), |b| {
            b.iter(|| lp_full_bounds(&net, &set, &LpSettings::default()).unwrap())
        });
        group.bench_function(format!("bounds-optimized/{name}/per-image"), |b| {
            b.iter(|| optimized_bounds(&net, &set, &SlopeSettings::default()).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
