//! `verge_outbound::Client` against real HTTP servers on 127.0.0.1 and 127.0.0.2: refused
//! destinations are never connected to (literals, names, IPv4-mapped and other
//! spellings, redirect hops), GET streams with ranges under the cap and the deadline,
//! POST gives the status and the start of the answer, and what a user is told does not
//! tell an open port from a closed one, a timeout or a TLS failure.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use verge_outbound::header::{HeaderMap, HeaderValue, RANGE};
use verge_outbound::{Client, Error, NOT_ALLOWED_OR_UNREACHABLE, Policy};

/// A request as a test server saw it.
#[derive(Clone, Debug)]
struct Seen {
    head: String,
    body: Vec<u8>,
}

impl Seen {
    fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("/")
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

/// A test server: raw HTTP/1.1 over TCP, one request per connection.
struct Server {
    addr: SocketAddr,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves on `ip` (any port); `handler` gets each request (head and body) and the
/// connection.
async fn serve<F, Fut>(ip: &str, handler: F) -> Server
where
    F: Fn(Seen, TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let (count, log) = (accepted.clone(), seen.clone());
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            count.fetch_add(1, Ordering::SeqCst);
            let (handler, log) = (handler.clone(), log.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let mut seen = Seen {
                    head,
                    body: buf[end..].to_vec(),
                };
                let len: usize = seen
                    .header("content-length")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                while seen.body.len() < len {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.body.extend_from_slice(&chunk[..n]),
                    }
                }
                log.lock().unwrap().push(seen.clone());
                handler(seen, stream).await;
            });
        }
    });
    Server {
        addr,
        accepted,
        seen,
    }
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

/// Answers every request with 200 and `ok`.
async fn recorder(ip: &str) -> Server {
    serve(
        ip,
        |_, s| async move { respond(s, "200 OK", &[], b"ok").await },
    )
    .await
}

/// Redirects every request to `to`.
async fn redirector(ip: &str, to: String) -> Server {
    serve(ip, move |_, s| {
        let to = to.clone();
        async move { respond(s, "302 Found", &[("Location", &to)], b"").await }
    })
    .await
}

/// A port on 127.0.0.1 nothing listens on (bound, then closed).
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

/// Short timeouts: nothing here should need long.
fn policy(allow_networks: &[&str]) -> Policy {
    Policy {
        allow_networks: allow_networks.iter().map(|s| s.to_string()).collect(),
        timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..Policy::default()
    }
}

fn client(allow_networks: &[&str]) -> Client {
    Client::new(policy(allow_networks)).unwrap()
}

/// Runs `f`, failing the test if it takes more than 30 s.
async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .unwrap_or_else(|_| panic!("{what} hung"))
}

async fn post(client: &Client, url: &str) -> Result<verge_outbound::Answer, Error> {
    within(
        url,
        client.post(url, HeaderMap::new(), b"{\"x\":1}".to_vec()),
    )
    .await
}

async fn get(client: &Client, url: &str) -> Result<verge_outbound::Response, Error> {
    within(url, client.get(url, HeaderMap::new())).await
}

#[track_caller]
fn forbidden<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error::Forbidden { reason, .. }) => reason,
        other => panic!("expected Forbidden, got {other:?}"),
    }
}

