//! `offsite sample MODEL -n N --max-tokens T [--temperature 1 --top-p 0.95 --seed S] [--prompt
//! P] -o CORPUS.jsonl`: a corpus of the model's own samples, for data-free calibration and
//! distillation (the model owner then needs no text of anyone's). Resumable: finished samples
//! are kept in `CORPUS.jsonl.partial` until the corpus is complete.

use super::ModelSpec;
use anyhow::{bail, Context, Result};
use offsite::io::atomic;
use offsite::model::generate::{generate_batch, Sampling};
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `offsite sample`.
#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model directory, or a known model name (`smollm2`, `gemma3-270m`: fetched on first use).
    model: ModelSpec,
    /// Number of samples.
    #[arg(short, long, default_value_t = 32)]
    n: usize,
    /// Most tokens per sample (a sample ends earlier at the end-of-sequence token).
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature (> 0).
    #[arg(long, default_value_t = 1.0)]
    temperature: f64,
    /// Nucleus sampling mass.
    #[arg(long, default_value_t = 0.95)]
    top_p: f64,
    /// Seed of the first sample; sample i uses seed + i.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue this text instead of starting from nothing (e.g. `Subject:` for e-mail-like
    /// samples); the corpus holds the continuations, which a template such as `Subject:
    /// {text}` puts back behind it.
    #[arg(long)]
    prompt: Option<String>,
    /// Samples drawn at once (> 0): the prompt runs once and each step reads the weights once
    /// for all of them (8 × 128 tokens of SmolLM2 on 2 cores: 25 s instead of 35 s). Batched products round
    /// differently from single ones, so batches are fixed — seeds `seed + k·batch …` in batch
    /// `k`, the last one filled up — and a sample depends on its seed and the batch size only;
    /// `--batch 1` draws one at a time (corpora made before batching).
    #[arg(long, default_value_t = 8)]
    batch: usize,
    /// The corpus to write (JSONL {"text", "seed"}).
    #[arg(short, long)]
    output: PathBuf,
}

/// Samples and writes the corpus.
pub fn run(args: Args) -> Result<()> {
    // Written as a positive test so that NaN fails it too.
    let valid = args.temperature > 0.0 && args.top_p > 0.0 && args.top_p <= 1.0;
    if !valid {
        bail!("--temperature must be > 0 and --top-p in (0, 1]");
    }
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let ckpt = args.model.load()?;
    let tok = ckpt.tokenizer()?;
    let model = ckpt.model()?;
    // Unconditional samples start from the sequence-start token (end-of-sequence when the
    // tokenizer has none): what the model writes when nobody asks anything.
    let start = tok
        .bos_id()
        .or(tok.eos_id())
        .context("the tokenizer has neither a start nor an end-of-sequence token")?;
    let stop: Vec<u32> = tok.eos_id().into_iter().collect();
    let partial = PathBuf::from(format!("{}.partial", args.output.display()));
    let mut settings = serde_json::json!({
        "max_tokens": args.max_tokens, "temperature": args.temperature, "top_p": args.top_p,
    });
    // Part of what a sample depends on (left out at 1, as corpora drawn before batching were).
    if args.batch != 1 {
        settings["batch"] = serde_json::json!(args.batch);
    }
    let mut context = vec![start];
    if let Some(p) = &args.prompt {
        // Recorded with the settings, so a resumed run keeps only samples of this prompt.
        settings["prompt"] = serde_json::json!(p);
        context.extend(tok.encode(p)?);
    }
    // An interrupted run's samples are kept while they are the ones this run would draw: the
    // same settings and seeds seed, seed + 1, … in order.
    let mut done: Vec<serde_json::Value> = std::fs::read_to_string(&partial)
        .unwrap_or_default()
        .lines()
        .map_while(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .enumerate()
        .take_while(|(i, v)| {
            v.get("seed").and_then(|s| s.as_u64()) == Some(args.seed + *i as u64)
                && v.get("settings") == Some(&settings)
                && v.get("text").is_some_and(|t| t.is_string())
        })
        .map(|(_, v)| v)
        .take(args.n)
        .collect();
    // Whole batches only: a sample is redrawn in the batch it belongs to.
    done.truncate(done.len() / args.batch * args.batch);
    // Rewrite the partial file with exactly the samples kept, then append to it.
    let kept: String = done.iter().map(|v| format!("{v}\n")).collect();
    atomic::write_bytes(&partial, kept.as_bytes())?;
    let bar = indicatif::ProgressBar::new(args.n as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("sample {bar:30} {pos}/{len} [{elapsed} < {eta}]")
            .expect("a valid template"),
    );
    bar.set_position(done.len() as u64);
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&partial)
        .with_context(|| format!("{}: cannot write", partial.display()))?;
    let batch = args.batch;
    let mut start = done.len();
    while start < args.n {
        let end = (start + batch).min(args.n);
        // The last batch is filled up with the seeds that follow, so that every sample is drawn
        // in a full batch whatever `-n` is.
        let samplings: Vec<Sampling> = (start..start + batch)
            .map(|i| Sampling::Random {
                temperature: args.temperature,
                top_p: args.top_p,
                seed: args.seed + i as u64,
            })
            .collect();
        let drawn = generate_batch(&model, &context, args.max_tokens, &stop, &samplings)?;
        for (i, ids) in (start..end).zip(drawn) {
            let seed = args.seed + i as u64;
            let v =
                serde_json::json!({"text": tok.decode(&ids)?, "seed": seed, "settings": settings});
            writeln!(file, "{v}")
                .with_context(|| format!("{}: cannot write", partial.display()))?;
            done.push(v);
            bar.inc(1);
        }
        start = end;
    }
    bar.finish_and_clear();
    // A sample that is only whitespace would be an empty document: left out of the corpus.
    let corpus: Vec<String> = done
        .iter()
        .filter(|v| v["text"].as_str().is_some_and(|t| !t.trim().is_empty()))
        .map(|v| {
            format!(
                "{}\n",
                serde_json::json!({"text": v["text"], "seed": v["seed"]})
            )
        })
        .collect();
    atomic::write_bytes(&args.output, corpus.concat().as_bytes())?;
    let _ = std::fs::remove_file(&partial);
    println!(
        "wrote {} ({} samples of at most {} tokens)",
        args.output.display(),
        corpus.len(),
        args.max_tokens
    );
    Ok(())
}
