//! Tidy: the rules of CONTRIBUTING.md and ARCHITECTURE.md that a machine can check, checked on
//! the whole workspace in `make test` (the shape of rust-analyzer's `xtask/src/tidy.rs`).
//!
//! Each rule is a function from in-memory inputs (a file's text, ARCHITECTURE.md, the output of
//! `cargo metadata`) to the problems it finds, each naming a file and a line; the workspace tests
//! at the top run them on the checkout, and the unit tests at the bottom show that each one fires.
//! The rules:
//! - every `.rs` file (outside `target/`) opens with a `//!` line saying what it is for;
//! - every `#[allow(..)]`/`#![allow(..)]` has a comment saying why, on its line or the line before;
//! - `anyhow` only in the crates ARCHITECTURE.md's crate table allows it in (the binary and the
//!   test support): the libraries return typed errors;
//! - a dependency between workspace crates only where that table allows it (from `cargo
//!   metadata`), so the doc and the build cannot disagree;
//! - no line that rustfmt cannot bring under `max_width`: a line of code that rustfmt leaves too
//!   long is one where it gave up (often on a whole statement or macro call), so nothing around
//!   it is formatted either. As rustfmt's own `error_on_line_overflow` does, comments and lines
//!   with a string literal are not counted: rustfmt never breaks those.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::BTreeSet;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// The rules on the workspace.

#[test]
fn every_rust_file_opens_with_a_doc_line() {
    let problems = sources().iter().filter_map(|s| missing_doc_line(&s.path, &s.text)).collect();
    report("a `.rs` file must open with a `//!` line saying what it is for", problems);
}

#[test]
fn every_allow_says_why() {
    let problems = sources().iter().flat_map(|s| allows_without_why(&s.path, &s.text)).collect();
    report(
        "an `allow` needs a comment saying why, at the end of its line or on the line before",
        problems,
    );
}

#[test]
fn anyhow_only_where_architecture_md_allows_it() {
    let table = crate_table(&architecture_md()).unwrap();
    let metadata = cargo_metadata();
    let mut problems = anyhow_dependencies(&table, &metadata, &read_manifest);
    let banned: Vec<PathBuf> = table
        .iter()
        .filter(|row| !row.anyhow)
        .map(|row| PathBuf::from(row.directory.trim_end_matches('/')))
        .collect();
    for s in sources() {
        if banned.iter().any(|dir| s.path.starts_with(dir)) {
            problems.extend(anyhow_uses(&s.path, &s.text));
        }
    }
    report(
        "`anyhow` outside the crates that ARCHITECTURE.md's crate table allows it in \
         (libraries return typed errors, `thiserror`)",
        problems,
    );
}

#[test]
fn crate_dependencies_follow_architecture_md() {
    let table = crate_table(&architecture_md()).unwrap();
    let problems = dependency_problems(&table, &cargo_metadata(), &read_manifest);
    report("the workspace's crates and ARCHITECTURE.md's crate table disagree", problems);
}

#[test]
fn rustfmt_can_format_every_line() {
    let max_width = max_width(&std::fs::read_to_string(root().join("rustfmt.toml")).unwrap());
    let files = sources();
    // rustfmt takes tens of milliseconds a file: two workers halve the wait on a busy machine.
    let (left, right) = files.split_at(files.len() / 2);
    let check = |part: &[Source]| -> Vec<Problem> {
        part.iter()
            .flat_map(|s| match rustfmt(&s.text) {
                Ok(formatted) => overflowing_lines(&s.path, &s.text, &formatted, max_width),
                Err(error) => vec![Problem::new(&s.path, 1, format!("rustfmt failed: {error}"))],
            })
            .collect()
    };
    let problems = std::thread::scope(|scope| {
        let other = scope.spawn(|| check(right));
        let mut problems = check(left);
        problems.extend(other.join().unwrap());
        problems
    });
    report(
        &format!(
            "rustfmt leaves these lines of code over max_width = {max_width} (it gave up on \
             them): shorten them, e.g. name a sub-expression or move a long match arm into a \
             function"
        ),
        problems,
    );
}

// ---------------------------------------------------------------------------------------------
// The workspace: its files, ARCHITECTURE.md, cargo metadata, rustfmt.

