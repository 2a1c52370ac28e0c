//! Kubernetes-style label selectors: `a=b`, `a==b`, `a!=b`, `a in (x,y)`,
//! `a notin (x,y)`, `a` (exists), `!a` (does not exist), comma-separated (AND).
//!
//! This module owns parsing (with Kubernetes key/value syntax validation), matching
//! against a label map, and the canonical textual form ([`fmt::Display`]), which parses
//! back to the same selector.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, Result};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Requirement {
    /// The label key this requirement is about.
    pub fn key(&self) -> &str {
        match self {
            Requirement::Equals(k, _)
            | Requirement::NotEquals(k, _)
            | Requirement::In(k, _)
            | Requirement::NotIn(k, _)
            | Requirement::Exists(k)
            | Requirement::NotExists(k) => k,
        }
    }

    /// Whether `labels` satisfy this requirement. As in Kubernetes, `!=` and `notin`
    /// match when the key is absent.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::NotExists(k) => !labels.contains_key(k),
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Requirement::Equals(k, v) => write!(f, "{k}={v}"),
            Requirement::NotEquals(k, v) => write!(f, "{k}!={v}"),
            Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(",")),
            Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(",")),
            Requirement::Exists(k) => f.write_str(k),
            Requirement::NotExists(k) => write!(f, "!{k}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Empty string -> selector that matches everything.
    pub fn parse(s: &str) -> Result<Self> {
        let tokens = lex(s);
        Parser { tokens, pos: 0 }.parse().map_err(Error::Selector)
    }

    /// Builds an equality-only selector from a map (used by `placement.nodeSelector`).
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        Self {
            requirements: map
                .iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
                .collect(),
        }
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

/// Canonical form: requirements joined by `,` (e.g. `env=prod,tier in (a,b),!canary`).
/// Parses back to an equal selector when keys and values are valid label syntax.
impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{r}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        Self::parse(s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Ident(String),
    /// `=`
    Eq,
    /// `==`
    DoubleEq,
    /// `!=`
    NotEq,
    /// `!`
    Bang,
    Comma,
    LParen,
    RParen,
    /// `<` or `>` (set-based comparison operators we do not support).
    Compare(char),
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Token::Ident(s) => write!(f, "\"{s}\""),
            Token::Eq => f.write_str("'='"),
            Token::DoubleEq => f.write_str("'=='"),
            Token::NotEq => f.write_str("'!='"),
            Token::Bang => f.write_str("'!'"),
            Token::Comma => f.write_str("','"),
            Token::LParen => f.write_str("'('"),
            Token::RParen => f.write_str("')'"),
            Token::Compare(c) => write!(f, "'{c}'"),
        }
    }
}

fn is_special(c: char) -> bool {
    matches!(c, '!' | '=' | ',' | '(' | ')' | '<' | '>')
}

fn lex(s: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(start, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
            continue;
        }
        chars.next();
        let tok = match c {
            '=' => {
                if chars.next_if(|&(_, c)| c == '=').is_some() {
                    Token::DoubleEq
                } else {
                    Token::Eq
                }
            }
            '!' => {
                if chars.next_if(|&(_, c)| c == '=').is_some() {
                    Token::NotEq
                } else {
                    Token::Bang
                }
            }
            ',' => Token::Comma,
            '(' => Token::LParen,
            ')' => Token::RParen,
            '<' | '>' => Token::Compare(c),
            _ => {
                let mut end = start + c.len_utf8();
                while let Some((i, c)) =
                    chars.next_if(|&(_, c)| !c.is_whitespace() && !is_special(c))
                {
                    end = i + c.len_utf8();
                }
                Token::Ident(s[start..end].to_owned())
            }
        };
        tokens.push(tok);
    }
    tokens
}

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
}

