//! The paper's multiple-choice benchmarks, converted from their Hugging Face datasets (exported to
//! JSONL: one dataset row per line, the dataset's column names as keys) into [`McRecord`]s whose
//! context and choices are exactly what lm-evaluation-harness scores.
//!
//! lm-eval (EleutherAI, `main` at commit `4e7e0d47f`) scores each choice `c` as the continuation
//! `target_delimiter + c` of the context `doc_to_text(doc)`; the delimiter is a single space for
//! every task here, and zero-shot contexts carry nothing else (no description, no trailing
//! delimiter). Our choices therefore carry the delimiter: every choice is `" " + c`, so that
//! `context + choice` is the string lm-eval scores. The gold index is lm-eval's `doc_to_target`.
//!
//! Prompts reproduced, per task (`{x}` is dataset column `x`; files under `lm_eval/tasks/`):
//!
//! | task | context (`doc_to_text`) | choices (`doc_to_choice`) | gold (`doc_to_target`) | file read |
//! |---|---|---|---|---|
//! | `piqa` | `"Question: {goal}\nAnswer:"` | `[sol1, sol2]` | `label` (an integer) | `piqa/piqa.yaml` |
//! | `hellaswag` | `pre(activity_label + ": " + ctx_a + " " + capitalize(ctx_b))` | `[pre(e) for e in endings]` | `int(label)` (`label` is a digit string) | `hellaswag/hellaswag.yaml`, `hellaswag/utils.py` |
//! | `openbookqa` | `{question_stem}` (as is) | `choices.text` | index of `answerKey.lstrip()` in `choices.label` | `openbookqa/openbookqa.yaml` |
//! | `arc_easy` | `"Question: {question}\nAnswer:"` | `choices.text` | index of `answerKey` in `choices.label` | `arc/arc_easy.yaml` |
//! | `arc_challenge` | as `arc_easy` | as `arc_easy` | as `arc_easy` | `arc/arc_challenge.yaml` (includes `arc_easy.yaml`) |
//! | `sciq` | `support.lstrip() + "\nQuestion: " + {question} + "\nAnswer:"` | `[distractor1, distractor2, distractor3, correct_answer]` | `3` | `sciq/sciq.yaml` |
//! | `webqs` | `"Question: {question}\nAnswer:"` | `answers` sorted, minus every answer that starts with the answer kept before it | every index (all are accepted) | `webqs/webqs.yaml`, `webqs/utils.py` |
//! | `race` | `"Article: " + article + "\n\n"` + earlier questions of the article with their answers + the last question as is | the last question's `options[0..4]` | the last question's `answer` letter (A–D) | `race/race.yaml`, `race/preprocess_race.py` |
//!
//! where HellaSwag's `pre(t)` strips `t`, replaces `" [title]"` with `". "`, deletes every
//! `[...]` tag (a `[`, the fewest characters other than a newline, a `]`) and replaces `"  "`
//! with `" "` (one left-to-right pass, like Python's `str.replace`), and `capitalize` is
//! Python's `str.capitalize` (first character title-cased, **the rest lower-cased**). "Strip"
//! uses Python's whitespace (Unicode White_Space plus U+001C–U+001F).
//!
//! Notes on the tasks that do not map one row to one plain record:
//!
//! * **webqs** has several accepted answers. lm-eval makes them all choices and all gold
//!   (`doc_to_target` returns every index) and reports only `exact_match`: 1 when the model's
//!   greedy continuation equals *any* of the choices. [`McRecord::golds`] holds those indices
//!   (`label` is 0, the first of them); `acc` over such records is trivially 1, which is why
//!   lm-eval does not report it. [`Task::metrics`] gives each task's lm-eval metrics.
//! * **race**: lm-eval's dataset `EleutherAI/race` (config `high`, split `test`) has one row per
//!   *article* with a `problems` list; the public HF dataset `race` (`ehovy/race`) has one row per
//!   *question* (`example_id`, `article`, `answer`, `question`, `options`). [`load_task`] regroups
//!   the per-question rows the way lm-eval's former `race.py` built its per-article documents
//!   (`_collate_data`: rows grouped by identical `article` text, articles in order of first
//!   appearance, questions in file order) — evidently how `EleutherAI/race` was made, though not
//!   checked against that dataset's files. Each article makes one record: the context is
//!   `"Article: " + article + "\n\n"`, then every question but the last with its answer — a
//!   question ending in `"  _  ."` (fill-in-the-blank) as `question[:-5] + answer + "\n"` (the
//!   answer fills the blank), any other as `"Question: " + question + "\nAnswer: " + answer +
//!   "\n"` — then the **last** question appended as is (no `"Question: "` prefix, no `"Answer:"`
//!   suffix, and the blank marker kept even for a fill-in-the-blank question: the choice is
//!   scored after `"…  _  ."`). The choices are that last question's four options.
//!   [`Task::convert`] on a single row builds the record of an article holding only that
//!   question: `"Article: " + article + "\n\n" + question`.
//!   `EleutherAI/race`'s own `problems` column (a Python `repr` string) is not read.