/// A rule broken at a place: a path relative to the workspace root and a 1-based line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Problem {
    path: PathBuf,
    line: usize,
    what: String,
}

impl Problem {
    fn new(path: &Path, line: usize, what: impl Into<String>) -> Problem {
        Problem { path: path.to_owned(), line, what: what.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.what)
    }
}

/// Fails the test with every problem, one `file:line: what` a line, under what the rule is.
fn report(rule: &str, mut problems: Vec<Problem>) {
    problems.sort();
    let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
    assert!(problems.is_empty(), "{rule}:\n{}\n", list.join("\n"));
}

fn root() -> PathBuf {
    // This package is `tests/` in the workspace.
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// A `.rs` file of the workspace, its path relative to the root.
struct Source {
    path: PathBuf,
    text: String,
}

/// Every `.rs` file under the root except in `target/` and hidden directories (`.git`).
fn sources() -> Vec<Source> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Source>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type().unwrap().is_dir() {
                if name != "target" && !name.starts_with('.') {
                    walk(root, &path, out);
                }
            } else if name.ends_with(".rs") {
                // A file deleted between the listing and the read is not ours to judge.
                if let Ok(text) = std::fs::read_to_string(&path) {
                    let relative = path.strip_prefix(root).unwrap().to_owned();
                    out.push(Source { path: relative, text });
                }
            }
        }
    }
    let root = root();
    let mut out = Vec::new();
    walk(&root, &root, &mut out);
    out.sort_by(|a, b| a.path.cmp(&b.path));
    assert!(out.len() > 20, "the walk found only {} .rs files under {}", out.len(), root.display());
    out
}

fn architecture_md() -> String {
    std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap()
}

