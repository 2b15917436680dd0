//! The parts of Envoy's `CheckRequest` that Check reads, found in place.
//!
//! Check reads the source address, the path, the headers and the route's
//! `context_extensions`, and nothing else of what Envoy sends. Decoding
//! envoy-types' `CheckRequest` (every field, each string an allocation of
//! its own, the headers a `HashMap`), and then a prost view of only those
//! fields (each header a `Bytes` slice, reached through `Buf` calls), were
//! each the largest share of what Check cost beyond Verify (BENCHMARKS.md,
//! "Envoy external authorization"). So the message is walked once with
//! prost's wire primitives, and each field Check reads is kept as where its
//! bytes lie in the received message: nothing is copied, and the header list
//! is the one allocation.
//!
//! The walk follows the field numbers of Envoy's protos
//! (`envoy/service/auth/v3/external_auth.proto` and `attribute_context.proto`,
//! `envoy/config/core/v3/address.proto` and `base.proto`) and protobuf's
//! decoding rules, which the tests below hold to envoy-types' decoding:
//! - a field of another wire type than its declared one is malformed;
//! - a scalar sent twice has its last value, a message sent twice is merged,
//!   and a oneof member replaces the one before it;
//! - a `map<string, string>` is on the wire a list of entries (`key = 1`,
//!   `value = 2`), looked up as protobuf merges a map: the last entry of a
//!   key wins (a handful of entries is searched faster than it is hashed);
//! - every other field is skipped, and must still be well-formed.
//!
//! The `string` fields Check reads as text must be UTF-8, as in a decode.
//! Headers are checked only when read: a header Check does not read cannot
//! refuse a request.

use bytes::Bytes;
use prost::DecodeError;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, skip_field};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

/// Where a field's bytes lie in the received message.
type Span = Range<usize>;

/// `CheckRequest`, as what Check reads of it. Its `Debug` names the headers
/// and leaves out every value: one of them is the credential.
pub struct CheckRequestView {
    message: Bytes,
    attributes: Option<Attributes>,
}

/// `AttributeContext`.
#[derive(Default)]
struct Attributes {
    /// `source.address`.
    source: Source,
    /// `request.http`.
    http: Option<Http>,
    /// `context_extensions`, as its entries.
    context_extensions: Vec<(Span, Span)>,
}

/// The `address` oneof of `config.core.v3.Address`.
#[derive(Default)]
enum Source {
    #[default]
    Unset,
    /// `socket_address`: its `address` and, when the port is given as a
    /// number (`port_value` rather than `named_port`), the port.
    Socket { address: Span, port: Option<u32> },
    /// `pipe` or `envoy_internal_address`: no IP.
    Other,
}

/// `AttributeContext.HttpRequest`.
#[derive(Default)]
struct Http {
    /// `headers`, lowercased by Envoy, as its entries.
    headers: Vec<(Span, Span)>,
    /// `path`, with the query string.
    path: Span,
    /// `header_map.headers`, the headers instead when Envoy's filter sets
    /// `encode_raw_headers`: each one's `key`, `value` and `raw_value`.
    header_map: Vec<[Span; 3]>,
}

/// Why a request is not a `CheckRequest`.
#[derive(Debug)]
pub enum MalformedRequest {
    /// Not protobuf's wire format.
    Wire(DecodeError),
    /// A length-delimited field running past its message.
    Truncated,
    /// A field of another wire type than its declared one.
    WireType {
        field: u32,
        found: WireType,
        expected: WireType,
    },
    /// A `string` field Check reads that is not UTF-8.
    NotUtf8,
}

impl From<DecodeError> for MalformedRequest {
    fn from(error: DecodeError) -> Self {
        Self::Wire(error)
    }
}

impl std::fmt::Display for MalformedRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Wire(error) => write!(f, "{error}"),
            Self::Truncated => f.write_str("a field runs past the end of its message"),
            Self::WireType {
                field,
                found,
                expected,
            } => write!(
                f,
                "field {field} has wire type {found:?} where {expected:?} is declared"
            ),
            Self::NotUtf8 => f.write_str("a string field is not UTF-8"),
        }
    }
}

type Walked<T = ()> = Result<T, MalformedRequest>;

/// The fields of one message, in order, each with its offset in the whole
/// received message.
struct Fields<'a> {
    rest: &'a [u8],
    /// Where `rest` ends in the received message.
    end: usize,
}

