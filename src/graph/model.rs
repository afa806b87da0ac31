//! Graph's JSON model of the three run-state entities (camelCase, as on the
//! wire). Timestamps and enum members are kept as Graph's text; `convert`
//! translates them.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A JSON property that can be absent, `null`, or a value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Field<T> {
    #[default]
    Absent,
    Null,
    Value(T),
}

impl<T> Field<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Field::Absent)
    }

    /// `Null` for `None`, else the value.
    pub fn nullable(value: Option<T>) -> Self {
        value.map_or(Field::Null, Field::Value)
    }

    /// `Absent` for `None`, else the value.
    pub fn omitted(value: Option<T>) -> Self {
        value.map_or(Field::Absent, Field::Value)
    }

    /// The value, if there is one.
    pub fn into_option(self) -> Option<T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }
}

impl<T: Serialize> Serialize for Field<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Field::Value(v) => v.serialize(s),
            _ => s.serialize_none(),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Option::<T>::deserialize(d).map(Field::nullable)
    }
}

use crate::convert::schema;

pub const USER_STATE_TYPE: &str = schema::USER_STATE.odata_type;
pub const DEVICE_STATE_TYPE: &str = schema::DEVICE_STATE.odata_type;
pub const COMPLIANCE_STATE_TYPE: &str = schema::COMPLIANCE_STATE.odata_type;

/// What every run-state entity has: an `id`.
pub trait Entity {
    fn id(&self) -> &Field<String>;
    fn set_id(&mut self, id: String);
}

/// A run-state entity: its `@odata.type` (written on create), its `id` and
/// its properties, each absent, null or a value.
macro_rules! entity {
    ($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", default)]
        pub struct $name {
            #[serde(
                rename = "@odata.type",
                skip_serializing_if = "Option::is_none",
                skip_deserializing
            )]
            pub odata_type: Option<&'static str>,
            #[serde(skip_serializing_if = "Field::is_absent")]
            pub id: Field<String>,
            $(
                #[serde(skip_serializing_if = "Field::is_absent")]
                pub $field: Field<$ty>,
            )*
        }

        impl Entity for $name {
            fn id(&self) -> &Field<String> {
                &self.id
            }

            fn set_id(&mut self, id: String) {
                self.id = Field::Value(id);
            }
        }
    };
}

entity! {
    /// `deviceManagementScriptUserState`.
    ScriptUserState {
        success_device_count: i32,
        error_device_count: i32,
        user_principal_name: String,
    }
}

entity! {
    /// `deviceManagementScriptDeviceState`.
    ScriptDeviceState {
        run_state: Cow<'static, str>,
        result_message: String,
        last_state_update_date_time: String,
        error_code: i32,
        error_description: String,
    }
}

entity! {
    /// `deviceComplianceScriptDeviceState`.
    ComplianceScriptDeviceState {
        detection_state: Cow<'static, str>,
        last_state_update_date_time: String,
        expected_state_update_date_time: String,
        last_sync_date_time: String,
        script_output: String,
        script_error: String,
    }
}

/// Graph's error body: `{"error": {"code", "message", "innerError": {...}}}`.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ErrorDetail {
    pub code: Option<String>,
    pub message: Option<String>,
    #[serde(rename = "innerError", alias = "innererror")]
    pub inner_error: InnerError,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct InnerError {
    #[serde(rename = "request-id")]
    pub request_id: Option<String>,
    #[serde(rename = "client-request-id")]
    pub client_request_id: Option<String>,
    pub date: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_is_omitted_null_is_written() {
        let body = ScriptUserState {
            odata_type: Some(USER_STATE_TYPE),
            success_device_count: Field::Value(2),
            user_principal_name: Field::Null,
            ..Default::default()
        };
        assert_eq!(
            serde_json::to_string(&body).unwrap(),
            r##"{"@odata.type":"#microsoft.graph.deviceManagementScriptUserState","successDeviceCount":2,"userPrincipalName":null}"##
        );
    }

    #[test]
    fn reads_absent_null_and_values_and_ignores_unknown_properties() {
        let g: ComplianceScriptDeviceState = serde_json::from_str(
            r##"{"@odata.context":"x","@odata.type":"#microsoft.graph.deviceComplianceScriptDeviceState","id":"a","detectionState":"pending","expectedStateUpdateDateTime":null,"newProperty":[1]}"##,
        )
        .unwrap();
        assert_eq!(g.id, Field::Value("a".to_string()));
        assert_eq!(g.detection_state, Field::Value(Cow::Borrowed("pending")));
        assert_eq!(g.expected_state_update_date_time, Field::Null);
        assert_eq!(g.script_output, Field::Absent);
        assert_eq!(g.odata_type, None);
    }

    #[test]
    fn error_body_tolerates_missing_parts() {
        let e: ErrorBody = serde_json::from_str(r#"{"error":{"code":"","message":"m"}}"#).unwrap();
        assert_eq!(e.error.code.as_deref(), Some(""));
        assert_eq!(e.error.inner_error.request_id, None);
        let e: ErrorBody = serde_json::from_str(
            r#"{"error":{"innerError":{"request-id":"r","date":"2026-11-22T10:00:00"}}}"#,
        )
        .unwrap();
        assert_eq!(e.error.inner_error.request_id.as_deref(), Some("r"));
    }
}
