//! The judgement of the real in-cluster clients: kube-system/api-proxy's `kubectl proxy`
//! (client-go, in-cluster) and the curl loop calling the API through it
//! (testbed/apiserver/objects.rs, `api_proxy`). What they print is the verdict: a TLS error
//! (`x509:`, `tls:`, a certificate complaint) or a 401 in either container's log since a
//! moment fails the test, and the client must be answered 200 again afterwards.

use std::path::PathBuf;
use std::time::Duration;

use super::testbed::Testbed;
use super::wait::eventually;

/// One line one of api-proxy's containers printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    /// The container's log file.
    pub file: PathBuf,
    /// When it was printed, when the line says (curl's lines and klog's headers do).
    pub at: Option<jiff::Timestamp>,
    /// The line.
    pub text: String,
}

/// Whether a line of kubectl or of the client reports a trust failure: a TLS or certificate
/// error (Go's `x509: …`, `tls: …`, `remote error: tls: bad certificate`; curl's own TLS
/// errors), or the API refusing the pod's token (401, Unauthorized).
pub fn is_trust_error(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    ["x509", "tls:", "certificate", "unauthorized", "error: 401"].iter().any(|p| t.contains(p))
}

/// Whether a line of the client is an answer 200.
fn is_answer(text: &str) -> bool {
    text.split_whitespace().nth(1) == Some("200")
}

/// When a line was printed: the client's `2026-12-02T16:18:33Z 200`, or klog's header
/// `E1202 16:18:33.663371 …` (month and day, of `year`).
pub fn line_time(text: &str, year: i16) -> Option<jiff::Timestamp> {
    let first = text.split_whitespace().next()?;
    if let Ok(t) = first.parse::<jiff::Timestamp>() {
        return Some(t);
    }
    let mut words = text.split_whitespace();
    let head = words.next()?;
    let time = words.next()?;
    let (level, md) = head.split_at_checked(1)?;
    if !matches!(level, "I" | "W" | "E" | "F")
        || md.len() != 4
        || !md.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let (month, day) = (md[..2].parse::<i8>().ok()?, md[2..].parse::<i8>().ok()?);
    let time: jiff::civil::Time = time.parse().ok()?;
    let dt = jiff::civil::date(year, month, day).to_datetime(time);
    dt.to_zoned(jiff::tz::TimeZone::UTC).ok().map(|z| z.timestamp())
}

/// Every line api-proxy's containers printed, on every node, every pod of it that ran.
pub fn lines(tb: &Testbed) -> Vec<Line> {
    let year = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC).year();
    let mut out = Vec::new();
    for (name, _, _) in &tb.nodes {
        let Ok(pods) = std::fs::read_dir(tb.node_path(name, "var-log-pods")) else { continue };
        for pod in pods.flatten() {
            if !pod.file_name().to_string_lossy().starts_with("kube-system_api-proxy-") {
                continue;
            }
            for container in ["kubectl", "client"] {
                let file = pod.path().join(container).join("0.log");
                let Ok(text) = std::fs::read_to_string(&file) else { continue };
                for l in text.lines() {
                    out.push(Line {
                        file: file.clone(),
                        at: line_time(l, year),
                        text: l.to_string(),
                    });
                }
            }
        }
    }
    out
}

/// The trust errors among `lines` printed at or after `since` (a line without a time counts
/// always).
pub fn trust_errors(lines: &[Line], since: jiff::Timestamp) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l.at.is_none_or(|t| t >= since) && is_trust_error(&l.text))
        .map(|l| format!("{}: {}", l.file.display(), l.text))
        .collect()
}

/// The real in-cluster clients printed no trust error since `since` (RFC 3339), and the client
/// is answered 200 through `kubectl proxy` now (within a minute: a pod rolled at the end of a
/// rotation starts again). Returns how many answers 200 the client got since `since`.
pub fn assert_clean_since(tb: &Testbed, since: &str) -> usize {
    let since: jiff::Timestamp = since.parse().expect("an RFC 3339 time");
    let now = jiff::Timestamp::now();
    eventually(
        "kube-system/api-proxy's client answered 200 through kubectl proxy",
        Duration::from_secs(60),
        || {
            let answered =
                lines(tb).iter().any(|l| l.at.is_some_and(|t| t >= now) && is_answer(&l.text));
            if answered { Ok(()) } else { Err("no answer 200 since the check began".to_string()) }
        },
    );
    let all = lines(tb);
    let errors = trust_errors(&all, since);
    assert!(
        errors.is_empty(),
        "the real in-cluster clients (kubectl proxy, curl through it) printed trust errors:\n{}",
        errors.join("\n")
    );
    all.iter().filter(|l| l.at.is_some_and(|t| t >= since) && is_answer(&l.text)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_and_curl_trust_errors_are_caught_and_answers_are_not() {
        for bad in [
            "E1202 16:40:01.123456    7 proxy_server.go:147] Error while proxying request: tls: failed to verify certificate: x509: certificate signed by unknown authority",
            "2026-12-02T16:18:33Z error: 500 tls: failed to verify certificate: x509: certificate signed by unknown authority",
            "2026-12-02T16:18:33Z error: 401 {\"kind\":\"Status\",\"reason\":\"Unauthorized\"}",
            "E1202 16:40:01.123456    7 proxy_server.go:147] Error while proxying request: remote error: tls: bad certificate",
        ] {
            assert!(is_trust_error(bad), "{bad}");
        }
        for fine in [
            "Starting to serve on /var/run/api-proxy/proxy.sock",
            "2026-12-02T16:18:33Z 200",
            "2026-12-02T16:18:33Z error: 500 EOF",
            "2026-12-02T16:18:33Z error: 000 curl: (7) Failed to connect to localhost port 80",
        ] {
            assert!(!is_trust_error(fine), "{fine}");
        }
        assert!(is_answer("2026-12-02T16:18:33Z 200"));
        assert!(!is_answer("2026-12-02T16:18:33Z error: 500 EOF"));
    }

    #[test]
    fn lines_carry_their_time_and_old_errors_do_not_count() {
        let at = |s: &str| Some(s.parse::<jiff::Timestamp>().unwrap());
        assert_eq!(line_time("2026-12-02T16:18:33Z 200", 2026), at("2026-12-02T16:18:33Z"));
        assert_eq!(
            line_time("E1202 16:40:01.500000    7 proxy_server.go:147] x", 2026),
            at("2026-12-02T16:40:01.5Z")
        );
        assert_eq!(line_time("Starting to serve on /x", 2026), None);
        let l = |t: &str| Line { file: "f".into(), at: line_time(t, 2026), text: t.into() };
        let lines = [
            l("E1202 16:00:00.000000 1 p.go:1] x509: certificate signed by unknown authority"),
            l("2026-12-02T17:00:00Z error: 500 x509: certificate signed by unknown authority"),
        ];
        assert_eq!(trust_errors(&lines, "2026-12-02T16:30:00Z".parse().unwrap()).len(), 1);
        assert_eq!(trust_errors(&lines, "2026-12-02T15:30:00Z".parse().unwrap()).len(), 2);
    }
}
