//! What federated rounds need from the binary (issue 22): `offsite adapter` (the package's
//! untrained adapter; plain arrays written as a checked adapter file) and `tune --init-adapter`
//! continuing every kind of adapter, LoRA included.

mod common;

use candle_core::Device;
use common::*;
use offsite::emulator::{Adapter, Package};
use std::collections::HashMap;
use std::path::Path;

/// The adapter's tensors as plain safetensors arrays (what the Flower apps exchange).
fn save_plain(adapter: &Adapter, path: &Path) {
    let map: HashMap<String, candle_core::Tensor> = adapter
        .tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    candle_core::safetensors::save(&map, path).unwrap();
}

#[test]
fn adapter_command_writes_the_packages_adapter_and_checked_arrays() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, train, emu) = model_data_emulator(d, 3);
    let cpu = Device::Cpu;

    // The untrained adapter is the package's own adapter-layer weights.
    let init = d.join("init.safetensors");
    ok(offsite(&["adapter", s(&emu), "-o", s(&init)]));
    let initial = Adapter::load(&init, &cpu).unwrap();
    let package = Package::load(&emu, &cpu).unwrap();
    assert_eq!(initial.meta.adapter_layers, package.meta.split.adapter());
    assert!(initial.meta.training.is_none());
    for (name, t) in initial.tensors.iter() {
        let shipped = package.tensors.get(name, t.dims()).unwrap();
        assert_eq!(max_abs_diff(t, &shipped), 0.0, "{name}");
    }

    // A tuned adapter's arrays, written back through `adapter --arrays`, are that adapter.
    let tuned = d.join("a1.safetensors");
    tune_briefly(&emu, &train, &tuned, &[]);
    let a1 = Adapter::load(&tuned, &cpu).unwrap();
    let plain = d.join("plain.safetensors");
    save_plain(&a1, &plain);
    let back = d.join("back.safetensors");
    let o = ok(offsite(&[
        "adapter",
        s(&emu),
        "--arrays",
        s(&plain),
        "--origin",
        "FedAvg of 2 clients, round 1",
        "-o",
        s(&back),
    ]));
    assert!(o.contains("weights from"), "{o}");
    let b = Adapter::load(&back, &cpu).unwrap();
    assert_maps_close(&a1.tensors, &b.tensors, 0.0, "adapter");
    assert_eq!(
        b.meta.origin.as_deref(),
        Some("FedAvg of 2 clients, round 1")
    );
    let shown = ok(offsite(&["inspect", s(&back)]));
    assert!(shown.contains("FedAvg of 2 clients"), "{shown}");
    plug(&model, &back, &d.join("plugged"));

    // Arrays that are not exactly the adapter's are refused, naming the file and the tensor.
    let mut tensors: HashMap<String, candle_core::Tensor> = a1
        .tensors
        .iter()
        .map(|(n, t)| (n.to_string(), t.clone()))
        .collect();
    let (first, t) = a1.tensors.iter().next().unwrap();
    let (first, t) = (first.to_string(), t.clone());
    tensors.remove(&first);
    let missing = d.join("missing.safetensors");
    candle_core::safetensors::save(&tensors, &missing).unwrap();
    let args = |arrays: &Path| {
        offsite(&[
            "adapter",
            s(&emu),
            "--arrays",
            s(arrays),
            "-o",
            s(&d.join("bad.safetensors")),
        ])
    };
    fails(args(&missing), &["missing.safetensors", &first, "missing"]);
    tensors.insert(first.clone(), t.unsqueeze(0).unwrap());
    let reshaped = d.join("reshaped.safetensors");
    candle_core::safetensors::save(&tensors, &reshaped).unwrap();
    fails(args(&reshaped), &["reshaped.safetensors", &first, "shape"]);
    tensors.insert(first, t);
    tensors.insert(
        "model.layers.2.mlp.up_proj.weight".into(),
        a1.tensors.iter().next().unwrap().1.clone(),
    );
    let extra = d.join("extra.safetensors");
    candle_core::safetensors::save(&tensors, &extra).unwrap();
    fails(
        args(&extra),
        &["extra.safetensors", "model.layers.2.mlp.up_proj.weight"],
    );
    assert!(!d.join("bad.safetensors").exists());
}

