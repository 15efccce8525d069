//! The `http` handler against a real model-server stand-in: a small HTTP/1.1 server in the test
//! (std threads, keep-alive) that answers 429 with `Retry-After`, counts the requests in flight,
//! and records what it was sent.

use serde_json::{Value, json};
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use troupe_chaos_tests::{TestNode, history, step};

/// One request as the server saw it.
#[derive(Clone, Debug)]
struct Seen {
    at: Instant,
    path: String,
    headers: HashMap<String, String>,
    body: String,
}

#[derive(Default)]
struct Stats {
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    seen: Mutex<Vec<Seen>>,
}

struct Server {
    port: u16,
    stats: Arc<Stats>,
}

impl Server {
    fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Server { port, stats }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn seen(&self, path: &str) -> Vec<Seen> {
        let all = self.stats.seen.lock().unwrap();
        all.iter().filter(|r| r.path == path).cloned().collect()
    }
}

/// Serves requests on one connection until the client closes it.
fn serve(conn: TcpStream, s: &Stats) {
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let n: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; n];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        s.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let nth = {
            let mut seen = s.seen.lock().unwrap();
            seen.push(Seen {
                at: Instant::now(),
                path: path.clone(),
                headers,
                body: String::from_utf8_lossy(&body).into(),
            });
            seen.iter().filter(|x| x.path == path).count()
        };
        let (status, extra, answer) = match path.as_str() {
            // Busy twice, then the answer.
            "/flaky" if nth <= 2 => (
                "429 Too Many Requests",
                "Retry-After: 1\r\n",
                json!({"error": "busy"}),
            ),
            "/flaky" => ("200 OK", "", json!({"answer": 42, "calls": nth})),
            "/missing" => ("404 Not Found", "", json!({"error": "no such model"})),
            // A model call that takes a while: echoes what it was sent.
            "/score" => {
                std::thread::sleep(Duration::from_millis(60));
                let sent: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                ("200 OK", "", json!({"score": sent}))
            }
            _ => ("200 OK", "", json!({"ok": true})),
        };
        s.in_flight.fetch_sub(1, Ordering::SeqCst);
        let text = answer.to_string();
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}\r\n",
            text.len()
        );
        if out.write_all(head.as_bytes()).is_err() || out.write_all(text.as_bytes()).is_err() {
            return;
        }
    }
}

fn node(env: &[(&str, &str)]) -> (tempfile::TempDir, TestNode) {
    let tmp = tempfile::tempdir().unwrap();
    // More slots than the step's concurrency, so the limit is what holds requests back.
    let node = TestNode::start_env(&tmp.path().join("data"), &["--slots", "16"], env);
    (tmp, node)
}

