//! `{{ path }}` templates in argv, env values and builtin arguments.
//!
//! A template names one value: `params.<name>`, `item`, `item.<field>…`, `workflow.id`,
//! `workflow.name`, `step.id`, `iteration`, `attempt` or `steps.<id>.output[.<field>…]` (the
//! output of a step listed in `needs`; a map step's output is the array of its item outputs). Strings render as they are, other
//! values as compact JSON. There is no expression language here on purpose: argv stays argv.

use serde_json::Value;

/// The values a template may name, for one attempt.
pub struct TemplateVars<'a> {
    pub params: &'a [(String, crate::json::Json)],
    pub item: Option<&'a Value>,
    /// `from` steps: the upstream item's output.
    pub input: Option<&'a Value>,
    pub workflow_id: &'a str,
    pub workflow_name: &'a str,
    pub step_id: &'a str,
    pub iteration: u32,
    pub attempt: u32,
    /// The `steps` value (computed only when a template names it).
    pub steps: Option<&'a Value>,
}

/// The dotted paths used by a template, for validation.
pub fn references(template: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in {template:?}"))?;
        let path = after[..end].trim();
        if path.is_empty() {
            return Err(format!("empty `{{{{ }}}}` in {template:?}"));
        }
        out.push(path.to_string());
        rest = &after[end + 2..];
    }
    Ok(out)
}

/// Renders a template; an unknown or missing value is an error naming it.
pub fn render(template: &str, vars: &TemplateVars<'_>) -> Result<String, String> {
    render_escaped(template, vars, &|v| v)
}

/// [`render`], passing each value a template brings in through `escape` (the literal text of
/// the template is kept as it is).
pub fn render_escaped(
    template: &str,
    vars: &TemplateVars<'_>,
    escape: &dyn Fn(String) -> String,
) -> Result<String, String> {
    if !template.contains("{{") {
        return Ok(template.to_string());
    }
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .ok_or_else(|| format!("unclosed `{{{{` in {template:?}"))?;
        let path = after[..end].trim();
        out.push_str(&escape(lookup(path, vars)?));
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    Ok(out)
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn lookup(path: &str, vars: &TemplateVars<'_>) -> Result<String, String> {
    let mut parts = path.split('.');
    let head = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    match (head, rest.as_slice()) {
        ("params", [name, tail @ ..]) => {
            let value = vars
                .params
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.value())
                .ok_or_else(|| format!("unknown param `{name}` in `{{{{ {path} }}}}`"))?;
            descend(&value, tail, path).map(|v| as_text(&v))
        }
        ("item", tail) => {
            let item = vars
                .item
                .ok_or_else(|| format!("`{{{{ {path} }}}}` is only defined in map steps"))?;
            descend(item, tail, path).map(|v| as_text(&v))
        }
        ("input", tail) => {
            let input = vars
                .input
                .ok_or_else(|| format!("`{{{{ {path} }}}}` is only defined in `map.from` steps"))?;
            descend(input, tail, path).map(|v| as_text(&v))
        }
        ("workflow", ["id"]) => Ok(vars.workflow_id.to_string()),
        ("workflow", ["name"]) => Ok(vars.workflow_name.to_string()),
        ("step", ["id"]) => Ok(vars.step_id.to_string()),
        ("steps", [id, "output", tail @ ..]) => {
            let steps = vars.steps.ok_or_else(|| {
                format!("`{{{{ {path} }}}}`: step outputs are not available here")
            })?;
            let out = steps
                .get(*id)
                .and_then(|s| s.get("output"))
                .ok_or_else(|| format!("`{{{{ {path} }}}}`: no step `{id}`"))?;
            descend(out, tail, path).map(|v| as_text(&v))
        }
        ("iteration", []) => Ok(vars.iteration.to_string()),
        ("attempt", []) => Ok(vars.attempt.to_string()),
        _ => Err(format!(
            "unknown template `{{{{ {path} }}}}`; use params.<name>, item, item.<field>, input, workflow.id, workflow.name, step.id, iteration or attempt"
        )),
    }
}

fn descend(value: &Value, tail: &[&str], path: &str) -> Result<Value, String> {
    let mut v = value;
    for key in tail {
        v = match v {
            Value::Object(m) => m.get(*key),
            Value::Array(a) => key.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        }
        .ok_or_else(|| format!("`{{{{ {path} }}}}`: no field `{key}`"))?;
    }
    Ok(v.clone())
}

/// Where a template is used: which of `item` and `input` exist there.
#[derive(Debug, Clone, Copy, Default)]
pub struct Scope {
    pub is_map: bool,
    /// `map.from` steps have `input`.
    pub has_input: bool,
}

