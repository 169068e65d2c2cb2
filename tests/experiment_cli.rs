//! `offsite experiment` on a tiny model: all eight rows (the paper's five, the oracle, the proxy
//! and the aligned plug-in), report files, resumption, skipping.

use candle_core::DType;
use offsite::io::tokenizer::Tokenizer;
use offsite::model::{Model, ModelConfig};
use std::path::Path;
use std::process::Command;

fn offsite(args: &[&str]) -> (bool, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_offsite"))
        .args(args)
        .output()
        .expect("runs");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `offsite experiment` on the tiny model and data of `setup(dir)`: 1 + 2 + 1 emulator, 2 steps
/// on 32-token blocks, into `out`, plus `extra` flags.
fn experiment(dir: &Path, out: &Path, extra: &[&str]) -> (bool, String, String) {
    let (model, train, val, test) = (
        dir.join("model"),
        dir.join("train.jsonl"),
        dir.join("val.jsonl"),
        dir.join("test.jsonl"),
    );
    let mut args = vec![
        "experiment",
        s(&model),
        "--train",
        s(&train),
        "--val",
        s(&val),
        "--test",
        s(&test),
        "--bottom",
        "1",
        "--top",
        "1",
        "--keep",
        "2",
        "--max-steps",
        "2",
        "--block-size",
        "32",
        "-o",
        s(out),
    ];
    args.extend_from_slice(extra);
    offsite(&args)
}

fn setup(dir: &Path) -> std::path::PathBuf {
    setup_with_seed(dir, 7)
}

/// [`setup`] with a model drawn from `seed`.
fn setup_with_seed(dir: &Path, seed: u64) -> std::path::PathBuf {
    let config = ModelConfig {
        vocab_size: 263,
        num_layers: 5,
        ..ModelConfig::tiny()
    };
    let model = Model::random(&config, seed, DType::F32).unwrap();
    let path = dir.join("model");
    offsite::io::hf_dir::save(&path, &model, Some(&Tokenizer::tiny_byte_level())).unwrap();
    for (name, n) in [("train", 8), ("val", 3), ("test", 5)] {
        let lines: Vec<String> = (0..n)
            .map(|i| {
                serde_json::json!({"context": format!("hello {i} world?\nAnswer:"),
                                   "choices": [" no", " yes"], "label": i % 2})
                .to_string()
            })
            .collect();
        std::fs::write(dir.join(format!("{name}.jsonl")), lines.join("\n") + "\n").unwrap();
    }
    let public: Vec<String> = ["the weather is fine", "a quick brown fox", "hello again"]
        .iter()
        .map(|t| serde_json::json!({ "text": t }).to_string())
        .collect();
    std::fs::write(dir.join("public.jsonl"), public.join("\n") + "\n").unwrap();
    path
}

#[test]
fn eight_rows_report_and_resume() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = d.path().join("exp");
    let public = d.path().join("public.jsonl");
    let align = [
        "--align-data",
        s(&public),
        "--align-steps",
        "2",
        "--align-params",
        "top",
        "--align-template",
        "Q: {text}\nAnswer:",
        "--align-positions",
        "last",
    ];
    let run = |extra: &[&str]| {
        let args: Vec<&str> = align.iter().chain(extra).copied().collect();
        experiment(d.path(), &out, &args)
    };
    let (ok, stdout, err) = run(&[]);
    assert!(ok, "{err}");
    assert!(stdout.contains("| plug-in |"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let names: Vec<&str> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "zero_shot",
            "emulator_zero_shot",
            "emulator_ft",
            "oracle",
            "plug_in",
            "proxy",
            "plug_in_aligned",
            "full_ft"
        ]
    );
    assert!(stdout.contains("| proxy (logit arithmetic) |"), "{stdout}");
    assert!(stdout.contains("Aligned plug-in:"), "{stdout}");
    assert_eq!(report["alignment"]["options"]["params"], "top");
    for r in report["rows"].as_array().unwrap() {
        for k in [
            "acc",
            "acc_stderr",
            "acc_norm",
            "acc_norm_stderr",
            "margin",
            "margin_stderr",
            "n",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        assert_eq!(r["n"], 5);
    }
    assert!(std::fs::read_to_string(out.join("chart.svg"))
        .unwrap()
        .contains("<svg"));
    assert!(std::fs::read(out.join("chart.png"))
        .unwrap()
        .starts_with(b"\x89PNG"));
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("full fine-tuning"));
    // Shared with the other party: files by name and sha256, never this machine's paths but
    // where the user typed them (the command line).
    let tmp = d.path().to_string_lossy();
    let (made_by, rest): (Vec<&str>, Vec<&str>) = md
        .lines()
        .partition(|l| l.starts_with("Made by `offsite experiment "));
    assert_eq!(made_by.len(), 1, "{md}");
    // The default `--precision auto`, resolved for this CPU and recorded as what ran.
    let products = if offsite::ops::gemm_bf16::available() {
        "products in bf16 on "
    } else {
        "products in f32"
    };
    assert!(
        made_by[0].contains(" commit ") && made_by[0].contains(products),
        "{}",
        made_by[0]
    );
    assert!(!rest.join("\n").contains(&*tmp), "{md}");
    assert!(md.contains("(sha256 "), "{md}");
    assert_eq!(report["run"]["command"][1], "experiment");
    assert_eq!(report["files"]["test"]["name"], "test.jsonl");
    let settings = serde_json::to_string(&report).unwrap();
    let outside_command = settings.replace(&report["run"].to_string(), "");
    assert!(!outside_command.contains(&*tmp), "{settings}");

    // Every row also in lm-eval-harness's results layout: the keys of a results file written
    // from lm-eval's documented format (v0.4), with the task named after the test folder.
    let fixture: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/lm_eval_results.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let task = d.path().file_name().unwrap().to_str().unwrap();
    for row in names {
        let path = out.join("lm_eval").join(row).join("results.json");
        let ours: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for key in fixture.as_object().unwrap().keys() {
            assert!(ours.get(key).is_some(), "{key} missing in {ours}");
        }
        for key in fixture["results"]["arc_easy"].as_object().unwrap().keys() {
            assert!(
                ours["results"][task].get(key).is_some(),
                "{key} missing in {ours}"
            );
        }
        for key in fixture["config"].as_object().unwrap().keys() {
            assert!(
                ours["config"].get(key).is_some(),
                "config.{key} missing in {ours}"
            );
        }
        for key in ["original", "effective"] {
            assert!(ours["n-samples"][task][key].is_u64(), "{ours}");
        }
        let row_result = report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == row)
            .unwrap();
        assert_eq!(ours["results"][task]["acc,none"], row_result["acc"]);
        assert_eq!(
            ours["results"][task]["acc_stderr,none"],
            row_result["acc_stderr"]
        );
        assert_eq!(ours["higher_is_better"][task]["acc"], true);
    }

    // A rerun recomputes nothing and reports the same numbers.
    let (ok, _, err) = run(&[]);
    assert!(ok, "{err}");
    assert_eq!(err.matches("already done").count(), 8, "{err}");
    let again: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(again["rows"], report["rows"]);

    // Skipping rows leaves them out of the report.
    let (ok, _, err) = run(&["--skip", "full-ft,emulator-zero-shot"]);
    assert!(ok, "{err}");
    let skipped: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(skipped["rows"].as_array().unwrap().len(), 6);

    // Another alignment setup in the same folder runs beside the first, which is kept.
    let mut other = align;
    other[5] = "norms";
    let (ok, _, err) = experiment(d.path(), &out, &other);
    assert!(ok, "{err}");
    assert_eq!(err.matches("aligning the plug-in").count(), 1, "{err}");
    let aligned: Vec<_> = std::fs::read_dir(out.join("rows"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("plug_in_aligned-")
        })
        .collect();
    assert_eq!(aligned.len(), 2);

    // Other settings in the same folder would mix results: refused, naming the folder's config.
    let (ok, _, err) = run(&["--peft", "lora"]);
    assert!(!ok);
    assert!(
        err.contains("config.json") && err.contains("other settings"),
        "{err}"
    );
}

