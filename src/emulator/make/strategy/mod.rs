//! Emulator strategies: which original middle layers the emulator runs, in which order. Every
//! strategy produces the same thing, a [`Split`] whose emulator list may repeat a layer, so the
//! package, tuning, plug-in and evaluation never learn which strategy made it.
//!
//! - `uniform`: the paper's layer drop ([`plan`]), no data needed.
//! - `importance`: forward-only greedy layer drop (in the spirit of ScaleOT's layer importance):
//!   starting from the whole middle, repeatedly drop the layer whose removal hurts the emulator's
//!   fidelity ([`super::fidelity`]) least on calibration text, until `keep` layers remain.
//! - `importance-share`: the same search, where a removed layer's place may also be taken by
//!   the stored layer next to it (sharing chosen by measurement rather than by similarity).
//! - `share`: CRaSh's cluster–remove–share: the middle is cut into `keep` runs of consecutive
//!   layers whose representations are alike (linear CKA), one layer of each run is stored and
//!   runs once for every member, so the emulator keeps the full depth with `keep` distinct
//!   layers.

mod importance;
mod share;

pub use importance::{greedy, Removal};
pub use share::{cka_matrix, cluster, Clusters};

use super::fidelity::{Fidelity, MiddleProbe};
use super::plan::{plan, Split};
use crate::data::{load_training_data, Batch, Sequence};
use crate::io::tokenizer::Tokenizer;
use crate::model::Model;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// How the emulator's middle is made from the full model's (the `--strategy` flag).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The paper's uniform layer drop.
    #[default]
    Uniform,
    /// Greedy layer drop that keeps the layers whose removal hurts fidelity most.
    Importance,
    /// The greedy search, also letting a neighbouring stored layer run in a removed one's place.
    #[value(name = "importance-share")]
    #[serde(rename = "importance-share")]
    ImportanceShare,
    /// CRaSh: cluster consecutive similar layers, store one per cluster, share it.
    Share,
}

impl Strategy {
    /// The flag's value.
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Uniform => "uniform",
            Strategy::Importance => "importance",
            Strategy::ImportanceShare => "importance-share",
            Strategy::Share => "share",
        }
    }

    /// Whether the strategy measures the model on calibration text.
    pub fn needs_calibration(self) -> bool {
        self != Strategy::Uniform
    }
}

impl std::fmt::Display for Strategy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Calibration blocks are this many tokens long.
pub const CALIBRATION_BLOCK: usize = 128;
/// Calibration blocks per batch.
const CALIBRATION_BATCH: usize = 4;

/// What a package records about how its layers were chosen from data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChoiceRecord {
    /// The strategy.
    pub strategy: Strategy,
    /// The calibration text, as given.
    pub calibration: String,
    /// sha256 of the calibration file.
    pub calibration_sha256: String,
    /// Tokens of calibration text used.
    pub calibration_tokens: usize,
    /// The chosen emulator's fidelity on the calibration text.
    pub fidelity: Fidelity,
    /// `importance`, `importance-share`: the search's steps in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<Removal>,
    /// `share`: the clusters (original layer indices) and the layer stored for each.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Clusters>,
}

/// The calibration text: evenly spaced blocks of [`CALIBRATION_BLOCK`] tokens from a corpus,
/// batched.
pub struct Calibration {
    /// The batches.
    pub batches: Vec<Batch>,
    /// Tokens in them.
    pub tokens: usize,
    /// sha256 of the file.
    pub sha256: String,
}

impl Calibration {
    /// About `tokens` tokens of `path` (JSONL {"text"} or .txt), as evenly spaced blocks so that
    /// a corpus sorted by date or topic is sampled across its whole length.
    pub fn load(
        path: &Path,
        tok: &Tokenizer,
        tokens: usize,
        device: &candle_core::Device,
    ) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
        let blocks = load_training_data(path, tok, CALIBRATION_BLOCK + 1, None)?.sequences;
        let want = tokens.div_ceil(CALIBRATION_BLOCK).max(1);
        let picked: Vec<&Sequence> = if blocks.len() <= want {
            blocks.iter().collect()
        } else {
            (0..want)
                .map(|i| &blocks[i * blocks.len() / want])
                .collect()
        };
        let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
        let batches = picked
            .chunks(CALIBRATION_BATCH)
            .map(|c| Batch::new(c, pad, device))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let tokens = batches.iter().map(|b| b.num_tokens).sum();
        Ok(Calibration {
            batches,
            tokens,
            sha256,
        })
    }
}

/// The split of `full` for `strategy`: the paper's uniform choice, or one measured on
/// `calibration` (required then; `origin` names it in the record).
pub fn choose(
    full: &Model,
    strategy: Strategy,
    bottom: usize,
    top: usize,
    keep: usize,
    calibration: Option<(&Calibration, &Path)>,
) -> Result<(Split, Option<ChoiceRecord>)> {
    let n = full.config().num_layers;
    let uniform = plan(n, bottom, top, keep)?;
    if strategy == Strategy::Uniform {
        return Ok((uniform, None));
    }
    let Some((cal, path)) = calibration else {
        return Err(Error::Invalid(format!(
            "--strategy {strategy} chooses layers by measuring the model: give --calibration TEXT"
        )));
    };
    if keep == 0 {
        return Err(Error::Invalid(format!(
            "--strategy {strategy} needs at least one kept layer"
        )));
    }
    let probe = MiddleProbe::new(full, bottom, top, &cal.batches)?;
    let (emulator, removed, clusters) = match strategy {
        Strategy::Uniform => unreachable!("returned above"),
        Strategy::Importance | Strategy::ImportanceShare => {
            let (map, steps) = greedy(&probe, keep, strategy == Strategy::ImportanceShare)?;
            (map, steps, None)
        }
        Strategy::Share => {
            let sim = cka_matrix(&probe)?;
            let c = cluster(&sim, probe.middle().start, keep)?;
            (c.layer_map(), Vec::new(), Some(c))
        }
    };
    let split = Split::new(n, bottom, top, emulator)?;
    let fidelity = probe.fidelity(&split.emulator)?;
    let record = ChoiceRecord {
        strategy,
        calibration: path.display().to_string(),
        calibration_sha256: cal.sha256.clone(),
        calibration_tokens: cal.tokens,
        fidelity,
        removed,
        clusters,
    };
    Ok((split, Some(record)))
}

#[cfg(test)]
mod tests;