#[tokio::test]
async fn refused_destinations_are_never_connected_to() {
    let target = recorder("127.0.0.1").await;
    let port = target.port();
    let guarded = client(&[]);
    for url in [
        target.url("/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://2130706433:{port}/hook"),
        format!("http://0x7f.0.0.1:{port}/hook"),
        format!("http://127.1:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        format!("http://0.0.0.0:{port}/hook"),
        "http://10.255.255.1:9/hook".to_owned(),
        "http://172.16.0.1/".to_owned(),
        "http://192.168.1.1/".to_owned(),
        "http://100.64.0.1/".to_owned(),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://[fd00::1]/".to_owned(),
        "http://[fe80::1]/".to_owned(),
        "http://[::ffff:169.254.169.254]/".to_owned(),
        "http://[64:ff9b::a9fe:a9fe]/".to_owned(),
    ] {
        let reason = forbidden(post(&guarded, &url).await);
        assert!(reason.ends_with("; not allowed"), "{url}: {reason}");
        forbidden(get(&guarded, &url).await);
        assert_eq!(
            post(&guarded, &url).await.unwrap_err().redacted(),
            NOT_ALLOWED_OR_UNREACHABLE
        );
    }
    assert_eq!(target.accepted(), 0);

    // Allowing 127.0.0.1 reaches it, and nothing else in 127/8.
    let allowed = client(&["127.0.0.1/32"]);
    assert_eq!(
        post(&allowed, &target.url("/hook")).await.unwrap().status,
        200
    );
    assert_eq!(target.accepted(), 1);
    let other = recorder("127.0.0.2").await;
    forbidden(post(&allowed, &other.url("/")).await);
    assert_eq!(other.accepted(), 0);
}

#[tokio::test]
async fn every_redirect_hop_is_checked() {
    let target = recorder("127.0.0.1").await;
    let port = target.port();
    let only_redirectors = client(&["127.0.0.2/32"]);
    for to in [
        target.url("/hook"),
        format!("http://localhost:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.1/".to_owned(),
    ] {
        let hop = redirector("127.0.0.2", to.clone()).await;
        // Literals are refused by the redirect policy, names by the resolver.
        let reason = forbidden(get(&only_redirectors, &hop.url("/")).await);
        assert!(
            reason.starts_with("redirect to ") || reason.starts_with("host localhost: "),
            "{to}: {reason}"
        );
        assert_eq!(hop.accepted(), 1, "{to}");
    }
    assert_eq!(target.accepted(), 0);

    // Redirects between allowed addresses are followed; the Range header goes along.
    let hop = redirector("127.0.0.2", target.url("/hook")).await;
    let both = client(&["127.0.0.1/32", "127.0.0.2/32"]);
    let mut headers = HeaderMap::new();
    headers.insert(RANGE, HeaderValue::from_static("bytes=1-"));
    let resp = within("redirect", both.get(&hop.url("/"), headers))
        .await
        .unwrap();
    assert_eq!(resp.url(), target.url("/hook"));
    assert_eq!(resp.remote_addr().unwrap(), target.addr);
    assert_eq!(
        target.seen()[0].header("range").as_deref(),
        Some("bytes=1-")
    );
}

#[tokio::test]
async fn post_gives_the_status_and_the_start_of_the_answer() {
    let big = vec![b'x'; 100_000];
    let server = serve("127.0.0.1", move |seen, s| {
        let big = big.clone();
        async move {
            match seen.path() {
                "/fail" => respond(s, "500 Internal Server Error", &[], &big).await,
                "/moved" => respond(s, "307 Temporary Redirect", &[("Location", "/ok")], b"").await,
                _ => respond(s, "204 No Content", &[], b"").await,
            }
        }
    })
    .await;
    let mut headers = HeaderMap::new();
    headers.insert("x-verge-task", HeaderValue::from_static("t-1"));
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    let capped = Client::new(Policy {
        max_bytes: 1000,
        follow_redirects: false,
        ..policy(&["127.0.0.1"])
    })
    .unwrap();

    let answer = within(
        "post",
        capped.post(&server.url("/ok"), headers.clone(), b"{\"a\":1}".to_vec()),
    )
    .await
    .unwrap();
    assert_eq!(answer.status, 204);
    let seen = &server.seen()[0];
    assert!(seen.head.starts_with("POST /ok "), "{}", seen.head);
    assert_eq!(seen.header("x-verge-task").as_deref(), Some("t-1"));
    assert_eq!(seen.header("user-agent").as_deref(), Some("verge/0.1"));
    assert_eq!(seen.body, b"{\"a\":1}");

    // A long error answer: the status and the first 1000 bytes.
    let answer = post(&capped, &server.url("/fail")).await.unwrap();
    assert_eq!((answer.status, answer.body.len()), (500, 1000));

    // Not following redirects: the 307 is the answer and nothing else is asked.
    let answer = post(&capped, &server.url("/moved")).await.unwrap();
    assert_eq!(answer.status, 307);
    assert_eq!(server.accepted(), 3);
}

#[tokio::test]
async fn get_streams_ranges_under_the_cap() {
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 251) as u8).collect();
    let content = data.clone();
    let server = serve("127.0.0.1", move |seen, s| {
        let content = content.clone();
        async move {
            match seen.header("range").and_then(|r| {
                r.strip_prefix("bytes=")?
                    .strip_suffix('-')?
                    .parse::<usize>()
                    .ok()
            }) {
                Some(from) => {
                    let range = format!("bytes {from}-{}/{}", content.len() - 1, content.len());
                    respond(
                        s,
                        "206 Partial Content",
                        &[("Content-Range", &range)],
                        &content[from..],
                    )
                    .await
                }
                None => respond(s, "200 OK", &[], &content).await,
            }
        }
    })
    .await;
    let guarded = client(&["127.0.0.1"]);
    let mut headers = HeaderMap::new();
    headers.insert(RANGE, HeaderValue::from_static("bytes=20000-"));
    let mut resp = within("get", guarded.get(&server.url("/a"), headers))
        .await
        .unwrap();
    assert_eq!(resp.status(), 206);
    assert_eq!(
        resp.headers()["content-range"].to_str().unwrap(),
        "bytes 20000-49999/50000"
    );
    assert_eq!(resp.content_length(), Some(30_000));
    let mut got = Vec::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, data[20_000..]);

    // The whole body, then the same under a smaller cap.
    let whole = within("fetch", guarded.fetch(&server.url("/a")))
        .await
        .unwrap();
    assert_eq!(whole.bytes, data);
    let small = Client::new(Policy {
        max_bytes: 10_000,
        ..policy(&["127.0.0.1"])
    })
    .unwrap();
    let mut resp = get(&small, &server.url("/a")).await.unwrap();
    let err = loop {
        match resp.chunk().await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("read past the cap"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, Error::TooLarge { max: 10_000, .. }),
        "{err:?}"
    );
    assert_eq!(err.redacted(), "answer larger than 10000 bytes");
    assert!(matches!(
        within("fetch", small.fetch(&server.url("/a"))).await,
        Err(Error::TooLarge { .. })
    ));
}

