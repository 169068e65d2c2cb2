//! How an emulator is made: which layers (strategy, sizes) and how they are compressed — the
//! flags of `offsite emulator` and `offsite experiment`, recorded in every package.

use super::strategy::Strategy;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// How the emulator was made (also the flags of `offsite emulator` and `offsite experiment`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, clap::Args)]
pub struct EmulatorOptions {
    /// Adapter layers at the bottom (layers 0..bottom).
    #[arg(long, default_value_t = 2)]
    pub bottom: usize,
    /// Adapter layers at the top (the last `top` layers).
    #[arg(long, default_value_t = 2)]
    pub top: usize,
    /// Middle layers the emulator keeps (stores): run once each (`uniform`, `importance`) or
    /// shared over the whole middle depth (`share`).
    #[arg(long)]
    pub keep: usize,
    /// Which middle layers and in what order: `uniform` (the paper's layer drop),
    /// `importance` (greedy layer drop by fidelity on calibration text), `share` (CRaSh:
    /// clusters of alike consecutive layers, one stored layer run for each member).
    #[arg(long, value_enum, default_value_t = Strategy::Uniform)]
    #[serde(default, skip_serializing_if = "is_uniform")]
    pub strategy: Strategy,
    /// Calibration text for `importance` and `share` (JSONL {"text"} or .txt; general text,
    /// not the downstream task).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<PathBuf>,
    /// Tokens of calibration text (evenly spaced 128-token blocks).
    #[arg(long, default_value_t = DEFAULT_CALIBRATION_TOKENS)]
    #[serde(
        default = "default_calibration_tokens",
        skip_serializing_if = "is_default_calibration_tokens"
    )]
    pub calibration_tokens: usize,
    /// Zero this fraction of the smallest-magnitude entries of each 2-D emulator weight
    /// (unstructured magnitude pruning; stored sparse).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prune: Option<f64>,
    /// Quantize each 2-D emulator weight uniformly to this many bits (1–8; per tensor, levels
    /// symmetric about the midpoint zero-point; stored as packed codes).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quant_bits: Option<u8>,
    /// Replace each 2-D emulator weight by its truncated SVD, rank-r factors taking this
    /// fraction of its parameters (ScaleOT's rank compression; e.g. `--keep 26 --low-rank 0.5`
    /// keeps every middle layer at half its size).
    #[arg(long)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_rank: Option<f64>,
}

/// Calibration tokens unless told otherwise.
pub const DEFAULT_CALIBRATION_TOKENS: usize = 1024;

fn default_calibration_tokens() -> usize {
    DEFAULT_CALIBRATION_TOKENS
}

fn is_default_calibration_tokens(n: &usize) -> bool {
    *n == DEFAULT_CALIBRATION_TOKENS
}

fn is_uniform(s: &Strategy) -> bool {
    *s == Strategy::Uniform
}

impl EmulatorOptions {
    /// Plain layer drop with `bottom` + `keep` + `top` layers.
    pub fn layer_drop(bottom: usize, keep: usize, top: usize) -> Self {
        EmulatorOptions {
            bottom,
            top,
            keep,
            strategy: Strategy::Uniform,
            calibration: None,
            calibration_tokens: DEFAULT_CALIBRATION_TOKENS,
            prune: None,
            quant_bits: None,
            low_rank: None,
        }
    }

    /// `strategy` with calibration text `calibration`.
    pub fn with_strategy(self, strategy: Strategy, calibration: Option<PathBuf>) -> Self {
        EmulatorOptions {
            strategy,
            calibration,
            ..self
        }
    }

    /// The same emulator without pruning or quantization (what distillation starts from).
    pub fn uncompressed(&self) -> Self {
        EmulatorOptions {
            prune: None,
            quant_bits: None,
            low_rank: None,
            ..self.clone()
        }
    }

    /// Checks the compression options.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(r) = self.prune {
            if !(0.0..1.0).contains(&r) {
                return Err(Error::Invalid(format!(
                    "--prune must be a fraction in [0, 1), not {r}"
                )));
            }
        }
        if let Some(r) = self.low_rank {
            if !(r > 0.0 && r < 1.0) {
                return Err(Error::Invalid(format!(
                    "--low-rank must be a fraction in (0, 1), not {r}"
                )));
            }
            if self.prune.is_some() {
                return Err(Error::Invalid(
                    "--low-rank and --prune do not compose: choose one".into(),
                ));
            }
        }
        if let Some(b) = self.quant_bits {
            if !(1..=8).contains(&b) {
                return Err(Error::Invalid(format!(
                    "--quant-bits must be 1 to 8, not {b}"
                )));
            }
        }
        Ok(())
    }

    /// How the middle was compressed: `layer drop`, `layer drop + pruned 30%`,
    /// `importance layer drop + 4-bit`, `shared layers`, ….
    pub fn compression(&self) -> String {
        let mut out = String::from(match self.strategy {
            Strategy::Uniform => "layer drop",
            Strategy::Importance => "importance layer drop",
            Strategy::ImportanceShare => "importance layer drop and sharing",
            Strategy::Share => "shared layers",
        });
        if let Some(r) = self.prune {
            out += &format!(" + pruned {:.0}%", r * 100.0);
        }
        if let Some(r) = self.low_rank {
            out += &format!(" + low rank {:.0}%", r * 100.0);
        }
        if let Some(b) = self.quant_bits {
            out += &format!(" + {b}-bit");
        }
        out
    }

    /// Whether emulator weights are pruned, factored or quantized.
    pub fn compresses(&self) -> bool {
        self.prune.is_some() || self.quant_bits.is_some() || self.low_rank.is_some()
    }
}
