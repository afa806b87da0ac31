//! Proto resources ⇄ Graph entities.
//!
//! Writing follows [`Selection`]: a create leaves unset optional fields out,
//! an update sends exactly the selected fields and turns an unset optional one
//! into JSON `null`. Reading never fails on Graph's data: an unknown enum name
//! is RUN_STATE_UNSPECIFIED and an unreadable timestamp is left unset, both
//! with a warning, since by then Graph has already stored the write.

use std::borrow::Cow;

use prost_types::Timestamp;
use serde::{Serialize, de::DeserializeOwned};

use super::{
    FieldViolation, datetime,
    mask::{Selection, Writable},
    run_state, schema,
};
use crate::graph::model::{self as g, Entity as _, Field};
use crate::pb;

/// A proto resource that maps onto a Graph entity.
pub trait Resource: prost::Message + Default + Clone + Send + Sync + 'static {
    /// Graph's JSON model of the entity.
    type Graph: g::Entity + Serialize + DeserializeOwned + Send + Sync + 'static;
    /// The request field that holds the resource, for field violations.
    const FIELD: &'static str;
    /// Fields an update can write.
    const WRITABLE: &'static [Writable];

    fn name(&self) -> &str;
    /// Whether a writable field holds a non-default value.
    fn is_populated(&self, field: &str) -> bool;
    /// The Graph body for a create or an update.
    fn to_graph(self, selection: &Selection) -> Result<Self::Graph, Vec<FieldViolation>>;
    /// The resource Graph describes, named `name`.
    fn from_graph(graph: Self::Graph, name: String) -> Self;
    /// The id in a Graph entity.
    fn graph_id(graph: &Self::Graph) -> Option<&str> {
        match graph.id() {
            Field::Value(id) => Some(id),
            _ => None,
        }
    }
    /// Sets the id of a Graph body (a caller-chosen id on create).
    fn set_graph_id(graph: &mut Self::Graph, id: String) {
        graph.set_id(id);
    }
}

/// Writes one resource's fields, collecting violations.
struct Writer<'a> {
    selection: &'a Selection,
    prefix: &'static str,
    fields: &'static [Writable],
    errors: Vec<FieldViolation>,
}

impl<'a> Writer<'a> {
    fn new<R: Resource>(selection: &'a Selection) -> Self {
        Self {
            selection,
            prefix: R::FIELD,
            fields: R::WRITABLE,
            errors: Vec::new(),
        }
    }

    /// Whether Graph allows `null` in the property of a field.
    fn nullable(&self, field: &str) -> bool {
        self.fields.iter().any(|w| w.proto == field && w.nullable)
    }

    fn violation(&mut self, field: &str, description: impl Into<String>) {
        self.errors.push(FieldViolation::new(
            format!("{}.{field}", self.prefix),
            description,
        ));
    }

    fn int(&self, field: &str, value: i32) -> Field<i32> {
        if self.selection.has(field) {
            Field::Value(value)
        } else {
            Field::Absent
        }
    }

    fn string(&self, field: &str, value: Option<String>) -> Field<String> {
        match () {
            _ if !self.selection.has(field) => Field::Absent,
            _ if self.selection.is_create() => Field::omitted(value),
            _ => Field::nullable(value),
        }
    }

    fn run_state(&mut self, field: &str, value: i32) -> Field<Cow<'static, str>> {
        if !self.selection.has(field) {
            return Field::Absent;
        }
        match pb::RunState::try_from(value).map(run_state::to_graph) {
            Ok(Some(name)) => Field::Value(Cow::Borrowed(name)),
            Ok(None) if self.selection.is_create() => Field::Absent,
            Ok(None) => {
                self.violation(
                    field,
                    "RUN_STATE_UNSPECIFIED cannot be written; Graph's property is not nullable",
                );
                Field::Absent
            }
            Err(_) => {
                self.violation(field, format!("{value} is not a RunState value"));
                Field::Absent
            }
        }
    }

    fn timestamp(&mut self, field: &str, value: Option<Timestamp>) -> Field<String> {
        if !self.selection.has(field) {
            return Field::Absent;
        }
        match value {
            Some(ts) => match datetime::timestamp_to_graph(&ts) {
                Ok(text) => Field::Value(text),
                Err(why) => {
                    self.violation(field, format!("timestamp {why}"));
                    Field::Absent
                }
            },
            None if self.selection.is_create() => Field::Absent,
            None if self.nullable(field) => Field::Null,
            None => {
                self.violation(field, "cannot be cleared; Graph's property is not nullable");
                Field::Absent
            }
        }
    }

    fn finish<T>(self, value: T) -> Result<T, Vec<FieldViolation>> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self.errors)
        }
    }
}

/// Reading Graph's values: one function per kind of field, named as the
/// [`Writer`] method that writes it.
mod read {
    use super::*;

    pub fn int(field: Field<i32>, _: &str) -> i32 {
        field.into_option().unwrap_or_default()
    }

    pub fn string(field: Field<String>, _: &str) -> Option<String> {
        field.into_option()
    }

