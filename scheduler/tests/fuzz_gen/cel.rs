//! A generator of CEL expressions over the fuzz variables, shared by the spec and condition
//! fuzz targets.

use proptest::prelude::*;

pub fn cel_leaf() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|i| i.to_string()),
        (0..100u32).prop_map(|i| i.to_string()),
        any::<u32>().prop_map(|i| format!("{i}u")),
        any::<f64>().prop_map(|f| format!("{f:?}")),
        "[a-z .*+\\[\\]^$]{0,8}".prop_map(|s| format!("'{s}'")),
        "[a-z]{0,6}".prop_map(|s| format!("b\"{s}\"")),
        proptest::sample::select(vec![
            "true",
            "false",
            "null",
            "x",
            "y",
            "steps",
            "params",
            "item",
            "steps.a",
            "steps.a.output",
            "steps.a.output.x",
            "steps.a.output.s",
            "steps.b.output",
            "steps.big.output",
            "steps.a.succeeded",
            "params.threshold",
            "params.list",
            "undefined_var",
            "iteration",
        ])
        .prop_map(str::to_string),
    ]
}

/// CEL expressions from its grammar: operators, members, indexes, calls, macros, lists, maps.
pub fn cel_expr() -> impl Strategy<Value = String> {
    cel_leaf().prop_recursive(6, 48, 3, |inner| {
        let op = proptest::sample::select(vec![
            "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "&&", "||", "in",
        ]);
        let func = proptest::sample::select(vec![
            "size",
            "int",
            "uint",
            "double",
            "string",
            "bytes",
            "duration",
            "timestamp",
            "has",
            "max",
            "min",
            "type",
            "dyn",
            "matches",
            "contains",
        ]);
        let method = proptest::sample::select(vec![
            "contains",
            "startsWith",
            "endsWith",
            "matches",
            "size",
            "exists",
            "all",
        ]);
        let mac = proptest::sample::select(vec!["all", "exists", "exists_one", "map", "filter"]);
        prop_oneof![
            (inner.clone(), op, inner.clone()).prop_map(|(a, o, b)| format!("({a} {o} {b})")),
            (
                inner.clone(),
                proptest::sample::select(vec!["!", "-", "!!", "--"])
            )
                .prop_map(|(a, u)| format!("{u}{a}")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(a, b, c)| format!("{a} ? {b} : {c}")),
            (inner.clone(), "[a-z]{1,5}").prop_map(|(a, f)| format!("{a}.{f}")),
            (inner.clone(), inner.clone()).prop_map(|(a, i)| format!("{a}[{i}]")),
            (func, proptest::collection::vec(inner.clone(), 0..3))
                .prop_map(|(f, args)| format!("{f}({})", args.join(", "))),
            (
                inner.clone(),
                method,
                proptest::collection::vec(inner.clone(), 0..2)
            )
                .prop_map(|(a, m, args)| format!("{a}.{m}({})", args.join(", "))),
            (inner.clone(), mac, inner.clone()).prop_map(|(a, m, b)| format!("{a}.{m}(x, {b})")),
            proptest::collection::vec(inner.clone(), 0..4)
                .prop_map(|xs| format!("[{}]", xs.join(", "))),
            (inner.clone(), inner).prop_map(|(k, v)| format!("{{{k}: {v}}}")),
        ]
    })
}
