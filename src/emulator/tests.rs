//! The offsite-tuning loop on tiny random models: package contents, plug-in exactness,
//! fingerprint checks, corrupt files, and bit-identical resumption.

use super::*;
use crate::data::Sequence;
use crate::model::{Model, ModelConfig};
use crate::train::{self, loss::lm_loss, TrainJob, TrainOptions};
use candle_core::{DType, Device, Tensor};
use std::path::Path;

fn config() -> ModelConfig {
    ModelConfig {
        num_layers: 8,
        ..ModelConfig::tiny()
    }
}

fn options() -> EmulatorOptions {
    EmulatorOptions::layer_drop(2, 3, 1)
}

fn package_of(model: &Model) -> Package {
    Package::build(model, None, options(), Path::new("tiny.offsite")).unwrap()
}

fn data(n: usize, seed: u64) -> Vec<Sequence> {
    (0..n)
        .map(|i| Sequence {
            ids: (0..9)
                .map(|j| ((i as u64 * 7 + j * 3 + seed) % 31 + 1) as u32)
                .collect(),
            loss_from: 1 + i % 3,
        })
        .collect()
}

#[test]
fn package_holds_only_kept_layers_and_round_trips() {
    let model = Model::random(&config(), 1, DType::F32).unwrap();
    let pkg = package_of(&model);
    assert_eq!(pkg.meta.split.layer_order(), [0, 1, 2, 4, 6, 7]);
    let dropped = [3usize, 5];
    for name in pkg.tensors.names() {
        if let Some(i) = package::layer_index(name) {
            assert!(!dropped.contains(&i), "{name} is a dropped layer's tensor");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.offsite");
    pkg.save(&path).unwrap();
    let back = Package::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.meta, pkg.meta);
    let ids = Tensor::new(&[[3u32, 1, 4, 1, 5]], &Device::Cpu).unwrap();
    let a = pkg.model().unwrap().forward(&ids).unwrap();
    let b = back.model().unwrap().forward(&ids).unwrap();
    assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
}

#[test]
fn untrained_adapter_plugs_back_exactly_and_foreign_one_is_refused() {
    let model = Model::random(&config(), 2, DType::F32).unwrap();
    let pkg = package_of(&model);
    let adapter = Adapter::from_weights(&pkg, &Default::default(), None, None).unwrap();
    let mut plugged = model.clone();
    let fp = plug::model_fingerprint(&model).unwrap();
    adapter.check_source(&fp, Path::new("m")).unwrap();
    adapter.apply(&mut plugged).unwrap();
    let ids = Tensor::new(&[[2u32, 7, 1, 8, 2, 8]], &Device::Cpu).unwrap();
    assert_eq!(
        model.forward(&ids).unwrap().to_vec3::<f32>().unwrap(),
        plugged.forward(&ids).unwrap().to_vec3::<f32>().unwrap()
    );

    let other = Model::random(&config(), 3, DType::F32).unwrap();
    let foreign =
        Adapter::from_weights(&package_of(&other), &Default::default(), None, None).unwrap();
    let err = foreign
        .check_source(&fp, Path::new("model.gguf"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another model") && err.contains("model.gguf"),
        "{err}"
    );
    let err = foreign.check_package(&pkg).unwrap_err().to_string();
    assert!(err.contains("another emulator package"), "{err}");
}

#[test]
fn corrupt_or_wrong_files_give_clear_errors() {
    let model = Model::random(&config(), 4, DType::F32).unwrap();
    let pkg = package_of(&model);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("e.offsite");
    pkg.save(&p).unwrap();
    let a = dir.path().join("a.safetensors");
    Adapter::from_weights(&pkg, &Default::default(), None, None)
        .unwrap()
        .save(&a)
        .unwrap();

    let err = Package::load(&a, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("a.safetensors") && err.contains("not an emulator package"),
        "{err}"
    );
    let err = Adapter::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("e.offsite") && err.contains("not an adapter"),
        "{err}"
    );

    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 100]).unwrap();
    let err = Package::load(&p, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains("e.offsite"), "{err}");
    std::fs::write(&a, b"garbage").unwrap();
    let err = Adapter::load(&a, &Device::Cpu).unwrap_err().to_string();
    assert!(
        err.contains("a.safetensors") && err.contains("not a readable safetensors"),
        "{err}"
    );
}

