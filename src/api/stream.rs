//! Bridges between hyper's async bodies and the blocking readers and writers of
//! `backup` (tar, zstd and sled run on blocking threads).

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use tokio::sync::mpsc;

/// A response body fed by a blocking writer.
pub struct ChannelBody {
    rx: mpsc::Receiver<io::Result<Bytes>>,
}

impl Body for ChannelBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        self.rx
            .poll_recv(cx)
            .map(|item| item.map(|result| result.map(Frame::data)))
    }
}

/// The blocking side of a [`ChannelBody`]: buffers 64 KiB, then hands it over.
/// A client that hangs up makes the next write fail, which stops the export;
/// so does a client that reads nothing for `stall` (it would hold a thread
/// and a job slot for as long as its socket stays open), and work that is no
/// longer wanted (`still_wanted` says why: e.g. the tenant was purged).
pub struct ChannelWriter {
    /// Dropped before `tx` (fields drop in order): the job's slot is free by
    /// the time the client sees the body end.
    _frees: super::limits::SlotRelease,
    tx: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
    stall: Duration,
    still_wanted: Box<dyn Fn() -> Result<(), String> + Send>,
    /// The runtime the body is polled on (the writer runs on a thread of its own).
    runtime: tokio::runtime::Handle,
}

const CHUNK: usize = 64 * 1024;

/// Call from inside the runtime.
/// `frees` is the slot of the job that writes, freed when the body ends.
pub fn channel(
    stall: Duration,
    still_wanted: Box<dyn Fn() -> Result<(), String> + Send>,
    frees: super::limits::SlotRelease,
) -> (ChannelWriter, ChannelBody) {
    // Four chunks in flight: memory stays bounded whatever the tenant's size.
    let (tx, rx) = mpsc::channel(4);
    (
        ChannelWriter {
            _frees: frees,
            tx,
            buffer: Vec::with_capacity(CHUNK),
            stall,
            still_wanted,
            runtime: tokio::runtime::Handle::current(),
        },
        ChannelBody { rx },
    )
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        (self.still_wanted)().map_err(io::Error::other)?;
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.send_bounded(Ok(chunk))
    }

    /// Hands one item over, waiting at most `stall` for the client to take
    /// the ones before it.
    fn send_bounded(&self, item: io::Result<Bytes>) -> io::Result<()> {
        let sent = self
            .runtime
            .block_on(async { tokio::time::timeout(self.stall, self.tx.send(item)).await });
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the client went away",
            )),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "the client read nothing for {} s: the stream was ended",
                    self.stall.as_secs_f64()
                ),
            )),
        }
    }

    /// Ends the body with an error, so the client sees a broken transfer rather
    /// than a complete-looking truncated archive.
    pub fn fail(self, message: String) {
        let _ = self.send_bounded(Err(io::Error::other(message)));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.send()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

/// A request body read on a blocking thread, with a byte limit.
pub struct BodyReader {
    rx: mpsc::Receiver<Result<Bytes, String>>,
    current: Bytes,
    /// Set when the body went past its limit (the caller answers 413).
    pub exceeded: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Debug, thiserror::Error)]
#[error("request body is larger than {0} bytes")]
pub struct BodyTooLarge(pub u64);

/// Starts pumping `body` into a [`BodyReader`]; an upload from which nothing
/// arrives for `stall` ends with an error.
pub fn body_reader(mut body: Incoming, limit: u64, stall: Duration) -> BodyReader {
    let (tx, rx) = mpsc::channel(4);
    let exceeded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = exceeded.clone();
    tokio::spawn(async move {
        let mut total = 0u64;
        loop {
            let frame = match tokio::time::timeout(stall, body.frame()).await {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(_) => {
                    let _ = tx
                        .send(Err(format!(
                            "the upload stalled: nothing arrived for {} s",
                            stall.as_secs_f64()
                        )))
                        .await;
                    return;
                }
            };
            let item = match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) => {
                        total += data.len() as u64;
                        if total > limit {
                            flag.store(true, std::sync::atomic::Ordering::SeqCst);
                            let _ = tx.send(Err(format!("too large:{limit}"))).await;
                            return;
                        }
                        Ok(data)
                    }
                    Err(_) => continue,
                },
                Err(error) => Err(format!("read request body: {error}")),
            };
            let failed = item.is_err();
            if tx.send(item).await.is_err() || failed {
                return;
            }
        }
    });
    BodyReader {
        rx,
        current: Bytes::new(),
        exceeded,
    }
}

impl Read for BodyReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(data)) => self.current = data,
                Some(Err(message)) => {
                    if let Some(limit) = message.strip_prefix("too large:") {
                        return Err(io::Error::other(BodyTooLarge(limit.parse().unwrap_or(0))));
                    }
                    return Err(io::Error::other(message));
                }
            }
        }
        let n = self.current.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}
