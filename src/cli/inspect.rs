//! `offsite inspect MODEL [--json]`.

use super::ModelSpec;
use anyhow::Result;
use serde_json::json;

/// Arguments of `offsite inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model directory, or `smollm2`.
    model: ModelSpec,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Describes the model.
pub fn run(args: Args) -> Result<()> {
    let ckpt = args.model.load()?;
    let model = ckpt.model()?;
    let c = &ckpt.config;
    let tok = ckpt.tokenizer.as_ref();
    let specials: Vec<_> = tok
        .map(|t| t.special_tokens())
        .unwrap_or_default()
        .into_iter()
        .map(|(s, id)| json!({"id": id, "token": s}))
        .collect();
    let report = json!({
        "path": ckpt.path,
        "format": ckpt.format.to_string(),
        "family": c.family.name(),
        "layers": c.num_layers,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "heads": c.num_heads,
        "kv_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "vocab_size": c.vocab_size,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "max_position_embeddings": c.max_position_embeddings,
        "tied_embeddings": c.tie_word_embeddings,
        "parameters": model.num_parameters(),
        "stored_dtypes": ckpt.stored_dtypes,
        "tokenizer": tok.map(|t| json!({
            "vocab_size": t.vocab_size(),
            "bos_id": t.bos_id(),
            "eos_id": t.eos_id(),
            "has_chat_template": t.chat_template().is_some(),
            "special_tokens": specials,
        })),
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("{}  ({})", ckpt.path.display(), ckpt.format);
    println!("family        {}", c.family.name());
    println!(
        "layers        {} × (hidden {}, MLP {}, heads {}/{} kv, head dim {})",
        c.num_layers, c.hidden_size, c.intermediate_size, c.num_heads, c.num_kv_heads, c.head_dim
    );
    println!(
        "parameters    {} ({:.1} M){}",
        model.num_parameters(),
        model.num_parameters() as f64 / 1e6,
        if c.tie_word_embeddings {
            ", LM head tied to the embedding"
        } else {
            ""
        }
    );
    println!("vocabulary    {}", c.vocab_size);
    println!(
        "rope theta    {}   rms eps {:e}   context {}",
        c.rope_theta, c.rms_norm_eps, c.max_position_embeddings
    );
    let dtypes: Vec<String> = ckpt
        .stored_dtypes
        .iter()
        .map(|(d, n)| format!("{d} × {n}"))
        .collect();
    println!("stored as     {} (loaded as f32)", dtypes.join(", "));
    match tok {
        Some(t) => {
            println!(
                "tokenizer     {} tokens, bos {:?}, eos {:?}, chat template: {}",
                t.vocab_size(),
                t.bos_id(),
                t.eos_id(),
                if t.chat_template().is_some() {
                    "yes"
                } else {
                    "no"
                }
            );
            let s: Vec<String> = t
                .special_tokens()
                .into_iter()
                .map(|(s, id)| format!("{id}={s}"))
                .collect();
            println!("special       {}", s.join(" "));
        }
        None => println!("tokenizer     none"),
    }
    Ok(())
}
