//! Emulator against full model on the same text, before anyone tunes: the residual stream at
//! the top adapter's input (cosine, relative error, norm ratio), the KL divergence of the
//! next-token distributions, and both perplexities.

use crate::data::{Batch, Sequence};
use crate::emulator::make::fidelity::{row_lengths, Fidelity, FidelitySums};
use crate::emulator::{model_fingerprint, Package};
use crate::model::{log_softmax, Model};
use crate::{Error, Result};
use candle_core::{Tensor, D};
use serde::{Deserialize, Serialize};

/// What `offsite probe` reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    /// The emulator's layer list (original indices) and how it was made.
    pub emulator_layers: Vec<usize>,
    /// Its compression, as `EmulatorOptions::compression` says.
    pub emulator: String,
    /// Residual stream at the top adapter's input.
    pub hidden: Fidelity,
    /// Mean `KL(full ‖ emulator)` of the next-token distributions, nats per token.
    pub kl: f64,
    /// Fraction of positions where both pick the same most likely next token.
    pub top1_agreement: f64,
    /// Token perplexity of the full model on the text.
    pub full_perplexity: f64,
    /// Token perplexity of the emulator on the same text.
    pub emulator_perplexity: f64,
    /// Tokens predicted.
    pub tokens: usize,
}

/// Probes `package`'s emulator against `full` (its source, all layers) on `seqs` (every
/// position of each is compared; perplexities count the sequences' targets), `batch_size` at a
/// time.
pub fn probe(
    full: &Model,
    package: &Package,
    seqs: &[Sequence],
    pad: u32,
    batch_size: usize,
) -> Result<ProbeReport> {
    if model_fingerprint(full)? != package.meta.source_fingerprint {
        return Err(Error::format(
            package.tensors.origin(),
            "this package was built from another model (its source fingerprint differs)",
        ));
    }
    if seqs.is_empty() {
        return Err(Error::Invalid("no text to probe with".into()));
    }
    let split = &package.meta.split;
    let emu = package.model()?;
    let (b, e) = (split.bottom.len(), split.emulator.len());
    let n = full.config().num_layers;
    let top_in_full = n - split.top.len();
    let mut hidden = FidelitySums::default();
    let (mut kl, mut agree, mut nll_full, mut nll_emu, mut tokens) = (0f64, 0f64, 0f64, 0f64, 0);
    for chunk in seqs.chunks(batch_size.max(1)) {
        let refs: Vec<&Sequence> = chunk.iter().collect();
        let batch = Batch::new(&refs, pad, full.device())?;
        let (_, t) = batch.inputs.dims2()?;
        let ctx = full.layer_context(0, t)?;
        let h0 = full.embed(&batch.inputs)?;
        let full_mid = full.forward_layers(h0.clone(), &ctx, 0..top_in_full)?;
        let full_out = full.forward_layers(full_mid.clone(), &ctx, top_in_full..n)?;
        let emu_mid = emu.forward_layers(h0, &ctx, 0..b + e)?;
        let emu_out = emu.forward_layers(emu_mid.clone(), &ctx, b + e..emu.layers().len())?;
        let lens = row_lengths(&batch)?;
        hidden.add(&full_mid, &emu_mid, &lens)?;
        let lp_full = log_softmax(&full.head(&full_out)?)?;
        let lp_emu = log_softmax(&emu.head(&emu_out)?)?;
        let mask = batch.weights.unsqueeze(D::Minus1)?;
        // KL(p‖q) = Σ p (log p − log q) per position, counted where the position is a target.
        let per_pos = (lp_full.exp()? * (&lp_full - &lp_emu)?)?.sum_keepdim(D::Minus1)?;
        kl += per_pos
            .broadcast_mul(&mask)?
            .sum_all()?
            .to_scalar::<f32>()? as f64;
        let same = lp_full
            .argmax(D::Minus1)?
            .eq(&lp_emu.argmax(D::Minus1)?)?
            .to_dtype(candle_core::DType::F32)?;
        agree += (same * &batch.weights)?.sum_all()?.to_scalar::<f32>()? as f64;
        let targets = batch.targets.unsqueeze(D::Minus1)?;
        let gold = |lp: &Tensor| -> Result<f64> {
            let g = lp.gather(&targets, D::Minus1)?.squeeze(D::Minus1)?;
            Ok((g * &batch.weights)?.sum_all()?.to_scalar::<f32>()? as f64)
        };
        nll_full -= gold(&lp_full)?;
        nll_emu -= gold(&lp_emu)?;
        tokens += batch.num_targets;
    }
    let hidden = hidden.finish();
    let per = |x: f64| x / tokens.max(1) as f64;
    Ok(ProbeReport {
        emulator_layers: split.emulator.clone(),
        emulator: package.meta.options.compression(),
        hidden,
        kl: per(kl),
        top1_agreement: per(agree),
        full_perplexity: per(nll_full).exp(),
        emulator_perplexity: per(nll_emu).exp(),
        tokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::EmulatorOptions;
    use crate::model::ModelConfig;
    use std::path::Path;

    fn seqs() -> Vec<Sequence> {
        (0..3)
            .map(|r| Sequence {
                ids: (0..8).map(|i| ((i * 5 + r * 3) % 29 + 1) as u32).collect(),
                loss_from: 1,
            })
            .collect()
    }

    #[test]
    fn an_emulator_of_the_whole_middle_is_exact_and_a_dropped_one_is_not() {
        let config = ModelConfig {
            num_layers: 6,
            ..ModelConfig::tiny()
        };
        let full = Model::random(&config, 4, candle_core::DType::F32).unwrap();
        let whole = EmulatorOptions::layer_drop(1, 4, 1);
        let pkg = Package::build(&full, None, whole, Path::new("w.offsite")).unwrap();
        let r = probe(&full, &pkg, &seqs(), 0, 2).unwrap();
        assert_eq!(r.tokens, 21);
        assert_eq!(r.hidden.tokens, 21);
        assert!(r.hidden.rel_l2 < 1e-6 && r.kl.abs() < 1e-6, "{r:?}");
        assert_eq!(r.top1_agreement, 1.0);
        assert!((r.full_perplexity - r.emulator_perplexity).abs() < 1e-3);
        // The full model's perplexity is exp of its mean next-token cross-entropy over the
        // whole sequences (all rows have the same length, so every target counts once).
        let ids: Vec<Vec<u32>> = seqs().into_iter().map(|s| s.ids).collect();
        let ids = Tensor::new(ids, full.device()).unwrap();
        let ce = full
            .mean_next_token_ce(&ids)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64;
        assert!(
            (r.full_perplexity.ln() - ce).abs() < 1e-4,
            "{} vs {ce}",
            r.full_perplexity.ln()
        );
        let dropped = EmulatorOptions::layer_drop(1, 1, 1);
        let pkg = Package::build(&full, None, dropped, Path::new("d.offsite")).unwrap();
        let r = probe(&full, &pkg, &seqs(), 0, 2).unwrap();
        assert!(r.hidden.rel_l2 > 1e-3 && r.kl > 0.0, "{r:?}");
        // A package of another model is refused.
        let other = Model::random(&config, 5, candle_core::DType::F32).unwrap();
        assert!(probe(&other, &pkg, &seqs(), 0, 2).is_err());
    }
}
