//! The gateway's map of Graph's run-state schema, as plain data: the
//! `runState` translation, each entity's properties and proto fields, and
//! which script kinds hold which run states.
//!
//! The running gateway translates and parses names through these tables, and
//! `build.rs` compiles this same file to check them, with `proto/`, against
//! Graph's own definitions in `graph-metadata/runstates.xml`. So this file
//! holds data only: no `use`, no paths into the crate.

/// A property of a run-state entity: its proto field, its Graph (JSON) name,
/// and whether Graph allows `null`. Every one is writable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Writable {
    pub proto: &'static str,
    pub graph: &'static str,
    pub nullable: bool,
}

impl Writable {
    /// A property Graph allows to be `null`.
    pub const fn nullable(proto: &'static str, graph: &'static str) -> Self {
        Self {
            proto,
            graph,
            nullable: true,
        }
    }

    /// A property Graph never allows to be `null`.
    pub const fn required(proto: &'static str, graph: &'static str) -> Self {
        Self {
            proto,
            graph,
            nullable: false,
        }
    }
}

/// A run-state entity and the proto message that carries it.
#[derive(Debug)]
pub struct Entity {
    /// Graph's type name.
    pub graph: &'static str,
    /// The `@odata.type` sent on create.
    pub odata_type: &'static str,
    /// The proto message, by full name.
    pub proto: &'static str,
    /// Every Graph property but `id` (the key).
    pub fields: &'static [Writable],
}

pub const USER_STATE: Entity = Entity {
    graph: "deviceManagementScriptUserState",
    odata_type: "#microsoft.graph.deviceManagementScriptUserState",
    proto: "intune.runstates.v1.ScriptUserState",
    fields: &[
        Writable::nullable("user_principal_name", "userPrincipalName"),
        Writable::required("success_device_count", "successDeviceCount"),
        Writable::required("error_device_count", "errorDeviceCount"),
    ],
};

pub const DEVICE_STATE: Entity = Entity {
    graph: "deviceManagementScriptDeviceState",
    odata_type: "#microsoft.graph.deviceManagementScriptDeviceState",
    proto: "intune.runstates.v1.ScriptDeviceState",
    fields: &[
        Writable::required("run_state", "runState"),
        Writable::nullable("result_message", "resultMessage"),
        Writable::required("last_state_update_date_time", "lastStateUpdateDateTime"),
        Writable::required("error_code", "errorCode"),
        Writable::nullable("error_description", "errorDescription"),
    ],
};

pub const COMPLIANCE_STATE: Entity = Entity {
    graph: "deviceComplianceScriptDeviceState",
    odata_type: "#microsoft.graph.deviceComplianceScriptDeviceState",
    proto: "intune.runstates.v1.ComplianceScriptDeviceState",
    fields: &[
        Writable::required("detection_state", "detectionState"),
        Writable::required("last_state_update_date_time", "lastStateUpdateDateTime"),
        Writable::nullable(
            "expected_state_update_date_time",
            "expectedStateUpdateDateTime",
        ),
        Writable::required("last_sync_date_time", "lastSyncDateTime"),
        Writable::nullable("script_output", "scriptOutput"),
        Writable::nullable("script_error", "scriptError"),
    ],
};

pub const ENTITIES: [&Entity; 3] = [&USER_STATE, &DEVICE_STATE, &COMPLIANCE_STATE];

/// One `runState` member and its proto value.
#[derive(Debug, Clone, Copy)]
pub struct RunStateName {
    /// The value's name in the proto enum.
    pub proto: &'static str,
    /// Graph's member name.
    pub graph: &'static str,
}

impl RunStateName {
    pub const fn new(proto: &'static str, graph: &'static str) -> Self {
        Self { proto, graph }
    }
}

/// The proto enum of Graph's `runState`, by full name.
pub const RUN_STATE_ENUM: &str = "intune.runstates.v1.RunState";

/// Every `runState` member. The proto's zero value (UNSPECIFIED, "not set")
/// has no member.
pub const RUN_STATES: &[RunStateName] = &[
    RunStateName::new("RUN_STATE_UNKNOWN", "unknown"),
    RunStateName::new("RUN_STATE_SUCCESS", "success"),
    RunStateName::new("RUN_STATE_FAIL", "fail"),
    RunStateName::new("RUN_STATE_SCRIPT_ERROR", "scriptError"),
    RunStateName::new("RUN_STATE_PENDING", "pending"),
    RunStateName::new("RUN_STATE_NOT_APPLICABLE", "notApplicable"),
];

/// The navigation property (and name segment) of user run states.
pub const USER_STATES: &str = "userRunStates";
/// The navigation property (and name segment) of device run states.
pub const DEVICE_STATES: &str = "deviceRunStates";

/// A kind of script that holds run states.
#[derive(Debug)]
pub struct ScriptCollection {
    /// The collection under `/deviceManagement`, the first name segment.
    pub collection: &'static str,
    /// Graph's type name of the script.
    pub graph: &'static str,
    /// The entity under `userRunStates`, if the kind has user states.
    pub user_states: Option<&'static str>,
    /// The entity under `deviceRunStates`.
    pub device_states: &'static str,
}

/// Every script kind the gateway accepts in a name.
pub const SCRIPTS: [ScriptCollection; 4] = [
    ScriptCollection {
        collection: "deviceManagementScripts",
        graph: "deviceManagementScript",
        user_states: Some(USER_STATE.graph),
        device_states: DEVICE_STATE.graph,
    },
    ScriptCollection {
        collection: "deviceShellScripts",
        graph: "deviceShellScript",
        user_states: Some(USER_STATE.graph),
        device_states: DEVICE_STATE.graph,
    },
    ScriptCollection {
        collection: "deviceCustomAttributeShellScripts",
        graph: "deviceCustomAttributeShellScript",
        user_states: Some(USER_STATE.graph),
        device_states: DEVICE_STATE.graph,
    },
    ScriptCollection {
        collection: "deviceComplianceScripts",
        graph: "deviceComplianceScript",
        user_states: None,
        device_states: COMPLIANCE_STATE.graph,
    },
];

/// The entity under a user run state's `deviceRunStates`.
pub const USER_STATE_DEVICE_STATES: &str = DEVICE_STATE.graph;
