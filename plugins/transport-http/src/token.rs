//! JWTs (HS256) issued for OAuth2 client credentials, and the signing key file.

use bitnet_framework::protocol::now_ms;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Client id.
    pub sub: String,
    /// The client's key generation when the token was issued.
    pub generation: u64,
    /// Issued at, seconds since the epoch.
    pub iat: u64,
    /// Expiry, seconds since the epoch.
    pub exp: u64,
    /// `admin` for an operator's admin API token; none for a worker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// Reads the signing key at `path`, or creates it with 32 random bytes (mode 0600 on Unix).
pub fn load_or_create_key(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(k) if k.len() >= 32 => return Ok(k),
        Ok(_) => {
            return Err(std::io::Error::other(format!(
                "{} holds fewer than 32 bytes",
                path.display()
            )));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut key = vec![0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut key);
    bitnet_framework::files::write_private(path, &key)?;
    Ok(key)
}

/// Signs a token for `client` at `generation`, valid for `ttl_secs`.
pub fn issue(
    key: &[u8],
    client: &str,
    generation: u64,
    ttl_secs: u64,
) -> Result<(String, Claims), String> {
    let now = now_ms() / 1000;
    let claims =
        Claims { sub: client.into(), generation, iat: now, exp: now + ttl_secs, scope: None };
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(key))
        .map(|t| (t, claims))
        .map_err(|e| e.to_string())
}

/// Signs an admin API token for operator `name`, valid for `ttl_secs`.
pub fn issue_admin(key: &[u8], name: &str, ttl_secs: u64) -> Result<(String, Claims), String> {
    let now = now_ms() / 1000;
    let claims = Claims {
        sub: name.into(),
        generation: 0,
        iat: now,
        exp: now + ttl_secs,
        scope: Some(crate::console::ADMIN_SCOPE.into()),
    };
    sign(key, &claims).map(|t| (t, claims))
}

/// Verifies the signature and expiry (no leeway) of `token`.
pub fn verify(key: &[u8], token: &str) -> Result<Claims, String> {
    let mut v = Validation::new(Algorithm::HS256);
    v.leeway = 0;
    v.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(key), &v)
        .map(|d| d.claims)
        .map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => "token expired".to_string(),
            _ => format!("invalid token: {e}"),
        })
}

/// Signs arbitrary claims (tests use it to make expired tokens).
pub fn sign(key: &[u8], claims: &Claims) -> Result<String, String> {
    jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &EncodingKey::from_secret(key))
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_until_they_expire() {
        let key = [7u8; 32];
        let (t, c) = issue(&key, "w1", 3, 60).expect("issue");
        assert_eq!(verify(&key, &t), Ok(c.clone()));
        assert!(verify(&[8u8; 32], &t).is_err(), "another key");
        let expired = sign(&key, &Claims { exp: c.iat - 1, iat: c.iat - 10, ..c }).expect("sign");
        assert_eq!(verify(&key, &expired), Err("token expired".into()));
        assert!(verify(&key, "garbage").is_err());
    }

    #[test]
    fn key_file_is_created_once() {
        let dir = tempfile::tempdir().expect("dir");
        let p = dir.path().join("k/jwt.key");
        let a = load_or_create_key(&p).expect("create");
        assert_eq!(load_or_create_key(&p).expect("read"), a);
    }
}
