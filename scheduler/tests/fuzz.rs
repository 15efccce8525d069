//! Fuzz targets of the pure core, as proptest properties (stable toolchain, part of `cargo
//! test`): spec parsing and compiling (TOML and JSON), CEL conditions under the cost budget,
//! and templates. Each target replays its seed corpus (`fuzz/corpus/<target>/`) and then runs a
//! fixed number of generated cases from a fixed seed; see docs/ARCHITECTURE.md, "Fuzzing", for
//! longer runs (`PROPTEST_CASES=100000 cargo test -p troupe-scheduler --test fuzz --release`).

#[path = "fuzz_gen/cel.rs"]
mod cel_gen;
#[path = "../../fuzz/support.rs"]
mod support;
use cel_gen::cel_expr;

use proptest::prelude::*;
use serde_json::Value;
use std::path::Path;
use support::{bound_ms, config, corpus, mutated, show, within};
use troupe_scheduler::spec::{self, SpecError};

const DIR: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------------------------------------
// 1. Specs
// ---------------------------------------------------------------------------------------------

/// `map.lines` files are read relative to this folder, which does not exist: a fuzzed spec
/// reads no file.
const NO_BASE: &str = "/nonexistent/troupe-fuzz";

/// An error a person can act on: it names a line or a field, and says something.
fn assert_located(e: &SpecError, text: &str) {
    assert!(!e.message.trim().is_empty(), "empty message: {e:?}");
    assert!(
        e.line.is_some() || !e.field.is_empty(),
        "an error with neither line nor field: {e:?}\nspec: {text:?}"
    );
    if let Some(line) = e.line {
        assert!(
            line >= 1 && line <= text.lines().count().max(1) + 1,
            "line {line} is outside the spec's {} lines: {e:?}",
            text.lines().count()
        );
    }
    assert!(!e.to_string().is_empty());
}

/// Parses, compiles and checks one TOML spec; returns whether it compiled.
fn check_toml(text: &str) -> bool {
    let out = within(
        bound_ms(200),
        || format!("spec {}", show(text.as_bytes())),
        || spec::load_str(text, Some("fuzz.toml"), Path::new(NO_BASE)),
    );
    match out {
        Ok((raw, compiled)) => {
            compiled
                .check_references()
                .expect("compile's output is consistent");
            // The spec is stored in the log with bincode: it round-trips.
            let cfg = bincode::config::standard();
            let bytes = bincode::serde::encode_to_vec(&compiled, cfg).unwrap();
            let (back, _): (spec::Spec, _) =
                bincode::serde::decode_from_slice(&bytes, cfg).unwrap();
            assert_eq!(back, compiled);
            check_forms_agree(&raw);
            true
        }
        Err(e) => {
            assert_eq!(e.file.as_deref(), Some("fuzz.toml"), "{e:?}");
            if e.field.is_empty() {
                // Syntax and type errors come from the TOML parser: they must point at a line.
                assert!(
                    e.line.is_some(),
                    "a parse error without a line: {e:?}\n{text:?}"
                );
            }
            assert_located(&e, text);
            false
        }
    }
}

/// The JSON form of a spec (the API's) compiles exactly as the TOML form did.
fn check_forms_agree(raw: &spec::raw::RawSpec) {
    let value = serde_json::to_value(raw).expect("a raw spec serializes");
    let again = spec::parse_json(value).expect("the JSON form of a parsed spec parses");
    let strip = |r: Result<spec::Spec, SpecError>| r.map_err(|e| (e.field, e.message));
    assert_eq!(strip(spec::compile(raw)), strip(spec::compile(&again)));
}

/// JSON bytes through the API's path: parse, then compile.
fn check_json(bytes: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let out = within(
        bound_ms(200),
        || format!("json spec {}", show(bytes)),
        || spec::parse_json(value).and_then(|raw| spec::compile(&raw).map(|s| (raw, s))),
    );
    match out {
        Ok((_, compiled)) => compiled.check_references().expect("consistent"),
        Err(e) => {
            assert!(
                !e.field.is_empty(),
                "a JSON spec error without a field: {e:?}"
            );
            assert_located(&e, "");
        }
    }
}

fn examples() -> Vec<Vec<u8>> {
    let dir = Path::new(DIR).join("../examples");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    out.extend(corpus(DIR, "spec_toml").into_iter().map(|(_, b)| b));
    out
}

/// The JSON forms of the examples (what `troupe submit` sends).
fn json_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = examples()
        .iter()
        .filter_map(|b| spec::parse_toml(&String::from_utf8_lossy(b), None).ok())
        .map(|raw| serde_json::to_vec_pretty(&raw).unwrap())
        .collect();
    out.extend(corpus(DIR, "spec_json").into_iter().map(|(_, b)| b));
    out
}

