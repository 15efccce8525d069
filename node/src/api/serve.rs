//! The HTTP server loop, with limits (a hand-written accept loop on hyper because axum's
//! `serve` has none of these knobs): at most `connections` open at once (a flood of idle
//! connections cannot take the file descriptors tasks need), a deadline for each request's
//! headers that also closes kept-alive connections left idle, and accept errors (EMFILE under a
//! flood) waited out instead of ending the server. Each request carries the caller's address
//! (axum's `ConnectInfo`, for the log of a refused call); with TLS, the handshake must finish
//! within the header deadline too.

use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connections: usize,
    pub header_timeout: Duration,
}

/// Most API connections: a quarter of the open-file limit (the rest is for tasks' log files,
/// the Raft log and cluster sessions), between 64 and 4,096. Raises the soft open-file limit to
/// the hard one first.
pub fn connection_cap() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    let soft = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 256;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    ((soft / 4) as usize).clamp(64, 4096)
}

pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(limits.connections));
    loop {
        // Wait for room first: beyond the cap, connections wait in the kernel's backlog.
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = stop.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "api accept failed; waiting before accepting again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let (router, tls, stop) = (router.clone(), tls.clone(), stop.clone());
        tokio::spawn(async move {
            match tls {
                None => connection(TokioIo::new(stream), peer, router, limits, stop).await,
                Some(tls) => {
                    match tokio::time::timeout(limits.header_timeout, tls.accept(stream)).await {
                        Ok(Ok(s)) => connection(TokioIo::new(s), peer, router, limits, stop).await,
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "api tls handshake failed")
                        }
                        Err(_) => tracing::info!(%peer, "api tls handshake timed out"),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Serves one connection until it closes, or until the server stops (then gracefully, for at
/// most 5 s).
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    router: axum::Router,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            tower_service::Service::call(&mut router.clone(), req)
        });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(io, service);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}
