//! The file as written: a tree of TOML values that remembers where each value
//! and each key sits, so that every later message can name a line.
//!
//! toml's own document tree ([`DeTable`]) carries a span for every key and
//! value, including the tables a file only implies (the `workers` of
//! `[workers.x]`, the `a` of `a.b = 1`, which get their key's span); this
//! module copies it into owned [`Loc`]s, in file order.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// A table key and where it is written.
#[derive(Debug, Clone)]
pub(crate) struct Key {
    pub name: String,
    pub span: Option<Range<usize>>,
}

/// A value and, when the file spells it out, where it is written.
#[derive(Debug, Clone)]
pub(crate) struct Loc {
    pub span: Option<Range<usize>>,
    pub node: Node,
}

#[derive(Debug, Clone)]
pub(crate) enum Node {
    // No key takes a float; only its type is kept, for messages.
    Bool(bool),
    Int(i64),
    Float,
    Str(String),
    Datetime,
    Array(Vec<Loc>),
    /// Entries in file order.
    Table(Vec<(Key, Loc)>),
}

impl Node {
    /// The TOML type, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Node::Bool(_) => "a boolean",
            Node::Int(_) => "an integer",
            Node::Float => "a float",
            Node::Str(_) => "a string",
            Node::Datetime => "a datetime",
            Node::Array(_) => "a list",
            Node::Table(_) => "a table",
        }
    }
}

/// Text that is not TOML (syntax, duplicate keys, an integer past i64).
#[derive(Debug)]
pub(crate) struct ParseError {
    message: String,
    span: Option<Range<usize>>,
}

impl ParseError {
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn span(&self) -> Option<Range<usize>> {
        self.span.clone()
    }
}

/// Parses TOML text into a located tree.
pub(crate) fn parse(text: &str) -> Result<Loc, ParseError> {
    let root = DeTable::parse(text).map_err(|e| {
        let span = e.span();
        let mut message = e.message().to_owned();
        // toml points at the key but does not name it.
        if let Some(key) = span.clone().and_then(|s| text.get(s)) {
            if message == "duplicate key" && !key.is_empty() {
                message = format!("duplicate key `{}`", key.trim());
            }
        }
        ParseError { message, span }
    })?;
    Ok(Loc {
        span: None,
        node: table(root.get_ref())?,
    })
}

fn table(t: &DeTable) -> Result<Node, ParseError> {
    let mut entries = Vec::with_capacity(t.len());
    for (key, value) in t.iter() {
        let key = Key {
            name: key.get_ref().to_string(),
            span: Some(key.span()),
        };
        entries.push((key, loc(value)?));
    }
    Ok(Node::Table(entries))
}

fn loc(value: &Spanned<DeValue>) -> Result<Loc, ParseError> {
    let span = value.span();
    let node = match value.get_ref() {
        DeValue::String(s) => Node::Str(s.to_string()),
        DeValue::Integer(i) => match i64::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) => Node::Int(n),
            Err(_) => {
                return Err(ParseError {
                    message: "integer out of range".into(),
                    span: Some(span),
                })
            }
        },
        DeValue::Float(_) => Node::Float,
        DeValue::Boolean(b) => Node::Bool(*b),
        DeValue::Datetime(_) => Node::Datetime,
        DeValue::Array(items) => Node::Array(items.iter().map(loc).collect::<Result<_, _>>()?),
        DeValue::Table(t) => table(t)?,
    };
    Ok(Loc {
        span: Some(span),
        node,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(loc: &Loc) -> &[(Key, Loc)] {
        match &loc.node {
            Node::Table(entries) => entries,
            other => panic!("not a table: {other:?}"),
        }
    }

    fn get<'a>(loc: &'a Loc, name: &str) -> (&'a Key, &'a Loc) {
        table(loc)
            .iter()
            .find(|(k, _)| k.name == name)
            .map(|(k, v)| (k, v))
            .unwrap_or_else(|| panic!("no key {name}"))
    }

    fn text_at<'a>(text: &'a str, span: &Option<Range<usize>>) -> &'a str {
        &text[span.clone().expect("a span")]
    }

    #[test]
    fn keys_and_values_keep_their_spans_even_under_implied_tables() {
        let text = "top = 1\n[workers.a]\nmin = 2\nenv.X = \"y\"\nlist = [\n  \"p\",\n]\nwhen = 1979-05-27\n";
        let root = parse(text).unwrap();
        let (k, v) = get(&root, "top");
        assert_eq!(text_at(text, &k.span), "top");
        assert_eq!(text_at(text, &v.span), "1");

        // `workers` is implied by the header: it is where its key is.
        let (k, workers) = get(&root, "workers");
        assert_eq!(text_at(text, &k.span), "workers");
        assert_eq!(text_at(text, &workers.span), "workers");

        let (k, a) = get(workers, "a");
        assert_eq!(text_at(text, &k.span), "a");
        assert!(text_at(text, &a.span).starts_with("[workers.a]"));

        let (_, min) = get(a, "min");
        assert!(matches!(min.node, Node::Int(2)));
        assert_eq!(text_at(text, &min.span), "2");

        let (_, env) = get(a, "env");
        let (k, x) = get(env, "X");
        assert_eq!(text_at(text, &k.span), "X");
        assert!(matches!(&x.node, Node::Str(s) if s == "y"));

        let (_, list) = get(a, "list");
        let Node::Array(items) = &list.node else {
            panic!("not a list")
        };
        assert_eq!(text_at(text, &items[0].span), "\"p\"");

        let (_, when) = get(a, "when");
        assert!(matches!(when.node, Node::Datetime));
    }

    #[test]
    fn syntax_errors_come_back_with_a_span() {
        let err = parse("a = 1\nb = \n").unwrap_err();
        assert!(err.span().is_some());
        let err = parse("a = 1\na = 2\n").unwrap_err();
        assert!(err.message().contains("duplicate"), "{}", err.message());
        let err = parse("a = 1\nb = 9223372036854775808\n").unwrap_err();
        assert_eq!(err.message(), "integer out of range");
        assert_eq!(err.span(), Some(10..29));
    }

    #[test]
    fn integers_in_every_radix_and_negative_ones_are_read() {
        let root = parse("a = 0x1f\nb = -5\nc = 1_000\nd = 0o17\ne = 0b101\n").unwrap();
        let ints: Vec<i64> = table(&root)
            .iter()
            .map(|(_, v)| match v.node {
                Node::Int(n) => n,
                ref other => panic!("not an integer: {other:?}"),
            })
            .collect();
        assert_eq!(ints, [31, -5, 1000, 15, 5]);
    }
}