#[test]
fn peft_methods_tune_the_adapter_in_experiments() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    for (peft, artifact) in [
        ("lora", "adapter-lora/adapter_config.json"),
        ("adapter", "adapter-adapter.safetensors"),
        ("bitfit", "adapter-bitfit.safetensors"),
    ] {
        let out = d.path().join(peft);
        let skip = "zero-shot,emulator-zero-shot,oracle,full-ft";
        let (ok, stdout, err) = experiment(d.path(), &out, &["--skip", skip, "--peft", peft]);
        assert!(ok, "{peft}: {err}");
        assert!(stdout.contains("| plug-in |"), "{stdout}");
        assert!(
            stdout.contains(peft),
            "the report names the method: {stdout}"
        );
        assert!(out.join(artifact).is_file(), "{peft}: no {artifact}");
    }
}

#[test]
fn text_corpora_report_perplexity() {
    let d = tempfile::tempdir().unwrap();
    let model = setup(d.path());
    let text = d.path().join("text.jsonl");
    std::fs::write(
        &text,
        "{\"text\": \"hello world, hello again\"}\n{\"text\": \"and again hello\"}\n",
    )
    .unwrap();
    let out = d.path().join("exp");
    let (ok, _, err) = offsite(&[
        "experiment",
        s(&model),
        "--train",
        s(&text),
        "--test",
        s(&text),
        "--keep",
        "1",
        "--bottom",
        "1",
        "--top",
        "1",
        "--max-steps",
        "1",
        "--block-size",
        "16",
        "--skip",
        "full-ft",
        "-o",
        s(&out),
    ]);
    assert!(ok, "{err}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    for r in report["rows"].as_array().unwrap() {
        for k in [
            "token_perplexity",
            "word_perplexity",
            "byte_perplexity",
            "bits_per_byte",
            "n",
        ] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
    }
}

