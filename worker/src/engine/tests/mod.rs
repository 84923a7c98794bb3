//! Cross-module engine tests (model + adapters + optimizer + trainer) on tiny random models.

mod export;
mod grads;
mod oracle;
mod train;
mod util;
