//! Reading an archive frame by frame, checking as it goes: the magic line, the format, each
//! chunk's zstd checksum, each table's rows and SHA-256 against the tail, and that the tail
//! is there (an archive without it is cut short).

use std::io::Read;

use super::{ArchiveError, Footer, Frame, Manifest, Summing, FORMAT, MAGIC, MAX_FRAME};

pub struct Reader<R: Read> {
    inp: R,
    chunks: u64,
    tables: Vec<String>,
    sums: Vec<Summing>,
    state: State,
}

#[derive(PartialEq)]
enum State {
    Start,
    Body,
    Done,
}

impl<R: Read> Reader<R> {
    pub fn new(mut inp: R) -> Result<Reader<R>, ArchiveError> {
        let mut magic = vec![0u8; MAGIC.len()];
        match inp.read_exact(&mut magic) {
            Ok(()) if magic == MAGIC => {}
            Ok(()) => return Err(ArchiveError::NotAnArchive),
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(ArchiveError::NotAnArchive)
            }
            Err(e) => return Err(e.into()),
        }
        Ok(Reader {
            inp,
            chunks: 0,
            tables: Vec::new(),
            sums: Vec::new(),
            state: State::Start,
        })
    }

    fn cut(&self, what: &str) -> ArchiveError {
        ArchiveError::Truncated {
            chunks: self.chunks,
            what: what.into(),
        }
    }

    /// The next frame's kind, table and raw bytes; None at the end of the input.
    fn raw(&mut self) -> Result<Option<(u8, u32, Vec<u8>)>, ArchiveError> {
        let mut head = [0u8; 9];
        let mut got = 0;
        while got < head.len() {
            match self.inp.read(&mut head[got..])? {
                0 if got == 0 => return Ok(None),
                0 => return Err(self.cut("a frame's header is incomplete")),
                n => got += n,
            }
        }
        let kind = head[0];
        let table = u32::from_le_bytes(head[1..5].try_into().expect("4 bytes"));
        let len = u32::from_le_bytes(head[5..9].try_into().expect("4 bytes"));
        if !matches!(kind, b'H' | b'D' | b'F') || len > MAX_FRAME {
            return Err(ArchiveError::Damaged {
                what: format!("frame after data chunk {}", self.chunks),
                why: format!("kind {kind:#04x}, length {len}: not a frame"),
            });
        }
        let mut packed = Vec::new();
        (&mut self.inp)
            .take(u64::from(len))
            .read_to_end(&mut packed)?;
        if packed.len() < len as usize {
            return Err(self.cut("the last frame is incomplete"));
        }
        let raw = zstd::stream::decode_all(packed.as_slice()).map_err(|e| {
            let (what, why) = (self.describe(kind, table), e.to_string());
            match kind {
                b'D' => ArchiveError::Corrupted {
                    chunk: self.chunks + 1,
                    table: what,
                    why: format!("checksum mismatch or bad data ({why})"),
                },
                _ => ArchiveError::Damaged { what, why },
            }
        })?;
        Ok(Some((kind, table, raw)))
    }

    fn describe(&self, kind: u8, table: u32) -> String {
        match kind {
            b'H' => "manifest".into(),
            b'F' => "manifest's tail".into(),
            _ => self
                .tables
                .get(table as usize)
                .cloned()
                .unwrap_or_else(|| format!("#{table}")),
        }
    }

    fn next_frame(&mut self) -> Result<Option<Frame>, ArchiveError> {
        if self.state == State::Done {
            return Ok(None);
        }
        let Some((kind, table, raw)) = self.raw()? else {
            return Err(match self.state {
                State::Start => self.cut("no manifest"),
                _ => self.cut("the manifest's tail is missing"),
            });
        };
        let damaged = |what: &str, why: String| ArchiveError::Damaged {
            what: what.into(),
            why,
        };
        match (kind, &self.state) {
            (b'H', State::Start) => {
                let format = serde_json::from_slice::<serde_json::Value>(&raw)
                    .ok()
                    .and_then(|v| v.get("format").and_then(serde_json::Value::as_u64));
                if let Some(found) = format.filter(|f| *f > u64::from(FORMAT)) {
                    return Err(ArchiveError::NewerFormat {
                        found: found as u32,
                    });
                }
                let manifest: Manifest =
                    serde_json::from_slice(&raw).map_err(|e| damaged("manifest", e.to_string()))?;
                self.tables = manifest.tables.iter().map(|t| t.name.clone()).collect();
                self.sums = vec![Summing::default(); self.tables.len()];
                self.state = State::Body;
                Ok(Some(Frame::Head(Box::new(manifest))))
            }
            (b'D', State::Body) => {
                let sum = self.sums.get_mut(table as usize).ok_or_else(|| {
                    damaged(
                        &format!("data chunk {}", self.chunks + 1),
                        format!("table #{table} is not in the manifest"),
                    )
                })?;
                sum.add(&raw);
                self.chunks += 1;
                Ok(Some(Frame::Data {
                    table,
                    bytes: bytes::Bytes::from(raw),
                }))
            }
            (b'F', State::Body) => {
                let footer: Footer = serde_json::from_slice(&raw)
                    .map_err(|e| damaged("manifest's tail", e.to_string()))?;
                self.check(&footer)?;
                self.state = State::Done;
                Ok(Some(Frame::Tail(footer)))
            }
            _ => Err(damaged(
                &format!("frame after data chunk {}", self.chunks),
                format!("a {:?} frame out of place", kind as char),
            )),
        }
    }

    /// The rows read against the tail: counts, checksums, chunks.
    fn check(&self, footer: &Footer) -> Result<(), ArchiveError> {
        let damaged = |why: String| ArchiveError::Damaged {
            what: "content".into(),
            why,
        };
        if footer.chunks != self.chunks || footer.tables.len() != self.tables.len() {
            return Err(damaged(format!(
                "{} data chunk(s) for {} table(s) read, the manifest says {} for {}",
                self.chunks,
                self.tables.len(),
                footer.chunks,
                footer.tables.len()
            )));
        }
        for ((name, sum), want) in self.tables.iter().zip(&self.sums).zip(&footer.tables) {
            let got = sum.clone().done();
            if got != *want {
                return Err(damaged(format!(
                    "table {name}: {} row(s), SHA-256 {} read; the manifest says {} row(s), {}",
                    got.rows, got.sha256, want.rows, want.sha256
                )));
            }
        }
        Ok(())
    }
}

