//! The one HTTP client of the command line, the tests and the benches: a Coffer
//! host's URL and a bearer token, JSON requests, answers streamed to a writer.
//! Built on ureq (blocking, no runtime of its own, a connection pool per
//! `Client`); a status is an answer, not an error, and redirects are never
//! followed. Plain `http://` today; https comes with ureq's rustls feature.
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

impl Client {
    /// `url` names the host only (`http://127.0.0.1:7070`); `timeout` bounds
    /// each read from the connection (not the whole transfer).
    pub fn new(url: &str, token: Option<String>, timeout: Duration) -> anyhow::Result<Client> {
        let authority = url
            .strip_prefix("http://")
            .with_context(|| format!("--url {url:?}: only http:// URLs are supported"))?
            .trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            bail!("--url {url:?}: give the host only, e.g. http://127.0.0.1:7070");
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(None)
            .timeout_connect(Some(Duration::from_secs(10)))
            .timeout_recv_response(Some(timeout))
            .timeout_recv_body(None)
            .build();
        Ok(Client {
            agent: config.into(),
            base: format!("http://{authority}"),
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
