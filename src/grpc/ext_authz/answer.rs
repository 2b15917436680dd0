//! Envoy's `CheckResponse` as keyrack writes it.
//!
//! An allowed request's answer names four headers and carries the same four
//! values as `dynamic_metadata`. Built from envoy-types' messages, that is
//! about twenty allocations a call: each header name and value an owned
//! `String`, and the metadata a `google.protobuf.Struct`, whose `HashMap`
//! is hashed into and then iterated to encode. These messages declare the
//! fields keyrack writes under the field numbers of Envoy's protos
//! (`envoy/service/auth/v3/external_auth.proto`,
//! `envoy/config/core/v3/base.proto`, `google/protobuf/struct.proto`; the
//! tests below decode them with envoy-types), with `Bytes` where the text is
//! fixed or written twice: a `string` and a `bytes` field are the same on
//! the wire. A refusal, the rarer answer, keeps envoy-types' own
//! `DeniedHttpResponse`.

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::service::auth::v3::DeniedHttpResponse;
use envoy_types::pb::google::rpc;

/// `CheckResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckAnswer {
    /// `status`: OK to allow, any other code to refuse.
    #[prost(message, optional, tag = "1")]
    pub status: Option<rpc::Status>,
    /// The `http_response` oneof.
    #[prost(oneof = "check_answer::HttpResponse", tags = "2, 3")]
    pub http_response: Option<check_answer::HttpResponse>,
    /// `dynamic_metadata`.
    #[prost(message, optional, tag = "4")]
    pub dynamic_metadata: Option<MetadataStruct>,
}

/// The members of [`CheckAnswer`]'s oneof.
pub mod check_answer {
    /// `CheckResponse.http_response`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum HttpResponse {
        /// `denied_response`.
        #[prost(message, tag = "2")]
        DeniedResponse(super::DeniedHttpResponse),
        /// `ok_response`.
        #[prost(message, tag = "3")]
        OkResponse(super::OkAnswer),
    }
}

/// `OkHttpResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct OkAnswer {
    /// `headers`: set on the request before it goes upstream.
    #[prost(message, repeated, tag = "2")]
    pub headers: Vec<HeaderToSet>,
    /// `headers_to_remove`.
    #[prost(bytes = "bytes", repeated, tag = "5")]
    pub headers_to_remove: Vec<Bytes>,
}

/// `config.core.v3.HeaderValueOption`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderToSet {
    /// `header`.
    #[prost(message, optional, tag = "1")]
    pub header: Option<HeaderText>,
    /// `append_action`, a `HeaderAppendAction`.
    #[prost(int32, tag = "3")]
    pub append_action: i32,
}

impl HeaderToSet {
    /// `name: value`, replacing any value the request already had.
    pub fn overwrite(name: Bytes, value: Bytes) -> Self {
        Self {
            header: Some(HeaderText { key: name, value }),
            append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        }
    }
}

/// `config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderText {
    /// `key`.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// `value`.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `google.protobuf.Struct` whose values are all strings.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataStruct {
    /// `fields`, a `map<string, Value>` written as its entries.
    #[prost(message, repeated, tag = "1")]
    pub fields: Vec<MetadataField>,
}

/// An entry of `Struct.fields`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetadataField {
    /// `key`.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// `value`.
    #[prost(message, optional, tag = "2")]
    pub value: Option<StringValue>,
}

impl MetadataField {
    /// `name: "text"`.
    pub fn text(name: Bytes, text: Bytes) -> Self {
        Self {
            key: name,
            value: Some(StringValue {
                kind: Some(string_value::Kind::StringValue(text)),
            }),
        }
    }
}

/// `google.protobuf.Value` holding a string.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StringValue {
    /// The `kind` oneof: as a member of a oneof, an empty string is still
    /// written, so the value reads back as a string.
    #[prost(oneof = "string_value::Kind", tags = "3")]
    pub kind: Option<string_value::Kind>,
}

/// The member of [`StringValue`]'s oneof.
pub mod string_value {
    /// `google.protobuf.Value.kind`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Kind {
        /// `string_value`.
        #[prost(bytes = "bytes", tag = "3")]
        StringValue(super::Bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
    use envoy_types::pb::envoy::service::auth::v3::{
        CheckResponse, OkHttpResponse, check_response,
    };
    use envoy_types::pb::envoy::r#type::v3::HttpStatus;
    use envoy_types::pb::google::protobuf::{Struct, Value, value};
    use prost::Message;

    #[test]
    fn an_allowed_answer_decodes_as_envoys_check_response() {
        let answer = CheckAnswer {
            status: Some(rpc::Status::default()),
            http_response: Some(check_answer::HttpResponse::OkResponse(OkAnswer {
                headers: vec![
                    HeaderToSet::overwrite(Bytes::from_static(b"x-a"), Bytes::from_static(b"1")),
                    HeaderToSet::overwrite(Bytes::from_static(b"x-b"), Bytes::new()),
                ],
                headers_to_remove: vec![Bytes::from_static(b"authorization")],
            })),
            dynamic_metadata: Some(MetadataStruct {
                fields: vec![
                    MetadataField::text(Bytes::from_static(b"a"), Bytes::from_static(b"1")),
                    MetadataField::text(Bytes::from_static(b"b"), Bytes::new()),
                ],
            }),
        };
        let decoded = CheckResponse::decode(answer.encode_to_vec().as_slice()).unwrap();
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
        assert_eq!(
            decoded,
            CheckResponse {
                status: Some(rpc::Status::default()),
                http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                    headers: vec![header("x-a", "1"), header("x-b", "")],
                    headers_to_remove: vec!["authorization".into()],
                    ..Default::default()
                })),
                dynamic_metadata: Some(Struct {
                    fields: [("a".into(), text("1")), ("b".into(), text(""))].into(),
                }),
            }
        );
    }

    #[test]
    fn a_refusal_decodes_as_envoys_check_response() {
        let denied = DeniedHttpResponse {
            status: Some(HttpStatus { code: 403 }),
            body: "{}".into(),
            ..Default::default()
        };
        let status = rpc::Status {
            code: 7,
            message: "no".into(),
            details: Vec::new(),
        };
        let answer = CheckAnswer {
            status: Some(status.clone()),
            http_response: Some(check_answer::HttpResponse::DeniedResponse(denied.clone())),
            dynamic_metadata: None,
        };
        let decoded = CheckResponse::decode(answer.encode_to_vec().as_slice()).unwrap();
        assert_eq!(
            decoded,
            CheckResponse {
                status: Some(status),
                http_response: Some(check_response::HttpResponse::DeniedResponse(denied)),
                dynamic_metadata: None,
            }
        );
    }
}