#[tokio::test]
async fn the_deadline_covers_the_whole_request() {
    let server = serve("127.0.0.1", |seen, mut s| async move {
        match seen.path() {
            // Headers, then a byte a second forever.
            "/trickle" => {
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                    .await;
                while s.write_all(b"x").await.is_ok() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            // Nothing at all.
            _ => tokio::time::sleep(Duration::from_secs(60)).await,
        }
    })
    .await;
    let quick = Client::new(Policy {
        timeout: Duration::from_secs(2),
        ..policy(&["127.0.0.1"])
    })
    .unwrap();
    let mut resp = get(&quick, &server.url("/trickle")).await.unwrap();
    let err = loop {
        match within("trickle", resp.chunk()).await {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the trickle ended"),
            Err(e) => break e,
        }
    };
    assert!(
        matches!(err, Error::Timeout { after, .. } if after == Duration::from_secs(2)),
        "{err:?}"
    );
    let err = post(&quick, &server.url("/silent")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");

    // A stalled read fails on its own timer, well before a generous deadline.
    let stalls = Client::new(Policy {
        timeout: Duration::from_secs(600),
        read_timeout: Some(Duration::from_secs(1)),
        ..policy(&["127.0.0.1"])
    })
    .unwrap();
    let err = post(&stalls, &server.url("/silent")).await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout { after, .. } if after == Duration::from_secs(1)),
        "{err:?}"
    );
}

#[tokio::test]
async fn failures_without_an_answer_read_the_same() {
    let open = recorder("127.0.0.1").await;
    let closed = closed_port().await;
    let silent = serve("127.0.0.1", |_, s| async move {
        let _held = s;
        tokio::time::sleep(Duration::from_secs(60)).await;
    })
    .await;

    // Not allowed: refused before connecting, open or closed alike.
    let guarded = client(&[]);
    let open_err = post(&guarded, &open.url("/hook")).await.unwrap_err();
    let closed_err = post(&guarded, &format!("http://127.0.0.1:{closed}/hook"))
        .await
        .unwrap_err();
    assert!(open_err.is_forbidden() && closed_err.is_forbidden());
    assert_eq!(open_err.redacted(), closed_err.redacted());
    assert_eq!(open.accepted(), 0);

    // Allowed, but failing in four different ways: the detail differs (for the log),
    // what the user reads does not.
    let allowed = Client::new(Policy {
        timeout: Duration::from_secs(2),
        ..policy(&["127.0.0.1"])
    })
    .unwrap();
    let refused = post(&allowed, &format!("http://127.0.0.1:{closed}/hook"))
        .await
        .unwrap_err();
    let timed_out = post(&allowed, &silent.url("/hook")).await.unwrap_err();
    // https to a server that speaks plain HTTP at once: the TLS handshake fails.
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = plain.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = plain.accept().await {
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let tls = post(&allowed, &format!("https://{plain_addr}/hook"))
        .await
        .unwrap_err();
    assert!(matches!(refused, Error::Unreachable { .. }), "{refused:?}");
    assert!(matches!(timed_out, Error::Timeout { .. }), "{timed_out:?}");
    assert!(matches!(tls, Error::Unreachable { .. }), "{tls:?}");
    for e in [&refused, &timed_out, &tls, &open_err] {
        assert_eq!(e.redacted(), NOT_ALLOWED_OR_UNREACHABLE, "{e}");
    }
    assert_ne!(refused.to_string(), timed_out.to_string());
}

#[tokio::test]
async fn host_allow_list_applies_to_every_hop() {
    let target = recorder("127.0.0.2").await;
    let hop = redirector("127.0.0.1", target.url("/b")).await;
    let only_origin = Client::new(Policy {
        allow_hosts: vec!["127.0.0.1".into()],
        ..policy(&["127.0.0.0/8"])
    })
    .unwrap();
    let reason = forbidden(get(&only_origin, &target.url("/b")).await);
    assert_eq!(reason, "host 127.0.0.2 is not on the allow-list");
    let reason = forbidden(get(&only_origin, &hop.url("/a")).await);
    assert_eq!(
        reason,
        format!(
            "redirect to {} blocked: host 127.0.0.2 is not on the allow-list",
            target.url("/b")
        )
    );
    assert_eq!(target.accepted(), 0);
    // A listed host on a non-public address is still refused.
    let listed_but_private = Client::new(Policy {
        allow_hosts: vec!["127.0.0.2".into()],
        ..policy(&[])
    })
    .unwrap();
    forbidden(get(&listed_but_private, &target.url("/b")).await);
    assert_eq!(target.accepted(), 0);
}
