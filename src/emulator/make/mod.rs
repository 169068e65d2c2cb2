//! Making an emulator (the model owner's first step): which layers form the adapter and the
//! emulator ([`plan`], the one layer-choice function), the data-driven strategies that choose the
//! emulator's layers by measurement ([`strategy`], with [`fidelity`] as their measure), the
//! compression of the kept layers ([`compress`]), distillation ([`distill`]) and the options that
//! describe all of it ([`options`]).

pub mod compress;
pub mod distill;
pub mod fidelity;
pub mod options;
pub mod plan;
pub mod strategy;
