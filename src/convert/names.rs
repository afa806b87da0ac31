//! Resource names: Graph paths relative to `/deviceManagement`.
//!
//! A name can only be turned into a Graph URL path through these types, whose
//! parsers accept nothing but the known collection words and ids of 1 to 256
//! characters from `[A-Za-z0-9._:@-]` (never `.` or `..`). Ids are
//! percent-encoded in the path anyway.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::{
    Invalid,
    schema::{self, DEVICE_STATES, USER_STATES},
};

/// Everything but RFC 3986 unreserved characters is encoded in a segment.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// The longest id accepted.
pub const MAX_ID_LEN: usize = 256;

/// The four kinds of Intune script that hold run states, in the order of
/// [`schema::SCRIPTS`], which says what each holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ScriptKind {
    /// Windows PowerShell scripts.
    DeviceManagement,
    /// macOS shell scripts.
    Shell,
    /// macOS custom attribute scripts.
    CustomAttributeShell,
    /// Compliance scripts: device run states only.
    Compliance,
}

const _: () = assert!(ScriptKind::ALL.len() == schema::SCRIPTS.len());

impl ScriptKind {
    const ALL: [ScriptKind; 4] = [
        ScriptKind::DeviceManagement,
        ScriptKind::Shell,
        ScriptKind::CustomAttributeShell,
        ScriptKind::Compliance,
    ];

    fn schema(self) -> &'static schema::ScriptCollection {
        &schema::SCRIPTS[self as usize]
    }

    /// The Graph collection word, e.g. `deviceShellScripts`.
    pub fn collection(self) -> &'static str {
        self.schema().collection
    }

    pub fn from_collection(word: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.collection() == word)
    }

    /// Whether its scripts hold user run states (of `ScriptUserState`).
    pub fn has_user_states(self) -> bool {
        self.schema().user_states == Some(schema::USER_STATE.graph)
    }

    /// Whether its scripts hold device run states of `ScriptDeviceState`.
    pub fn has_device_states(self) -> bool {
        self.schema().device_states == schema::DEVICE_STATE.graph
    }

    /// Whether its scripts hold device run states of `ComplianceScriptDeviceState`.
    pub fn has_compliance_states(self) -> bool {
        self.schema().device_states == schema::COMPLIANCE_STATE.graph
    }
}

/// Which script kinds a name may start with.
type Kinds = fn(ScriptKind) -> bool;

/// Kinds whose user run states hold device run states of `ScriptDeviceState`.
fn has_nested_device_states(kind: ScriptKind) -> bool {
    kind.has_user_states() && schema::USER_STATE_DEVICE_STATES == schema::DEVICE_STATE.graph
}

/// A validated id segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Id(String);

impl Id {
    /// Checks an id: 1 to 256 characters from `[A-Za-z0-9._:@-]`, not `.` or `..`.
    pub fn parse(id: &str) -> Result<Id, Invalid> {
        if id.is_empty() {
            return Err("must not be empty".into());
        }
        if id.len() > MAX_ID_LEN {
            return Err(invalid!("must be at most {MAX_ID_LEN} characters"));
        }
        if id == "." || id == ".." {
            return Err("must not be `.` or `..`".into());
        }
        if let Some(bad) = id
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._:@-".contains(*c)))
        {
            return Err(invalid!(
                "must use only A-Z, a-z, 0-9 and `._:@-` (found {bad:?})"
            ));
        }
        Ok(Id(id.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn encoded(&self) -> impl fmt::Display + '_ {
        utf8_percent_encode(&self.0, SEGMENT)
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A script: `{scripts}/{script}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptName {
    pub kind: ScriptKind,
    pub id: Id,
}

/// A user run state: `{scripts}/{script}/userRunStates/{state}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserStateName {
    pub script: ScriptName,
    pub id: Id,
}

/// Where device run states live: a script or a user run state of one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceStateParent {
    Script(ScriptName),
    UserState(UserStateName),
}

/// A device run state of a device-management, shell or custom-attribute script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStateName {
    pub parent: DeviceStateParent,
    pub id: Id,
}

/// A device run state of a compliance script:
/// `deviceComplianceScripts/{script}/deviceRunStates/{state}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComplianceStateName {
    pub script: ScriptName,
    pub id: Id,
}

/// What every validated name offers: its canonical text and its Graph path.
pub trait ResourcePath: fmt::Display {
    /// The percent-encoded Graph path relative to `/deviceManagement/`.
    fn graph_path(&self) -> String;
}

/// A parent under which states are created.
pub trait Parent: ResourcePath {
    /// The collection word the children live in.
    const CHILDREN: &'static str;

    /// The encoded Graph path of the child collection.
    fn collection_path(&self) -> String {
        format!("{}/{}", self.graph_path(), Self::CHILDREN)
    }