#[path = "experiment_cli/ablation.rs"]
mod ablation;

#[test]
fn a_given_distilled_package_is_used_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let model = setup(dir.path());
    let pkg = dir.path().join("distilled.offsite");
    let (ok, _, err) = offsite(&[
        "emulator",
        s(&model),
        "--bottom",
        "1",
        "--top",
        "1",
        "--keep",
        "2",
        "--distill",
        s(&dir.path().join("train.jsonl")),
        "--distill-steps",
        "2",
        "--block-size",
        "32",
        "-o",
        s(&pkg),
    ]);
    assert!(ok, "{err}");
    let out = dir.path().join("exp");
    let skip = "zero-shot,full-ft";
    let (ok, report, err) = experiment(
        dir.path(),
        &out,
        &["--emulator-package", s(&pkg), "--skip", skip],
    );
    assert!(ok, "{err}");
    assert!(report.contains("distilled on"), "{report}");
    assert!(report.contains("| plug-in |"), "{report}");
    // The experiment did not build an emulator of its own.
    assert!(!out.join("emulator.offsite").exists());

    // Flags that do not describe the package: refused, naming the package.
    let (ok, _, err) = experiment(
        dir.path(),
        &dir.path().join("exp-k3"),
        &["--emulator-package", s(&pkg), "--prune", "0.5"],
    );
    assert!(!ok);
    assert!(
        err.contains("distilled.offsite") && err.contains("--prune none, not 0.5"),
        "{err}"
    );
    // The failed start left no settings behind: the corrected rerun in the same folder runs.
    assert!(!dir.path().join("exp-k3/config.json").exists());

    // No emulator flags at all: the package's own options are used.
    let (train, test) = (
        dir.path().join("train.jsonl"),
        dir.path().join("test.jsonl"),
    );
    let plain = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "experiment",
            s(&model),
            "--train",
            s(&train),
            "--test",
            s(&test),
            "--max-steps",
            "2",
            "--block-size",
            "32",
            "--skip",
            "zero-shot,full-ft,oracle,proxy",
            "-o",
            s(out),
        ];
        args.extend_from_slice(extra);
        offsite(&args)
    };
    let (ok, report, err) = plain(&dir.path().join("exp-k3"), &["--emulator-package", s(&pkg)]);
    assert!(ok, "{err}");
    assert!(report.contains("| plug-in |"), "{report}");
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("exp-k3/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["emulator"]["keep"], 2);
    // Neither a package nor --keep: the error says what to pass.
    let (ok, _, err) = plain(&dir.path().join("exp-none"), &[]);
    assert!(!ok);
    assert!(
        err.contains("--keep") && err.contains("--emulator-package"),
        "{err}"
    );

    // A package of another model: refused.
    let other = tempfile::tempdir().unwrap();
    setup_with_seed(other.path(), 8);
    let (ok, _, err) = offsite(&[
        "experiment",
        s(&other.path().join("model")),
        "--train",
        s(&dir.path().join("train.jsonl")),
        "--test",
        s(&dir.path().join("test.jsonl")),
        "--bottom",
        "1",
        "--top",
        "1",
        "--keep",
        "2",
        "--emulator-package",
        s(&pkg),
        "--skip",
        skip,
        "-o",
        s(&dir.path().join("exp-other")),
    ]);
    assert!(!ok);
    assert!(err.contains("another model"), "{err}");
}

