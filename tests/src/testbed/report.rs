//! `kubeca-testbed report`: counts handshake outcomes per edge from DIR/handshakes.jsonl.
