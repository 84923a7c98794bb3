//! Cross-module engine tests (model + adapters + optimizer + trainer) on tiny random models.

mod bert;
mod device_generic;
mod export;
mod gguf;
mod grads;
mod lisa;
mod methods;
mod optimizers;
mod oracle;
mod preference;
mod real;
mod tape;
mod tokenize;
mod train;
mod util;
