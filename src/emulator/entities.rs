//! The emulator's stored entities and how bodies change them, with Graph's
//! rules: unknown properties, wrong types, unknown enum names, bad dates and
//! null for a non-nullable property are all 400s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer, de::DeserializeOwned};

use super::ClientIds;

use crate::convert::datetime::{self, Instant, MAX_SECONDS, MIN_SECONDS};
use crate::graph::model::{COMPLIANCE_STATE_TYPE, DEVICE_STATE_TYPE, Field, USER_STATE_TYPE};

/// A Graph-shaped error: status, code and message.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphFailure {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl GraphFailure {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: 400,
            code: "BadRequest",
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: 404,
            code: "ResourceNotFound",
            message: message.into(),
        }
    }
}

/// Which entity type a collection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Device,
    Compliance,
}

impl Kind {
    pub fn odata_type(self) -> &'static str {
        match self {
            Kind::User => USER_STATE_TYPE,
            Kind::Device => DEVICE_STATE_TYPE,
            Kind::Compliance => COMPLIANCE_STATE_TYPE,
        }
    }
}

const RUN_STATES: [&str; 6] = [
    "unknown",
    "success",
    "fail",
    "scriptError",
    "pending",
    "notApplicable",
];
const NEVER: Instant = Instant {
    seconds: MIN_SECONDS,
    nanos: 0,
};

