//! A tiny HTTP receiver on loopback for what a node sends out (alert webhooks, OTLP spans):
//! it records each request and answers with a status the test chose.

use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One request the receiver got: its headers (lowercase names) and body.
#[derive(Clone, Debug)]
pub struct Got {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub answered: u16,
}

impl Got {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name} header in {:?}", self.headers))
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("the body is JSON")
    }
}

/// A webhook receiver on 127.0.0.1: answers each request with the next status of `answers`
/// (then 200), closing the connection. Stops accepting after 3 minutes.
pub fn receiver(answers: Vec<u16>) -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let (g, n) = (got.clone(), Arc::new(AtomicUsize::new(0)));
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(180);
        while Instant::now() < deadline {
            let Ok((stream, _)) = listener.accept() else {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let mut r = BufReader::new(stream);
            let mut line = String::new();
            if r.read_line(&mut line).is_err() || line.is_empty() {
                continue;
            }
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                if r.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0);
            let mut body = vec![0; len];
            if r.read_exact(&mut body).is_err() {
                continue;
            }
            let i = n.fetch_add(1, Ordering::SeqCst);
            let answered = answers.get(i).copied().unwrap_or(200);
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            g.lock().unwrap().push(Got {
                path,
                headers,
                body,
                answered,
            });
            let mut s = r.into_inner();
            let _ = write!(
                s,
                "HTTP/1.1 {answered} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            );
        }
    });
    (url, got)
}

/// Waits (bounded) until `f` holds for what the receiver got.
pub fn wait_for(got: &Mutex<Vec<Got>>, limit: Duration, what: &str, f: impl Fn(&[Got]) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        if f(&got.lock().unwrap()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "waited {limit:?} for {what}; got {:?}",
            got.lock()
                .unwrap()
                .iter()
                .map(|g| String::from_utf8_lossy(&g.body).to_string())
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
