//! How an object is answered over HTTP, as pure functions of its [`ObjectRecord`] and
//! the request's headers: the conditional requests of RFC 9110 §13 (`If-Match`,
//! `If-Unmodified-Since` → 412; `If-None-Match`, `If-Modified-Since` → 304), one
//! `Range` (206 with `Content-Range`, 416 when unsatisfiable; `If-Range` honoured),
//! and the representation headers (`ETag`, `Last-Modified`, `Cache-Control`,
//! `Content-Type`, `Content-Length`, `Accept-Ranges`, the stored `Content-*`/`Expires`
//! headers). Shared by `/cdn`, the REST object routes and S3 GetObject/HeadObject.
//!
//! No I/O: the caller streams the bytes [`Plan::body`] names from the blob.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use verge_api::specs::ObjectRecord;

use crate::artifacts::{RangeRequest, parse_range};

/// `Cache-Control` of a public object that set none (decision 032): browsers and CDNs
/// may keep it five minutes, then revalidate (a 304 costs no bytes).
pub const DEFAULT_PUBLIC_CACHE_CONTROL: &str = "public, max-age=300";
/// `Cache-Control` of an object read with a token that set none: never cached by a
/// shared cache.
pub const DEFAULT_PRIVATE_CACHE_CONTROL: &str = "private, no-cache";

/// What to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub status: StatusCode,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Bytes of the blob to send: `(start, len)`; `None`: no body (304, 412, 416).
    pub body: Option<(u64, u64)>,
}

/// The answer to a GET (or HEAD: the same headers, the caller sends no body) of the
/// object `rec`, given the request's `headers`. `default_cache_control` applies when
/// the object has no `Cache-Control` of its own.
pub fn plan(rec: &ObjectRecord, headers: &HeaderMap, default_cache_control: &str) -> Plan {
    let etag = rec.etag.as_str();
    let modified = parse_rfc3339_secs(&rec.last_modified);
    let mut out = validators(rec);
    match conditions(etag, modified, headers) {
        Condition::PreconditionFailed => {
            return Plan {
                status: StatusCode::PRECONDITION_FAILED,
                headers: out,
                body: None,
            };
        }
        Condition::NotModified => {
            out.push((
                header::CACHE_CONTROL,
                cache_control(rec, default_cache_control),
            ));
            return Plan {
                status: StatusCode::NOT_MODIFIED,
                headers: out,
                body: None,
            };
        }
        Condition::Proceed => {}
    }
    out.push((
        header::CACHE_CONTROL,
        cache_control(rec, default_cache_control),
    ));
    out.push((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")));
    for (name, value) in &rec.headers {
        let Ok(name) = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) else {
            continue;
        };
        if name == header::CACHE_CONTROL || !STORED_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let Ok(v) = HeaderValue::from_str(value) {
            out.push((name, v));
        }
    }
    let size = rec.size;
    let range = match headers.get(header::RANGE).and_then(|v| v.to_str().ok()) {
        Some(r) if if_range_holds(etag, modified, headers) => parse_range(r, size),
        _ => RangeRequest::Full,
    };
    match range {
        RangeRequest::Full => {
            out.push((header::CONTENT_TYPE, content_type(rec)));
            out.push((header::CONTENT_LENGTH, HeaderValue::from(size)));
            Plan {
                status: StatusCode::OK,
                headers: out,
                body: Some((0, size)),
            }
        }
        RangeRequest::Partial { start, end } => {
            let len = end - start + 1;
            out.push((header::CONTENT_TYPE, content_type(rec)));
            out.push((header::CONTENT_LENGTH, HeaderValue::from(len)));
            out.push((
                header::CONTENT_RANGE,
                value(&format!("bytes {start}-{end}/{size}")),
            ));
            Plan {
                status: StatusCode::PARTIAL_CONTENT,
                headers: out,
                body: Some((start, len)),
            }
        }
        RangeRequest::Unsatisfiable => {
            out.push((header::CONTENT_RANGE, value(&format!("bytes */{size}"))));
            Plan {
                status: StatusCode::RANGE_NOT_SATISFIABLE,
                headers: out,
                body: None,
            }
        }
    }
}

/// Headers a writer may store with an object and that are answered with it.
const STORED_HEADERS: &[&str] = &[
    "cache-control",
    "content-disposition",
    "content-encoding",
    "content-language",
    "expires",
];

/// The outcome of the conditional headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    Proceed,
    NotModified,
    PreconditionFailed,
}

