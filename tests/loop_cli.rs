//! The offsite-tuning exchange through the command line, on a tiny random model with a tiny
//! byte-level tokenizer: emulator → inspect → tune → plug → eval, and the refusals.

use candle_core::{Device, Tensor};
use std::path::Path;

mod common;
use common::{
    emulator_args, eval_json, fails, make_emulator, model_data_emulator, offsite, ok, plug, s,
    tiny_model_dir, tune_briefly, write_texts,
};

/// The tensors whose values differ between the checkpoints at `a` and `b` (same names and shapes
/// required), and the names of all tensors.
fn changed(a: &Path, b: &Path) -> (Vec<String>, Vec<String>) {
    let a = offsite::io::checkpoint::load(a, &Device::Cpu).unwrap();
    let b = offsite::io::checkpoint::load(b, &Device::Cpu).unwrap();
    let values = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let all: Vec<String> = a.tensors.names().map(str::to_string).collect();
    let changed = a
        .tensors
        .iter()
        .filter(|(name, t)| values(t) != values(&b.tensors.get(name, t.dims()).unwrap()))
        .map(|(name, _)| name.to_string())
        .collect();
    (changed, all)
}

#[test]
fn emulator_tune_plug_eval_round() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(d.path(), 1);
    let (train, val, test) = (
        d.path().join("train.jsonl"),
        d.path().join("val.jsonl"),
        d.path().join("test.jsonl"),
    );
    write_texts(&train, 12);
    write_texts(&val, 3);
    write_texts(&test, 4);
    let emu = d.path().join("e.offsite");
    make_emulator(&model, &emu, &[]);

    let v: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&emu), "--json"]))).unwrap();
    assert_eq!(v["adapter_layers"], serde_json::json!([0, 4]));
    assert_eq!(v["emulator_layers"], serde_json::json!([1, 3]));
    assert_eq!(v["fingerprint"].as_str().unwrap().len(), 64);
    assert!(v["parameters"].as_u64().unwrap() > 0);
    assert!(v["percent_of_full"].as_f64().unwrap() < 100.0);

    let adapter = d.path().join("a.safetensors");
    ok(offsite(&[
        "tune",
        s(&emu),
        "--data",
        s(&train),
        "--val",
        s(&val),
        "-o",
        s(&adapter),
        "--max-steps",
        "4",
        "--block-size",
        "16",
        "--batch-size",
        "2",
        "--lr",
        "1e-2",
        "--eval-every",
        "2",
        "--save-every",
        "2",
    ]));
    assert!(d.path().join("a.safetensors.metrics.jsonl").is_file());
    let v: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&adapter), "--json"]))).unwrap();
    assert_eq!(v["adapter_layers"], serde_json::json!([0, 4]));
    assert_eq!(v["metrics"]["steps"], 4);

    let plugged = d.path().join("plugged");
    plug(&model, &adapter, &plugged);
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(plugged.join(f).is_file(), "{f}");
    }

    let eval = |args: &[&str]| -> serde_json::Value {
        let mut all = vec!["eval"];
        all.extend_from_slice(args);
        all.extend_from_slice(&[
            "--data",
            s(&test),
            "--metric",
            "ppl",
            "--block-size",
            "16",
            "--json",
        ]);
        serde_json::from_str(&ok(offsite(&all))).unwrap()
    };
    let in_memory = eval(&[s(&model), "--adapter", s(&adapter)]);
    let on_disk = eval(&[s(&plugged)]);
    for key in [
        "token_perplexity",
        "word_perplexity",
        "byte_perplexity",
        "bits_per_byte",
        "n",
    ] {
        assert_eq!(in_memory[key], on_disk[key], "{key}");
    }
    assert_eq!(in_memory["model"], "plug-in");
    assert_eq!(
        eval(&[s(&emu), "--adapter", s(&adapter)])["model"],
        "emulator + adapter"
    );
    assert_eq!(eval(&[s(&emu), "--limit", "1"])["n"], 1);

    // Multiple choice with per-record scores: one line per record, the argmax of each line's
    // log-likelihoods reproduces the reported accuracy.
    let mc = d.path().join("mc.jsonl");
    let recs = [
        ("Is it red? Answer:", 0),
        ("Sky is blue? Answer:", 1),
        ("Grass? Answer:", 1),
    ];
    let lines: Vec<String> = recs
        .iter()
        .map(|(c, l)| {
            serde_json::json!({"context": c, "choices": [" no", " yes"], "label": l}).to_string()
        })
        .collect();
    std::fs::write(&mc, lines.join("\n") + "\n").unwrap();
    let scores = d.path().join("scores.jsonl");
    let r: serde_json::Value = serde_json::from_str(&ok(offsite(&[
        "eval",
        s(&plugged),
        "--data",
        s(&mc),
        "--metric",
        "mc",
        "--scores",
        s(&scores),
        "--json",
    ])))
    .unwrap();
    let text = std::fs::read_to_string(&scores).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 3);
    let right = rows
        .iter()
        .filter(|row| {
            let ll: Vec<f64> = serde_json::from_value(row["logliks"].clone()).unwrap();
            let pick = if ll[1] > ll[0] { 1 } else { 0 };
            row["label"] == pick
        })
        .count();
    assert!((r["acc"].as_f64().unwrap() - right as f64 / 3.0).abs() < 1e-12);
    assert!(r.get("auc").is_some() && r.get("margin").is_some(), "{r}");
    let o = offsite(&[
        "eval",
        s(&plugged),
        "--data",
        s(&mc),
        "--metric",
        "ppl",
        "--scores",
        s(&scores),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--scores applies to --metric mc"));

    // The plugged directory differs from the original only in the adapter layers.
    let (changed, all) = changed(&model, &plugged);
    for name in &all {
        let adapter_layer =
            name.starts_with("model.layers.0.") || name.starts_with("model.layers.4.");
        assert_eq!(changed.contains(name), adapter_layer, "{name}");
    }
}

#[test]
fn plug_refuses_a_foreign_adapter_and_bad_data_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(d.path(), 1);
    let other = tiny_model_dir(d.path(), 2);
    let emu = d.path().join("e.offsite");
    ok(offsite(&[
        "emulator",
        s(&model),
        "--keep",
        "1",
        "--bottom",
        "1",
        "--top",
        "1",
        "-o",
        s(&emu),
    ]));
    let train = d.path().join("train.jsonl");
    write_texts(&train, 4);
    let adapter = d.path().join("a.safetensors");
    ok(offsite(&[
        "tune",
        s(&emu),
        "--data",
        s(&train),
        "-o",
        s(&adapter),
        "--max-steps",
        "1",
        "--block-size",
        "16",
    ]));
    let out = d.path().join("out");
    fails(
        offsite(&["plug", s(&other), s(&adapter), "-o", s(&out)]),
        &["another model", "model2"],
    );
    assert!(!out.exists(), "nothing written for a refused adapter");
    fails(
        offsite(&[
            "eval",
            s(&other),
            "--adapter",
            s(&adapter),
            "--data",
            s(&train),
        ]),
        &["another model"],
    );

    let bad = d.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"fine\"}\n{\"text\": 5}\n").unwrap();
    fails(
        offsite(&["tune", s(&emu), "--data", s(&bad), "-o", s(&adapter)]),
        &["bad.jsonl", "line 2"],
    );
    fails(offsite(&["inspect", s(&train)]), &["train.jsonl"]);
    fails(
        offsite(&["emulator", s(&model), "--keep", "9", "-o", s(&emu)]),
        &["cannot keep 9"],
    );
}