use crate::data::records::{read_records, Record};
use crate::{Error, Result};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::path::Path;

mod python_text;
use python_text::{hellaswag_preprocess, py_capitalize, py_isspace};

/// lm-eval's target delimiter, which every choice here starts with.
const DELIM: &str = " ";

/// A multiple-choice item ready for scoring: lm-eval's context and continuations.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct McRecord {
    /// The context (lm-eval's zero-shot `doc_to_text`).
    pub context: String,
    /// The continuations to score, each starting with the target delimiter (`" "`).
    pub choices: Vec<String>,
    /// The gold choice (for webqs, the first of [`Self::golds`]).
    pub label: usize,
    /// Every index lm-eval accepts as correct when a task has several (webqs); empty when
    /// `label` is the only one. See [`Self::gold_indices`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub golds: Vec<usize>,
}

impl McRecord {
    /// Every index lm-eval counts as correct: `golds`, or just `label` when `golds` is empty.
    pub fn gold_indices(&self) -> &[usize] {
        if self.golds.is_empty() {
            std::slice::from_ref(&self.label)
        } else {
            &self.golds
        }
    }

    /// Whether choice `i` is correct.
    pub fn is_gold(&self, i: usize) -> bool {
        self.gold_indices().contains(&i)
    }
}

/// A multiple-choice benchmark of the paper, named as lm-eval names it.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// PIQA (`baber/piqa`).
    #[value(name = "piqa")]
    Piqa,
    /// HellaSwag (`Rowan/hellaswag`).
    #[value(name = "hellaswag")]
    Hellaswag,
    /// OpenBookQA (`allenai/openbookqa`, config `main`).
    #[value(name = "openbookqa")]
    Openbookqa,
    /// ARC-Easy (`allenai/ai2_arc`, config `ARC-Easy`).
    #[value(name = "arc_easy")]
    ArcEasy,
    /// ARC-Challenge (`allenai/ai2_arc`, config `ARC-Challenge`).
    #[value(name = "arc_challenge")]
    ArcChallenge,
    /// SciQ (`allenai/sciq`).
    #[value(name = "sciq")]
    Sciq,
    /// WebQuestions (`stanfordnlp/web_questions`).
    #[value(name = "webqs")]
    Webqs,
    /// RACE (per-question rows of HF `race`, config `high`), one record per article.
    #[value(name = "race")]
    Race,
}

