//! Following Envoy's access log file, like `tail -F`, by polling:
//!
//! - It starts at the file's **end**: what was logged before the collector started is not read
//!   (the rest of a line being written at that moment is dropped, uncounted). A file that does
//!   not exist yet is read from its start once it appears (it is all new).
//! - **Rotation** (the path now names another file: `mv` and a new file, logrotate's `create`):
//!   the old file is read to its end first, its unterminated last line (if any) handed out as a
//!   line, then the new file is read from its start. Lines written to the old file after the
//!   switch are not read: Envoy reopens its log on `SIGUSR1`, which rotation tools send right
//!   after the move.
//! - **Truncation** (the file shrank below what was read: logrotate's `copytruncate`): reading
//!   restarts at offset 0. Data written and truncated between two polls is not seen.
//! - A **partial last line** is kept until its newline arrives.
//! - **Lag**: when more than `max_lag` bytes are waiting, the follower does not parse them; it
//!   jumps to the last complete line and counts the bytes and lines it jumped over (it still
//!   reads them to count the newlines: sequential reading is cheap next to parsing, and the
//!   count is what operators need to see what was lost). A single line longer than `max_lag`
//!   is dropped and counted the same way, so memory stays bounded.
//!
//! Reads are positional (`pread`) up to the size the file had when the poll began (so at most
//! `max_lag` bytes per file and poll), and never wait for the writer.

use std::{
    fs::File,
    io::{self, ErrorKind},
    os::unix::fs::{FileExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

/// The default `max_lag`: 1 MiB.
pub const DEFAULT_MAX_LAG: u64 = 1 << 20;

/// How much is read per system call.
const CHUNK: usize = 64 * 1024;

/// What the follower has done since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FollowStats {
    /// Complete lines handed out.
    pub lines: u64,
    /// Bytes handed out (newlines included).
    pub bytes: u64,
    /// Bytes jumped over because the follower was too far behind, or in overlong lines.
    pub skipped_bytes: u64,
    /// Lines (or parts of lines) jumped over.
    pub skipped_lines: u64,
    /// Switches to a new file at the path.
    pub rotations: u64,
    /// Times the file shrank below the read offset and was read again from its start.
    pub truncations: u64,
}

/// Identity of a file: device and inode.
type FileId = (u64, u64);

/// The file being read.
#[derive(Debug)]
struct Open {
    file: File,
    id: FileId,
    offset: u64,
}

/// What to do with bytes up to the next newline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Discard {
    /// Keep them: they start a line.
    No,
    /// Drop them without counting: the tail of a line written before we started.
    Uncounted,
    /// Drop them and count them as skipped: the rest of a line we jumped into or gave up on.
    Counted,
}

/// Follows one path. See the module documentation.
#[derive(Debug)]
pub struct Follower {
    path: PathBuf,
    max_lag: u64,
    current: Option<Open>,
    /// The unterminated start of the next line.
    partial: Vec<u8>,
    discard: Discard,
    stats: FollowStats,
}

fn file_id(m: &std::fs::Metadata) -> FileId {
    (m.dev(), m.ino())
}

