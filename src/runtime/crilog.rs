//! Container logs in the CRI format the kubelet, log shippers and `crictl` read:
//! `<RFC 3339 nanos> <stdout|stderr> <F|P> <text>`, one line per line the container wrote
//! (`P` marks a piece of a line longer than [`MAX_LINE`]). Files rotate by size, keeping
//! one older file, so a chatty container cannot fill an SD card.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Longest piece of a line written as one record, as the kubelet's runtime does (16 KiB).
pub const MAX_LINE: usize = 16 * 1024;

/// The log file of one container run, shared by its stdout and stderr pumps.
pub struct LogWriter {
    path: PathBuf,
    file: File,
    written: u64,
    max_bytes: u64,
}

impl LogWriter {
    /// Opens (appending) the log at `path`, rotating once it exceeds `max_bytes`.
    pub fn open(path: &Path, max_bytes: u64) -> std::io::Result<LogWriter> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let written = file.metadata()?.len();
        Ok(LogWriter { path: path.to_path_buf(), file, written, max_bytes })
    }

    fn record(&mut self, stream: &str, full: bool, text: &[u8]) -> std::io::Result<()> {
        let mut line = Vec::with_capacity(text.len() + 48);
        line.extend_from_slice(super::now_nanos().as_bytes());
        line.extend_from_slice(format!(" {stream} {} ", if full { 'F' } else { 'P' }).as_bytes());
        line.extend_from_slice(text);
        line.push(b'\n');
        if self.written + line.len() as u64 > self.max_bytes && self.written > 0 {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.written += line.len() as u64;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = OpenOptions::new().create(true).append(true).open(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

/// Copies what a container writes to `pipe` into `log` until the pipe closes.
pub fn pump(mut pipe: impl Read, stream: &str, log: Arc<Mutex<LogWriter>>) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut pending: Vec<u8> = Vec::new();
    loop {
        let n = match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        let mut records: Vec<(bool, &[u8])> = Vec::new();
        while let Some(pos) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + pos];
            for (i, chunk) in line.chunks(MAX_LINE).enumerate() {
                let last = (i + 1) * MAX_LINE >= line.len();
                records.push((last, chunk));
            }
            if line.is_empty() {
                records.push((true, line));
            }
            start += pos + 1;
        }
        // A very long unfinished line is flushed in pieces rather than held in memory.
        while pending.len() - start >= MAX_LINE {
            records.push((false, &pending[start..start + MAX_LINE]));
            start += MAX_LINE;
        }
        if let Ok(mut w) = log.lock() {
            for (full, text) in records {
                let _ = w.record(stream, full, text);
            }
        }
        pending.drain(..start);
    }
    if !pending.is_empty()
        && let Ok(mut w) = log.lock()
    {
        let _ = w.record(stream, true, &pending);
    }
}

/// One record read back from a log.
#[derive(Debug, PartialEq)]
pub struct Record {
    /// RFC 3339 with nanoseconds.
    pub time: String,
    /// The text, with a newline when the record ends a line.
    pub text: Vec<u8>,
}

/// Parses one CRI log line; `None` for anything malformed.
pub fn parse(line: &[u8]) -> Option<Record> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let mut parts = line.splitn(4, |&b| b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?.to_string();
    let _stream = parts.next()?;
    let tag = parts.next()?;
    let mut text = parts.next().unwrap_or_default().to_vec();
    if tag.first() != Some(&b'P') {
        text.push(b'\n');
    }
    Some(Record { time, text })
}

/// What the caller of `kubectl logs` asked for.
#[derive(Debug, Default, Clone)]
pub struct LogQuery {
    /// Only the last N lines.
    pub tail: Option<usize>,
    /// Only records at or after this RFC 3339 time.
    pub since: Option<jiff::Timestamp>,
    /// Prefix each line with its time.
    pub timestamps: bool,
    /// Stop after this many bytes.
    pub limit_bytes: Option<usize>,
}

