//! Checks the gateway's API (`proto/` and the tables of
//! `src/convert/schema.rs`) against Graph's own definitions, the CSDL excerpt
//! `graph-metadata/runstates.xml`.
//!
//! `build.rs` runs it and fails the build on any disagreement; the crate's
//! unit tests run it on edited excerpts. The rules:
//!
//! - **runState.** Every member has a translation entry (`RUN_STATES`) whose
//!   proto value exists in the enum; every entry names a member and a value;
//!   every proto value but the zero one (UNSPECIFIED, "not set") has an entry.
//! - **Properties.** Every property of the three state types (but the key
//!   `id`, from `graph.entity`) has an entry in its entity's `fields`, naming a
//!   proto field of its message; every entry names a property, and every proto
//!   field but `name` and `id` has an entry. Types: `Edm.Int32` → `int32`,
//!   `Edm.String` → `string`, `Edm.DateTimeOffset` →
//!   `google.protobuf.Timestamp`, `runState` → the RunState enum; a property
//!   of any other type fails until a rule is added here.
//! - **Nullability.** Graph's `Nullable` (absent means nullable) must match
//!   (a) the entry's `nullable`, which decides whether the gateway sends
//!   `null` or refuses to clear the field; (b) for scalar, string and enum
//!   fields, proto3 presence: `optional` if and only if nullable, since an
//!   unset optional field is how a caller says null, and a field Graph never
//!   holds null in has nothing to say; (c) for message fields (Timestamp),
//!   which always have presence, the field's leading comment, which says
//!   `(nullable` if and only if Graph's property is. `field_behavior` tells
//!   whether a field is needed on input (all are OPTIONAL), not whether it can
//!   be null, so it is not used.
//! - **Navigation.** Each script kind in `SCRIPTS` has `userRunStates` if and
//!   only if it holds user states, typed as the table says, and
//!   `deviceRunStates` of its device-state type, both contained; a user
//!   state's `deviceRunStates` holds `USER_STATE_DEVICE_STATES`. Every type of
//!   the excerpt that has either property is a kind in `SCRIPTS` or the user
//!   state.

use std::collections::BTreeMap;

use prost_types::{
    DescriptorProto, EnumDescriptorProto, FieldDescriptorProto, FileDescriptorProto,
    FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};

use super::schema::{self, Entity};

const EDM: &str = "http://docs.oasis-open.org/odata/ns/edm";
const TABLES: &str = "src/convert/schema.rs";
const TIMESTAMP: &str = ".google.protobuf.Timestamp";

/// Every disagreement between the excerpt and the gateway, each naming the
/// member or property; `Ok` when there is none.
pub fn check(xml: &str, protos: &FileDescriptorSet) -> Result<(), Vec<String>> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| vec![format!("unreadable XML: {e}")])?;
    let csdl = Csdl::read(&doc).map_err(|e| vec![e])?;
    let protos = Protos(protos);
    let mut problems = Vec::new();
    run_states(&csdl, &protos, &mut problems);
    for entity in schema::ENTITIES {
        properties(entity, &csdl, &protos, &mut problems);
    }
    navigation(&csdl, &mut problems);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

struct Property {
    name: String,
    ty: String,
    nullable: bool,
}

struct Navigation {
    name: String,
    ty: String,
    contained: bool,
}

struct EntityType {
    base: Option<String>,
    properties: Vec<Property>,
    navigation: Vec<Navigation>,
}

/// What the excerpt's schema defines, by local name.
struct Csdl {
    namespace: String,
    alias: Option<String>,
    enums: BTreeMap<String, Vec<String>>,
    entities: BTreeMap<String, EntityType>,
}

