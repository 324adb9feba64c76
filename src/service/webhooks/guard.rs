//! Where a webhook may be sent (the SSRF guard): `https://` to a public
//! address; `http://` only to loopback when `allow_http_loopback`; private,
//! link-local and other special addresses only when `allow_private`. No
//! user-info in the URL. Checked when an endpoint is registered and again
//! before every attempt (its name may resolve elsewhere by then), and the
//! attempt connects to exactly the addresses checked (no second lookup for
//! a rebinding name to answer differently); redirects are never followed.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

use super::WebhookSettings;

/// Checks `url`; returns the addresses it resolved to, all allowed.
pub fn check_url(url: &str, settings: &WebhookSettings) -> Result<Vec<SocketAddr>, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("a webhook URL carries no user name or password".into());
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| "a webhook URL names a host".to_string())?;
    let port = parsed
        .port_or_known_default()
        .ok_or_else(|| "a webhook URL is https:// (or http:// to this machine)".to_string())?;
    let resolved: Vec<SocketAddr> = (host.trim_matches(['[', ']']), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .collect();
    let addresses: Vec<IpAddr> = resolved.iter().map(SocketAddr::ip).collect();
    if addresses.is_empty() {
        return Err(format!("{host} does not resolve"));
    }
    let loopback = addresses.iter().all(IpAddr::is_loopback);
    match parsed.scheme() {
        "https" => {}
        "http" if loopback && settings.allow_http_loopback => {}
        "http" => {
            return Err(
                "webhooks go over https:// (http:// only to this machine, when [webhooks] allow_http_loopback is set)"
                    .into(),
            )
        }
        other => return Err(format!("scheme {other}: webhooks go over https://")),
    }
    for address in &addresses {
        if address.is_loopback() {
            if !settings.allow_http_loopback && !settings.allow_private {
                return Err(format!("{host} is this machine ({address}): refused"));
            }
        } else if special(address) && !settings.allow_private {
            return Err(format!(
                "{host} resolves to a private or special address ({address}): refused"
            ));
        }
    }
    Ok(resolved)
}

/// Private, link-local, shared, unspecified, multicast or documentation
/// addresses: not the public internet.
fn special(address: &IpAddr) -> bool {
    match address {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || (a == 100 && (64..128).contains(&b))
                || a == 0
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| special(&IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn settings(loopback: bool, private: bool) -> WebhookSettings {
        WebhookSettings {
            allow_http_loopback: loopback,
            allow_private: private,
            retry_for: Duration::from_secs(1),
            max_backoff: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            region_lag_alert: Duration::from_secs(1),
        }
    }

    #[test]
    fn private_loopback_and_plain_http_are_refused_by_default() {
        let strict = settings(false, false);
        for url in [
            "http://203.0.113.7/hook",
            "https://10.1.2.3/hook",
            "https://192.168.0.9/hook",
            "https://169.254.169.254/latest/meta-data",
            "https://[fe80::1]/hook",
            "https://[::ffff:10.0.0.1]/hook",
            "https://127.0.0.1:8443/hook",
            "https://user:pw@8.8.8.8/hook",
            "ftp://8.8.8.8/x",
            "not a url",
        ] {
            assert!(check_url(url, &strict).is_err(), "{url}");
        }
        assert!(check_url("https://8.8.8.8/hook", &strict).is_ok());
        let tests = settings(true, false);
        assert!(check_url("http://127.0.0.1:9/hook", &tests).is_ok());
        assert!(check_url("http://10.0.0.1/hook", &tests).is_err());
        assert!(check_url("https://10.0.0.1/hook", &settings(false, true)).is_ok());
    }
}