/// Formats records as `kubectl logs` prints them.
pub fn render(records: &[Record], q: &LogQuery) -> Vec<u8> {
    let kept: Vec<&Record> = records
        .iter()
        .filter(|r| q.since.is_none_or(|s| r.time.parse::<jiff::Timestamp>().is_ok_and(|t| t >= s)))
        .collect();
    let start = match q.tail {
        Some(n) => {
            // Count whole lines from the end (a line may be several partial records).
            let mut lines = 0;
            let mut i = kept.len();
            while i > 0 {
                if kept[i - 1].text.ends_with(b"\n") {
                    if lines == n {
                        break;
                    }
                    lines += 1;
                }
                i -= 1;
            }
            i
        }
        None => 0,
    };
    let mut out = Vec::new();
    let mut line_start = true;
    for r in &kept[start..] {
        if q.timestamps && line_start {
            out.extend_from_slice(r.time.as_bytes());
            out.push(b' ');
        }
        out.extend_from_slice(&r.text);
        line_start = r.text.ends_with(b"\n");
        if q.limit_bytes.is_some_and(|l| out.len() >= l) {
            out.truncate(q.limit_bytes.unwrap_or(out.len()));
            break;
        }
    }
    out
}

/// Reads every record of a log file (the rotated older file first).
pub fn read_all(path: &Path) -> std::io::Result<(Vec<Record>, u64)> {
    let mut records = Vec::new();
    let mut old = path.to_path_buf().into_os_string();
    old.push(".1");
    if let Ok(f) = File::open(&old) {
        read_into(BufReader::new(f), &mut records)?;
    }
    let f = File::open(path)?;
    let len = f.metadata()?.len();
    read_into(BufReader::new(f), &mut records)?;
    Ok((records, len))
}

/// Reads the records appended to `path` after byte `offset`; returns the new offset.
pub fn read_from(path: &Path, offset: u64) -> std::io::Result<(Vec<Record>, u64)> {
    use std::io::Seek;
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    // Rotated underneath us: start the new file from its beginning.
    let offset = if len < offset { 0 } else { offset };
    f.seek(std::io::SeekFrom::Start(offset))?;
    let mut records = Vec::new();
    let mut reader = BufReader::new(f);
    let mut consumed = offset;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || !line.ends_with(b"\n") {
            break;
        }
        consumed += n as u64;
        if let Some(r) = parse(&line) {
            records.push(r);
        }
    }
    Ok((records, consumed))
}

fn read_into(mut reader: impl BufRead, records: &mut Vec<Record>) -> std::io::Result<()> {
    let mut line = Vec::new();
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        if let Some(r) = parse(&line) {
            records.push(r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pumped_lines_read_back_with_tail_and_timestamps() {
        let dir = std::env::temp_dir().join(format!("bramble-crilog-{}", std::process::id()));
        let path = dir.join("0.log");
        let log = Arc::new(Mutex::new(LogWriter::open(&path, 1 << 20).unwrap()));
        let long = "x".repeat(MAX_LINE + 10);
        let input = format!("one\ntwo\n{long}\nthree-unfinished");
        pump(input.as_bytes(), "stdout", log.clone());
        let (records, _) = read_all(&path).unwrap();
        assert_eq!(records.len(), 5, "a long line is split in a partial and a final record");
        let all = render(&records, &LogQuery::default());
        assert_eq!(String::from_utf8(all).unwrap(), format!("one\ntwo\n{long}\nthree-unfinished\n"));
        let tail = render(&records, &LogQuery { tail: Some(2), ..Default::default() });
        assert_eq!(String::from_utf8(tail).unwrap(), format!("{long}\nthree-unfinished\n"));
        let stamped = render(&records, &LogQuery { tail: Some(1), timestamps: true, ..Default::default() });
        let text = String::from_utf8(stamped).unwrap();
        let (time, rest) = text.split_once(' ').unwrap();
        assert!(time.parse::<jiff::Timestamp>().is_ok(), "{time}");
        assert_eq!(rest, "three-unfinished\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn logs_rotate_by_size_keeping_one_old_file() {
        let dir = std::env::temp_dir().join(format!("bramble-crilog-rot-{}", std::process::id()));
        let path = dir.join("0.log");
        let log = Arc::new(Mutex::new(LogWriter::open(&path, 200).unwrap()));
        let input: String = (0..20).map(|i| format!("line {i}\n")).collect();
        pump(input.as_bytes(), "stderr", log);
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
        let (records, _) = read_all(&path).unwrap();
        let last = records.last().unwrap();
        assert_eq!(last.text, b"line 19\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
