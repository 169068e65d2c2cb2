//! `offsite ablate` (part of tests/experiment_cli.rs, whose helpers it uses).

use super::*;

#[test]
fn ablation_grid_reports_size_and_quality_per_point() {
    let d = tempfile::tempdir().unwrap();
    setup(d.path());
    let out = d.path().join("ablation");
    let p = |name: &str| d.path().join(name);
    let (model, train, test) = (p("model"), p("train.jsonl"), p("test.jsonl"));
    let (ok, stdout, err) = offsite(&[
        "ablate",
        s(&model),
        "--train",
        s(&train),
        "--test",
        s(&test),
        "--bottom",
        "1",
        "--top",
        "1",
        "--keep-grid",
        "1,3",
        "--prune-grid",
        "0.5",
        "--bits-grid",
        "4",
        "--max-steps",
        "2",
        "--block-size",
        "32",
        "-o",
        s(&out),
    ]);
    assert!(ok, "{err}");
    assert!(stdout.contains("| prune-0.5 |"), "{stdout}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("ablation.json")).unwrap()).unwrap();
    let points = report["points"].as_array().unwrap();
    let names: Vec<String> = points
        .iter()
        .map(|p| {
            let c = &p["compression"];
            format!("{}-{}", c["kind"].as_str().unwrap(), c["value"])
        })
        .collect();
    assert_eq!(names, ["keep-1", "keep-3", "prune-0.5", "bits-4"]);
    let size = |i: usize| points[i]["package_bytes"].as_u64().unwrap();
    // Fewer layers, fewer zeros, fewer bits: each smaller than keeping all 3 middle layers.
    assert!(size(0) < size(1) && size(2) < size(1) && size(3) < size(1));
    let params = |i: usize| points[i]["percent_of_full_params"].as_f64().unwrap();
    assert!(params(2) < params(1));
    for p in points {
        let rows: Vec<&str> = p["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(rows, ["emulator_zero_shot", "emulator_ft", "plug_in"]);
    }
    for kind in ["keep", "prune", "bits"] {
        let svg = std::fs::read_to_string(out.join(format!("ablation-{kind}.svg"))).unwrap();
        assert!(svg.contains("<polyline"), "{kind}");
        assert!(out.join(format!("ablation-{kind}.png")).is_file(), "{kind}");
    }
}
