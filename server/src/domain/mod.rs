//! Domain types shared by the store and the API: states, kinds and the validated job spec.

pub mod ids;
pub mod queue;
pub mod spec;
pub mod transitions;

use std::fmt;

/// Declares a string-backed enum stored as TEXT in the database.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored and displayed name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// Parses the stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($text => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

pub mod access;

text_enum!(
    /// Job lifecycle state (see `proto/tuna/v1/job.proto` for the transition diagram).
    JobState {
        Queued => "queued",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelling => "cancelling",
        Cancelled => "cancelled",
        Pausing => "pausing",
        Paused => "paused",
    }
);

impl JobState {
    /// Terminal states never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// States in which a worker holds a lease on the job.
    pub fn is_leased(self) -> bool {
        matches!(self, Self::Running | Self::Cancelling | Self::Pausing)
    }
}

text_enum!(
    /// Whether a failure is the user's (no retry) or the system's (retry with backoff).
    FailureKind {
        User => "user",
        System => "system",
    }
);

text_enum!(
    /// What a worker is told on its heartbeat.
    Directive {
        Continue => "continue",
        Cancel => "cancel",
        Pause => "pause",
        StopEarly => "stop_early",
    }
);

text_enum!(
    /// How a worker ends an attempt without failing it.
    Outcome {
        Succeeded => "succeeded",
        Cancelled => "cancelled",
        Paused => "paused",
        Released => "released",
    }
);

text_enum!(
    /// What an artifact holds.
    ArtifactKind {
        Adapter => "adapter",
        Checkpoint => "checkpoint",
        Merged => "merged",
    }
);

text_enum!(
    /// What an uploaded file is for.
    FilePurpose {
        Dataset => "dataset",
        Model => "model",
    }
);

text_enum!(
    /// The JSONL record shape of a dataset file.
    DatasetFormat {
        Text => "text",
        PromptCompletion => "prompt_completion",
        Chat => "chat",
        Classification => "classification",
        Preference => "preference",
    }
);

text_enum!(
    /// How a registered base model is laid out.
    ModelFormat {
        Hf => "hf",
        Gguf => "gguf",
    }
);

text_enum!(
    /// Sweep lifecycle state (see `proto/tuna/v1/sweep.proto`).
    SweepState {
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Cancelled => "cancelled",
    }
);

impl SweepState {
    pub fn is_terminal(self) -> bool {
        self != Self::Running
    }
}
