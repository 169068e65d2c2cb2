//! Seeded fuzzing of every format a user hands us (issue 19): GGUF, safetensors (sealed as
//! offsite writes them, and plain as other tools do), the `.offsite` package, the adapter, HF
//! `config.json` and `tokenizer.json`, JSONL data and training checkpoints. Each case damages a
//! valid file (bit flips, truncation, 8-byte fields set to huge / negative / overflowing values,
//! JSON values replaced by wrong types, huge numbers, deep nesting or invalid UTF-8, safetensors
//! headers with overlapping offsets, wrong dtypes and shapes, duplicate / missing / extra
//! tensors, NaN weights) and loads it in-process. Every case must end in `Ok` or in an error that
//! names the file — never a panic, a hang, or an allocation larger than the file justifies.
//!
//! `cargo test --release --test fuzz` runs a bounded campaign (`FUZZ_CASES`, default 150 per
//! format); `FUZZ_CASES=10000 FUZZ_REPORT=docs/reliability-fuzz.md cargo test --release --test
//! fuzz -- --ignored` is the long run, and writes its table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::Path;
use std::time::Duration;

mod common;
#[path = "fuzz/formats.rs"]
mod formats;
#[path = "fuzz/mutations.rs"]
mod mutations;
use formats::{formats, Format, Kind};
use mutations::{damage_bytes, damage_json, damage_safetensors, Rng};

// ---- the largest single allocation made by the armed thread ----

struct Tracking;

thread_local! {
    static ARMED: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = ARMED.try_with(|armed| {
        if armed.get() {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
        }
    });
}

#[global_allocator]
static GLOBAL: Tracking = Tracking;

// ---- campaigns: damaged files loaded on a watched thread ----

/// How one case ended.
#[derive(Debug, Default, Clone)]
struct Tally {
    cases: usize,
    accepted: usize,
    /// Accepted, and what was loaded differs from the intact file's.
    changed: Vec<String>,
    refused: usize,
    panics: Vec<String>,
    hangs: Vec<String>,
    unnamed: Vec<String>,
    oversize: Vec<String>,
    largest_ratio: f64,
}

/// Total bytes of the input a load reads (the file, or the directory's files).
fn input_bytes(p: &Path) -> u64 {
    if p.is_dir() {
        std::fs::read_dir(p)
            .unwrap()
            .map(|e| input_bytes(&e.unwrap().path()))
            .sum()
    } else {
        std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
    }
}

/// Runs `cases` damaged versions of `format` and tallies them.
fn campaign(format: &Format, cases: usize, seed: u64) -> Tally {
    let original = std::fs::read(&format.file).unwrap();
    let mut rng = Rng(seed);
    let mut tally = Tally::default();
    // Each format's allowance: what its valid file needs at the most, times 4, or 128 bytes per
    // input byte (a regex or trie built from a damaged token string), plus 1 MiB for fixed
    // tables: bounded by the input, where a header claiming a 100 GB tensor is not.
    let (intact, base) = run_one(format, &original);
    let intact = match intact {
        Outcome::Ok(d) => d,
        Outcome::Err(e) | Outcome::Panic(e) => {
            // The quiet panic hook is installed: say it before failing.
            eprintln!("{}: the intact file does not load: {e}", format.name);
            panic!("{}: the intact file does not load: {e}", format.name)
        }
        Outcome::Hang => panic!("{}: the intact file hangs", format.name),
    };
    let allowance = |input: u64| (4 * base).max(128 * input as usize) + (1 << 20);
    let name = format
        .file
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let shown_at = format
        .load_at
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    for i in 0..cases {
        let (bytes, what) = match format.kind {
            // Truncation at every boundary first for the small files, then random damage.
            Kind::Binary { .. } | Kind::Jsonl if i < 40 && original.len() < 4096 => {
                let len = i * original.len() / 40;
                (
                    original[..len].to_vec(),
                    format!("truncated to {len} bytes"),
                )
            }
            Kind::Binary { header } => damage_bytes(&original, header, &mut rng),
            Kind::SafeTensors => match rng.below(3) {
                0 => damage_bytes(&original, 256, &mut rng),
                _ => damage_safetensors(&original, &mut rng),
            },
            Kind::Json => damage_json(&String::from_utf8_lossy(&original), &mut rng),
            Kind::Jsonl => {
                let text = String::from_utf8_lossy(&original);
                let lines: Vec<&str> = text.lines().collect();
                let k = rng.below(lines.len());
                let (line, what) = damage_json(lines[k], &mut rng);
                let mut out = Vec::new();
                for (j, l) in lines.iter().enumerate() {
                    if j == k {
                        out.extend_from_slice(&line);
                    } else {
                        out.extend_from_slice(l.as_bytes());
                    }
                    out.push(b'\n');
                }
                (out, format!("line {}: {what}", k + 1))
            }
        };
        if std::env::var_os("FUZZ_TRACE").is_some() {
            eprintln!("{} case {i}: {what}", format.name);
        }
        let (outcome, largest) = run_one(format, &bytes);
        tally.cases += 1;
        tally.largest_ratio = tally
            .largest_ratio
            .max(largest as f64 / input_bytes(&format.load_at).max(1) as f64);
        if largest > allowance(input_bytes(&format.load_at)) {
            tally
                .oversize
                .push(format!("{what}: one allocation of {largest} bytes"));
        }
        match outcome {
            Outcome::Ok(d) => {
                tally.accepted += 1;
                if d != intact {
                    tally.changed.push(what);
                }
            }
            Outcome::Err(msg) => {
                tally.refused += 1;
                if !msg.contains(&name) && !msg.contains(&shown_at) {
                    tally.unnamed.push(format!("{what}: {msg}"));
                }
            }
            Outcome::Panic(msg) => {
                if std::env::var_os("FUZZ_TRACE").is_some() {
                    let n = tally.panics.len();
                    let kept = std::env::temp_dir().join(format!("fuzz-panic-{n}-{name}"));
                    std::fs::write(kept, &bytes).unwrap();
                }
                tally.panics.push(format!("{what}: {msg}"))
            }
            Outcome::Hang => tally.hangs.push(what),
        }
    }
    std::fs::write(&format.file, &original).unwrap();
    tally
}

