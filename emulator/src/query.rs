//! The OData query options the emulator serves on a collection: `$top`,
//! `$skiptoken` (from its own `@odata.nextLink`), `$filter` (equality on the
//! `runState`-typed property) and `$select`. Anything else starting with `$` is
//! a Graph-shaped 400.

use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::{
    model::{Entity, EntityJson, GraphFailure, Kind, RUN_STATE, Store, Type, Value},
    paths,
};

/// Page size without `$top`.
pub const DEFAULT_PAGE: usize = 100;
/// The largest `$top`.
pub const MAX_PAGE: usize = 999;

#[derive(Debug, Default, PartialEq)]
pub struct Query {
    pub top: Option<usize>,
    /// The key after which the page starts.
    pub after: Option<String>,
    /// A property and the enum member it must equal.
    pub filter: Option<(&'static str, &'static str)>,
    pub select: Option<Vec<String>>,
}

fn bad(message: impl Into<String>) -> GraphFailure {
    GraphFailure::bad_request(message)
}

/// Decodes a query component (`+` is a space, as form encoding writes it).
fn decode(raw: &str) -> Result<String, GraphFailure> {
    percent_decode_str(&raw.replace('+', " "))
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| bad("The query string is not valid UTF-8."))
}

impl Query {
    /// Parses a raw query string for a collection (or entity) of `kind`.
    pub fn parse(raw: &str, kind: Kind) -> Result<Query, GraphFailure> {
        let ty = kind.entity_type();
        let mut q = Query::default();
        let mut seen: Vec<String> = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(k)?;
            if !key.starts_with('$') {
                continue;
            }
            if seen.contains(&key) {
                return Err(bad(format!(
                    "Query option '{key}' was specified more than once, but it must be specified at most once."
                )));
            }
            let value = decode(v)?;
            match key.as_str() {
                "$top" => {
                    let top = value
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=MAX_PAGE).contains(n))
                        .ok_or_else(|| {
                            bad(format!(
                                "Invalid value '{value}' for $top: a whole number from 1 to {MAX_PAGE} is expected."
                            ))
                        })?;
                    q.top = Some(top);
                }
                "$skiptoken" => q.after = Some(skiptoken_key(&value)?),
                "$filter" => q.filter = Some(filter(&value, kind)?),
                "$select" => {
                    let mut names = Vec::new();
                    for name in value.split(',').map(str::trim) {
                        if name != "id" && ty.property(name).is_none() {
                            return Err(bad(format!(
                                "Could not find a property named '{name}' on type '{}'.",
                                ty.name()
                            )));
                        }
                        names.push(name.to_owned());
                    }
                    q.select = Some(names);
                }
                other => {
                    return Err(bad(format!(
                        "Query option '{other}' is not supported by the emulator."
                    )));
                }
            }
            seen.push(key);
        }
        Ok(q)
    }

    fn matches(&self, entity: &Entity) -> bool {
        self.filter
            .is_none_or(|(property, member)| entity.get(property) == Some(&Value::Enum(member)))
    }

    /// A page of a collection, as Graph's JSON, with `@odata.nextLink` (on
    /// `origin` and `path`, the rest of the query kept) when more follow.
    pub fn page(
        &self,
        store: &Store,
        collection: &str,
        origin: &str,
        path: &str,
        raw_query: &str,
    ) -> String {
        let size = self.top.unwrap_or(DEFAULT_PAGE);
        let mut items: Vec<&Entity> = store
            .list(collection, self.after.as_deref())
            .filter(|e| self.matches(e))
            .take(size + 1)
            .collect();
        let next = (items.len() > size).then(|| {
            items.truncate(size);
            let last = items.last().map_or("", |e| e.id());
            let mut query: Vec<&str> = raw_query
                .split('&')
                .filter(|p| !p.is_empty())
                .filter(|p| {
                    let key = p.split_once('=').map_or(*p, |(k, _)| k);
                    decode(key).ok().as_deref() != Some("$skiptoken")
                })
                .collect();
            let token = format!("$skiptoken={}", hex(last));
            query.push(&token);
            format!("{origin}{path}?{}", query.join("&"))
        });
        #[derive(Serialize)]
        struct Page<'a> {
            #[serde(rename = "@odata.context")]
            context: String,
            value: Vec<EntityJson<'a>>,
            #[serde(rename = "@odata.nextLink", skip_serializing_if = "Option::is_none")]
            next: Option<String>,
        }
        let page = Page {
            context: paths::context(collection),
            value: items
                .into_iter()
                .map(|e| e.to_json(None, self.select.as_deref()))
                .collect(),
            next,
        };
        serde_json::to_string(&page).unwrap_or_default()
    }
}

