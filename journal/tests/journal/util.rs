//! Helpers shared by the journal tests: a test event type and raw access to the store.

use journal::{Actor, Journal, RECORDS};
use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The event type the tests journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Ev {
    Note(String),
    Step { id: u32, attempt: u8 },
}

pub fn actor() -> Actor {
    Actor::current("journal-tests 0")
}

pub fn open(dir: &Path) -> Journal<Ev> {
    Journal::open(dir, actor()).expect("open journal")
}

/// A journal with `n` notes "note-<i>", closed again.
pub fn filled(dir: &Path, n: u32) {
    let mut j = open(dir);
    for i in 0..n {
        j.append(&Ev::Note(format!("note-{i}"))).expect("append");
    }
}

pub fn to_json(e: &Ev) -> serde_json::Value {
    serde_json::to_value(e).expect("event to json")
}

/// Runs `edit` on the raw records table, bypassing the journal (as an attacker or a bad disk would).
pub fn tamper(dir: &Path, edit: impl FnOnce(&mut redb::Table<u64, &[u8]>)) {
    let db = Database::open(dir.join(journal::DB_FILE)).expect("open raw db");
    let txn = db.begin_write().expect("begin write");
    {
        let mut table = txn.open_table(RECORDS).expect("open table");
        edit(&mut table);
    }
    txn.commit().expect("commit");
}

/// The raw value stored under `seq`.
pub fn raw(table: &redb::Table<u64, &[u8]>, seq: u64) -> Vec<u8> {
    table.get(seq).expect("get").expect("present").value().to_vec()
}
