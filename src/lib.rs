//! offsite: Offsite-Tuning (Xiao, Lin & Han, 2023) on candle.
//!
//! A model owner splits a model into a small trainable *adapter* and a frozen middle, compresses
//! the middle into a lossy *emulator* and ships `[adapter, emulator]`; a data owner tunes the
//! adapter through the emulator; the model owner plugs the tuned adapter back into the full model.
//!
//! Rooms: [`model`] (the network, one file per family), [`ops`] (custom ops with their own
//! backward), [`io`] (checkpoints, tokenizer, fetching, atomic writes).

pub mod data;
pub mod emulator;
pub mod error;
pub mod eval;
pub mod experiment;
pub mod io;
pub mod model;
pub mod ops;
pub mod peft;
pub mod train;

pub use error::{Error, Result};
