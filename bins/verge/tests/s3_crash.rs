//! Crash safety of the S3 API (issue 16): `verge cloud` is killed with SIGKILL 20
//! times while 32 clients upload objects (64–256 KiB) and one client runs a multipart
//! upload (3 × 5 MiB), each kill just after another of its steps (created, each part,
//! completed). After every kill, before the restart, the store's own
//! history under `/s3/objects/` (the object events, decision 033) holds a Put of every
//! acknowledged object with its ETag, and every object record names a blob of its size.
//! After every restart: every upload acknowledged so far is listed with its ETag, this
//! round's read back byte for byte, no listed object differs from a complete upload
//! (no partial object), and the interrupted multipart upload still holds every part
//! it acknowledged and completes (or, if its completion was committed, answers the
//! same object). At the end, across all 20 kills: every acknowledged object of ten
//! uploaders had its `created` CloudEvent delivered to a webhook (at least once), and a
//! function trigger on one uploader's prefix made exactly one task per event, each
//! with its object's ETag.

mod s3_common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use futures::StreamExt;
use rand::Rng;
use reqwest::{Method, StatusCode};
use s3_common::*;
use serde_json::json;
use verge_testkit::Cloud;

const ROUNDS: usize = 20;
const UPLOADERS: usize = 32;
const PART: usize = 5 << 20;
const PARTS: usize = 3;
const BUCKET: &str = "crash";

/// An upload: its key's bytes are `bytes_of(seed, len)`.
#[derive(Clone, Debug)]
struct Obj {
    etag: String,
    seed: u64,
    len: usize,
}

type Objs = Arc<Mutex<HashMap<String, Obj>>>;

/// What the multipart client of a round saw acknowledged.
#[derive(Default, Debug)]
struct Multipart {
    upload_id: Option<String>,
    parts: Vec<(usize, String)>,
    completed: Option<String>,
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> Option<&'a str> {
    text.split_once(open)?.1.split_once(close).map(|(v, _)| v)
}

fn unquote_xml(etag: &str) -> String {
    etag.replace("&quot;", "\"").replace("&#34;", "\"")
}

async fn uploader(
    http: reqwest::Client,
    signer: Signer,
    round: usize,
    id: usize,
    stop: Arc<AtomicBool>,
    attempted: Objs,
    acked: Objs,
) {
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let key = format!("u{id:02}/r{round:02}-{n}");
        let seed = (round as u64) << 40 | (id as u64) << 20 | n;
        let len = (64 << 10) + (seed.wrapping_mul(2_654_435_761) % (192 << 10)) as usize;
        let data = bytes_of(seed, len);
        let etag = quoted_md5(&data);
        let obj = Obj {
            etag: etag.clone(),
            seed,
            len,
        };
        attempted.lock().unwrap().insert(key.clone(), obj.clone());
        n += 1;
        match signer
            .send(&http, Method::PUT, &format!("/{BUCKET}/{key}"), &[], data)
            .await
        {
            Ok((StatusCode::OK, headers, _)) => {
                let got = headers
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                assert_eq!(got, etag, "{key}: acknowledged with another ETag");
                acked.lock().unwrap().insert(key, obj);
            }
            Ok((status, _, body)) => {
                panic!("{key}: {status} {}", String::from_utf8_lossy(&body))
            }
            // The cloud is gone (killed): this one was never acknowledged.
            Err(_) => break,
        }
    }
}

fn mp_data(round: usize) -> Vec<u8> {
    bytes_of(0xABCD_0000 + round as u64, PART * PARTS)
}

