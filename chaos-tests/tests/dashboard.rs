//! The web dashboard in a real headless Chromium (driven over WebDriver, see
//! `troupe_chaos_tests::browser`), against a real `troupe dev`: the workflows list and its
//! filters, a workflow's DAG, funnel, history, items and logs, the dead-letter queue and a
//! redrive clicked in the page (the entry leaves, the workflow goes on to succeed), the nodes
//! page and a drain, the Raft page; a workflow named with HTML shows as text and runs no
//! script; with `--tokens` the page asks for a token and sends it.
//!
//! Needs `chromium` and `chromium-driver` (`.ci/run` installs them); without them the tests
//! fail, saying so. `TROUPE_SCREENSHOTS=docs/images` saves the screenshots of the README.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;
use troupe_chaos_tests::TestNode;
use troupe_chaos_tests::browser::{Browser, require_chromium};

/// One browser and one node at a time (a 2-core machine).
static SERIAL: Mutex<()> = Mutex::new(());

const WAIT: Duration = Duration::from_secs(30);

/// A name that runs script if anything puts it in the page as HTML.
const HOSTILE: &str = r#"<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>"#;

fn ok_spec() -> String {
    r#"
name = "nightly-report"
[[step]]
id = "extract"
handler = "echo"
with = { rows = 3 }
[[step]]
id = "transform"
needs = ["extract"]
map = { range = [0, 3] }
run = ["sh", "-c", "echo transformed $TROUPE_ITEM"]
[[step]]
id = "load"
needs = ["transform"]
handler = "noop"
"#
    .to_string()
}

/// A branch (`index`) beside `ocr`; item 2 fails at `ocr` (its stderr has HTML in it) until `marks/fixed` exists.
fn claims_spec(marks: &Path) -> String {
    let m = marks.display();
    format!(
        r#"
name = "claims-intake"
[[step]]
id = "ingest"
map = {{ range = [0, 4] }}
run = ["sh", "-c", "true"]
[[step]]
id = "ocr"
needs = ["ingest"]
map = {{ from = "ingest" }}
retries = {{ attempts = 2, initial = "10ms" }}
on_failure = "dead-letter"
run = ["sh", "-c", "i=${{TROUPE_TASK_ID##*/}}; echo ocr item $i; if [ $i = 2 ] && [ ! -e {m}/fixed ]; then echo 'unsupported encoding <b onmouseover=x>legacy</b>' >&2; exit 3; fi"]
[[step]]
id = "index"
needs = ["ingest"]
map = {{ from = "ingest" }}
run = ["sh", "-c", "true"]
[[step]]
id = "publish"
needs = ["ocr"]
map = {{ from = "ocr" }}
run = ["sh", "-c", "true"]
"#
    )
}

fn hostile_spec() -> String {
    format!("name = '{HOSTILE}'\n[[step]]\nid = \"a\"\nhandler = \"noop\"\n")
}

fn shots() -> Option<PathBuf> {
    std::env::var_os("TROUPE_SCREENSHOTS").map(|d| {
        let d = PathBuf::from(d);
        if d.is_absolute() {
            d
        } else {
            // Relative to the repository root (cargo runs tests in the crate's directory).
            Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(d)
        }
    })
}

fn shoot(b: &Browser, name: &str) {
    if let Some(dir) = shots() {
        // Let the last poll land and the layout settle.
        std::thread::sleep(Duration::from_millis(400));
        b.save_screenshot(&dir.join(name));
    }
}

/// The workflows table as the page shows it: (id, name, status).
fn workflow_rows(b: &Browser) -> Vec<(String, String, String)> {
    let v = b.js(
        "return [...document.querySelectorAll('#wf-rows tr[data-id]')].map(r => \
         [r.dataset.id, r.querySelector('.wf-name').textContent, r.querySelector('[data-status]').dataset.status])",
        vec![],
    );
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |i: usize| r[i].as_str().unwrap().to_string();
            (s(0), s(1), s(2))
        })
        .collect()
}