    /// The canonical name of a child with the given id.
    fn child_name(&self, id: &str) -> String {
        format!("{self}/{}/{id}", Self::CHILDREN)
    }

    /// The encoded Graph path of a child with the given id.
    fn child_path(&self, id: &Id) -> String {
        format!("{}/{}", self.collection_path(), id.encoded())
    }
}

fn id_at(segments: &[&str], at: usize, what: &str) -> Result<Id, Invalid> {
    Id::parse(segments[at]).map_err(|why| invalid!("the {what} id {why}"))
}

fn script_at(segments: &[&str], kinds: Kinds, shape: &str) -> Result<ScriptName, Invalid> {
    let kind = ScriptKind::from_collection(segments[0])
        .filter(|k| kinds(*k))
        .ok_or_else(|| {
            invalid!(
                "must look like `{shape}`; the first segment is not {}",
                kinds_text(kinds)
            )
        })?;
    Ok(ScriptName {
        kind,
        id: id_at(segments, 1, "script")?,
    })
}

/// The collection words of `kinds`, e.g. "`a`, `b` or `c`".
fn kinds_text(kinds: Kinds) -> String {
    let words: Vec<String> = ScriptKind::ALL
        .into_iter()
        .filter(|k| kinds(*k))
        .map(|k| format!("`{}`", k.collection()))
        .collect();
    match words.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => words.concat(),
    }
}

fn expect_word(segments: &[&str], at: usize, word: &str, shape: &str) -> Result<(), Invalid> {
    if segments[at] == word {
        Ok(())
    } else {
        Err(invalid!(
            "must look like `{shape}`; segment {} must be `{word}`",
            at + 1
        ))
    }
}

fn split<'a>(name: &'a str, shape: &str, lens: &[usize]) -> Result<Vec<&'a str>, Invalid> {
    if name.is_empty() {
        return Err(invalid!("is required and must look like `{shape}`"));
    }
    // Bounds the work done on hostile input before splitting.
    if name.len() > 6 * (MAX_ID_LEN + 40) {
        return Err(invalid!("is too long; it must look like `{shape}`"));
    }
    let segments: Vec<&str> = name.split('/').collect();
    if !lens.contains(&segments.len()) {
        return Err(invalid!("must look like `{shape}`"));
    }
    Ok(segments)
}

impl ScriptName {
    const SHAPE: &'static str = "{scripts}/{script}";

    /// Parses a script of a kind that holds user states.
    pub fn parse(name: &str) -> Result<Self, Invalid> {
        let s = split(name, Self::SHAPE, &[2])?;
        script_at(&s, ScriptKind::has_user_states, Self::SHAPE)
    }

    /// Parses `deviceComplianceScripts/{script}`.
    pub fn parse_compliance(name: &str) -> Result<Self, Invalid> {
        const SHAPE: &str = "deviceComplianceScripts/{script}";
        let s = split(name, SHAPE, &[2])?;
        script_at(&s, ScriptKind::has_compliance_states, SHAPE)
    }
}

/// `Display` (`{parent}/{word}/{id}`) and [`ResourcePath`] (the same with
/// the parent's Graph path and the id percent-encoded) of a name under a
/// parent.
macro_rules! child_name {
    ($name:ty, $parent:ident, $word:expr) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}/{}/{}", self.$parent, $word, self.id)
            }
        }

        impl ResourcePath for $name {
            fn graph_path(&self) -> String {
                format!(
                    "{}/{}/{}",
                    self.$parent.graph_path(),
                    $word,
                    self.id.encoded()
                )
            }
        }
    };
}

impl fmt::Display for ScriptName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind.collection(), self.id)
    }
}

impl ResourcePath for ScriptName {
    fn graph_path(&self) -> String {
        format!("{}/{}", self.kind.collection(), self.id.encoded())
    }
}

impl UserStateName {
    const SHAPE: &'static str = "{scripts}/{script}/userRunStates/{state}";

    pub fn parse(name: &str) -> Result<Self, Invalid> {
        let s = split(name, Self::SHAPE, &[4])?;
        Self::from_segments(&s, ScriptKind::has_user_states)
    }

    fn from_segments(s: &[&str], kinds: Kinds) -> Result<Self, Invalid> {
        let script = script_at(s, kinds, Self::SHAPE)?;
        expect_word(s, 2, USER_STATES, Self::SHAPE)?;
        Ok(UserStateName {
            script,
            id: id_at(s, 3, "user state")?,
        })
    }
}

child_name!(UserStateName, script, USER_STATES);

impl DeviceStateParent {
    const SHAPE: &'static str =
        "{scripts}/{script}` or `{scripts}/{script}/userRunStates/{user_state}";

