//! The engine's tests: the fold, every decision, running, resuming, rollback, and a property test
//! that interrupts runs at every crash point.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

#[path = "engine/decide.rs"]
mod decide;
#[path = "engine/fold.rs"]
mod fold;
#[path = "engine/plan.rs"]
mod plan;
#[path = "engine/property.rs"]
mod property;
#[path = "engine/rollback.rs"]
mod rollback;
#[path = "engine/run.rs"]
mod run;
#[path = "engine/util.rs"]
mod util;
