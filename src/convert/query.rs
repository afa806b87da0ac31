//! List queries: `page_size` → `$top`, an AIP-160 `filter` subset →
//! `$filter`, `read_mask` → `$select`, and the encoded Graph query string.

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use prost_types::FieldMask;

use super::{FieldViolation, Invalid, mask::Writable, run_state};
use crate::pb::RunState;

/// Page size when the request gives none.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size; larger requests are cut to it.
pub const MAX_PAGE_SIZE: u32 = 999;
/// Longest filter accepted.
const MAX_FILTER_LEN: usize = 512;

/// The `$top` for a requested page size.
pub fn page_size(requested: i32) -> Result<u32, Invalid> {
    match requested {
        n if n < 0 => Err("must not be negative".into()),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as u32).min(MAX_PAGE_SIZE)),
    }
}

/// What a list can be filtered on: one field, compared for equality.
#[derive(Debug, Clone, Copy)]
pub enum Filterable {
    /// A `RunState` field: `field = RUN_STATE_X`.
    RunState {
        proto: &'static str,
        graph: &'static str,
    },
    /// A string field: `field = "text"`.
    Text {
        proto: &'static str,
        graph: &'static str,
    },
}

impl Filterable {
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Filterable::RunState { proto, graph } | Filterable::Text { proto, graph } => {
                (proto, graph)
            }
        }
    }

    fn example(self) -> String {
        match self {
            Filterable::RunState { proto, .. } => format!("{proto} = RUN_STATE_SCRIPT_ERROR"),
            Filterable::Text { proto, .. } => format!("{proto} = \"someone@example.com\""),
        }
    }
}

/// Translates a filter into Graph's `$filter`; `None` for an empty filter.
///
/// The accepted subset of AIP-160 is one equality, `field = value`, on the
/// field `on` names (by its proto or Graph name). Anything else is refused.
pub fn filter(text: &str, on: Filterable) -> Result<Option<String>, Invalid> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let shape = || {
        invalid!(
            "supports only `{}` (one equality on `{}`)",
            on.example(),
            on.names().0
        )
    };
    if text.len() > MAX_FILTER_LEN {
        return Err(invalid!("is too long; it {}", shape()));
    }
    let Some((field, value)) = text.split_once('=') else {
        return Err(shape());
    };
    let (field, value) = (field.trim(), value.trim());
    let (proto, graph) = on.names();
    if field != proto && field != graph {
        return Err(shape());
    }
    match on {
        Filterable::RunState { .. } => {
            let name = RunState::from_str_name(value)
                .and_then(run_state::to_graph)
                .ok_or_else(|| {
                    invalid!(
                        "`{}` is not a RunState member other than RUN_STATE_UNSPECIFIED; the filter {}",
                        value.chars().take(64).collect::<String>(),
                        shape()
                    )
                })?;
            Ok(Some(format!("{graph} eq '{name}'")))
        }
        Filterable::Text { .. } => {
            let inner = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .filter(|v| !v.contains(['"', '\\']) && !v.chars().any(char::is_control))
                .ok_or_else(shape)?;
            Ok(Some(format!("{graph} eq '{}'", inner.replace('\'', "''"))))
        }
    }
}

/// Translates a read mask into Graph's `$select`; `None` for every field
/// (no mask, an empty one, or `*`). `id` is always selected: names need it.
pub fn select(
    mask: Option<&FieldMask>,
    readable: &'static [Writable],
) -> Result<Option<String>, Vec<FieldViolation>> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() || paths.iter().any(|p| p == "*") {
        if paths.len() > 1 {
            return Err(vec![FieldViolation::new(
                "read_mask",
                "`*` must be the only path",
            )]);
        }
        return Ok(None);
    }
    let mut graph = vec!["id"];
    let mut errors = Vec::new();
    for path in paths.iter().take(32) {
        if path == "name" || path == "id" {
            continue;
        }
        match readable.iter().find(|w| w.proto == path || w.graph == path) {
            Some(w) if !graph.contains(&w.graph) => graph.push(w.graph),
            Some(_) => {}
            None => errors.push(FieldViolation::new(
                "read_mask",
                super::mask::unknown_field(path, "readable fields are name, id,", readable),
            )),
        }
    }
    if paths.len() > 32 {
        errors.push(FieldViolation::new("read_mask", "has more than 32 paths"));
    }
    if errors.is_empty() {
        Ok(Some(graph.join(",")))
    } else {
        Err(errors)
    }
}

/// Characters encoded in a query value: all but RFC 3986 unreserved ones
/// and `,` (kept readable in `$select`).
const VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b',');

/// The query of a first page: `$top`, then `$filter` and `$select` if any.
pub fn first_page(top: u32, filter: Option<&str>, select: Option<&str>) -> String {
    let mut q = format!("$top={top}");
    if let Some(f) = filter {
        q.push_str("&$filter=");
        q.extend(utf8_percent_encode(f, VALUE));
    }
    if let Some(s) = select {
        q.push_str("&$select=");
        q.extend(utf8_percent_encode(s, VALUE));
    }
    q
}