impl<'a> Fields<'a> {
    fn of(message: &'a [u8]) -> Self {
        Self {
            rest: message,
            end: message.len(),
        }
    }

    /// Where the next unread byte lies in the received message.
    fn offset(&self) -> usize {
        self.end - self.rest.len()
    }

    /// The next field's number and wire type; `None` at the message's end.
    fn next(&mut self) -> Walked<Option<(u32, WireType)>> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        Ok(Some(decode_key(&mut self.rest)?))
    }

    fn expect(field: u32, found: WireType, expected: WireType) -> Walked {
        if found == expected {
            Ok(())
        } else {
            Err(MalformedRequest::WireType {
                field,
                found,
                expected,
            })
        }
    }

    /// A length-delimited field's content: an embedded message, a string or
    /// bytes.
    fn delimited(&mut self, field: u32, wire: WireType) -> Walked<Fields<'a>> {
        Self::expect(field, wire, WireType::LengthDelimited)?;
        let length = decode_varint(&mut self.rest)?;
        let length = usize::try_from(length)
            .ok()
            .filter(|length| *length <= self.rest.len())
            .ok_or(MalformedRequest::Truncated)?;
        let start = self.offset();
        let (content, rest) = self.rest.split_at(length);
        self.rest = rest;
        Ok(Fields {
            rest: content,
            end: start + length,
        })
    }

    /// A `bytes` field, or a `string` one read as bytes.
    fn bytes(&mut self, field: u32, wire: WireType) -> Walked<Span> {
        let content = self.delimited(field, wire)?;
        Ok(content.offset()..content.end)
    }

    /// A `string` field, which must be UTF-8.
    fn text(&mut self, field: u32, wire: WireType) -> Walked<Span> {
        let content = self.delimited(field, wire)?;
        std::str::from_utf8(content.rest).map_err(|_| MalformedRequest::NotUtf8)?;
        Ok(content.offset()..content.end)
    }

    fn varint(&mut self, field: u32, wire: WireType) -> Walked<u64> {
        Self::expect(field, wire, WireType::Varint)?;
        Ok(decode_varint(&mut self.rest)?)
    }

    /// Skips a field Check does not read, checking that it is well-formed.
    fn skip(&mut self, field: u32, wire: WireType) -> Walked {
        Ok(skip_field(
            wire,
            field,
            &mut self.rest,
            DecodeContext::default(),
        )?)
    }

    /// Skips every field of a message Check does not read.
    fn skip_all(mut self) -> Walked {
        while let Some((field, wire)) = self.next()? {
            self.skip(field, wire)?;
        }
        Ok(())
    }

    /// A `map<string, string>` entry: its key and value, each the last one
    /// sent (absent is empty), checked as UTF-8 when `text`.
    fn entry(mut self, text: bool) -> Walked<(Span, Span)> {
        let (mut key, mut value) = (0..0, 0..0);
        while let Some((field, wire)) = self.next()? {
            let slot = match field {
                1 => &mut key,
                2 => &mut value,
                _ => {
                    self.skip(field, wire)?;
                    continue;
                }
            };
            *slot = if text {
                self.text(field, wire)?
            } else {
                self.bytes(field, wire)?
            };
        }
        Ok((key, value))
    }
}

impl CheckRequestView {
    /// Walks `message`, a `CheckRequest`.
    pub fn decode(message: Bytes) -> Result<Self, MalformedRequest> {
        let mut attributes = None;
        let mut request = Fields::of(&message);
        while let Some((field, wire)) = request.next()? {
            match field {
                1 => read_attributes(
                    request.delimited(field, wire)?,
                    attributes.get_or_insert_with(Attributes::default),
                )?,
                _ => request.skip(field, wire)?,
            }
        }
        Ok(Self {
            message,
            attributes,
        })
    }

    /// `attributes`, if the request has them.
    pub fn attributes(&self) -> Option<AttributesView<'_>> {
        self.attributes.as_ref().map(|fields| AttributesView {
            message: &self.message,
            fields,
        })
    }
}

impl crate::grpc::codec::RequestMessage for CheckRequestView {
    type Malformed = MalformedRequest;

    fn decode_request(message: Bytes) -> Result<Self, MalformedRequest> {
        Self::decode(message)
    }
}

