//! How a failed command is shown — the one place `verge` prints its errors: `error: `
//! and one line (the error and each of its causes once, joined by `: `), then, indented
//! below it, what does not fit on a line (a handler's traceback, a function's output)
//! when an error in the chain carries it ([`Detailed`], [`ApiFailure`]). Pure text
//! building plus one write to stderr; decides nothing about exit codes.

use crate::client::ApiFailure;

/// An error with more to show than one line: `message` is the line, `detail` (a
/// traceback, a compiler's output) is printed below it, as is.
#[derive(Debug)]
pub struct Detailed {
    pub message: String,
    pub detail: String,
}

impl std::fmt::Display for Detailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Detailed {}

impl Detailed {
    /// Splits `text` into its first line (the message, after `prefix`) and the rest.
    pub fn split(prefix: &str, text: &str) -> Self {
        let mut lines = text.trim_end().lines();
        let first = lines.next().unwrap_or("").trim();
        let message = match (prefix.is_empty(), first.is_empty()) {
            (true, _) => first.to_string(),
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}: {first}"),
        };
        Detailed {
            message,
            detail: lines.collect::<Vec<_>>().join("\n"),
        }
    }
}

/// The error and its causes on one line, skipping a cause the line already shows
/// (library messages often embed their source).
pub fn one_line(causes: impl IntoIterator<Item = String>) -> String {
    let mut out = String::new();
    for cause in causes {
        let cause = cause.split_whitespace().collect::<Vec<_>>().join(" ");
        if cause.is_empty() || out.contains(&cause) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&cause);
    }
    out
}

/// What is shown of a failed command: `error: LINE`, then the detail indented by two.
pub fn render(line: &str, detail: Option<&str>) -> String {
    let mut out = format!("error: {line}\n");
    if let Some(d) = detail.filter(|d| !d.trim().is_empty()) {
        for l in d.trim_end().lines() {
            out.push_str("  ");
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Prints a failed command's error to stderr.
pub fn print(e: &anyhow::Error) {
    let line = one_line(e.chain().map(|c| c.to_string()));
    let detail = e.chain().find_map(|c| {
        if let Some(d) = c.downcast_ref::<Detailed>() {
            return Some(d.detail.clone());
        }
        c.downcast_ref::<ApiFailure>()
            .and_then(|f| f.detail.clone())
    });
    eprint!("{}", render(&line, detail.as_deref()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_once_on_one_line() {
        let line = one_line([
            "creating task/x".to_string(),
            "404 NotFound: function \"f\" not found".to_string(),
            "function \"f\" not found".to_string(),
        ]);
        assert_eq!(
            line,
            "creating task/x: 404 NotFound: function \"f\" not found"
        );
        // Newlines inside a cause never break the line.
        assert_eq!(one_line(["a\nb  c".to_string()]), "a b c");
    }

    #[test]
    fn detail_goes_below_indented() {
        let tb = "Traceback (most recent call last):\n  File \"/code/handler.py\", line 2\nZeroDivisionError: division by zero\n";
        let out = render(
            "500 HandlerError: ZeroDivisionError: division by zero",
            Some(tb),
        );
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            "error: 500 HandlerError: ZeroDivisionError: division by zero"
        );
        assert_eq!(lines[1], "  Traceback (most recent call last):");
        assert_eq!(lines[2], "    File \"/code/handler.py\", line 2");
        assert_eq!(lines.len(), 4);
        assert_eq!(render("x", Some("  \n")), "error: x\n");
        assert_eq!(render("x", None), "error: x\n");
    }

    #[test]
    fn detailed_splits_the_first_line_off() {
        let d = Detailed::split(
            "function/f failed to load",
            "SyntaxError: invalid syntax\n  File \"handler.py\", line 1\n",
        );
        assert_eq!(
            d.message,
            "function/f failed to load: SyntaxError: invalid syntax"
        );
        assert_eq!(d.detail, "  File \"handler.py\", line 1");
        assert_eq!(Detailed::split("p", "").message, "p");
    }
}
