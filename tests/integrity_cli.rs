//! Damaged files from the other party are refused before any tensor is used (issue 19): the
//! package, the adapter (file and PEFT directory), a plugged model and a training checkpoint are
//! sealed when written; one flipped bit anywhere is either refused by name or is provably
//! harmless (JSON whitespace in the header). Training checkpoints: `train::checkpoint`'s tests.

use std::path::Path;

mod common;
use common::{fails, model_data_emulator, offsite, ok, plug, s, tune_briefly};

/// Flips bit `bit` of byte `at` of `path` in place.
fn flip(path: &Path, at: usize, bit: u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] ^= 1 << bit;
    std::fs::write(path, bytes).unwrap();
}

/// Byte offset where a safetensors file's tensor data starts.
fn data_start(path: &Path) -> usize {
    let bytes = std::fs::read(path).unwrap();
    u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8
}

/// A copy of `src` (file or directory) at `dst`.
fn copy(src: &Path, dst: &Path) {
    if src.is_dir() {
        std::fs::create_dir_all(dst).unwrap();
        for e in std::fs::read_dir(src).unwrap() {
            let e = e.unwrap();
            copy(&e.path(), &dst.join(e.file_name()));
        }
    } else {
        std::fs::copy(src, dst).unwrap();
    }
}

#[test]
fn intact_files_say_they_were_verified() {
    let d = tempfile::tempdir().unwrap();
    let (_, train, emu) = model_data_emulator(d.path(), 3);
    let adapter = d.path().join("a.safetensors");
    tune_briefly(&emu, &train, &adapter, &[]);
    for file in [&emu, &adapter] {
        let v: serde_json::Value =
            serde_json::from_str(&ok(offsite(&["inspect", s(file), "--json"]))).unwrap();
        let integrity = v["integrity"].as_str().unwrap();
        assert!(integrity.starts_with("verified"), "{integrity}");
        assert!(ok(offsite(&["inspect", s(file)])).contains("integrity     verified"));
    }
}

#[test]
fn one_flipped_bit_in_any_exchanged_file_is_refused_by_every_command() {
    let d = tempfile::tempdir().unwrap();
    let (model, train, emu) = model_data_emulator(d.path(), 4);
    let adapter = d.path().join("a.safetensors");
    tune_briefly(&emu, &train, &adapter, &[]);
    let lora = d.path().join("lora");
    tune_briefly(&emu, &train, &lora, &["--peft", "lora"]);
    let plugged = d.path().join("plugged");
    plug(&model, &adapter, &plugged);

    // The package: a bit in the data, refused by inspect, tune and eval, naming the file.
    let bad_emu = d.path().join("bad.offsite");
    copy(&emu, &bad_emu);
    flip(&bad_emu, data_start(&bad_emu) + 5, 2);
    for args in [
        vec!["inspect", s(&bad_emu)],
        vec![
            "eval",
            s(&bad_emu),
            "--data",
            s(&train),
            "--block-size",
            "16",
        ],
        vec!["tune", s(&bad_emu), "--data", s(&train), "-o", "/dev/null"],
    ] {
        fails(offsite(&args), &["bad.offsite", "damaged"]);
    }

    // The adapter: refused by inspect and by the model owner's plug.
    let bad_adapter = d.path().join("bad-a.safetensors");
    copy(&adapter, &bad_adapter);
    let end = std::fs::metadata(&bad_adapter).unwrap().len() as usize;
    flip(&bad_adapter, end - 3, 6);
    fails(
        offsite(&["inspect", s(&bad_adapter)]),
        &["bad-a.safetensors", "damaged", "does not match"],
    );
    let out = d.path().join("never");
    fails(
        offsite(&["plug", s(&model), s(&bad_adapter), "-o", s(&out)]),
        &["bad-a.safetensors", "damaged"],
    );
    assert!(!out.exists(), "nothing is written from a damaged adapter");

    // A LoRA adapter in PEFT's layout: the weights file inside the directory is named.
    let bad_lora = d.path().join("bad-lora");
    copy(&lora, &bad_lora);
    let weights = bad_lora.join("adapter_model.safetensors");
    flip(&weights, data_start(&weights) + 1, 0);
    fails(
        offsite(&["inspect", s(&bad_lora)]),
        &["adapter_model.safetensors", "damaged"],
    );

    // A plugged model (a Hugging Face directory offsite wrote).
    let weights = plugged.join("model.safetensors");
    flip(&weights, data_start(&weights) + 9, 1);
    fails(
        offsite(&["inspect", s(&plugged)]),
        &["model.safetensors", "damaged"],
    );
}

