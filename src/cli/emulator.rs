//! `offsite emulator MODEL --bottom 2 --top 2 --keep K -o EMU.offsite` (the model owner).

use super::ModelSpec;
use anyhow::Result;
use offsite::emulator::fingerprint::short;
use offsite::emulator::{EmulatorOptions, Package};
use std::path::PathBuf;

/// Arguments of `offsite emulator`.
#[derive(clap::Args)]
pub struct Args {
    /// The full model: a .gguf file, a Hugging Face directory, or `smollm2`.
    model: ModelSpec,
    #[command(flatten)]
    options: EmulatorOptions,
    /// The package to write.
    #[arg(short, long)]
    output: PathBuf,
}

/// Builds and writes the package, then describes it.
pub fn run(args: Args) -> Result<()> {
    let ckpt = args.model.load()?;
    let full = ckpt.model()?;
    let package = Package::build(
        &full,
        ckpt.tokenizer.as_ref(),
        args.options.clone(),
        &args.output,
    )?;
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
        "adapter layers {:?} | emulator layers {:?} (of {} middle layers)",
        m.split.adapter(),
        m.split.emulator,
        m.config.num_layers - m.options.bottom - m.options.top
    );
    println!(
        "{} parameters, {:.1}% of the full model's {}; source model {}…",
        package.num_parameters(),
        100.0 * package.num_parameters() as f64 / m.source_parameters as f64,
        m.source_parameters,
        short(&m.source_fingerprint)
    );
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
