//! The write-ahead log: a batch is acknowledged only once it is on disk.
//!
//! Records are appended to segment files named by the log position they start at, each record
//! framed as `[length u32][crc32 u32][payload]`. One writer thread commits in groups: it takes
//! every batch waiting, writes them with one `write`, syncs once, and only then acknowledges
//! them all, so the cost of a sync is shared by everyone who arrived while the last one ran.
//! A torn tail (a crash mid-write) is cut off on open, which loses nothing acknowledged, since
//! acknowledgement came after the sync.
//!
//! The indexer reads the log back from disk ([`WalReader`]) rather than being handed records: the
//! writer never waits for it, so a slow index commit never delays an acknowledgement, and records
//! waiting to be indexed cost disk, not memory.

use clusteraudit_io::{FileError, file_error};
use std::{
    fs::{File, OpenOptions},
    io::{BufReader, Read, Write},
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::{mpsc, oneshot};

/// A position in the log: bytes since its beginning.
pub type Position = u64;

const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER: usize = 8;
/// A single record larger than this is refused (the webhook's body limit is far below it).
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("the write-ahead log has stopped")]
    Stopped,
    #[error("a record of {0} bytes is over the limit")]
    TooLarge(usize),
}

struct Append {
    payload: Vec<u8>,
    done: oneshot::Sender<Result<Position, String>>,
}

/// The appending side, cheap to clone.
#[derive(Clone)]
pub struct Wal {
    dir: PathBuf,
    appends: mpsc::Sender<Append>,
    released: Arc<AtomicU64>,
    durable: Arc<AtomicU64>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cutting a torn tail off.
    ///
    /// `queue` bounds the batches waiting to be written: when it is full, [`Wal::try_append`]
    /// says so at once instead of waiting, so that callers can shed load.
    pub fn open(dir: &Path, queue: usize) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
        let mut segments = list_segments(dir)?;
        let mut end: Position = 0;
        if let Some((start, path)) = segments.last() {
            let valid_len = valid_length(path)?;
            end = start + valid_len;
            // Cut a torn tail so that new records follow the last complete one.
            let file = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(file_error("opening", path))?;
            file.set_len(valid_len)
                .map_err(file_error("truncating", path))?;
            file.sync_all().map_err(file_error("syncing", path))?;
        } else {
            let path = segment_path(dir, 0);
            File::create(&path).map_err(file_error("creating", &path))?;
            sync_dir(dir)?;
            segments.push((0, path));
        }
        let (start, path) = segments.last().cloned().expect("at least one segment");
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(file_error("opening", &path))?;
        let (appends, receiver) = mpsc::channel(queue);
        let released = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(end));
        let writer = Writer {
            dir: dir.to_path_buf(),
            segments: segments.iter().map(|(s, _)| *s).collect(),
            file,
            segment_start: start,
            end,
            released: released.clone(),
            durable: durable.clone(),
            receiver,
        };
        std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run())
            .map_err(file_error("starting the writer for", dir))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            appends,
            released,
            durable,
        })
    }

    /// A reader from the oldest record still in the log.
    pub fn reader(&self) -> Result<WalReader, WalError> {
        let start = list_segments(&self.dir)?
            .first()
            .map(|(start, _)| *start)
            .unwrap_or(0);
        Ok(WalReader {
            dir: self.dir.clone(),
            file: None,
            position: start,
        })
    }

    /// Queues a record; None when the queue is full (the caller should shed load). The receiver
    /// resolves once the record is durable.
    pub fn try_append(
        &self,
        payload: Vec<u8>,
    ) -> Result<Option<oneshot::Receiver<Result<Position, String>>>, WalError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(WalError::TooLarge(payload.len()));
        }
        let (done, receiver) = oneshot::channel();
        match self.appends.try_send(Append { payload, done }) {
            Ok(()) => Ok(Some(receiver)),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(WalError::Stopped),
        }
    }

    /// Batches waiting to be written.
    pub fn queued(&self) -> usize {
        self.appends.max_capacity() - self.appends.capacity()
    }

    /// Everything before `position` is safely elsewhere (indexed and committed): segments wholly
    /// before it may go.
    pub fn release_before(&self, position: Position) {
        self.released.fetch_max(position, Ordering::SeqCst);
    }

    /// The end of the log as last synced.
    pub fn durable_end(&self) -> Position {
        self.durable.load(Ordering::SeqCst)
    }
}

