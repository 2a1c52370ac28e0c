//! Peak memory stays bounded on hostile input. The check runs in a child process (this
//! test binary re-executed, filtered to one test) so other tests do not pollute VmHWM.

mod common;

use std::process::Command;

use common::*;
use verge_imaging::*;

const CHILD_ENV: &str = "VERGE_IMAGING_RSS_CHILD";
const MAX_RSS_KIB: u64 = 300 * 1024;

fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn rss_child_hostile_inputs() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let limits = Limits::default();
    let out = OutputOptions::new(Format::Png);
    let bomb = png_claiming(100_000, 100_000);
    assert!(matches!(
        process(&bomb, &Pipeline::default(), &out, &limits),
        Err(Error::TooLarge { .. })
    ));
    let gif = many_frame_gif(10_000);
    assert!(matches!(
        process(&gif, &Pipeline::default(), &out, &limits),
        Err(Error::TooManyFrames { .. })
    ));
    assert!(matches!(
        gif_frames(&gif, 10, &out, &limits),
        Err(Error::TooManyFrames { .. })
    ));
    // With the frame limit raised, only the requested frames are decoded.
    let raised = Limits {
        max_frames: 20_000,
        ..Limits::default()
    };
    assert_eq!(gif_frames(&gif, 5, &out, &raised).unwrap().len(), 5);
    // A bomb just under the pixel limit as a 1/8-scaled JPEG decode: fine too.
    let big = png_claiming(7_000, 7_000);
    assert!(process(&big, &Pipeline::default(), &out, &limits).is_err());
    println!("\nVMHWM_KIB={}", vm_hwm_kib());
}

#[test]
fn peak_rss_is_bounded_on_bomb_and_many_frames() {
    let exe = std::env::current_exe().unwrap();
    let output = Command::new(exe)
        .args([
            "--exact",
            "rss_child_hostile_inputs",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let kib: u64 = stdout
        .split("VMHWM_KIB=")
        .nth(1)
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no VMHWM_KIB line in child output: {stdout}"));
    eprintln!("peak RSS of the hostile-input child: {kib} KiB");
    assert!(
        kib < MAX_RSS_KIB,
        "peak RSS {kib} KiB exceeds {MAX_RSS_KIB} KiB"
    );
}
