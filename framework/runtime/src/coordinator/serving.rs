//! Serving weights: each version is encoded once and the newest few are kept for downloads.

use super::*;

impl Coordinator {
    pub(super) fn current_blob(&self) -> Result<Blob, ApiError> {
        let _encoding = lock(&self.encoding, "encoding")?;
        let (version, params) = {
            let m = lock(&self.model, "model")?;
            if let Some(b) = lock(&self.served, "served")?.iter().find(|b| b.version == m.version) {
                return Ok(b.clone());
            }
            (m.version, m.params.clone())
        };
        let bytes = self
            .weight_codec
            .encode(&self.layout, version, &params)
            .map_err(|e| ApiError::Internal(format!("encoding weights: {e}")))?;
        let b = Blob { version, sha256: sha256_hex(&bytes), bytes: Arc::new(bytes) };
        // Only this function adds to `served`, under the encoding lock, after finding `version`
        // missing: it is still missing.
        let mut served = lock(&self.served, "served")?;
        served.push_back(b.clone());
        while served.len() > SERVED_VERSIONS {
            served.pop_front();
        }
        Ok(b)
    }
}