enum Outcome {
    Ok(String),
    Err(String),
    Panic(String),
    Hang,
}

/// Writes `bytes` over the format's file and loads it on a watched thread.
fn run_one(format: &Format, bytes: &[u8]) -> (Outcome, usize) {
    std::fs::write(&format.file, bytes).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let load = format.load;
    let at = format.load_at.clone();
    std::thread::spawn(move || {
        LARGEST.with(|l| l.set(0));
        ARMED.with(|a| a.set(true));
        let r = std::panic::catch_unwind(|| load(&at));
        ARMED.with(|a| a.set(false));
        let largest = LARGEST.with(|l| l.get());
        let _ = tx.send((r, largest));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok((Ok(Ok(d)), l)) => (Outcome::Ok(d), l),
        Ok((Ok(Err(e)), l)) => (Outcome::Err(e), l),
        Ok((Err(p), l)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            (Outcome::Panic(msg), l)
        }
        Err(_) => (Outcome::Hang, 0),
    }
}

fn run_campaign(cases: usize) -> Vec<(&'static str, bool, Tally)> {
    let dir = tempfile::tempdir().unwrap();
    // Panics are caught and counted; their default message would only clutter the output.
    std::panic::set_hook(Box::new(|_| {}));
    let results: Vec<(&'static str, bool, Tally)> = formats(dir.path())
        .iter()
        .enumerate()
        .map(|(i, f)| (f.name, f.sealed, campaign(f, cases, 1000 + i as u64)))
        .collect();
    let _ = std::panic::take_hook();
    results
}

fn table(results: &[(&'static str, bool, Tally)]) -> String {
    let mut s = String::from(
        "| format | sealed | cases | refused | accepted, same contents | accepted, other contents | panics | hangs | errors not naming the file | oversize allocations | largest allocation / input |\n\
         | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n",
    );
    for (name, sealed, t) in results {
        s += &format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.2} |\n",
            if *sealed { "yes" } else { "no" },
            t.cases,
            t.refused,
            t.accepted - t.changed.len(),
            t.changed.len(),
            t.panics.len(),
            t.hangs.len(),
            t.unnamed.len(),
            t.oversize.len(),
            t.largest_ratio
        );
    }
    s
}

fn check(results: &[(&'static str, bool, Tally)]) {
    let mut problems = Vec::new();
    let none = Vec::new();
    for (name, sealed, t) in results {
        // Unsealed text formats may legitimately be edited: a changed value that still parses
        // is the user's. A sealed file may never load other contents.
        let changed = if *sealed { &t.changed } else { &none };
        for (kind, list) in [
            ("accepted with other contents", changed),
            ("panic", &t.panics),
            ("hang", &t.hangs),
            ("error without the file's name", &t.unnamed),
            ("oversize allocation", &t.oversize),
        ] {
            for p in list.iter().take(3) {
                problems.push(format!("{name}: {kind}: {p}"));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{}\n{}",
        table(results),
        problems.join("\n")
    );
}

#[test]
fn bounded_campaign_over_every_format() {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    let results = run_campaign(cases);
    eprintln!("{}", table(&results));
    check(&results);
}

#[test]
#[ignore = "the long campaign: FUZZ_CASES (default 10000) per format, table to FUZZ_REPORT"]
fn long_campaign_over_every_format() {
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let started = std::time::Instant::now();
    let results = run_campaign(cases);
    let t = table(&results);
    if let Ok(out) = std::env::var("FUZZ_REPORT") {
        let body = format!(
            "{t}\n{cases} cases per format, seeded (the same cases on every run), {:.0} s.\n",
            started.elapsed().as_secs_f64()
        );
        std::fs::write(out, body).unwrap();
    }
    eprintln!("{t}");
    check(&results);
}
