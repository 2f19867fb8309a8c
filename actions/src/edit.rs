//! Edits of kubeadm files that change only what they must: kubeconfigs, static pod manifests,
//! kubelet config.
//!
//! These files are edited as text, line by line, never parsed into a model and re-serialized: a
//! YAML round trip would reorder keys, re-quote values and drop comments, and every such change is
//! a diff an operator has to review at 3 a.m. and a restart trigger for the kubelet. Each edit
//! touches exactly the line that holds the value (or inserts exactly one line), and tests check
//! that no other line of kubeadm's real files changes.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

/// Why a file could not be read or edited. Each names the file (as the caller described it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The file lacks what the edit needs.
    #[error("{file}: {message}")]
    Shape {
        /// The file, e.g. `cp-1:/etc/kubernetes/manifests/kube-apiserver.yaml`.
        file: String,
        /// What is missing or odd.
        message: String,
    },
}

fn shape(file: &str, message: impl Into<String>) -> EditError {
    EditError::Shape { file: file.to_owned(), message: message.into() }
}

/// Splits text into lines keeping their terminators, so joining them gives the text back exactly.
fn lines_of(text: &str) -> Vec<String> {
    text.split_inclusive('\n').map(str::to_owned).collect()
}

/// A line's content without its terminator, and the terminator.
fn split_eol(line: &str) -> (&str, &str) {
    if let Some(body) = line.strip_suffix("\r\n") {
        (body, "\r\n")
    } else if let Some(body) = line.strip_suffix('\n') {
        (body, "\n")
    } else {
        (line, "")
    }
}

/// A static pod manifest (`/etc/kubernetes/manifests/*.yaml`) whose container command flags can
/// be read and set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    file: String,
    lines: Vec<String>,
}

/// One `- --name=value` line of a command list.
struct FlagLine {
    index: usize,
    indent: String,
    name: String,
    value: Option<String>,
}

impl Manifest {
    /// Reads a manifest; `file` names it in errors. It must have a container command list.
    pub fn parse(file: &str, text: &str) -> Result<Manifest, EditError> {
        let manifest = Manifest { file: file.to_owned(), lines: lines_of(text) };
        if manifest.command_start().is_none() {
            return Err(shape(
                file,
                "no container `command:` list: is this a static pod manifest?",
            ));
        }
        Ok(manifest)
    }

    /// The text, with every untouched line exactly as read.
    pub fn text(&self) -> String {
        self.lines.concat()
    }

    /// The first container's image, if any.
    pub fn image(&self) -> Option<String> {
        self.lines.iter().find_map(|l| {
            let (body, _) = split_eol(l);
            body.trim_start().strip_prefix("image:").map(|v| unquote(v.trim()).to_owned())
        })
    }

    /// The value of `--name` (given with its dashes), the last one when repeated, as the program
    /// reads it; `Some("")` for a flag without a value.
    pub fn flag(&self, name: &str) -> Option<String> {
        self.flag_lines()
            .into_iter()
            .rev()
            .find(|f| f.name == name)
            .map(|f| f.value.unwrap_or_default())
    }

    /// Every flag in order, as (name, value).
    pub fn flags(&self) -> Vec<(String, String)> {
        self.flag_lines().into_iter().map(|f| (f.name, f.value.unwrap_or_default())).collect()
    }