fn cargo_metadata() -> Value {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--locked"])
        .current_dir(root())
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A manifest's text, by the absolute path `cargo metadata` gives.
fn read_manifest(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// `text` as rustfmt formats it with the workspace's rustfmt.toml. From stdin, so that rustfmt
/// formats this one file and not the modules it declares.
fn rustfmt(text: &str) -> Result<String, String> {
    let mut child = Command::new("rustfmt")
        .arg("--config-path")
        .arg(root().join("rustfmt.toml"))
        .args(["--emit", "stdout"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run rustfmt: {e}"))?;
    let mut stdin = child.stdin.take().unwrap();
    let input = text.to_owned();
    // Written from a thread: rustfmt may fill its stdout pipe before it has read all its input.
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    writer.join().unwrap().map_err(|e| format!("writing to rustfmt: {e}"))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(stderr.lines().take(6).collect::<Vec<_>>().join(" / "));
    }
    String::from_utf8(out.stdout).map_err(|e| e.to_string())
}

/// `max_width` from rustfmt.toml's text (rustfmt's default, 100, when it is not set).
fn max_width(rustfmt_toml: &str) -> usize {
    rustfmt_toml
        .lines()
        .filter_map(|line| line.split_once('='))
        .find(|(key, _)| key.trim() == "max_width")
        .map(|(_, value)| value.trim().parse().unwrap())
        .unwrap_or(100)
}

// ---------------------------------------------------------------------------------------------
// A line-level view of Rust source: enough of a lexer to tell code from comments and literals.

/// The kind of comment on a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Comment {
    /// `//` or `/* */`: a note to the reader, where a "why" goes.
    Plain,
    /// `///`, `//!`, `/** */`, `/*! */`: documentation of an item.
    Doc,
}

/// One line of source.
#[derive(Debug, Default, Clone)]
struct Line {
    /// The line's code: comments removed, the contents of string and char literals removed
    /// (their quotes kept), so that a rule never matches text inside a literal.
    code: String,
    /// The first comment on the line, if any (a line inside a block comment has that one).
    comment: Option<Comment>,
    /// Whether part of the line is a string or char literal.
    literal: bool,
    /// Whether the line ends inside a comment (a `//` comment, or an open block comment).
    ends_in_comment: bool,
    /// Its width in characters, as rustfmt counts it (a tab is four).
    width: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Lex {
    Code,
    LineComment,
    BlockComment { depth: usize },
    Str,
    RawStr { hashes: usize },
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Splits `text` into lines and classifies each.
fn lex(text: &str) -> Vec<Line> {
    let chars: Vec<char> = text.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let mut lines = Vec::new();
    let mut line = Line::default();
    let mut state = Lex::Code;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line.ends_in_comment = matches!(state, Lex::LineComment | Lex::BlockComment { .. });
            lines.push(std::mem::take(&mut line));
            match state {
                Lex::LineComment => state = Lex::Code,
                Lex::Str | Lex::RawStr { .. } => line.literal = true,
                Lex::BlockComment { .. } => line.comment = lines.last().and_then(|l| l.comment),
                Lex::Code => {}
            }
            i += 1;
            continue;
        }
        line.width += if c == '\t' { 4 } else { 1 };
        match state {
            Lex::Code => {
                if c == '/' && at(i + 1) == '/' {
                    state = Lex::LineComment;
                    // `///` and `//!` document; `////` is a plain comment again.
                    let doc = (at(i + 2) == '/' && at(i + 3) != '/') || at(i + 2) == '!';
                    line.comment.get_or_insert(if doc { Comment::Doc } else { Comment::Plain });
                    i += 2;
                    line.width += 1;
                    continue;
                }
                if c == '/' && at(i + 1) == '*' {
                    state = Lex::BlockComment { depth: 1 };
                    let doc = at(i + 2) == '!' || (at(i + 2) == '*' && !"*/".contains(at(i + 3)));
                    line.comment.get_or_insert(if doc { Comment::Doc } else { Comment::Plain });
                    i += 2;
                    line.width += 1;
                    continue;
                }
                if c == '"' {
                    state = Lex::Str;
                    line.literal = true;
                    line.code.push('"');
                } else if c == 'r' && !is_ident(at(i.wrapping_sub(1))) || {
                    // `br"..."` and `cr"..."`: the prefix letter is not an identifier's end.
                    c == 'r'
                        && "bc".contains(at(i.wrapping_sub(1)))
                        && !is_ident(at(i.wrapping_sub(2)))
                } {
                    let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
                    if at(i + 1 + hashes) == '"' {
                        state = Lex::RawStr { hashes };
                        line.literal = true;
                        line.code.push('"');
                        line.width += hashes + 1;
                        i += hashes + 2;
                        continue;
                    }
                    line.code.push(c);
                } else if c == '\''
                    && (at(i + 1) == '\\' || (at(i + 2) == '\'' && at(i + 1) != '\n'))
                {
                    // A char literal ('x', '\n', '\u{1F600}'); a lone quote is a lifetime or label.
                    let mut end = i + 2;
                    if at(i + 1) == '\\' {
                        end = i + 3;
                        while end < chars.len() && chars[end] != '\'' && chars[end] != '\n' {
                            end += 1;
                        }
                    }
                    line.literal = true;
                    line.code.push_str("''");
                    line.width += end - i;
                    i = end + 1;
                    continue;
                } else {
                    line.code.push(c);
                }
            }
            Lex::LineComment => {}
            Lex::BlockComment { depth } => {
                if c == '*' && at(i + 1) == '/' {
                    state =
                        if depth == 1 { Lex::Code } else { Lex::BlockComment { depth: depth - 1 } };
                    line.width += 1;
                    i += 2;
                    continue;
                }
                if c == '/' && at(i + 1) == '*' {
                    state = Lex::BlockComment { depth: depth + 1 };
                    line.width += 1;
                    i += 2;
                    continue;
                }
            }
            Lex::Str => {
                line.literal = true;
                if c == '\\' && at(i + 1) != '\n' {
                    line.width += 1;
                    i += 2;
                    continue;
                }
                if c == '"' {
                    state = Lex::Code;
                    line.code.push('"');
                }
            }
            Lex::RawStr { hashes } => {
                line.literal = true;
                if c == '"' && (1..=hashes).all(|k| at(i + k) == '#') {
                    state = Lex::Code;
                    line.code.push('"');
                    line.width += hashes;
                    i += hashes + 1;
                    continue;
                }
            }
        }
        i += 1;
    }
    if !text.is_empty() && !text.ends_with('\n') {
        line.ends_in_comment = matches!(state, Lex::LineComment | Lex::BlockComment { .. });
        lines.push(line);
    }
    lines
}

// ---------------------------------------------------------------------------------------------
// The rules, on in-memory inputs.

/// A file whose first non-blank line is not a `//!` line.
fn missing_doc_line(path: &Path, text: &str) -> Option<Problem> {
    let (n, first) =
        text.lines().enumerate().find(|(_, l)| !l.trim().is_empty()).unwrap_or((0, ""));
    (!first.starts_with("//!"))
        .then(|| Problem::new(path, n + 1, "no `//!` line at the top saying what the file is for"))
}

/// An `allow` attribute (also inside `cfg_attr`) with no comment on its line and no plain
/// comment on the line before. A doc comment before it documents the item, not the `allow`.
fn allows_without_why(path: &Path, text: &str) -> Vec<Problem> {
    let lines = lex(text);
    let mut problems = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let code: String = line.code.chars().filter(|c| !c.is_whitespace()).collect();
        let allow = code.contains("#[allow(")
            || code.contains("#![allow(")
            || (code.contains("cfg_attr(") && code.contains("allow("));
        if !allow {
            continue;
        }
        let before = n.checked_sub(1).map(|b| &lines[b]);
        let why_before =
            before.is_some_and(|b| b.code.trim().is_empty() && b.comment == Some(Comment::Plain));
        if line.comment.is_none() && !why_before {
            problems.push(Problem::new(path, n + 1, "an `allow` without a comment saying why"));
        }
    }
    problems
}

/// Every line whose code names `anyhow` (a `use`, a path, a macro), comments and literals aside.
fn anyhow_uses(path: &Path, text: &str) -> Vec<Problem> {
    let names_anyhow = |code: &str| {
        code.match_indices("anyhow").any(|(at, word)| {
            let before = code[..at].chars().next_back().is_some_and(is_ident);
            let after = code[at + word.len()..].chars().next().is_some_and(is_ident);
            !before && !after
        })
    };
    lex(text)
        .iter()
        .enumerate()
        .filter(|(_, line)| names_anyhow(&line.code))
        .map(|(n, _)| Problem::new(path, n + 1, "`anyhow` in a crate that returns typed errors"))
        .collect()
}

/// Lines of `formatted` (rustfmt's output for `original`) over `max_width` that are code: not
/// ending in a comment and holding no literal, as rustfmt's `error_on_line_overflow` counts.
/// Each is reported at its line in `original` (the same line when the file is formatted).
fn overflowing_lines(
    path: &Path,
    original: &str,
    formatted: &str,
    max_width: usize,
) -> Vec<Problem> {
    let formatted_text: Vec<&str> = formatted.lines().collect();
    lex(formatted)
        .iter()
        .enumerate()
        .filter(|(_, line)| line.width > max_width && !line.ends_in_comment && !line.literal)
        .map(|(n, line)| {
            let text = formatted_text[n].trim();
            // The same line when the file is formatted; else the original line rustfmt moved
            // it out of (it put a `{` or an operand on the next line).
            let exact = original.lines().position(|o| o.trim() == text);
            match exact.or_else(|| original.lines().position(|o| o.contains(text))) {
                Some(at) => Problem::new(path, at + 1, format!("{} characters", line.width)),
                None => Problem::new(
                    path,
                    n + 1,
                    format!("{} characters (line {} of rustfmt's output)", line.width, n + 1),
                ),
            }
        })
        .collect()
}

/// A row of ARCHITECTURE.md's crate table.
#[derive(Debug, Clone, PartialEq, Eq)]
struct CrateRow {
    /// The package name.
    name: String,
    /// Its directory, relative to the workspace root, with a trailing `/`.
    directory: String,
    /// The workspace crates it may depend on (any kind of dependency).
    may_depend_on: BTreeSet<String>,
    /// Whether it may use `anyhow`.
    anyhow: bool,
    /// Its line in ARCHITECTURE.md.
    line: usize,
}

/// The header of the table `crate_table` reads.
const TABLE_HEADER: [&str; 4] = ["crate", "directory", "may depend on", "may use `anyhow`"];

/// Reads the crate table of ARCHITECTURE.md: the Markdown table with the header
/// `| crate | directory | may depend on | may use `anyhow` |`.
fn crate_table(markdown: &str) -> Result<Vec<CrateRow>, String> {
    let cells = |line: &str| -> Vec<String> {
        let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
        inner.split('|').map(|c| c.trim().to_owned()).collect()
    };
    let lines: Vec<&str> = markdown.lines().collect();
    let header = lines
        .iter()
        .position(|l| l.trim_start().starts_with('|') && cells(l) == TABLE_HEADER)
        .ok_or_else(|| {
            format!("ARCHITECTURE.md has no table headed {}", TABLE_HEADER.join(" | "))
        })?;
    let mut rows = Vec::new();
    for (n, line) in lines.iter().enumerate().skip(header + 2) {
        if !line.trim_start().starts_with('|') {
            break;
        }
        let unquote = |cell: &str| cell.replace('`', "");
        let row = cells(line);
        let [name, directory, deps, anyhow] = row.as_slice() else {
            return Err(format!("ARCHITECTURE.md:{}: a crate row has four cells", n + 1));
        };
        let may_depend_on = unquote(deps)
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty() && *d != "nothing")
            .map(str::to_owned)
            .collect();
        let anyhow = match anyhow.split([':', ' ']).next() {
            Some("yes") => true,
            Some("no") => false,
            _ => return Err(format!("ARCHITECTURE.md:{}: `may use anyhow` is yes or no", n + 1)),
        };
        rows.push(CrateRow {
            name: unquote(name),
            directory: unquote(directory),
            may_depend_on,
            anyhow,
            line: n + 1,
        });
    }
    if rows.is_empty() {
        return Err(format!("ARCHITECTURE.md:{}: the crate table has no rows", header + 1));
    }
    Ok(rows)
}

