//! BM-r and BM-Full per image at MNIST scale, in verdict mode (the `certify --method bm` setting):
//! all 9 targets of one image of adv-mnist-mlp-2x100 at l2 1.0 with the [0, 1] box, after PGD.
//! `bm-full` takes its pre-activation bounds from optimized slopes, `bm-full-lp` from LP-Full.
//! Image 0 is robust (every target must be proven); image 2 needs BM on all 9 targets. Skipped
//! when ../shared/data is absent.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use nncert::certify::{CertifyOptions, certify};
use nncert::verify::bm::Bm;
use nncert::{Domain, InputSet, Norm, Verdict};

fn bench(c: &mut Criterion) {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data");
    if !data.join("models").is_dir() {
        eprintln!("skipped BM benchmarks: {} not found", data.display());
        return;
    }
    let (images, _) = nncert::io::read_idx_images(data.join("mnist/t10k-first1100-images-idx3-ubyte")).unwrap();
    let labels = nncert::io::read_idx_labels(data.join("mnist/t10k-first1100-labels-idx1-ubyte")).unwrap();
    let net = nncert::io::load_model(data.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let mut group = c.benchmark_group("bm");
    group.sample_size(10);
    for (name, verifier) in [("bm", Bm::default()), ("bm-full", Bm::full()), ("bm-full-lp", Bm::full_lp())] {
        for image in [0usize, 2] {
            let set =
                InputSet::new(images[image].clone(), 1.0, Norm::L2, Some(Domain::uniform(784, 0.0, 1.0).unwrap()))
                    .unwrap();
            let options = CertifyOptions::default();
            let r = certify(&net, &set, labels[image], Some(&verifier), &options).unwrap();
            assert_eq!(r.verdict, Verdict::Robust, "{name} image {image}");
            group.bench_function(format!("adv-mnist-mlp-2x100/l2-1.0/{name}/image-{image}"), |b| {
                b.iter(|| certify(&net, &set, labels[image], Some(&verifier), &options).unwrap())
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
