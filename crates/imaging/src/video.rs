//! Video frame extraction through the `ffmpeg` command-line tool, run as a subprocess with
//! a wall-clock timeout and an address-space limit (`ulimit -v` via `/bin/sh`). The frame
//! comes back as PNG on stdout and is re-encoded by this crate.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::encode::{Encoded, OutputOptions, encode};
use crate::{Error, Format, Limits, Result, decode, probe};

/// Where the video comes from.
#[derive(Debug, Clone, Copy)]
pub enum VideoSource<'a> {
    /// A file on disk.
    Path(&'a Path),
    /// Bytes in memory (written to a private temporary file for ffmpeg).
    Bytes(&'a [u8]),
}

/// Settings for [`video_frame`].
#[derive(Debug, Clone)]
pub struct VideoOptions {
    /// The ffmpeg executable (looked up in `PATH` unless absolute).
    pub ffmpeg: PathBuf,
    /// Wall-clock limit for ffmpeg.
    pub timeout: Duration,
    /// Address-space limit for ffmpeg, in bytes.
    pub memory_limit_bytes: u64,
    /// Largest accepted video, in bytes.
    pub max_input_bytes: u64,
    /// Encoder settings for the frame (default JPEG).
    pub output: OutputOptions,
}

impl Default for VideoOptions {
    fn default() -> Self {
        VideoOptions {
            ffmpeg: PathBuf::from("ffmpeg"),
            timeout: Duration::from_secs(20),
            memory_limit_bytes: 1 << 30,
            max_input_bytes: 1 << 30,
            output: OutputOptions::new(Format::Jpeg),
        }
    }
}

const MAX_STDOUT: u64 = 256 << 20;
const MAX_STDERR: u64 = 64 << 10;

/// Extracts the frame at `at` (seeking with `-ss` before `-i`) and encodes it with
/// `opts.output`. A non-video gives [`Error::NotAVideo`]; a timestamp past the end gives
/// [`Error::NoFrameAt`]; a missing or failing ffmpeg gives [`Error::VideoTool`].
pub fn video_frame(
    source: VideoSource<'_>,
    at: Duration,
    opts: &VideoOptions,
    limits: &Limits,
) -> Result<Encoded> {
    opts.output.validate()?;
    let mut _tmp = None;
    let path: PathBuf = match source {
        VideoSource::Path(p) => {
            let len = std::fs::metadata(p)?.len();
            check_video_size(len, opts)?;
            let mut head = [0u8; 16];
            let n = std::fs::File::open(p)?.read(&mut head)?;
            reject_images(&head[..n])?;
            p.to_path_buf()
        }
        VideoSource::Bytes(b) => {
            check_video_size(b.len() as u64, opts)?;
            reject_images(b)?;
            let mut f = tempfile::NamedTempFile::new()?;
            f.write_all(b)?;
            f.flush()?;
            let p = f.path().to_path_buf();
            _tmp = Some(f);
            p
        }
    };
    let png = run_ffmpeg(&path, at, opts)?;
    if png.is_empty() {
        return Err(Error::NoFrameAt { at });
    }
    let header = probe::probe(&png, limits)?;
    let decoded = decode::decode(&png, header, limits, None)?;
    encode(&decoded, &opts.output, Format::Jpeg)
}

fn check_video_size(len: u64, opts: &VideoOptions) -> Result<()> {
    if len > opts.max_input_bytes {
        return Err(Error::InputTooLarge {
            size: usize::try_from(len).unwrap_or(usize::MAX),
            max: usize::try_from(opts.max_input_bytes).unwrap_or(usize::MAX),
        });
    }
    if len == 0 {
        return Err(Error::NotAVideo {
            message: "empty input".into(),
        });
    }
    Ok(())
}

fn reject_images(head: &[u8]) -> Result<()> {
    if let Ok(format) = probe::sniff(head) {
        return Err(Error::NotAVideo {
            message: format!("input is a {format} image"),
        });
    }
    Ok(())
}

fn run_ffmpeg(path: &Path, at: Duration, opts: &VideoOptions) -> Result<Vec<u8>> {
    let kib = (opts.memory_limit_bytes / 1024).max(1);
    let ts = format!("{}.{:06}", at.as_secs(), at.subsec_micros());
    let mut child = Command::new("/bin/sh")
        .arg("-c")
        .arg("ulimit -v \"$1\" || exit 125; shift; exec \"$@\"")
        .arg("sh")
        .arg(kib.to_string())
        .arg(&opts.ffmpeg)
        .args([
            "-nostdin",
            "-hide_banner",
            "-loglevel",
            "error",
            "-threads",
            "1",
            "-ss",
            &ts,
            "-i",
        ])
        .arg(path)
        .args([
            "-map",
            "0:v:0",
            "-frames:v",
            "1",
            "-an",
            "-sn",
            "-dn",
            "-f",
            "image2pipe",
            "-c:v",
            "png",
            "pipe:1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::VideoTool {
            message: format!("cannot start /bin/sh: {e}"),
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout {
            let _ = s.take(MAX_STDOUT).read_to_end(&mut buf);
        }
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr {
            let _ = s.take(MAX_STDERR).read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    });
    let deadline = Instant::now() + opts.timeout;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            let _ = out_reader.join();
            let _ = err_reader.join();
            return Err(Error::VideoTool {
                message: format!("ffmpeg timed out after {:?}", opts.timeout),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    let err_line = err
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    match status.code() {
        Some(0) => Ok(out),
        Some(127) => Err(Error::VideoTool {
            message: format!(
                "ffmpeg not found ({}): install ffmpeg",
                opts.ffmpeg.display()
            ),
        }),
        Some(125) => Err(Error::VideoTool {
            message: "cannot set the memory limit".into(),
        }),
        code => {
            let lower = err.to_lowercase();
            if lower.contains("invalid data found")
                || lower.contains("matches no streams")
                || lower.contains("could not find codec parameters")
                || lower.contains("does not contain any stream")
                || lower.contains("end of file")
            {
                Err(Error::NotAVideo { message: err_line })
            } else if code.is_none() {
                Err(Error::VideoTool {
                    message: format!(
                        "ffmpeg was killed (memory limit {} bytes?): {err_line}",
                        opts.memory_limit_bytes
                    ),
                })
            } else {
                Err(Error::VideoTool {
                    message: format!("ffmpeg failed ({status}): {err_line}"),
                })
            }
        }
    }
}