/// No markup from the data reached the DOM, and none of it ran.
fn assert_no_script_ran(b: &Browser) {
    let v = b.js(
        "return { xss: window.__xss === undefined ? null : window.__xss, \
         imgs: document.querySelectorAll('main img, main script, main b').length }",
        vec![],
    );
    assert_eq!(
        v,
        json!({ "xss": null, "imgs": 0 }),
        "hostile data ran or was parsed"
    );
}

#[test]
fn the_dashboard_shows_workflows_dlq_nodes_and_raft_and_redrives() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_chromium();
    let tmp = tempfile::tempdir().unwrap();
    let marks = tmp.path().join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let node = TestNode::start(
        &tmp.path().join("data"),
        &["--simulate-gpus", "2xH100:80GiB"],
    );
    let good = node.submit(&ok_spec());
    let claims = node.submit(&claims_spec(&marks));
    let hostile = node.submit(&hostile_spec());
    assert_eq!(node.wait(&good, WAIT)["status"], "succeeded");
    assert_eq!(node.wait(&claims, WAIT)["status"], "degraded");
    assert_eq!(node.wait(&hostile, WAIT)["status"], "succeeded");

    let b = Browser::start(&tmp.path().join("chromium"));
    let base = node.api.clone();

    // The list: every workflow with its status; the hostile name is text.
    b.goto(&format!("{base}/"));
    b.wait_js(
        "three workflows listed",
        WAIT,
        "return document.querySelectorAll('#wf-rows tr[data-id]').length === 3",
    );
    let rows = workflow_rows(&b);
    let find = |id: &str| rows.iter().find(|r| r.0 == id).cloned().unwrap();
    assert_eq!(
        find(&good),
        (good.clone(), "nightly-report".into(), "succeeded".into())
    );
    assert_eq!(
        find(&claims),
        (claims.clone(), "claims-intake".into(), "degraded".into())
    );
    assert_eq!(
        find(&hostile),
        (hostile.clone(), HOSTILE.into(), "succeeded".into())
    );
    assert_no_script_ran(&b);
    shoot(&b, "dashboard-workflows.png");

    // Filters: by status (the select), by name (typed).
    b.js(
        "const s = document.getElementById('f-status'); s.value = 'degraded'; \
         s.dispatchEvent(new Event('change'));",
        vec![],
    );
    b.wait_js(
        "only the degraded workflow",
        WAIT,
        "const r = [...document.querySelectorAll('#wf-rows tr[data-id]')]; \
         return r.length === 1 && r[0].dataset.id",
    );
    assert_eq!(workflow_rows(&b)[0].0, claims);
    b.js(
        "const s = document.getElementById('f-status'); s.value = ''; \
         s.dispatchEvent(new Event('change'));",
        vec![],
    );
    b.type_into("#f-name", "nightly");
    b.wait_js(
        "only the workflow named nightly",
        WAIT,
        "const r = [...document.querySelectorAll('#wf-rows tr[data-id]')]; \
         return r.length === 1 && r[0].dataset.id",
    );
    assert_eq!(workflow_rows(&b)[0].0, good);

    // The hostile workflow's own page: the name is the title's text.
    b.goto(&format!("{base}/#/workflows/{hostile}"));
    let title = b.wait_js(
        "the hostile workflow's title",
        WAIT,
        "const t = document.getElementById('wf-title'); return t && t.textContent",
    );
    assert_eq!(title, HOSTILE);
    assert_no_script_ran(&b);

    // The degraded workflow: DAG nodes and edges, the funnel, history.
    b.goto(&format!("{base}/#/workflows/{claims}"));
    let dag = b.wait_js(
        "the DAG",
        WAIT,
        "const n = [...document.querySelectorAll('#dag g.node')].map(g => g.dataset.step); \
         return n.length && { nodes: n, edges: [...document.querySelectorAll('#dag path.edge')] \
         .map(e => e.dataset.from + '>' + e.dataset.to), \
         text: [...document.querySelectorAll('#dag g.node text.step-name')].map(t => t.textContent) }",
    );
    assert_eq!(
        dag,
        json!({ "nodes": ["ingest", "ocr", "index", "publish"],
                "edges": ["ingest>ocr", "ingest>index", "ocr>publish"],
                "text": ["ingest", "ocr", "index", "publish"] })
    );
    let funnel = |step: &str| -> Value {
        b.js(
            "const r = document.querySelector(`#funnel-rows tr[data-step='${arguments[0]}']`); \
             const o = {}; r.querySelectorAll('td[data-bucket]').forEach(td => { \
             if (td.textContent) o[td.dataset.bucket] = Number(td.textContent) }); return o",
            vec![json!(step)],
        )
    };
    assert_eq!(funnel("ingest"), json!({ "succeeded": 4 }));
    assert_eq!(funnel("ocr"), json!({ "succeeded": 3, "dead_lettered": 1 }));
    assert_eq!(funnel("index"), json!({ "succeeded": 4 }));
    assert_eq!(funnel("publish"), json!({ "succeeded": 3, "blocked": 1 }));
    let history = b.js(
        "return [...document.querySelectorAll('#history-rows tr')].map(r => r.lastChild.textContent)",
        vec![],
    );
    assert!(
        history.as_array().is_some_and(|h| h.len() >= 2),
        "{history}"
    );
    shoot(&b, "dashboard-workflow.png");

    // Items of a step (clicking its DAG node), then one item's attempts and logs.
    b.click("#dag g.node[data-step='ocr'] rect");
    let item2 = b.wait_js(
        "the items of ocr",
        WAIT,
        "const r = document.querySelector('#item-rows tr[data-item=\"2\"]'); \
         return r && r.querySelector('[data-status]').dataset.status",
    );
    assert_eq!(item2, "dead_lettered");
    b.click("#item-rows tr[data-item='2'] a");
    let stderr = b.wait_js(
        "item 2's stderr",
        WAIT,
        "const e = document.getElementById('log-stderr'); \
         return e && e.textContent.includes('unsupported') && e.textContent",
    );
    assert!(
        stderr
            .as_str()
            .unwrap()
            .contains("unsupported encoding <b onmouseover=x>legacy</b>"),
        "{stderr}"
    );
    let stdout = b.js(
        "return document.getElementById('log-stdout').textContent",
        vec![],
    );
    assert!(stdout.as_str().unwrap().contains("ocr item 2"), "{stdout}");
    assert_no_script_ran(&b);

    // The DLQ: filters, the entry, then a redrive clicked in the page.
    b.goto(&format!("{base}/#/dlq?grep=no-such-error"));
    b.wait_js(
        "an empty filtered DLQ",
        WAIT,
        "const t = document.getElementById('dlq-total'); return t && t.textContent.startsWith('0 ')",
    );
    b.goto(&format!("{base}/#/dlq?workflow={claims}&step=ocr"));
    let entries = b.wait_js(
        "the dead letter",
        WAIT,
        "return [...document.querySelectorAll('#dlq-rows tr[data-id]')].map(r => \
         ({ workflow: r.dataset.workflow, cells: [...r.children].map(c => c.textContent) }))",
    );
    let entries = entries.as_array().unwrap();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0]["workflow"], claims.as_str());
    let cells: Vec<&str> = entries[0]["cells"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(cells[3], "ocr", "{cells:?}");
    assert_eq!(cells[4], "2", "{cells:?}");
    assert!(
        cells[8].contains("unsupported encoding <b onmouseover=x>"),
        "{cells:?}"
    );
    assert_no_script_ran(&b);
    shoot(&b, "dashboard-dlq.png");
    std::fs::write(marks.join("fixed"), "").unwrap();
    b.click("#dlq-rows tr[data-id] button.redrive-one");
    b.wait_js(
        "the redriven entry to leave the list",
        WAIT,
        "return document.querySelectorAll('#dlq-rows tr[data-id]').length === 0 && \
         document.getElementById('dlq-out').textContent",
    );
    let v = node.wait(&claims, WAIT);
    assert_eq!(v["status"], "succeeded", "{v}");
    let (_, dlq) = node.get("/v1/dlq");
    assert_eq!(dlq["total"], 0, "{dlq}");
    b.goto(&format!("{base}/#/workflows/{claims}"));
    b.wait_js(
        "the workflow page to show it succeeded",
        WAIT,
        "const b = document.querySelector('#wf-head [data-status]'); \
         return b && b.dataset.status === 'succeeded'",
    );
    assert_eq!(funnel("publish"), json!({ "succeeded": 4 }));

    // Nodes: the node with its capacity and a GPU held by a running attempt.
    let train = node.submit(
        "name = \"train\"\n[[step]]\nid = \"fit\"\nresources = { cpu = 1, gpu = 1 }\nrun = [\"sleep\", \"60\"]\n",
    );
    node.wait_until(&train, WAIT, "fit running", |v| {
        v["step_runs"][0]["funnel"]["running"] == 1
    });
    let (_, nodes) = node.get("/v1/nodes");
    let id = nodes["nodes"][0]["id"].as_str().unwrap().to_string();
    b.goto(&format!("{base}/#/nodes"));
    let mut shown = b.wait_js(
        "the node with a GPU in use",
        WAIT,
        "return [...document.querySelectorAll('#node-rows tr[data-node]')].filter(r => \
         r.querySelector('.gpu.in-use')).map(r => ({ id: r.dataset.node, \
         status: r.querySelector('[data-status]').dataset.status, \
         gpus: [...r.querySelectorAll('.gpu')].map(g => g.textContent), \
         cpu: r.querySelector('.meter-label').textContent }))",
    );
    // One of the node's cores allocated (however many it has).
    assert!(
        shown[0]["cpu"].as_str().unwrap().starts_with("1 / "),
        "{shown}"
    );
    shown[0]["cpu"] = json!(null);
    assert_eq!(
        shown,
        json!([{ "id": id, "status": "up", "cpu": null,
                 "gpus": ["GPU 0 Simulated H100 80.0 GiB · in use",
                          "GPU 1 Simulated H100 80.0 GiB · free"] }]),
        "{shown}"
    );
    shoot(&b, "dashboard-nodes.png");
    // Cancelled from its page, which follows it live: running, then cancelled.
    b.goto(&format!("{base}/#/workflows/{train}"));
    b.wait_js(
        "fit running in the funnel",
        WAIT,
        "const td = document.querySelector(\"#funnel-rows tr[data-step='fit'] td[data-bucket='running']\"); \
         return td && td.textContent === '1'",
    );
    b.click("#wf-cancel");
    assert_eq!(node.wait(&train, WAIT)["status"], "cancelled");
    b.wait_js(
        "the retry button of a cancelled workflow",
        WAIT,
        "return !!document.getElementById('wf-retry') && !document.getElementById('wf-cancel')",
    );

    // A drain and back.
    b.goto(&format!("{base}/#/nodes"));
    b.click("#node-rows button[data-action='drain']");
    b.wait_js(
        "the node draining",
        WAIT,
        "const s = document.querySelector('#node-rows [data-status]'); \
         return s && s.dataset.status === 'draining'",
    );
    assert_eq!(node.get("/v1/nodes").1["nodes"][0]["status"], "draining");
    b.click("#node-rows button[data-action='undrain']");
    b.wait_js(
        "the node up again",
        WAIT,
        "const s = document.querySelector('#node-rows [data-status]'); \
         return s && s.dataset.status === 'up'",
    );

    // Warm worker groups and broken workers (in the node JSON of clusters with worker steps):
    // shown as text. The answers are doctored in the page, so this needs no worker step.
    b.js(
        "const real = window.fetch; window.fetch = async (u, o) => { const r = await real(u, o); \
         if (!String(u).startsWith('/v1/nodes')) return r; const j = await r.json(); \
         j.nodes.forEach(n => { n.workers = [{ step: 'wf-9/score', workers: 2, tasks: 5, gpus: ['SIM-GPU-1'] }]; \
         n.broken_workers = ['wf-9/embed: <img src=x onerror=\"window.__xss=4\">exited 1']; }); \
         return new Response(JSON.stringify(j), { status: r.status, headers: { 'content-type': 'application/json' } }); }; \
         location.hash = '#/raft'; setTimeout(() => { location.hash = '#/nodes' }, 50);",
        vec![],
    );
    let workers = b.wait_js(
        "the warm and broken workers",
        WAIT,
        "const w = [...document.querySelectorAll('#node-rows .workers li')].map(l => l.textContent); \
         const k = [...document.querySelectorAll('#node-rows .broken-workers li')].map(l => l.textContent); \
         return w.length && k.length && { warm: w, broken: k }",
    );
    assert_eq!(
        workers,
        json!({ "warm": ["wf-9/score: 2 worker(s), 5 task(s) on SIM-GPU-1"],
                "broken": ["wf-9/embed: <img src=x onerror=\"window.__xss=4\">exited 1"] })
    );
    assert_no_script_ran(&b);

    // Raft: this node leads its one-server group.
    b.goto(&format!("{base}/#/raft"));
    let raft = b.wait_js(
        "the raft status",
        WAIT,
        "const d = k => { const e = document.querySelector(`#raft-status dd[data-k='${k}']`); \
         return e && e.textContent }; const s = [...document.querySelectorAll('#servers tr[data-raft-id]')]; \
         return d('Term') && { term: d('Term'), commit: d('Commit index'), applied: d('Applied index'), \
         servers: s.map(r => r.textContent) }",
    );
    let (_, health) = node.get("/v1/health");
    assert_eq!(raft["term"], health["term"].to_string(), "{raft}");
    assert!(
        raft["commit"].as_str().unwrap().parse::<u64>().unwrap() > 0,
        "{raft}"
    );
    assert_eq!(raft["servers"], json!(["1leader (this node)"]), "{raft}");
    shoot(&b, "dashboard-raft.png");
    assert_no_script_ran(&b);
}

