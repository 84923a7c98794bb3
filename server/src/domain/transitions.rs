//! The user-driven transitions of jobs and sweeps, in one place for both store backends
//! (the worker-driven ones are in [`super::queue`]).

use super::{JobState, SweepState};

/// What a user action does to a job in a given state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Move to this state.
    To(JobState),
    /// Already where the action leads: return the job unchanged (idempotent retry).
    Unchanged,
    /// Not allowed from this state (FAILED_PRECONDITION).
    Disallowed,
}

/// User actions on a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Cancel,
    Pause,
    Resume,
}

impl Action {
    /// The verb, for events and error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Cancel => "cancel",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

/// Applies `action` to a job in `state`.
pub fn apply(action: Action, state: JobState) -> Transition {
    use JobState::*;
    use Transition::*;
    match (action, state) {
        (Action::Cancel, Queued | Paused) => To(Cancelled),
        (Action::Cancel, Running | Pausing) => To(Cancelling),
        (Action::Cancel, Cancelling | Cancelled) => Unchanged,
        (Action::Cancel, Succeeded | Failed) => Disallowed,

        (Action::Pause, Queued) => To(Paused),
        (Action::Pause, Running) => To(Pausing),
        (Action::Pause, Pausing | Paused) => Unchanged,
        (Action::Pause, Succeeded | Failed | Cancelling | Cancelled) => Disallowed,

        (Action::Resume, Paused) => To(Queued),
        // The worker has not acted on the pause yet: keep running.
        (Action::Resume, Pausing) => To(Running),
        (Action::Resume, _) => Disallowed,
    }
}

/// What a cancel does to a sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SweepCancel {
    /// RUNNING: cancel it (the caller then cancels its trial jobs).
    Cancel,
    /// Already cancelled: return it unchanged (idempotent retry).
    Unchanged,
    /// It ended on its own (succeeded or failed): too late to cancel.
    Finished,
}

/// A cancel of a sweep in `state`.
pub fn cancel_sweep(state: SweepState) -> SweepCancel {
    match state {
        SweepState::Running => SweepCancel::Cancel,
        SweepState::Cancelled => SweepCancel::Unchanged,
        SweepState::Succeeded | SweepState::Failed => SweepCancel::Finished,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_accept_no_transition_except_idempotent_cancel() {
        for &state in JobState::ALL.iter().filter(|s| s.is_terminal()) {
            for action in [Action::Cancel, Action::Pause, Action::Resume] {
                let t = apply(action, state);
                let ok = t == Transition::Disallowed
                    || (action == Action::Cancel
                        && state == JobState::Cancelled
                        && t == Transition::Unchanged);
                assert!(ok, "{action:?} on {state} gave {t:?}");
            }
        }
    }

    #[test]
    fn running_jobs_go_through_intermediate_states() {
        assert_eq!(
            apply(Action::Cancel, JobState::Running),
            Transition::To(JobState::Cancelling)
        );
        assert_eq!(
            apply(Action::Pause, JobState::Running),
            Transition::To(JobState::Pausing)
        );
        assert_eq!(
            apply(Action::Resume, JobState::Paused),
            Transition::To(JobState::Queued)
        );
        assert_eq!(
            apply(Action::Resume, JobState::Queued),
            Transition::Disallowed
        );
    }

    #[test]
    fn only_a_running_sweep_is_cancelled_and_a_cancelled_one_stays_so() {
        assert_eq!(cancel_sweep(SweepState::Running), SweepCancel::Cancel);
        assert_eq!(cancel_sweep(SweepState::Cancelled), SweepCancel::Unchanged);
        assert_eq!(cancel_sweep(SweepState::Succeeded), SweepCancel::Finished);
        assert_eq!(cancel_sweep(SweepState::Failed), SweepCancel::Finished);
    }
}