    /// Sets `--name` to `value`: rewrites its line, or inserts one line among the flags in
    /// alphabetical position (kubeadm writes them sorted). Returns whether the text changed.
    pub fn set_flag(&mut self, name: &str, value: &str) -> Result<bool, EditError> {
        if !name.starts_with("--") {
            return Err(shape(&self.file, format!("{name}: a flag name starts with --")));
        }
        let flags = self.flag_lines();
        if let Some(f) = flags.iter().rev().find(|f| f.name == name) {
            if f.value.as_deref() == Some(value) {
                return Ok(false);
            }
            let (_, eol) = split_eol(&self.lines[f.index]);
            self.lines[f.index] = format!("{}- {name}={value}{eol}", f.indent);
            return Ok(true);
        }
        let Some(start) = self.command_start() else {
            return Err(shape(&self.file, "no container `command:` list"));
        };
        let (indent, at) = match flags.iter().find(|f| f.name.as_str() > name) {
            Some(next) => (next.indent.clone(), next.index),
            None => match flags.last() {
                Some(last) => (last.indent.clone(), last.index + 1),
                None => {
                    // Only the program name is listed: insert right after it.
                    let program = start + 1;
                    let indent = self
                        .lines
                        .get(program)
                        .map(|l| l[..l.len() - l.trim_start().len()].to_owned())
                        .unwrap_or_default();
                    (indent, program + 1)
                }
            },
        };
        let eol =
            if self.lines.first().is_some_and(|l| l.ends_with("\r\n")) { "\r\n" } else { "\n" };
        self.lines.insert(at, format!("{indent}- {name}={value}{eol}"));
        Ok(true)
    }

    /// Index of the `command:` line of the first container.
    fn command_start(&self) -> Option<usize> {
        self.lines.iter().position(|l| {
            let t = split_eol(l).0.trim_start();
            t == "- command:" || t == "command:"
        })
    }

    /// The `- --flag[=value]` items directly under the first container's `command:`.
    fn flag_lines(&self) -> Vec<FlagLine> {
        let Some(start) = self.command_start() else { return Vec::new() };
        let mut out = Vec::new();
        let mut item_indent: Option<usize> = None;
        for (index, line) in self.lines.iter().enumerate().skip(start + 1) {
            let (body, _) = split_eol(line);
            let trimmed = body.trim_start();
            let indent = body.len() - trimmed.len();
            let Some(item) = trimmed.strip_prefix("- ") else { break };
            match item_indent {
                None => item_indent = Some(indent),
                Some(i) if i != indent => break,
                Some(_) => {}
            }
            let item = unquote(item.trim());
            if let Some(flag) = item.strip_prefix("--") {
                let (name, value) = match flag.split_once('=') {
                    Some((n, v)) => (format!("--{n}"), Some(v.to_owned())),
                    None => (format!("--{flag}"), None),
                };
                out.push(FlagLine { index, indent: body[..indent].to_owned(), name, value });
            }
        }
        out
    }
}

fn unquote(s: &str) -> &str {
    s.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| s.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')))
        .unwrap_or(s)
}

/// A kubeconfig (`/etc/kubernetes/*.conf`) with embedded or referenced credentials.
///
/// Its `Debug` shows no key material.
#[derive(Clone, PartialEq, Eq)]
pub struct Kubeconfig {
    file: String,
    lines: Vec<String>,
}

impl std::fmt::Debug for Kubeconfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kubeconfig").field("file", &self.file).finish_non_exhaustive()
    }
}

impl Kubeconfig {
    /// Reads a kubeconfig; `file` names it in errors. It must name a server.
    pub fn parse(file: &str, text: &str) -> Result<Kubeconfig, EditError> {
        let k = Kubeconfig { file: file.to_owned(), lines: lines_of(text) };
        if k.values("server").is_empty() {
            return Err(shape(file, "no `server:` in any cluster: is this a kubeconfig?"));
        }
        Ok(k)
    }

    /// The text, with every untouched line exactly as read.
    pub fn text(&self) -> String {
        self.lines.concat()
    }

    /// The API server URL of the first cluster.
    pub fn server(&self) -> Option<String> {
        self.values("server").into_iter().next().map(|(_, v)| v)
    }

    /// The PEM in the first cluster's `certificate-authority-data`, if embedded.
    pub fn ca_data(&self) -> Result<Option<String>, EditError> {
        self.decoded("certificate-authority-data")
    }

    /// The file named by `certificate-authority`, if the CA is referenced rather than embedded.
    pub fn ca_file(&self) -> Option<String> {
        self.values("certificate-authority").into_iter().next().map(|(_, v)| v)
    }

    /// The PEM in `client-certificate-data`, if embedded.
    pub fn client_cert_data(&self) -> Result<Option<String>, EditError> {
        self.decoded("client-certificate-data")
    }

