//! Rendering an assigned attempt into the runner's view (`RunSpec`): templates are rendered
//! here, inside apply, so every server renders the same argv.

use super::dag::steps_value;
use super::lane::{input_value, item_value};
use super::model::*;
use crate::command::{Launch, RunSpec, WorkerLaunch};
use crate::json::Json;
use crate::spec::http::escape_dollars;
use crate::spec::{Action, Builtin, TemplateVars, render, render_escaped};
use serde_json::Value;
use std::sync::Arc;

/// A worker step's rendered launch, kept while one command is applied: every item of a step
/// renders the same argv and env (worker templates may not name the item), so the items of one
/// `Assign` entry share one copy. Keyed by everything else a template may name that differs
/// between tasks (workflow, step, iteration, attempt).
#[derive(Default)]
pub(crate) struct LaunchCache(Option<(LaunchKey, Arc<WorkerLaunch>, String)>);

/// (workflow, step, iteration, attempt).
type LaunchKey = (WorkflowId, u16, u32, u32);

impl Sched {
    /// Builds the runner's view of an assigned attempt (templates rendered now, deterministically).
    pub(crate) fn run_spec(
        wf: &Workflow,
        r: TaskRef,
        attempt: u32,
        node: &str,
        epoch: u64,
        gpus: &[String],
    ) -> Result<RunSpec, String> {
        Self::run_spec_cached(
            wf,
            r,
            attempt,
            node,
            epoch,
            gpus,
            &mut LaunchCache::default(),
        )
    }

    /// [`Sched::run_spec`], reusing a worker launch rendered earlier in the same command.
    pub(crate) fn run_spec_cached(
        wf: &Workflow,
        r: TaskRef,
        attempt: u32,
        node: &str,
        epoch: u64,
        gpus: &[String],
        cache: &mut LaunchCache,
    ) -> Result<RunSpec, String> {
        let i = r.step as usize;
        let spec = &wf.spec.steps[i];
        let run = &wf.steps[i];
        let item = item_value(wf, i, r.item);
        let input = input_value(wf, i, r.item);
        let cache_key = (wf.id, r.step, run.iteration, attempt);
        let spec_of = |launch: Launch, item, input, workflow| RunSpec {
            task: r,
            attempt,
            epoch,
            node: node.to_string(),
            // A worker-step item has no log files of its own: what it prints goes to its
            // worker's log (`logs/<workflow>/<step>/worker-*.log`).
            log_stem: match launch {
                Launch::Worker { .. } => String::new(),
                _ => r.log_stem(&spec.id, attempt),
            },
            workflow,
            step_id: spec.id.clone(),
            item,
            input,
            iteration: run.iteration,
            launch,
            timeout_ms: spec.timeout_ms,
            gpus: gpus.to_vec(),
        };
        // A worker launch rendered earlier in this command: no template to render again.
        if let (Action::Worker(_), Some((k, l, name))) = (&spec.action, &cache.0)
            && *k == cache_key
        {
            let launch = Launch::Worker {
                launch: l.clone(),
                workers: 1,
            };
            return Ok(spec_of(launch, item, input, name.clone()));
        }
        let item_value = item.as_ref().map(Json::value);
        let input_value = input.as_ref().map(Json::value);
        let workflow = wf.name();
        let names_steps = match &spec.action {
            Action::Run(argv) => argv
                .iter()
                .chain(spec.env.iter().map(|(_, v)| v))
                .any(|t| t.contains("steps.")),
            Action::Builtin { with, .. } => with.0.contains("steps."),
            Action::Worker(w) => w
                .argv
                .iter()
                .chain(spec.env.iter().map(|(_, v)| v))
                .any(|t| t.contains("steps.")),
        };
        let steps = names_steps.then(|| steps_value(wf));
        let vars = TemplateVars {
            params: &wf.params,
            item: item_value.as_ref(),
            input: input_value.as_ref(),
            workflow_id: &workflow,
            workflow_name: &wf.spec.name,
            step_id: &spec.id,
            iteration: run.iteration,
            attempt,
            steps: steps.as_ref(),
        };
        let launch = match &spec.action {
            Action::Run(argv) => Launch::Process {
                argv: argv
                    .iter()
                    .map(|a| render(a, &vars))
                    .collect::<Result<_, _>>()?,
                env: spec
                    .env
                    .iter()
                    .map(|(k, v)| render(v, &vars).map(|v| (k.clone(), v)))
                    .collect::<Result<_, _>>()?,
            },
            Action::Builtin {
                handler: Builtin::Http,
                with,
            } => Launch::Builtin {
                handler: Builtin::Http,
                with: Json::from_value(&render_http(&with.value(), &vars)?),
            },
            Action::Builtin { handler, with } => Launch::Builtin {
                handler: *handler,
                with: Json::from_value(&render_json(&with.value(), &vars)?),
            },
            Action::Worker(w) => {
                let launch = Arc::new(WorkerLaunch {
                    argv: w
                        .argv
                        .iter()
                        .map(|a| render(a, &vars))
                        .collect::<Result<_, _>>()?,
                    env: spec
                        .env
                        .iter()
                        .map(|(k, v)| render(v, &vars).map(|v| (k.clone(), v)))
                        .collect::<Result<_, _>>()?,
                    worker: w.clone(),
                });
                cache.0 = Some((cache_key, launch.clone(), workflow.clone()));
                Launch::Worker { launch, workers: 1 }
            }
        };
        Ok(spec_of(launch, item, input, workflow))
    }
}

fn render_json(v: &Value, vars: &TemplateVars<'_>) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => Value::String(render(s, vars)?),
        Value::Array(a) => Value::Array(
            a.iter()
                .map(|x| render_json(x, vars))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, x)| render_json(x, vars).map(|x| (k.clone(), x)))
                .collect::<Result<_, _>>()?,
        ),
        other => other.clone(),
    })
}

/// `with` of an `http` step: like [`render_json`], but in `url` and the header values the text a
/// template brings in has its `$` doubled, so only `${env:NAME}` written in the spec itself is
/// replaced on the node (an item cannot make the node send one of its variables).
fn render_http(v: &Value, vars: &TemplateVars<'_>) -> Result<Value, String> {
    let Value::Object(m) = v else {
        return render_json(v, vars);
    };
    let esc = |s: &str| render_escaped(s, vars, &|t| escape_dollars(&t));
    m.iter()
        .map(|(k, x)| {
            let x = match (k.as_str(), x) {
                ("url", Value::String(s)) => Value::String(esc(s)?),
                ("headers", Value::Object(h)) => Value::Object(
                    h.iter()
                        .map(|(hk, hv)| match hv {
                            Value::String(s) => esc(s).map(|s| (hk.clone(), Value::String(s))),
                            other => Ok((hk.clone(), other.clone())),
                        })
                        .collect::<Result<_, String>>()?,
                ),
                _ => render_json(x, vars)?,
            };
            Ok((k.clone(), x))
        })
        .collect::<Result<serde_json::Map<_, _>, String>>()
        .map(Value::Object)
}
