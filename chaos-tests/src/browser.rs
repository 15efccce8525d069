//! A headless Chromium driven over W3C WebDriver (Debian's `chromium` and `chromium-driver`),
//! for the dashboard tests. WebDriver is plain HTTP and JSON, so this talks to `chromedriver`
//! with the harness's own `ureq`: no WebDriver crate (fantoccini 0.22 would bring 14 second
//! versions of crates that `cargo deny` refuses, through `webdriver` 0.53), nothing fetched at
//! run time, and nothing but loopback.
//!
//! Every wait is bounded; `chromedriver` (and the browser it started) are stopped on drop.

use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The key of an element reference in WebDriver answers.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";
/// How long chromedriver may take to answer `/status`, and a new session to start.
const START_LIMIT: Duration = Duration::from_secs(60);

fn program(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(default))
}

/// `$TROUPE_CHROMIUM`, or Debian's `/usr/bin/chromium`.
pub fn chromium_bin() -> PathBuf {
    program("TROUPE_CHROMIUM", "/usr/bin/chromium")
}

/// `$TROUPE_CHROMEDRIVER`, or Debian's `/usr/bin/chromedriver` (package `chromium-driver`).
pub fn chromedriver_bin() -> PathBuf {
    program("TROUPE_CHROMEDRIVER", "/usr/bin/chromedriver")
}

/// Panics, saying how to install them, unless Chromium and its driver are there: the
/// dashboard tests never pass without a browser.
pub fn require_chromium() {
    for p in [chromium_bin(), chromedriver_bin()] {
        assert!(
            p.exists(),
            "{} is missing: the dashboard tests need a real headless Chromium. Install it with \
             `apt-get install -y chromium chromium-driver` (.ci/run does), or point \
             TROUPE_CHROMIUM and TROUPE_CHROMEDRIVER at them",
            p.display()
        );
    }
}

/// One browser session.
pub struct Browser {
    driver: Child,
    base: String,
    session: String,
    agent: ureq::Agent,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and a headless Chromium with a fresh
    /// profile in `profile` (an empty directory).
    pub fn start(profile: &Path) -> Browser {
        require_chromium();
        std::fs::create_dir_all(profile).expect("profile dir");
        let port = free_port();
        let log = std::fs::File::create(profile.with_extension("chromedriver.log"))
            .expect("chromedriver log");
        let driver = Command::new(chromedriver_bin())
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(START_LIMIT))
            .build()
            .into();
        let mut b = Browser {
            driver,
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            agent,
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let (code, v) = b.call("GET", "/status", None);
            if code == 200 && v["value"]["ready"] == true {
                break;
            }
            if let Ok(Some(status)) = b.driver.try_wait() {
                panic!("chromedriver exited at start ({status})");
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer in {START_LIMIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--window-size=1440,1000",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.display())])
        .collect::<Vec<_>>();
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium_bin(), "args": args },
        }}});
        let (code, v) = b.call("POST", "/session", Some(&caps));
        assert_eq!(code, 200, "no browser session: {v}");
        b.session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session id: {v}"))
            .to_string();
        b
    }

    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let r = match (method, body) {
            ("GET", _) => self.agent.get(&url).call(),
            ("DELETE", _) => self.agent.delete(&url).call(),
            (_, b) => self
                .agent
                .post(&url)
                .send_json(b.cloned().unwrap_or(json!({}))),
        };
        match r {
            Ok(mut r) => {
                let code = r.status().as_u16();
                let text = r.body_mut().read_to_string().unwrap_or_default();
                (code, serde_json::from_str(&text).unwrap_or(Value::Null))
            }
            Err(e) => (0, json!({ "value": { "message": e.to_string() } })),
        }
    }

    /// A command of this session; panics on a WebDriver error.
    fn cmd(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, v) = self.call(
            method,
            &format!("/session/{}{path}", self.session),
            body.as_ref(),
        );
        assert_eq!(code, 200, "webdriver {method} {path}: {v}");
        v["value"].clone()
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({ "url": url })));
    }

    /// Runs `script` (a function body: `return ...`) in the page with `args`.
    pub fn js(&self, script: &str, args: Vec<Value>) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            Some(json!({ "script": script, "args": args })),
        )
    }

    /// Polls `script` until it returns something truthy (bounded); returns that.
    pub fn wait_js(&self, what: &str, limit: Duration, script: &str) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.js(script, vec![]);
            let truthy = match &v {
                Value::Null | Value::Bool(false) => false,
                Value::String(s) => !s.is_empty(),
                Value::Array(a) => !a.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "waited {limit:?} for {what}; the page shows:\n{}",
                self.js("return document.body.innerText", vec![])
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The first element `css` matches (bounded wait for it to appear).
    pub fn find(&self, css: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let (code, v) = self.call(
                "POST",
                &format!("/session/{}/element", self.session),
                Some(&json!({ "using": "css selector", "value": css })),
            );
            if code == 200
                && let Some(id) = v["value"][ELEMENT].as_str()
            {
                return id.to_string();
            }
            assert!(Instant::now() < deadline, "no element {css}: {v}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the first element `css` matches, as a user would (WebDriver moves the pointer
    /// there and clicks; it fails if something covers it).
    pub fn click(&self, css: &str) {
        let el = self.find(css);
        self.cmd("POST", &format!("/element/{el}/click"), Some(json!({})));
    }

    /// Types `text` into the first element `css` matches.
    pub fn type_into(&self, css: &str, text: &str) {
        let el = self.find(css);
        self.cmd(
            "POST",
            &format!("/element/{el}/value"),
            Some(json!({ "text": text })),
        );
    }

    /// The page as a PNG.
    pub fn screenshot(&self) -> Vec<u8> {
        let v = self.cmd("GET", "/screenshot", None);
        base64_decode(v.as_str().expect("screenshot is base64 text"))
    }

    /// Saves a screenshot to `path` (its directory is created).
    pub fn save_screenshot(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        let png = self.screenshot();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).expect("write screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Closes the browser (chromedriver stops the Chromium it started).
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A loopback port free a moment ago (chromedriver is told to listen on it).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Standard base64 (WebDriver screenshots).
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0u32);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_decodes() {
        assert_eq!(super::base64_decode("aGVsbG8="), b"hello");
        assert_eq!(super::base64_decode("aGk="), b"hi");
        assert_eq!(super::base64_decode("YWJj"), b"abc");
    }
}
