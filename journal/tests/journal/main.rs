//! Integration tests of the journal crate: one binary, a module per area.

// Test helpers fail the test by panicking, so unwrap/expect are the point here.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod blobs;
mod creation;
mod damage;
mod export;
mod lock;
mod roundtrip;