#[test]
fn retry_after_is_honoured_and_the_answer_is_the_output() {
    let server = Server::start();
    let (_tmp, node) = node(&[]);
    let id = node.submit(&format!(
        r#"name = "flaky-model"
[[step]]
id = "call"
handler = "http"
with = {{ url = "{}", body = {{ prompt = "hello {{{{ workflow.id }}}}" }} }}
retries = {{ attempts = 4, initial = "10ms", max = "10ms", jitter = false }}
"#,
        server.url("/flaky")
    ));
    let v = node.wait(&id, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    let (_, out) = node.get(&format!("/v1/workflows/{id}/steps/call/output"));
    assert_eq!(out, json!({"answer": 42, "calls": 3}), "{out}");
    let seen = server.seen("/flaky");
    assert_eq!(seen.len(), 3, "two 429s and the answer");
    assert_eq!(seen[0].body, format!(r#"{{"prompt":"hello {id}"}}"#));
    assert_eq!(seen[0].headers["content-type"], "application/json");
    for w in seen.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= Duration::from_secs(1),
            "a retry came {gap:?} after a 429 with Retry-After: 1"
        );
    }
    let h = history(&v).join("\n");
    assert!(
        h.contains(
            "answered 429 Too Many Requests; retryable: the retry waits at least Retry-After (1.0s)"
        ),
        "{h}"
    );

    // A 404 is not retried, though attempts are left, and says so.
    let id = node.submit(&format!(
        "name = \"gone\"\n[[step]]\nid = \"call\"\nhandler = \"http\"\nwith = {{ url = \"{}\" }}\nretries = {{ attempts = 3, initial = \"10ms\" }}\n",
        server.url("/missing")
    ));
    let v = node.wait(&id, Duration::from_secs(30));
    assert_eq!(v["status"], "failed", "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("failed after 1 attempt(s): http: POST ")
            && reason.contains("answered 404 Not Found; not retried")
            && reason.contains("no such model"),
        "{reason}"
    );
    assert_eq!(server.seen("/missing").len(), 1);
}

#[test]
fn concurrency_and_rate_hold_back_a_map_step_on_the_node() {
    let server = Server::start();
    let (_tmp, node) = node(&[]);
    let id = node.submit(&format!(
        r#"name = "score-40"
[[step]]
id = "score"
handler = "http"
map = {{ range = [0, 40] }}
with = {{ url = "{}", concurrency = 3 }}
"#,
        server.url("/score")
    ));
    let v = node.wait(&id, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    let (_, out) = node.get(&format!("/v1/workflows/{id}/steps/score/output"));
    let items = out.as_array().expect("an array");
    assert_eq!(items.len(), 40);
    for (i, o) in items.iter().enumerate() {
        assert_eq!(
            o,
            &json!({"score": i}),
            "item {i}: the item is the default body"
        );
    }
    let max = server.stats.max_in_flight.load(Ordering::SeqCst);
    assert!(
        max <= 3,
        "the server saw {max} requests at once; concurrency = 3"
    );
    assert!(max >= 2, "requests ran in parallel (max {max})");
    assert_eq!(step(&v, "score")["succeeded"], 40, "{v}");

    // rate = "10/s": 10 at once, then one per 100 ms.
    let id = node.submit(&format!(
        r#"name = "rated"
[[step]]
id = "ping"
handler = "http"
map = {{ range = [0, 20] }}
with = {{ url = "{}", method = "GET", rate = "10/s" }}
"#,
        server.url("/ping")
    ));
    let v = node.wait(&id, Duration::from_secs(60));
    assert_eq!(v["status"], "succeeded", "{v}");
    let seen = server.seen("/ping");
    assert_eq!(seen.len(), 20);
    let span = seen.last().unwrap().at - seen[0].at;
    assert!(
        span >= Duration::from_millis(900),
        "20 requests at 10/s (burst 10) took only {span:?}"
    );
    assert!(
        seen.iter().all(|s| s.body.is_empty()),
        "a GET sends no body"
    );
}

#[test]
fn a_secret_header_reaches_the_server_and_nothing_else() {
    const SECRET: &str = "sk-test-5ecr3t-9f2c1d";
    let server = Server::start();
    let (tmp, node) = node(&[("MODEL_API_KEY", SECRET)]);
    let id = node.submit(&format!(
        r#"name = "secret"
[[step]]
id = "call"
handler = "http"
map = {{ items = ["a", "b"] }}
with = {{ url = "{}", headers = {{ Authorization = "Bearer ${{env:MODEL_API_KEY}}" }} }}
"#,
        server.url("/secret")
    ));
    let v = node.wait(&id, Duration::from_secs(30));
    assert_eq!(v["status"], "succeeded", "{v}");
    let seen = server.seen("/secret");
    assert_eq!(seen.len(), 2);
    for s in &seen {
        assert_eq!(s.headers["authorization"], format!("Bearer {SECRET}"));
    }
    // Not in the workflow's JSON (spec, history), its output, the items, the node's log, or any
    // file of the data dir (the Raft log included).
    let mut shown = v.to_string();
    for p in [
        format!("/v1/workflows/{id}/steps/call/output"),
        format!("/v1/workflows/{id}/items/0"),
        "/v1/workflows".to_string(),
    ] {
        shown.push_str(&node.get(&p).1.to_string());
    }
    assert!(
        !shown.contains(SECRET),
        "the secret leaked into the API: {shown}"
    );
    assert!(
        !node.log().contains(SECRET),
        "the secret is in the node's log"
    );
    let mut stack = vec![tmp.path().to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let bytes = std::fs::read(&p).unwrap_or_default();
                let found = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
                assert!(!found, "the secret is in {}", p.display());
            }
        }
    }

    // A variable the node does not have fails the attempt, naming it, and sends nothing.
    let id = node.submit(&format!(
        "name = \"nokey\"\n[[step]]\nid = \"call\"\nhandler = \"http\"\nwith = {{ url = \"{}\", headers = {{ X-Key = \"${{env:NOT_ON_THIS_NODE}}\" }} }}\n",
        server.url("/nokey")
    ));
    let v = node.wait(&id, Duration::from_secs(30));
    assert_eq!(v["status"], "failed", "{v}");
    let reason = v["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("names ${env:NOT_ON_THIS_NODE}, but the variable NOT_ON_THIS_NODE is not set on this node"),
        "{reason}"
    );
    assert!(server.seen("/nokey").is_empty());
}

/// A throwaway CA and a server certificate for 127.0.0.1 (openssl, as in `cluster_tls.rs`).
fn make_certs(dir: &std::path::Path) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    let ec: Vec<&str> = ec.split(' ').collect();
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=http-test-ca",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "srv.key",
            "-out",
            "srv.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat());
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "srv.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// An HTTPS server (python3's http.server in a TLS socket) that echoes the JSON it is sent.
const TLS_SERVER: &str = r#"
import http.server, json, ssl, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        out = json.dumps({"tls": True, "got": json.loads(body or b"null")}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)
    def log_message(self, *a):
        pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"#;

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn https_works_with_the_ca_bundle_of_ssl_cert_file() {
    let tmp = tempfile::tempdir().unwrap();
    make_certs(tmp.path());
    let p = |f: &str| tmp.path().join(f).display().to_string();
    std::fs::write(tmp.path().join("srv.py"), TLS_SERVER).unwrap();
    let mut child = std::process::Command::new("python3")
        .args([p("srv.py"), p("srv.pem"), p("srv.key")])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 is installed");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = Killed(child);
    let port: u16 = line.trim().parse().expect("the server's port");
    let ca = p("ca.pem");
    let (_t, node) = node(&[("SSL_CERT_FILE", ca.as_str())]);
    let id = node.submit(&format!(
        "name = \"tls\"\n[[step]]\nid = \"call\"\nhandler = \"http\"\nmap = {{ items = [1, 2] }}\nwith = {{ url = \"https://127.0.0.1:{port}/v1\" }}\n"
    ));
    let v = node.wait(&id, Duration::from_secs(30));
    assert_eq!(v["status"], "succeeded", "{v}");
    let (_, out) = node.get(&format!("/v1/workflows/{id}/steps/call/output"));
    assert_eq!(
        out,
        json!([{"tls": true, "got": 1}, {"tls": true, "got": 2}])
    );
}
