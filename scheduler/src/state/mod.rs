//! The replicated state machine: model, apply (commands) and the DAG rules.

mod apply;
mod dag;
mod model;
mod nodes;

pub use dag::{backoff_ms, step_output};
pub use model::*;
