//! The one error every `validate` in the domain model returns: which field, and what is wrong.

/// A field of a domain value breaks a rule; `field` is a dotted path such as `target.port`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {problem}")]
pub struct ValidationError {
    /// Dotted path of the offending field, e.g. `entry.listen_addr`.
    pub field: String,
    /// What is wrong with it, phrased as the rule it breaks.
    pub problem: String,
}

impl ValidationError {
    /// A validation error for `field` with a human-readable `problem`.
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> ValidationError {
        ValidationError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

/// Fails with `field` if `text` is longer than `max_chars` characters or holds control characters.
pub(crate) fn check_text(field: &str, text: &str, max_chars: usize) -> Result<(), ValidationError> {
    if text.chars().count() > max_chars {
        return Err(ValidationError::new(
            field,
            format!("must be at most {max_chars} characters"),
        ));
    }
    if text.chars().any(char::is_control) {
        return Err(ValidationError::new(
            field,
            "must not contain control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_the_field_and_the_rule() {
        let e = ValidationError::new("target.port", "must be 1-65535");
        assert_eq!(e.to_string(), "invalid `target.port`: must be 1-65535");
    }

    #[test]
    fn text_checks_length_in_chars_and_control_characters() {
        assert!(check_text("label", "héllo", 5).is_ok());
        assert_eq!(check_text("label", "hello!", 5).unwrap_err().field, "label");
        assert!(check_text("label", "a\nb", 5).is_err());
        assert!(check_text("label", "", 5).is_ok());
    }
}
