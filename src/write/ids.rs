//! Does Graph keep a client-chosen `id` on create? Three plausible worlds:
//! it honours it (and answers 409 to a second copy), ignores it (and assigns
//! its own), or refuses it (400). The gateway is told (`--graph-client-ids`)
//! or learns it per collection kind from every create: the id Graph returns
//! is compared with the one sent.

use std::{collections::HashMap, fmt, str::FromStr, sync::Mutex};

/// `--graph-client-ids`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientIds {
    /// Learn it from Graph's answers, per collection kind.
    #[default]
    Auto,
    /// Graph keeps client ids: id-based recovery is used from the start.
    Honour,
    /// Graph ignores client ids: none are sent, and none are relied on.
    Ignore,
}

impl FromStr for ClientIds {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "auto" => Ok(ClientIds::Auto),
            "honour" | "honor" => Ok(ClientIds::Honour),
            "ignore" => Ok(ClientIds::Ignore),
            other => Err(format!("{other:?}: use auto, honour or ignore")),
        }
    }
}

impl fmt::Display for ClientIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClientIds::Auto => "auto",
            ClientIds::Honour => "honour",
            ClientIds::Ignore => "ignore",
        })
    }
}

/// What Graph was seen to do with client ids for one collection kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum World {
    Honoured,
    Ignored,
    Rejected,
}

/// Per collection kind (e.g. `deviceManagementScripts/userRunStates`).
#[derive(Debug)]
pub struct Worlds {
    mode: ClientIds,
    seen: Mutex<HashMap<String, World>>,
}

impl Worlds {
    pub fn new(mode: ClientIds) -> Self {
        Self {
            mode,
            seen: Mutex::default(),
        }
    }

    /// The kind of a collection path: its segments without the ids, e.g.
    /// `deviceManagementScripts/{id}/userRunStates/{id}/deviceRunStates`
    /// → `deviceManagementScripts/userRunStates/deviceRunStates`.
    pub fn kind(collection: &str) -> String {
        collection
            .split('/')
            .step_by(2)
            .collect::<Vec<_>>()
            .join("/")
    }

    /// What was learned for `kind`, if anything.
    pub fn seen(&self, kind: &str) -> Option<World> {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(kind)
            .copied()
    }

    fn set(&self, kind: &str, world: World) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert(kind.to_owned(), world) != Some(world) {
            tracing::info!(
                kind,
                ?world,
                "learned how Graph treats client ids on create"
            );
        }
    }

    /// Whether to send an id to this kind of collection.
    pub fn send_id(&self, kind: &str) -> bool {
        match self.mode {
            ClientIds::Ignore => false,
            ClientIds::Honour => self.seen(kind) != Some(World::Rejected),
            ClientIds::Auto => !matches!(
                self.seen(kind),
                Some(World::Ignored) | Some(World::Rejected)
            ),
        }
    }

    /// Whether ids sent to this kind are known to be kept (so a read-back by
    /// id tells whether a create was applied).
    pub fn honoured(&self, kind: &str) -> bool {
        match self.mode {
            ClientIds::Ignore => false,
            ClientIds::Honour => !matches!(
                self.seen(kind),
                Some(World::Ignored) | Some(World::Rejected)
            ),
            ClientIds::Auto => self.seen(kind) == Some(World::Honoured),
        }
    }

    /// Compares the id Graph returned with the one sent.
    pub fn learn_from_answer(&self, kind: &str, sent: &str, got: Option<&str>) {
        match got {
            Some(got) if got == sent => self.set(kind, World::Honoured),
            Some(_) => {
                if self.mode == ClientIds::Honour {
                    tracing::warn!(
                        kind,
                        "--graph-client-ids honour, but Graph replaced the id sent; treating ids as ignored for this kind"
                    );
                }
                self.set(kind, World::Ignored)
            }
            // No id in the answer: nothing learned.
            None => {}
        }
    }

    pub fn learn_rejected(&self, kind: &str) {
        self.set(kind, World::Rejected);
    }

    pub fn learn_honoured(&self, kind: &str) {
        self.set(kind, World::Honoured);
    }
}

/// Whether a 400 from a create refuses the `id` property: its code or
/// message names `id` as a word (e.g. "The property 'id' is read-only").
pub fn refuses_id(code: &str, message: &str) -> bool {
    [code, message].iter().any(|text| {
        text.split(|c: char| !c.is_ascii_alphanumeric() && c != '_')
            .any(|word| word.eq_ignore_ascii_case("id"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "deviceComplianceScripts/deviceRunStates";

    #[test]
    fn kinds_drop_the_ids() {
        assert_eq!(
            Worlds::kind("deviceManagementScripts/a/userRunStates/b/deviceRunStates"),
            "deviceManagementScripts/userRunStates/deviceRunStates"
        );
        assert_eq!(Worlds::kind("deviceComplianceScripts/c/deviceRunStates"), K);
    }

    #[test]
    fn auto_learns_each_world_from_answers() {
        let w = Worlds::new(ClientIds::Auto);
        assert!(w.send_id(K) && !w.honoured(K));
        w.learn_from_answer(K, "a", Some("a"));
        assert!(w.send_id(K) && w.honoured(K));
        w.learn_from_answer(K, "a", Some("other"));
        assert!(!w.send_id(K) && !w.honoured(K));
        // Another kind learns on its own.
        assert!(w.send_id("x/y"));
        w.learn_rejected("x/y");
        assert!(!w.send_id("x/y"));
    }

    #[test]
    fn told_worlds() {
        let w = Worlds::new(ClientIds::Ignore);
        assert!(!w.send_id(K) && !w.honoured(K));
        let w = Worlds::new(ClientIds::Honour);
        assert!(w.send_id(K) && w.honoured(K));
        // Evidence to the contrary wins over the flag.
        w.learn_from_answer(K, "a", Some("b"));
        assert!(!w.honoured(K));
        assert_eq!("honour".parse(), Ok(ClientIds::Honour));
        assert_eq!("auto".parse(), Ok(ClientIds::Auto));
        assert!("maybe".parse::<ClientIds>().is_err());
    }

    #[test]
    fn spots_a_400_about_the_id_property() {
        assert!(refuses_id(
            "BadRequest",
            "The property 'id' is read-only and cannot be set."
        ));
        assert!(refuses_id("", "Invalid property: id"));
        assert!(!refuses_id("BadRequest", "runState is not valid"));
        assert!(!refuses_id("", "the identifier is invalid"));
    }
}