const TOML_DICT: &[&[u8]] = &[
    b"[[step]]\n",
    b"[[step]]\nid = \"x\"\nhandler = \"noop\"\n",
    b"needs = [\"a\", \"b\"]\n",
    b"map = { range = [0, 10000001] }\n",
    b"map = { over = \"steps.a.output\" }\n",
    b"map = { from = [\"a\"] }\n",
    b"when = \"steps.a.output.all(x, x.map(y, y))\"\n",
    b"loop = { until = \"iteration > 3\", max_iterations = 0 }\n",
    b"{{ params.",
    b"{{ steps.a.output }}",
    b"}}",
    b"\"\"\"",
    b"'''",
    b"= ",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\\u",
    b"\n",
    b"#",
    b"999999999999999999999",
    b"-1",
    b"1e308",
    b"\"1ms\"",
    b"\"99999999999999999d\"",
    b"\"1.5TiB\"",
];

fn quoted(s: &str) -> String {
    // A JSON string is a TOML basic string, once DEL (which JSON leaves as it is) is escaped.
    serde_json::to_string(s)
        .unwrap()
        .replace('\u{7f}', "\\u007f")
}

fn id() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => proptest::sample::select(vec!["a", "b", "c", "d", "e"]).prop_map(str::to_string),
        1 => "[a-z_-]{0,3}",
        1 => ".{0,70}",
    ]
}

fn duration() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec![
            "1ms", "10s", "5m", "2h", "1d", "1h30m", "0s", "1.5s", "", "s", "10", "1y", "36500d",
            "36501d", "1e3s",
        ])
        .prop_map(str::to_string),
        "[0-9.]{0,6}[a-z]{0,2}",
    ]
}

fn size() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(vec!["64MiB", "1GiB", "1.5TiB", "0", "1KB", "x", "-1GiB"])
            .prop_map(str::to_string),
        "[0-9.]{0,6}[A-Za-z]{0,3}",
    ]
}

fn template_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z ./=-]{0,12}",
        proptest::sample::select(vec![
            "{{ params.model }}",
            "{{ params.nope }}",
            "{{ item }}",
            "{{ item.k }}",
            "{{ input }}",
            "{{ steps.a.output }}",
            "{{ steps.b.output.x }}",
            "{{ workflow.id }}",
            "{{ iteration }}",
            "{{ attempt.x }}",
            "{{ }}",
            "{{ unclosed",
        ])
        .prop_map(str::to_string),
    ]
}

/// One `[[step]]` table, from fields that are each well typed (so the TOML always parses and
/// every error is compile's).
fn step_table() -> impl Strategy<Value = String> {
    let action = prop_oneof![
        proptest::collection::vec(template_text(), 0..4)
            .prop_map(|argv| format!("run = [{}]", join(&argv))),
        (
            proptest::sample::select(vec!["noop", "echo", "sleep", "fail", "http", "bogus"]),
            proptest::option::of(duration()),
        )
            .prop_map(|(h, d)| match d {
                Some(d) => format!("handler = \"{h}\"\nwith = {{ duration = {} }}", quoted(&d)),
                None => format!("handler = \"{h}\""),
            }),
        (
            proptest::collection::vec(template_text(), 0..3),
            0..5000u32,
            duration()
        )
            .prop_map(|(argv, batch, wait)| format!(
                "worker = {{ run = [{}], batch = {batch}, max_wait = {} }}",
                join(&argv),
                quoted(&wait)
            )),
        Just(String::new()),
    ];
    let map = prop_oneof![
        (any::<i32>(), any::<i32>()).prop_map(|(a, b)| format!("map = {{ range = [{a}, {b}] }}")),
        (0..12_000_000i64).prop_map(|b| format!("map = {{ range = [0, {b}] }}")),
        proptest::collection::vec("[a-z0-9]{0,4}", 0..4)
            .prop_map(|v| format!("map = {{ items = [{}] }}", join(&v))),
        id().prop_map(|s| format!(
            "map = {{ over = {} }}",
            quoted(&format!("steps.{s}.output"))
        )),
        proptest::collection::vec(id(), 0..3)
            .prop_map(|v| format!("map = {{ from = [{}] }}", join(&v))),
        Just("map = { lines = \"items.txt\" }".to_string()),
    ];
    (
        id(),
        proptest::collection::vec(id(), 0..3),
        action,
        proptest::option::of(map),
        proptest::option::of(cel_expr()),
        proptest::option::of(duration()),
        proptest::option::of((0..12u32, duration(), duration())),
        proptest::option::of((-1.0..100.0f64, size(), 0..9u32)),
        proptest::option::of(proptest::sample::select(vec![
            "fail",
            "dead-letter",
            "ignore",
        ])),
        proptest::option::of((cel_expr(), 0..2000u32)),
        proptest::option::of(0..100_000u32),
        proptest::collection::btree_map("[A-Z_]{1,4}", template_text(), 0..3),
    )
        .prop_map(
            |(id, needs, action, map, when, timeout, retries, res, on_failure, lp, par, env)| {
                let mut t = format!("[[step]]\nid = {}\n", quoted(&id));
                if !needs.is_empty() {
                    t += &format!("needs = [{}]\n", join(&needs));
                }
                if !action.is_empty() {
                    t += &action;
                    t.push('\n');
                }
                let mut line = |s: String| {
                    t += &s;
                    t.push('\n');
                };
                if let Some(m) = map {
                    line(m);
                }
                if let Some(w) = when {
                    line(format!("when = {}", quoted(&w)));
                }
                if let Some(d) = timeout {
                    line(format!("timeout = {}", quoted(&d)));
                }
                if let Some((n, i, m)) = retries {
                    line(format!(
                        "retries = {{ attempts = {n}, initial = {}, max = {} }}",
                        quoted(&i),
                        quoted(&m)
                    ));
                }
                if let Some((cpu, mem, gpu)) = res {
                    line(format!(
                        "resources = {{ cpu = {cpu}, memory = {}, gpu = {gpu} }}",
                        quoted(&mem)
                    ));
                }
                if let Some(f) = on_failure {
                    line(format!("on_failure = \"{f}\""));
                }
                if let Some((until, n)) = lp {
                    line(format!(
                        "loop = {{ until = {}, max_iterations = {n} }}",
                        quoted(&until)
                    ));
                }
                if let Some(p) = par {
                    line(format!("parallelism = {p}"));
                }
                if !env.is_empty() {
                    let kv: Vec<String> = env
                        .iter()
                        .map(|(k, v)| format!("{k} = {}", quoted(v)))
                        .collect();
                    line(format!("env = {{ {} }}", kv.join(", ")));
                }
                t
            },
        )
}

