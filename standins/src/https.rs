//! Serves a stand-in's axum [`Router`] over HTTPS on `127.0.0.1:0` with the [`TestPki`]
//! certificate, so production clients reach it exactly as they reach Azure: by URL plus an
//! extra trusted root.
//!
//! It also carries out [`Fault::drop_connection`](super::faults::Fault::drop_connection):
//! a response marked by the fault layer is never written; the connection is closed instead.

use super::faults::DropConnectionMark;
use super::tls::TestPki;
use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::Response;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::TlsAcceptor;

/// A stand-in's server task: dropping it stops the server and closes every connection.
#[derive(Debug)]
pub struct ServerTask(JoinHandle<()>);

impl ServerTask {
    pub fn new(task: JoinHandle<()>) -> Self {
        Self(task)
    }
}

impl Drop for ServerTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts serving `router` over TLS on a free loopback port, until the task is dropped.
pub async fn serve_tls(router: Router, pki: &TestPki) -> anyhow::Result<(SocketAddr, ServerTask)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let acceptor = TlsAcceptor::from(pki.server_config()?);
    let task = tokio::spawn(accept_loop(listener, acceptor, router));
    Ok((address, ServerTask::new(task)))
}

/// Owns every connection task, so aborting this loop drops (and aborts) them all.
async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, router: Router) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => {
                    connections.spawn(serve_connection(tcp, acceptor.clone(), router.clone()));
                }
                Err(error) => tracing::debug!(%error, "stand-in could not accept a connection"),
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(tcp: TcpStream, acceptor: TlsAcceptor, router: Router) {
    let tls = match acceptor.accept(tcp).await {
        Ok(tls) => tls,
        Err(error) => {
            tracing::debug!(%error, "stand-in TLS handshake failed");
            return;
        }
    };
    let close = Arc::new(Notify::new());
    let app = router.layer(from_fn_with_state(close.clone(), close_when_marked));
    let connection = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(tls), TowerToHyperService::new(app));
    tokio::select! {
        result = connection => {
            if let Err(error) = result {
                tracing::debug!(%error, "stand-in connection ended with an error");
            }
        }
        // Dropping the connection future closes the socket without writing the response.
        () = close.notified() => {}
    }
}

/// Holds back a response marked [`DropConnectionMark`] forever and asks the connection
/// to close instead.
async fn close_when_marked(
    State(close): State<Arc<Notify>>,
    request: Request,
    next: Next,
) -> Response {
    let response = next.run(request).await;
    if response.extensions().get::<DropConnectionMark>().is_some() {
        close.notify_one();
        std::future::pending::<()>().await;
    }
    response
}
