//! The worker protocol's framing: a 4-byte big-endian length, then the payload.
//!
//! Both directions travel over one unix stream socket per worker (the worker connects
//! to a socket the runtime binds for it), so the user's code is free to print to
//! stdout/stderr and read stdin without disturbing the protocol.
//!
//! - Request payload: `b'J'` + JSON text, or `b'B'` + u16 content-type length +
//!   content type + raw bytes. A worker serves one request at a time, so no id.
//! - Response payload: kind byte + u32 log length + captured logs + rest:
//!   `R` ready (after import), `L` load error (rest: the interpreter's message),
//!   `J` JSON output, `B` bytes output (u16 ct length + content type + data),
//!   `E` handler error (rest: JSON `{"type","message","traceback"}`).

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest frame either side accepts.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {len} bytes exceeds the {max} byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("truncated frame: stream ended after {got} of {expected} bytes")]
    Truncated { expected: usize, got: usize },
    #[error("stream closed")]
    Closed,
    #[error("read failed: {0}")]
    Io(String),
}

/// Appends one frame (header + payload) to `out`.
pub fn encode(out: &mut Vec<u8>, payload: &[u8]) -> Result<(), FrameError> {
    if payload.len() > MAX_FRAME {
        return Err(FrameError::TooLarge {
            len: payload.len(),
            max: MAX_FRAME,
        });
    }
    out.reserve(4 + payload.len());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    Ok(())
}

/// Takes one complete frame off the front of `buf`, if there is one.
pub fn decode(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if buf.len() < 4 + len {
        buf.reserve(4 + len - buf.len());
        return Ok(None);
    }
    buf.advance(4);
    Ok(Some(buf.split_to(len).freeze()))
}

/// Reads frames from a byte stream, buffering what arrives beyond the current frame.
#[derive(Debug, Default)]
pub struct FrameReader {
    buf: BytesMut,
}

impl FrameReader {
    pub fn new() -> Self {
        FrameReader {
            buf: BytesMut::with_capacity(16 * 1024),
        }
    }

    pub async fn read<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> Result<Bytes, FrameError> {
        loop {
            if let Some(frame) = decode(&mut self.buf, MAX_FRAME)? {
                return Ok(frame);
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(16 * 1024);
            }
            let n = r
                .read_buf(&mut self.buf)
                .await
                .map_err(|e| FrameError::Io(e.to_string()))?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Err(FrameError::Closed);
                }
                let expected = if self.buf.len() >= 4 {
                    u32::from_be_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]])
                        as usize
                        + 4
                } else {
                    4
                };
                return Err(FrameError::Truncated {
                    expected,
                    got: self.buf.len(),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_two_frames_in_one_buffer() {
        let mut out = Vec::new();
        encode(&mut out, b"hello").unwrap();
        encode(&mut out, b"J{}").unwrap();
        let mut buf = BytesMut::from(&out[..]);
        assert_eq!(decode(&mut buf, MAX_FRAME).unwrap().unwrap(), &b"hello"[..]);
        assert_eq!(decode(&mut buf, MAX_FRAME).unwrap().unwrap(), &b"J{}"[..]);
        assert_eq!(decode(&mut buf, MAX_FRAME).unwrap(), None);
    }

    #[test]
    fn partial_frame_waits_for_more() {
        let mut out = Vec::new();
        encode(&mut out, b"0123456789").unwrap();
        let mut buf = BytesMut::from(&out[..7]);
        assert_eq!(decode(&mut buf, MAX_FRAME).unwrap(), None);
        buf.extend_from_slice(&out[7..]);
        assert_eq!(
            decode(&mut buf, MAX_FRAME).unwrap().unwrap(),
            &b"0123456789"[..]
        );
    }

    #[test]
    fn oversize_frame_is_rejected_both_ways() {
        let mut buf = BytesMut::from(&((MAX_FRAME as u32) + 1).to_be_bytes()[..]);
        assert_eq!(
            decode(&mut buf, MAX_FRAME),
            Err(FrameError::TooLarge {
                len: MAX_FRAME + 1,
                max: MAX_FRAME
            })
        );
        let big = vec![0u8; MAX_FRAME + 1];
        let err = encode(&mut Vec::new(), &big).unwrap_err();
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[test]
    fn zero_length_frame_is_rejected() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
        assert_eq!(decode(&mut buf, MAX_FRAME), Err(FrameError::Empty));
    }

    #[tokio::test]
    async fn truncated_frame_and_clean_close() {
        let mut out = Vec::new();
        encode(&mut out, b"abcdef").unwrap();
        let mut r = &out[..8];
        let err = FrameReader::new().read(&mut r).await.unwrap_err();
        assert_eq!(
            err,
            FrameError::Truncated {
                expected: 10,
                got: 8
            }
        );
        let mut r = &out[..2];
        let err = FrameReader::new().read(&mut r).await.unwrap_err();
        assert_eq!(
            err,
            FrameError::Truncated {
                expected: 4,
                got: 2
            }
        );
        let mut r: &[u8] = &[];
        assert_eq!(
            FrameReader::new().read(&mut r).await.unwrap_err(),
            FrameError::Closed
        );
        let mut r = &out[..];
        let mut reader = FrameReader::new();
        assert_eq!(reader.read(&mut r).await.unwrap(), &b"abcdef"[..]);
    }
}
