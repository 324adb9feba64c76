//! Long jobs that end when their tenant goes: a reader or writer that asks,
//! every MiB, whether the work is still wanted, and fails once it is not
//! (the tenant was deactivated or purged). The job then sees an I/O error,
//! cleans up as for any broken archive, and reads [`Watch::stopped`] to say
//! why it ended. A watch can also hold a job to a byte rate (`[limits]
//! job_max_mb_per_s`, like `pg_basebackup --max-rate`), so that backups and
//! restores leave the disk to the tenants being served.

use std::io::{self, Read, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bytes between two checks.
const EVERY: u64 = 1 << 20;

/// The question a job asks as it goes, and the answer that stopped it.
pub struct Watch<'a> {
    still_wanted: Box<dyn Fn() -> Result<(), String> + Send + Sync + 'a>,
    stopped: Mutex<Option<String>>,
    /// Bytes per second at most, and the pace kept so far.
    max_rate: Option<u64>,
    pace: Mutex<(Instant, u64)>,
}

impl<'a> Watch<'a> {
    pub fn new(still_wanted: impl Fn() -> Result<(), String> + Send + Sync + 'a) -> Watch<'a> {
        Watch {
            still_wanted: Box::new(still_wanted),
            stopped: Mutex::new(None),
            max_rate: None,
            pace: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Holds the job to `bytes_per_sec` (none: as fast as it goes).
    pub fn at_most(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.max_rate = bytes_per_sec.filter(|r| *r > 0);
        self
    }

    /// Why the job was stopped, if it was.
    pub fn stopped(&self) -> Option<String> {
        self.stopped.lock().expect("watch poisoned").clone()
    }

    fn check(&self, bytes: u64) -> io::Result<()> {
        if let Some(rate) = self.max_rate {
            let wait = {
                let mut pace = self.pace.lock().expect("watch poisoned");
                pace.1 += bytes;
                behind_pace(pace.1, rate, pace.0.elapsed())
            };
            std::thread::sleep(wait);
        }
        (self.still_wanted)().map_err(|reason| {
            *self.stopped.lock().expect("watch poisoned") = Some(reason.clone());
            io::Error::other(reason)
        })
    }

    /// `inner`, checked every MiB that passes through it.
    pub fn wrap<T>(&'a self, inner: T) -> Watched<'a, T> {
        Watched {
            inner,
            watch: self,
            since: 0,
        }
    }
}

/// How long to wait so that `bytes` in `elapsed` stay within `rate` per second.
fn behind_pace(bytes: u64, rate: u64, elapsed: Duration) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate as f64).saturating_sub(elapsed)
}

pub struct Watched<'a, T> {
    inner: T,
    watch: &'a Watch<'a>,
    since: u64,
}

impl<T> Watched<'_, T> {
    fn count(&mut self, n: usize) -> io::Result<()> {
        self.since += n as u64;
        if self.since >= EVERY {
            self.watch.check(std::mem::take(&mut self.since))?;
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.inner
    }
}

impl<T: Read> Read for Watched<'_, T> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count(n)?;
        Ok(n)
    }
}

impl<T: Write> Write for Watched<'_, T> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.count(data.len())?;
        self.inner.write(data)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[test]
    fn a_watched_stream_fails_once_the_work_is_no_longer_wanted() {
        let wanted = AtomicBool::new(true);
        let watch = Watch::new(|| {
            if wanted.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("the tenant was destroyed during the backup".into())
            }
        });
        let mut out = watch.wrap(Vec::new());
        out.write_all(&vec![7u8; 3 << 20]).unwrap();
        assert_eq!(watch.stopped(), None);
        wanted.store(false, Ordering::SeqCst);
        let error = out.write_all(&vec![7u8; 2 << 20]).unwrap_err();
        assert!(error.to_string().contains("destroyed"), "{error}");
        assert_eq!(
            watch.stopped().as_deref(),
            Some("the tenant was destroyed during the backup")
        );
        let mut input = watch.wrap(&[1u8; 4 << 20][..]);
        let mut sink = Vec::new();
        assert!(input.read_to_end(&mut sink).is_err());
    }

    #[test]
    fn a_job_ahead_of_its_rate_waits_for_the_difference() {
        let mib = 1 << 20;
        assert_eq!(
            behind_pace(4 * mib, 8 * mib, Duration::ZERO),
            Duration::from_millis(500)
        );
        assert_eq!(
            behind_pace(4 * mib, 8 * mib, Duration::from_millis(200)),
            Duration::from_millis(300)
        );
        assert_eq!(
            behind_pace(4 * mib, 8 * mib, Duration::from_secs(1)),
            Duration::ZERO
        );
    }
}
