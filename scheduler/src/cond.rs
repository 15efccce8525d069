//! Conditions (`when`, `loop.until`) in CEL, evaluated deterministically inside apply.
//!
//! The parser runs under `catch_unwind`: user input must never take the node down, whatever a
//! parser version does with odd input.

use cel_interpreter::{Context, Expression, Value as Cel};
use cel_parser::Member;
use serde_json::Value;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;

mod cost;
pub use cost::BUDGET;

/// Compiles an expression; the error says what is wrong with it.
pub fn compile(expr: &str) -> Result<Expression, String> {
    if expr.len() > 4096 {
        return Err("expression longer than 4096 characters".into());
    }
    match catch_unwind(AssertUnwindSafe(|| cel_parser::parse(expr))) {
        Ok(Ok(p)) => match depth(&p) {
            d if d > DEPTH_MAX => Err(format!(
                "invalid CEL expression {:?}: it nests {d} levels deep (operators, members, calls, lists); at most {DEPTH_MAX} may nest: the evaluator recurses once per level, inside apply on every server",
                shorten(expr)
            )),
            _ => Ok(p),
        },
        Ok(Err(e)) => Err(format!("invalid CEL expression {expr:?}: {e}")),
        Err(_) => Err(format!(
            "invalid CEL expression {expr:?}: the parser gave up"
        )),
    }
}

/// Most levels an expression's tree may have. The evaluator (and [`cost`]'s weighing) recurse
/// once per level, and a stack overflow aborts the process: without this bound a 200-level
/// `a.b.c…` (debug builds) or a 2,000-level `[[[…]]]` (release) in a `when` took down every
/// server that applied it (found by `scheduler/tests/fuzz.rs`). Written conditions nest a few
/// levels; 64 leaves the evaluator's frames room on a 2 MiB thread stack in debug builds too.
pub const DEPTH_MAX: usize = 64;

/// The depth of an expression tree, walked with a heap stack (the tree may be deeper than the
/// thread's stack allows recursing).
fn depth(e: &Expression) -> usize {
    let mut todo: Vec<(&Expression, usize)> = vec![(e, 1)];
    let mut max = 0;
    while let Some((e, d)) = todo.pop() {
        max = max.max(d);
        if d > DEPTH_MAX {
            break;
        }
        let kids: Vec<&Expression> = match e {
            Expression::Arithmetic(a, _, b)
            | Expression::Relation(a, _, b)
            | Expression::Or(a, b)
            | Expression::And(a, b) => vec![a, b],
            Expression::Ternary(a, b, c) => vec![a, b, c],
            Expression::Unary(_, a) => vec![a],
            Expression::Member(a, m) => match &**m {
                Member::Attribute(_) => vec![a],
                Member::Index(i) => vec![a, i],
                Member::Fields(fs) => std::iter::once(&**a)
                    .chain(fs.iter().map(|(_, x)| x))
                    .collect(),
            },
            Expression::FunctionCall(f, target, args) => std::iter::once(&**f)
                .chain(target.as_deref())
                .chain(args)
                .collect(),
            Expression::List(xs) => xs.iter().collect(),
            Expression::Map(kv) => kv.iter().flat_map(|(k, v)| [k, v]).collect(),
            Expression::Atom(_) | Expression::Ident(_) => Vec::new(),
        };
        todo.extend(kids.into_iter().map(|x| (x, d + 1)));
    }
    max
}

/// The start of a long expression, for messages.
fn shorten(expr: &str) -> String {
    match expr.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &expr[..i]),
        None => expr.to_string(),
    }
}

