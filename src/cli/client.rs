//! A small blocking HTTP/1.1 client for the backup tooling: enough of the
//! protocol to talk to a Coffer host (JSON requests, Content-Length or chunked
//! responses streamed to a writer). Plain `http://` only: put TLS in front of a
//! remote host (see ops/).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use anyhow::{bail, Context};

pub struct Client {
    authority: String,
    token: String,
}

pub struct Response {
    pub status: u16,
    reader: BufReader<TcpStream>,
    chunked: bool,
    length: Option<u64>,
}

impl Client {
    pub fn new(url: &str, token: String) -> anyhow::Result<Client> {
        let authority = url
            .strip_prefix("http://")
            .with_context(|| format!("--url {url:?}: only http:// URLs are supported"))?
            .trim_end_matches('/')
            .to_string();
        if authority.is_empty() || authority.contains('/') {
            bail!("--url {url:?}: give the host only, e.g. http://127.0.0.1:7070");
        }
        Ok(Client { authority, token })
    }

    pub fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
    ) -> anyhow::Result<Response> {
        let mut stream = TcpStream::connect(&self.authority)
            .with_context(|| format!("connect to {}", self.authority))?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        let body = body.unwrap_or(b"");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.authority,
            self.token,
            body.len()
        );
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut reader = BufReader::new(stream);
        let mut line = String::new();
        reader.read_line(&mut line).context("read response")?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("not an HTTP response: {line:?}"))?;
        let (mut chunked, mut length) = (false, None);
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                let value = value.trim();
                if name.eq_ignore_ascii_case("transfer-encoding") && value.contains("chunked") {
                    chunked = true;
                } else if name.eq_ignore_ascii_case("content-length") {
                    length = value.parse().ok();
                }
            }
        }
        Ok(Response {
            status,
            reader,
            chunked,
            length,
        })
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
        let mut text = Vec::new();
        response.copy_body(&mut text, |_| {})?;
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
    /// Streams the body into `out`, calling `progress(bytes so far)`.
    pub fn copy_body(
        &mut self,
        out: &mut dyn Write,
        mut progress: impl FnMut(u64),
    ) -> anyhow::Result<u64> {
        let mut total = 0u64;
        let mut buffer = vec![0u8; 64 * 1024];
        if self.chunked {
            loop {
                let mut size_line = String::new();
                self.reader.read_line(&mut size_line)?;
                let size =
                    u64::from_str_radix(size_line.trim().split(';').next().unwrap_or(""), 16)
                        .with_context(|| "the transfer broke off (bad chunk header)")?;
                if size == 0 {
                    break;
                }
                let mut left = size;
                while left > 0 {
                    let want = left.min(buffer.len() as u64) as usize;
                    let n = self.reader.read(&mut buffer[..want])?;
                    if n == 0 {
                        bail!("the transfer broke off after {total} bytes");
                    }
                    out.write_all(&buffer[..n])?;
                    total += n as u64;
                    left -= n as u64;
                    progress(total);
                }
                let mut crlf = [0u8; 2];
                self.reader.read_exact(&mut crlf)?;
            }
        } else {
            let mut limited = (&mut self.reader).take(self.length.unwrap_or(u64::MAX));
            loop {
                let n = limited.read(&mut buffer)?;
                if n == 0 {
                    break;
                }
                out.write_all(&buffer[..n])?;
                total += n as u64;
                progress(total);
            }
            if let Some(length) = self.length {
                if total != length {
                    bail!("the transfer broke off after {total} of {length} bytes");
                }
            }
        }
        Ok(total)
    }
}