    /// The PEM in `client-key-data`, if embedded. Key material: never log it.
    pub fn client_key_data(&self) -> Result<Option<String>, EditError> {
        self.decoded("client-key-data")
    }

    /// `client-certificate` and `client-key` file paths, when referenced (kubelet.conf).
    pub fn client_files(&self) -> (Option<String>, Option<String>) {
        let first = |k| self.values(k).into_iter().next().map(|(_, v)| v);
        (first("client-certificate"), first("client-key"))
    }

    /// Sets `certificate-authority-data` of every cluster entry to `pem`. Returns whether the
    /// text changed. A kubeconfig that references a CA file instead is an error: the file is
    /// what must be edited.
    pub fn set_ca_data(&mut self, pem: &str) -> Result<bool, EditError> {
        if self.values("certificate-authority-data").is_empty() {
            return Err(shape(
                &self.file,
                match self.ca_file() {
                    Some(f) => {
                        format!("the CA is referenced from {f}, not embedded: edit that file")
                    }
                    None => "no certificate-authority-data to replace".into(),
                },
            ));
        }
        Ok(self.replace_all("certificate-authority-data", &B64.encode(pem)))
    }

    /// Sets embedded client certificate and key. Returns whether the text changed.
    pub fn set_client_data(&mut self, cert_pem: &str, key_pem: &str) -> Result<bool, EditError> {
        if self.values("client-certificate-data").is_empty()
            || self.values("client-key-data").is_empty()
        {
            return Err(shape(
                &self.file,
                "no embedded client-certificate-data/client-key-data to replace",
            ));
        }
        let a = self.replace_all("client-certificate-data", &B64.encode(cert_pem));
        let b = self.replace_all("client-key-data", &B64.encode(key_pem));
        Ok(a || b)
    }

    fn decoded(&self, key: &str) -> Result<Option<String>, EditError> {
        let Some((_, value)) = self.values(key).into_iter().next() else { return Ok(None) };
        let bytes = B64
            .decode(value.trim())
            .map_err(|e| shape(&self.file, format!("{key} is not base64: {e}")))?;
        String::from_utf8(bytes)
            .map(Some)
            .map_err(|_| shape(&self.file, format!("{key} does not hold PEM text")))
    }

    /// Every `key: value` line for `key` (in any list item), as (line index, value).
    fn values(&self, key: &str) -> Vec<(usize, String)> {
        self.lines
            .iter()
            .enumerate()
            .filter_map(|(i, l)| {
                let (body, _) = split_eol(l);
                let t = body.trim_start();
                let t = t.strip_prefix("- ").unwrap_or(t);
                let rest = t.strip_prefix(key)?.strip_prefix(':')?;
                Some((i, unquote(rest.trim()).to_owned()))
            })
            .collect()
    }

    fn replace_all(&mut self, key: &str, value: &str) -> bool {
        let mut changed = false;
        for (i, old) in self.values(key) {
            if old == value {
                continue;
            }
            let (body, eol) = split_eol(&self.lines[i]);
            let Some(at) = body.find(&format!("{key}:")) else { continue };
            self.lines[i] = format!("{}{key}: {value}{eol}", &body[..at]);
            changed = true;
        }
        changed
    }
}

/// The kubelet's flags in an environment file its unit reads at every start: kubeadm's
/// `/var/lib/kubelet/kubeadm-flags.env` (`KUBELET_KUBEADM_ARGS`), `/etc/default/kubelet` or
/// `/etc/sysconfig/kubelet` (`KUBELET_EXTRA_ARGS`). A flag there wins over the config file, so
/// where one sets `--client-ca-file`, that is what kubeca edits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletFlags {
    file: String,
    lines: Vec<String>,
}

/// Whether an environment file's line is a comment (`#` or `;` first: systemd.exec(5),
/// `EnvironmentFile=`), whose flags count for nothing.
fn env_comment(line: &str) -> bool {
    matches!(line.trim_start().chars().next(), Some('#' | ';'))
}

