//! Coalescing: updates of one state waiting together go out as one PATCH.
