//! Strategies end to end on tiny random models: the packages they make, what those hold, and
//! that tuning and plug-in work unchanged through them.

use super::*;
use crate::data::Sequence;
use crate::emulator::make::fidelity::MiddleProbe;
use crate::emulator::{tune::tune, Adapter, EmulatorOptions, Package};
use crate::model::{Model, ModelConfig};
use crate::train::TrainOptions;
use candle_core::{DType, Device, Tensor};
use std::path::Path;

fn full() -> Model {
    let config = ModelConfig {
        num_layers: 8,
        ..ModelConfig::tiny()
    };
    Model::random(&config, 21, DType::F32).unwrap()
}

fn seqs(n: usize) -> Vec<Sequence> {
    (0..n)
        .map(|r| Sequence {
            ids: (0..10).map(|i| ((i * 7 + r * 5) % 31 + 1) as u32).collect(),
            loss_from: 1,
        })
        .collect()
}

fn calibration() -> Calibration {
    let s = seqs(4);
    let refs: Vec<&Sequence> = s.iter().collect();
    let batch = Batch::new(&refs, 0, &Device::Cpu).unwrap();
    Calibration {
        tokens: batch.num_tokens,
        batches: vec![batch],
        sha256: "00".into(),
    }
}

#[test]
fn data_driven_strategies_need_calibration_and_record_what_they_measured() {
    let full = full();
    let (uniform, none) = choose(&full, Strategy::Uniform, 2, 1, 3, None).unwrap();
    assert_eq!(uniform, plan(8, 2, 1, 3).unwrap());
    assert!(none.is_none());
    let err = choose(&full, Strategy::Share, 2, 1, 3, None)
        .unwrap_err()
        .to_string();
    assert!(err.contains("--calibration"), "{err}");

    let cal = calibration();
    let at = Some((&cal, Path::new("cal.jsonl")));
    let probe = MiddleProbe::new(&full, 2, 1, &cal.batches).unwrap();
    let (split, record) = choose(&full, Strategy::Importance, 2, 1, 3, at).unwrap();
    let record = record.unwrap();
    let (kept, steps) = greedy(&probe, 3, false).unwrap();
    assert_eq!(split.emulator, kept);
    assert_eq!(record.removed, steps);
    assert_eq!(record.fidelity, probe.fidelity(&kept).unwrap());
    assert_eq!(record.calibration, "cal.jsonl");
    assert_eq!(record.calibration_tokens, 36);

    let (split, record) = choose(&full, Strategy::ImportanceShare, 2, 1, 3, at).unwrap();
    assert_eq!(split.stored().len(), 3);
    assert_eq!(
        (split.emulator.clone(), record.unwrap().removed),
        greedy(&probe, 3, true).unwrap()
    );

    let (split, record) = choose(&full, Strategy::Share, 2, 1, 3, at).unwrap();
    let clusters = record.unwrap().clusters.unwrap();
    // The full middle depth, three distinct layers, each its cluster's own member.
    assert_eq!(split.emulator.len(), 5);
    assert_eq!(split.stored(), clusters.stored);
    assert_eq!(clusters.members.concat(), [2, 3, 4, 5, 6]);
    for (m, s) in clusters.members.iter().zip(&clusters.stored) {
        assert!(m.contains(s));
    }
    assert_eq!(
        clusters,
        cluster(&cka_matrix(&probe).unwrap(), 2, 3).unwrap()
    );
}

/// A package whose emulator runs layers `map` of `full`.
fn package_with(full: &Model, map: Vec<usize>, strategy: Strategy) -> Package {
    let split = crate::emulator::Split::new(8, 2, 1, map).unwrap();
    let keep = split.stored().len();
    let options = EmulatorOptions::layer_drop(2, keep, 1).with_strategy(strategy, None);
    Package::assemble(
        full,
        None,
        options,
        (split, None),
        None,
        Path::new("s.offsite"),
    )
    .unwrap()
}

