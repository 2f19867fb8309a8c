//! The versioned record envelope, its postcard encoding and the hash chain over stored bytes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::Problem;

/// The envelope layout this build writes, and the newest it reads.
pub const SCHEMA_VERSION: u16 = 1;

/// The hash that precedes the first record.
pub const GENESIS: Hash = Hash([0; 32]);

/// A SHA-256 value.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Hash(pub [u8; 32]);

impl Hash {
    /// Lower-case hex.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(s: &str) -> Option<Hash> {
        let bytes = hex::decode(s).ok()?;
        Some(Hash(bytes.try_into().ok()?))
    }

    /// SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Hash {
        Hash(Sha256::digest(data).into())
    }

    /// The chain step: SHA-256 over the previous hash followed by the exact stored bytes.
    pub fn chain(prev: &Hash, stored: &[u8]) -> Hash {
        let mut h = Sha256::new();
        h.update(prev.0);
        h.update(stored);
        Hash(h.finalize().into())
    }
}

impl std::fmt::Debug for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_hex())
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// Who wrote a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    /// User name.
    pub user: String,
    /// Host name.
    pub host: String,
    /// Process id.
    pub pid: u32,
    /// Name and version of the writing tool, such as `kubeca 0.1.0`.
    pub tool: String,
}

impl Actor {
    /// This process, writing as `tool`.
    pub fn current(tool: impl Into<String>) -> Actor {
        Actor { user: user_name(), host: host_name(), pid: std::process::id(), tool: tool.into() }
    }
}

impl std::fmt::Display for Actor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{} pid {} ({})", self.user, self.host, self.pid, self.tool)
    }
}

/// What is stored for one record, before the chain hash. The field order is the wire format:
/// `schema` comes first so a newer layout is recognised before anything else is decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Layout version of this envelope.
    pub schema: u16,
    /// Position in the journal, from 0, gap-free.
    pub seq: u64,
    /// When it was appended, microseconds since the Unix epoch (UTC).
    pub recorded_at_us: i64,
    /// Who appended it.
    pub actor: Actor,
    /// Hash of the record before it ([`GENESIS`] for the first).
    pub prev_hash: Hash,
    /// The caller's event, postcard-encoded.
    pub payload: Vec<u8>,
}

impl Envelope {
    /// Encodes for storage.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        postcard::to_stdvec(self)
    }

    /// Decodes stored bytes, refusing a schema newer than this build.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, Problem> {
        let (schema, _) = postcard::take_from_bytes::<u16>(bytes)
            .map_err(|e| Problem::Undecodable(e.to_string()))?;
        if schema > SCHEMA_VERSION {
            return Err(Problem::NewerSchema { found: schema, supported: SCHEMA_VERSION });
        }
        postcard::from_bytes(bytes).map_err(|e| Problem::Undecodable(e.to_string()))
    }

    /// `recorded_at` as a timestamp.
    pub fn recorded_at(&self) -> jiff::Timestamp {
        jiff::Timestamp::from_microsecond(self.recorded_at_us)
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
    }
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record<E> {
    /// Sequence number.
    pub seq: u64,
    /// When it was appended.
    pub recorded_at: jiff::Timestamp,
    /// Who appended it.
    pub actor: Actor,
    /// Hash of the previous record.
    pub prev_hash: Hash,
    /// This record's chain hash.
    pub hash: Hash,
    /// The caller's event.
    pub event: E,
}

/// The last verified record: where the chain ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Number of records.
    pub len: u64,
    /// Hash of the last record ([`GENESIS`] when empty).
    pub hash: Hash,
}

pub(crate) fn host_name() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

pub(crate) fn user_name() -> String {
    if let Ok(user) = std::env::var("USER").or_else(|_| std::env::var("LOGNAME")) {
        return user;
    }
    let uid = rustix::process::getuid().as_raw();
    // Look the uid up in /etc/passwd; fall back to the number.
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|passwd| {
            passwd.lines().find_map(|line| {
                let mut fields = line.split(':');
                let name = fields.next()?;
                let id: u32 = fields.nth(1)?.parse().ok()?;
                (id == uid).then(|| name.to_owned())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}
