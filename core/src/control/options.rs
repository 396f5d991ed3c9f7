//! Per-mapping options: limits, compression, encryption, source allow-list.

use super::cidr::Cidr;
use super::validation::ValidationError;

/// Most source networks one mapping may list.
pub const SOURCE_CIDRS_MAX: usize = 256;

/// How a mapping's traffic is shaped and who may use it. `0` limits mean unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct MappingOptions {
    /// Bandwidth cap over all the mapping's connections, bytes per second; `0` = unlimited.
    pub bandwidth_bytes_per_sec: u64,
    /// Compress tunnel data between the entry and the target client.
    pub compression: bool,
    /// Encrypt end to end between listen and target client, so relaying nodes see no plaintext.
    pub end_to_end_encryption: bool,
    /// Visitor source networks allowed in; empty = everyone.
    pub allowed_source_cidrs: Vec<Cidr>,
    /// Concurrent connections through the mapping; `0` = unlimited (the owner's quota still applies).
    pub max_connections: u32,
}

impl MappingOptions {
    /// Checks the options on their own; errors name `options.<field>`.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.allowed_source_cidrs.len() > SOURCE_CIDRS_MAX {
            return Err(ValidationError::new(
                "options.allowed_source_cidrs",
                format!("must list at most {SOURCE_CIDRS_MAX} networks"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_list_is_bounded() {
        let net: Cidr = "10.0.0.0/8".parse().unwrap();
        let mut o = MappingOptions {
            allowed_source_cidrs: vec![net; SOURCE_CIDRS_MAX],
            ..Default::default()
        };
        assert_eq!(o.validate(), Ok(()));
        o.allowed_source_cidrs.push(net);
        assert_eq!(
            o.validate().unwrap_err().field,
            "options.allowed_source_cidrs"
        );
    }

    #[test]
    fn serde_defaults_missing_fields_and_parses_cidrs() {
        let o: MappingOptions =
            serde_json::from_str(r#"{"allowed_source_cidrs":["10.0.0.0/8","::1"]}"#).unwrap();
        assert_eq!(o.allowed_source_cidrs.len(), 2);
        assert_eq!(o.max_connections, 0);
        assert!(
            serde_json::from_str::<MappingOptions>(r#"{"allowed_source_cidrs":["10.0.0.1/8"]}"#)
                .is_err()
        );
    }
}
