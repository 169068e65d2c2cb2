//! Faults (issue 19): `kill -9` at seeded random moments of `tune`, `emulator --distill`,
//! `experiment` and `plug`; a full disk; an output that cannot be written; two processes writing one output.
//! Afterwards every output either does not exist or is complete and valid, `--resume` finishes
//! with exactly the weights of an uninterrupted run, and earlier outputs are intact.
//!
//! `cargo test --release --test faults` runs 6 kill points per command; `FAULT_KILLS=20 cargo
//! test --release --test faults -- --ignored` is the long run.

use candle_core::Device;
use offsite::emulator::{Adapter, Package};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{model_data_emulator, offsite, ok, s, tune_briefly};

/// The tensors of an adapter or package at `path`, by name, as f32 values.
fn weights(path: &Path) -> Result<Vec<(String, Vec<f32>)>, String> {
    let tensors = if offsite::io::offsite_file::format(path).as_deref()
        == Some(offsite::io::offsite_file::PACKAGE_FORMAT)
    {
        Package::load(path, &Device::Cpu)
            .map_err(|e| e.to_string())?
            .tensors
    } else {
        Adapter::load(path, &Device::Cpu)
            .map_err(|e| e.to_string())?
            .tensors
    };
    Ok(tensors
        .iter()
        .map(|(n, t)| {
            (
                n.to_string(),
                t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            )
        })
        .collect())
}

/// Leftover temporary files of atomic writes in `dir` (none may stay behind a finished run).
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().contains(".tmp"))
        .collect()
}

/// A command's arguments for a given output path.
type ArgsFor = Box<dyn Fn(&Path) -> Vec<String>>;

/// One command under test.
struct Subject {
    name: &'static str,
    args: ArgsFor,
    /// Whether the command resumes (`--resume` is appended for the second run).
    resumes: bool,
}

