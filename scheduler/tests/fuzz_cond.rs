//! Fuzz targets of the pure core, as proptest properties (stable toolchain, part of `cargo
//! test`): CEL conditions under the cost budget, and templates (specs: `fuzz.rs`). Each target
//! replays its seed corpus (`fuzz/corpus/<target>/`), then runs a fixed number of generated
//! cases from a fixed seed; see docs/ARCHITECTURE.md, "Fuzzing", for longer runs.

#[path = "fuzz_gen/cel.rs"]
mod cel_gen;
#[path = "../../fuzz/support.rs"]
mod support;
use cel_gen::cel_expr;

use proptest::prelude::*;
use serde_json::{Value, json};
use std::cell::Cell;
use std::sync::OnceLock;
use support::{bound_ms, config, corpus, within};
use troupe_scheduler::Json;
use troupe_scheduler::cond;
use troupe_scheduler::spec::{self, TemplateVars};

const DIR: &str = env!("CARGO_MANIFEST_DIR");

// ---------------------------------------------------------------------------------------------
// 2. Conditions (CEL)
// ---------------------------------------------------------------------------------------------

/// Items of `steps.big.output`: any comprehension over it is over [`cond::BUDGET`].
const BIG: usize = 150_000;

struct Vars {
    small: Value,
    big: Value,
    params: Value,
}

fn vars() -> &'static Vars {
    static V: OnceLock<Vars> = OnceLock::new();
    V.get_or_init(|| Vars {
        small: json!({
            "a": {"output": {"items": 3, "x": [1, 2, 3], "s": "abc", "m": {"k": 1.5}}, "succeeded": 2},
            "b": {"output": [{"score": 1}, {"score": 2}], "succeeded": 2, "failed": 0},
        }),
        big: json!({
            "a": {"output": "x".repeat(1 << 20)},
            "big": {"output": (0..BIG).collect::<Vec<_>>()},
        }),
        params: json!({"threshold": 50, "model": "m", "list": [1, 2, 3]}),
    })
}

/// Deeply nested and very long expressions (the parser's and evaluator's recursion).
fn cel_deep() -> impl Strategy<Value = String> {
    (
        proptest::sample::select(vec!["(", "!", "-", "[", "{1: ", "f(", "x.all(y, "]),
        0..2100usize,
    )
        .prop_map(|(open, n)| {
            let close = match open {
                "(" | "f(" | "x.all(y, " => ")",
                "[" => "]",
                "{1: " => "}",
                _ => "",
            };
            format!("{}1{}", open.repeat(n), close.repeat(n))
        })
}

/// Evaluates `expr` with both variable sets and checks the result is bounded and clear.
fn check_cond(expr: &str) {
    let v = vars();
    for steps in [&v.small, &v.big] {
        let item = json!({"k": 1});
        let r = within(
            bound_ms(200),
            || format!("condition {:?}", &expr[..expr.len().min(300)]),
            || {
                cond::eval_bool(
                    expr,
                    &[("steps", steps), ("params", &v.params), ("item", &item)],
                )
            },
        );
        if let Err(e) = r {
            assert!(
                e.starts_with("condition ")
                    || e.starts_with("invalid CEL expression")
                    || e.starts_with("expression longer than"),
                "an error that does not name the condition: {e}"
            );
        }
    }
    // The submit-time check never panics either.
    let _ = cond::check(expr, &["steps", "params", "item"], &["a", "b", "big"]);
}

proptest! {
    #![proptest_config(config(192))]

    #[test]
    fn cond_grammar(expr in cel_expr()) {
        check_cond(&expr);
    }

    #[test]
    fn cond_raw_strings(expr in prop_oneof![
        ".{0,80}",
        "[a-z0-9_.()\\[\\]{}!&|<>=+*/%\"', -]{0,120}",
    ]) {
        check_cond(&expr);
    }

    #[test]
    fn cond_deep_nesting(expr in cel_deep()) {
        check_cond(&expr);
    }

    #[test]
    fn cond_comprehension_over_a_large_list_is_over_the_budget(
        mac in proptest::sample::select(vec!["all", "exists", "exists_one", "map", "filter"]),
        body in cel_expr(),
    ) {
        let expr = format!("steps.big.output.{mac}(x, {body})");
        prop_assume!(cond::compile(&expr).is_ok());
        let v = vars();
        let r = within(bound_ms(200), || expr.clone(), || {
            cond::eval_bool(&expr, &[("steps", &v.big), ("params", &v.params)])
        });
        let e = r.expect_err("a comprehension over 150,000 items is over the budget");
        prop_assert!(e.contains("over the budget"), "{}", e);
    }
}