#[test]
fn a_shared_package_stores_each_representative_once_and_runs_it_at_every_depth() {
    let full = full();
    let pkg = package_with(&full, vec![2, 2, 5, 5, 5], Strategy::Share);
    let layers: std::collections::BTreeSet<usize> = pkg
        .tensors
        .names()
        .filter_map(crate::emulator::package::layer_index)
        .collect();
    assert_eq!(layers.into_iter().collect::<Vec<_>>(), [0, 1, 2, 5, 7]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.offsite");
    pkg.save(&path).unwrap();
    let back = Package::load(&path, &Device::Cpu).unwrap();
    assert_eq!(back.meta, pkg.meta);
    assert_eq!(back.model().unwrap().layer_ids(), [0, 1, 2, 2, 5, 5, 5, 7]);
    // The emulator is the full model's layers run in the shared order.
    let ids = Tensor::new(&[[4u32, 9, 2, 6, 1]], &Device::Cpu).unwrap();
    let ctx = full.layer_context(0, 5).unwrap();
    let mut h = full.embed(&ids).unwrap();
    for i in [0, 1, 2, 2, 5, 5, 5, 7] {
        h = full.layers()[i].forward(&h, &ctx, None).unwrap();
    }
    let want = full.head(&h).unwrap();
    let got = back.model().unwrap().forward(&ids).unwrap();
    assert_eq!(
        want.to_vec3::<f32>().unwrap(),
        got.to_vec3::<f32>().unwrap()
    );
    // Distillation does not handle shared layers yet, and says so.
    let err = crate::emulator::make::distill::distill(
        &full,
        &back,
        None,
        &seqs(4),
        None,
        &TrainOptions::default(),
        &crate::emulator::make::distill::DistillWeights {
            kd_weight: 1.0,
            lm_weight: 0.0,
            kd_norm: crate::emulator::make::distill::KdNorm::Token,
            logit_weight: 0.0,
        },
        0,
        &dir.path().join("d.offsite"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("shared layers"), "{err}");
}

fn tuned(pkg: &Package, dir: &Path) -> Adapter {
    let opts = TrainOptions {
        max_steps: Some(4),
        batch_size: 2,
        lr: 1e-2,
        ..TrainOptions::default()
    };
    let out = dir.join("a.safetensors");
    tune(
        pkg,
        &seqs(6),
        None,
        &opts,
        &crate::peft::Method::Full,
        0,
        &out,
    )
    .unwrap()
}

#[test]
fn a_trained_adapter_plugs_in_exactly_when_the_emulator_is_the_whole_middle() {
    let full = full();
    let whole = package_with(&full, vec![2, 3, 4, 5, 6], Strategy::Uniform);
    let dir = tempfile::tempdir().unwrap();
    let adapter = tuned(&whole, dir.path());
    let mut emu = whole.model().unwrap();
    adapter.check_package(&whole).unwrap();
    adapter.apply(&mut emu).unwrap();
    let mut plugged = full.clone();
    adapter.apply(&mut plugged).unwrap();
    let ids = Tensor::new(&[[3u32, 8, 8, 1, 2, 7]], &Device::Cpu).unwrap();
    let (a, b) = (emu.forward(&ids).unwrap(), plugged.forward(&ids).unwrap());
    assert_eq!(a.to_vec3::<f32>().unwrap(), b.to_vec3::<f32>().unwrap());
    // The adapter was trained: the plugged model is not the original one.
    let before = full.forward(&ids).unwrap();
    assert!(crate::ops::testing::max_abs_diff(&before, &b).unwrap() > 1e-4);
}

#[test]
fn tuning_through_shared_layers_trains_only_the_adapter() {
    let full = full();
    let pkg = package_with(&full, vec![2, 2, 5, 5, 5], Strategy::Share);
    let dir = tempfile::tempdir().unwrap();
    let adapter = tuned(&pkg, dir.path());
    let layers: std::collections::BTreeSet<usize> = adapter
        .tensors
        .names()
        .filter_map(crate::emulator::package::layer_index)
        .collect();
    assert_eq!(layers.into_iter().collect::<Vec<_>>(), [0, 1, 7]);
    let mut plugged = full.clone();
    adapter.apply(&mut plugged).unwrap();
    assert_eq!(plugged.layer_ids(), (0..8).collect::<Vec<_>>());
}
