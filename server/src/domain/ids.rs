//! Resource ids: a short type prefix plus a random UUID, so an id says what it names.

/// Generates a new id with `prefix` (for example `job`).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// Prefix of job ids.
pub const JOB: &str = "job";
/// Prefix of file ids.
pub const FILE: &str = "file";
/// Prefix of artifact ids.
pub const ARTIFACT: &str = "art";
/// Prefix of worker ids.
pub const WORKER: &str = "wrk";
/// Prefix of sweep ids.
pub const SWEEP: &str = "swp";

/// Checks the shape of an id with `prefix`, so malformed ids fail as INVALID_ARGUMENT
/// rather than NOT_FOUND.
pub fn is_valid(prefix: &str, id: &str) -> bool {
    id.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('_'))
        .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}
