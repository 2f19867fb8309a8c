//! Audit exports (JSON Lines and CSV) that can be verified without the database.
//!
//! Every exported line carries the record's sequence, time, actor, previous hash and hash, the
//! caller's JSON rendering of the event, and `record`: the hex of the exact stored envelope bytes.
//! [`verify_export`] re-hashes those bytes, follows the chain, and checks that every human-readable
//! column says what the stored bytes say, so an edited, deleted or reordered line is found.

use std::io::{BufRead, Write};
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::envelope::{Envelope, GENESIS, Hash, Head};
use crate::error::{Error, Problem, Result};
use crate::store::Journal;

/// Export format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One JSON object a line.
    Jsonl,
    /// A header line, then one row a record.
    Csv,
}

/// One exported record, as written to JSON Lines (CSV has the same columns, `actor` as text).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportLine {
    /// Sequence number.
    pub seq: u64,
    /// RFC 3339 UTC time it was recorded.
    pub time: String,
    /// Who recorded it.
    pub actor: String,
    /// Envelope schema version.
    pub schema: u16,
    /// Previous record's hash.
    pub prev_hash: String,
    /// This record's hash.
    pub hash: String,
    /// The event, rendered by the caller.
    pub event: serde_json::Value,
    /// Hex of the exact stored bytes the hash covers.
    pub record: String,
}

impl<E: Serialize + DeserializeOwned> Journal<E> {
    /// Writes every record (verifying the chain as it goes) to `out`; returns the head exported.
    pub fn export(
        &self,
        out: &mut dyn Write,
        format: Format,
        to_json: &dyn Fn(&E) -> serde_json::Value,
    ) -> Result<Head> {
        let path = PathBuf::from("-");
        let write_err =
            |e: std::io::Error| Error::Io { path: path.clone(), action: "write export", source: e };
        let mut head = Head { len: 0, hash: GENESIS };
        let mut visit = |emit: &mut dyn FnMut(&ExportLine) -> Result<()>| {
            self.walk_raw(|seq, envelope, hash, stored| {
                let event: E =
                    postcard::from_bytes(&envelope.payload).map_err(|e| Error::Corrupt {
                        path: self.dir().join(crate::store::DB_FILE),
                        seq,
                        problem: Problem::Undecodable(format!("payload: {e}")),
                    })?;
                emit(&line_of(&envelope, hash, to_json(&event), stored))?;
                head = Head { len: seq + 1, hash };
                Ok(())
            })
        };
        match format {
            Format::Jsonl => visit(&mut |line| {
                let text = serde_json::to_string(line).map_err(|e| export_err(line.seq, e))?;
                writeln!(out, "{text}").map_err(write_err)
            })?,
            Format::Csv => {
                let mut writer = csv::Writer::from_writer(&mut *out);
                // The header goes out even for an empty journal.
                writer.write_record(CsvRow::HEADER).map_err(|e| export_err(0, e))?;
                let mut writer = CsvOut { writer };
                visit(&mut |line| writer.row(line))?;
                writer.writer.flush().map_err(write_err)?;
            }
        }
        out.flush().map_err(write_err)?;
        Ok(head)
    }
}

fn export_err(seq: u64, e: impl std::fmt::Display) -> Error {
    Error::Export { path: PathBuf::from("-"), line: seq + 1, detail: e.to_string() }
}

fn line_of(envelope: &Envelope, hash: Hash, event: serde_json::Value, stored: &[u8]) -> ExportLine {
    ExportLine {
        seq: envelope.seq,
        time: envelope.recorded_at().to_string(),
        actor: envelope.actor.to_string(),
        schema: envelope.schema,
        prev_hash: envelope.prev_hash.to_hex(),
        hash: hash.to_hex(),
        event,
        record: hex::encode(stored),
    }
}

/// The CSV shape of a line: the event as compact JSON text.
#[derive(Debug, Serialize, Deserialize)]
struct CsvRow {
    seq: u64,
    time: String,
    actor: String,
    schema: u16,
    prev_hash: String,
    hash: String,
    event: String,
    record: String,
}

/// A CSV writer whose header is written by hand (so an empty journal still has one).
struct CsvOut<W: Write> {
    writer: csv::Writer<W>,
}

impl<W: Write> CsvOut<W> {
    fn row(&mut self, line: &ExportLine) -> Result<()> {
        let r = CsvRow::from(line);
        let schema = r.schema.to_string();
        let seq = r.seq.to_string();
        self.writer
            .write_record([
                &seq,
                &r.time,
                &r.actor,
                &schema,
                &r.prev_hash,
                &r.hash,
                &r.event,
                &r.record,
            ])
            .map_err(|e| export_err(line.seq, e))
    }
}

