//! A deterministic cost budget for conditions: every evaluation counts steps and stops with an
//! error once it has spent [`BUDGET`]. Conditions run inside apply on every server, so the budget
//! is counted, never timed: the same expression over the same values costs the same everywhere.
//!
//! What counts (the cel-interpreter crate has no budget of its own, so the counting wraps the
//! functions it calls and weighs the expression tree, written here):
//! - the expression itself: one step per node, once per evaluation ([`weight`]);
//! - a comprehension (`all`, `exists`, `exists_one`, `map`, `filter`): the size of its list or map
//!   times the weight of its body, charged before it starts;
//! - an operator that may walk a whole value (`in`, `+` on lists or strings) weighs as much as the
//!   widest value in the variables ([`widest`]): a list's or map's length, a string's length / 64;
//! - `contains`, `matches`, `size`, `max`, `min`, conversions: one step plus the size of what they
//!   read (strings in 64-byte units), and `matches` its pattern's length × 8 to compile it.

use cel_interpreter::extractors::{Arguments, Identifier, This};
use cel_interpreter::objects::Value as Cel;
use cel_interpreter::{Context, ExecutionError, Expression, FunctionContext, functions};
use cel_parser::{ArithmeticOp, Member, RelationOp};
use serde_json::Value;
use std::cell::Cell;
use std::sync::Arc;

/// Steps one evaluation may spend: about 5 ms on this project's 2-core machine (~50 ns a step,
/// measured: `docs/benchmarks.md`, "Condition budget"). A condition over every element of a
/// 10,000-element output with a five-node body costs 50,000.
pub const BUDGET: u64 = 100_000;

thread_local! {
    static SPENT: Cell<u64> = const { Cell::new(0) };
    static SCAN: Cell<u64> = const { Cell::new(1) };
    /// The functions, registered once per thread; each evaluation adds its variables in a child
    /// scope.
    pub(super) static ROOT: Context<'static> = root();
}

/// Starts counting one evaluation; `scan` is the weight of an operator that walks a value.
pub(super) fn start(scan: u64) {
    SPENT.with(|s| s.set(0));
    SCAN.with(|s| s.set(scan.max(1)));
}

pub(super) fn stop() {
    SPENT.with(|s| s.set(0));
}

/// Spends `steps`; an error once the evaluation is over its budget.
pub(super) fn charge(steps: u64) -> Result<(), ExecutionError> {
    let spent = SPENT.with(|s| {
        let v = s.get().saturating_add(steps);
        s.set(v);
        v
    });
    if spent > BUDGET {
        return Err(ExecutionError::function_error(
            "budget",
            format!(
                "over the budget of {BUDGET} steps (a comprehension over a large list, or work that walks large values); conditions run inside apply on every server"
            ),
        ));
    }
    Ok(())
}

/// The widest value in `v`, in steps: the longest list or map, or the longest string / 64.
pub fn widest(v: &Value) -> u64 {
    match v {
        Value::String(s) => (s.len() as u64) / 64,
        Value::Array(a) => a.iter().map(widest).fold(a.len() as u64, u64::max),
        Value::Object(m) => m.values().map(widest).fold(m.len() as u64, u64::max),
        _ => 0,
    }
}

/// The steps one pass over `e` costs, with walking operators weighed as the current scan.
pub(super) fn weight(e: &Expression) -> u64 {
    let scan = SCAN.with(Cell::get);
    weigh(e, scan)
}

fn weigh(e: &Expression, scan: u64) -> u64 {
    let w = |x: &Expression| weigh(x, scan);
    let sum = |xs: &[Expression]| xs.iter().map(w).fold(0u64, u64::saturating_add);
    let own = match e {
        Expression::Relation(_, RelationOp::In, _)
        | Expression::Arithmetic(_, ArithmeticOp::Add, _) => scan,
        _ => 1,
    };
    let inner = match e {
        Expression::Arithmetic(a, _, b)
        | Expression::Relation(a, _, b)
        | Expression::Or(a, b)
        | Expression::And(a, b) => w(a).saturating_add(w(b)),
        Expression::Ternary(a, b, c) => w(a).saturating_add(w(b)).saturating_add(w(c)),
        Expression::Unary(_, a) => w(a),
        Expression::Member(a, m) => w(a).saturating_add(match &**m {
            Member::Attribute(_) => 0,
            Member::Index(i) => w(i),
            Member::Fields(fs) => fs.iter().map(|(_, x)| w(x)).fold(0, u64::saturating_add),
        }),
        Expression::FunctionCall(f, target, args) => w(f)
            .saturating_add(target.as_deref().map_or(0, w))
            .saturating_add(sum(args)),
        Expression::List(xs) => sum(xs),
        Expression::Map(kv) => kv
            .iter()
            .map(|(k, v)| w(k).saturating_add(w(v)))
            .fold(0, u64::saturating_add),
        Expression::Atom(_) | Expression::Ident(_) => 0,
    };
    own.saturating_add(inner)
}

/// Size of a value in steps: elements of a list or map, a string's bytes / 64.
fn size_of(v: &Cel) -> u64 {
    match v {
        Cel::List(l) => l.len() as u64,
        Cel::Map(m) => m.map.len() as u64,
        Cel::String(s) => s.len() as u64 / 64,
        Cel::Bytes(b) => b.len() as u64 / 64,
        _ => 0,
    }
}