#[test]
fn seeded_random_bit_flips_of_a_package_never_pass_unnoticed() {
    let d = tempfile::tempdir().unwrap();
    let (_, _, emu) = model_data_emulator(d.path(), 6);
    let bytes = std::fs::read(&emu).unwrap();
    let header = data_start(&emu);
    let bad = d.path().join("flipped.offsite");
    // A small LCG: the same 60 positions on every run, a third of them in the header.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: usize| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize % n
    };
    let mut refused = 0;
    for i in 0..60 {
        let at = if i % 3 == 0 {
            next(header)
        } else {
            header + next(bytes.len() - header)
        };
        let bit = next(8) as u8;
        let mut damaged = bytes.clone();
        damaged[at] ^= 1 << bit;
        std::fs::write(&bad, &damaged).unwrap();
        let o = offsite(&["inspect", s(&bad)]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "byte {at} bit {bit}: {err}");
        if o.status.success() {
            // Only JSON whitespace may change unnoticed (the header is padded with spaces).
            assert!(
                bytes[at].is_ascii_whitespace() && damaged[at].is_ascii_whitespace(),
                "byte {at} bit {bit} ({:?} → {:?}) passed inspect",
                bytes[at] as char,
                damaged[at] as char
            );
        } else {
            assert!(err.contains("flipped.offsite"), "{err}");
            refused += 1;
        }
    }
    assert!(refused >= 55, "{refused} of 60 refused");
}

#[test]
fn no_strategy_ships_a_dropped_layers_weights_under_any_name() {
    use candle_core::Device;
    use offsite::emulator::Package;
    let d = tempfile::tempdir().unwrap();
    let (model, train, _) = model_data_emulator(d.path(), 7);
    let full = offsite::io::checkpoint::load(&model, &Device::Cpu).unwrap();
    let values = |t: &candle_core::Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for strategy in ["uniform", "importance", "importance-share", "share"] {
        for compression in [&[][..], &["--quant-bits", "4"][..]] {
            let emu = d
                .path()
                .join(format!("{strategy}{}.offsite", compression.len()));
            let mut args = vec!["--strategy", strategy, "--calibration", s(&train)];
            args.extend_from_slice(compression);
            common::make_emulator(&model, &emu, &args);
            let pkg = Package::load(&emu, &Device::Cpu).unwrap();
            let stored = pkg.meta.split.stored();
            let adapter = pkg.meta.split.adapter();
            let dropped: Vec<usize> = (0..full.config.num_layers)
                .filter(|i| !stored.contains(i) && !adapter.contains(i))
                .collect();
            assert!(!dropped.is_empty(), "{strategy}: nothing dropped");
            let shipped: Vec<Vec<f32>> = pkg.tensors.iter().map(|(_, t)| values(t)).collect();
            for (name, t) in full.tensors.iter() {
                let Some(i) = offsite::emulator::package::layer_index(name) else {
                    continue;
                };
                if !dropped.contains(&i) {
                    continue;
                }
                assert!(!pkg.tensors.contains(name), "{strategy}: `{name}` shipped");
                // Not under another name either: no shipped tensor equals it.
                let v = values(t);
                assert!(
                    !shipped.contains(&v),
                    "{strategy} {compression:?}: layer {i}'s `{name}` is in the package under another name"
                );
            }
        }
    }
}
