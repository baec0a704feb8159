//! Weight store "s3": immutable, versioned, checksummed weight blobs in a bucket of any
//! S3-compatible object store (AWS S3, MinIO, Garage, Ceph RGW, R2), through `object_store`.
//!
//! Under the configured prefix, version `v` is two objects:
//!
//! - the blob `blobs/v<v, 20 digits>-<sha256>.weights`, named by its content, so writers of
//!   one version never overwrite each other's bytes;
//! - the commit record `versions/v<v, 20 digits>.json` (`{"version", "sha256", "bytes"}`),
//!   written after the blob with a conditional put (`If-None-Match: *`), so exactly one writer
//!   commits a version, across processes and replicas, and a committed version is never
//!   replaced.
//!
//! Blobs workers download straight from the bucket ([`DirectDownloads`]: the encoded weights
//! of served versions, corpus shards) are kept under `downloads/`, apart from the versions, and
//! read through SigV4 presigned GET URLs that expire after `presign_secs`.
//!
//! A version exists once its record does. A crash leaves at worst a blob without a record (not
//! listed, not served, removed by the next delete of that version) or an unfinished multipart
//! upload (invisible; a bucket lifecycle rule `AbortIncompleteMultipartUpload` reclaims its
//! parts). Every read recomputes the SHA-256; a mismatch is refused, never served.
//!
//! Credentials come from the standard AWS environment variables (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...), never from the run config.

use bitnet_framework::protocol::now_ms;
use bitnet_framework::registry::{BuildError, PluginConfig, Slot};
use bitnet_framework::store::{
    DirectDownloads, PresignedUrl, StoreError, WeightMeta, WeightStore, sha256_hex,
    valid_download_key,
};
use bitnet_framework::{BuildContext, register_plugin};
use object_store::aws::AmazonS3;
/// The client builder [`S3WeightStore::open_with`] takes (credentials, retries, timeouts).
pub use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::signer::Signer;
use object_store::{ObjectStore, PutMode, PutOptions, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

/// Blobs larger than this go up in parts.
const MULTIPART_OVER: usize = 64 << 20;
/// Size of one part of a multipart upload (S3's minimum is 5 MiB).
const PART_SIZE: usize = 16 << 20;
/// Longest lifetime of a SigV4 presigned URL (7 days).
const MAX_PRESIGN_SECS: u64 = 7 * 24 * 3600;

/// Options of "s3".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3StoreConfig {
    /// Bucket holding the weights (it must exist).
    pub bucket: String,
    /// Key prefix of this run's weights inside the bucket.
    pub prefix: String,
    /// Endpoint of an S3-compatible server (MinIO, Garage, ...); unset for AWS itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Region.
    pub region: String,
    /// Allow a plain `http://` endpoint (a server on loopback or a private network). Workers
    /// then download presigned objects over plain HTTP too (their SHA-256 is still checked).
    pub allow_http: bool,
    /// Lifetime of the presigned URLs workers download weights and shards through, seconds
    /// (1 to 604800). A worker downloads right after claiming its task; short is safer, as
    /// anyone holding a URL can read that object until it expires.
    pub presign_secs: u64,
}

impl Default for S3StoreConfig {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            prefix: "weights".into(),
            endpoint: None,
            region: "us-east-1".into(),
            allow_http: false,
            presign_secs: 300,
        }
    }
}

impl PluginConfig for S3StoreConfig {
    type Component = dyn WeightStore;

    fn build(self, _ctx: &BuildContext) -> Result<Box<dyn WeightStore>, BuildError> {
        S3WeightStore::open(&self)
            .map(|s| Box::new(s) as Box<dyn WeightStore>)
            .map_err(|e| BuildError::failed(Slot::WeightStore, "s3", e))
    }
}

register_plugin!(
    S3StoreConfig,
    "s3",
    "Immutable versioned blobs in an S3-compatible bucket, committed by conditional put, SHA-256 checked."
);

/// The "s3" weight store.
pub struct S3WeightStore {
    store: Arc<AmazonS3>,
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    location: String,
    /// Drives the HTTP client; `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// Blobs larger than this go up in parts of `part_size` bytes.
    multipart_over: usize,
    part_size: usize,
    /// Lifetime of presigned URLs.
    presign: Duration,
}

