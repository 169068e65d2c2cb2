//! The model owner's side and the files exchanged: making the emulator ([`make`]: the layer
//! choice, strategies, compression, distillation), the emulator package and the tuned adapter
//! with their fingerprints, and each party's step (tune, plug, align, the proxy).

pub mod adapter;
pub mod align;
pub mod fingerprint;
pub mod make;
pub mod package;
pub mod plug;
pub mod proxy;
pub mod tune;

pub use adapter::Adapter;
pub use make::plan::{plan, uniform_choice, Split};
pub use make::strategy::Strategy;
pub use package::{EmulatorOptions, Package};
pub use plug::{model_fingerprint, plug};
#[cfg(test)]
mod quantized_tests;
#[cfg(test)]
mod tests;
