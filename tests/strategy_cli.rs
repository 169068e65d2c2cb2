//! Data-driven emulator strategies on the real SmolLM2 model, as a model owner runs them: a
//! data-free calibration corpus (`sample`), an `importance` emulator chosen on it, `inspect`
//! and `probe` of the package.

mod common;
use common::{offsite, ok, s};

#[test]
fn sampled_calibration_importance_emulator_inspect_and_probe() {
    let d = tempfile::tempdir().unwrap();
    let corpus = d.path().join("self.jsonl");
    let sample = |n: &str| -> String {
        ok(offsite(&[
            "sample",
            "smollm2",
            "-n",
            n,
            "--max-tokens",
            "40",
            "--seed",
            "7",
            "--batch",
            "1",
            "-o",
            s(&corpus),
        ]))
    };
    let two = sample("2");
    assert!(two.contains("2 samples"), "{two}");
    let first_two = std::fs::read_to_string(&corpus).unwrap();
    assert_eq!(first_two.lines().count(), 2);
    // Drawn as one batch (the default) or one at a time: the same samples.
    let alone = d.path().join("alone.jsonl");
    ok(offsite(&[
        "sample",
        "smollm2",
        "-n",
        "2",
        "--max-tokens",
        "40",
        "--seed",
        "7",
        "--batch",
        "1",
        "-o",
        s(&alone),
    ]));
    assert_eq!(std::fs::read_to_string(&alone).unwrap(), first_two);
    // A stopped run resumes from its partial file: samples with this run's settings and seeds
    // in order are kept (the marker shows they were not drawn again), the rest from the first
    // wrong seed on is drawn anew.
    let settings = r#""settings":{"max_tokens":40,"temperature":1.0,"top_p":0.95}"#;
    let partial = format!(
        "{{\"text\":\"KEPT\",\"seed\":7,{settings}}}\n{{\"text\":\"x\",\"seed\":99,{settings}}}\n"
    );
    std::fs::write(format!("{}.partial", corpus.display()), partial).unwrap();
    let out = sample("3");
    assert!(out.contains("3 samples"), "{out}");
    let three: Vec<serde_json::Value> = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(three[0]["text"], "KEPT");
    let second: serde_json::Value =
        serde_json::from_str(first_two.lines().nth(1).unwrap()).unwrap();
    assert_eq!(three[1], second, "seed 8 draws the same sample again");
    assert_eq!(three[2]["seed"], 9);
    assert!(!d.path().join("self.jsonl.partial").exists());

    // Prompted samples (e-mail-like text for a template `Subject: {text}`): the corpus holds
    // the continuations, which differ from the unprompted ones of the same seeds.
    let prompted = d.path().join("mail.jsonl");
    let out = ok(offsite(&[
        "sample",
        "smollm2",
        "-n",
        "2",
        "--max-tokens",
        "40",
        "--seed",
        "7",
        "--prompt",
        "Subject:",
        "-o",
        s(&prompted),
    ]));
    assert!(out.contains("2 samples"), "{out}");
    let mail: Vec<serde_json::Value> = std::fs::read_to_string(&prompted)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(mail.len(), 2);
    assert_ne!(mail[1], second);
    assert!(!mail[0]["text"].as_str().unwrap().starts_with("Subject:"));

    let emu = d.path().join("imp.offsite");
    let out = ok(offsite(&[
        "emulator",
        "smollm2",
        "--keep",
        "24",
        "--strategy",
        "importance",
        "--calibration",
        s(&corpus),
        "--calibration-tokens",
        "128",
        "-o",
        s(&emu),
    ]));
    assert!(out.contains("importance layer drop"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&emu), "--json"]))).unwrap();
    assert_eq!(v["strategy"], "importance");
    let layers = v["emulator_layers"].as_array().unwrap();
    assert_eq!(layers.len(), 24);
    // The layers that write and keep SmolLM2's massive activation at position 0 are never the
    // ones to go first.
    for must in [9, 11] {
        assert!(layers.contains(&serde_json::json!(must)), "{layers:?}");
    }
    let choice = &v["choice"];
    assert_eq!(choice["removed"].as_array().unwrap().len(), 2);
    assert!(choice["calibration_sha256"].as_str().unwrap().len() == 64);
    let cos = choice["fidelity"]["cosine"].as_f64().unwrap();
    assert!(cos > 0.9 && cos <= 1.0 + 1e-6, "{choice}");

    let text = d.path().join("probe.txt");
    std::fs::write(
        &text,
        "The committee met on Tuesday to discuss the budget for next year. ".repeat(8),
    )
    .unwrap();
    let p: serde_json::Value = serde_json::from_str(&ok(offsite(&[
        "probe",
        "smollm2",
        s(&emu),
        "--data",
        s(&text),
        "--block-size",
        "64",
        "--max-blocks",
        "1",
        "--json",
    ])))
    .unwrap();
    assert_eq!(p["tokens"], 64);
    let kl = p["kl"].as_f64().unwrap();
    assert!(kl > 0.0 && kl.is_finite(), "{p}");
    assert!(p["emulator_perplexity"].as_f64().unwrap() > p["full_perplexity"].as_f64().unwrap());
}
