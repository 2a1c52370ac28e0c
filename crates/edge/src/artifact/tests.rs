//! Unit tests of `artifact`: the resumable download and `install` (refusals remembered
//! by digest) against a small local HTTP server. Unpacking has its own tests in
//! `unpack/tests.rs`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use sha2::{Digest, Sha256};

use super::*;

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
    serve_at(content, ranges, "/a").await
}

/// [`serve`] at `path` instead of `/a`.
async fn serve_at(content: Vec<u8>, ranges: Ranges, path: &'static str) -> Server {
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
                        if req.uri().path() != path {
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
        url: format!("http://{addr}{path}"),
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
}

// ---- install ----

fn tar_gz(build: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> (Vec<u8>, String) {
    use std::io::Write;
    let mut b = tar::Builder::new(Vec::new());
    build(&mut b);
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(&b.into_inner().unwrap()).unwrap();
    let data = e.finish().unwrap();
    let digest = hex::encode(Sha256::digest(&data));
    (data, digest)
}

fn link(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, path, target).unwrap();
}

/// Serves `data` where a node's `Fetcher` looks for `digest` in the cloud's store.
async fn cloud_store(data: Vec<u8>, digest: &str) -> (Server, Fetcher) {
    let path: &'static str = format!("/api/v1/artifacts/{digest}").leak();
    let srv = serve_at(data, Ranges::Honor, path).await;
    let fetcher = Fetcher {
        cloud: srv.url.trim_end_matches(path).to_string(),
        client: client(),
        outbound: crate::artifact::outbound_client(&[], &[]).unwrap(),
    };
    (srv, fetcher)
}

/// The attack on the ready marker: `d -> .`, then `d/d/…/.verge-ready` pointing at a
/// path outside through as many `..` as there are `d`. Refused once, remembered by
/// digest: the second install answers from memory, without a request.
#[tokio::test]
async fn a_refused_archive_is_remembered_and_not_downloaded_again() {
    let tmp = tempfile::tempdir().unwrap();
    let target = tmp.path().join("target");
    let depth = 30;
    let entry = format!("{}.verge-ready", "d/".repeat(depth));
    let (data, digest) = tar_gz(|b| {
        link(b, "d", ".");
        let up = format!(
            "{}{}",
            "../".repeat(depth),
            target.to_str().unwrap().trim_start_matches('/')
        );
        link(b, &entry, &up);
    });
    let (srv, fetcher) = cloud_store(data, &digest).await;
    let artifact = verge_api::specs::ArtifactRef {
        sha256: digest.clone(),
        url: None,
    };
    let downloads = tmp.path().join("downloads");
    let dir = tmp.path().join("apps/web/1.0.0");
    let reason =
        format!(r#"entry "{entry}": its parent "d" is a symlink (nothing is written through one)"#);
    let err = install(Some(&fetcher), &artifact, &downloads, &dir, 1 << 20)
        .await
        .unwrap_err();
    match &err {
        Error::ArtifactRefused {
            sha256,
            reason: r,
            remembered: false,
        } => {
            assert_eq!(sha256, &digest);
            assert_eq!(r, &reason);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(err.is_refused_artifact());
    assert_eq!(
        err.to_string(),
        format!("artifact sha256:{digest} refused: {reason}")
    );
    assert!(
        std::fs::symlink_metadata(&target).is_err(),
        "written outside"
    );
    assert!(!dir.exists());
    assert!(
        !downloads.join(&digest).exists(),
        "the refused download is deleted"
    );
    assert_eq!(srv.seen.lock().unwrap().len(), 1);

    // Again (as after a restart: the memory is on disk): no request.
    let err = install(Some(&fetcher), &artifact, &downloads, &dir, 1 << 20)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("artifact sha256:{digest} refused (remembered; not downloaded again): {reason}")
    );
    assert_eq!(srv.seen.lock().unwrap().len(), 1);
    assert!(std::fs::symlink_metadata(&target).is_err());
}

#[tokio::test]
async fn install_marks_the_directory_ready_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, digest) = tar_gz(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o755);
        b.append_data(&mut h, "bin/app", &b"hi\n"[..]).unwrap();
        link(b, "app", "bin/app");
    });
    let (srv, fetcher) = cloud_store(data, &digest).await;
    let artifact = verge_api::specs::ArtifactRef {
        sha256: digest.clone(),
        url: None,
    };
    let downloads = tmp.path().join("downloads");
    let dir = tmp.path().join("code");
    for _ in 0..2 {
        install(Some(&fetcher), &artifact, &downloads, &dir, 1 << 20)
            .await
            .unwrap();
    }
    assert_eq!(std::fs::read(dir.join("app")).unwrap(), b"hi\n");
    assert_eq!(
        std::fs::read_to_string(dir.join(".verge-ready")).unwrap(),
        digest
    );
    assert_eq!(
        srv.seen.lock().unwrap().len(),
        1,
        "marked: not fetched again"
    );
    assert!(!downloads.join(&digest).exists());
}

/// Two installs of one digest at once, one from a server that serves other bytes (an
/// App whose `artifact.url` is wrong): the good one installs, the bad one fails its
/// digest, and the digest is not refused for anyone.
#[tokio::test]
async fn installs_of_one_digest_at_once_do_not_spoil_each_other() {
    let (data, digest) = tar_gz(|b| {
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o755);
        b.append_data(&mut h, "bin/app", &b"hi\n"[..]).unwrap();
    });
    let (_good_srv, good) = cloud_store(data, &digest).await;
    let (_bad_srv, bad) = cloud_store(b"not an archive".repeat(4096), &digest).await;
    let artifact = verge_api::specs::ArtifactRef {
        sha256: digest.clone(),
        url: None,
    };
    for round in 0..10 {
        let tmp = tempfile::tempdir().unwrap();
        let downloads = tmp.path().join("downloads");
        let (ok_dir, bad_dir) = (tmp.path().join("ok"), tmp.path().join("bad"));
        let (ok, err) = tokio::join!(
            install(Some(&good), &artifact, &downloads, &ok_dir, 1 << 20),
            install(Some(&bad), &artifact, &downloads, &bad_dir, 1 << 20),
        );
        ok.unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(
            matches!(err, Err(Error::ArtifactDigest { .. })),
            "round {round}: {err:?}"
        );
        assert_eq!(std::fs::read(ok_dir.join("bin/app")).unwrap(), b"hi\n");
        assert!(refused::recall(&downloads, &digest).is_none());
    }
}