    pub fn run_state(field: Field<Cow<'static, str>>, _: &str) -> i32 {
        field
            .into_option()
            .map_or(pb::RunState::Unspecified, |name| {
                run_state::from_graph(&name)
            }) as i32
    }

    pub fn timestamp(field: Field<String>, property: &str) -> Option<Timestamp> {
        let text = field.into_option()?;
        match datetime::timestamp_from_graph(&text) {
            Ok(ts) => Some(ts),
            Err(why) => {
                tracing::warn!(property, value = %text.escape_debug(), %why, "Graph sent an unreadable timestamp; leaving it unset");
                None
            }
        }
    }
}

/// Whether a proto field holds a value to write (a non-zero number or enum,
/// a set optional).
trait Populated {
    fn populated(&self) -> bool;
}

impl Populated for i32 {
    fn populated(&self) -> bool {
        *self != 0
    }
}

impl<T> Populated for Option<T> {
    fn populated(&self) -> bool {
        self.is_some()
    }
}

/// Maps a proto resource onto its Graph entity, field by field: each field
/// is of a kind (`int`, `string`, `run_state`, `timestamp`) that names how
/// it is written ([`Writer`]) and read ([`read`]).
macro_rules! resource {
    ($pb:ident => $graph:ident, $entity:expr, $odata_type:expr, field: $field:literal {
        $($f:ident: $kind:ident),* $(,)?
    }) => {
        impl Resource for pb::$pb {
            type Graph = g::$graph;
            const FIELD: &'static str = $field;
            const WRITABLE: &'static [Writable] = $entity.fields;

            fn name(&self) -> &str {
                &self.name
            }

            fn is_populated(&self, field: &str) -> bool {
                match field {
                    $(stringify!($f) => self.$f.populated(),)*
                    _ => false,
                }
            }

            #[allow(unused_mut)]
            fn to_graph(self, selection: &Selection) -> Result<g::$graph, Vec<FieldViolation>> {
                let mut w = Writer::new::<Self>(selection);
                let graph = g::$graph {
                    odata_type: selection.is_create().then_some($odata_type),
                    id: Field::Absent,
                    $($f: w.$kind(stringify!($f), self.$f),)*
                };
                w.finish(graph)
            }

            fn from_graph(graph: g::$graph, name: String) -> Self {
                pb::$pb {
                    name,
                    id: graph.id.into_option().unwrap_or_default(),
                    $($f: read::$kind(graph.$f, stringify!($f)),)*
                }
            }
        }
    };
}

resource!(ScriptUserState => ScriptUserState, schema::USER_STATE, g::USER_STATE_TYPE,
field: "script_user_state" {
    user_principal_name: string,
    success_device_count: int,
    error_device_count: int,
});

resource!(ScriptDeviceState => ScriptDeviceState, schema::DEVICE_STATE, g::DEVICE_STATE_TYPE,
field: "script_device_state" {
    run_state: run_state,
    result_message: string,
    last_state_update_date_time: timestamp,
    error_code: int,
    error_description: string,
});

