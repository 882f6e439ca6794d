//! Archive files on threads of their own, so that compressing or decompressing overlaps
//! with the database's work: a writer taking frames from a channel, a reader sending them.

use std::io::{Read, Write};

use super::{channel, FrameSender, Frames};
use crate::archive::read::Reader;
use crate::archive::write::Writer;
use crate::archive::{ArchiveError, Frame};

/// What a writer wrote.
pub struct Written {
    pub bytes: u64,
}

/// Writes the frames sent to the returned sender into `out` (an archive), until the sender
/// is dropped; the handle's result says how it went.
pub fn writer(
    out: Box<dyn Write + Send>,
) -> (
    FrameSender,
    std::thread::JoinHandle<Result<Written, ArchiveError>>,
) {
    let (tx, mut rx) = channel();
    let handle = std::thread::spawn(move || {
        let mut w = Writer::new(std::io::BufWriter::with_capacity(1 << 20, out))?;
        while let Some(frame) = rx.blocking_recv() {
            match frame {
                Ok(Frame::Head(m)) => w.head(&m)?,
                Ok(Frame::Data { table, bytes }) => w.data(table, &bytes)?,
                Ok(Frame::Tail(f)) => w.tail(&f)?,
                Err(_) => break,
            }
        }
        let bytes = w.written;
        w.into_inner().flush()?;
        Ok(Written { bytes })
    });
    (tx, handle)
}

/// Reads the archive in `inp` on a thread and sends its frames, checked as they are read
/// (see `archive::read`); an error is the last thing sent.
pub fn reader(inp: Box<dyn Read + Send>) -> Frames {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let reader = match Reader::new(std::io::BufReader::with_capacity(1 << 20, inp)) {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.blocking_send(Err(e.to_string()));
                return;
            }
        };
        for frame in reader {
            let stop = frame.is_err();
            if tx.blocking_send(frame.map_err(|e| e.to_string())).is_err() || stop {
                return;
            }
        }
    });
    rx
}

/// An archive's manifest (its first frame) without reading further.
pub fn head(inp: Box<dyn Read + Send>) -> Result<crate::archive::Manifest, ArchiveError> {
    let mut reader = Reader::new(std::io::BufReader::new(inp))?;
    match reader.next() {
        Some(Ok(Frame::Head(m))) => Ok(*m),
        Some(Err(e)) => Err(e),
        _ => Err(ArchiveError::Truncated {
            chunks: 0,
            what: "no manifest".into(),
        }),
    }
}

/// Reads a whole archive to check it (every chunk, count and checksum) before anything is
/// created from it: its manifest's head and tail, or the first problem.
pub fn check(
    inp: Box<dyn Read + Send>,
) -> Result<(crate::archive::Manifest, crate::archive::Footer), ArchiveError> {
    let (mut manifest, mut footer) = (None, None);
    for frame in Reader::new(std::io::BufReader::with_capacity(1 << 20, inp))? {
        match frame? {
            Frame::Head(m) => manifest = Some(*m),
            Frame::Tail(f) => footer = Some(f),
            Frame::Data { .. } => {}
        }
    }
    match (manifest, footer) {
        (Some(m), Some(f)) => Ok((m, f)),
        _ => Err(ArchiveError::Truncated {
            chunks: 0,
            what: "no manifest".into(),
        }),
    }
}
