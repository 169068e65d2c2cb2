//! `--frozen-quantized` through the command line: the data owner tunes and evaluates through an
//! emulator kept in a GGUF block format; the model owner plugs the adapter in as usual.

use offsite::model::Model;
use std::path::{Path, PathBuf};

mod common;
use common::{
    eval_json, fails, make_emulator, offsite, ok, plug, s, tune_briefly, tune_output, write_texts,
};

/// A tiny model whose rows Q8_0's 32-value blocks tile (hidden 32, intermediate 64).
fn blocky_model_dir(dir: &Path) -> PathBuf {
    let model = Model::random(&common::blocky_config(), 4, candle_core::DType::F32).unwrap();
    let path = dir.join("blocky");
    let tok = offsite::io::tokenizer::Tokenizer::tiny_byte_level();
    offsite::io::hf_dir::save(&path, &model, Some(&tok)).unwrap();
    path
}

#[test]
fn tune_and_eval_through_a_quantized_emulator_then_plug_in() {
    let d = tempfile::tempdir().unwrap();
    let model = blocky_model_dir(d.path());
    let (train, test) = (d.path().join("train.jsonl"), d.path().join("test.jsonl"));
    write_texts(&train, 6);
    write_texts(&test, 3);
    let emu = d.path().join("e.offsite");
    make_emulator(&model, &emu, &[]);
    let adapter = d.path().join("a.safetensors");
    let o = tune_output(&emu, &train, &adapter, &["--frozen-quantized", "q8_0"]);
    let log = String::from_utf8_lossy(&o.stderr).to_string();
    ok(o);
    // Two emulator layers × seven matrices.
    assert!(
        log.contains("14 frozen matrices quantized (14 q8_0)"),
        "{log}"
    );
    let a = offsite::emulator::Adapter::load(&adapter, &candle_core::Device::Cpu).unwrap();
    let recorded = a.meta.training.and_then(|t| t.frozen_quantized);
    assert_eq!(recorded.map(|q| q.to_string()).as_deref(), Some("q8_0"));

    let quantized = eval_json(
        &test,
        &[
            s(&emu),
            "--adapter",
            s(&adapter),
            "--frozen-quantized",
            "q8_0",
        ],
    );
    let dense = eval_json(&test, &[s(&emu), "--adapter", s(&adapter)]);
    let ppl = |v: &serde_json::Value| v["token_perplexity"].as_f64().unwrap();
    let (q, f) = (ppl(&quantized), ppl(&dense));
    assert!((q / f - 1.0).abs() < 0.01, "q8_0 {q} vs f32 {f}");

    let plugged = d.path().join("plugged");
    plug(&model, &adapter, &plugged);
    fails(
        offsite(&[
            "eval",
            s(&model),
            "--data",
            s(&test),
            "--frozen-quantized",
            "q8_0",
        ]),
        &["applies to an emulator package"],
    );
    let x = d.path().join("x");
    fails(
        tune_output(&emu, &train, &x, &["--frozen-quantized", "q3"]),
        &["unknown block format \"q3\""],
    );
}

#[test]
fn rows_no_block_tiles_are_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let (_, train, emu) = common::model_data_emulator(d.path(), 1);
    let adapter = d.path().join("a.safetensors");
    let o = tune_output(&emu, &train, &adapter, &["--frozen-quantized", "q4_k"]);
    fails(
        o,
        &[
            "--frozen-quantized q4_k",
            "no q4_k block tiles the rows",
            "e.offsite",
        ],
    );
    assert!(!adapter.exists());
}

#[test]
fn a_package_shipped_in_blocks_is_tuned_as_is_and_plugs_in() {
    let d = tempfile::tempdir().unwrap();
    let model = blocky_model_dir(d.path());
    let (train, test) = (d.path().join("train.jsonl"), d.path().join("test.jsonl"));
    write_texts(&train, 6);
    write_texts(&test, 3);
    let (dense, shipped) = (d.path().join("d.offsite"), d.path().join("q.offsite"));
    make_emulator(&model, &dense, &[]);
    make_emulator(&model, &shipped, &["--frozen-quantized", "q8_0"]);
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(size(&shipped) < size(&dense));
    let v: serde_json::Value =
        serde_json::from_str(&ok(offsite(&["inspect", s(&shipped), "--json"]))).unwrap();
    assert!(v.to_string().contains("q8_0"), "{v}");
    let adapter = d.path().join("a.safetensors");
    tune_briefly(&shipped, &train, &adapter, &[]);
    plug(&model, &adapter, &d.path().join("plugged"));
    let r = eval_json(&test, &[s(&shipped), "--adapter", s(&adapter)]);
    assert!(r["token_perplexity"].as_f64().unwrap().is_finite());
    fails(
        tune_output(&shipped, &train, &adapter, &["--frozen-quantized", "q8_0"]),
        &["already holds its emulator in q8_0 blocks"],
    );
}
