//! Unit tests of `artifact`: unpacking (tar, tar.gz, refusals) and the resumable
//! download against a small local HTTP server.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use sha2::{Digest, Sha256};

use super::*;

// ---- unpack ----

fn tar_bytes(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    b.into_inner().unwrap()
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &[u8], mode: u32) {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, data).unwrap();
}

/// An entry whose name is written raw (the builder refuses `..` and absolute paths).
fn add_raw(b: &mut tar::Builder<Vec<u8>>, name: &str, kind: tar::EntryType, link: Option<&str>) {
    let mut h = tar::Header::new_gnu();
    let field = &mut h.as_old_mut().name;
    field[..name.len()].copy_from_slice(name.as_bytes());
    h.set_size(if kind == tar::EntryType::Regular {
        4
    } else {
        0
    });
    h.set_mode(0o644);
    h.set_entry_type(kind);
    if let Some(l) = link {
        h.as_old_mut().linkname[..l.len()].copy_from_slice(l.as_bytes());
    }
    h.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Regular {
        b"evil"
    } else {
        b""
    };
    b.append(&h, data).unwrap();
}

fn sample_tar() -> Vec<u8> {
    tar_bytes(|b| {
        add_file(b, "bin/app", b"#!/bin/sh\necho hi\n", 0o755);
        add_file(b, "etc/app.conf", b"port = 8080\n", 0o644);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "bin/run", "app").unwrap();
    })
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn check_sample(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::read(dir.join("bin/app")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("etc/app.conf")).unwrap(),
        "port = 8080\n"
    );
    let mode = std::fs::metadata(dir.join("bin/app"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o111, 0o111, "executable bit kept: {mode:o}");
    assert_eq!(
        std::fs::read_link(dir.join("bin/run")).unwrap(),
        Path::new("app")
    );
}

#[test]
fn unpacks_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.bin");
    std::fs::write(&archive, sample_tar()).unwrap();
    let dir = tmp.path().join("out");
    unpack(&archive, &dir).unwrap();
    check_sample(&dir);
    assert!(!tmp_dir(&dir).exists());
}

#[test]
fn unpacks_tar_gz_whatever_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    // Named like a zip: detection is by content.
    let archive = tmp.path().join("a.zip");
    std::fs::write(&archive, gzip(&sample_tar())).unwrap();
    let dir = tmp.path().join("out");
    unpack(&archive, &dir).unwrap();
    check_sample(&dir);
}

#[test]
fn replaces_an_existing_dir_and_a_stale_tmp() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar");
    std::fs::write(&archive, sample_tar()).unwrap();
    let dir = tmp.path().join("out");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("old-file"), "x").unwrap();
    std::fs::create_dir_all(tmp_dir(&dir)).unwrap();
    std::fs::write(tmp_dir(&dir).join("half"), "x").unwrap();
    unpack(&archive, &dir).unwrap();
    check_sample(&dir);
    assert!(!dir.join("old-file").exists());
    assert!(!tmp_dir(&dir).exists());
}

#[test]
fn not_an_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("out");
    for (name, data) in [
        ("text.tar", b"hello, this is not a tar archive".repeat(40)),
        ("empty.tar.gz", Vec::new()),
        (
            "gzipped-text.tgz",
            gzip(&b"just text, compressed".repeat(40)),
        ),
        ("short", vec![0x1f]),
    ] {
        let archive = tmp.path().join(name);
        std::fs::write(&archive, &data).unwrap();
        let err = unpack(&archive, &dir).unwrap_err();
        assert!(
            matches!(&err, Error::NotAnArchive { path } if path == &archive),
            "{name}: {err}"
        );
        assert!(
            err.to_string().contains("not a tar or tar.gz archive"),
            "{err}"
        );
        assert!(!dir.exists() && !tmp_dir(&dir).exists());
    }
}

fn refused(data: Vec<u8>, what: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar");
    std::fs::write(&archive, data).unwrap();
    let dir = tmp.path().join("sub").join("out");
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    let err = unpack(&archive, &dir).unwrap_err();
    assert!(matches!(err, Error::UnsafeArchive { .. }), "{what}: {err}");
    // Nothing half-unpacked, nothing outside.
    assert!(!dir.exists(), "{what}");
    assert!(!tmp_dir(&dir).exists(), "{what}");
    assert!(!tmp.path().join("sub").join("evil").exists(), "{what}");
    assert!(!tmp.path().join("evil").exists(), "{what}");
    err.to_string()
}

