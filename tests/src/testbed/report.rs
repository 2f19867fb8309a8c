//! `kubeca-testbed report`: counts handshake outcomes per edge from DIR/handshakes.jsonl.
//!
//! (Engineers: read /work/main/tests/DEV-AGREEMENT.md first: ownership, contract, rules, deadline.)
