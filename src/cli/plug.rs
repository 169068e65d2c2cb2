//! `offsite plug MODEL ADAPTER -o DIR` (the model owner).

use super::ModelSpec;
use anyhow::Result;
use offsite::emulator::{plug, Adapter};
use std::path::PathBuf;

/// Arguments of `offsite plug`.
#[derive(clap::Args)]
pub struct Args {
    /// The full model the emulator was made from.
    model: ModelSpec,
    /// The tuned adapter from the data owner.
    adapter: PathBuf,
    /// The Hugging Face directory to write.
    #[arg(short, long)]
    output: PathBuf,
}

/// Plugs the adapter into the model and writes the result.
pub fn run(args: Args) -> Result<()> {
    let device = candle_core::Device::Cpu;
    let ckpt = args.model.load()?;
    let adapter = Adapter::load(&args.adapter, &device)?;
    let model = plug(&ckpt, &adapter)?;
    let offsite_only = offsite::io::hf_dir::save(&args.output, &model, ckpt.tokenizer.as_ref())?;
    println!(
        "wrote {} (layers {:?} replaced by the tuned adapter, {})",
        args.output.display(),
        adapter.meta.adapter_layers,
        adapter.kind()
    );
    if offsite_only {
        eprintln!(
            "note: bottleneck adapters cannot be merged into a standard {} checkpoint, so {} is in \
             offsite's format: config.json and tokenizer as usual, but the weights (adapters \
             included) are in {}, which Hugging Face transformers does not load. Use it with \
             offsite (eval, score, generate, inspect).",
            ckpt.config.family.name(),
            args.output.display(),
            offsite::io::hf_dir::OFFSITE_WEIGHTS
        );
    }
    Ok(())
}
