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
        Writable {
            proto: "user_principal_name",
            graph: "userPrincipalName",
            nullable: true,
        },
        Writable {
            proto: "success_device_count",
            graph: "successDeviceCount",
            nullable: false,
        },
        Writable {
            proto: "error_device_count",
            graph: "errorDeviceCount",
            nullable: false,
        },
    ],
};

pub const DEVICE_STATE: Entity = Entity {
    graph: "deviceManagementScriptDeviceState",
    odata_type: "#microsoft.graph.deviceManagementScriptDeviceState",
    proto: "intune.runstates.v1.ScriptDeviceState",
    fields: &[
        Writable {
            proto: "run_state",
            graph: "runState",
            nullable: false,
        },
        Writable {
            proto: "result_message",
            graph: "resultMessage",
            nullable: true,
        },
        Writable {
            proto: "last_state_update_date_time",
            graph: "lastStateUpdateDateTime",
            nullable: false,
        },
        Writable {
            proto: "error_code",
            graph: "errorCode",
            nullable: false,
        },
        Writable {
            proto: "error_description",
            graph: "errorDescription",
            nullable: true,
        },
    ],
};

pub const COMPLIANCE_STATE: Entity = Entity {
    graph: "deviceComplianceScriptDeviceState",
    odata_type: "#microsoft.graph.deviceComplianceScriptDeviceState",
    proto: "intune.runstates.v1.ComplianceScriptDeviceState",
    fields: &[
        Writable {
            proto: "detection_state",
            graph: "detectionState",
            nullable: false,
        },
        Writable {
            proto: "last_state_update_date_time",
            graph: "lastStateUpdateDateTime",
            nullable: false,
        },
        Writable {
            proto: "expected_state_update_date_time",
            graph: "expectedStateUpdateDateTime",
            nullable: true,
        },
        Writable {
            proto: "last_sync_date_time",
            graph: "lastSyncDateTime",
            nullable: false,
        },
        Writable {
            proto: "script_output",
            graph: "scriptOutput",
            nullable: true,
        },
        Writable {
            proto: "script_error",
            graph: "scriptError",
            nullable: true,
        },
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

/// The proto enum of Graph's `runState`, by full name.
pub const RUN_STATE_ENUM: &str = "intune.runstates.v1.RunState";

/// Every `runState` member. The proto's zero value (UNSPECIFIED, "not set")
/// has no member.
pub const RUN_STATES: &[RunStateName] = &[
    RunStateName {
        proto: "RUN_STATE_UNKNOWN",
        graph: "unknown",
    },
    RunStateName {
        proto: "RUN_STATE_SUCCESS",
        graph: "success",
    },
    RunStateName {
        proto: "RUN_STATE_FAIL",
        graph: "fail",
    },
    RunStateName {
        proto: "RUN_STATE_SCRIPT_ERROR",
        graph: "scriptError",
    },
    RunStateName {
        proto: "RUN_STATE_PENDING",
        graph: "pending",
    },
    RunStateName {
        proto: "RUN_STATE_NOT_APPLICABLE",
        graph: "notApplicable",
    },
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
