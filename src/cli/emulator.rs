//! `offsite emulator MODEL --bottom 2 --top 2 --keep K [--prune R] [--quant-bits B]
//! [--distill CORPUS …] -o EMU.offsite` (the model owner).

use super::ModelSpec;
use anyhow::Result;
use offsite::data::{load_training_data, Sequence};
use offsite::emulator::fingerprint::{fingerprint, short};
use offsite::emulator::make::distill::{distill, DistillRecord, DistillWeights};
use offsite::emulator::{plug, Adapter, EmulatorOptions, Package};
use offsite::train::TrainOptions;
use std::path::PathBuf;

/// Arguments of `offsite emulator`.
#[derive(clap::Args)]
pub struct Args {
    /// The full model: a .gguf file, a Hugging Face directory, or a known model name (`smollm2`, `gemma3-270m`: fetched on first use).
    model: ModelSpec,
    #[command(flatten)]
    options: EmulatorOptions,
    /// The package to write.
    #[arg(short, long)]
    output: PathBuf,
    /// Distil the emulator layers on this corpus (JSONL {"text"} or .txt): they learn to
    /// reproduce the full model's middle layers (hidden-state KD) while the emulator keeps
    /// modelling language (LM loss). Training flags below apply.
    #[arg(long)]
    distill: Option<PathBuf>,
    /// Held-out corpus for validation during distillation (default: the last 5% of the
    /// corpus's blocks).
    #[arg(long, requires = "distill")]
    distill_val: Option<PathBuf>,
    /// Continue distilling this package (built from the same model, uncompressed) instead of
    /// starting from plain layer drop: its layer choice, options and earlier distillation are
    /// kept, e.g. to add the output term (--logit-weight) after hidden-state KD.
    #[arg(long, requires = "distill")]
    distill_from: Option<PathBuf>,
    /// Optimizer steps of the distillation (overrides --max-steps).
    #[arg(long, requires = "distill")]
    distill_steps: Option<usize>,
    /// A FedBiOT-style round: the adapter the data owner returned (tuned through
    /// --distill-from) sits in the adapter layers of both the full model and the emulator while
    /// the emulator layers are distilled, so that the emulator stands in for the middle under
    /// that adapter. The package still ships the model's own adapter layers; the data owner
    /// continues from the returned one (`tune --init-adapter`).
    #[arg(long, requires = "distill_from")]
    distill_adapter: Option<PathBuf>,
    #[command(flatten)]
    weights: DistillWeights,
    #[command(flatten)]
    train: TrainOptions,
}

/// Splits off the last 5% (at least one) of `seqs` as validation data.
fn hold_out(mut seqs: Vec<Sequence>) -> (Vec<Sequence>, Vec<Sequence>) {
    let n = (seqs.len() / 20).max(1).min(seqs.len().saturating_sub(1));
    let val = seqs.split_off(seqs.len() - n);
    (seqs, val)
}

/// The package a continued distillation starts from: built from `full`, not compressed.
fn start_from(path: &std::path::Path, full: &offsite::model::Model) -> Result<Package> {
    let package = Package::load(path, full.device())?;
    if package.meta.source_fingerprint != offsite::emulator::plug::model_fingerprint(full)? {
        anyhow::bail!(
            "{}: was built from another model (its source fingerprint differs)",
            path.display()
        );
    }
    if package.meta.options.compresses() {
        anyhow::bail!(
            "{}: is compressed ({}); continue from an uncompressed package and compress after",
            path.display(),
            package.meta.options.compression()
        );
    }
    Ok(package)
}

