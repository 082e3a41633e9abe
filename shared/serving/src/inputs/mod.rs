//! What a request brings, checked and made into a model's input: tabular records against the
//! card's features ([`tabular`]); uploaded images decoded within a memory budget
//! ([`image`], [`jpeg`]) and resampled as the card's preprocessing says ([`resample`]).

pub mod image;
pub mod jpeg;
pub mod resample;
pub mod tabular;

/// The multipart field an image travels in, named by every error about it.
pub const IMAGE_FIELD: &str = "image";
