//! Writing an archive: frames compressed one by one, so that memory holds one chunk.

use std::io::Write;

use super::{ArchiveError, Footer, Manifest, MAGIC};

/// zstd's level: 3 (its default) compresses COPY text about 4:1 at several hundred MB/s.
const LEVEL: i32 = 3;

pub struct Writer<W: Write> {
    out: W,
    pub chunks: u64,
    /// Bytes written so far (compressed).
    pub written: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(mut out: W) -> Result<Writer<W>, ArchiveError> {
        out.write_all(MAGIC)?;
        Ok(Writer {
            out,
            chunks: 0,
            written: MAGIC.len() as u64,
        })
    }

    fn frame(&mut self, kind: u8, table: u32, raw: &[u8]) -> Result<(), ArchiveError> {
        let mut enc = zstd::bulk::Compressor::new(LEVEL)?;
        enc.include_checksum(true)?;
        let packed = enc.compress(raw)?;
        let len = u32::try_from(packed.len()).map_err(|_| ArchiveError::Damaged {
            what: "chunk".into(),
            why: format!("{} bytes do not fit a frame", packed.len()),
        })?;
        self.out.write_all(&[kind])?;
        self.out.write_all(&table.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&packed)?;
        self.written += 9 + packed.len() as u64;
        Ok(())
    }

    pub fn head(&mut self, manifest: &Manifest) -> Result<(), ArchiveError> {
        let json = serde_json::to_vec(manifest).map_err(std::io::Error::other)?;
        self.frame(b'H', 0, &json)
    }

    /// A chunk of whole rows of table number `table`.
    pub fn data(&mut self, table: u32, rows: &[u8]) -> Result<(), ArchiveError> {
        self.chunks += 1;
        self.frame(b'D', table, rows)
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    pub fn tail(&mut self, footer: &Footer) -> Result<(), ArchiveError> {
        let json = serde_json::to_vec(footer).map_err(std::io::Error::other)?;
        self.frame(b'F', 0, &json)?;
        self.out.flush()?;
        Ok(())
    }
}
