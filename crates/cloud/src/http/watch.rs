//! Watch streams: `GET /api/v1/{plural}?watch=1[&resourceVersion=N]`.
//!
//! With `resourceVersion=N` the stream carries every change with a revision greater
//! than N, in order (410 Gone before the stream starts if N was compacted). Without it,
//! the stream starts with an `ADDED` event for each current object, then follows changes.
//! Lines are newline-delimited JSON `{"type": ..., "object": ...}`, or Server-Sent Events
//! when the client accepts `text/event-stream`. Each event is encoded once and the bytes
//! are shared by every watcher (`Event::encoded`). A slow client only slows its own
//! stream; the store catches a lagging watcher up from history. A stream ends at `timeoutSeconds`
//! (default 30 min), at server shutdown, when the client goes away, or with an `ERROR`
//! event if it falls behind a compaction.
//!
//! Label-selector watches filter on the object's labels at each event; an object whose
//! labels stop matching produces no event (clients relist to reconcile).
//!
//! A token may hold at most [`WatchLimit`]'s cap of streams at once (`verge cloud
//! --max-watches-per-token`); one more is answered 429 naming the cap, before anything
//! is read from the store. Other tokens are not affected.
//! Secrets are shown per watcher through its [`SecretView`] and never through the
//! shared encoding: one reader's form must not reach another.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use verge_api::{Kind, LabelSelector, Reason, WatchEvent, WatchEventType};
use verge_store::{Event, EventKind, Revision, WatchStream};

use super::state::SharedState;
use crate::error::ApiError;
use crate::objects::{kind_prefix, kv_to_object};
use crate::secrets::SecretView;

pub const DEFAULT_TIMEOUT_SECS: u64 = 1800;
pub const MAX_TIMEOUT_SECS: u64 = 3600;

#[derive(Clone, Copy)]
enum Framing {
    NdJson,
    Sse,
}

impl Framing {
    fn frame(self, json_line: &Bytes, revision: Option<Revision>) -> Bytes {
        match self {
            Framing::NdJson => json_line.clone(),
            Framing::Sse => {
                let mut out = Vec::with_capacity(json_line.len() + 32);
                if let Some(r) = revision {
                    out.extend_from_slice(format!("id: {r}\n").as_bytes());
                }
                out.extend_from_slice(b"data: ");
                out.extend_from_slice(json_line.strip_suffix(b"\n").unwrap_or(json_line));
                out.extend_from_slice(b"\n\n");
                out.into()
            }
        }
    }
}

fn line(event_type: WatchEventType, object: serde_json::Value) -> Bytes {
    let mut v = serde_json::to_vec(&WatchEvent { event_type, object }).unwrap_or_default();
    v.push(b'\n');
    v.into()
}

/// JSON line for a store event, encoded once per event and shared — except for a
/// watcher with a [`SecretView`], whose line is its own.
fn encode_event(ev: &Event, view: Option<&SecretView>) -> Result<Bytes, ApiError> {
    if view.is_none()
        && let Some(b) = ev.encoded.get()
    {
        return Ok(b.clone());
    }
    let mut obj = kv_to_object(&ev.kv)?;
    if let Some(v) = view {
        obj = v.show(&obj);
    }
    let t = match ev.kind {
        EventKind::Delete => WatchEventType::Deleted,
        EventKind::Put if ev.is_create() => WatchEventType::Added,
        EventKind::Put => WatchEventType::Modified,
    };
    let b = line(t, serde_json::to_value(&obj).map_err(ApiError::internal)?);
    if view.is_some() {
        return Ok(b);
    }
    Ok(ev.encoded.get_or_init(|| b).clone())
}

/// Open watch streams per token, capped.
pub struct WatchLimit {
    max: usize,
    open: Mutex<HashMap<String, usize>>,
}

impl WatchLimit {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more stream of `token_id`, or the 429 naming the cap.
    fn acquire(self: &Arc<Self>, token_id: &str) -> Result<WatchPermit, ApiError> {
        let full = || {
            ApiError::new(
                Reason::TooManyRequests,
                format!(
                    "too many open watches for this token: at most {} at once (verge cloud --max-watches-per-token); close one first",
                    self.max
                ),
            )
        };
        let mut open = self.open.lock().map_err(|_| full())?;
        let n = open.entry(token_id.to_string()).or_insert(0);
        if *n >= self.max {
            return Err(full());
        }
        *n += 1;
        Ok(WatchPermit {
            limit: self.clone(),
            token_id: token_id.to_string(),
        })
    }

    /// Streams `token_id` holds now.
    #[cfg(test)]
    fn open_for(&self, token_id: &str) -> usize {
        self.open
            .lock()
            .map(|o| o.get(token_id).copied().unwrap_or(0))
            .unwrap_or(0)
    }
}

struct WatchPermit {
    limit: Arc<WatchLimit>,
    token_id: String,
}

