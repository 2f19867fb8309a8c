//! rollback tests.
