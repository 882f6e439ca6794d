//! A tenant archive (`tenant export`, `tenant import`): the format, its manifest and its
//! checksums. A leaf: no database, no printing.
//!
//! The file is a magic line, then frames, each `kind` (1 byte), `table` (u32, little-endian),
//! `length` (u32) and a payload of that length compressed as one zstd frame with zstd's own
//! content checksum (so a corrupted chunk fails to decompress, named by its number):
//!
//! - `H`: the manifest's head (JSON, [`Manifest`]): format, tenantctl version, tenant id,
//!   labels, version, the history's checksums, the migration set's digest, the tables with
//!   their columns, the sequences' values, the materialized views;
//! - `D`: a chunk of one table's rows as `COPY … TO STDOUT` text (at most [`CHUNK`] bytes);
//! - `F`: the manifest's tail (JSON, [`Footer`]): per table, rows and the SHA-256 of its
//!   rows' text, and the number of data chunks. It is last: an archive without it is cut
//!   short.

pub mod read;
pub mod write;

use serde::{Deserialize, Serialize};

/// The archive format this tenantctl writes and the newest it reads.
pub const FORMAT: u32 = 1;

/// The first bytes of every archive.
pub const MAGIC: &[u8] = b"TENANTCTL ARCHIVE\n";

/// A data chunk's most raw bytes.
pub const CHUNK: usize = 1 << 20;

/// The most bytes a frame may claim (a damaged length must not make the reader allocate
/// gigabytes).
pub const MAX_FRAME: u32 = 1 << 31;

/// The manifest's head: what the archive holds and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    pub format: u32,
    pub tenantctl: String,
    pub tenant: String,
    pub schema: String,
    #[serde(default)]
    pub labels: std::collections::BTreeMap<String, String>,
    /// The tenant's version (None: nothing applied).
    pub version: Option<i32>,
    /// The applied migrations as its history holds them, oldest first.
    pub history: Vec<HistoryEntry>,
    /// A digest of the migration files up to `version` (the set it was exported with).
    pub migrations_digest: String,
    pub exported_at: String,
    /// The schema differed from the files and `--allow-drift` took it anyway: why.
    #[serde(default)]
    pub drift: Option<String>,
    pub tables: Vec<Table>,
    pub sequences: Vec<Sequence>,
    /// Materialized views that held data: refreshed after the load.
    pub matviews: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HistoryEntry {
    pub version: i32,
    pub name: String,
    pub checksum: String,
}

/// A table whose rows the archive holds (a partitioned table's rows are its partitions').
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Table {
    pub name: String,
    /// The columns copied, in order (generated columns are not: they are computed again).
    pub columns: Vec<String>,
}

/// A sequence's state: `value` as `last_value`, None when never used.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sequence {
    pub name: String,
    pub value: Option<i64>,
}

/// The manifest's tail, written once every row is out.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Footer {
    /// Per table (in the order of [`Manifest::tables`]).
    pub tables: Vec<TableSum>,
    pub chunks: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct TableSum {
    pub rows: u64,
    pub bytes: u64,
    /// SHA-256 (hex) of the table's rows as COPY text, in the order they were copied.
    pub sha256: String,
}

/// What an archive is made of, in order: the head, data chunks, the tail.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Head(Box<Manifest>),
    Data { table: u32, bytes: bytes::Bytes },
    Tail(Footer),
}

/// Why an archive cannot be read. Every case names where it went wrong.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("not a tenantctl archive (it does not start with the archive's magic line)")]
    NotAnArchive,
    #[error("the archive is cut short after {chunks} data chunk(s): {what}")]
    Truncated { chunks: u64, what: String },
    #[error("data chunk {chunk} (table {table}) is corrupted: {why}")]
    Corrupted {
        chunk: u64,
        table: String,
        why: String,
    },
    #[error("the archive's {what} is damaged: {why}")]
    Damaged { what: String, why: String },
    #[error("the archive is format {found}; this tenantctl reads format {FORMAT} and older: upgrade tenantctl")]
    NewerFormat { found: u32 },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Per-table running checksum of the rows' COPY text (or, [`Summing::counting`], only their
/// rows and bytes).
#[derive(Clone)]
pub struct Summing {
    hash: Option<sha2::Sha256>,
    pub rows: u64,
    pub bytes: u64,
}

impl Default for Summing {
    fn default() -> Summing {
        Summing {
            hash: Some(sha2::Sha256::default()),
            rows: 0,
            bytes: 0,
        }
    }
}

impl Summing {
    /// Rows and bytes only: where the bytes were checked already (a file's reader) or never
    /// left the process (a clone).
    pub fn counting() -> Summing {
        Summing {
            hash: None,
            rows: 0,
            bytes: 0,
        }
    }

    /// Adds a chunk (whole rows: a chunk never splits a row).
    pub fn add(&mut self, chunk: &[u8]) {
        use sha2::Digest as _;
        if let Some(hash) = &mut self.hash {
            hash.update(chunk);
        }
        self.bytes += chunk.len() as u64;
        self.rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
    }

    pub fn done(self) -> TableSum {
        use sha2::Digest as _;
        TableSum {
            rows: self.rows,
            bytes: self.bytes,
            sha256: self
                .hash
                .map(|h| h.finalize().iter().map(|b| format!("{b:02x}")).collect())
                .unwrap_or_default(),
        }
    }
}
