//! Local API tests over a real unix socket.

use std::os::unix::fs::PermissionsExt;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use verge_api::{API_VERSION, Object, ObjectMeta};
use verge_proto::Desired;

use super::*;
use crate::queue::{Queue, QueueConfig};
use crate::store::LocalStore;

fn obj(kind: &str, name: &str) -> Object {
    Object {
        api_version: API_VERSION.into(),
        kind: kind.into(),
        metadata: ObjectMeta {
            name: name.into(),
            ..Default::default()
        },
        spec: serde_json::json!({"data": {"k": "v"}}),
        status: serde_json::Value::Null,
    }
}

struct Running {
    _dir: tempfile::TempDir,
    sock: PathBuf,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<()>>,
    state: Arc<EdgeState>,
}

async fn start() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::open(&dir.path().join("store.redb")).unwrap();
    let queue = Queue::open(&dir.path().join("queue.redb"), QueueConfig::default()).unwrap();
    let state = Arc::new(EdgeState::new("edge-1", store, queue));
    let sock = dir.path().join("edge.sock");
    let api = LocalApi::bind(&sock, state.clone()).unwrap();
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(api.serve(async move {
        let _ = rx.await;
    }));
    Running {
        _dir: dir,
        sock,
        stop,
        task,
        state,
    }
}

