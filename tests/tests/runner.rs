//! kubeca's rotation runner on control-plane nodes that are directories, with a PKI made by
//! the testbed's openssl recipe (`kubeca_tests::testbed::pki::control_plane_core`): each node
//! action against its postcondition and its byte-exact restore, and the runner over the real
//! journal SIGKILLed at seeded moments.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod runner {
    pub mod crash;
    pub mod node_actions;
}
