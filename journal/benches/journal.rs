//! Journal benchmark: durable appends and replay, side by side with an fdatasync baseline.
//!
//! Run with `cargo bench -p journal --bench journal` (or `make bench`). In one process, on the same
//! disk (a temporary directory under `target/`), it measures:
//! - baseline: 10,000 writes of 1 KiB to a plain file, each followed by `fdatasync` — the floor
//!   for a durable append;
//! - journal: 10,000 `Journal::append` of a ~1 KiB event, each its own durable transaction;
//! - replay: `Journal::replay` (verifying the chain) of 100,000 records of ~1 KiB.
//!
//! Options via the environment: `BENCH_APPENDS` (default 10000), `BENCH_REPLAY` (default 100000).

use std::io::Write;
use std::time::Instant;

use journal::{Actor, Envelope, GENESIS, Hash, Journal, RECORDS, SCHEMA_VERSION};

fn env_count(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn payload(i: u64) -> String {
    // About 1 KiB, different per record so nothing compresses or dedups.
    let mut s = format!("record {i} ");
    while s.len() < 1000 {
        s.push_str(&format!(
            "{:x}",
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(s.len() as u32)
        ));
    }
    s
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let appends = env_count("BENCH_APPENDS", 10_000);
    let replay_n = env_count("BENCH_REPLAY", 100_000);
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp");
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::tempdir_in(&base)?;

    // Baseline: write + fdatasync per record.
    let path = tmp.path().join("baseline.log");
    let mut file = std::fs::File::create(&path)?;
    let started = Instant::now();
    for i in 0..appends {
        let line = payload(i);
        file.write_all(line.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_data()?;
    }
    let baseline = appends as f64 / started.elapsed().as_secs_f64();

    // Journal: durable appends.
    let dir = tmp.path().join("journal");
    let mut j: Journal<String> = Journal::open(&dir, Actor::current("bench"))?;
    let started = Instant::now();
    for i in 0..appends {
        j.append(&payload(i))?;
    }
    let journal_rate = appends as f64 / started.elapsed().as_secs_f64();
    drop(j);

    // Replay: build a 100,000-record journal in one transaction (the chain computed exactly as
    // `append` does), then time `replay`, which verifies every hash and decodes every payload.
    let dir = tmp.path().join("replay");
    drop(Journal::<String>::open(&dir, Actor::current("bench"))?);
    {
        let db = redb::Database::open(dir.join(journal::DB_FILE))?;
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(RECORDS)?;
            let actor = Actor::current("bench");
            let mut prev = GENESIS;
            for seq in 0..replay_n {
                let envelope = Envelope {
                    schema: SCHEMA_VERSION,
                    seq,
                    recorded_at_us: 0,
                    actor: actor.clone(),
                    prev_hash: prev,
                    payload: postcard::to_stdvec(&payload(seq))?,
                };
                let stored = envelope.encode()?;
                let hash = Hash::chain(&prev, &stored);
                let mut value = hash.0.to_vec();
                value.extend_from_slice(&stored);
                table.insert(seq, value.as_slice())?;
                prev = hash;
            }
        }
        txn.commit()?;
    }
    let j: Journal<String> = Journal::open(&dir, Actor::current("bench"))?;
    let started = Instant::now();
    let records = j.replay()?;
    let replay_secs = started.elapsed().as_secs_f64();
    assert_eq!(records.len() as u64, replay_n);

    println!("journal benchmark ({appends} appends of ~1 KiB, replay of {replay_n})");
    println!("  baseline write+fdatasync : {baseline:>10.0} appends/s");
    println!("  journal durable append   : {journal_rate:>10.0} appends/s");
    println!("  ratio journal/baseline   : {:>10.2}x", journal_rate / baseline);
    println!(
        "  journal replay           : {:>10.0} records/s ({replay_n} in {replay_secs:.3} s)",
        replay_n as f64 / replay_secs
    );
    Ok(())
}