resource!(ComplianceScriptDeviceState => ComplianceScriptDeviceState, schema::COMPLIANCE_STATE,
g::COMPLIANCE_STATE_TYPE, field: "compliance_script_device_state" {
    detection_state: run_state,
    last_state_update_date_time: timestamp,
    expected_state_update_date_time: timestamp,
    last_sync_date_time: timestamp,
    script_output: string,
    script_error: string,
});

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn ts(seconds: i64, nanos: i32) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos })
    }

    fn body<R: Resource>(r: R, s: &Selection) -> Value {
        serde_json::to_value(r.to_graph(s).unwrap()).unwrap()
    }

    fn update(fields: &[&'static str]) -> Selection {
        Selection::Update(fields.to_vec())
    }

    #[test]
    fn user_state_create_body_matches_graph() {
        let r = pb::ScriptUserState {
            name: "ignored".into(),
            id: "ignored".into(),
            user_principal_name: Some("user@contoso.com".into()),
            success_device_count: 2,
            error_device_count: 0,
        };
        assert_eq!(
            body(r, &Selection::Create),
            json!({"@odata.type": "#microsoft.graph.deviceManagementScriptUserState",
                   "successDeviceCount": 2, "errorDeviceCount": 0, "userPrincipalName": "user@contoso.com"})
        );
        let bare = body(pb::ScriptUserState::default(), &Selection::Create);
        assert_eq!(
            bare,
            json!({"@odata.type": "#microsoft.graph.deviceManagementScriptUserState",
                   "successDeviceCount": 0, "errorDeviceCount": 0})
        );
    }

    #[test]
    fn device_state_create_body_matches_graph() {
        let r = pb::ScriptDeviceState {
            run_state: pb::RunState::ScriptError as i32,
            result_message: Some("Result Message value".into()),
            last_state_update_date_time: ts(1_483_257_778, 441_804_500),
            error_code: 9,
            error_description: None,
            ..Default::default()
        };
        assert_eq!(
            body(r, &Selection::Create),
            json!({"@odata.type": "#microsoft.graph.deviceManagementScriptDeviceState",
                   "runState": "scriptError", "resultMessage": "Result Message value",
                   "lastStateUpdateDateTime": "2017-01-01T08:02:58.4418045Z", "errorCode": 9})
        );
        // UNSPECIFIED and unset timestamps are left out on create.
        assert_eq!(
            body(pb::ScriptDeviceState::default(), &Selection::Create),
            json!({"@odata.type": "#microsoft.graph.deviceManagementScriptDeviceState", "errorCode": 0})
        );
    }

    #[test]
    fn compliance_state_create_body_matches_graph() {
        let r = pb::ComplianceScriptDeviceState {
            detection_state: pb::RunState::NotApplicable as i32,
            last_state_update_date_time: ts(-62_135_596_800, 0),
            expected_state_update_date_time: None,
            last_sync_date_time: ts(253_402_300_799, 999_999_999),
            script_output: Some("out".into()),
            script_error: Some(String::new()),
            ..Default::default()
        };
        assert_eq!(
            body(r, &Selection::Create),
            json!({"@odata.type": "#microsoft.graph.deviceComplianceScriptDeviceState",
                   "detectionState": "notApplicable",
                   "lastStateUpdateDateTime": "0001-01-01T00:00:00.0000000Z",
                   "lastSyncDateTime": "9999-12-31T23:59:59.9999999Z",
                   "scriptOutput": "out", "scriptError": ""})
        );
    }

    #[test]
    fn update_sends_only_masked_fields_and_nulls_unset_optionals() {
        let r = pb::ComplianceScriptDeviceState {
            detection_state: pb::RunState::Fail as i32,
            script_output: Some("x".into()),
            ..Default::default()
        };
        assert_eq!(
            body(
                r,
                &update(&[
                    "expected_state_update_date_time",
                    "script_error",
                    "detection_state"
                ])
            ),
            json!({"detectionState": "fail", "expectedStateUpdateDateTime": null, "scriptError": null})
        );
        let u = pb::ScriptUserState {
            success_device_count: 0,
            ..Default::default()
        };
        assert_eq!(
            body(u, &update(&["success_device_count", "user_principal_name"])),
            json!({"successDeviceCount": 0, "userPrincipalName": null})
        );
    }

    #[test]
    fn update_refuses_clearing_non_nullable_fields() {
        let errs = pb::ScriptDeviceState::default()
            .to_graph(&update(&["run_state", "last_state_update_date_time"]))
            .unwrap_err();
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "script_device_state.run_state",
                "script_device_state.last_state_update_date_time"
            ]
        );
    }

    #[test]
    fn refuses_bad_enums_and_timestamps() {
        let r = pb::ScriptDeviceState {
            run_state: 42,
            last_state_update_date_time: ts(0, 1_000_000_000),
            ..Default::default()
        };
        let errs = r.to_graph(&Selection::Create).unwrap_err();
        assert_eq!(errs.len(), 2);
        assert_eq!(errs[0].field, "script_device_state.run_state");
        assert_eq!(
            errs[1].field,
            "script_device_state.last_state_update_date_time"
        );
        let r = pb::ComplianceScriptDeviceState {
            last_sync_date_time: ts(-62_135_596_801, 0),
            ..Default::default()
        };
        let errs = r.to_graph(&Selection::Create).unwrap_err();
        assert_eq!(
            errs[0].field,
            "compliance_script_device_state.last_sync_date_time"
        );
    }

    #[test]
    fn reads_graph_entities() {
        let g: g::ComplianceScriptDeviceState = serde_json::from_value(json!({
            "id": "7bd39c86", "detectionState": "success",
            "lastStateUpdateDateTime": "2017-01-01T00:02:58.4418045-08:00",
            "expectedStateUpdateDateTime": null,
            "lastSyncDateTime": "0001-01-01T00:00:00Z",
            "scriptOutput": "Script Output value", "scriptError": null
        }))
        .unwrap();
        let r = pb::ComplianceScriptDeviceState::from_graph(g, "n".into());
        assert_eq!(r.id, "7bd39c86");
        assert_eq!(r.detection_state, pb::RunState::Success as i32);
        assert_eq!(
            r.last_state_update_date_time,
            ts(1_483_257_778, 441_804_500)
        );
        assert_eq!(r.expected_state_update_date_time, None);
        assert_eq!(r.last_sync_date_time, ts(-62_135_596_800, 0));
        assert_eq!(r.script_output.as_deref(), Some("Script Output value"));
        assert_eq!(r.script_error, None);
    }

    #[test]
    fn reading_tolerates_unknown_enums_and_bad_dates() {
        let g: g::ScriptDeviceState = serde_json::from_value(json!({
            "id": "d", "runState": "someFutureValue", "lastStateUpdateDateTime": "not a date"
        }))
        .unwrap();
        let r = pb::ScriptDeviceState::from_graph(g, "n".into());
        assert_eq!(r.run_state, pb::RunState::Unspecified as i32);
        assert_eq!(r.last_state_update_date_time, None);
    }
}
