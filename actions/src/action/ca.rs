//! The CAs: the preflight checks of the old ones (upstream's caution), the new ones made or
//! imported (step 1), certificates re-issued by them (9.3), the new discovery hash (10), and the
//! check that every apiserver presents a certificate of the new CA (11.2).

use std::time::Duration;

use engine::{Compensation, Summary};

use super::runner::text;
use super::{Action, CaKind, Error, Rotation, compensation, files, names, recovered};
use crate::inventory::NewCa;
use crate::kubeadm::component::APISERVER;
use crate::kubeadm::{self, outcome};
use crate::node::Node;
use crate::pki::{self, Ca, Cert, KeyAlgorithm, KeyPolicy, SecretKey};
use crate::probe::{Seen, probe};
use crate::trust::{Effect, Material, Source};

/// The id of the step that makes the new CA of `kind` (its outcome holds the digests).
pub fn new_ca_step(kind: CaKind) -> &'static str {
    match kind {
        CaKind::Cluster => kubeadm::step::NEW_CA,
        CaKind::FrontProxy => kubeadm::step::NEW_FRONT_PROXY_CA,
    }
}

/// `Preflight`: every node reachable, the old CAs' keys matching their certificates, CA expiry,
/// HA.
pub mod preflight {
    use super::*;

    /// Checks them; a single apiserver is a warning (the cluster API is down while it
    /// restarts), the rest refusals.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: &str,
        cas: &[(String, String)],
        now: jiff::Timestamp,
    ) -> Result<Summary, Error> {
        let mut s = Summary::new();
        // The same caution init logs; the recorded summary keeps its short form.
        if let Some(caution) = r.inventory.single_apiserver_caution() {
            tracing::warn!("{caution}");
            s = s.with("warning", "single apiserver: downtime during its restarts");
        }
        // Every node answers, and its clock is near enough to this machine's that the new
        // certificates (valid from 5 minutes before they are made, here) are valid there.
        for n in &r.inventory.nodes {
            let before = jiff::Timestamp::now();
            let out = r.node(&n.name)?.run("read the clock", "date -u +%s.%N").await?;
            let after = jiff::Timestamp::now();
            let offset = clock_offset(&n.name, before, &out.stdout_text(), after)?;
            s = s
                .with(format!("clock-offset/{}", n.name), format!("{:+.3}s", offset.as_secs_f64()));
        }
        // Whatever is wrong with the old CAs, retrying will not fix it.
        let checked = check_old_cas(r.node(node)?, cas, now).await.map_err(Error::terminal)?;
        for (cert, fingerprint) in checked {
            s = s.with(cert, fingerprint);
        }
        Ok(s)
    }
}

/// A node's clock as `date -u +%s.%N` prints it: the time, and whether it came to the
/// nanosecond. busybox's `date` (minimal node images) knows no `%N` and prints it as is, or
/// nothing after the dot: the time is then read to the second (`precise` false).
pub fn node_clock(text: &str) -> Option<(jiff::Timestamp, bool)> {
    let text = text.lines().next().unwrap_or("").trim();
    let (secs, fraction) = text.split_once('.').unwrap_or((text, ""));
    let secs = secs.parse::<i64>().ok()?;
    let precise = !fraction.is_empty() && fraction.bytes().all(|b| b.is_ascii_digit());
    let nanos = if precise { format!("{fraction:0<9}")[..9].parse::<i32>().ok()? } else { 0 };
    Some((jiff::Timestamp::new(secs, nanos).ok()?, precise))
}

