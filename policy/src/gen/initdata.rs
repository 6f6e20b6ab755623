//! initdata for the authoring tool: the shared wire format ([`protocols::initdata`]),
//! with the decoded document as text.

pub use protocols::initdata::{encode_annotation, Algorithm, InitData, InitDataError};

/// The TOML text of an initdata annotation value (base64(gzip(TOML)), UTF-8).
pub fn decode_annotation(value: &str) -> Result<String, InitDataError> {
    let raw = protocols::initdata::decode_annotation(value)?;
    String::from_utf8(raw).map_err(|e| InitDataError::Utf8 {
        source: e.utf8_error(),
    })
}
