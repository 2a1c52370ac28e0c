//! Hostile artifacts end to end: a real `verge cloud`, a real `verge-edge`, archives
//! pushed with `verge artifact push` and native Apps applied with them.
//!
//! - A symlink chain (`d -> .`, then `d/d/…/.verge-ready -> ../../…/OUTSIDE/target`)
//!   that used to make the agent write its ready marker outside the app's directory.
//! - A ~19 MB gzip whose first header is a GNU long name claiming ~19 GiB, which used
//!   to be read into memory whole (2.1 GB RSS) before any limit applied.
//!
//! Each instance ends `Failed` with the reason naming the entry, nothing appears
//! outside, the agent's peak RSS stays bounded, and each artifact is downloaded once:
//! across several times the old retry period, and across an agent restart.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use flate2::{Compress, Compression, Crc, FlushCompress, Status};
use serde_json::json;
use verge_testkit::{Cloud, Edge, app_instances, app_object, eventually, success, verge_cli};

const BIN: &str = env!("CARGO_BIN_EXE_verge");
/// Peak RSS allowed to the agent while it refuses both archives (a debug build idles
/// at a few tens of MiB; the long-name bomb used to take it past 2 GiB).
const MAX_AGENT_HWM_KIB: u64 = 150 * 1024;

/// A POSIX ustar header block; sizes over the octal range in GNU base-256.
fn header(name: &[u8], kind: u8, size: u64, link: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000777\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    if size < 0o77777777777 {
        h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    } else {
        h[124] = 0x80;
        h[128..136].copy_from_slice(&size.to_be_bytes());
    }
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = kind;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A PAX header setting the next entry's `linkpath`.
fn pax_linkpath(target: &str) -> Vec<u8> {
    let body = format!(" linkpath={target}\n");
    let mut len = body.len() + 1;
    while len != body.len() + len.to_string().len() {
        len = body.len() + len.to_string().len();
    }
    let mut data = format!("{len}{body}").into_bytes();
    let size = data.len() as u64;
    data.resize(data.len().div_ceil(512) * 512, 0);
    [header(b"PaxHeaders/l", b'x', size, b""), data].concat()
}

/// `d -> .`, then `d/d/…/d/.verge-ready` (`depth` times `d`) pointing at `target`
/// through `depth` times `..` — as text it stays inside.
fn symlink_chain(target: &Path, depth: usize) -> Vec<u8> {
    let entry = format!("{}.verge-ready", "d/".repeat(depth));
    let up = format!(
        "{}{}",
        "../".repeat(depth),
        target.to_str().unwrap().trim_start_matches('/')
    );
    let mut tar = header(b"d", b'2', 0, b".");
    tar.extend(pax_linkpath(&up));
    tar.extend(header(entry.as_bytes(), b'2', 0, b""));
    tar.extend([0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    gz.finish().unwrap()
}

/// Raw deflate of `input` ending in `flush`.
fn deflate(c: &mut Compress, mut input: &[u8], flush: FlushCompress) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 << 20);
    loop {
        let before = c.total_in();
        let status = c.compress_vec(input, &mut out, flush).unwrap();
        input = &input[(c.total_in() - before) as usize..];
        let done = match flush {
            FlushCompress::Finish => status == Status::StreamEnd,
            _ => input.is_empty() && out.len() < out.capacity(),
        };
        if done {
            return out;
        }
        out.reserve(1 << 20);
    }
}

/// A gzip holding a GNU long-name header that claims `chunks` × 16 MiB of name,
/// followed by exactly that many zeros. Built without compressing them all: after a
/// full flush the compressor starts afresh, so every 16 MiB of zeros deflates to the
/// same bytes, which are repeated; the CRC is combined the same way.
fn long_name_bomb(chunks: u64) -> Vec<u8> {
    const CHUNK: usize = 16 << 20;
    let claimed = chunks * CHUNK as u64;
    let head = header(b"././@LongLink", b'L', claimed, b"");
    let zeros = vec![0u8; CHUNK];
    let mut c = Compress::new(Compression::best(), false);
    let first = deflate(&mut c, &head, FlushCompress::Full);
    let block = deflate(&mut c, &zeros, FlushCompress::Full);
    assert_eq!(
        deflate(&mut c, &zeros, FlushCompress::Full),
        block,
        "full flushes repeat"
    );
    let end = deflate(&mut c, &[], FlushCompress::Finish);
    let mut crc = Crc::new();
    crc.update(&head);
    let mut chunk_crc = Crc::new();
    chunk_crc.update(&zeros);
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    out.extend(&first);
    for _ in 0..chunks {
        out.extend(&block);
        crc.combine(&chunk_crc);
    }
    out.extend(&end);
    out.extend(crc.sum().to_le_bytes());
    out.extend(((512 + claimed) as u32).to_le_bytes());
    out
}

fn push(cloud: &Cloud, file: &Path) -> Result<String> {
    let out = success(&verge_cli(
        Path::new(BIN),
        cloud,
        &["artifact", "push", file.to_str().unwrap()],
    )?);
    let sha = out
        .split(|c: char| !c.is_ascii_hexdigit())
        .find(|w| w.len() == 64)
        .context("no sha256 in the push output")?;
    Ok(sha.to_string())
}

/// Requests for an artifact's content the cloud has answered, whatever the status.
async fn artifact_downloads(cloud: &Cloud) -> Result<u64> {
    let text = cloud.metrics().await?;
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("verge_http_requests_total{")
                && l.contains(r#"route="/api/v1/artifacts/{sha256}""#)
                && l.contains(r#"method="GET""#)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

/// Waits until the instance of `app` on `node` is `Failed` with an error containing
/// every one of `needles`; returns that error.
async fn failed_with(cloud: &Cloud, app: &str, node: &str, needles: &[&str]) -> Result<String> {
    eventually(Duration::from_secs(90), app, async || {
        let a = cloud.app(app).await.ok()?;
        let i = app_instances(&a, node).first().cloned().cloned()?;
        let err = i["lastError"].as_str()?.to_string();
        (i["state"] == "Failed" && needles.iter().all(|n| err.contains(n))).then_some(err)
    })
    .await
}

/// The cgroup parents `verge-edge run` made for the node.
struct CgroupCleanup(String);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        for ctl in ["memory/", "cpu/", "cpuacct/", ""] {
            let _ = std::fs::remove_dir(format!("/sys/fs/cgroup/{ctl}verge-{}", self.0));
        }
    }
}

#[test]
fn the_bomb_builder_makes_a_valid_gzip() {
    // Small enough to decompress whole: the CRC and length check pass.
    let gz = long_name_bomb(2);
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut all).unwrap();
    assert_eq!(all.len(), 512 + (32 << 20));
    assert_eq!(all[156], b'L');
    assert!(all[512..].iter().all(|b| *b == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_archives_are_refused_once_with_memory_bounded() -> Result<()> {
    let edge_bin = verge_testkit::workspace_bin("verge-edge-cli", "verge-edge")?;
    let cloud = Cloud::start(Path::new(BIN), &["--heartbeat-interval", "1s"]).await?;
    let token = cloud.bootstrap_token_with(1, &["tier=edge"]).await?;
    let node = format!("unpack-{}", std::process::id());
    let _cleanup = CgroupCleanup(node.clone());
    let dirs = tempfile::tempdir()?;
    let mut edge = Edge::join_and_start(
        &edge_bin,
        &cloud,
        &token,
        &node,
        &["tier=edge"],
        &dirs.path().join(&node),
        &["--heartbeat-interval", "1s", "--status-interval", "5s"],
    )?;
    cloud.wait_ready(&[&node]).await?;

    // The place the chain aims at: its directory exists, so a write would succeed.
    let outside = dirs.path().join("outside");
    std::fs::create_dir_all(&outside)?;
    let target = outside.join("target");
    let chain = dirs.path().join("chain.tar.gz");
    std::fs::write(&chain, symlink_chain(&target, 40))?;
    // 1,160 × 16 MiB ≈ 19.5 GB of zeros: ~19 MB compressed.
    let bomb = dirs.path().join("bomb.tar.gz");
    let bomb_bytes = long_name_bomb(1160);
    assert!(
        (15 << 20..25 << 20).contains(&bomb_bytes.len()),
        "{} bytes",
        bomb_bytes.len()
    );
    std::fs::write(&bomb, &bomb_bytes)?;
    drop(bomb_bytes);
    let chain_sha = push(&cloud, &chain)?;
    let bomb_sha = push(&cloud, &bomb)?;
    let downloads_before = artifact_downloads(&cloud).await?;

    for (name, sha) in [("chain", &chain_sha), ("bomb", &bomb_sha)] {
        let workload = json!({"native": {"artifact": {"sha256": sha}, "command": "app.sh"}});
        cloud
            .apply("apps", &app_object(name, "1.0.0", workload, json!({})))
            .await?;
    }
    let chain_entry = format!(r#"entry "{}.verge-ready""#, "d/".repeat(40));
    let chain_err = failed_with(
        &cloud,
        "chain",
        &node,
        &[
            chain_sha.as_str(),
            chain_entry.as_str(),
            r#"its parent "d" is a symlink"#,
        ],
    )
    .await?;
    let claimed = 1160u64 * (16 << 20);
    let bomb_reason =
        format!("header 1: a GNU long-name header of {claimed} bytes (the limit is 4096)");
    let bomb_err = failed_with(
        &cloud,
        "bomb",
        &node,
        &[bomb_sha.as_str(), bomb_reason.as_str()],
    )
    .await?;
    assert!(!chain_err.contains("remembered") && !bomb_err.contains("remembered"));

    // The old supervisor retried after 1, 2, 4, 8 s, downloading each time: wait
    // well past that. Still one download each, nothing outside, memory bounded.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(
        artifact_downloads(&cloud).await?,
        downloads_before + 2,
        "each artifact downloaded once"
    );
    for name in ["chain", "bomb"] {
        let a = cloud.app(name).await?;
        let i = app_instances(&a, &node);
        assert_eq!(i[0]["state"], "Failed", "{a}");
        assert_eq!(i[0]["restarts"], 0, "not retried: {a}");
    }
    assert!(
        std::fs::symlink_metadata(&target).is_err(),
        "the chain wrote {}",
        target.display()
    );
    assert_eq!(std::fs::read_dir(&outside)?.count(), 0);
    let pid = edge.pid().context("edge pid")?;
    let hwm = peak_rss_kib(pid)?;
    eprintln!("verge-edge peak RSS: {hwm} KiB");
    assert!(
        hwm < MAX_AGENT_HWM_KIB,
        "verge-edge peak RSS {hwm} KiB (bound {MAX_AGENT_HWM_KIB} KiB)"
    );
    // Nothing of either archive is kept on the node but the refusal records.
    let apps = dirs.path().join(&node).join("apps");
    for name in ["chain", "bomb"] {
        assert!(!apps.join(name).join("1.0.0").exists());
    }
    assert!(!apps.join(".downloads").join(&chain_sha).exists());
    assert!(!apps.join(".downloads").join(&bomb_sha).exists());

    // A restarted agent answers from the refusal records: no new download.
    edge.restart()?;
    failed_with(
        &cloud,
        "chain",
        &node,
        &[
            "remembered; not downloaded again",
            r#"its parent "d" is a symlink"#,
        ],
    )
    .await?;
    failed_with(
        &cloud,
        "bomb",
        &node,
        &["remembered; not downloaded again", "GNU long-name header"],
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(artifact_downloads(&cloud).await?, downloads_before + 2);
    assert!(std::fs::symlink_metadata(&target).is_err());
    Ok(())
}
