//! How an emulator is made: which layers (strategy, sizes) and how they are compressed — the
//! flags of `offsite emulator` and `offsite experiment`, recorded in every package.

use super::strategy::Strategy;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

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
    /// Ship the emulator layers' weight matrices in this GGUF block format (`q8_0`, `q4_k`,
    /// `q6_k`, …; where a k-quant's blocks do not tile a row, llama.cpp's 32-value substitute):
    /// a smaller package that the data owner tunes through as is, the blocks dequantized for
    /// each product (QLoRA's frozen base). Fingerprints are of the dequantized values.
    #[arg(long, value_name = "FORMAT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frozen_quantized: Option<crate::model::QuantType>,
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
            frozen_quantized: None,
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
            frozen_quantized: None,
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
        if let (Some(f), true) = (self.frozen_quantized, self.compresses()) {
            return Err(Error::Invalid(format!(
                "--frozen-quantized {f} does not compose with --prune, --low-rank or \
                 --quant-bits: choose one"
            )));
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
        if let Some(f) = self.frozen_quantized {
            out += &format!(" + {f} blocks");
        }
        out
    }

    /// Whether `other` describes the same emulator: equal options, the calibration file
    /// possibly spelled another way (relative or absolute).
    pub fn same_as(&self, other: &EmulatorOptions) -> bool {
        let calibration = match (&self.calibration, &other.calibration) {
            (Some(a), Some(b)) => same_file(a, b),
            (a, b) => a == b,
        };
        calibration
            && EmulatorOptions {
                calibration: None,
                ..self.clone()
            } == EmulatorOptions {
                calibration: None,
                ..other.clone()
            }
    }

    /// Whether emulator weights are pruned, factored or quantized.
    pub fn compresses(&self) -> bool {
        self.prune.is_some() || self.quant_bits.is_some() || self.low_rank.is_some()
    }
}

/// Whether two paths name the same file (as spelled, or once made canonical).
fn same_file(a: &Path, b: &Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// The emulator flags of a command that can also take a ready package (`experiment
/// --emulator-package`): all optional, so that a user need not repeat how the package was made.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct EmulatorFlags {
    /// Adapter layers at the bottom (layers 0..bottom; default 2).
    #[arg(long)]
    pub bottom: Option<usize>,
    /// Adapter layers at the top (the last `top` layers; default 2).
    #[arg(long)]
    pub top: Option<usize>,
    /// Middle layers the emulator keeps (required unless a package is given).
    #[arg(long)]
    pub keep: Option<usize>,
    /// Which middle layers and in what order (`uniform` unless told otherwise; see `offsite
    /// emulator --help`).
    #[arg(long, value_enum)]
    pub strategy: Option<Strategy>,
    /// Calibration text for `importance` and `share`.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Tokens of calibration text (default 1024).
    #[arg(long)]
    pub calibration_tokens: Option<usize>,
    /// Zero this fraction of the smallest-magnitude entries of each 2-D emulator weight.
    #[arg(long)]
    pub prune: Option<f64>,
    /// Quantize each 2-D emulator weight uniformly to this many bits (1–8).
    #[arg(long)]
    pub quant_bits: Option<u8>,
    /// Replace each 2-D emulator weight by its truncated SVD with this fraction of parameters.
    #[arg(long)]
    pub low_rank: Option<f64>,
}

impl EmulatorFlags {
    /// The options the flags describe on their own, with the defaults of `offsite emulator`.
    pub fn options(&self) -> Result<EmulatorOptions> {
        let keep = self.keep.ok_or_else(|| {
            Error::Invalid(
                "say how the emulator is made (--keep N, and --strategy …) or pass a ready \
                 --emulator-package"
                    .into(),
            )
        })?;
        Ok(EmulatorOptions {
            bottom: self.bottom.unwrap_or(2),
            top: self.top.unwrap_or(2),
            keep,
            strategy: self.strategy.unwrap_or_default(),
            calibration: self.calibration.clone(),
            calibration_tokens: self
                .calibration_tokens
                .unwrap_or(DEFAULT_CALIBRATION_TOKENS),
            prune: self.prune,
            quant_bits: self.quant_bits,
            low_rank: self.low_rank,
            // The experiment's emulators stay dense (not yet a row option).
            frozen_quantized: None,
        })
    }