impl Csdl {
    fn read(doc: &roxmltree::Document) -> Result<Csdl, String> {
        let schema = doc
            .descendants()
            .find(|n| n.has_tag_name((EDM, "Schema")))
            .ok_or("no edm:Schema element")?;
        let mut csdl = Csdl {
            namespace: schema.attribute("Namespace").unwrap_or_default().into(),
            alias: schema.attribute("Alias").map(str::to_owned),
            enums: BTreeMap::new(),
            entities: BTreeMap::new(),
        };
        let named = |n: &roxmltree::Node| n.attribute("Name").unwrap_or_default().to_owned();
        for node in schema.children().filter(|n| n.is_element()) {
            let children = || node.children().filter(|c| c.is_element());
            if node.has_tag_name((EDM, "EnumType")) {
                let members = children()
                    .filter(|c| c.has_tag_name((EDM, "Member")))
                    .map(|c| named(&c))
                    .collect();
                csdl.enums.insert(named(&node), members);
            } else if node.has_tag_name((EDM, "EntityType")) {
                let properties = children()
                    .filter(|c| c.has_tag_name((EDM, "Property")))
                    .map(|c| Property {
                        name: named(&c),
                        ty: c.attribute("Type").unwrap_or_default().into(),
                        nullable: c.attribute("Nullable") != Some("false"),
                    })
                    .collect();
                let navigation = children()
                    .filter(|c| c.has_tag_name((EDM, "NavigationProperty")))
                    .map(|c| Navigation {
                        name: named(&c),
                        ty: c.attribute("Type").unwrap_or_default().into(),
                        contained: c.attribute("ContainsTarget") == Some("true"),
                    })
                    .collect();
                let entity = EntityType {
                    base: node.attribute("BaseType").map(str::to_owned),
                    properties,
                    navigation,
                };
                csdl.entities.insert(named(&node), entity);
            }
        }
        Ok(csdl)
    }

    /// The local name of a type of this schema (`graph.runState` or
    /// `microsoft.graph.runState` → `runState`).
    fn local<'a>(&self, ty: &'a str) -> Option<&'a str> {
        self.alias
            .iter()
            .chain([&self.namespace])
            .find_map(|prefix| ty.strip_prefix(prefix.as_str())?.strip_prefix('.'))
    }

    /// The local name of the element type of `Collection(…)`.
    fn collection_of<'a>(&self, ty: &'a str) -> Option<&'a str> {
        self.local(ty.strip_prefix("Collection(")?.strip_suffix(')')?)
    }
}

/// The compiled protos.
struct Protos<'a>(&'a FileDescriptorSet);

impl<'a> Protos<'a> {
    fn top_level<T>(
        &self,
        full_name: &str,
        items: impl Fn(&'a FileDescriptorProto) -> &'a [T],
        name: impl Fn(&T) -> &str,
    ) -> Option<(&'a FileDescriptorProto, usize, &'a T)> {
        self.0.file.iter().find_map(|file| {
            let local = full_name.strip_prefix(file.package())?.strip_prefix('.')?;
            let (index, item) = items(file)
                .iter()
                .enumerate()
                .find(|(_, item)| name(item) == local)?;
            Some((file, index, item))
        })
    }

    fn message(&self, full_name: &str) -> Option<Message<'a>> {
        self.top_level(full_name, |f| &f.message_type, |m| m.name())
            .map(|(file, index, descriptor)| Message {
                file,
                index,
                descriptor,
            })
    }

    fn enumeration(&self, full_name: &str) -> Option<&'a EnumDescriptorProto> {
        self.top_level(full_name, |f| &f.enum_type, |e| e.name())
            .map(|(_, _, e)| e)
    }
}

struct Message<'a> {
    file: &'a FileDescriptorProto,
    index: usize,
    descriptor: &'a DescriptorProto,
}

impl<'a> Message<'a> {
    fn field(&self, name: &str) -> Option<(usize, &'a FieldDescriptorProto)> {
        self.descriptor
            .field
            .iter()
            .enumerate()
            .find(|(_, f)| f.name() == name)
    }