/// Runs `subject` once to the end (the reference), then `kills` times killed with SIGKILL at a
/// seeded moment within the reference's duration and run again to the end.
fn kill_campaign(dir: &Path, subject: &Subject, kills: usize, seed: u64) -> (usize, usize) {
    let reference = dir.join(format!("{}-ref", subject.name));
    let started = Instant::now();
    ok(offsite(
        &(subject.args)(&reference)
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    ));
    let duration = started.elapsed();
    let expected = check_output(&reference)
        .expect("the reference run's output is valid")
        .expect("the reference run is complete");
    let mut state = seed;
    let (mut killed_mid, mut lost) = (0, 0);
    for k in 0..kills {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let at = duration.mul_f64((state >> 11) as f64 / (1u64 << 53) as f64);
        let out = dir.join(format!("{}-{k}", subject.name));
        let mut child = Command::new(env!("CARGO_BIN_EXE_offsite"))
            .args((subject.args)(&out))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(at);
        // SIGKILL: no destructor, no flush, as a killed job on a shared machine.
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok();
        child.wait().unwrap();
        if !finished {
            killed_mid += 1;
        }
        // Whatever is there is either absent or complete.
        if out.exists() {
            if let Err(e) = check_output(&out) {
                lost += 1;
                eprintln!("{} killed at {at:?}: a broken output: {e}", subject.name);
            }
        }
        // Finishing the job: resumed, or simply run again.
        let mut args = (subject.args)(&out);
        if subject.resumes {
            args.push("--resume".into());
        }
        ok(offsite(
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        let got = check_output(&out)
            .expect("the finished run's output is valid")
            .expect("the finished run is complete");
        assert!(
            got == expected,
            "{} killed at {at:?} then finished: other weights than the uninterrupted run",
            subject.name
        );
    }
    assert!(temporaries(dir).is_empty(), "{:?}", temporaries(dir));
    (killed_mid, lost)
}

/// What a finished output holds, comparable between runs: the weights of an adapter, a package
/// or a plugged HF directory, or an experiment's rows (timings left out). `Ok(None)`: an
/// experiment folder whose every file is valid but whose report is not written yet.
type Contents = Option<Vec<(String, Vec<f32>)>>;

/// Checks the output at `out`: absent parts aside, every file in it must be complete and valid.
fn check_output(out: &Path) -> Result<Contents, String> {
    if out.join("rows").is_dir() {
        return check_experiment(out);
    }
    if out.is_dir() {
        // A plugged model: complete once config.json is there (written last).
        if !out.join("config.json").exists() {
            return Err("a directory without config.json".into());
        }
        let c = offsite::io::checkpoint::load(out, &Device::Cpu).map_err(|e| e.to_string())?;
        return Ok(Some(
            c.tensors
                .iter()
                .map(|(n, t)| {
                    (
                        n.to_string(),
                        t.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                    )
                })
                .collect(),
        ));
    }
    weights(out).map(Some)
}

/// An experiment folder: every JSON file parses, every safetensors file passes its seal (the
/// append-only metrics logs are repaired by the resume and not checked); once the report is
/// there, the rows' figures.
fn check_experiment(out: &Path) -> Result<Contents, String> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, files);
            } else {
                files.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(out, &mut files);
    for f in &files {
        let name = f.file_name().unwrap().to_string_lossy();
        if name.starts_with('.') {
            continue; // a temporary of a killed writer: never read, removed by the next write
        }
        let broken = |e: String| Err(format!("{}: {e}", f.display()));
        if name.ends_with(".json") {
            let text = std::fs::read_to_string(f).unwrap();
            if let Err(e) = serde_json::from_str::<serde_json::Value>(&text) {
                return broken(e.to_string());
            }
        } else if name.ends_with(".safetensors") || name.ends_with(".offsite") {
            if let Err(e) = offsite::io::tensor_file::check(f) {
                return broken(e.to_string());
            }
        }
    }
    if !out.join("report.json").exists() {
        return Ok(None);
    }
    let mut rows = Vec::new();
    for e in std::fs::read_dir(out.join("rows")).unwrap().flatten() {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
        let figures: Vec<f32> = v
            .as_object()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != "seconds")
            .filter_map(|(_, x)| x.as_f64().map(|f| f as f32))
            .collect();
        rows.push((e.file_name().to_string_lossy().into_owned(), figures));
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Some(rows))
}

/// The tiny model's split (1 + 2 + 1 layers) and the runs' shared training flags.
const SPLIT: [&str; 6] = ["--bottom", "1", "--top", "1", "--keep", "2"];
const RUN: [&str; 4] = ["--block-size", "16", "--save-every", "2"];

fn subjects(dir: &Path) -> Vec<Subject> {
    let (model, train, emu) = model_data_emulator(dir, 21);
    let adapter = dir.join("tuned.safetensors");
    tune_briefly(&emu, &train, &adapter, &[]);
    let (m1, t1, e1) = (model.clone(), train.clone(), emu.clone());
    let (m2, t2) = (model.clone(), train.clone());
    let (m3, t3) = (model.clone(), train.clone());
    let strings = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        Subject {
            name: "tune",
            args: Box::new(move |out| {
                strings(&[
                    "tune",
                    s(&e1),
                    "--data",
                    s(&t1),
                    "-o",
                    s(out),
                    "--max-steps",
                    "24",
                    "--block-size",
                    "16",
                    "--lr",
                    "1e-2",
                    "--save-every",
                    "2",
                ])
            }),
            resumes: true,
        },
        Subject {
            name: "distill",
            args: Box::new(move |out| {
                let mut a = vec!["emulator", s(&m2)];
                a.extend(SPLIT);
                a.extend(["--distill", s(&t2), "--distill-steps", "16"]);
                a.extend(RUN);
                a.extend(["-o", s(out)]);
                strings(&a)
            }),
            resumes: true,
        },
        Subject {
            name: "experiment",
            args: Box::new(move |out| {
                let mut a = vec!["experiment", s(&m3), "--train", s(&t3), "--val", s(&t3)];
                a.extend(["--test", s(&t3), "--max-steps", "6"]);
                a.extend(SPLIT);
                a.extend(RUN);
                a.extend(["-o", s(out)]);
                strings(&a)
            }),
            resumes: true,
        },
        Subject {
            name: "plug",
            args: Box::new(move |out| strings(&["plug", s(&m1), s(&adapter), "-o", s(out)])),
            resumes: false,
        },
    ]
}

