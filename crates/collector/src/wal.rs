//! The write-ahead log: a batch is acknowledged only once it is on disk.
//!
//! Records are appended to segment files named by the log position they start at, each record
//! framed as `[length u32][crc32 u32][payload]`. One writer thread commits in groups: it takes
//! every batch waiting, writes them with one `write`, syncs once, and only then acknowledges
//! them all, so the cost of a sync is shared by everyone who arrived while the last one ran.
//! A torn tail (a crash mid-write) is cut off on open, which loses nothing acknowledged, since
//! acknowledgement came after the sync.
//!
//! A byte that changed on disk costs only the record it is in. A frame whose checksum fails is
//! passed over by looking for the next frame whose checksum holds, so every record after it is
//! still read, and no position moves (the store's commits name positions). Nothing is cut
//! silently: the segment is first copied into the quarantine directory, and the damage is logged
//! and counted in the metrics.
//!
//! The indexer reads the log back from disk ([`WalReader`]) rather than being handed records: the
//! writer never waits for it, so a slow index commit never delays an acknowledgement, and records
//! waiting to be indexed cost disk, not memory. Only the webhook's decoded events may come along
//! in memory ([`Handover`], within a budget), to spare decoding them twice. Segments go as soon
//! as the store's commit covers them, not when the next batch arrives.

use clusteraudit_io::{FileError, file_error};
use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    io::{BufReader, Read, Seek, SeekFrom},
    os::unix::fs::FileExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use prometheus_client::metrics::counter::Counter;

use super::handover::{Decoded, Handover};
use tokio::sync::{mpsc, oneshot};

/// A position in the log: bytes since its beginning.
pub type Position = u64;

/// The size past which a new segment starts, unless told otherwise.
pub const SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
const HEADER: usize = 8;
/// A single record larger than this is refused (the webhook's body limit is far below it).
pub const MAX_RECORD_BYTES: usize = 256 * 1024 * 1024;
/// A group of records written with one write and one sync grows up to about this much.
const GROUP_BYTES: usize = 32 * 1024 * 1024;
/// When everything in the current segment is released and it holds at least this much, a new
/// segment starts so that the old one can go: after a burst the log returns to small by itself.
const ROTATE_RELEASED_BYTES: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("the write-ahead log has stopped")]
    Stopped,
    #[error("a record of {0} bytes is over the limit")]
    TooLarge(usize),
}

/// How the log is laid out and where its damage goes.
#[derive(Clone, Debug)]
pub struct WalOptions {
    /// Batches waiting to be written: when full, [`Wal::try_append`] says so at once instead of
    /// waiting, so that callers can shed load.
    pub queue: usize,
    /// The size past which a new segment starts.
    pub segment_bytes: u64,
    /// Where copies of segments that could not be read whole are kept.
    pub quarantine: PathBuf,
    /// Batches are refused while the log's file system would have less than this free after
    /// them: the store needs room to commit what the log holds, which is what releases the log.
    /// A disk the log filled to the last byte would hold both up for good.
    pub min_free_bytes: u64,
    /// Where the decoded events appended with a record go for the drain, once it is durable.
    pub handover: Option<Arc<Handover>>,
}

impl WalOptions {
    pub fn new(queue: usize, quarantine: PathBuf) -> WalOptions {
        WalOptions {
            queue,
            segment_bytes: SEGMENT_BYTES,
            quarantine,
            min_free_bytes: 0,
            handover: None,
        }
    }
}

struct Append {
    payload: Vec<u8>,
    decoded: Option<Decoded>,
    done: oneshot::Sender<Result<Position, String>>,
}

enum Op {
    Append(Append),
    /// More of the log is released: delete what may go now rather than with the next batch.
    Release,
}

/// The appending side, cheap to clone.
#[derive(Clone)]
pub struct Wal {
    dir: PathBuf,
    ops: mpsc::Sender<Op>,
    released: Arc<AtomicU64>,
    durable: Arc<AtomicU64>,
    damage: Arc<Damage>,
    handover: Option<Arc<Handover>>,
}

