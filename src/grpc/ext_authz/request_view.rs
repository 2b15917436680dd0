//! The parts of Envoy's `CheckRequest` that Check reads.
//!
//! envoy-types' `CheckRequest` decodes everything Envoy sends: both peers,
//! the request's id, method, host, scheme and protocol, each into a `String`
//! of its own, and the headers into a `HashMap`. Check reads the source
//! address, the path, the headers and the route's `context_extensions`, and
//! decoding the rest was a large share of what Check cost beyond Verify
//! (BENCHMARKS.md, "Envoy external authorization"). These messages declare
//! only those fields, under the field numbers of Envoy's protos
//! (`envoy/service/auth/v3/external_auth.proto` and `attribute_context.proto`,
//! `envoy/config/core/v3/address.proto` and `base.proto`; the tests below
//! hold them to envoy-types' encoding), so they decode the same bytes and
//! prost skips every other field without allocating.
//!
//! A `map<string, string>` is on the wire a repeated message of `key = 1`,
//! `value = 2`; it is decoded as that list, and looked up as protobuf merges
//! a map, the last entry of a key winning: a handful of headers is searched
//! faster than it is hashed.
//!
//! Headers are decoded as `Bytes`, slices of the received message rather
//! than copies, and only the ones Check reads are required to be UTF-8 text:
//! a header it does not read cannot refuse a request.

use bytes::Bytes;

/// `CheckRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequestView {
    /// `attributes`.
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContextView>,
}

/// `AttributeContext`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContextView {
    /// `source`: the downstream client, as Envoy saw it.
    #[prost(message, optional, tag = "1")]
    pub source: Option<PeerView>,
    /// `request`.
    #[prost(message, optional, tag = "4")]
    pub request: Option<RequestView>,
    /// `context_extensions`: the route's settings.
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<MapEntry>,
}

/// `AttributeContext.Peer`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PeerView {
    /// `address`.
    #[prost(message, optional, tag = "1")]
    pub address: Option<AddressView>,
}

/// `config.core.v3.Address`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AddressView {
    /// The `address` oneof. Its other members are declared, unread, so that
    /// one of them sent after a socket address replaces it, as in Envoy's
    /// message.
    #[prost(oneof = "address_view::Address", tags = "1, 2, 3")]
    pub address: Option<address_view::Address>,
}

/// The members of [`AddressView`]'s oneof.
pub mod address_view {
    /// `config.core.v3.Address.address`, its members named as Envoy names them.
    #[derive(Clone, PartialEq, prost::Oneof)]
    #[allow(clippy::enum_variant_names)]
    pub enum Address {
        /// `socket_address`.
        #[prost(message, tag = "1")]
        SocketAddress(super::SocketAddressView),
        /// `pipe`.
        #[prost(message, tag = "2")]
        Pipe(super::Unread),
        /// `envoy_internal_address`.
        #[prost(message, tag = "3")]
        EnvoyInternalAddress(super::Unread),
    }
}

/// `config.core.v3.SocketAddress`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddressView {
    /// `address`.
    #[prost(string, tag = "2")]
    pub address: String,
    /// The `port_specifier` oneof.
    #[prost(oneof = "socket_address_view::PortSpecifier", tags = "3, 4")]
    pub port_specifier: Option<socket_address_view::PortSpecifier>,
}

/// The members of [`SocketAddressView`]'s oneof.
pub mod socket_address_view {
    /// `config.core.v3.SocketAddress.port_specifier`.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum PortSpecifier {
        /// `port_value`.
        #[prost(uint32, tag = "3")]
        PortValue(u32),
        /// `named_port`.
        #[prost(string, tag = "4")]
        NamedPort(String),
    }
}

/// A message whose content Check does not read: every field is skipped.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Unread {}

/// `AttributeContext.Request`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RequestView {
    /// `http`.
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequestView>,
}

/// `AttributeContext.HttpRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequestView {
    /// `headers`, lowercased by Envoy.
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<HeaderEntry>,
    /// `path`, with the query string.
    #[prost(string, tag = "4")]
    pub path: String,
    /// `header_map`: the headers instead, when Envoy's filter sets
    /// `encode_raw_headers`.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMapView>,
}

/// An entry of a `map<string, string>`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MapEntry {
    /// `key`.
    #[prost(string, tag = "1")]
    pub key: String,
    /// `value`.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// An entry of `HttpRequest.headers`, a `map<string, string>`. Its `Debug`
/// hides the value, which may be the credential.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct HeaderEntry {
    /// `key`.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// `value`.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMapView {
    /// `headers`.
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<HeaderValueView>,
}

/// `config.core.v3.HeaderValue`. Its `Debug` hides the value, which may be
/// the credential.
#[derive(Clone, PartialEq, prost::Message)]
#[prost(skip_debug)]
pub struct HeaderValueView {
    /// `key`.
    #[prost(bytes = "bytes", tag = "1")]
    pub key: Bytes,
    /// `value`, when the value is sent as text.
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
    /// `raw_value`, when it is sent as bytes.
    #[prost(bytes = "bytes", tag = "3")]
    pub raw_value: Bytes,
}

