//! The machine lifecycle: Fly's states and the one function that says which moves
//! between them are allowed.
//!
//! Every state change in hangar goes through [`MachineState::transition`], and is
//! persisted before the work it announces is done, so a daemon that dies mid-way finds
//! on restart what it was doing and completes or rolls it back.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspending,
    Suspended,
    Replacing,
    Destroying,
    Destroyed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a machine cannot go from {from} to {to}")]
pub struct InvalidTransition {
    pub from: MachineState,
    pub to: MachineState,
}

impl MachineState {
    pub const ALL: [MachineState; 11] = [
        MachineState::Created,
        MachineState::Starting,
        MachineState::Started,
        MachineState::Stopping,
        MachineState::Stopped,
        MachineState::Suspending,
        MachineState::Suspended,
        MachineState::Replacing,
        MachineState::Destroying,
        MachineState::Destroyed,
        MachineState::Failed,
    ];

    /// Whether a machine may move from `self` to `to`. The one place that decides.
    pub fn can_transition(self, to: MachineState) -> bool {
        use MachineState::*;
        match self {
            Created => matches!(to, Starting | Replacing | Destroying | Failed),
            // Stopped: the process exited at once, or a crash rolled the start back.
            Starting => matches!(to, Started | Stopped | Stopping | Destroying | Failed),
            // Stopped: the process exited on its own.
            Started => matches!(
                to,
                Stopping | Stopped | Suspending | Replacing | Destroying | Failed
            ),
            Stopping => matches!(to, Stopped | Destroying | Failed),
            Stopped => matches!(to, Starting | Replacing | Destroying | Failed),
            // Started: freezing failed and the machine kept running.
            Suspending => matches!(to, Suspended | Started | Destroying | Failed),
            Suspended => matches!(
                to,
                Starting | Started | Stopping | Stopped | Destroying | Failed
            ),
            Replacing => matches!(to, Created | Starting | Stopped | Destroying | Failed),
            Destroying => matches!(to, Destroyed | Failed),
            Destroyed => false,
            Failed => matches!(to, Starting | Stopped | Replacing | Destroying),
        }
    }

    pub fn transition(self, to: MachineState) -> Result<MachineState, InvalidTransition> {
        if self.can_transition(to) {
            Ok(to)
        } else {
            Err(InvalidTransition { from: self, to })
        }
    }

    pub fn as_str(self) -> &'static str {
        use MachineState::*;
        match self {
            Created => "created",
            Starting => "starting",
            Started => "started",
            Stopping => "stopping",
            Stopped => "stopped",
            Suspending => "suspending",
            Suspended => "suspended",
            Replacing => "replacing",
            Destroying => "destroying",
            Destroyed => "destroyed",
            Failed => "failed",
        }
    }

    /// States in which work is under way; a daemon that finds a machine in one after a
    /// crash must finish or undo that work.
    pub fn is_transient(self) -> bool {
        use MachineState::*;
        matches!(
            self,
            Starting | Stopping | Suspending | Replacing | Destroying
        )
    }
}

impl fmt::Display for MachineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for MachineState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        MachineState::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown machine state {s:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::MachineState::*;
    use super::*;

    #[test]
    fn names_round_trip() {
        for state in MachineState::ALL {
            assert_eq!(state.as_str().parse::<MachineState>(), Ok(state));
            assert!(hangar_types::MACHINE_STATES.contains(&state.as_str()));
        }
    }

    #[test]
    fn destroyed_is_final() {
        for to in MachineState::ALL {
            assert_eq!(
                Destroyed.transition(to),
                Err(InvalidTransition {
                    from: Destroyed,
                    to
                })
            );
        }
    }

    #[test]
    fn every_state_but_destroyed_can_be_destroyed() {
        for from in MachineState::ALL {
            if from != Destroyed && from != Destroying {
                assert!(from.can_transition(Destroying), "{from}");
            }
        }
    }

    #[test]
    fn forbidden_transitions_are_refused() {
        let allowed: &[(MachineState, MachineState)] = &[
            (Created, Starting),
            (Created, Replacing),
            (Created, Destroying),
            (Created, Failed),
            (Starting, Started),
            (Starting, Stopped),
            (Starting, Stopping),
            (Starting, Destroying),
            (Starting, Failed),
            (Started, Stopping),
            (Started, Stopped),
            (Started, Suspending),
            (Started, Replacing),
            (Started, Destroying),
            (Started, Failed),
            (Stopping, Stopped),
            (Stopping, Destroying),
            (Stopping, Failed),
            (Stopped, Starting),
            (Stopped, Replacing),
            (Stopped, Destroying),
            (Stopped, Failed),
            (Suspending, Suspended),
            (Suspending, Started),
            (Suspending, Destroying),
            (Suspending, Failed),
            (Suspended, Starting),
            (Suspended, Started),
            (Suspended, Stopping),
            (Suspended, Stopped),
            (Suspended, Destroying),
            (Suspended, Failed),
            (Replacing, Created),
            (Replacing, Starting),
            (Replacing, Stopped),
            (Replacing, Destroying),
            (Replacing, Failed),
            (Destroying, Destroyed),
            (Destroying, Failed),
            (Failed, Starting),
            (Failed, Stopped),
            (Failed, Replacing),
            (Failed, Destroying),
        ];
        for from in MachineState::ALL {
            for to in MachineState::ALL {
                let expected = allowed.contains(&(from, to));
                assert_eq!(from.can_transition(to), expected, "{from} -> {to}");
            }
        }
    }
}