impl Task {
    /// lm-eval's name of the task (also our `--task` value).
    pub fn name(self) -> &'static str {
        match self {
            Task::Piqa => "piqa",
            Task::Hellaswag => "hellaswag",
            Task::Openbookqa => "openbookqa",
            Task::ArcEasy => "arc_easy",
            Task::ArcChallenge => "arc_challenge",
            Task::Sciq => "sciq",
            Task::Webqs => "webqs",
            Task::Race => "race",
        }
    }

    /// The metrics of the task's lm-eval `metric_list`.
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Task::Webqs => &["exact_match"],
            Task::Race => &["acc"],
            _ => &["acc", "acc_norm"],
        }
    }

    /// Converts one HF-schema JSON row. Errors are `Error::format(path, "line {lineno}: …")`
    /// naming the missing or ill-typed field (or the out-of-range label).
    ///
    /// A RACE row becomes the record of an article holding only that question; [`load_task`]
    /// groups a file's questions by article as lm-eval does.
    pub fn convert(self, row: &Value, path: &Path, lineno: usize) -> Result<McRecord> {
        let row = Row::new(row, path, lineno)?;
        match self {
            Task::Piqa => {
                let context = format!("Question: {}\nAnswer:", row.str("goal")?);
                let choices = vec![row.str("sol1")?, row.str("sol2")?];
                let label = row.index("label")?;
                row.record(context, choices, label)
            }
            Task::Hellaswag => {
                let ctx = format!(
                    "{} {}",
                    row.str("ctx_a")?,
                    py_capitalize(&row.str("ctx_b")?)
                );
                let context =
                    hellaswag_preprocess(&format!("{}: {ctx}", row.str("activity_label")?));
                let choices = row
                    .str_list("endings")?
                    .iter()
                    .map(|e| hellaswag_preprocess(e))
                    .collect();
                let label = row.digit_label("label")?;
                row.record(context, choices, label)
            }
            Task::Openbookqa => {
                let context = row.str("question_stem")?;
                let key = row.str("answerKey")?;
                let (choices, label) = row.lettered_choices(key.trim_start_matches(py_isspace))?;
                row.record(context, choices, label)
            }
            Task::ArcEasy | Task::ArcChallenge => {
                let context = format!("Question: {}\nAnswer:", row.str("question")?);
                let key = row.str("answerKey")?;
                let (choices, label) = row.lettered_choices(&key)?;
                row.record(context, choices, label)
            }
            Task::Sciq => {
                let support = row.str("support")?;
                let context = format!(
                    "{}\nQuestion: {}\nAnswer:",
                    support.trim_start_matches(py_isspace),
                    row.str("question")?
                );
                let choices = vec![
                    row.str("distractor1")?,
                    row.str("distractor2")?,
                    row.str("distractor3")?,
                    row.str("correct_answer")?,
                ];
                row.record(context, choices, 3)
            }
            Task::Webqs => {
                let context = format!("Question: {}\nAnswer:", row.str("question")?);
                let mut answers = row.str_list("answers")?;
                if answers.is_empty() {
                    return Err(row.err("`answers` is empty"));
                }
                // utils._remove_prefixes: sort (by code point; UTF-8 byte order is the same),
                // then drop every answer that starts with the last one kept (duplicates too).
                answers.sort();
                let mut choices: Vec<String> = Vec::with_capacity(answers.len());
                for a in answers {
                    if choices
                        .last()
                        .is_none_or(|kept| !a.starts_with(kept.as_str()))
                    {
                        choices.push(a);
                    }
                }
                let golds = (0..choices.len()).collect();
                let mut record = row.record(context, choices, 0)?;
                record.golds = golds;
                Ok(record)
            }
            Task::Race => {
                let article = row.str("article")?;
                let problem = RaceProblem::from_row(&row)?;
                Ok(race_record(&article, &[problem]))
            }
        }
    }
}

/// Reads a JSONL export of a task's HF dataset and converts every line (errors name file and
/// line; empty lines are errors).
///
/// For [`Task::Race`] the per-question rows are grouped into one record per article (see the
/// module documentation).
pub fn load_task(task: Task, path: &Path) -> Result<Vec<McRecord>> {
    let rows = jsonl_values(path)?;
    if task != Task::Race {
        return rows
            .iter()
            .map(|(lineno, row)| task.convert(row, path, *lineno))
            .collect();
    }
    // lm-eval's former race.py `_collate_data`: a dict from article text to its questions, in
    // order of first appearance.
    let mut articles: Vec<(String, Vec<RaceProblem>)> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (lineno, value) in &rows {
        let row = Row::new(value, path, *lineno)?;
        let article = row.str("article")?;
        let problem = RaceProblem::from_row(&row)?;
        match index.get(&article) {
            Some(&i) => articles[i].1.push(problem),
            None => {
                index.insert(article.clone(), articles.len());
                articles.push((article, vec![problem]));
            }
        }
    }
    Ok(articles
        .iter()
        .map(|(article, problems)| race_record(article, problems))
        .collect())
}

