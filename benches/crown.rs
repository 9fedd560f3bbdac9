//! CROWN (all 9 targets, pre-activation bounds included) on adv-mnist-mlp-2x100, l_inf 0.1 with
//! the [0,1] box and l2 1.0 without it, on the first 10 test images; and on the bundled digits
//! model. The MNIST part is skipped when ../shared/data is absent.

use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use nncert::verify::{Crown, Verifier};
use nncert::{Domain, InputSet, Norm};

fn bench(c: &mut Criterion) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let digits = nncert::io::load_model(root.join("data/models/digits-relu-adv.json")).expect("bundled model");
    let (_, test) = nncert::data::digits_split().expect("bundled data");
    c.bench_function("crown/digits-relu-adv/linf-0.05/per-image", |b| {
        let mut i = 0;
        b.iter(|| {
            let x = &test.images[i % 10];
            let y = test.labels[i % 10];
            i += 1;
            let set = InputSet::new(x.clone(), 0.05, Norm::Linf, Some(Domain::uniform(64, 0.0, 1.0).unwrap())).unwrap();
            let targets: Vec<usize> = (0..10).filter(|&t| t != y).collect();
            Crown.lower_bounds(&digits, &set, y, &targets).unwrap()
        })
    });

    let data = root.join("../shared/data");
    if !data.join("models").is_dir() {
        eprintln!("skipped MNIST benchmarks: {} not found", data.display());
        return;
    }
    let net = nncert::io::load_model(data.join("models/adv-mnist-mlp-2x100.json")).unwrap();
    let (images, _) = nncert::io::read_idx_images(data.join("mnist/t10k-first1100-images-idx3-ubyte")).unwrap();
    let labels = nncert::io::read_idx_labels(data.join("mnist/t10k-first1100-labels-idx1-ubyte")).unwrap();
    for (name, norm, eps, with_box) in
        [("linf-0.1-box", Norm::Linf, 0.1, true), ("l2-1.0", Norm::L2, 1.0, false), ("l2-1.0-box", Norm::L2, 1.0, true)]
    {
        c.bench_function(&format!("crown/adv-mnist-mlp-2x100/{name}/per-image"), |b| {
            let mut i = 0;
            b.iter(|| {
                let (x, y) = (&images[i % 10], labels[i % 10]);
                i += 1;
                let domain = with_box.then(|| Domain::uniform(784, 0.0, 1.0).unwrap());
                let set = InputSet::new(x.clone(), eps, norm, domain).unwrap();
                let targets: Vec<usize> = (0..10).filter(|&t| t != y).collect();
                Crown.lower_bounds(&net, &set, y, &targets).unwrap()
            })
        });
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
