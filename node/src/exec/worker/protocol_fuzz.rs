//! Fuzz target of the worker protocol (see docs/ARCHITECTURE.md, "Fuzzing"): any line a worker
//! prints is read without a panic, in bounded time, and an error says what is wrong with it;
//! a request line is one line of valid JSON whatever the ids and items.

#[path = "../../../../fuzz/support.rs"]
mod support;

use super::*;
use proptest::prelude::*;
use support::{bound_ms, config, corpus, mutated, show, within};

const DIR: &str = env!("CARGO_MANIFEST_DIR");

fn check(line: &[u8]) {
    let r = within(bound_ms(100), || show(line), || parse(line));
    match r {
        Ok(Line::Ready) => {}
        Ok(Line::Results(rs)) => {
            for (_, outcome) in rs {
                if let Outcome::Succeeded { output: Some(o) } = outcome {
                    serde_json::from_str::<Value>(&o.0).expect("an output is JSON");
                }
            }
        }
        Err(e) => {
            assert!(
                e.starts_with("printed a line") || e.starts_with("a result has no string"),
                "an unclear protocol error: {e}"
            );
            // What the worker printed is shown cut to 120 characters (each at most 10 once
            // escaped, `\u{10ffff}`), whatever the line's length.
            assert!(
                e.chars().count() < 1_400,
                "an error that quotes too much: {e}"
            );
        }
    }
}

fn seeds() -> Vec<Vec<u8>> {
    corpus(DIR, "worker_line")
        .into_iter()
        .map(|(_, b)| b)
        .collect()
}

const DICT: &[&[u8]] = &[
    b"{\"ready\": true}",
    b"\"results\"",
    b"\"id\"",
    b"\"output\"",
    b"\"error\"",
    b"null",
    b"[",
    b"]",
    b"{",
    b"}",
    b",",
    b"1e999",
    b"\"\\ud800\"",
    b"\xff",
];

fn json_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ]
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn worker_random_lines(line in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        ".{0,200}".prop_map(String::into_bytes),
    ]) {
        check(&line);
    }

    #[test]
    fn worker_mutated_lines(line in mutated(seeds(), DICT)) {
        check(&line);
    }

    #[test]
    fn worker_structured_results(
        results in proptest::collection::vec(
            (proptest::option::of(".{0,8}"), proptest::option::of(json_leaf()), proptest::option::of(json_leaf())),
            0..6,
        ),
        extra in proptest::option::of(json_leaf()),
    ) {
        let rs: Vec<Value> = results
            .iter()
            .map(|(id, output, error)| {
                let mut m = serde_json::Map::new();
                if let Some(id) = id { m.insert("id".into(), Value::from(id.as_str())); }
                if let Some(o) = output { m.insert("output".into(), o.clone()); }
                if let Some(e) = error { m.insert("error".into(), e.clone()); }
                Value::Object(m)
            })
            .collect();
        let mut line = serde_json::json!({"results": rs});
        if let Some(x) = extra { line["ready"] = x; }
        let bytes = serde_json::to_vec(&line).unwrap();
        check(&bytes);
        let all_ids = results.iter().all(|(id, _, _)| id.is_some());
        if line["ready"] != Value::Bool(true) {
            // Every result with an id is read back, in order; one without is an error.
            match parse(&bytes) {
                Ok(Line::Results(r)) => {
                    prop_assert!(all_ids);
                    let ids: Vec<&str> = r.iter().map(|(id, _)| id.as_str()).collect();
                    let want: Vec<&str> = results.iter().filter_map(|(id, _, _)| id.as_deref()).collect();
                    prop_assert_eq!(ids, want);
                }
                Ok(Line::Ready) => prop_assert!(false, "not a ready line"),
                Err(e) => prop_assert!(!all_ids, "{}", e),
            }
        }
    }

    #[test]
    fn worker_requests_are_one_json_line(
        tasks in proptest::collection::vec((".{0,10}", any::<u32>(), proptest::option::of(json_leaf())), 0..5),
    ) {
        let items: Vec<Option<troupe_scheduler::Json>> =
            tasks.iter().map(|(_, _, v)| v.as_ref().map(troupe_scheduler::Json::from_value)).collect();
        let lines: Vec<TaskLine<'_>> = tasks
            .iter()
            .zip(&items)
            .map(|((id, attempt, _), item)| TaskLine { id, attempt: *attempt, item: item.as_ref(), input: None, traceparent: None })
            .collect();
        let line = request(&lines);
        prop_assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        let v: Value = serde_json::from_str(&line).expect("a request is JSON");
        prop_assert_eq!(v["tasks"].as_array().map(Vec::len), Some(tasks.len()));
        for (i, (id, attempt, _)) in tasks.iter().enumerate() {
            prop_assert_eq!(v["tasks"][i]["id"].as_str(), Some(id.as_str()));
            prop_assert_eq!(v["tasks"][i]["attempt"].as_u64(), Some(*attempt as u64));
        }
    }
}

#[test]
fn worker_corpus_replays() {
    for (name, bytes) in corpus(DIR, "worker_line") {
        eprintln!("worker_line/{name}: {:?}", parse(&bytes).map(|_| ()));
        check(&bytes);
    }
}
