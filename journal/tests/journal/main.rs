//! Integration tests of the journal crate: one binary, a module per area.

mod util;

mod blobs;
mod damage;
mod export;
mod lock;
mod roundtrip;
