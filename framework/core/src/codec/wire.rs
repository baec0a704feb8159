//! The framing every gradient codec's payload shares.
//!
//! A payload is a header, one body section per tensor of the layout (in arena order), and a
//! CRC32 of everything before it. The framing knows nothing of what a section holds; codecs fill
//! sections with [`seal`] and get them back, checked against the layout, with [`open`].
//!
//! | bytes | field |
//! | --- | --- |
//! | 4 | magic `BNUP` |
//! | 2 | frame format version, little-endian (currently 1) |
//! | 1 | codec id length `n` (1 to 64) |
//! | n | codec id, ASCII |
//! | 2 | codec version |
//! | 32 | SHA-256 layout fingerprint ([`ParamLayout::fingerprint`]) |
//! | 4 | tensor count `k` |
//! | 16 k | per tensor: element count (u64), section length in bytes (u64) |
//! | ... | the sections, concatenated |
//! | 4 | CRC32 (IEEE) of every preceding byte |
//!
//! The checksum guards against corruption in transit and storage, not against a malicious
//! sender (authentication is the transport's job); decoders still check every length, so a
//! crafted payload with a valid checksum is refused, never a panic.

use super::CodecError;
use crate::tensor::ParamLayout;

/// First four bytes of every update payload.
pub const MAGIC: [u8; 4] = *b"BNUP";
/// Version of the framing itself (not of any codec).
pub const FORMAT_VERSION: u16 = 1;
/// Longest codec id the framing accepts.
pub const MAX_CODEC_ID_LEN: usize = 64;
const FINGERPRINT_LEN: usize = 32;
const CHECKSUM_LEN: usize = 4;
const ENTRY_LEN: usize = 16;

/// A structurally valid payload whose checksum matched, not yet checked against a layout.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame<'a> {
    /// Codec id written by the encoder.
    pub codec_id: &'a str,
    /// Codec version written by the encoder.
    pub codec_version: u16,
    /// Raw SHA-256 fingerprint of the layout the payload was encoded for.
    pub fingerprint: [u8; FINGERPRINT_LEN],
    /// Element count each section claims, in order.
    pub numels: Vec<u64>,
    /// The sections, in order.
    pub sections: Vec<&'a [u8]>,
}

fn fingerprint_bytes(layout: &ParamLayout) -> [u8; FINGERPRINT_LEN] {
    let mut out = [0u8; FINGERPRINT_LEN];
    // The fingerprint is our own lowercase hex SHA-256, so it always decodes to 32 bytes.
    if let Ok(bytes) = hex::decode(layout.fingerprint())
        && bytes.len() == FINGERPRINT_LEN
    {
        out.copy_from_slice(&bytes);
    }
    out
}

/// Bytes the header of a payload for `codec_id` over `tensors` tensors takes.
pub fn header_len(codec_id: &str, tensors: usize) -> usize {
    4 + 2 + 1 + codec_id.len() + 2 + FINGERPRINT_LEN + 4 + ENTRY_LEN * tensors
}

/// Total payload size for the given section lengths: header, sections and checksum.
pub fn payload_len(codec_id: &str, section_lens: &[usize]) -> usize {
    header_len(codec_id, section_lens.len()) + section_lens.iter().sum::<usize>() + CHECKSUM_LEN
}