#[test]
fn with_tokens_the_page_asks_for_one_and_sends_it() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    require_chromium();
    let tmp = tempfile::tempdir().unwrap();
    let (secret, operate) = ("dashboard-read-0123456789", "dashboard-operate-0123456789");
    let tokens = tmp.path().join("tokens.toml");
    std::fs::write(
        &tokens,
        format!(
            "[[token]]\nname = \"viewer\"\nsecret = \"{secret}\"\nrole = \"read\"\n\n\
             [[token]]\nname = \"ci\"\nsecret = \"{operate}\"\nrole = \"operate\"\n"
        ),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let args: Vec<String> = [
        "dev",
        "--listen",
        "127.0.0.1:0",
        "--data",
        &data.display().to_string(),
        "--tokens",
        &tokens.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The harness submits with the operate token; the browser gets the read one.
    let node = TestNode::spawn_token(&data, &args, true, &[], Some(operate));
    let id = node.submit(&ok_spec());
    node.wait(&id, WAIT);
    let base = node.api.clone();

    // The page and its files need no token; the data does.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    for path in ["/", "/ui/app.js", "/ui/app.css"] {
        let r = agent.get(&format!("{base}{path}")).call().unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        let csp = r.headers().get("content-security-policy").unwrap();
        assert!(csp.to_str().unwrap().contains("script-src 'self'"));
    }
    let r = agent.get(&format!("{base}/v1/workflows")).call().unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let b = Browser::start(&tmp.path().join("chromium"));
    b.goto(&format!("{base}/#/workflows"));
    b.wait_js(
        "the token dialog",
        WAIT,
        "const d = document.getElementById('token-dialog'); return d.open",
    );
    let listed = b.js(
        "return document.querySelectorAll('#wf-rows tr[data-id]').length",
        vec![],
    );
    assert_eq!(listed, 0);
    b.type_into("#token-input", secret);
    b.click("#token-save");
    let rows = b.wait_js(
        "the list, with the token",
        WAIT,
        "return [...document.querySelectorAll('#wf-rows tr[data-id]')].map(r => r.dataset.id)",
    );
    assert_eq!(rows, json!([id]));
    let kept = b.js("return sessionStorage.getItem('troupe.token')", vec![]);
    assert_eq!(kept, secret);
    // A read token may look but not act: the page shows the API's refusal.
    b.goto(&format!("{base}/#/nodes"));
    b.click("#node-rows button[data-action='drain']");
    let out = b.wait_js(
        "the refusal",
        WAIT,
        "const o = document.getElementById('nodes-out'); \
         return o && o.textContent.includes('failed') && o.textContent",
    );
    assert!(
        out.as_str().unwrap().contains("needs the admin role"),
        "{out}"
    );
    assert_eq!(node.get("/v1/nodes").1["nodes"][0]["status"], "up");
}
