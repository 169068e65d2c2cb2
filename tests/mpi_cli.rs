//! Data-parallel training over MPI (issue 22): `mpiexec -n N offsite tune …` takes the steps of
//! one process with the whole batch. Runs with `--features mpi` (`.ci/run` installs MPICH);
//! without the feature, a launch by mpiexec is refused.

mod common;

use common::*;
#[cfg(feature = "mpi")]
use std::path::Path;
use std::process::Command;

/// `offsite ARGS`, under `mpiexec -n ranks` when given.
#[cfg(feature = "mpi")]
fn command(ranks: Option<usize>, args: &[&str]) -> Command {
    let bin = env!("CARGO_BIN_EXE_offsite");
    let mut c = match ranks {
        Some(n) => {
            let mut c = Command::new("mpiexec");
            c.args(["-n", &n.to_string(), bin]);
            c
        }
        None => Command::new(bin),
    };
    c.args(args);
    c
}

/// [`command`], which must succeed.
#[cfg(feature = "mpi")]
fn run_offsite(ranks: Option<usize>, args: &[&str]) {
    ok(command(ranks, args).output().unwrap());
}

/// `offsite tune` of the tiny package for 3 steps of global batch 4, optionally under
/// `mpiexec -n ranks`.
#[cfg(feature = "mpi")]
fn tune(ranks: Option<usize>, emu: &Path, train: &Path, val: &Path, out: &Path) {
    let args = [
        "tune",
        s(emu),
        "--data",
        s(train),
        "--val",
        s(val),
        "-o",
        s(out),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--block-size",
        "16",
        "--lr",
        "1e-3",
        "--save-every",
        "1",
    ];
    run_offsite(ranks, &args);
}

#[cfg(feature = "mpi")]
#[test]
fn mpiexec_ranks_tune_the_adapter_one_process_would() {
    use offsite::emulator::Adapter;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, train, emu) = model_data_emulator(d, 6);
    let val = d.join("val.jsonl");
    write_texts(&val, 3);
    let single = d.join("single.safetensors");
    tune(None, &emu, &train, &val, &single);
    let one = Adapter::load(&single, &candle_core::Device::Cpu).unwrap();
    for n in [2, 4] {
        let out = d.join(format!("ranks{n}.safetensors"));
        tune(Some(n), &emu, &train, &val, &out);
        let many = Adapter::load(&out, &candle_core::Device::Cpu).unwrap();
        assert_maps_close(&one.tensors, &many.tensors, 1e-5, &format!("{n} ranks"));
        let (a, b) = (
            one.meta.metrics.as_ref().unwrap(),
            many.meta.metrics.as_ref().unwrap(),
        );
        assert_eq!(a.tokens, b.tokens, "{n} ranks count every token once");
        assert!((a.best_val_loss.unwrap() - b.best_val_loss.unwrap()).abs() < 1e-5);
        // Rank 0 alone wrote the log: one line per step and validation, as one process does.
        let log =
            std::fs::read_to_string(d.join(format!("ranks{n}.safetensors.metrics.jsonl"))).unwrap();
        let single_log =
            std::fs::read_to_string(d.join("single.safetensors.metrics.jsonl")).unwrap();
        assert_eq!(log.lines().count(), single_log.lines().count());
        assert!(!d.join(format!("ranks{n}.safetensors.ckpt")).exists());
    }
}

#[cfg(feature = "mpi")]
#[test]
fn a_stopped_data_parallel_run_resumes_to_the_adapter_of_an_uninterrupted_one() {
    use offsite::emulator::Adapter;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, train, emu) = model_data_emulator(d, 7);
    let run = |out: &Path, stop: Option<&str>, resume: bool| {
        let mut args = vec!["tune", s(&emu), "--data", s(&train), "-o", s(out)];
        args.extend([
            "--max-steps",
            "12",
            "--batch-size",
            "4",
            "--block-size",
            "16",
        ]);
        args.extend(["--lr", "1e-3", "--save-every", "3"]);
        if resume {
            args.push("--resume");
        }
        let mut c = command(Some(2), &args);
        if let Some(step) = stop {
            // Every rank stops after this step as a crash would (rank 0 checkpointed it).
            c.env("OFFSITE_TEST_STOP_AT_STEP", step);
        }
        c.output().unwrap()
    };
    let reference = d.join("reference.safetensors");
    ok(run(&reference, None, false));
    let out = d.join("stopped.safetensors");
    let stopped = run(&out, Some("7"), false);
    assert!(!stopped.status.success() && !out.exists());
    let o = run(&out, None, true);
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    ok(o);
    assert!(stderr.contains("resumed at step 6"), "{stderr}");
    let (a, b) = (
        Adapter::load(&reference, &candle_core::Device::Cpu).unwrap(),
        Adapter::load(&out, &candle_core::Device::Cpu).unwrap(),
    );
    assert_maps_close(&a.tensors, &b.tensors, 0.0, "resumed");
}

#[cfg(feature = "mpi")]
#[test]
fn finetuning_and_distillation_run_data_parallel_too() {
    use offsite::emulator::Package;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (model, train, _) = model_data_emulator(d, 8);
    let steps = [
        "--max-steps",
        "2",
        "--batch-size",
        "4",
        "--block-size",
        "16",
        "--lr",
        "1e-3",
    ];
    for ranks in [None, Some(2)] {
        let name = ranks.map_or("single".to_string(), |n| format!("ranks{n}"));
        let ft = d.join(format!("ft-{name}"));
        let mut args = vec!["finetune", s(&model), "--data", s(&train), "-o", s(&ft)];
        args.extend(steps);
        run_offsite(ranks, &args);
        let emu = d.join(format!("distilled-{name}.offsite"));
        let distill = [
            "--distill",
            s(&train),
            "--distill-steps",
            "2",
            "--block-size",
            "16",
        ];
        let mut extra = distill.to_vec();
        extra.extend(["--batch-size", "4", "--lr", "1e-3"]);
        run_offsite(ranks, &emulator_args(&model, &emu, &extra));
    }
    let cpu = candle_core::Device::Cpu;
    let load =
        |p: &Path| candle_core::safetensors::load(p.join("model.safetensors"), &cpu).unwrap();
    let (a, b) = (load(&d.join("ft-single")), load(&d.join("ft-ranks2")));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert!(max_abs_diff(t, &b[name]) < 1e-5, "finetune: {name}");
    }
    let pa = Package::load(&d.join("distilled-single.offsite"), &cpu).unwrap();
    let pb = Package::load(&d.join("distilled-ranks2.offsite"), &cpu).unwrap();
    assert_maps_close(&pa.tensors, &pb.tensors, 1e-5, "distillation");
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_launch_by_mpiexec_without_the_feature_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_, train, emu) = model_data_emulator(d, 6);
    let o = Command::new(env!("CARGO_BIN_EXE_offsite"))
        .args([
            "tune",
            s(&emu),
            "--data",
            s(&train),
            "-o",
            s(&d.join("a.safetensors")),
        ])
        .env("PMI_SIZE", "2")
        .env("PMI_RANK", "0")
        .output()
        .unwrap();
    fails(o, &["mpiexec", "2 processes", "--features mpi"]);
    assert!(!d.join("a.safetensors").exists());
}
