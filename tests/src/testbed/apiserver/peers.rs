//! The apiserver's outgoing HTTPS connections (to etcd members, kubelets, metrics-server), each attempt recorded by the trust monitor.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};

use super::Body;
use crate::testbed::monitor::{self, Outcome};
use crate::testbed::tls;

/// One HTTPS peer of the apiserver (an etcd member, a kubelet, metrics-server), named for
/// the monitor; a new connection per request so every attempt is recorded.
#[derive(Clone)]
pub(super) struct Peer {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    client: String,
    server: String,
    purpose: &'static str,
    /// The kept-alive connection (etcd): a TLS handshake per etcd call would cost most of an
    /// idle testbed's CPU. Each new connection is one monitor line.
    conn: Arc<tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Body>>>>,
}

impl Peer {
    pub(super) fn new(
        url: &str,
        tls: Arc<rustls::ClientConfig>,
        server: String,
        purpose: &'static str,
    ) -> Result<Peer> {
        let hostport = url
            .strip_prefix("https://")
            .with_context(|| format!("{url} is not https://"))?
            .trim_end_matches('/');
        let addr: SocketAddr =
            hostport.parse().with_context(|| format!("{url}: the testbed uses IP:port"))?;
        Ok(Peer {
            addr,
            tls,
            client: monitor::me("kube-apiserver"),
            server,
            purpose,
            conn: Arc::default(),
        })
    }

    pub(super) async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>)> {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
            let stream = match tls::connect(
                self.addr,
                name,
                self.tls.clone(),
                std::time::Duration::from_secs(5),
            )
            .await
            {
                Ok(s) => s,
                Err((outcome, msg)) => {
                    monitor::record(&self.client, &self.server, self.purpose, outcome);
                    bail!("{method} https://{}{path}: {msg}", self.addr);
                }
            };
            monitor::record(&self.client, &self.server, self.purpose, Outcome::Ok);
            let (sender, c) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .context("HTTP handshake")?;
            tokio::spawn(c);
            *conn = Some(sender);
        }
        let Some(sender) = conn.as_mut() else { bail!("no connection to {}", self.addr) };
        if !matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), sender.ready()).await,
            Ok(Ok(()))
        ) {
            *conn = None;
            bail!("{method} https://{}{path}: the connection closed", self.addr);
        }
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
            .context("building the request")?;
        let resp =
            tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("{method} https://{}{path}: no answer in 10 s", self.addr)
                });
        let resp = match resp {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                *conn = None;
                return Err(e).with_context(|| format!("{method} https://{}{path}", self.addr));
            }
            Err(e) => {
                *conn = None;
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        if status == 401 {
            // The peer completed the handshake and refused our certificate per request, as Go
            // servers do: a trust failure of this edge.
            monitor::record(&self.client, &self.server, self.purpose, Outcome::Unauthorized);
        }
        let bytes = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
        Ok((status, bytes.to_vec()))
    }
}
