//! Calls from this node's API to another node's API: a follower or worker forwarding to the
//! leader, and the leader fetching a log from the node that ran the attempt. One pooled client
//! per node (hyper-util with the `http` handler's connector); `https://` when this node serves
//! its API over TLS (every node of a cluster does, or none), trusting `--api-tls-ca`.

use super::tls::ApiTls;
use crate::exec::http::connect::Connector;
use axum::body::Body;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// How long a connection to another node's API may take to open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone)]
pub struct Outbound {
    client: Client<Connector, Body>,
    https: bool,
}

impl Outbound {
    pub fn new(tls: Option<&ApiTls>) -> Outbound {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        http.set_nodelay(true);
        let connector = Connector::new(http, tls.and_then(|t| t.connector.clone()));
        Outbound {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build(connector),
            https: tls.is_some(),
        }
    }

    /// `http(s)://ADDR` of a node's registered API address.
    pub fn base(&self, addr: &str) -> String {
        format!("{}://{addr}", if self.https { "https" } else { "http" })
    }

    pub fn request(
        &self,
        req: axum::http::Request<Body>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        self.client.request(req)
    }
}
