//! `offsite eval MODEL|EMU.offsite [--adapter ADAPTER] --data TEST [--metric ppl|mc|answer]
//! [--limit N] [--json]`; without `--metric`, the measure follows the records' kind.

use anyhow::{bail, Result};
use offsite::data::tasks::{load_mc, load_task, Task};
use offsite::data::{read_records, read_texts, record_kind, RecordKind};
use offsite::eval::multiple_choice::{mc_metrics, score_mc};
use offsite::eval::perplexity;
use offsite::eval::target::{load_evaluable, load_proxy};
use offsite::io::atomic;
use std::path::PathBuf;

/// Which measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Perplexity (token-level and lm-eval's document-level measures).
    Ppl,
    /// Multiple-choice accuracy (acc, acc_norm) with lm-eval's semantics.
    Mc,
    /// The loss of each completion given its prompt (prompt/completion records).
    Answer,
}

impl Metric {
    /// The measure for a kind of record.
    fn of(kind: RecordKind) -> Self {
        match kind {
            RecordKind::Text => Metric::Ppl,
            RecordKind::MultipleChoice => Metric::Mc,
            RecordKind::Completion => Metric::Answer,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Metric::Ppl => "ppl",
            Metric::Mc => "mc",
            Metric::Answer => "answer",
        }
    }
}

/// Arguments of `offsite eval`.
#[derive(clap::Args)]
pub struct Args {
    /// A model (.gguf, HF directory, `smollm2`, `gemma3-270m`) or an emulator package (.offsite).
    model: super::ModelSpec,
    /// A tuned adapter: with a package, evaluates the emulator fine-tuned; with a model, the
    /// plug-in (without writing it to disk).
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Score with the proxy instead: MODEL's log-probabilities plus α × (those of this emulator
    /// package with --adapter − those of the package as shipped), renormalised per position
    /// (logit arithmetic; no plug-in). Needs --adapter; MODEL must be the full model.
    #[arg(long, requires = "adapter")]
    proxy: Option<PathBuf>,
    /// The proxy's α (how much of the emulator's change is added).
    #[arg(long, default_value_t = offsite::emulator::proxy::DEFAULT_ALPHA, requires = "proxy")]
    alpha: f64,
    /// Evaluation data: JSONL {"text"} or a .txt file (perplexity), JSONL {"context", "choices",
    /// "label"} (multiple choice), JSONL {"prompt", "completion"} (answer loss), or a task's
    /// Hugging Face export with --task.
    #[arg(long)]
    data: PathBuf,
    /// Read --data as this task's Hugging Face records, with lm-eval's prompts (mc only).
    #[arg(long, value_enum)]
    task: Option<Task>,
    /// What to measure (default: what the records are: text → ppl, context/choices/label → mc,
    /// prompt/completion → answer; --task → mc).
    #[arg(long, value_enum)]
    metric: Option<Metric>,
    /// Evaluate only the first N records.
    #[arg(long)]
    limit: Option<usize>,
    /// Block size of the token-level perplexity (and window of the document-level one); for mc,
    /// the longest context + choice scored (longer contexts are cut from the left).
    #[arg(long, default_value_t = 512)]
    block_size: usize,
    /// Sequences per forward pass.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// mc only: also write each record's per-choice log-likelihoods and gold label to this
    /// JSONL file (`{"index", "logliks", "label"}`), for margins, calibration or significance
    /// tests between two runs.
    #[arg(long)]
    scores: Option<PathBuf>,
    /// With an emulator package: keep its emulator layers' weight matrices in this GGUF block
    /// format (`q8_0`, `q4_k`, …), as `tune --frozen-quantized` does.
    #[arg(long, value_name = "FORMAT")]
    frozen_quantized: Option<offsite::model::QuantType>,
}

