//! A bounded reader of tar streams (POSIX ustar, GNU and PAX headers) for unpacking
//! untrusted artifacts. It owns the framing only: header blocks, extension headers
//! (GNU long name `L` / long link `K`, PAX `x` / `g`), numeric fields, entry data and
//! padding. It must not touch the filesystem and must not decide what a path means
//! (that is [`super::tree`]).
//!
//! Every bound is checked **before** the memory or the bytes are spent: an extension
//! header whose size field exceeds its limit is refused from the 512-byte header
//! alone, the decompressed bytes of the whole archive are budgeted before each header
//! and each entry's data is read, and every header (extension headers included) counts
//! as an entry. Decision 015 says why this is a reader of its own rather than a guard
//! in front of the `tar` crate.
//!
//! Supported entry types: regular files (`0`, NUL, `7`), hard links (`1`), symlinks
//! (`2`) and directories (`5`). Devices (`3`, `4`), FIFOs (`6`), GNU sparse files and
//! every other type are refused with the entry's name.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Size of a tar block.
pub(crate) const BLOCK: u64 = 512;

/// The bounds one reader enforces.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReadLimits {
    /// Decompressed bytes of the whole archive: headers, data and padding.
    pub max_bytes: u64,
    /// Header blocks, extension headers included.
    pub max_entries: u64,
    /// Size of a GNU long-name (`L`) or long-link (`K`) header's data.
    pub max_long_name: u64,
    /// Size of a PAX (`x` / `g`) header's data.
    pub max_pax: u64,
}

/// What went wrong: the archive itself (refused, with why), or reading it.
#[derive(Debug)]
pub(crate) enum Problem {
    Refused(String),
    Io(io::Error),
}

impl Problem {
    /// A read error: a stream that is corrupt or ends early is the archive's fault
    /// (its digest was verified, so the bytes are what the operator pushed); any other
    /// I/O error is the node's.
    fn read(e: io::Error) -> Problem {
        match e.kind() {
            io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::UnexpectedEof => Problem::Refused(format!("reading the archive: {e}")),
            _ => Problem::Io(e),
        }
    }
}

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File,
    Dir,
    Symlink,
    HardLink,
}

/// One entry, with its extension headers folded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Header {
    /// As written in the archive (not normalized).
    pub path: PathBuf,
    /// The link target of symlinks and hard links.
    pub link: Option<PathBuf>,
    pub kind: Kind,
    /// Bytes of data that follow the header.
    pub size: u64,
    /// Permission bits as written (only `0o777` are ever used).
    pub mode: u32,
}

/// Extension values waiting for the entry they describe.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

pub(crate) struct TarReader<R> {
    inner: R,
    limits: ReadLimits,
    /// Decompressed bytes read so far.
    consumed: u64,
    /// Header blocks read so far.
    headers: u64,
    /// Data bytes of the current entry not read yet, and the padding after them.
    data_left: u64,
    padding_left: u64,
    done: bool,
}

fn printable(t: u8) -> String {
    if t.is_ascii_graphic() {
        format!("'{}'", t as char)
    } else {
        format!("0x{t:02x}")
    }
}

/// `Some(n)` for an octal field (NUL- or space-terminated, leading spaces allowed) or
/// a GNU base-256 field (high bit of the first byte set); `None` when malformed,
/// negative or over `u64`.
pub(crate) fn parse_number(field: &[u8]) -> Option<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return None; // negative
        }
        let mut v = u64::from(field[0] & 0x3f);
        for b in &field[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(*b))?;
        }
        return Some(v);
    }
    let mut v: u64 = 0;
    let mut digits = field
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| **b != 0 && **b != b' ')
        .peekable();
    digits.peek()?;
    for b in digits {
        if !(b'0'..=b'7').contains(b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// The bytes of a NUL-terminated field.
fn cstr(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    &field[..end]
}

/// Whether a header block's checksum (field at 148..156) matches its bytes, the field
/// itself counted as spaces.
fn checksum_ok(block: &[u8; 512]) -> bool {
    let Some(want) = parse_number(&block[148..156]) else {
        return false;
    };
    let sum: u64 = block
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                u64::from(b' ')
            } else {
                u64::from(*b)
            }
        })
        .sum();
    sum == want
}

