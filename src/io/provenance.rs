//! What a report says about where it came from: each input named by its file name, size and
//! SHA-256 — never the machine's path, since reports are shared with the other party and pasted
//! into papers — and the run: the command line as typed, the tool's version and commit, the CPU
//! and the precision the products ran in.

use crate::model::Precision;
use crate::Result;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A file (or model directory) as a report names it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// The file or folder name, without the folders above it.
    pub name: String,
    /// SHA-256 (lowercase hex) of the file, or of a model directory's weights file.
    pub sha256: String,
    /// Its size in bytes.
    pub bytes: u64,
}

impl FileRef {
    /// Names `path`, hashing the file (or a model directory's weights).
    pub fn of(path: &Path) -> Result<Self> {
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        let file = if path.is_dir() {
            ["model.safetensors", super::hf_dir::OFFSITE_WEIGHTS]
                .iter()
                .map(|w| path.join(w))
                .find(|w| w.is_file())
                .ok_or_else(|| crate::Error::format(path, "a folder with no model weights"))?
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::metadata(&file)
            .map_err(|e| crate::Error::io(&file, e))?
            .len();
        Ok(FileRef {
            name,
            sha256: super::fetch::file_sha256(&file)?,
            bytes,
        })
    }

    /// `` `name` (sha256 0123456789ab…, 12.3 MB) ``: how a Markdown report shows it.
    pub fn markdown(&self) -> String {
        format!(
            "`{}` (sha256 {}…, {})",
            self.name,
            &self.sha256[..12.min(self.sha256.len())],
            human_bytes(self.bytes)
        )
    }
}

/// [`FileRef::markdown`] of `path`, or just its name when it cannot be read.
pub fn markdown(path: &Path) -> String {
    FileRef::of(path).map_or_else(
        |_| {
            format!(
                "`{}`",
                path.file_name().unwrap_or_default().to_string_lossy()
            )
        },
        |f| f.markdown(),
    )
}

fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}

/// `value` with every string that names an existing file or folder by a path replaced by the
/// file name: settings written for a report keep their meaning and lose the machine's folders.
pub fn without_paths(value: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) if s.contains(std::path::MAIN_SEPARATOR) && Path::new(&s).exists() => {
            Value::String(
                Path::new(&s)
                    .file_name()
                    .map_or(s.clone(), |n| n.to_string_lossy().into_owned()),
            )
        }
        Value::Array(a) => Value::Array(a.into_iter().map(without_paths).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, without_paths(v))).collect())
        }
        other => other,
    }
}

/// How a run was made.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The command line as typed (the program called `offsite`, whatever path ran it).
    pub command: Vec<String>,
    /// The tool's version.
    pub version: String,
    /// The git commit it was built from (`-dirty` with uncommitted changes; `unknown` outside
    /// a checkout).
    pub commit: String,
    /// The CPU's model name and the instruction sets the kernels dispatch on.
    pub cpu: String,
    /// The precision the products ran in (what was asked, as this CPU can run it).
    pub precision: String,
}

impl RunInfo {
    /// This process's run, with products in `precision`.
    pub fn current(precision: Precision) -> Self {
        let mut command = vec!["offsite".to_string()];
        command.extend(std::env::args().skip(1));
        RunInfo {
            command,
            version: env!("CARGO_PKG_VERSION").into(),
            commit: env!("OFFSITE_GIT_COMMIT").into(),
            cpu: cpu_description(),
            precision: precision_description(precision),
        }
    }

    /// The command line quoted for a POSIX shell, to paste and rerun.
    pub fn command_line(&self) -> String {
        self.command
            .iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// A Markdown paragraph: the command, then version, commit, CPU and precision.
    pub fn markdown(&self) -> String {
        format!(
            "Made by `{}` (offsite {}, commit {}; {}; products in {}).\n\n",
            self.command_line().replace('\n', "\\n"),
            self.version,
            self.commit,
            self.cpu,
            self.precision
        )
    }
}

/// `precision` as this CPU runs it, with the kernel of its bf16 products (`bf16 on
/// AVX512-BF16`; plain `f32` where nothing runs in bf16).
pub fn precision_description(precision: Precision) -> String {
    let effective = precision.effective();
    match crate::ops::gemm_bf16::kernel() {
        Some(k) if !effective.is_f32() => format!("{effective} on {}", k.name()),
        _ => effective.to_string(),
    }
}

/// `arg` as one shell word.
fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-./:=,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

/// `AMD EPYC 9R14 (AVX-512, AVX512-BF16)`: the model name from /proc/cpuinfo and the
/// instruction sets offsite's kernels choose between.
pub fn cpu_description() -> String {
    let name = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string());
    let mut features = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            features.push("AVX-512");
        } else if std::arch::is_x86_feature_detected!("avx2") {
            features.push("AVX2");
        }
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            features.push("AVX512-BF16");
        }
    }
    if crate::ops::gemm_bf16::kernel() == Some(crate::ops::gemm_bf16::Kernel::AmxTiles) {
        features.push("AMX");
    }
    if features.is_empty() {
        name
    } else {
        format!("{name} ({})", features.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_without_their_folders() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, "abc").unwrap();
        let f = FileRef::of(&path).unwrap();
        assert_eq!(f.name, "data.jsonl");
        assert_eq!(f.bytes, 3);
        // sha256("abc")
        assert!(f.sha256.starts_with("ba7816bf8f01cfea"));
        let md = f.markdown();
        assert_eq!(md, "`data.jsonl` (sha256 ba7816bf8f01…, 3 B)");
        assert!(!md.contains(&dir.path().display().to_string()));
        assert!(FileRef::of(&dir.path().join("missing")).is_err());
        let settings = serde_json::json!({"train": path, "n": [1, {"template": "a/b {text}"}]});
        assert_eq!(
            without_paths(settings),
            serde_json::json!({"train": "data.jsonl", "n": [1, {"template": "a/b {text}"}]})
        );
    }

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        assert_eq!(shell_quote("--keep"), "--keep");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let run = RunInfo::current(Precision::F32);
        assert_eq!(run.command[0], "offsite");
        assert_eq!(run.precision, "f32");
        assert!(!run.commit.is_empty() && !run.cpu.is_empty());
    }
}