    /// The leading comment of the field at `index` (source info is kept).
    fn comment(&self, index: usize) -> &'a str {
        // Path: message_type (4), the message, field (2), the field.
        let path = [4, self.index as i32, 2, index as i32];
        self.file
            .source_code_info
            .iter()
            .flat_map(|info| &info.location)
            .find(|l| l.path == path)
            .map_or("", |l| l.leading_comments())
    }
}

fn snake(camel: &str) -> String {
    let mut out = String::new();
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

fn run_states(csdl: &Csdl, protos: &Protos, problems: &mut Vec<String>) {
    let Some(members) = csdl.enums.get("runState") else {
        problems.push("the excerpt has no runState enum".into());
        return;
    };
    let enum_name = schema::RUN_STATE_ENUM;
    let Some(proto) = protos.enumeration(enum_name) else {
        problems.push(format!("proto enum {enum_name} is missing"));
        return;
    };
    let has_value = |name: &str| proto.value.iter().any(|v| v.name() == name);
    for member in members {
        match schema::RUN_STATES.iter().find(|e| e.graph == *member) {
            None => {
                let value = format!("RUN_STATE_{}", snake(member).to_ascii_uppercase());
                let proto_part = if has_value(&value) {
                    String::new()
                } else {
                    format!(" and a value {value} to proto enum {enum_name}")
                };
                problems.push(format!(
                    "Graph's runState member `{member}` is unknown to the gateway: add an entry \
                     {{ proto: \"{value}\", graph: \"{member}\" }} to RUN_STATES in {TABLES}{proto_part}"
                ));
            }
            Some(entry) if !has_value(entry.proto) => problems.push(format!(
                "Graph's runState member `{member}` translates to {}, which proto enum \
                 {enum_name} does not have",
                entry.proto
            )),
            Some(_) => {}
        }
    }
    for entry in schema::RUN_STATES {
        if !members.iter().any(|m| m == entry.graph) {
            problems.push(format!(
                "the translation entry for runState member `{}` ({}) in {TABLES} names no \
                 member of Graph's runState",
                entry.graph, entry.proto
            ));
        }
    }
    for value in &proto.value {
        let name = value.name();
        if value.number() != 0 && !schema::RUN_STATES.iter().any(|e| e.proto == name) {
            problems.push(format!(
                "proto enum value {name} has no runState member: no entry in RUN_STATES in {TABLES}"
            ));
        }
        if value.number() == 0 && schema::RUN_STATES.iter().any(|e| e.proto == name) {
            problems.push(format!(
                "proto enum value {name} is the zero value (\"not set\") and must not translate \
                 to a runState member"
            ));
        }
    }
}

/// The proto type a Graph type maps to, as written in a .proto file.
fn proto_type(csdl: &Csdl, ty: &str) -> Option<&'static str> {
    match ty {
        "Edm.Int32" => Some("int32"),
        "Edm.String" => Some("string"),
        "Edm.DateTimeOffset" => Some("google.protobuf.Timestamp"),
        _ if csdl.local(ty) == Some("runState") => Some("RunState"),
        _ => None,
    }
}

/// Whether a proto field has the type a Graph type maps to.
fn fits(csdl: &Csdl, ty: &str, field: &FieldDescriptorProto) -> bool {
    let enum_name = format!(".{}", schema::RUN_STATE_ENUM);
    field.label() != Label::Repeated
        && match proto_type(csdl, ty) {
            Some("int32") => field.r#type() == Type::Int32,
            Some("string") => field.r#type() == Type::String,
            Some("google.protobuf.Timestamp") => {
                field.r#type() == Type::Message && field.type_name() == TIMESTAMP
            }
            Some("RunState") => field.r#type() == Type::Enum && field.type_name() == enum_name,
            _ => false,
        }
}

fn nullability(nullable: bool) -> &'static str {
    if nullable { "nullable" } else { "not nullable" }
}

