//! `offsite eval` picks its measure from the records (issue 33): text → perplexity,
//! context/choices/label → multiple choice, prompt/completion → answer loss; `--metric`
//! overrides; a file that mixes kinds is refused naming the line.

mod common;
use common::{fails, offsite, ok, s, tiny_model_dir};

#[test]
fn the_measure_follows_the_records_and_says_so() {
    let d = tempfile::tempdir().unwrap();
    let model = tiny_model_dir(d.path(), 2);
    let write = |name: &str, body: &str| {
        let p = d.path().join(name);
        std::fs::write(&p, body).unwrap();
        p
    };
    let mc = write(
        "mc.jsonl",
        "{\"context\": \"Is it?\", \"choices\": [\" no\", \" yes\"], \"label\": 1}\n\
         {\"context\": \"Or not?\", \"choices\": [\" no\", \" yes\"], \"label\": 0}\n",
    );
    let pc = write(
        "pc.jsonl",
        "{\"prompt\": \"Say hi:\", \"completion\": \" hi\"}\n",
    );
    let tx = write("tx.jsonl", "{\"text\": \"hello world, hello\"}\n");
    for (data, metric, key) in [
        (&mc, "mc", "acc"),
        (&pc, "answer", "answer_loss"),
        (&tx, "ppl", "token_perplexity"),
    ] {
        let o = offsite(&["eval", s(&model), "--data", s(data), "--json"]);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let v: serde_json::Value = serde_json::from_str(&ok(o)).unwrap();
        assert_eq!(v["metric"], metric);
        assert!(v[key].as_f64().is_some(), "{v}");
        assert!(err.contains(&format!("measuring {metric}")), "{err}");
    }
    // --metric overrides: the multiple-choice file scored as answer loss of the gold choice.
    let v: serde_json::Value = serde_json::from_str(&ok(offsite(&[
        "eval",
        s(&model),
        "--data",
        s(&mc),
        "--metric",
        "answer",
        "--json",
    ])))
    .unwrap();
    assert_eq!(v["n"], 2);
    let mixed = write(
        "mixed.jsonl",
        "{\"context\": \"Q\", \"choices\": [\" a\"], \"label\": 0}\n{\"text\": \"t\"}\n",
    );
    fails(
        offsite(&["eval", s(&model), "--data", s(&mixed)]),
        &["mixed.jsonl", "line 2 is a text"],
    );
}
