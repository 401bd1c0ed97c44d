//! The immobiliser: engine block by a set of reasons, only when the car is safe to stop, by
//! tracked and durable commands, with an audit trail that explains every block.
//!
//! - [`machine`]: the per-vehicle reason set and safe-block state machine (pure).
//! - [`safety`]: whether a car may be blocked now, on one connection's evidence (pure).
//! - [`command`]: one command's lifecycle, retries and expiry (pure).
//! - [`actor`]: the task that owns every vehicle's machine and command, fed by committed
//!   batches, session events and [`ImmobiliserHandle`] requests; persists, then acts.
//! - [`handle`]: [`ImmobiliserHandle`], the one path to add and lift reasons, and the view.
//! - [`config`]: the `[immobiliser]` section, with per-model command profiles.
//! - [`cluster`]: several instances on one PostgreSQL: forwarding a change to the instance
//!   holding the tracker, and serving such requests.
//! - [`store`]: [`store::ImmobiliserStore`], the storage port the actor persists through
//!   (implemented by `crate::storage`).
//!
//! A vehicle is blocked while at least one [`BlockReason`] stands. Geofence rules
//! (`outside_service_area`), CRM rules (`low_balance`, `inspection`) and operators (`manual`)
//! all go through [`ImmobiliserHandle::set_reason`]: one path for every reason.

pub mod actor;
pub mod cluster;
pub mod command;
pub mod config;
pub mod crm_link;
pub mod handle;
pub mod machine;
pub mod safety;
pub mod store;
pub mod zone_rule;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use actor::{start, ImmobiliserHandle, ImmobiliserTask};
pub use command::{Command, CommandStatus, RetryPolicy};
pub use config::ImmobiliserConfig;
pub use machine::Machine;
pub use safety::{Evidence, FixSnapshot, SafetyRules};

/// Why a vehicle is blocked. Extensible: any lower-case `[a-z0-9_]` name up to 64 bytes; the
/// ones fleetgate's own rules use are constants.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BlockReason(String);

impl BlockReason {
    /// The driver left the service area (geofence rule).
    pub const OUTSIDE_SERVICE_AREA: &'static str = "outside_service_area";
    /// The driver's balance fell under the minimum (CRM rule).
    pub const LOW_BALANCE: &'static str = "low_balance";
    /// A technical inspection is overdue (CRM rule).
    pub const INSPECTION: &'static str = "inspection";
    /// An operator blocked the car through the API.
    pub const MANUAL: &'static str = "manual";

    pub fn parse(s: &str) -> Result<BlockReason, ImmobError> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s != "all"
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if ok {
            Ok(BlockReason(s.to_string()))
        } else {
            Err(ImmobError::BadReason(s.to_string()))
        }
    }

    pub fn manual() -> BlockReason {
        BlockReason(Self::MANUAL.into())
    }
    pub fn outside_service_area() -> BlockReason {
        BlockReason(Self::OUTSIDE_SERVICE_AREA.into())
    }
    pub fn low_balance() -> BlockReason {
        BlockReason(Self::LOW_BALANCE.into())
    }
    pub fn inspection() -> BlockReason {
        BlockReason(Self::INSPECTION.into())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BlockReason {
    type Error = ImmobError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        BlockReason::parse(&s)
    }
}

impl From<BlockReason> for String {
    fn from(r: BlockReason) -> String {
        r.0
    }
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a vehicle is on its way to or from a block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ImmobState {
    /// No reason stands; the engine is free.
    #[default]
    Running,
    /// A reason stands; waiting for the car to be safe to stop (slow enough for long
    /// enough, or ignition off).
    BlockPending,
    /// The block command is on its way to the device.
    Blocking,
    /// The device answered (or telemetry shows) the block.
    Blocked,
    /// The last reason was lifted; the unblock command is on its way.
    Unblocking,
}

impl ImmobState {
    pub fn as_str(self) -> &'static str {
        match self {
            ImmobState::Running => "running",
            ImmobState::BlockPending => "block_pending",
            ImmobState::Blocking => "blocking",
            ImmobState::Blocked => "blocked",
            ImmobState::Unblocking => "unblocking",
        }
    }

    pub fn parse(s: &str) -> Option<ImmobState> {
        [
            ImmobState::Running,
            ImmobState::BlockPending,
            ImmobState::Blocking,
            ImmobState::Blocked,
            ImmobState::Unblocking,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

impl fmt::Display for ImmobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a command asks the device to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Intent {
    Block,
    Unblock,
}

impl Intent {
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Block => "block",
            Intent::Unblock => "unblock",
        }
    }
    pub fn parse(s: &str) -> Option<Intent> {
        match s {
            "block" => Some(Intent::Block),
            "unblock" => Some(Intent::Unblock),
            _ => None,
        }
    }
}

/// Serializable: an instance forwards it to another that asked on an operator's behalf.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ImmobError {
    #[error("reason: '{0}' is not a reason name (lower-case a-z, 0-9, _; at most 64; not 'all')")]
    BadReason(String),
    #[error("force: refused, [immobiliser] allow_force is false")]
    ForceNotAllowed,
    #[error("vehicle '{0}' not found")]
    UnknownVehicle(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("the immobiliser is shutting down")]
    Closed,
    /// Several instances: the one holding the vehicle's tracker did not answer in time.
    #[error("instance '{0}' holding the vehicle's tracker did not answer within {1} s")]
    OwnerSilent(String, u64),
}
