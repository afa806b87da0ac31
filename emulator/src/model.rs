//! The emulator's own model of Graph's run-state entities, written from
//! Graph's beta metadata (see `graph-notes.md`), not from the gateway's code:
//! property names, types, nullability and the `runState` enum members. Bodies
//! are checked against it with Graph's rules: unknown properties, wrong JSON
//! types, unknown enum names, bad dates and null for a non-nullable property
//! are all 400s, and a failed PATCH changes nothing.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer, ser::SerializeMap};
use serde_json::Value as Json;

use super::{ClientIds, dates::Instant};

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

/// The members of Graph's `runState` enum, sent as their names.
pub const RUN_STATE: [&str; 6] = [
    "unknown",
    "success",
    "fail",
    "scriptError",
    "pending",
    "notApplicable",
];

/// An EDM type the run-state entities use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    String,
    Int32,
    DateTimeOffset,
    RunState,
}

impl Type {
    pub fn edm(self) -> &'static str {
        match self {
            Type::String => "Edm.String",
            Type::Int32 => "Edm.Int32",
            Type::DateTimeOffset => "Edm.DateTimeOffset",
            Type::RunState => "microsoft.graph.runState",
        }
    }
}

/// A structural property (navigation properties such as `managedDevice` are
/// read-only and left out).
#[derive(Debug)]
pub struct Property {
    pub name: &'static str,
    pub ty: Type,
    pub nullable: bool,
}

const fn prop(name: &'static str, ty: Type, nullable: bool) -> Property {
    Property { name, ty, nullable }
}

/// An entity type: its `@odata.type` and properties besides the key `id`.
#[derive(Debug)]
pub struct EntityType {
    pub odata_type: &'static str,
    pub properties: &'static [Property],
}

impl EntityType {
    pub fn name(&self) -> &'static str {
        self.odata_type.trim_start_matches('#')
    }

    pub fn property(&self, name: &str) -> Option<(usize, &'static Property)> {
        self.properties
            .iter()
            .enumerate()
            .find(|(_, p)| p.name == name)
    }
}

pub static USER_STATE: EntityType = EntityType {
    odata_type: "#microsoft.graph.deviceManagementScriptUserState",
    properties: &[
        prop("successDeviceCount", Type::Int32, false),
        prop("errorDeviceCount", Type::Int32, false),
        prop("userPrincipalName", Type::String, true),
    ],
};

pub static DEVICE_STATE: EntityType = EntityType {
    odata_type: "#microsoft.graph.deviceManagementScriptDeviceState",
    properties: &[
        prop("runState", Type::RunState, false),
        prop("resultMessage", Type::String, true),
        prop("lastStateUpdateDateTime", Type::DateTimeOffset, false),
        prop("errorCode", Type::Int32, false),
        prop("errorDescription", Type::String, true),
    ],
};

pub static COMPLIANCE_STATE: EntityType = EntityType {
    odata_type: "#microsoft.graph.deviceComplianceScriptDeviceState",
    properties: &[
        prop("detectionState", Type::RunState, false),
        prop("lastStateUpdateDateTime", Type::DateTimeOffset, false),
        prop("expectedStateUpdateDateTime", Type::DateTimeOffset, true),
        prop("lastSyncDateTime", Type::DateTimeOffset, false),
        prop("scriptOutput", Type::String, true),
        prop("scriptError", Type::String, true),
    ],
};

/// Which entity type a collection holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    User,
    Device,
    Compliance,
}

impl Kind {
    pub fn entity_type(self) -> &'static EntityType {
        match self {
            Kind::User => &USER_STATE,
            Kind::Device => &DEVICE_STATE,
            Kind::Compliance => &COMPLIANCE_STATE,
        }
    }
}

/// A property's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    String(String),
    Int32(i32),
    Date(Instant),
    Enum(&'static str),
}

impl Value {
    /// What a new entity holds before the body is applied.
    fn initial(p: &Property) -> Value {
        match p.ty {
            _ if p.nullable => Value::Null,
            Type::String => Value::String(String::new()),
            Type::Int32 => Value::Int32(0),
            Type::DateTimeOffset => Value::Date(Instant::NEVER),
            Type::RunState => Value::Enum("unknown"),
        }
    }

