//! Attacks: upper bounds on phi\[c\] with the inputs that achieve them.

mod pgd;

pub use pgd::{AttackResult, PgdSettings, pgd};
