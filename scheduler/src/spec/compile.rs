//! Validation: from what users write ([`RawSpec`]) to what the scheduler runs ([`Spec`]).
//!
//! Every rule that rejects a spec lives here and its error names the field (and, for files, the
//! line). Nothing here reads the clock or the network; `load_file` and `resolve_lines` read files.

use super::raw::{RawDefaults, RawRetries, RawSpec, RawStep};
use super::template;
use super::*;
use crate::cond;
use crate::json::{Json, fnv64};
use crate::units::{parse_duration_ms, parse_size_bytes};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Where a spec came from, so errors can point into it.
struct Origin<'a> {
    file: Option<&'a str>,
    toml: Option<&'a str>,
}

impl Origin<'_> {
    fn err(&self, step: Option<(usize, &str)>, key: &str, message: impl Into<String>) -> SpecError {
        let field = match step {
            Some((_, id)) if !id.is_empty() => format!("step \"{id}\".{key}"),
            Some((i, _)) => format!("step[{i}].{key}"),
            None => key.to_string(),
        };
        let top = key.split('.').next().unwrap_or(key);
        let line = self
            .toml
            .and_then(|src| locate_toml(src, step.map(|s| s.0), top));
        SpecError {
            file: self.file.map(str::to_string),
            line,
            column: None,
            field,
            message: message.into(),
        }
    }
}

/// Parses TOML text; syntax and type errors carry the line and column.
pub fn parse_toml(text: &str, file: Option<&str>) -> Result<RawSpec, SpecError> {
    toml::from_str::<RawSpec>(text).map_err(|e| {
        let (line, column) = e.span().map(|s| line_col(text, s.start)).unzip();
        SpecError {
            file: file.map(str::to_string),
            line,
            column,
            field: String::new(),
            message: e.message().trim().to_string(),
        }
    })
}

/// Parses a JSON spec (the API's form of the same model).
pub fn parse_json(value: serde_json::Value) -> Result<RawSpec, SpecError> {
    serde_json::from_value::<RawSpec>(value).map_err(|e| SpecError::field("spec", e.to_string()))
}

/// Reads, parses and validates a spec file, reading `map.lines` files relative to it.
pub fn load_file(path: &Path) -> Result<(RawSpec, Spec), SpecError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SpecError {
        file: Some(name.clone()),
        line: None,
        column: None,
        field: String::new(),
        message: format!("cannot read the spec: {e}"),
    })?;
    load_str(&text, Some(&name), path.parent().unwrap_or(Path::new(".")))
}

/// Parses and validates TOML text; errors point at `file`'s lines; `lines` files are read from `base`.
pub fn load_str(text: &str, file: Option<&str>, base: &Path) -> Result<(RawSpec, Spec), SpecError> {
    let mut raw = parse_toml(text, file)?;
    let origin = Origin {
        file,
        toml: Some(text),
    };
    resolve_lines_at(&mut raw, base, &origin)?;
    let spec = compile_at(&raw, &origin)?;
    Ok((raw, spec))
}

/// Replaces every `map.lines = "file"` by the file's non-empty lines (as strings).
pub fn resolve_lines(raw: &mut RawSpec, base: &Path) -> Result<(), SpecError> {
    resolve_lines_at(
        raw,
        base,
        &Origin {
            file: None,
            toml: None,
        },
    )
}