/// A stored entity.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Entity {
    User(UserState),
    Device(DeviceState),
    Compliance(ComplianceState),
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserState {
    id: String,
    success_device_count: i32,
    error_device_count: i32,
    user_principal_name: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceState {
    id: String,
    run_state: &'static str,
    result_message: Option<String>,
    #[serde(serialize_with = "utc")]
    last_state_update_date_time: Instant,
    error_code: i32,
    error_description: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceState {
    id: String,
    detection_state: &'static str,
    #[serde(serialize_with = "utc")]
    last_state_update_date_time: Instant,
    #[serde(serialize_with = "utc_or_null")]
    expected_state_update_date_time: Option<Instant>,
    #[serde(serialize_with = "utc")]
    last_sync_date_time: Instant,
    script_output: Option<String>,
    script_error: Option<String>,
}

fn utc<S: Serializer>(i: &Instant, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&datetime::format_utc(*i))
}

fn utc_or_null<S: Serializer>(i: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
    match i {
        Some(i) => utc(i, s),
        None => s.serialize_none(),
    }
}

// Request bodies: every property optional, unknown ones refused.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct UserStateBody {
    #[serde(rename = "@odata.type", default)]
    odata_type: Option<String>,
    #[serde(default)]
    id: Field<String>,
    #[serde(default)]
    success_device_count: Field<i32>,
    #[serde(default)]
    error_device_count: Field<i32>,
    #[serde(default)]
    user_principal_name: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DeviceStateBody {
    #[serde(rename = "@odata.type", default)]
    odata_type: Option<String>,
    #[serde(default)]
    id: Field<String>,
    #[serde(default)]
    run_state: Field<String>,
    #[serde(default)]
    result_message: Field<String>,
    #[serde(default)]
    last_state_update_date_time: Field<String>,
    #[serde(default)]
    error_code: Field<i32>,
    #[serde(default)]
    error_description: Field<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ComplianceStateBody {
    #[serde(rename = "@odata.type", default)]
    odata_type: Option<String>,
    #[serde(default)]
    id: Field<String>,
    #[serde(default)]
    detection_state: Field<String>,
    #[serde(default)]
    last_state_update_date_time: Field<String>,
    #[serde(default)]
    expected_state_update_date_time: Field<String>,
    #[serde(default)]
    last_sync_date_time: Field<String>,
    #[serde(default)]
    script_output: Field<String>,
    #[serde(default)]
    script_error: Field<String>,
}

fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, GraphFailure> {
    serde_json::from_slice(body)
        .map_err(|e| GraphFailure::bad_request(format!("Invalid request body: {e}")))
}

fn check_type(odata_type: Option<&str>, kind: Kind) -> Result<(), GraphFailure> {
    match odata_type {
        None => Ok(()),
        Some(t) if t == kind.odata_type() => Ok(()),
        Some(t) => Err(GraphFailure::bad_request(format!(
            "A type named '{}' could not be resolved by the model; expected '{}'.",
            t.trim_start_matches('#'),
            kind.odata_type().trim_start_matches('#')
        ))),
    }
}

/// Sets a non-nullable property.
fn set<T>(slot: &mut T, field: Field<T>, property: &str) -> Result<(), GraphFailure> {
    match field {
        Field::Absent => Ok(()),
        Field::Null => Err(GraphFailure::bad_request(format!(
            "Cannot apply PATCH or POST: the property '{property}' is not nullable."
        ))),
        Field::Value(v) => {
            *slot = v;
            Ok(())
        }
    }
}

/// Sets a nullable property.
fn set_nullable<T>(slot: &mut Option<T>, field: Field<T>) {
    match field {
        Field::Absent => {}
        Field::Null => *slot = None,
        Field::Value(v) => *slot = Some(v),
    }
}

fn run_state(field: Field<String>) -> Result<Field<&'static str>, GraphFailure> {
    Ok(match field {
        Field::Absent => Field::Absent,
        Field::Null => Field::Null,
        Field::Value(name) => {
            Field::Value(RUN_STATES.into_iter().find(|m| *m == name).ok_or_else(|| {
                GraphFailure::bad_request(format!("Requested value '{name}' was not found."))
            })?)
        }
    })
}

fn date(field: Field<String>) -> Result<Field<Instant>, GraphFailure> {
    Ok(match field {
        Field::Absent => Field::Absent,
        Field::Null => Field::Null,
        Field::Value(text) => {
            let bad = || {
                GraphFailure::bad_request(format!(
                    "Cannot convert the literal '{text}' to the expected type 'Edm.DateTimeOffset'."
                ))
            };
            let i = datetime::parse(&text).map_err(|_| bad())?;
            if !(MIN_SECONDS..=MAX_SECONDS).contains(&i.seconds) {
                return Err(bad());
            }
            // Graph keeps 100 ns ticks.
            Field::Value(Instant {
                seconds: i.seconds,
                nanos: i.nanos / 100 * 100,
            })
        }
    })
}

fn new_id(field: Field<String>, ids: ClientIds) -> Result<String, GraphFailure> {
    match (ids, field) {
        (ClientIds::Ignore, _) | (_, Field::Absent) => Ok(uuid::Uuid::new_v4().to_string()),
        (ClientIds::Reject, _) => Err(GraphFailure::bad_request(
            "Invalid request body: the property 'id' is read-only and cannot be set on create.",
        )),
        (ClientIds::Honour, Field::Null) => Err(GraphFailure::bad_request(
            "Cannot apply PATCH or POST: the property 'id' is not nullable.",
        )),
        (ClientIds::Honour, Field::Value(id))
            if id.is_empty() || id.len() > 256 || id.contains('/') =>
        {
            Err(GraphFailure::bad_request(format!(
                "The key value '{id}' is not valid."
            )))
        }
        (ClientIds::Honour, Field::Value(id)) => Ok(id),
    }
}

fn check_same_id(field: Field<String>, id: &str) -> Result<(), GraphFailure> {
    match field {
        Field::Value(v) if v != id => Err(GraphFailure::bad_request(
            "The key property 'id' cannot be changed.",
        )),
        Field::Null => Err(GraphFailure::bad_request(
            "The key property 'id' cannot be changed.",
        )),
        _ => Ok(()),
    }
}

impl Entity {
    /// A new entity of `kind` from a POST body; `ids` says what happens to an `id` in it.
    pub fn create(kind: Kind, body: &[u8], ids: ClientIds) -> Result<Entity, GraphFailure> {
        match kind {
            Kind::User => {
                let b: UserStateBody = parse_body(body)?;
                check_type(b.odata_type.as_deref(), kind)?;
                let mut e = UserState {
                    id: new_id(b.id, ids)?,
                    success_device_count: 0,
                    error_device_count: 0,
                    user_principal_name: None,
                };
                e.apply(UserStateBody {
                    id: Field::Absent,
                    ..b
                })?;
                Ok(Entity::User(e))
            }
            Kind::Device => {
                let b: DeviceStateBody = parse_body(body)?;
                check_type(b.odata_type.as_deref(), kind)?;
                let mut e = DeviceState {
                    id: new_id(b.id, ids)?,
                    run_state: "unknown",
                    result_message: None,
                    last_state_update_date_time: NEVER,
                    error_code: 0,
                    error_description: None,
                };
                e.apply(DeviceStateBody {
                    id: Field::Absent,
                    ..b
                })?;
                Ok(Entity::Device(e))
            }
            Kind::Compliance => {
                let b: ComplianceStateBody = parse_body(body)?;
                check_type(b.odata_type.as_deref(), kind)?;
                let mut e = ComplianceState {
                    id: new_id(b.id, ids)?,
                    detection_state: "unknown",
                    last_state_update_date_time: NEVER,
                    expected_state_update_date_time: None,
                    last_sync_date_time: NEVER,
                    script_output: None,
                    script_error: None,
                };
                e.apply(ComplianceStateBody {
                    id: Field::Absent,
                    ..b
                })?;
                Ok(Entity::Compliance(e))
            }
        }
    }

    /// Applies a PATCH body. Nothing changes when it fails.
    pub fn patch(&mut self, body: &[u8]) -> Result<(), GraphFailure> {
        match self {
            Entity::User(e) => {
                let b: UserStateBody = parse_body(body)?;
                check_type(b.odata_type.as_deref(), Kind::User)?;
                let mut next = e.clone();
                next.apply(b)?;
                *e = next;
            }
            Entity::Device(e) => {
                let b: DeviceStateBody = parse_body(body)?;
                check_type(b.odata_type.as_deref(), Kind::Device)?;
                let mut next = e.clone();
                next.apply(b)?;
                *e = next;
            }
            Entity::Compliance(e) => {
                let b: ComplianceStateBody = parse_body(body)?;
                check_type(b.odata_type.as_deref(), Kind::Compliance)?;
                let mut next = e.clone();
                next.apply(b)?;
                *e = next;
            }
        }
        Ok(())
    }

    pub fn id(&self) -> &str {
        match self {
            Entity::User(e) => &e.id,
            Entity::Device(e) => &e.id,
            Entity::Compliance(e) => &e.id,
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Entity::User(_) => Kind::User,
            Entity::Device(_) => Kind::Device,
            Entity::Compliance(_) => Kind::Compliance,
        }
    }
}

impl UserState {
    fn apply(&mut self, b: UserStateBody) -> Result<(), GraphFailure> {
        check_same_id(b.id, &self.id)?;
        set(
            &mut self.success_device_count,
            b.success_device_count,
            "successDeviceCount",
        )?;
        set(
            &mut self.error_device_count,
            b.error_device_count,
            "errorDeviceCount",
        )?;
        set_nullable(&mut self.user_principal_name, b.user_principal_name);
        Ok(())
    }
}

impl DeviceState {
    fn apply(&mut self, b: DeviceStateBody) -> Result<(), GraphFailure> {
        check_same_id(b.id, &self.id)?;
        set(&mut self.run_state, run_state(b.run_state)?, "runState")?;
        set_nullable(&mut self.result_message, b.result_message);
        set(
            &mut self.last_state_update_date_time,
            date(b.last_state_update_date_time)?,
            "lastStateUpdateDateTime",
        )?;
        set(&mut self.error_code, b.error_code, "errorCode")?;
        set_nullable(&mut self.error_description, b.error_description);
        Ok(())
    }
}

impl ComplianceState {
    fn apply(&mut self, b: ComplianceStateBody) -> Result<(), GraphFailure> {
        check_same_id(b.id, &self.id)?;
        set(
            &mut self.detection_state,
            run_state(b.detection_state)?,
            "detectionState",
        )?;
        set(
            &mut self.last_state_update_date_time,
            date(b.last_state_update_date_time)?,
            "lastStateUpdateDateTime",
        )?;
        set_nullable(
            &mut self.expected_state_update_date_time,
            date(b.expected_state_update_date_time)?,
        );
        set(
            &mut self.last_sync_date_time,
            date(b.last_sync_date_time)?,
            "lastSyncDateTime",
        )?;
        set_nullable(&mut self.script_output, b.script_output);
        set_nullable(&mut self.script_error, b.script_error);
        Ok(())
    }
}

/// Entities by their decoded path, e.g. `deviceShellScripts/s/userRunStates/u`.
#[derive(Default)]
pub struct Store {
    entities: BTreeMap<String, Entity>,
}

impl Store {
    pub fn get(&self, path: &str) -> Option<&Entity> {
        self.entities.get(path)
    }

    pub fn get_mut(&mut self, path: &str) -> Option<&mut Entity> {
        self.entities.get_mut(path)
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entities.contains_key(path)
    }

    pub fn insert(&mut self, path: String, entity: Entity) {
        self.entities.insert(path, entity);
    }

    /// Removes an entity and everything under it.
    pub fn remove(&mut self, path: &str) -> bool {
        let found = self.entities.remove(path).is_some();
        if found {
            let prefix = format!("{path}/");
            let nested: Vec<String> = self
                .entities
                .range(prefix.clone()..)
                .take_while(|(k, _)| k.starts_with(&prefix))
                .map(|(k, _)| k.clone())
                .collect();
            for k in nested {
                self.entities.remove(&k);
            }
        }
        found
    }

    /// The entities directly in a collection.
    pub fn list(&self, collection: &str) -> Vec<&Entity> {
        let prefix = format!("{collection}/");
        self.entities
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, _)| !k[prefix.len()..].contains('/'))
            .map(|(_, e)| e)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(kind: Kind, body: serde_json::Value) -> Result<serde_json::Value, GraphFailure> {
        Entity::create(kind, body.to_string().as_bytes(), ClientIds::Honour)
            .map(|e| serde_json::to_value(e).unwrap())
    }

    #[test]
    fn stores_instants_and_answers_utc_with_seven_digits() {
        let e = create(
            Kind::Compliance,
            json!({"lastStateUpdateDateTime": "2017-01-01T00:02:58.4418045-08:00",
                   "lastSyncDateTime": "2017-01-01T08:02:49.320597+00:00",
                   "expectedStateUpdateDateTime": "2017-01-01T08:02:49.123456789012Z"}),
        )
        .unwrap();
        assert_eq!(e["lastStateUpdateDateTime"], "2017-01-01T08:02:58.4418045Z");
        assert_eq!(e["lastSyncDateTime"], "2017-01-01T08:02:49.3205970Z");
        assert_eq!(
            e["expectedStateUpdateDateTime"],
            "2017-01-01T08:02:49.1234567Z"
        );
        assert_eq!(e["detectionState"], "unknown");
        assert_eq!(e["scriptOutput"], serde_json::Value::Null);
    }

    #[test]
    fn refuses_what_graph_refuses() {
        let bad = [
            (Kind::User, json!({"nope": 1})),
            (Kind::User, json!({"successDeviceCount": "2"})),
            (Kind::User, json!({"successDeviceCount": 2.5})),
            (Kind::User, json!({"successDeviceCount": 3_000_000_000u64})),
            (Kind::User, json!({"successDeviceCount": null})),
            (
                Kind::User,
                json!({"@odata.type": "#microsoft.graph.deviceManagementScriptDeviceState"}),
            ),
            (Kind::Device, json!({"runState": "Success"})),
            (Kind::Device, json!({"runState": "RUN_STATE_SUCCESS"})),
            (
                Kind::Device,
                json!({"lastStateUpdateDateTime": "2017-01-01T00:02:58"}),
            ),
            (
                Kind::Device,
                json!({"lastStateUpdateDateTime": "yesterday"}),
            ),
            (Kind::Device, json!({"lastStateUpdateDateTime": null})),
            (Kind::Compliance, json!({"lastSyncDateTime": 5})),
            (Kind::Compliance, json!({"runState": "success"})),
        ];
        for (kind, body) in bad {
            let err = create(kind, body.clone()).unwrap_err();
            assert_eq!(err.status, 400, "{body}");
        }
    }

    #[test]
    fn accepts_what_real_clients_send() {
        let e = create(
            Kind::Device,
            json!({"runState": "scriptError", "lastStateUpdateDateTime": "2017-01-01T00:02:58+00:00",
                   "resultMessage": null, "errorCode": 9}),
        )
        .unwrap();
        assert_eq!(e["runState"], "scriptError");
        assert_eq!(e["lastStateUpdateDateTime"], "2017-01-01T00:02:58.0000000Z");
        assert_eq!(e["resultMessage"], serde_json::Value::Null);
        assert_eq!(e["id"].as_str().unwrap().len(), 36);
    }

    #[test]
    fn client_ids_are_honoured_ignored_or_rejected() {
        let body = br#"{"id": "chosen", "successDeviceCount": 1}"#;
        let honoured = Entity::create(Kind::User, body, ClientIds::Honour).unwrap();
        assert_eq!(honoured.id(), "chosen");
        let ignored = Entity::create(Kind::User, body, ClientIds::Ignore).unwrap();
        assert_ne!(ignored.id(), "chosen");
        assert!(uuid::Uuid::parse_str(ignored.id()).is_ok());
        let rejected = Entity::create(Kind::User, body, ClientIds::Reject).unwrap_err();
        assert_eq!(rejected.status, 400);
        assert!(rejected.message.contains("'id'"), "{}", rejected.message);
        // Without an id every world creates.
        for ids in ClientIds::ALL {
            assert!(Entity::create(Kind::User, b"{}", ids).is_ok());
        }
    }

    #[test]
    fn patch_is_all_or_nothing() {
        let mut e = Entity::create(
            Kind::User,
            br#"{"successDeviceCount": 1}"#,
            ClientIds::Ignore,
        )
        .unwrap();
        assert!(
            e.patch(br#"{"successDeviceCount": 5, "errorDeviceCount": "x"}"#)
                .is_err()
        );
        assert_eq!(serde_json::to_value(&e).unwrap()["successDeviceCount"], 1);
        e.patch(br#"{"userPrincipalName": "a@b"}"#).unwrap();
        e.patch(br#"{"userPrincipalName": null}"#).unwrap();
        assert_eq!(
            serde_json::to_value(&e).unwrap()["userPrincipalName"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn store_lists_direct_children_and_removes_nested_ones() {
        let mut s = Store::default();
        let e = || Entity::create(Kind::User, b"{}", ClientIds::Ignore).unwrap();
        s.insert("a/s/userRunStates/u1".into(), e());
        s.insert("a/s/userRunStates/u1/deviceRunStates/d".into(), e());
        s.insert("a/s/userRunStates/u2".into(), e());
        assert_eq!(s.list("a/s/userRunStates").len(), 2);
        assert!(s.remove("a/s/userRunStates/u1"));
        assert!(!s.contains("a/s/userRunStates/u1/deviceRunStates/d"));
        assert_eq!(s.list("a/s/userRunStates").len(), 1);
    }
}
