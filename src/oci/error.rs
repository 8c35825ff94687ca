//! The OCI error envelope, distribution-spec `spec.md` section "Error Codes":
//! `{"errors":[{"code":"…","message":"…","detail":…}]}`.

use serde::Serialize;

/// The error codes tagpin answers with itself: those of the spec's table (code-1 to
/// code-14) it has occasion to use, plus `UNKNOWN` and `UNAVAILABLE`, which distribution
/// uses for 500 and 503. Every other code reaches clients from the upstream, untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUploadInvalid,
    DigestInvalid,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    TagInvalid,
    SizeInvalid,
    Denied,
    Unauthorized,
    Unsupported,
    Unknown,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Self::DigestInvalid => "DIGEST_INVALID",
            Self::ManifestInvalid => "MANIFEST_INVALID",
            Self::ManifestUnknown => "MANIFEST_UNKNOWN",
            Self::NameInvalid => "NAME_INVALID",
            Self::NameUnknown => "NAME_UNKNOWN",
            Self::TagInvalid => "TAG_INVALID",
            Self::SizeInvalid => "SIZE_INVALID",
            Self::Denied => "DENIED",
            Self::Unauthorized => "UNAUTHORIZED",
            Self::Unsupported => "UNSUPPORTED",
            Self::Unknown => "UNKNOWN",
            Self::Unavailable => "UNAVAILABLE",
        }
    }
}

#[derive(Serialize)]
struct Entry<'a> {
    code: &'static str,
    message: &'a str,
    detail: &'a serde_json::Value,
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}

/// One error, rendered as the spec's envelope.
#[derive(Debug, Clone)]
pub struct ErrorEnvelope {
    pub code: ErrorCode,
    pub message: String,
    pub detail: serde_json::Value,
}

impl ErrorEnvelope {
    pub fn to_json(&self) -> Vec<u8> {
        let body = Body {
            errors: [Entry {
                code: self.code.as_str(),
                message: &self.message,
                detail: &self.detail,
            }],
        };
        serde_json::to_vec(&body).expect("serialising an error envelope cannot fail")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_has_the_spec_shape() {
        let e = ErrorEnvelope {
            code: ErrorCode::Denied,
            message: "no".into(),
            detail: serde_json::json!({"tag": "v1"}),
        };
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["errors"][0]["code"], "DENIED");
        assert_eq!(v["errors"][0]["message"], "no");
        assert_eq!(v["errors"][0]["detail"]["tag"], "v1");
        assert_eq!(v["errors"].as_array().unwrap().len(), 1);
    }
}
