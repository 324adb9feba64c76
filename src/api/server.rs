//! The server loop: accept connections, parse each request into an
//! endpoint, bound it by the request timeout, answer redirects only to
//! configured hosts, and log each request's outcome (path only).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::Instrument;

use super::{route, ApiError, AppState, Body, Endpoint};

/// Accepts connections until `shutdown` resolves, then lets in-flight requests
/// finish (up to 10 s) before returning.
pub async fn serve(
    state: Arc<AppState>,
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let tls = tls.map(tokio_rustls::TlsAcceptor::from);
    let graceful = GracefulShutdown::new();
    let builder = http1_builder();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(error) => {
                        tracing::warn!(%error, "accept connection");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |request| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, request).await) }
                });
                match &tls {
                    None => {
                        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
                        tokio::spawn(async move {
                            if let Err(error) = connection.await {
                                tracing::debug!(%error, "connection ended with an error");
                            }
                        });
                    }
                    Some(acceptor) => {
                        // The handshake runs in the connection's task, bounded
                        // like a request head: a silent client holds no one up.
                        let (acceptor, builder) = (acceptor.clone(), builder.clone());
                        let watcher = graceful.watcher();
                        tokio::spawn(async move {
                            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await;
                            let stream = match handshake {
                                Ok(Ok(stream)) => stream,
                                Ok(Err(error)) => {
                                    tracing::debug!(%error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                            let connection = watcher.watch(builder.serve_connection(TokioIo::new(stream), service));
                            if let Err(error) = connection.await {
                                tracing::debug!(%error, "connection ended with an error");
                            }
                        });
                    }
                }
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tracing::info!("shutting down: waiting for in-flight requests");
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(Duration::from_secs(10)) => tracing::warn!("gave up waiting for connections to close"),
    }
    Ok(())
}

async fn handle(state: Arc<AppState>, request: Request<Incoming>) -> Response<Body> {
    let request_id = state.next_request.fetch_add(1, Ordering::Relaxed);
    // Only the path is logged: query strings can carry field values.
    let span = tracing::info_span!(
        "request",
        request_id,
        method = %request.method(),
        path = %request.uri().path(),
        tenant_id = tracing::field::Empty,
    );
    let started = Instant::now();
    // Imports, restores and upgrades move whole tenants: bounded by their own
    // size limits, not by the request timeout. Their request bodies (but an
    // import's archive) are still read within the normal timeout (`route`).
    let endpoint = Endpoint::parse(request.method(), request.uri().path());
    let kind = endpoint.as_ref().map(Endpoint::kind).unwrap_or("unknown");
    let long_running = matches!(
        endpoint,
        Ok(Endpoint::ImportTenant | Endpoint::RestoreBackup(..) | Endpoint::UpgradeTenant(_))
    );
    let timeout = if long_running {
        Duration::from_secs(24 * 3600)
    } else {
        state.config.request_timeout
    };
    // A moved tenant's calls are redirected to the same path on its new host.
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    let response = async {
        let hosts = state.config.hosts.clone();
        match tokio::time::timeout(timeout, route(state, request)).await {
            Ok(Ok(response)) => response,
            // Redirects only ever point at a host the config lists.
            Ok(Err(ApiError::Moved { message, location }))
                if hosts.values().any(|h| h == location.trim_end_matches('/')) =>
            {
                ApiError::Moved {
                    message,
                    location: format!("{}{path_and_query}", location.trim_end_matches('/')),
                }
                .into_response(request_id)
            }
            Ok(Err(ApiError::Moved { .. })) => ApiError::Conflict(
                "the tenant moved to a host this host's config no longer lists; ask the operator where it lives now".into(),
            )
            .into_response(request_id),
            Ok(Err(error)) => error.into_response(request_id),
            Err(_) => ApiError::RequestTimeout(format!(
                "request timed out after {} s",
                timeout.as_secs()
            ))
            .into_response(request_id),
        }
    }
    .instrument(span.clone())
    .await;
    let _enter = span.enter();
    crate::metrics::request(kind, response.status().as_u16(), started.elapsed());
    let elapsed_ms = started.elapsed().as_millis() as u64;
    if elapsed_ms > 1000 {
        tracing::warn!(
            status = response.status().as_u16(),
            elapsed_ms,
            "slow request"
        );
    } else {
        tracing::info!(
            status = response.status().as_u16(),
            elapsed_ms,
            "request done"
        );
    }
    response
}

/// Serves `GET /metrics` (the Prometheus text format) on its own listener
/// until `shutdown` resolves; anything else is 404. `scrape` reads the state
/// the gauges show (blocking: it may read the catalog).
pub async fn serve_metrics(
    listener: TcpListener,
    scrape: Arc<dyn Fn() -> crate::metrics::Scrape + Send + Sync>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let builder = http1_builder();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let scrape = scrape.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let scrape = scrape.clone();
                    async move {
                        let response = if request.method() == hyper::Method::GET
                            && request.uri().path() == "/metrics"
                        {
                            let text = crate::tasks::blocking(move || crate::metrics::render(scrape()))
                                .await
                                .unwrap_or_default();
                            Response::builder()
                                .header(hyper::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)
                                .body(text_body(text))
                        } else {
                            Response::builder()
                                .status(hyper::StatusCode::NOT_FOUND)
                                .body(text_body("only GET /metrics is served here\n".into()))
                        };
                        Ok::<_, Infallible>(response.expect("a valid response"))
                    }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service);
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = &mut shutdown => break,
        }
    }
    Ok(())
}

/// HTTP/1.1 with a 10 s bound on reading a request's head.
fn http1_builder() -> http1::Builder {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10));
    builder
}

fn text_body(text: String) -> Body {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes::Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}
