//! Cairn's pure core: workflow definitions, journal events, the run and step state machines and
//! `decide`, the function that turns "what happened" into "what to do next".
//!
//! **Invariant: nothing in this crate performs I/O, reads a clock, or draws random numbers.**
//! Time arrives inside events; "randomness" (retry jitter, chaos) is a hash of stable ids. That is
//! what makes a recorded journal replay to the same decisions bit for bit.

pub mod budget;
pub mod builder;
pub mod catalog;
pub mod chaos;
pub mod chaos_plan;
pub mod decide;
pub mod definition;
pub mod duration;
pub mod event;
pub mod expr;
pub mod fork;
pub mod ids;
pub mod kinds;
pub mod links;
pub mod machine;
pub mod payload;
pub mod retry;
pub mod scope;
pub mod secrets;
pub mod state;
pub mod template;
pub mod timeline;
pub mod timer;
pub mod validate;

pub use decide::{Command, decide};
pub use definition::{Definition, OnFailure, Step, Trigger};
pub use event::{Envelope, ErrorClass, Event, Failure, JOURNAL_SCHEMA};
pub use ids::{RunId, StepId};
pub use machine::{RunStatus, StepStatus};
pub use payload::PayloadRef;
pub use state::RunState;
