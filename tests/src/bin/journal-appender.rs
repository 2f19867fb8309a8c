//! Child program for the journal's crash and lock tests: appends, holds the lock, or stores blobs
//! until it is killed, printing each acknowledged result on stdout.
//!
//! Usage: `journal-appender append DIR` | `journal-appender hold DIR` | `journal-appender blobs DIR`

use std::io::{BufRead, Write};
use std::process::ExitCode;

use journal::{Actor, BlobStore, Journal};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(dir)) = (args.first(), args.get(1)) else {
        eprintln!("usage: journal-appender append|hold|blobs DIR");
        return ExitCode::from(2);
    };
    let dir = std::path::Path::new(dir);
    let result = match mode.as_str() {
        "append" => append(dir),
        "hold" => hold(dir),
        "blobs" => blobs(dir),
        other => Err(format!("unknown mode {other}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("journal-appender: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Appends "record-<seq>" forever; prints each sequence once `append` has returned (durable).
fn append(dir: &std::path::Path) -> Result<(), String> {
    let mut j: Journal<String> =
        Journal::open(dir, Actor::current("journal-appender")).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    loop {
        let seq = j.head().len;
        let done = j.append(&format!("record-{seq}")).map_err(|e| e.to_string())?;
        writeln!(out, "{}", done.seq).and_then(|()| out.flush()).map_err(|e| e.to_string())?;
    }
}

/// Takes the lock, prints its id, and holds it until stdin closes.
fn hold(dir: &std::path::Path) -> Result<(), String> {
    let j: Journal<String> =
        Journal::open(dir, Actor::current("journal-appender")).map_err(|e| e.to_string())?;
    println!("locked {}", j.lock().owner().lock_id);
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line).map_err(|e| e.to_string())? > 0 {
        line.clear();
    }
    Ok(())
}

/// Stores blobs of 64-320 KiB forever; prints each digest once `put` has returned.
fn blobs(dir: &std::path::Path) -> Result<(), String> {
    let store = BlobStore::open(dir).map_err(|e| e.to_string())?;
    let mut out = std::io::stdout().lock();
    for i in 0u64.. {
        let len = 64 * 1024 + (i as usize % 5) * 64 * 1024;
        let data: Vec<u8> = (0..len).map(|b| (b as u64 ^ i.wrapping_mul(31)) as u8).collect();
        let digest = store.put(&data).map_err(|e| e.to_string())?;
        writeln!(out, "{digest}").and_then(|()| out.flush()).map_err(|e| e.to_string())?;
    }
    Ok(())
}
