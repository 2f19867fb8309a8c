//! The integration tests of `actions`: one binary, a module per area, each against real tools on
//! this machine (openssl, sshd) rather than fakes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod pki;
mod runner;
mod ssh;