impl Wal {
    /// Opens (or creates) the log in `dir`, cutting a torn tail off. Damage found on the way is
    /// counted in `metrics`.
    pub fn open(
        dir: &Path,
        options: WalOptions,
        metrics: &super::metrics::Metrics,
    ) -> Result<Wal, WalError> {
        std::fs::create_dir_all(dir).map_err(file_error("creating", dir))?;
        let damage = Arc::new(Damage {
            quarantine: options.quarantine.clone(),
            seen: Mutex::new(HashSet::new()),
            places: metrics.wal_damaged.clone(),
            bytes: metrics.wal_skipped_bytes.clone(),
        });
        let mut segments = list_segments(dir)?;
        if segments.is_empty() {
            let path = segment_path(dir, 0);
            File::create(&path).map_err(file_error("creating", &path))?;
            sync_dir(dir)?;
            segments.push((0, path));
        }
        let (start, path) = segments.last().cloned().expect("at least one segment");
        let end = start + check_last_segment(&path, &damage)?;
        let file = OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(file_error("opening", &path))?;
        let (ops, receiver) = mpsc::channel(options.queue.max(1));
        let released = Arc::new(AtomicU64::new(0));
        let durable = Arc::new(AtomicU64::new(end));
        let writer = Writer {
            dir: dir.to_path_buf(),
            segment_bytes: options.segment_bytes.max(1),
            min_free_bytes: options.min_free_bytes,
            short_of_space: false,
            segments: segments.iter().map(|(s, _)| *s).collect(),
            file,
            segment_start: start,
            end,
            dirty_tail: false,
            released: released.clone(),
            durable: durable.clone(),
            handover: options.handover.clone(),
            receiver,
        };
        std::thread::Builder::new()
            .name("wal-writer".into())
            .spawn(move || writer.run())
            .map_err(file_error("starting the writer for", dir))?;
        Ok(Wal {
            dir: dir.to_path_buf(),
            ops,
            released,
            durable,
            damage,
            handover: options.handover,
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
            damage: self.damage.clone(),
            open: None,
            position: start,
        })
    }

    /// Queues a record; None when the queue is full (the caller should shed load). The receiver
    /// resolves once the record is durable. `decoded` (the record's events as the caller decoded
    /// them) goes to the handover, if there is one, before the drain can read the record.
    pub fn try_append(
        &self,
        payload: Vec<u8>,
        decoded: Option<Decoded>,
    ) -> Result<Option<oneshot::Receiver<Result<Position, String>>>, WalError> {
        if payload.len() > MAX_RECORD_BYTES {
            return Err(WalError::TooLarge(payload.len()));
        }
        let (done, receiver) = oneshot::channel();
        let decoded = decoded.filter(|_| self.handover.is_some());
        match self.ops.try_send(Op::Append(Append {
            payload,
            decoded,
            done,
        })) {
            Ok(()) => Ok(Some(receiver)),
            Err(mpsc::error::TrySendError::Full(_)) => Ok(None),
            Err(mpsc::error::TrySendError::Closed(_)) => Err(WalError::Stopped),
        }
    }

    /// Where decoded events wait for the drain; `None` when nobody takes them, and callers need
    /// not decode for it.
    pub fn handover(&self) -> Option<&Arc<Handover>> {
        self.handover.as_ref()
    }

    /// Batches waiting to be written.
    pub fn queued(&self) -> usize {
        self.ops.max_capacity() - self.ops.capacity()
    }

    /// Everything before `position` is safely elsewhere (indexed and committed): segments wholly
    /// before it go now.
    pub fn release_before(&self, position: Position) {
        if self.released.fetch_max(position, Ordering::SeqCst) < position {
            // A full queue means the writer is busy, and it deletes after every group anyway.
            let _ = self.ops.try_send(Op::Release);
        }
    }

    /// The end of the log as last synced.
    pub fn durable_end(&self) -> Position {
        self.durable.load(Ordering::SeqCst)
    }
}

