//! The offsite-tuning loop on every family's tiny reference checkpoint (part of
//! tests/families.rs, whose helpers it uses).

use super::*;

/// The offsite-tuning loop on the family's tiny checkpoint: emulator package, untrained adapters
/// (full and LoRA) plugged back exactly, a few steps of LoRA and BitFit tuning, the PEFT export
/// and plug-in of the tuned LoRA.
fn check_loop(family: &str) {
    use offsite::data::Sequence;
    use offsite::emulator::{plug, tune::tune, Adapter, EmulatorOptions, Package};
    use offsite::peft::{add_lora, is_lora_weight, LoraConfig, Method};
    use offsite::train::TrainOptions;

    let r = reference(family);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("e.offsite");
    let options = EmulatorOptions::layer_drop(1, 1, 1);
    Package::build(&r.model, None, options, &path)
        .unwrap()
        .save(&path)
        .unwrap();
    let pkg = Package::load(&path, &Device::Cpu).unwrap();
    let prefix = pkg.meta.config.layer_prefix();
    assert!(pkg
        .tensors
        .names()
        .all(|n| !n.starts_with(&format!("{prefix}2."))));
    let base = logits(&r.model);

    // Untrained adapters reproduce the model exactly.
    let untrained = Adapter::from_weights(&pkg, &Default::default(), None, None).unwrap();
    assert_eq!(
        logits(&plug(&r.ckpt, &untrained).unwrap()),
        base,
        "{family}"
    );
    let lora = LoraConfig {
        dropout: 0.0,
        ..Default::default()
    };
    let mut emulator = pkg.model().unwrap();
    add_lora(&mut emulator, &pkg.meta.split.adapter(), &lora, 1).unwrap();
    let weights = emulator
        .named_weights()
        .into_iter()
        .filter(|(n, _)| is_lora_weight(n))
        .map(|(n, w)| (n, w.dense().unwrap().clone()))
        .collect();
    let untrained = Adapter::from_lora(&pkg, &lora, &weights, None, None).unwrap();
    assert_eq!(
        logits(&plug(&r.ckpt, &untrained).unwrap()),
        base,
        "{family} LoRA"
    );

    // A few steps of LoRA and BitFit through the emulator.
    let data: Vec<Sequence> = (0..6u32)
        .map(|i| Sequence {
            ids: (0..10).map(|j| 3 + (i * 37 + j * 11) % 500).collect(),
            loss_from: 1,
        })
        .collect();
    let train = TrainOptions {
        max_steps: Some(2),
        batch_size: 2,
        block_size: 10,
        lr: 1e-2,
        ..Default::default()
    };
    let out = tmp.path().join("lora");
    tune(&pkg, &data, None, &train, &Method::Lora(lora), 0, &out).unwrap();
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    let arch = offsite::model::architecture(pkg.meta.config.family);
    let targets: Vec<&str> = config["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(targets, arch.lora_targets(), "{family}");
    assert_eq!(
        config["fan_in_fan_out"].as_bool(),
        Some(arch.fan_in_fan_out())
    );
    let peft = candle_core::safetensors::load(out.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    let last = pkg.meta.config.num_layers - 1;
    assert!(!peft.is_empty());
    for name in peft.keys() {
        let layer0 = format!("base_model.model.{prefix}0.");
        let top = format!("base_model.model.{prefix}{last}.");
        assert!(
            name.starts_with(&layer0) || name.starts_with(&top),
            "{family}: PEFT key {name}"
        );
    }
    let tuned = Adapter::load(&out, &Device::Cpu).unwrap();
    let plugged = logits(&plug(&r.ckpt, &tuned).unwrap());
    assert!(plugged.iter().all(|v| v.is_finite()));
    assert_ne!(plugged, base, "{family}: LoRA training changed nothing");

    let out = tmp.path().join("bitfit.safetensors");
    let bitfit = tune(&pkg, &data, None, &train, &Method::BitFit, 0, &out).unwrap();
    assert!(bitfit.tensors.iter().all(|(_, t)| t.rank() == 1));
    let has_bias = r
        .model
        .named_weights()
        .iter()
        .any(|(n, _)| n.ends_with(".bias"));
    assert_eq!(
        bitfit.tensors.names().any(|n| n.ends_with(".bias")),
        has_bias,
        "{family}: BitFit and biases"
    );
}

macro_rules! loop_tests {
    ($($name:ident: $family:literal),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                check_loop($family);
            }
        )*
    };
}

loop_tests! {
    llama_offsite_loop: "llama",
    qwen2_offsite_loop: "qwen2",
    gpt2_offsite_loop: "gpt2",
    opt_offsite_loop: "opt",
    bloom_offsite_loop: "bloom",
    gemma3_offsite_loop: "gemma3",
}