#[test]
fn finetune_trains_every_weight_and_writes_a_loadable_directory() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(d.path(), 3);
    let train = d.path().join("train.jsonl");
    write_texts(&train, 6);
    let out = d.path().join("ft");
    ok(offsite(&[
        "finetune",
        s(&model),
        "--data",
        s(&train),
        "--val",
        s(&train),
        "-o",
        s(&out),
        "--max-steps",
        "2",
        "--block-size",
        "16",
        "--lr",
        "1e-2",
    ]));
    assert!(out.join("training.json").is_file());
    let lora_out = d.path().join("ft-lora");
    ok(offsite(&[
        "finetune",
        s(&model),
        "--data",
        s(&train),
        "-o",
        s(&lora_out),
        "--peft",
        "lora",
        "--max-steps",
        "2",
        "--block-size",
        "16",
        "--lr",
        "1e-2",
    ]));
    let merged = offsite::io::checkpoint::load(&lora_out, &Device::Cpu).unwrap();
    assert!(
        !merged.tensors.names().any(|n| n.contains("lora")),
        "LoRA is merged"
    );
    let (changed, all) = changed(&model, &out);
    assert_eq!(changed, all, "every weight is trained");
}

#[test]
fn lora_adapter_is_saved_in_peft_layout_and_plugs_in() {
    let d = tempfile::tempdir().unwrap();
    let (model, train, emu) = model_data_emulator(d.path(), 4);
    let adapter = d.path().join("lora-adapter");
    let lora = [
        "--peft",
        "lora",
        "--lora-r",
        "4",
        "--lora-targets",
        "q_proj,v_proj,down_proj",
    ];
    tune_briefly(&emu, &train, &adapter, &lora);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["task_type"], "CAUSAL_LM");
    assert_eq!(config["r"], 4);
    assert_eq!(config["lora_alpha"], 32.0);
    assert_eq!(config["lora_dropout"], 0.1);
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["q_proj", "v_proj", "down_proj"])
    );
    assert_eq!(config["layers_to_transform"], serde_json::json!([0, 4]));
    assert!(config["base_model_name_or_path"].is_string());

    let weights =
        candle_core::safetensors::load(adapter.join("adapter_model.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(weights.len(), 2 * 3 * 2, "A and B for 3 maps in 2 layers");
    let a = &weights["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"];
    let b = &weights["base_model.model.model.layers.4.mlp.down_proj.lora_B.weight"];
    assert_eq!(a.dims(), [4, 16]);
    assert_eq!(b.dims(), [16, 4]);
    assert!(
        b.abs()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0,
        "B was trained"
    );

    let plugged = d.path().join("plugged");
    plug(&model, &adapter, &plugged);
    let test = d.path().join("test.jsonl");
    write_texts(&test, 2);
    let eval = |args: &[&str]| eval_json(&test, args);
    let merged_on_disk = eval(&[s(&plugged)]);
    let in_memory = eval(&[s(&model), "--adapter", s(&adapter)]);
    assert_eq!(
        merged_on_disk["token_perplexity"],
        in_memory["token_perplexity"]
    );
    eval(&[s(&emu), "--adapter", s(&adapter)]);
    // Only the adapted maps of the adapter layers changed.
    let (changed, all) = changed(&model, &plugged);
    for name in &all {
        let adapted = (name.starts_with("model.layers.0.") || name.starts_with("model.layers.4."))
            && ["q_proj", "v_proj", "down_proj"]
                .iter()
                .any(|m| name.contains(m));
        assert_eq!(changed.contains(name), adapted, "{name}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&adapter), "--json"]))).unwrap();
    assert_eq!(v["adapter_layers"], serde_json::json!([0, 4]));
}

#[test]
fn bitfit_adapter_holds_and_changes_only_1d_parameters() {
    let d = tempfile::tempdir().unwrap();
    let (model, train, emu) = model_data_emulator(d.path(), 5);
    let adapter = d.path().join("bitfit.safetensors");
    tune_briefly(&emu, &train, &adapter, &["--peft", "bitfit"]);
    let a = offsite::emulator::Adapter::load(&adapter, &Device::Cpu).unwrap();
    let names: Vec<&str> = a.tensors.names().collect();
    assert_eq!(
        names.len(),
        4,
        "two norms in each of the two adapter layers: {names:?}"
    );
    assert!(names.iter().all(|n| n.ends_with("layernorm.weight")));
    let plugged = d.path().join("plugged");
    plug(&model, &adapter, &plugged);
    let (changed, _) = changed(&model, &plugged);
    assert_eq!(changed, names, "exactly the BitFit parameters change");
}

#[test]
fn bottleneck_adapter_plugs_in_as_offsite_format_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let (model, train, emu) = model_data_emulator(d.path(), 6);
    let adapter = d.path().join("bottleneck.safetensors");
    let out = tune_briefly(
        &emu,
        &train,
        &adapter,
        &["--peft", "adapter", "--adapter-size", "8"],
    );
    assert!(out.contains("wrote"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&adapter), "--json"]))).unwrap();
    assert_eq!(v["method"], "adapter");
    assert_eq!(v["bottleneck"]["size"], 8);
    // Two adapters (after o_proj and down_proj) of 4 tensors in each of the 2 adapter layers:
    // down [8, 16] + [8], up [16, 8] + [16].
    assert_eq!(v["parameters"], 2 * 2 * (8 * 16 + 8 + 16 * 8 + 16));

    let plugged = d.path().join("plugged");
    let o = offsite(&["plug", s(&model), s(&adapter), "-o", s(&plugged)]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    assert!(err.contains("cannot be merged"), "{err}");
    assert!(err.contains("offsite-model.safetensors"), "{err}");
    assert!(!plugged.join("model.safetensors").exists());
    assert!(plugged.join("offsite-model.safetensors").is_file());

    let test = d.path().join("test.jsonl");
    write_texts(&test, 2);
    let eval = |args: &[&str]| eval_json(&test, args);
    let on_disk = eval(&[s(&plugged)]);
    let in_memory = eval(&[s(&model), "--adapter", s(&adapter)]);
    let base = eval(&[s(&model)]);
    assert_eq!(on_disk["token_perplexity"], in_memory["token_perplexity"]);
    assert_ne!(on_disk["token_perplexity"], base["token_perplexity"]);
}

