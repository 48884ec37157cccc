//! The daemon's HTTP endpoint, as a side effect like any other: a listener on its own task
//! that answers GET requests from the routes the app gives it (no route changes anything),
//! and the small client `volumed status` uses to ask a running daemon.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot listen on {addr} for the health and metrics endpoint: {source}; another volumed (or another program) may use it: set --http-addr to a free address")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("the health and metrics endpoint on {addr} stopped accepting connections: {source}")]
    Accept {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot ask the daemon at {addr}: {why}")]
    Ask { addr: SocketAddr, why: String },
}

/// One answer.
pub struct Reply {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

/// The routes: a path to its answer.
pub type Routes = Arc<dyn Fn(String) -> BoxFuture<'static, Reply> + Send + Sync>;

/// Binds `addr` (port 0: any free port); the listener knows the address it got.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })
}

/// Answers connections until `cancel` fires, each on a task of its own, so a slow client or
/// route holds up no other.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    cancel: CancellationToken,
) -> Result<(), HttpError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    loop {
        let (stream, _) = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // Out of descriptors, say: the endpoint goes on with the next connection.
                Err(source) if is_transient(&source) => {
                    tracing::warn!(%addr, %source, "the endpoint could not accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(source) => return Err(HttpError::Accept { addr, source }),
            },
        };
        let routes = routes.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let routes = routes.clone();
                    async move { Ok::<_, Infallible>(answer(&routes, request).await) }
                });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = connection => {}
            }
        });
    }
}

fn is_transient(err: &std::io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(nix::libc::EMFILE | nix::libc::ENFILE | nix::libc::ECONNABORTED | nix::libc::ENOBUFS)
    )
}

async fn answer(routes: &Routes, request: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let reply = if request.method() != Method::GET && request.method() != Method::HEAD {
        Reply {
            status: 405,
            content_type: "text/plain; charset=utf-8",
            body: "only GET is served here: this endpoint changes nothing\n".into(),
        }
    } else {
        routes(request.uri().path().to_string()).await
    };
    Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", reply.content_type)
        .body(Full::new(Bytes::from(reply.body)))
        .expect("a response of a valid status and header")
}

/// GETs `path` from the endpoint at `addr` within `timeout`: its status and body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String), HttpError> {
    let ask = async {
        let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(connection);
        let request = Request::get(path)
            .header("host", addr.to_string())
            .body(Full::new(Bytes::new()))
            .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, String::from_utf8_lossy(&body).into_owned()))
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(why)) => Err(HttpError::Ask { addr, why }),
        Err(_) => Err(HttpError::Ask {
            addr,
            why: format!("no answer within {timeout:?}"),
        }),
    }
}
