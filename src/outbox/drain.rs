//! The drain.
