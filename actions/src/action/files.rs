//! Files on nodes: the backup taken before anything changes, the CA material written during the
//! rotation, the files removed at its end, and the restore a rollback does from the backup.

use engine::{Compensation, Summary};
use journal::Hash;

use super::{Action, Content, Error, Rotation, compensation, kubelet, recovered};
use crate::kubeadm::component::KUBELET;
use crate::kubeadm::outcome;
use crate::node::Node;
use crate::trust::{ComponentId, Effect, Source, Topology, World};

/// A rollback's restore of `paths` on `node` (`None`: the operator's machine) as the backup
/// holds them.
pub(super) fn restore(node: Option<&str>, paths: Vec<String>) -> Action {
    Action::RestoreFiles { node: node.map(str::to_owned), paths }
}

/// `Backup`: the original of every file the rotation may change, into the blob store.
pub mod backup {
    use super::*;
    use crate::kubeadm::step::OPERATOR;

    /// Reads every file of the node's backup (all in one command: a round trip per file made
    /// this the longest step of a rotation) and stores each in the blob store; a file that does
    /// not exist is recorded as absent, so a rollback removes it.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: &str,
        paths: &[String],
    ) -> Result<Summary, Error> {
        let mut s = Summary::new();
        let on = (node != OPERATOR).then_some(node);
        let names: Vec<&str> = paths.iter().map(String::as_str).collect();
        for (path, file) in paths.iter().zip(r.read_many_on(on, &names).await?) {
            let value = match file {
                Some(bytes) => r.blobs.put(&bytes)?.to_hex(),
                None => outcome::ABSENT.into(),
            };
            s = s.with(path.clone(), value);
        }
        Ok(s)
    }
}

/// `PutFiles`: new CAs, their keys and the old+new bundles, written atomically.
pub mod put_files {
    use super::*;

    /// Each file now holds its content.
    pub fn effects(node: &str, files: &[(String, Content, u32)]) -> Vec<Effect> {
        files
            .iter()
            .filter_map(|(path, content, _)| {
                content
                    .material()
                    .map(|m| Effect::Write { source: Source::file(node, path), material: m })
            })
            .collect()
    }

    /// The files back as the backup holds them; when the kubelet loads some of them (its
    /// `clientCAFile`), it is restarted after.
    pub fn undo(
        node: &str,
        files: &[(String, Content, u32)],
        loaded_by: &[String],
        rank: u32,
    ) -> Vec<Compensation<Action>> {
        let restart = loaded_by.iter().any(|c| c == KUBELET).then(|| kubelet::restart_after(node));
        let paths = files.iter().map(|f| f.0.clone()).collect();
        vec![compensation(restore(Some(node), paths), rank, restart)]
    }

    /// Every file holds exactly its content.
    pub async fn check<N: Node>(
        r: &Rotation<N>,
        node: &str,
        files: &[(String, Content, u32)],
    ) -> Result<Option<Summary>, Error> {
        for (path, content, _) in files {
            let want = r.resolve(*content)?;
            if r.node(node)?.read(path).await?.as_deref() != Some(want.as_slice()) {
                return Ok(None);
            }
        }
        Ok(Some(recovered()))
    }

    /// Writes each file (new files get their mode; existing ones keep owner and mode).
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: &str,
        files: &[(String, Content, u32)],
    ) -> Result<Summary, Error> {
        let n = r.node(node)?;
        let mut s = Summary::new();
        for (path, content, mode) in files {
            let data = r.resolve(*content)?;
            n.write(path, &data, *mode).await?;
            s = s.with(path.clone(), Hash::of(&data).to_hex());
        }
        Ok(s)
    }
}

/// `RemoveFiles`: the bundles and copies the rotation no longer needs.
pub mod remove_files {
    use super::*;

    /// The files written again with what they held (recorded in the plan), else restored from
    /// the backup.
    pub fn undo(
        node: &str,
        paths: &[String],
        prior: &[(String, Content, u32)],
        rank: u32,
    ) -> Vec<Compensation<Action>> {
        if prior.is_empty() {
            vec![compensation(restore(Some(node), paths.to_vec()), rank, None)]
        } else {
            let put = Action::PutFiles {
                node: node.to_owned(),
                files: prior.to_vec(),
                loaded_by: Vec::new(),
            };
            vec![compensation(put, rank, None)]
        }
    }

    /// None of the files exists.
    pub async fn check<N: Node>(
        r: &Rotation<N>,
        node: &str,
        paths: &[String],
    ) -> Result<Option<Summary>, Error> {
        for p in paths {
            if r.node(node)?.read(p).await?.is_some() {
                return Ok(None);
            }
        }
        Ok(Some(recovered()))
    }

    /// Removes each file.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: &str,
        paths: &[String],
    ) -> Result<Summary, Error> {
        for p in paths {
            r.node(node)?.remove(p).await?;
        }
        Ok(Summary::new().with("removed", paths.len().to_string()))
    }
}

/// `RestoreFiles` (rollback): files back as the backup holds them, or removed when they did not
/// exist before the rotation.
pub mod restore_files {
    use super::*;

    /// Restores bring back what the world held before the rotation (`initial`); a restored
    /// static pod manifest restarts its pod at once (the kubelet watches the directory); a
    /// restored kubelet config points the kubelet back at its original files from its next
    /// restart.
    pub fn effects(
        node: &str,
        paths: &[String],
        initial: &World,
        topology: &Topology,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        for path in paths {
            for source in [
                Source::file(node, path),
                Source::KubeconfigCa { node: Some(node.to_owned()), path: path.clone() },
                Source::KubeconfigCert { node: Some(node.to_owned()), path: path.clone() },
            ] {
                out.push(Effect::Write { material: initial.on_disk(&source).clone(), source });
            }
            let mut repoint = |id: ComponentId| {
                if let Some(c) = initial.components.get(&id) {
                    for (slot, source) in &c.slots {
                        out.push(Effect::Repoint {
                            component: id.clone(),
                            slot: slot.clone(),
                            source: source.clone(),
                        });
                    }
                }
            };
            let layout = topology.layout(node);
            if let Some(component) = layout.component_of_manifest(path) {
                repoint(ComponentId::on(component, node));
                out.extend(crate::action::static_pod::restart_static_pod::effects(node, component));
            } else if *path == layout.kubelet.config {
                repoint(ComponentId::on(KUBELET, node));
            }
        }
        out
    }

    /// Writes each file's original (mode 0600 for a file that no longer exists; an existing
    /// one keeps its mode), or removes it.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: Option<&str>,
        paths: &[String],
    ) -> Result<Summary, Error> {
        let mut s = Summary::new();
        for path in paths {
            match r.original(node, path)? {
                Some(bytes) => {
                    r.write_on(node, path, &bytes, 0o600).await?;
                    s = s.with(path.clone(), Hash::of(&bytes).to_hex());
                }
                None => {
                    r.remove_on(node, path).await?;
                    s = s.with(path.clone(), outcome::ABSENT);
                }
            }
        }
        Ok(s)
    }
}
