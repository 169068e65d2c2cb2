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