/// One `key=value` record of a PAX extended header.
pub(crate) type PaxRecord<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX extended header.
pub(crate) fn parse_pax(data: &[u8]) -> Result<Vec<PaxRecord<'_>>, String> {
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|b| *b == 0) {
            break; // NUL padding some writers leave
        }
        let bad = || "a malformed PAX record".to_string();
        let space = rest
            .iter()
            .take(20)
            .position(|b| *b == b' ')
            .ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= space + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(bad());
        }
        let record = &rest[space + 1..len - 1];
        let eq = record.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        out.push((&record[..eq], &record[eq + 1..]));
        rest = &rest[len..];
    }
    Ok(out)
}

impl<R: Read> TarReader<R> {
    pub(crate) fn new(inner: R, limits: ReadLimits) -> Self {
        Self {
            inner,
            limits,
            consumed: 0,
            headers: 0,
            data_left: 0,
            padding_left: 0,
            done: false,
        }
    }

    fn too_large(&self) -> Problem {
        Problem::Refused(format!(
            "the archive unpacks to more than {} bytes",
            self.limits.max_bytes
        ))
    }

    /// Reserves `n` more decompressed bytes of the budget, or refuses.
    fn reserve(&self, n: u64) -> Result<(), Problem> {
        if self.consumed.saturating_add(n) > self.limits.max_bytes {
            return Err(self.too_large());
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes; `Ok(false)` at a clean end of input before the
    /// first byte.
    fn read_exact_or_end(&mut self, buf: &mut [u8]) -> Result<bool, Problem> {
        let mut n = 0;
        while n < buf.len() {
            match self.inner.read(&mut buf[n..]) {
                Ok(0) if n == 0 => return Ok(false),
                Ok(0) => {
                    return Err(Problem::Refused(
                        "the archive ends in the middle of a header".into(),
                    ));
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Problem::read(e)),
            }
        }
        self.consumed += buf.len() as u64;
        Ok(true)
    }

    /// Discards `n` bytes of the stream.
    fn skip(&mut self, n: u64) -> Result<(), Problem> {
        let copied =
            io::copy(&mut (&mut self.inner).take(n), &mut io::sink()).map_err(Problem::read)?;
        self.consumed += copied;
        if copied < n {
            return Err(Problem::Refused(
                "the archive ends in the middle of an entry".into(),
            ));
        }
        Ok(())
    }

    /// Reads the data of an extension header (its size already checked against its
    /// limit) and the padding after it.
    fn read_extension(&mut self, size: u64) -> Result<Vec<u8>, Problem> {
        let padded = size.div_ceil(BLOCK) * BLOCK;
        self.reserve(padded)?;
        let mut data = vec![0u8; size as usize];
        let mut n = 0;
        while n < data.len() {
            match self.inner.read(&mut data[n..]) {
                Ok(0) => {
                    return Err(Problem::Refused(
                        "the archive ends in the middle of an extension header".into(),
                    ));
                }
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Problem::read(e)),
            }
        }
        self.consumed += size;
        self.skip(padded - size)?;
        Ok(data)
    }

    /// Reads the current entry's data into `buf`; `Ok(0)` once it is all read (the
    /// padding after it is then consumed too).
    pub(crate) fn read_data(&mut self, buf: &mut [u8]) -> Result<usize, Problem> {
        if self.data_left == 0 {
            if self.padding_left > 0 {
                let p = std::mem::take(&mut self.padding_left);
                self.skip(p)?;
            }
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.data_left).unwrap_or(usize::MAX));
        let n = loop {
            match self.inner.read(&mut buf[..want]) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Problem::read(e)),
            }
        };
        if n == 0 {
            return Err(Problem::Refused(
                "the archive ends in the middle of an entry".into(),
            ));
        }
        self.consumed += n as u64;
        self.data_left -= n as u64;
        Ok(n)
    }

    /// The next entry, or `None` at the end of the archive (an all-zero header block,
    /// or the end of the input at a block boundary). Data of the previous entry that
    /// was not read is skipped.
    pub(crate) fn next_entry(&mut self) -> Result<Option<Header>, Problem> {
        if self.done {
            return Ok(None);
        }
        let rest = self.data_left + self.padding_left;
        (self.data_left, self.padding_left) = (0, 0);
        self.skip(rest)?;
        let mut pending = Pending::default();
        loop {
            self.reserve(BLOCK)?;
            let mut block = [0u8; 512];
            if !self.read_exact_or_end(&mut block)? {
                self.done = true;
                return Ok(None);
            }
            if block.iter().all(|b| *b == 0) {
                // The end-of-archive marker: what follows is never read.
                self.done = true;
                return Ok(None);
            }
            self.headers += 1;
            let index = self.headers;
            if self.headers > self.limits.max_entries {
                return Err(Problem::Refused(format!(
                    "more than {} entries (extension headers included)",
                    self.limits.max_entries
                )));
            }
            if !checksum_ok(&block) {
                return Err(Problem::Refused(format!(
                    "header {index}: not a tar header (bad checksum)"
                )));
            }
            if &block[257..262] != b"ustar" {
                return Err(Problem::Refused(format!(
                    "header {index}: not a ustar, GNU or PAX header"
                )));
            }
            let typeflag = block[156];
            let header_size = parse_number(&block[124..136]).ok_or_else(|| {
                Problem::Refused(format!("header {index}: a malformed size field"))
            })?;
            let ext_limit = match typeflag {
                b'L' | b'K' => Some((self.limits.max_long_name, "GNU long-name")),
                b'x' | b'g' => Some((self.limits.max_pax, "PAX")),
                _ => None,
            };
            if let Some((limit, what)) = ext_limit {
                // Refused from the header alone: nothing of it is read or allocated.
                if header_size > limit {
                    let what = if typeflag == b'K' {
                        "GNU long-link"
                    } else {
                        what
                    };
                    return Err(Problem::Refused(format!(
                        "header {index}: a {what} header of {header_size} bytes (the limit is {limit})"
                    )));
                }
                let data = self.read_extension(header_size)?;
                match typeflag {
                    b'L' => pending.path = Some(cstr(&data).to_vec()),
                    b'K' => pending.link = Some(cstr(&data).to_vec()),
                    b'x' => {
                        let records = parse_pax(&data)
                            .map_err(|e| Problem::Refused(format!("header {index}: {e}")))?;
                        for (key, value) in records {
                            apply_pax(&mut pending, key, value)
                                .map_err(|e| Problem::Refused(format!("header {index}: {e}")))?;
                        }
                    }
                    // Global PAX headers carry nothing Verge uses: bounded and skipped.
                    _ => {}
                }
                continue;
            }

            let ustar_prefix = &block[257..263] == b"ustar\0";
            let path = match pending.path.take() {
                Some(p) => p,
                None => {
                    let name = cstr(&block[0..100]);
                    let prefix = cstr(&block[345..500]);
                    if ustar_prefix && !prefix.is_empty() {
                        [prefix, b"/", name].concat()
                    } else {
                        name.to_vec()
                    }
                }
            };
            let shown = super::tree::show(std::path::Path::new(OsStr::from_bytes(&path)));
            let kind = match typeflag {
                b'0' | 0 | b'7' if path.ends_with(b"/") => Kind::Dir,
                b'0' | 0 | b'7' => Kind::File,
                b'1' => Kind::HardLink,
                b'2' => Kind::Symlink,
                b'5' => Kind::Dir,
                b'3' => return Err(refused_entry(&shown, "is a character device")),
                b'4' => return Err(refused_entry(&shown, "is a block device")),
                b'6' => return Err(refused_entry(&shown, "is a FIFO")),
                b'S' => return Err(refused_entry(&shown, "is a GNU sparse file")),
                other => {
                    return Err(refused_entry(
                        &shown,
                        &format!("has an unsupported type ({})", printable(other)),
                    ));
                }
            };
            if path.is_empty() {
                return Err(Problem::Refused(format!("header {index}: an empty name")));
            }
            let link = match kind {
                Kind::Symlink | Kind::HardLink => {
                    let l = pending
                        .link
                        .take()
                        .unwrap_or_else(|| cstr(&block[157..257]).to_vec());
                    if l.is_empty() {
                        return Err(refused_entry(&shown, "is a link without a target"));
                    }
                    Some(PathBuf::from(OsStr::from_bytes(&l)))
                }
                _ => None,
            };
            let size = pending.size.unwrap_or(header_size);
            let padded = size
                .checked_next_multiple_of(BLOCK)
                .ok_or_else(|| self.too_large())?;
            // Budgeted before a byte of it is read or written.
            self.reserve(padded)?;
            self.data_left = size;
            self.padding_left = padded - size;
            let mode = parse_number(&block[100..108]).unwrap_or(0o644) as u32;
            return Ok(Some(Header {
                path: PathBuf::from(OsStr::from_bytes(&path)),
                link,
                kind,
                size,
                mode,
            }));
        }
    }
}

