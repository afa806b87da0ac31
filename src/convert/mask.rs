//! Update masks (AIP-134): which fields of a resource an update sends.

use prost_types::FieldMask;

use super::FieldViolation;
pub use super::schema::Writable;

/// Output-only fields of every resource.
const OUTPUT_ONLY: [&str; 2] = ["name", "id"];

/// Which fields a request writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// A create: every set field; unset optional fields are left out.
    Create,
    /// An update: exactly these fields (proto names); unset optional ones become null.
    Update(Vec<&'static str>),
}

impl Selection {
    pub fn has(&self, field: &str) -> bool {
        match self {
            Selection::Create => true,
            Selection::Update(fields) => fields.contains(&field),
        }
    }

    pub fn is_create(&self) -> bool {
        matches!(self, Selection::Create)
    }
}

/// Resolves an update mask into the fields to send.
///
/// No mask (or an empty one) means every populated field; `*` means every
/// writable field. Paths may use proto names (`user_principal_name`) or Graph
/// names (`userPrincipalName`). Unknown and output-only paths are refused.
pub fn resolve(
    mask: Option<&FieldMask>,
    writable: &'static [Writable],
    populated: impl Fn(&str) -> bool,
) -> Result<Selection, Vec<FieldViolation>> {
    let paths = mask.map(|m| m.paths.as_slice()).unwrap_or_default();
    if paths.is_empty() {
        let fields: Vec<_> = writable
            .iter()
            .map(|w| w.proto)
            .filter(|f| populated(f))
            .collect();
        if fields.is_empty() {
            return Err(vec![FieldViolation::new(
                "update_mask",
                "no field is set and no update_mask is given: nothing to update",
            )]);
        }
        return Ok(Selection::Update(fields));
    }
    if paths.iter().any(|p| p == "*") {
        if paths.len() > 1 {
            return Err(vec![FieldViolation::new(
                "update_mask",
                "`*` must be the only path",
            )]);
        }
        return Ok(Selection::Update(
            writable.iter().map(|w| w.proto).collect(),
        ));
    }
    let mut fields = Vec::with_capacity(paths.len());
    let mut errors = Vec::new();
    for path in paths {
        if errors.len() >= 10 {
            break;
        }
        match writable.iter().find(|w| w.proto == path || w.graph == path) {
            Some(w) if !fields.contains(&w.proto) => fields.push(w.proto),
            Some(_) => {}
            None if OUTPUT_ONLY.contains(&path.as_str()) => errors.push(FieldViolation::new(
                "update_mask",
                format!("`{path}` is output only and cannot be updated"),
            )),
            None => errors.push(FieldViolation::new(
                "update_mask",
                unknown_field(path, "updatable fields are", writable),
            )),
        }
    }
    if errors.is_empty() {
        Ok(Selection::Update(fields))
    } else {
        Err(errors)
    }
}

/// Names an unknown mask path (cut to 64 characters) and the fields there are.
pub(super) fn unknown_field(path: &str, known: &str, fields: &[Writable]) -> String {
    let names: Vec<&str> = fields.iter().map(|w| w.proto).collect();
    format!(
        "unknown field `{}`; {known} {}",
        path.chars().take(64).collect::<String>(),
        names.join(", ")
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    const FIELDS: &[Writable] = &[
        Writable::nullable("user_principal_name", "userPrincipalName"),
        Writable::required("success_device_count", "successDeviceCount"),
    ];

    /// A field mask of `paths` (also for `query`'s tests).
    pub(in crate::convert) fn mask(paths: &[&str]) -> FieldMask {
        FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn omitted_mask_means_populated_fields() {
        let s = resolve(None, FIELDS, |f| f == "success_device_count").unwrap();
        assert_eq!(s, Selection::Update(vec!["success_device_count"]));
        let s = resolve(Some(&mask(&[])), FIELDS, |_| true).unwrap();
        assert_eq!(
            s,
            Selection::Update(vec!["user_principal_name", "success_device_count"])
        );
        assert!(resolve(None, FIELDS, |_| false).is_err());
    }

    #[test]
    fn star_means_every_writable_field() {
        let s = resolve(Some(&mask(&["*"])), FIELDS, |_| false).unwrap();
        assert_eq!(
            s,
            Selection::Update(vec!["user_principal_name", "success_device_count"])
        );
        assert!(resolve(Some(&mask(&["*", "id"])), FIELDS, |_| false).is_err());
    }

    #[test]
    fn accepts_proto_and_graph_names_once_each() {
        let s = resolve(
            Some(&mask(&["userPrincipalName", "user_principal_name"])),
            FIELDS,
            |_| false,
        )
        .unwrap();
        assert_eq!(s, Selection::Update(vec!["user_principal_name"]));
        assert!(s.has("user_principal_name") && !s.has("success_device_count"));
    }

    #[test]
    fn refuses_unknown_and_output_only_paths() {
        for bad in [
            "id",
            "name",
            "nope",
            "script_user_state.success_device_count",
            "",
        ] {
            let errs = resolve(Some(&mask(&[bad])), FIELDS, |_| true).unwrap_err();
            assert_eq!(errs.len(), 1, "{bad}");
            assert_eq!(errs[0].field, "update_mask");
        }
        let errs = resolve(Some(&mask(&["id", "x"])), FIELDS, |_| true).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert!(errs[0].description.contains("output only"));
    }
}
