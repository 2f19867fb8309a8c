//! Engine benchmark (placeholder until written).
fn main() {}