/// Where each `--client-ca-file=VALUE` of a line starts its value, and where it ends (a
/// whitespace or a quote): at a word's start or after an assignment's `=`, as in
/// `KUBELET_EXTRA_ARGS="--client-ca-file=/etc/kubernetes/pki/ca.crt"`.
fn flag_values(line: &str, flag: &str) -> Vec<(usize, usize)> {
    let needle = format!("{flag}=");
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = line[from..].find(&needle).map(|i| i + from) {
        let before = line[..at].chars().next_back();
        let start = at + needle.len();
        from = start;
        if !before.is_none_or(|c| c.is_whitespace() || c == '"' || c == '\'' || c == '=') {
            continue;
        }
        let end = line[start..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .map_or(line.len(), |i| i + start);
        out.push((start, end));
    }
    out
}

impl KubeletFlags {
    /// `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> KubeletFlags {
        KubeletFlags { file: file.to_owned(), lines: lines_of(text) }
    }

    /// The text, with every untouched line exactly as read.
    pub fn text(&self) -> String {
        self.lines.concat()
    }

    /// The last `--client-ca-file` (the kubelet takes the last of a repeated flag).
    pub fn client_ca_file(&self) -> Option<String> {
        self.lines.iter().rev().filter(|l| !env_comment(l)).find_map(|l| {
            let (body, _) = split_eol(l);
            flag_values(body, "--client-ca-file").last().map(|(a, b)| body[*a..*b].to_owned())
        })
    }

    /// Sets every `--client-ca-file=` value, which must be present. Returns whether the text
    /// changed.
    pub fn set_client_ca_file(&mut self, path: &str) -> Result<bool, EditError> {
        if path.is_empty() || path.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
            return Err(shape(&self.file, format!("{path:?} cannot be a flag value here")));
        }
        let mut found = false;
        let mut changed = false;
        for line in self.lines.iter_mut().filter(|l| !env_comment(l)) {
            let (body, eol) = split_eol(line);
            let spans = flag_values(body, "--client-ca-file");
            if spans.is_empty() {
                continue;
            }
            found = true;
            let mut out = body.to_owned();
            for (a, b) in spans.into_iter().rev() {
                if out[a..b] != *path {
                    out.replace_range(a..b, path);
                    changed = true;
                }
            }
            *line = format!("{out}{eol}");
        }
        if !found {
            return Err(shape(&self.file, "no --client-ca-file=PATH to replace"));
        }
        Ok(changed)
    }
}

/// The file that sets the kubelet's client CA: a config file (or `--config-dir` drop-in), or a
/// flags file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KubeletSettings {
    /// `authentication.x509.clientCAFile`.
    Config(KubeletConfig),
    /// `--client-ca-file`.
    Flags(KubeletFlags),
}

impl KubeletSettings {
    /// The file at `path` (one of the kubelet's flag files, else a config), read from `text`.
    pub fn parse(path: &str, text: &str) -> Result<KubeletSettings, EditError> {
        if crate::kubeadm::path::kubelet_flag_env_file(path) {
            Ok(KubeletSettings::Flags(KubeletFlags::parse(path, text)))
        } else {
            KubeletConfig::parse(path, text).map(KubeletSettings::Config)
        }
    }

    /// The client CA file it names.
    pub fn client_ca_file(&self) -> Option<String> {
        match self {
            KubeletSettings::Config(c) => c.client_ca_file(),
            KubeletSettings::Flags(f) => f.client_ca_file(),
        }
    }

    /// Names `path` as the client CA file; whether the text changed.
    pub fn set_client_ca_file(&mut self, path: &str) -> Result<bool, EditError> {
        match self {
            KubeletSettings::Config(c) => c.set_client_ca_file(path),
            KubeletSettings::Flags(f) => f.set_client_ca_file(path),
        }
    }

    /// The text.
    pub fn text(&self) -> String {
        match self {
            KubeletSettings::Config(c) => c.text(),
            KubeletSettings::Flags(f) => f.text(),
        }
    }
}

/// The kubelet's config file (`/var/lib/kubelet/config.yaml`, a KubeletConfiguration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletConfig {
    file: String,
    lines: Vec<String>,
}

