//! `offsite generate MODEL --prompt P [--chat] [--max-tokens N] [--temperature T --top-p P --seed S] [--json]`.

use super::ModelSpec;
use anyhow::{bail, Result};
use offsite::io::tokenizer::ChatMessage;
use offsite::model::generate::{generate, Sampling};

/// Arguments of `offsite generate`.
#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model directory, or a known model name (`smollm2`, `gemma3-270m`: fetched on first use).
    model: ModelSpec,
    /// The text to continue (with --chat: the user's message).
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long)]
    chat: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// Sampling temperature; 0 (the default) means greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f64,
    /// Nucleus sampling mass (with --temperature).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Print `{"ids": [...], "text": "..."}` of the continuation.
    #[arg(long)]
    json: bool,
}

/// Generates and prints the continuation.
pub fn run(args: Args) -> Result<()> {
    if args.temperature < 0.0 || !(args.top_p > 0.0 && args.top_p <= 1.0) {
        bail!("--temperature must be >= 0 and --top-p in (0, 1]");
    }
    let ckpt = args.model.load()?;
    let tok = ckpt.tokenizer()?;
    let model = ckpt.model()?;
    let text = if args.chat {
        let messages = [ChatMessage {
            role: "user".into(),
            content: args.prompt.clone(),
        }];
        tok.apply_chat_template(&messages, true)?
    } else {
        args.prompt.clone()
    };
    let prompt = tok.encode_start(&text)?;
    let sampling = if args.temperature == 0.0 {
        Sampling::Greedy
    } else {
        Sampling::Random {
            temperature: args.temperature,
            top_p: args.top_p,
            seed: args.seed,
        }
    };
    let stop: Vec<u32> = tok.eos_id().into_iter().collect();
    let ids = generate(&model, &prompt, args.max_tokens, &stop, &sampling)?;
    let out = tok.decode(&ids)?;
    if args.json {
        println!("{}", serde_json::json!({"ids": ids, "text": out}));
    } else {
        println!("{out}");
    }
    Ok(())
}
