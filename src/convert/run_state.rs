//! `RunState` ⇄ Graph's `runState` member names, through the table
//! [`RUN_STATES`] (which `build.rs` checks against Graph's definitions).

use super::schema::RUN_STATES;
use crate::pb::RunState;

/// Graph's name for a run state; `None` for UNSPECIFIED ("not set").
pub fn to_graph(state: RunState) -> Option<&'static str> {
    let proto = state.as_str_name();
    RUN_STATES
        .iter()
        .find(|e| e.proto == proto)
        .map(|e| e.graph)
}

/// The run state Graph names. A name this version does not know (Graph adds
/// members over time) is UNSPECIFIED, with a warning, never an error.
pub fn from_graph(name: &str) -> RunState {
    let known = RUN_STATES
        .iter()
        .find(|e| e.graph == name)
        .and_then(|e| RunState::from_str_name(e.proto));
    known.unwrap_or_else(|| {
        tracing::warn!(
            run_state = name,
            "Graph sent a runState this gateway does not know; returning RUN_STATE_UNSPECIFIED"
        );
        RunState::Unspecified
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: [(RunState, &str); 6] = [
        (RunState::Unknown, "unknown"),
        (RunState::Success, "success"),
        (RunState::Fail, "fail"),
        (RunState::ScriptError, "scriptError"),
        (RunState::Pending, "pending"),
        (RunState::NotApplicable, "notApplicable"),
    ];

    #[test]
    fn maps_every_member_both_ways() {
        for (state, name) in TABLE {
            assert_eq!(to_graph(state), Some(name));
            assert_eq!(from_graph(name), state);
        }
    }

    #[test]
    fn unspecified_is_not_sent() {
        assert_eq!(to_graph(RunState::Unspecified), None);
    }

    #[test]
    fn unknown_names_do_not_fail() {
        for name in [
            "unknownFutureValue",
            "Success",
            "",
            "script_error",
            "SUCCESS",
        ] {
            assert_eq!(from_graph(name), RunState::Unspecified, "{name}");
        }
    }
}