/// How far a node's clock is from this machine's: its `date -u +%s.%N` (`node_says`) against the
/// middle of the time the command took (`before`..`after`). Refused when the node is behind by
/// more than the certificates' backdating ([`pki::BACKDATE`]) plus the measuring error: a
/// certificate kubeca makes would start in that node's future, and its components would refuse
/// it until the clock caught up.
pub fn clock_offset(
    node: &str,
    before: jiff::Timestamp,
    node_says: &str,
    after: jiff::Timestamp,
) -> Result<jiff::SignedDuration, Error> {
    let text = node_says.trim();
    let Some((node_time, precise)) = node_clock(text) else {
        return Err(Error::terminal(format!(
            "node {node}: `date -u +%s.%N` printed {text:?}, not a time; kubeca compares each \
             node's clock with this machine's before it makes certificates"
        )));
    };
    // A clock read to the second (busybox's date has no %N) is up to a second behind.
    let resolution = if precise { 0 } else { 1 };
    let error = after.duration_since(before) / 2 + jiff::SignedDuration::from_secs(resolution);
    let middle = before + error;
    let offset = node_time.duration_since(middle);
    if -offset > pki::BACKDATE + error {
        return Err(Error::terminal(format!(
            "node {node}: its clock is {:.0} s behind this machine's (give or take {:.1} s); \
             certificates kubeca makes start {} s before they are made, so they would not be \
             valid yet on {node}. Set its clock (chrony or systemd-timesyncd) and run kubeca \
             again",
            -offset.as_secs_f64(),
            error.as_secs_f64(),
            pki::BACKDATE.as_secs()
        )));
    }
    if offset.abs() > jiff::SignedDuration::from_secs(30) {
        tracing::warn!(
            node,
            offset_s = offset.as_secs_f64(),
            "the node's clock is more than 30 s from this machine's"
        );
    }
    Ok(offset)
}

/// Checks the old CAs on `node`: each (certificate, key) pair must parse, the key must be the
/// certificate's, the certificate a CA, valid now. Returns each certificate's fingerprint, or
/// an error naming the node and file.
pub async fn check_old_cas<N: Node>(
    node: &N,
    cas: &[(String, String)],
    now: jiff::Timestamp,
) -> Result<Vec<(String, String)>, String> {
    old_cas(node, cas, now).await.map_err(|e| e.message)
}

async fn old_cas<N: Node>(
    node: &N,
    cas: &[(String, String)],
    now: jiff::Timestamp,
) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for (cert, key) in cas {
        let read = async |path: &str| {
            node.read(path).await?.map(text).ok_or_else(|| {
                Error::terminal(format!("node {}: {path} does not exist", node.name()))
            })
        };
        let origin = |p: &str| format!("{}:{p}", node.name());
        let c = Cert::from_pem(&read(cert).await?, &origin(cert))?;
        let k = SecretKey::from_pem(&read(key).await?, &origin(key))?;
        let ca = Ca::load(c, k)?;
        ca.check(now)?;
        out.push((cert.clone(), ca.cert().fingerprint()));
    }
    Ok(out)
}

/// `NewCa`: a new CA generated (with the old CA's key kind, or the inventory's) or imported;
/// its key goes to the blob store only, beside the old CA's certificate as read now, before
/// anything changed.
pub mod new_ca {
    use super::*;

    /// Makes it and records the digests.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        ca: CaKind,
        node: &str,
        old_cert: &str,
        now: jiff::Timestamp,
    ) -> Result<Summary, Error> {
        let old_pem = r.must_read(Some(node), old_cert).await?;
        let old = Cert::from_pem(&old_pem, &format!("{node}:{old_cert}"))?;
        let source = match ca {
            CaKind::Cluster => &r.inventory.rotation.new_ca,
            CaKind::FrontProxy => &r.inventory.rotation.new_front_proxy_ca,
        };
        let new = match source {
            NewCa::Import { cert, key } => {
                let read = |path: &std::path::Path| {
                    std::fs::read_to_string(path)
                        .map_err(|e| Error::terminal(format!("{}: {e}", path.display())))
                };
                let (c, k) = (read(cert)?, read(key)?);
                let c = Cert::from_pem(&c, &cert.display().to_string())?;
                let k = SecretKey::from_pem(&k, &key.display().to_string())?;
                let ca = Ca::import(c, k)?;
                // An imported CA must be valid now, not only well-formed.
                ca.check(now)?;
                ca
            }
            NewCa::Generate(_) => {
                let algorithm: KeyAlgorithm = r.inventory.rotation.key_algorithm.parse()?;
                let spec = algorithm.resolve(&old)?;
                // kubeadm's names, stamped: the new CA is told from the old by its subject.
                let default = match ca {
                    CaKind::Cluster => "kubernetes",
                    CaKind::FrontProxy => "front-proxy-ca",
                };
                let name = Ca::successor_common_name(&old, default, now);
                let days = r.inventory.rotation.validity_days;
                Ca::generate(&name, spec, days, now, &mut rand_core::OsRng)?
            }
        };
        let cert = r.blobs.put(new.cert_pem().as_bytes())?;
        let key = r.blobs.put(new.key_pem().as_bytes())?;
        let old_digest = r.blobs.put(old_pem.as_bytes())?;
        Ok(Summary::new()
            .with(outcome::CERT, cert.to_hex())
            .with(outcome::KEY, key.to_hex())
            .with(outcome::OLD_CERT, old_digest.to_hex())
            .with("fingerprint", new.cert().fingerprint())
            .with("discovery-hash", new.cert().discovery_hash()))
    }
}

