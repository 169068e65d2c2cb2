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
    /// Adapter layers at the bottom (layers 0..bottom).
    #[arg(long, default_value_t = 2)]
    bottom: usize,
    /// Adapter layers at the top (the last `top` layers).
    #[arg(long, default_value_t = 2)]
    top: usize,
    /// Middle layers the emulator keeps (uniformly chosen, as in the paper).
    #[arg(long)]
    keep: usize,
    /// The package to write.
    #[arg(short, long)]
    output: PathBuf,
}

/// Builds and writes the package, then describes it.
pub fn run(args: Args) -> Result<()> {
    let ckpt = args.model.load()?;
    let full = ckpt.model()?;
    let options = EmulatorOptions {
        bottom: args.bottom,
        top: args.top,
        keep: args.keep,
    };
    let package = Package::build(&full, ckpt.tokenizer.as_ref(), options, &args.output)?;
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
        m.config.num_layers - args.bottom - args.top
    );
    println!(
        "{} parameters, {:.1}% of the full model's {}; source model {}…",
        package.num_parameters(),
        100.0 * package.num_parameters() as f64 / m.source_parameters as f64,
        m.source_parameters,
        short(&m.source_fingerprint)
    );
    Ok(())
}
