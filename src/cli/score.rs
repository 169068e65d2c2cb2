//! `offsite score MODEL --text T [--json]`.

use super::ModelSpec;
use anyhow::Result;
use offsite::eval::score::score_ids;

/// Arguments of `offsite score`.
#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model directory, or `smollm2`.
    model: ModelSpec,
    /// The text to score (tokenized as is, no BOS added).
    #[arg(long)]
    text: String,
    /// Print `{"ids", "logprobs", "mean_ce"}` as JSON.
    #[arg(long)]
    json: bool,
}

/// Scores the text.
pub fn run(args: Args) -> Result<()> {
    let ckpt = args.model.load()?;
    let tok = ckpt.tokenizer()?;
    let model = ckpt.model()?;
    let ids = tok.encode(&args.text)?;
    let scores = score_ids(&model, &ids)?;
    if args.json {
        println!("{}", serde_json::to_string(&scores)?);
        return Ok(());
    }
    println!("{:>8}  {:>10}  token", "id", "logprob");
    println!("{:>8}  {:>10}  {:?}", ids[0], "", tok.decode(&ids[..1])?);
    for (id, lp) in ids[1..].iter().zip(&scores.logprobs) {
        println!("{id:>8}  {lp:>10.4}  {:?}", tok.decode(&[*id])?);
    }
    println!(
        "mean next-token cross-entropy {:.5} nats (perplexity {:.3}) over {} predictions",
        scores.mean_ce,
        scores.mean_ce.exp(),
        scores.logprobs.len()
    );
    Ok(())
}
