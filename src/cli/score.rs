//! `offsite score MODEL (--text T | --ids 5,17,300) [--json]`.

use super::ModelSpec;
use anyhow::Result;
use offsite::eval::score::score_ids;

/// Arguments of `offsite score`.
#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["text", "ids"])))]
pub struct Args {
    /// A .gguf file, a Hugging Face model directory, or a known model name (`smollm2`, `gemma3-270m`: fetched on first use).
    model: ModelSpec,
    /// The text to score (tokenized as is, no BOS added).
    #[arg(long)]
    text: Option<String>,
    /// Token ids to score instead of a text, comma-separated (for checkpoints without a
    /// tokenizer).
    #[arg(long, value_delimiter = ',')]
    ids: Option<Vec<u32>>,
    /// Print `{"ids", "logprobs", "mean_ce"}` as JSON.
    #[arg(long)]
    json: bool,
}

/// Scores the text or the ids.
pub fn run(args: Args) -> Result<()> {
    let ckpt = args.model.load()?;
    let model = ckpt.model()?;
    let (ids, tok) = match (&args.ids, &args.text) {
        (Some(ids), _) => (ids.clone(), ckpt.tokenizer.as_ref()),
        (None, Some(text)) => {
            let tok = ckpt.tokenizer()?;
            (tok.encode_start(text)?, Some(tok))
        }
        (None, None) => anyhow::bail!("give --text or --ids"),
    };
    if let Some(bad) = ids.iter().find(|&&i| i as usize >= ckpt.config.vocab_size) {
        anyhow::bail!(
            "token id {bad} is outside the vocabulary of {} ({} tokens)",
            ckpt.path.display(),
            ckpt.config.vocab_size
        );
    }
    let scores = score_ids(&model, &ids)?;
    if args.json {
        println!("{}", serde_json::to_string(&scores)?);
        return Ok(());
    }
    let show = |id: u32| -> Result<String> {
        Ok(match tok {
            Some(t) => format!("{:?}", t.decode(&[id])?),
            None => String::new(),
        })
    };
    println!("{:>8}  {:>10}  token", "id", "logprob");
    println!("{:>8}  {:>10}  {}", ids[0], "", show(ids[0])?);
    for (id, lp) in ids[1..].iter().zip(&scores.logprobs) {
        println!("{id:>8}  {lp:>10.4}  {}", show(*id)?);
    }
    println!(
        "mean next-token cross-entropy {:.5} nats (perplexity {:.3}) over {} predictions",
        scores.mean_ce,
        scores.mean_ce.exp(),
        scores.logprobs.len()
    );
    Ok(())
}
