//! Kubeconfigs on control-plane nodes and the operator's: the CA they trust
//! (`certificate-authority-data`) and the client certificate they embed (upstream step 7, and
//! 12.2 for dropping the old CA).

use engine::{Compensation, FollowUp, Summary};
use journal::Hash;

use super::runner::text;
use super::{Action, CaKind, Content, Error, Rotation, ca, compensation, files, recovered};
use crate::edit::Kubeconfig;
use crate::node::Node;
use crate::pki::{self, Cert};
use crate::trust::{self, Effect, Material, Source};

/// The restart of the static pod that loads the kubeconfig (`loaded_by`) on `node`, after a
/// rollback restored it; none for the operator's.
fn restart_after(
    node: &Option<String>,
    loaded_by: &Option<(String, String)>,
) -> Option<FollowUp<Action>> {
    match (node, loaded_by) {
        (Some(n), Some((component, manifest))) => {
            Some(super::static_pod::restart_after(n, component, manifest))
        }
        _ => None,
    }
}

/// `SetKubeconfigCa`: what a kubeconfig trusts for the apiserver's certificate.
pub mod set_kubeconfig_ca {
    use super::*;

    /// The kubeconfig's CA data holds `content` (the operator's is outside the model).
    pub fn effects(node: Option<&str>, path: &str, content: Content) -> Vec<Effect> {
        let Some(node) = node else { return Vec::new() };
        content
            .material()
            .map(|m| Effect::Write {
                source: Source::KubeconfigCa { node: Some(node.to_owned()), path: path.to_owned() },
                material: m,
            })
            .into_iter()
            .collect()
    }

    /// Back to what an earlier step set it to, else the original from the backup; then the
    /// static pod that loads it is restarted.
    pub fn undo(
        node: &Option<String>,
        path: &str,
        content: Content,
        prior: Option<Content>,
        loaded_by: &Option<(String, String)>,
        rank: u32,
    ) -> Vec<Compensation<Action>> {
        let restart = restart_after(node, loaded_by);
        let back = match prior {
            Some(before) => Action::SetKubeconfigCa {
                node: node.clone(),
                path: path.to_owned(),
                content: before,
                prior: Some(content),
                loaded_by: loaded_by.clone(),
            },
            None => files::restore(node.as_deref(), vec![path.to_owned()]),
        };
        vec![compensation(back, rank, restart)]
    }

    /// The CA data is exactly `content`.
    pub async fn check<N: Node>(
        r: &Rotation<N>,
        node: Option<&str>,
        path: &str,
        content: Content,
    ) -> Result<Option<Summary>, Error> {
        let k = Kubeconfig::parse(path, &r.must_read(node, path).await?)?;
        let want = text(r.resolve(content)?);
        Ok((k.ca_data()?.as_deref() == Some(want.as_str())).then(recovered))
    }

    /// Sets the CA data (one line changed).
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: Option<&str>,
        path: &str,
        content: Content,
    ) -> Result<Summary, Error> {
        let mut k = Kubeconfig::parse(path, &r.must_read(node, path).await?)?;
        let pem = text(r.resolve(content)?);
        k.set_ca_data(&pem)?;
        r.write_on(node, path, k.text().as_bytes(), 0o600).await?;
        Ok(Summary::new().with("ca", Hash::of(pem.as_bytes()).to_hex()))
    }
}

/// `ReissueKubeconfigClient`: the embedded client certificate re-issued by the new cluster CA,
/// keeping its key.
pub mod reissue_kubeconfig_client {
    use super::*;

    /// The kubeconfig's client certificate is of the new CA (the operator's is outside the
    /// model).
    pub fn effects(node: Option<&str>, path: &str) -> Vec<Effect> {
        let Some(node) = node else { return Vec::new() };
        vec![Effect::Write {
            source: Source::KubeconfigCert { node: Some(node.to_owned()), path: path.to_owned() },
            material: Material::cert(trust::ca::NEW),
        }]
    }

    /// The kubeconfig restored from the backup, then the static pod that loads it restarted.
    pub fn undo(
        node: &Option<String>,
        path: &str,
        loaded_by: &Option<(String, String)>,
        rank: u32,
    ) -> Vec<Compensation<Action>> {
        let restore = files::restore(node.as_deref(), vec![path.to_owned()]);
        vec![compensation(restore, rank, restart_after(node, loaded_by))]
    }

    /// The embedded client certificate chains to the new CA.
    pub async fn check<N: Node>(
        r: &Rotation<N>,
        node: Option<&str>,
        path: &str,
    ) -> Result<Option<Summary>, Error> {
        let k = Kubeconfig::parse(path, &r.must_read(node, path).await?)?;
        let Some(pem) = k.client_cert_data()? else { return Ok(None) };
        let leaf = Cert::from_pem(&pem, path)?;
        let ca = r.new_ca(CaKind::Cluster)?;
        let now = jiff::Timestamp::now();
        Ok(pki::verify_chain(&leaf, std::slice::from_ref(ca.cert()), now).is_ok().then(recovered))
    }

    /// Re-issues the client certificate (unless the new CA already signed it) and writes it
    /// back with its key.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: Option<&str>,
        path: &str,
        now: jiff::Timestamp,
    ) -> Result<Summary, Error> {
        let mut k = Kubeconfig::parse(path, &r.must_read(node, path).await?)?;
        let cert_pem = k
            .client_cert_data()?
            .ok_or_else(|| Error::terminal(format!("{path}: no embedded client certificate")))?;
        let key_pem = k
            .client_key_data()?
            .ok_or_else(|| Error::terminal(format!("{path}: no embedded client key")))?;
        let leaf = Cert::from_pem(&cert_pem, path)?;
        let ca = r.new_ca(CaKind::Cluster)?;
        let cert = match ca::renewed(&leaf, &ca, now)? {
            Some(cert) => {
                k.set_client_data(&cert.to_pem(), &key_pem)?;
                r.write_on(node, path, k.text().as_bytes(), 0o600).await?;
                cert
            }
            None => leaf,
        };
        Ok(Summary::new().with("client-cert", cert.fingerprint()))
    }
}
