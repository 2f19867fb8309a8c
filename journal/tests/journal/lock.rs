//! The state directory lock inside one process (cross-process cases are in the tests crate).

use crate::util::{filled, open};
use journal::{Actor, Error, Journal, force_unlock, lock_status};

#[test]
fn a_second_opener_is_refused_with_the_owner_named() {
    let dir = tempfile::tempdir().unwrap();
    let first = open(dir.path());
    let err = Journal::<crate::util::Ev>::open(dir.path(), Actor::current("t")).unwrap_err();
    match &err {
        Error::Locked { owner, .. } => {
            assert_eq!(owner.pid, std::process::id());
            assert_eq!(**owner, *first.lock().owner());
        }
        other => panic!("expected Locked, got {other}"),
    }
    let text = err.to_string();
    assert!(text.contains(&format!("pid {}", std::process::id())), "{text}");
    assert!(text.contains(&first.lock().owner().lock_id), "{text}");
}

#[test]
fn a_clean_close_releases_the_lock() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 1);
    assert_eq!(lock_status(dir.path()).unwrap(), None);
    filled(dir.path(), 1);
}

#[test]
fn force_unlock_of_a_live_lock_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let j = open(dir.path());
    let id = j.lock().owner().lock_id.clone();
    let (owner, alive) = lock_status(dir.path()).unwrap().unwrap();
    assert!(alive);
    assert_eq!(owner.lock_id, id);
    assert!(matches!(force_unlock(dir.path(), &id), Err(Error::Locked { .. })));
}
