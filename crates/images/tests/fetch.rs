//! `verge_images::fetch` against real HTTP servers on 127.0.0.1 and 127.0.0.2.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use verge_images::Error;
use verge_images::fetch::{FetchPolicy, Fetched, Fetcher};

/// A test server: raw HTTP/1.1 over TCP, one request per connection.
struct Server {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// Serves on `ip` (any port); `handler` gets each request's path and the connection.
async fn serve<F, Fut>(ip: &str, handler: F) -> Server
where
    F: Fn(String, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head);
                let path = head.split(' ').nth(1).unwrap_or("/").to_owned();
                handler(path, stream).await;
            });
        }
    });
    Server { addr, accepted }
}

/// Writes a complete response and closes the connection.
async fn respond(mut stream: TcpStream, status: &str, headers: &[(&str, &str)], body: &[u8]) {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        out.push_str(&format!("{name}: {value}\r\n"));
    }
    out.push_str("\r\n");
    let _ = stream.write_all(out.as_bytes()).await;
    let _ = stream.write_all(body).await;
    let _ = stream.shutdown().await;
}

async fn redirect(stream: TcpStream, to: &str) {
    respond(stream, "302 Found", &[("Location", to)], b"").await;
}

/// A PNG-looking body.
const IMAGE: &[u8] = b"\x89PNG\r\n\x1a\nnot really a png";

async fn image_server(ip: &str) -> Server {
    serve(ip, |_, s| async move {
        respond(s, "200 OK", &[("Content-Type", "image/png")], IMAGE).await;
    })
    .await
}

/// Short timeouts: nothing here should need long.
fn policy(allow_networks: &[&str]) -> FetchPolicy {
    FetchPolicy {
        allow_networks: allow_networks.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_millis(500),
        ..FetchPolicy::default()
    }
}

/// Fetches with `policy`, failing the test if it takes more than 20 s.
async fn fetch(policy: FetchPolicy, url: &str) -> Result<Fetched, Error> {
    let fetcher = Fetcher::new(policy).unwrap();
    tokio::time::timeout(Duration::from_secs(20), fetcher.fetch(url))
        .await
        .unwrap_or_else(|_| panic!("fetch of {url} hung"))
}

