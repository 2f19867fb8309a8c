//! A minimal DER reader and writer: just enough to convert private-key containers and to assemble
//! a certificate from parts copied verbatim out of the one it replaces.
//!
//! Only single-byte tags and definite lengths are handled, which is all that X.509 certificates
//! and PKCS#1, SEC1 and PKCS#8 keys use.

/// Tag numbers used here (universal class unless said otherwise).
pub(crate) mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const BIT_STRING: u8 = 0x03;
    pub const OCTET_STRING: u8 = 0x04;
    pub const NULL: u8 = 0x05;
    pub const OID: u8 = 0x06;
    pub const UTC_TIME: u8 = 0x17;
    pub const GENERALIZED_TIME: u8 = 0x18;
    pub const SEQUENCE: u8 = 0x30;
    pub const BOOLEAN: u8 = 0x01;
    /// `[0]` constructed, context-specific.
    pub const CONTEXT_0: u8 = 0xa0;
    /// `[3]` constructed, context-specific.
    pub const CONTEXT_3: u8 = 0xa3;
    /// `[0]` primitive, context-specific (a key identifier inside AuthorityKeyIdentifier).
    pub const CONTEXT_PRIM_0: u8 = 0x80;
}

/// Object identifiers, as the content octets of an OID (without tag and length).
pub(crate) mod oid {
    /// rsaEncryption, 1.2.840.113549.1.1.1.
    pub const RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    /// sha256WithRSAEncryption, 1.2.840.113549.1.1.11.
    pub const SHA256_WITH_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
    /// id-ecPublicKey, 1.2.840.10045.2.1.
    pub const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    /// prime256v1 (P-256), 1.2.840.10045.3.1.7.
    pub const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    /// secp384r1 (P-384), 1.3.132.0.34.
    pub const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    /// ecdsa-with-SHA256, 1.2.840.10045.4.3.2.
    pub const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
    /// ecdsa-with-SHA384, 1.2.840.10045.4.3.3.
    pub const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
    /// subjectKeyIdentifier, 2.5.29.14.
    pub const SUBJECT_KEY_ID: &[u8] = &[0x55, 0x1d, 0x0e];
    /// authorityKeyIdentifier, 2.5.29.35.
    pub const AUTHORITY_KEY_ID: &[u8] = &[0x55, 0x1d, 0x23];
    /// cRLDistributionPoints, 2.5.29.31.
    pub const CRL_DISTRIBUTION_POINTS: &[u8] = &[0x55, 0x1d, 0x1f];
    /// authorityInfoAccess, 1.3.6.1.5.5.7.1.1.
    pub const AUTHORITY_INFO_ACCESS: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x01, 0x01];
}

/// Why a DER structure could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DerError {
    #[error("truncated DER")]
    Truncated,
    #[error("unsupported DER length encoding")]
    Length,
    #[error("expected DER tag {expected:#04x}, found {found:#04x}")]
    UnexpectedTag { expected: u8, found: u8 },
    #[error("trailing bytes after DER value")]
    Trailing,
}

/// One tag-length-value element.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub tag: u8,
    pub value: &'a [u8],
}

/// Reads one element from the front of `input`; returns it and the rest.
pub(crate) fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, rest) = input.split_first().ok_or(DerError::Truncated)?;
    let (&first, rest) = rest.split_first().ok_or(DerError::Truncated)?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return Err(DerError::Length);
        }
        if rest.len() < n {
            return Err(DerError::Truncated);
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err(DerError::Truncated);
    }
    Ok((Tlv { tag, value: &rest[..len] }, &rest[len..]))
}

/// Reads one element with the given tag.
pub(crate) fn expect(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), DerError> {
    let (tlv, rest) = read(input)?;
    if tlv.tag != tag {
        return Err(DerError::UnexpectedTag { expected: tag, found: tlv.tag });
    }
    Ok((tlv.value, rest))
}

/// Reads exactly one element with the given tag, and nothing after it.
pub(crate) fn expect_only(input: &[u8], tag: u8) -> Result<&[u8], DerError> {
    let (value, rest) = expect(input, tag)?;
    if !rest.is_empty() {
        return Err(DerError::Trailing);
    }
    Ok(value)
}

/// Encodes one element.
pub(crate) fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(content.len() + 6);
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        // Fits in the short form: checked just above.
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

/// Encodes a SEQUENCE of already encoded elements.
pub(crate) fn sequence(parts: &[&[u8]]) -> Vec<u8> {
    tlv(tag::SEQUENCE, &parts.concat())
}

/// Encodes a non-negative INTEGER from its big-endian magnitude.
pub(crate) fn unsigned_integer(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let trimmed = &magnitude[skip..];
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    // A leading 0x00 keeps the value positive when the high bit is set (and encodes zero).
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(trimmed);
    tlv(tag::INTEGER, &content)
}

/// Encodes an OBJECT IDENTIFIER from its content octets.
pub(crate) fn oid(content: &[u8]) -> Vec<u8> {
    tlv(tag::OID, content)
}

/// Encodes a BIT STRING with no unused bits.
pub(crate) fn bit_string(bytes: &[u8]) -> Vec<u8> {
    let mut content = Vec::with_capacity(bytes.len() + 1);
    content.push(0);
    content.extend_from_slice(bytes);
    tlv(tag::BIT_STRING, &content)
}

/// The number of significant bits of an INTEGER's content octets (ignoring sign padding).
pub(crate) fn integer_bits(content: &[u8]) -> usize {
    let skip = content.iter().take_while(|b| **b == 0).count();
    match content.get(skip) {
        None => 0,
        Some(first) => (content.len() - skip) * 8 - first.leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_round_trip_in_short_and_long_form() {
        for len in [0usize, 1, 127, 128, 255, 256, 65_535, 70_000] {
            let content = vec![0x5a; len];
            let encoded = tlv(tag::OCTET_STRING, &content);
            let (value, rest) = expect(&encoded, tag::OCTET_STRING).unwrap();
            assert_eq!(value.len(), len);
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn integers_are_minimal_and_positive() {
        assert_eq!(unsigned_integer(&[0, 0, 0x01]), vec![0x02, 0x01, 0x01]);
        assert_eq!(unsigned_integer(&[0x80]), vec![0x02, 0x02, 0x00, 0x80]);
        assert_eq!(unsigned_integer(&[]), vec![0x02, 0x01, 0x00]);
        assert_eq!(integer_bits(&[0x00, 0x80, 0x00]), 16);
        assert_eq!(integer_bits(&[0x01, 0xff]), 9);
    }

    #[test]
    fn truncated_and_wrong_tags_are_errors() {
        assert_eq!(read(&[0x30, 0x05, 0x00]).unwrap_err(), DerError::Truncated);
        assert_eq!(
            expect(&[0x02, 0x01, 0x00], tag::SEQUENCE).unwrap_err(),
            DerError::UnexpectedTag { expected: 0x30, found: 0x02 }
        );
        assert_eq!(
            expect_only(&[0x05, 0x00, 0x05, 0x00], tag::NULL).unwrap_err(),
            DerError::Trailing
        );
    }
}