/// A map's value for `key`: the last entry's, as protobuf decodes a map.
pub fn map_get<'a>(entries: &'a [MapEntry], key: &str) -> Option<&'a str> {
    entries
        .iter()
        .rev()
        .find(|entry| entry.key == key)
        .map(|entry| entry.value.as_str())
}

impl HttpRequestView {
    /// A request header's value, if it is text. Envoy lowercases names; it
    /// sends either the `headers` map or, with `encode_raw_headers`, the
    /// `header_map` list.
    pub fn header(&self, name: &str) -> Option<&str> {
        let value = match self
            .headers
            .iter()
            .rev()
            .find(|header| header.key == name.as_bytes())
        {
            Some(header) => &header.value,
            None => self
                .header_map
                .as_ref()?
                .headers
                .iter()
                .find(|header| header.key.eq_ignore_ascii_case(name.as_bytes()))
                .map(|header| {
                    if header.raw_value.is_empty() {
                        &header.value
                    } else {
                        &header.raw_value
                    }
                })?,
        };
        std::str::from_utf8(value).ok()
    }

    /// The names of the request's headers, as sent.
    pub fn header_names(&self) -> impl Iterator<Item = &[u8]> {
        let listed = self
            .header_map
            .iter()
            .flat_map(|map| map.headers.iter().map(|header| &header.key[..]));
        self.headers
            .iter()
            .map(|header| &header.key[..])
            .chain(listed)
    }
}

impl std::fmt::Debug for HeaderEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderEntry")
            .field("key", &self.key)
            .field("value", &"[redacted]")
            .finish()
    }
}

impl std::fmt::Debug for HeaderValueView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeaderValueView")
            .field("key", &self.key)
            .field("value", &"[redacted]")
            .finish()
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

    fn socket(address: &str, port: u32) -> Option<Address> {
        Some(Address {
            address: Some(address::Address::SocketAddress(SocketAddress {
                address: address.to_owned(),
                port_specifier: Some(socket_address::PortSpecifier::PortValue(port)),
                ..Default::default()
            })),
        })
    }

    /// A request with every field Check reads and many it does not.
    fn envoy_request() -> CheckRequest {
        let pairs = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                .collect()
        };
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

    #[test]
    fn the_view_reads_what_envoy_types_encodes_under_the_same_field_numbers() {
        let bytes = envoy_request().encode_to_vec();
        let view = CheckRequestView::decode(bytes.as_slice()).unwrap();
        let attributes = view.attributes.unwrap();
        let Some(address_view::Address::SocketAddress(source)) =
            attributes.source.unwrap().address.unwrap().address
        else {
            panic!("the source is a socket address")
        };
        assert_eq!(source.address, "10.0.0.7");
        assert_eq!(
            source.port_specifier,
            Some(socket_address_view::PortSpecifier::PortValue(51234))
        );
        assert_eq!(
            map_get(&attributes.context_extensions, "keyrack-scopes"),
            Some("read write")
        );
        let http = attributes.request.unwrap().http.unwrap();
        assert_eq!(http.path, "/invoices/42?page=2");
        assert_eq!(http.headers.len(), 3);
        assert_eq!(http.header("authorization"), Some("Bearer secret"));
        assert_eq!(http.header("x-request-id"), Some("abc"));
        assert_eq!(http.header("X-Raw"), Some("raw"));
        assert_eq!(http.header("traceparent"), None);
    }

    #[test]
    fn a_later_address_of_the_oneof_replaces_the_socket_address() {
        let mut bytes = Address {
            address: socket("10.0.0.7", 1).unwrap().address,
        }
        .encode_to_vec();
        bytes.extend(
            Address {
                address: Some(address::Address::Pipe(Pipe {
                    path: "/run/envoy.sock".into(),
                    mode: 0,
                })),
            }
            .encode_to_vec(),
        );
        let envoy = Address::decode(bytes.as_slice()).unwrap();
        let view = AddressView::decode(bytes.as_slice()).unwrap();
        assert!(matches!(envoy.address, Some(address::Address::Pipe(_))));
        assert!(matches!(view.address, Some(address_view::Address::Pipe(_))));
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
        let view = CheckRequestView::decode(bytes.as_slice()).unwrap();
        assert_eq!(
            envoy.attributes.unwrap().context_extensions["keyrack-cost"],
            "5"
        );
        assert_eq!(
            map_get(&view.attributes.unwrap().context_extensions, "keyrack-cost"),
            Some("5")
        );
    }

    #[test]
    fn debug_output_hides_header_values() {
        let view = CheckRequestView::decode(envoy_request().encode_to_vec().as_slice()).unwrap();
        let shown = format!("{view:?}");
        assert!(shown.contains("authorization"));
        assert!(!shown.contains("secret"));
        assert!(!shown.contains("114, 97, 119"));
    }
}
