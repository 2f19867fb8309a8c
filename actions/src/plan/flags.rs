//! The static pod flags the rotation points at other files, and where finalize points them
//! back: one table, so that each forward rewrite (upstream steps 2, 5, 6, 8, 9.3) and its
//! undoing at the end (12.2) read side by side.
//!
//! During the rotation a flag names kubeca's own file beside the CA (an old+new bundle, or the
//! new CA alone); finalize points it back at the file it named before the rotation, which by
//! then holds the new CA (`finalize/canonical-ca`), so kubeadm's later operations find the
//! configuration they wrote.

use std::collections::BTreeMap;

use super::builder::{Steps, Upstream};
use super::cluster::ControlPlane;
use crate::action::Kind;
use crate::kubeadm::component::{
    APISERVER, CLOUD_CONTROLLER_MANAGER, CONTROLLER_MANAGER, SCHEDULER,
};

/// A file a flag is pointed at, on one control-plane node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum File {
    /// Old and new cluster CA (`ca-bundle.crt`).
    Bundle,
    /// Old and new front-proxy CA (`front-proxy-ca-bundle.crt`).
    FrontProxyBundle,
    /// The new cluster CA alone (`ca-new.crt`).
    NewCa,
    /// The new cluster CA's key (`ca-new.key`).
    NewCaKey,
    /// The cluster CA as kubeadm keeps it (the controller-manager's `--root-ca-file`).
    CaCert,
    /// The cluster CA's key (the controller-manager's `--cluster-signing-key-file`).
    CaKey,
    /// The front-proxy CA (the apiserver's `--requestheader-client-ca-file`).
    FrontProxyCa,
    /// The apiserver's client CA file, as discovered (`ca.crt` where no flag names one).
    ApiserverClientCa,
    /// The controller-manager's signing certificate, as discovered (`ca.crt` where no flag
    /// names one).
    SigningCert,
    /// Whatever the flag named before the rotation.
    AsBefore,
}

/// Which nodes a row applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum When {
    /// Every node that runs the component.
    Always,
    /// Only where the component's manifest sets the flag before the rotation.
    IfSet,
}

