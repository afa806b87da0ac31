//! The emulator's model checked against Graph's own definitions: the CSDL
//! excerpt `graph-metadata/runstates.xml`, which the gateway's build checks
//! too. Both sides read the XML; neither reads the other's code.
//!
//! - **runState.** The members are exactly [`RUN_STATE`], and a body carrying
//!   each is accepted.
//! - **Properties.** Each state type's properties (besides the key `id` of
//!   `graph.entity`) are exactly its [`EntityType`]'s, with the same EDM type
//!   and nullability, and a stored entity is served with exactly them.
//! - **Navigation.** A script kind has `userRunStates` if and only if the
//!   emulator serves user states under it, and `deviceRunStates` of the type
//!   it serves there; a user state's `deviceRunStates` likewise. Every type of
//!   the excerpt with either property is a script kind the emulator serves,
//!   or the user state.

use std::collections::BTreeMap;

use super::{
    ClientIds,
    model::{Entity, EntityType, Kind, RUN_STATE},
    paths::{self, SCRIPTS, Target},
};

/// Graph's definitions, as the gateway's build reads them.
const EXCERPT: &str = include_str!("../../graph-metadata/runstates.xml");
const EDM: &str = "http://docs.oasis-open.org/odata/ns/edm";

/// A `Property` or `NavigationProperty`: name, type, and `Nullable` (for a
/// property) or `ContainsTarget` (for a navigation property).
struct Member {
    name: String,
    ty: String,
    flag: bool,
}

struct Type {
    base: Option<String>,
    properties: Vec<Member>,
    navigation: Vec<Member>,
}

/// The excerpt's enums and entity types by local name; types written with
/// the namespace or its alias are resolved to local names.
struct Csdl {
    prefixes: Vec<String>,
    enums: BTreeMap<String, Vec<String>>,
    types: BTreeMap<String, Type>,
}

impl Csdl {
    fn parse(xml: &str) -> Result<Csdl, String> {
        let doc = roxmltree::Document::parse(xml).map_err(|e| format!("unreadable XML: {e}"))?;
        let schema = doc
            .descendants()
            .find(|n| n.has_tag_name((EDM, "Schema")))
            .ok_or("no Schema element")?;
        let prefixes = ["Namespace", "Alias"]
            .iter()
            .filter_map(|a| schema.attribute(*a))
            .map(|p| format!("{p}."))
            .collect();
        let name = |n: roxmltree::Node| n.attribute("Name").unwrap_or_default().to_owned();
        let members = |n: roxmltree::Node, tag: &str, flag: fn(roxmltree::Node) -> bool| {
            n.children()
                .filter(|c| c.has_tag_name((EDM, tag)))
                .map(|c| Member {
                    name: name(c),
                    ty: c.attribute("Type").unwrap_or_default().to_owned(),
                    flag: flag(c),
                })
                .collect()
        };
        let mut csdl = Csdl {
            prefixes,
            enums: BTreeMap::new(),
            types: BTreeMap::new(),
        };
        for node in schema.children() {
            if node.has_tag_name((EDM, "EnumType")) {
                let values = node
                    .children()
                    .filter(|c| c.has_tag_name((EDM, "Member")))
                    .map(name)
                    .collect();
                csdl.enums.insert(name(node), values);
            } else if node.has_tag_name((EDM, "EntityType")) {
                let ty = Type {
                    base: node.attribute("BaseType").map(str::to_owned),
                    properties: members(node, "Property", |c| {
                        c.attribute("Nullable") != Some("false")
                    }),
                    navigation: members(node, "NavigationProperty", |c| {
                        c.attribute("ContainsTarget") == Some("true")
                    }),
                };
                csdl.types.insert(name(node), ty);
            }
        }
        Ok(csdl)
    }

    /// `graph.runState` and `microsoft.graph.runState` → `runState`; EDM
    /// types (`Edm.String`) are left as they are.
    fn local<'a>(&self, ty: &'a str) -> &'a str {
        self.prefixes
            .iter()
            .find_map(|p| ty.strip_prefix(p.as_str()))
            .unwrap_or(ty)
    }

    /// The local name of the element type of `Collection(…)`.
    fn collection_of<'a>(&self, ty: &'a str) -> Option<&'a str> {
        let inner = ty.strip_prefix("Collection(")?.strip_suffix(')')?;
        Some(self.local(inner))
    }
}

