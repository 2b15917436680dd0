//! SCIM discovery (RFC 7644 §4): ServiceProviderConfig, ResourceTypes and
//! Schemas. The User schema lists exactly the attributes keyrack stores, so a
//! client never sends a value in the belief that it will be kept.

use super::filter::MAX_FILTER_CHARS;
use super::user::USER_SCHEMA;
use super::{MAX_BODY_BYTES, MAX_PAGE_COUNT};
use serde_json::{Value, json};

const SERVICE_PROVIDER_CONFIG_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

/// `/ServiceProviderConfig`.
pub fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": [SERVICE_PROVIDER_CONFIG_SCHEMA],
        "documentationUri": "https://github.com/keyrack/keyrack#scim-provisioning",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_PAGE_COUNT},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "keyrack admin token",
            "description": format!(
                "`Authorization: Bearer <token>` of a keyrack admin identity. Bodies up to {MAX_BODY_BYTES} bytes, filters up to {MAX_FILTER_CHARS} characters."
            ),
            "primary": true,
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base}/ServiceProviderConfig"),
        },
    })
}

/// The User resource type.
pub fn user_resource_type(base: &str) -> Value {
    json!({
        "schemas": [RESOURCE_TYPE_SCHEMA],
        "id": "User",
        "name": "User",
        "endpoint": "/Users",
        "description": "A person: a keyrack PERSON identity, managed by the identity provider",
        "schema": USER_SCHEMA,
        "schemaExtensions": [],
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
    })
}

/// One attribute definition (RFC 7643 §7).
struct Attr {
    name: &'static str,
    kind: &'static str,
    multi_valued: bool,
    required: bool,
    mutability: &'static str,
    returned: &'static str,
    uniqueness: &'static str,
    case_exact: bool,
    description: &'static str,
    sub_attributes: Vec<Attr>,
}

impl Attr {
    /// A single-valued, optional, read-write string returned by default.
    fn text(name: &'static str, description: &'static str) -> Self {
        Self {
            name,
            kind: "string",
            multi_valued: false,
            required: false,
            mutability: "readWrite",
            returned: "default",
            uniqueness: "none",
            case_exact: false,
            description,
            sub_attributes: Vec::new(),
        }
    }

    fn kind(self, kind: &'static str) -> Self {
        Self { kind, ..self }
    }
    fn multi(self) -> Self {
        Self {
            multi_valued: true,
            ..self
        }
    }
    fn required(self) -> Self {
        Self {
            required: true,
            ..self
        }
    }
    fn read_only(self) -> Self {
        Self {
            mutability: "readOnly",
            ..self
        }
    }
    fn always(self) -> Self {
        Self {
            returned: "always",
            ..self
        }
    }
    fn unique(self, uniqueness: &'static str) -> Self {
        Self { uniqueness, ..self }
    }
    fn case_exact(self) -> Self {
        Self {
            case_exact: true,
            ..self
        }
    }
    fn with(self, sub_attributes: Vec<Attr>) -> Self {
        Self {
            kind: "complex",
            sub_attributes,
            ..self
        }
    }

    fn to_json(&self) -> Value {
        let mut attr = json!({
            "name": self.name,
            "type": self.kind,
            "multiValued": self.multi_valued,
            "description": self.description,
            "required": self.required,
            "mutability": self.mutability,
            "returned": self.returned,
        });
        if self.kind == "complex" {
            attr["subAttributes"] = self.sub_attributes.iter().map(Attr::to_json).collect();
        } else {
            attr["caseExact"] = self.case_exact.into();
            attr["uniqueness"] = self.uniqueness.into();
        }
        attr
    }
}

fn schema(
    id: &'static str,
    name: &'static str,
    description: &'static str,
    attributes: Vec<Attr>,
    base: &str,
) -> Value {
    json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": id,
        "name": name,
        "description": description,
        "attributes": attributes.iter().map(Attr::to_json).collect::<Vec<_>>(),
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{id}")},
    })
}

fn user_schema(base: &str) -> Value {
    schema(
        USER_SCHEMA,
        "User",
        "A person provisioned by the identity provider",
        vec![
            Attr::text(
                "userName",
                "The keyrack identity's name; unique, case-sensitively",
            )
            .required()
            .unique("server")
            .case_exact(),
            Attr::text(
                "displayName",
                "The keyrack identity's description (at most 256 characters)",
            ),
            Attr::text("active", "false disables the person and every key it holds")
                .kind("boolean"),
        ],
        base,
    )
}

