//! `offsite inspect MODEL [--json]`.

use super::ModelSpec;
use anyhow::Result;
use offsite::emulator::align::flag_value;
use offsite::emulator::fingerprint::short;
use offsite::emulator::{Adapter, Package};
use offsite::io::offsite_file::{self, Seal, ADAPTER_FORMAT, PACKAGE_FORMAT};
use serde_json::json;
use std::path::Path;

fn file_size(path: &Path) -> u64 {
    // A PEFT directory's size is its weights file's.
    let file = offsite::io::offsite_file::weights_file(path);
    std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
}

/// Describes an emulator package.
fn inspect_package(path: &Path, as_json: bool) -> Result<()> {
    let (pkg, seal) = Package::load_checked(path, &candle_core::Device::Cpu)?;
    // An unsealed package was checked against its recorded fingerprint instead.
    let integrity = match seal {
        Seal::Absent => {
            "no seal (written before seals); its weights match the package fingerprint".to_string()
        }
        s => s.to_string(),
    };
    let m = &pkg.meta;
    let params = pkg.num_parameters();
    let share = 100.0 * params as f64 / m.source_parameters as f64;
    let layer_map: Vec<_> = m
        .split
        .layer_order()
        .iter()
        .enumerate()
        .map(|(i, &orig)| {
            json!({"position": i, "original_layer": orig,
                   "role": if m.split.is_adapter(orig) { "adapter" } else { "emulator" }})
        })
        .collect();
    let report = json!({
        "path": path,
        "kind": "emulator package",
        "format": m.format,
        "format_version": m.format_version,
        "file_bytes": file_size(path),
        "family": m.config.family.name(),
        "num_layers": m.config.num_layers,
        "adapter_layers": m.split.adapter(),
        "emulator_layers": m.split.emulator,
        "stored_emulator_layers": m.split.stored(),
        "strategy": m.options.strategy,
        "choice": m.choice,
        "layer_map": layer_map,
        "options": m.options,
        "compression": m.options.compression(),
        "compressed_tensors": pkg.encoded.len(),
        "distillation": m.distillation,
        "parameters": params,
        "source_parameters": m.source_parameters,
        "percent_of_full": share,
        "fingerprint": m.source_fingerprint,
        "package_fingerprint": m.package_fingerprint,
        "integrity": integrity,
        "has_tokenizer": m.tokenizer.is_some(),
        "created_by": m.created_by,
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}  (emulator package, format v{}, {:.1} MB)",
        path.display(),
        m.format_version,
        file_size(path) as f64 / 1e6
    );
    println!(
        "model         {} with {} layers",
        m.config.family.name(),
        m.config.num_layers
    );
    println!(
        "adapter       layers {:?} (trainable by the data owner)",
        m.split.adapter()
    );
    println!(
        "emulator      layers {:?} ({} stored, {} run, of {} middle layers; strategy {}, {})",
        m.split.emulator,
        m.split.stored().len(),
        m.split.emulator.len(),
        m.split.num_middle(),
        m.options.strategy,
        m.options.compression()
    );
    if let Some(c) = &m.choice {
        println!(
            "chosen on     {} ({} tokens, sha256 {}…): cosine {:.4}, relative error {:.4}, norm \
             ratio {:.3} at the top adapter's input",
            c.calibration,
            c.calibration_tokens,
            short(&c.calibration_sha256),
            c.fidelity.cosine,
            c.fidelity.rel_l2,
            c.fidelity.norm_ratio
        );
    }
    if let Some(d) = &m.distillation {
        println!(
            "distilled     on {} ({} steps, kd weight {}, lm weight {}, best validation loss {})",
            d.corpus,
            d.metrics.steps,
            d.weights.kd_weight,
            d.weights.lm_weight,
            d.metrics
                .best_val_loss
                .map_or("-".into(), |l| format!("{l:.4}"))
        );
    }
    println!(
        "parameters    {params} ({share:.1}% of the full model's {})",
        m.source_parameters
    );
    println!("source model  {}", m.source_fingerprint);
    println!("package       {}", m.package_fingerprint);
    println!("integrity     {integrity}");
    println!(
        "tokenizer     {}",
        if m.tokenizer.is_some() {
            "included"
        } else {
            "none"
        }
    );
    Ok(())
}