#[test]
fn cond_corpus_replays() {
    for (name, bytes) in corpus(DIR, "cond") {
        for expr in String::from_utf8_lossy(&bytes).lines() {
            eprintln!("cond/{name}: {expr:.80}");
            check_cond(expr);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Templates
// ---------------------------------------------------------------------------------------------

fn template() -> impl Strategy<Value = String> {
    let path = prop_oneof![
        proptest::sample::select(vec![
            "params.p",
            "params.q",
            "params.p.k",
            "params.nope",
            "item",
            "item.k",
            "item.0",
            "item.k.0.x",
            "input",
            "input.a",
            "workflow.id",
            "workflow.name",
            "step.id",
            "iteration",
            "attempt",
            "steps.a.output",
            "steps.a.output.x",
            "steps.zz.output",
            "",
            " ",
            "{{",
            "}",
        ])
        .prop_map(str::to_string),
        ".{0,10}",
    ];
    let piece = prop_oneof![
        "[a-z {}\n]{0,8}",
        ".{0,6}",
        path.prop_map(|p| format!("{{{{ {p} }}}}")),
        Just("{{".to_string()),
        Just("}}".to_string()),
        Just("{".to_string()),
    ];
    proptest::collection::vec(piece, 0..8).prop_map(|v| v.concat())
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z0-9]{0,2}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// The template with every `{{ ... }}` removed: what a render whose values are all empty gives.
fn literal_text(t: &str) -> String {
    let mut out = String::new();
    let mut rest = t;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find("}}").expect("closed (the render succeeded)");
        rest = &after[end + 2..];
    }
    out + rest
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn templates(
        t in template(),
        params in proptest::collection::vec(
            (proptest::sample::select(vec!["p", "q", "r"]), json_value()), 0..3),
        item in proptest::option::of(json_value()),
        input in proptest::option::of(json_value()),
        steps in proptest::option::of(json_value()),
    ) {
        let params: Vec<(String, Json)> =
            params.into_iter().map(|(n, v)| (n.to_string(), Json::from_value(&v))).collect();
        let steps = steps.map(|s| json!({"a": {"output": s}}));
        let vars = TemplateVars {
            params: &params,
            item: item.as_ref(),
            input: input.as_ref(),
            workflow_id: "wf-1",
            workflow_name: "w",
            step_id: "s",
            iteration: 3,
            attempt: 1,
            steps: steps.as_ref(),
        };
        let plain = spec::render(&t, &vars);
        if !t.contains("{{") {
            prop_assert_eq!(plain.as_deref(), Ok(t.as_str()), "text without {{{{ changed");
        }
        let calls = Cell::new(0usize);
        let escaped = spec::render_escaped(&t, &vars, &|v| {
            calls.set(calls.get() + 1);
            let _ = v;
            String::new()
        });
        prop_assert_eq!(plain.is_ok(), escaped.is_ok());
        match (&plain, &escaped) {
            (Ok(_), Ok(e)) => {
                // Only the values go through `escape`; the literal text stays as it is.
                prop_assert_eq!(e, &literal_text(&t));
            }
            (Err(a), Err(b)) => {
                prop_assert_eq!(a, b);
                prop_assert!(a.contains('`') || a.contains("{{"), "an error that names nothing: {}", a);
            }
            _ => unreachable!(),
        }
        let identity = spec::render_escaped(&t, &vars, &|v| v);
        prop_assert_eq!(&identity, &plain);
        prop_assert!(calls.get() <= t.matches("{{").count());
    }
}

#[test]
fn template_corpus_replays() {
    let params = vec![("p".to_string(), Json("{\"k\":[1]}".into()))];
    let item = json!({"k": [{"x": 1}]});
    let vars = TemplateVars {
        params: &params,
        item: Some(&item),
        input: None,
        workflow_id: "wf-1",
        workflow_name: "w",
        step_id: "s",
        iteration: 0,
        attempt: 1,
        steps: None,
    };
    for (name, bytes) in corpus(DIR, "template") {
        for t in String::from_utf8_lossy(&bytes).lines() {
            let r = spec::render(t, &vars);
            eprintln!("template/{name}: {t:?} -> {r:?}");
            if !t.contains("{{") {
                assert_eq!(r.as_deref(), Ok(t));
            }
        }
    }
}