    /// The options `package` was made with (`recorded`), after checking every flag given
    /// against them: the first flag that disagrees is named with the package's value.
    pub fn agree_with(
        &self,
        package: &Path,
        recorded: &EmulatorOptions,
    ) -> Result<EmulatorOptions> {
        fn show<T: std::fmt::Debug>(v: &Option<T>) -> String {
            v.as_ref().map_or("none".into(), |v| format!("{v:?}"))
        }
        let r = recorded;
        let same_file = |given: &Path, made: &Option<PathBuf>| {
            made.as_ref().is_some_and(|m| same_file(given, m))
        };
        let mut disagreements: Vec<(&str, String, String)> = Vec::new();
        let mut check = |flag: &'static str, given: Option<String>, made: String| {
            if let Some(g) = given {
                if g != made {
                    disagreements.push((flag, g, made));
                }
            }
        };
        check(
            "--bottom",
            self.bottom.map(|v| v.to_string()),
            r.bottom.to_string(),
        );
        check("--top", self.top.map(|v| v.to_string()), r.top.to_string());
        check(
            "--keep",
            self.keep.map(|v| v.to_string()),
            r.keep.to_string(),
        );
        check(
            "--strategy",
            self.strategy.map(|v| v.name().to_string()),
            r.strategy.name().to_string(),
        );
        check(
            "--calibration-tokens",
            self.calibration_tokens.map(|v| v.to_string()),
            r.calibration_tokens.to_string(),
        );
        check(
            "--prune",
            self.prune.map(|v| format!("{v:?}")),
            show(&r.prune),
        );
        check(
            "--quant-bits",
            self.quant_bits.map(|v| format!("{v:?}")),
            show(&r.quant_bits),
        );
        check(
            "--low-rank",
            self.low_rank.map(|v| format!("{v:?}")),
            show(&r.low_rank),
        );
        if let Some(c) = &self.calibration {
            if !same_file(c, &r.calibration) {
                let made = r
                    .calibration
                    .as_ref()
                    .map_or("none".into(), |m| m.display().to_string());
                disagreements.push(("--calibration", c.display().to_string(), made));
            }
        }
        match disagreements.first() {
            // The calibration file as the user spelled it, where they did.
            None => Ok(EmulatorOptions {
                calibration: self.calibration.clone().or_else(|| r.calibration.clone()),
                ..recorded.clone()
            }),
            Some((flag, given, made)) => Err(Error::format(
                package,
                format!(
                    "was made with {flag} {made}, not {given}: leave {flag} out to use the \
                     package's own options{}",
                    if disagreements.len() > 1 {
                        format!(" ({} more flags disagree)", disagreements.len() - 1)
                    } else {
                        String::new()
                    }
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_agree_with_a_package_or_name_the_one_that_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let cal = dir.path().join("cal.jsonl");
        std::fs::write(&cal, "{\"text\": \"x\"}\n").unwrap();
        let made = EmulatorOptions::layer_drop(2, 13, 2)
            .with_strategy(Strategy::Importance, Some(cal.clone()));
        let pkg = Path::new("emu.offsite");
        // No flags: the package's options.
        assert_eq!(
            EmulatorFlags::default().agree_with(pkg, &made).unwrap(),
            made
        );
        // The same calibration file spelled another way agrees.
        let flags = EmulatorFlags {
            keep: Some(13),
            strategy: Some(Strategy::Importance),
            calibration: Some(dir.path().join(".").join("cal.jsonl")),
            ..Default::default()
        };
        let agreed = flags.agree_with(pkg, &made).unwrap();
        assert!(agreed.same_as(&made) && agreed.calibration == flags.calibration);
        let flags = EmulatorFlags {
            keep: Some(12),
            strategy: Some(Strategy::Uniform),
            ..Default::default()
        };
        let err = flags.agree_with(pkg, &made).unwrap_err().to_string();
        assert!(
            err.contains("emu.offsite") && err.contains("--keep 13, not 12"),
            "{err}"
        );
        assert!(err.contains("1 more flags disagree"), "{err}");
        // On their own the flags need --keep.
        assert!(EmulatorFlags::default().options().is_err());
        let own = EmulatorFlags {
            keep: Some(4),
            ..Default::default()
        }
        .options()
        .unwrap();
        assert_eq!(own, EmulatorOptions::layer_drop(2, 4, 2));
    }
}