/// The query of a later page: Graph's next-link query with `$top` set to
/// this call's page size (AIP-158 lets it change from page to page).
pub fn next_page(next_query: &str, top: u32) -> String {
    let mut q: String = next_query
        .split('&')
        .filter(|pair| {
            let key = pair.split('=').next().unwrap_or_default();
            !pair.is_empty()
                && !key.eq_ignore_ascii_case("$top")
                && !key.eq_ignore_ascii_case("%24top")
        })
        .collect::<Vec<_>>()
        .join("&");
    if !q.is_empty() {
        q.push('&');
    }
    q.push_str(&format!("$top={top}"));
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: Filterable = Filterable::RunState {
        proto: "run_state",
        graph: "runState",
    };
    const UPN: Filterable = Filterable::Text {
        proto: "user_principal_name",
        graph: "userPrincipalName",
    };

    #[test]
    fn page_sizes_default_and_clamp() {
        assert_eq!(page_size(0), Ok(DEFAULT_PAGE_SIZE));
        assert_eq!(page_size(7), Ok(7));
        assert_eq!(page_size(5000), Ok(MAX_PAGE_SIZE));
        assert_eq!(page_size(i32::MAX), Ok(MAX_PAGE_SIZE));
        assert!(page_size(-1).is_err());
    }

    #[test]
    fn translates_run_state_equality() {
        assert_eq!(filter("", RUN), Ok(None));
        assert_eq!(filter("  ", RUN), Ok(None));
        assert_eq!(
            filter("run_state = RUN_STATE_SCRIPT_ERROR", RUN)
                .unwrap()
                .unwrap(),
            "runState eq 'scriptError'"
        );
        assert_eq!(
            filter("runState=RUN_STATE_NOT_APPLICABLE", RUN)
                .unwrap()
                .unwrap(),
            "runState eq 'notApplicable'"
        );
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "run_state = RUN_STATE_UNSPECIFIED",
            "run_state = scriptError",
            "run_state = 'scriptError'",
            "run_state != RUN_STATE_FAIL",
            "run_state == RUN_STATE_FAIL",
            "run_state = RUN_STATE_FAIL AND run_state = RUN_STATE_SUCCESS",
            "run_state = RUN_STATE_FAIL OR error_code = 1",
            "error_code = 1",
            "run_state",
            "runState eq 'fail'",
            "run_state = RUN_STATE_FAIL') or (1 eq 1",
        ] {
            assert!(filter(bad, RUN).is_err(), "{bad}");
        }
        assert!(filter(&"x".repeat(600), RUN).is_err());
    }

    #[test]
    fn translates_text_equality_escaping_quotes() {
        assert_eq!(
            filter("user_principal_name = \"o'neil@example.com\"", UPN)
                .unwrap()
                .unwrap(),
            "userPrincipalName eq 'o''neil@example.com'"
        );
        for bad in [
            "user_principal_name = a@b",
            "user_principal_name = \"a\"b\"",
            "user_principal_name = \"a\\\"",
            "user_principal_name = \"a\nb\"",
        ] {
            assert!(filter(bad, UPN).is_err(), "{bad}");
        }
    }

    const READABLE: &[Writable] = &[
        Writable::required("run_state", "runState"),
        Writable::required("error_code", "errorCode"),
    ];

    use crate::convert::mask::tests::mask;

    #[test]
    fn read_masks_become_select() {
        assert_eq!(select(None, READABLE), Ok(None));
        assert_eq!(select(Some(&mask(&["*"])), READABLE), Ok(None));
        assert_eq!(
            select(Some(&mask(&["run_state", "name", "runState"])), READABLE),
            Ok(Some("id,runState".into()))
        );
        assert!(select(Some(&mask(&["nope"])), READABLE).is_err());
        assert!(select(Some(&mask(&["*", "id"])), READABLE).is_err());
    }

    #[test]
    fn later_pages_take_this_calls_page_size() {
        assert_eq!(
            next_page("$top=5&$skiptoken=abc%3D&$select=id", 7),
            "$skiptoken=abc%3D&$select=id&$top=7"
        );
        assert_eq!(next_page("%24top=5&$skiptoken=x", 9), "$skiptoken=x&$top=9");
        assert_eq!(next_page("$skiptoken=x", 9), "$skiptoken=x&$top=9");
    }

    #[test]
    fn builds_encoded_first_page_queries() {
        assert_eq!(first_page(5, None, None), "$top=5");
        assert_eq!(
            first_page(5, Some("runState eq 'fail'"), Some("id,runState")),
            "$top=5&$filter=runState%20eq%20%27fail%27&$select=id,runState"
        );
    }
}
