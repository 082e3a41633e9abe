//! Domain types parsed once, where a request comes in: a [`PatientId`] (canonical, and never
//! shown by `Debug`), a [`Disease`] and a [`Modality`]. Past the parse, the code holds the type,
//! not a string it must check again.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ApiError;

/// A patient id, checked and canonicalised. It is hashed into the patient's reference before
/// it goes anywhere, so one patient must always give the same string: leading and trailing
/// white space trimmed, Unicode NFC (`é` typed as one character or as `e` + combining accent is
/// one patient), and refused when it holds a character that does not show — control, format
/// (zero-width, bidirectional overrides, soft hyphen), line or paragraph separators — or one
/// that is unassigned or private use (its normalisation could change). 1 to 128 characters.
/// Its `Debug` form does not show it: a patient id must not reach a log.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct PatientId(String);

impl PatientId {
    /// Checks and canonicalises `s`; the error names the field and the rule.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        use unicode_normalization::UnicodeNormalization;
        use unicode_properties::{GeneralCategory as G, UnicodeGeneralCategory};
        let s = s.trim();
        for c in s.chars() {
            let what = match c.general_category() {
                G::Control => "a control character",
                G::Format => "a format character (zero-width, bidirectional control, soft hyphen)",
                G::LineSeparator | G::ParagraphSeparator => "a line or paragraph separator",
                G::Unassigned | G::PrivateUse | G::Surrogate => {
                    "an unassigned or private-use code point"
                }
                _ => continue,
            };
            return Err(ApiError::invalid(
                "patient_id",
                format!(
                    "`patient_id` contains U+{:04X}, {what}: patient ids must be visible text \
                     (no control, format or separator characters), so that one patient always \
                     gives one reference",
                    u32::from(c)
                ),
            ));
        }
        let nfc: String = s.nfc().collect();
        if nfc.is_empty() || nfc.chars().count() > 128 {
            return Err(ApiError::invalid(
                "patient_id",
                "`patient_id` must be 1 to 128 characters",
            ));
        }
        Ok(Self(nfc))
    }

    /// The canonical id, to be hashed (never logged).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for PatientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PatientId(…)")
    }
}

impl Serialize for PatientId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for PatientId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        PatientId::parse(&s).map_err(|e| serde::de::Error::custom(e.problem().detail))
    }
}

/// Declares a closed set of names, (de)serialised as its lower-case names and recorded on
/// chain as codes from 1.
macro_rules! named_codes {
    ($(#[$doc:meta])* $name:ident, $field:literal, { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $($variant),+
        }

        impl $name {
            /// Every value, in code order.
            pub const ALL: &[$name] = &[$($name::$variant),+];

            /// The name on the wire.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }

            /// The code on chain: 1, 2, ...
            pub fn code(self) -> u8 {
                Self::ALL.iter().position(|v| *v == self).map_or(0, |i| i as u8 + 1)
            }

            /// The value of a code on chain.
            pub fn from_code(code: u8) -> Option<Self> {
                (code as usize).checked_sub(1).and_then(|i| Self::ALL.get(i)).copied()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s).ok_or_else(|| {
                    let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                    format!("`{}` must be one of {}", $field, names.join(", "))
                })
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

named_codes!(
    /// What a service predicts the risk of.
    Disease, "disease", { Diabetes = "diabetes", Heart = "heart" }
);

named_codes!(
    /// What a model reads: a record of features, or an image.
    Modality, "modality", { Tabular = "tabular", Image = "image" }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patient_ids_are_canonical_or_refused_naming_the_rule() {
        let ok = |s: &str| PatientId::parse(s).expect("accepted").0;
        assert_eq!(ok("  MRN-0042 "), "MRN-0042");
        // NFD and NFC spellings are one patient.
        assert_eq!(ok("Jose\u{301}"), "Jos\u{e9}");
        assert_eq!(ok("Jos\u{e9}"), "Jos\u{e9}");
        assert_eq!(ok("患者-7"), "患者-7");
        for (bad, code) in [
            ("MRN\u{200B}-0042", "U+200B"), // zero-width space
            ("MRN-\u{202E}2400", "U+202E"), // right-to-left override
            ("MRN-\u{2066}42", "U+2066"),   // left-to-right isolate
            ("MRN\u{AD}0042", "U+00AD"),    // soft hyphen
            ("MRN\u{FEFF}42", "U+FEFF"),    // byte order mark
            ("MRN\n42", "U+000A"),
            ("MRN\u{2028}42", "U+2028"),
            ("MRN\u{E000}42", "U+E000"), // private use
        ] {
            let e = PatientId::parse(bad).expect_err(bad);
            let p = e.problem();
            assert_eq!(p.field.as_deref(), Some("patient_id"));
            assert!(p.detail.contains(code), "{}", p.detail);
        }
        assert!(PatientId::parse("   ").is_err());
        assert!(PatientId::parse(&"x".repeat(129)).is_err());
        assert_eq!(ok(&"x".repeat(128)).len(), 128);
    }

    #[test]
    fn a_patient_id_is_never_shown_by_debug() {
        let p = PatientId::parse("MRN-0042").expect("valid");
        assert!(!format!("{p:?}").contains("0042"));
        assert_eq!(serde_json::to_value(&p).expect("serialise"), "MRN-0042");
        let bad: Result<PatientId, _> = serde_json::from_value(serde_json::json!("MRN\u{200B}42"));
        assert!(bad.expect_err("refused").to_string().contains("U+200B"));
    }

    #[test]
    fn diseases_and_modalities_are_names_on_the_wire_and_codes_on_chain() {
        assert_eq!(Disease::Diabetes.code(), 1);
        assert_eq!(Disease::Heart.code(), 2);
        assert_eq!(Modality::from_code(2), Some(Modality::Image));
        assert_eq!(Modality::from_code(0), None);
        assert_eq!(
            serde_json::to_value(Disease::Heart).expect("serialise"),
            "heart"
        );
        let e = serde_json::from_value::<Disease>(serde_json::json!("lungs")).expect_err("lungs");
        assert_eq!(e.to_string(), "`disease` must be one of diabetes, heart");
        assert_eq!("tabular".parse::<Modality>(), Ok(Modality::Tabular));
    }
}
