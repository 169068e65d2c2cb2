//! Helpers shared by the integration tests (each test crate uses some of them).
#![allow(dead_code)]

use candle_core::{DType, Tensor};
use offsite::io::tokenizer::Tokenizer;
use offsite::model::{Model, ModelConfig};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs the `offsite` binary.
pub fn offsite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_offsite"))
        .args(args)
        .output()
        .expect("runs")
}

/// The standard output of a run that must have succeeded.
pub fn ok(o: Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "failed: {err}");
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The largest absolute difference between two tensors of the same shape, in f64.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    max_abs(&(a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap()).unwrap())
}

/// Two tensor maps hold the same names, and every tensor differs by at most `tolerance`.
pub fn assert_maps_close(
    a: &offsite::model::TensorMap,
    b: &offsite::model::TensorMap,
    tolerance: f64,
    what: &str,
) {
    assert_eq!(
        a.names().collect::<Vec<_>>(),
        b.names().collect::<Vec<_>>(),
        "{what}"
    );
    for (name, t) in a.iter() {
        let u = b.get(name, t.dims()).unwrap();
        assert!(max_abs_diff(t, &u) <= tolerance, "{what}: {name} differs");
    }
}

/// The largest magnitude in a tensor, in f64.
pub fn max_abs(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

/// Checks every tensor listed in a reference `weight_checksums.json` (`params`: HF name, shape,
/// f64 sum and sum of squares, first 8 values as loaded by transformers) against `tensors`.
pub fn assert_weights_match_checksums(
    tensors: &offsite::model::TensorMap,
    checksums: &serde_json::Value,
    count: usize,
) {
    let params = checksums["params"].as_array().unwrap();
    assert_eq!(params.len(), count);
    for p in params {
        let name = p["name"].as_str().unwrap();
        let shape: Vec<usize> = p["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        let t = tensors.get(name, &shape).unwrap();
        let v = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap();
        let sum = v.sum_all().unwrap().to_scalar::<f64>().unwrap();
        let sum_sq = v
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want_sum = p["sum"].as_f64().unwrap();
        let want_sq = p["sum_sq"].as_f64().unwrap();
        assert!(
            (sum - want_sum).abs() <= 1e-6 * (1.0 + want_sq),
            "{name}: sum {sum} vs {want_sum}"
        );
        assert!(
            (sum_sq - want_sq).abs() <= 1e-9 * (1.0 + want_sq),
            "{name}: sum_sq {sum_sq} vs {want_sq}"
        );
        let first: Vec<f64> = v.narrow(0, 0, 8).unwrap().to_vec1().unwrap();
        for (a, b) in first.iter().zip(p["first8"].as_array().unwrap()) {
            // Compared as f32: the values are f32, and JSON parsing of long decimals may be off
            // in the last f64 bit.
            assert_eq!(
                *a as f32,
                b.as_f64().unwrap() as f32,
                "{name}: first values differ"
            );
        }
    }
}

/// A run that must have failed, without a panic, with each of `needles` in its stderr.
pub fn fails(o: Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "expected failure");
    assert!(!err.contains("panicked"), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks `{n}`: {err}");
    }
}

/// A tiny configuration whose rows GGUF's 32-value blocks tile (hidden 32, intermediate 64):
/// for tests of frozen layers kept in blocks.
pub fn blocky_config() -> ModelConfig {
    ModelConfig {
        vocab_size: 263,
        num_layers: 5,
        hidden_size: 32,
        intermediate_size: 64,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        ..ModelConfig::tiny()
    }
}

pub fn tiny_model_dir(dir: &Path, seed: u64) -> PathBuf {
    let config = ModelConfig {
        vocab_size: 263,
        num_layers: 5,
        ..ModelConfig::tiny()
    };
    let model = Model::random(&config, seed, DType::F32).unwrap();
    let path = dir.join(format!("model{seed}"));
    offsite::io::hf_dir::save(&path, &model, Some(&Tokenizer::tiny_byte_level())).unwrap();
    path
}

pub fn write_texts(path: &Path, n: usize) {
    let lines: Vec<String> = (0..n)
        .map(|i| {
            serde_json::json!({"text": format!("hello world {i}, hello again and again.")})
                .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// A tiny model (seed `seed`), six training texts, and its 1 + 2 + 1 emulator package.
pub fn model_data_emulator(dir: &Path, seed: u64) -> (PathBuf, PathBuf, PathBuf) {
    let model = tiny_model_dir(dir, seed);
    let train = dir.join("train.jsonl");
    write_texts(&train, 6);
    let emu = dir.join("e.offsite");
    make_emulator(&model, &emu, &[]);
    (model, train, emu)
}

/// `offsite emulator MODEL --bottom 1 --top 1 --keep 2 -o OUT`, plus `extra` flags.
pub fn make_emulator(model: &Path, out: &Path, extra: &[&str]) -> String {
    ok(offsite(&emulator_args(model, out, extra)))
}

/// The arguments of [`make_emulator`].
pub fn emulator_args<'a>(model: &'a Path, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "emulator",
        s(model),
        "--bottom",
        "1",
        "--top",
        "1",
        "--keep",
        "2",
        "-o",
        s(out),
    ];
    args.extend_from_slice(extra);
    args
}

/// `offsite tune EMU --data TRAIN -o OUT` for 3 steps on 16-token blocks, plus `extra` flags.
pub fn tune_briefly(emu: &Path, train: &Path, out: &Path, extra: &[&str]) -> String {
    ok(tune_output(emu, train, out, extra))
}

/// What [`tune_briefly`] runs, its output as it came (for failures, or to read stderr).
pub fn tune_output(emu: &Path, train: &Path, out: &Path, extra: &[&str]) -> Output {
    tune_with(emu, train, out, "3", "5e-2", extra)
}

/// `offsite tune EMU --data TRAIN -o OUT` for `steps` steps at `lr` on 16-token blocks, plus
/// `extra` flags; its output as it came.
pub fn tune_with(
    emu: &Path,
    train: &Path,
    out: &Path,
    steps: &str,
    lr: &str,
    extra: &[&str],
) -> Output {
    let mut args = vec![
        "tune",
        s(emu),
        "--data",
        s(train),
        "-o",
        s(out),
        "--max-steps",
        steps,
        "--block-size",
        "16",
        "--lr",
        lr,
    ];
    args.extend_from_slice(extra);
    offsite(&args)
}

/// `offsite plug MODEL ADAPTER -o OUT`, which must succeed.
pub fn plug(model: &Path, adapter: &Path, out: &Path) -> String {
    ok(offsite(&["plug", s(model), s(adapter), "-o", s(out)]))
}

/// `offsite eval ARGS --data TEST --json` on 16-token blocks.
pub fn eval_json(test: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--data", s(test), "--block-size", "16", "--json"]);
    serde_json::from_str(&ok(offsite(&all))).unwrap()
}

/// Saves `model` (with `ckpt`'s tokenizer) as an HF directory, loads it back and checks the same
/// configuration and bit-identical logits on `ids`; returns the reloaded checkpoint.
pub fn assert_hf_round_trip(
    ckpt: &offsite::io::checkpoint::Checkpoint,
    model: &Model,
    ids: &Tensor,
) -> offsite::io::checkpoint::Checkpoint {
    let dir = tempfile::tempdir().unwrap();
    offsite::io::hf_dir::save(dir.path(), model, ckpt.tokenizer.as_ref()).unwrap();
    let back = offsite::io::checkpoint::load(dir.path(), &candle_core::Device::Cpu).unwrap();
    assert_eq!(back.config, ckpt.config);
    let a = model.forward(ids).unwrap();
    let b = back.model().unwrap().forward(ids).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    back
}
