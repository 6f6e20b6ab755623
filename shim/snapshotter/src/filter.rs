//! containerd's filter syntax for List (Walk), over snapshot fields.
//!
//! ```text
//! filters   = filter*                     (several filters: any may match)
//! filter    = selector ("," selector)*    (all must match)
//! selector  = fieldpath [("==" | "!=") value]   (no operator: the field is present)
//! fieldpath = field ("." field)*          field = [A-Za-z0-9_]+ | quoted
//! value     = quoted | run of characters other than ',' and whitespace
//! quoted    = "..." or /.../ or |...| with backslash escapes
//! ```
//!
//! Fields: `name`, `parent`, `kind` (`active`, `view`, `committed`), `labels.KEY`.
//! Regular-expression matches (`~=`) are refused with InvalidArgument.

use crate::error::{Error, Result};
use crate::store::Record;

/// A parsed set of filters.
#[derive(Debug, Default)]
pub struct Filters(Vec<Vec<Selector>>);

#[derive(Debug, PartialEq)]
struct Selector {
    path: Vec<String>,
    op: Op,
}

#[derive(Debug, PartialEq)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
}

impl Filters {
    /// Parses the filters of a List request. Empty strings are ignored; no filters match
    /// everything.
    pub fn parse(filters: &[String]) -> Result<Self> {
        let mut all = Vec::new();
        for f in filters {
            if f.trim().is_empty() {
                continue;
            }
            all.push(Parser::new(f).filter().map_err(|reason| Error::Filter {
                filter: f.clone(),
                reason,
            })?);
        }
        Ok(Filters(all))
    }

    /// Whether the snapshot `name` passes.
    pub fn matches(&self, name: &str, record: &Record) -> bool {
        self.0.is_empty()
            || self
                .0
                .iter()
                .any(|sels| sels.iter().all(|s| s.matches(name, record)))
    }
}

impl Selector {
    fn matches(&self, name: &str, record: &Record) -> bool {
        let value = field(&self.path, name, record);
        match &self.op {
            Op::Present => value.is_some(),
            Op::Equal(v) => value == Some(v.as_str()),
            Op::NotEqual(v) => value != Some(v.as_str()),
        }
    }
}

fn field<'a>(path: &[String], name: &'a str, record: &'a Record) -> Option<&'a str> {
    match path {
        [f] if f == "name" => Some(name),
        [f] if f == "parent" => Some(&record.parent),
        [f] if f == "kind" => Some(record.kind.as_str()),
        [f, rest @ ..] if f == "labels" && !rest.is_empty() => {
            record.labels.get(&rest.join(".")).map(String::as_str)
        }
        _ => None,
    }
}