type PResult<T> = std::result::Result<T, String>;

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.pos).cloned();
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn parse(mut self) -> PResult<LabelSelector> {
        let mut requirements = Vec::new();
        if self.peek().is_none() {
            return Ok(LabelSelector { requirements });
        }
        loop {
            let req = self.requirement()?;
            match self.next() {
                None => {
                    requirements.push(req);
                    break;
                }
                Some(Token::Comma) => {
                    requirements.push(req);
                    if self.peek().is_none() {
                        return Err("expected a requirement after ','".to_owned());
                    }
                }
                Some(t) => {
                    return Err(format!(
                        "expected ',' or end of selector after requirement on \"{}\", found {t}",
                        req.key()
                    ));
                }
            }
        }
        Ok(LabelSelector { requirements })
    }

    fn key(&mut self, what: &str) -> PResult<String> {
        match self.next() {
            Some(Token::Ident(k)) => {
                validate_key(&k).map_err(|e| format!("invalid key \"{k}\": {e}"))?;
                Ok(k)
            }
            Some(t) => Err(format!("expected {what}, found {t}")),
            None => Err(format!("expected {what}, found end of selector")),
        }
    }

    fn requirement(&mut self) -> PResult<Requirement> {
        if self.peek() == Some(&Token::Bang) {
            self.next();
            let key = self.key("a key after '!'")?;
            return Ok(Requirement::NotExists(key));
        }
        let key = self.key("a key")?;
        match self.peek().cloned() {
            None | Some(Token::Comma) => Ok(Requirement::Exists(key)),
            Some(Token::Eq | Token::DoubleEq) => {
                self.next();
                let value = self.exact_value(&key)?;
                Ok(Requirement::Equals(key, value))
            }
            Some(Token::NotEq) => {
                self.next();
                let value = self.exact_value(&key)?;
                Ok(Requirement::NotEquals(key, value))
            }
            Some(Token::Ident(op)) if op == "in" || op == "notin" => {
                self.next();
                let values = self.values(&key, &op)?;
                Ok(if op == "in" {
                    Requirement::In(key, values)
                } else {
                    Requirement::NotIn(key, values)
                })
            }
            Some(Token::Compare(c)) => Err(format!("unsupported operator '{c}' after \"{key}\"")),
            Some(t) => Err(format!(
                "expected an operator ('=', '==', '!=', 'in', 'notin'), ',' or end of selector \
                 after key \"{key}\", found {t}"
            )),
        }
    }

    /// The value after `=`, `==` or `!=`; may be empty (`a=`).
    fn exact_value(&mut self, key: &str) -> PResult<String> {
        match self.peek().cloned() {
            None | Some(Token::Comma) => Ok(String::new()),
            Some(Token::Ident(v)) => {
                self.next();
                validate_value(&v)
                    .map_err(|e| format!("invalid value \"{v}\" for \"{key}\": {e}"))?;
                Ok(v)
            }
            Some(t) => Err(format!("expected a value for \"{key}\", found {t}")),
        }
    }

    /// `( v1, v2, ... )`; empty entries are empty values, as in Kubernetes (`()` is `("")`).
    fn values(&mut self, key: &str, op: &str) -> PResult<Vec<String>> {
        match self.next() {
            Some(Token::LParen) => {}
            Some(t) => {
                return Err(format!(
                    "expected '(' after '{op}' for \"{key}\", found {t}"
                ));
            }
            None => {
                return Err(format!(
                    "expected '(' after '{op}' for \"{key}\", found end of selector"
                ));
            }
        }
        let mut values = Vec::new();
        loop {
            let value = match self.peek().cloned() {
                Some(Token::Ident(v)) => {
                    self.next();
                    validate_value(&v)
                        .map_err(|e| format!("invalid value \"{v}\" for \"{key}\": {e}"))?;
                    v
                }
                _ => String::new(),
            };
            values.push(value);
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::RParen) => break,
                None => return Err(format!("expected ')' after values of \"{key}\"")),
                Some(t) => {
                    return Err(format!(
                        "expected ',' or ')' in values of \"{key}\", found {t}"
                    ));
                }
            }
        }
        Ok(values)
    }
}

const NAME_RULE: &str = "must be at most 63 characters of alphanumerics, '-', '_' or '.', \
                         starting and ending with an alphanumeric";

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// RFC 1123 subdomain: dot-separated lowercase labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
                && (b[b.len() - 1].is_ascii_lowercase() || b[b.len() - 1].is_ascii_digit())
                && b.iter()
                    .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        })
}

/// Kubernetes label key: `[prefix/]name`.
fn validate_key(key: &str) -> PResult<()> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            if !is_dns_subdomain(prefix) {
                return Err(
                    "prefix must be a lowercase dns subdomain of at most 253 characters".to_owned(),
                );
            }
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("name must not be empty".to_owned());
    }
    if !is_label_name(name) {
        return Err(format!("name {NAME_RULE}"));
    }
    Ok(())
}

