//! The queue's decisions on worker-driven events: what a claim, a report, the end or failure of
//! an attempt and an expired lease do to a job.
//!
//! Pure functions beside the user transitions of [`super::transitions`], so both store backends
//! share one rule for each and the rules are tested without a database; the SQL in
//! `store::sql` only reads and writes the rows. Which jobs a worker may claim, and in which order
//! (priority, then age), stays in the claim's query, where an index serves it.

use sha2::{Digest, Sha256};

use super::{Directive, FailureKind, JobState, Outcome};

/// Whether a job that has run `attempt` attempts may start another.
pub fn has_attempts_left(attempt: i32, max_attempts: i32) -> bool {
    attempt < max_attempts
}

/// What claiming a job starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// The new attempt's number (1-based).
    pub attempt: i32,
    /// The job was RUNNING under an expired lease: taken over from a lost worker.
    pub reclaimed: bool,
}

/// A claim of a job in `state` that has run `attempt` attempts. A takeover counts as a new
/// attempt too, so a job whose workers keep dying still runs out of attempts.
pub fn claim(state: JobState, attempt: i32) -> Claim {
    Claim {
        attempt: attempt + 1,
        reclaimed: state == JobState::Running,
    }
}

/// The directive for a leased job in `state`: a cancel or pause in progress wins over an
/// early stop, because it ends the attempt whatever the training has reached.
pub fn directive_for(state: JobState, stop_requested: bool) -> Directive {
    match state {
        JobState::Cancelling => Directive::Cancel,
        JobState::Pausing => Directive::Pause,
        _ if stop_requested => Directive::StopEarly,
        _ => Directive::Continue,
    }
}

/// What a request to stop a job early does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopEarly {
    /// Flag the job; its worker learns on the next heartbeat or metrics report.
    Request,
    /// Already flagged: nothing to write (idempotent retry).
    AlreadyRequested,
    /// Only a RUNNING job trains, so only it can stop early.
    Disallowed,
}

/// A stop-early request on a job in `state`.
pub fn stop_early(state: JobState, already_requested: bool) -> StopEarly {
    match state {
        JobState::Running if already_requested => StopEarly::AlreadyRequested,
        JobState::Running => StopEarly::Request,
        _ => StopEarly::Disallowed,
    }
}

/// Where a job in leased `state` goes when its worker ends the attempt with `outcome`; `None`
/// when the outcome acknowledges a cancel or pause that was never requested.
pub fn after_completion(outcome: Outcome, state: JobState) -> Option<JobState> {
    use JobState::*;
    match (outcome, state) {
        // The work is done: a cancel or pause that arrived too late changes nothing.
        (Outcome::Succeeded, _) => Some(Succeeded),
        // A cancel requested meanwhile wins over a pause or a release.
        (_, Cancelling) => Some(Cancelled),
        (Outcome::Paused | Outcome::Released, Pausing) => Some(Paused),
        // The worker gives the job back (e.g. shutting down): another one picks it up.
        (Outcome::Released, Running) => Some(Queued),
        _ => None,
    }
}

/// Where a job in leased `state` goes when attempt `attempt` of `max_attempts` fails with
/// `kind`. `Queued` means a retry (after [`retry_backoff_ms`]): only a SYSTEM failure of a
/// RUNNING job with attempts left is retried, since a user's error would fail the same way again.
pub fn after_failure(
    kind: FailureKind,
    state: JobState,
    attempt: i32,
    max_attempts: i32,
) -> JobState {
    let system = kind == FailureKind::System;
    match state {
        // The user wanted the job gone anyway.
        JobState::Cancelling => JobState::Cancelled,
        // The user asked for a pause: honour it; resuming retries the work.
        JobState::Pausing if system => JobState::Paused,
        JobState::Running if system && has_attempts_left(attempt, max_attempts) => JobState::Queued,
        _ => JobState::Failed,
    }
}

/// Where a job in leased `state` goes when the lease of attempt `attempt` of `max_attempts`
/// expires (its worker was lost): a requested cancel or pause completes, a running job goes back
/// to the queue while it has attempts left and fails (as a SYSTEM failure) after the last.
pub fn after_lease_expiry(state: JobState, attempt: i32, max_attempts: i32) -> JobState {
    match state {
        JobState::Cancelling => JobState::Cancelled,
        JobState::Pausing => JobState::Paused,
        _ if !has_attempts_left(attempt, max_attempts) => JobState::Failed,
        _ => JobState::Queued,
    }
}

