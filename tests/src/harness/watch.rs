//! Samplers that watch the machine while kubeca runs: every command line (no private key may
//! be on one) and every etcd member's health (quorum is never lost).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::testbed::Testbed;

/// Every distinct argument list (`/proc/*/cmdline`) seen on the machine while it runs, sampled
/// every 50 ms: to show that no private key is ever passed on a command line.
pub struct CmdlineSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(std::collections::BTreeSet<String>, u64)>,
}

impl CmdlineSampler {
    /// Starts sampling.
    pub fn start() -> CmdlineSampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let mut rounds = 0;
            while !flag.load(Ordering::Relaxed) {
                rounds += 1;
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    if e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                        && let Ok(c) = std::fs::read(e.path().join("cmdline"))
                        && !c.is_empty()
                    {
                        seen.insert(String::from_utf8_lossy(&c).replace('\0', " "));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (seen, rounds)
        });
        CmdlineSampler { stop, handle }
    }

    /// Stops sampling: the distinct argument lists seen, and how many samples were taken.
    pub fn stop(self) -> (std::collections::BTreeSet<String>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// Health of every etcd member sampled every 500 ms (`GET /health` with the member's
/// healthcheck-client certificate, as kubeadm's probe does): to show quorum is never lost.
pub struct EtcdWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Vec<bool>>>,
}

impl EtcdWatch {
    /// Starts sampling the members of the control planes of `tb`.
    pub fn start(tb: &Testbed) -> EtcdWatch {
        use std::sync::atomic::Ordering;
        let members: Vec<(String, PathBuf)> = tb
            .nodes
            .iter()
            .filter(|n| n.2)
            .map(|(name, address, _)| (address.clone(), tb.pki(name, "etcd")))
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let health: Vec<bool> = members
                    .iter()
                    .map(|(address, pki)| {
                        let out = Command::new("curl")
                            .args(["-s", "--max-time", "2", "--cacert"])
                            .arg(pki.join("ca.crt"))
                            .arg("--cert")
                            .arg(pki.join("healthcheck-client.crt"))
                            .arg("--key")
                            .arg(pki.join("healthcheck-client.key"))
                            .arg(format!("https://{address}:2379/health"))
                            .output();
                        out.is_ok_and(|o| {
                            String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\"")
                        })
                    })
                    .collect();
                samples.push(health);
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        });
        EtcdWatch { stop, handle }
    }

    /// Stops sampling: each sample's health per member, in control-plane order.
    pub fn stop(self) -> Vec<Vec<bool>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}