    pub fn parse(name: &str) -> Result<Self, Invalid> {
        let s = split(name, Self::SHAPE, &[2, 4])?;
        if s.len() == 2 {
            Ok(Self::Script(script_at(
                &s,
                ScriptKind::has_device_states,
                Self::SHAPE,
            )?))
        } else {
            Ok(Self::UserState(UserStateName::from_segments(
                &s,
                has_nested_device_states,
            )?))
        }
    }
}

impl fmt::Display for DeviceStateParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Script(s) => s.fmt(f),
            Self::UserState(u) => u.fmt(f),
        }
    }
}

impl ResourcePath for DeviceStateParent {
    fn graph_path(&self) -> String {
        match self {
            Self::Script(s) => s.graph_path(),
            Self::UserState(u) => u.graph_path(),
        }
    }
}

impl DeviceStateName {
    const SHAPE: &'static str = "{scripts}/{script}/deviceRunStates/{state}` or `{scripts}/{script}/userRunStates/{user_state}/deviceRunStates/{state}";

    pub fn parse(name: &str) -> Result<Self, Invalid> {
        let s = split(name, Self::SHAPE, &[4, 6])?;
        let parent = if s.len() == 4 {
            DeviceStateParent::Script(script_at(&s, ScriptKind::has_device_states, Self::SHAPE)?)
        } else {
            let script = script_at(&s, has_nested_device_states, Self::SHAPE)?;
            expect_word(&s, 2, USER_STATES, Self::SHAPE)?;
            DeviceStateParent::UserState(UserStateName {
                script,
                id: id_at(&s, 3, "user state")?,
            })
        };
        expect_word(&s, s.len() - 2, DEVICE_STATES, Self::SHAPE)?;
        Ok(DeviceStateName {
            parent,
            id: id_at(&s, s.len() - 1, "device state")?,
        })
    }
}

child_name!(DeviceStateName, parent, DEVICE_STATES);

impl ComplianceStateName {
    const SHAPE: &'static str = "deviceComplianceScripts/{script}/deviceRunStates/{state}";

    pub fn parse(name: &str) -> Result<Self, Invalid> {
        let s = split(name, Self::SHAPE, &[4])?;
        let script = script_at(&s, ScriptKind::has_compliance_states, Self::SHAPE)?;
        expect_word(&s, 2, DEVICE_STATES, Self::SHAPE)?;
        Ok(ComplianceStateName {
            script,
            id: id_at(&s, 3, "device state")?,
        })
    }
}

child_name!(ComplianceStateName, script, DEVICE_STATES);

/// Parent of user states (a script).
impl Parent for ScriptName {
    const CHILDREN: &'static str = USER_STATES;
}

/// Parent of device states (a script or a user state).
impl Parent for DeviceStateParent {
    const CHILDREN: &'static str = DEVICE_STATES;
}

/// Parent of compliance device states, wrapped to pick the child collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComplianceScriptName(pub ScriptName);

impl ComplianceScriptName {
    pub fn parse(name: &str) -> Result<Self, Invalid> {
        ScriptName::parse_compliance(name).map(Self)
    }
}

impl fmt::Display for ComplianceScriptName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl ResourcePath for ComplianceScriptName {
    fn graph_path(&self) -> String {
        self.0.graph_path()
    }
}

