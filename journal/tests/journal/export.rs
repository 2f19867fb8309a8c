//! Exports in JSON Lines and CSV, verified on their own; edits to an export are found.

use crate::util::{Ev, open, to_json};
use journal::{Error, Format, verify_export};

fn journal_with_steps(dir: &std::path::Path) -> journal::Head {
    let mut j = open(dir);
    j.append(&Ev::Note("plan recorded".into())).unwrap();
    for id in 0..5 {
        j.append(&Ev::Step { id, attempt: 1 }).unwrap();
    }
    j.head()
}

fn export(dir: &std::path::Path, format: Format) -> String {
    let j = open(dir);
    let mut out = Vec::new();
    let head = j.export(&mut out, format, &to_json).unwrap();
    assert_eq!(head, j.head());
    String::from_utf8(out).unwrap()
}

fn check(text: &str, format: Format) -> Result<journal::Head, Error> {
    verify_export::<Ev>(text.as_bytes(), format, "export", &to_json)
}

#[test]
fn jsonl_export_carries_the_chain_and_verifies_alone() {
    let dir = tempfile::tempdir().unwrap();
    let head = journal_with_steps(dir.path());
    let text = export(dir.path(), Format::Jsonl);
    let lines: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 6);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["seq"], i as u64);
        for key in ["time", "actor", "hash", "prev_hash", "record"] {
            assert!(line[key].is_string(), "line {i} lacks {key}");
        }
    }
    assert_eq!(lines[2]["event"], serde_json::json!({"Step": {"id": 1, "attempt": 1}}));
    assert_eq!(lines[1]["prev_hash"], lines[0]["hash"]);
    assert_eq!(check(&text, Format::Jsonl).unwrap(), head);
}

#[test]
fn csv_export_verifies_alone() {
    let dir = tempfile::tempdir().unwrap();
    let head = journal_with_steps(dir.path());
    let text = export(dir.path(), Format::Csv);
    assert!(text.starts_with("seq,time,actor,schema,prev_hash,hash,event,record\n"), "{text}");
    assert_eq!(text.lines().count(), 7);
    assert_eq!(check(&text, Format::Csv).unwrap(), head);
}

#[test]
fn an_empty_journal_exports_an_empty_verifiable_chain() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let csv = export(dir.path(), Format::Csv);
    assert_eq!(csv.lines().count(), 1);
    assert_eq!(check(&csv, Format::Csv).unwrap().len, 0);
    assert_eq!(export(dir.path(), Format::Jsonl), "");
}

#[test]
fn an_edited_event_in_an_export_is_found() {
    let dir = tempfile::tempdir().unwrap();
    journal_with_steps(dir.path());
    let text = export(dir.path(), Format::Jsonl);
    let edited = text.replacen("\"attempt\":1", "\"attempt\":2", 2);
    let err = check(&edited, Format::Jsonl).unwrap_err();
    assert!(err.to_string().contains("event column"), "{err}");
    assert!(err.to_string().contains("line 2"), "{err}");
}

#[test]
fn an_edited_time_or_record_in_an_export_is_found() {
    let dir = tempfile::tempdir().unwrap();
    journal_with_steps(dir.path());
    let text = export(dir.path(), Format::Csv);
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    // Change the time column of row 3 (line 4 of the file).
    let mut fields: Vec<String> = lines[3].split(',').map(String::from).collect();
    fields[1] = "2020-01-01T00:00:00Z".into();
    lines[3] = fields.join(",");
    let err = check(&(lines.join("\n") + "\n"), Format::Csv).unwrap_err();
    assert!(err.to_string().contains("time column"), "{err}");

    // Flip a hex digit of the stored record bytes of line 2.
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let last = lines[2].pop().unwrap();
    lines[2].push(if last == '0' { '1' } else { '0' });
    let err = check(&(lines.join("\n") + "\n"), Format::Csv).unwrap_err();
    assert!(matches!(err, Error::Corrupt { seq: 1, .. }), "{err}");
}

#[test]
fn a_deleted_or_reordered_export_line_is_found() {
    let dir = tempfile::tempdir().unwrap();
    journal_with_steps(dir.path());
    let text = export(dir.path(), Format::Jsonl);
    let lines: Vec<&str> = text.lines().collect();

    let mut deleted = lines.clone();
    deleted.remove(3);
    let err = check(&deleted.join("\n"), Format::Jsonl).unwrap_err();
    assert!(matches!(err, Error::Corrupt { seq: 3, .. }), "{err}");

    let mut swapped = lines.clone();
    swapped.swap(2, 3);
    let err = check(&swapped.join("\n"), Format::Jsonl).unwrap_err();
    assert!(matches!(err, Error::Corrupt { seq: 2, .. }), "{err}");
}
