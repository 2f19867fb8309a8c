//! property tests.