impl std::fmt::Debug for S3WeightStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3WeightStore").field("location", &self.location).finish()
    }
}

impl Drop for S3WeightStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio refuses inside an async context.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// Name of version `v`'s commit record.
pub fn record_name(version: u64) -> String {
    format!("v{version:020}.json")
}

/// Name of version `v`'s blob with digest `sha256`.
pub fn blob_name(version: u64, sha256: &str) -> String {
    format!("v{version:020}-{sha256}.weights")
}

fn parse_record_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix('v')?.strip_suffix(".json")?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn other(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("s3 weight store: {what}: {e}"))
}

impl S3WeightStore {
    /// Connects to the bucket of `config` (credentials from the AWS environment variables)
    /// and checks that it answers.
    pub fn open(config: &S3StoreConfig) -> Result<Self, StoreError> {
        Self::open_with(config, AmazonS3Builder::from_env())
    }

    /// [`Self::open`] with the client settings (credentials, retries) of `builder`; the
    /// options of `config` override the builder's.
    pub fn open_with(config: &S3StoreConfig, builder: AmazonS3Builder) -> Result<Self, StoreError> {
        if config.bucket.is_empty() {
            return Err(StoreError::Other("weight_store.bucket is required for \"s3\"".into()));
        }
        if config.prefix.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
            return Err(StoreError::Other(format!(
                "weight_store.prefix `{}` must be non-empty `/`-separated names, without \
                 empty, `.` or `..` parts",
                config.prefix
            )));
        }
        if !(1..=MAX_PRESIGN_SECS).contains(&config.presign_secs) {
            return Err(StoreError::Other(format!(
                "weight_store.presign_secs = {} must be between 1 and {MAX_PRESIGN_SECS} (7 days, \
                 the longest a presigned URL can live)",
                config.presign_secs
            )));
        }
        let mut builder = builder
            .with_bucket_name(&config.bucket)
            .with_region(&config.region)
            .with_allow_http(config.allow_http);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| other("configuration", e))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("bitnet-s3")
            .enable_io()
            .enable_time()
            .build()
            .map_err(|e| other("cannot start the store's runtime", e))?;
        let location = format!("s3://{}/{}", config.bucket, config.prefix);
        let s = Self {
            store: Arc::new(store),
            prefix: config.prefix.clone(),
            location,
            runtime: Some(runtime),
            multipart_over: MULTIPART_OVER,
            part_size: PART_SIZE,
            presign: Duration::from_secs(config.presign_secs),
        };
        // Fail at start, not at the first snapshot, when the bucket or credentials are wrong.
        s.block(async {
            s.store
                .list_with_delimiter(Some(&s.path("versions")))
                .await
                .map_err(|e| other(&format!("cannot list {}", s.location), e))
        })?;
        Ok(s)
    }

    /// Where the weights live, `s3://bucket/prefix`.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The underlying object store (for fault injection in tests and for signing URLs).
    pub fn object_store(&self) -> &Arc<AmazonS3> {
        &self.store
    }

    /// The object path of `rest` under the prefix.
    pub fn path(&self, rest: &str) -> ObjectPath {
        ObjectPath::from(format!("{}/{rest}", self.prefix))
    }

    /// The object path of direct-download `key`, refused unless it is a plain relative name.
    fn download_path(&self, key: &str) -> Result<ObjectPath, StoreError> {
        if !valid_download_key(key) {
            return Err(StoreError::Other(format!(
                "download key `{key}` must be `/`-separated names of [A-Za-z0-9._-]"
            )));
        }
        Ok(self.path(&format!("downloads/{key}")))
    }

    async fn published_len(&self, path: &ObjectPath) -> Result<Option<u64>, StoreError> {
        match self.store.head(path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(other(&format!("looking up {path}"), e)),
        }
    }

    /// Runs `fut` on the store's runtime, blocking the caller (off a tokio worker with
    /// `block_in_place` when called on one).
    fn block<T>(&self, fut: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        let rt = self.runtime.as_ref().ok_or_else(|| other("runtime", "the store is shut down"))?;
        tokio::task::block_in_place(|| rt.block_on(fut))
    }

    /// Version `v`'s commit record: `None` when absent, `Err(Corrupt)` when unreadable.
    async fn record(&self, version: u64) -> Result<Option<WeightMeta>, StoreError> {
        let path = self.path(&format!("versions/{}", record_name(version)));
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(|e| other(&format!("reading {path}"), e))?,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(other(&format!("reading {path}"), e)),
        };
        match serde_json::from_slice::<WeightMeta>(&bytes) {
            Ok(meta)
                if meta.version == version
                    && meta.sha256.len() == 64
                    && meta.sha256.bytes().all(|b| b.is_ascii_hexdigit()) =>
            {
                Ok(Some(meta))
            }
            _ => Err(StoreError::Corrupt {
                version,
                expected: "(unreadable commit record)".into(),
                found: format!(
                    "{:?}",
                    String::from_utf8_lossy(&bytes).chars().take(80).collect::<String>()
                ),
            }),
        }
    }

    async fn get_async(&self, version: u64) -> Result<Vec<u8>, StoreError> {
        let meta = self.record(version).await?.ok_or(StoreError::NotFound(version))?;
        let path = self.path(&format!("blobs/{}", blob_name(version, &meta.sha256)));
        let bytes = match self.store.get(&path).await {
            Ok(r) => r.bytes().await.map_err(|e| other(&format!("reading {path}"), e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(StoreError::Corrupt {
                    version,
                    expected: meta.sha256,
                    found: "(blob missing)".into(),
                });
            }
            Err(e) => return Err(other(&format!("reading {path}"), e)),
        };
        let found = sha256_hex(&bytes);
        if found != meta.sha256 {
            tracing::error!("weight version {version} at {path} is corrupt");
            return Err(StoreError::Corrupt { version, expected: meta.sha256, found });
        }
        Ok(bytes.to_vec())
    }

    async fn put_blob(&self, path: &ObjectPath, blob: &[u8]) -> Result<(), StoreError> {
        let failed = |e: object_store::Error| other(&format!("writing {path}"), e);
        if blob.len() <= self.multipart_over {
            self.store.put(path, PutPayload::from(blob.to_vec())).await.map_err(failed)?;
        } else {
            let upload = self.store.put_multipart(path).await.map_err(failed)?;
            let mut writer = WriteMultipart::new_with_chunk_size(upload, self.part_size);
            writer.write(blob);
            writer.finish().await.map_err(failed)?;
        }
        Ok(())
    }

    async fn put_async(&self, version: u64, blob: &[u8]) -> Result<WeightMeta, StoreError> {
        // A committed version is never replaced, unless what is stored no longer matches its
        // own digest: then the newest snapshot would stay corrupt forever, so it is rewritten
        // with the blob the caller has now (as the "fs" store does).
        let rewrite = match self.record(version).await {
            Ok(None) => false,
            Ok(Some(_)) | Err(StoreError::Corrupt { .. }) => match self.get_async(version).await {
                Ok(_) => return Err(StoreError::Exists(version)),
                Err(e @ (StoreError::Corrupt { .. } | StoreError::NotFound(_))) => {
                    tracing::warn!("rewriting weight version {version}: {e}");
                    true
                }
                Err(e) => return Err(e),
            },
            Err(e) => return Err(e),
        };
        let meta = WeightMeta { version, sha256: sha256_hex(blob), bytes: blob.len() as u64 };
        let blob_path = self.path(&format!("blobs/{}", blob_name(version, &meta.sha256)));
        self.put_blob(&blob_path, blob).await?;
        let record_path = self.path(&format!("versions/{}", record_name(version)));
        let record = serde_json::to_vec(&meta).map_err(|e| other("encoding a record", e))?;
        let mode = if rewrite { PutMode::Overwrite } else { PutMode::Create };
        let put = self
            .store
            .put_opts(&record_path, PutPayload::from(record), PutOptions::from(mode))
            .await;
        match put {
            Ok(_) => Ok(meta),
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Another writer committed first. Its blob has another name unless the bytes
                // are the same; only then is ours its blob too.
                if let Ok(Some(winner)) = self.record(version).await
                    && winner.sha256 != meta.sha256
                {
                    let _ = self.store.delete(&blob_path).await;
                }
                Err(StoreError::Exists(version))
            }
            Err(e) => Err(other(&format!("committing {record_path}"), e)),
        }
    }

    async fn list_async(&self) -> Result<Vec<WeightMeta>, StoreError> {
        let versions = self.list_names("versions").await?;
        let blobs: std::collections::HashSet<String> =
            self.list_names("blobs").await?.into_iter().collect();
        let mut out = Vec::new();
        for name in versions {
            let Some(version) = parse_record_name(&name) else { continue };
            match self.record(version).await {
                Ok(Some(meta)) if blobs.contains(&blob_name(version, &meta.sha256)) => {
                    out.push(meta);
                }
                Ok(Some(_)) => tracing::warn!("not listing weight version {version}: no blob"),
                Ok(None) => {}
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::warn!("not listing weight version {version}: {e}");
                }
                Err(e) => return Err(e),
            }
        }
        out.sort_by_key(|m| m.version);
        Ok(out)
    }

    /// Names of the objects directly under `dir` (of the prefix).
    async fn list_names(&self, dir: &str) -> Result<Vec<String>, StoreError> {
        let prefix = self.path(dir);
        let mut names = Vec::new();
        // list_with_delimiter follows the continuation tokens: one call returns every entry.
        let listing = self
            .store
            .list_with_delimiter(Some(&prefix))
            .await
            .map_err(|e| other(&format!("listing {prefix}"), e))?;
        for o in listing.objects {
            if let Some(name) = o.location.filename() {
                names.push(name.to_string());
            }
        }
        Ok(names)
    }

    async fn delete_async(&self, version: u64) -> Result<(), StoreError> {
        // The record is the commit: removing it first uncommits the version, so a crash
        // before the blobs go leaves unlisted blobs that are never served.
        let record_path = self.path(&format!("versions/{}", record_name(version)));
        match self.store.delete(&record_path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(other(&format!("deleting {record_path}"), e)),
        }
        // Every blob of the version: the committed one and any a lost race or crash left.
        let head = format!("v{version:020}-");
        for name in self.list_names("blobs").await?.into_iter().filter(|n| n.starts_with(&head)) {
            let path = self.path(&format!("blobs/{name}"));
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(other(&format!("deleting {path}"), e)),
            }
        }
        Ok(())
    }
}

