//! Items flowing through steps, with real processes: streaming (`map.from`), per-item branches
//! and a join, a dead letter that blocks only its item, a bulk redrive that takes it through
//! every later step, the same for a `map.over` chain, and kill -9 in the middle of a bulk redrive.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use troupe_chaos_tests::{TestNode, history, step};

/// Lines of a marks file.
fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// How many times each line appears.
fn counts(path: &Path) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for l in lines(path) {
        *m.entry(l).or_default() += 1;
    }
    m
}

/// A step that records its (step, item index) side effect once it has succeeded (the index
/// from `$TROUPE_TASK_ID`: in a `map.over` step `$TROUPE_ITEM` is the upstream output).
fn effect_step(id: &str, needs: &str, map: &str, marks: &Path, fail_items: &[u32]) -> String {
    let fails = fail_items
        .iter()
        .map(|i| format!("[ $i = {i} ]"))
        .collect::<Vec<_>>()
        .join(" || ");
    let guard = if fails.is_empty() {
        String::new()
    } else {
        format!(
            "if ( {fails} ) && [ ! -e {m}/fixed ]; then echo 'unsupported encoding' >&2; exit 3; fi; ",
            m = marks.display()
        )
    };
    format!(
        "[[step]]\nid = \"{id}\"\n{needs}map = {map}\nretries = {{ attempts = 2, initial = \"10ms\" }}\non_failure = \"dead-letter\"\nrun = [\"sh\", \"-c\", \"i=${{TROUPE_TASK_ID##*/}}; {guard}echo {id} $i >> {m}/effects; printf '\\\"%s\\\"' {id}-$i > $TROUPE_OUTPUT\"]\n",
        m = marks.display()
    )
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    (tmp, marks)
}

