//! The snapshot blob the coordinator keeps in the weight store for crash recovery: the weights
//! and the optimizer state of one version. (Downloads use the run's weight codec instead.)
//!
//! Little-endian. The decoder takes untrusted bytes: it checks every length before reading and
//! never panics.
//!
//! Snapshot blob (`BNSNAPSH`, version 2): magic, u32 format, u32 reserved, u64 weight version,
//! 32-byte layout fingerprint, u64 optimizer step, u64 parameter count `n`, `n` f32, u32 buffer
//! count, then per buffer a u32 name length, the UTF-8 name, a u64 length and that many f32;
//! then the ledger: u64 entry count, per entry u64 task id and u64 tokens; finally the SHA-256
//! of everything before it. Version 1 (no ledger) still decodes, with an empty ledger.

use bitnet_framework::optim::OptimizerState;
use sha2::{Digest, Sha256};

/// Magic of the snapshot blob.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"BNSNAPSH";
/// Format version of the snapshot blob.
pub const BLOB_FORMAT: u32 = 2;
/// The oldest format still decoded (1: no ledger).
const OLDEST_FORMAT: u32 = 1;

/// A blob could not be decoded.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct BlobError {
    /// Which blob.
    pub what: &'static str,
    /// What was wrong.
    pub reason: String,
}

fn fingerprint_bytes(fingerprint_hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    if let Ok(raw) = hex::decode(fingerprint_hex)
        && raw.len() == 32
    {
        out.copy_from_slice(&raw);
    }
    out
}

/// A little-endian reader over untrusted bytes.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> BlobError {
        BlobError { what: self.what, reason: reason.into() }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BlobError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            self.err(format!("truncated: needs {n} bytes at offset {}, has {}", self.at, {
                self.bytes.len().saturating_sub(self.at)
            }))
        })?;
        let out = &self.bytes[self.at..end];
        self.at = end;
        Ok(out)
    }

    fn u32(&mut self) -> Result<u32, BlobError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, BlobError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    fn f32s(&mut self, n: u64) -> Result<Vec<f32>, BlobError> {
        let len = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(4))
            .ok_or_else(|| self.err(format!("length {n} is too large")))?;
        let b = self.take(len)?;
        let out: Vec<f32> =
            b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(self.err(format!("non-finite value at index {i}")));
        }
        Ok(out)
    }

    fn header(&mut self, magic: &[u8; 8]) -> Result<u32, BlobError> {
        if self.take(8)? != magic {
            return Err(self.err("bad magic"));
        }
        let format = self.u32()?;
        if !(OLDEST_FORMAT..=BLOB_FORMAT).contains(&format) {
            return Err(self.err(format!(
                "format version {format}, expected {OLDEST_FORMAT} to {BLOB_FORMAT}"
            )));
        }
        self.u32()?;
        Ok(format)
    }

    fn fingerprint(&mut self, expected_hex: &str) -> Result<(), BlobError> {
        let found = self.take(32)?;
        if found != fingerprint_bytes(expected_hex) {
            return Err(self.err(format!(
                "made for another model layout (fingerprint {}, expected {expected_hex})",
                hex::encode(found)
            )));
        }
        Ok(())
    }
}

fn push_f32s(out: &mut Vec<u8>, values: &[f32]) {
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// One task whose update is in the weights: the snapshot's ledger lists each once, so a
/// recovered run can prove that every task's update was applied exactly once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The task.
    pub task_id: u64,
    /// Its tokens.
    pub tokens: u64,
}

/// A decoded snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Weight version.
    pub version: u64,
    /// Parameters.
    pub params: Vec<f32>,
    /// Optimizer state.
    pub optimizer: OptimizerState,
    /// The tasks whose updates these weights hold, in the order they were applied.
    pub ledger: Vec<LedgerEntry>,
}