/// Trains the adapter of `pkg` as `tune` does, optionally stopping early (a crash) and resuming.
fn run(
    pkg: &Package,
    dir: &Path,
    opts: &TrainOptions,
    stop_at: Option<usize>,
) -> crate::Result<Adapter> {
    let mut model = pkg.model()?;
    let adapter_layers = pkg.meta.split.adapter();
    let params =
        train::trainable_params(&mut model, |name| package::in_layers(name, &adapter_layers))?;
    let (train_data, val) = (data(10, 0), data(3, 5));
    let job = TrainJob {
        params,
        train: &train_data,
        val: Some(&val),
        pad: 0,
        device: Device::Cpu,
        options: opts.clone(),
        checkpoint_dir: dir.join("ckpt"),
        metrics_log: dir.join("metrics.jsonl"),
        total_params: pkg.num_parameters(),
        label: "test".into(),
        stop_at,
        loss_is_nll: true,
        collective: train::collective::world(),
    };
    let out = train::train(job, &|b, s| lm_loss(&model, b, s))?;
    Adapter::from_weights(pkg, &out.params, None, None)
}

#[test]
fn killed_and_resumed_run_gives_a_bit_identical_adapter() {
    let model = Model::random(&config(), 5, DType::F32).unwrap();
    let pkg = package_of(&model);
    let opts = TrainOptions {
        epochs: 3,
        batch_size: 3,
        grad_accum: 2,
        lr: 1e-2,
        warmup_steps: 2,
        weight_decay: 0.1,
        eval_every: 2,
        save_every: 2,
        ..TrainOptions::default()
    };
    let d1 = tempfile::tempdir().unwrap();
    let straight = run(&pkg, d1.path(), &opts, None).unwrap();

    let d2 = tempfile::tempdir().unwrap();
    // Killed after step 5: the checkpoint of step 4 survives, step 5 is lost and redone.
    let err = run(&pkg, d2.path(), &opts, Some(5)).unwrap_err();
    assert!(matches!(err, crate::Error::Interrupted(5)));
    let resumed = run(
        &pkg,
        d2.path(),
        &TrainOptions {
            resume: true,
            ..opts.clone()
        },
        None,
    )
    .unwrap();

    let bytes = |a: &Adapter, d: &Path| {
        let p = d.join("out.safetensors");
        a.save(&p).unwrap();
        std::fs::read(p).unwrap()
    };
    for (name, t) in straight.tensors.iter() {
        let r = resumed.tensors.get(name, t.dims()).unwrap();
        let d = crate::ops::testing::max_abs_diff(t, &r).unwrap();
        assert!(d == 0.0, "{name} differs by {d:e}");
    }
    let (a, b) = (bytes(&straight, d1.path()), bytes(&resumed, d2.path()));
    assert!(a == b, "adapter files differ");
    // The adapter really changed, and only adapter layers are in it.
    let untrained = Adapter::from_weights(&pkg, &Default::default(), None, None).unwrap();
    assert!(bytes(&straight, d1.path()) != bytes(&untrained, d1.path()));
    assert!(straight
        .tensors
        .names()
        .all(|n| { package::in_layers(n, &[0, 1, 7]) }));
    // The resumed run's metrics log has each step once.
    let log = std::fs::read_to_string(d2.path().join("metrics.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("loss").is_some())
        .map(|v| v["step"].as_u64().unwrap())
        .collect();
    let expected: Vec<u64> = (1..=steps.len() as u64).collect();
    assert_eq!(steps, expected);
}

#[test]
fn tuning_lowers_the_loss_and_touches_only_adapter_layers() {
    let model = Model::random(&config(), 6, DType::F32).unwrap();
    let pkg = package_of(&model);
    let dir = tempfile::tempdir().unwrap();
    let train_data = data(8, 1);
    let opts = TrainOptions {
        epochs: 50,
        batch_size: 4,
        lr: 3e-2,
        clip: 0.0,
        ..TrainOptions::default()
    };
    let out = dir.path().join("adapter.safetensors");
    let adapter = tune::tune(
        &pkg,
        &train_data,
        None,
        &opts,
        &crate::peft::Method::Full,
        0,
        &out,
    )
    .unwrap();
    let summary = adapter.meta.metrics.clone().unwrap();
    let log =
        std::fs::read_to_string(dir.path().join("adapter.safetensors.metrics.jsonl")).unwrap();
    let first: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    let (last, first) = (
        summary.final_train_loss.unwrap(),
        first["loss"].as_f64().unwrap(),
    );
    // A tied, frozen random head (entries ~0.02) bounds how peaked the logits can get, so the
    // drop is modest; an untrained run stays at ln(32) = 3.47.
    assert!(last < first - 0.2, "loss {first} -> {last}");
    assert!(!dir.path().join("adapter.safetensors.ckpt").exists());
    let back = Adapter::load(&out, &Device::Cpu).unwrap();
    assert_eq!(back.meta, adapter.meta);
    let mut emu = pkg.model().unwrap();
    back.apply(&mut emu).unwrap();
    for (name, w) in emu.named_weights() {
        let original = pkg.tensors.get(&name, w.dense().unwrap().dims()).unwrap();
        let same = w.dense().unwrap().to_vec1_any() == original.to_vec1_any();
        let is_adapter = package::in_layers(&name, &[0, 1, 7]);
        if is_adapter {
            assert!(!same, "{name} was not trained");
        } else {
            assert!(same, "{name} changed");
        }
    }
}

trait AnyVec {
    fn to_vec1_any(&self) -> Vec<f32>;
}
impl AnyVec for Tensor {
    fn to_vec1_any(&self) -> Vec<f32> {
        self.flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }
}

#[test]
fn lora_adapter_round_trips_and_untrained_plugs_back_exactly() {
    let model = Model::random(&config(), 8, DType::F32).unwrap();
    let pkg = package_of(&model);
    let mut emu = pkg.model().unwrap();
    let cfg = crate::peft::LoraConfig::default();
    crate::peft::add_lora(&mut emu, &pkg.meta.split.adapter(), &cfg, 1).unwrap();
    let weights: std::collections::BTreeMap<String, Tensor> = emu
        .named_weights()
        .into_iter()
        .filter(|(n, _)| crate::peft::is_lora_weight(n))
        .map(|(n, w)| (n, w.dense().unwrap().clone()))
        .collect();
    assert_eq!(weights.len(), 3 * 7 * 2);
    let adapter = Adapter::from_lora(&pkg, &cfg, &weights, None, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lora");
    adapter.save(&path).unwrap();
    let back = Adapter::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.meta, adapter.meta);
    for (name, t) in adapter.tensors.iter() {
        let u = back.tensors.get(name, t.dims()).unwrap();
        assert_eq!(t.to_vec1_any(), u.to_vec1_any(), "{name}");
    }
    let mut plugged = model.clone();
    back.check_source(&plug::model_fingerprint(&model).unwrap(), Path::new("m"))
        .unwrap();
    back.apply(&mut plugged).unwrap();
    let ids = Tensor::new(&[[2u32, 7, 1, 8, 2, 8]], &Device::Cpu).unwrap();
    assert_eq!(
        model.forward(&ids).unwrap().to_vec3::<f32>().unwrap(),
        plugged.forward(&ids).unwrap().to_vec3::<f32>().unwrap()
    );
}

#[test]
fn every_method_round_trips_and_plugs_in() {
    use crate::peft::{BottleneckConfig, LoraConfig, Method};
    let model = Model::random(&config(), 9, DType::F32).unwrap();
    let pkg = package_of(&model);
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        max_steps: Some(3),
        batch_size: 4,
        lr: 1e-2,
        ..TrainOptions::default()
    };
    let ids = Tensor::new(&[[2u32, 7, 1, 8, 2, 8]], &Device::Cpu).unwrap();
    let base = model.forward(&ids).unwrap();
    let methods = [
        (Method::Full, "full.safetensors", "full"),
        (Method::Lora(LoraConfig::default()), "lora", "lora"),
        (
            Method::Adapter(BottleneckConfig::default()),
            "adapter.safetensors",
            "adapter",
        ),
        (Method::BitFit, "bitfit.safetensors", "bitfit"),
    ];
    for (method, file, kind) in methods {
        let out = dir.path().join(file);
        let adapter = tune::tune(&pkg, &data(8, 2), None, &opts, &method, 0, &out).unwrap();
        assert_eq!(adapter.kind(), kind);
        let back = Adapter::load(&out, &Device::Cpu).unwrap();
        assert_eq!(back.meta, adapter.meta, "{kind}");
        assert_eq!(
            back.tensors.names().collect::<Vec<_>>(),
            adapter.tensors.names().collect::<Vec<_>>()
        );
        for (name, t) in adapter.tensors.iter() {
            let u = back.tensors.get(name, t.dims()).unwrap();
            assert_eq!(t.to_vec1_any(), u.to_vec1_any(), "{kind}: {name}");
        }
        // What each method trained, and nothing else.
        for name in back.tensors.names() {
            let ok = match kind {
                "lora" => crate::peft::is_lora_weight(name),
                "adapter" => crate::peft::is_bottleneck_weight(name),
                "bitfit" => name.ends_with("layernorm.weight"),
                _ => !crate::peft::is_peft_weight(name),
            };
            assert!(ok, "{kind} adapter holds {name}");
        }
        // Plugged in, the tuned adapter changes the model; the model owner can save it and read
        // it back unchanged.
        let mut plugged = model.clone();
        back.apply(&mut plugged).unwrap();
        let logits = plugged.forward(&ids).unwrap();
        let moved = crate::ops::testing::max_abs_diff(&logits, &base).unwrap();
        assert!(moved > 1e-6, "{kind}: plug-in changed nothing");
        let saved = dir.path().join(format!("plugged-{kind}"));
        let offsite_only = crate::io::hf_dir::save(&saved, &plugged, None).unwrap();
        assert_eq!(offsite_only, kind == "adapter");
        assert_eq!(saved.join("model.safetensors").is_file(), kind != "adapter");
        let reloaded = crate::io::checkpoint::load(&saved, &Device::Cpu)
            .unwrap()
            .model()
            .unwrap();
        assert_eq!(
            reloaded.forward(&ids).unwrap().to_vec3::<f32>().unwrap(),
            logits.to_vec3::<f32>().unwrap(),
            "{kind}"
        );
    }
}

#[test]
fn compressed_packages_shrink_and_read_back_bit_identical() {
    let model = Model::random(&config(), 10, DType::F32).unwrap();
    let dense = package_of(&model);
    let dir = tempfile::tempdir().unwrap();
    let dense_path = dir.path().join("dense.offsite");
    dense.save(&dense_path).unwrap();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    for (prune, bits) in [(Some(0.6), None), (None, Some(4)), (Some(0.3), Some(3))] {
        let options = EmulatorOptions {
            prune,
            quant_bits: bits,
            ..options()
        };
        let pkg = Package::build(&model, None, options.clone(), Path::new("c.offsite")).unwrap();
        let path = dir.path().join(format!("{prune:?}-{bits:?}.offsite"));
        pkg.save(&path).unwrap();
        assert!(
            size(&path) < size(&dense_path),
            "{prune:?} {bits:?}: no smaller"
        );
        let back = Package::load(&path, &Device::Cpu).unwrap();
        assert_eq!(back.meta, pkg.meta);
        assert_eq!(back.meta.options, options);
        for (name, t) in pkg.tensors.iter() {
            let u = back.tensors.get(name, t.dims()).unwrap();
            assert_eq!(t.to_vec1_any(), u.to_vec1_any(), "{name}");
            let original = dense.tensors.get(name, t.dims()).unwrap().to_vec1_any();
            let values = t.to_vec1_any();
            let emulator = package::in_layers(name, &pkg.meta.split.emulator);
            if !(emulator && t.rank() == 2) {
                assert_eq!(
                    values, original,
                    "{name} is not an emulator matrix but changed"
                );
                continue;
            }
            let zeros = values.iter().filter(|v| **v == 0.0).count();
            if let Some(r) = prune {
                assert_eq!(zeros, (r * values.len() as f64).floor() as usize, "{name}");
            }
            if let Some(b) = bits {
                let mut levels: Vec<u32> = values
                    .iter()
                    .filter(|v| **v != 0.0)
                    .map(|v| v.to_bits())
                    .collect();
                levels.sort_unstable();
                levels.dedup();
                assert!(levels.len() <= 1 << b, "{name}: {} levels", levels.len());
            }
            assert_ne!(values, original, "{name} was not compressed");
        }
    }
    // Bad compression options are refused with the flag's name.
    let bad = EmulatorOptions {
        quant_bits: Some(9),
        ..options()
    };
    let err = Package::build(&model, None, bad, Path::new("x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("--quant-bits"), "{err}");
}

#[test]
fn low_rank_packages_store_factors_of_emulator_matrices_only() {
    let model = Model::random(&config(), 12, DType::F32).unwrap();
    let dense = package_of(&model);
    let options = EmulatorOptions {
        low_rank: Some(0.3),
        ..options()
    };
    let pkg = Package::build(&model, None, options.clone(), Path::new("c.offsite")).unwrap();
    assert_eq!(pkg.meta.options.compression(), "layer drop + low rank 30%");
    let emulator = &pkg.meta.split.emulator;
    let mut saved = 0;
    for (name, t) in pkg.tensors.iter() {
        let is_emulator_matrix = t.rank() == 2 && package::in_layers(name, emulator);
        let e = pkg.encoded.get(name);
        assert_eq!(e.is_some(), is_emulator_matrix, "{name}");
        if let Some(e) = e {
            let (m, n) = t.dims2().unwrap();
            let r = crate::emulator::make::compress::rank_for(m, n, 0.3);
            assert_eq!(e.encoding.rank, Some(r), "{name}");
            assert_eq!(e.stored_values(), r * (m + n));
            saved += m * n - r * (m + n);
            // The dense tensor has (at most) rank r: it is what the factors multiply to.
            let want = crate::emulator::make::compress::low_rank_dense(&e.values, m, n, r);
            let got: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(got, want, "{name}");
        }
    }
    assert_eq!(pkg.num_parameters(), dense.num_parameters() - saved);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lr.offsite");
    pkg.save(&path).unwrap();
    let back = Package::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.meta.options, options);
    for (name, t) in pkg.tensors.iter() {
        let u = back.tensors.get(name, t.dims()).unwrap();
        assert_eq!(t.to_vec1_any(), u.to_vec1_any(), "{name}");
    }
    // Low rank and pruning do not compose; the fraction must be in (0, 1).
    for (prune, low_rank, flag) in [
        (Some(0.5), Some(0.5), "--prune"),
        (None, Some(1.0), "(0, 1)"),
    ] {
        let bad = EmulatorOptions {
            prune,
            low_rank,
            ..options.clone()
        };
        let err = Package::build(&model, None, bad, Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--low-rank") && err.contains(flag), "{err}");
    }
}

#[test]
fn a_damaged_compressed_tensor_is_reported_by_name() {
    let model = Model::random(&config(), 11, DType::F32).unwrap();
    let options = EmulatorOptions {
        prune: Some(0.5),
        ..options()
    };
    let mut pkg = Package::build(&model, None, options, Path::new("c.offsite")).unwrap();
    let name = pkg.encoded.keys().next().unwrap().clone();
    pkg.encoded.get_mut(&name).unwrap().values.pop();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.offsite");
    pkg.save(&path).unwrap();
    let err = Package::load(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(err.contains(&name) && err.contains("bad.offsite"), "{err}");
}

#[test]
fn a_later_round_starts_from_the_given_adapter_and_refuses_a_foreign_one() {
    use crate::peft::Method;
    let model = Model::random(&config(), 9, DType::F32).unwrap();
    let pkg = package_of(&model);
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        max_steps: Some(3),
        batch_size: 4,
        lr: 1e-2,
        ..TrainOptions::default()
    };
    let first = tune::tune(
        &pkg,
        &data(8, 1),
        None,
        &opts,
        &Method::Full,
        0,
        &dir.path().join("a1"),
    )
    .unwrap();
    // With a vanishing learning rate (steps below f32's resolution) the round ends where it
    // started: at the given adapter, not at the package's.
    let still = TrainOptions {
        lr: 1e-30,
        ..opts.clone()
    };
    let start = tune::TuneStart {
        adapter: &first,
        pull: 1.0,
    };
    let second = tune::tune_from(
        &pkg,
        Some(&start),
        &data(8, 2),
        None,
        &still,
        &Method::Full,
        0,
        &dir.path().join("a2"),
    )
    .unwrap();
    let mut moved = false;
    for (name, t) in first.tensors.iter() {
        let got = second.tensors.get(name, t.dims()).unwrap();
        assert_eq!(
            crate::ops::testing::max_abs_diff(t, &got).unwrap(),
            0.0,
            "{name}"
        );
        let original = pkg.tensors.get(name, t.dims()).unwrap();
        moved |= crate::ops::testing::max_abs_diff(t, &original).unwrap() > 0.0;
    }
    assert!(moved, "the first round changed the adapter");
    // Another model's adapter, or a method that cannot continue it, is refused.
    let other = package_of(&Model::random(&config(), 10, DType::F32).unwrap());
    let foreign = Adapter::from_weights(&other, &Default::default(), None, None).unwrap();
    for (adapter, method, needle) in [
        (&foreign, Method::Full, "another model"),
        (&first, Method::BitFit, "cannot start"),
    ] {
        let start = tune::TuneStart { adapter, pull: 0.0 };
        let out = dir.path().join(needle.replace(' ', "-"));
        let err = tune::tune_from(
            &pkg,
            Some(&start),
            &data(8, 2),
            None,
            &opts,
            &method,
            0,
            &out,
        )
        .unwrap_err();
        assert!(err.to_string().contains(needle), "{err}");
    }
}