#[test]
fn item_zero_finishes_the_pipeline_before_later_items_start_the_first_step() {
    let (tmp, marks) = setup();
    let m = marks.display();
    let stamp =
        |phase: &str| format!("echo $TROUPE_STEP $TROUPE_ITEM {phase} $(date +%s%N) >> {m}/times");
    let spec = format!(
        r#"
name = "stream"
[[step]]
id = "a"
map = {{ range = [0, 6] }}
parallelism = 1
run = ["sh", "-c", "{s}; sleep 0.3; {e}"]
[[step]]
id = "b"
needs = ["a"]
map = {{ from = "a" }}
run = ["sh", "-c", "{s}; {e}"]
[[step]]
id = "c"
needs = ["b"]
map = {{ from = "b" }}
run = ["sh", "-c", "{s}; {e}"]
"#,
        s = stamp("start"),
        e = stamp("end")
    );
    let node = TestNode::start(&tmp.path().join("data"), &[]);
    let id = node.submit(&spec);
    let v = node.wait(&id, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    let time = |step: &str, item: u32, phase: &str| -> u128 {
        lines(&marks.join("times"))
            .iter()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f[0] == step && f[1] == item.to_string() && f[2] == phase)
                    .then(|| f[3].parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {phase} of {step} {item}"))
    };
    // The tasks' own clocks: item 0 is through the last step before item 3 starts the first.
    assert!(
        time("c", 0, "end") < time("a", 3, "start"),
        "no streaming: {:?}",
        lines(&marks.join("times"))
    );
}

#[test]
fn each_document_takes_its_own_branch_and_is_reported_once() {
    let (tmp, marks) = setup();
    let m = marks.display();
    let spec = format!(
        r#"
name = "branches"
[[step]]
id = "classify"
map = {{ range = [0, 10] }}
run = ["sh", "-c", "if [ $((TROUPE_ITEM % 3)) = 0 ]; then c=invoice; elif [ $((TROUPE_ITEM % 3)) = 1 ]; then c=receipt; else c=letter; fi; printf '{{\"class\": \"%s\"}}' $c > $TROUPE_OUTPUT"]
[[step]]
id = "invoice"
needs = ["classify"]
map = {{ from = "classify" }}
when = "input.class == 'invoice'"
run = ["sh", "-c", "echo invoice $TROUPE_ITEM >> {m}/effects; echo '\"inv\"' > $TROUPE_OUTPUT"]
[[step]]
id = "receipt"
needs = ["classify"]
map = {{ from = "classify" }}
when = "input.class == 'receipt'"
run = ["sh", "-c", "echo receipt $TROUPE_ITEM >> {m}/effects; echo '\"rec\"' > $TROUPE_OUTPUT"]
[[step]]
id = "report"
needs = ["invoice", "receipt"]
map = {{ from = ["invoice", "receipt"] }}
run = ["sh", "-c", "echo report $TROUPE_ITEM $TROUPE_INPUT >> {m}/effects"]
"#
    );
    let node = TestNode::start(&tmp.path().join("data"), &[]);
    let id = node.submit(&spec);
    let v = node.wait(&id, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    let c = counts(&marks.join("effects"));
    for i in 0..10u32 {
        let (inv, rec) = (i % 3 == 0, i % 3 == 1);
        assert_eq!(c.contains_key(&format!("invoice {i}")), inv, "item {i}");
        assert_eq!(c.contains_key(&format!("receipt {i}")), rec, "item {i}");
        let want = if inv {
            Some("inv")
        } else if rec {
            Some("rec")
        } else {
            None
        };
        match want {
            Some(w) => assert_eq!(c.get(&format!("report {i} {w}")), Some(&1), "{c:?}"),
            None => assert!(!c.keys().any(|k| k.starts_with(&format!("report {i} ")))),
        }
    }
    let f = &step(&v, "report")["funnel"];
    assert_eq!(
        (f["succeeded"].as_u64(), f["skipped"].as_u64()),
        (Some(7), Some(3))
    );
}

/// Runs a 7-step pipeline over 20 items whose step 3 fails for items 4 and 9 until fixed.
fn seven_steps(marks: &Path, map_of: impl Fn(usize) -> String) -> String {
    let mut spec = String::from("name = \"claims\"\n");
    for k in 1..=7usize {
        let needs = if k == 1 {
            String::new()
        } else {
            format!("needs = [\"s{}\"]\n", k - 1)
        };
        let map = if k == 1 {
            "{ range = [0, 20] }".to_string()
        } else {
            map_of(k - 1)
        };
        let fails: &[u32] = if k == 3 { &[4, 9] } else { &[] };
        spec.push_str(&effect_step(&format!("s{k}"), &needs, &map, marks, fails));
    }
    spec
}

fn dead_letter_then_bulk_redrive(map_of: impl Fn(usize) -> String) {
    let (tmp, marks) = setup();
    let node = TestNode::start(&tmp.path().join("data"), &[]);
    let id = node.submit(&seven_steps(&marks, map_of));
    let v = node.wait(&id, Duration::from_secs(120));
    assert_eq!(v["status"], "degraded", "{v}");
    let reason = v["reason"].as_str().unwrap();
    assert!(reason.contains("2 item(s) dead-lettered"), "{reason}");
    assert!(reason.contains("8 item(s) blocked"), "{reason}");
    // Only items 4 and 9 stopped; every other item went through all seven steps.
    let f = &step(&v, "s7")["funnel"];
    assert_eq!(
        (f["succeeded"].as_u64(), f["blocked"].as_u64()),
        (Some(18), Some(2))
    );
    let (_, dlq) = node.get("/v1/dlq?step=s3&grep=encoding");
    assert_eq!(dlq["total"], 2, "{dlq}");
    let d = dlq["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["item"] == 4)
        .unwrap_or_else(|| panic!("no dead letter for item 4: {dlq}"));
    // The item's value: the original item in a `from` chain, the upstream output in `over`.
    assert!(d["item_value"] == 4 || d["item_value"] == "s2-4", "{d}");
    assert!(d["node"].as_str().unwrap().starts_with("node-"), "{d}");
    let (code, item) = node.get(&format!("/v1/workflows/{id}/items/9"));
    assert_eq!(code, 200);
    assert_eq!(item["steps"][2]["status"], "dead_lettered");
    assert_eq!(item["steps"][6]["status"], "blocked");

    std::fs::write(marks.join("fixed"), "").unwrap();
    let (code, out) = node.post("/v1/dlq/redrive", &json!({ "step": "s3" }));
    assert_eq!((code, &out["redriven"]), (200, &json!(2)), "{out}");
    let v = node.wait(&id, Duration::from_secs(120));
    assert_eq!(v["status"], "succeeded", "{v}");
    let (_, last) = node.get(&format!("/v1/workflows/{id}/steps/s7/output"));
    let last = last.as_array().unwrap();
    assert_eq!(last.len(), 20);
    assert!(
        last.iter().all(|o| o.is_string()),
        "every item reached the end: {last:?}"
    );
    // Each (step, item) side effect exactly once.
    let c = counts(&marks.join("effects"));
    for k in 1..=7 {
        for i in 0..20 {
            assert_eq!(
                c.get(&format!("s{k} {i}")),
                Some(&1),
                "s{k} item {i}: {c:?}"
            );
        }
    }
    let h = history(&v);
    assert_eq!(
        h.iter().filter(|l| l.starts_with("workflow ")).count(),
        2,
        "closed once degraded, once succeeded: {h:?}"
    );
}

#[test]
fn a_dead_letter_at_step_3_of_7_blocks_only_its_item_and_a_bulk_redrive_finishes_it() {
    dead_letter_then_bulk_redrive(|prev| format!("{{ from = \"s{prev}\" }}"));
}

#[test]
fn the_same_holds_for_a_map_over_chain() {
    dead_letter_then_bulk_redrive(|prev| format!("{{ over = \"steps.s{prev}.output\" }}"));
}

#[test]
fn kill_9_during_a_bulk_redrive_applies_it_wholly_or_not_at_all() {
    let (tmp, marks) = setup();
    let data = tmp.path().join("data");
    let n = 300u32;
    let fails: Vec<u32> = (0..n).collect();
    let spec = format!(
        "name = \"bulk\"\n{}{}",
        effect_step("a", "", &format!("{{ range = [0, {n}] }}"), &marks, &fails),
        effect_step("b", "needs = [\"a\"]\n", "{ from = \"a\" }", &marks, &[])
    );
    let mut node = TestNode::start(&data, &[]);
    let id = node.submit(&spec);
    let v = node.wait(&id, Duration::from_secs(120));
    assert_eq!(v["status"], "degraded");
    std::fs::write(marks.join("fixed"), "").unwrap();
    // Send the redrive and kill the node while it is being committed and applied.
    let api = node.api.clone();
    let sender = std::thread::spawn(move || {
        let _ = ureq::post(&format!("{api}/v1/dlq/redrive")).send_json(json!({ "all": true }));
    });
    std::thread::sleep(Duration::from_millis(15));
    node.kill9();
    let _ = sender.join();
    let node = TestNode::start(&data, &[]);
    let (_, dlq) = node.get("/v1/dlq?limit=1");
    let left = dlq["total"].as_u64().unwrap();
    assert!(
        left == 0 || left == n as u64,
        "partly applied: {left} of {n} left"
    );
    if left == n as u64 {
        let (_, v) = node.get(&format!("/v1/workflows/{id}"));
        assert_eq!(
            v["status"], "degraded",
            "not applied, so still degraded: {v}"
        );
        let (code, out) = node.post("/v1/dlq/redrive", &json!({ "workflow": id }));
        assert_eq!((code, &out["redriven"]), (200, &json!(n)), "{out}");
    }
    let v: Value = node.wait(&id, Duration::from_secs(120));
    assert_eq!(v["status"], "succeeded", "{v}");
    let c = counts(&marks.join("effects"));
    for i in 0..n {
        for s in ["a", "b"] {
            // Attempts killed with the node may have recorded an effect before dying; none
            // of them may be missing, and none may be recorded by two accepted results.
            assert!(c.contains_key(&format!("{s} {i}")), "{s} {i} never ran");
        }
    }
    let (_, dlq) = node.get("/v1/dlq");
    assert_eq!(dlq["total"], 0);
    println!("kill -9 mid bulk redrive: {left} of {n} dead letters were left (0 = applied)");
}