impl CsvRow {
    const HEADER: [&'static str; 8] =
        ["seq", "time", "actor", "schema", "prev_hash", "hash", "event", "record"];
}

impl From<&ExportLine> for CsvRow {
    fn from(l: &ExportLine) -> Self {
        CsvRow {
            seq: l.seq,
            time: l.time.clone(),
            actor: l.actor.clone(),
            schema: l.schema,
            prev_hash: l.prev_hash.clone(),
            hash: l.hash.clone(),
            event: l.event.to_string(),
            record: l.record.clone(),
        }
    }
}

/// Verifies an export on its own: the hash chain over the stored bytes, gap-free sequence, and
/// that every readable column (time, actor, hashes, the event's JSON) matches the stored bytes.
///
/// `name` is used in errors (the file name, or "-"). Returns the head of the exported chain.
pub fn verify_export<E: DeserializeOwned>(
    reader: impl BufRead,
    format: Format,
    name: &str,
    to_json: &dyn Fn(&E) -> serde_json::Value,
) -> Result<Head> {
    let path = PathBuf::from(name);
    let mut lines: Vec<(u64, ExportLine)> = Vec::new();
    match format {
        Format::Jsonl => {
            for (i, text) in reader.lines().enumerate() {
                let number = i as u64 + 1;
                let text = text.map_err(|e| Error::Io {
                    path: path.clone(),
                    action: "read export",
                    source: e,
                })?;
                if text.trim().is_empty() {
                    continue;
                }
                let line = serde_json::from_str(&text).map_err(|e| Error::Export {
                    path: path.clone(),
                    line: number,
                    detail: format!("not an export line: {e}"),
                })?;
                lines.push((number, line));
            }
        }
        Format::Csv => {
            let mut rdr = csv::Reader::from_reader(reader);
            for (i, row) in rdr.deserialize::<CsvRow>().enumerate() {
                let number = i as u64 + 2; // after the header
                let row = row.map_err(|e| Error::Export {
                    path: path.clone(),
                    line: number,
                    detail: format!("not an export row: {e}"),
                })?;
                let event = serde_json::from_str(&row.event).map_err(|e| Error::Export {
                    path: path.clone(),
                    line: number,
                    detail: format!("event column is not JSON: {e}"),
                })?;
                lines.push((
                    number,
                    ExportLine {
                        seq: row.seq,
                        time: row.time,
                        actor: row.actor,
                        schema: row.schema,
                        prev_hash: row.prev_hash,
                        hash: row.hash,
                        event,
                        record: row.record,
                    },
                ));
            }
        }
    }
    let mut prev = GENESIS;
    let mut len = 0u64;
    for (expected, (number, line)) in lines.into_iter().enumerate() {
        let expected = expected as u64;
        let corrupt = |problem| Error::Corrupt { path: path.clone(), seq: line.seq, problem };
        let mismatch = |what: &str| Error::Export {
            path: path.clone(),
            line: number,
            detail: format!(
                "record {}: the {what} column does not match the stored record",
                line.seq
            ),
        };
        if line.seq != expected {
            return Err(Error::Corrupt {
                path: path.clone(),
                seq: expected,
                problem: Problem::Gap { expected, found: line.seq },
            });
        }
        let stored = hex::decode(&line.record).map_err(|_| mismatch("record"))?;
        let hash = Hash::from_hex(&line.hash).ok_or_else(|| mismatch("hash"))?;
        if Hash::chain(&prev, &stored) != hash {
            return Err(corrupt(Problem::HashMismatch));
        }
        let envelope = Envelope::decode(&stored).map_err(corrupt)?;
        if envelope.seq != line.seq {
            return Err(corrupt(Problem::Reordered { key: line.seq, inner: envelope.seq }));
        }
        if envelope.prev_hash.to_hex() != line.prev_hash {
            return Err(mismatch("prev_hash"));
        }
        if envelope.recorded_at().to_string() != line.time {
            return Err(mismatch("time"));
        }
        if envelope.actor.to_string() != line.actor {
            return Err(mismatch("actor"));
        }
        if envelope.schema != line.schema {
            return Err(mismatch("schema"));
        }
        let event: E = postcard::from_bytes(&envelope.payload)
            .map_err(|e| corrupt(Problem::Undecodable(format!("payload: {e}"))))?;
        if to_json(&event) != line.event {
            return Err(mismatch("event"));
        }
        prev = hash;
        len += 1;
    }
    Ok(Head { len, hash: prev })
}