/// `shown`: the entry's name as [`super::tree::show`] gives it (quoted, cut).
fn refused_entry(shown: &str, why: &str) -> Problem {
    Problem::Refused(format!("entry {shown} {why}"))
}

/// Folds one PAX record into what the next entry uses.
fn apply_pax(pending: &mut Pending, key: &[u8], value: &[u8]) -> Result<(), String> {
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    if key.starts_with(b"GNU.sparse.") {
        return Err("a GNU sparse file (not supported)".into());
    }
    match key {
        b"path" | b"linkpath" if value.contains(&0) => Err(format!(
            "PAX {} contains a NUL byte",
            String::from_utf8_lossy(key)
        )),
        // An empty value removes the field (POSIX): the header's own field counts.
        b"path" => {
            pending.path = (!value.is_empty()).then(|| value.to_vec());
            Ok(())
        }
        b"linkpath" => {
            pending.link = (!value.is_empty()).then(|| value.to_vec());
            Ok(())
        }
        b"size" => {
            let v = std::str::from_utf8(value)
                .ok()
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| format!("PAX size {:?} is not a number", text(value)))?;
            pending.size = Some(v);
            Ok(())
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_octal_and_base256() {
        assert_eq!(parse_number(b"0000644\0"), Some(0o644));
        assert_eq!(parse_number(b"  755 \0"), Some(0o755));
        assert_eq!(parse_number(b"00000000000\0"), Some(0));
        assert_eq!(parse_number(b"\0\0\0"), None);
        assert_eq!(parse_number(b"0009\0"), None);
        let mut f = [0u8; 12];
        f[0] = 0x80;
        f[4..].copy_from_slice(&5_000_000_000u64.to_be_bytes());
        assert_eq!(parse_number(&f), Some(5_000_000_000));
        f[0] = 0xff;
        assert_eq!(parse_number(&f), None, "negative");
        let big = [
            0x80, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0,
        ];
        assert_eq!(parse_number(&big), None, "over u64");
    }

    #[test]
    fn pax_records() {
        let data = b"20 path=a/long/name\n16 size=1234567\n13 mtime=1.5\n";
        let r = parse_pax(data).unwrap();
        assert_eq!(
            r,
            vec![
                (&b"path"[..], &b"a/long/name"[..]),
                (&b"size"[..], &b"1234567"[..]),
                (&b"mtime"[..], &b"1.5"[..])
            ]
        );
        assert!(parse_pax(b"99 path=x\n").is_err(), "length past the end");
        assert!(parse_pax(b"9 path=x\0").is_err(), "no newline");
        assert!(parse_pax(b"pathx\n").is_err(), "no length");
        assert_eq!(parse_pax(b"10 path=x\n\0\0\0").unwrap().len(), 1);
        let mut p = Pending::default();
        assert!(apply_pax(&mut p, b"GNU.sparse.map", b"0,1").is_err());
        assert!(apply_pax(&mut p, b"size", b"-1").is_err());
        assert!(apply_pax(&mut p, b"path", b"a\0b").is_err());
        apply_pax(&mut p, b"path", b"x").unwrap();
        apply_pax(&mut p, b"path", b"").unwrap();
        assert_eq!(p.path, None, "an empty value unsets");
    }

    #[test]
    fn checksums() {
        let mut h = tar::Header::new_ustar();
        h.set_path("a").unwrap();
        h.set_size(0);
        h.set_cksum();
        let mut block = [0u8; 512];
        block.copy_from_slice(h.as_bytes());
        assert!(checksum_ok(&block));
        block[0] = b'b';
        assert!(!checksum_ok(&block));
    }
}
