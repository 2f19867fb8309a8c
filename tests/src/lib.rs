//! Test support shared by kubeca's cross-process tests: the testbed, the harness the tests
//! drive it with, and the child programs that the crash tests kill.

pub mod harness;
pub mod seeded;
pub mod testbed;