fn properties(entity: &Entity, csdl: &Csdl, protos: &Protos, problems: &mut Vec<String>) {
    let graph = entity.graph;
    let Some(ty) = csdl.entities.get(graph) else {
        problems.push(format!("the excerpt has no entity type {graph}"));
        return;
    };
    let Some(message) = protos.message(entity.proto) else {
        problems.push(format!("proto message {} is missing", entity.proto));
        return;
    };
    let expected_type = format!("#{}.{graph}", csdl.namespace);
    if entity.odata_type != expected_type {
        problems.push(format!(
            "{graph}: the @odata.type in {TABLES} is {}, Graph's is {expected_type}",
            entity.odata_type
        ));
    }
    let base = ty.base.as_deref().and_then(|b| csdl.local(b));
    if base != Some("entity") {
        problems.push(format!(
            "{graph} derives from {}, not graph.entity: the check knows only graph.entity's `id`",
            ty.base.as_deref().unwrap_or("nothing")
        ));
    }
    let id = message.field("id").map(|(_, f)| f);
    if id.is_none_or(|f| f.r#type() != Type::String) {
        problems.push(format!(
            "{graph}.id (the key, Edm.String) has no string field `id` in {}",
            entity.proto
        ));
    }
    for property in &ty.properties {
        let name = &property.name;
        let what = format!(
            "Graph's property {graph}.{name} ({}, {})",
            property.ty,
            nullability(property.nullable)
        );
        let Some(entry) = entity.fields.iter().find(|w| w.graph == *name) else {
            let declared = match proto_type(csdl, &property.ty) {
                Some(t) if property.nullable && !t.contains('.') => format!("optional {t}"),
                Some(t) => t.to_owned(),
                None => format!("(no proto type is known for {})", property.ty),
            };
            problems.push(format!(
                "{what} is unknown to the gateway: add it to the fields of {graph} in {TABLES} \
                 and a field `{declared} {}` to proto message {}",
                snake(name),
                entity.proto
            ));
            continue;
        };
        if entry.nullable != property.nullable {
            problems.push(format!(
                "{what}: its entry in {TABLES} says {}",
                nullability(entry.nullable)
            ));
        }
        let Some((index, field)) = message.field(entry.proto) else {
            problems.push(format!(
                "{what} maps to proto field {}, which {} does not have",
                entry.proto, entity.proto
            ));
            continue;
        };
        let Some(wanted) = proto_type(csdl, &property.ty) else {
            problems.push(format!(
                "{what}: no rule maps {} to a proto type (build/csdl.rs)",
                property.ty
            ));
            continue;
        };
        if !fits(csdl, &property.ty, field) {
            problems.push(format!(
                "{what} maps to proto field {}.{}, which is not a single {wanted}",
                entity.proto, entry.proto
            ));
            continue;
        }
        if field.r#type() != Type::Message && field.proto3_optional() != property.nullable {
            let want = if property.nullable {
                "must be `optional` (an unset field is null)"
            } else {
                "must not be `optional` (Graph never holds null there)"
            };
            problems.push(format!(
                "{what}: proto field {}.{} {want}",
                entity.proto, entry.proto
            ));
        }
        let says_nullable = message.comment(index).contains("(nullable");
        if says_nullable != property.nullable {
            let want = if property.nullable {
                "must say `(nullable` in its comment"
            } else {
                "says `(nullable` in its comment but must not"
            };
            problems.push(format!(
                "{what}: proto field {}.{} {want}",
                entity.proto, entry.proto
            ));
        }
    }
    for entry in entity.fields {
        if !ty.properties.iter().any(|p| p.name == entry.graph) {
            problems.push(format!(
                "the entry {} → {} in the fields of {graph} in {TABLES} names no property of \
                 Graph's {graph}",
                entry.proto, entry.graph
            ));
        }
    }
    for field in &message.descriptor.field {
        let name = field.name();
        if name != "name" && name != "id" && !entity.fields.iter().any(|w| w.proto == name) {
            problems.push(format!(
                "proto field {}.{name} maps to no property of Graph's {graph}: no entry in the \
                 fields of {graph} in {TABLES}",
                entity.proto
            ));
        }
    }
}

