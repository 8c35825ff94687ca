//! The kinds of event a webhook target can ask for, and which audit actions they are.

use crate::telemetry::AuditAction;

/// One kind of event, as `events` in a `[[notify]]` entry and the CloudEvents `type`
/// (`io.tagpin.<name>`) spell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    PushRefused,
    DeleteRefused,
    DriftDetected,
    ReadDrift,
    PinnedManifestMissing,
    ReleaseCreated,
    /// A released push or delete.
    ReleaseUsed,
    ReleaseExpired,
    ReleaseCancelled,
    ClaimCleared,
    PolicyReloadFailed,
    LogCheckpoint,
    /// `tagpin notify test`: never stored, never chosen in `events`.
    Test,
}

/// Every kind an entry may name, in the order README lists them.
pub const CHOOSABLE: [EventKind; 12] = [
    EventKind::PushRefused,
    EventKind::DeleteRefused,
    EventKind::DriftDetected,
    EventKind::ReadDrift,
    EventKind::PinnedManifestMissing,
    EventKind::ReleaseCreated,
    EventKind::ReleaseUsed,
    EventKind::ReleaseExpired,
    EventKind::ReleaseCancelled,
    EventKind::ClaimCleared,
    EventKind::PolicyReloadFailed,
    EventKind::LogCheckpoint,
];

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PushRefused => "push_refused",
            Self::DeleteRefused => "delete_refused",
            Self::DriftDetected => "drift_detected",
            Self::ReadDrift => "read_drift",
            Self::PinnedManifestMissing => "pinned_manifest_missing",
            Self::ReleaseCreated => "release_created",
            Self::ReleaseUsed => "release_used",
            Self::ReleaseExpired => "release_expired",
            Self::ReleaseCancelled => "release_cancelled",
            Self::ClaimCleared => "claim_cleared",
            Self::PolicyReloadFailed => "policy_reload_failed",
            Self::LogCheckpoint => "log_checkpoint",
            Self::Test => "test",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        CHOOSABLE.into_iter().find(|k| k.as_str() == text)
    }

    /// The kinds an entry without `events` gets: all but `log_checkpoint`.
    pub fn default_set() -> Vec<Self> {
        CHOOSABLE.into_iter().filter(|k| *k != Self::LogCheckpoint).collect()
    }

    /// The event an audit action is, when it is one a target can ask for.
    pub fn of(action: AuditAction) -> Option<Self> {
        Some(match action {
            AuditAction::PushRefused => Self::PushRefused,
            AuditAction::DeleteRefused => Self::DeleteRefused,
            AuditAction::DriftDetected => Self::DriftDetected,
            AuditAction::ReadDrift => Self::ReadDrift,
            AuditAction::PinnedManifestMissing => Self::PinnedManifestMissing,
            AuditAction::ReleaseCreated => Self::ReleaseCreated,
            AuditAction::PushReleased | AuditAction::DeleteReleased => Self::ReleaseUsed,
            AuditAction::ReleaseExpired => Self::ReleaseExpired,
            AuditAction::ReleaseCancelled => Self::ReleaseCancelled,
            AuditAction::ClaimCleared => Self::ClaimCleared,
            AuditAction::PolicyReloadFailed => Self::PolicyReloadFailed,
            AuditAction::LogCheckpoint => Self::LogCheckpoint,
            _ => return None,
        })
    }
}