/// A package of `cargo metadata`: its name, its directory relative to `root`, its manifest
/// (absolute) and its dependencies (name, kind).
struct Package {
    name: String,
    directory: String,
    manifest: PathBuf,
    dependencies: Vec<(String, String)>,
}

fn packages(metadata: &Value) -> (PathBuf, Vec<Package>) {
    let root = PathBuf::from(metadata["workspace_root"].as_str().unwrap());
    let packages = metadata["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let manifest = PathBuf::from(p["manifest_path"].as_str().unwrap());
            let dir = manifest.parent().unwrap().strip_prefix(&root).unwrap();
            let dependencies = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| {
                    let kind = d["kind"].as_str().unwrap_or("normal").to_owned();
                    (d["name"].as_str().unwrap().to_owned(), kind)
                })
                .collect();
            Package {
                name: p["name"].as_str().unwrap().to_owned(),
                directory: format!("{}/", dir.display()),
                manifest,
                dependencies,
            }
        })
        .collect();
    (root, packages)
}

/// The line of `manifest` that declares dependency `name` (1 when it cannot be found).
fn dependency_line(manifest: &str, name: &str) -> usize {
    manifest
        .lines()
        .position(|l| {
            let l = l.trim_start().trim_start_matches('"');
            l.strip_prefix(name).is_some_and(|rest| rest.starts_with(['.', ' ', '=', '"']))
        })
        .map_or(1, |n| n + 1)
}

