//! Test support shared by kubeca's cross-process tests: the testbed and the child programs that
//! the crash tests kill.

pub mod seeded;
pub mod testbed;
