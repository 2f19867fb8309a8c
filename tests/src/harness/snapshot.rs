//! The nodes' files as they are at one moment (bytes and mode), compared with another moment,
//! and searched for private key material.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::testbed::Testbed;

/// Every file of a node that a rotation may touch, with its mode: all of /etc/kubernetes, and
/// the kubelet's config and PKI (not the pods' volumes, which the kubelet rewrites itself).
pub type Snapshot = BTreeMap<PathBuf, (Vec<u8>, u32)>;

/// The files of every node (host paths), as [`Snapshot`] describes, and the operator's
/// kubeconfig (the inventory's), which kubeca rewrites too.
pub fn snapshot(tb: &Testbed) -> Snapshot {
    let mut out = BTreeMap::new();
    collect(&tb.dir.join("admin.conf"), &mut out);
    for (name, _, _) in &tb.nodes {
        for rel in [
            "etc-kubernetes",
            "var-lib-kubelet/pki",
            "var-lib-kubelet/config.yaml",
            "var-lib-kubelet/kubeadm-flags.env",
            "etc-default/kubelet",
        ] {
            collect(&tb.node_path(name, rel), &mut out);
        }
    }
    out
}

/// Every file under `dir` (host path), as [`Snapshot`] describes.
pub fn snapshot_dir(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    collect(dir, &mut out);
    out
}

fn collect(p: &Path, out: &mut Snapshot) {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return };
    if meta.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            collect(&e.path(), out);
        }
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(p).unwrap();
        out.insert(p.to_path_buf(), (target.as_os_str().as_encoded_bytes().to_vec(), 0o120000));
    } else if meta.is_file() {
        out.insert(
            p.to_path_buf(),
            (std::fs::read(p).unwrap(), meta.permissions().mode() & 0o7777),
        );
    }
    // Sockets and FIFOs (a pod's unix socket in its emptyDir) hold no bytes to compare, and
    // reading one fails or blocks: no rotation writes such a file.
}

/// The differences between two snapshots, one line each.
pub fn differences(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    for (p, (bytes, mode)) in before {
        match after.get(p) {
            None => d.push(format!("{}: removed", p.display())),
            Some((b, _)) if b != bytes => d.push(format!("{}: content differs", p.display())),
            Some((_, m)) if m != mode => {
                d.push(format!("{}: mode {m:o}, was {mode:o}", p.display()))
            }
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        d.push(format!("{}: left behind", p.display()));
    }
    d
}

/// Pieces of every private key in the files under `roots` (PEM bodies, and the base64 of
/// kubeconfigs' `client-key-data`): what must never show up in a log, an export, an error or a
/// command line. Each piece is 40 characters from the middle of a key.
pub fn private_key_pieces(roots: &[PathBuf]) -> Vec<String> {
    let mut pieces = std::collections::BTreeSet::new();
    for root in roots {
        for (path, (bytes, _)) in snapshot_dir(root) {
            let text = String::from_utf8_lossy(&bytes);
            let mut body: Option<String> = None;
            for line in text.lines() {
                let l = line.trim();
                if l.starts_with("-----BEGIN") && l.contains("PRIVATE KEY") {
                    body = Some(String::new());
                } else if l.starts_with("-----END") {
                    if let Some(b) = body.take()
                        && b.len() > 120
                    {
                        pieces.insert(b[60..100].to_string());
                    }
                } else if let Some(b) = body.as_mut() {
                    b.push_str(l);
                } else if let Some(v) = l.strip_prefix("client-key-data:") {
                    let v = v.trim();
                    if v.len() > 120 {
                        pieces.insert(v[60..100].to_string());
                    }
                }
            }
            let _ = path;
        }
    }
    pieces.into_iter().collect()
}

/// The places among `texts` (name, text) that hold a private key: the PEM marker or any of
/// `pieces`.
pub fn key_material_in(texts: &[(String, String)], pieces: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, text) in texts {
        if text.contains("PRIVATE KEY") {
            found.push(format!("{name}: a PEM private key"));
        }
        if let Some(p) = pieces.iter().find(|p| text.contains(p.as_str())) {
            found.push(format!("{name}: a piece of a private key ({p})"));
        }
    }
    found
}
