//! The replicated state machine: model, apply (commands) and the DAG rules.

mod apply;
mod dag;
mod dlq;
mod lane;
mod model;
mod nodes;
mod render;
mod workers;

pub use dag::{backoff_ms, step_output};
pub use lane::{input_value, item_value};
pub use model::*;
pub use workers::*;