    /// Checks a JSON value against a property.
    fn from_json(p: &Property, json: Json) -> Result<Value, GraphFailure> {
        let wrong = |json: &Json| {
            GraphFailure::bad_request(format!(
                "Cannot convert the literal '{json}' to the expected type '{}' of property '{}'.",
                p.ty.edm(),
                p.name
            ))
        };
        match (p.ty, json) {
            (_, Json::Null) if p.nullable => Ok(Value::Null),
            (_, Json::Null) => Err(GraphFailure::bad_request(format!(
                "Cannot apply PATCH or POST: the property '{}' is not nullable.",
                p.name
            ))),
            (Type::String, Json::String(s)) => Ok(Value::String(s)),
            (Type::Int32, Json::Number(n)) => n
                .as_i64()
                .and_then(|n| i32::try_from(n).ok())
                .map(Value::Int32)
                .ok_or_else(|| wrong(&Json::Number(n))),
            (Type::DateTimeOffset, Json::String(s)) => Instant::parse(&s)
                .map(Value::Date)
                .ok_or_else(|| wrong(&Json::String(s))),
            (Type::RunState, Json::String(s)) => RUN_STATE
                .iter()
                .find(|m| **m == s)
                .map(|m| Value::Enum(m))
                .ok_or_else(|| {
                    GraphFailure::bad_request(format!("Requested value '{s}' was not found."))
                }),
            (_, other) => Err(wrong(&other)),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Null => s.serialize_none(),
            Value::String(v) => s.serialize_str(v),
            Value::Int32(v) => s.serialize_i32(*v),
            Value::Date(v) => s.serialize_str(&v.to_graph()),
            Value::Enum(v) => s.serialize_str(v),
        }
    }
}

/// A stored entity: its key and one value per property of its type.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    kind: Kind,
    id: String,
    values: Vec<Value>,
}

/// A checked body: the `id` it carries (`Some(None)` for `"id": null`) and the
/// properties it sets.
struct Body {
    id: Option<Option<String>>,
    set: Vec<(usize, Value)>,
}

fn parse_body(kind: Kind, body: &[u8]) -> Result<Body, GraphFailure> {
    let ty = kind.entity_type();
    let object: serde_json::Map<String, Json> = serde_json::from_slice(body)
        .map_err(|e| GraphFailure::bad_request(format!("Invalid request body: {e}")))?;
    let mut out = Body {
        id: None,
        set: Vec::new(),
    };
    for (name, json) in object {
        match name.as_str() {
            "@odata.type" => match json.as_str() {
                Some(t) if t == ty.odata_type || t == ty.name() => {}
                _ => {
                    return Err(GraphFailure::bad_request(format!(
                        "A type named '{}' could not be resolved by the model; expected '{}'.",
                        json.as_str().unwrap_or_default().trim_start_matches('#'),
                        ty.name()
                    )));
                }
            },
            "id" => match json {
                Json::Null => out.id = Some(None),
                Json::String(s) => out.id = Some(Some(s)),
                other => {
                    return Err(GraphFailure::bad_request(format!(
                        "Cannot convert the literal '{other}' to the expected type 'Edm.String' of property 'id'."
                    )));
                }
            },
            _ => {
                let (at, p) = ty.property(&name).ok_or_else(|| {
                    GraphFailure::bad_request(format!(
                        "The property '{name}' does not exist on type '{}'. Make sure to only use property names that are defined by the type.",
                        ty.name()
                    ))
                })?;
                out.set.push((at, Value::from_json(p, json)?));
            }
        }
    }
    Ok(out)
}

/// The id of a new entity, per the `client_ids` setting.
fn new_id(sent: Option<Option<String>>, ids: ClientIds) -> Result<String, GraphFailure> {
    match (ids, sent) {
        (ClientIds::Reject, Some(_)) => Err(GraphFailure::bad_request(
            "Invalid request body: the property 'id' is read-only and cannot be set on create.",
        )),
        (ClientIds::Ignore, _) | (_, None | Some(None)) => Ok(uuid::Uuid::new_v4().to_string()),
        (ClientIds::Honour, Some(Some(id)))
            if id.is_empty() || id.len() > 256 || id.contains('/') =>
        {
            Err(GraphFailure::bad_request(format!(
                "The key value '{id}' is not valid."
            )))
        }
        (ClientIds::Honour, Some(Some(id))) => Ok(id),
    }
}