/// The entity a contained collection holds, if `ty` has it.
fn contained<'a>(csdl: &Csdl, ty: &'a EntityType, name: &str) -> Option<Result<&'a str, String>> {
    let nav = ty.navigation.iter().find(|n| n.name == name)?;
    Some(match csdl.collection_of(&nav.ty) {
        Some(of) if nav.contained => Ok(of),
        Some(_) => Err(format!("{name} is not contained (ContainsTarget)")),
        None => Err(format!(
            "{name} is not a collection of this schema ({})",
            nav.ty
        )),
    })
}

fn navigation(csdl: &Csdl, problems: &mut Vec<String>) {
    let user = schema::USER_STATES;
    let device = schema::DEVICE_STATES;
    let mut expected: Vec<(&str, Option<&str>, Option<&str>)> = schema::SCRIPTS
        .iter()
        .map(|s| (s.graph, s.user_states, Some(s.device_states)))
        .collect();
    expected.push((
        schema::USER_STATE.graph,
        None,
        Some(schema::USER_STATE_DEVICE_STATES),
    ));
    for (graph, users, devices) in &expected {
        let Some(ty) = csdl.entities.get(*graph) else {
            problems.push(format!("the excerpt has no entity type {graph}"));
            continue;
        };
        for (name, wanted) in [(user, users), (device, devices)] {
            match (contained(csdl, ty, name), wanted) {
                (None, None) => {}
                (None, Some(want)) => problems.push(format!(
                    "Graph's {graph} has no navigation property {name}, but the gateway accepts \
                     {want} names under it (SCRIPTS in {TABLES})"
                )),
                (Some(Err(why)), _) => problems.push(format!("Graph's {graph}: {why}")),
                (Some(Ok(of)), None) => problems.push(format!(
                    "Graph's {graph}.{name} holds {of}, but the gateway accepts no names under \
                     {graph}/{name} (SCRIPTS in {TABLES})"
                )),
                (Some(Ok(of)), Some(want)) if of != *want => problems.push(format!(
                    "Graph's {graph}.{name} holds {of}, but the gateway reads it as {want} \
                     (SCRIPTS in {TABLES})"
                )),
                (Some(Ok(_)), Some(_)) => {}
            }
        }
    }
    for (graph, ty) in &csdl.entities {
        let holds_states = ty
            .navigation
            .iter()
            .any(|n| n.name == user || n.name == device);
        if holds_states && !expected.iter().any(|(g, _, _)| g == graph) {
            problems.push(format!(
                "Graph's {graph} holds run states ({user} or {device}), but the gateway accepts \
                 no names under it: add its kind to SCRIPTS in {TABLES}"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    const EXCERPT: &str = include_str!("../graph-metadata/runstates.xml");

    fn protos() -> FileDescriptorSet {
        FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap()
    }

    /// The problems found in the excerpt with `from` replaced by `to` (once).
    fn problems(from: &str, to: &str) -> Vec<String> {
        assert_eq!(EXCERPT.matches(from).count(), 1, "{from}");
        let xml = EXCERPT.replacen(from, to, 1);
        check(&xml, &protos()).unwrap_err()
    }

    const DEVICE_STATE_START: &str =
        r#"<EntityType Name="deviceManagementScriptDeviceState" BaseType="graph.entity">"#;

    #[test]
    fn the_excerpt_agrees_with_the_gateway() {
        assert_eq!(check(EXCERPT, &protos()), Ok(()));
    }

    #[test]
    fn a_new_run_state_member_is_named() {
        let found = problems(
            r#"<Member Name="notApplicable" Value="5" />"#,
            r#"<Member Name="notApplicable" Value="5" />
        <Member Name="quarantined" Value="6" />"#,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("`quarantined`"), "{found:?}");
        assert!(found[0].contains("RUN_STATE_QUARANTINED"), "{found:?}");
    }

    #[test]
    fn a_dropped_run_state_member_is_named() {
        let found = problems(r#"<Member Name="pending" Value="4" />"#, "");
        assert!(found.iter().any(|p| p.contains("`pending`")), "{found:?}");
        assert!(
            found.iter().any(|p| p.contains("RUN_STATE_PENDING")),
            "{found:?}"
        );
    }

    #[test]
    fn a_new_device_state_property_is_named() {
        let found = problems(
            DEVICE_STATE_START,
            &format!(
                r#"{DEVICE_STATE_START}
        <Property Name="retryCount" Type="Edm.Int32" Nullable="false" />"#
            ),
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("deviceManagementScriptDeviceState.retryCount"),
            "{found:?}"
        );
        assert!(found[0].contains("`int32 retry_count`"), "{found:?}");
    }

    #[test]
    fn a_changed_type_or_nullability_is_named() {
        let found = problems(
            r#"<Property Name="errorCode" Type="Edm.Int32" Nullable="false">"#,
            r#"<Property Name="errorCode" Type="Edm.String" Nullable="false">"#,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("deviceManagementScriptDeviceState.errorCode"),
            "{found:?}"
        );
        assert!(found[0].contains("not a single string"), "{found:?}");

        // A nullable string: the table, the proto's `optional` and its comment disagree.
        let found = problems(
            r#"<Property Name="errorDescription" Type="Edm.String">"#,
            r#"<Property Name="errorDescription" Type="Edm.String" Nullable="false">"#,
        );
        assert_eq!(found.len(), 3, "{found:?}");
        assert!(
            found
                .iter()
                .all(|p| p.contains("deviceManagementScriptDeviceState.errorDescription")),
            "{found:?}"
        );

        // A timestamp: presence says nothing, so the table and the comment do.
        let found = problems(
            r#"<Property Name="lastSyncDateTime" Type="Edm.DateTimeOffset" Nullable="false">"#,
            r#"<Property Name="lastSyncDateTime" Type="Edm.DateTimeOffset">"#,
        );
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(found[1].contains("must say `(nullable`"), "{found:?}");
    }

    #[test]
    fn a_dropped_property_is_named() {
        let found = problems(
            r#"<Property Name="scriptOutput" Type="Edm.String">
          <Annotation Term="Org.OData.Core.V1.Description" String="Output of the detection script" />
        </Property>"#,
            "",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("script_output → scriptOutput"),
            "{found:?}"
        );
    }

    #[test]
    fn navigation_changes_are_named() {
        // Compliance scripts gaining user run states.
        let found = problems(
            r#"<NavigationProperty Name="deviceRunStates" Type="Collection(graph.deviceComplianceScriptDeviceState)" ContainsTarget="true">"#,
            r#"<NavigationProperty Name="userRunStates" Type="Collection(graph.deviceManagementScriptUserState)" ContainsTarget="true" />
        <NavigationProperty Name="deviceRunStates" Type="Collection(graph.deviceComplianceScriptDeviceState)" ContainsTarget="true">"#,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("deviceComplianceScript.userRunStates"),
            "{found:?}"
        );

        // A script kind the gateway does not know.
        let found = problems(
            r#"</Schema>"#,
            r#"  <EntityType Name="deviceHealthScript" BaseType="graph.entity">
        <NavigationProperty Name="deviceRunStates" Type="Collection(graph.deviceHealthScriptDeviceState)" ContainsTarget="true" />
      </EntityType>
    </Schema>"#,
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("deviceHealthScript "), "{found:?}");
    }

    #[test]
    fn unreadable_xml_is_reported() {
        let found = check("<edmx:Edmx", &protos()).unwrap_err();
        assert!(found[0].starts_with("unreadable XML"), "{found:?}");
    }
}