/// Describes a tuned adapter.
fn inspect_adapter(path: &Path, as_json: bool) -> Result<()> {
    let (a, seal) = Adapter::load_checked(path, &candle_core::Device::Cpu)?;
    let params: usize = a.tensors.iter().map(|(_, t)| t.elem_count()).sum();
    let report = json!({
        "path": path,
        "kind": "adapter",
        "format": a.meta.format,
        "format_version": a.meta.format_version,
        "file_bytes": file_size(path),
        "adapter_layers": a.meta.adapter_layers,
        "method": a.kind(),
        "lora": a.meta.lora,
        "bottleneck": a.meta.bottleneck,
        "parameters": params,
        "package_fingerprint": a.meta.package_fingerprint,
        "fingerprint": a.meta.source_fingerprint,
        "training": a.meta.training,
        "metrics": a.meta.metrics,
        "alignment": a.meta.alignment,
        "origin": a.meta.origin,
        "integrity": seal.to_string(),
    });
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}  ({} adapter, {:.1} MB)",
        path.display(),
        match (&a.meta.metrics, &a.meta.origin) {
            (Some(_), _) => "tuned",
            (None, Some(_)) => "assembled",
            (None, None) => "untrained",
        },
        file_size(path) as f64 / 1e6
    );
    println!(
        "layers        {:?}, {params} parameters ({})",
        a.meta.adapter_layers,
        a.kind()
    );
    println!(
        "tuned through package {}… of model {}…",
        short(&a.meta.package_fingerprint),
        short(&a.meta.source_fingerprint)
    );
    println!("integrity     {seal}");
    if let Some(origin) = &a.meta.origin {
        println!("weights       {origin}");
    }
    if let Some(s) = &a.meta.metrics {
        println!(
            "training      {} steps, {} tokens, final loss {}, best validation loss {}",
            s.steps,
            s.tokens,
            s.final_train_loss.map_or("-".into(), |l| format!("{l:.4}")),
            s.best_val_loss.map_or("-".into(), |l| format!("{l:.4}"))
        );
    }
    if let Some(r) = &a.meta.alignment {
        let o = &r.options;
        println!(
            "aligned       by the model owner on {} (sha256 {}…{}): target `{}` (α {}) at `{}` \
             positions, {} weights changed ({}), pull {}; {} steps, {} tokens, {:.0} s, final KL {}, \
             held-out KL {} → {}",
            r.corpus,
            short(&r.corpus_sha256),
            o.template
                .as_ref()
                .map_or(String::new(), |t| format!(", template {t:?}")),
            flag_value(&o.target),
            o.alpha,
            flag_value(&o.positions),
            r.trained.len(),
            o.trained_part(),
            o.pull,
            r.metrics.steps,
            r.metrics.tokens,
            r.metrics.seconds,
            r.metrics
                .final_train_loss
                .map_or("-".into(), |l| format!("{l:.4}")),
            r.val_loss_before.map_or("-".into(), |l| format!("{l:.4}")),
            r.metrics
                .best_val_loss
                .map_or("-".into(), |l| format!("{l:.4}"))
        );
        if let Some(run) = &r.run {
            println!(
                "aligned by    `{}` (offsite {}, commit {}; {}; {})",
                run.command_line(),
                run.version,
                run.commit,
                run.cpu,
                run.precision
            );
        }
    }
    Ok(())
}

/// Arguments of `offsite inspect`.
#[derive(clap::Args)]
pub struct Args {
    /// A .gguf file, a Hugging Face model directory, or a known model name (`smollm2`, `gemma3-270m`: fetched on first use).
    model: ModelSpec,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Describes the model, package or adapter.
pub fn run(args: Args) -> Result<()> {
    let path = args.model.path()?;
    match offsite_file::format(&path).as_deref() {
        Some(PACKAGE_FORMAT) => return inspect_package(&path, args.json),
        Some(ADAPTER_FORMAT) => return inspect_adapter(&path, args.json),
        _ => {}
    }
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
    let local = c
        .local_rope_theta
        .map_or(String::new(), |t| format!(" (local layers {t})"));
    println!(
        "rope theta    {}{local}   norm eps {:e}   context {}",
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
