//! The command line as a user meets it: outputs, JSON keys, and clear errors for bad input.

use candle_core::DType;
use offsite::model::{Model, ModelConfig};
use std::path::Path;
use std::process::{Command, Output};

fn offsite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offsite"))
        .args(args)
        .output()
        .expect("runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A tiny random LLaMA saved as a Hugging Face directory (no tokenizer).
fn tiny_hf_dir(dir: &Path) {
    let model = Model::random(&ModelConfig::tiny(), 1, DType::F32).unwrap();
    offsite::io::hf_dir::save(dir, &model, None).unwrap();
}

fn assert_fails_naming(o: &Output, needles: &[&str]) {
    assert!(!o.status.success(), "expected failure, got {}", stdout(o));
    let err = stderr(o);
    assert!(!err.contains("panicked"), "panic: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`: {err}");
    }
}

#[test]
fn inspect_tiny_hf_dir() {
    let dir = tempfile::tempdir().unwrap();
    tiny_hf_dir(dir.path());
    let o = offsite(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["family"], "llama");
    assert_eq!(v["layers"], 4);
    let c = ModelConfig::tiny();
    let per_layer = 2 * c.hidden_size
        + c.hidden_size * c.num_heads * c.head_dim * 2
        + c.hidden_size * c.num_kv_heads * c.head_dim * 2
        + 3 * c.hidden_size * c.intermediate_size;
    let want = c.vocab_size * c.hidden_size + c.num_layers * per_layer + c.hidden_size;
    assert_eq!(v["parameters"], want);
    assert_eq!(v["stored_dtypes"]["F32"], 38);
    let o = offsite(&["inspect", dir.path().to_str().unwrap()]);
    assert!(stdout(&o).contains("family        llama"), "{}", stdout(&o));
}

#[test]
fn missing_model_is_a_clear_error() {
    let o = offsite(&["inspect", "/no/such/model.gguf"]);
    assert_fails_naming(&o, &["/no/such/model.gguf", "no such file"]);
}

#[test]
fn corrupt_and_truncated_files_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    assert_fails_naming(&offsite(&["inspect", bad.to_str().unwrap()]), &["bad.gguf"]);
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "hello").unwrap();
    assert_fails_naming(
        &offsite(&["inspect", text.to_str().unwrap()]),
        &["notes.txt", "not a model"],
    );

    let hf = dir.path().join("hf");
    tiny_hf_dir(&hf);
    let weights = hf.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails_naming(
        &offsite(&["inspect", hf.to_str().unwrap()]),
        &["model.safetensors"],
    );
}

#[test]
fn unknown_architecture_and_wrong_shapes_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    tiny_hf_dir(dir.path());
    let config_path = dir.path().join("config.json");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();

    let mut other = config.clone();
    other["model_type"] = "mamba".into();
    std::fs::write(&config_path, other.to_string()).unwrap();
    assert_fails_naming(
        &offsite(&["inspect", dir.path().to_str().unwrap()]),
        &["config.json", "unsupported architecture `mamba`"],
    );

    let mut wider = config;
    wider["intermediate_size"] = 40.into();
    std::fs::write(&config_path, wider.to_string()).unwrap();
    assert_fails_naming(
        &offsite(&["inspect", dir.path().to_str().unwrap()]),
        &[
            "model.safetensors",
            "model.layers.0.mlp.gate_proj.weight",
            "[40, 16]",
        ],
    );
}

#[test]
fn fetch_is_idempotent_and_generate_score_work_on_the_demo_model() {
    let first = offsite(&["fetch", "smollm2"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = offsite(&["fetch", "smollm2"]);
    assert_eq!(stdout(&first), stdout(&second));
    assert!(
        !stderr(&second).contains("downloading"),
        "{}",
        stderr(&second)
    );
    let path = stdout(&first).trim().to_string();
    assert!(path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));

    let o = offsite(&[
        "generate",
        &path,
        "--prompt",
        "The capital of France is",
        "--max-tokens",
        "3",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ids"], serde_json::json!([7042, 30, 198]));
    assert_eq!(v["text"], " Paris.\n");

    let o = offsite(&[
        "score",
        "smollm2",
        "--text",
        "The capital of France is",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["ids"], serde_json::json!([504, 3575, 282, 4649, 314]));
    assert_eq!(v["logprobs"].as_array().unwrap().len(), 4);
    assert!((v["mean_ce"].as_f64().unwrap() - 3.691_631_7).abs() < 1e-4);

    let o = offsite(&[
        "generate",
        "smollm2",
        "--chat",
        "--prompt",
        "Hi",
        "--max-tokens",
        "4",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = offsite(&["inspect", "smollm2", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["parameters"], 134_515_008);
    assert_eq!(v["tokenizer"]["eos_id"], 2);
    assert_eq!(v["stored_dtypes"]["Q4_1"], 210);
}

#[test]
fn bench_reports_every_mode_in_json() {
    let dir = tempfile::tempdir().unwrap();
    tiny_hf_dir(dir.path());
    let o = offsite(&[
        "bench",
        dir.path().to_str().unwrap(),
        "--modes",
        "ft,ft-lora,ot,ot-lora,infer",
        "--bottom",
        "1",
        "--top",
        "1",
        "--keep",
        "1",
        "--batch",
        "2",
        "--seq",
        "8",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["ft", "ft-lora", "ot", "ot-lora", "infer"]);
    for r in &rows {
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0);
        assert!(r["peak_rss_mb"].as_f64().unwrap() > 0.0);
    }
    let trainable: Vec<u64> = rows
        .iter()
        .map(|r| r["trainable_params"].as_u64().unwrap())
        .collect();
    let [ft, ft_lora, ot, ot_lora, infer] = trainable[..] else {
        panic!("five modes")
    };
    assert_eq!(infer, 0);
    assert!(
        ot < ft && ft_lora < ft && ot_lora < ft_lora && ot_lora < ot,
        "{trainable:?}"
    );
}
