//! Translation between the gRPC API and Graph: resource names, enums,
//! timestamps, update masks and whole resources. Pure functions only.

/// An [`Invalid`] with a `format!`ted description.
macro_rules! invalid {
    ($($arg:tt)*) => {
        $crate::convert::Invalid(format!($($arg)*))
    };
}
pub(crate) use invalid;

pub mod datetime;
pub mod mask;
pub mod names;
pub mod page_token;
pub mod query;
pub mod resources;
pub mod run_state;
pub mod schema;

/// The build-time check of `schema` and `proto/` against Graph's CSDL, tested
/// here on edited excerpts.
#[cfg(test)]
#[path = "../../build/csdl.rs"]
mod csdl;

/// Why a field's value is refused: the description of its
/// [`FieldViolation`], e.g. "must not be empty".
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl From<&str> for Invalid {
    fn from(why: &str) -> Self {
        Invalid(why.to_owned())
    }
}

impl From<Invalid> for String {
    fn from(why: Invalid) -> Self {
        why.0
    }
}

/// A problem with one field of a request, reported as a `BadRequest` field
/// violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field path, e.g. `script_user_state.run_state`.
    pub field: String,
    /// What is wrong and what is expected.
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}
