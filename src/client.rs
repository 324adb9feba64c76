//! The one HTTP client of the command line, the tests and the benches: a Coffer
//! host's URL and a bearer token, JSON requests, answers streamed to a writer.
//! Built on ureq (blocking, no runtime of its own, a connection pool per
//! `Client`); a status is an answer, not an error, and redirects are never
//! followed. https through rustls (the platform's roots or a CA file); plain
//! http only to loopback unless the caller insists.
//!
//! It imports nothing of the crate: a leaf that only `cli` (and code outside
//! `src/`) uses.

use std::io::{Read, Write};
use std::time::Duration;

use anyhow::{bail, Context};
use ureq::http;

/// A host and the token to present there.
#[derive(Clone)]
pub struct Client {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// An answer: status and headers read, the body still on the wire.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    body: ureq::Body,
}

/// How the client may reach a host.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// PEM certificates to trust for https (a private CA or a self-signed
    /// host); without it, the platform's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// Allow plain http to a host that is not loopback (tokens would cross
    /// the network in the clear).
    pub insecure_http: bool,
}

impl Client {
    /// `url` names the host only (`http://127.0.0.1:7070`); `timeout` bounds
    /// each read from the connection (not the whole transfer). Plain http
    /// only to loopback; see [`Client::with_transport`].
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> anyhow::Result<Client> {
        Self::with_transport(url, token, timeout, &Transport::default())
    }

    /// As [`Client::new`], with https (`https://host:port`, verified against
    /// the platform's roots or `transport.ca_file`) and plain http to a
    /// non-loopback host only when `transport.insecure_http` says so.
    pub fn with_transport(
        url: &str,
        token: Option<String>,
        timeout: Duration,
        transport: &Transport,
    ) -> anyhow::Result<Client> {
        let (scheme, authority) = match url.split_once("://") {
            Some((scheme @ ("http" | "https"), rest)) => (scheme, rest.trim_end_matches('/')),
            _ => bail!("--url {url:?}: give http://HOST:PORT or https://HOST:PORT"),
        };
        if authority.is_empty() || authority.contains('/') {
            bail!("--url {url:?}: give the host only, e.g. https://coffer.example:7070");
        }
        if scheme == "http" && !is_loopback(authority) && !transport.insecure_http {
            bail!("--url {url:?}: plain http to a host that is not this machine would send the token in the clear; use https:// (or --insecure-http if you must)");
        }
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(None)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(timeout))
            .timeout_recv_body(None);
        if scheme == "https" {
            // Our rustls provider (ring), as for the object stores.
            let _ = rustls::crypto::ring::default_provider().install_default();
            let roots = match &transport.ca_file {
                Some(file) => {
                    let pem = std::fs::read(file)
                        .with_context(|| format!("read --ca-file {}", file.display()))?;
                    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
                        .filter_map(|item| match item {
                            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert),
                            _ => None,
                        })
                        .collect();
                    if certs.is_empty() {
                        bail!("--ca-file {}: no PEM certificate in it", file.display());
                    }
                    ureq::tls::RootCerts::new_with_certs(&certs)
                }
                None => ureq::tls::RootCerts::PlatformVerifier,
            };
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .provider(ureq::tls::TlsProvider::Rustls)
                    .root_certs(roots)
                    .build(),
            );
        }
        Ok(Client {
            agent: config.build().into(),
            base: format!("{scheme}://{authority}"),
            token,
        })
    }

    /// One request. A body (or a POST/PUT without one) is sent as JSON.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let with_body = body.is_some() || matches!(method, "POST" | "PUT" | "PATCH");
        if with_body
            && !headers
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case("content-type"))
        {
            request = request.header("Content-Type", "application/json");
        }
        // Like curl: a large body waits for the host's go-ahead, so that a
        // refusal (413) arrives as an answer instead of a broken pipe.
        if body.is_some_and(|b| b.len() > 1024 * 1024) {
            request = request.header("Expect", "100-continue");
        }
        // `run` sends a body on any method, and none when it is `()`.
        let answer = if with_body {
            self.agent.run(request.body(body.unwrap_or(b""))?)
        } else {
            self.agent.run(request.body(())?)
        }
        .with_context(|| format!("{method} {}{path}", self.base))?;
        let status = answer.status().as_u16();
        let headers = answer
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        Ok(Response {
            status,
            headers,
            body: answer.into_body(),
        })
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        self.send(method, path, &[], body)
    }

    /// A JSON request whose answer must be 2xx; the error body's message otherwise.
    pub fn json(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes = body.map(|b| serde_json::to_vec(b).expect("JSON serialises"));
        let mut response = self.request(method, path, bytes.as_deref())?;
        let text = response.bytes()?;
        let value: serde_json::Value =
            serde_json::from_slice(&text).unwrap_or(serde_json::Value::Null);
        if !(200..300).contains(&response.status) {
            bail!(
                "{} {path}: {} {}",
                method,
                response.status,
                value["error"].as_str().unwrap_or("(no error message)")
            );
        }
        Ok(value)
    }
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The whole body (no size limit: the caller asked for it).
    pub fn bytes(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.copy_body(&mut out, |_| {})?;
        Ok(out)
    }

    /// Streams the body into `out`, calling `progress(bytes so far)`. A body
    /// shorter than its declared length or a broken chunked transfer is an error.
    pub fn copy_body(
        &mut self,
        out: &mut dyn Write,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        let mut reader = self.body.as_reader();
        let mut buffer = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buffer)
                .with_context(|| format!("the transfer broke off after {total} bytes"))?;
            if n == 0 {
                return Ok(total);
            }
            out.write_all(&buffer[..n])?;
            total += n as u64;
            progress(total);
        }
    }
}