/// `runState eq 'scriptError'` (or `detectionState`), and nothing else.
fn filter(text: &str, kind: Kind) -> Result<(&'static str, &'static str), GraphFailure> {
    let ty = kind.entity_type();
    let refuse = || {
        let enums: Vec<_> = ty
            .properties
            .iter()
            .filter(|p| p.ty == Type::RunState)
            .map(|p| p.name)
            .collect();
        bad(format!(
            "Invalid filter clause '{text}': the emulator serves only {} eq '<member>'.",
            enums.join(" or ")
        ))
    };
    let words: Vec<&str> = text.split_whitespace().collect();
    let [name, "eq", literal] = words[..] else {
        return Err(refuse());
    };
    let property = ty
        .property(name)
        .filter(|(_, p)| p.ty == Type::RunState)
        .map(|(_, p)| p.name)
        .ok_or_else(refuse)?;
    let member = literal
        .strip_prefix('\'')
        .and_then(|l| l.strip_suffix('\''))
        .ok_or_else(refuse)?;
    let member = RUN_STATE.iter().find(|m| **m == member).ok_or_else(|| {
        bad(format!(
            "The string '{member}' is not a valid enumeration type constant."
        ))
    })?;
    Ok((property, member))
}

fn hex(text: &str) -> String {
    text.bytes().map(|b| format!("{b:02x}")).collect()
}

fn skiptoken_key(token: &str) -> Result<String, GraphFailure> {
    let invalid = || bad("The $skiptoken is not valid.");
    if token.is_empty() || !token.len().is_multiple_of(2) || token.len() > 1024 {
        return Err(invalid());
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(token.get(i..i + 2).ok_or_else(invalid)?, 16).map_err(|_| invalid())
        })
        .collect::<Result<Vec<u8>, _>>()?;
    String::from_utf8(bytes).map_err(|_| invalid())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_served_options() {
        let q = Query::parse(
            "$top=5&$filter=runState%20eq%20'scriptError'&$select=runState,errorCode&other=1",
            Kind::Device,
        )
        .unwrap();
        assert_eq!(q.top, Some(5));
        assert_eq!(q.filter, Some(("runState", "scriptError")));
        assert_eq!(q.select, Some(vec!["runState".into(), "errorCode".into()]));
        let q = Query::parse("%24filter=detectionState+eq+'fail'", Kind::Compliance).unwrap();
        assert_eq!(q.filter, Some(("detectionState", "fail")));
        let token = hex("abc-1");
        assert_eq!(
            Query::parse(&format!("$skiptoken={token}"), Kind::User)
                .unwrap()
                .after
                .as_deref(),
            Some("abc-1")
        );
    }

    #[test]
    fn refuses_everything_else() {
        let bad = [
            (Kind::Device, "$top=0"),
            (Kind::Device, "$top=1000"),
            (Kind::Device, "$top=-1"),
            (Kind::Device, "$top=x"),
            (Kind::Device, "$top=5&$top=6"),
            (Kind::Device, "$filter=runState eq 'Success'"),
            (Kind::Device, "$filter=runState ne 'success'"),
            (Kind::Device, "$filter=errorCode eq 2"),
            (Kind::Device, "$filter=runState eq success"),
            (
                Kind::Device,
                "$filter=runState eq 'success' and errorCode eq 1",
            ),
            (Kind::Device, "$filter=detectionState eq 'success'"),
            (Kind::Compliance, "$filter=runState eq 'success'"),
            (Kind::User, "$filter=runState eq 'success'"),
            (Kind::Device, "$select=nope"),
            (Kind::Device, "$select="),
            (Kind::Device, "$orderby=id"),
            (Kind::Device, "$skip=3"),
            (Kind::Device, "$skiptoken=zz"),
            (Kind::Device, "$skiptoken=abc"),
            (Kind::Device, "$skiptoken="),
            (Kind::Device, "$filter=%FF"),
        ];
        for (kind, query) in bad {
            let err = Query::parse(query, kind).unwrap_err();
            assert_eq!(err.status, 400, "{query}");
        }
    }
}
