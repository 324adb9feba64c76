//! The service manager's readiness protocol (sd_notify(3)) in a few lines of
//! std: one datagram to `$NOTIFY_SOCKET` per state change. Nothing happens
//! when the variable is unset (not started by systemd with `Type=notify`).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `READY=1`); a failure is logged, never fatal.
pub fn notify(state: &str) {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sent = UnixDatagram::unbound().and_then(|sender| {
        let path = socket.to_string_lossy();
        match path.strip_prefix('@') {
            // An abstract socket (Linux): '@' stands for the leading NUL.
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                let address = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
                sender.send_to_addr(state.as_bytes(), &address)
            }
            None => sender.send_to(state.as_bytes(), &*path),
        }
    });
    if let Err(error) = sent {
        tracing::warn!(%error, "notify the service manager");
    }
}

/// While `work` runs, asks the manager every 10 s for 30 s more start-up
/// time (`EXTEND_TIMEOUT_USEC`): a long audit-log scan or migration is not a
/// hung start.
pub fn extending_start_timeout<T>(what: &str, work: impl FnOnce() -> T) -> T {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return work();
    }
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let status = format!("STATUS={what}");
    let ticker = std::thread::spawn(move || loop {
        notify(&format!("EXTEND_TIMEOUT_USEC=30000000\n{status}"));
        match finished.recv_timeout(Duration::from_secs(10)) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            _ => break,
        }
    });
    let result = work();
    drop(done);
    let _ = ticker.join();
    result
}
