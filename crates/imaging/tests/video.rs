//! Video frame extraction via ffmpeg. Skipped (with a message) when ffmpeg is missing,
//! unless CI=true, where a missing ffmpeg fails the test.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use verge_imaging::*;

fn ffmpeg_available() -> bool {
    let ok = Command::new("ffmpeg")
        .arg("-version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("ffmpeg is required when CI=true (apt-get install ffmpeg)");
        }
        eprintln!("skipping: ffmpeg not installed");
    }
    ok
}

fn make_video(dir: &Path, name: &str, extra: &[&str]) -> PathBuf {
    let path = dir.join(name);
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=2:size=320x240:rate=10",
        ])
        .args(extra)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg could not make {name}");
    path
}

#[test]
fn frames_from_mp4_and_webm() {
    if !ffmpeg_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mp4 = make_video(dir.path(), "out.mp4", &["-pix_fmt", "yuv420p"]);
    let webm = make_video(dir.path(), "out.webm", &["-c:v", "libvpx", "-b:v", "200k"]);
    let limits = Limits::default();
    let opts = VideoOptions::default();
    for path in [&mp4, &webm] {
        let frame = video_frame(
            VideoSource::Path(path),
            Duration::from_millis(1000),
            &opts,
            &limits,
        )
        .unwrap();
        assert_eq!(
            (frame.format, frame.width, frame.height),
            (Format::Jpeg, 320, 240)
        );
        assert_eq!(info(&frame.bytes, &limits).unwrap().format, Format::Jpeg);
    }
    // From bytes, as PNG.
    let bytes = std::fs::read(&mp4).unwrap();
    let png_opts = VideoOptions {
        output: OutputOptions::new(Format::Png),
        ..VideoOptions::default()
    };
    let first = video_frame(
        VideoSource::Bytes(&bytes),
        Duration::ZERO,
        &png_opts,
        &limits,
    )
    .unwrap();
    let later = video_frame(
        VideoSource::Bytes(&bytes),
        Duration::from_millis(1500),
        &png_opts,
        &limits,
    )
    .unwrap();
    assert_eq!(first.format, Format::Png);
    assert_ne!(
        decode_rgb(&first.bytes),
        decode_rgb(&later.bytes),
        "different timestamps, different frames"
    );
}

#[test]
fn timestamp_past_the_end() {
    if !ffmpeg_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mp4 = make_video(dir.path(), "out.mp4", &["-pix_fmt", "yuv420p"]);
    let err = video_frame(
        VideoSource::Path(&mp4),
        Duration::from_secs(30),
        &VideoOptions::default(),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoFrameAt { .. }), "{err}");
}

#[test]
fn non_video_inputs() {
    if !ffmpeg_available() {
        return;
    }
    let limits = Limits::default();
    let opts = VideoOptions::default();
    let png = png(&gradient(16, 16));
    let err = video_frame(VideoSource::Bytes(&png), Duration::ZERO, &opts, &limits).unwrap_err();
    assert!(matches!(err, Error::NotAVideo { .. }), "{err}");
    let junk: Vec<u8> = (0..10_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let err = video_frame(VideoSource::Bytes(&junk), Duration::ZERO, &opts, &limits).unwrap_err();
    assert!(matches!(err, Error::NotAVideo { .. }), "{err}");
    let err = video_frame(
        VideoSource::Bytes(b"hello, this is text"),
        Duration::ZERO,
        &opts,
        &limits,
    )
    .unwrap_err();
    assert!(matches!(err, Error::NotAVideo { .. }), "{err}");
    let err = video_frame(VideoSource::Bytes(&[]), Duration::ZERO, &opts, &limits).unwrap_err();
    assert!(matches!(err, Error::NotAVideo { .. }), "{err}");
    // Audio only: no video stream.
    let dir = tempfile::tempdir().unwrap();
    let wav = dir.path().join("tone.wav");
    let ok = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=duration=1",
        ])
        .arg(&wav)
        .status()
        .unwrap();
    assert!(ok.success());
    let err = video_frame(VideoSource::Path(&wav), Duration::ZERO, &opts, &limits).unwrap_err();
    assert!(matches!(err, Error::NotAVideo { .. }), "{err}");
}

#[test]
fn missing_tool_and_timeout_are_clear() {
    let opts = VideoOptions {
        ffmpeg: "/nonexistent/ffmpeg".into(),
        ..VideoOptions::default()
    };
    let err = video_frame(
        VideoSource::Bytes(b"\x1aE\xdf\xa3 something"),
        Duration::ZERO,
        &opts,
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::VideoTool { message } if message.contains("not found")),
        "{err}"
    );
}