/// Encodes a snapshot.
pub fn encode_snapshot(
    version: u64,
    fingerprint_hex: &str,
    params: &[f32],
    optimizer: &OptimizerState,
    ledger: &[LedgerEntry],
) -> Vec<u8> {
    let buffers: usize = optimizer.buffers.iter().map(|(n, b)| 12 + n.len() + b.len() * 4).sum();
    let mut out = Vec::with_capacity(96 + params.len() * 4 + buffers);
    out.extend_from_slice(&SNAPSHOT_MAGIC);
    out.extend_from_slice(&BLOB_FORMAT.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&fingerprint_bytes(fingerprint_hex));
    out.extend_from_slice(&optimizer.step.to_le_bytes());
    out.extend_from_slice(&(params.len() as u64).to_le_bytes());
    push_f32s(&mut out, params);
    out.extend_from_slice(&(optimizer.buffers.len() as u32).to_le_bytes());
    for (name, values) in &optimizer.buffers {
        out.extend_from_slice(&(name.len() as u32).to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(values.len() as u64).to_le_bytes());
        push_f32s(&mut out, values);
    }
    out.extend_from_slice(&(ledger.len() as u64).to_le_bytes());
    for e in ledger {
        out.extend_from_slice(&e.task_id.to_le_bytes());
        out.extend_from_slice(&e.tokens.to_le_bytes());
    }
    let digest = Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Decodes a snapshot made for the layout with `fingerprint_hex` and `expected_len`
/// parameters, checking its trailing SHA-256.
pub fn decode_snapshot(
    bytes: &[u8],
    fingerprint_hex: &str,
    expected_len: usize,
) -> Result<Snapshot, BlobError> {
    let what = "snapshot";
    if bytes.len() < 32 {
        return Err(BlobError { what, reason: "truncated: shorter than its checksum".into() });
    }
    let (body, digest) = bytes.split_at(bytes.len() - 32);
    if Sha256::digest(body).as_slice() != digest {
        return Err(BlobError { what, reason: "checksum mismatch".into() });
    }
    let mut r = Reader { bytes: body, at: 0, what };
    let format = r.header(&SNAPSHOT_MAGIC)?;
    let version = r.u64()?;
    r.fingerprint(fingerprint_hex)?;
    let step = r.u64()?;
    let n = r.u64()?;
    if n != expected_len as u64 {
        return Err(r.err(format!("{n} parameters, the model has {expected_len}")));
    }
    let params = r.f32s(n)?;
    let count = r.u32()?;
    let mut buffers = Vec::new();
    for _ in 0..count {
        let name_len = r.u32()? as usize;
        let name = std::str::from_utf8(r.take(name_len)?)
            .map_err(|_| r.err("buffer name is not UTF-8"))?
            .to_string();
        let len = r.u64()?;
        buffers.push((name, r.f32s(len)?));
    }
    let mut ledger = Vec::new();
    if format >= 2 {
        let entries = r.u64()?;
        // Each entry takes 16 bytes: a count the rest of the blob cannot hold is refused before
        // anything is allocated for it.
        if entries > (body.len() - r.at) as u64 / 16 {
            return Err(r.err(format!("a ledger of {entries} entries does not fit the blob")));
        }
        ledger.reserve(entries as usize);
        for _ in 0..entries {
            ledger.push(LedgerEntry { task_id: r.u64()?, tokens: r.u64()? });
        }
    }
    if r.at != body.len() {
        return Err(r.err(format!("{} trailing bytes", body.len() - r.at)));
    }
    Ok(Snapshot { version, params, optimizer: OptimizerState { step, buffers }, ledger })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FP: &str = "0101010101010101010101010101010101010101010101010101010101010101";

    #[test]
    fn snapshot_round_trip_and_checksum() {
        let opt = OptimizerState {
            step: 42,
            buffers: vec![("m".into(), vec![0.1, 0.2]), ("v".into(), vec![0.3, 0.4])],
        };
        let ledger =
            [LedgerEntry { task_id: 7, tokens: 64 }, LedgerEntry { task_id: 3, tokens: 8 }];
        let blob = encode_snapshot(9, FP, &[1.0, 2.0], &opt, &ledger);
        let snap = decode_snapshot(&blob, FP, 2).expect("decodes");
        let want = Snapshot {
            version: 9,
            params: vec![1.0, 2.0],
            optimizer: opt.clone(),
            ledger: ledger.to_vec(),
        };
        assert_eq!(snap, want);
        // A version-1 blob (no ledger) still decodes, with an empty ledger.
        let mut v1 = encode_snapshot(9, FP, &[1.0, 2.0], &opt, &[]);
        v1.truncate(v1.len() - 32 - 8);
        v1[8..12].copy_from_slice(&1u32.to_le_bytes());
        let digest = Sha256::digest(&v1);
        v1.extend_from_slice(&digest);
        let old = decode_snapshot(&v1, FP, 2).expect("format 1 decodes");
        assert_eq!(old, Snapshot { ledger: vec![], ..want });
        let mut bad = blob.clone();
        bad[40] ^= 1;
        let err = decode_snapshot(&bad, FP, 2).expect_err("flipped bit");
        assert!(err.reason.contains("checksum"), "{err}");
    }

    proptest! {
        #[test]
        fn snapshot_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_snapshot(&bytes, FP, 4);
        }

        #[test]
        fn mutated_snapshot_is_refused_or_identical(
            params in proptest::collection::vec(-10.0f32..10.0, 1..16),
            at in any::<usize>(),
            byte in any::<u8>(),
        ) {
            let opt = OptimizerState { step: 1, buffers: vec![("m".into(), params.clone())] };
            let ledger = [LedgerEntry { task_id: 1, tokens: 2 }];
            let blob = encode_snapshot(3, FP, &params, &opt, &ledger);
            let mut bad = blob.clone();
            let i = at % bad.len();
            bad[i] = byte;
            if let Ok(s) = decode_snapshot(&bad, FP, params.len()) {
                prop_assert_eq!(bad, blob, "only an unchanged blob decodes: {:?}", s.version);
            }
        }
    }
}
