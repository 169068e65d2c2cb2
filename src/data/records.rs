//! Reading data files: language-modelling corpora (JSONL `{"text"}` or plain `.txt`) and
//! prompt/answer records (JSONL `{"context", "choices", "label"}` or `{"prompt", "completion"}`).
//! Empty or malformed lines are errors naming the file and line.

use crate::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// One prompt/answer record.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A multiple-choice record; training uses `choices[label]` as the answer.
    Choice {
        /// The question / context.
        context: String,
        /// The candidate continuations.
        choices: Vec<String>,
        /// Index of the right choice.
        label: usize,
    },
    /// A prompt and its completion.
    Completion {
        /// The prompt.
        prompt: String,
        /// The answer to learn.
        completion: String,
    },
}

impl Record {
    /// The context and the answer the model should learn to produce after it.
    pub fn prompt_and_answer(&self) -> (&str, &str) {
        match self {
            Record::Choice {
                context,
                choices,
                label,
            } => (context, &choices[*label]),
            Record::Completion { prompt, completion } => (prompt, completion),
        }
    }
}

fn read_to_string(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

/// Parses every line of a JSONL file as a JSON object (error names the file and line).
fn jsonl_objects(path: &Path) -> Result<Vec<(usize, serde_json::Map<String, Value>)>> {
    let text = read_to_string(path)?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        let at = |msg: String| Error::format(path, format!("line {lineno}: {msg}"));
        if line.trim().is_empty() {
            return Err(at("empty line".into()));
        }
        match serde_json::from_str::<Value>(line) {
            Ok(Value::Object(map)) => out.push((lineno, map)),
            Ok(_) => return Err(at("not a JSON object".into())),
            Err(e) => return Err(at(format!("malformed JSON ({e})"))),
        }
    }
    if out.is_empty() {
        return Err(Error::format(path, "no records"));
    }
    Ok(out)
}

fn string_field(
    path: &Path,
    lineno: usize,
    map: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<String> {
    match map.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(Error::format(
            path,
            format!("line {lineno}: `{key}` is not a string"),
        )),
        None => Err(Error::format(
            path,
            format!("line {lineno}: no `{key}` field"),
        )),
    }
}

/// Whether `path` is a JSONL file (by extension).
fn is_jsonl(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("jsonl") | Some("json") | Some("ndjson")
    )
}

/// Documents of a language-modelling corpus: each `{"text": …}` line of a JSONL file, or the
/// whole of a `.txt` file as one document.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    if !is_jsonl(path) {
        let text = read_to_string(path)?;
        if text.trim().is_empty() {
            return Err(Error::format(path, "the file is empty"));
        }
        return Ok(vec![text]);
    }
    jsonl_objects(path)?
        .into_iter()
        .map(|(lineno, map)| {
            let text = string_field(path, lineno, &map, "text")?;
            if text.is_empty() {
                return Err(Error::format(path, format!("line {lineno}: empty `text`")));
            }
            Ok(text)
        })
        .collect()
}

/// Prompt/answer records of a JSONL file.
pub fn read_records(path: &Path) -> Result<Vec<Record>> {
    jsonl_objects(path)?
        .into_iter()
        .map(|(lineno, map)| record(path, lineno, &map))
        .collect()
}

fn record(path: &Path, lineno: usize, map: &serde_json::Map<String, Value>) -> Result<Record> {
    let at = |msg: &str| Error::format(path, format!("line {lineno}: {msg}"));
    if map.contains_key("context") {
        let context = string_field(path, lineno, map, "context")?;
        let choices = match map.get("choices") {
            Some(Value::Array(a)) if !a.is_empty() => a
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| at("`choices` must be strings"))?,
            _ => return Err(at("`choices` must be a non-empty list of strings")),
        };
        let label =
            map.get("label")
                .and_then(Value::as_u64)
                .ok_or_else(|| at("`label` must be a non-negative integer"))? as usize;
        if label >= choices.len() {
            return Err(at(&format!(
                "`label` {label} is out of range for {} choices",
                choices.len()
            )));
        }
        Ok(Record::Choice {
            context,
            choices,
            label,
        })
    } else if map.contains_key("prompt") {
        let prompt = string_field(path, lineno, map, "prompt")?;
        let completion = string_field(path, lineno, map, "completion")?;
        if completion.is_empty() {
            return Err(at("empty `completion`"));
        }
        Ok(Record::Completion { prompt, completion })
    } else {
        Err(at(
            "expected {\"context\", \"choices\", \"label\"} or {\"prompt\", \"completion\"}",
        ))
    }
}

/// What kind of data a JSONL file holds, judged by its first line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    /// `{"text"}` lines or a plain-text file.
    Text,
    /// Prompt/answer records.
    Records,
}

/// Tells a corpus from a record file.
pub fn data_kind(path: &Path) -> Result<DataKind> {
    if !is_jsonl(path) {
        return Ok(DataKind::Text);
    }
    let objects = jsonl_objects(path)?;
    let (_, first) = &objects[0];
    Ok(if first.contains_key("text") {
        DataKind::Text
    } else {
        DataKind::Records
    })
}