struct Parser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Parser { s, pos: 0 }
    }

    fn rest(&self) -> &'a str {
        &self.s[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn skip_ws(&mut self) {
        while let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
            self.pos += c.len_utf8();
        }
    }

    fn filter(&mut self) -> Result<Vec<Selector>, String> {
        let mut sels = vec![self.selector()?];
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Ok(sels),
                Some(',') => {
                    self.pos += 1;
                    sels.push(self.selector()?);
                }
                Some(c) => return Err(format!("unexpected {c:?} at offset {}", self.pos)),
            }
        }
    }

    fn selector(&mut self) -> Result<Selector, String> {
        let mut path = vec![self.field()?];
        while self.peek() == Some('.') {
            self.pos += 1;
            path.push(self.field()?);
        }
        self.skip_ws();
        let rest = self.rest();
        let op = if rest.starts_with("==") || rest.starts_with("!=") {
            self.pos += 2;
            self.skip_ws();
            let v = self.value()?;
            if rest.starts_with("==") {
                Op::Equal(v)
            } else {
                Op::NotEqual(v)
            }
        } else if rest.starts_with("~=") {
            return Err("regular-expression matches (~=) are not supported".into());
        } else {
            Op::Present
        };
        Ok(Selector { path, op })
    }

    fn field(&mut self) -> Result<String, String> {
        self.skip_ws();
        if let Some(q @ ('"' | '/' | '|')) = self.peek() {
            return self.quoted(q);
        }
        let len = self
            .rest()
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(format!("expected a field name at offset {}", self.pos));
        }
        let f = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(f)
    }

    fn value(&mut self) -> Result<String, String> {
        if let Some(q @ ('"' | '/' | '|')) = self.peek() {
            return self.quoted(q);
        }
        let len = self
            .rest()
            .find(|c: char| c == ',' || c.is_whitespace())
            .unwrap_or(self.rest().len());
        if len == 0 {
            return Err(format!("expected a value at offset {}", self.pos));
        }
        let v = self.rest()[..len].to_owned();
        self.pos += len;
        Ok(v)
    }

    fn quoted(&mut self, quote: char) -> Result<String, String> {
        let start = self.pos;
        self.pos += quote.len_utf8();
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            if c == quote {
                self.pos += i + c.len_utf8();
                return Ok(out);
            }
            if c != '\\' {
                out.push(c);
                continue;
            }
            let Some((_, e)) = chars.next() else { break };
            let decoded = match e {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                'a' => '\x07',
                'b' => '\x08',
                'f' => '\x0c',
                'v' => '\x0b',
                '0' => '\0',
                'x' | 'u' | 'U' => {
                    let n = match e {
                        'x' => 2,
                        'u' => 4,
                        _ => 8,
                    };
                    let hex: String = chars.by_ref().take(n).map(|(_, c)| c).collect();
                    u32::from_str_radix(&hex, 16)
                        .ok()
                        .filter(|_| hex.len() == n)
                        .and_then(char::from_u32)
                        .ok_or_else(|| format!("bad \\{e} escape {hex:?}"))?
                }
                other => other,
            };
            out.push(decoded);
        }
        Err(format!(
            "unterminated {quote}-quoted string at offset {start}"
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::store::Kind;
    use std::time::SystemTime;

    fn rec(kind: Kind, parent: &str, labels: &[(&str, &str)]) -> Record {
        Record {
            kind,
            parent: parent.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_at: SystemTime::UNIX_EPOCH,
            updated_at: SystemTime::UNIX_EPOCH,
            image_ref: None,
        }
    }

    fn m(filters: &[&str], name: &str, r: &Record) -> bool {
        let f: Vec<String> = filters.iter().map(|s| s.to_string()).collect();
        Filters::parse(&f).unwrap().matches(name, r)
    }

    #[test]
    fn containerd_target_walk_filter() {
        // The filter containerd's metadata store sends after a layer Prepare.
        let r = rec(
            Kind::Committed,
            "sha256:p",
            &[("containerd.io/snapshot.ref", "sha256:t")],
        );
        let f = r#"labels."containerd.io/snapshot.ref"==sha256:t,parent=="sha256:p""#;
        assert!(m(&[f], "sha256:t", &r));
        let other = rec(
            Kind::Committed,
            "sha256:x",
            &[("containerd.io/snapshot.ref", "sha256:t")],
        );
        assert!(!m(&[f], "sha256:t", &other));
        // Empty parent, quoted empty value.
        let root = rec(
            Kind::Committed,
            "",
            &[("containerd.io/snapshot.ref", "sha256:t")],
        );
        let f = r#"labels."containerd.io/snapshot.ref"==sha256:t,parent=="""#;
        assert!(m(&[f], "sha256:t", &root));
    }

    #[test]
    fn operators_presence_and_or() {
        let r = rec(Kind::Active, "p", &[("a", "1")]);
        assert!(m(&["kind==active"], "k", &r));
        assert!(!m(&["kind!=active"], "k", &r));
        assert!(m(&["labels.a"], "k", &r));
        assert!(!m(&["labels.b"], "k", &r));
        assert!(m(&["name==nope", "name==k"], "k", &r));
        assert!(!m(&["name==k,kind==view"], "k", &r));
        assert!(m(&["name == k , parent==p"], "k", &r));
        assert!(m(&[], "k", &r));
        assert!(m(&["labels.a==\"\\x31\""], "k", &r));
    }

    #[test]
    fn bad_filters_are_errors_not_panics() {
        for bad in [
            "name~=x",
            "==x",
            "name==",
            "labels.\"unterminated",
            "name==a b",
            "\"\\x4\"",
            "a.",
            "ä==\u{0}",
        ] {
            let _ = Filters::parse(&[bad.to_string()]);
        }
        assert!(Filters::parse(&["name~=x".into()]).is_err());
        assert!(Filters::parse(&["name==".into()]).is_err());
        assert!(Filters::parse(&["name==a b".into()]).is_err());
        assert!(Filters::parse(&[r#""\x4""#.into()]).is_err());
    }
}