/// The local name of an emulator type (`microsoft.graph.x` → `x`).
fn local_name(ty: &EntityType) -> &'static str {
    ty.name().trim_start_matches("microsoft.graph.")
}

/// Every disagreement between the excerpt and the emulator, each naming the
/// member, property or navigation property.
fn disagreements(xml: &str) -> Vec<String> {
    let csdl = match Csdl::parse(xml) {
        Ok(csdl) => csdl,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    run_states(&csdl, &mut problems);
    for kind in [Kind::User, Kind::Device, Kind::Compliance] {
        properties(&csdl, kind, &mut problems);
    }
    navigation(&csdl, &mut problems);
    problems
}

fn run_states(csdl: &Csdl, problems: &mut Vec<String>) {
    let Some(members) = csdl.enums.get("runState") else {
        problems.push("the excerpt has no runState enum".into());
        return;
    };
    for m in members {
        if !RUN_STATE.contains(&m.as_str()) {
            problems.push(format!(
                "runState member `{m}` is in Graph's metadata but not in the emulator's RUN_STATE"
            ));
        }
        // Accepted wherever a run state goes.
        for (kind, property) in [
            (Kind::Device, "runState"),
            (Kind::Compliance, "detectionState"),
        ] {
            let body = serde_json::json!({ property: m }).to_string();
            if let Err(f) = Entity::create(kind, body.as_bytes(), ClientIds::Ignore) {
                problems.push(format!(
                    "runState member `{m}` is refused in `{property}`: {}",
                    f.message
                ));
            }
        }
    }
    for m in RUN_STATE {
        if !members.iter().any(|x| x == m) {
            problems.push(format!(
                "runState member `{m}` of the emulator is not in Graph's metadata"
            ));
        }
    }
}

fn properties(csdl: &Csdl, kind: Kind, problems: &mut Vec<String>) {
    let ours = kind.entity_type();
    let name = local_name(ours);
    let Some(graph) = csdl.types.get(name) else {
        problems.push(format!("entity type `{name}` is not in Graph's metadata"));
        return;
    };
    if graph.base.as_deref().map(|b| csdl.local(b)) != Some("entity") {
        problems.push(format!(
            "`{name}` does not derive from graph.entity (the key `id`) in Graph's metadata"
        ));
    }
    for p in &graph.properties {
        let Some((_, mine)) = ours.property(&p.name) else {
            problems.push(format!(
                "property `{name}.{}` ({}) is in Graph's metadata but unknown to the emulator",
                p.name, p.ty
            ));
            continue;
        };
        let edm = mine.ty.edm();
        if csdl.local(&p.ty) != csdl.local(edm) {
            problems.push(format!(
                "property `{name}.{}` is {} in Graph's metadata but {edm} in the emulator",
                p.name, p.ty
            ));
        }
        if p.flag != mine.nullable {
            problems.push(format!(
                "property `{name}.{}` is {} in Graph's metadata but {} in the emulator",
                p.name,
                nullable(p.flag),
                nullable(mine.nullable)
            ));
        }
    }
    for mine in ours.properties {
        if !graph.properties.iter().any(|p| p.name == mine.name) {
            problems.push(format!(
                "property `{name}.{}` of the emulator is not in Graph's metadata",
                mine.name
            ));
        }
    }
    // What the emulator serves: `@odata.type`, `id` and Graph's properties.
    let served = Entity::create(kind, b"{}", ClientIds::Ignore)
        .map(|e| serde_json::to_value(e.to_json(None, None)).unwrap_or_default());
    let mut keys: Vec<String> = match served {
        Ok(serde_json::Value::Object(o)) => o.keys().cloned().collect(),
        other => {
            problems.push(format!("cannot create an empty `{name}`: {other:?}"));
            return;
        }
    };
    keys.sort();
    let mut want: Vec<String> = ["@odata.type", "id"]
        .into_iter()
        .map(str::to_owned)
        .chain(graph.properties.iter().map(|p| p.name.clone()))
        .collect();
    want.sort();
    if keys != want {
        problems.push(format!(
            "the emulator serves `{name}` as {keys:?}, Graph's metadata says {want:?}"
        ));
    }
}

fn nullable(yes: bool) -> &'static str {
    if yes { "nullable" } else { "not nullable" }
}