/// What one file's records are, for evaluation: each kind has its own measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// `{"text"}` lines or a plain-text file: perplexity.
    Text,
    /// `{"context", "choices", "label"}`: multiple-choice accuracy.
    MultipleChoice,
    /// `{"prompt", "completion"}`: the loss of the completion given the prompt.
    Completion,
}

impl RecordKind {
    /// The fields that make the kind, for messages.
    pub fn describe(self) -> &'static str {
        match self {
            RecordKind::Text => "text ({\"text\"})",
            RecordKind::MultipleChoice => "multiple-choice ({\"context\", \"choices\", \"label\"})",
            RecordKind::Completion => "prompt/completion ({\"prompt\", \"completion\"})",
        }
    }
}

/// The kind of every record of `path` (a `.txt` file is text). A file that mixes kinds, or a
/// line of none, is an error naming the line, so the measure chosen from it fits every record.
pub fn record_kind(path: &Path) -> Result<RecordKind> {
    if !is_jsonl(path) {
        return Ok(RecordKind::Text);
    }
    let mut first: Option<RecordKind> = None;
    for (lineno, map) in jsonl_objects(path)? {
        let has = |k: &str| map.contains_key(k);
        let kind = if has("text") {
            RecordKind::Text
        } else if has("context") && has("choices") && has("label") {
            RecordKind::MultipleChoice
        } else if has("prompt") && has("completion") {
            RecordKind::Completion
        } else {
            return Err(Error::format(
                path,
                format!(
                    "line {lineno}: not a record offsite knows: expected {}, {} or {}",
                    RecordKind::Text.describe(),
                    RecordKind::MultipleChoice.describe(),
                    RecordKind::Completion.describe()
                ),
            ));
        };
        match first {
            None => first = Some(kind),
            Some(k) if k != kind => {
                return Err(Error::format(
                    path,
                    format!(
                        "line {lineno} is a {} record but line 1 is {}: one kind per file",
                        kind.describe(),
                        k.describe()
                    ),
                ))
            }
            Some(_) => {}
        }
    }
    first.ok_or_else(|| Error::format(path, "no records"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn reads_both_record_kinds_and_texts() {
        let d = tempfile::tempdir().unwrap();
        let p = file(
            &d,
            "r.jsonl",
            "{\"context\": \"Q?\", \"choices\": [\" a\", \" b\"], \"label\": 1}\n{\"prompt\": \"P\", \"completion\": \" C\"}\n",
        );
        let r = read_records(&p).unwrap();
        assert_eq!(r[0].prompt_and_answer(), ("Q?", " b"));
        assert_eq!(r[1].prompt_and_answer(), ("P", " C"));
        assert_eq!(data_kind(&p).unwrap(), DataKind::Records);
        let t = file(
            &d,
            "t.jsonl",
            "{\"text\": \"hello\"}\n{\"text\": \"world\"}\n",
        );
        assert_eq!(read_texts(&t).unwrap(), ["hello", "world"]);
        assert_eq!(data_kind(&t).unwrap(), DataKind::Text);
        let txt = file(&d, "c.txt", "one document\n\nstill one");
        assert_eq!(read_texts(&txt).unwrap().len(), 1);
    }

    #[test]
    fn record_kinds_are_detected_and_mixing_is_named() {
        let d = tempfile::tempdir().unwrap();
        let mc = "{\"context\": \"Q\", \"choices\": [\" a\"], \"label\": 0}\n";
        let pc = "{\"prompt\": \"P\", \"completion\": \" C\"}\n";
        let tx = "{\"text\": \"t\"}\n";
        for (body, kind) in [
            (mc.repeat(2), RecordKind::MultipleChoice),
            (pc.to_string(), RecordKind::Completion),
            (tx.repeat(3), RecordKind::Text),
        ] {
            assert_eq!(record_kind(&file(&d, "k.jsonl", &body)).unwrap(), kind);
        }
        assert_eq!(
            record_kind(&file(&d, "k.txt", "words")).unwrap(),
            RecordKind::Text
        );
        let err = record_kind(&file(&d, "m.jsonl", &format!("{mc}{mc}{tx}")))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("m.jsonl") && err.contains("line 3 is a text"),
            "{err}"
        );
        let err = record_kind(&file(&d, "n.jsonl", "{\"question\": \"Q\"}\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: not a record"), "{err}");
    }

    #[test]
    fn bad_lines_name_file_and_line() {
        let d = tempfile::tempdir().unwrap();
        for (body, needle) in [
            (
                "{\"text\": \"a\"}\n\n{\"text\": \"b\"}\n",
                "line 2: empty line",
            ),
            (
                "{\"text\": \"a\"}\n{\"text\": 3}\n",
                "line 2: `text` is not a string",
            ),
            ("{\"text\": \"a\"}\n{oops\n", "line 2: malformed JSON"),
        ] {
            let p = file(&d, "bad.jsonl", body);
            let err = read_texts(&p).unwrap_err().to_string();
            assert!(err.contains("bad.jsonl") && err.contains(needle), "{err}");
        }
        let p = file(
            &d,
            "r.jsonl",
            "{\"context\": \"Q\", \"choices\": [\"a\"], \"label\": 4}\n",
        );
        let err = read_records(&p).unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("out of range"),
            "{err}"
        );
    }
}