impl Entity {
    /// A new entity of `kind` from a POST body; `ids` says what happens to an `id` in it.
    pub fn create(kind: Kind, body: &[u8], ids: ClientIds) -> Result<Entity, GraphFailure> {
        let b = parse_body(kind, body)?;
        let mut entity = Entity {
            kind,
            id: new_id(b.id, ids)?,
            values: kind
                .entity_type()
                .properties
                .iter()
                .map(Value::initial)
                .collect(),
        };
        for (at, v) in b.set {
            entity.values[at] = v;
        }
        Ok(entity)
    }

    /// Applies a PATCH body. Nothing changes when it fails.
    pub fn patch(&mut self, body: &[u8]) -> Result<(), GraphFailure> {
        let b = parse_body(self.kind, body)?;
        if b.id
            .is_some_and(|id| id.as_deref() != Some(self.id.as_str()))
        {
            return Err(GraphFailure::bad_request(
                "The key property 'id' cannot be changed.",
            ));
        }
        for (at, v) in b.set {
            self.values[at] = v;
        }
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// The value of a property, by name.
    pub fn get(&self, name: &str) -> Option<&Value> {
        let (at, _) = self.kind.entity_type().property(name)?;
        self.values.get(at)
    }

    /// The entity as Graph writes it, with `@odata.context` when given and
    /// only the `select`ed properties (the key always) when given.
    pub fn to_json<'a>(
        &'a self,
        context: Option<&'a str>,
        select: Option<&'a [String]>,
    ) -> EntityJson<'a> {
        EntityJson {
            entity: self,
            context,
            select,
        }
    }
}

/// An entity ready to serialize in Graph's property order.
pub struct EntityJson<'a> {
    entity: &'a Entity,
    context: Option<&'a str>,
    select: Option<&'a [String]>,
}