/// Checks an expression at submit time: it parses, names only `allowed` variables (besides the
/// ones a macro such as `list.all(x, ...)` binds), and reads only steps in `steps`.
pub fn check(expr: &str, allowed: &[&str], steps: &[&str]) -> Result<(), String> {
    let program = compile(expr)?;
    let depth = macro_depth(expr);
    if depth > MACRO_DEPTH_MAX {
        return Err(format!(
            "comprehensions nest {depth} deep (`.map(`, `.all(`, `.exists(`, `.exists_one(`, `.filter(` inside one another); at most {MACRO_DEPTH_MAX} may nest: every level multiplies the work by the size of a list, and conditions run inside the replicated state machine on every server"
        ));
    }
    let bound = macro_variables(expr);
    for name in step_names(expr) {
        if !steps.contains(&name.as_str()) {
            return Err(format!(
                "no step \"{name}\" in this workflow (steps: {})",
                steps.join(", ")
            ));
        }
    }
    for var in program.references().variables() {
        if !allowed.contains(&var) && !bound.iter().any(|b| b == var) {
            return Err(format!(
                "`{var}` is not defined in this expression; use {}",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

/// Most comprehensions nested inside one another. One level over a step's output (at most the
/// items of a map step) is linear; two would be quadratic, seven are ~10^7 evaluations.
pub const MACRO_DEPTH_MAX: usize = 1;

/// How deeply comprehension macros nest in `expr`, from its text: each macro call opens a level
/// that lasts until its closing parenthesis. String literals are skipped. Deterministic and
/// conservative (a method of that name counts too).
fn macro_depth(expr: &str) -> usize {
    const MACROS: [&str; 5] = [".all(", ".exists(", ".exists_one(", ".map(", ".filter("];
    let bytes = expr.as_bytes();
    // For each open parenthesis: does it belong to a macro call?
    let mut open: Vec<bool> = Vec::new();
    let (mut depth, mut max, mut i) = (0usize, 0usize, 0usize);
    let mut quote: Option<u8> = None;
    while i < bytes.len() {
        let c = bytes[i];
        match quote {
            Some(_) if c == b'\\' => i += 1,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == b'"' || c == b'\'' => quote = Some(c),
            None if c == b'(' => {
                let is_macro = MACROS.iter().any(|m| expr[..=i].ends_with(m));
                if is_macro {
                    depth += 1;
                    max = max.max(depth);
                }
                open.push(is_macro);
            }
            None if c == b')' && open.pop() == Some(true) => depth -= 1,
            None => {}
        }
        i += 1;
    }
    max
}

/// Variables bound by CEL macros: `xs.all(x, ...)`, `exists`, `exists_one`, `map`, `filter`.
fn macro_variables(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    for m in [".all(", ".exists(", ".exists_one(", ".map(", ".filter("] {
        let mut rest = expr;
        while let Some(i) = rest.find(m) {
            rest = &rest[i + m.len()..];
            let name: String = rest
                .trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

/// Step ids an expression reads as `steps.<id>` or `steps["<id>"]`.
fn step_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("steps") {
        let before = rest[..i].chars().last();
        rest = &rest[i + 5..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            continue;
        }
        let name: String = if let Some(r) = rest.strip_prefix('.') {
            r.chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        } else if let Some(r) = rest.strip_prefix("[\"").or_else(|| rest.strip_prefix("['")) {
            r.chars().take_while(|c| *c != '"' && *c != '\'').collect()
        } else {
            String::new()
        };
        if !name.is_empty() {
            out.push(name);
        }
    }
    out
}

/// Compiled programs most recently evaluated on this thread.
const CACHE_MAX: usize = 256;

thread_local! {
    /// Per-item conditions are evaluated once per item with the same text: parse it once. The
    /// cache only saves work; the result is the same with or without it (deterministic).
    static CACHE: std::cell::RefCell<std::collections::BTreeMap<String, std::rc::Rc<Expression>>> =
        const { std::cell::RefCell::new(std::collections::BTreeMap::new()) };
}

fn cached(expr: &str) -> Result<std::rc::Rc<Expression>, String> {
    if let Some(p) = CACHE.with(|c| c.borrow().get(expr).cloned()) {
        return Ok(p);
    }
    let p = std::rc::Rc::new(compile(expr)?);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_MAX {
            c.clear();
        }
        c.insert(expr.to_string(), p.clone());
    });
    Ok(p)
}

/// Evaluates a boolean expression with the given variables (JSON values), within
/// [`cost::BUDGET`] counted steps: an expression over its budget is an error, the same on every
/// server, whatever the machine.
pub fn eval_bool(expr: &str, vars: &[(&str, &Value)]) -> Result<bool, String> {
    let program = cached(expr)?;
    let scan = vars.iter().map(|(_, v)| cost::widest(v)).max().unwrap_or(1);
    cost::ROOT.with(|root| {
        let mut ctx = root.new_inner_scope();
        for (name, value) in vars {
            ctx.add_variable_from_value(*name, to_cel(value));
        }
        cost::start(scan);
        let result = cost::charge(cost::weight(&program))
            .map_err(|e| format!("condition {expr:?} failed: {e}"))
            .and_then(|()| run(expr, &program, &ctx));
        cost::stop();
        result
    })
}

fn run(expr: &str, program: &Expression, ctx: &Context) -> Result<bool, String> {
    match catch_unwind(AssertUnwindSafe(|| Cel::resolve(program, ctx))) {
        Ok(Ok(Cel::Bool(b))) => Ok(b),
        Ok(Ok(other)) => Err(format!(
            "condition {expr:?} gave {other:?}, not true or false"
        )),
        Ok(Err(e)) => Err(format!("condition {expr:?} failed: {e}")),
        Err(_) => Err(format!("condition {expr:?} failed: the evaluator gave up")),
    }
}

/// JSON → CEL, with every integer as `Int` so `steps.x.succeeded > 0` compares like with like.
fn to_cel(v: &Value) -> Cel {
    match v {
        Value::Null => Cel::Null,
        Value::Bool(b) => Cel::Bool(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cel::Int(i),
            None => Cel::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Cel::String(Arc::new(s.clone())),
        Value::Array(a) => Cel::List(Arc::new(a.iter().map(to_cel).collect())),
        Value::Object(m) => {
            // CEL's own map type is a HashMap; it is only looked up, never iterated into state.
            #[allow(clippy::disallowed_types)]
            let map: std::collections::HashMap<String, Cel> =
                m.iter().map(|(k, v)| (k.clone(), to_cel(v))).collect();
            Cel::Map(map.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evaluates_over_steps_and_outputs() {
        let steps = json!({"classify": {"status": "succeeded", "output": {"class": "invoice"}, "succeeded": 1}});
        assert!(
            eval_bool(
                "steps.classify.output.class == 'invoice'",
                &[("steps", &steps)]
            )
            .unwrap()
        );
        assert!(eval_bool("steps.classify.succeeded > 0", &[("steps", &steps)]).unwrap());
        let out = json!({"quality": 0.85});
        assert!(eval_bool("output.quality >= 0.8", &[("output", &out)]).unwrap());
        assert!(eval_bool("steps.classify.output.nope == 1", &[("steps", &steps)]).is_err());
        assert!(
            eval_bool("1 + 1", &[])
                .unwrap_err()
                .contains("not true or false")
        );
    }

    #[test]
    fn bad_expressions_are_errors_not_panics() {
        for bad in ["steps.x ==", "((", "'unterminated", "a.b.c(", "}{", ""] {
            assert!(
                compile(bad).is_err() || check(bad, &["steps"], &[]).is_err(),
                "{bad}"
            );
        }
        assert!(
            check("params.x > 1", &["steps"], &[])
                .unwrap_err()
                .contains("`params` is not defined")
        );
        assert!(
            check("steps.nosuch.succeeded > 0", &["steps"], &["a"])
                .unwrap_err()
                .contains("no step \"nosuch\"")
        );
        assert!(check("steps[\"a-b\"].succeeded > 0", &["steps"], &["a-b"]).is_ok());
        assert!(
            check("steps.a.output.all(o, o > 1)", &["steps"], &["a"]).is_ok(),
            "macro variables are bound"
        );
    }

    #[test]
    fn nested_comprehensions_are_refused_at_submit() {
        let seven = "steps.a.output.map(a, steps.a.output.map(b, steps.a.output.map(c, steps.a.output.map(d, steps.a.output.map(e, steps.a.output.map(f, steps.a.output.map(g, 1))))))).size() > 0";
        let err = check(seven, &["steps"], &["a"]).unwrap_err();
        assert!(err.contains("nest 7 deep"), "{err}");
        assert!(
            check(
                "steps.a.output.all(x, x.exists(y, y > 1))",
                &["steps"],
                &["a"]
            )
            .is_err()
        );
        // Side by side is fine, and so are parentheses and text that looks like a macro.
        assert!(
            check(
                "steps.a.output.all(x, (x > 1)) && steps.a.output.exists(y, y == '.map(')",
                &["steps"],
                &["a"]
            )
            .is_ok()
        );
        assert_eq!(macro_depth("a.map(x, x) + b.filter(y, (y))"), 1);
        assert_eq!(macro_depth("'.map(.map(' == s"), 0);
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;
    use serde_json::json;

    fn items(n: usize) -> Value {
        json!({"a": {"output": (0..n).map(|i| json!({"score": i})).collect::<Vec<_>>()}})
    }

    #[test]
    fn a_comprehension_within_the_budget_runs() {
        let steps = items(10_000);
        let ok = eval_bool("steps.a.output.all(x, x.score >= 0)", &[("steps", &steps)]);
        assert_eq!(ok, Ok(true));
    }

    #[test]
    fn a_comprehension_over_the_budget_is_an_error_not_a_stall() {
        let steps = items(30_000);
        // 30,000 items x a body of ~12 nodes > 100,000 steps: refused before it starts.
        let expr = "steps.a.output.all(x, x.score >= 0 && x.score < 1000000 && x.score != 7)";
        let err = eval_bool(expr, &[("steps", &steps)]).unwrap_err();
        assert!(err.contains("over the budget of 100000 steps"), "{err}");
    }

    #[test]
    fn walking_operators_in_a_body_weigh_the_widest_value() {
        // `x in list` inside a comprehension over the same list is quadratic: 5,000 x 5,000.
        let steps = json!({"a": {"output": (0..5_000).collect::<Vec<_>>()}});
        let err = eval_bool(
            "steps.a.output.all(x, x in steps.a.output)",
            &[("steps", &steps)],
        )
        .unwrap_err();
        assert!(err.contains("over the budget"), "{err}");
        // `contains` is counted where it runs: 5,000 calls x 5,000 elements.
        let err = eval_bool(
            "steps.a.output.all(x, steps.a.output.contains(x))",
            &[("steps", &steps)],
        )
        .unwrap_err();
        assert!(err.contains("over the budget"), "{err}");
    }

    #[test]
    fn the_cost_is_the_same_every_time() {
        // Deterministic: the same expression over the same values is refused (or not) alike.
        let steps = items(18_000);
        let expr = "steps.a.output.exists(x, x.score == -1 || x.score == -2)";
        let first = eval_bool(expr, &[("steps", &steps)]);
        for _ in 0..3 {
            assert_eq!(eval_bool(expr, &[("steps", &steps)]), first);
        }
        assert!(
            eval_bool("1 < 2", &[]).unwrap(),
            "the budget restarts per evaluation"
        );
    }

    /// Prints how long the most expensive conditions within the budget take: `cargo test
    /// --release -p troupe-scheduler budget_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    #[allow(clippy::disallowed_methods)] // a measurement, not a decision: it reads the clock
    fn budget_timing() {
        let cases: [(&str, Value); 3] = [
            ("steps.a.output.all(x, x.score >= 0)", items(24_000)),
            (
                "steps.a.output.exists(x, x.score == -1 || x.score == -2 || x.score == -3)",
                items(6_500),
            ),
            (
                "steps.a.output.filter(x, x.score % 2 == 0).size() >= 0",
                items(16_000),
            ),
        ];
        for (expr, steps) in cases {
            let t = std::time::Instant::now();
            let r = eval_bool(expr, &[("steps", &steps)]);
            let total = t.elapsed();
            let t = std::time::Instant::now();
            let _ = to_cel(&steps);
            println!(
                "{expr}: {r:?} in {:?} (of which converting the variables {:?})",
                total,
                t.elapsed()
            );
        }
    }
}

#[cfg(test)]
mod depth_tests {
    use super::*;
    use serde_json::json;

    /// Fuzz finding (scheduler/tests/fuzz.rs, `cond_deep_nesting`): these overflowed the
    /// stack of the thread that evaluated them, aborting the process, instead of an error.
    #[test]
    fn deeply_nested_conditions_are_refused_not_a_stack_overflow() {
        let steps = json!({"a": {"output": 1}});
        let cases = [
            format!("{}1{}", "[".repeat(2000), "]".repeat(2000)),
            format!("steps{} == 1", ".a".repeat(200)),
            format!("1{} > 0", " + 1".repeat(200)),
            format!("{}true{}", "!(".repeat(300), ")".repeat(300)),
        ];
        for expr in &cases {
            let err = eval_bool(expr, &[("steps", &steps)]).unwrap_err();
            assert!(err.contains("levels deep"), "{err}");
            let err = check(expr, &["steps"], &["a"]).unwrap_err();
            assert!(err.contains("at most 64 may nest"), "{err}");
        }
    }

    #[test]
    fn conditions_up_to_the_depth_bound_run() {
        let steps = json!({"a": {"output": 1}});
        // 63 negations over an atom: 64 levels.
        let not = |n: usize| format!("{}true{}", "!(".repeat(n), ")".repeat(n));
        assert_eq!(depth(&compile(&not(63)).unwrap()), 64);
        assert_eq!(eval_bool(&not(63), &[("steps", &steps)]), Ok(false));
        assert!(compile(&not(64)).is_err());
        // Parentheses add no level: the parser drops them.
        assert!(eval_bool(&format!("{}true{}", "(".repeat(500), ")".repeat(500)), &[]).unwrap());
    }
}