impl Drop for WatchPermit {
    fn drop(&mut self) {
        if let Ok(mut open) = self.limit.open.lock()
            && let Some(n) = open.get_mut(&self.token_id)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.token_id);
            }
        }
    }
}

struct WatchGuard {
    st: SharedState,
    _permit: WatchPermit,
}

impl WatchGuard {
    fn new(st: SharedState, permit: WatchPermit) -> Self {
        st.metrics.open_watches.inc();
        Self {
            st,
            _permit: permit,
        }
    }
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.st.metrics.open_watches.dec();
    }
}

/// What one watch asks for.
pub struct WatchRequest {
    pub kind: Kind,
    pub selector: Option<LabelSelector>,
    /// Stream changes after this revision; `None`: the current objects first.
    pub from: Option<Revision>,
    /// Seconds until the stream ends (default [`DEFAULT_TIMEOUT_SECS`]).
    pub timeout: Option<u64>,
    /// How the watcher may see Secrets (`None`: not a Secret watch).
    pub view: Option<SecretView>,
}

pub async fn start(
    st: SharedState,
    token_id: &str,
    req: WatchRequest,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let WatchRequest {
        kind,
        selector,
        from,
        timeout,
        view,
    } = req;
    let permit = st.watches.acquire(token_id)?;
    let framing = match headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) {
        Some(a) if a.contains("text/event-stream") => Framing::Sse,
        _ => Framing::NdJson,
    };
    let prefix = kind_prefix(kind);
    // Without a starting revision: send the current objects, then changes after them.
    let (initial, after) = match from {
        Some(rv) => (Vec::new(), rv),
        None => {
            let list = st.store.list(&prefix, selector.as_ref()).await?;
            (list.items, list.revision)
        }
    };
    // Opening the store watch here makes a compacted revision a 410 before streaming.
    let events = st.store.watch(&prefix, after).await?;
    let first: Vec<Result<Bytes, std::io::Error>> = initial
        .iter()
        .filter_map(|kv| {
            let mut obj = kv_to_object(kv).ok()?;
            if let Some(view) = &view {
                obj = view.show(&obj);
            }
            let v = serde_json::to_value(&obj).ok()?;
            Some(Ok(framing.frame(
                &line(WatchEventType::Added, v),
                Some(kv.mod_revision),
            )))
        })
        .collect();
    // The body streams straight from the store watch: no extra task or channel per
    // watcher. It ends at the deadline, at shutdown, after an ERROR event, or when the
    // client goes away (hyper drops the body, which drops the guard).
    let live = futures::stream::unfold(
        Live {
            events,
            selector,
            view,
            framing,
            done: false,
            _guard: WatchGuard::new(st.clone(), permit),
        },
        next_frame,
    );
    let mut shutdown = st.shutdown.clone();
    let deadline = Duration::from_secs(timeout.unwrap_or(DEFAULT_TIMEOUT_SECS));
    let stop = async move {
        tokio::select! {
            _ = tokio::time::sleep(deadline) => {}
            _ = shutdown.changed() => {}
        }
    };
    let body = futures::stream::iter(first)
        .chain(live)
        .take_until(Box::pin(stop));
    let content_type = match framing {
        Framing::NdJson => "application/x-ndjson",
        Framing::Sse => "text/event-stream",
    };
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    Ok(resp)
}

struct Live {
    events: WatchStream,
    selector: Option<LabelSelector>,
    view: Option<SecretView>,
    framing: Framing,
    done: bool,
    _guard: WatchGuard,
}

async fn next_frame(mut st: Live) -> Option<(Result<Bytes, std::io::Error>, Live)> {
    if st.done {
        return None;
    }
    loop {
        match st.events.next().await? {
            Ok(ev) => {
                if st
                    .selector
                    .as_ref()
                    .is_some_and(|sel| !sel.matches(&ev.kv.labels))
                {
                    continue;
                }
                let Ok(b) = encode_event(&ev, st.view.as_ref()) else {
                    continue;
                };
                let frame = st.framing.frame(&b, Some(ev.revision));
                return Some((Ok(frame), st));
            }
            Err(e) => {
                let err = ApiError::from(e);
                let body = serde_json::to_value(err.body()).unwrap_or_default();
                let frame = st.framing.frame(&line(WatchEventType::Error, body), None);
                st.done = true;
                return Some((Ok(frame), st));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_per_token_and_freed_on_drop() {
        let limit = WatchLimit::new(2);
        let a1 = limit.acquire("a").unwrap();
        let _a2 = limit.acquire("a").unwrap();
        let err = limit.acquire("a").err().unwrap();
        assert_eq!(err.reason, Reason::TooManyRequests);
        assert!(err.message.contains("at most 2"), "{}", err.message);
        assert!(err.message.contains("--max-watches-per-token"));
        let _b = limit.acquire("b").unwrap();
        drop(a1);
        assert_eq!(limit.open_for("a"), 1);
        let _a3 = limit.acquire("a").unwrap();
        assert_eq!(limit.open_for("b"), 1);
    }
}