/// `AttributeContext`, merged into `into`.
fn read_attributes(mut fields: Fields<'_>, into: &mut Attributes) -> Walked {
    while let Some((field, wire)) = fields.next()? {
        match field {
            1 => read_peer(fields.delimited(field, wire)?, &mut into.source)?,
            4 => read_request(fields.delimited(field, wire)?, &mut into.http)?,
            10 => into
                .context_extensions
                .push(fields.delimited(field, wire)?.entry(true)?),
            _ => fields.skip(field, wire)?,
        }
    }
    Ok(())
}

/// `AttributeContext.Peer`, of which Check reads the address.
fn read_peer(mut fields: Fields<'_>, into: &mut Source) -> Walked {
    while let Some((field, wire)) = fields.next()? {
        match field {
            1 => read_address(fields.delimited(field, wire)?, into)?,
            _ => fields.skip(field, wire)?,
        }
    }
    Ok(())
}

/// `config.core.v3.Address`: the member of its oneof sent last is the
/// address; a socket address sent again is merged into the one before.
fn read_address(mut fields: Fields<'_>, into: &mut Source) -> Walked {
    while let Some((field, wire)) = fields.next()? {
        match field {
            1 => {
                let socket = fields.delimited(field, wire)?;
                if !matches!(into, Source::Socket { .. }) {
                    *into = Source::Socket {
                        address: 0..0,
                        port: None,
                    };
                }
                if let Source::Socket { address, port } = into {
                    read_socket_address(socket, address, port)?;
                }
            }
            2 | 3 => {
                fields.delimited(field, wire)?.skip_all()?;
                *into = Source::Other;
            }
            _ => fields.skip(field, wire)?,
        }
    }
    Ok(())
}

/// `config.core.v3.SocketAddress`: `address`, and the `port_specifier`
/// oneof (`port_value`, or `named_port`, which leaves no number).
fn read_socket_address(
    mut fields: Fields<'_>,
    address: &mut Span,
    port: &mut Option<u32>,
) -> Walked {
    while let Some((field, wire)) = fields.next()? {
        match field {
            2 => *address = fields.text(field, wire)?,
            // A uint32 is decoded as protobuf does: the varint's low 32 bits.
            3 => *port = Some(fields.varint(field, wire)? as u32),
            4 => {
                fields.text(field, wire)?;
                *port = None;
            }
            _ => fields.skip(field, wire)?,
        }
    }
    Ok(())
}

/// `AttributeContext.Request`, of which Check reads `http`.
fn read_request(mut fields: Fields<'_>, into: &mut Option<Http>) -> Walked {
    while let Some((field, wire)) = fields.next()? {
        match field {
            2 => read_http(
                fields.delimited(field, wire)?,
                into.get_or_insert_with(Http::default),
            )?,
            _ => fields.skip(field, wire)?,
        }
    }
    Ok(())
}

/// `AttributeContext.HttpRequest`.
fn read_http(mut fields: Fields<'_>, into: &mut Http) -> Walked {
    while let Some((field, wire)) = fields.next()? {
        match field {
            3 => into
                .headers
                .push(fields.delimited(field, wire)?.entry(false)?),
            4 => into.path = fields.text(field, wire)?,
            13 => read_header_map(fields.delimited(field, wire)?, &mut into.header_map)?,
            _ => fields.skip(field, wire)?,
        }
    }
    Ok(())
}

/// `config.core.v3.HeaderMap`: its headers, appended to `into`.
fn read_header_map(mut fields: Fields<'_>, into: &mut Vec<[Span; 3]>) -> Walked {
    while let Some((field, wire)) = fields.next()? {
        match field {
            1 => {
                let mut header = fields.delimited(field, wire)?;
                let mut spans = [0..0, 0..0, 0..0];
                while let Some((field, wire)) = header.next()? {
                    match field {
                        1..=3 => {
                            let slot = field as usize - 1;
                            spans[slot] = header.bytes(field, wire)?;
                        }
                        _ => header.skip(field, wire)?,
                    }
                }
                into.push(spans);
            }
            _ => fields.skip(field, wire)?,
        }
    }
    Ok(())
}

/// The bytes at `span` of `message`.
fn bytes_at<'a>(message: &'a [u8], span: &Span) -> &'a [u8] {
    message.get(span.clone()).unwrap_or_default()
}

/// The text at `span` of `message`: UTF-8, as the walk checked.
fn text_at<'a>(message: &'a [u8], span: &Span) -> &'a str {
    std::str::from_utf8(bytes_at(message, span)).unwrap_or_default()
}