/// The kind of collection the emulator serves at `path`, if any.
fn served(path: &str) -> Option<Kind> {
    match paths::parse_target(path) {
        Ok(Target::Collection { kind, .. }) => Some(kind),
        _ => None,
    }
}

/// Checks one navigation property of Graph type `owner` against what the
/// emulator serves at `path`.
fn check_navigation(
    csdl: &Csdl,
    owner: &str,
    property: &str,
    path: &str,
    problems: &mut Vec<String>,
) {
    let graph = csdl
        .types
        .get(owner)
        .and_then(|t| t.navigation.iter().find(|n| n.name == property));
    match (graph, served(path)) {
        (None, None) => {}
        (Some(_), None) => problems.push(format!(
            "`{owner}.{property}` is in Graph's metadata but the emulator does not serve {path}"
        )),
        (None, Some(_)) => problems.push(format!(
            "the emulator serves {path}, but `{owner}` has no `{property}` in Graph's metadata"
        )),
        (Some(n), Some(kind)) => {
            let held = local_name(kind.entity_type());
            if csdl.collection_of(&n.ty) != Some(held) {
                problems.push(format!(
                    "`{owner}.{property}` holds {} in Graph's metadata, the emulator serves {held}",
                    n.ty
                ));
            }
            if !n.flag {
                problems.push(format!(
                    "`{owner}.{property}` is not contained in Graph's metadata"
                ));
            }
        }
    }
}