/// Builds a payload: writes the header for `layout`, lets `fill` write each tensor's section
/// (called once per tensor, in arena order, with a zeroed buffer of `section_lens[i]` bytes),
/// then appends the checksum.
pub fn seal<F>(
    codec_id: &str,
    codec_version: u16,
    layout: &ParamLayout,
    section_lens: &[usize],
    mut fill: F,
) -> Result<Vec<u8>, CodecError>
where
    F: FnMut(usize, &mut [u8]) -> Result<(), CodecError>,
{
    if codec_id.is_empty() || codec_id.len() > MAX_CODEC_ID_LEN || !codec_id.is_ascii() {
        return Err(CodecError::Malformed(format!(
            "codec id `{codec_id}` must be 1 to {MAX_CODEC_ID_LEN} ASCII bytes"
        )));
    }
    let count = layout.tensors().len();
    if section_lens.len() != count {
        return Err(CodecError::Layout(format!(
            "{} sections for a layout of {count} tensors",
            section_lens.len()
        )));
    }
    let total = payload_len(codec_id, section_lens);
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(codec_id.len() as u8);
    out.extend_from_slice(codec_id.as_bytes());
    out.extend_from_slice(&codec_version.to_le_bytes());
    out.extend_from_slice(&fingerprint_bytes(layout));
    out.extend_from_slice(&(count as u32).to_le_bytes());
    for (spec, len) in layout.tensors().iter().zip(section_lens) {
        out.extend_from_slice(&(spec.numel() as u64).to_le_bytes());
        out.extend_from_slice(&(*len as u64).to_le_bytes());
    }
    let mut start = out.len();
    out.resize(total - CHECKSUM_LEN, 0);
    for (i, len) in section_lens.iter().enumerate() {
        fill(i, &mut out[start..start + len])?;
        start += len;
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Recomputes the trailing checksum in place, for tools and tests that edit a payload on
/// purpose (to check that the decoder's other checks hold without the checksum's help).
pub fn reseal(bytes: &mut [u8]) {
    if bytes.len() >= CHECKSUM_LEN {
        let end = bytes.len() - CHECKSUM_LEN;
        let crc = crc32fast::hash(&bytes[..end]);
        bytes[end..].copy_from_slice(&crc.to_le_bytes());
    }
}

/// A little cursor that refuses to read past the end.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], CodecError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len()).ok_or_else(|| {
            CodecError::Malformed(format!("truncated payload: {what} missing at byte {}", self.pos))
        })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], CodecError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u16(&mut self, what: &str) -> Result<u16, CodecError> {
        Ok(u16::from_le_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &str) -> Result<u32, CodecError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, CodecError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
}

/// Parses and checksums a payload without reference to a layout or codec.
pub fn parse(bytes: &[u8]) -> Result<Frame<'_>, CodecError> {
    if bytes.len() < 4 || bytes[..4] != MAGIC {
        return Err(CodecError::Malformed(
            "not a bitnet update payload (bad magic; expected `BNUP`)".into(),
        ));
    }
    let mut r = Reader { bytes, pos: 4 };
    let format = r.u16("format version")?;
    if format != FORMAT_VERSION {
        return Err(CodecError::Malformed(format!(
            "unsupported frame format version {format}; this build reads {FORMAT_VERSION}"
        )));
    }
    if bytes.len() < header_len("", 0) + CHECKSUM_LEN {
        return Err(CodecError::Malformed(format!(
            "truncated payload: {} bytes is shorter than any header",
            bytes.len()
        )));
    }
    let body_end = bytes.len() - CHECKSUM_LEN;
    let mut crc = [0u8; CHECKSUM_LEN];
    crc.copy_from_slice(&bytes[body_end..]);
    let stored = u32::from_le_bytes(crc);
    let computed = crc32fast::hash(&bytes[..body_end]);
    if stored != computed {
        return Err(CodecError::Malformed(format!(
            "checksum mismatch (stored crc32 {stored:08x}, computed {computed:08x}): \
             the payload is truncated or corrupted"
        )));
    }
    let mut r = Reader { bytes: &bytes[..body_end], pos: r.pos };
    let id_len = r.take(1, "codec id length")?[0] as usize;
    if id_len == 0 || id_len > MAX_CODEC_ID_LEN {
        return Err(CodecError::Malformed(format!("codec id length {id_len} out of range")));
    }
    let codec_id = std::str::from_utf8(r.take(id_len, "codec id")?)
        .ok()
        .filter(|s| s.is_ascii())
        .ok_or_else(|| CodecError::Malformed("codec id is not ASCII".into()))?;
    let codec_version = r.u16("codec version")?;
    let fingerprint = r.array::<FINGERPRINT_LEN>("layout fingerprint")?;
    let count = r.u32("tensor count")? as usize;
    // Each entry takes 16 bytes, so a count the payload cannot hold is refused before allocating.
    if count > (body_end - r.pos) / ENTRY_LEN {
        return Err(CodecError::Malformed(format!(
            "tensor count {count} does not fit in a payload of {} bytes",
            bytes.len()
        )));
    }
    let mut numels = Vec::with_capacity(count);
    let mut lens = Vec::with_capacity(count);
    for i in 0..count {
        numels.push(r.u64("tensor table")?);
        let len = r.u64("tensor table")?;
        lens.push(usize::try_from(len).map_err(|_| {
            CodecError::Malformed(format!("section {i} length {len} does not fit in memory"))
        })?);
    }
    let body = body_end - r.pos;
    let declared = lens.iter().try_fold(0usize, |acc, &l| acc.checked_add(l));
    if declared != Some(body) {
        return Err(CodecError::Malformed(format!(
            "section lengths add up to {}, the payload carries {body} bytes of sections",
            declared.map_or_else(|| "more than usize::MAX".to_string(), |d| d.to_string())
        )));
    }
    let mut sections = Vec::with_capacity(count);
    for (i, len) in lens.into_iter().enumerate() {
        sections.push(r.take(len, &format!("section {i}"))?);
    }
    Ok(Frame { codec_id, codec_version, fingerprint, numels, sections })
}