impl Follower {
    /// Opens `path` at its end; a missing file is fine (it is read from its start once it
    /// appears). `max_lag` is in bytes (at least 1).
    pub fn open_at_end(path: &Path, max_lag: u64) -> io::Result<Self> {
        let mut follower = Self {
            path: path.to_path_buf(),
            max_lag: max_lag.max(1),
            current: None,
            partial: Vec::new(),
            discard: Discard::No,
            stats: FollowStats::default(),
        };
        match File::open(path) {
            Ok(file) => {
                let meta = file.metadata()?;
                let offset = meta.len();
                if offset > 0 {
                    let mut last = [0u8];
                    file.read_exact_at(&mut last, offset - 1)?;
                    if last[0] != b'\n' {
                        follower.discard = Discard::Uncounted;
                    }
                }
                follower.current = Some(Open {
                    id: file_id(&meta),
                    file,
                    offset,
                });
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(follower)
    }

    /// The path followed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The offset reached in the current file, if one is open.
    pub fn offset(&self) -> Option<u64> {
        self.current.as_ref().map(|o| o.offset)
    }

    /// What was done so far.
    pub fn stats(&self) -> FollowStats {
        self.stats
    }

    /// Appends to `out` every complete line available now (without their newlines; invalid
    /// UTF-8 is replaced, for the parser to reject).
    pub fn poll(&mut self, out: &mut Vec<String>) -> io::Result<()> {
        let at_path = match std::fs::metadata(&self.path) {
            Ok(m) => Some(file_id(&m)),
            // Moved away and not yet recreated: keep reading the open file.
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        if let Some(mut open) = self.current.take() {
            self.read_available(&mut open, out)?;
            let rotated = at_path.is_some_and(|id| id != open.id);
            if !rotated {
                self.current = Some(open);
                return Ok(());
            }
            // Finish the old file: a last line without its newline will never get one.
            self.end_of_file(out);
            self.stats.rotations += 1;
        }
        if at_path.is_some() {
            match File::open(&self.path) {
                Ok(file) => {
                    let id = file_id(&file.metadata()?);
                    let mut open = Open {
                        file,
                        id,
                        offset: 0,
                    };
                    self.read_available(&mut open, out)?;
                    self.current = Some(open);
                }
                // Gone between the stat and the open: next time.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Hands out the unterminated last line of a file that is finished.
    fn end_of_file(&mut self, out: &mut Vec<String>) {
        if self.discard == Discard::No && !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            self.emit(&line, 0, out);
        } else if self.discard == Discard::Counted {
            self.stats.skipped_lines += 1;
        }
        self.partial.clear();
        self.discard = Discard::No;
    }

    /// Reads `open` from its offset to the size it has now.
    fn read_available(&mut self, open: &mut Open, out: &mut Vec<String>) -> io::Result<()> {
        let size = open.file.metadata()?.len();
        if size < open.offset {
            self.stats.truncations += 1;
            open.offset = 0;
            // What was buffered belonged to the content that is gone.
            self.partial.clear();
            self.discard = Discard::No;
        }
        if size - open.offset > self.max_lag {
            self.skip_to_last_line(open, size)?;
        }
        let mut buf = vec![0u8; CHUNK];
        while open.offset < size {
            let want = usize::try_from(size - open.offset)
                .unwrap_or(CHUNK)
                .min(CHUNK);
            let n = open.file.read_at(&mut buf[..want], open.offset)?;
            if n == 0 {
                break; // shrank under us; the next poll sees the truncation
            }
            open.offset += n as u64;
            self.take_bytes(&buf[..n], out);
        }
        Ok(())
    }

    /// Splits `bytes` into lines, continuing the partial one.
    fn take_bytes(&mut self, mut bytes: &[u8], out: &mut Vec<String>) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            let (head, rest) = (&bytes[..newline], &bytes[newline + 1..]);
            match self.discard {
                Discard::No => {
                    if self.partial.is_empty() {
                        self.emit(head, 1, out);
                    } else {
                        let mut line = std::mem::take(&mut self.partial);
                        line.extend_from_slice(head);
                        self.emit(&line, 1, out);
                    }
                }
                Discard::Uncounted => {}
                Discard::Counted => {
                    self.stats.skipped_bytes += head.len() as u64 + 1;
                    self.stats.skipped_lines += 1;
                }
            }
            self.discard = Discard::No;
            bytes = rest;
        }
        match self.discard {
            Discard::No => {
                self.partial.extend_from_slice(bytes);
                if self.partial.len() as u64 > self.max_lag {
                    // A line longer than we are willing to hold: drop it, and the rest of it
                    // when it comes.
                    self.stats.skipped_bytes += self.partial.len() as u64;
                    self.partial.clear();
                    self.discard = Discard::Counted;
                }
            }
            Discard::Uncounted => {}
            Discard::Counted => self.stats.skipped_bytes += bytes.len() as u64,
        }
    }

    /// Jumps from `open.offset` to just after the last newline before `size`, counting what is
    /// jumped over. With no newline at all, jumps to `size` and drops the rest of that line.
    fn skip_to_last_line(&mut self, open: &mut Open, size: u64) -> io::Result<()> {
        let start = open.offset;
        let mut newlines = 0u64;
        let mut last_newline = None;
        let mut buf = vec![0u8; CHUNK];
        let mut at = start;
        while at < size {
            let want = usize::try_from(size - at).unwrap_or(CHUNK).min(CHUNK);
            let n = open.file.read_at(&mut buf[..want], at)?;
            if n == 0 {
                break;
            }
            for (i, &b) in buf[..n].iter().enumerate() {
                if b == b'\n' {
                    newlines += 1;
                    last_newline = Some(at + i as u64);
                }
            }
            at += n as u64;
        }
        let end = last_newline.map_or(at, |p| p + 1);
        self.stats.skipped_bytes += end - start + self.partial.len() as u64;
        self.stats.skipped_lines += newlines;
        if self.discard == Discard::Uncounted && newlines > 0 {
            // The first newline only ended the tail of a line from before we started.
            self.stats.skipped_lines -= 1;
        }
        self.partial.clear();
        open.offset = end;
        self.discard = match (last_newline, self.discard) {
            // At the start of a line.
            (Some(_), _) => Discard::No,
            // In the middle of a line whose start was just skipped: drop the rest too, and
            // count the line once its newline arrives.
            (None, Discard::No) => Discard::Counted,
            (None, other) => other,
        };
        Ok(())
    }

    fn emit(&mut self, line: &[u8], newline: u64, out: &mut Vec<String>) {
        self.stats.lines += 1;
        self.stats.bytes += line.len() as u64 + newline;
        // Valid UTF-8 (every line Envoy writes) is copied as it is; only a broken line pays
        // for the replacement.
        out.push(match std::str::from_utf8(line) {
            Ok(text) => text.to_owned(),
            Err(_) => String::from_utf8_lossy(line).into_owned(),
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        fs::OpenOptions,
        io::Write as _,
        sync::atomic::{AtomicU32, Ordering},
    };

    use super::*;

    /// A temporary directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "l7r-follow-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }

        fn log(&self) -> PathBuf {
            self.0.join("access.log")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn append(path: &Path, text: &str) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }

    fn poll(f: &mut Follower) -> Vec<String> {
        let mut out = Vec::new();
        f.poll(&mut out).unwrap();
        out
    }

    #[test]
    fn starts_at_the_end_and_reads_what_is_appended() {
        let dir = TempDir::new();
        let log = dir.log();
        append(&log, "old 1\nold 2\n");
        let mut f = Follower::open_at_end(&log, DEFAULT_MAX_LAG).unwrap();
        assert!(poll(&mut f).is_empty(), "what was there before is not read");
        append(&log, "new 1\nnew 2\n");
        assert_eq!(poll(&mut f), ["new 1", "new 2"]);
        assert!(poll(&mut f).is_empty());
        assert_eq!(f.stats().lines, 2);
        assert_eq!(f.stats().bytes, 12);
    }

    #[test]
    fn a_line_being_written_at_start_is_dropped_quietly() {
        let dir = TempDir::new();
        let log = dir.log();
        append(&log, "old\nhalf of a li");
        let mut f = Follower::open_at_end(&log, DEFAULT_MAX_LAG).unwrap();
        append(&log, "ne\nnext\n");
        assert_eq!(poll(&mut f), ["next"]);
        assert_eq!(f.stats().skipped_lines, 0);
    }

    #[test]
    fn a_partial_last_line_waits_for_its_newline() {
        let dir = TempDir::new();
        let log = dir.log();
        let mut f = Follower::open_at_end(&log, DEFAULT_MAX_LAG).unwrap();
        append(&log, "one\n{\"half\": ");
        assert_eq!(poll(&mut f), ["one"]);
        assert!(poll(&mut f).is_empty());
        append(&log, "1}");
        assert!(poll(&mut f).is_empty(), "still no newline");
        append(&log, "\ntwo\n");
        assert_eq!(poll(&mut f), ["{\"half\": 1}", "two"]);
    }

    #[test]
    fn a_file_that_appears_later_is_read_from_its_start() {
        let dir = TempDir::new();
        let log = dir.log();
        let mut f = Follower::open_at_end(&log, DEFAULT_MAX_LAG).unwrap();
        assert!(poll(&mut f).is_empty());
        append(&log, "first\n");
        assert_eq!(poll(&mut f), ["first"]);
    }

    #[test]
    fn rotation_finishes_the_old_file_then_reads_the_new_one() {
        let dir = TempDir::new();
        let log = dir.log();
        append(&log, "");
        let mut f = Follower::open_at_end(&log, DEFAULT_MAX_LAG).unwrap();
        append(&log, "a\n");
        assert_eq!(poll(&mut f), ["a"]);
        // Written after the last poll, then the file is moved away and a new one created.
        append(&log, "b\nlast without newline");
        std::fs::rename(&log, dir.0.join("access.log.1")).unwrap();
        // Moved away, no new file yet: the old one is still read.
        assert_eq!(poll(&mut f), ["b"]);
        // The writer finishes its line in the old file, then a new file appears.
        append(&dir.0.join("access.log.1"), "\n");
        append(&log, "c\n");
        assert_eq!(poll(&mut f), ["last without newline", "c"]);
        append(&log, "d\n");
        assert_eq!(poll(&mut f), ["d"]);
        assert_eq!(f.stats().rotations, 1);
    }

    #[test]
    fn rotation_hands_out_an_unterminated_last_line() {
        let dir = TempDir::new();
        let log = dir.log();
        append(&log, "");
        let mut f = Follower::open_at_end(&log, DEFAULT_MAX_LAG).unwrap();
        append(&log, "x\ncut");
        std::fs::rename(&log, dir.0.join("old")).unwrap();
        append(&log, "y\n");
        assert_eq!(poll(&mut f), ["x", "cut", "y"]);
    }

    #[test]
    fn truncation_restarts_at_the_beginning() {
        let dir = TempDir::new();
        let log = dir.log();
        append(&log, "");
        let mut f = Follower::open_at_end(&log, DEFAULT_MAX_LAG).unwrap();
        append(&log, "a long first line\nhalf");
        assert_eq!(poll(&mut f), ["a long first line"]);
        // copytruncate: same file, emptied, then written again.
        std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&log)
            .unwrap();
        append(&log, "z\n");
        assert_eq!(
            poll(&mut f),
            ["z"],
            "the buffered half line is gone with the old data"
        );
        assert_eq!(f.stats().truncations, 1);
        assert_eq!(f.stats().rotations, 0);
    }

    #[test]
    fn lagging_too_far_skips_to_the_newest_lines_and_counts() {
        let dir = TempDir::new();
        let log = dir.log();
        append(&log, "");
        let mut f = Follower::open_at_end(&log, 20).unwrap();
        append(&log, "0123456789\n");
        assert_eq!(poll(&mut f), ["0123456789"]);
        // 4 lines of 11 bytes and a partial one: 44 + 3 = 47 > 20 waiting.
        append(&log, "aaaaaaaaaa\nbbbbbbbbbb\ncccccccccc\ndddddddddd\neee");
        assert!(poll(&mut f).is_empty(), "skipped to the partial last line");
        let s = f.stats();
        assert_eq!((s.skipped_lines, s.skipped_bytes), (4, 44));
        append(&log, "ee\nnew\n");
        assert_eq!(poll(&mut f), ["eeeee", "new"]);
        assert_eq!(f.stats().lines, 3);
    }

    #[test]
    fn lag_counts_the_buffered_partial_line_too() {
        let dir = TempDir::new();
        let log = dir.log();
        append(&log, "");
        let mut f = Follower::open_at_end(&log, 20).unwrap();
        append(&log, "part");
        assert!(poll(&mut f).is_empty());
        append(&log, "ial\n0123456789\n0123456789\nnext");
        assert!(poll(&mut f).is_empty());
        let s = f.stats();
        // "partial\n" (4 buffered + 4 read) and two 11-byte lines.
        assert_eq!((s.skipped_lines, s.skipped_bytes), (3, 30));
        append(&log, "\n");
        assert_eq!(poll(&mut f), ["next"]);
    }

    #[test]
    fn an_overlong_line_is_dropped_and_counted_once() {
        let dir = TempDir::new();
        let log = dir.log();
        append(&log, "");
        let mut f = Follower::open_at_end(&log, 16).unwrap();
        append(&log, "ok\n0123456789");
        assert_eq!(poll(&mut f), ["ok"]);
        append(&log, "0123456789");
        assert!(poll(&mut f).is_empty());
        append(&log, "01234\nafter\n");
        assert_eq!(poll(&mut f), ["after"]);
        let s = f.stats();
        // 20 bytes held, then 6 more up to the newline: one line.
        assert_eq!((s.skipped_lines, s.skipped_bytes), (1, 26));
    }

    #[test]
    fn skipping_without_any_newline_drops_that_line_once() {
        let dir = TempDir::new();
        let log = dir.log();
        append(&log, "");
        let mut f = Follower::open_at_end(&log, 8).unwrap();
        append(&log, "0123456789abcdef");
        assert!(poll(&mut f).is_empty());
        append(&log, "gh\nnext\n");
        assert_eq!(poll(&mut f), ["next"]);
        let s = f.stats();
        assert_eq!((s.skipped_lines, s.skipped_bytes), (1, 19));
    }
}
