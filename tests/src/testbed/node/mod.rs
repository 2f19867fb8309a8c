//! Nodes as mount + UTS namespaces with bind-mounted kubeadm paths, a real sshd and systemctl/journalctl shims.
//!
//! A node is one long-lived process, the node supervisor (`kubeca-testbed node`), started by
//! `unshare --mount --uts --propagation private`. It plays the part systemd plays on a real
//! node: it sets the hostname, bind-mounts `DIR/nodes/<name>/…` over `/etc/kubernetes`,
//! `/var/lib/kubelet`, `/var/lib/etcd`, `/var/log/pods`, `/run` and a shim directory over
//! `/usr/local/sbin` (first on root's PATH, so `systemctl` and `journalctl` are the shims), then
//! runs `sshd -D` and the kubelet, restarts the kubelet on SIGHUP (`systemctl restart kubelet`)
//! and when it dies, keeps the kubelet's output as its journal, and reaps orphans (it is a child
//! subreaper, because PID 1 on CI machines may not reap).
//!
//! Every process the testbed starts is found again by `down` by pid: the pids recorded in
//! `DIR/pids` (node supervisors, haproxy), and every process inside a node's mount namespace,
//! whose inode is recorded in `DIR/nodes/<name>/mntns` (static pods, pods, ssh sessions).
//!
//! `layout` is what a node is on the host (topology, directories, bind mounts, the files `up`
//! writes), `supervisor` the node supervisor, `processes` the bookkeeping of every process the
//! testbed starts, `shims` the node's `systemctl` and `journalctl`.

mod layout;
mod processes;
mod shims;
mod supervisor;

pub use layout::{NodeSpec, host_mounts_under, node_dir, prepare, topology};
pub(crate) use processes::{alive, proc_stat, to_pid};
pub use processes::{cpu_use, record_pid, running, stop_all};
pub use shims::{journalctl, parse_time, systemctl};
pub use supervisor::{sshd, start, supervise};