impl KubeletConfig {
    /// Reads a kubelet config; `file` names it in errors.
    pub fn parse(file: &str, text: &str) -> Result<KubeletConfig, EditError> {
        let c = KubeletConfig { file: file.to_owned(), lines: lines_of(text) };
        if !c.lines.iter().any(|l| split_eol(l).0.trim() == "kind: KubeletConfiguration") {
            return Err(shape(
                file,
                "not a KubeletConfiguration (no `kind: KubeletConfiguration`)",
            ));
        }
        Ok(c)
    }

    /// The text, with every untouched line exactly as read.
    pub fn text(&self) -> String {
        self.lines.concat()
    }

    /// `authentication.x509.clientCAFile`: the CA bundle the kubelet checks client certs with.
    pub fn client_ca_file(&self) -> Option<String> {
        self.find(&["authentication", "x509", "clientCAFile"]).map(|(_, v)| v)
    }

    /// `rotateCertificates`: whether the kubelet renews its own client certificate.
    pub fn rotates_certificates(&self) -> bool {
        self.find(&["rotateCertificates"]).is_some_and(|(_, v)| v == "true")
    }

    /// Sets `authentication.x509.clientCAFile`, which must already be present (kubeadm writes
    /// it). Returns whether the text changed.
    pub fn set_client_ca_file(&mut self, path: &str) -> Result<bool, EditError> {
        let Some((i, old)) = self.find(&["authentication", "x509", "clientCAFile"]) else {
            return Err(shape(&self.file, "no authentication.x509.clientCAFile to replace"));
        };
        if old == path {
            return Ok(false);
        }
        let (body, eol) = split_eol(&self.lines[i]);
        let indent = &body[..body.len() - body.trim_start().len()];
        self.lines[i] = format!("{indent}clientCAFile: {path}{eol}");
        Ok(true)
    }