/// Evaluates and prints the report.
pub fn run(args: Args) -> Result<()> {
    if args.block_size < 2 {
        bail!("--block-size must be at least 2");
    }
    let path = args.model.path()?;
    let metric = match (args.metric, args.task) {
        (Some(m), _) => m,
        (None, Some(_)) => Metric::Mc,
        (None, None) => {
            let kind = record_kind(&args.data)?;
            let m = Metric::of(kind);
            eprintln!(
                "eval: {} holds {} records: measuring {} (--metric overrides)",
                args.data.display(),
                kind.describe(),
                m.name()
            );
            m
        }
    };
    if args.task.is_some() && metric != Metric::Mc {
        bail!("--task applies to --metric mc");
    }
    if args.scores.is_some() && metric != Metric::Mc {
        bail!("--scores applies to --metric mc");
    }
    let device = candle_core::Device::Cpu;
    let target = match (&args.proxy, &args.adapter) {
        (Some(_), Some(_)) if args.frozen_quantized.is_some() => {
            bail!("--frozen-quantized does not apply to the proxy")
        }
        (Some(package), Some(adapter)) => load_proxy(&path, package, adapter, args.alpha, &device)?,
        _ => load_evaluable(
            &path,
            args.adapter.as_deref(),
            args.frozen_quantized,
            &device,
        )?,
    };
    let (report, lines) = match metric {
        Metric::Mc => {
            let mut records = match args.task {
                Some(task) => load_task(task, &args.data)?,
                None => load_mc(&args.data)?,
            };
            records.truncate(args.limit.unwrap_or(usize::MAX));
            let logliks = score_mc(
                &*target.scorer,
                &target.tokenizer,
                &records,
                args.block_size,
            )?;
            if let Some(path) = &args.scores {
                let mut text = String::new();
                for (i, (ll, rec)) in logliks.iter().zip(&records).enumerate() {
                    let line = serde_json::json!({"index": i, "logliks": ll, "label": rec.label});
                    text += &format!("{line}\n");
                }
                atomic::write_bytes(path, text.as_bytes())?;
            }
            let scored: Vec<_> = logliks.into_iter().zip(&records).collect();
            let r = mc_metrics(&scored);
            let lines = vec![
                format!("{} questions", r.n),
                format!("acc      {:.4} ± {:.4}", r.acc, r.acc_stderr),
                format!("acc_norm {:.4} ± {:.4}", r.acc_norm, r.acc_norm_stderr),
                format!(
                    "margin   {:.3} ± {:.3} nats (gold − best wrong){}",
                    r.margin,
                    r.margin_stderr,
                    r.auc.map_or(String::new(), |a| format!("; AUC {a:.4}"))
                ),
            ];
            (serde_json::to_value(&r)?, lines)
        }
        Metric::Answer => {
            let mut records = read_records(&args.data)?;
            records.truncate(args.limit.unwrap_or(usize::MAX));
            let (model, tok) = (&*target.scorer, &target.tokenizer);
            let r = offsite::eval::answer::answer_loss(model, tok, &records, args.block_size)?;
            let lines = vec![
                format!("{} records", r.n),
                format!(
                    "answer loss {:.4} nats per completion token over {} tokens (perplexity {:.3}); {} prompts cut to fit {} tokens",
                    r.answer_loss, r.tokens, r.answer_perplexity, r.truncated, args.block_size
                ),
            ];
            (serde_json::to_value(&r)?, lines)
        }
        Metric::Ppl => {
            let mut docs = read_texts(&args.data)?;
            docs.truncate(args.limit.unwrap_or(usize::MAX));
            let (model, tok) = (&*target.scorer, &target.tokenizer);
            let r = perplexity(model, tok, &docs, args.block_size, args.batch_size)?;
            let lines = vec![
                format!("{} documents", r.n),
                format!(
                    "token perplexity {:.3} (mean CE {:.4} over {} tokens, blocks of {})",
                    r.token_perplexity, r.token_ce, r.tokens, r.block_size
                ),
                format!(
                    "lm-eval: word perplexity {:.3}, byte perplexity {:.4}, bits per byte {:.4}",
                    r.word_perplexity, r.byte_perplexity, r.bits_per_byte
                ),
            ];
            (serde_json::to_value(&r)?, lines)
        }
    };
    if args.json {
        let mut v = report;
        v["model"] = target.kind.into();
        v["metric"] = metric.name().into();
        if args.proxy.is_some() {
            v["alpha"] = args.alpha.into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!("{} on {}: {}", target.kind, args.data.display(), lines[0]);
        for line in &lines[1..] {
            println!("{line}");
        }
    }
    Ok(())
}
