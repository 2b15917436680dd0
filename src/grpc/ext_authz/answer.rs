//! Envoy's `CheckResponse` as keyrack writes it.
//!
//! An allowed request's answer names four headers and carries the same four
//! values as `dynamic_metadata`. Built from envoy-types' messages, that is
//! about twenty allocations a call (each header name and value an owned
//! `String`, the metadata a `google.protobuf.Struct` whose `HashMap` is
//! hashed into and then iterated to encode), and prost's encoding of nested
//! messages computes each inner message's length once per level above it.
//! So the allowed answer keeps the verdict's own values, moved rather than
//! copied, and is written directly in protobuf's wire format, every length
//! computed once. It follows the field numbers of Envoy's protos
//! (`envoy/service/auth/v3/external_auth.proto`,
//! `envoy/config/core/v3/base.proto`, `google/protobuf/struct.proto`), which
//! the tests below hold to envoy-types' decoding. A refusal, the rarer
//! answer, is envoy-types' own `CheckResponse`.

use super::{IDENTITY_ID_HEADER, IDENTITY_KIND_HEADER, IDENTITY_NAME_HEADER, KEY_ID_HEADER};
use crate::domain::names::IdentityName;
use crate::domain::{IdentityId, KeyId};
use bytes::{Buf, BufMut, Bytes};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType, encode_varint, encoded_len_varint, skip_field};

/// What Check answers Envoy.
#[derive(Debug)]
pub enum CheckAnswer {
    /// The request goes upstream: see [`AllowedAnswer`].
    Allowed(AllowedAnswer),
    /// Envoy answers the request itself, with this `denied_response`.
    Refused(CheckResponse),
}

/// The OK answer: the identity headers set (replacing any the request
/// had), `headers_to_remove` removed, and the same four values as dynamic
/// metadata for Envoy's other filters and its access log.
#[derive(Debug)]
pub struct AllowedAnswer {
    /// `x-keyrack-identity-id` and `identity_id`.
    pub identity_id: IdentityId,
    /// `x-keyrack-identity-name` and `identity_name`.
    pub identity_name: IdentityName,
    /// `x-keyrack-identity-kind` and `identity_kind`: `SERVICE` or `PERSON`.
    pub identity_kind: &'static str,
    /// `x-keyrack-key-id` and `key_id`.
    pub key_id: KeyId,
    /// The credential (unless kept) and the client's own `x-keyrack-*`
    /// headers.
    pub headers_to_remove: Vec<Bytes>,
}

/// The four headers, in the order they are written, and their names as
/// dynamic metadata.
const VALUE_NAMES: [(&str, &str); 4] = [
    (IDENTITY_ID_HEADER, "identity_id"),
    (IDENTITY_NAME_HEADER, "identity_name"),
    (IDENTITY_KIND_HEADER, "identity_kind"),
    (KEY_ID_HEADER, "key_id"),
];

// Field numbers, each below 16, so that every key is one byte.
/// `CheckResponse`: `status`, `ok_response`, `dynamic_metadata`.
const RESPONSE_STATUS: u8 = 1;
const RESPONSE_OK: u8 = 3;
const RESPONSE_METADATA: u8 = 4;
/// `OkHttpResponse`: `headers`, `headers_to_remove`.
const OK_HEADERS: u8 = 2;
const OK_HEADERS_TO_REMOVE: u8 = 5;
/// `HeaderValueOption`: `header`, `append_action`.
const OPTION_HEADER: u8 = 1;
const OPTION_APPEND_ACTION: u8 = 3;
/// `HeaderValue` and a map entry: `key`, `value`.
const KEY: u8 = 1;
const VALUE: u8 = 2;
/// `Struct`: `fields`; `Value`: `string_value`.
const STRUCT_FIELDS: u8 = 1;
const VALUE_STRING: u8 = 3;

/// `append_action` for every header set: replace any value the request had.
const OVERWRITE: u64 = HeaderAppendAction::OverwriteIfExistsOrAdd as u64;

/// The size of a length-delimited field of `length` bytes, its key included.
fn delimited_len(length: usize) -> usize {
    1 + encoded_len_varint(length as u64) + length
}

