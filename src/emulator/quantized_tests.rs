//! Tuning through an emulator kept in a GGUF block format (`--frozen-quantized`), on tiny random
//! models whose rows GGUF blocks tile.

use super::*;
use crate::data::Sequence;
use crate::model::{Model, ModelConfig, QuantType, TensorMap, Weight};
use crate::train::TrainOptions;
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

/// 64 and 96 columns: whole Q8_0 blocks (32 values).
fn config() -> ModelConfig {
    ModelConfig {
        num_layers: 6,
        hidden_size: 64,
        intermediate_size: 96,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        ..ModelConfig::tiny()
    }
}

fn q8() -> QuantType {
    QuantType(GgmlDType::Q8_0)
}

/// A package of a random model (adapter 2 + 1 layers, 2 of the 3 middle layers kept), and the
/// same package with its emulator quantized.
fn packages() -> (Package, Package) {
    let model = Model::random(&config(), 3, DType::F32).unwrap();
    let options = EmulatorOptions::layer_drop(2, 1, 2);
    let build = || Package::build(&model, None, options.clone(), Path::new("q.offsite")).unwrap();
    let (dense, mut quantized) = (build(), build());
    let report = quantized.quantize_emulator(q8()).unwrap();
    let emulator = dense.meta.split.emulator.len();
    assert!(emulator > 0);
    // q, k, v, o, gate, up, down per emulator layer; nothing else.
    assert_eq!(report.matrices, 7 * emulator, "{report}");
    assert!(report.kept_dense.is_empty());
    assert!(report.quantized_bytes * 3 < report.dense_bytes, "{report}");
    (dense, quantized)
}

/// The quantized package's values as a dense package: what the blocks stand for.
fn dequantized(p: &Package) -> Package {
    let mut tensors = TensorMap::new("dequantized");
    for (name, t) in p.tensors.dense_entries().unwrap() {
        tensors.insert(name, t, Path::new("dequantized"));
    }
    Package {
        meta: p.meta.clone(),
        tensors,
        encoded: Default::default(),
    }
}

fn data(n: usize) -> Vec<Sequence> {
    (0..n)
        .map(|i| Sequence {
            ids: (0..12).map(|j| ((i * 5 + j * 3) % 31 + 1) as u32).collect(),
            loss_from: 1,
        })
        .collect()
}

#[test]
fn the_emulator_runs_on_blocks_with_the_dequantized_values() {
    let (dense, quantized) = packages();
    let model = quantized.model().unwrap();
    let emulator = &quantized.meta.split.emulator;
    for (name, w) in model.named_weights() {
        let in_emulator = package::in_layers(&name, emulator);
        let matrix = w.dims().len() == 2 && package::layer_index(&name).is_some();
        match w {
            Weight::Quantized(_) => assert!(in_emulator && matrix, "{name} quantized"),
            _ => assert!(!(in_emulator && matrix), "{name} left dense"),
        }
    }
    let ids = Tensor::new(&[[3u32, 1, 4, 1, 5, 9, 2, 6]], &Device::Cpu).unwrap();
    let got = model.forward(&ids).unwrap();
    let want = dequantized(&quantized)
        .model()
        .unwrap()
        .forward(&ids)
        .unwrap();
    let diff = crate::ops::testing::max_abs_diff(&got, &want).unwrap();
    assert_eq!(
        diff, 0.0,
        "blocks and their dequantized values differ by {diff}"
    );
    // Q8_0 is close to the f32 package, but not equal to it.
    let f32 = dense.model().unwrap().forward(&ids).unwrap();
    let err = crate::ops::testing::max_abs_diff(&got, &f32).unwrap();
    assert!(err > 0.0 && err < 1e-2, "q8_0 vs f32: {err}");
}

/// Tuning through the blocks gives the adapter that tuning through their dequantized values
/// gives, bit for bit (the same products, forward and input gradient), and records the format.
#[test]
fn tuning_through_a_quantized_emulator_equals_tuning_through_its_values() {
    let (_, quantized) = packages();
    let reference = dequantized(&quantized);
    let dir = tempfile::tempdir().unwrap();
    let opts = TrainOptions {
        max_steps: Some(3),
        batch_size: 2,
        lr: 1e-2,
        frozen_quantized: Some(q8()),
        ..TrainOptions::default()
    };
    let train = data(6);
    let tune = |p: &Package, opts: &TrainOptions, out: &str| {
        tune::tune(
            p,
            &train,
            None,
            opts,
            &crate::peft::Method::Full,
            0,
            &dir.path().join(out),
        )
        .unwrap()
    };
    let a = tune(&quantized, &opts, "a.safetensors");
    let dense = TrainOptions {
        frozen_quantized: None,
        ..opts.clone()
    };
    let b = tune(&reference, &dense, "b.safetensors");
    // Asking for blocks from a package that holds none is refused, not run dense.
    let e = tune::tune(
        &reference,
        &train,
        None,
        &opts,
        &crate::peft::Method::Full,
        0,
        Path::new("x"),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("quantize the package"), "{e}");
    assert_eq!(a.tensors.len(), b.tensors.len());
    for (name, t) in a.tensors.iter() {
        let u = b.tensors.get(name, t.dims()).unwrap();
        assert_eq!(
            crate::ops::testing::max_abs_diff(t, &u).unwrap(),
            0.0,
            "{name}"
        );
    }
    let recorded = a.meta.training.as_ref().and_then(|t| t.frozen_quantized);
    assert_eq!(recorded, Some(q8()));
    // The adapter names the package as shipped, so it plugs in as usual.
    assert_eq!(
        a.meta.package_fingerprint,
        quantized.meta.package_fingerprint
    );
}