/// A raw HTTP/1.1 exchange: `(status, body)`.
async fn raw(sock: &Path, request: &str) -> (u16, String) {
    let mut s = UnixStream::connect(sock).await.unwrap();
    // The server may answer and close before reading everything (oversized headers):
    // a failed write is fine, the answer is what counts.
    let _ = s.write_all(request.as_bytes()).await;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if !out.is_empty() => {
                let _ = e;
                break;
            }
            Err(e) => panic!("no answer: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text[9..12].parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn routes_answer_from_the_store_and_state() {
    let r = start().await;
    assert_eq!(
        std::fs::metadata(&r.sock).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // Fresh node: empty.
    assert_eq!(
        get(&r.sock, "/v1/configs").await.unwrap(),
        serde_json::json!([])
    );
    let st = get(&r.sock, "/v1/status").await.unwrap();
    assert_eq!(st["node"], "edge-1");
    assert_eq!(st["appliedRevision"], 0);
    assert_eq!(st["connected"], false);
    assert_eq!(st["lastSync"], serde_json::Value::Null);
    assert_eq!(st["queue"]["pendingItems"], 0);

    r.state
        .store()
        .apply_desired(&Desired {
            from_revision: 0,
            to_revision: 4,
            snapshot: false,
            upserts: vec![obj("Config", "b"), obj("Config", "a"), obj("App", "web")],
            deletes: vec![],
        })
        .unwrap();
    r.state.set_connected(true);
    r.state.set_last_sync(1234);
    r.state
        .queue()
        .push(verge_proto::Channel::Status, b"{}", 0)
        .unwrap();

    let configs = get(&r.sock, "/v1/configs").await.unwrap();
    let names: Vec<_> = configs
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(
        get(&r.sock, "/v1/configs/b").await.unwrap()["spec"]["data"]["k"],
        "v"
    );
    let apps = get(&r.sock, "/v1/objects/App").await.unwrap();
    assert_eq!(apps.as_array().unwrap().len(), 1);
    assert_eq!(get(&r.sock, "/v1/objects/apps").await.unwrap(), apps);
    assert_eq!(get(&r.sock, "/v1/objects/configs").await.unwrap(), configs);
    assert_eq!(
        get(&r.sock, "/v1/objects/App/web").await.unwrap()["kind"],
        "App"
    );
    let st = get(&r.sock, "/v1/status").await.unwrap();
    assert_eq!(st["appliedRevision"], 4);
    assert_eq!(st["connected"], true);
    assert_eq!(st["lastSync"], 1234);
    assert_eq!(st["queue"]["pendingItems"], 1);

    let e = get(&r.sock, "/v1/configs/nope")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("Config \"nope\" not found on this node"), "{e}");
    let e = get(&r.sock, "/v2/whatever").await.unwrap_err().to_string();
    assert!(e.contains("no route /v2/whatever"), "{e}");

    r.stop.send(()).unwrap();
    r.task.await.unwrap().unwrap();
    assert!(!r.sock.exists(), "the socket is removed at shutdown");
}

#[tokio::test]
async fn errors_are_json_404_405_413() {
    let r = start().await;
    let (status, body) = raw(
        &r.sock,
        "GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["reason"], "NotFound");
    let (status, body) = raw(
        &r.sock,
        "DELETE /v1/configs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"],
        "MethodNotAllowed"
    );
    let (status, body) = raw(
        &r.sock,
        "GET /v1/configs HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["reason"],
        "PayloadTooLarge"
    );
    // Oversized headers are refused by hyper (431), not buffered.
    let big = "x".repeat(32 * 1024);
    let (status, _) = raw(
        &r.sock,
        &format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 431);
    r.stop.send(()).unwrap();
    r.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn stale_socket_is_replaced_live_one_is_refused() {
    let r = start().await;
    // Live: a second bind on the same path is refused.
    let e = LocalApi::bind(&r.sock, r.state.clone())
        .unwrap_err()
        .to_string();
    assert!(e.contains("another process is serving this socket"), "{e}");
    let state = r.state.clone();
    let sock = r.sock.clone();
    r.stop.send(()).unwrap();
    r.task.await.unwrap().unwrap();

    // Stale: a socket file nobody listens on (as a crash leaves it).
    let stale = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(stale);
    assert!(sock.exists());
    let api = LocalApi::bind(&sock, state.clone()).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(api.serve(async move {
        let _ = rx.await;
    }));
    assert_eq!(get(&sock, "/v1/status").await.unwrap()["node"], "edge-1");
    tx.send(()).unwrap();
    task.await.unwrap().unwrap();

    // Not a socket: refused, left alone.
    std::fs::write(&sock, b"precious").unwrap();
    let e = LocalApi::bind(&sock, state).unwrap_err().to_string();
    assert!(e.contains("is not a socket"), "{e}");
    assert_eq!(std::fs::read(&sock).unwrap(), b"precious");
}

#[tokio::test]
async fn client_names_the_socket_when_nothing_listens() {
    let dir = tempfile::tempdir().unwrap();
    let e = get(&dir.path().join("edge.sock"), "/v1/status")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("edge.sock") && e.contains("verge-edge run"),
        "{e}"
    );
}

#[tokio::test]
async fn results_are_queued_with_increasing_seq_and_bad_reports_are_refused() {
    let r = start().await;
    let a = post(
        &r.sock,
        "/v1/results",
        &serde_json::json!({"id": "t1", "ok": true, "output": {"n": 1}}),
    )
    .await
    .unwrap();
    let b = post(
        &r.sock,
        "/v1/results",
        &serde_json::json!({"id": "t2", "ok": false, "error": "boom"}),
    )
    .await
    .unwrap();
    let (sa, sb) = (a["seq"].as_u64().unwrap(), b["seq"].as_u64().unwrap());
    assert!(sb > sa, "{sa} then {sb}");
    let items = r.state.queue().peek(10, now_ms()).unwrap();
    assert_eq!(items.len(), 2);
    let (_, first) =
        verge_proto::decode_any("verge/v1/node/edge-1/result", &items[0].payload).unwrap();
    match first {
        verge_proto::Message::TaskResult(t) => {
            assert_eq!(t.id, "t1");
            assert_eq!(t.seq, sa);
            assert_eq!(t.seq, items[0].seq, "the result carries its queue seq");
        }
        other => panic!("{other:?}"),
    }

    // Bad reports: a clear 400 naming the field, nothing queued.
    for (body, needle) in [
        (serde_json::json!({"id": "t3", "ok": false}), "error"),
        (
            serde_json::json!({"id": "t3", "ok": true, "error": "x"}),
            "error",
        ),
        (serde_json::json!({"id": "", "ok": true}), "id"),
        (
            serde_json::json!({"id": "t3", "ok": true, "bogus": 1}),
            "bogus",
        ),
        (serde_json::json!({"ok": true}), "id"),
        (
            serde_json::json!({"id": "t3", "ok": true, "startedAtMs": 10, "finishedAtMs": 5}),
            "finishedAtMs",
        ),
    ] {
        let e = post(&r.sock, "/v1/results", &body)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{body}: {e}");
    }
    let big = "x".repeat(MAX_RESULT_BODY + 1);
    let e = post(
        &r.sock,
        "/v1/results",
        &serde_json::json!({"id": "t4", "ok": true, "output": big}),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("at most"), "{e}");
    let (status, _) = raw(
        &r.sock,
        "GET /v1/results HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(r.state.queue().peek(10, now_ms()).unwrap().len(), 2);
    r.stop.send(()).unwrap();
    r.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn stalled_connections_are_closed_and_a_stalled_body_gets_408() {
    let r = start().await;
    // A result body that stops after 10 of its 100 bytes.
    let mut body_stall = UnixStream::connect(&r.sock).await.unwrap();
    body_stall
        .write_all(b"POST /v1/results HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\": \"t1")
        .await
        .unwrap();
    // Every other slot taken by half a request line.
    let mut stalled = Vec::new();
    for _ in 1..MAX_CONNECTIONS {
        let mut s = UnixStream::connect(&r.sock).await.unwrap();
        s.write_all(b"GET /v1/sta").await.unwrap();
        stalled.push(s);
    }
    // The server closes each of them (header timeout, 10 s).
    let closed = futures::future::join_all(stalled.into_iter().map(|mut s| async move {
        let mut buf = [0u8; 64];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }));
    tokio::time::timeout(Duration::from_secs(120), closed)
        .await
        .expect("stalled connections still open after 120 s");
    // The stalled body gets its answer (30 s).
    let mut answer = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(120),
        body_stall.read_to_end(&mut answer),
    )
    .await
    .expect("no answer to the stalled body after 120 s")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("RequestTimeout"), "{answer}");
    // Nothing was queued, and the API answers again.
    assert!(r.state.queue().peek(10, now_ms()).unwrap().is_empty());
    let (status, _) = raw(
        &r.sock,
        "GET /v1/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    r.stop.send(()).unwrap();
    r.task.await.unwrap().unwrap();
}