fn run_kills(kills: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut table = String::from(
        "| command | kills | killed mid-run | broken outputs |\n| --- | ---: | ---: | ---: |\n",
    );
    for (i, subject) in subjects(dir.path()).iter().enumerate() {
        let (mid, lost) = kill_campaign(dir.path(), subject, kills, 77 + i as u64);
        table += &format!("| {} | {kills} | {mid} | {lost} |\n", subject.name);
        assert_eq!(lost, 0, "{}: broken outputs after a kill", subject.name);
    }
    eprintln!("{table}");
    if let Ok(out) = std::env::var("FAULT_REPORT") {
        std::fs::write(out, table).unwrap();
    }
}

#[test]
fn killed_commands_leave_no_broken_output_and_finish_identically() {
    run_kills(6);
}

#[test]
#[ignore = "the long run: FAULT_KILLS (default 20) kills per command, table to FAULT_REPORT"]
fn long_kill_campaign() {
    let kills = std::env::var("FAULT_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    run_kills(kills);
}

/// Runs `offsite ARGS` under bash with a 2 KiB file-size limit (SIGXFSZ ignored, so a write
/// past it fails with EFBIG as on a full disk).
fn offsite_with_small_disk(args: &[&str]) -> std::process::Output {
    let mut cmd = vec!["trap '' XFSZ; ulimit -f 2; exec \"$0\" \"$@\"".to_string()];
    cmd.push(env!("CARGO_BIN_EXE_offsite").to_string());
    cmd.extend(args.iter().map(|a| a.to_string()));
    Command::new("bash").arg("-c").args(&cmd).output().unwrap()
}

#[test]
fn a_full_disk_or_unwritable_output_is_a_clear_error_and_earlier_outputs_stay_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (_, train, emu) = model_data_emulator(dir.path(), 22);
    let adapter = dir.path().join("a.safetensors");
    let tune = |out: &Path, seed: &str| {
        vec![
            "tune".to_string(),
            s(&emu).into(),
            "--data".into(),
            s(&train).into(),
            "-o".into(),
            s(out).into(),
            "--max-steps".into(),
            "2".into(),
            "--block-size".into(),
            "16".into(),
            "--seed".into(),
            seed.into(),
        ]
    };
    let args = tune(&adapter, "1");
    ok(offsite(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let before = std::fs::read(&adapter).unwrap();

    // The same output again, on a disk too small for it: an error naming a file and the cause;
    // the earlier adapter untouched, no temporary file left.
    let args = tune(&adapter, "2");
    let o = offsite_with_small_disk(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "a write past the limit must fail");
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        err.contains("too large") || err.contains("No space"),
        "{err}"
    );
    assert!(err.contains(&*dir.path().to_string_lossy()), "{err}");
    assert_eq!(std::fs::read(&adapter).unwrap(), before);
    assert!(
        temporaries(dir.path()).is_empty(),
        "{:?}",
        temporaries(dir.path())
    );

    // An output where nothing can be written (even as root: procfs).
    let nowhere = Path::new("/proc/offsite-test/a.safetensors");
    let args = tune(nowhere, "1");
    let o = offsite(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !err.contains("panicked"), "{err}");
    assert!(err.contains("/proc/offsite-test"), "{err}");
}

#[test]
fn two_processes_writing_one_output_leave_one_complete_file() {
    let dir = tempfile::tempdir().unwrap();
    let (_, train, emu) = model_data_emulator(dir.path(), 23);
    let out = dir.path().join("shared.safetensors");
    let args = |seed: &str, o: &Path| {
        let mut a = vec!["tune", s(&emu), "--data", s(&train), "-o"];
        a.extend([
            s(o),
            "--max-steps",
            "6",
            "--block-size",
            "16",
            "--lr",
            "1e-2",
        ]);
        a.extend(["--seed", seed]);
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    let solo = |seed: &str, o: &Path| {
        ok(offsite(
            &args(seed, o).iter().map(String::as_str).collect::<Vec<_>>(),
        ));
        weights(o).unwrap()
    };
    let a = solo("1", &dir.path().join("a.safetensors"));
    let b = solo("2", &dir.path().join("b.safetensors"));
    for _ in 0..3 {
        let spawn = |seed: &str| {
            Command::new(env!("CARGO_BIN_EXE_offsite"))
                .args(args(seed, &out))
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (p1, p2) = (spawn("1"), spawn("2"));
        let (o1, o2) = (
            p1.wait_with_output().unwrap(),
            p2.wait_with_output().unwrap(),
        );
        for o in [&o1, &o2] {
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(!err.contains("panicked"), "{err}");
        }
        assert!(o1.status.success() || o2.status.success());
        let got = weights(&out).unwrap();
        assert!(
            got == a || got == b,
            "the shared output is neither run's adapter"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `offsite ARGS` with `dir` mounted read-only for it alone: a bind mount in a private
/// mount namespace (`unshare -rm`, so no privilege is needed where user namespaces are allowed
/// and nothing outside the command sees it). `None` where this machine allows no such mount,
/// with the reason.
fn offsite_with_read_only(dir: &Path, args: &[&str]) -> Result<std::process::Output, String> {
    let script =
        r#"d=$1; shift; mount --bind "$d" "$d" && mount -o remount,ro,bind "$d" && exec "$@""#;
    let o = Command::new("unshare")
        .args([
            "-rm",
            "bash",
            "-c",
            script,
            "_",
            s(dir),
            env!("CARGO_BIN_EXE_offsite"),
        ])
        .args(args)
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    let err = String::from_utf8_lossy(&o.stderr);
    // The mount itself failed: the machine does not allow it, nothing was run.
    if err.contains("unshare:") || err.contains("mount:") {
        return Err(err.trim().to_string());
    }
    Ok(o)
}

#[test]
fn a_read_only_output_folder_is_a_clear_error_and_its_outputs_stay_intact() {
    let dir = tempfile::tempdir().unwrap();
    let (model, train, emu) = model_data_emulator(dir.path(), 23);
    let out = dir.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let adapter = out.join("a.safetensors");
    let plugged = out.join("plugged");
    let tune = |seed: &str| {
        let args = [
            "tune",
            s(&emu),
            "--data",
            s(&train),
            "-o",
            s(&adapter),
            "--max-steps",
            "2",
            "--block-size",
            "16",
            "--seed",
            seed,
        ];
        args.map(String::from).to_vec()
    };
    let plug = ["plug", s(&model), s(&adapter), "-o", s(&plugged)]
        .map(String::from)
        .to_vec();
    ok(offsite(
        &tune("1").iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    ok(offsite(
        &plug.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let before: Vec<(PathBuf, Vec<u8>)> = [adapter.clone(), plugged.join("config.json")]
        .into_iter()
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    for args in [tune("2"), plug] {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = match offsite_with_read_only(&out, &args) {
            Ok(o) => o,
            Err(why) => {
                // Said, not silently passed: the case needs a mount this machine refuses.
                eprintln!("read-only folder case not run here: {why}");
                return;
            }
        };
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "{args:?} wrote into a read-only folder"
        );
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains("Read-only file system"), "{err}");
        assert!(err.contains(&*out.to_string_lossy()), "{err}");
    }
    for (path, bytes) in before {
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{}", path.display());
    }
    assert!(temporaries(&out).is_empty(), "{:?}", temporaries(&out));
    assert!(plugged.join("config.json").is_file());
}
