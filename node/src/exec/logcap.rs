//! Attempt logs are capped in bytes (`--max-log-bytes`): a task that writes 1 GB to stdout must
//! not fill the node's disk. The attempt writes its log with O_APPEND; while it runs (every
//! second) and when it ends, a log over the cap is cut: its last half-cap is kept after a line
//! saying how much was dropped. The task keeps appending at the new end. Bytes the task writes
//! between the read of the tail and the cut are lost (a few milliseconds' worth at most), which
//! the marker line also says.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Cuts `path` to about `max / 2` bytes (its tail) if it is over `max`. Returns the bytes dropped.
pub fn cap(path: &Path, max: u64) -> std::io::Result<u64> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let len = f.metadata()?.len();
    if len <= max {
        return Ok(0);
    }
    let keep = max / 2;
    f.seek(SeekFrom::Start(len - keep))?;
    let mut tail = Vec::with_capacity(keep as usize);
    (&mut f).take(keep).read_to_end(&mut tail)?;
    // Start the kept part at a line boundary when there is one.
    let start = tail.iter().position(|b| *b == b'\n').map_or(0, |i| i + 1);
    let dropped = len - (tail.len() - start) as u64;
    f.set_len(0)?;
    f.seek(SeekFrom::Start(0))?;
    let marker = format!(
        "[troupe: {dropped} earlier bytes of this log were dropped (--max-log-bytes {max}); the tail follows]\n"
    );
    f.write_all(marker.as_bytes())?;
    f.write_all(&tail[start..])?;
    Ok(dropped)
}

/// Caps both logs of an attempt (`.out`, `.err`).
pub fn cap_both(stem: &Path, max: u64) {
    for ext in ["out", "err"] {
        let _ = cap(&stem.with_extension(ext), max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_over_the_cap_keeps_its_tail_and_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.out");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        for i in 0..10_000 {
            writeln!(f, "line {i}").unwrap();
        }
        let dropped = cap(&p, 8192).unwrap();
        assert!(dropped > 0);
        // The writer goes on appending at the new end.
        writeln!(f, "after the cut").unwrap();
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.len() < 8192, "{}", text.len());
        assert!(text.starts_with("[troupe: "), "{}", &text[..80]);
        assert!(text.contains("line 9999\nafter the cut\n"));
        assert_eq!(cap(&p, 8192).unwrap(), 0, "under the cap: untouched");
    }
}