/// A request's `AttributeContext`.
#[derive(Clone, Copy)]
pub struct AttributesView<'a> {
    message: &'a [u8],
    fields: &'a Attributes,
}

impl<'a> AttributesView<'a> {
    /// `request.http`, if the request has it.
    pub fn http(self) -> Option<HttpRequestView<'a>> {
        self.fields.http.as_ref().map(|fields| HttpRequestView {
            message: self.message,
            fields,
        })
    }

    /// The HTTP request's source IP and port as Envoy saw it, when it is a
    /// socket address with an IP (port 0 when the port is not a number
    /// below 65,536).
    pub fn source(self) -> Option<SocketAddr> {
        let Source::Socket { address, port } = &self.fields.source else {
            return None;
        };
        let ip: IpAddr = text_at(self.message, address).parse().ok()?;
        let port = port.and_then(|port| u16::try_from(port).ok()).unwrap_or(0);
        Some(SocketAddr::new(ip, port))
    }

    /// The route's `context_extensions` value for `key`.
    pub fn context_extension(self, key: &str) -> Option<&'a str> {
        self.fields
            .context_extensions
            .iter()
            .rev()
            .find(|(name, _)| bytes_at(self.message, name) == key.as_bytes())
            .map(|(_, value)| text_at(self.message, value))
    }

    /// The names of the route's `context_extensions`.
    pub fn context_extension_names(self) -> impl Iterator<Item = &'a str> {
        self.fields
            .context_extensions
            .iter()
            .map(move |(name, _)| text_at(self.message, name))
    }
}

/// A request's `AttributeContext.HttpRequest`.
#[derive(Clone, Copy)]
pub struct HttpRequestView<'a> {
    message: &'a [u8],
    fields: &'a Http,
}

impl<'a> HttpRequestView<'a> {
    /// `path`, with the query string.
    pub fn path(self) -> &'a str {
        text_at(self.message, &self.fields.path)
    }

    /// A request header's value, if it is text. Envoy lowercases names; it
    /// sends either the `headers` map or, with `encode_raw_headers`, the
    /// `header_map` list.
    pub fn header(self, name: &str) -> Option<&'a str> {
        let message = self.message;
        let value = match self
            .fields
            .headers
            .iter()
            .rev()
            .find(|(key, _)| bytes_at(message, key) == name.as_bytes())
        {
            Some((_, value)) => bytes_at(message, value),
            None => self
                .fields
                .header_map
                .iter()
                .find(|[key, ..]| bytes_at(message, key).eq_ignore_ascii_case(name.as_bytes()))
                .map(|[_, value, raw_value]| {
                    if raw_value.is_empty() {
                        bytes_at(message, value)
                    } else {
                        bytes_at(message, raw_value)
                    }
                })?,
        };
        std::str::from_utf8(value).ok()
    }

    /// The names of the request's headers, as sent.
    pub fn header_names(self) -> impl Iterator<Item = &'a [u8]> {
        let message = self.message;
        let listed = self
            .fields
            .header_map
            .iter()
            .map(move |[key, ..]| bytes_at(message, key));
        self.fields
            .headers
            .iter()
            .map(move |(key, _)| bytes_at(message, key))
            .chain(listed)
    }
}