#[track_caller]
fn forbidden_reason(result: Result<Fetched, Error>) -> String {
    match result {
        Err(Error::SourceForbidden { reason, .. }) => reason,
        other => panic!("expected SourceForbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn loopback_forbidden_by_default_allowed_explicitly() {
    let server = image_server("127.0.0.1").await;
    let url = server.url("/a.png");

    let reason = forbidden_reason(fetch(policy(&[]), &url).await);
    assert_eq!(reason, "address 127.0.0.1 is loopback; not allowed");
    assert_eq!(server.accepted(), 0);

    let fetched = fetch(policy(&["127.0.0.1"]), &url).await.unwrap();
    assert_eq!(fetched.url, url);
    assert_eq!(fetched.content_type.as_deref(), Some("image/png"));
    assert_eq!(&fetched.bytes[..], IMAGE);
    assert_eq!(server.accepted(), 1);

    // A CIDR works as well, and the policy is kept.
    let fetcher = Fetcher::new(policy(&["127.0.0.0/8"])).unwrap();
    assert_eq!(fetcher.policy().allow_networks, ["127.0.0.0/8"]);
    assert_eq!(&fetcher.fetch(&url).await.unwrap().bytes[..], IMAGE);
}

#[tokio::test]
async fn host_names_are_checked_after_resolution() {
    let server = image_server("127.0.0.1").await;
    let url = format!("http://localhost:{}/a.png", server.addr.port());
    let reason = forbidden_reason(fetch(policy(&[]), &url).await);
    assert!(
        reason.starts_with("host localhost: address ")
            && reason.ends_with("is loopback; not allowed"),
        "{reason}"
    );
    assert_eq!(server.accepted(), 0);

    let fetched = fetch(policy(&["127.0.0.1", "::1"]), &url).await.unwrap();
    assert_eq!(&fetched.bytes[..], IMAGE);
}

#[tokio::test]
async fn non_public_literals_forbidden_without_connecting() {
    for (url, address) in [
        (
            "http://169.254.169.254/latest/meta-data/",
            "169.254.169.254",
        ),
        ("http://10.1.2.3/a.png", "10.1.2.3"),
        ("http://192.168.0.1/", "192.168.0.1"),
        ("http://172.16.5.4:8080/", "172.16.5.4"),
        ("http://100.64.0.1/", "100.64.0.1"),
        ("http://[::1]/", "::1"),
        ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1"),
        ("http://[fd00::1]/", "fd00::1"),
        ("http://[fe80::1]/", "fe80::1"),
        ("http://0.0.0.0/", "0.0.0.0"),
        ("http://2130706433/", "127.0.0.1"),
        ("http://0x7f.0.0.1/", "127.0.0.1"),
        ("http://0177.0.0.1/", "127.0.0.1"),
        ("http://127.1/", "127.0.0.1"),
        ("https://224.0.0.1/", "224.0.0.1"),
        ("http://255.255.255.255/", "255.255.255.255"),
    ] {
        let policy = FetchPolicy {
            timeout: Duration::from_millis(500),
            connect_timeout: Duration::from_millis(200),
            ..FetchPolicy::default()
        };
        let reason = forbidden_reason(fetch(policy, url).await);
        assert!(
            reason.starts_with(&format!("address {address} is "))
                && reason.ends_with("; not allowed"),
            "{url}: {reason}"
        );
    }
}

#[tokio::test]
async fn redirect_to_a_forbidden_address() {
    let target = image_server("127.0.0.2").await;
    let to = target.url("/b.png");
    let origin = serve("127.0.0.1", move |_, s| {
        let to = to.clone();
        async move { redirect(s, &to).await }
    })
    .await;

    let url = origin.url("/a.png");
    match fetch(policy(&["127.0.0.1"]), &url).await {
        Err(Error::SourceForbidden { url: shown, reason }) => {
            assert_eq!(shown, url);
            assert_eq!(
                reason,
                format!(
                    "redirect to {} blocked: address 127.0.0.2 is loopback; not allowed",
                    target.url("/b.png")
                )
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(origin.accepted(), 1);
    assert_eq!(target.accepted(), 0);

    // Within allowed addresses the redirect is followed.
    let fetched = fetch(policy(&["127.0.0.0/8"]), &url).await.unwrap();
    assert_eq!(fetched.url, target.url("/b.png"));
    assert_eq!(&fetched.bytes[..], IMAGE);
    assert_eq!(target.accepted(), 1);
}

#[tokio::test]
async fn redirect_to_a_host_name_is_checked_after_resolution() {
    let target = image_server("127.0.0.1").await;
    let to = format!("http://localhost:{}/b.png", target.addr.port());
    let origin = serve("127.0.0.2", move |_, s| {
        let to = to.clone();
        async move { redirect(s, &to).await }
    })
    .await;
    let reason = forbidden_reason(fetch(policy(&["127.0.0.2"]), &origin.url("/a.png")).await);
    assert!(
        reason.starts_with("host localhost: address ")
            && reason.ends_with("is loopback; not allowed"),
        "{reason}"
    );
    assert_eq!(origin.accepted(), 1);
    assert_eq!(target.accepted(), 0);
}

#[tokio::test]
async fn redirects_to_private_and_other_schemes_blocked() {
    let origin = serve("127.0.0.1", |path, s| async move {
        match path.as_str() {
            "/private" => redirect(s, "http://10.0.0.1/").await,
            "/metadata" => redirect(s, "http://169.254.169.254/latest/").await,
            "/file" => redirect(s, "file:///etc/passwd").await,
            "/creds" => redirect(s, "http://user:pw@127.0.0.1/").await,
            "/v6" => redirect(s, "http://[::ffff:10.0.0.1]/").await,
            _ => respond(s, "404 Not Found", &[], b"").await,
        }
    })
    .await;
    for (path, expected) in [
        (
            "/private",
            "redirect to http://10.0.0.1/ blocked: address 10.0.0.1 is private; not allowed",
        ),
        (
            "/metadata",
            "redirect to http://169.254.169.254/latest/ blocked: address 169.254.169.254 is link-local; not allowed",
        ),
        (
            "/creds",
            "redirect to http://user:pw@127.0.0.1/ blocked: URLs with credentials are not allowed",
        ),
        (
            "/v6",
            "redirect to http://[::ffff:a00:1]/ blocked: address ::ffff:10.0.0.1 is private; not allowed",
        ),
    ] {
        let reason = forbidden_reason(fetch(policy(&["127.0.0.1"]), &origin.url(path)).await);
        assert_eq!(reason, expected, "{path}");
    }
    // A Location that is not an http(s) URL is not followed at all: the 302 is the answer.
    match fetch(policy(&["127.0.0.1"]), &origin.url("/file")).await {
        Err(Error::SourceStatus { status, .. }) => assert_eq!(status, 302),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn redirect_limit() {
    // `/loop/N` redirects to `/loop/N+1` forever; `/chain/N` until N = 3.
    let server = serve("127.0.0.1", |path, s| async move {
        let (kind, n) = path[1..].split_once('/').unwrap();
        let n: u32 = n.parse().unwrap();
        if kind == "loop" || n < 3 {
            redirect(s, &format!("/{kind}/{}", n + 1)).await;
        } else {
            respond(s, "200 OK", &[("Content-Type", "image/png")], IMAGE).await;
        }
    })
    .await;
    let limited = FetchPolicy {
        max_redirects: 3,
        ..policy(&["127.0.0.1"])
    };

    match fetch(limited.clone(), &server.url("/loop/0")).await {
        Err(e @ Error::SourceUnreachable { .. }) => {
            assert!(
                e.to_string().contains("too many redirects (more than 3)"),
                "{e}"
            );
        }
        other => panic!("{other:?}"),
    }
    // The initial request and the three redirects allowed.
    assert_eq!(server.accepted(), 4);

    let fetched = fetch(limited, &server.url("/chain/0")).await.unwrap();
    assert_eq!(fetched.url, server.url("/chain/3"));
    assert_eq!(&fetched.bytes[..], IMAGE);

    // No redirects at all.
    let none = FetchPolicy {
        max_redirects: 0,
        ..policy(&["127.0.0.1"])
    };
    let err = fetch(none, &server.url("/chain/2")).await.unwrap_err();
    assert!(err.to_string().contains("too many redirects"), "{err}");
}

#[tokio::test]
async fn host_allow_list() {
    let server = image_server("127.0.0.1").await;
    let only_img = FetchPolicy {
        allow_hosts: vec!["img.example.com".into(), "*.cdn.example.com".into()],
        ..policy(&["127.0.0.1"])
    };
    let reason = forbidden_reason(fetch(only_img, &server.url("/a.png")).await);
    assert_eq!(reason, "host 127.0.0.1 is not on the allow-list");
    assert_eq!(server.accepted(), 0);

    // The allow-list applies to redirect hops too.
    let target = image_server("127.0.0.2").await;
    let to = target.url("/b.png");
    let origin = serve("127.0.0.1", move |_, s| {
        let to = to.clone();
        async move { redirect(s, &to).await }
    })
    .await;
    let only_origin = FetchPolicy {
        allow_hosts: vec!["127.0.0.1".into()],
        ..policy(&["127.0.0.0/8"])
    };
    let reason = forbidden_reason(fetch(only_origin.clone(), &origin.url("/a.png")).await);
    assert_eq!(
        reason,
        format!(
            "redirect to {} blocked: host 127.0.0.2 is not on the allow-list",
            target.url("/b.png")
        )
    );
    assert_eq!(target.accepted(), 0);

    // Hosts on the list are fetched.
    assert!(fetch(only_origin, &server.url("/a.png")).await.is_ok());
}

#[tokio::test]
async fn size_limits() {
    let server = serve("127.0.0.1", |path, mut s| async move {
        match path.as_str() {
            // Announces 10 MB, sends the headers only, then holds the connection.
            "/announced" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
            // Chunked, endless.
            "/chunked" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                let chunk = format!("400\r\n{}\r\n", "x".repeat(0x400));
                while s.write_all(chunk.as_bytes()).await.is_ok() {}
            }
            // Exactly the limit.
            _ => respond(s, "200 OK", &[], &[7u8; 10_000]).await,
        }
    })
    .await;
    let small = FetchPolicy {
        max_bytes: 10_000,
        ..policy(&["127.0.0.1"])
    };

    for path in ["/announced", "/chunked"] {
        match fetch(small.clone(), &server.url(path)).await {
            Err(Error::SourceTooLarge { url, max }) => {
                assert_eq!((url, max), (server.url(path), 10_000));
            }
            other => panic!("{path}: {other:?}"),
        }
    }
    let fetched = fetch(small, &server.url("/exact")).await.unwrap();
    assert_eq!(fetched.bytes.len(), 10_000);
    assert_eq!(fetched.content_type, None);
}

#[tokio::test]
async fn slow_sources_time_out() {
    let server = serve("127.0.0.1", |path, mut s| async move {
        match path.as_str() {
            // Headers, then a byte a second forever.
            "/trickle" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                    .await;
                while s.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            // Chunked, a small chunk a second forever.
            "/trickle-chunked" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    .await;
                while s.write_all(b"1\r\nx\r\n").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
            // Headers, then nothing.
            "/headers-only" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n")
                    .await;
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            // Nothing at all.
            _ => tokio::time::sleep(Duration::from_secs(60)).await,
        }
    })
    .await;
    let quick = FetchPolicy {
        timeout: Duration::from_secs(1),
        ..policy(&["127.0.0.1"])
    };
    for path in ["/trickle", "/trickle-chunked", "/headers-only", "/silent"] {
        let started = std::time::Instant::now();
        match fetch(quick.clone(), &server.url(path)).await {
            Err(Error::SourceTimeout { url, after }) => {
                assert_eq!((url, after), (server.url(path), Duration::from_secs(1)));
            }
            other => panic!("{path}: {other:?}"),
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{path}");
    }
}

#[tokio::test]
async fn error_statuses() {
    let server = serve("127.0.0.1", |path, s| async move {
        match path.as_str() {
            "/missing" => respond(s, "404 Not Found", &[], b"no such image").await,
            _ => respond(s, "500 Internal Server Error", &[], b"").await,
        }
    })
    .await;
    for (path, expected) in [("/missing", 404), ("/broken", 500)] {
        match fetch(policy(&["127.0.0.1"]), &server.url(path)).await {
            Err(e @ Error::SourceStatus { .. }) => {
                assert!(matches!(e, Error::SourceStatus { status, .. } if status == expected));
                assert_eq!(e.http_status(), if expected == 404 { 404 } else { 502 });
            }
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn invalid_sources() {
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/a.png",
        "gopher://example.com/",
        "http://user:secret@example.com/a.png",
        "no scheme",
        "",
    ] {
        match fetch(policy(&[]), url).await {
            Err(Error::Invalid { field, .. }) => assert_eq!(field, "source", "{url}"),
            other => panic!("{url}: {other:?}"),
        }
    }
    let long = format!("http://example.com/{}", "a".repeat(9000));
    assert!(matches!(
        fetch(policy(&[]), &long).await,
        Err(Error::Invalid { .. })
    ));
}

#[tokio::test]
async fn unreachable_sources() {
    // Nothing listens on this port (bound, then closed).
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    };
    let err = fetch(policy(&["127.0.0.1"]), &format!("http://127.0.0.1:{port}/"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::SourceUnreachable { .. }), "{err:?}");
}
