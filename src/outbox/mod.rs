//! The outbox: writes accepted at once (`SubmitRunStates`), kept on disk
//! and delivered by the gateway within Graph's budget, behind long-running
//! operations (`google.longrunning.Operations`).
//!
//! - [`store`]: the store abstraction every backend implements (what is
//!   durable when, and how writes are claimed and finished).

pub mod store;
