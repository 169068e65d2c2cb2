//! The rooms depend one way (README, docs/architecture.md): cli → experiment → eval → emulator →
//! train → data → io → peft → model → ops. A module may use the rooms after it, never one
//! before it; test code (a file's `#[cfg(test)]` part, `tests.rs`, `*_tests.rs`) may use any.

use std::path::{Path, PathBuf};

const ROOMS: [&str; 10] = [
    "cli",
    "experiment",
    "eval",
    "emulator",
    "train",
    "data",
    "io",
    "peft",
    "model",
    "ops",
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The part of a source file that is not test code.
fn non_test(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    if name == "tests.rs" || name.ends_with("_tests.rs") {
        return None;
    }
    let text = std::fs::read_to_string(path).ok()?;
    Some(match text.find("#[cfg(test)]") {
        Some(at) => text[..at].to_string(),
        None => text,
    })
}

/// Every `crate::ROOM` a text names (paths in `use` lines and inline alike).
fn rooms_used(text: &str) -> Vec<&'static str> {
    let mut used = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let word: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if let Some(room) = ROOMS.iter().find(|r| **r == word) {
            used.push(*room);
        }
        // `use crate::{a, b}` names several rooms at once.
        if rest.starts_with('{') {
            let group = &rest[1..rest.find('}').unwrap_or(rest.len())];
            for part in group.split(',') {
                let word = part.trim().split("::").next().unwrap_or("");
                if let Some(room) = ROOMS.iter().find(|r| **r == word) {
                    used.push(*room);
                }
            }
        }
    }
    used
}

#[test]
fn no_room_uses_a_room_before_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for path in &files {
        let rel = path.strip_prefix(&src).unwrap();
        let Some(room) = rel.iter().next().and_then(|c| c.to_str()) else {
            continue;
        };
        let Some(rank) = ROOMS.iter().position(|r| *r == room) else {
            continue; // lib.rs, main.rs, error.rs: above every room
        };
        let Some(text) = non_test(path) else { continue };
        checked += 1;
        for used in rooms_used(&text) {
            let used_rank = ROOMS.iter().position(|r| *r == used).unwrap();
            if used_rank < rank {
                wrong.push(format!("{} uses crate::{used}", rel.display()));
            }
        }
    }
    assert!(
        checked > 100,
        "only {checked} files checked: is src/ laid out as the rooms?"
    );
    wrong.sort();
    wrong.dedup();
    assert!(
        wrong.is_empty(),
        "modules using a room before their own:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checker_sees_grouped_and_inline_paths() {
    assert_eq!(
        rooms_used("use crate::{model::Model, io};\nlet x = crate::cli::run();"),
        ["model", "io", "cli"]
    );
}