    /// Finds a nested mapping key by path, tracking indentation of block mappings.
    fn find(&self, path: &[&str]) -> Option<(usize, String)> {
        let mut stack: Vec<(usize, String)> = Vec::new();
        for (i, line) in self.lines.iter().enumerate() {
            let (body, _) = split_eol(line);
            let trimmed = body.trim_start();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with("- ") {
                continue;
            }
            let indent = body.len() - trimmed.len();
            let Some((key, value)) = trimmed.split_once(':') else { continue };
            while stack.last().is_some_and(|(d, _)| *d >= indent) {
                stack.pop();
            }
            stack.push((indent, key.to_owned()));
            if stack.len() == path.len() && stack.iter().zip(path).all(|((_, k), p)| k == p) {
                return Some((i, unquote(value.trim()).to_owned()));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn kubelet_flags_in_an_environment_file_are_read_and_set_in_place() {
        let text = "# comment --client-ca-file=/nope is not a flag\nKUBELET_EXTRA_ARGS=\"--v=2 \
                    --client-ca-file=/etc/kubernetes/pki/ca.crt --node-labels=a=b\"\n";
        let mut f = KubeletFlags::parse("w-1:/etc/default/kubelet", text);
        assert_eq!(f.client_ca_file().as_deref(), Some("/etc/kubernetes/pki/ca.crt"));
        assert!(f.set_client_ca_file("/etc/kubernetes/pki/ca-bundle.crt").unwrap());
        assert_eq!(
            f.text(),
            text.replace(
                "--client-ca-file=/etc/kubernetes/pki/ca.crt",
                "--client-ca-file=/etc/kubernetes/pki/ca-bundle.crt"
            ),
            "the flag's value, and nothing else (the comment neither)"
        );
        assert!(!f.set_client_ca_file("/etc/kubernetes/pki/ca-bundle.crt").unwrap(), "idempotent");
        let mut none = KubeletFlags::parse("w-1:/etc/default/kubelet", "KUBELET_EXTRA_ARGS=\n");
        let e = none.set_client_ca_file("/x").unwrap_err().to_string();
        assert!(e.contains("w-1:/etc/default/kubelet") && e.contains("no --client-ca-file"), "{e}");
        assert!(none.set_client_ca_file("a b").is_err());
        assert_eq!(KubeletFlags::parse("f", "X=--not-client-ca-file=/a\n").client_ca_file(), None);
    }

    use super::*;

    const APISERVER: &str = include_str!("../testdata/kubeadm/kube-apiserver.yaml");
    const CONTROLLER_MANAGER: &str =
        include_str!("../testdata/kubeadm/kube-controller-manager.yaml");
    const SCHEDULER: &str = include_str!("../testdata/kubeadm/kube-scheduler.yaml");
    const KUBELET_CONFIG: &str = include_str!("../testdata/kubeadm/kubelet-config.yaml");
    const ADMIN_CONF: &str = include_str!("../testdata/kubeadm/admin.conf");
    const KUBELET_CONF: &str = include_str!("../testdata/kubeadm/kubelet.conf");

    /// Lines of `after` that differ from `before`, as (line number, before, after), assuming
    /// no insertions.
    fn changed(before: &str, after: &str) -> Vec<(usize, String, String)> {
        assert_eq!(before.lines().count(), after.lines().count());
        before
            .lines()
            .zip(after.lines())
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| (i + 1, a.to_owned(), b.to_owned()))
            .collect()
    }

    #[test]
    fn a_manifest_round_trip_changes_nothing() {
        for text in [APISERVER, CONTROLLER_MANAGER, SCHEDULER] {
            let mut m = Manifest::parse("m.yaml", text).unwrap();
            assert_eq!(m.text(), text);
            // Setting every flag to the value it has is a no-op.
            for (name, value) in m.flags() {
                assert!(!m.set_flag(&name, &value).unwrap(), "{name}");
            }
            assert_eq!(m.text(), text);
        }
    }

    #[test]
    fn flags_are_read_as_the_program_reads_them() {
        let m = Manifest::parse("m.yaml", APISERVER).unwrap();
        assert_eq!(m.flag("--client-ca-file").as_deref(), Some("/etc/kubernetes/pki/ca.crt"));
        assert_eq!(
            m.flag("--requestheader-client-ca-file").as_deref(),
            Some("/etc/kubernetes/pki/front-proxy-ca.crt")
        );
        assert_eq!(m.flag("--kubelet-certificate-authority"), None);
        assert_eq!(m.image().as_deref(), Some("registry.k8s.io/kube-apiserver:v1.30.2"));
        assert_eq!(m.flags().len(), 27);
        let cm = Manifest::parse("cm.yaml", CONTROLLER_MANAGER).unwrap();
        assert_eq!(cm.flag("--root-ca-file").as_deref(), Some("/etc/kubernetes/pki/ca.crt"));
        assert_eq!(
            cm.flag("--cluster-signing-cert-file").as_deref(),
            Some("/etc/kubernetes/pki/ca.crt")
        );
    }

    #[test]
    fn setting_a_flag_changes_exactly_its_line() {
        let mut m = Manifest::parse("m.yaml", CONTROLLER_MANAGER).unwrap();
        assert!(m.set_flag("--root-ca-file", "/etc/kubernetes/pki/ca-bundle.crt").unwrap());
        let diff = changed(CONTROLLER_MANAGER, &m.text());
        assert_eq!(diff.len(), 1, "{diff:?}");
        assert_eq!(diff[0].2, "    - --root-ca-file=/etc/kubernetes/pki/ca-bundle.crt");
    }

    #[test]
    fn an_absent_flag_is_inserted_as_one_line_in_sorted_position() {
        let mut m = Manifest::parse("m.yaml", APISERVER).unwrap();
        assert!(
            m.set_flag("--kubelet-certificate-authority", "/etc/kubernetes/pki/ca-bundle.crt")
                .unwrap()
        );
        let after = m.text();
        assert_eq!(after.lines().count(), APISERVER.lines().count() + 1);
        let mut without: Vec<&str> = after.lines().collect();
        let at = without
            .iter()
            .position(|l| {
                *l == "    - --kubelet-certificate-authority=/etc/kubernetes/pki/ca-bundle.crt"
            })
            .unwrap();
        assert_eq!(without[at - 1], "    - --etcd-servers=https://127.0.0.1:2379");
        assert_eq!(
            without[at + 1],
            "    - --kubelet-client-certificate=/etc/kubernetes/pki/apiserver-kubelet-client.crt"
        );
        without.remove(at);
        assert_eq!(without, APISERVER.lines().collect::<Vec<_>>());
        assert_eq!(
            Manifest::parse("m.yaml", &after)
                .unwrap()
                .flag("--kubelet-certificate-authority")
                .as_deref(),
            Some("/etc/kubernetes/pki/ca-bundle.crt")
        );
        // The scheduler has no --client-ca-file in kubeadm's manifest: it goes before --kubeconfig.
        let mut s = Manifest::parse("s.yaml", SCHEDULER).unwrap();
        s.set_flag("--client-ca-file", "/etc/kubernetes/pki/ca-bundle.crt").unwrap();
        let flags: Vec<String> = s.flags().into_iter().map(|(n, _)| n).collect();
        let mut sorted = flags.clone();
        sorted.sort();
        assert_eq!(flags, sorted);
    }

    #[test]
    fn a_file_without_a_command_is_refused_by_name() {
        let e =
            Manifest::parse("cp-1:/etc/kubernetes/manifests/x.yaml", "kind: Pod\n").unwrap_err();
        assert!(e.to_string().starts_with("cp-1:/etc/kubernetes/manifests/x.yaml:"), "{e}");
    }

    #[test]
    fn kubeconfig_credentials_are_read_and_replaced_line_by_line() {
        let mut k = Kubeconfig::parse("admin.conf", ADMIN_CONF).unwrap();
        assert_eq!(k.server().as_deref(), Some("https://10.0.0.10:6443"));
        assert!(k.ca_data().unwrap().unwrap().contains("old\nca"));
        assert!(k.client_key_data().unwrap().unwrap().contains("RSA PRIVATE KEY"));
        assert!(!format!("{k:?}").contains("LS0t"), "Debug shows no key material");

        let bundle = "-----BEGIN CERTIFICATE-----\nold\n-----END CERTIFICATE-----\n-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----\n";
        assert!(k.set_ca_data(bundle).unwrap());
        let diff = changed(ADMIN_CONF, &k.text());
        assert_eq!(diff.len(), 1);
        assert!(diff[0].2.starts_with("    certificate-authority-data: "));
        assert_eq!(k.ca_data().unwrap().as_deref(), Some(bundle));
        assert!(!k.set_ca_data(bundle).unwrap(), "idempotent");

        assert!(k.set_client_data("CERT", "KEY").unwrap());
        assert_eq!(changed(ADMIN_CONF, &k.text()).len(), 3);
        assert_eq!(k.client_cert_data().unwrap().as_deref(), Some("CERT"));
    }

    #[test]
    fn kubelet_conf_references_its_rotating_client_certificate() {
        let k = Kubeconfig::parse("kubelet.conf", KUBELET_CONF).unwrap();
        let pem = Some("/var/lib/kubelet/pki/kubelet-client-current.pem".to_owned());
        assert_eq!(k.client_files(), (pem.clone(), pem));
        assert_eq!(k.client_cert_data().unwrap(), None);
        let mut k2 = k.clone();
        assert!(k2.set_client_data("C", "K").is_err(), "nothing embedded to replace");
    }

    #[test]
    fn kubelet_config_client_ca_file_is_edited_in_place() {
        let mut c = KubeletConfig::parse("config.yaml", KUBELET_CONFIG).unwrap();
        assert_eq!(c.client_ca_file().as_deref(), Some("/etc/kubernetes/pki/ca.crt"));
        assert!(c.rotates_certificates());
        assert!(c.set_client_ca_file("/etc/kubernetes/pki/ca-bundle.crt").unwrap());
        let diff = changed(KUBELET_CONFIG, &c.text());
        assert_eq!(
            diff,
            vec![(
                9,
                "    clientCAFile: /etc/kubernetes/pki/ca.crt".into(),
                "    clientCAFile: /etc/kubernetes/pki/ca-bundle.crt".into()
            )]
        );
        assert!(!c.set_client_ca_file("/etc/kubernetes/pki/ca-bundle.crt").unwrap());
    }
}