fn service_provider_config_schema(base: &str) -> Value {
    let supported = |name: &'static str, description: &'static str| {
        Attr::text(name, description).read_only().with(vec![
            Attr::text("supported", "Whether the feature is supported")
                .kind("boolean")
                .required()
                .read_only(),
        ])
    };
    schema(
        SERVICE_PROVIDER_CONFIG_SCHEMA,
        "ServiceProviderConfig",
        "Service Provider Configuration",
        vec![
            Attr::text("documentationUri", "Help for the service provider")
                .kind("reference")
                .read_only(),
            supported("patch", "PATCH configuration"),
            Attr::text("bulk", "Bulk configuration")
                .read_only()
                .with(vec![
                    Attr::text("supported", "Whether bulk is supported")
                        .kind("boolean")
                        .required()
                        .read_only(),
                    Attr::text("maxOperations", "Most operations in one bulk request")
                        .kind("integer")
                        .required()
                        .read_only(),
                    Attr::text("maxPayloadSize", "Largest bulk payload in bytes")
                        .kind("integer")
                        .required()
                        .read_only(),
                ]),
            Attr::text("filter", "Filter configuration")
                .read_only()
                .with(vec![
                    Attr::text("supported", "Whether filtering is supported")
                        .kind("boolean")
                        .required()
                        .read_only(),
                    Attr::text("maxResults", "Most resources one response returns")
                        .kind("integer")
                        .required()
                        .read_only(),
                ]),
            supported("changePassword", "Change password configuration"),
            supported("sort", "Sort configuration"),
            supported("etag", "ETag configuration"),
            Attr::text("authenticationSchemes", "Supported authentication schemes")
                .multi()
                .read_only()
                .with(vec![
                    Attr::text("type", "The scheme's type")
                        .required()
                        .read_only(),
                    Attr::text("name", "The scheme's name")
                        .required()
                        .read_only(),
                    Attr::text("description", "What the scheme is")
                        .required()
                        .read_only(),
                    Attr::text("specUri", "The scheme's specification")
                        .kind("reference")
                        .read_only(),
                    Attr::text("documentationUri", "The scheme's documentation")
                        .kind("reference")
                        .read_only(),
                    Attr::text("primary", "Whether it is the preferred scheme")
                        .kind("boolean")
                        .read_only(),
                ]),
        ],
        base,
    )
}

fn resource_type_schema(base: &str) -> Value {
    schema(
        RESOURCE_TYPE_SCHEMA,
        "ResourceType",
        "Specifies the schema that describes a SCIM resource type",
        vec![
            Attr::text("id", "The resource type's id")
                .read_only()
                .case_exact(),
            Attr::text("name", "The resource type's name")
                .required()
                .read_only(),
            Attr::text("description", "What the resource type is").read_only(),
            Attr::text(
                "endpoint",
                "The resource type's endpoint, relative to the base URL",
            )
            .kind("reference")
            .required()
            .read_only(),
            Attr::text("schema", "The resource type's primary schema URI")
                .kind("reference")
                .required()
                .read_only()
                .case_exact(),
            Attr::text("schemaExtensions", "Schema extensions of the resource type")
                .multi()
                .read_only()
                .with(vec![
                    Attr::text("schema", "The extension's schema URI")
                        .kind("reference")
                        .required()
                        .read_only()
                        .case_exact(),
                    Attr::text("required", "Whether the extension is required")
                        .kind("boolean")
                        .required()
                        .read_only(),
                ]),
        ],
        base,
    )
}

fn schema_schema(base: &str) -> Value {
    let attribute_fields = || {
        vec![
            Attr::text("name", "The attribute's name")
                .required()
                .read_only()
                .case_exact(),
            Attr::text("type", "The attribute's data type")
                .required()
                .read_only(),
            Attr::text("multiValued", "Whether the attribute is multi-valued")
                .kind("boolean")
                .required()
                .read_only(),
            Attr::text("description", "What the attribute is").read_only(),
            Attr::text("required", "Whether the attribute is required")
                .kind("boolean")
                .read_only(),
            Attr::text("canonicalValues", "The attribute's canonical values")
                .multi()
                .read_only(),
            Attr::text("caseExact", "Whether the attribute is case-sensitive")
                .kind("boolean")
                .read_only(),
            Attr::text("mutability", "Whether and how the attribute can change").read_only(),
            Attr::text("returned", "When the attribute is returned").read_only(),
            Attr::text("uniqueness", "How the attribute's values are unique").read_only(),
            Attr::text("referenceTypes", "What a reference attribute may refer to")
                .multi()
                .read_only(),
        ]
    };
    let mut attributes = attribute_fields();
    attributes.push(
        Attr::text("subAttributes", "The sub-attributes of a complex attribute")
            .multi()
            .read_only()
            .with(attribute_fields()),
    );
    schema(
        SCHEMA_SCHEMA,
        "Schema",
        "Specifies the schema attribute definitions",
        vec![
            Attr::text("id", "The schema's URI")
                .required()
                .read_only()
                .case_exact()
                .always(),
            Attr::text("name", "The schema's name").read_only(),
            Attr::text("description", "What the schema is").read_only(),
            Attr::text("attributes", "The schema's attributes")
                .multi()
                .required()
                .read_only()
                .with(attributes),
        ],
        base,
    )
}

/// Every schema keyrack serves, User first.
pub fn schemas(base: &str) -> Vec<Value> {
    vec![
        user_schema(base),
        service_provider_config_schema(base),
        resource_type_schema(base),
        schema_schema(base),
    ]
}
