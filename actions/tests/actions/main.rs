//! The integration tests of `actions`: one binary, a module per area, each against real tools on
//! this machine (openssl, sshd) rather than fakes. The runner's node actions on a directory
//! node are tested in `kubeca-tests` (`tests/tests/runner/`), which builds kubeadm nodes with
//! the testbed's openssl recipe.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod pki;
mod ssh;