#[test]
fn compressed_emulators_are_smaller_and_say_how_they_were_made() {
    let d = tempfile::tempdir().unwrap();
    let (_, train, plain) = model_data_emulator(d.path(), 7);
    let model = d.path().join("model7");
    let quant = d.path().join("q.offsite");
    let out = make_emulator(&model, &quant, &["--prune", "0.5", "--quant-bits", "4"]);
    assert!(out.contains("compressed 14 emulator weights"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&quant), "--json"]))).unwrap();
    assert_eq!(v["compression"], "layer drop + pruned 50% + 4-bit");
    assert_eq!(v["options"]["prune"], 0.5);
    assert_eq!(v["options"]["quant_bits"], 4);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&quant) < size(&plain));
    // The data owner tunes through it like through any package.
    tune_briefly(&quant, &train, &d.path().join("a.safetensors"), &[]);
    fails(
        offsite(&[
            "emulator",
            s(&model),
            "--keep",
            "2",
            "--quant-bits",
            "12",
            "-o",
            s(&d.path().join("bad.offsite")),
        ]),
        &["--quant-bits"],
    );
}

#[test]
fn distilled_emulators_record_their_distillation() {
    let d = tempfile::tempdir().unwrap();
    let (model, train, _) = model_data_emulator(d.path(), 8);
    let emu = d.path().join("distilled.offsite");
    let train = s(&train);
    let out = make_emulator(&model, &emu, &distil_flags(train, &[]));
    assert!(out.contains("distilled on"), "{out}");
    let v: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&emu), "--json"]))).unwrap();
    assert_eq!(v["distillation"]["metrics"]["steps"], 2);
    assert_eq!(v["distillation"]["weights"]["kd_weight"], 30.0);
    assert!(v["distillation"]["metrics"]["best_val_loss"].is_number());
    // Its checkpoints are gone, its metrics log stays beside it.
    assert!(!d.path().join("distilled.offsite.ckpt").exists());
    assert!(d.path().join("distilled.offsite.metrics.jsonl").is_file());

    // Continuing it with the output term keeps its layers and records both distillations.
    let more = d.path().join("more.offsite");
    let from = ["--distill-from", s(&emu)];
    let flags = distil_flags(train, &[&from[..], &["--logit-weight", "1"]].concat());
    assert!(make_emulator(&model, &more, &flags).contains("distilled on"));
    let w: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&more), "--json"]))).unwrap();
    assert_eq!(w["distillation"]["weights"]["logit_weight"], 1.0);
    assert_eq!(w["distillation"]["previous"], v["distillation"]);
    assert_eq!(w["emulator_layers"], v["emulator_layers"]);
    // Only a package of the same model can be continued.
    let other = tiny_model_dir(d.path(), 99);
    let x = d.path().join("x.offsite");
    let o = offsite(&emulator_args(&other, &x, &distil_flags(train, &from)));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("distilled.offsite") && err.contains("another model"),
        "{err}"
    );
}

