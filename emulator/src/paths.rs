//! Which entity or collection a Graph path names, and the `@odata.context` of it.

use percent_encoding::percent_decode_str;

use super::model::{GraphFailure, Kind};

pub const ROOT: &str = "/beta/deviceManagement/";
const CONTEXT_ROOT: &str = "https://graph.microsoft.com/beta/$metadata#deviceManagement/";

/// The script collections under `deviceManagement`, the Graph type each
/// holds, and whether it is a compliance script (device run states only).
pub const SCRIPTS: [(&str, &str, bool); 4] = [
    ("deviceManagementScripts", "deviceManagementScript", false),
    ("deviceShellScripts", "deviceShellScript", false),
    (
        "deviceCustomAttributeShellScripts",
        "deviceCustomAttributeShellScript",
        false,
    ),
    ("deviceComplianceScripts", "deviceComplianceScript", true),
];

/// What a Graph path names. Paths are decoded and relative to `deviceManagement/`.
#[derive(Debug, PartialEq)]
pub enum Target {
    Collection {
        kind: Kind,
        path: String,
        /// The user state a nested collection belongs to.
        parent: Option<String>,
    },
    Item {
        path: String,
        collection: String,
    },
}

/// Parses a path, served with or without the `/beta` segment.
pub fn parse_target(path: &str) -> Result<Target, GraphFailure> {
    let Some(rest) = path
        .strip_prefix(ROOT)
        .or_else(|| path.strip_prefix("/deviceManagement/"))
    else {
        return Err(GraphFailure::bad_request(format!(
            "Invalid request: the emulator serves {ROOT}... only."
        )));
    };
    let mut segments = Vec::new();
    for raw in rest.split('/') {
        let s = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| GraphFailure::bad_request("The request URI is not valid UTF-8."))?;
        if s.is_empty() || s == "." || s == ".." || s.contains('/') {
            return Err(GraphFailure::bad_request("The request URI is not valid."));
        }
        if s.starts_with('$') {
            return Err(unknown(&s));
        }
        segments.push(s.into_owned());
    }
    let compliance = SCRIPTS
        .iter()
        .find(|(name, _, _)| *name == segments[0])
        .map(|(_, _, compliance)| *compliance)
        .ok_or_else(|| unknown(&segments[0]))?;
    if segments.len() < 3 {
        return Err(GraphFailure::not_found(
            "The emulator serves run states, not scripts.",
        ));
    }
    let state_kind = |word: &str| match word {
        "userRunStates" if !compliance => Ok(Kind::User),
        "deviceRunStates" if compliance => Ok(Kind::Compliance),
        "deviceRunStates" => Ok(Kind::Device),
        other => Err(unknown(other)),
    };
    let join = |n: usize| segments[..n].join("/");
    let kind3 = state_kind(&segments[2])?;
    match segments.len() {
        3 => Ok(Target::Collection {
            kind: kind3,
            path: join(3),
            parent: None,
        }),
        4 => Ok(Target::Item {
            path: join(4),
            collection: join(3),
        }),
        5 if kind3 == Kind::User && segments[4] == "deviceRunStates" => Ok(Target::Collection {
            kind: Kind::Device,
            path: join(5),
            parent: Some(join(4)),
        }),
        6 if kind3 == Kind::User && segments[4] == "deviceRunStates" => Ok(Target::Item {
            path: join(6),
            collection: join(5),
        }),
        _ => Err(unknown(segments.get(4).map_or("", String::as_str))),
    }
}

fn unknown(segment: &str) -> GraphFailure {
    GraphFailure::bad_request(format!("Resource not found for the segment '{segment}'."))
}

/// The `@odata.context` of a collection:
/// `deviceShellScripts/s/userRunStates` → `...#deviceManagement/deviceShellScripts('s')/userRunStates`.
pub fn context(collection: &str) -> String {
    let mut out = String::from(CONTEXT_ROOT);
    for (i, s) in collection.split('/').enumerate() {
        if i % 2 == 1 {
            out.push_str(&format!("('{s}')"));
        } else {
            if i > 0 {
                out.push('/');
            }
            out.push_str(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_served_path() {
        let ok = [
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates",
            "/beta/deviceManagement/deviceShellScripts/s/userRunStates/u",
            "/beta/deviceManagement/deviceCustomAttributeShellScripts/s/deviceRunStates",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/u/deviceRunStates",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/u/deviceRunStates/d%40x",
            "/beta/deviceManagement/deviceComplianceScripts/s/deviceRunStates/d",
            "/deviceManagement/deviceShellScripts/s/userRunStates",
        ];
        for p in ok {
            assert!(parse_target(p).is_ok(), "{p}");
        }
        assert_eq!(
            parse_target(
                "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/u/deviceRunStates/d%40x"
            ),
            Ok(Target::Item {
                path: "deviceManagementScripts/s/userRunStates/u/deviceRunStates/d@x".into(),
                collection: "deviceManagementScripts/s/userRunStates/u/deviceRunStates".into(),
            })
        );
        assert_eq!(
            parse_target("/beta/deviceManagement/deviceComplianceScripts/c/deviceRunStates"),
            Ok(Target::Collection {
                kind: Kind::Compliance,
                path: "deviceComplianceScripts/c/deviceRunStates".into(),
                parent: None,
            })
        );
        let bad = [
            "/beta/deviceManagement/deviceComplianceScripts/s/userRunStates",
            "/beta/deviceManagement/deviceHealthScripts/s/deviceRunStates",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/u/deviceRunStates/$ref",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/u/deviceRunStates/d/x",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/%2E%2E",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/a%2Fb",
            "/beta/deviceManagement/deviceManagementScripts/s/userRunStates/%FF",
            "/beta/deviceManagement/deviceManagementScripts/s",
            "/beta/deviceManagement/deviceManagementScripts//userRunStates",
            "/v1.0/deviceManagement/deviceManagementScripts/s/userRunStates",
        ];
        for p in bad {
            assert!(parse_target(p).is_err(), "{p}");
        }
    }

    #[test]
    fn builds_odata_context_paths() {
        assert_eq!(
            context("deviceShellScripts/s/userRunStates/u/deviceRunStates"),
            "https://graph.microsoft.com/beta/$metadata#deviceManagement/deviceShellScripts('s')/userRunStates('u')/deviceRunStates"
        );
    }
}