/// A package of the workspace missing from the table or in another directory, a row naming no
/// package, and a dependency between workspace crates that the table does not allow.
fn dependency_problems(
    table: &[CrateRow],
    metadata: &Value,
    read: &dyn Fn(&Path) -> String,
) -> Vec<Problem> {
    let (root, packages) = packages(metadata);
    let doc = Path::new("ARCHITECTURE.md");
    let names: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let mut problems = Vec::new();
    for row in table.iter().filter(|row| !names.contains(row.name.as_str())) {
        let what = format!("the crate table names `{}`, which is not a workspace member", row.name);
        problems.push(Problem::new(doc, row.line, what));
    }
    for package in &packages {
        let manifest = package.manifest.strip_prefix(&root).unwrap_or(&package.manifest);
        let Some(row) = table.iter().find(|row| row.name == package.name) else {
            let what = format!("workspace member `{}` has no row in the crate table", package.name);
            problems.push(Problem::new(doc, 1, what));
            continue;
        };
        if row.directory != package.directory {
            let what = format!(
                "`{}` is in `{}`, the crate table says `{}`",
                package.name, package.directory, row.directory
            );
            problems.push(Problem::new(doc, row.line, what));
        }
        let text = read(&package.manifest);
        for (dependency, kind) in &package.dependencies {
            if names.contains(dependency.as_str()) && !row.may_depend_on.contains(dependency) {
                let what = format!(
                    "`{}` depends on `{dependency}` ({kind}), against the direction of \
                     ARCHITECTURE.md's crate table (line {})",
                    package.name, row.line
                );
                problems.push(Problem::new(manifest, dependency_line(&text, dependency), what));
            }
        }
    }
    problems
}

