//! Unit tests of `artifact`'s guarded way in ([`Via::Guarded`]): resumable downloads
//! through `verge_outbound` against a small local HTTP server (`tests::serve`), refusals
//! of non-allowed destinations before connecting (directly and after a redirect), the
//! redacted message, and which URLs count as the cloud's own.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::tests::{Ranges, content, serve};
use super::*;

/// The guard for artifact downloads, allowing `networks`.
fn guarded(networks: &[&str]) -> verge_outbound::Client {
    let networks: Vec<String> = networks.iter().map(|s| s.to_string()).collect();
    outbound_client(&networks, &[]).unwrap()
}

/// Answers every request on 127.0.0.2 with a redirect to `to`.
async fn redirector(to: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let to = to.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let answer = format!(
                    "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}/a")
}

#[tokio::test]
async fn guarded_downloads_resume_and_verify() {
    let (data, digest) = content();
    let allowed = guarded(&["127.0.0.1/32"]);

    // Resumed from a partial file with a range.
    let srv = serve(data.clone(), Ranges::Honor).await;
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("a");
    std::fs::write(partial_path(&dest), &data[..70_000]).unwrap();
    fetch(&allowed, &srv.url, &digest, &dest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    assert_eq!(
        *srv.seen.lock().unwrap(),
        vec![Some("bytes=70000-".to_string())]
    );

    // A complete partial file: the 416 says so.
    let dest = tmp.path().join("b");
    std::fs::write(partial_path(&dest), &data).unwrap();
    fetch(&allowed, &srv.url, &digest, &dest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // A server ignoring ranges: restarted from zero.
    let ignoring = serve(data.clone(), Ranges::Ignore).await;
    let dest = tmp.path().join("c");
    std::fs::write(partial_path(&dest), vec![0u8; 5000]).unwrap();
    fetch(&allowed, &ignoring.url, &digest, &dest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);

    // Over the node's cap; an error answer keeps the server's words.
    let err = fetch(&allowed, &srv.url, &digest, &tmp.path().join("d"), 1000)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::ArtifactTooLarge { max: 1000, .. }),
        "{err}"
    );
    let missing = srv.url.replace("/a", "/b");
    let err = fetch(&allowed, &missing, &digest, &tmp.path().join("e"), 1 << 20)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("HTTP 404: no such artifact"),
        "{err}"
    );
}

#[tokio::test]
async fn non_allowed_destinations_are_refused_before_connecting() {
    let (data, digest) = content();
    let srv = serve(data, Ranges::Honor).await;
    let port = srv
        .url
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let public_only = guarded(&[]);
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut shown = Vec::new();
    for (i, url) in [
        srv.url.clone(),
        format!("http://localhost:{port}/a"),
        format!("http://[::ffff:127.0.0.1]:{port}/a"),
        format!("http://127.0.0.1:{closed}/a"),
        "http://10.255.255.1:9/a".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ]
    .into_iter()
    .enumerate()
    {
        let dest = tmp.path().join(format!("r{i}"));
        let err = fetch(&public_only, &url, &digest, &dest, 1 << 20)
            .await
            .unwrap_err();
        match &err {
            Error::Http { url: u, message } => {
                assert_eq!(u, &url);
                shown.push(message.clone());
            }
            other => panic!("{url}: {other}"),
        }
        assert!(!partial_path(&dest).exists() && !dest.exists(), "{url}");
    }
    // Open port, closed port, private, link-local: the same words.
    assert!(
        shown
            .iter()
            .all(|m| m == verge_outbound::NOT_ALLOWED_OR_UNREACHABLE),
        "{shown:?}"
    );
    assert!(srv.seen.lock().unwrap().is_empty());

    // Allowed first hop, redirect to a non-allowed address: refused at the hop.
    let hop = redirector(srv.url.clone()).await;
    let only_hop = guarded(&["127.0.0.2/32"]);
    let err = fetch(&only_hop, &hop, &digest, &tmp.path().join("hop"), 1 << 20)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with(verge_outbound::NOT_ALLOWED_OR_UNREACHABLE),
        "{err}"
    );
    assert!(srv.seen.lock().unwrap().is_empty());

    // Both allowed: followed.
    let both = guarded(&["127.0.0.1/32", "127.0.0.2/32"]);
    fetch(&both, &hop, &digest, &tmp.path().join("both"), 1 << 20)
        .await
        .unwrap();
    assert_eq!(srv.seen.lock().unwrap().len(), 1);
}

#[tokio::test]
async fn install_without_a_fetcher_is_public_only() {
    let (data, digest) = content();
    let srv = serve(data, Ranges::Honor).await;
    let tmp = tempfile::tempdir().unwrap();
    let artifact = verge_api::specs::ArtifactRef {
        sha256: digest,
        url: Some(srv.url.clone()),
    };
    let err = install(
        None,
        &artifact,
        &tmp.path().join("downloads"),
        &tmp.path().join("app"),
        1 << 20,
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}: {}",
            srv.url,
            verge_outbound::NOT_ALLOWED_OR_UNREACHABLE
        )
    );
    assert!(srv.seen.lock().unwrap().is_empty());
}

#[test]
fn the_clouds_own_origin() {
    let cloud = "https://10.0.0.5:7443";
    for (url, own) in [
        ("https://10.0.0.5:7443/api/v1/artifacts/ab", true),
        ("https://10.0.0.5:7443", true),
        ("http://10.0.0.5:7443/api/v1/artifacts/ab", false),
        ("https://10.0.0.5:7444/api/v1/artifacts/ab", false),
        ("https://10.0.0.5/api/v1/artifacts/ab", false),
        ("https://10.0.0.6:7443/", false),
        ("https://u:p@10.0.0.5:7443/", false),
        ("https://10.0.0.5:7443@evil.example/", false),
        ("not a url", false),
    ] {
        assert_eq!(on_cloud_origin(url, cloud), own, "{url}");
    }
    assert!(on_cloud_origin(
        "https://cloud.example/x",
        "https://cloud.example:443/"
    ));
    assert!(!on_cloud_origin(
        "https://cloud.example/x",
        "http://cloud.example/"
    ));
}