/// Delay before retrying after failed attempt `attempt` (1-based):
/// `base_ms * 2^(attempt-1)`, times a jitter in [1, 1.25), capped at `max_ms`.
///
/// The jitter is derived from the job id and attempt rather than a global RNG, so it spreads
/// retries of different jobs while staying reproducible; and since it is below 2x, delays
/// strictly grow until the cap.
pub fn retry_backoff_ms(base_ms: i64, max_ms: i64, job_id: &str, attempt: i32) -> i64 {
    let exp = attempt.saturating_sub(1).clamp(0, 40) as u32;
    let raw = base_ms.saturating_mul(1_i64.checked_shl(exp).unwrap_or(i64::MAX));
    let digest = Sha256::new()
        .chain_update(job_id.as_bytes())
        .chain_update(attempt.to_le_bytes())
        .finalize();
    let jitter_permille = i64::from(u16::from_le_bytes([digest[0], digest[1]]) % 250);
    let jittered = raw.saturating_add(raw.saturating_mul(jitter_permille) / 1000);
    jittered.min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use JobState::*;

    const LEASED: [JobState; 3] = [Running, Cancelling, Pausing];

    #[test]
    fn every_claim_starts_a_new_attempt() {
        for &state in &[Queued, Running] {
            assert_eq!(claim(state, 0).attempt, 1);
            assert_eq!(claim(state, 2).attempt, 3);
        }
    }

    #[test]
    fn only_claiming_a_running_job_is_a_takeover() {
        assert!(claim(Running, 1).reclaimed);
        assert!(!claim(Queued, 1).reclaimed);
    }

    #[test]
    fn a_cancel_or_pause_in_progress_wins_over_an_early_stop() {
        assert_eq!(directive_for(Cancelling, true), Directive::Cancel);
        assert_eq!(directive_for(Pausing, true), Directive::Pause);
        assert_eq!(directive_for(Running, true), Directive::StopEarly);
        assert_eq!(directive_for(Running, false), Directive::Continue);
    }

    #[test]
    fn only_a_running_job_can_be_stopped_early_and_only_once() {
        assert_eq!(stop_early(Running, false), StopEarly::Request);
        assert_eq!(stop_early(Running, true), StopEarly::AlreadyRequested);
        for &state in JobState::ALL.iter().filter(|&&s| s != Running) {
            assert_eq!(stop_early(state, false), StopEarly::Disallowed, "{state}");
        }
    }

    #[test]
    fn a_success_stands_even_when_a_cancel_or_pause_came_too_late() {
        for state in LEASED {
            assert_eq!(after_completion(Outcome::Succeeded, state), Some(Succeeded));
        }
    }

    #[test]
    fn a_cancel_requested_meanwhile_wins_over_a_pause_or_release() {
        for outcome in [Outcome::Cancelled, Outcome::Paused, Outcome::Released] {
            assert_eq!(after_completion(outcome, Cancelling), Some(Cancelled));
        }
    }

    #[test]
    fn a_release_requeues_a_running_job_and_pauses_a_pausing_one() {
        assert_eq!(after_completion(Outcome::Released, Running), Some(Queued));
        assert_eq!(after_completion(Outcome::Released, Pausing), Some(Paused));
        assert_eq!(after_completion(Outcome::Paused, Pausing), Some(Paused));
    }

    #[test]
    fn acknowledging_an_unrequested_cancel_or_pause_is_refused() {
        assert_eq!(after_completion(Outcome::Cancelled, Running), None);
        assert_eq!(after_completion(Outcome::Cancelled, Pausing), None);
        assert_eq!(after_completion(Outcome::Paused, Running), None);
    }

    #[test]
    fn a_user_failure_is_never_retried() {
        for state in LEASED {
            for attempt in 1..=3 {
                assert_ne!(after_failure(FailureKind::User, state, attempt, 5), Queued);
            }
        }
        assert_eq!(after_failure(FailureKind::User, Running, 1, 5), Failed);
        assert_eq!(after_failure(FailureKind::User, Pausing, 1, 5), Failed);
    }

    #[test]
    fn a_system_failure_is_retried_until_attempts_run_out() {
        assert_eq!(after_failure(FailureKind::System, Running, 1, 3), Queued);
        assert_eq!(after_failure(FailureKind::System, Running, 2, 3), Queued);
        assert_eq!(after_failure(FailureKind::System, Running, 3, 3), Failed);
    }

    #[test]
    fn a_failure_completes_a_requested_cancel_or_pause_instead_of_retrying() {
        for kind in [FailureKind::User, FailureKind::System] {
            assert_eq!(after_failure(kind, Cancelling, 1, 3), Cancelled);
        }
        assert_eq!(after_failure(FailureKind::System, Pausing, 1, 3), Paused);
        assert_eq!(after_failure(FailureKind::System, Pausing, 3, 3), Paused);
    }

    #[test]
    fn an_expired_lease_completes_a_requested_cancel_or_pause() {
        assert_eq!(after_lease_expiry(Cancelling, 3, 3), Cancelled);
        assert_eq!(after_lease_expiry(Pausing, 3, 3), Paused);
    }

    #[test]
    fn an_expired_lease_requeues_until_attempts_run_out() {
        assert_eq!(after_lease_expiry(Running, 1, 3), Queued);
        assert_eq!(after_lease_expiry(Running, 2, 3), Queued);
        assert_eq!(after_lease_expiry(Running, 3, 3), Failed);
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let (base, max) = (1_000, 100_000);
        for attempt in 1..=6 {
            let raw = base << (attempt - 1);
            let delay = retry_backoff_ms(base, max, "job_x", attempt);
            assert!(delay >= raw && delay < raw + raw / 4, "{attempt}: {delay}");
        }
        for attempt in [8, 20, 64, i32::MAX] {
            assert_eq!(retry_backoff_ms(base, max, "job_x", attempt), max);
        }
    }

    #[test]
    fn backoff_jitter_is_reproducible_per_job_and_attempt() {
        let a = retry_backoff_ms(1_000, 100_000, "job_a", 2);
        assert_eq!(a, retry_backoff_ms(1_000, 100_000, "job_a", 2));
        let spread: std::collections::BTreeSet<i64> = (0..20)
            .map(|i| retry_backoff_ms(1_000, 100_000, &format!("job_{i}"), 2))
            .collect();
        assert!(spread.len() > 1, "jitter spreads jobs: {spread:?}");
    }
}