/// Parses a payload and checks it was made by codec `codec_id` version `codec_version` for
/// `layout`; returns one section per tensor of the layout.
pub fn open<'a>(
    bytes: &'a [u8],
    codec_id: &str,
    codec_version: u16,
    layout: &ParamLayout,
) -> Result<Vec<&'a [u8]>, CodecError> {
    let frame = parse(bytes)?;
    if frame.codec_id != codec_id || frame.codec_version != codec_version {
        return Err(CodecError::WrongCodec {
            expected: format!("{codec_id} v{codec_version}"),
            found: format!("{} v{}", frame.codec_id, frame.codec_version),
        });
    }
    let tensors = layout.tensors();
    if frame.numels.len() != tensors.len() {
        return Err(CodecError::Layout(format!(
            "payload has {} tensors, the model has {}",
            frame.numels.len(),
            tensors.len()
        )));
    }
    if frame.fingerprint != fingerprint_bytes(layout) {
        return Err(CodecError::Layout(format!(
            "payload was encoded for layout {}, the model's layout is {}",
            hex::encode(&frame.fingerprint[..8]),
            &layout.fingerprint()[..16]
        )));
    }
    for (spec, &numel) in tensors.iter().zip(&frame.numels) {
        if numel != spec.numel() as u64 {
            return Err(CodecError::Layout(format!(
                "tensor `{}` has {numel} values in the payload, {} in the model",
                spec.name,
                spec.numel()
            )));
        }
    }
    Ok(frame.sections)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensor::{TensorRole, TensorSpec};

    fn layout() -> ParamLayout {
        ParamLayout::new(vec![
            TensorSpec { name: "a".into(), shape: vec![2, 3], role: TensorRole::BitLinear },
            TensorSpec { name: "b".into(), shape: vec![4], role: TensorRole::Norm },
        ])
        .expect("layout")
    }

    fn sample() -> Vec<u8> {
        seal("test", 3, &layout(), &[6, 2], |i, s| {
            s.fill(i as u8 + 1);
            Ok(())
        })
        .expect("seal")
    }

    #[test]
    fn seal_then_open_returns_sections() {
        let bytes = sample();
        assert_eq!(bytes.len(), payload_len("test", &[6, 2]));
        let sections = open(&bytes, "test", 3, &layout()).expect("open");
        assert_eq!(sections, vec![&[1u8; 6][..], &[2u8; 2][..]]);
    }

    #[test]
    fn every_truncation_is_refused() {
        let bytes = sample();
        for len in 0..bytes.len() {
            assert!(parse(&bytes[..len]).is_err(), "truncated to {len} accepted");
        }
    }

    #[test]
    fn wrong_codec_and_version_are_named() {
        let bytes = sample();
        let err = open(&bytes, "other", 3, &layout()).expect_err("wrong id");
        assert!(matches!(err, CodecError::WrongCodec { .. }), "{err}");
        let err = open(&bytes, "test", 4, &layout()).expect_err("wrong version");
        assert!(err.to_string().contains("test v3"), "{err}");
    }

    #[test]
    fn resealed_lying_section_lengths_are_refused() {
        let mut bytes = sample();
        // First entry's section length lives right after its numel.
        let at = header_len("test", 0) + 8;
        bytes[at..at + 8].copy_from_slice(&7u64.to_le_bytes());
        reseal(&mut bytes);
        assert!(matches!(parse(&bytes), Err(CodecError::Malformed(_))));
        let mut bytes = sample();
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        reseal(&mut bytes);
        assert!(matches!(parse(&bytes), Err(CodecError::Malformed(_))));
    }
}