/// One flag: where the rotation points it, and where finalize points it back.
struct Rewrite {
    component: &'static str,
    flag: &'static str,
    when: When,
    /// The upstream step that points it at `during`, and the name of its step.
    forward: (Upstream, &'static str),
    during: File,
    /// The name of the finalize step (12.2) that points it back, and where; `None`: finalize
    /// leaves it as it is.
    back: Option<(&'static str, File)>,
}

/// Every flag the rotation rewrites. The rows of one upstream step are one forward step per
/// node, the rows of one finalize name one finalize step per node.
const REWRITES: [Rewrite; 8] = [
    // 2: the controller-manager publishes both CAs in kube-root-ca.crt. Only --root-ca-file
    // takes the bundle: --client-ca-file and --cluster-signing-cert-file must stay single
    // certificates (kubeadm#1350).
    Rewrite {
        component: CONTROLLER_MANAGER,
        flag: "--root-ca-file",
        when: When::Always,
        forward: (Upstream::Step2, "controller-manager-root-ca"),
        during: File::Bundle,
        back: Some(("controller-manager", File::CaCert)),
    },
    // 5: the apiserver trusts both CAs for clients (and, when it verifies them, for kubelets)
    // and both front-proxy CAs; it republishes extension-apiserver-authentication with both
    // at start.
    Rewrite {
        component: APISERVER,
        flag: "--client-ca-file",
        when: When::Always,
        forward: (Upstream::Step5, "apiserver-client-ca"),
        during: File::Bundle,
        back: Some(("apiserver", File::ApiserverClientCa)),
    },
    Rewrite {
        component: APISERVER,
        flag: "--requestheader-client-ca-file",
        when: When::Always,
        forward: (Upstream::Step5, "apiserver-client-ca"),
        during: File::FrontProxyBundle,
        back: Some(("apiserver", File::FrontProxyCa)),
    },
    Rewrite {
        component: APISERVER,
        flag: "--kubelet-certificate-authority",
        when: When::IfSet,
        forward: (Upstream::Step5, "apiserver-client-ca"),
        during: File::Bundle,
        back: Some(("apiserver", File::AsBefore)),
    },
    // 6: the scheduler's --client-ca-file, when it has one (kubeadm's reads the client CA from
    // extension-apiserver-authentication instead).
    Rewrite {
        component: SCHEDULER,
        flag: "--client-ca-file",
        when: When::IfSet,
        forward: (Upstream::Step6, "scheduler-client-ca"),
        during: File::Bundle,
        back: Some(("scheduler-client-ca", File::AsBefore)),
    },
    // 8: the cloud-controller-manager, when it runs as a static pod. Finalize points it back
    // (its file then holds the new CA) before cleanup removes the bundle: left on the bundle,
    // it would not start again at its next restart.
    // Only where the flag is set: one added here would have no value to go back to, neither in
    // finalize nor in a rollback, and would be left naming the bundle that both remove.
    Rewrite {
        component: CLOUD_CONTROLLER_MANAGER,
        flag: "--root-ca-file",
        when: When::IfSet,
        forward: (Upstream::Step8, "cloud-controller-manager"),
        during: File::Bundle,
        back: Some(("cloud-controller-manager", File::AsBefore)),
    },
    // 9.3: the controller-manager signs new kubelet certificates with the new CA from the
    // switch on (single-certificate files, kubeadm#1350).
    Rewrite {
        component: CONTROLLER_MANAGER,
        flag: "--cluster-signing-cert-file",
        when: When::Always,
        forward: (Upstream::Step9_3, "controller-manager-signing"),
        during: File::NewCa,
        back: Some(("controller-manager", File::SigningCert)),
    },
    Rewrite {
        component: CONTROLLER_MANAGER,
        flag: "--cluster-signing-key-file",
        when: When::Always,
        forward: (Upstream::Step9_3, "controller-manager-signing"),
        during: File::NewCaKey,
        back: Some(("controller-manager", File::CaKey)),
    },
];

impl File {
    /// Where this file is on `cp`, for `flag` of `component` (`None`: the flag named nothing).
    fn on(self, cp: &ControlPlane, component: &str, flag: &str) -> Option<String> {
        Some(match self {
            File::Bundle => cp.bundle(),
            File::FrontProxyBundle => cp.fp_bundle(),
            File::NewCa => cp.new_ca(),
            File::NewCaKey => cp.new_ca_key(),
            File::CaCert => cp.ca.clone(),
            File::CaKey => cp.ca_key.clone(),
            File::FrontProxyCa => cp.fp_ca.clone(),
            File::ApiserverClientCa => cp.layout.apiserver.client_ca.clone(),
            File::SigningCert => cp.layout.controller_manager.signing_cert.clone(),
            File::AsBefore => return cp.facts.flag(component, flag).map(str::to_owned),
        })
    }
}

/// Appends the step of `cp` that points the flags of upstream step `upstream` at the
/// rotation's files, when the node runs the component and one of the flags applies.
pub(crate) fn forward(p: &mut Steps, cp: &ControlPlane, upstream: Upstream) {
    let rows: Vec<&Rewrite> = REWRITES.iter().filter(|r| r.forward.0 == upstream).collect();
    let Some(first) = rows.first() else { return };
    let flags = rows.iter().map(|r| (*r, r.during)).collect();
    set(p, cp, upstream, first.component, first.forward.1, flags);
}

/// Appends the finalize step of `cp` that points `component`'s rewritten flags back at the
/// files they named before the rotation (upstream 12.2).
pub(crate) fn back(p: &mut Steps, cp: &ControlPlane, component: &str) {
    let rows: Vec<(&Rewrite, &str, File)> = REWRITES
        .iter()
        .filter(|r| r.component == component)
        .filter_map(|r| r.back.map(|(name, file)| (r, name, file)))
        .collect();
    let Some((_, name, _)) = rows.first() else { return };
    let flags = rows.iter().map(|(r, _, file)| (*r, *file)).collect();
    set(p, cp, Upstream::Step12_2, component, name, flags);
}

/// Appends `<phase>/<name>/<node>`, setting each flag to its file, unless the node runs no
/// `component` or no flag applies there.
fn set(
    p: &mut Steps,
    cp: &ControlPlane,
    upstream: Upstream,
    component: &str,
    name: &str,
    rows: Vec<(&Rewrite, File)>,
) {
    let Some(manifest) = cp.manifest(component) else { return };
    let flags: BTreeMap<String, String> = rows
        .into_iter()
        .filter(|(r, _)| r.when == When::Always || cp.facts.flag(component, r.flag).is_some())
        .filter_map(|(r, file)| Some((r.flag.to_owned(), file.on(cp, component, r.flag)?)))
        .collect();
    if flags.is_empty() {
        return;
    }
    let kind = if component == APISERVER { Kind::ApiserverRestart } else { Kind::StaticPod };
    let id = format!("{}/{name}/{}", p.phase().name(), cp.name);
    p.step(id, upstream, kind, cp.set_flags(component, manifest, flags));
}
