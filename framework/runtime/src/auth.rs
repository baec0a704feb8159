//! Authentication, written once for every transport: client secrets are generated at random and
//! stored only as argon2 PHC hashes; [`StoreAuthenticator`] checks them and the sessions opened
//! with them against the coordinator store.

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use bitnet_framework::coordinator_store::{ClientRecord, CoordinatorStore};
use bitnet_framework::protocol::{ApiError, CoordinatorApi};
use bitnet_framework::transport::{Authenticator, Credentials, ServeContext};
use rand::RngCore;
use std::sync::Arc;

/// A new random secret: 32 bytes, hex.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// A new random client id with `prefix`.
pub fn generate_client_id(prefix: &str) -> String {
    let mut bytes = [0u8; 6];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!("{prefix}-{}", hex::encode(bytes))
}

/// The argon2id PHC hash of `secret` with a fresh salt.
pub fn hash_secret(secret: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("hashing the secret: {e}"))
}

/// Whether `secret` matches the PHC hash `hash` (false for a malformed hash).
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|h| Argon2::default().verify_password(secret.as_bytes(), &h).is_ok())
        .unwrap_or(false)
}

/// What a transport needs to serve `api`: the API, authenticated against `store`'s client keys.
pub fn serve_context(
    api: Arc<dyn CoordinatorApi>,
    store: Arc<dyn CoordinatorStore>,
) -> ServeContext {
    ServeContext { api, auth: Arc::new(StoreAuthenticator::new(store)), admin: None, relay: None }
}

/// The hash unknown client ids are verified against: a random secret's, made once.
pub(crate) fn decoy_hash() -> Result<&'static str, ApiError> {
    static DECOY: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    DECOY
        .get_or_init(|| hash_secret(&generate_secret()))
        .as_deref()
        .map_err(|e| ApiError::Internal(e.clone()))
}

/// The [`Authenticator`] of a coordinator: secrets and revocations from its store.
pub struct StoreAuthenticator {
    store: Arc<dyn CoordinatorStore>,
}

impl StoreAuthenticator {
    /// Authenticates against `store`'s client keys.
    pub fn new(store: Arc<dyn CoordinatorStore>) -> Self {
        Self { store }
    }
}

impl Authenticator for StoreAuthenticator {
    fn verify(&self, credentials: &Credentials) -> Result<ClientRecord, ApiError> {
        let client = self.store.client(&credentials.client_id)?;
        // An unknown id is verified against a real hash of a random secret, so it costs the
        // same argon2 work as a known one and timing does not tell which ids exist.
        let hash = match &client {
            Some(c) => c.secret_hash.as_str(),
            None => decoy_hash()?,
        };
        let ok = verify_secret(&credentials.client_secret, hash);
        client
            .filter(|c| ok && !c.revoked)
            .ok_or_else(|| ApiError::Unauthorized("unknown client, wrong secret or revoked".into()))
    }

    fn check_session(&self, client_id: &str, generation: u64) -> Result<(), ApiError> {
        match self.store.client(client_id)? {
            Some(c) if c.revoked => Err(ApiError::Unauthorized("client revoked".into())),
            Some(c) if c.generation != generation => {
                Err(ApiError::Unauthorized("client key rotated; request a new token".into()))
            }
            Some(_) => Ok(()),
            None => Err(ApiError::Unauthorized("unknown client".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_only_their_secret() {
        let s = generate_secret();
        let h = hash_secret(&s).expect("hash");
        assert!(h.starts_with("$argon2"), "{h}");
        assert!(verify_secret(&s, &h));
        assert!(!verify_secret("wrong", &h));
        assert!(!verify_secret(&s, "not a hash"));
        assert_ne!(hash_secret(&s).expect("hash"), h, "fresh salt");
    }

    #[test]
    fn unknown_ids_cost_a_real_verification_and_are_refused() {
        let store: Arc<dyn CoordinatorStore> =
            Arc::new(crate::coordinator::memory::MemoryStore::new());
        let auth = StoreAuthenticator::new(Arc::clone(&store));
        let hash = decoy_hash().expect("decoy");
        assert!(hash.starts_with("$argon2"), "the decoy is a real argon2 hash: {hash}");
        let creds = |id: &str| Credentials {
            client_id: id.into(),
            client_secret: "guess".into(),
            ca_certificate: None,
        };
        assert!(matches!(auth.verify(&creds("nobody")), Err(ApiError::Unauthorized(_))));
        store.add_client("w", &hash_secret("right").expect("hash")).expect("add");
        assert!(matches!(auth.verify(&creds("w")), Err(ApiError::Unauthorized(_))));
    }
}
