//! A small user-space TCP fault proxy, for machines without network namespaces (what etcd's
//! robustness tests use): it listens on one address and forwards every connection to a target.
//! [`Proxy::cut`] drops every open connection and holds new ones open without forwarding a byte
//! (the far side sees silence, as behind a partition); [`Proxy::heal`] forwards again. Threads
//! only, bounded by the connections the test makes; everything stops when the proxy drops.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    stop: AtomicBool,
    /// Bumped by each cut: connections of an older generation end.
    generation: AtomicU64,
    open: Mutex<Vec<TcpStream>>,
}

pub struct Proxy {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// Listens on `listen` (port 0: any) and forwards to `target`.
    pub fn start(listen: &str, target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind(listen)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
        });
        let s = shared.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.stop.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(c) = conn {
                    serve(&s, c);
                }
            }
        });
        Ok(Proxy {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    /// Partitions: open connections are closed, new ones are held without forwarding.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.close_all();
    }

    /// Forwards again (connections held during the cut are closed: the client dials again).
    pub fn heal(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
        self.close_all();
    }

    fn close_all(&self) {
        let mut open = self.shared.open.lock().unwrap_or_else(|e| e.into_inner());
        for c in open.drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn serve(s: &Arc<Shared>, client: TcpStream) {
    let generation = s.generation.load(Ordering::SeqCst);
    if let Ok(c) = client.try_clone() {
        s.open.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }
    if s.cut.load(Ordering::SeqCst) {
        // Held: read and drop whatever comes until healed or closed.
        let s = s.clone();
        std::thread::spawn(move || drain(&s, client, generation));
        return;
    }
    let Ok(server) = TcpStream::connect_timeout(&s.target, Duration::from_secs(1)) else {
        let _ = client.shutdown(Shutdown::Both);
        return;
    };
    if let Ok(c) = server.try_clone() {
        s.open.lock().unwrap_or_else(|e| e.into_inner()).push(c);
    }
    let (c2, s2) = match (client.try_clone(), server.try_clone()) {
        (Ok(c), Ok(v)) => (c, v),
        _ => return,
    };
    let (a, b) = (s.clone(), s.clone());
    std::thread::spawn(move || pipe(&a, client, server, generation));
    std::thread::spawn(move || pipe(&b, s2, c2, generation));
}

fn live(s: &Shared, generation: u64) -> bool {
    !s.stop.load(Ordering::SeqCst) && s.generation.load(Ordering::SeqCst) == generation
}

fn pipe(s: &Shared, mut from: TcpStream, mut to: TcpStream, generation: u64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 16 << 10];
    while live(s, generation) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                if !live(s, generation) || to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn drain(s: &Shared, mut from: TcpStream, generation: u64) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = [0u8; 16 << 10];
    while live(s, generation) {
        match from.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => break,
        }
    }
    let _ = from.shutdown(Shutdown::Both);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.close_all();
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().take(8).flatten() {
                std::thread::spawn(move || {
                    let mut r = c.try_clone().unwrap();
                    let mut w = c;
                    let _ = std::io::copy(&mut r, &mut w);
                });
            }
        });
        addr
    }

    fn round_trip(addr: SocketAddr) -> Result<Vec<u8>, std::io::Error> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        c.set_read_timeout(Some(Duration::from_millis(600)))?;
        c.write_all(b"ping")?;
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf)?;
        Ok(buf.to_vec())
    }

    #[test]
    fn forwards_then_goes_silent_when_cut_then_forwards_again() {
        let target = echo_server();
        let p = Proxy::start("127.0.0.1:0", target).unwrap();
        assert_eq!(round_trip(p.addr).unwrap(), b"ping");
        // An open connection dies at the cut.
        let mut open = TcpStream::connect(p.addr).unwrap();
        open.write_all(b"ab").unwrap();
        let mut two = [0u8; 2];
        open.read_exact(&mut two).unwrap();
        p.cut();
        open.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        let mut rest = [0u8; 1];
        assert!(matches!(open.read(&mut rest), Ok(0) | Err(_)));
        // New connections are accepted but nothing comes back.
        assert!(round_trip(p.addr).is_err());
        p.heal();
        assert_eq!(round_trip(p.addr).unwrap(), b"ping");
    }
}
