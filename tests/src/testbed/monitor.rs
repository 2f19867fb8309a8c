//! The trust monitor's writer: one JSON line per connection attempt in DIR/handshakes.jsonl.
