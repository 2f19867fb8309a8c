//! Waiting for a condition instead of sleeping: one poll loop for every test.

use std::time::{Duration, Instant};

/// What a polled condition answers: `true`/`Ok(())` when it holds, or why not yet.
pub trait Poll {
    /// `Ok(())` when the condition holds, else what was seen (for the timeout's message).
    fn holds(self) -> Result<(), String>;
}

impl Poll for bool {
    fn holds(self) -> Result<(), String> {
        if self { Ok(()) } else { Err("not yet".into()) }
    }
}

impl Poll for Result<(), String> {
    fn holds(self) -> Result<(), String> {
        self
    }
}

/// Polls `cond` until it holds, first every 100 ms and backing off to every second; panics
/// after `timeout`, naming `what` and the last thing the condition saw.
pub fn eventually<P: Poll>(what: &str, timeout: Duration, mut cond: impl FnMut() -> P) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(100);
    loop {
        match cond().holds() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_once_the_condition_holds() {
        let mut n = 0;
        eventually("three polls", Duration::from_secs(5), || {
            n += 1;
            n >= 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for never: still 7")]
    fn panics_with_what_it_saw_at_the_deadline() {
        eventually("never", Duration::from_millis(250), || Err::<(), _>("still 7".to_string()));
    }
}
