//! Crash safety: clients write continuously while `verge cloud` is killed with SIGKILL
//! at random moments (25 times). After every restart, every write that was answered
//! 2xx is present with the acknowledged content, and revisions never go backwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use rand::Rng;
use serde_json::{Value, json};
use verge_testkit::Cloud;

const BIN: &str = env!("CARGO_BIN_EXE_verge");
const KILLS: usize = 25;
const WRITERS: usize = 8;

/// name -> (input value acknowledged, resourceVersion acknowledged)
type Acked = Arc<Mutex<HashMap<String, (u64, i64)>>>;

/// A Config (a plain stored kind: no controller acts on it).
fn object(name: &str, v: u64) -> Value {
    json!({"apiVersion": "verge.dev/v1", "kind": "Config",
        "metadata": {"name": name}, "spec": {"data": {"v": v.to_string()}}})
}

async fn writer(
    http: reqwest::Client,
    url: String,
    token: String,
    id: usize,
    seq: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    acked: Acked,
) {
    // Each writer creates new objects and keeps updating its own counter object.
    let counter = format!("counter-{id}");
    while !stop.load(Ordering::Relaxed) {
        let n = seq.fetch_add(1, Ordering::Relaxed);
        let (method, path, name) = if n.is_multiple_of(3) {
            (
                reqwest::Method::PUT,
                format!("/api/v1/configs/{counter}"),
                counter.clone(),
            )
        } else {
            (
                reqwest::Method::POST,
                "/api/v1/configs".to_string(),
                format!("t-{n}"),
            )
        };
        let resp = http
            .request(method, format!("{url}{path}"))
            .bearer_auth(&token)
            .json(&object(&name, n))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        let Ok(resp) = resp else {
            tokio::time::sleep(Duration::from_millis(5)).await;
            continue;
        };
        if !resp.status().is_success() {
            continue; // e.g. the counter does not exist yet (404)
        }
        let Ok(body) = resp.json::<Value>().await else {
            continue;
        };
        let rv: i64 = body["metadata"]["resourceVersion"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        acked.lock().unwrap().insert(name, (n, rv));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill() -> Result<()> {
    let mut cloud = Cloud::start(std::path::Path::new(BIN), &[]).await?;
    let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
    let seq = Arc::new(AtomicU64::new(1));
    let http = cloud.client()?;
    for id in 0..WRITERS {
        let r = http
            .post(format!("{}/api/v1/configs", cloud.url))
            .bearer_auth(&cloud.admin_token)
            .json(&object(&format!("counter-{id}"), 0))
            .send()
            .await?;
        assert!(r.status().is_success());
    }
    let mut last_revision = 0i64;
    let mut total_acked_before = 0;
    for round in 0..KILLS {
        let stop = Arc::new(AtomicBool::new(false));
        let http = cloud.client()?;
        let handles: Vec<_> = (0..WRITERS)
            .map(|id| {
                tokio::spawn(writer(
                    http.clone(),
                    cloud.url.clone(),
                    cloud.admin_token.clone(),
                    id,
                    seq.clone(),
                    stop.clone(),
                    acked.clone(),
                ))
            })
            .collect();
        let wait = rand::thread_rng().gen_range(30..300);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        cloud.kill9()?;
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.await?;
        }
        cloud.restart().await?;

        // Every acknowledged write is there, with the acknowledged content.
        let list: Value = cloud
            .client()?
            .get(format!("{}/api/v1/configs", cloud.url))
            .bearer_auth(&cloud.admin_token)
            .send()
            .await?
            .json()
            .await?;
        let revision: i64 = list["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()?;
        let present: HashMap<String, (u64, i64)> = list["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["metadata"]["name"].as_str().unwrap().to_string(),
                    (
                        i["spec"]["data"]["v"]
                            .as_str()
                            .and_then(|v| v.parse().ok())
                            .unwrap_or(0),
                        i["metadata"]["resourceVersion"]
                            .as_str()
                            .unwrap()
                            .parse()
                            .unwrap(),
                    ),
                )
            })
            .collect();
        let acked_now = acked.lock().unwrap().clone();
        for (name, (v, rv)) in &acked_now {
            let (pv, prv) = present.get(name).unwrap_or_else(|| {
                panic!("round {round}: acknowledged {name} (rv {rv}) is missing")
            });
            // A later unacknowledged update may have landed; it can only be newer.
            assert!(
                prv >= rv,
                "round {round}: {name} went back from rv {rv} to {prv}"
            );
            if prv == rv {
                assert_eq!(pv, v, "round {round}: {name} content differs at rv {rv}");
            }
            assert!(
                revision >= *rv,
                "round {round}: store revision {revision} below acked {rv}"
            );
        }
        assert!(
            revision >= last_revision,
            "round {round}: revision went back from {last_revision} to {revision}"
        );
        last_revision = revision;
        total_acked_before = acked_now.len();
    }
    assert!(
        total_acked_before > WRITERS * 2,
        "too few writes acknowledged to prove anything: {total_acked_before}"
    );
    eprintln!(
        "{KILLS} SIGKILLs, {total_acked_before} acknowledged objects all present, final revision {last_revision}"
    );
    Ok(())
}