/// The size of a `string` field, which proto3 leaves out when empty.
fn text_len(text: &[u8]) -> usize {
    if text.is_empty() {
        0
    } else {
        delimited_len(text.len())
    }
}

/// Writes a length-delimited field's key and length; its content follows.
fn put_delimited(buf: &mut impl BufMut, field: u8, length: usize) {
    buf.put_u8((field << 3) | WireType::LengthDelimited as u8);
    encode_varint(length as u64, buf);
}

/// Writes a `string` field, unless empty.
fn put_text(buf: &mut impl BufMut, field: u8, text: &[u8]) {
    if !text.is_empty() {
        put_delimited(buf, field, text.len());
        buf.put_slice(text);
    }
}

/// A `HeaderValueOption`'s `header`: a `HeaderValue`.
fn header_len(name: &str, value: &[u8]) -> usize {
    text_len(name.as_bytes()) + text_len(value)
}

/// A `HeaderValueOption`: the header and `append_action`.
fn option_len(name: &str, value: &[u8]) -> usize {
    delimited_len(header_len(name, value)) + 1 + encoded_len_varint(OVERWRITE)
}

/// A `google.protobuf.Value` holding a string: as a member of a oneof, an
/// empty string is still written, so the value reads back as a string.
fn string_value_len(text: &[u8]) -> usize {
    delimited_len(text.len())
}

/// An entry of `Struct.fields`.
fn metadata_entry_len(name: &str, text: &[u8]) -> usize {
    text_len(name.as_bytes()) + delimited_len(string_value_len(text))
}

impl AllowedAnswer {
    /// The four values, in [`VALUE_NAMES`]' order.
    fn values(&self) -> [&[u8]; 4] {
        [
            self.identity_id.as_str().as_bytes(),
            self.identity_name.as_str().as_bytes(),
            self.identity_kind.as_bytes(),
            self.key_id.as_str().as_bytes(),
        ]
    }

    /// `ok_response`'s size.
    fn ok_len(&self, values: &[&[u8]; 4]) -> usize {
        let set: usize = VALUE_NAMES
            .iter()
            .zip(values)
            .map(|((header, _), value)| delimited_len(option_len(header, value)))
            .sum();
        let removed: usize = self
            .headers_to_remove
            .iter()
            .map(|name| text_len(name))
            .sum();
        set + removed
    }

    /// `dynamic_metadata`'s size.
    fn metadata_len(values: &[&[u8]; 4]) -> usize {
        VALUE_NAMES
            .iter()
            .zip(values)
            .map(|((_, name), value)| delimited_len(metadata_entry_len(name, value)))
            .sum()
    }

    fn encoded_len(&self) -> usize {
        let values = self.values();
        // `status`: an empty `google.rpc.Status`, code OK.
        delimited_len(0)
            + delimited_len(self.ok_len(&values))
            + delimited_len(Self::metadata_len(&values))
    }

    fn write(&self, buf: &mut impl BufMut) {
        let values = self.values();
        put_delimited(buf, RESPONSE_STATUS, 0);
        put_delimited(buf, RESPONSE_OK, self.ok_len(&values));
        for ((header, _), value) in VALUE_NAMES.iter().zip(values) {
            put_delimited(buf, OK_HEADERS, option_len(header, value));
            put_delimited(buf, OPTION_HEADER, header_len(header, value));
            put_text(buf, KEY, header.as_bytes());
            put_text(buf, VALUE, value);
            buf.put_u8((OPTION_APPEND_ACTION << 3) | WireType::Varint as u8);
            encode_varint(OVERWRITE, buf);
        }
        for name in &self.headers_to_remove {
            put_text(buf, OK_HEADERS_TO_REMOVE, name);
        }
        put_delimited(buf, RESPONSE_METADATA, Self::metadata_len(&values));
        for ((_, name), value) in VALUE_NAMES.iter().zip(values) {
            put_delimited(buf, STRUCT_FIELDS, metadata_entry_len(name, value));
            put_text(buf, KEY, name.as_bytes());
            put_delimited(buf, VALUE, string_value_len(value));
            put_delimited(buf, VALUE_STRING, value.len());
            buf.put_slice(value);
        }
    }
}

