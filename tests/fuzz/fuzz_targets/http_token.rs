//! Bearer tokens (`token::verify`, HS256 JWTs) with a fixed key.
//!
//! Mode bit 0: the input is a JOSE header and claims (split at the first NUL), base64url-
//! encoded and signed with the right key, so the claims decoding behind the signature check is
//! reached; otherwise the input is the token text as a client would send it.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bitnet_fuzz::{mode, write_seeds};
use bitnet_transport_http::token::{Claims, sign, verify};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const KEY: [u8; 32] = [7; 32];

fuzz_target!(
    init: {
        let claims =
            Claims { sub: "w1".into(), generation: 1, iat: 1, exp: u64::MAX / 2, scope: None };
        let token = sign(&KEY, &claims).expect("signs");
        let raw = br#"{"alg":"HS256","typ":"JWT"}"#.to_vec();
        let body = br#"{"sub":"w1","generation":1,"iat":1,"exp":99999999999}"#.to_vec();
        write_seeds(&[
            ("token", [vec![0], token.into_bytes()].concat()),
            ("parts", [vec![1], raw, vec![0], body].concat()),
        ]);
    },
    |data: &[u8]| {
        let Some((mode, rest)) = mode(data) else { return };
        let token = if mode & 1 == 1 {
            let (header, claims) = match rest.iter().position(|&b| b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (rest, &[][..]),
            };
            let message =
                format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
            let Ok(signature) =
                jsonwebtoken::crypto::sign(message.as_bytes(), &EncodingKey::from_secret(&KEY), Algorithm::HS256)
            else {
                return;
            };
            format!("{message}.{signature}")
        } else {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            text.to_string()
        };
        if let Ok(claims) = verify(&KEY, &token) {
            // What verifies re-signs and verifies to the same claims.
            let again = sign(&KEY, &claims).expect("verified claims sign");
            // (Unless the second ticked past an `exp` of exactly now in between.)
            match verify(&KEY, &again) {
                Ok(back) => assert_eq!(back, claims),
                Err(e) => assert_eq!(e, "token expired"),
            }
        }
    }
);