/// Builds and writes the package, then describes it.
pub fn run(args: Args) -> Result<()> {
    let ckpt = args.model.load()?;
    let full = ckpt.model()?;
    let build = |options: EmulatorOptions| {
        Package::build(&full, ckpt.tokenizer.as_ref(), options, &args.output)
    };
    let distilled = match &args.distill {
        None => None,
        Some(corpus) => {
            let tok = ckpt.tokenizer()?;
            let mut options = args.train.clone();
            if let Some(n) = args.distill_steps {
                options.max_steps = Some(n);
            }
            let block = options.block_size;
            let data = load_training_data(corpus, tok, block, None)?.sequences;
            let (train, val) = match &args.distill_val {
                Some(v) => (data, load_training_data(v, tok, block, None)?.sequences),
                None => hold_out(data),
            };
            eprintln!(
                "distillation: {} training blocks, {} validation blocks of {block} tokens",
                train.len(),
                val.len()
            );
            // The uncompressed emulator of the chosen layers is the starting point, or the
            // package whose distillation this continues.
            let plain = match &args.distill_from {
                Some(from) => start_from(from, &full)?,
                None => build(args.options.uncompressed())?,
            };
            let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
            let adapter = args
                .distill_adapter
                .as_ref()
                .map(|p| Adapter::load(p, full.device()))
                .transpose()?;
            // The teacher runs the returned adapter's layers too: the full model plugged.
            let plugged = adapter.as_ref().map(|a| plug(&ckpt, a)).transpose()?;
            let (weights, metrics) = distill(
                plugged.as_ref().unwrap_or(&full),
                &plain,
                adapter.as_ref(),
                &train,
                Some(&val),
                &options,
                &args.weights,
                pad,
                &args.output,
            )?;
            let record = DistillRecord {
                corpus: corpus.display().to_string(),
                weights: args.weights.clone(),
                training: options,
                metrics,
                previous: plain.meta.distillation.clone().map(Box::new),
                adapter: adapter
                    .as_ref()
                    .map(|a| fingerprint(a.tensors.iter()))
                    .transpose()?,
            };
            Some((weights, record, plain))
        }
    };
    let package = match &distilled {
        // Distillation started from the chosen layers: keep that choice (a data-driven one is
        // not measured twice).
        Some((weights, record, plain)) => Package::assemble(
            &full,
            ckpt.tokenizer.as_ref(),
            match &args.distill_from {
                Some(_) => plain.meta.options.clone(),
                None => args.options.clone(),
            },
            (plain.meta.split.clone(), plain.meta.choice.clone()),
            Some((weights, record.clone())),
            &args.output,
        )?,
        None => build(args.options.clone())?,
    };
    if !offsite::train::collective::world().is_root() {
        // A data-parallel distillation: rank 0 writes the package.
        return Ok(());
    }
    package.save(&args.output)?;
    let m = &package.meta;
    let size = std::fs::metadata(&args.output)
        .map(|m| m.len())
        .unwrap_or(0);
    println!(
        "wrote {} ({:.1} MB)",
        args.output.display(),
        size as f64 / 1e6
    );
    println!(
        "adapter layers {:?} | emulator layers {:?} ({} stored of {} middle layers, {})",
        m.split.adapter(),
        m.split.emulator,
        m.split.stored().len(),
        m.split.num_middle(),
        m.options.compression()
    );
    if let Some(c) = &m.choice {
        println!(
            "chosen on {} ({} tokens): cosine {:.4}, relative error {:.4}, norm ratio {:.3} at the top adapter's input",
            c.calibration, c.calibration_tokens, c.fidelity.cosine, c.fidelity.rel_l2, c.fidelity.norm_ratio
        );
    }
    println!(
        "{} parameters, {:.1}% of the full model's {}; source model {}…",
        package.num_parameters(),
        100.0 * package.num_parameters() as f64 / m.source_parameters as f64,
        m.source_parameters,
        short(&m.source_fingerprint)
    );
    if let Some(d) = &m.distillation {
        println!(
            "distilled on {}: {} steps, best validation loss {}",
            d.corpus,
            d.metrics.steps,
            d.metrics
                .best_val_loss
                .map_or("-".into(), |l| format!("{l:.4}"))
        );
    }
    if m.options.compresses() {
        let dense: usize = package
            .encoded
            .values()
            .map(|e| e.encoding.shape.iter().product::<usize>() * 4)
            .sum();
        let stored: usize = package.encoded.values().map(|e| e.stored_bytes()).sum();
        println!(
            "compressed {} emulator weights ({}): {:.1} MB stored instead of {:.1} MB",
            package.encoded.len(),
            m.options.compression(),
            stored as f64 / 1e6,
            dense as f64 / 1e6
        );
    }
    Ok(())
}