/// A two-step distillation on `train` in blocks of 16, plus `extra`.
fn distil_flags<'a>(train: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "--distill",
        train,
        "--distill-steps",
        "2",
        "--block-size",
        "16",
    ];
    v.extend_from_slice(extra);
    v
}

#[test]
fn bf16_precision_tunes_and_finetune_writes_the_frozen_weights_unrounded() {
    // Without AMX the flag changes nothing; with it, the emulator is stored in bf16 for tuning
    // and every product of the trained maps runs on tiles.
    let d = tempfile::tempdir().unwrap();
    let (model, train, emu) = model_data_emulator(d.path(), 5);
    let adapter = d.path().join("adapter.safetensors");
    tune_briefly(&emu, &train, &adapter, &["--precision", "bf16"]);
    assert!(adapter.is_file());
    // Fine-tuning with frozen weights stored in bf16 writes the checkpoint's own values for
    // everything it did not train (BitFit trains the 1-D parameters only).
    let out = d.path().join("ft-bitfit");
    ok(offsite(&[
        "finetune",
        s(&model),
        "--data",
        s(&train),
        "-o",
        s(&out),
        "--peft",
        "bitfit",
        "--precision",
        "frozen-bf16",
        "--max-steps",
        "2",
        "--block-size",
        "16",
        "--lr",
        "1e-2",
    ]));
    let (changed, _) = changed(&model, &out);
    let saved = offsite::io::checkpoint::load(&out, &Device::Cpu).unwrap();
    let ranks: std::collections::HashMap<&str, usize> =
        saved.tensors.iter().map(|(n, t)| (n, t.rank())).collect();
    assert!(!changed.is_empty(), "BitFit trained something");
    for name in &changed {
        assert_eq!(
            ranks[name.as_str()],
            1,
            "{name} changed but BitFit does not train it"
        );
    }
    fails(
        offsite(&[
            "tune",
            s(&emu),
            "--data",
            s(&train),
            "-o",
            s(&adapter),
            "--precision",
            "fp8",
        ]),
        &["fp8", "f32, frozen-bf16 or bf16"],
    );
}

#[test]
fn tune_writes_a_machine_readable_summary() {
    let d = tempfile::tempdir().unwrap();
    let (_, train, emu) = model_data_emulator(d.path(), 5);
    let val = d.path().join("val.jsonl");
    write_texts(&val, 2);
    let adapter = d.path().join("a.safetensors");
    let summary = d.path().join("run.json");
    tune_briefly(
        &emu,
        &train,
        &adapter,
        &["--val", s(&val), "--summary", s(&summary)],
    );
    let j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&summary).unwrap()).unwrap();
    // The six texts, packed into 16-token blocks: the sequences the run trained on (about 40
    // byte-level tokens per text, so more blocks than texts).
    let examples = j["examples"].as_u64().unwrap();
    assert!(examples > 6, "{j}");
    assert!(j["val_examples"].as_u64().unwrap() >= 1, "{j}");
    assert_eq!(j["steps"], 3);
    assert!(j["tokens"].as_u64().unwrap() > 0);
    assert!(j["best_val_loss"].as_f64().unwrap().is_finite());
    assert_eq!(j["adapter"].as_str().unwrap(), s(&adapter));
}