/// Reads our own format: JSONL `{"context", "choices", "label"}` (choices used as given, i.e.
/// they already carry their leading space if any). A `{"prompt", "completion"}` line is an error.
///
/// An optional `"golds"` list of indices (as [`McRecord`] serializes for webqs) is read too.
pub fn load_mc(path: &Path) -> Result<Vec<McRecord>> {
    let records = read_records(path)?;
    // `read_records` rejects empty lines, so record i is line i + 1.
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    records
        .into_iter()
        .zip(text.lines())
        .enumerate()
        .map(|(i, (record, line))| {
            let lineno = i + 1;
            let at = |msg: &str| Error::format(path, format!("line {lineno}: {msg}"));
            let Record::Choice {
                context,
                choices,
                label,
            } = record
            else {
                return Err(at(
                    "a {\"prompt\", \"completion\"} record; multiple choice needs {\"context\", \"choices\", \"label\"}",
                ));
            };
            let value: Value = serde_json::from_str(line)
                .map_err(|e| at(&format!("malformed JSON ({e})")))?;
            let golds = match value.get("golds") {
                None => Vec::new(),
                Some(Value::Array(a)) => a
                    .iter()
                    .map(|g| {
                        g.as_u64()
                            .map(|g| g as usize)
                            .filter(|&g| g < choices.len())
                    })
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| {
                        at(&format!(
                            "`golds` must be indices below the {} choices",
                            choices.len()
                        ))
                    })?,
                Some(_) => return Err(at("`golds` must be a list of indices")),
            };
            Ok(McRecord {
                context,
                choices,
                label,
                golds,
            })
        })
        .collect()
}

/// Every line of a JSONL file as a JSON value, with its line number.
fn jsonl_values(path: &Path) -> Result<Vec<(usize, Value)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            return Err(Error::format(path, format!("line {lineno}: empty line")));
        }
        let value = serde_json::from_str(line)
            .map_err(|e| Error::format(path, format!("line {lineno}: malformed JSON ({e})")))?;
        out.push((lineno, value));
    }
    if out.is_empty() {
        return Err(Error::format(path, "no records"));
    }
    Ok(out)
}

/// One JSON row being converted, with what its errors must name.
struct Row<'a> {
    map: &'a Map<String, Value>,
    path: &'a Path,
    lineno: usize,
}

impl<'a> Row<'a> {
    fn new(value: &'a Value, path: &'a Path, lineno: usize) -> Result<Self> {
        match value {
            Value::Object(map) => Ok(Row { map, path, lineno }),
            _ => Err(Error::format(
                path,
                format!("line {lineno}: not a JSON object"),
            )),
        }
    }

    fn err(&self, msg: impl std::fmt::Display) -> Error {
        Error::format(self.path, format!("line {}: {msg}", self.lineno))
    }