fn join(items: &[String]) -> String {
    items
        .iter()
        .map(|s| quoted(s))
        .collect::<Vec<_>>()
        .join(", ")
}

fn structured_spec() -> impl Strategy<Value = String> {
    (
        prop_oneof![Just("w".to_string()), ".{0,8}"],
        proptest::option::of(duration()),
        proptest::collection::btree_map("[a-z]{1,6}|.{0,3}", "[a-z0-9]{0,6}", 0..3),
        proptest::collection::vec(step_table(), 0..6),
    )
        .prop_map(|(name, timeout, params, steps)| {
            let mut t = format!("name = {}\n", quoted(&name));
            if let Some(d) = timeout {
                t += &format!("timeout = {}\n", quoted(&d));
            }
            if !params.is_empty() {
                t += "[params]\n";
                for (k, v) in &params {
                    t += &format!("{} = {}\n", quoted(k), quoted(v));
                }
            }
            for s in steps {
                t += &s;
            }
            t
        })
}

proptest! {
    #![proptest_config(config(96))]

    #[test]
    fn spec_toml_random_text(text in prop_oneof![
        ".{0,200}",
        "[a-z_\\[\\]=\"{}, .\n0-9#']{0,300}",
    ]) {
        check_toml(&text);
    }

    #[test]
    fn spec_toml_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        check_toml(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn spec_toml_mutated_examples(bytes in mutated(examples(), TOML_DICT)) {
        check_toml(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn spec_toml_structured(text in structured_spec()) {
        // The generator writes well-typed fields: the TOML always parses, and whatever compile
        // refuses it names.
        if let Err(e) = spec::parse_toml(&text, None) {
            panic!("the generator wrote TOML that does not parse: {e}\n{text}");
        }
        check_toml(&text);
    }

    #[test]
    fn spec_json_random_and_mutated(bytes in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        mutated(json_seeds(), &[b"null", b"[]", b"{}", b"\"step\"", b"1e999", b"-0", b"\"\\u0000\""]),
    ]) {
        check_json(&bytes);
    }
}

#[test]
fn spec_corpus_replays() {
    for (name, bytes) in corpus(DIR, "spec_toml") {
        let text = String::from_utf8_lossy(&bytes);
        eprintln!("spec_toml/{name}: compiled = {}", check_toml(&text));
    }
    for (_, bytes) in corpus(DIR, "spec_json") {
        check_json(&bytes);
    }
    for text in examples() {
        // Examples with `map.lines` fail here (their files are not read): located errors.
        check_toml(&String::from_utf8_lossy(&text));
    }
}
