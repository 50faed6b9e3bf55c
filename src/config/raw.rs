//! The file as written: a tree of TOML values that remembers where each value
//! and each key sits, so that every later message can name a line.
//!
//! `toml::Spanned<T>` alone cannot do this: a table the file only implies (the
//! `workers` of `[workers.x]`, the `a` of `a.b = 1`) has no span, and
//! `Spanned` then refuses it. [`Loc`] asks the deserializer for a span the way
//! `Spanned` does (the same struct name and field names, which toml checks
//! for) and takes the plain value when none comes. The unit tests below fail
//! loudly if a toml upgrade changes that handshake.

use std::fmt;
use std::ops::Range;

use serde::de::{Deserialize, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};

// The names serde_spanned 0.6 (toml 0.8) uses to ask for a span.
const SPANNED_NAME: &str = "$__serde_spanned_private_Spanned";
const SPANNED_START: &str = "$__serde_spanned_private_start";
const SPANNED_END: &str = "$__serde_spanned_private_end";
const SPANNED_VALUE: &str = "$__serde_spanned_private_value";
const SPANNED_FIELDS: &[&str] = &[SPANNED_START, SPANNED_END, SPANNED_VALUE];
// toml hands a datetime over as a one-entry map under this key.
const DATETIME_KEY: &str = "$__toml_private_datetime";

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

/// Parses TOML text into a located tree; the error is toml's (syntax,
/// duplicate keys), with its span.
pub(crate) fn parse(text: &str) -> Result<Loc, toml::de::Error> {
    toml::from_str(text)
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table key")
            }
            // A key without a span, or one of the span handshake's own field
            // names (the caller tells them apart).
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key {
                    name: v.to_owned(),
                    span: None,
                })
            }
            // A key with its span: {start, end, value}.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Key, A::Error> {
                let (mut start, mut end, mut name) = (None, None, None);
                while let Some(field) = map.next_key::<String>()? {
                    match field.as_str() {
                        SPANNED_START => start = Some(map.next_value::<usize>()?),
                        SPANNED_END => end = Some(map.next_value::<usize>()?),
                        SPANNED_VALUE => name = Some(map.next_value::<String>()?),
                        other => {
                            return Err(A::Error::custom(format!(
                                "unexpected field {other} in a spanned key"
                            )))
                        }
                    }
                }
                match (start, end, name) {
                    (Some(start), Some(end), Some(name)) => Ok(Key {
                        name,
                        span: Some(start..end),
                    }),
                    _ => Err(A::Error::custom("incomplete spanned key")),
                }
            }
        }
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, KeyVisitor)
    }
}

/// Builds a [`Node`]; its children are [`Loc`]s.
struct NodeVisitor;

impl NodeVisitor {
    fn table<'de, A: MapAccess<'de>>(mut map: A, first: Option<Key>) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        let mut next = first;
        loop {
            let key = match next.take() {
                Some(key) => key,
                None => match map.next_key::<Key>()? {
                    Some(key) => key,
                    None => break,
                },
            };
            if key.span.is_none() && key.name == DATETIME_KEY && entries.is_empty() {
                // Consume the datetime's text; slotman has no datetime keys.
                let _: String = map.next_value()?;
                return Ok(Node::Datetime);
            }
            let value = map.next_value::<Loc>()?;
            entries.push((key, value));
        }
        Ok(Node::Table(entries))
    }
}

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a TOML value")
    }
    fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Node, E> {
        // TOML integers are i64; this only guards against a deserializer
        // that reports small ones as unsigned.
        i64::try_from(v)
            .map(Node::Int)
            .map_err(|_| E::custom("integer out of range"))
    }
    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Float)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::Str(v.to_owned()))
    }
    fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Loc>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Node, A::Error> {
        NodeVisitor::table(map, None)
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

impl<'de> Deserialize<'de> for Loc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LocVisitor;
        impl LocVisitor {
            fn bare<E>(node: Result<Node, E>) -> Result<Loc, E> {
                node.map(|node| Loc { span: None, node })
            }
        }
        impl<'de> Visitor<'de> for LocVisitor {
            type Value = Loc;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a TOML value")
            }
            // Without a span the deserializer falls back to the plain value.
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<Loc, E> {
                Self::bare(NodeVisitor.visit_bool(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Loc, E> {
                Self::bare(NodeVisitor.visit_i64(v))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Loc, E> {
                Self::bare(NodeVisitor.visit_u64(v))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Loc, E> {
                Self::bare(NodeVisitor.visit_f64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Loc, E> {
                Self::bare(NodeVisitor.visit_str(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Loc, E> {
                Self::bare(NodeVisitor.visit_string(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Loc, A::Error> {
                Self::bare(NodeVisitor.visit_seq(seq))
            }
            // Either the span handshake ({start, end, value}, keys without
            // spans) or a table that has no span of its own.
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loc, A::Error> {
                let first = match map.next_key::<Key>()? {
                    None => return Self::bare(Ok(Node::Table(Vec::new()))),
                    Some(key) => key,
                };
                if first.span.is_some() || first.name != SPANNED_START {
                    return Self::bare(NodeVisitor::table(map, Some(first)));
                }
                let start: usize = map.next_value()?;
                let (mut end, mut node) = (None, None);
                while let Some(field) = map.next_key::<Key>()? {
                    match field.name.as_str() {
                        SPANNED_END => end = Some(map.next_value::<usize>()?),
                        SPANNED_VALUE => node = Some(map.next_value::<Node>()?),
                        other => {
                            return Err(A::Error::custom(format!(
                                "unexpected field {other} in a spanned value"
                            )))
                        }
                    }
                }
                match (end, node) {
                    (Some(end), Some(node)) => Ok(Loc {
                        span: Some(start..end),
                        node,
                    }),
                    _ => Err(A::Error::custom("incomplete spanned value")),
                }
            }
        }
        d.deserialize_struct(SPANNED_NAME, SPANNED_FIELDS, LocVisitor)
    }
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

        // `workers` is implied by the header: no span of its own, but its key has one.
        let (k, workers) = get(&root, "workers");
        assert_eq!(text_at(text, &k.span), "workers");
        assert!(workers.span.is_none());

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
    }
}