/// Checks a template's references at submit time (params must exist; `item` only in map
/// steps, `input` only in `map.from` steps).
pub fn check_in(
    template: &str,
    params: &[(String, crate::json::Json)],
    scope: Scope,
    needs: &[&str],
) -> Result<(), String> {
    let is_map = scope.is_map;
    for path in references(template)? {
        let mut parts = path.split('.');
        match parts.next().unwrap_or_default() {
            "params" => {
                let name = parts.next().unwrap_or_default();
                if !params.iter().any(|(n, _)| n == name) {
                    let declared: Vec<&str> = params.iter().map(|(n, _)| n.as_str()).collect();
                    return Err(format!(
                        "`{{{{ {path} }}}}` names param `{name}`, which is not declared in [params] (declared: {})",
                        if declared.is_empty() {
                            "none".to_string()
                        } else {
                            declared.join(", ")
                        }
                    ));
                }
            }
            "item" if !is_map => {
                return Err(format!(
                    "`{{{{ {path} }}}}` is only defined in map steps (add `map = ...`)"
                ));
            }
            "item" => {}
            "input" if !scope.has_input => {
                return Err(format!(
                    "`{{{{ {path} }}}}` is only defined in steps with `map = {{ from = ... }}`"
                ));
            }
            "input" => {}
            "iteration" | "attempt" if parts.next().is_none() => {}
            "iteration" | "attempt" => {
                return Err(format!(
                    "`{{{{ {path} }}}}`: iteration and attempt are numbers without fields"
                ));
            }
            "steps" => {
                let (id, field) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                if field != "output" || !needs.contains(&id) {
                    return Err(format!(
                        "`{{{{ {path} }}}}`: write steps.<id>.output[.field], where <id> is listed in `needs`"
                    ));
                }
            }
            "workflow" | "step" => {
                let vars = TemplateVars {
                    params,
                    item: None,
                    input: None,
                    workflow_id: "",
                    workflow_name: "",
                    step_id: "",
                    iteration: 0,
                    attempt: 0,
                    steps: None,
                };
                lookup(&path, &vars)?;
            }
            _ => {
                return Err(format!(
                    "unknown template `{{{{ {path} }}}}`; use params.<name>, item, item.<field>, input, workflow.id, workflow.name, step.id, iteration or attempt"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::Json;

    #[test]
    fn renders_params_items_and_ids() {
        let params = vec![
            ("model".to_string(), Json("\"m.onnx\"".into())),
            ("n".to_string(), Json("3".into())),
        ];
        let item = serde_json::json!({"shard": "s-1", "k": [1, 2]});
        let vars = TemplateVars {
            params: &params,
            item: Some(&item),
            input: None,
            workflow_id: "wf-7",
            workflow_name: "w",
            step_id: "score",
            iteration: 2,
            attempt: 1,
            steps: None,
        };
        assert_eq!(
            render("--model={{ params.model }}", &vars).unwrap(),
            "--model=m.onnx"
        );
        assert_eq!(
            render("{{params.n}}/{{ item.shard }}/{{item.k.1}}", &vars).unwrap(),
            "3/s-1/2"
        );
        assert_eq!(
            render("{{ workflow.id }}-{{ iteration }}", &vars).unwrap(),
            "wf-7-2"
        );
        assert!(
            render("{{ params.nope }}", &vars)
                .unwrap_err()
                .contains("unknown param")
        );
        assert!(
            render("{{ item.missing }}", &vars)
                .unwrap_err()
                .contains("no field")
        );
        assert!(render("{{ item", &vars).is_err());
    }

    #[test]
    fn check_rejects_undeclared_params_and_item_outside_map() {
        let params = vec![("a".to_string(), Json("1".into()))];
        assert!(
            check_in(
                "{{ params.a }}",
                &params,
                Scope {
                    is_map: false,
                    has_input: false
                },
                &[]
            )
            .is_ok()
        );
        assert!(
            check_in(
                "{{ params.b }}",
                &params,
                Scope {
                    is_map: false,
                    has_input: false
                },
                &[]
            )
            .unwrap_err()
            .contains("not declared")
        );
        assert!(
            check_in(
                "{{ item }}",
                &params,
                Scope {
                    is_map: false,
                    has_input: false
                },
                &[]
            )
            .unwrap_err()
            .contains("map steps")
        );
        assert!(
            check_in(
                "{{ item }}",
                &params,
                Scope {
                    is_map: true,
                    has_input: false
                },
                &[]
            )
            .is_ok()
        );
        assert!(
            check_in(
                "{{ bogus }}",
                &params,
                Scope {
                    is_map: true,
                    has_input: false
                },
                &[]
            )
            .is_err()
        );
    }
}