#[test]
fn a_run_repeats_from_its_run_file() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let first = d.path().join("first");
    let skip = ["--skip", "full-ft,oracle,proxy"];
    let (ok, _, err) = experiment(d.path(), &first, &skip);
    assert!(ok, "{err}");
    let run_file = first.join("run.toml");
    let text = std::fs::read_to_string(&run_file).unwrap();
    assert!(text.contains("max_steps = 2"), "{text}");
    let rows = |dir: &Path| -> serde_json::Value {
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap())
                .unwrap();
        report["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("seconds");
                r
            })
            .collect()
    };

    // The run file alone (the folder's run.toml) repeats the run: the same rows.
    let again = d.path().join("again");
    let (ok, _, err) = offsite(&["experiment", "--config", s(&run_file), "-o", s(&again)]);
    assert!(ok, "{err}");
    assert_eq!(rows(&again), rows(&first));
    assert_eq!(
        std::fs::read_to_string(again.join("run.toml")).unwrap(),
        text
    );

    // Settings typed beside the run file are refused, naming the flag.
    let (ok, _, err) = offsite(&[
        "experiment",
        "--config",
        s(&run_file),
        "--max-steps",
        "3",
        "-o",
        s(&d.path().join("mixed")),
    ]);
    assert!(!ok);
    assert!(err.contains("--max-steps given with --config"), "{err}");
    // A damaged run file: the error names it and the problem.
    let bad = d.path().join("bad.toml");
    std::fs::write(&bad, "model = 3\n").unwrap();
    let (ok, _, err) = offsite(&["experiment", "--config", s(&bad), "-o", s(&again)]);
    assert!(!ok);
    assert!(err.contains("bad.toml"), "{err}");
}

#[test]
fn charts_redraw_from_a_report_alone() {
    let d = tempfile::tempdir().unwrap();
    // A report as an earlier version wrote it: the test file by its path, no provenance.
    let report = serde_json::json!({
        "metric": "mc", "test": "/somewhere/spam/test.jsonl",
        "rows": [
            {"name": "zero_shot", "acc": 0.73, "acc_stderr": 0.031, "n": 200, "seconds": 61.0},
            {"name": "plug_in", "acc": 0.775, "acc_stderr": 0.030, "n": 200, "seconds": 62.0}
        ]
    });
    std::fs::write(d.path().join("report.json"), report.to_string()).unwrap();
    let (ok, out, err) = offsite(&["chart", s(d.path())]);
    assert!(ok, "{err}");
    assert!(out.contains("chart.svg, chart.png"), "{out}");
    let svg = std::fs::read_to_string(d.path().join("chart.svg")).unwrap();
    assert!(
        svg.contains("plug_in") && svg.contains("test.jsonl"),
        "{svg}"
    );
    assert!(!svg.contains("/somewhere"), "{svg}");
    assert!(d.path().join("chart.png").is_file());
    // A folder without a report: the error names the file.
    let empty = tempfile::tempdir().unwrap();
    let (ok, _, err) = offsite(&["chart", s(empty.path())]);
    assert!(!ok && err.contains("report.json"), "{err}");
}
