//! The model owner's side: which layers form the adapter and the emulator.

pub mod plan;

pub use plan::{plan, uniform_choice, Split};
