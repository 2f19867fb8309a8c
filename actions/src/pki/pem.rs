//! PEM text: reading every block of a file (certificates, keys, parameters) and writing blocks
//! with 64-column lines, as openssl and Go do.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// One `-----BEGIN LABEL-----` … `-----END LABEL-----` block.
pub(crate) struct Block {
    /// The label, e.g. `CERTIFICATE` or `RSA PRIVATE KEY`.
    pub label: String,
    /// The decoded contents.
    pub der: Vec<u8>,
    /// Whether the block had RFC 1421 headers (`Proc-Type: 4,ENCRYPTED`, `DEK-Info: …`), which
    /// only encrypted legacy keys have.
    pub has_headers: bool,
}

/// Why PEM text could not be read; the line is 1-based.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PemError {
    #[error("line {line}: BEGIN {label} has no matching END line")]
    Unterminated { line: usize, label: String },
    #[error("line {line}: END {found} closes BEGIN {expected}")]
    Mismatched { line: usize, expected: String, found: String },
    #[error("block starting at line {line}: invalid base64 ({reason})")]
    Base64 { line: usize, reason: String },
}

fn boundary<'a>(line: &'a str, kind: &str) -> Option<&'a str> {
    line.strip_prefix("-----")?.strip_prefix(kind)?.strip_prefix(' ')?.strip_suffix("-----")
}

/// Every block in `text`, in order. Text outside blocks (such as `openssl x509 -text` output
/// before a certificate) is ignored, as openssl ignores it.
pub(crate) fn parse(text: &str) -> Result<Vec<Block>, PemError> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().enumerate();
    while let Some((index, line)) = lines.next() {
        let Some(label) = boundary(line.trim(), "BEGIN") else { continue };
        let start = index + 1;
        let mut body = String::new();
        let mut has_headers = false;
        let mut closed = false;
        for (index, line) in lines.by_ref() {
            let line = line.trim();
            if let Some(end) = boundary(line, "END") {
                if end != label {
                    return Err(PemError::Mismatched {
                        line: index + 1,
                        expected: label.to_owned(),
                        found: end.to_owned(),
                    });
                }
                closed = true;
                break;
            }
            if line.contains(':') {
                has_headers = true;
            } else {
                body.push_str(line);
            }
        }
        if !closed {
            return Err(PemError::Unterminated { line: start, label: label.to_owned() });
        }
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|e| PemError::Base64 { line: start, reason: e.to_string() })?;
        blocks.push(Block { label: label.to_owned(), der, has_headers });
    }
    Ok(blocks)
}

/// One PEM block with 64-column lines and a final newline.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = String::with_capacity(body.len() + body.len() / 64 + 2 * label.len() + 40);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 output is ASCII, so splitting its bytes into 64-byte chunks splits characters.
    for chunk in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_ignores_text_around_blocks() {
        let der: Vec<u8> = (0..=255u8).cycle().take(300).collect();
        let text = format!(
            "Certificate:\n  junk\n{}trailer\n{}",
            encode("CERTIFICATE", &der),
            encode("X", &[1, 2])
        );
        assert!(
            encode("CERTIFICATE", &der).lines().all(|l| l.len() <= 64 || l.starts_with("-----"))
        );
        let blocks = parse(&text).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].label, "CERTIFICATE");
        assert_eq!(blocks[0].der, der);
        assert!(!blocks[0].has_headers);
        assert_eq!(blocks[1].der, vec![1, 2]);
    }

    #[test]
    fn crlf_and_headers_are_understood() {
        let text = "-----BEGIN RSA PRIVATE KEY-----\r\nProc-Type: 4,ENCRYPTED\r\nDEK-Info: AES-128-CBC,00\r\n\r\nAQI=\r\n-----END RSA PRIVATE KEY-----\r\n";
        let blocks = parse(text).unwrap();
        assert!(blocks[0].has_headers);
        assert_eq!(blocks[0].der, vec![1, 2]);
    }

    #[test]
    fn broken_blocks_name_the_line() {
        assert_eq!(
            parse("a\n-----BEGIN CERTIFICATE-----\nAQI=\n").err(),
            Some(PemError::Unterminated { line: 2, label: "CERTIFICATE".into() })
        );
        assert!(matches!(
            parse("-----BEGIN A-----\nAQI=\n-----END B-----\n"),
            Err(PemError::Mismatched { line: 3, .. })
        ));
        assert!(matches!(
            parse("-----BEGIN A-----\n!!!!\n-----END A-----\n"),
            Err(PemError::Base64 { line: 1, .. })
        ));
    }
}
