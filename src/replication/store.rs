//! One region's object store, through the `object_store` crate (S3, GCS, Azure,
//! local directories), with the object layout backups use:
//!
//! ```text
//! tenants/<tenant>/<backup>/archive.cfrdr   the sealed archive (written first)
//! tenants/<tenant>/<backup>/manifest.json   its StoredBackup (written last)
//! ```
//!
//! The same layout as the host's spool, so a `file://` region can be read by
//! the spool's code and by hand. Objects are written once: the name holds the
//! backup id (random, never reused); a write first looks for an existing
//! object, and asks the store for create-only where it honours it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, WriteMultipart};

use crate::backup::store::{StoredBackup, ARCHIVE_OBJECT, MANIFEST_OBJECT};
use crate::config::{RegionSpec, StoreSpec};
use crate::ids::Region;

/// Objects up to this size go in one PUT; larger ones in parts of this size.
pub const PART_BYTES: usize = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// Something is at a name this backup owns, and it is not what we wrote.
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<object_store::Error> for StoreError {
    fn from(error: object_store::Error) -> Self {
        match error {
            object_store::Error::NotFound { .. } => StoreError::NotFound,
            object_store::Error::AlreadyExists { path, .. }
            | object_store::Error::Precondition { path, .. } => {
                StoreError::Conflict(format!("{path} already exists (write-once)"))
            }
            other => StoreError::Unavailable(one_line(&other.to_string())),
        }
    }
}

/// Errors from HTTP clients run long; the API and logs show one line.
fn one_line(text: &str) -> String {
    let line = text.split('\n').next().unwrap_or_default();
    line.chars().take(300).collect()
}

pub struct RegionStore {
    pub name: Region,
    pub location: String,
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    conditional_put: bool,
    /// The store checks each PUT's `x-amz-checksum-sha256` on receipt and
    /// refuses a body that does not match (S3 and Garage): an upload it
    /// accepted holds what was sent, without reading it back.
    pub checks_on_receipt: bool,
}

impl std::fmt::Debug for RegionStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionStore")
            .field("name", &self.name)
            .field("location", &self.location)
            .finish()
    }
}

impl RegionStore {
    /// Builds the client for a configured region. Needs no network: a store
    /// that is down shows up on first use, not at startup.
    pub fn open(spec: &RegionSpec) -> anyhow::Result<RegionStore> {
        use anyhow::Context;
        // reqwest is built without a default TLS provider; ring is ours already.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let checks_on_receipt = matches!(spec.store, StoreSpec::S3 { .. });
        let (store, prefix): (Arc<dyn ObjectStore>, Path) = match &spec.store {
            StoreSpec::Directory(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create region directory {}", dir.display()))?;
                let local = object_store::local::LocalFileSystem::new_with_prefix(dir)?
                    .with_automatic_cleanup(true);
                (Arc::new(local), Path::default())
            }
            StoreSpec::S3 {
                bucket,
                prefix,
                endpoint,
                s3_region,
                access_key_id,
                secret_access_key_file,
            } => {
                let mut builder = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    // Every PUT and part carries `x-amz-checksum-sha256` of
                    // its body, which the store verifies on receipt (400
                    // BadDigest otherwise) and keeps; completing a multipart
                    // upload sends each part's checksum again. So a body
                    // altered on the way is refused, not stored, and the
                    // payload need not also be hashed into the signature.
                    .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                    .with_unsigned_payload(true)
                    .with_retry(object_store::RetryConfig {
                        // Our replicator retries with its own backoff; the client
                        // only smooths over a blip.
                        max_retries: 2,
                        retry_timeout: Duration::from_secs(15),
                        ..Default::default()
                    })
                    .with_client_options(
                        object_store::ClientOptions::new()
                            .with_connect_timeout(Duration::from_secs(3))
                            .with_timeout(Duration::from_secs(120))
                            .with_allow_http(
                                endpoint
                                    .as_deref()
                                    .is_some_and(|e| e.starts_with("http://")),
                            ),
                    );
                if let Some(endpoint) = endpoint {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_virtual_hosted_style_request(false);
                }
                if let Some(region) = s3_region {
                    builder = builder.with_region(region);
                }
                if let Some(id) = access_key_id {
                    builder = builder.with_access_key_id(id);
                }
                if let Some(file) = secret_access_key_file {
                    crate::secret_file::check_private(file).with_context(|| {
                        format!("secret_access_key_file of region {}", spec.name)
                    })?;
                    let secret = zeroize::Zeroizing::new(
                        std::fs::read_to_string(file)
                            .with_context(|| format!("read {}", file.display()))?,
                    );
                    builder = builder.with_secret_access_key(secret.trim());
                }
                (Arc::new(builder.build()?), Path::from(prefix.as_str()))
            }
            StoreSpec::Other { url } => {
                let parsed = url::Url::parse(url).with_context(|| format!("store {url:?}"))?;
                let (store, prefix) = object_store::parse_url_opts(
                    &parsed,
                    std::env::vars().map(|(k, v)| (k.to_ascii_lowercase(), v)),
                )?;
                (Arc::from(store), prefix)
            }
        };
        Ok(RegionStore {
            name: spec.name.clone(),
            location: spec.store.describe(),
            store,
            prefix,
            conditional_put: spec.conditional_put,
            checks_on_receipt,
        })
    }

    /// An object name under the store's prefix.
    pub fn path(&self, parts: &[&str]) -> Path {
        let mut path = self.prefix.clone();
        for part in parts {
            path = path.join(*part);
        }
        path
    }