impl Parent for ComplianceScriptName {
    const CHILDREN: &'static str = DEVICE_STATES;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ids_of_the_allowed_alphabet() {
        for id in [
            "a",
            "A-z_0.9",
            "d5a29103-9103-d5a2-0391-a2d50391a2d5",
            "user@contoso.com",
            "a:b",
            "...",
            &"x".repeat(256),
        ] {
            assert!(Id::parse(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn refuses_bad_ids() {
        for id in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a%2F",
            "a?b",
            "a#b",
            "a\\b",
            "é",
            "a\0",
            &"x".repeat(257),
            "\u{202e}",
        ] {
            assert!(Id::parse(id).is_err(), "{id:?}");
        }
    }

    #[test]
    fn kinds_follow_the_schema_table() {
        assert_eq!(
            ScriptKind::Compliance.collection(),
            "deviceComplianceScripts"
        );
        let compliance: Vec<_> = ScriptKind::ALL
            .into_iter()
            .filter(|k| k.has_compliance_states())
            .collect();
        assert_eq!(compliance, [ScriptKind::Compliance]);
        for kind in ScriptKind::ALL {
            assert_eq!(ScriptKind::from_collection(kind.collection()), Some(kind));
            assert_eq!(kind.has_user_states(), kind != ScriptKind::Compliance);
            assert_eq!(kind.has_device_states(), kind != ScriptKind::Compliance);
        }
        assert_eq!(
            kinds_text(ScriptKind::has_user_states),
            "`deviceManagementScripts`, `deviceShellScripts` or `deviceCustomAttributeShellScripts`"
        );
        assert_eq!(
            kinds_text(ScriptKind::has_compliance_states),
            "`deviceComplianceScripts`"
        );
    }

    #[test]
    fn parses_user_state_names_of_each_kind() {
        let kinds = ScriptKind::ALL.into_iter().filter(|k| k.has_user_states());
        for kind in kinds {
            let text = format!("{}/s-1/userRunStates/u:1", kind.collection());
            let name = UserStateName::parse(&text).unwrap();
            assert_eq!(name.script.kind, kind);
            assert_eq!(name.to_string(), text);
            assert_eq!(
                name.graph_path(),
                format!("{}/s-1/userRunStates/u%3A1", kind.collection())
            );
        }
    }

    #[test]
    fn parses_device_state_names_and_parents() {
        let flat = DeviceStateName::parse("deviceShellScripts/s/deviceRunStates/d").unwrap();
        assert!(matches!(flat.parent, DeviceStateParent::Script(_)));
        let nested =
            DeviceStateName::parse("deviceManagementScripts/s/userRunStates/u/deviceRunStates/d@x")
                .unwrap();
        assert!(matches!(nested.parent, DeviceStateParent::UserState(_)));
        assert_eq!(
            nested.graph_path(),
            "deviceManagementScripts/s/userRunStates/u/deviceRunStates/d%40x"
        );
        let parent =
            DeviceStateParent::parse("deviceCustomAttributeShellScripts/s/userRunStates/u")
                .unwrap();
        assert_eq!(
            parent.collection_path(),
            "deviceCustomAttributeShellScripts/s/userRunStates/u/deviceRunStates"
        );
        assert_eq!(
            parent.child_name("d"),
            "deviceCustomAttributeShellScripts/s/userRunStates/u/deviceRunStates/d"
        );
    }

    /// Every name in `names` is refused by `parse`.
    fn refused<T: fmt::Debug>(parse: impl Fn(&str) -> Result<T, Invalid>, names: &[&str]) {
        for n in names {
            assert!(parse(n).is_err(), "{n}");
        }
    }

    #[test]
    fn parses_compliance_names() {
        let n = ComplianceStateName::parse("deviceComplianceScripts/c/deviceRunStates/d").unwrap();
        assert_eq!(n.to_string(), "deviceComplianceScripts/c/deviceRunStates/d");
        let p = ComplianceScriptName::parse("deviceComplianceScripts/c").unwrap();
        assert_eq!(
            p.collection_path(),
            "deviceComplianceScripts/c/deviceRunStates"
        );
    }

    #[test]
    fn refuses_bad_shapes() {
        refused(
            UserStateName::parse,
            &[
                "",
                "deviceManagementScripts/s/userRunStates",
                "deviceManagementScripts/s/userRunStates/",
                "deviceManagementScripts/s/userRunStates/u/",
                "/deviceManagementScripts/s/userRunStates/u",
                "deviceComplianceScripts/s/userRunStates/u",
                "deviceHealthScripts/s/userRunStates/u",
                "deviceManagementScripts/s/deviceRunStates/u",
                "deviceManagementScripts/../userRunStates/u",
                "deviceManagementScripts/s/userRunStates/..",
                "deviceManagementScripts/s/userRunStates/.",
                "deviceManagementScripts//userRunStates/u",
                "deviceManagementScripts/s/userRunStates/u?x=1",
                "deviceManagementScripts/s/userRunStates/u%2F..",
                "DeviceManagementScripts/s/userRunStates/u",
                "deviceManagementScripts/s/userRunStates/u/deviceRunStates/d",
            ],
        );
        refused(
            DeviceStateParent::parse,
            &[
                "deviceComplianceScripts/s",
                "deviceManagementScripts",
                "deviceManagementScripts/s/userRunStates",
                "deviceManagementScripts/s/deviceRunStates/d",
                "deviceManagementScripts/s/x/u",
            ],
        );
        refused(
            DeviceStateName::parse,
            &[
                "deviceManagementScripts/s/deviceRunStates",
                "deviceManagementScripts/s/userRunStates/d",
                "deviceManagementScripts/s/userRunStates/u/userRunStates/d",
                "deviceManagementScripts/s/deviceRunStates/u/deviceRunStates/d",
                "deviceComplianceScripts/s/deviceRunStates/d",
            ],
        );
        refused(
            ComplianceStateName::parse,
            &[
                "deviceManagementScripts/s/deviceRunStates/d",
                "deviceComplianceScripts/s/userRunStates/d",
                "deviceComplianceScripts/s",
            ],
        );
        refused(
            ComplianceScriptName::parse,
            &[
                "deviceManagementScripts/s",
                "deviceComplianceScripts",
                "deviceComplianceScripts/..",
            ],
        );
        assert!(UserStateName::parse(&"a/".repeat(5000)).is_err());
    }
}