#[test]
fn a_package_quantized_after_loading_is_not_saved() {
    let (_, quantized) = packages();
    let dir = tempfile::tempdir().unwrap();
    let e = quantized
        .save(&dir.path().join("q.offsite"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("quantized after loading"), "{e}");
}

#[test]
fn other_steps_refuse_frozen_quantized() {
    let opts = TrainOptions {
        frozen_quantized: Some(q8()),
        ..TrainOptions::default()
    };
    let e = opts.f32_only("alignment").unwrap_err().to_string();
    assert!(
        e.contains("alignment") && e.contains("--frozen-quantized q8_0"),
        "{e}"
    );
}

/// The model owner ships the emulator in blocks: the file is smaller, reads back to the same
/// blocks (bit-identical logits), and its fingerprint is that of the dequantized values.
#[test]
fn a_package_shipped_in_blocks_round_trips_and_is_smaller() {
    let model = Model::random(&config(), 3, DType::F32).unwrap();
    let dense_options = EmulatorOptions::layer_drop(2, 1, 2);
    let options = EmulatorOptions {
        frozen_quantized: Some(q8()),
        ..dense_options.clone()
    };
    let origin = Path::new("q.offsite");
    let shipped = Package::build(&model, None, options, origin).unwrap();
    let dense = Package::build(&model, None, dense_options, origin).unwrap();
    assert_eq!(shipped.meta.format_version, 2);
    assert_eq!(dense.meta.format_version, 1);
    assert_eq!(
        shipped.meta.quantized.len(),
        7 * shipped.meta.split.emulator.len()
    );
    assert!(shipped.meta.quantized.values().all(|r| r.format == "q8_0"));
    let values = dequantized(&shipped);
    let fp = |p: &Package| super::fingerprint::fingerprint(p.tensors.iter()).unwrap();
    assert_eq!(shipped.meta.package_fingerprint, fp(&values));
    assert_eq!(
        shipped.meta.source_fingerprint,
        dense.meta.source_fingerprint
    );

    let dir = tempfile::tempdir().unwrap();
    let (q_path, d_path) = (dir.path().join("q.offsite"), dir.path().join("d.offsite"));
    shipped.save(&q_path).unwrap();
    dense.save(&d_path).unwrap();
    let size = |p: &Path| std::fs::metadata(p).unwrap().len();
    assert!(
        size(&q_path) < size(&d_path),
        "{} vs {}",
        size(&q_path),
        size(&d_path)
    );
    let back = Package::load(&q_path, &Device::Cpu).unwrap();
    assert_eq!(back.meta, shipped.meta);
    let ids = Tensor::new(&[[3u32, 1, 4, 1, 5]], &Device::Cpu).unwrap();
    let m = back.model().unwrap();
    let quantized = m
        .named_weights()
        .iter()
        .filter(|(_, w)| matches!(w, Weight::Quantized(_)))
        .count();
    assert_eq!(quantized, shipped.meta.quantized.len());
    let (a, b) = (
        shipped.model().unwrap().forward(&ids).unwrap(),
        m.forward(&ids).unwrap(),
    );
    assert_eq!(crate::ops::testing::max_abs_diff(&a, &b).unwrap(), 0.0);
    // Already in blocks: asking again is refused, not applied twice.
    let mut again = back;
    let e = again.quantize_emulator(q8()).unwrap_err().to_string();
    assert!(
        e.contains("already holds its emulator in q8_0 blocks"),
        "{e}"
    );
}

#[test]
fn block_bytes_that_do_not_fit_their_record_are_refused_by_name() {
    let model = Model::random(&config(), 3, DType::F32).unwrap();
    let options = EmulatorOptions {
        frozen_quantized: Some(q8()),
        ..EmulatorOptions::layer_drop(2, 1, 2)
    };
    let mut p = Package::build(&model, None, options, Path::new("q.offsite")).unwrap();
    let (name, record) = p.meta.quantized.iter_mut().next().unwrap();
    let name = name.clone();
    record.shape[0] += 1;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.offsite");
    p.save(&path).unwrap();
    let e = Package::load(&path, &Device::Cpu).unwrap_err().to_string();
    assert!(
        e.contains(&name) && e.contains("do not hold a q8_0 matrix"),
        "{e}"
    );
    assert!(e.contains("bad.offsite"), "{e}");
}

#[test]
fn frozen_quantized_does_not_compose_with_other_compression() {
    let options = EmulatorOptions {
        frozen_quantized: Some(q8()),
        quant_bits: Some(4),
        ..EmulatorOptions::layer_drop(2, 1, 2)
    };
    let e = options.validate().unwrap_err().to_string();
    assert!(e.contains("does not compose"), "{e}");
}
