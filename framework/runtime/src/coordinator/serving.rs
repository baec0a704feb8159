//! Serving weights: each version is encoded once and the newest few are kept for downloads
//! (and published for direct download, see [`super::direct`]).

use super::direct::Served;
use super::*;

impl Coordinator {
    /// The current version's blob, encoded (and published) on first use.
    pub(super) fn current_blob(&self) -> Result<Served, ApiError> {
        let mut params = lock(&self.encoding, "encoding")?;
        let version = {
            let m = lock(&self.model, "model")?;
            let served = lock(&self.served, "served")?;
            if let Some(s) = served.iter().find(|s| s.blob.version == m.version) {
                return Ok(s.clone());
            }
            params.clear();
            params.extend_from_slice(&m.params);
            m.version
        };
        let bytes = self
            .weight_codec
            .encode(&self.layout, version, &params)
            .map_err(|e| ApiError::Internal(format!("encoding weights: {e}")))?;
        let blob = Blob { version, sha256: sha256_hex(&bytes), bytes: Arc::new(bytes) };
        let served = Served { key: self.publish_weights(&blob), blob };
        // Only this function adds to `served`, under the encoding lock, after finding `version`
        // missing: it is still missing.
        let mut evicted = Vec::new();
        {
            let mut all = lock(&self.served, "served")?;
            all.push_back(served.clone());
            while all.len() > SERVED_VERSIONS {
                evicted.extend(all.pop_front().and_then(|s| s.key));
            }
        }
        self.unpublish(evicted);
        Ok(served)
    }
}