impl WeightStore for S3WeightStore {
    fn put_version(&self, version: u64, blob: &[u8]) -> Result<WeightMeta, StoreError> {
        self.block(self.put_async(version, blob))
    }

    fn get_version(&self, version: u64) -> Result<Vec<u8>, StoreError> {
        self.block(self.get_async(version))
    }

    fn list_versions(&self) -> Result<Vec<WeightMeta>, StoreError> {
        self.block(self.list_async())
    }

    fn delete_version(&self, version: u64) -> Result<(), StoreError> {
        self.block(self.delete_async(version))
    }

    fn direct_downloads(&self) -> Option<&dyn DirectDownloads> {
        Some(self)
    }
}

impl DirectDownloads for S3WeightStore {
    fn publish(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let path = self.download_path(key)?;
        self.block(async {
            if self.published_len(&path).await? != Some(bytes.len() as u64) {
                self.put_blob(&path, bytes).await?;
            }
            Ok(())
        })
    }

    fn is_published(&self, key: &str, bytes: u64) -> Result<bool, StoreError> {
        let path = self.download_path(key)?;
        Ok(self.block(self.published_len(&path))? == Some(bytes))
    }

    fn presign_get(&self, key: &str, bytes: u64) -> Result<PresignedUrl, StoreError> {
        let path = self.download_path(key)?;
        // Taken before signing, so the URL lives at least until then.
        let expires_ms = now_ms() + self.presign.as_millis() as u64;
        let url = self.block(async {
            self.store
                .signed_url(reqwest::Method::GET, &path, self.presign)
                .await
                .map_err(|e| other(&format!("signing a URL for {path}"), e))
        })?;
        Ok(PresignedUrl { url: url.to_string(), bytes, expires_ms })
    }

    fn unpublish(&self, key: &str) -> Result<(), StoreError> {
        let path = self.download_path(key)?;
        self.block(async {
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(other(&format!("deleting {path}"), e)),
            }
        })
    }
}

#[cfg(test)]
mod tests;
