//! `offsite align MODEL EMU.offsite ADAPTER --data PUBLIC -o ALIGNED [--align-* flags]` (the
//! model owner, after the data owner returned ADAPTER).

use super::ModelSpec;
use anyhow::Result;
use offsite::data::read_texts;
use offsite::emulator::align::{align, align_sequences, flag_value, AlignOptions, AlignRun};
use offsite::emulator::{Adapter, Package};
use offsite::train::TrainOptions;
use std::path::PathBuf;

/// Arguments of `offsite align`.
#[derive(clap::Args)]
pub struct Args {
    /// The full model the emulator package was made from.
    model: ModelSpec,
    /// The emulator package the adapter was tuned through.
    package: PathBuf,
    /// The adapter the data owner returned.
    adapter: PathBuf,
    /// Public text to align on (JSONL {"text"} or .txt): the model's own samples (`offsite
    /// sample`) or any text that is not the data owner's.
    #[arg(long)]
    data: PathBuf,
    /// Held-out public text; the aligned weights with the lowest KL on it are kept.
    #[arg(long)]
    val: Option<PathBuf>,
    /// Use only the first N documents of each file.
    #[arg(long)]
    limit: Option<usize>,
    /// The aligned adapter to write (plug it in with `offsite plug`).
    #[arg(short, long)]
    output: PathBuf,
    #[command(flatten)]
    align: AlignOptions,
    #[command(flatten)]
    train: TrainOptions,
}

/// Aligns the adapter and writes it.
pub fn run(args: Args) -> Result<()> {
    let device = candle_core::Device::Cpu;
    let ckpt = args.model.load()?;
    let package = Package::load(&args.package, &device)?;
    let adapter = Adapter::load(&args.adapter, &device)?;
    let tok = package.tokenizer()?;
    let template = args.align.template.as_deref();
    let block = args.train.block_size;
    let load = |path: &PathBuf| -> Result<_> {
        let mut docs = read_texts(path)?;
        docs.truncate(args.limit.unwrap_or(usize::MAX));
        Ok(align_sequences(&tok, &docs, block, template)?)
    };
    let data = load(&args.data)?;
    let val = args.val.as_ref().map(load).transpose()?;
    eprintln!(
        "alignment data: {} sequences{}",
        data.len(),
        val.as_ref()
            .map_or(String::new(), |v| format!(", {} held out", v.len()))
    );
    let sha = offsite::io::fetch::file_sha256(&args.data)?;
    let pad = tok.pad_id().or(tok.eos_id()).unwrap_or(0);
    let corpus = args.data.display().to_string();
    let aligned = align(&AlignRun {
        ckpt: &ckpt,
        package: &package,
        adapter: &adapter,
        data: &data,
        val: val.as_deref(),
        corpus: (&corpus, &sha),
        options: &args.align,
        training: &args.train,
        pad,
        output: &args.output,
    })?;
    aligned.save(&args.output)?;
    let record = aligned.meta.alignment.as_ref().expect("an aligned adapter");
    let m = &record.metrics;
    println!(
        "wrote {} ({} weights aligned towards the `{}` target over `{}` positions); {} steps, \
         {} tokens, {:.0} s, final KL {}, held-out KL {} → {}",
        args.output.display(),
        record.trained.len(),
        flag_value(&record.options.target),
        flag_value(&record.options.positions),
        m.steps,
        m.tokens,
        m.seconds,
        m.final_train_loss.map_or("-".into(), |l| format!("{l:.4}")),
        record
            .val_loss_before
            .map_or("-".into(), |l| format!("{l:.4}")),
        m.best_val_loss.map_or("-".into(), |l| format!("{l:.4}")),
    );
    Ok(())
}
