//! Attacks: upper bounds on phi\[c\] with the inputs that achieve them.

mod pgd;

pub(crate) use pgd::start_point;
pub use pgd::{AttackResult, PgdSettings, pgd};
