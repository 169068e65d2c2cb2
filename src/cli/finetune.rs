//! `offsite finetune MODEL --data TRAIN [--val VAL] -o DIR`: the full fine-tuning baseline.

use super::ModelSpec;
use anyhow::Result;
use offsite::train::{finetune::finetune, TrainOptions};
use std::path::PathBuf;

/// Arguments of `offsite finetune`.
#[derive(clap::Args)]
pub struct Args {
    /// The model to fine-tune: a .gguf file, a Hugging Face directory, or a known model name (`smollm2`, `gemma3-270m`: fetched on first use).
    model: ModelSpec,
    #[command(flatten)]
    data: super::DataArgs,
    /// The Hugging Face directory to write.
    #[arg(short, long)]
    output: PathBuf,
    // Applied to every layer here; the output is an HF directory unless it holds bottleneck
    // adapters.
    #[command(flatten)]
    peft: super::PeftArgs,
    #[command(flatten)]
    train: TrainOptions,
}

/// Fine-tunes every weight and writes the model.
pub fn run(args: Args) -> Result<()> {
    let ckpt = args.model.load()?;
    let tok = ckpt.tokenizer()?;
    let (train, val) = args.data.load(tok, args.train.block_size)?;
    let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
    let (_, summary) = finetune(
        &ckpt,
        &train.sequences,
        val.as_ref().map(|v| v.sequences.as_slice()),
        &args.train,
        &args.peft.method(),
        pad,
        &args.output,
    )?;
    if !offsite::train::collective::world().is_root() {
        return Ok(()); // a data-parallel run: rank 0 wrote the model and reports
    }
    println!(
        "wrote {}; {} steps, final training loss {}, best validation loss {}",
        args.output.display(),
        summary.steps,
        summary
            .final_train_loss
            .map_or("-".into(), |l| format!("{l:.4}")),
        summary
            .best_val_loss
            .map_or("-".into(), |l| format!("{l:.4}")),
    );
    Ok(())
}