/// A dependency on `anyhow` (of any kind) of a crate whose row says it may not use it.
fn anyhow_dependencies(
    table: &[CrateRow],
    metadata: &Value,
    read: &dyn Fn(&Path) -> String,
) -> Vec<Problem> {
    let (root, packages) = packages(metadata);
    let mut problems = Vec::new();
    for package in &packages {
        let banned = table.iter().any(|row| row.name == package.name && !row.anyhow);
        let uses = package.dependencies.iter().find(|(name, _)| name == "anyhow");
        if let (true, Some((_, kind))) = (banned, uses) {
            let manifest = package.manifest.strip_prefix(&root).unwrap_or(&package.manifest);
            let line = dependency_line(&read(&package.manifest), "anyhow");
            let what = format!("`{}` depends on `anyhow` ({kind})", package.name);
            problems.push(Problem::new(manifest, line, what));
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// Each rule fires: the rules on small inputs.

mod rules {
    use super::*;

    fn p(text: &str) -> Vec<usize> {
        allows_without_why(Path::new("x.rs"), text).iter().map(|p| p.line).collect()
    }

    #[test]
    fn a_file_without_a_doc_line_at_its_top_is_named() {
        let path = Path::new("engine/src/x.rs");
        let problem = missing_doc_line(path, "\nuse std::fs;\n//! too late\n").unwrap();
        assert_eq!((problem.path.as_path(), problem.line), (path, 2));
        assert!(problem.to_string().starts_with("engine/src/x.rs:2: "), "{problem}");
        assert!(missing_doc_line(path, "/// an item's doc\nfn f() {}\n").is_some());
        assert!(missing_doc_line(path, "").is_some());
        assert_eq!(missing_doc_line(path, "//! What it is for.\nfn f() {}\n"), None);
        assert_eq!(missing_doc_line(path, "\n//! After a blank line.\n"), None);
    }

    #[test]
    fn an_allow_without_a_why_is_named_and_one_with_a_why_is_not() {
        let attr = "#[allow(dead_code)]";
        let inner = "#![allow(clippy::unwrap_used)]";
        assert_eq!(p(&format!("//! f\n\n{attr}\nfn f() {{}}\n")), vec![3]);
        assert_eq!(p(&format!("{inner}\n")), vec![1]);
        assert_eq!(p("#[cfg_attr(test, allow(dead_code))]\n"), vec![1]);
        assert_eq!(p("#[ allow ( dead_code ) ]\nfn f() {}\n"), vec![1]);
        // A doc comment before it documents the item, not the allow.
        assert_eq!(p(&format!("/// The thing.\n{attr}\nfn f() {{}}\n")), vec![2]);
        // A comment two lines up is about something else.
        assert_eq!(p(&format!("// why\n\n{attr}\n")), vec![3]);
        // Why, on the line or the line before, as a line or a block comment.
        assert!(p(&format!("{attr} // used by the other binary only\n")).is_empty());
        assert!(p(&format!("// The other binary uses it.\n{attr}\n")).is_empty());
        assert!(p(&format!("/* the other binary */ {inner}\n")).is_empty());
        // Text inside a literal or a comment is not an attribute.
        assert!(p(&format!("let s = \"{attr}\";\n")).is_empty());
        assert!(p(&format!("// {attr}\n")).is_empty());
        assert!(p(&format!("let s = r#\"\n{attr}\n\"#;\n")).is_empty());
    }

    #[test]
    fn anyhow_in_code_is_named_but_not_in_comments_literals_or_other_words() {
        let lines = |text: &str| -> Vec<usize> {
            anyhow_uses(Path::new("journal/src/x.rs"), text).iter().map(|p| p.line).collect()
        };
        let text = "//! anyhow is for binaries\nuse anyhow::Context;\nfn f() {}\n\
                    fn g() -> anyhow::Result<()> { anyhow::bail!(\"no\") }\n";
        assert_eq!(lines(text), vec![2, 4]);
        assert_eq!(lines("let e = anyhow!(\"x\");\n"), vec![1]);
        assert!(lines("// anyhow::Result would hide the type\n").is_empty());
        assert!(lines("let s = \"anyhow::Error\";\n").is_empty());
        assert!(lines("let not_anyhow = anyhow_like;\n").is_empty());
    }

    #[test]
    fn the_lexer_tells_code_from_comments_and_literals() {
        let text = "let a = 1; // note\n/* open\nstill comment */ let b = 'x';\n\
                    let c = \"multi\nline\";\n/// doc\nfn f<'a>(x: &'a str) {}\nlet d = br##\"\"#\"##;\n";
        let lines = lex(text);
        assert_eq!(lines.len(), 8);
        assert_eq!((lines[0].code.trim(), lines[0].comment), ("let a = 1;", Some(Comment::Plain)));
        assert!(lines[0].ends_in_comment && !lines[0].literal);
        assert!(lines[1].ends_in_comment && lines[1].code.is_empty());
        assert!(!lines[2].ends_in_comment && lines[2].literal);
        assert_eq!(lines[2].code.trim(), "let b = '';");
        assert!(lines[3].literal && lines[4].literal);
        assert_eq!(lines[5].comment, Some(Comment::Doc));
        assert_eq!(lines[6].code, "fn f<'a>(x: &'a str) {}");
        assert!(!lines[6].literal);
        assert_eq!(lines[7].code, "let d = b\"\";");
        assert!(lines[7].literal);
        assert_eq!(lines[0].width, "let a = 1; // note".len());
        assert_eq!(lines[7].width, "let d = br##\"\"#\"##;".len());
    }

    #[test]
    fn a_line_rustfmt_leaves_too_long_is_named_and_one_it_breaks_is_not() {
        let path = Path::new("cli/src/x.rs");
        let long_name = format!("fn {}() {{}}", "a_name_longer_than_the_width".repeat(4));
        let breakable =
            format!("fn f() {{ g({}); }}", ["an_argument_of_some_length"; 6].join(", "));
        let comment = format!("// {}", "a comment nobody should break ".repeat(5));
        let string = format!("fn f() {{ g(\"{}\"); }}", "a string rustfmt never splits ".repeat(5));
        let original = [
            "//! x".to_owned(),
            long_name.clone(),
            breakable,
            comment,
            string,
            "fn h() {}".to_owned(),
        ]
        .join("\n\n")
            + "\n";
        let formatted = rustfmt(&original).unwrap();
        let problems = overflowing_lines(path, &original, &formatted, 100);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!((problems[0].path.as_path(), problems[0].line), (path, 3));
        // rustfmt moved the `{}` to lines of their own, and left the rest too long.
        let width = long_name.len() - " {}".len();
        assert!(problems[0].what.contains(&format!("{width} characters")), "{problems:?}");
        // Under a wider max_width, nothing.
        assert!(overflowing_lines(path, &original, &formatted, 200).is_empty());
    }

    #[test]
    fn a_file_rustfmt_cannot_parse_is_an_error() {
        assert!(rustfmt("fn f( {\n").is_err());
    }

    #[test]
    fn max_width_is_read_from_rustfmt_toml() {
        assert_eq!(max_width("edition = \"2024\"\nmax_width = 120\n"), 120);
        assert_eq!(max_width("edition = \"2024\"\n"), 100);
    }

    const TABLE: &str = "# Architecture\n\n\
        | crate | directory | may depend on | may use `anyhow` |\n\
        |---|---|---|---|\n\
        | `journal` | `journal/` | nothing | no |\n\
        | `engine` | `engine/` | `journal` | no |\n\
        | `kubeca` | `cli/` | `engine`, `journal` | yes: the binary |\n\
        \nAfter the table.\n";

    /// A dependency in `metadata`: its name and kind (`None` for a normal one).
    type Dependency<'a> = (&'a str, Option<&'a str>);

    /// `cargo metadata` output for packages (name, directory, dependencies) under `/ws`.
    fn metadata(packages: &[(&str, &str, &[Dependency])]) -> Value {
        let packages: Vec<Value> = packages
            .iter()
            .map(|(name, dir, deps)| {
                let deps: Vec<Value> = deps
                    .iter()
                    .map(|(d, kind)| serde_json::json!({ "name": d, "kind": kind }))
                    .collect();
                let manifest = format!("/ws/{dir}/Cargo.toml");
                serde_json::json!({ "name": name, "manifest_path": manifest, "dependencies": deps })
            })
            .collect();
        serde_json::json!({ "workspace_root": "/ws", "packages": packages })
    }

    fn manifest(_: &Path) -> String {
        "[package]\nname = \"x\"\n\n[dependencies]\njournal.workspace = true\n\
         anyhow = \"1\"\n\n[dev-dependencies]\nkubeca = { path = \"../cli\" }\n"
            .to_owned()
    }

    #[test]
    fn the_crate_table_is_read() {
        let table = crate_table(TABLE).unwrap();
        let names: Vec<&str> = table.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["journal", "engine", "kubeca"]);
        assert!(table[0].may_depend_on.is_empty() && !table[0].anyhow);
        assert_eq!(table[2].directory, "cli/");
        assert_eq!(table[2].may_depend_on, ["engine", "journal"].map(str::to_owned).into());
        assert!(table[2].anyhow);
        assert_eq!(table[1].line, 6);
        assert!(crate_table("# No table here\n").is_err());
        assert!(crate_table(&TABLE.replace("| no |", "| maybe |")).is_err());
    }

    #[test]
    fn a_dependency_against_the_table_is_named_at_its_manifest_line() {
        let table = crate_table(TABLE).unwrap();
        let good = metadata(&[
            ("journal", "journal", &[("serde", None)]),
            ("engine", "engine", &[("journal", None)]),
            ("kubeca", "cli", &[("engine", None), ("journal", None), ("anyhow", None)]),
        ]);
        assert!(dependency_problems(&table, &good, &manifest).is_empty());
        assert!(anyhow_dependencies(&table, &good, &manifest).is_empty());

        // The engine's tests reaching up to the binary: against the direction.
        let upward = metadata(&[
            ("journal", "journal", &[]),
            ("engine", "engine", &[("journal", None), ("kubeca", Some("dev"))]),
            ("kubeca", "cli", &[("engine", None)]),
        ]);
        let problems = dependency_problems(&table, &upward, &manifest);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].path, Path::new("engine/Cargo.toml"));
        assert_eq!(problems[0].line, 9);
        assert!(problems[0].what.contains("`engine` depends on `kubeca` (dev)"), "{problems:?}");
    }

    #[test]
    fn a_crate_missing_from_the_table_or_moved_is_named() {
        let table = crate_table(TABLE).unwrap();
        let drifted = metadata(&[
            ("journal", "crates/journal", &[]),
            ("engine", "engine", &[("journal", None)]),
            ("actions", "actions", &[("engine", None)]),
        ]);
        let problems: Vec<String> = dependency_problems(&table, &drifted, &manifest)
            .iter()
            .map(|p| p.to_string())
            .collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("`kubeca`, which is not a workspace member")));
        assert!(problems.iter().any(|p| p.contains("`actions` has no row")));
        assert!(problems.iter().any(|p| p.starts_with("ARCHITECTURE.md:5: `journal` is in")));
    }

    #[test]
    fn anyhow_in_a_library_manifest_is_named() {
        let table = crate_table(TABLE).unwrap();
        let library = metadata(&[
            ("journal", "journal", &[("anyhow", Some("dev"))]),
            ("engine", "engine", &[("journal", None)]),
            ("kubeca", "cli", &[("anyhow", None)]),
        ]);
        let problems = anyhow_dependencies(&table, &library, &manifest);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "journal/Cargo.toml:6: `journal` depends on `anyhow` (dev)"
        );
    }
}