impl Serialize for EntityJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let ty = self.entity.kind.entity_type();
        let mut map = s.serialize_map(None)?;
        if let Some(context) = self.context {
            map.serialize_entry("@odata.context", context)?;
        }
        map.serialize_entry("@odata.type", ty.odata_type)?;
        map.serialize_entry("id", &self.entity.id)?;
        for (p, v) in ty.properties.iter().zip(&self.entity.values) {
            if self
                .select
                .is_none_or(|names| names.iter().any(|n| n == p.name))
            {
                map.serialize_entry(p.name, v)?;
            }
        }
        map.end()
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

    /// The entities directly in a collection, in key order, after the key
    /// `after` when given.
    pub fn list<'a>(
        &'a self,
        collection: &str,
        after: Option<&str>,
    ) -> impl Iterator<Item = &'a Entity> + 'a {
        let prefix = format!("{collection}/");
        let skip = prefix.len();
        let start = match after {
            Some(id) => std::ops::Bound::Excluded(format!("{prefix}{id}")),
            None => std::ops::Bound::Included(prefix.clone()),
        };
        self.entities
            .range((start, std::ops::Bound::Unbounded))
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .filter(move |(k, _)| !k[skip..].contains('/'))
            .map(|(_, e)| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn create(kind: Kind, body: Json) -> Result<Json, GraphFailure> {
        Entity::create(kind, body.to_string().as_bytes(), ClientIds::Honour)
            .map(|e| serde_json::to_value(e.to_json(None, None)).unwrap())
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
        assert_eq!(e["scriptOutput"], Json::Null);
        assert_eq!(
            e["@odata.type"],
            "#microsoft.graph.deviceComplianceScriptDeviceState"
        );
    }

    #[test]
    fn new_entities_hold_graphs_defaults() {
        let e = create(Kind::Device, json!({})).unwrap();
        assert_eq!(e["runState"], "unknown");
        assert_eq!(e["errorCode"], 0);
        assert_eq!(e["lastStateUpdateDateTime"], "0001-01-01T00:00:00.0000000Z");
        assert_eq!(e["resultMessage"], Json::Null);
        let keys: Vec<_> = e.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys.len(),
            2 + DEVICE_STATE.properties.len(),
            "@odata.type, id and every property: {keys:?}"
        );
    }

    #[test]
    fn refuses_what_graph_refuses() {
        let bad = [
            (Kind::User, json!({"nope": 1})),
            (Kind::User, json!({"successDeviceCount": "2"})),
            (Kind::User, json!({"successDeviceCount": 2.5})),
            (Kind::User, json!({"successDeviceCount": 3_000_000_000u64})),
            (Kind::User, json!({"successDeviceCount": null})),
            (Kind::User, json!({"userPrincipalName": 5})),
            (Kind::User, json!({"id": 5})),
            (Kind::User, json!({"id": ""})),
            (Kind::User, json!({"@odata.context": "x"})),
            (
                Kind::User,
                json!({"@odata.type": "#microsoft.graph.deviceManagementScriptDeviceState"}),
            ),
            (Kind::Device, json!({"runState": "Success"})),
            (Kind::Device, json!({"runState": "RUN_STATE_SUCCESS"})),
            (Kind::Device, json!({"runState": 1})),
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
        for body in ["", "[]", "{", "null"] {
            assert!(Entity::create(Kind::User, body.as_bytes(), ClientIds::Ignore).is_err());
        }
    }

    #[test]
    fn accepts_what_real_clients_send() {
        let e = create(
            Kind::Device,
            json!({"runState": "scriptError", "lastStateUpdateDateTime": "2017-01-01T00:02:58+00:00",
                   "resultMessage": null, "errorCode": 9,
                   "@odata.type": "#microsoft.graph.deviceManagementScriptDeviceState"}),
        )
        .unwrap();
        assert_eq!(e["runState"], "scriptError");
        assert_eq!(e["lastStateUpdateDateTime"], "2017-01-01T00:02:58.0000000Z");
        assert_eq!(e["resultMessage"], Json::Null);
        assert_eq!(e["errorCode"], 9);
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
        let before = e.clone();
        assert!(
            e.patch(br#"{"successDeviceCount": 5, "errorDeviceCount": "x"}"#)
                .is_err()
        );
        assert_eq!(e, before);
        assert!(e.patch(br#"{"id": "other"}"#).is_err());
        let same_id = format!(r#"{{"id": "{}", "errorDeviceCount": 2}}"#, e.id());
        e.patch(same_id.as_bytes()).unwrap();
        assert_eq!(e.get("errorDeviceCount"), Some(&Value::Int32(2)));
        e.patch(br#"{"userPrincipalName": "a@b"}"#).unwrap();
        e.patch(br#"{"userPrincipalName": null}"#).unwrap();
        assert_eq!(e.get("userPrincipalName"), Some(&Value::Null));
    }

    #[test]
    fn select_keeps_the_key_and_the_named_properties() {
        let e = Entity::create(Kind::Device, br#"{"errorCode": 3}"#, ClientIds::Ignore).unwrap();
        let select = ["errorCode".to_string()];
        let json = serde_json::to_value(e.to_json(Some("ctx"), Some(&select))).unwrap();
        let keys: Vec<_> = json.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys.len(),
            4,
            "@odata.context, @odata.type, id, errorCode: {keys:?}"
        );
        assert_eq!(json["errorCode"], 3);
    }

    #[test]
    fn store_lists_direct_children_and_removes_nested_ones() {
        let mut s = Store::default();
        let e = || Entity::create(Kind::User, b"{}", ClientIds::Ignore).unwrap();
        s.insert("a/s/userRunStates/u1".into(), e());
        s.insert("a/s/userRunStates/u1/deviceRunStates/d".into(), e());
        s.insert("a/s/userRunStates/u2".into(), e());
        s.insert("a/s/userRunStatesX/u3".into(), e());
        assert_eq!(s.list("a/s/userRunStates", None).count(), 2);
        assert_eq!(s.list("a/s/userRunStates", Some("u1")).count(), 1);
        assert!(s.remove("a/s/userRunStates/u1"));
        assert!(!s.contains("a/s/userRunStates/u1/deviceRunStates/d"));
        assert_eq!(s.list("a/s/userRunStates", None).count(), 1);
    }
}
