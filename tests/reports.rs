//! The committed reports under docs/results are shared as they are (with the other party, in
//! papers): they name files by name and sha256, never by a machine's absolute path.

use std::path::{Path, PathBuf};

/// Every report file under `dir` (Markdown, JSON, JSON lines, SVG), recursively.
fn reports(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            reports(&path, out);
        } else if path
            .extension()
            .is_some_and(|e| ["md", "json", "jsonl", "svg"].contains(&&*e.to_string_lossy()))
        {
            out.push(path);
        }
    }
}

/// The absolute paths in `text`: a `/` at the start of a word (after a space, quote, backtick,
/// bracket or `=`) followed by a folder name and another `/`.
fn absolute_paths(text: &str) -> Vec<String> {
    let bytes = text.as_bytes();
    let mut found = Vec::new();
    for (i, &b) in bytes.iter().enumerate() {
        let starts_word = i == 0 || b" \t\n\"'`([=".contains(&bytes[i - 1]);
        if b != b'/' || !starts_word {
            continue;
        }
        let rest = &text[i + 1..];
        let name_len = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
            .unwrap_or(rest.len());
        if name_len > 0 && rest[name_len..].starts_with('/') {
            let end = rest
                .find(|c: char| c.is_whitespace() || "\"'`)".contains(c))
                .unwrap_or(rest.len());
            found.push(format!("/{}", &rest[..end]));
        }
    }
    found
}

#[test]
fn the_path_finder_finds_paths_and_leaves_rates_alone() {
    assert_eq!(
        absolute_paths("model \"/root/.cache/m.gguf\", 300 tok/s, a/b"),
        ["/root/.cache/m.gguf"]
    );
    assert!(absolute_paths("1.2 GB/s and ../shared/data/x.jsonl").is_empty());
}

#[test]
fn committed_reports_name_no_absolute_path() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/results");
    let mut files = Vec::new();
    reports(&root, &mut files);
    assert!(files.len() > 20, "only {} reports found", files.len());
    let offenders: Vec<String> = files
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            absolute_paths(&text)
                .into_iter()
                .map(move |p| format!("{}: {p}", f.display()))
        })
        .collect();
    assert!(
        offenders.is_empty(),
        "{} absolute paths, e.g.\n{}",
        offenders.len(),
        offenders[..offenders.len().min(10)].join("\n")
    );
}
