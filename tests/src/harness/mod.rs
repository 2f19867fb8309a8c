//! What the cross-process tests share: a testbed handle, the kubeca command, the real tools
//! (ssh, kubectl, openssl, curl) behind small wrappers, snapshots of the nodes' files, samplers
//! that watch the machine while kubeca runs, waits, and the end states a rotation and a
//! rollback must reach.
//!
//! `rotation_e2e`, `soak` and `testbed` use these from here instead of keeping copies; a check
//! that one of them needs and another could use belongs here. Everything panics on failure (a
//! panic is how a test fails), naming what it was doing.
//!
//! The binaries under test are found beside the running test's own executable (cargo puts
//! integration tests in `target/<profile>/deps/` and binaries in `target/<profile>/`), so
//! `cargo test --workspace` (`make test`) must have built them: [`bin`] says so when one is
//! missing.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a panic is how a check fails

pub mod checks;
pub mod in_cluster;
pub mod kubeca;
pub mod snapshot;
pub mod testbed;
pub mod tools;
pub mod wait;
pub mod watch;

use std::path::{Path, PathBuf};

pub use kubeca::Kubeca;
pub use testbed::Testbed;
pub use tools::text;
pub use wait::eventually;

/// `target/<profile>`: the directory above the running test's `deps` directory.
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the running test's executable");
    let deps = exe.parent().expect("the test executable's directory");
    deps.parent().unwrap_or(deps).to_path_buf()
}

/// The binary `name` of this workspace, built for the running test's profile.
pub fn bin(name: &str) -> PathBuf {
    let bin = profile_dir().join(name);
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first (`cargo build --workspace`; make test does)",
        bin.display()
    );
    bin
}

/// The testbed command, `kubeca-testbed`.
pub fn testbed_bin() -> PathBuf {
    bin("kubeca-testbed")
}

/// Where tests keep what they make (`target/tmp`, cargo's `CARGO_TARGET_TMPDIR`).
pub fn scratch_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().unwrap_or(Path::new(".")).join("tmp")
}
