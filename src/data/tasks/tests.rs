//! Each task's conversion against lm-eval's prompts, on hand-written dataset rows, and the
//! loaders' error messages.

use super::*;
use serde_json::json;
use std::path::PathBuf;

fn p() -> PathBuf {
    PathBuf::from("test.jsonl")
}

fn convert(task: Task, row: Value) -> McRecord {
    task.convert(&row, &p(), 1).unwrap()
}

fn err(task: Task, row: Value) -> String {
    task.convert(&row, &p(), 7).unwrap_err().to_string()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn file(dir: &tempfile::TempDir, name: &str, lines: &[Value]) -> PathBuf {
    let path = dir.path().join(name);
    let text: Vec<String> = lines.iter().map(Value::to_string).collect();
    std::fs::write(&path, text.join("\n") + "\n").unwrap();
    path
}

#[test]
fn piqa() {
    let r = convert(
        Task::Piqa,
        json!({
            "goal": "How do I keep a cast iron pan from rusting?",
            "sol1": "Wash it and leave it to soak overnight.",
            "sol2": "Dry it on the stove and rub in a thin coat of oil.",
            "label": 1
        }),
    );
    assert_eq!(
        r.context,
        "Question: How do I keep a cast iron pan from rusting?\nAnswer:"
    );
    assert_eq!(
        r.choices,
        strings(&[
            " Wash it and leave it to soak overnight.",
            " Dry it on the stove and rub in a thin coat of oil."
        ])
    );
    assert_eq!(r.label, 1);
    assert!(r.golds.is_empty());
    assert_eq!(r.gold_indices(), &[1]);
}

#[test]
fn hellaswag() {
    let r = convert(
        Task::Hellaswag,
        json!({
            "ind": 4,
            "activity_label": "Home and Garden",
            "ctx_a": "[header] How to repot a fern [title] Choose a slightly larger pot.",
            "ctx_b": "then Loosen the Roots gently with your fingers",
            "ctx": "unused",
            "endings": [
                " and water the fern right away. [step] Keep it out of direct sun. ",
                ", then pack fresh soil around them.",
                "[substeps] and throw the fern away.",
                "and place it  in the freezer."
            ],
            "source_id": "wikihow~1234",
            "split": "val",
            "split_type": "indomain",
            "label": "1"
        }),
    );
    // "Home and Garden: [header] How to repot a fern [title] Choose a slightly larger pot.
    // Then loosen the roots gently with your fingers" -> " [title]" becomes ". ", tags go,
    // the double space left behind collapses.
    assert_eq!(
        r.context,
        "Home and Garden: How to repot a fern. Choose a slightly larger pot. Then loosen the roots gently with your fingers"
    );
    assert_eq!(
        r.choices,
        strings(&[
            " and water the fern right away. Keep it out of direct sun.",
            " , then pack fresh soil around them.",
            "  and throw the fern away.",
            " and place it in the freezer."
        ])
    );
    assert_eq!(r.label, 1);
}

#[test]
fn hellaswag_preprocess_details() {
    // Tags never span a newline; an unclosed bracket stays.
    assert_eq!(hellaswag_preprocess("a [b\n] c [d]"), "a [b\n] c ");
    assert_eq!(hellaswag_preprocess("x [a[b] y ]"), "x y ]");
    // One left-to-right pass: three spaces become two.
    assert_eq!(hellaswag_preprocess("a   b"), "a  b");
    // Python strips the information separators too.
    assert_eq!(hellaswag_preprocess("\u{1f} a \u{a0}"), "a");
    assert_eq!(py_capitalize("the NBA game"), "The nba game");
    assert_eq!(py_capitalize("ǆemal"), "ǅemal");
    assert_eq!(py_capitalize("ßIG"), "Ssig");
    assert_eq!(py_capitalize("ﬁNE"), "Fine");
    assert_eq!(py_capitalize("ᾳΣ"), "ᾼς");
    assert_eq!(py_capitalize("ᾷ"), "\u{391}\u{342}\u{345}");
    assert_eq!(py_capitalize("ΣΑΣ"), "Σας");
    assert_eq!(py_capitalize(""), "");
    // An integer label is also accepted (lm-eval renders `{{label}}` either way).
    let row = json!({"activity_label": "A", "ctx_a": "b", "ctx_b": "", "endings": ["x", "y"], "label": 0});
    let r = convert(Task::Hellaswag, row);
    assert_eq!((r.context.as_str(), r.label), ("A: b", 0));
}

#[test]
fn openbookqa() {
    let r = convert(
        Task::Openbookqa,
        json!({
            "id": "7-980",
            "question_stem": "The sun is responsible for",
            "choices": {
                "text": ["puppies learning new tricks", "plants sprouting, blooming and wilting",
                         "the moon rising", "children growing up"],
                "label": ["A", "B", "C", "D"]
            },
            "answerKey": " B"
        }),
    );
    assert_eq!(r.context, "The sun is responsible for");
    assert_eq!(
        r.choices,
        strings(&[
            " puppies learning new tricks",
            " plants sprouting, blooming and wilting",
            " the moon rising",
            " children growing up"
        ])
    );
    assert_eq!(r.label, 1);
}

#[test]
fn arc() {
    let row = json!({
        "id": "Mercury_7175875",
        "question": "Which of these is a renewable resource?",
        "choices": {"text": ["coal", "oil", "wind", "natural gas"], "label": ["A", "B", "C", "D"]},
        "answerKey": "C"
    });
    for task in [Task::ArcEasy, Task::ArcChallenge] {
        let r = convert(task, row.clone());
        assert_eq!(
            r.context,
            "Question: Which of these is a renewable resource?\nAnswer:"
        );
        assert_eq!(
            r.choices,
            strings(&[" coal", " oil", " wind", " natural gas"])
        );
        assert_eq!(r.label, 2);
    }
    // Numeric labels, three choices.
    let r = convert(
        Task::ArcChallenge,
        json!({
            "id": "NYSEDREGENTS_2015_4_12",
            "question": "What melts ice fastest?",
            "choices": {"text": ["salt", "sand", "sawdust"], "label": ["1", "2", "3"]},
            "answerKey": "1"
        }),
    );
    assert_eq!(r.context, "Question: What melts ice fastest?\nAnswer:");
    assert_eq!(r.choices, strings(&[" salt", " sand", " sawdust"]));
    assert_eq!(r.label, 0);
    // ARC does not strip the key (OpenBookQA does).
    let e = err(
        Task::ArcEasy,
        json!({"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": " A"}),
    );
    assert!(e.contains("line 7") && e.contains("answerKey"), "{e}");
}

#[test]
fn sciq() {
    let r = convert(
        Task::Sciq,
        json!({
            "question": "What gas do plants absorb from the air?",
            "distractor3": "helium",
            "distractor1": "oxygen",
            "distractor2": "nitrogen",
            "correct_answer": "carbon dioxide",
            "support": " \nPlants take in carbon dioxide through their stomata. "
        }),
    );
    assert_eq!(
        r.context,
        "Plants take in carbon dioxide through their stomata. \nQuestion: What gas do plants absorb from the air?\nAnswer:"
    );
    assert_eq!(
        r.choices,
        strings(&[" oxygen", " nitrogen", " helium", " carbon dioxide"])
    );
    assert_eq!(r.label, 3);
    // Empty support: the context starts with the newline.
    let r = convert(
        Task::Sciq,
        json!({"question": "Q?", "distractor1": "a", "distractor2": "b", "distractor3": "c",
               "correct_answer": "d", "support": ""}),
    );
    assert_eq!(r.context, "\nQuestion: Q?\nAnswer:");
}

#[test]
fn webqs() {
    let r = convert(
        Task::Webqs,
        json!({
            "url": "http://www.freebase.com/view/en/jamaica",
            "question": "what currency does jamaica use?",
            "answers": ["Jamaican dollar", "JMD", "Jamaican dollar", "Jamaican dollars"]
        }),
    );
    assert_eq!(
        r.context,
        "Question: what currency does jamaica use?\nAnswer:"
    );
    // Sorted; the duplicate and "Jamaican dollars" (prefixed by "Jamaican dollar") drop.
    assert_eq!(r.choices, strings(&[" JMD", " Jamaican dollar"]));
    assert_eq!(r.label, 0);
    assert_eq!(r.golds, vec![0, 1]);
    assert!(r.is_gold(1));
    let e = err(Task::Webqs, json!({"question": "q", "answers": []}));
    assert!(
        e.contains("line 7") && e.contains("`answers` is empty"),
        "{e}"
    );
}

fn race_row(id: &str, article: &str, question: &str, answer: &str) -> Value {
    json!({
        "example_id": id,
        "article": article,
        "answer": answer,
        "question": question,
        "options": ["a dog", "a cat", "a bird", "a fish"]
    })
}

#[test]
fn race_single_question() {
    let r = convert(
        Task::Race,
        race_row("high1.txt", "Tom has a pet.", "Tom has  _  .", "A"),
    );
    // The asked question is appended as is, blank marker included.
    assert_eq!(r.context, "Article: Tom has a pet.\n\nTom has  _  .");
    assert_eq!(
        r.choices,
        strings(&[" a dog", " a cat", " a bird", " a fish"])
    );
    assert_eq!(r.label, 0);
}

#[test]
fn race_groups_articles() {
    let dir = tempfile::tempdir().unwrap();
    let a1 = "Tom has a pet. It barks.";
    let a2 = "Ann saw a bird.";
    let path = file(
        &dir,
        "race.jsonl",
        &[
            race_row("high1.txt", a1, "Tom has  _  .", "A"),
            race_row("high2.txt", a2, "What did Ann see?", "C"),
            race_row("high1.txt", a1, "What does the pet do?", "A"),
            race_row("high1.txt", a1, "The pet is probably  _  .", "B"),
        ],
    );
    let records = load_task(Task::Race, &path).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(
        records[0].context,
        "Article: Tom has a pet. It barks.\n\n\
         Tom has a dog\n\
         Question: What does the pet do?\nAnswer: a dog\n\
         The pet is probably  _  ."
    );
    assert_eq!(records[0].label, 1);
    assert_eq!(
        records[1].context,
        "Article: Ann saw a bird.\n\nWhat did Ann see?"
    );
    assert_eq!(records[1].label, 2);
    assert_eq!(records[1].choices[2], " a bird");
}

#[test]
fn race_errors() {
    let mut row = race_row("h.txt", "x", "q", "E");
    assert!(err(Task::Race, row.clone()).contains("`answer` \"E\""));
    row["options"] = json!(["a", "b", "c"]);
    row["answer"] = json!("A");
    let e = err(Task::Race, row);
    assert!(
        e.contains("line 7") && e.contains("`options` has 3 entries"),
        "{e}"
    );
}

#[test]
fn load_task_converts_every_line_and_names_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 0});
    let path = file(&dir, "piqa.jsonl", &[good.clone(), good.clone()]);
    let records = load_task(Task::Piqa, &path).unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1].choices, strings(&[" a", " b"]));

    // Missing field: names the file, the line and the field.
    let path = file(
        &dir,
        "missing.jsonl",
        &[good.clone(), json!({"goal": "g", "sol1": "a", "label": 0})],
    );
    let e = load_task(Task::Piqa, &path).unwrap_err().to_string();
    assert!(
        e.contains("missing.jsonl") && e.contains("line 2: no `sol2` field"),
        "{e}"
    );

    // Ill-typed field.
    let path = file(
        &dir,
        "typed.jsonl",
        &[json!({"goal": "g", "sol1": "a", "sol2": "b", "label": "1"})],
    );
    let e = load_task(Task::Piqa, &path).unwrap_err().to_string();
    assert!(
        e.contains("line 1: `label` must be a non-negative integer"),
        "{e}"
    );

    // Nested field.
    let path = file(
        &dir,
        "arc.jsonl",
        &[json!({"question": "q", "choices": {"label": ["A"]}, "answerKey": "A"})],
    );
    let e = load_task(Task::ArcEasy, &path).unwrap_err().to_string();
    assert!(
        e.contains("arc.jsonl") && e.contains("line 1: no `choices.text` field"),
        "{e}"
    );

    // Empty line.
    let path = dir.path().join("empty.jsonl");
    std::fs::write(&path, format!("{good}\n\n{good}\n")).unwrap();
    let e = load_task(Task::Piqa, &path).unwrap_err().to_string();
    assert!(
        e.contains("empty.jsonl") && e.contains("line 2: empty line"),
        "{e}"
    );
}

