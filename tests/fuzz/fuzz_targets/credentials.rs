//! Worker credentials files (`Credentials` from JSON, as `bitnet worker --credentials` reads
//! them), including the pinned CA certificate's PEM, parsed as the HTTP client parses it.
#![no_main]

use bitnet_framework::transport::Credentials;
use bitnet_fuzz::write_seeds;
use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        write_seeds(&[
            ("plain", br#"{"client_id":"w1","client_secret":"s3cr3t"}"#.to_vec()),
            (
                "ca",
                br#"{"client_id":"w1","client_secret":"s","ca_certificate":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"}"#.to_vec(),
            ),
        ]);
    },
    |bytes: &[u8]| {
        let Ok(creds) = serde_json::from_slice::<Credentials>(bytes) else { return };
        let text = serde_json::to_string(&creds).expect("credentials serialise");
        let back: Credentials = serde_json::from_str(&text).expect("and parse back");
        assert!(back == creds);
        #[cfg(feature = "http")]
        if let Some(pem) = &creds.ca_certificate {
            let _ = reqwest::Certificate::from_pem(pem.as_bytes());
        }
    }
);
