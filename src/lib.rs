//! # nncert: certify the robustness of neural networks
//!
//! Given a trained network f, an input x_hat with label y, a radius eps and a norm (l2 or l_inf),
//! nncert answers the semi-targeted attack problem (A) of Chiu & Zhang 2023:
//!
//! ```text
//! phi[c] = min over x in X of f(x)[y] - f(x)[c],   X = {x : ||x - x_hat|| <= eps} ∩ domain box
//! ```
//!
//! A [`Verifier`] returns a **sound lower bound** on phi\[c\]; an attack ([`attack::pgd`]) returns
//! an upper bound with the input that achieves it. The input is *robust* when every lower bound is
//! positive, *not robust* when the attack finds a negative margin (confirmed by a forward pass),
//! and *unknown* otherwise. [`certify::certify`] runs both and returns the [`Verdict`].
//!
//! ```
//! use nncert::{Activation, Domain, InputSet, Layer, Network, Norm, Verdict};
//! use nncert::certify::{certify, CertifyOptions};
//! use nncert::verify::Crown;
//!
//! // A 2-2-2 ReLU network.
//! let hidden = Layer::from_rows(&[vec![1.0, -1.0], vec![0.5, 1.0]], vec![0.0, 0.1], Activation::Relu)?;
//! let out = Layer::from_rows(&[vec![2.0, 0.0], vec![0.0, 1.0]], vec![0.0, 0.0], Activation::Identity)?;
//! let net = Network::new(vec![2], vec![hidden, out])?;
//!
//! let x = vec![0.9, 0.1];
//! let label = net.predict(&x)?;
//! let domain = Domain::uniform(2, 0.0, 1.0)?;
//! let set = InputSet::new(x, 0.05, Norm::Linf, Some(domain))?;
//! let report = certify(&net, &set, label, Some(&Crown::default()), &CertifyOptions::default())?;
//! assert_eq!(report.verdict, Verdict::Robust);
//! // Every lower bound is a proven bound on the margin over the whole set.
//! assert!(report.lower_bounds[1].unwrap() > 0.0);
//! # Ok::<(), nncert::Error>(())
//! ```
//!
//! Modules: [`network`] (the model), [`io`] (file formats), [`spec`] (input sets), [`bounds`]
//! (the shared bound-propagation core), [`verify`] (verifiers), [`attack`] (PGD), [`certify`]
//! (one image or a data set, attack first), [`certificate`] (proofs written to JSON and re-checked
//! from the model alone), [`data`] (the bundled digits data set).

#![warn(missing_docs)]

pub mod attack;
pub mod bounds;
pub mod budget;
pub mod certificate;
pub mod certify;
pub mod data;
mod error;
pub mod io;
pub mod linalg;
pub mod network;
pub mod optim;
pub mod spec;
pub mod verify;

pub use certify::Verdict;
pub use error::{Error, Result};
pub use network::{Activation, Layer, Network};
pub use spec::{Domain, InputSet, Norm};
pub use verify::Verifier;

/// The code blocks of README.md, compiled and run as doctests so that the README stays true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
