//! `offsite demo`: the whole exchange on the real demo model and a small vendored corpus —
//! emulator → tune → plug → eval — with a table of the four perplexities.

use anyhow::{Context, Result};
use offsite::data::{load_training_data, read_texts};
use offsite::emulator::tune::tune;
use offsite::emulator::{plug, Adapter, EmulatorOptions, Package};
use offsite::eval::{perplexity, PerplexityReport};
use offsite::io::{atomic, checkpoint, fetch, hf_dir};
use offsite::model::Precision;
use offsite::peft::Method;
use offsite::train::{Schedule, TrainOptions};
use std::path::PathBuf;

/// The vendored corpus (State of the Union addresses, public domain; see data/demo/README.md).
const TRAIN: &str = include_str!("../../data/demo/sotu_train.jsonl");
const TEST: &str = include_str!("../../data/demo/sotu_test.jsonl");

/// Arguments of `offsite demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Folder for the demo's files (package, adapter, plugged model, report).
    #[arg(long, default_value = "offsite-demo")]
    dir: PathBuf,
    /// Middle layers the emulator keeps (of SmolLM2's 26).
    #[arg(long, default_value_t = 20)]
    keep: usize,
    /// Passes over the tuning data.
    #[arg(long, default_value_t = 2)]
    epochs: usize,
    /// Stop tuning after this many steps.
    #[arg(long)]
    max_steps: Option<usize>,
    /// Tokens per training block and evaluation window.
    #[arg(long, default_value_t = 256)]
    block_size: usize,
    /// Which products of the tuning run in bf16 on AMX tiles (f32, frozen-bf16, bf16).
    #[arg(long, default_value = "f32")]
    precision: Precision,
}

fn row(name: &str, r: &PerplexityReport) -> String {
    format!(
        "| {name} | {:.2} | {:.2} | {:.4} |",
        r.token_perplexity, r.word_perplexity, r.bits_per_byte
    )
}

/// Runs the demo.
pub fn run(args: Args) -> Result<()> {
    let device = candle_core::Device::Cpu;
    let dir = &args.dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let train_path = dir.join("sotu_train.jsonl");
    let test_path = dir.join("sotu_test.jsonl");
    atomic::write_bytes(&train_path, TRAIN.as_bytes())?;
    atomic::write_bytes(&test_path, TEST.as_bytes())?;

    eprintln!("[1/5] model owner: fetching SmolLM2-135M-Instruct");
    let model_path = fetch::fetch(&fetch::SMOLLM2, None)?;
    let ckpt = checkpoint::load(&model_path, &device)?;
    let full = ckpt.model()?;
    let tok = ckpt.tokenizer()?;

    eprintln!(
        "[2/5] model owner: building the emulator (2 + {} + 2 layers)",
        args.keep
    );
    let package_path = dir.join("emulator.offsite");
    let options = EmulatorOptions::layer_drop(2, args.keep, 2);
    let package = Package::build(&full, Some(tok), options, &package_path)?;
    package.save(&package_path)?;
    // The data owner starts from the file, as they would.
    let package = Package::load(&package_path, &device)?;

    eprintln!("[3/5] data owner: tuning the adapter through the emulator");
    let adapter_path = dir.join("adapter.safetensors");
    let opts = TrainOptions {
        epochs: args.epochs,
        max_steps: args.max_steps,
        batch_size: 4,
        lr: 1e-4,
        schedule: Schedule::Cosine,
        warmup_steps: 2,
        block_size: args.block_size,
        save_every: 5,
        resume: true,
        precision: args.precision,
        ..TrainOptions::default()
    };
    let ptok = package.tokenizer()?;
    let train = load_training_data(&train_path, &ptok, args.block_size, None)?;
    let pad = ptok.pad_id().or(ptok.eos_id()).unwrap_or(0);
    tune(
        &package,
        &train.sequences,
        None,
        &opts,
        &Method::Full,
        pad,
        &adapter_path,
    )?;

    eprintln!("[4/5] model owner: plugging the adapter into the full model");
    let adapter = Adapter::load(&adapter_path, &device)?;
    let plugged_dir = dir.join("plugged");
    hf_dir::save(&plugged_dir, &plug(&ckpt, &adapter)?, Some(tok))?;

    eprintln!("[5/5] evaluating on {}", test_path.display());
    let docs = read_texts(&test_path)?;
    let eval = |model: &offsite::model::Model| perplexity(model, tok, &docs, args.block_size, 4);
    let zero_shot = eval(&full)?;
    let emu = package.model()?;
    let emulator_zero_shot = eval(&emu)?;
    let mut emu_ft = emu;
    adapter.check_package(&package)?;
    adapter.apply(&mut emu_ft)?;
    let emulator_ft = eval(&emu_ft)?;
    let plugged = checkpoint::load(&plugged_dir, &device)?.model()?;
    let plug_in = eval(&plugged)?;

    let table = [
        "| model | token perplexity | word perplexity | bits per byte |".to_string(),
        "| --- | ---: | ---: | ---: |".to_string(),
        row("full model, zero-shot", &zero_shot),
        row("emulator, zero-shot", &emulator_zero_shot),
        row("emulator, fine-tuned", &emulator_ft),
        row("plug-in (full model + tuned adapter)", &plug_in),
    ]
    .join("\n");
    println!("{table}");
    let report = serde_json::json!({
        "model": model_path,
        "emulator": {"bottom": 2, "top": 2, "keep": args.keep},
        "training": opts,
        "rows": {
            "zero_shot": zero_shot,
            "emulator_zero_shot": emulator_zero_shot,
            "emulator_ft": emulator_ft,
            "plug_in": plug_in,
        },
    });
    atomic::write_json(&dir.join("report.json"), &report)?;
    atomic::write_bytes(&dir.join("report.md"), format!("{table}\n").as_bytes())?;
    eprintln!("files in {}", dir.display());
    Ok(())
}
