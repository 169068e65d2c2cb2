//! The model owner's side after the adapter comes back, through the command line on a tiny
//! model: `eval --proxy`, `align`, `inspect` of the aligned adapter, plug-in, and refusals.

use std::path::Path;

mod common;
use common::{eval_json, fails, model_data_emulator, offsite, ok, s, tune_briefly};

/// `offsite align MODEL EMU ADAPTER --data PUBLIC -o OUT` for 4 steps, plus `extra` flags.
fn align(
    model: &Path,
    emu: &Path,
    adapter: &Path,
    public: &Path,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec![
        "align",
        s(model),
        s(emu),
        s(adapter),
        "--data",
        s(public),
        "-o",
        s(out),
        "--max-steps",
        "4",
        "--block-size",
        "16",
        "--lr",
        "1e-2",
    ];
    args.extend_from_slice(extra);
    offsite(&args)
}

#[test]
fn proxy_align_inspect_and_plug() {
    let d = tempfile::tempdir().unwrap();
    let (model, train, emu) = model_data_emulator(d.path(), 3);
    let adapter = d.path().join("a.safetensors");
    tune_briefly(&emu, &train, &adapter, &[]);
    let test = d.path().join("test.jsonl");
    common::write_texts(&test, 2);

    // The proxy row: with α = 0 it is the full model; with α = 1 it differs.
    let full = eval_json(&test, &[s(&model)]);
    let proxy = |alpha: &str| {
        eval_json(
            &test,
            &[
                s(&model),
                "--adapter",
                s(&adapter),
                "--proxy",
                s(&emu),
                "--alpha",
                alpha,
            ],
        )
    };
    let (p0, p1) = (proxy("0"), proxy("1"));
    assert_eq!(p1["model"], "proxy");
    assert_eq!(p1["alpha"], 1.0);
    let ce = |v: &serde_json::Value| v["token_ce"].as_f64().unwrap();
    assert!((ce(&p0) - ce(&full)).abs() < 1e-4, "{p0} vs {full}");
    assert!((ce(&p1) - ce(&full)).abs() > 1e-4, "{p1} vs {full}");
    // --proxy needs the adapter, and the full model.
    fails(
        offsite(&["eval", s(&model), "--proxy", s(&emu), "--data", s(&test)]),
        &["--adapter"],
    );
    fails(
        offsite(&[
            "eval",
            s(&emu),
            "--adapter",
            s(&adapter),
            "--proxy",
            s(&emu),
            "--data",
            s(&test),
        ]),
        &["full model"],
    );

    // Alignment on public text: only the top adapter layer's weights change; inspect shows how.
    let public = d.path().join("public.jsonl");
    std::fs::write(
        &public,
        "{\"text\": \"public words, nothing private\"}\n{\"text\": \"more public text here\"}\n",
    )
    .unwrap();
    let aligned = d.path().join("aligned.safetensors");
    let out = ok(align(
        &model,
        &emu,
        &adapter,
        &public,
        &aligned,
        &[
            "--align-params",
            "top",
            "--align-pull",
            "1",
            "--align-target",
            "proxy",
        ],
    ));
    assert!(out.contains("aligned towards the `proxy` target"), "{out}");
    let shown = ok(offsite(&["inspect", s(&aligned)]));
    assert!(
        shown.contains("aligned by    `offsite align ") && shown.contains(" commit "),
        "{shown}"
    );
    assert!(
        shown.contains("aligned       by the model owner on"),
        "{shown}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&aligned), "--json"]))).unwrap();
    let record = &info["alignment"];
    assert_eq!(record["options"]["params"], "top");
    assert_eq!(record["metrics"]["steps"], 4);
    assert_eq!(record["corpus_sha256"].as_str().unwrap().len(), 64);
    let trained: Vec<&str> = record["trained"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert!(!trained.is_empty());
    assert!(
        trained.iter().all(|t| t.starts_with("model.layers.4.")),
        "{trained:?}"
    );
    // The aligned adapter plugs into the same model and is evaluated like any adapter.
    let dir = d.path().join("plugged");
    ok(offsite(&["plug", s(&model), s(&aligned), "-o", s(&dir)]));
    let plugged = eval_json(&test, &[s(&model), "--adapter", s(&aligned)]);
    assert!(ce(&plugged).is_finite());

    // A rank-4 LoRA on the top layer, merged: a full adapter whose top-layer matrices moved.
    let lora = d.path().join("lora.safetensors");
    ok(align(
        &model,
        &emu,
        &adapter,
        &public,
        &lora,
        &["--align-params", "lora-top", "--align-lora-r", "4"],
    ));
    let shown = ok(offsite(&["inspect", s(&lora)]));
    assert!(shown.contains("a rank-4 LoRA on the top layers"), "{shown}");
    let info: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&lora), "--json"]))).unwrap();
    let record = &info["alignment"];
    assert_eq!(record["options"]["lora_r"], 4);
    let trained = record["trained"].as_array().unwrap();
    assert!(!trained.is_empty());
    assert!(trained.iter().all(|t| {
        let t = t.as_str().unwrap();
        t.starts_with("model.layers.4.") && t.ends_with("_proj.weight")
    }));
    ok(offsite(&[
        "plug",
        s(&model),
        s(&lora),
        "-o",
        s(&d.path().join("p2")),
    ]));

    // Refusals: a template without its slot, aligning twice, another model's adapter, a LoRA
    // rank without a LoRA.
    for (name, flags, says) in [
        ("w", ["--align-lora-r", "4"], "lora-top"),
        ("x", ["--align-template", "no slot"], "{text}"),
    ] {
        let out = d.path().join(name);
        fails(
            align(&model, &emu, &adapter, &public, &out, &flags),
            &[says],
        );
    }
    fails(
        align(&model, &emu, &aligned, &public, &d.path().join("y"), &[]),
        &["already aligned"],
    );
    let other_dir = d.path().join("other");
    std::fs::create_dir_all(&other_dir).unwrap();
    let (other, _, _) = model_data_emulator(&other_dir, 4);
    fails(
        align(&other, &emu, &adapter, &public, &d.path().join("z"), &[]),
        &["another model"],
    );
}