/// The multipart client: create, three parts, complete; `reached` is notified once
/// `stage` steps were acknowledged (1: created, 2–4: parts, 5: completed) or a step
/// failed.
async fn multipart(
    http: reqwest::Client,
    signer: Signer,
    round: usize,
    seen: Arc<Mutex<Multipart>>,
    stage: usize,
    reached: Arc<tokio::sync::Notify>,
) {
    let _notify = NotifyOnDrop(reached.clone());
    let key = format!("/{BUCKET}/mp/r{round:02}.bin");
    let data = mp_data(round);
    let step = |n: usize| {
        if n == stage {
            reached.notify_one();
        }
    };
    let Ok((StatusCode::OK, _, body)) = signer
        .send(&http, Method::POST, &key, &[("uploads", "")], Vec::new())
        .await
    else {
        return;
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let id = between(&body, "<UploadId>", "</UploadId>")
        .expect("UploadId")
        .to_owned();
    seen.lock().unwrap().upload_id = Some(id.clone());
    step(1);
    for n in 1..=PARTS {
        let chunk = data[(n - 1) * PART..n * PART].to_vec();
        let number = n.to_string();
        let Ok((StatusCode::OK, headers, _)) = signer
            .send(
                &http,
                Method::PUT,
                &key,
                &[("partNumber", &number), ("uploadId", &id)],
                chunk,
            )
            .await
        else {
            return;
        };
        let etag = headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        seen.lock().unwrap().parts.push((n, etag));
        step(1 + n);
    }
    let Ok((StatusCode::OK, _, body)) = complete(&http, &signer, &key, &id).await else {
        return;
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    let etag = unquote_xml(between(&body, "<ETag>", "</ETag>").expect("ETag"));
    seen.lock().unwrap().completed = Some(etag);
    step(2 + PARTS);
}

/// Wakes the round's killer when the multipart client ends early.
struct NotifyOnDrop(Arc<tokio::sync::Notify>);

impl Drop for NotifyOnDrop {
    fn drop(&mut self) {
        self.0.notify_one();
    }
}

/// CompleteMultipartUpload of all parts with their expected ETags.
async fn complete(
    http: &reqwest::Client,
    signer: &Signer,
    key: &str,
    id: &str,
) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>)> {
    let round: usize = key
        .rsplit_once("/r")
        .and_then(|(_, s)| s.get(..2))
        .and_then(|s| s.parse().ok())
        .context("round in key")?;
    let data = mp_data(round);
    let mut xml = String::from("<CompleteMultipartUpload>");
    for n in 1..=PARTS {
        let etag = quoted_md5(&data[(n - 1) * PART..n * PART]);
        xml.push_str(&format!(
            "<Part><PartNumber>{n}</PartNumber><ETag>{etag}</ETag></Part>"
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    signer
        .send(
            http,
            Method::POST,
            key,
            &[("uploadId", id)],
            xml.into_bytes(),
        )
        .await
}

/// Every object of the bucket: key → (ETag, size), through ListObjectsV2 pages.
async fn list_all(
    http: &reqwest::Client,
    signer: &Signer,
) -> Result<HashMap<String, (String, usize)>> {
    let mut out = HashMap::new();
    let mut token: Option<String> = None;
    loop {
        let mut q = vec![("list-type", "2")];
        if let Some(t) = &token {
            q.push(("continuation-token", t));
        }
        let (status, _, body) = signer
            .send(http, Method::GET, &format!("/{BUCKET}"), &q, Vec::new())
            .await?;
        let body = String::from_utf8_lossy(&body).into_owned();
        anyhow::ensure!(status == StatusCode::OK, "list: {status} {body}");
        for c in body.split("<Contents>").skip(1) {
            let key = between(c, "<Key>", "</Key>").context("Key")?.to_owned();
            let etag = unquote_xml(between(c, "<ETag>", "</ETag>").context("ETag")?);
            let size: usize = between(c, "<Size>", "</Size>").context("Size")?.parse()?;
            out.insert(key, (etag, size));
        }
        if between(&body, "<IsTruncated>", "</IsTruncated>") == Some("true") {
            token = Some(
                between(&body, "<NextContinuationToken>", "</NextContinuationToken>")
                    .context("NextContinuationToken")?
                    .to_owned(),
            );
        } else {
            return Ok(out);
        }
    }
}

/// Store level, on the killed cloud's data dir: the history under `/s3/objects/` (key
/// → ETags of its Put events) and the current records (key → (ETag, size, sha256)).
#[allow(clippy::type_complexity)]
async fn store_view(
    cloud: &Cloud,
) -> Result<(
    HashMap<String, Vec<String>>,
    HashMap<String, (String, usize, String)>,
)> {
    use verge_store::Store;
    let store = verge_store::SqliteStore::open(verge_store::SqliteOptions::new(
        cloud.data_dir().join("store.db"),
    ))
    .await?;
    // Nothing is ever deleted here: the newest record is the last event of the prefix.
    let items = store.list("/s3/objects/", None).await?.items;
    let last = items.iter().map(|kv| kv.mod_revision).max().unwrap_or(0);
    let mut history: HashMap<String, Vec<String>> = HashMap::new();
    let mut watch = store.watch("/s3/objects/", 0).await?;
    let mut seen = 0;
    while seen < last {
        let ev = tokio::time::timeout(Duration::from_secs(30), watch.next())
            .await
            .context("the store history ended early")?
            .context("the watch ended")??;
        if ev.kind == verge_store::EventKind::Put {
            let v: serde_json::Value = serde_json::from_slice(&ev.kv.value)?;
            history
                .entry(ev.kv.key.clone())
                .or_default()
                .push(v["etag"].as_str().unwrap_or_default().to_owned());
        }
        seen = ev.revision;
    }
    let mut records = HashMap::new();
    for kv in items {
        let v: serde_json::Value = serde_json::from_slice(&kv.value)?;
        records.insert(
            kv.key.clone(),
            (
                v["etag"].as_str().unwrap_or_default().to_owned(),
                v["size"].as_u64().unwrap_or(u64::MAX) as usize,
                v["sha256"].as_str().unwrap_or_default().to_owned(),
            ),
        );
    }
    Ok((history, records))
}

/// subject → ETags of the `created` CloudEvents the webhook got.
fn delivered(got: &verge_testkit::Received) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (_, body) in got.lock().unwrap().iter() {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
            && v["type"] == "dev.verge.object.created"
        {
            out.entry(v["subject"].as_str().unwrap_or_default().to_owned())
                .or_default()
                .push(v["data"]["eTag"].as_str().unwrap_or_default().to_owned());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_sigkill_and_nothing_partial_is_listed() -> Result<()> {
    let (mut cloud, aws) = start_with(&["--outbound-allow-networks", "127.0.0.1/32"]).await?;
    aws.ok(&["s3", "mb", &format!("s3://{BUCKET}")]).await?;
    // Events: a webhook for the objects of ten uploaders (`u0*`), a function for those
    // of one (`u00/`); the store-level check above covers every object's event record.
    let (hook_url, got) = verge_testkit::webhook_receiver().await?;
    cloud
        .api(
            Method::POST,
            "/api/v1/functions",
            Some(json!({"apiVersion": "verge.dev/v1", "kind": "Function", "metadata": {"name": "echo"},
                "spec": {"runtime": "builtin", "handler": "echo", "placement": {"cloud": true}}})),
        )
        .await?;
    for (name, spec) in [
        (
            "hook",
            json!({"event": {"bucket": BUCKET, "types": ["created"], "prefix": "u0"},
                "sink": {"url": hook_url}}),
        ),
        (
            "run",
            json!({"event": {"bucket": BUCKET, "types": ["created"], "prefix": "u00/"},
                "function": "echo"}),
        ),
    ] {
        cloud
            .api(
                Method::POST,
                "/api/v1/triggers",
                Some(json!({"apiVersion": "verge.dev/v1", "kind": "Trigger",
                    "metadata": {"name": name}, "spec": spec})),
            )
            .await?;
    }

    let attempted: Objs = Arc::default();
    let acked: Objs = Arc::default();
    let (mut interrupted_mp, mut completed_mp, mut resumed_parts) = (0, 0, 0);
    for round in 0..ROUNDS {
        let t0 = std::time::Instant::now();
        let http = cloud.client()?;
        let signer = Signer::new(&cloud.s3_url, &aws.access_key, &aws.secret_key);
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for id in 0..UPLOADERS {
            tasks.push(tokio::spawn(uploader(
                http.clone(),
                signer.clone(),
                round,
                id,
                stop.clone(),
                attempted.clone(),
                acked.clone(),
            )));
        }
        // The kill comes after the multipart client's step `stage` (created, a part,
        // all parts, completed), a little later at random: every step of it is cut.
        let stage = 1 + round % (2 + PARTS);
        let reached = Arc::new(tokio::sync::Notify::new());
        let mp = Arc::new(Mutex::new(Multipart::default()));
        tasks.push(tokio::spawn(multipart(
            http.clone(),
            signer.clone(),
            round,
            mp.clone(),
            stage,
            reached.clone(),
        )));
        let _ = tokio::time::timeout(Duration::from_secs(60), reached.notified()).await;
        let wait = rand::thread_rng().gen_range(0..150);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        cloud.kill9()?;
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await?;
        }
        let acked_now = acked.lock().unwrap().clone();
        let attempted_now = attempted.lock().unwrap().clone();
        let mp = std::mem::take(&mut *mp.lock().unwrap());
        let mp_key = format!("mp/r{round:02}.bin");

        // Store level, before the restart: every acknowledged object has a Put event
        // (its change event) with its ETag in the history; every record's blob is there
        // with the record's size.
        let (history, records) = store_view(&cloud).await?;
        for (key, obj) in &acked_now {
            let puts = history
                .get(&format!("/s3/objects/{BUCKET}/{key}"))
                .unwrap_or_else(|| panic!("round {round}: no event for acknowledged {key}"));
            assert!(puts.contains(&obj.etag), "round {round}: {key}: {puts:?}");
        }
        if let Some(etag) = &mp.completed {
            let puts = history
                .get(&format!("/s3/objects/{BUCKET}/{mp_key}"))
                .unwrap_or_else(|| panic!("round {round}: no event for the multipart object"));
            assert!(puts.contains(etag), "round {round}: multipart {puts:?}");
        }
        for (key, (etag, size, sha)) in &records {
            let blob = cloud
                .data_dir()
                .join("blobs/sha256")
                .join(&sha[..2])
                .join(sha);
            let meta = std::fs::metadata(&blob)
                .with_context(|| format!("round {round}: {key} ({etag}): no blob {sha}"))?;
            assert_eq!(
                meta.len() as usize,
                *size,
                "round {round}: {key}: blob size"
            );
        }

        let t1 = t0.elapsed();
        cloud.restart().await?;
        let t2 = t0.elapsed();
        let http = cloud.client()?;
        let signer = Signer::new(&cloud.s3_url, &aws.access_key, &aws.secret_key);

        // Every object listed is a complete upload; every acknowledged one is listed
        // with its ETag.
        let listed = list_all(&http, &signer).await?;
        let mp_etag = multipart_etag(&mp_data(round), PART);
        for (key, (etag, size)) in &listed {
            if let Some(r) = key.strip_prefix("mp/r") {
                assert_eq!(*size, PART * PARTS, "round {round}: partial {key} listed");
                let r: usize = r[..2].parse()?;
                assert_eq!(
                    *etag,
                    multipart_etag(&mp_data(r), PART),
                    "round {round}: {key}"
                );
                continue;
            }
            let obj = attempted_now
                .get(key)
                .unwrap_or_else(|| panic!("round {round}: {key} listed, never uploaded"));
            assert_eq!(
                (etag, *size),
                (&obj.etag, obj.len),
                "round {round}: {key} is not the complete upload"
            );
        }
        for (key, obj) in &acked_now {
            let (etag, _) = listed
                .get(key)
                .unwrap_or_else(|| panic!("round {round}: acknowledged {key} is not listed"));
            assert_eq!(etag, &obj.etag, "round {round}: {key}");
        }
        // This round's acknowledged objects read back byte for byte.
        let tag = format!("/r{round:02}-");
        for (key, obj) in acked_now.iter().filter(|(k, _)| k.contains(&tag)) {
            let (status, headers, body) = signer
                .send(
                    &http,
                    Method::GET,
                    &format!("/{BUCKET}/{key}"),
                    &[],
                    Vec::new(),
                )
                .await?;
            assert_eq!(status, StatusCode::OK, "round {round}: GET {key}");
            assert_eq!(
                headers.get("etag").and_then(|v| v.to_str().ok()),
                Some(obj.etag.as_str())
            );
            assert!(
                body == bytes_of(obj.seed, obj.len),
                "round {round}: {key}: other bytes"
            );
        }

        // The multipart upload: acknowledged completion reads back; an interrupted one
        // kept its acknowledged parts and completes now.
        let path = format!("/{BUCKET}/{mp_key}");
        match (&mp.upload_id, &mp.completed) {
            (_, Some(etag)) => {
                completed_mp += 1;
                assert_eq!(etag, &mp_etag, "round {round}");
                assert_eq!(
                    listed.get(&mp_key).map(|(e, _)| e),
                    Some(&mp_etag),
                    "round {round}: acknowledged multipart object not listed"
                );
            }
            (Some(id), None) => {
                interrupted_mp += 1;
                let data = mp_data(round);
                let (status, _, body) = signer
                    .send(&http, Method::GET, &path, &[("uploadId", id)], Vec::new())
                    .await?;
                let body = String::from_utf8_lossy(&body).into_owned();
                let done_before = listed.contains_key(&mp_key);
                if status == StatusCode::OK {
                    for (n, etag) in &mp.parts {
                        let part = body
                            .split("<Part>")
                            .skip(1)
                            .find(|p| {
                                between(p, "<PartNumber>", "</PartNumber>") == Some(&n.to_string())
                            })
                            .unwrap_or_else(|| {
                                panic!("round {round}: acknowledged part {n} lost: {body}")
                            });
                        assert_eq!(
                            unquote_xml(between(part, "<ETag>", "</ETag>").unwrap_or_default()),
                            *etag,
                            "round {round}: part {n}"
                        );
                        resumed_parts += 1;
                    }
                    for n in 1..=PARTS {
                        if mp.parts.iter().any(|(p, _)| *p == n) {
                            continue;
                        }
                        let number = n.to_string();
                        let (status, _, body) = signer
                            .send(
                                &http,
                                Method::PUT,
                                &path,
                                &[("partNumber", &number), ("uploadId", id)],
                                data[(n - 1) * PART..n * PART].to_vec(),
                            )
                            .await?;
                        assert_eq!(
                            status,
                            StatusCode::OK,
                            "round {round}: part {n} after restart: {}",
                            String::from_utf8_lossy(&body)
                        );
                    }
                } else {
                    // Only a completion that was committed (not acknowledged) ends the
                    // upload.
                    assert!(
                        done_before,
                        "round {round}: upload {id} gone without an object: {status} {body}"
                    );
                }
                let (status, _, body) = complete(&http, &signer, &path, id).await?;
                let body = String::from_utf8_lossy(&body).into_owned();
                assert_eq!(status, StatusCode::OK, "round {round}: complete: {body}");
                assert_eq!(
                    unquote_xml(between(&body, "<ETag>", "</ETag>").unwrap_or_default()),
                    mp_etag
                );
                let (status, _, got) = signer
                    .send(&http, Method::GET, &path, &[], Vec::new())
                    .await?;
                assert_eq!(status, StatusCode::OK);
                assert!(got == data, "round {round}: multipart bytes differ");
            }
            (None, None) => {}
        }
        eprintln!(
            "round {round}: kill after multipart step {stage}, {} acknowledged so far; \
             uploads+store check {t1:?}, restart {:?}, checks {:?}",
            acked_now.len(),
            t2 - t1,
            t0.elapsed() - t2
        );
    }
    // Every acknowledged object of `u0*` had its created event delivered to the
    // webhook (at least once), across the 20 kills.
    let want: HashMap<String, String> = acked
        .lock()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("u0"))
        .map(|(k, o)| (k.clone(), o.etag.clone()))
        .collect();
    verge_testkit::eventually(
        Duration::from_secs(240),
        "every acknowledged object's event at the webhook",
        async || {
            let seen = delivered(&got);
            want.iter()
                .all(|(k, e)| seen.get(k).is_some_and(|l| l.contains(e)))
                .then_some(())
        },
    )
    .await?;
    let deliveries = got.lock().unwrap().len();
    // The function trigger: exactly one task per event of `u00/`, with the CloudEvent
    // of an acknowledged (or at least committed) upload. (A task the kill cut while it
    // ran is not run again: it times out after its 60 s and is dead-lettered.)
    let u00: HashMap<&String, &String> =
        want.iter().filter(|(k, _)| k.starts_with("u00/")).collect();
    let tasks = verge_testkit::eventually(
        Duration::from_secs(240),
        "a task for every acknowledged u00/ object",
        async || {
            let v = cloud.api(Method::GET, "/api/v1/tasks", None).await.ok()?;
            let tasks: Vec<serde_json::Value> = v["items"]
                .as_array()?
                .iter()
                .filter(|t| t["metadata"]["labels"]["verge.dev/event"].is_string())
                .cloned()
                .collect();
            let subjects: Vec<&str> = tasks
                .iter()
                .filter_map(|t| t["spec"]["input"]["subject"].as_str())
                .collect();
            u00.keys()
                .all(|k| subjects.contains(&k.as_str()))
                .then_some(tasks)
        },
    )
    .await?;
    let mut per_event: HashMap<String, usize> = HashMap::new();
    let mut per_subject: HashMap<String, usize> = HashMap::new();
    for t in &tasks {
        let input = &t["spec"]["input"];
        *per_event
            .entry(input["id"].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
        let subject = input["subject"].as_str().unwrap_or_default().to_owned();
        assert!(subject.starts_with("u00/"), "{t}");
        if let Some(e) = u00.get(&subject) {
            assert_eq!(input["data"]["eTag"].as_str(), Some(e.as_str()), "{t}");
        } else {
            assert!(
                attempted.lock().unwrap().contains_key(&subject),
                "a task for an object never uploaded: {t}"
            );
        }
        *per_subject.entry(subject).or_default() += 1;
    }
    assert!(
        per_event.values().all(|n| *n == 1),
        "an event ran twice: {per_event:?}"
    );
    assert!(
        per_subject.values().all(|n| *n == 1),
        "an object ran twice: {per_subject:?}"
    );
    let succeeded = tasks
        .iter()
        .filter(|t| t["status"]["phase"] == "Succeeded")
        .count();
    eprintln!(
        "events: {} objects, {deliveries} webhook deliveries, {} function tasks (one each, \
         {succeeded} succeeded so far)",
        want.len(),
        tasks.len()
    );
    let acked = acked.lock().unwrap().len();
    eprintln!(
        "{ROUNDS} SIGKILLs: {acked} acknowledged uploads all read back; multipart: \
         {completed_mp} completed before a kill, {interrupted_mp} interrupted and resumed \
         ({resumed_parts} acknowledged parts kept)"
    );
    assert!(
        acked >= ROUNDS * 4,
        "too few uploads acknowledged to prove anything: {acked}"
    );
    assert!(
        interrupted_mp >= ROUNDS / 2 && completed_mp >= 1,
        "the kills missed the multipart upload: {interrupted_mp} interrupted, {completed_mp} completed"
    );
    Ok(())
}