/// `ReissueCert`: a certificate file re-issued by a new CA, keeping its key, subject, SANs and
/// usages (the apiserver's serving, kubelet-client and front-proxy client certificates).
pub mod reissue_cert {
    use super::*;

    /// The file holds a certificate of the new CA.
    pub fn effects(node: &str, path: &str, ca: CaKind) -> Vec<Effect> {
        vec![Effect::Write {
            source: Source::file(node, path),
            material: Material::cert(names(ca).1),
        }]
    }

    /// The file restored from the backup, then the apiserver that loads it restarted.
    pub fn undo(node: &str, path: &str, manifest: &str, rank: u32) -> Vec<Compensation<Action>> {
        let restart = crate::action::static_pod::restart_after(node, APISERVER, manifest);
        vec![compensation(files::restore(Some(node), vec![path.to_owned()]), rank, Some(restart))]
    }

    /// The certificate chains to the new CA.
    pub async fn check<N: Node>(
        r: &Rotation<N>,
        node: &str,
        path: &str,
        ca: CaKind,
    ) -> Result<Option<Summary>, Error> {
        let leaf = Cert::from_pem(&r.must_read(Some(node), path).await?, path)?;
        let ca = r.new_ca(ca)?;
        let now = jiff::Timestamp::now();
        Ok(pki::verify_chain(&leaf, std::slice::from_ref(ca.cert()), now).is_ok().then(recovered))
    }

    /// Re-issues it, unless the new CA already signed it.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: &str,
        path: &str,
        ca: CaKind,
        now: jiff::Timestamp,
    ) -> Result<Summary, Error> {
        let pem = r.must_read(Some(node), path).await?;
        let leaf = Cert::from_pem(&pem, &format!("{node}:{path}"))?;
        let cert = match renewed(&leaf, &r.new_ca(ca)?, now)? {
            Some(cert) => {
                r.node(node)?.write(path, cert.to_pem().as_bytes(), 0o644).await?;
                cert
            }
            None => leaf,
        };
        Ok(Summary::new().with("cert", cert.fingerprint()))
    }
}

/// `PrintDiscoveryHash`: the new `--discovery-token-ca-cert-hash` for joining nodes.
pub mod print_discovery_hash {
    use super::*;

    /// Logs it.
    pub fn apply<N: Node>(r: &Rotation<N>) -> Result<Summary, Error> {
        let hash = r.new_ca(CaKind::Cluster)?.cert().discovery_hash();
        tracing::info!(%hash, "joining nodes now use --discovery-token-ca-cert-hash {hash}");
        Ok(Summary::new().with("discovery-token-ca-cert-hash", hash))
    }
}

/// `CheckEdges`: every apiserver presents a certificate of the new CA, seen in a real TLS
/// handshake.
pub mod check_edges {
    use super::*;

    /// Probes each apiserver on its discovered port.
    pub async fn apply<N: Node>(r: &Rotation<N>) -> Result<Summary, Error> {
        r.check_edges().await
    }
}

impl<N: Node> Rotation<N> {
    pub(super) async fn check_edges(&self) -> Result<Summary, Error> {
        let ca = self.new_ca(CaKind::Cluster)?;
        let now = jiff::Timestamp::now();
        let mut checked = 0;
        for n in self.inventory.control_planes() {
            let port = self.topology.layout(&n.name).apiserver.port;
            match probe(&n.address, port, "/readyz", Duration::from_secs(5)).await {
                Seen::Up { cert, .. } => {
                    let c = Cert::from_der(cert, &format!("apiserver@{}", n.name))?;
                    pki::verify_chain(&c, std::slice::from_ref(ca.cert()), now)
                        .map_err(|e| Error::terminal(format!("apiserver@{}: {e}", n.name)))?;
                    checked += 1;
                }
                Seen::Down => {
                    return Err(Error::transient(format!("apiserver@{} does not answer", n.name)));
                }
            }
        }
        Ok(Summary::new().with("apiservers", checked.to_string()))
    }

