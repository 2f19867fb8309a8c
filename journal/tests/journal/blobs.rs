//! The content-addressed blob store.

use journal::{BlobStore, Error, Hash};
use std::os::unix::fs::PermissionsExt;

#[test]
fn put_then_get_returns_the_content_under_its_digest() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let data = b"-----BEGIN CERTIFICATE-----\nnot really\n".to_vec();
    let digest = store.put(&data).unwrap();
    assert_eq!(digest, Hash::of(&data));
    assert_eq!(store.get(&digest).unwrap(), data);
    assert_eq!(store.put(&data).unwrap(), digest, "idempotent");
    let mode = std::fs::metadata(store.path(&digest)).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(store.verify_all().unwrap(), 1);
}

#[test]
fn a_corrupted_blob_is_detected_on_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let digest = store.put(b"original key material").unwrap();
    std::fs::write(store.path(&digest), b"original key materiaL").unwrap();
    let err = store.get(&digest).unwrap_err();
    assert!(matches!(err, Error::BlobMismatch { .. }), "{err}");
    assert!(err.to_string().contains(&digest.to_hex()), "names the blob: {err}");
    assert!(store.verify_all().is_err());
}

#[test]
fn a_missing_blob_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let err = store.get(&Hash::of(b"never stored")).unwrap_err();
    assert!(matches!(err, Error::BlobMissing { .. }), "{err}");
}

#[test]
fn leftovers_of_an_interrupted_put_are_removed_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = BlobStore::open(dir.path()).unwrap();
    let leftover = dir.path().join("blobs").join(".tmp-deadbeef");
    std::fs::write(&leftover, b"half a blo").unwrap();
    drop(store);
    BlobStore::open(dir.path()).unwrap();
    assert!(!leftover.exists());
}
