//! Every command on every family: the tiny reference checkpoints of `../shared/reference/tiny`
//! (given the tiny byte-level tokenizer, which fits their 512-token vocabularies) through
//! inspect, score, emulator, tune (LoRA), plug, eval and finetune (BitFit). (`generate` is
//! left out: the models' 512-token vocabularies emit ids this tokenizer cannot decode.)

use offsite::io::tokenizer::Tokenizer;
use serde_json::Value;
use std::path::{Path, PathBuf};

mod common;
use common::{offsite, ok, plug, s};

fn reference(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/reference/tiny")
        .join(family)
}

/// The family's checkpoint copied to `dir`, with a tokenizer.
fn model_dir(family: &str, dir: &Path) -> PathBuf {
    let path = dir.join(family);
    std::fs::create_dir_all(&path).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(reference(family).join(f), path.join(f)).unwrap();
    }
    Tokenizer::tiny_byte_level().save(&path).unwrap();
    path
}

fn run_every_command(family: &str) {
    let d = tempfile::tempdir().unwrap();
    let model = model_dir(family, d.path());
    let json = |args: &[&str]| -> Value { serde_json::from_str(&ok(offsite(args))).unwrap() };

    let v = json(&["inspect", s(&model), "--json"]);
    assert_eq!(v["layers"], 4, "{family}");

    // `score --ids` reproduces the reference cross-entropy.
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(reference(family).join("reference.json")).unwrap(),
    )
    .unwrap();
    let ids: Vec<String> = r["seq_a"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.to_string())
        .collect();
    let v = json(&["score", s(&model), "--ids", &ids.join(","), "--json"]);
    let (got, want) = (
        v["mean_ce"].as_f64().unwrap(),
        r["seq_a"]["ce_mean"].as_f64().unwrap(),
    );
    assert!((got - want).abs() <= 1e-5, "{family}: CE {got} vs {want}");

    let data = d.path().join("train.jsonl");
    let lines: Vec<String> = (0..6)
        .map(|i| serde_json::json!({"text": format!("hello world {i}, and again.")}).to_string())
        .collect();
    std::fs::write(&data, lines.join("\n") + "\n").unwrap();
    let emu = d.path().join("e.offsite");
    ok(offsite(&[
        "emulator",
        s(&model),
        "--bottom",
        "1",
        "--top",
        "1",
        "--keep",
        "1",
        "-o",
        s(&emu),
    ]));
    let adapter = d.path().join("lora");
    let train = [
        "--max-steps",
        "2",
        "--block-size",
        "16",
        "--batch-size",
        "2",
        "--lr",
        "1e-2",
    ];
    let mut args = vec!["tune", s(&emu), "--data", s(&data), "-o", s(&adapter)];
    args.extend_from_slice(&["--peft", "lora"]);
    args.extend_from_slice(&train);
    ok(offsite(&args));
    let plugged = d.path().join("plugged");
    plug(&model, &adapter, &plugged);
    let base = json(&[
        "eval",
        s(&model),
        "--data",
        s(&data),
        "--block-size",
        "16",
        "--json",
    ]);
    let after = json(&[
        "eval",
        s(&plugged),
        "--data",
        s(&data),
        "--block-size",
        "16",
        "--json",
    ]);
    assert!(
        base["token_perplexity"].as_f64().unwrap().is_finite(),
        "{base}"
    );
    assert!(
        after["token_perplexity"].as_f64().unwrap().is_finite(),
        "{after}"
    );

    let tuned = d.path().join("bitfit");
    let mut args = vec!["finetune", s(&model), "--data", s(&data), "-o", s(&tuned)];
    args.extend_from_slice(&["--peft", "bitfit"]);
    args.extend_from_slice(&train);
    ok(offsite(&args));
    let v = json(&["inspect", s(&tuned), "--json"]);
    assert_eq!(v["layers"], 4, "{family}");
}

macro_rules! cli_tests {
    ($($name:ident: $family:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_every_command($family);
            }
        )*
    };
}

cli_tests! {
    llama_commands: "llama",
    qwen2_commands: "qwen2",
    gpt2_commands: "gpt2",
    opt_commands: "opt",
    bloom_commands: "bloom",
    gemma3_commands: "gemma3",
}
