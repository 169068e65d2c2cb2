//! `offsite tune EMU.offsite --data TRAIN [--val VAL] -o ADAPTER.safetensors` (the data owner).

use anyhow::Result;
use offsite::emulator::tune::{tune_from, TuneStart};
use offsite::emulator::{Adapter, Package};
use offsite::train::TrainOptions;
use std::path::PathBuf;

/// Arguments of `offsite tune`.
#[derive(clap::Args)]
pub struct Args {
    /// The emulator package received from the model owner.
    package: PathBuf,
    #[command(flatten)]
    data: super::DataArgs,
    /// The adapter to write: a file, or for `--peft lora` a PEFT directory.
    #[arg(short, long)]
    output: PathBuf,
    /// Start from this adapter instead of the package's own (a later round: an adapter of the
    /// same model, e.g. the one tuned in the previous round or averaged by a coordinator).
    #[arg(long)]
    init_adapter: Option<PathBuf>,
    /// Weight of an L2 pull towards --init-adapter's weights (Σ‖θ − θ₀‖² / Σ‖θ₀‖²).
    #[arg(long, default_value_t = 0.0, requires = "init_adapter")]
    init_pull: f64,
    /// Also write a machine-readable summary of the run here (JSON: the adapter written, the
    /// number of training and validation examples — what a federated coordinator weights the
    /// average by —, steps, tokens, losses, seconds).
    #[arg(long)]
    summary: Option<PathBuf>,
    /// Keep the frozen emulator layers' weight matrices in this GGUF block format while tuning
    /// (`q8_0`, `q4_k`, `q6_k`, …; where a k-quant's 256-value blocks do not tile a row,
    /// llama.cpp's 32-value substitute): their products dequantize them for the moment they run
    /// (QLoRA's frozen base). A package shipped with `emulator --frozen-quantized` is already
    /// in blocks and needs no flag. The adapter stays f32; the format is recorded with it.
    #[arg(long, value_name = "FORMAT")]
    frozen_quantized: Option<offsite::model::QuantType>,
    #[command(flatten)]
    peft: super::PeftArgs,
    #[command(flatten)]
    train: TrainOptions,
}

/// Tunes the adapter and writes it.
pub fn run(args: Args) -> Result<()> {
    let device = candle_core::Device::Cpu;
    let mut package = Package::load(&args.package, &device)?;
    let mut training = args.train.clone();
    if let Some(format) = args.frozen_quantized {
        let report = package.quantize_emulator(format)?;
        eprintln!("tune: {report}");
        training.frozen_quantized = Some(format);
    }
    let tok = package.tokenizer()?;
    let (train, val) = args.data.load(&tok, args.train.block_size)?;
    let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
    let init = args
        .init_adapter
        .as_ref()
        .map(|p| Adapter::load(p, &device))
        .transpose()?;
    let start = init.as_ref().map(|adapter| TuneStart {
        adapter,
        pull: args.init_pull,
    });
    let adapter = tune_from(
        &package,
        start.as_ref(),
        &train.sequences,
        val.as_ref().map(|v| v.sequences.as_slice()),
        &training,
        &args.peft.method(),
        pad,
        &args.output,
    )?;
    if !offsite::train::collective::world().is_root() {
        // A data-parallel run: rank 0 wrote the adapter and writes the summary.
        return Ok(());
    }
    let s = adapter.meta.metrics.as_ref();
    if let Some(path) = &args.summary {
        let json = serde_json::json!({
            "adapter": args.output,
            "examples": train.sequences.len(),
            "val_examples": val.as_ref().map_or(0, |v| v.sequences.len()),
            "steps": s.map(|s| s.steps),
            "tokens": s.map(|s| s.tokens),
            "final_train_loss": s.and_then(|s| s.final_train_loss),
            "best_val_loss": s.and_then(|s| s.best_val_loss),
            "best_step": s.and_then(|s| s.best_step),
            "trainable_params": s.map(|s| s.trainable_params),
            "seconds": s.map(|s| s.seconds),
        });
        let text = serde_json::to_string_pretty(&json)? + "\n";
        offsite::io::atomic::write_bytes(path, text.as_bytes())?;
    }
    println!(
        "wrote {} (adapter layers {:?}); {} steps, final training loss {}, best validation loss {}",
        args.output.display(),
        adapter.meta.adapter_layers,
        s.map_or(0, |s| s.steps),
        s.and_then(|s| s.final_train_loss)
            .map_or("-".into(), |l| format!("{l:.4}")),
        s.and_then(|s| s.best_val_loss)
            .map_or("-".into(), |l| format!("{l:.4}")),
    );
    Ok(())
}