fn resolve_lines_at(raw: &mut RawSpec, base: &Path, origin: &Origin) -> Result<(), SpecError> {
    for (i, step) in raw.steps.iter_mut().enumerate() {
        let Some(map) = step.map.as_mut() else {
            continue;
        };
        let Some(file) = map.lines.take() else {
            continue;
        };
        let path = base.join(&file);
        let text = std::fs::read_to_string(&path).map_err(|e| {
            origin.err(
                Some((i, &step.id)),
                "map.lines",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        let items: Vec<serde_json::Value> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::Value::String(l.to_string()))
            .collect();
        if items.is_empty() {
            return Err(origin.err(
                Some((i, &step.id)),
                "map.lines",
                format!(
                    "{} has no non-empty lines: a map needs at least one item",
                    path.display()
                ),
            ));
        }
        map.items = Some(items);
    }
    Ok(())
}

/// Validates a parsed spec.
pub fn compile(raw: &RawSpec) -> Result<Spec, SpecError> {
    compile_at(
        raw,
        &Origin {
            file: None,
            toml: None,
        },
    )
}

/// A stable digest of a spec and its params (idempotency keys compare these).
pub fn spec_digest(raw: &RawSpec, params: &BTreeMap<String, serde_json::Value>) -> u64 {
    let text = serde_json::to_string(&(raw, params)).unwrap_or_default();
    fnv64(text.as_bytes())
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn compile_at(raw: &RawSpec, o: &Origin) -> Result<Spec, SpecError> {
    if raw.name.trim().is_empty() {
        return Err(o.err(None, "name", "must not be empty"));
    }
    if raw.steps.is_empty() {
        return Err(o.err(None, "step", "a workflow needs at least one [[step]]"));
    }
    let timeout_ms = raw
        .timeout
        .as_deref()
        .map(|t| positive_duration(t).map_err(|m| o.err(None, "timeout", m)))
        .transpose()?;
    let mut params = Vec::new();
    for (name, value) in &raw.params {
        if !valid_name(name) {
            return Err(o.err(
                None,
                "params",
                format!("param name {name:?} must be letters, digits, - or _"),
            ));
        }
        params.push((name.clone(), Json::from_value(value)));
    }
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, s) in raw.steps.iter().enumerate() {
        if !valid_name(&s.id) {
            return Err(o.err(
                Some((i, &s.id)),
                "id",
                format!("step id {:?} must be 1-64 letters, digits, - or _", s.id),
            ));
        }
        if index.insert(&s.id, i).is_some() {
            return Err(o.err(
                Some((i, &s.id)),
                "id",
                format!("duplicate step id \"{}\"", s.id),
            ));
        }
    }
    if raw.steps.len() > u16::MAX as usize {
        return Err(o.err(None, "step", "too many steps (at most 65535)"));
    }
    let defaults = raw.defaults.clone().unwrap_or_default();
    let mut steps = Vec::with_capacity(raw.steps.len());
    for (i, s) in raw.steps.iter().enumerate() {
        steps.push(compile_step(i, s, &index, &defaults, &params, o)?);
    }
    check_acyclic(&steps, o)?;
    let spec = Spec {
        name: raw.name.trim().to_string(),
        description: raw.description.clone().unwrap_or_default(),
        timeout_ms,
        params,
        steps,
    };
    super::map::check_lanes(&spec, |at, key, m| o.err(at, key, m))?;
    Ok(spec)
}

fn positive_duration(t: &str) -> Result<u64, String> {
    match parse_duration_ms(t)? {
        0 => Err(format!("duration {t:?} must be greater than zero")),
        ms => Ok(ms),
    }
}

fn compile_step(
    i: usize,
    s: &RawStep,
    index: &BTreeMap<&str, usize>,
    d: &RawDefaults,
    params: &[(String, Json)],
    o: &Origin,
) -> Result<StepSpec, SpecError> {
    let at = Some((i, s.id.as_str()));
    let err = |key: &str, m: String| o.err(at, key, m);
    let mut needs = Vec::new();
    for n in &s.needs {
        let Some(&j) = index.get(n.as_str()) else {
            return Err(err(
                "needs",
                format!(
                    "unknown step \"{n}\" (steps: {})",
                    index.keys().copied().collect::<Vec<_>>().join(", ")
                ),
            ));
        };
        if j == i {
            return Err(err("needs", format!("step \"{n}\" cannot need itself")));
        }
        if needs.contains(&(j as u16)) {
            return Err(err("needs", format!("\"{n}\" is listed twice")));
        }
        needs.push(j as u16);
    }
    let need_ids: Vec<&str> = s.needs.iter().map(String::as_str).collect();
    let all_ids: Vec<&str> = index.keys().copied().collect();
    let map = s
        .map
        .as_ref()
        .map(|m| super::map::compile_map(m, &needs, index))
        .transpose()
        .map_err(|m| err("map", m))?;
    let is_map = map.is_some();
    let is_from = matches!(map, Some(MapSource::From(_)));
    let scope = template::Scope {
        is_map,
        has_input: is_from,
    };
    let action = match (&s.run, &s.handler, &s.worker) {
        (_, _, Some(w)) => {
            if s.run.is_some() || s.handler.is_some() || s.with.is_some() {
                return Err(err(
                    "worker",
                    "give one of `run`, `handler` or `worker` (and `with` only with `handler`)"
                        .into(),
                ));
            }
            Action::Worker(compile_worker(w, params, &need_ids).map_err(|m| err("worker", m))?)
        }
        (Some(_), Some(_), None) => {
            return Err(err(
                "run",
                "give either `run` or `handler`, not both".into(),
            ));
        }
        (None, None, None) => {
            return Err(err(
                "run",
                "a step needs `run = [argv...]`, `worker = { run = [argv...] }` or `handler = \"noop|sleep|fail|echo\"`".into(),
            ));
        }
        (Some(argv), None, None) => {
            if argv.is_empty() || argv[0].trim().is_empty() {
                return Err(err("run", "argv must start with a program name".into()));
            }
            if s.with.is_some() {
                return Err(err(
                    "with",
                    "`with` applies to builtin handlers only".into(),
                ));
            }
            for a in argv {
                template::check_in(a, params, scope, &need_ids).map_err(|m| err("run", m))?;
            }
            Action::Run(argv.clone())
        }
        (None, Some(h), None) => {
            let handler = match h.as_str() {
                "noop" => Builtin::Noop,
                "sleep" => Builtin::Sleep,
                "fail" => Builtin::Fail,
                "echo" => Builtin::Echo,
                "http" => Builtin::Http,
                other => {
                    return Err(err(
                        "handler",
                        format!(
                            "unknown handler \"{other}\"; builtins are noop, sleep, fail, echo, http"
                        ),
                    ));
                }
            };
            let with = s.with.clone().unwrap_or(serde_json::Value::Null);
            if handler == Builtin::Http {
                super::http::HttpArgs::parse(&with).map_err(|(field, m)| {
                    let key = if field.is_empty() {
                        "with".to_string()
                    } else {
                        format!("with.{field}")
                    };
                    err(&key, m)
                })?;
            }
            check_with(handler, &with).map_err(|m| err("with", m))?;
            check_json_templates(&with, params, scope, &need_ids).map_err(|m| err("with", m))?;
            Action::Builtin {
                handler,
                with: Json::from_value(&with),
            }
        }
    };
    let mut env = Vec::new();
    let mut merged = d.env.clone();
    merged.extend(s.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    for (k, v) in &merged {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(err("env", format!("bad variable name {k:?}")));
        }
        if k.starts_with("TROUPE_") {
            return Err(err(
                "env",
                format!("{k} is reserved: Troupe sets TROUPE_* itself"),
            ));
        }
        // A worker's environment is set once per worker process: it may not name the item.
        let env_scope = if s.worker.is_some() {
            template::Scope {
                is_map: false,
                has_input: false,
            }
        } else {
            scope
        };
        template::check_in(v, params, env_scope, &need_ids).map_err(|m| err("env", m))?;
        env.push((k.clone(), v.clone()));
    }
    let resources = compile_resources(s.resources.as_ref().or(d.resources.as_ref()))
        .map_err(|m| err("resources", m))?;
    let retry = compile_retries(s.retries.as_ref().or(d.retries.as_ref()))
        .map_err(|m| err("retries", m))?;
    let timeout_ms = s
        .timeout
        .as_deref()
        .or(d.timeout.as_deref())
        .map(positive_duration)
        .transpose()
        .map_err(|m| err("timeout", m))?;
    let parallelism = match (s.parallelism, is_map) {
        (Some(0), _) => return Err(err("parallelism", "must be at least 1".into())),
        (Some(_), false) => {
            return Err(err(
                "parallelism",
                "applies to map steps only (add `map = ...`)".into(),
            ));
        }
        (Some(p), true) => p,
        (None, _) => 4096,
    };
    if let Some(w) = &s.when {
        // On a `from` step the condition is evaluated per item, with the item and its input.
        let vars: &[&str] = if is_from {
            &["item", "input", "steps", "params"]
        } else {
            &["steps", "params"]
        };
        cond::check(w, vars, &all_ids).map_err(|m| err("when", m))?;
    }
    let repeat = match &s.loop_ {
        None => None,
        Some(l) => {
            if is_map {
                return Err(err(
                    "loop",
                    "a step cannot both `map` and `loop`; put the loop in its own step".into(),
                ));
            }
            if l.max_iterations == 0 || l.max_iterations > 1000 {
                return Err(err(
                    "loop",
                    "max_iterations must be between 1 and 1000".into(),
                ));
            }
            cond::check(
                &l.until,
                &["output", "iteration", "steps", "params"],
                &all_ids,
            )
            .map_err(|m| err("loop", m))?;
            Some(LoopSpec {
                until: l.until.clone(),
                max_iterations: l.max_iterations,
            })
        }
    };
    let on_failure = match s.on_failure.as_deref().or(d.on_failure.as_deref()) {
        None | Some("fail") => OnFailure::Fail,
        Some("dead-letter") => OnFailure::DeadLetter,
        Some(other) => {
            return Err(err(
                "on_failure",
                format!("unknown value \"{other}\"; use \"fail\" or \"dead-letter\""),
            ));
        }
    };
    Ok(StepSpec {
        id: s.id.clone(),
        needs,
        action,
        env,
        resources,
        retry,
        timeout_ms,
        map,
        parallelism,
        when: s.when.clone(),
        optional: s.optional.unwrap_or(false),
        repeat,
        on_failure,
    })
}

/// A worker's argv and timings. Its argv is rendered once per worker, so it may name params and
/// the workflow, not the item or its input.
fn compile_worker(
    w: &super::raw::RawWorker,
    params: &[(String, Json)],
    need_ids: &[&str],
) -> Result<WorkerSpec, String> {
    if w.run.is_empty() || w.run[0].trim().is_empty() {
        return Err("`run` must start with a program name".into());
    }
    let scope = template::Scope {
        is_map: false,
        has_input: false,
    };
    for a in &w.run {
        template::check_in(a, params, scope, need_ids).map_err(|m| {
            format!("{m} (a worker serves many items: items reach it on stdin, not in its argv)")
        })?;
    }
    let batch = w.batch.unwrap_or(1);
    if !(1..=WORKER_BATCH_MAX).contains(&batch) {
        return Err(format!(
            "`batch` is {batch}; it must be 1 to {WORKER_BATCH_MAX}"
        ));
    }
    let ms = |v: &Option<String>, field: &str, default: u64| -> Result<u64, String> {
        v.as_deref()
            .map(|t| parse_duration_ms(t).map_err(|m| format!("`{field}`: {m}")))
            .transpose()
            .map(|d| d.unwrap_or(default))
    };
    let max_wait_ms = ms(&w.max_wait, "max_wait", 5)?;
    let idle_ms = ms(&w.idle, "idle", 60_000)?.max(1);
    let startup_timeout_ms = ms(&w.startup_timeout, "startup_timeout", 600_000)?.max(1);
    let max_workers = w.max_workers.unwrap_or(0);
    if max_workers > 4096 {
        return Err(format!("`max_workers` is {max_workers}; at most 4096"));
    }
    Ok(WorkerSpec {
        argv: w.run.clone(),
        batch,
        max_wait_ms,
        max_workers,
        idle_ms,
        startup_timeout_ms,
    })
}

fn check_with(handler: Builtin, with: &serde_json::Value) -> Result<(), String> {
    let obj = with.as_object();
    let get = |k: &str| obj.and_then(|m| m.get(k));
    match handler {
        Builtin::Sleep => match get("duration").and_then(|v| v.as_str()) {
            Some(d) if !d.contains("{{") => parse_duration_ms(d).map(|_| ()),
            Some(_) => Ok(()),
            None => Err("sleep needs `with = { duration = \"10ms\" }`".into()),
        },
        Builtin::Fail => match get("attempts") {
            None => Ok(()),
            Some(v) if v.as_u64().is_some() => Ok(()),
            Some(_) => Err(
                "`attempts` (how many attempts fail before one succeeds) must be a whole number"
                    .into(),
            ),
        },
        // Checked field by field by `HttpArgs::parse` (the error names the field).
        Builtin::Noop | Builtin::Echo | Builtin::Http => Ok(()),
    }
}

fn check_json_templates(
    v: &serde_json::Value,
    params: &[(String, Json)],
    scope: template::Scope,
    needs: &[&str],
) -> Result<(), String> {
    match v {
        serde_json::Value::String(s) => template::check_in(s, params, scope, needs),
        serde_json::Value::Array(a) => a
            .iter()
            .try_for_each(|x| check_json_templates(x, params, scope, needs)),
        serde_json::Value::Object(m) => m
            .values()
            .try_for_each(|x| check_json_templates(x, params, scope, needs)),
        _ => Ok(()),
    }
}

fn compile_resources(r: Option<&super::raw::RawResources>) -> Result<Resources, String> {
    let Some(r) = r else {
        return Ok(Resources::default());
    };
    let cpu = r.cpu.unwrap_or(0.0);
    if !(0.0..=1024.0).contains(&cpu) || cpu.is_nan() {
        return Err(format!(
            "cpu = {cpu}: give a number of cores between 0 and 1024"
        ));
    }
    let memory_bytes = r
        .memory
        .as_deref()
        .map(parse_size_bytes)
        .transpose()?
        .unwrap_or(0);
    let gpu = r.gpu.unwrap_or(0);
    if gpu > 64 {
        return Err(format!("gpu = {gpu}: at most 64 GPUs per task"));
    }
    let gpu_memory_bytes = r
        .gpu_memory
        .as_deref()
        .map(parse_size_bytes)
        .transpose()?
        .unwrap_or(0);
    if gpu == 0 && (gpu_memory_bytes > 0 || r.gpu_model.is_some()) {
        return Err("gpu_memory and gpu_model need gpu >= 1".into());
    }
    Ok(Resources {
        cpu_milli: (cpu * 1000.0).round() as u32,
        memory_bytes,
        gpu,
        gpu_memory_bytes,
        gpu_model: r.gpu_model.clone(),
        labels: r
            .node_labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    })
}

fn compile_retries(r: Option<&RawRetries>) -> Result<RetryPolicy, String> {
    let mut p = RetryPolicy::default();
    let Some(r) = r else { return Ok(p) };
    if let Some(a) = r.attempts {
        if a == 0 || a > 100 {
            return Err(format!("attempts = {a}: give 1 (no retry) to 100"));
        }
        p.attempts = a;
    }
    match r.backoff.as_deref() {
        None | Some("exponential") => p.exponential = true,
        Some("fixed") => p.exponential = false,
        Some(other) => {
            return Err(format!(
                "backoff = \"{other}\": use \"exponential\" or \"fixed\""
            ));
        }
    }
    if let Some(i) = &r.initial {
        p.initial_ms = parse_duration_ms(i)?;
    }
    if let Some(m) = &r.max {
        p.max_ms = parse_duration_ms(m)?;
    }
    if p.initial_ms > p.max_ms {
        return Err(format!(
            "initial ({}ms) is larger than max ({}ms)",
            p.initial_ms, p.max_ms
        ));
    }
    p.jitter = r.jitter.unwrap_or(true);
    Ok(p)
}

fn check_acyclic(steps: &[StepSpec], o: &Origin) -> Result<(), SpecError> {
    // Kahn's algorithm; what is left over contains a cycle, which we then walk to print it.
    let n = steps.len();
    let mut indegree: Vec<usize> = steps.iter().map(|s| s.needs.len()).collect();
    let mut ready: Vec<usize> = (0..n).filter(|&i| indegree[i] == 0).collect();
    let mut done = BTreeSet::new();
    while let Some(i) = ready.pop() {
        done.insert(i);
        for (j, s) in steps.iter().enumerate() {
            if s.needs.contains(&(i as u16)) {
                indegree[j] -= 1;
                if indegree[j] == 0 {
                    ready.push(j);
                }
            }
        }
    }
    if done.len() == n {
        return Ok(());
    }
    let start = (0..n).find(|i| !done.contains(i)).unwrap_or(0);
    let mut path = vec![start];
    let mut at = start;
    loop {
        let next = steps[at]
            .needs
            .iter()
            .map(|&x| x as usize)
            .find(|x| !done.contains(x))
            .unwrap_or(start);
        if let Some(pos) = path.iter().position(|&p| p == next) {
            let cycle: Vec<&str> = path[pos..]
                .iter()
                .chain(std::iter::once(&next))
                .map(|&k| steps[k].id.as_str())
                .collect();
            let first = path[pos];
            return Err(o.err(
                Some((first, &steps[first].id)),
                "needs",
                format!("cycle: {}", cycle.join(" -> ")),
            ));
        }
        path.push(next);
        at = next;
    }
}
