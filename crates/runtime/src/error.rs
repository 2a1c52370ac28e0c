//! The runtime's one error type. Messages name what failed so a caller can return them
//! to the user as they are.

use std::time::Duration;

/// Everything an invocation or a deployment can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No function of that name is deployed (or it was removed meanwhile).
    #[error("function {name:?} is not deployed")]
    NotFound { name: String },
    /// Every worker is busy and the function's queue is full.
    #[error("function {name:?} is at capacity (queue full); retry after {retry_after:?}")]
    QueueFull { name: String, retry_after: Duration },
    /// The invocation ran past the function's timeout; its worker was killed.
    #[error("function timed out after {after:?}")]
    Timeout { after: Duration, logs: String },
    /// The handler raised (or a builtin returned an error).
    #[error("{error_type}: {message}")]
    Handler {
        error_type: String,
        message: String,
        traceback: String,
        logs: String,
    },
    /// The worker process died during the invocation (signal, exit, memory, protocol).
    #[error("worker crashed: {message}")]
    WorkerCrashed { message: String, logs: String },
    /// The function could not be loaded: the interpreter's own message.
    #[error("function failed to load: {message}")]
    Load { message: String },
    /// The input does not fit the function (bad JSON, too large).
    #[error("bad input: {message}")]
    BadInput { message: String },
    /// The interpreter the function needs is not installed.
    #[error("{message}")]
    Unavailable { message: String },
    /// The function definition itself is invalid (empty name, bad handler, zero limits).
    #[error("invalid function definition: {message}")]
    Invalid { message: String },
    /// A file or socket operation of the runtime failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The machine-readable reason an API answers with (`HandlerError`, `Timeout`, ...).
    pub fn reason(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "NotFound",
            Error::QueueFull { .. } => "TooManyRequests",
            Error::Timeout { .. } => "Timeout",
            Error::Handler { .. } => "HandlerError",
            Error::WorkerCrashed { .. } => "WorkerCrashed",
            Error::BadInput { .. } => "BadRequest",
            Error::Load { .. } | Error::Unavailable { .. } => "Unavailable",
            Error::Invalid { .. } | Error::Io { .. } => "InternalError",
        }
    }

    /// The HTTP status of a failed invocation: 404 not deployed, 400 bad input, 429
    /// queue full, 500 the handler raised, 502 the worker crashed, 503 the code does not
    /// load, 504 timeout.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::NotFound { .. } => 404,
            Error::BadInput { .. } => 400,
            Error::QueueFull { .. } => 429,
            Error::Handler { .. } | Error::Invalid { .. } | Error::Io { .. } => 500,
            Error::WorkerCrashed { .. } => 502,
            Error::Load { .. } | Error::Unavailable { .. } => 503,
            Error::Timeout { .. } => 504,
        }
    }

    /// The body of a failed invocation's answer: `{reason, message, logs, error?}`,
    /// `error` being `{type, message, traceback}` when the handler raised.
    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "reason": self.reason(),
            "message": self.to_string(),
            "logs": self.logs(),
        });
        if let Error::Handler {
            error_type,
            message,
            traceback,
            ..
        } = self
        {
            body["error"] = serde_json::json!({
                "type": error_type, "message": message, "traceback": traceback,
            });
        }
        body
    }

    /// `Retry-After` seconds for a full queue.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::QueueFull { retry_after, .. } => Some(retry_after.as_secs().max(1)),
            _ => None,
        }
    }

    /// What a task's `error` says: the message, with the traceback of a handler error,
    /// at most `max` bytes (cut at a character boundary, marked).
    pub fn describe(&self, max: usize) -> String {
        let mut s = match self {
            Error::Handler {
                error_type,
                message,
                traceback,
                ..
            } if !traceback.is_empty() => format!("{error_type}: {message}\n{traceback}"),
            Error::Timeout { after, .. } => format!(
                "Timeout: no result within {:.1} s; the worker was replaced",
                after.as_secs_f64()
            ),
            other => other.to_string(),
        };
        if s.len() > max {
            let mut cut = max.saturating_sub(16);
            while !s.is_char_boundary(cut) {
                cut -= 1;
            }
            s.truncate(cut);
            s.push_str(" [... truncated]");
        }
        s
    }

    /// The captured output that came with the failure, if any.
    pub fn logs(&self) -> &str {
        match self {
            Error::Timeout { logs, .. }
            | Error::Handler { logs, .. }
            | Error::WorkerCrashed { logs, .. } => logs,
            _ => "",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_includes_the_traceback_and_stays_within_bounds() {
        let e = Error::Handler {
            error_type: "ValueError".into(),
            message: "bad".into(),
            traceback: "File \"handler.py\", line 5\n".into(),
            logs: String::new(),
        };
        assert_eq!(
            e.describe(4096),
            "ValueError: bad\nFile \"handler.py\", line 5\n"
        );
        let long = Error::Load {
            message: "é".repeat(5000),
        };
        let d = long.describe(4096);
        assert!(d.len() <= 4096, "{}", d.len());
        assert!(d.ends_with(" [... truncated]"));
        let t = Error::Timeout {
            after: Duration::from_millis(1500),
            logs: String::new(),
        };
        assert!(
            t.describe(100)
                .starts_with("Timeout: no result within 1.5 s")
        );
    }
}