fn navigation(csdl: &Csdl, problems: &mut Vec<String>) {
    const STATES: [&str; 2] = ["userRunStates", "deviceRunStates"];
    let user = local_name(Kind::User.entity_type());
    for (collection, ty, _) in SCRIPTS {
        if !csdl.types.contains_key(ty) {
            problems.push(format!(
                "script type `{ty}` ({collection}) is not in Graph's metadata"
            ));
            continue;
        }
        for property in STATES {
            let path = format!("{}{collection}/s/{property}", paths::ROOT);
            check_navigation(csdl, ty, property, &path, problems);
        }
        if served(&format!("{}{collection}/s/userRunStates", paths::ROOT)).is_some() {
            for property in STATES {
                let path = format!("{}{collection}/s/userRunStates/u/{property}", paths::ROOT);
                check_navigation(csdl, user, property, &path, problems);
            }
        }
    }
    for (name, ty) in &csdl.types {
        let scripts = SCRIPTS.iter().any(|(_, t, _)| t == name);
        let has_states = ty
            .navigation
            .iter()
            .any(|n| STATES.contains(&n.name.as_str()));
        if has_states && !scripts && name != user {
            problems.push(format!(
                "`{name}` has run states in Graph's metadata, but the emulator serves no such script kind"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The excerpt with `from` replaced by `to` (which must be there once).
    fn edited(from: &str, to: &str) -> String {
        assert_eq!(EXCERPT.matches(from).count(), 1, "{from}");
        EXCERPT.replace(from, to)
    }

    fn assert_named(problems: &[String], words: &[&str]) {
        assert!(
            problems.iter().any(|p| words.iter().all(|w| p.contains(w))),
            "no problem naming {words:?}: {problems:#?}"
        );
    }

    #[test]
    fn the_emulator_agrees_with_graphs_metadata() {
        assert_eq!(disagreements(EXCERPT), Vec::<String>::new());
    }

    #[test]
    fn a_new_run_state_member_is_caught() {
        let xml = edited(
            r#"<Member Name="notApplicable" Value="5" />"#,
            r#"<Member Name="notApplicable" Value="5" />
        <Member Name="quarantined" Value="6" />"#,
        );
        let problems = disagreements(&xml);
        assert_named(&problems, &["quarantined", "RUN_STATE"]);
        assert_named(&problems, &["quarantined", "refused", "runState"]);
        assert_named(&problems, &["quarantined", "refused", "detectionState"]);
        let dropped = edited(r#"<Member Name="pending" Value="4" />"#, "");
        assert_named(&disagreements(&dropped), &["`pending`", "not in Graph"]);
    }

    #[test]
    fn a_new_or_changed_property_is_caught() {
        let device =
            r#"<EntityType Name="deviceManagementScriptDeviceState" BaseType="graph.entity">"#;
        let added = edited(
            device,
            &format!(r#"{device}<Property Name="deviceName" Type="Edm.String" />"#),
        );
        let problems = disagreements(&added);
        assert_named(
            &problems,
            &["deviceManagementScriptDeviceState.deviceName", "unknown"],
        );
        assert_named(&problems, &["serves `deviceManagementScriptDeviceState`"]);

        let retyped = edited(
            r#"<Property Name="errorDeviceCount" Type="Edm.Int32" Nullable="false">"#,
            r#"<Property Name="errorDeviceCount" Type="Edm.Int64" Nullable="false">"#,
        );
        assert_named(
            &disagreements(&retyped),
            &["errorDeviceCount", "Edm.Int64", "Edm.Int32"],
        );

        let nullable = edited(
            r#"<Property Name="lastSyncDateTime" Type="Edm.DateTimeOffset" Nullable="false">"#,
            r#"<Property Name="lastSyncDateTime" Type="Edm.DateTimeOffset">"#,
        );
        assert_named(
            &disagreements(&nullable),
            &[
                "lastSyncDateTime",
                "is nullable in Graph",
                "not nullable in the emulator",
            ],
        );

        let removed = edited(
            r#"<Property Name="scriptError" Type="Edm.String">"#,
            r#"<Property Name="scriptFault" Type="Edm.String">"#,
        );
        let problems = disagreements(&removed);
        assert_named(&problems, &["scriptError", "not in Graph's metadata"]);
        assert_named(&problems, &["scriptFault", "unknown to the emulator"]);
    }

    #[test]
    fn a_navigation_change_is_caught() {
        // Compliance scripts gain user run states.
        let compliance = r#"<NavigationProperty Name="deviceRunStates" Type="Collection(graph.deviceComplianceScriptDeviceState)" ContainsTarget="true">"#;
        let gained = edited(
            compliance,
            &format!(
                r#"<NavigationProperty Name="userRunStates" Type="Collection(graph.deviceManagementScriptUserState)" ContainsTarget="true" />{compliance}"#
            ),
        );
        assert_named(
            &disagreements(&gained),
            &["deviceComplianceScript.userRunStates", "does not serve"],
        );

        // Shell scripts lose theirs.
        let shell = EXCERPT
            .split(r#"<EntityType Name="deviceShellScript""#)
            .nth(1)
            .unwrap();
        let nav = r#"<NavigationProperty Name="userRunStates" Type="Collection(graph.deviceManagementScriptUserState)" ContainsTarget="true">"#;
        let at = EXCERPT.len() - shell.len() + shell.find(nav).unwrap();
        let mut lost = EXCERPT.to_owned();
        lost.replace_range(at..at + nav.len(), r#"<NavigationProperty Name="userRunStatesGone" Type="Collection(graph.deviceManagementScriptUserState)" ContainsTarget="true">"#);
        assert_named(
            &disagreements(&lost),
            &[
                "deviceShellScripts/s/userRunStates",
                "`deviceShellScript` has no `userRunStates`",
            ],
        );

        // A new script kind with run states.
        let health = r#"<EntityType Name="deviceHealthScript" BaseType="graph.entity"><NavigationProperty Name="deviceRunStates" Type="Collection(graph.deviceHealthScriptDeviceState)" ContainsTarget="true" /></EntityType>
    </Schema>"#;
        let new_kind = edited("</Schema>", health);
        assert_named(
            &disagreements(&new_kind),
            &["`deviceHealthScript`", "no such script kind"],
        );

        // Device run states of another type.
        let retyped = edited(
            compliance,
            r#"<NavigationProperty Name="deviceRunStates" Type="Collection(graph.deviceManagementScriptDeviceState)" ContainsTarget="true">"#,
        );
        assert_named(
            &disagreements(&retyped),
            &[
                "deviceComplianceScript.deviceRunStates",
                "deviceComplianceScriptDeviceState",
            ],
        );
    }

    #[test]
    fn an_unreadable_excerpt_is_one_problem() {
        assert_named(&disagreements("<Edmx"), &["unreadable XML"]);
    }
}