    /// A client certificate of the new cluster CA with a fresh key that lives only in this
    /// process's memory, valid for a day.
    pub(super) fn new_ca_identity(
        &self,
        common_name: &str,
        organization: Option<&str>,
    ) -> Result<crate::probe::ClientIdentity, Error> {
        let ca = self.new_ca(CaKind::Cluster)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(rcgen::DnType::OrganizationName, o);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        // Only the template's validity length counts: the re-issue starts it now.
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2000, 1, 2);
        let template_key = rcgen::KeyPair::generate()?;
        let template = params.self_signed(&template_key)?;
        let leaf = Cert::from_der(template.der().to_vec(), common_name)?;
        let now = jiff::Timestamp::now();
        let issued = pki::reissue(&leaf, &ca, KeyPolicy::New, now, &mut rand_core::OsRng)?;
        let key = issued
            .new_key
            .ok_or_else(|| Error::terminal("re-issue with a new key returned none"))?;
        Ok((issued.cert.der().to_vec(), key.to_pem()))
    }
}

/// `leaf` re-issued by `ca` (same key), or `None` when `ca` already signed it: re-issuing is
/// idempotent, so a step repeated after a crash does not mint yet another certificate.
pub(super) fn renewed(leaf: &Cert, ca: &Ca, now: jiff::Timestamp) -> Result<Option<Cert>, Error> {
    if pki::verify_chain(leaf, std::slice::from_ref(ca.cert()), now).is_ok() {
        return Ok(None);
    }
    let new = pki::reissue(leaf, ca, KeyPolicy::Keep, now, &mut rand_core::OsRng)?;
    Ok(Some(new.cert))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_node_clock_is_measured_against_the_middle_of_the_command() {
        let (before, after) = (at("2026-12-03T12:00:00Z"), at("2026-12-03T12:00:02Z"));
        let node = at("2026-12-03T12:00:03.5Z").as_second().to_string() + ".5";
        let offset = clock_offset("w-1", before, &node, after).unwrap();
        assert_eq!(offset, jiff::SignedDuration::from_millis(2500));
        // Ahead is harmless; behind within the backdating too.
        let ahead = at("2026-12-03T13:00:00Z").as_second().to_string();
        assert!(clock_offset("w-1", before, &ahead, after).is_ok());
        let behind = at("2026-12-03T11:56:00Z").as_second().to_string();
        assert!(clock_offset("w-1", before, &behind, after).is_ok());
    }

    #[test]
    fn a_node_behind_by_more_than_the_backdating_is_refused_naming_it() {
        let (before, after) = (at("2026-12-03T12:00:00Z"), at("2026-12-03T12:00:00.2Z"));
        let behind = at("2026-12-03T11:54:00Z").as_second().to_string() + ".000000000";
        let err = clock_offset("w-2", before, &behind, after).unwrap_err();
        assert!(err.message.contains("node w-2: its clock is 360 s behind"), "{}", err.message);
        assert!(err.message.contains("not be valid yet on w-2"), "{}", err.message);
        let err = clock_offset("w-2", before, "Thu Dec  3\n", after).unwrap_err();
        assert!(err.message.contains("not a time"), "{}", err.message);
    }

    #[test]
    fn a_clock_without_nanoseconds_is_read_to_the_second() {
        let t = at("2026-12-03T12:00:00Z").as_second();
        assert_eq!(
            node_clock(&format!("{t}.250000000\n")),
            Some((at("2026-12-03T12:00:00.25Z"), true))
        );
        // busybox: `%N` printed as is.
        assert_eq!(node_clock(&format!("{t}.%N")), Some((at("2026-12-03T12:00:00Z"), false)));
        assert_eq!(node_clock(&t.to_string()), Some((at("2026-12-03T12:00:00Z"), false)));
        assert_eq!(node_clock("later"), None);
        // Read to the second, a clock 5 min + 0.5 s behind is within the measuring error.
        let (before, after) = (at("2026-12-03T12:00:00Z"), at("2026-12-03T12:00:00Z"));
        let behind = (t - 300).to_string() + ".%N";
        assert!(clock_offset("w-1", before, &behind, after).is_ok());
    }
}