struct Writer {
    dir: PathBuf,
    segments: Vec<Position>,
    file: File,
    segment_start: Position,
    end: Position,
    released: Arc<AtomicU64>,
    durable: Arc<AtomicU64>,
    receiver: mpsc::Receiver<Append>,
}

impl Writer {
    fn run(mut self) {
        let mut buffer = Vec::with_capacity(4 * 1024 * 1024);
        while let Some(first) = self.receiver.blocking_recv() {
            let mut group = vec![first];
            // Everything that arrived meanwhile joins this group, up to a size that keeps the
            // latency of the first one reasonable.
            let mut bytes = group[0].payload.len();
            while bytes < 32 * 1024 * 1024 {
                match self.receiver.try_recv() {
                    Ok(next) => {
                        bytes += next.payload.len();
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            buffer.clear();
            let mut ends = Vec::with_capacity(group.len());
            let mut position = self.end;
            for append in &group {
                let payload = &append.payload;
                buffer.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                buffer.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
                buffer.extend_from_slice(payload);
                position += (HEADER + payload.len()) as u64;
                ends.push(position);
            }
            let written = self
                .file
                .write_all(&buffer)
                .and_then(|()| self.file.sync_data());
            match written {
                Ok(()) => {
                    self.end = position;
                    self.durable.store(position, Ordering::SeqCst);
                    for (append, end) in group.into_iter().zip(ends) {
                        let _ = append.done.send(Ok(end));
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "writing the write-ahead log failed");
                    // A failed write may have left part of the group in the file: cut back to the
                    // last good end so the log stays a sequence of complete records.
                    let _ = self.file.set_len(self.end - self.segment_start);
                    for append in group {
                        let _ = append.done.send(Err(err.to_string()));
                    }
                    continue;
                }
            }
            if self.end - self.segment_start >= SEGMENT_BYTES
                && let Err(err) = self.rotate()
            {
                tracing::error!(error = %err, "starting a new log segment failed");
            }
            self.drop_released();
        }
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        let path = segment_path(&self.dir, self.end);
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(file_error("creating", &path))?;
        sync_dir(&self.dir)?;
        self.segment_start = self.end;
        self.segments.push(self.end);
        Ok(())
    }

    fn drop_released(&mut self) {
        let released = self.released.load(Ordering::SeqCst);
        // A segment may go when the next one starts at or before the released position.
        while self.segments.len() > 1 && self.segments[1] <= released {
            let path = segment_path(&self.dir, self.segments[0]);
            if let Err(err) = std::fs::remove_file(&path) {
                tracing::warn!(path = %path.display(), error = %err, "removing a released log segment failed");
                break;
            }
            self.segments.remove(0);
        }
    }
}

fn segment_path(dir: &Path, start: Position) -> PathBuf {
    dir.join(format!("{start:020}.wal"))
}

fn list_segments(dir: &Path) -> Result<Vec<(Position, PathBuf)>, WalError> {
    let mut segments = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(file_error("listing", dir))? {
        let entry = entry.map_err(file_error("listing", dir))?;
        let name = entry.file_name();
        let Some(start) = name
            .to_str()
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<Position>().ok())
        else {
            continue;
        };
        segments.push((start, entry.path()));
    }
    segments.sort();
    Ok(segments)
}

/// The length of a segment's complete records (a torn or damaged tail is not counted).
fn valid_length(path: &Path) -> Result<u64, WalError> {
    let file = File::open(path).map_err(file_error("opening", path))?;
    let mut reader = BufReader::with_capacity(1024 * 1024, file);
    let mut offset: u64 = 0;
    while let Some(payload) = read_record(&mut reader).map_err(file_error("reading", path))? {
        offset += (HEADER + payload.len()) as u64;
    }
    Ok(offset)
}

/// One complete record, or None at the end (or at a torn or damaged record).
fn read_record(reader: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER];
    if read_full(reader, &mut header)? < HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len > MAX_RECORD_BYTES {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    if read_full(reader, &mut payload)? < len || crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    Ok(Some(payload))
}

/// Reads the log back in order, up to a limit the caller knows to be durable.
pub struct WalReader {
    dir: PathBuf,
    file: Option<BufReader<File>>,
    position: Position,
}

impl WalReader {
    /// The position just past the last record read.
    pub fn position(&self) -> Position {
        self.position
    }

    /// The next record ending at or before `limit`, with its end position.
    pub fn next(&mut self, limit: Position) -> Result<Option<(Position, Vec<u8>)>, WalError> {
        if self.position >= limit {
            return Ok(None);
        }
        for _ in 0..2 {
            if self.file.is_none() {
                let path = segment_path(&self.dir, self.position);
                let file = File::open(&path).map_err(file_error("opening", &path))?;
                self.file = Some(BufReader::with_capacity(1024 * 1024, file));
            }
            let reader = self.file.as_mut().expect("just opened");
            let path = segment_path(&self.dir, self.position);
            match read_record(reader).map_err(file_error("reading", &path))? {
                Some(payload) => {
                    self.position += (HEADER + payload.len()) as u64;
                    return Ok(Some((self.position, payload)));
                }
                // Below the durable end, the end of a segment means the next one starts here.
                None => self.file = None,
            }
        }
        Err(WalError::File(FileError {
            what: "reading",
            path: segment_path(&self.dir, self.position),
            source: std::io::Error::other("the log ends before its durable position"),
        }))
    }
}

fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(file_error("syncing", dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn append(wal: &Wal, payload: Vec<u8>) -> Position {
        wal.try_append(payload)
            .unwrap()
            .unwrap()
            .await
            .unwrap()
            .unwrap()
    }

    #[tokio::test]
    async fn appended_records_read_back_after_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 8).unwrap();
        let mut ends = Vec::new();
        for i in 0..5u8 {
            ends.push(append(&wal, vec![i; 100 + i as usize]).await);
        }
        assert_eq!(wal.durable_end(), ends[4]);
        drop(wal);
        // A crash in the middle of a write leaves half a record.
        let segment = segment_path(dir.path(), 0);
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        file.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(file);

        let wal = Wal::open(dir.path(), 8).unwrap();
        assert_eq!(wal.durable_end(), ends[4]);
        let mut reader = wal.reader().unwrap();
        for (i, end) in ends.iter().enumerate() {
            let (at, payload) = reader.next(wal.durable_end()).unwrap().unwrap();
            assert_eq!((at, payload), (*end, vec![i as u8; 100 + i]));
        }
        assert!(reader.next(wal.durable_end()).unwrap().is_none());
        // New records follow the last complete one, and the reader sees them.
        let end = append(&wal, b"after".to_vec()).await;
        assert_eq!(end, ends[4] + (HEADER + 5) as u64);
        assert_eq!(reader.next(wal.durable_end()).unwrap().unwrap().1, b"after");
    }

    #[tokio::test]
    async fn the_reader_crosses_segments_and_released_segments_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let wal = Wal::open(dir.path(), 8).unwrap();
        // Records big enough to rotate segments quickly.
        let big = vec![7u8; 40 * 1024 * 1024];
        let mut last = 0;
        for _ in 0..3 {
            last = append(&wal, big.clone()).await;
        }
        assert!(list_segments(dir.path()).unwrap().len() >= 2);
        let mut reader = wal.reader().unwrap();
        let mut read = 0;
        while let Some((_, payload)) = reader.next(wal.durable_end()).unwrap() {
            assert_eq!(payload.len(), big.len());
            read += 1;
        }
        assert_eq!(read, 3);
        wal.release_before(last);
        append(&wal, b"x".to_vec()).await;
        assert_eq!(list_segments(dir.path()).unwrap().len(), 1);
        assert_eq!(reader.next(wal.durable_end()).unwrap().unwrap().1, b"x");
    }
}