#[test]
fn path_traversal_is_refused() {
    let ok_then = |name: &str| {
        tar_bytes(|b| {
            add_file(b, "fine", b"ok", 0o644);
            add_raw(b, name, tar::EntryType::Regular, None);
        })
    };
    let msg = refused(ok_then("../evil"), "dot-dot");
    assert!(msg.contains("'..'") && msg.contains("../evil"), "{msg}");
    let msg = refused(ok_then("a/../../evil"), "nested dot-dot");
    assert!(msg.contains("'..'"), "{msg}");
    let msg = refused(ok_then("/tmp/evil"), "absolute");
    assert!(msg.contains("absolute"), "{msg}");
}

#[test]
fn devices_and_escaping_links_are_refused() {
    let one = |name: &str, kind: tar::EntryType, link: Option<&str>| {
        tar_bytes(|b| add_raw(b, name, kind, link))
    };
    let msg = refused(one("null", tar::EntryType::Char, None), "char device");
    assert!(msg.contains("device file"), "{msg}");
    let msg = refused(one("disk", tar::EntryType::Block, None), "block device");
    assert!(msg.contains("device file"), "{msg}");
    refused(one("pipe", tar::EntryType::Fifo, None), "fifo");
    let msg = refused(
        one("etc", tar::EntryType::Symlink, Some("/etc")),
        "absolute symlink",
    );
    assert!(msg.contains("points outside"), "{msg}");
    refused(
        one("a/up", tar::EntryType::Symlink, Some("../../evil")),
        "escaping symlink",
    );
    refused(
        one("hard", tar::EntryType::Link, Some("../evil")),
        "escaping hard link",
    );
    // A link that stays inside is fine.
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar");
    std::fs::write(
        &archive,
        tar_bytes(|b| {
            add_file(b, "lib/libx.so.1", b"elf", 0o644);
            add_raw(
                b,
                "lib/sub/libx.so",
                tar::EntryType::Symlink,
                Some("../libx.so.1"),
            );
        }),
    )
    .unwrap();
    unpack(&archive, &tmp.path().join("out")).unwrap();
}

#[test]
fn size_and_entry_bounds() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar");
    std::fs::write(&archive, sample_tar()).unwrap();
    let dir = tmp.path().join("out");
    let err = unpack_with_limits(
        &archive,
        &dir,
        UnpackLimits {
            max_bytes: 10,
            max_entries: 100,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("more than 10 bytes"), "{err}");
    let err = unpack_with_limits(
        &archive,
        &dir,
        UnpackLimits {
            max_bytes: 1 << 20,
            max_entries: 2,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("more than 2 entries"), "{err}");
    assert!(!dir.exists() && !tmp_dir(&dir).exists());
}

// ---- fetch ----

#[derive(Clone, Copy, PartialEq)]
pub(super) enum Ranges {
    Honor,
    Ignore,
}

pub(super) struct Server {
    pub(super) url: String,
    /// The `Range` header of every request, in order.
    pub(super) seen: Arc<Mutex<Vec<Option<String>>>>,
}

/// Serves `content` at `/a` (404 elsewhere), honouring or ignoring `Range: bytes=N-`.
pub(super) async fn serve(content: Vec<u8>, ranges: Ranges) -> Server {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let content = Arc::new(content);
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let content = content.clone();
            let log = log.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let content = content.clone();
                    let range = req
                        .headers()
                        .get("range")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    log.lock().unwrap().push(range.clone());
                    async move {
                        let mut resp = hyper::Response::builder();
                        if req.uri().path() != "/a" {
                            return Ok::<_, Infallible>(
                                resp.status(404)
                                    .body(Full::new(Bytes::from_static(
                                        b"{\"message\":\"no such artifact\"}",
                                    )))
                                    .unwrap(),
                            );
                        }
                        let start = range
                            .as_deref()
                            .and_then(|r| r.strip_prefix("bytes="))
                            .and_then(|r| r.strip_suffix('-'))
                            .and_then(|n| n.parse::<usize>().ok());
                        let body = match (ranges, start) {
                            (Ranges::Honor, Some(s)) if s >= content.len() => {
                                resp = resp
                                    .status(416)
                                    .header("content-range", format!("bytes */{}", content.len()));
                                Vec::new()
                            }
                            (Ranges::Honor, Some(s)) => {
                                resp = resp.status(206).header(
                                    "content-range",
                                    format!("bytes {s}-{}/{}", content.len() - 1, content.len()),
                                );
                                content[s..].to_vec()
                            }
                            _ => content.to_vec(),
                        };
                        Ok(resp.body(Full::new(Bytes::from(body))).unwrap())
                    }
                });
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    Server {
        url: format!("http://{addr}/a"),
        seen,
    }
}

pub(super) fn content() -> (Vec<u8>, String) {
    let data: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = hex::encode(Sha256::digest(&data));
    (data, digest)
}

fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().build().unwrap()
}

#[tokio::test]
async fn fetch_fresh_then_cached() {
    let (data, digest) = content();
    let srv = serve(data.clone(), Ranges::Honor).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("cache").join(&digest);
    let got = fetch(&client(), &srv.url, &digest, &dest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(got, dest);
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert!(!partial_path(&dest).exists());
    assert_eq!(*srv.seen.lock().unwrap(), vec![None]);
    // Already there and intact: no request.
    fetch(&client(), &srv.url, &digest, &dest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(srv.seen.lock().unwrap().len(), 1);
    // Uppercase digests are the same digest.
    fetch(&client(), &srv.url, &digest.to_uppercase(), &dest, 1 << 20)
        .await
        .unwrap();
}

#[tokio::test]
async fn fetch_resumes_from_a_partial_file() {
    let (data, digest) = content();
    let srv = serve(data.clone(), Ranges::Honor).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    std::fs::write(partial_path(&dest), &data[..70_000]).unwrap();
    fetch(&client(), &srv.url, &digest, &dest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        *srv.seen.lock().unwrap(),
        vec![Some("bytes=70000-".to_string())]
    );
}

#[tokio::test]
async fn a_complete_partial_file_is_verified_and_kept() {
    let (data, digest) = content();
    let srv = serve(data.clone(), Ranges::Honor).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    std::fs::write(partial_path(&dest), &data).unwrap();
    fetch(&client(), &srv.url, &digest, &dest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        *srv.seen.lock().unwrap(),
        vec![Some(format!("bytes={}-", data.len()))]
    );
}

#[tokio::test]
async fn a_wrong_prefix_fails_the_digest_and_is_removed() {
    let (data, digest) = content();
    let srv = serve(data.clone(), Ranges::Honor).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    std::fs::write(partial_path(&dest), vec![0u8; 1000]).unwrap();
    let err = fetch(&client(), &srv.url, &digest, &dest, 1 << 20)
        .await
        .unwrap_err();
    let got = hex::encode(Sha256::digest(
        [&vec![0u8; 1000][..], &data[1000..]].concat(),
    ));
    match &err {
        Error::ArtifactDigest {
            url,
            expected,
            got: g,
        } => {
            assert_eq!(url, &srv.url);
            assert_eq!(expected, &digest);
            assert_eq!(g, &got);
        }
        other => panic!("unexpected {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains(&digest) && msg.contains(&got), "{msg}");
    assert!(!partial_path(&dest).exists() && !dest.exists());
    // The next attempt starts over and succeeds.
    fetch(&client(), &srv.url, &digest, &dest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
}

#[tokio::test]
async fn a_server_ignoring_ranges_restarts_from_zero() {
    let (data, digest) = content();
    let srv = serve(data.clone(), Ranges::Ignore).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    // A bogus prefix: kept, it would fail the digest; a 200 must discard it.
    std::fs::write(partial_path(&dest), vec![0u8; 5000]).unwrap();
    fetch(&client(), &srv.url, &digest, &dest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        *srv.seen.lock().unwrap(),
        vec![Some("bytes=5000-".to_string())]
    );
}

#[tokio::test]
async fn size_cap_bad_digest_and_http_errors() {
    let (data, digest) = content();
    let srv = serve(data.clone(), Ranges::Honor).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    let err = fetch(&client(), &srv.url, &digest, &dest, 1000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ArtifactTooLarge { max: 1000, .. }),
        "{err}"
    );
    assert!(!partial_path(&dest).exists() && !dest.exists());

    let err = fetch(&client(), &srv.url, "abc", &dest, 1 << 20)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");

    let missing = srv.url.replace("/a", "/b");
    let err = fetch(&client(), &missing, &digest, &dest, 1 << 20)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("HTTP 404") && msg.contains("no such artifact"),
        "{msg}"
    );
}

#[test]
fn urls_and_paths() {
    assert_eq!(
        artifact_url("https://c:7443/", &"AB".repeat(32)),
        format!("https://c:7443/api/v1/artifacts/{}", "ab".repeat(32))
    );
    assert_eq!(
        partial_path(Path::new("/x/y.bin")),
        Path::new("/x/y.bin.partial")
    );
    assert!(symlink_stays_inside(Path::new("a/b"), Path::new("../c")));
    assert!(symlink_stays_inside(
        Path::new("a/b"),
        Path::new("c/../../x")
    ));
    assert!(!symlink_stays_inside(
        Path::new("a/b"),
        Path::new("../../c")
    ));
    assert!(!symlink_stays_inside(Path::new("b"), Path::new("/c")));
}
