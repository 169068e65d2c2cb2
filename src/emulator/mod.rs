//! The model owner's side and the files exchanged: which layers form the adapter and the
//! emulator (one function), the emulator package, the tuned adapter, fingerprints and plug-in.

pub mod adapter;
pub mod align;
pub mod compress;
pub mod distill;
pub mod fidelity;
pub mod fingerprint;
pub mod options;
pub mod package;
pub mod plan;
pub mod plug;
pub mod proxy;
pub mod strategy;
pub mod tune;

pub use adapter::Adapter;
pub use package::{EmulatorOptions, Package};
pub use plan::{plan, uniform_choice, Split};
pub use plug::{model_fingerprint, plug};
pub use strategy::Strategy;
#[cfg(test)]
mod tests;