/// RFC 9110 §13.2.2's order: `If-Match`, else `If-Unmodified-Since` (412 when false);
/// then `If-None-Match`, else `If-Modified-Since` (304 when false; GET and HEAD).
/// `modified`: the object's Last-Modified in Unix seconds (dates compare at second
/// precision, as HTTP dates have it).
pub fn conditions(etag: &str, modified: Option<i64>, headers: &HeaderMap) -> Condition {
    let get = |h: &HeaderName| headers.get(h).and_then(|v| v.to_str().ok());
    if let Some(im) = get(&header::IF_MATCH) {
        if !etag_list_matches(im, etag, false) {
            return Condition::PreconditionFailed;
        }
    } else if let (Some(ius), Some(m)) = (
        get(&header::IF_UNMODIFIED_SINCE).and_then(parse_http_date),
        modified,
    ) && m > ius
    {
        return Condition::PreconditionFailed;
    }
    if let Some(inm) = get(&header::IF_NONE_MATCH) {
        if etag_list_matches(inm, etag, true) {
            return Condition::NotModified;
        }
    } else if let (Some(ims), Some(m)) = (
        get(&header::IF_MODIFIED_SINCE).and_then(parse_http_date),
        modified,
    ) && m <= ims
    {
        return Condition::NotModified;
    }
    Condition::Proceed
}

/// Whether `etag` is in the comma-separated `list` (or the list is `*`). `weak`: the
/// weak comparison (`W/` prefixes ignored; If-None-Match), else the strong one.
pub fn etag_list_matches(list: &str, etag: &str, weak: bool) -> bool {
    let want = normalize_etag(etag);
    list.split(',').map(str::trim).any(|t| {
        if t == "*" {
            return true;
        }
        if t.starts_with("W/") && !weak {
            return false;
        }
        normalize_etag(t.strip_prefix("W/").unwrap_or(t)) == want
    })
}

/// Quoted as HTTP has it (some clients send S3 ETags without quotes).
fn normalize_etag(t: &str) -> String {
    format!("\"{}\"", t.trim().trim_matches('"'))
}

/// `If-Range`: a Range applies only while the object is the one the client had.
fn if_range_holds(etag: &str, modified: Option<i64>, headers: &HeaderMap) -> bool {
    let Some(v) = headers
        .get(header::IF_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
    else {
        return true;
    };
    if v.starts_with('"') {
        return !v.starts_with("W/") && normalize_etag(v) == normalize_etag(etag);
    }
    match (parse_http_date(v), modified) {
        (Some(d), Some(m)) => d == m,
        _ => false,
    }
}

fn validators(rec: &ObjectRecord) -> Vec<(HeaderName, HeaderValue)> {
    let mut out = vec![(header::ETAG, value(&normalize_etag(&rec.etag)))];
    if let Some(m) = parse_rfc3339_secs(&rec.last_modified) {
        out.push((header::LAST_MODIFIED, value(&http_date(m))));
    }
    out
}

fn cache_control(rec: &ObjectRecord, default: &str) -> HeaderValue {
    rec.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("cache-control"))
        .and_then(|(_, v)| HeaderValue::from_str(v).ok())
        .unwrap_or_else(|| value(default))
}

fn content_type(rec: &ObjectRecord) -> HeaderValue {
    HeaderValue::from_str(&rec.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"))
}

fn value(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Unix seconds of an RFC 3339 time.
pub fn parse_rfc3339_secs(s: &str) -> Option<i64> {
    OffsetDateTime::parse(s, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp())
}

const HTTP_DATE: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
    "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
);

/// An IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of Unix seconds.
pub fn http_date(secs: i64) -> String {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(HTTP_DATE).ok())
        .unwrap_or_default()
}