/// Encoding only: keyrack writes answers and never reads one, so decoding
/// skips every field.
impl prost::Message for CheckAnswer {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        match self {
            Self::Allowed(allowed) => allowed.write(buf),
            Self::Refused(refused) => refused.encode_raw(buf),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        match self {
            Self::Allowed(allowed) => allowed.encoded_len(),
            Self::Refused(refused) => refused.encoded_len(),
        }
    }

    fn clear(&mut self) {
        *self = Self::Refused(CheckResponse::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
    use envoy_types::pb::envoy::service::auth::v3::{
        DeniedHttpResponse, OkHttpResponse, check_response,
    };
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    use envoy_types::pb::google::rpc;
    use prost::Message;

    fn allowed(name: IdentityName, remove: &[&'static str]) -> AllowedAnswer {
        let identity_id = IdentityId::generate();
        AllowedAnswer {
            key_id: KeyId::generate(&identity_id),
            identity_id,
            identity_name: name,
            identity_kind: "SERVICE",
            headers_to_remove: remove
                .iter()
                .map(|name| Bytes::from_static(name.as_bytes()))
                .collect(),
        }
    }

    fn expected(answer: &AllowedAnswer) -> CheckResponse {
        let header = |key: &str, value: &str| HeaderValueOption {
            header: Some(HeaderValue {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
            ..Default::default()
        };
        let text = |text: &str| Value {
            kind: Some(value::Kind::StringValue(text.into())),
        };
        let values = [
            answer.identity_id.as_str(),
            answer.identity_name.as_str(),
            answer.identity_kind,
            answer.key_id.as_str(),
        ];
        CheckResponse {
            status: Some(rpc::Status::default()),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers: VALUE_NAMES
                    .iter()
                    .zip(values)
                    .map(|((name, _), value)| header(name, value))
                    .collect(),
                headers_to_remove: answer
                    .headers_to_remove
                    .iter()
                    .map(|name| String::from_utf8(name.to_vec()).unwrap())
                    .collect(),
                ..Default::default()
            })),
            dynamic_metadata: Some(Struct {
                fields: VALUE_NAMES
                    .iter()
                    .zip(values)
                    .map(|((_, name), value)| ((*name).to_owned(), text(value)))
                    .collect(),
            }),
        }
    }

    #[test]
    fn an_allowed_answer_decodes_as_envoys_check_response() {
        for answer in [
            allowed(
                IdentityName::parse_service("billing").unwrap(),
                &["authorization"],
            ),
            allowed(IdentityName::parse_service("b").unwrap(), &[]),
            // A name past 127 bytes takes a two-byte length.
            allowed(
                IdentityName::parse_person(&"Zoë Ångström ".repeat(9)).unwrap(),
                &["x-keyrack-role", "x-api-key"],
            ),
        ] {
            let answer = CheckAnswer::Allowed(answer);
            let bytes = answer.encode_to_vec();
            assert_eq!(bytes.len(), answer.encoded_len());
            let CheckAnswer::Allowed(allowed) = &answer else {
                unreachable!()
            };
            assert_eq!(
                CheckResponse::decode(bytes.as_slice()).unwrap(),
                expected(allowed)
            );
        }
    }

    #[test]
    fn a_refusal_is_envoys_own_message() {
        let refused = CheckResponse {
            status: Some(rpc::Status {
                code: 7,
                message: "no".into(),
                details: Vec::new(),
            }),
            http_response: Some(check_response::HttpResponse::DeniedResponse(
                DeniedHttpResponse {
                    status: Some(HttpStatus { code: 403 }),
                    body: "{}".into(),
                    ..Default::default()
                },
            )),
            dynamic_metadata: None,
        };
        let bytes = CheckAnswer::Refused(refused.clone()).encode_to_vec();
        assert_eq!(CheckResponse::decode(bytes.as_slice()).unwrap(), refused);
    }
}