impl std::fmt::Debug for CheckRequestView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let headers: Vec<String> = self
            .attributes()
            .and_then(AttributesView::http)
            .map(|http| {
                http.header_names()
                    .map(|name| String::from_utf8_lossy(name).into_owned())
                    .collect()
            })
            .unwrap_or_default();
        f.debug_struct("CheckRequestView")
            .field("header_names", &headers)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        Address, HeaderMap, HeaderValue, Pipe, SocketAddress, address, socket_address,
    };
    use envoy_types::pb::envoy::service::auth::v3::attribute_context::{
        HttpRequest, Peer, Request,
    };
    use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};
    use prost::Message;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use std::collections::HashMap;

    fn socket(address: &str, port: u32) -> Option<Address> {
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: address.to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        })
    }

    fn pairs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
            .collect()
    }

    /// A request with every field Check reads and many it does not.
    fn envoy_request() -> CheckRequest {
        CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: socket("10.0.0.7", 51234),
                    service: "client".into(),
                    principal: "spiffe://example/client".into(),
                    labels: pairs(&[("app", "web")]),
                    ..Default::default()
                }),
                destination: Some(Peer {
                    address: socket("10.0.0.2", 10000),
                    ..Default::default()
                }),
                request: Some(Request {
                    time: Some(Default::default()),
                    http: Some(HttpRequest {
                        id: "13377357429641548512".into(),
                        method: "GET".into(),
                        headers: pairs(&[
                            (":path", "/invoices/42?page=2"),
                            ("authorization", "Bearer secret"),
                            ("x-request-id", "abc"),
                        ]),
                        header_map: Some(HeaderMap {
                            headers: vec![HeaderValue {
                                key: "x-raw".into(),
                                raw_value: b"raw".to_vec(),
                                ..Default::default()
                            }],
                        }),
                        path: "/invoices/42?page=2".into(),
                        host: "app.example".into(),
                        scheme: "http".into(),
                        protocol: "HTTP/1.1".into(),
                        body: "ignored".into(),
                        size: 7,
                        ..Default::default()
                    }),
                }),
                context_extensions: pairs(&[("keyrack-scopes", "read write")]),
                ..Default::default()
            }),
        }
    }

    /// The header and extension names the random requests use, and one
    /// they never send.
    const NAMES: [&str; 7] = [
        "authorization",
        "x-api-key",
        "x-request-id",
        "x-keyrack-identity-id",
        "accept",
        "keyrack-cost",
        "absent",
    ];
    const SENT: &[&str] = NAMES.split_at(6).0;

    fn walk(bytes: &[u8]) -> Result<CheckRequestView, MalformedRequest> {
        CheckRequestView::decode(Bytes::copy_from_slice(bytes))
    }

    #[test]
    fn the_view_reads_what_envoy_types_encodes_under_the_same_field_numbers() {
        let view = walk(&envoy_request().encode_to_vec()).unwrap();
        let attributes = view.attributes().unwrap();
        assert_eq!(attributes.source(), Some("10.0.0.7:51234".parse().unwrap()));
        assert_eq!(
            attributes.context_extension("keyrack-scopes"),
            Some("read write")
        );
        let http = attributes.http().unwrap();
        assert_eq!(http.path(), "/invoices/42?page=2");
        assert_eq!(http.header_names().count(), 4);
        assert_eq!(http.header("authorization"), Some("Bearer secret"));
        assert_eq!(http.header("x-request-id"), Some("abc"));
        assert_eq!(http.header("X-Raw"), Some("raw"));
        assert_eq!(http.header("traceparent"), None);
    }

    #[test]
    fn a_later_address_of_the_oneof_replaces_the_socket_address() {
        let source = |address: Option<Address>| {
            CheckRequest {
                attributes: Some(AttributeContext {
                    source: Some(Peer {
                        address,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }
            .encode_to_vec()
        };
        let pipe = Some(Address {
            address: Some(address::Address::Pipe(Pipe {
                path: "/run/envoy.sock".into(),
                mode: 0,
            })),
        });
        let mut bytes = source(socket("10.0.0.7", 1));
        bytes.extend(source(pipe.clone()));
        assert_eq!(walk(&bytes).unwrap().attributes().unwrap().source(), None);
        // And back: a socket address after a pipe starts afresh.
        let mut bytes = source(pipe);
        bytes.extend(source(socket("10.0.0.8", 2)));
        assert_eq!(
            walk(&bytes).unwrap().attributes().unwrap().source(),
            Some("10.0.0.8:2".parse().unwrap())
        );
    }

    #[test]
    fn a_socket_address_sent_twice_is_merged_field_by_field() {
        let mut bytes = CheckRequest {
            attributes: Some(AttributeContext {
                source: Some(Peer {
                    address: socket("10.0.0.7", 51234),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        // Only the port again: the address stays.
        bytes.extend(
            CheckRequest {
                attributes: Some(AttributeContext {
                    source: Some(Peer {
                        address: Some(Address {
                            address: Some(address::Address::SocketAddress(SocketAddress {
                                port_specifier: Some(socket_address::PortSpecifier::PortValue(
                                    8443,
                                )),
                                ..Default::default()
                            })),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        );
        let envoy = CheckRequest::decode(bytes.as_slice()).unwrap();
        let Some(address::Address::SocketAddress(merged)) = envoy
            .attributes
            .unwrap()
            .source
            .unwrap()
            .address
            .unwrap()
            .address
        else {
            panic!("a socket address")
        };
        assert_eq!(merged.address, "10.0.0.7");
        assert_eq!(
            walk(&bytes).unwrap().attributes().unwrap().source(),
            Some("10.0.0.7:8443".parse().unwrap())
        );
    }

    #[test]
    fn a_key_sent_twice_has_its_last_value_as_in_a_decoded_map() {
        let entries = |value: &str| {
            CheckRequest {
                attributes: Some(AttributeContext {
                    context_extensions: [("keyrack-cost".to_owned(), value.to_owned())].into(),
                    ..Default::default()
                }),
            }
            .encode_to_vec()
        };
        let mut bytes = entries("1");
        bytes.extend(entries("5"));
        let envoy = CheckRequest::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            envoy.attributes.unwrap().context_extensions["keyrack-cost"],
            "5"
        );
        let view = walk(&bytes).unwrap();
        assert_eq!(
            view.attributes().unwrap().context_extension("keyrack-cost"),
            Some("5")
        );
    }

    /// Envoy's encoding of a random request: random headers (some twice
    /// over through merged messages), path, source and extensions.
    fn random_request(random: &mut StdRng) -> Vec<u8> {
        let text = |random: &mut StdRng| -> String {
            let length = random.random_range(0..12);
            (0..length)
                .map(|_| char::from(random.random_range(b' '..=b'~')))
                .collect()
        };
        let mut bytes = Vec::new();
        for _ in 0..random.random_range(1..4) {
            let mut headers = HashMap::new();
            for _ in 0..random.random_range(0..6) {
                headers.insert(
                    SENT[random.random_range(0..SENT.len())].to_owned(),
                    text(random),
                );
            }
            let mut extensions = HashMap::new();
            for _ in 0..random.random_range(0..3) {
                extensions.insert(
                    SENT[random.random_range(0..SENT.len())].to_owned(),
                    text(random),
                );
            }
            let address = match random.random_range(0..4) {
                0 => None,
                1 => socket(&text(random), random.random()),
                2 => socket(
                    &format!("10.0.{}.{}", random.random::<u8>(), random.random::<u8>()),
                    random.random_range(0..70_000),
                ),
                _ => Some(Address {
                    address: Some(address::Address::Pipe(Pipe {
                        path: text(random),
                        mode: 0,
                    })),
                }),
            };
            let raw = (0..random.random_range(0..3))
                .map(|_| HeaderValue {
                    key: SENT[random.random_range(0..SENT.len())].to_uppercase(),
                    value: text(random),
                    raw_value: if random.random() {
                        text(random).into_bytes()
                    } else {
                        Vec::new()
                    },
                })
                .collect();
            let request = CheckRequest {
                attributes: Some(AttributeContext {
                    source: Some(Peer {
                        address,
                        service: text(random),
                        ..Default::default()
                    }),
                    destination: Some(Peer {
                        address: socket("10.0.0.2", 10000),
                        ..Default::default()
                    }),
                    request: Some(Request {
                        time: None,
                        http: Some(HttpRequest {
                            method: text(random),
                            headers,
                            path: if random.random() {
                                text(random)
                            } else {
                                String::new()
                            },
                            header_map: random
                                .random::<bool>()
                                .then_some(HeaderMap { headers: raw }),
                            ..Default::default()
                        }),
                    }),
                    context_extensions: extensions,
                    ..Default::default()
                }),
            };
            bytes.extend(request.encode_to_vec());
        }
        bytes
    }

    /// What envoy-types decodes of a request, in the view's terms: each of
    /// [`NAMES`] as a header and as a context extension.
    struct Expected {
        source: Option<SocketAddr>,
        path: String,
        headers: Vec<Option<String>>,
        extensions: Vec<Option<String>>,
    }

    fn decoded(bytes: &[u8]) -> Option<Expected> {
        let attributes = CheckRequest::decode(bytes).ok()?.attributes?;
        let source = match attributes
            .source
            .and_then(|peer| peer.address)
            .and_then(|address| address.address)
        {
            Some(address::Address::SocketAddress(socket)) => {
                socket.address.parse::<IpAddr>().ok().map(|ip| {
                    let port = match socket.port_specifier {
                        Some(socket_address::PortSpecifier::PortValue(port)) => {
                            u16::try_from(port).unwrap_or(0)
                        }
                        _ => 0,
                    };
                    SocketAddr::new(ip, port)
                })
            }
            _ => None,
        };
        let http = attributes.request?.http?;
        let raw = http.header_map.unwrap_or_default().headers;
        let headers = NAMES
            .iter()
            .map(|name| {
                http.headers.get(*name).cloned().or_else(|| {
                    raw.iter()
                        .find(|header| header.key.eq_ignore_ascii_case(name))
                        .and_then(|header| {
                            if header.raw_value.is_empty() {
                                Some(header.value.clone())
                            } else {
                                String::from_utf8(header.raw_value.clone()).ok()
                            }
                        })
                })
            })
            .collect();
        let extensions = NAMES
            .iter()
            .map(|name| attributes.context_extensions.get(*name).cloned())
            .collect();
        Some(Expected {
            source,
            path: http.path,
            headers,
            extensions,
        })
    }

    #[test]
    fn random_requests_read_as_envoy_types_decodes_them() {
        let mut random = StdRng::seed_from_u64(7);
        for _ in 0..2_000 {
            let bytes = random_request(&mut random);
            let Some(expected) = decoded(&bytes) else {
                panic!("envoy-types decodes what it encoded")
            };
            let view = walk(&bytes).unwrap();
            let attributes = view.attributes().unwrap();
            let http = attributes.http().unwrap();
            assert_eq!(attributes.source(), expected.source);
            assert_eq!(http.path(), expected.path);
            for (index, name) in NAMES.iter().enumerate() {
                assert_eq!(
                    http.header(name).map(str::to_owned),
                    expected.headers[index],
                    "{name}"
                );
                assert_eq!(
                    attributes.context_extension(name).map(str::to_owned),
                    expected.extensions[index],
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn what_the_view_refuses_envoy_types_refuses_too() {
        // Every truncation and many one-byte changes of random requests: a
        // request the walk refuses does not decode, and one both read reads
        // alike. (The walk accepts more: it skips fields it does not read
        // without checking their UTF-8.)
        let mut random = StdRng::seed_from_u64(11);
        let (mut refused, mut read) = (0, 0);
        for _ in 0..200 {
            let original = random_request(&mut random);
            let mut variants: Vec<Vec<u8>> = (0..original.len())
                .step_by(3)
                .map(|cut| original[..cut].to_vec())
                .collect();
            for _ in 0..40 {
                let mut changed = original.clone();
                let at = random.random_range(0..changed.len());
                changed[at] = random.random();
                variants.push(changed);
            }
            for bytes in variants {
                match walk(&bytes) {
                    Err(_) => {
                        refused += 1;
                        assert!(CheckRequest::decode(bytes.as_slice()).is_err());
                    }
                    Ok(view) => {
                        read += 1;
                        let Some(expected) = decoded(&bytes) else {
                            continue;
                        };
                        let Some(http) = view.attributes().and_then(AttributesView::http) else {
                            continue;
                        };
                        assert_eq!(view.attributes().unwrap().source(), expected.source);
                        assert_eq!(http.path(), expected.path);
                        for (index, name) in NAMES.iter().enumerate() {
                            assert_eq!(
                                http.header(name).map(str::to_owned),
                                expected.headers[index]
                            );
                        }
                    }
                }
            }
        }
        assert!(
            refused > 1_000 && read > 1_000,
            "{refused} refused, {read} read"
        );
    }

    #[test]
    fn a_field_of_the_wrong_wire_type_is_malformed() {
        // attributes (field 1) as a varint.
        assert!(matches!(
            walk(&[0x08, 0x01]),
            Err(MalformedRequest::WireType { field: 1, .. })
        ));
        // A length running past the message.
        assert!(matches!(
            walk(&[0x0a, 0x05, 0x00]),
            Err(MalformedRequest::Truncated)
        ));
        // A path that is not UTF-8.
        let mut bytes = CheckRequest {
            attributes: Some(AttributeContext {
                request: Some(Request {
                    time: None,
                    http: Some(HttpRequest {
                        path: "/\u{e9}".into(),
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
        }
        .encode_to_vec();
        let last = bytes.len() - 1;
        bytes[last] = 0xff;
        assert!(matches!(walk(&bytes), Err(MalformedRequest::NotUtf8)));
        assert!(CheckRequest::decode(bytes.as_slice()).is_err());
    }

    #[test]
    fn debug_output_hides_header_values() {
        let view = walk(&envoy_request().encode_to_vec()).unwrap();
        let shown = format!("{view:?}");
        assert!(shown.contains("authorization"));
        assert!(!shown.contains("secret"));
        assert!(!shown.contains("Bearer"));
        assert!(!shown.contains("invoices"));
    }
}