#[test]
fn lora_and_bottleneck_rounds_continue_the_start_adapters_modules() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, train, emu) = model_data_emulator(d, 4);
    let cpu = Device::Cpu;
    for peft in [
        &["--peft", "lora", "--lora-r", "2"][..],
        &["--peft", "adapter", "--adapter-size", "4"][..],
    ] {
        let kind = peft[1];
        let first = d.join(format!("{kind}1"));
        tune_briefly(&emu, &train, &first, peft);
        let a1 = Adapter::load(&first, &cpu).unwrap();

        // One step at a vanishing learning rate from A'₁ stays at A'₁ (a fresh start would
        // not: LoRA's B and the bottleneck's up projection start at zero).
        let next = d.join(format!("{kind}2"));
        let mut extra = peft.to_vec();
        extra.extend_from_slice(&["--init-adapter", s(&first)]);
        ok(tune_with(&emu, &train, &next, "1", "1e-30", &extra));
        let continued = Adapter::load(&next, &cpu).unwrap();
        assert_maps_close(&a1.tensors, &continued.tensors, 1e-12, kind);
        let fresh = d.join(format!("{kind}-fresh"));
        ok(tune_with(&emu, &train, &fresh, "1", "1e-30", peft));
        let f = Adapter::load(&fresh, &cpu).unwrap();
        let differs = a1
            .tensors
            .iter()
            .any(|(n, t)| max_abs_diff(t, &f.tensors.get(n, t.dims()).unwrap()) > 1e-6);
        assert!(
            differs,
            "{kind}: the continued round must not be a fresh start"
        );

        // `offsite adapter` makes the same fresh start as `tune` (same seed).
        let init = d.join(format!("{kind}-init"));
        let mut args = vec!["adapter", s(&emu), "-o", s(&init)];
        args.extend_from_slice(peft);
        ok(offsite(&args));
        let i = Adapter::load(&init, &cpu).unwrap();
        assert_eq!(i.kind(), kind);
        assert_maps_close(&i.tensors, &f.tensors, 1e-12, "adapter");
    }

    // Another configuration, or another kind, is refused with what differs.
    let lora = d.join("lora1");
    let wrong = d.join("wrong");
    let o = tune_output(
        &emu,
        &train,
        &wrong,
        &[
            "--peft",
            "lora",
            "--lora-r",
            "4",
            "--init-adapter",
            s(&lora),
        ],
    );
    fails(o, &["lora1", "other settings", "r 2", "r 4"]);
    let o = tune_output(&emu, &train, &wrong, &["--init-adapter", s(&lora)]);
    fails(
        o,
        &[
            "lora1",
            "a lora adapter cannot start a full tuning",
            "--peft lora",
        ],
    );
}