/// Kubernetes label value: empty, or a label name.
fn validate_value(value: &str) -> PResult<()> {
    if value.is_empty() || is_label_name(value) {
        Ok(())
    } else {
        Err(format!("value {NAME_RULE}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn s(x: &str) -> String {
        x.to_owned()
    }

    fn err(input: &str) -> String {
        match LabelSelector::parse(input) {
            Err(Error::Selector(m)) => m,
            other => panic!("expected selector error for {input:?}, got {other:?}"),
        }
    }

    #[test]
    fn parses_all_operators() {
        let sel = LabelSelector::parse(
            "a=b, c==d ,e!=f,g in (x, y),h notin(x,y) , i, !j, example.com/k=v",
        )
        .unwrap();
        assert_eq!(
            sel.requirements,
            vec![
                Requirement::Equals(s("a"), s("b")),
                Requirement::Equals(s("c"), s("d")),
                Requirement::NotEquals(s("e"), s("f")),
                Requirement::In(s("g"), vec![s("x"), s("y")]),
                Requirement::NotIn(s("h"), vec![s("x"), s("y")]),
                Requirement::Exists(s("i")),
                Requirement::NotExists(s("j")),
                Requirement::Equals(s("example.com/k"), s("v")),
            ]
        );
    }

    #[test]
    fn empty_and_whitespace_match_all() {
        for input in ["", "   ", "\t\n"] {
            let sel = LabelSelector::parse(input).unwrap();
            assert!(sel.is_empty());
            assert!(sel.matches(&labels(&[])));
            assert!(sel.matches(&labels(&[("a", "b")])));
        }
    }

    #[test]
    fn empty_values() {
        let sel = LabelSelector::parse("a=,b!=,c in (),d in (,x)").unwrap();
        assert_eq!(
            sel.requirements,
            vec![
                Requirement::Equals(s("a"), s("")),
                Requirement::NotEquals(s("b"), s("")),
                Requirement::In(s("c"), vec![s("")]),
                Requirement::In(s("d"), vec![s(""), s("x")]),
            ]
        );
    }

    #[test]
    fn keys_named_like_operators() {
        let sel = LabelSelector::parse("in=notin,notin in (in)").unwrap();
        assert_eq!(
            sel.requirements,
            vec![
                Requirement::Equals(s("in"), s("notin")),
                Requirement::In(s("notin"), vec![s("in")]),
            ]
        );
    }

    #[test]
    fn error_messages() {
        assert_eq!(err("env in (a,b"), "expected ')' after values of \"env\"");
        assert_eq!(
            err("env in a"),
            "expected '(' after 'in' for \"env\", found \"a\""
        );
        assert_eq!(
            err("env notin"),
            "expected '(' after 'notin' for \"env\", found end of selector"
        );
        assert_eq!(
            err("env in (a b)"),
            "expected ',' or ')' in values of \"env\", found \"b\""
        );
        assert_eq!(err("a=b,"), "expected a requirement after ','");
        assert_eq!(err(",a"), "expected a key, found ','");
        assert_eq!(err("a=b,,c"), "expected a key, found ','");
        assert_eq!(err("!"), "expected a key after '!', found end of selector");
        assert_eq!(err("!=a"), "expected a key, found '!='");
        assert_eq!(err("a>1"), "unsupported operator '>' after \"a\"");
        assert_eq!(
            err("a=b c"),
            "expected ',' or end of selector after requirement on \"a\", found \"c\""
        );
        assert_eq!(
            err("a b"),
            "expected an operator ('=', '==', '!=', 'in', 'notin'), ',' or end of selector \
             after key \"a\", found \"b\""
        );
        assert_eq!(err("a=("), "expected a value for \"a\", found '('");
        assert!(err("a=-x").starts_with("invalid value \"-x\" for \"a\": value must be"));
        assert!(err("a in (x,_y)").starts_with("invalid value \"_y\" for \"a\""));
        assert!(err("Bad.Com/x").starts_with("invalid key \"Bad.Com/x\": prefix must be"));
        assert_eq!(
            err("x.io/"),
            "invalid key \"x.io/\": name must not be empty"
        );
        assert!(err("a/b/c").starts_with("invalid key \"a/b/c\": name must be"));
        assert!(err(&"k".repeat(64)).starts_with("invalid key"));
        assert!(err(&format!("a={}", "v".repeat(64))).starts_with("invalid value"));
        // Messages are lowercase-initial and wrapped by the error's Display.
        let e = LabelSelector::parse("a in (").unwrap_err();
        assert_eq!(
            e.to_string(),
            "invalid label selector: expected ')' after values of \"a\""
        );
    }

    #[test]
    fn key_syntax() {
        assert!(validate_key("a").is_ok());
        assert!(validate_key("A_b.c-D9").is_ok());
        assert!(validate_key("verge.dev/node-role").is_ok());
        assert!(validate_key(&format!("{}/n", "a".repeat(253))).is_err()); // label > 63
        let long_prefix = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long_prefix.len(), 255);
        assert!(validate_key(&format!("{long_prefix}/n")).is_err());
        assert!(validate_key(&format!("{}/n", &long_prefix[..253])).is_ok());
        assert!(validate_key("-a").is_err());
        assert!(validate_key("a-").is_err());
        assert!(validate_key("").is_err());
        assert!(validate_key("/a").is_err());
        assert!(validate_key("a..b/c").is_err());
        assert!(validate_key(&"k".repeat(63)).is_ok());
        assert!(validate_value("").is_ok());
        assert!(validate_value("v1.2_3-x").is_ok());
        assert!(validate_value("é").is_err());
    }

    #[test]
    fn matching_semantics() {
        let l = labels(&[("env", "prod"), ("tier", "web")]);
        let m = |q: &str| LabelSelector::parse(q).unwrap().matches(&l);
        assert!(m("env=prod"));
        assert!(!m("env=dev"));
        assert!(m("env!=dev"));
        assert!(!m("env!=prod"));
        assert!(m("missing!=x"), "!= matches when the key is absent");
        assert!(m("env in (dev,prod)"));
        assert!(!m("env in (dev)"));
        assert!(!m("missing in (x)"));
        assert!(m("env notin (dev)"));
        assert!(!m("env notin (prod)"));
        assert!(
            m("missing notin (x)"),
            "notin matches when the key is absent"
        );
        assert!(m("env"));
        assert!(!m("missing"));
        assert!(m("!missing"));
        assert!(!m("!env"));
        assert!(m("env=prod,tier=web"));
        assert!(!m("env=prod,tier=db"));
        assert!(
            LabelSelector::parse("a=")
                .unwrap()
                .matches(&labels(&[("a", "")]))
        );
        assert!(!LabelSelector::parse("a=").unwrap().matches(&labels(&[])));
    }

    #[test]
    fn from_map_is_equality() {
        let map = labels(&[("b", "2"), ("a", "1")]);
        let sel = LabelSelector::from_map(&map);
        assert_eq!(
            sel.requirements,
            vec![
                Requirement::Equals(s("a"), s("1")),
                Requirement::Equals(s("b"), s("2")),
            ]
        );
        assert!(sel.matches(&map));
        assert!(!sel.matches(&labels(&[("a", "1")])));
        assert!(LabelSelector::from_map(&BTreeMap::new()).is_empty());
        assert_eq!(sel.to_string(), "a=1,b=2");
    }

    #[test]
    fn display_canonical() {
        let sel = LabelSelector::parse(" a == b , c notin ( x , y ) ,! d,e,f in ()").unwrap();
        assert_eq!(sel.to_string(), "a=b,c notin (x,y),!d,e,f in ()");
        assert_eq!(LabelSelector::parse(&sel.to_string()).unwrap(), sel);
        assert_eq!(LabelSelector::default().to_string(), "");
    }

    fn name() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z]{1,3}",
            "[A-Za-z0-9]([-A-Za-z0-9_.]{0,10}[A-Za-z0-9])?",
            Just(s("in")),
            Just(s("notin")),
        ]
    }

    fn key() -> impl Strategy<Value = String> {
        (
            proptest::option::of("[a-z0-9]([-a-z0-9]{0,5}[a-z0-9])?(\\.[a-z0-9]{1,4}){0,2}"),
            name(),
        )
            .prop_map(|(p, n)| match p {
                Some(p) => format!("{p}/{n}"),
                None => n,
            })
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![Just(String::new()), name()]
    }

    fn requirement() -> impl Strategy<Value = Requirement> {
        let values = || proptest::collection::vec(value(), 1..4);
        prop_oneof![
            (key(), value()).prop_map(|(k, v)| Requirement::Equals(k, v)),
            (key(), value()).prop_map(|(k, v)| Requirement::NotEquals(k, v)),
            (key(), values()).prop_map(|(k, v)| Requirement::In(k, v)),
            (key(), values()).prop_map(|(k, v)| Requirement::NotIn(k, v)),
            key().prop_map(Requirement::Exists),
            key().prop_map(Requirement::NotExists),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn display_round_trips(reqs in proptest::collection::vec(requirement(), 0..5)) {
            let sel = LabelSelector { requirements: reqs };
            let text = sel.to_string();
            let parsed = LabelSelector::parse(&text);
            prop_assert!(parsed.is_ok(), "{text:?}: {parsed:?}");
            prop_assert_eq!(parsed.unwrap(), sel);
        }

        #[test]
        fn parse_never_panics(input in "[a-z=!,() <>/._-]{0,24}") {
            if let Ok(sel) = LabelSelector::parse(&input) {
                prop_assert_eq!(LabelSelector::parse(&sel.to_string()).unwrap(), sel);
            }
        }
    }
}