fn comprehension(this: &Cel, body: &Expression) -> Result<(), ExecutionError> {
    charge(size_of(this).max(1).saturating_mul(weight(body)))
}

fn map(
    ftx: &FunctionContext,
    This(this): This<Cel>,
    i: Identifier,
    e: Expression,
) -> Result<Cel, ExecutionError> {
    comprehension(&this, &e)?;
    functions::map(ftx, This(this), i, e)
}

fn filter(
    ftx: &FunctionContext,
    This(this): This<Cel>,
    i: Identifier,
    e: Expression,
) -> Result<Cel, ExecutionError> {
    comprehension(&this, &e)?;
    functions::filter(ftx, This(this), i, e)
}

fn all(
    ftx: &FunctionContext,
    This(this): This<Cel>,
    i: Identifier,
    e: Expression,
) -> Result<bool, ExecutionError> {
    comprehension(&this, &e)?;
    functions::all(ftx, This(this), i, e)
}

fn exists(
    ftx: &FunctionContext,
    This(this): This<Cel>,
    i: Identifier,
    e: Expression,
) -> Result<bool, ExecutionError> {
    comprehension(&this, &e)?;
    functions::exists(ftx, This(this), i, e)
}

fn exists_one(
    ftx: &FunctionContext,
    This(this): This<Cel>,
    i: Identifier,
    e: Expression,
) -> Result<bool, ExecutionError> {
    comprehension(&this, &e)?;
    functions::exists_one(ftx, This(this), i, e)
}

fn contains(This(this): This<Cel>, arg: Cel) -> Result<Cel, ExecutionError> {
    charge(1 + size_of(&this))?;
    functions::contains(This(this), arg)
}

fn size(ftx: &FunctionContext, This(this): This<Cel>) -> Result<i64, ExecutionError> {
    charge(1)?;
    functions::size(ftx, This(this))
}

fn matches(
    ftx: &FunctionContext,
    This(this): This<Arc<String>>,
    re: Arc<String>,
) -> Result<bool, ExecutionError> {
    charge(1 + (re.len() as u64).saturating_mul(8) + this.len() as u64 / 64)?;
    functions::matches(ftx, This(this), re)
}

fn starts_with(This(this): This<Arc<String>>, p: Arc<String>) -> Result<bool, ExecutionError> {
    charge(1 + p.len() as u64 / 64)?;
    Ok(functions::starts_with(This(this), p))
}

fn ends_with(This(this): This<Arc<String>>, p: Arc<String>) -> Result<bool, ExecutionError> {
    charge(1 + p.len() as u64 / 64)?;
    Ok(functions::ends_with(This(this), p))
}

fn max(Arguments(args): Arguments) -> Result<Cel, ExecutionError> {
    charge(1 + args.iter().map(size_of).sum::<u64>() + args.len() as u64)?;
    functions::max(Arguments(args))
}

fn min(Arguments(args): Arguments) -> Result<Cel, ExecutionError> {
    charge(1 + args.iter().map(size_of).sum::<u64>() + args.len() as u64)?;
    functions::min(Arguments(args))
}

fn string(ftx: &FunctionContext, This(this): This<Cel>) -> Result<Cel, ExecutionError> {
    charge(1 + size_of(&this))?;
    functions::string(ftx, This(this))
}

fn double(ftx: &FunctionContext, This(this): This<Cel>) -> Result<Cel, ExecutionError> {
    charge(1 + size_of(&this))?;
    functions::double(ftx, This(this))
}

fn int(ftx: &FunctionContext, This(this): This<Cel>) -> Result<Cel, ExecutionError> {
    charge(1 + size_of(&this))?;
    functions::int(ftx, This(this))
}

fn uint(ftx: &FunctionContext, This(this): This<Cel>) -> Result<Cel, ExecutionError> {
    charge(1 + size_of(&this))?;
    functions::uint(ftx, This(this))
}

/// The default functions, each replaced by one that counts. `has` is kept (it resolves one
/// path); time functions are not offered (conditions see no clock).
fn root() -> Context<'static> {
    let mut ctx = Context::empty();
    ctx.add_function("has", functions::has);
    ctx.add_function("map", map);
    ctx.add_function("filter", filter);
    ctx.add_function("all", all);
    ctx.add_function("exists", exists);
    ctx.add_function("exists_one", exists_one);
    ctx.add_function("contains", contains);
    ctx.add_function("size", size);
    ctx.add_function("matches", matches);
    ctx.add_function("startsWith", starts_with);
    ctx.add_function("endsWith", ends_with);
    ctx.add_function("max", max);
    ctx.add_function("min", min);
    ctx.add_function("string", string);
    ctx.add_function("double", double);
    ctx.add_function("int", int);
    ctx.add_function("uint", uint);
    // Kept unwrapped as the default context has them: each parses one value it is given (no
    // clock), so it costs no more than the size of that value.
    ctx.add_function("bytes", functions::bytes);
    ctx.add_function("duration", functions::duration);
    ctx.add_function("timestamp", functions::timestamp);
    ctx
}
