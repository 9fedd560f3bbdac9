//! The bundled data set: the 8x8 handwritten digits that scikit-learn ships
//! (`sklearn/datasets/data/digits.csv.gz`, 1797 images, pixel values 0..16; data/digits/ holds
//! the file, its description and scikit-learn's licence). Inputs are scaled to \[0, 1\] by 1/16.

use crate::error::{Error, Result};

const DIGITS_CSV_GZ: &[u8] = include_bytes!("../data/digits/digits.csv.gz");

/// The bundled models, trained on [`digits_split`]'s training images (data/models/), by file stem.
const DIGITS_MODELS: [(&str, &str); 3] = [
    ("digits-relu-adv", include_str!("../data/models/digits-relu-adv.json")),
    ("digits-tanh-adv", include_str!("../data/models/digits-tanh-adv.json")),
    ("digits-tanh-crt", include_str!("../data/models/digits-tanh-crt.json")),
];

/// The names [`digits_model`] accepts.
pub const DIGITS_MODELS_NAMES: [&str; 3] = [DIGITS_MODELS[0].0, DIGITS_MODELS[1].0, DIGITS_MODELS[2].0];

/// A bundled model for the 8x8 digits, built into the library so that it loads from any crate and
/// any working directory: `digits-relu-adv` (64-32-32-10 ReLU, adversarially trained),
/// `digits-tanh-adv` (the same with tanh) or `digits-tanh-crt` (64-32-10 tanh, curvature-regularized
/// for CRC). The same networks as the files in data/models/.
///
/// ```
/// let net = nncert::data::digits_model("digits-relu-adv")?;
/// assert_eq!(net.input_size(), 64);
/// assert!(nncert::data::digits_model("no-such-model").is_err());
/// # Ok::<(), nncert::Error>(())
/// ```
pub fn digits_model(name: &str) -> Result<crate::network::Network> {
    let stem = name.strip_suffix(".json").unwrap_or(name);
    match DIGITS_MODELS.iter().find(|(n, _)| *n == stem) {
        Some((_, text)) => crate::io::model_from_json(text),
        None => Err(Error::InvalidArgument(format!(
            "no bundled model named {name:?}; the bundled models are {}",
            DIGITS_MODELS_NAMES.join(", ")
        ))),
    }
}

/// Number of images in the training split ([`digits_split`]); the remaining 450 are the test split.
pub const DIGITS_TRAIN: usize = 1347;

/// A labelled set of flat images.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    /// Flat images, values in \[0, 1\].
    pub images: Vec<Vec<f64>>,
    /// Labels.
    pub labels: Vec<usize>,
    /// Shape of one image (C, H, W).
    pub shape: Vec<usize>,
}

impl Dataset {
    /// Number of examples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// Whether there are no examples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    fn slice(&self, r: std::ops::Range<usize>) -> Dataset {
        Dataset { images: self.images[r.clone()].to_vec(), labels: self.labels[r].to_vec(), shape: self.shape.clone() }
    }
}

/// All 1797 digits, in the file's order.
pub fn digits() -> Result<Dataset> {
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(DIGITS_CSV_GZ), &mut text)
        .map_err(|e| Error::InvalidArgument(format!("bundled digits data: {e}")))?;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let vals: Vec<f64> = line
            .split(',')
            .map(|v| v.trim().parse::<f64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::InvalidArgument(format!("bundled digits data, line {}: {e}", line_no + 1)))?;
        if vals.len() != 65 {
            return Err(Error::InvalidArgument(format!(
                "bundled digits data, line {}: {} values",
                line_no + 1,
                vals.len()
            )));
        }
        images.push(vals[..64].iter().map(|v| v / 16.0).collect());
        labels.push(vals[64] as usize);
    }
    Ok(Dataset { images, labels, shape: vec![1, 8, 8] })
}

/// The fixed split used by the `train` and `certify` examples: the first 1347 images for training,
/// the last 450 for testing.
pub fn digits_split() -> Result<(Dataset, Dataset)> {
    let all = digits()?;
    Ok((all.slice(0..DIGITS_TRAIN), all.slice(DIGITS_TRAIN..all.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load() {
        let d = digits().unwrap();
        assert_eq!(d.len(), 1797);
        assert!(d.images.iter().all(|x| x.len() == 64 && x.iter().all(|v| (0.0..=1.0).contains(v))));
        assert_eq!(&d.labels[..5], &[0, 1, 2, 3, 4]);
        let (train, test) = digits_split().unwrap();
        assert_eq!((train.len(), test.len()), (1347, 450));
        for c in 0..10 {
            assert!(test.labels.iter().filter(|&&l| l == c).count() > 30);
        }
    }

    #[test]
    fn bundled_models_are_the_files_and_classify_the_digits() {
        let (_, test) = digits_split().unwrap();
        for name in DIGITS_MODELS_NAMES {
            let net = digits_model(name).unwrap();
            let file =
                crate::io::load_model(format!("{}/data/models/{name}.json", env!("CARGO_MANIFEST_DIR"))).unwrap();
            let json = crate::io::model_to_json(&net);
            assert_eq!(json, crate::io::model_to_json(&file), "{name}");
            assert_eq!(crate::io::model_to_json(&digits_model(&format!("{name}.json")).unwrap()), json);
            let correct = (0..test.len()).filter(|&i| net.predict(&test.images[i]).unwrap() == test.labels[i]).count();
            assert!(correct * 10 >= test.len() * 9, "{name}: {correct} of {} correct", test.len());
        }
        let err = digits_model("mnist").unwrap_err().to_string();
        assert!(err.contains("digits-relu-adv") && err.contains("\"mnist\""), "{err}");
    }
}