    /// The value at a dotted key (`choices.text`).
    fn get(&self, key: &str) -> Result<&'a Value> {
        let mut parts = key.split('.');
        let first = parts.next().unwrap_or(key);
        let mut value = self.map.get(first);
        for part in parts {
            value = value.and_then(|v| v.get(part));
        }
        value.ok_or_else(|| self.err(format!("no `{key}` field")))
    }

    fn str(&self, key: &str) -> Result<String> {
        match self.get(key)? {
            Value::String(s) => Ok(s.clone()),
            _ => Err(self.err(format!("`{key}` is not a string"))),
        }
    }

    fn str_list(&self, key: &str) -> Result<Vec<String>> {
        match self.get(key)? {
            Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.err(format!("`{key}` is not a list of strings"))),
            _ => Err(self.err(format!("`{key}` is not a list of strings"))),
        }
    }

    /// A label stored as a JSON integer (lm-eval uses the column's value as is).
    fn index(&self, key: &str) -> Result<usize> {
        match self.get(key)? {
            Value::Number(n) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or_default() as usize),
            other => Err(self.err(format!(
                "`{key}` must be a non-negative integer, found {other}"
            ))),
        }
    }

    /// A label lm-eval renders through a template (`"{{label}}"`): a digit string or an integer.
    fn digit_label(&self, key: &str) -> Result<usize> {
        match self.get(key)? {
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s
                .parse()
                .map_err(|_| self.err(format!("`{key}` {s:?} is too large"))),
            Value::Number(n) if n.as_u64().is_some() => Ok(n.as_u64().unwrap_or_default() as usize),
            other => Err(self.err(format!(
                "`{key}` must be a digit string or a non-negative integer, found {other}"
            ))),
        }
    }

    /// ARC/OpenBookQA: `choices.text`, and the position of `key` in `choices.label`.
    fn lettered_choices(&self, key: &str) -> Result<(Vec<String>, usize)> {
        let texts = self.str_list("choices.text")?;
        let labels = self.str_list("choices.label")?;
        if labels.len() != texts.len() {
            return Err(self.err(format!(
                "`choices.label` has {} entries but `choices.text` has {}",
                labels.len(),
                texts.len()
            )));
        }
        let label = labels.iter().position(|l| l == key).ok_or_else(|| {
            self.err(format!(
                "`answerKey` {key:?} is not among `choices.label` {labels:?}"
            ))
        })?;
        Ok((texts, label))
    }

    /// A record with the delimiter prepended to each choice; `label` must be in range.
    fn record(&self, context: String, choices: Vec<String>, label: usize) -> Result<McRecord> {
        if label >= choices.len() {
            return Err(self.err(format!(
                "`label` {label} is out of range for {} choices",
                choices.len()
            )));
        }
        Ok(McRecord {
            context,
            choices: choices.into_iter().map(|c| format!("{DELIM}{c}")).collect(),
            label,
            golds: Vec::new(),
        })
    }
}

/// One question of a RACE article.
struct RaceProblem {
    question: String,
    /// The first four options (lm-eval's `doc_to_choice` takes `options[0..4]`).
    options: Vec<String>,
    /// The answer letter as an index (`A`–`D`).
    answer: usize,
}

impl RaceProblem {
    fn from_row(row: &Row) -> Result<Self> {
        let question = row.str("question")?;
        let mut options = row.str_list("options")?;
        if options.len() < 4 {
            return Err(row.err(format!(
                "`options` has {} entries, RACE needs 4",
                options.len()
            )));
        }
        options.truncate(4);
        let answer = match row.str("answer")?.as_str() {
            "A" => 0,
            "B" => 1,
            "C" => 2,
            "D" => 3,
            other => {
                return Err(row.err(format!(
                    "`answer` {other:?} is not one of \"A\", \"B\", \"C\", \"D\""
                )))
            }
        };
        Ok(RaceProblem {
            question,
            options,
            answer,
        })
    }

    fn answer_text(&self) -> &str {
        &self.options[self.answer]
    }
}

/// lm-eval's `preprocess_race.doc_to_text` / `doc_to_choice` / `doc_to_target` for an article
/// and its questions (non-empty; the last one is asked).
fn race_record(article: &str, problems: &[RaceProblem]) -> McRecord {
    let (last, earlier) = problems.split_last().expect("an article has a question");
    let mut context = format!("Article: {article}\n\n");
    for p in earlier {
        if p.question.ends_with("  _  .") {
            // question[:-5]: the suffix is ASCII, so 5 characters are 5 bytes.
            context.push_str(&p.question[..p.question.len() - 5]);
            context.push_str(p.answer_text());
            context.push('\n');
        } else {
            context.push_str(&format!(
                "Question: {}\nAnswer: {}\n",
                p.question,
                p.answer_text()
            ));
        }
    }
    context.push_str(&last.question);
    McRecord {
        context,
        choices: last.options.iter().map(|o| format!("{DELIM}{o}")).collect(),
        label: last.answer,
        golds: Vec::new(),
    }
}

#[cfg(test)]
mod tests;