#[test]
fn label_out_of_range() {
    let e = err(
        Task::Piqa,
        json!({"goal": "g", "sol1": "a", "sol2": "b", "label": 2}),
    );
    assert!(
        e.contains("test.jsonl") && e.contains("line 7: `label` 2 is out of range for 2 choices"),
        "{e}"
    );
    let e = err(
        Task::Hellaswag,
        json!({"activity_label": "A", "ctx_a": "b", "ctx_b": "c", "endings": ["x", "y", "z", "w"], "label": "4"}),
    );
    assert!(
        e.contains("line 7: `label` 4 is out of range for 4 choices"),
        "{e}"
    );
    // HellaSwag's test split has an empty label.
    let e = err(
        Task::Hellaswag,
        json!({"activity_label": "A", "ctx_a": "b", "ctx_b": "c", "endings": ["x"], "label": ""}),
    );
    assert!(e.contains("line 7: `label` must be a digit string"), "{e}");
}

#[test]
fn load_mc_reads_our_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = file(
        &dir,
        "mc.jsonl",
        &[
            json!({"context": "Q:", "choices": [" a", " b"], "label": 1}),
            json!({"context": "W:", "choices": [" x", " y"], "label": 0, "golds": [0, 1]}),
        ],
    );
    let records = load_mc(&path).unwrap();
    assert_eq!(
        records[0],
        McRecord {
            context: "Q:".into(),
            choices: strings(&[" a", " b"]),
            label: 1,
            golds: vec![]
        }
    );
    assert_eq!(records[1].golds, vec![0, 1]);
    // Round trip through serde.
    let back: McRecord =
        serde_json::from_str(&serde_json::to_string(&records[1]).unwrap()).unwrap();
    assert_eq!(back, records[1]);

    let path = file(
        &dir,
        "completion.jsonl",
        &[
            json!({"context": "Q:", "choices": [" a"], "label": 0}),
            json!({"prompt": "p", "completion": "c"}),
        ],
    );
    let e = load_mc(&path).unwrap_err().to_string();
    assert!(
        e.contains("completion.jsonl") && e.contains("line 2"),
        "{e}"
    );
    let path = file(
        &dir,
        "golds.jsonl",
        &[json!({"context": "Q:", "choices": [" a"], "label": 0, "golds": [1]})],
    );
    let e = load_mc(&path).unwrap_err().to_string();
    assert!(e.contains("line 1: `golds`"), "{e}");
}

#[test]
fn task_names() {
    use clap::ValueEnum;
    for task in Task::value_variants() {
        let pv = task.to_possible_value().unwrap();
        assert_eq!(pv.get_name(), task.name());
        assert_eq!(
            serde_json::to_string(task).unwrap(),
            format!("\"{}\"", task.name())
        );
        assert_eq!(Task::from_str(task.name(), false).unwrap(), *task);
    }
    assert_eq!(Task::value_variants().len(), 8);
}
