//! Names of the metrics a worker reports and the server, sweeps and clients read. One list, so
//! a rename is a compile error everywhere instead of a silently empty chart.

/// Token-mean training loss of the step (causal LM) or example-mean (classification).
pub const LOSS: &str = "loss";
/// Learning rate used for the step.
pub const LR: &str = "lr";
/// Global gradient norm before clipping.
pub const GRAD_NORM: &str = "grad_norm";
/// Training throughput of the step.
pub const TOKENS_PER_S: &str = "tokens_per_s";
/// The run's planned number of optimizer steps.
pub const TOTAL_STEPS: &str = "total_steps";
/// Loss on the validation file.
pub const EVAL_LOSS: &str = "eval_loss";
/// `exp(eval_loss)` for causal LMs.
pub const EVAL_PERPLEXITY: &str = "eval_perplexity";
/// Share of validation examples classified correctly.
pub const EVAL_ACCURACY: &str = "eval_accuracy";

/// Preference jobs: the mean implicit reward of the chosen replies (DPO/IPO: `β·(log π −
/// log π_ref)`; ORPO: `λ·` mean token log-probability).
pub const REWARD_CHOSEN: &str = "reward_chosen";
/// Preference jobs: the mean implicit reward of the rejected replies.
pub const REWARD_REJECTED: &str = "reward_rejected";
/// Preference jobs: mean of chosen minus rejected reward.
pub const REWARD_MARGIN: &str = "reward_margin";
/// Preference jobs: share of pairs whose chosen reply earns the larger reward.
pub const REWARD_ACCURACY: &str = "reward_accuracy";

/// Merge jobs: the largest relative Frobenius error of re-factoring a module's merged delta
/// at the output rank (0 when the rank holds the merge exactly).
pub const MERGE_RECONSTRUCTION_ERROR: &str = "merge_reconstruction_error";
/// Merge jobs with model_stock: the mean over modules of the interpolation ratio `t`.
pub const MODEL_STOCK_RATIO: &str = "model_stock_ratio";

/// Merge jobs and lo-fi merge steps with a validation file: source `i`'s eval loss (a merge
/// job's `merge.sources[i]`, a lo-fi job's shard `i`), measured like the merged adapter's.
pub fn source_eval_loss(i: usize) -> String {
    format!("source{i}_eval_loss")
}

/// Metrics a sweep may optimise, with whether larger is better.
pub const OBJECTIVES: &[(&str, bool)] = &[
    (LOSS, false),
    (EVAL_LOSS, false),
    (EVAL_PERPLEXITY, false),
    (EVAL_ACCURACY, true),
    (REWARD_MARGIN, true),
    (REWARD_ACCURACY, true),
];