/// What is wrong with bytes that are not records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Whole once and changed since: records that were acknowledged may be in them.
    Damaged,
    /// A write a crash interrupted, at the end of the log: never acknowledged.
    Torn,
}

/// Bytes of the log that cannot be read as records: each place is copied, logged and counted
/// once.
struct Damage {
    quarantine: PathBuf,
    seen: Mutex<HashSet<(PathBuf, u64)>>,
    places: Counter,
    bytes: Counter,
}

impl Damage {
    /// `skipped` bytes of `segment`, from `offset` on, are not records.
    fn found(&self, segment: &Path, offset: u64, skipped: u64, kind: Kind) {
        let first = self
            .seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert((segment.to_path_buf(), offset));
        if !first {
            return;
        }
        let copy = self.keep_copy(segment, offset);
        self.bytes.inc_by(skipped);
        if kind == Kind::Damaged {
            self.places.inc();
        }
        let (segment, copy) = (segment.display(), copy.as_ref().map(|p| p.display()));
        match (kind, copy) {
            (Kind::Damaged, Ok(copy)) => tracing::error!(
                %segment, offset, bytes = skipped, %copy,
                "the write-ahead log is damaged here: the records in these bytes are lost, every record after them is still read; the segment is copied for inspection"
            ),
            (Kind::Torn, Ok(copy)) => tracing::warn!(
                %segment, offset, bytes = skipped, %copy,
                "cut an incomplete record off the end of the write-ahead log (a write a crash interrupted, never acknowledged); the segment is copied for inspection"
            ),
            (_, Err(err)) => tracing::error!(
                %segment, offset, bytes = skipped, ?kind, error = %err,
                "bytes of the write-ahead log are not records, and copying the segment to the quarantine directory failed"
            ),
        }
    }

    /// Copies the segment whole into the quarantine directory, through a temporary name so that
    /// a copy cut short (a full disk) is never taken for a whole one.
    fn keep_copy(&self, segment: &Path, offset: u64) -> std::io::Result<PathBuf> {
        let name = segment
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let copy = self.quarantine.join(format!("{name}.damaged-at-{offset}"));
        if copy.exists() {
            return Ok(copy);
        }
        std::fs::create_dir_all(&self.quarantine)?;
        let partial = self
            .quarantine
            .join(format!("{name}.damaged-at-{offset}.partial"));
        let copied = std::fs::copy(segment, &partial)
            .and_then(|_| File::open(&partial)?.sync_all())
            .and_then(|()| std::fs::rename(&partial, &copy));
        if let Err(err) = copied {
            let _ = std::fs::remove_file(&partial);
            return Err(err);
        }
        Ok(copy)
    }
}

/// Reads the last segment whole: damage in its middle is reported and left in place (readers
/// pass over it), a torn or damaged tail is reported and cut so that new records follow the last
/// whole one. Returns the length kept.
fn check_last_segment(path: &Path, damage: &Damage) -> Result<u64, WalError> {
    let bytes = std::fs::read(path).map_err(file_error("reading", path))?;
    let mut offset = 0;
    let mut kept = 0;
    while offset < bytes.len() {
        if let Some(length) = frame_at(&bytes, offset) {
            offset += length;
            kept = offset;
            continue;
        }
        match next_frame(&bytes, offset + 1) {
            Some(next) => {
                damage.found(path, offset as u64, (next - offset) as u64, Kind::Damaged);
                offset = next;
            }
            None => break,
        }
    }
    if kept < bytes.len() {
        let kind = if is_torn(&bytes[kept..]) {
            Kind::Torn
        } else {
            Kind::Damaged
        };
        damage.found(path, kept as u64, (bytes.len() - kept) as u64, kind);
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(file_error("opening", path))?;
        file.set_len(kept as u64)
            .map_err(file_error("truncating", path))?;
        file.sync_all().map_err(file_error("syncing", path))?;
    }
    Ok(kept as u64)
}