/// Unix seconds of an IMF-fixdate; `None` for anything else (such a header is ignored,
/// as RFC 9110 asks).
pub fn parse_http_date(s: &str) -> Option<i64> {
    time::PrimitiveDateTime::parse(s.trim(), HTTP_DATE)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec() -> ObjectRecord {
        ObjectRecord {
            etag: "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"".into(),
            size: 11,
            sha256: "x".into(),
            content_type: "text/plain".into(),
            last_modified: "2026-12-07T10:00:00.250Z".into(),
            user_metadata: Default::default(),
            upload_id: None,
            headers: Default::default(),
        }
    }

    fn req(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn header<'a>(p: &'a Plan, name: &str) -> Option<&'a str> {
        p.headers
            .iter()
            .find(|(k, _)| k.as_str() == name)
            .and_then(|(_, v)| v.to_str().ok())
    }

    const ETAG: &str = "\"5eb63bbbe01eeed093cb22bb8f5acdc3\"";
    const LAST_MODIFIED: &str = "Mon, 07 Dec 2026 10:00:00 GMT";

    #[test]
    fn dates_round_trip_at_second_precision() {
        let secs = parse_rfc3339_secs("2026-12-07T10:00:00.250Z").unwrap();
        assert_eq!(http_date(secs), LAST_MODIFIED);
        assert_eq!(parse_http_date(LAST_MODIFIED), Some(secs));
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Monday, 07-Dec-26 10:00:00 GMT"), None);
    }

    #[test]
    fn full_answer_has_every_header() {
        let p = plan(&rec(), &HeaderMap::new(), DEFAULT_PUBLIC_CACHE_CONTROL);
        assert_eq!(p.status, StatusCode::OK);
        assert_eq!(p.body, Some((0, 11)));
        assert_eq!(header(&p, "etag"), Some(ETAG));
        assert_eq!(header(&p, "last-modified"), Some(LAST_MODIFIED));
        assert_eq!(header(&p, "cache-control"), Some("public, max-age=300"));
        assert_eq!(header(&p, "content-type"), Some("text/plain"));
        assert_eq!(header(&p, "content-length"), Some("11"));
        assert_eq!(header(&p, "accept-ranges"), Some("bytes"));
        assert_eq!(header(&p, "content-range"), None);
    }

    #[test]
    fn the_objects_own_headers_win() {
        let mut r = rec();
        r.headers
            .insert("Cache-Control".into(), "max-age=60".into());
        r.headers
            .insert("Content-Disposition".into(), "attachment".into());
        r.headers.insert("X-Evil".into(), "1".into());
        let p = plan(&r, &HeaderMap::new(), DEFAULT_PUBLIC_CACHE_CONTROL);
        assert_eq!(header(&p, "cache-control"), Some("max-age=60"));
        assert_eq!(header(&p, "content-disposition"), Some("attachment"));
        assert_eq!(header(&p, "x-evil"), None);
        assert_eq!(
            p.headers
                .iter()
                .filter(|(k, _)| *k == header::CACHE_CONTROL)
                .count(),
            1
        );
    }

    #[test]
    fn ranges() {
        let p = plan(&rec(), &req(&[("range", "bytes=2-5")]), "x");
        assert_eq!(p.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(p.body, Some((2, 4)));
        assert_eq!(header(&p, "content-range"), Some("bytes 2-5/11"));
        assert_eq!(header(&p, "content-length"), Some("4"));
        let p = plan(&rec(), &req(&[("range", "bytes=-3")]), "x");
        assert_eq!(p.body, Some((8, 3)));
        assert_eq!(header(&p, "content-range"), Some("bytes 8-10/11"));
        let p = plan(&rec(), &req(&[("range", "bytes=5-100")]), "x");
        assert_eq!(header(&p, "content-range"), Some("bytes 5-10/11"));
        let p = plan(&rec(), &req(&[("range", "bytes=11-")]), "x");
        assert_eq!(p.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(p.body, None);
        assert_eq!(header(&p, "content-range"), Some("bytes */11"));
        // Several ranges or another unit: the whole object.
        let p = plan(&rec(), &req(&[("range", "bytes=0-1,3-4")]), "x");
        assert_eq!(p.status, StatusCode::OK);
        let p = plan(&rec(), &req(&[("range", "items=0-1")]), "x");
        assert_eq!(p.status, StatusCode::OK);
        // If-Range: the range only for the same object.
        let p = plan(
            &rec(),
            &req(&[("range", "bytes=0-1"), ("if-range", ETAG)]),
            "x",
        );
        assert_eq!(p.status, StatusCode::PARTIAL_CONTENT);
        let p = plan(
            &rec(),
            &req(&[("range", "bytes=0-1"), ("if-range", "\"other\"")]),
            "x",
        );
        assert_eq!(p.status, StatusCode::OK);
        let p = plan(
            &rec(),
            &req(&[("range", "bytes=0-1"), ("if-range", LAST_MODIFIED)]),
            "x",
        );
        assert_eq!(p.status, StatusCode::PARTIAL_CONTENT);
    }

    #[test]
    fn conditional_requests() {
        let c = |pairs: &[(&str, &str)]| plan(&rec(), &req(pairs), "x");
        assert_eq!(
            c(&[("if-none-match", ETAG)]).status,
            StatusCode::NOT_MODIFIED
        );
        let nm = c(&[("if-none-match", &format!("\"a\", W/{ETAG}"))]);
        assert_eq!(nm.status, StatusCode::NOT_MODIFIED);
        assert_eq!(nm.body, None);
        assert_eq!(header(&nm, "etag"), Some(ETAG));
        assert_eq!(header(&nm, "content-length"), None);
        assert_eq!(
            c(&[("if-none-match", "*")]).status,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(c(&[("if-none-match", "\"b\"")]).status, StatusCode::OK);
        // Unquoted, as some S3 clients send it.
        assert_eq!(
            c(&[("if-none-match", "5eb63bbbe01eeed093cb22bb8f5acdc3")]).status,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            c(&[("if-modified-since", LAST_MODIFIED)]).status,
            StatusCode::NOT_MODIFIED
        );
        assert_eq!(
            c(&[("if-modified-since", "Sun, 06 Dec 2026 10:00:00 GMT")]).status,
            StatusCode::OK
        );
        // If-None-Match decides alone when present.
        assert_eq!(
            c(&[
                ("if-none-match", "\"b\""),
                ("if-modified-since", LAST_MODIFIED)
            ])
            .status,
            StatusCode::OK
        );
        assert_eq!(
            c(&[("if-modified-since", "garbage")]).status,
            StatusCode::OK
        );
        assert_eq!(c(&[("if-match", ETAG)]).status, StatusCode::OK);
        assert_eq!(c(&[("if-match", "*")]).status, StatusCode::OK);
        let pf = c(&[("if-match", "\"other\"")]);
        assert_eq!(pf.status, StatusCode::PRECONDITION_FAILED);
        assert_eq!(pf.body, None);
        // If-Match is a strong comparison.
        assert_eq!(
            c(&[("if-match", &format!("W/{ETAG}"))]).status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            c(&[("if-unmodified-since", "Sun, 06 Dec 2026 10:00:00 GMT")]).status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            c(&[("if-unmodified-since", LAST_MODIFIED)]).status,
            StatusCode::OK
        );
        // 412 wins over 304 and over a range.
        assert_eq!(
            c(&[("if-match", "\"x\""), ("if-none-match", ETAG)]).status,
            StatusCode::PRECONDITION_FAILED
        );
        assert_eq!(
            c(&[("if-none-match", ETAG), ("range", "bytes=0-1")]).status,
            StatusCode::NOT_MODIFIED
        );
    }
}
