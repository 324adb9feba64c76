//! Archives: exports fetched, tar members packed and unpacked (also hostile ones), imports, and small readings.

use std::io::Read;

use super::Host;

pub fn export(host: &Host, tenant: &str, token: &str) -> Vec<u8> {
    let r = host.call(
        "GET",
        &format!("/v1/tenants/{tenant}/export"),
        Some(token),
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/zstd"));
    assert!(r
        .header("content-disposition")
        .unwrap()
        .contains(".tar.zst"));
    r.body
}

/// Unpacks an archive into (path, bytes) members, in order.
pub fn unpack(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let decoder = zstd::stream::read::Decoder::new(archive).unwrap();
    let mut tar = tar::Archive::new(decoder);
    tar.entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let path = String::from_utf8(e.path_bytes().to_vec()).unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            (path, data)
        })
        .collect()
}

pub enum Kind {
    File,
    Symlink(&'static str),
    HardLink(&'static str),
    Device,
}

/// Packs members into a tar + zstd archive, writing raw header names (so that
/// hostile paths are possible).
pub fn pack(members: &[(&str, &[u8], Kind)]) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data, kind) in members {
        let mut header = tar::Header::new_gnu();
        let name = path.as_bytes();
        header.as_old_mut().name[..name.len()].copy_from_slice(name);
        header.set_mode(0o644);
        match kind {
            Kind::File => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(data.len() as u64);
            }
            Kind::Symlink(target) | Kind::HardLink(target) => {
                header.set_entry_type(if matches!(kind, Kind::Symlink(_)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                });
                header.set_link_name(target).unwrap();
                header.set_size(0);
            }
            Kind::Device => {
                header.set_entry_type(tar::EntryType::Char);
                header.set_size(0);
            }
        }
        header.set_cksum();
        let body: &[u8] = if matches!(kind, Kind::File) {
            data
        } else {
            &[]
        };
        tar.append(&header, body).unwrap();
    }
    zstd::encode_all(&tar.into_inner().unwrap()[..], 3).unwrap()
}

pub fn repack(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let list: Vec<(&str, &[u8], Kind)> = members
        .iter()
        .map(|(p, d)| (p.as_str(), d.as_slice(), Kind::File))
        .collect();
    pack(&list)
}

/// The highest resident set size a process has had (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    coffer::crypto::encode_hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

pub fn tenant_count(host: &Host) -> usize {
    host.call("GET", "/v1/tenants", Some(&host.operator), None)
        .value()["tenants"]
        .as_array()
        .unwrap()
        .len()
}

pub fn import(host: &Host, name: &str, archive: &[u8]) -> crate::support::Response {
    host.call(
        "POST",
        &format!("/v1/tenants/import?name={name}"),
        Some(&host.operator),
        Some(archive),
    )
}