/// `host:port` names this machine (127.0.0.0/8, ::1 or localhost).
fn is_loopback(authority: &str) -> bool {
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The configuration of a one-call client (a webhook, a key service): no
/// redirect followed, every status an answer, one time limit for all of it;
/// `https://` verified against the platform's roots.
fn one_shot_config(url: &str, timeout: Duration) -> ureq::config::Config {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(timeout));
    if url.starts_with("https://") {
        let _ = rustls::crypto::ring::default_provider().install_default();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .root_certs(ureq::tls::RootCerts::PlatformVerifier)
                .build(),
        );
    }
    config.build()
}

/// One webhook delivery: `body` POSTed to `url` with `headers`, no redirect
/// followed, within `timeout`. The receiver's status, or why there was none
/// (the body of the answer is not read beyond a little).
pub fn post_webhook(
    url: &str,
    pinned: &[std::net::SocketAddr],
    headers: &[(&str, &str)],
    body: &[u8],
    timeout: Duration,
) -> Result<u16, String> {
    let agent = ureq::Agent::with_parts(
        one_shot_config(url, timeout),
        ureq::unversioned::transport::DefaultConnector::new(),
        Pinned(pinned.to_vec()),
    );
    let mut request = http::Request::builder().method("POST").uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(body).map_err(|e| e.to_string())?;
    let answer = agent.run(request).map_err(|e| e.to_string())?;
    Ok(answer.status().as_u16())
}

/// One call to a key service's HTTP API (OpenBao / Vault Transit): `POST
/// {address}/v1/{path}` with the token in `X-Vault-Token`. Returns the
/// status and the JSON answer; `Err` when no answer came (unreachable).
pub fn key_service_call(
    address: &str,
    path: &str,
    token: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<(u16, serde_json::Value), String> {
    let agent: ureq::Agent = one_shot_config(address, timeout).into();
    let url = format!("{}/v1/{path}", address.trim_end_matches('/'));
    let request = http::Request::builder()
        .method("POST")
        .uri(&url)
        .header("content-type", "application/json")
        .header("x-vault-token", token)
        .body(body.to_string())
        .map_err(|e| e.to_string())?;
    let mut answer = agent.run(request).map_err(|e| e.to_string())?;
    let status = answer.status().as_u16();
    let text = answer
        .body_mut()
        .with_config()
        .limit(1 << 20)
        .read_to_string()
        .map_err(|e| e.to_string())?;
    Ok((
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    ))
}

/// A resolver that answers with the addresses already checked: the name is
/// not looked up again between the check and the connection (no DNS
/// rebinding past the SSRF guard).
#[derive(Debug)]
struct Pinned(Vec<std::net::SocketAddr>);

impl ureq::unversioned::resolver::Resolver for Pinned {
    fn resolve(
        &self,
        _uri: &http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let mut out = self.empty();
        for address in self.0.iter().take(16) {
            out.push(*address);
        }
        if self.0.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attempt goes to the addresses the guard checked, never to a
    /// second lookup of the name: a name that does not resolve at all still
    /// reaches the pinned loopback receiver, and nothing else.
    #[test]
    fn a_webhook_connects_only_to_the_pinned_addresses() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = vec![0u8; 4096];
            let n = stream.read(&mut request).unwrap();
            stream
                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
                .unwrap();
            String::from_utf8_lossy(&request[..n]).to_string()
        });
        let url = format!("http://no-such-name.invalid:{}/hook", address.port());
        let t = Duration::from_secs(5);
        assert_eq!(post_webhook(&url, &[address], &[], b"{}", t), Ok(204));
        assert!(server.join().unwrap().starts_with("POST /hook"));
        assert!(
            post_webhook(&url, &[], &[], b"{}", t).is_err(),
            "no address, no call"
        );
    }

    #[test]
    fn plain_http_only_to_loopback_unless_insisted() {
        let t = Duration::from_secs(1);
        for ok in [
            "http://127.0.0.1:7070",
            "http://localhost:1",
            "http://[::1]:7070",
            "https://db.example:7070",
        ] {
            assert!(Client::new(ok, None, t).is_ok(), "{ok}");
        }
        for refused in [
            "http://10.0.0.5:7070",
            "http://db.example:7070",
            "ftp://x:1",
            "db.example:7070",
        ] {
            let error = Client::new(refused, None, t)
                .err()
                .unwrap_or_else(|| panic!("{refused}"));
            assert!(error.to_string().contains("--url"), "{error}");
        }
        let insisting = Transport {
            insecure_http: true,
            ..Default::default()
        };
        assert!(Client::with_transport("http://10.0.0.5:7070", None, t, &insisting).is_ok());
    }
}