    pub fn archive_path(&self, tenant: &str, backup: &str) -> Path {
        self.path(&["tenants", tenant, backup, ARCHIVE_OBJECT])
    }

    pub fn manifest_path(&self, tenant: &str, backup: &str) -> Path {
        self.path(&["tenants", tenant, backup, MANIFEST_OBJECT])
    }

    /// The size of an object, or `None` when there is none.
    pub async fn size(&self, path: &Path) -> Result<Option<u64>, StoreError> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(other) => Err(other.into()),
        }
    }

    fn put_options(&self) -> PutOptions {
        PutOptions {
            mode: if self.conditional_put {
                PutMode::Create
            } else {
                PutMode::Overwrite
            },
            ..Default::default()
        }
    }

    /// Writes a small object, create-only where the store honours it.
    pub async fn put_small(&self, path: &Path, bytes: Bytes) -> Result<(), StoreError> {
        self.store
            .put_opts(path, PutPayload::from(bytes), self.put_options())
            .await?;
        Ok(())
    }

    /// Uploads a local file: one PUT when small, else a multipart upload (an
    /// interrupted one is never visible as an object) in parts of
    /// [`PART_BYTES`]. Returns the bytes sent and, for a single PUT, the
    /// SHA-256 of its body (the checksum the store checked it against).
    pub async fn upload_file(
        &self,
        path: &Path,
        file: &std::path::Path,
    ) -> Result<(u64, Option<String>), StoreError> {
        use tokio::io::AsyncReadExt;
        let io =
            |e: std::io::Error| StoreError::Unavailable(format!("read {}: {e}", file.display()));
        let mut source = tokio::fs::File::open(file).await.map_err(io)?;
        let size = source.metadata().await.map_err(io)?.len();
        if size <= PART_BYTES as u64 {
            let mut bytes = Vec::with_capacity(size as usize);
            source.read_to_end(&mut bytes).await.map_err(io)?;
            let written = bytes.len() as u64;
            let sha256 = crate::crypto::encode_hex(
                ring::digest::digest(&ring::digest::SHA256, &bytes).as_ref(),
            );
            self.put_small(path, Bytes::from(bytes)).await?;
            return Ok((written, Some(sha256)));
        }
        let upload = self.store.put_multipart(path).await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buffer = vec![0u8; 1 << 20];
        let mut written = 0u64;
        loop {
            let n = match source.read(&mut buffer).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(4).await {
                let _ = writer.abort().await;
                return Err(e.into());
            }
            writer.write(&buffer[..n]);
            written += n as u64;
        }
        writer.finish().await?;
        Ok((written, None))
    }

    /// Reads an object whole (manifests).
    pub async fn get_bytes(&self, path: &Path) -> Result<Bytes, StoreError> {
        Ok(self.store.get(path).await?.bytes().await?)
    }

    /// Size and SHA-256 of an object, read back in full.
    pub async fn digest(&self, path: &Path) -> Result<(u64, String), StoreError> {
        let mut stream = self.store.get(path).await?.into_stream();
        let mut hasher = ring::digest::Context::new(&ring::digest::SHA256);
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        Ok((size, crate::crypto::encode_hex(hasher.finish().as_ref())))
    }

    /// The object as a stream of chunks (restores).
    pub async fn stream(
        &self,
        path: &Path,
    ) -> Result<futures::stream::BoxStream<'static, object_store::Result<Bytes>>, StoreError> {
        Ok(self.store.get(path).await?.into_stream())
    }

    /// Deletes an object; one that is already gone counts as deleted.
    pub async fn delete(&self, path: &Path) -> Result<(), StoreError> {
        match self.store.delete(path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(other) => Err(other.into()),
        }
    }

    /// The published backups of one tenant in this region (manifest present).
    pub async fn list(&self, tenant: &str) -> Result<Vec<StoredBackup>, StoreError> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path(&["tenants", tenant])))
            .await?;
        let mut out = Vec::new();
        for prefix in listing.common_prefixes {
            let Some(backup) = prefix.filename() else {
                continue;
            };
            if let Some(stored) = self.manifest(tenant, backup).await? {
                out.push(stored);
            }
        }
        out.sort_by(|a, b| (a.created_at, &a.backup_id).cmp(&(b.created_at, &b.backup_id)));
        Ok(out)
    }

    /// A backup's manifest, if it is published here.
    pub async fn manifest(
        &self,
        tenant: &str,
        backup: &str,
    ) -> Result<Option<StoredBackup>, StoreError> {
        match self.get_bytes(&self.manifest_path(tenant, backup)).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                StoreError::Conflict(format!("manifest of backup {backup} is not ours: {e}"))
            }),
            Err(StoreError::NotFound) => Ok(None),
            Err(other) => Err(other),
        }
    }

    /// Tenants with at least one object in this region.
    pub async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path(&["tenants"])))
            .await?;
        let mut out: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Names of the objects directly under `parts` (e.g. checkpoint copies).
    pub async fn list_names(&self, parts: &[&str]) -> Result<Vec<String>, StoreError> {
        let listing = self
            .store
            .list_with_delimiter(Some(&self.path(parts)))
            .await?;
        let mut out: Vec<String> = listing
            .objects
            .iter()
            .filter_map(|o| o.location.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Every object name under the store's prefix (tests and erasure checks).
    pub async fn all_objects(&self) -> Result<Vec<String>, StoreError> {
        let mut listing = self.store.list(Some(&self.prefix));
        let mut out = Vec::new();
        while let Some(meta) = listing.next().await {
            out.push(meta?.location.to_string());
        }
        Ok(out)
    }
}
