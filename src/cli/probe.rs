//! `offsite probe MODEL EMU.offsite --data TEXT [--limit N] [--block-size 256] [--json]`: how
//! faithfully the emulator stands in for the model's middle, before anyone tunes through it.

use anyhow::Result;
use offsite::data::load_training_data;
use offsite::emulator::Package;
use offsite::eval::fidelity::probe;
use offsite::io::provenance::{FileRef, RunInfo};
use offsite::model::Precision;
use std::path::PathBuf;

/// Arguments of `offsite probe`.
#[derive(clap::Args)]
pub struct Args {
    /// The full model the package was built from (.gguf, HF directory, `smollm2`, `gemma3-270m`).
    model: super::ModelSpec,
    /// The emulator package.
    package: PathBuf,
    /// Text to compare on: JSONL {"text"} or .txt, packed into blocks.
    #[arg(long)]
    data: PathBuf,
    /// Use the first N documents only.
    #[arg(long)]
    limit: Option<usize>,
    /// Tokens per block.
    #[arg(long, default_value_t = 256)]
    block_size: usize,
    /// Use at most this many blocks.
    #[arg(long, default_value_t = 16)]
    max_blocks: usize,
    /// Blocks per forward pass.
    #[arg(long, default_value_t = 2)]
    batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Probes and prints the report.
pub fn run(args: Args) -> Result<()> {
    let ckpt = args.model.load()?;
    let full = ckpt.model()?;
    let package = Package::load(&args.package, &candle_core::Device::Cpu)?;
    let tok = ckpt.tokenizer()?;
    let mut seqs = load_training_data(&args.data, tok, args.block_size + 1, args.limit)?.sequences;
    seqs.truncate(args.max_blocks.max(1));
    let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
    let r = probe(&full, &package, &seqs, pad, args.batch_size)?;
    if args.json {
        let mut json = serde_json::to_value(&r)?;
        json["files"] = serde_json::json!({
            "model": FileRef::of(&args.model.path()?)?,
            "package": FileRef::of(&args.package)?,
            "data": FileRef::of(&args.data)?,
        });
        json["run"] = serde_json::to_value(RunInfo::current(Precision::F32))?;
        println!("{}", serde_json::to_string_pretty(&json)?);
        return Ok(());
    }
    let h = &r.hidden;
    println!("emulator {} — layers {:?}", r.emulator, r.emulator_layers);
    println!(
        "top adapter's input over {} tokens: cosine {:.4}, relative error {:.4}, norm ratio {:.3}; \
         first position: relative error {:.4}",
        h.tokens, h.cosine, h.rel_l2, h.norm_ratio, h.first_rel_l2
    );
    println!(
        "next token over {} predictions: KL(full ‖ emulator) {:.4} nats, same top-1 {:.1}%",
        r.tokens,
        r.kl,
        100.0 * r.top1_agreement
    );
    println!(
        "token perplexity: full model {:.2}, emulator {:.2} ({:.2}×)",
        r.full_perplexity,
        r.emulator_perplexity,
        r.emulator_perplexity / r.full_perplexity
    );
    Ok(())
}