/// A Python with Flower and safetensors (`OFFSITE_FLOWER_PYTHON`, else `python3`), or `None`.
fn flower_python() -> Option<String> {
    let python = std::env::var("OFFSITE_FLOWER_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = std::process::Command::new(&python)
        .args(["-c", "import flwr, safetensors"])
        .output()
        .is_ok_and(|o| o.status.success());
    found.then_some(python)
}

/// Runs federated/local.py: a SuperLink and one SuperNode per client on loopback.
fn federate(python: &str, emu: &Path, clients: &[String], work: &Path, extra: &[&str]) -> String {
    let mut args = vec![
        "federated/local.py".to_string(),
        "--package".into(),
        s(emu).into(),
        "--workdir".into(),
        s(work).into(),
        "--output".into(),
        s(&work.join("federated.safetensors")).into(),
        "--offsite".into(),
        env!("CARGO_BIN_EXE_offsite").into(),
        "--timeout".into(),
        "600".into(),
    ];
    for c in clients {
        args.extend(["--client".to_string(), c.clone()]);
    }
    args.extend(extra.iter().map(|e| e.to_string()));
    let o = std::process::Command::new(python)
        .args(&args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("runs python");
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let logs: String = ["superlink", "supernode0", "supernode1"]
        .iter()
        .map(|n| std::fs::read_to_string(work.join(format!("{n}.log"))).unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n----\n");
    assert!(
        o.status.success(),
        "federated run failed:\n{out}\n{}\n{logs}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(out.matches("stopped ").count(), 1 + clients.len(), "{out}");
    out
}

#[test]
fn flower_fedavg_on_loopback_averages_the_clients_adapters_by_examples() {
    let Some(python) = flower_python() else {
        eprintln!(
            "SKIPPED: no Python with flwr and safetensors (set OFFSITE_FLOWER_PYTHON, or \
             pip install -r federated/requirements.txt; .ci/run does)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, _, emu) = model_data_emulator(d, 5);
    let cpu = Device::Cpu;
    // Two data owners with different private splits and example counts.
    let (a, b) = (d.join("a.jsonl"), d.join("b.jsonl"));
    write_texts(&a, 6);
    std::fs::write(
        &b,
        (0..40)
            .map(|i| serde_json::json!({"text": format!("other words {i} for b.")}).to_string())
            .collect::<Vec<_>>()
            .join("\n"),
    )
    .unwrap();
    let clients = [s(&a).to_string(), s(&b).to_string()];

    // One round: the server's adapter is the example-weighted mean of the clients' adapters.
    let one = d.join("one");
    let tune = "--max-steps 2 --block-size 16 --lr 5e-2";
    let out = federate(
        &python,
        &emu,
        &clients,
        &one,
        &["--rounds", "1", "--tune-args", tune],
    );
    assert!(out.contains("round 1: 2 clients"), "{out}");
    let fed = Adapter::load(&one.join("federated.safetensors"), &cpu).unwrap();
    assert!(fed.meta.origin.as_deref().unwrap().contains("FedAvg"));
    let tuned: Vec<(Adapter, f64)> = (0..2)
        .map(|i| {
            let c = one.join(format!("client{i}"));
            let summary: serde_json::Value = serde_json::from_str(
                &std::fs::read_to_string(c.join("round1-summary.json")).unwrap(),
            )
            .unwrap();
            let adapter = Adapter::load(&c.join("round1-tuned"), &cpu).unwrap();
            (adapter, summary["examples"].as_f64().unwrap())
        })
        .collect();
    // Examples are training sequences (16-token blocks here): far more for the second owner.
    assert!(
        tuned[1].1 > 2.0 * tuned[0].1,
        "{} vs {}",
        tuned[0].1,
        tuned[1].1
    );
    let total = tuned[0].1 + tuned[1].1;
    for (name, t) in fed.tensors.iter() {
        let mean = tuned
            .iter()
            .map(|(a, n)| (a.tensors.get(name, t.dims()).unwrap() * (n / total)).unwrap())
            .reduce(|x, y| (x + y).unwrap())
            .unwrap();
        assert!(max_abs_diff(t, &mean) < 1e-6, "{name}");
    }
    // The clients really differ, so the check above is a weighted mean, not a copy.
    let (x, y) = (&tuned[0].0.tensors, &tuned[1].0.tensors);
    assert!(x
        .iter()
        .any(|(n, t)| max_abs_diff(t, &y.get(n, t.dims()).unwrap()) > 1e-4));

    // Two LoRA rounds on spam records: a plug-in adapter that `offsite plug` accepts.
    let spam = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/spam/train.jsonl");
    let (sa, sb) = (d.join("spam-a.jsonl"), d.join("spam-b.jsonl"));
    let records: Vec<String> = match std::fs::read_to_string(&spam) {
        Ok(text) => text.lines().take(24).map(String::from).collect(),
        Err(_) => (0..24)
            .map(|i| {
                serde_json::json!({"context": format!("Subject: offer {i}\nAnswer:"),
                    "choices": [" no", " yes"], "label": i % 2})
                .to_string()
            })
            .collect(),
    };
    std::fs::write(&sa, records[..10].join("\n") + "\n").unwrap();
    std::fs::write(&sb, records[10..].join("\n") + "\n").unwrap();
    let two = d.join("two");
    let tune = "--max-steps 2 --block-size 64 --lr 1e-2 --batch-size 2";
    let out = federate(
        &python,
        &emu,
        &[s(&sa).to_string(), s(&sb).to_string()],
        &two,
        &[
            "--rounds",
            "2",
            "--tune-args",
            tune,
            "--peft-args",
            "--peft lora --lora-r 2",
        ],
    );
    assert!(out.contains("round 2: 2 clients"), "{out}");
    let fed = two.join("federated.safetensors");
    assert_eq!(Adapter::load(&fed, &cpu).unwrap().kind(), "lora");
    // Round 2 started from round 1's average, not from a fresh LoRA.
    let start2 = Adapter::load(&two.join("client0/round2-start"), &cpu).unwrap();
    let round1 = Adapter::load(&two.join("server/round1-adapter"), &cpu).unwrap();
    assert_maps_close(&start2.tensors, &round1.tensors, 0.0, "adapter");
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(two.join("server/federated-summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["rounds"].as_array().unwrap().len(), 2);
    plug(&model, &fed, &d.join("plugged"));
}
