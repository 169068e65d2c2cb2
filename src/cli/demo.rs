//! `offsite demo`: the whole exchange on the real demo model and a small vendored corpus —
//! emulator → tune → plug → align → eval, with full fine-tuning as the baseline — and a table of
//! the perplexities (zero-shot, emulator zero-shot and fine-tuned, plug-in, proxy, aligned
//! plug-in, full fine-tuning).

use anyhow::{Context, Result};
use offsite::data::{load_training_data, read_texts};
use offsite::emulator::align::{align, align_sequences, AlignOptions, AlignRun};
use offsite::emulator::proxy::Proxy;
use offsite::emulator::tune::tune;
use offsite::emulator::{plug, Adapter, EmulatorOptions, Package};
use offsite::eval::{perplexity, PerplexityReport, Scorer};
use offsite::io::{atomic, checkpoint, fetch, hf_dir};
use offsite::model::generate::{generate, Sampling};
use offsite::model::Precision;
use offsite::peft::Method;
use offsite::train::finetune::finetune;
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
    /// Which products of the tuning run in bf16 (auto, f32, frozen-bf16, bf16; `auto`: bf16
    /// where the CPU has a bf16 kernel, else f32).
    #[arg(long, default_value = "auto")]
    precision: Precision,
    /// The model's own samples the model owner aligns on (public, data-free text).
    #[arg(long, default_value_t = 16)]
    align_samples: usize,
    /// Optimizer steps of the alignment (batches of 4 blocks of 128 tokens).
    #[arg(long, default_value_t = 16)]
    align_steps: usize,
    #[command(flatten)]
    align: AlignOptions,
    /// Leave out the full fine-tuning baseline (the demo's longest step).
    #[arg(long)]
    skip_full_ft: bool,
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

    eprintln!("[1/7] model owner: fetching SmolLM2-135M-Instruct");
    let model_path = fetch::fetch(&fetch::SMOLLM2, None)?;
    let ckpt = checkpoint::load(&model_path, &device)?;
    let full = ckpt.model()?;
    let tok = ckpt.tokenizer()?;

    eprintln!(
        "[2/7] model owner: building the emulator (2 + {} + 2 layers)",
        args.keep
    );
    let package_path = dir.join("emulator.offsite");
    let options = EmulatorOptions::layer_drop(2, args.keep, 2);
    let package = Package::build(&full, Some(tok), options, &package_path)?;
    package.save(&package_path)?;
    // The data owner starts from the file, as they would.
    let package = Package::load(&package_path, &device)?;

    eprintln!("[3/7] data owner: tuning the adapter through the emulator");
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

    eprintln!("[4/7] model owner: plugging the adapter into the full model");
    let adapter = Adapter::load(&adapter_path, &device)?;
    let plugged_dir = dir.join("plugged");
    hf_dir::save(&plugged_dir, &plug(&ckpt, &adapter)?, Some(tok))?;

    eprintln!(
        "[5/7] model owner: aligning the plugged adapter on {} of the model's own samples",
        args.align_samples
    );
    let public_path = dir.join("public_samples.jsonl");
    let public = own_samples(&full, tok, args.align_samples, &public_path)?;
    let aligned_path = dir.join("adapter-aligned.safetensors");
    let align_opts = TrainOptions {
        epochs: 1000,
        max_steps: Some(args.align_steps),
        warmup_steps: 2,
        precision: Precision::F32,
        ..opts.clone()
    };
    let sha = fetch::file_sha256(&public_path)?;
    let data = align_sequences(
        tok,
        &public,
        args.block_size,
        args.align.template.as_deref(),
    )?;
    let corpus = public_path.display().to_string();
    let aligned = align(&AlignRun {
        ckpt: &ckpt,
        package: &package,
        adapter: &adapter,
        data: &data,
        val: None,
        corpus: (&corpus, &sha),
        options: &args.align,
        training: &align_opts,
        pad,
        output: &aligned_path,
    })?;
    aligned.save(&aligned_path)?;

    let full_ft = if args.skip_full_ft {
        None
    } else {
        eprintln!("[6/7] baseline: fine-tuning every weight of the full model");
        let ft_opts = TrainOptions {
            precision: Precision::F32,
            ..opts.clone()
        };
        let train = load_training_data(&train_path, tok, args.block_size, None)?;
        let ft_dir = dir.join("full-ft");
        Some(
            finetune(
                &ckpt,
                &train.sequences,
                None,
                &ft_opts,
                &Method::Full,
                pad,
                &ft_dir,
            )?
            .0,
        )
    };

    eprintln!("[7/7] evaluating on {}", test_path.display());
    let docs = read_texts(&test_path)?;
    let eval = |model: &dyn Scorer| perplexity(model, tok, &docs, args.block_size, 4);
    let zero_shot = eval(&full)?;
    let emu = package.model()?;
    let emulator_zero_shot = eval(&emu)?;
    let mut emu_ft = emu;
    adapter.check_package(&package)?;
    adapter.apply(&mut emu_ft)?;
    let emulator_ft = eval(&emu_ft)?;
    let plugged = checkpoint::load(&plugged_dir, &device)?.model()?;
    let plug_in = eval(&plugged)?;
    let proxy = eval(&Proxy::new(&ckpt, &package, &adapter, args.align.alpha)?)?;
    let plug_in_aligned = eval(&plug(&ckpt, &aligned)?)?;
    let full_ft = full_ft.as_ref().map(|m| eval(m)).transpose()?;

    let mut lines = vec![
        "| model | token perplexity | word perplexity | bits per byte |".to_string(),
        "| --- | ---: | ---: | ---: |".to_string(),
        row("full model, zero-shot", &zero_shot),
        row("emulator, zero-shot", &emulator_zero_shot),
        row("emulator, fine-tuned", &emulator_ft),
        row("plug-in (full model + tuned adapter)", &plug_in),
        row("proxy (logit arithmetic, no plug-in)", &proxy),
        row("plug-in, aligned by the model owner", &plug_in_aligned),
    ];
    if let Some(r) = &full_ft {
        lines.push(row("full fine-tuning (baseline)", r));
    }
    let table = lines.join("\n");
    println!("{table}");
    let report = serde_json::json!({
        "model": model_path,
        "emulator": {"bottom": 2, "top": 2, "keep": args.keep},
        "training": opts,
        "alignment": aligned.meta.alignment,
        "rows": {
            "zero_shot": zero_shot,
            "emulator_zero_shot": emulator_zero_shot,
            "emulator_ft": emulator_ft,
            "plug_in": plug_in,
            "proxy": proxy,
            "plug_in_aligned": plug_in_aligned,
            "full_ft": full_ft,
        },
    });
    atomic::write_json(&dir.join("report.json"), &report)?;
    atomic::write_bytes(&dir.join("report.md"), format!("{table}\n").as_bytes())?;
    eprintln!("files in {}", dir.display());
    Ok(())
}

/// `n` unconditional samples of `model` (seeds 0..n, at most 128 tokens each), written to
/// `path` as JSONL {"text"}: public text the model owner has without anyone's data.
fn own_samples(
    model: &offsite::model::Model,
    tok: &offsite::io::tokenizer::Tokenizer,
    n: usize,
    path: &std::path::Path,
) -> Result<Vec<String>> {
    let start = tok.bos_id().or(tok.eos_id()).context("no start token")?;
    let stop: Vec<u32> = tok.eos_id().into_iter().collect();
    let mut texts = Vec::with_capacity(n);
    for seed in 0..n as u64 {
        let sampling = Sampling::Random {
            temperature: 1.0,
            top_p: 0.95,
            seed,
        };
        let text = tok.decode(&generate(model, &[start], 128, &stop, &sampling)?)?;
        if !text.trim().is_empty() {
            texts.push(text);
        }
    }
    let lines: String = texts
        .iter()
        .map(|t| format!("{}\n", serde_json::json!({ "text": t })))
        .collect();
    atomic::write_bytes(path, lines.as_bytes())?;
    Ok(texts)
}