/// The length of the whole frame at `offset` whose checksum holds, if there is one.
fn frame_at(bytes: &[u8], offset: usize) -> Option<usize> {
    let header = bytes.get(offset..offset.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    // The writer never writes an empty record, and eight zero bytes (a length and a checksum of
    // nothing) are what a file system leaves after a crash.
    if len == 0 || len > MAX_RECORD_BYTES {
        return None;
    }
    let payload = bytes.get(offset + HEADER..offset + HEADER + len)?;
    (crc32fast::hash(payload) == crc).then_some(HEADER + len)
}

/// The first offset from `from` on where a whole frame whose checksum holds starts.
fn next_frame(bytes: &[u8], from: usize) -> Option<usize> {
    (from..bytes.len().saturating_sub(HEADER)).find(|&offset| frame_at(bytes, offset).is_some())
}

/// Whether bytes after the last whole record look like a write cut short: a header, or a frame
/// longer than what is there. Anything else was whole once.
fn is_torn(tail: &[u8]) -> bool {
    if tail.len() < HEADER {
        return true;
    }
    let len = u32::from_le_bytes(tail[..4].try_into().expect("4 bytes")) as usize;
    len != 0 && len <= MAX_RECORD_BYTES && HEADER + len > tail.len()
}

struct Writer {
    dir: PathBuf,
    segment_bytes: u64,
    min_free_bytes: u64,
    /// Whether the last group was refused for want of space (to log the change only).
    short_of_space: bool,
    segments: Vec<Position>,
    file: File,
    segment_start: Position,
    end: Position,
    /// A failed write may have left bytes past `end` that could not be cut yet.
    dirty_tail: bool,
    released: Arc<AtomicU64>,
    durable: Arc<AtomicU64>,
    handover: Option<Arc<Handover>>,
    receiver: mpsc::Receiver<Op>,
}

impl Writer {
    fn run(mut self) {
        let mut buffer = Vec::with_capacity(4 * 1024 * 1024);
        while let Some(first) = self.receiver.blocking_recv() {
            // Everything that arrived meanwhile joins this group, up to a size that keeps the
            // latency of the first one reasonable.
            let mut group = Vec::new();
            let mut bytes = 0;
            let mut next = Some(first);
            while let Some(op) = next.take() {
                if let Op::Append(append) = op {
                    bytes += append.payload.len();
                    group.push(append);
                }
                if bytes >= GROUP_BYTES {
                    break;
                }
                next = self.receiver.try_recv().ok();
            }
            if !group.is_empty() {
                self.write_group(&mut buffer, group);
            }
            self.drop_released();
        }
    }

    fn write_group(&mut self, buffer: &mut Vec<u8>, mut group: Vec<Append>) {
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
        if let Err(reason) = self.check_space(buffer.len() as u64) {
            for append in group {
                let _ = append.done.send(Err(reason.clone()));
            }
            return;
        }
        if self.dirty_tail {
            self.cut_back();
        }
        // At an explicit offset, not appended: after a failed write the next one lands at the
        // end of the last whole record even if cutting the rest off failed.
        let written = self
            .file
            .write_all_at(buffer, self.end - self.segment_start)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.end = position;
                // Before the drain can see the records, so that it finds their events.
                if let Some(handover) = &self.handover {
                    for (append, end) in group.iter_mut().zip(&ends) {
                        if let Some(decoded) = append.decoded.take() {
                            handover.put(*end, decoded, append.payload.len());
                        }
                    }
                }
                self.durable.store(position, Ordering::SeqCst);
                for (append, end) in group.into_iter().zip(ends) {
                    let _ = append.done.send(Ok(end));
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "writing the write-ahead log failed");
                self.cut_back();
                for append in group {
                    let _ = append.done.send(Err(err.to_string()));
                }
                return;
            }
        }
        if self.end - self.segment_start >= self.segment_bytes
            && let Err(err) = self.rotate()
        {
            tracing::error!(error = %err, "starting a new log segment failed");
        }
    }

    /// Refuses a write that would leave less than the reserve free.
    fn check_space(&mut self, bytes: u64) -> Result<(), String> {
        if self.min_free_bytes == 0 {
            return Ok(());
        }
        let Ok(stat) = nix::sys::statvfs::statvfs(&self.dir) else {
            return Ok(());
        };
        let free = stat.blocks_available().saturating_mul(stat.fragment_size());
        let short = free < bytes.saturating_add(self.min_free_bytes);
        if short != self.short_of_space {
            self.short_of_space = short;
            if short {
                tracing::error!(
                    free,
                    reserve = self.min_free_bytes,
                    "the write-ahead log's disk is nearly full: batches are refused (503) until the store's commits release the log or space is freed"
                );
            } else {
                tracing::info!(free, "the write-ahead log's disk has room again");
            }
        }
        if short {
            return Err(format!(
                "the disk has {free} bytes free, and {} are kept for the store to commit what the log holds (--min-free-bytes)",
                self.min_free_bytes
            ));
        }
        Ok(())
    }

    /// Cuts what a failed write may have left in the file, so that a restart does not take
    /// records that were never acknowledged for acknowledged ones.
    fn cut_back(&mut self) {
        match self.file.set_len(self.end - self.segment_start) {
            Ok(()) => self.dirty_tail = false,
            Err(err) => {
                tracing::warn!(error = %err, "cutting a failed write off the write-ahead log failed; retrying before the next write");
                self.dirty_tail = true;
            }
        }
    }

    fn rotate(&mut self) -> Result<(), WalError> {
        let path = segment_path(&self.dir, self.end);
        self.file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(file_error("creating", &path))?;
        sync_dir(&self.dir)?;
        self.segment_start = self.end;
        self.dirty_tail = false;
        self.segments.push(self.end);
        Ok(())
    }

    fn drop_released(&mut self) {
        let released = self.released.load(Ordering::SeqCst);
        let current = self.end - self.segment_start;
        if released >= self.end
            && current >= ROTATE_RELEASED_BYTES.min(self.segment_bytes)
            && let Err(err) = self.rotate()
        {
            tracing::warn!(error = %err, "starting a new log segment to release the current one failed");
        }
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

/// One whole record of at most `room` bytes with its frame, whose checksum holds; None at the
/// end of the file or at anything else.
fn read_record(reader: &mut impl Read, room: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER];
    if read_full(reader, &mut header)? < HEADER {
        return Ok(None);
    }
    let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_BYTES || (HEADER + len) as u64 > room {
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
    damage: Arc<Damage>,
    open: Option<OpenSegment>,
    position: Position,
}

struct OpenSegment {
    start: Position,
    file: BufReader<Durable>,
    /// Whether nothing was read from it yet: a read that fails then is not a stale buffer.
    fresh: bool,
}

impl WalReader {
    /// The position just past the last record read.
    pub fn position(&self) -> Position {
        self.position
    }

    /// Reads again from `position` (a record boundary this reader returned).
    pub fn seek(&mut self, position: Position) {
        self.position = position;
        self.open = None;
    }

    /// The next record ending at or before `limit`, with its end position.
    pub fn next(&mut self, limit: Position) -> Result<Option<(Position, Vec<u8>)>, WalError> {
        loop {
            if self.position >= limit {
                return Ok(None);
            }
            if self.open.is_none() {
                self.open = Some(self.open_segment()?);
            }
            let open = self.open.as_mut().expect("just opened");
            open.file.get_mut().end = limit - open.start;
            let fresh = std::mem::replace(&mut open.fresh, false);
            let read = read_record(&mut open.file, limit - self.position);
            match read.map_err(file_error("reading", &self.dir))? {
                Some(payload) => {
                    self.position += (HEADER + payload.len()) as u64;
                    return Ok(Some((self.position, payload)));
                }
                // A segment may have ended where the next one starts: look again.
                None if !fresh => self.open = None,
                None => {
                    self.open = None;
                    self.pass_damage(limit)?;
                }
            }
        }
    }

    /// The segment holding the current position, opened there.
    fn open_segment(&mut self) -> Result<OpenSegment, WalError> {
        let (start, path) = self.segment_at()?;
        let mut file = File::open(&path).map_err(file_error("opening", &path))?;
        file.seek(SeekFrom::Start(self.position - start))
            .map_err(file_error("reading", &path))?;
        let offset = self.position - start;
        Ok(OpenSegment {
            start,
            file: BufReader::with_capacity(
                1024 * 1024,
                Durable {
                    file,
                    offset,
                    end: offset,
                },
            ),
            fresh: true,
        })
    }

    /// The segment that starts last at or before the position.
    fn segment_at(&mut self) -> Result<(Position, PathBuf), WalError> {
        let segments = list_segments(&self.dir)?;
        if let Some(found) = segments.iter().rev().find(|(s, _)| *s <= self.position) {
            return Ok(found.clone());
        }
        let Some((first, path)) = segments.first().cloned() else {
            return Err(WalError::File(FileError {
                what: "reading",
                path: self.dir.clone(),
                source: std::io::Error::other("the write-ahead log has no segment"),
            }));
        };
        tracing::error!(
            position = self.position,
            first,
            "the write-ahead log no longer holds this position; reading on from its oldest segment"
        );
        self.position = first;
        Ok((first, path))
    }

    /// The bytes at the position are not a record although the log is durable past it: moves on
    /// to the next frame whose checksum holds (or the next segment, or the limit), reporting the
    /// bytes passed over.
    fn pass_damage(&mut self, limit: Position) -> Result<(), WalError> {
        let (start, path) = self.segment_at()?;
        let next_segment = list_segments(&self.dir)?
            .into_iter()
            .map(|(s, _)| s)
            .find(|s| *s > self.position);
        let bytes = std::fs::read(&path).map_err(file_error("reading", &path))?;
        let offset = (self.position - start) as usize;
        let upto = bytes.len().min((limit - start) as usize);
        let found = if offset < upto {
            next_frame(&bytes[..upto], offset + 1)
        } else {
            None
        };
        let to = match found {
            Some(next) => start + next as u64,
            None => next_segment.unwrap_or(limit).min(limit),
        };
        self.damage
            .found(&path, offset as u64, to - self.position, Kind::Damaged);
        self.position = to;
        Ok(())
    }
}

/// A segment read no further than the durable end: bytes past it may be what a failed write
/// left, to be overwritten by the next write, and a buffer must never hold them.
struct Durable {
    file: File,
    /// The offset in the file the next read starts at.
    offset: u64,
    /// The durable end, as an offset in the file.
    end: u64,
}

impl Read for Durable {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let room = self.end.saturating_sub(self.offset).min(buf.len() as u64) as usize;
        if room == 0 {
            return Ok(0);
        }
        let read = self.file.read(&mut buf[..room])?;
        self.offset += read as u64;
        Ok(read)
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
    use std::time::{Duration, Instant};

    fn open(dir: &Path, segment_bytes: u64) -> (Wal, crate::metrics::Metrics) {
        let metrics = crate::metrics::Metrics::new();
        let options = WalOptions {
            segment_bytes,
            ..WalOptions::new(8, dir.join("quarantine"))
        };
        (
            Wal::open(&dir.join("wal"), options, &metrics).unwrap(),
            metrics,
        )
    }

    async fn append(wal: &Wal, payload: Vec<u8>) -> Position {
        wal.try_append(payload, None)
            .unwrap()
            .unwrap()
            .await
            .unwrap()
            .unwrap()
    }

    fn read_all(wal: &Wal) -> Vec<(Position, Vec<u8>)> {
        let mut reader = wal.reader().unwrap();
        let mut records = Vec::new();
        while let Some(record) = reader.next(wal.durable_end()).unwrap() {
            records.push(record);
        }
        records
    }

    fn flip(path: &Path, offset: u64) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, offset).unwrap();
        file.write_all_at(&[byte[0] ^ 0x20], offset).unwrap();
    }

    fn quarantined(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir.join("quarantine"))
            .map(|entries| {
                entries
                    .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    #[tokio::test]
    async fn appended_records_read_back_after_a_reopen_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), SEGMENT_BYTES);
        let mut ends = Vec::new();
        for i in 0..5u8 {
            ends.push(append(&wal, vec![i; 100 + i as usize]).await);
        }
        assert_eq!(wal.durable_end(), ends[4]);
        drop(wal);
        // A crash in the middle of a write leaves half a record.
        let segment = segment_path(&dir.path().join("wal"), 0);
        let mut file = OpenOptions::new().append(true).open(&segment).unwrap();
        std::io::Write::write_all(&mut file, &[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]).unwrap();
        drop(file);

        let (wal, metrics) = open(dir.path(), SEGMENT_BYTES);
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
        // The cut is not silent: a copy is kept, the bytes are counted, but it is no damage.
        assert_eq!(quarantined(dir.path()).len(), 1);
        assert_eq!(metrics.wal_skipped_bytes.get(), 10);
        assert_eq!(metrics.wal_damaged.get(), 0);
    }

    #[tokio::test]
    async fn a_flipped_byte_in_the_current_segment_costs_only_its_record() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), SEGMENT_BYTES);
        let mut ends = vec![0];
        for i in 0..6u8 {
            ends.push(append(&wal, vec![b'a' + i; 1000]).await);
        }
        drop(wal);
        let segment = segment_path(&dir.path().join("wal"), 0);
        // One byte in the payload of the third record, one in the length of the fifth.
        flip(&segment, ends[2] + 500);
        flip(&segment, ends[4] + 1);

        let (wal, metrics) = open(dir.path(), SEGMENT_BYTES);
        // Nothing after the damage is cut: the log still ends where it ended.
        assert_eq!(wal.durable_end(), ends[6]);
        let read = read_all(&wal);
        let expected: Vec<(Position, Vec<u8>)> = [0u8, 1, 3, 5]
            .iter()
            .map(|&i| (ends[i as usize + 1], vec![b'a' + i; 1000]))
            .collect();
        assert_eq!(read, expected);
        assert_eq!(metrics.wal_damaged.get(), 2);
        assert_eq!(metrics.wal_skipped_bytes.get(), 2 * (HEADER as u64 + 1000));
        assert_eq!(
            quarantined(dir.path()),
            [
                format!("{:020}.wal.damaged-at-{}", 0, ends[2]),
                format!("{:020}.wal.damaged-at-{}", 0, ends[4]),
            ]
        );
        // New records go after the last one, and positions never repeat.
        let end = append(&wal, b"after".to_vec()).await;
        assert_eq!(end, ends[6] + (HEADER + 5) as u64);
        assert_eq!(read_all(&wal).last().unwrap().1, b"after");
        // Reading again reports nothing twice.
        assert_eq!(metrics.wal_damaged.get(), 2);
    }

    #[tokio::test]
    async fn damage_in_an_older_segment_does_not_stop_the_reader() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, metrics) = open(dir.path(), 4096);
        let mut ends = vec![0];
        for i in 0..20u8 {
            ends.push(append(&wal, vec![i; 1000]).await);
        }
        let segments = list_segments(&dir.path().join("wal")).unwrap();
        assert!(segments.len() >= 4, "{segments:?}");
        // The damage is found while the collector runs: the second record of the first segment
        // and the whole middle of the second one.
        flip(&segments[0].1, ends[1] + 3);
        let second = segments[1].0;
        let inside = ends.iter().position(|e| *e == second).unwrap();
        flip(&segments[1].1, 2);
        flip(&segments[1].1, ends[inside + 1] - second + 700);
        let read = read_all(&wal);
        let lost = [1, inside, inside + 1];
        let expected: Vec<(Position, Vec<u8>)> = (0..20usize)
            .filter(|i| !lost.contains(i))
            .map(|i| (ends[i + 1], vec![i as u8; 1000]))
            .collect();
        assert_eq!(read, expected);
        assert_eq!(metrics.wal_damaged.get(), 2);
        assert_eq!(quarantined(dir.path()).len(), 2);
    }

    #[tokio::test]
    async fn a_damaged_tail_is_reported_as_damage_and_cut() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), SEGMENT_BYTES);
        let first = append(&wal, vec![1; 100]).await;
        append(&wal, vec![2; 100]).await;
        drop(wal);
        flip(&segment_path(&dir.path().join("wal"), 0), first + 50);
        let (wal, metrics) = open(dir.path(), SEGMENT_BYTES);
        assert_eq!(wal.durable_end(), first);
        assert_eq!(metrics.wal_damaged.get(), 1);
        assert_eq!(quarantined(dir.path()).len(), 1);
    }

    #[tokio::test]
    async fn the_reader_never_takes_what_a_failed_write_left_for_a_record() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = open(dir.path(), SEGMENT_BYTES);
        let end = append(&wal, vec![1; 100]).await;
        // A failed write left a whole frame past the durable end (and cutting it off failed).
        let leftover = vec![9u8; 100];
        let mut frame = (leftover.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32fast::hash(&leftover).to_le_bytes());
        frame.extend_from_slice(&leftover);
        let segment = segment_path(&dir.path().join("wal"), 0);
        OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap()
            .write_all_at(&frame, end)
            .unwrap();
        let mut reader = wal.reader().unwrap();
        assert_eq!(reader.next(wal.durable_end()).unwrap().unwrap().0, end);
        assert!(reader.next(wal.durable_end()).unwrap().is_none());
        // The next write goes where the leftover is.
        append(&wal, vec![2; 100]).await;
        assert_eq!(
            reader.next(wal.durable_end()).unwrap().unwrap().1,
            vec![2; 100]
        );
    }

    #[tokio::test]
    async fn batches_are_refused_while_the_disk_is_short_of_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let options = WalOptions {
            min_free_bytes: u64::MAX / 4,
            ..WalOptions::new(8, dir.path().join("quarantine"))
        };
        let metrics = crate::metrics::Metrics::new();
        let wal = Wal::open(&dir.path().join("wal"), options, &metrics).unwrap();
        let refused = wal
            .try_append(vec![1; 10], None)
            .unwrap()
            .unwrap()
            .await
            .unwrap();
        assert!(refused.unwrap_err().contains("--min-free-bytes"));
        assert_eq!(wal.durable_end(), 0);
    }

    #[tokio::test]
    async fn released_segments_go_without_waiting_for_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        let (wal, _) = open(dir.path(), 4 * 1024 * 1024);
        let big = vec![7u8; 3 * 1024 * 1024];
        let mut last = 0;
        for _ in 0..5 {
            last = append(&wal, big.clone()).await;
        }
        assert!(list_segments(&wal_dir).unwrap().len() >= 2);
        let mut reader = wal.reader().unwrap();
        let mut read = 0;
        while let Some((_, payload)) = reader.next(wal.durable_end()).unwrap() {
            assert_eq!(payload.len(), big.len());
            read += 1;
        }
        assert_eq!(read, 5);
        let bytes = || {
            list_segments(&wal_dir)
                .unwrap()
                .iter()
                .map(|(_, p)| std::fs::metadata(p).unwrap().len())
                .sum::<u64>()
        };
        assert!(bytes() >= 15 * 1024 * 1024);
        wal.release_before(last);
        // Everything is released, the current segment too: the log shrinks to nothing.
        let deadline = Instant::now() + Duration::from_secs(10);
        while bytes() > 0 {
            assert!(Instant::now() < deadline, "{} bytes left", bytes());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        append(&wal, b"x".to_vec()).await;
        assert_eq!(reader.next(wal.durable_end()).unwrap().unwrap().1, b"x");
    }
}