impl<R: Read> Iterator for Reader<R> {
    type Item = Result<Frame, ArchiveError>;

    fn next(&mut self) -> Option<Self::Item> {
        match self.next_frame() {
            Ok(Some(frame)) => Some(Ok(frame)),
            Ok(None) => None,
            Err(e) => {
                self.state = State::Done;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::write::Writer;
    use super::super::*;
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            format: FORMAT,
            tenantctl: "0".into(),
            tenant: "acme".into(),
            schema: "tenant_acme".into(),
            labels: Default::default(),
            version: Some(2),
            history: Vec::new(),
            migrations_digest: "d".into(),
            exported_at: "now".into(),
            drift: None,
            tables: vec![
                Table {
                    name: "a".into(),
                    columns: vec!["x".into()],
                },
                Table {
                    name: "b\"q".into(),
                    columns: vec!["y".into()],
                },
            ],
            sequences: Vec::new(),
            matviews: Vec::new(),
        }
    }

    fn archive() -> Vec<u8> {
        let mut w = Writer::new(Vec::new()).unwrap();
        w.head(&manifest()).unwrap();
        let mut sums = vec![Summing::default(), Summing::default()];
        for (t, rows) in [(0u32, "1\n2\n"), (1, "a\\tb\n"), (0, "3\n")] {
            sums[t as usize].add(rows.as_bytes());
            w.data(t, rows.as_bytes()).unwrap();
        }
        let footer = Footer {
            tables: sums.into_iter().map(Summing::done).collect(),
            chunks: w.chunks,
        };
        w.tail(&footer).unwrap();
        w.into_inner()
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Frame>, ArchiveError> {
        Reader::new(bytes)?.collect()
    }

    #[test]
    fn an_archive_reads_back_as_written() {
        let frames = read_all(&archive()).unwrap();
        assert_eq!(frames.len(), 5);
        assert_eq!(frames[0], Frame::Head(Box::new(manifest())));
        assert_eq!(
            frames[2],
            Frame::Data {
                table: 1,
                bytes: bytes::Bytes::from_static(b"a\\tb\n")
            }
        );
        match &frames[4] {
            Frame::Tail(f) => assert_eq!((f.chunks, f.tables[0].rows), (3, 3)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_cut_archive_says_so_wherever_it_is_cut() {
        let whole = archive();
        for len in [0, 5, MAGIC.len() + 3, whole.len() / 2, whole.len() - 1] {
            let err = read_all(&whole[..len]).unwrap_err();
            assert!(
                matches!(
                    err,
                    ArchiveError::Truncated { .. } | ArchiveError::NotAnArchive
                ),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn a_flipped_byte_in_a_chunk_names_the_chunk() {
        let mut bytes = archive();
        // The second data chunk: find its frame and flip a byte of its payload.
        let mut at = MAGIC.len();
        let mut seen = 0;
        loop {
            let len = u32::from_le_bytes(bytes[at + 5..at + 9].try_into().unwrap()) as usize;
            if bytes[at] == b'D' {
                seen += 1;
                if seen == 2 {
                    let mid = at + 9 + len - 2;
                    bytes[mid] ^= 0x55;
                    break;
                }
            }
            at += 9 + len;
        }
        let err = read_all(&bytes).unwrap_err().to_string();
        assert!(
            err.contains("data chunk 2 (table b\"q) is corrupted"),
            "{err}"
        );
    }

    #[test]
    fn a_newer_format_is_refused_by_number() {
        let mut m = manifest();
        m.format = FORMAT + 1;
        let mut w = Writer::new(Vec::new()).unwrap();
        w.head(&m).unwrap();
        let err = read_all(&w.into_inner()).unwrap_err();
        assert!(matches!(err, ArchiveError::NewerFormat { found } if found == FORMAT + 1));
    }
}
