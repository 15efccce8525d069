//! The API server as a supervised actor: it binds in `pre_start`, serves in a spawned task, and
//! fails (so its supervisor restarts it) if the server stops on its own.

use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub enum ApiMsg {
    /// The serving task ended with this error.
    ServerDied(String),
    /// Fault injection for supervision tests.
    InjectPanic,
}

pub struct ApiServer;

pub struct ApiArgs {
    pub listen: SocketAddr,
    pub router: axum::Router,
    pub data_dir: std::path::PathBuf,
    /// Where the bound address is published (port 0 picks one).
    pub bound: Arc<Mutex<Option<SocketAddr>>>,
    /// Headers of each request (and the next request on a kept-alive connection) within this.
    pub header_timeout: std::time::Duration,
    /// Serve HTTPS with this (`--api-tls-cert`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
}

pub struct ApiState {
    task: tokio::task::JoinHandle<()>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
}

use super::serve::{Limits, connection_cap};

impl Actor for ApiServer {
    type Msg = ApiMsg;
    type State = ApiState;
    type Arguments = ApiArgs;

    async fn pre_start(
        &self,
        me: ActorRef<ApiMsg>,
        args: ApiArgs,
    ) -> Result<ApiState, ActorProcessingErr> {
        // After a restart, keep the address clients already know (port 0 picked it the first time).
        let listen = args
            .bound
            .lock()
            .ok()
            .and_then(|b| *b)
            .unwrap_or(args.listen);
        let listener = bind(listen).map_err(|e| {
            format!("cannot listen on {listen}: {e} (is another troupe running? pick another address: --listen for troupe dev, --api-listen for troupe node)")
        })?;
        let addr = listener.local_addr()?;
        if let Ok(mut b) = args.bound.lock() {
            *b = Some(addr);
        }
        let _ = std::fs::write(args.data_dir.join("api.addr"), addr.to_string());
        tracing::info!(%addr, https = args.tls.is_some(), "api listening");
        let (tx, rx) = tokio::sync::watch::channel(false);
        let limits = Limits {
            connections: connection_cap(),
            header_timeout: args.header_timeout,
        };
        tracing::info!(connections = limits.connections, header_timeout = ?limits.header_timeout, "api connection limits");
        let task = tokio::spawn(async move {
            // The loop ends only when told to stop; if it ends otherwise, fail so the
            // supervisor restarts the API.
            let stopping = rx.clone();
            super::serve::serve(listener, args.router, limits, args.tls, rx).await;
            if !*stopping.borrow() {
                let _ = me.cast(ApiMsg::ServerDied("the accept loop ended".into()));
            }
        });
        Ok(ApiState {
            task,
            stop: Some(tx),
        })
    }

    async fn post_stop(
        &self,
        _me: ActorRef<ApiMsg>,
        st: &mut ApiState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(stop) = st.stop.take() {
            let _ = stop.send(true);
        }
        st.task.abort();
        Ok(())
    }

    async fn handle(
        &self,
        _me: ActorRef<ApiMsg>,
        msg: ApiMsg,
        _st: &mut ApiState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            ApiMsg::ServerDied(e) => Err(format!("the api server stopped: {e}").into()),
            ApiMsg::InjectPanic => panic!("injected panic in the api server"),
        }
    }
}

/// Connections the kernel queues for the accept loop (std's default is 128).
const BACKLOG: u32 = 1024;

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

impl Drop for ApiState {
    fn drop(&mut self) {
        // A failed actor gets no post_stop: make sure the listener is released anyway.
        self.task.abort();
    }
}

// Local only: with ractor_cluster in the build every message type states it is a Message.
impl ractor::Message for ApiMsg {}
