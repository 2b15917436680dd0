//! The SCIM User resource (RFC 7643 §4.1) as keyrack serves it: a person
//! identity seen through the attributes keyrack stores — `userName`,
//! `externalId`, `displayName` and `active` — plus `id` and `meta`. Attributes
//! outside that schema are accepted and ignored, as identity providers send
//! many keyrack has no use for.

use super::ScimError;
use crate::domain::{Error, Identity, UnixMillis};
use crate::service::PersonProfile;
use serde_json::{Map, Value, json};

/// The core User schema.
pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";

/// An attribute of a User that keyrack knows, named case-insensitively and
/// with or without the schema URN (RFC 7644 §3.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attribute {
    /// `id`: keyrack's identity id (read-only).
    Id,
    /// `externalId`.
    ExternalId,
    /// `userName`.
    UserName,
    /// `displayName`.
    DisplayName,
    /// `active`.
    Active,
    /// `meta` as a whole (read-only).
    Meta,
    /// `meta.created`.
    Created,
    /// `meta.lastModified`.
    LastModified,
    /// `meta.resourceType`.
    ResourceType,
}

impl Attribute {
    /// The attribute a path names, if keyrack stores it.
    pub fn parse(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        let prefix = format!("{}:", USER_SCHEMA.to_ascii_lowercase());
        let name = lower.strip_prefix(&prefix).unwrap_or(&lower);
        Some(match name {
            "id" => Self::Id,
            "externalid" => Self::ExternalId,
            "username" => Self::UserName,
            "displayname" => Self::DisplayName,
            "active" => Self::Active,
            "meta" => Self::Meta,
            "meta.created" => Self::Created,
            "meta.lastmodified" => Self::LastModified,
            "meta.resourcetype" => Self::ResourceType,
            _ => return None,
        })
    }

    /// Whether `path` names the User schema itself, as an extension-style
    /// container of its attributes.
    pub fn is_schema_urn(path: &str) -> bool {
        path.eq_ignore_ascii_case(USER_SCHEMA)
    }

    /// The attribute's name in JSON bodies.
    fn json_name(self) -> &'static str {
        match self {
            Self::Id => "id",
            Self::ExternalId => "externalId",
            Self::UserName => "userName",
            Self::DisplayName => "displayName",
            Self::Active => "active",
            Self::Meta => "meta",
            Self::Created => "created",
            Self::LastModified => "lastModified",
            Self::ResourceType => "resourceType",
        }
    }

    /// Whether only keyrack sets the attribute (`id` and `meta`).
    pub fn is_read_only(self) -> bool {
        matches!(self, Self::Id | Self::Meta) || self.in_meta()
    }

    /// Whether the attribute lives inside `meta`.
    fn in_meta(self) -> bool {
        matches!(
            self,
            Self::Created | Self::LastModified | Self::ResourceType
        )
    }
}

/// An attribute's value on one person, typed for filter comparisons.
#[derive(Debug, Clone, PartialEq)]
pub enum AttributeValue {
    /// A string; `case_exact` says whether comparisons respect case.
    Text {
        /// The value.
        text: String,
        /// RFC 7643 `caseExact` of the attribute.
        case_exact: bool,
    },
    /// A boolean.
    Boolean(bool),
    /// A dateTime.
    Time(UnixMillis),
    /// Unassigned (or a complex attribute, which has no single value).
    Missing,
}

/// The value of `attribute` on `person`.
pub fn value_of(person: &Identity, attribute: Attribute) -> AttributeValue {
    let text = |text: &str, case_exact: bool| {
        if text.is_empty() {
            AttributeValue::Missing
        } else {
            AttributeValue::Text {
                text: text.to_owned(),
                case_exact,
            }
        }
    };
    match attribute {
        Attribute::Id => text(person.id.as_str(), true),
        // keyrack names are unique case-sensitively, so userName is caseExact.
        Attribute::UserName => text(&person.name, true),
        Attribute::ExternalId => text(person.external_id.as_deref().unwrap_or(""), true),
        Attribute::DisplayName => text(&person.description, false),
        Attribute::Active => person
            .provider_active
            .map_or(AttributeValue::Missing, AttributeValue::Boolean),
        Attribute::Created => AttributeValue::Time(person.create_time),
        Attribute::LastModified => AttributeValue::Time(person.update_time),
        Attribute::ResourceType => text("User", true),
        Attribute::Meta => AttributeValue::Missing,
    }
}

/// A timestamp as SCIM writes it (RFC 3339, UTC, milliseconds).
pub fn format_time(time: UnixMillis) -> String {
    let when = std::time::UNIX_EPOCH
        + std::time::Duration::from_millis(u64::try_from(time.0).unwrap_or_default());
    humantime::format_rfc3339_millis(when).to_string()
}

/// A person's ETag: its stored revision, weak as the representation varies
/// with `attributes` (RFC 7644 §3.14).
pub fn version(person: &Identity) -> String {
    format!("W/\"{}\"", person.revision)
}

/// The revision an `If-Match` or `meta.version` names; `*` names none.
pub fn revision_of(etag: &str) -> Option<u64> {
    let etag = etag.trim();
    let etag = etag.strip_prefix("W/").unwrap_or(etag);
    etag.trim_matches('"').parse().ok()
}

/// The User resource of `person`, located under `users_url`.
pub fn render(person: &Identity, users_url: &str) -> Value {
    let mut user = json!({
        "schemas": [USER_SCHEMA],
        "id": person.id.as_str(),
        "userName": person.name.as_str(),
        "meta": {
            "resourceType": "User",
            "created": format_time(person.create_time),
            "lastModified": format_time(person.update_time),
            "location": format!("{users_url}/{}", person.id),
            "version": version(person),
        },
    });
    if let Some(external_id) = &person.external_id {
        user["externalId"] = external_id.as_str().into();
    }
    if !person.description.is_empty() {
        user["displayName"] = person.description.as_str().into();
    }
    if let Some(active) = person.provider_active {
        user["active"] = active.into();
    }
    user
}

/// The profile a POST or PUT body describes. Read-only attributes (`id`,
/// `meta`) and attributes keyrack does not store are ignored.
pub fn profile_from_body(body: &Value) -> Result<PersonProfile, ScimError> {
    let object = body
        .as_object()
        .ok_or_else(|| ScimError::bad_request("invalidSyntax", "the body must be a JSON object"))?;
    let declares_user = object
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case("schemas"))
        .and_then(|(_, schemas)| schemas.as_array())
        .is_some_and(|schemas| {
            schemas
                .iter()
                .any(|s| s.as_str().is_some_and(Attribute::is_schema_urn))
        });
    if !declares_user {
        return Err(ScimError::bad_request(
            "invalidSyntax",
            format!("`schemas` must list {USER_SCHEMA}"),
        ));
    }
    let mut profile = PersonProfile::default();
    let mut named = false;
    set_all(&mut profile, object, &mut named)?;
    if !named {
        return Err(Error::invalid("userName", "is required").into());
    }
    Ok(profile)
}

/// Sets every attribute of `object` that keyrack stores; `named` records
/// whether `userName` was among them.
pub fn set_all(
    profile: &mut PersonProfile,
    object: &Map<String, Value>,
    named: &mut bool,
) -> Result<(), Error> {
    for (key, value) in object {
        if Attribute::is_schema_urn(key) {
            let inner = value
                .as_object()
                .ok_or_else(|| Error::invalid(key.as_str(), "must be an object"))?;
            set_all(profile, inner, named)?;
            continue;
        }
        match Attribute::parse(key) {
            Some(Attribute::UserName) => {
                *named = true;
                set(profile, Attribute::UserName, value)?;
            }
            Some(attribute) => set(profile, attribute, value)?,
            None => {}
        }
    }
    Ok(())
}

/// Sets one attribute; `null` unassigns it (RFC 7644 §3.5.1). Read-only
/// attributes are ignored, as RFC 7644 §3.5.1 asks of a replace.
pub fn set(profile: &mut PersonProfile, attribute: Attribute, value: &Value) -> Result<(), Error> {
    if value.is_null() {
        return unset(profile, attribute);
    }
    let text = || {
        value
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::invalid(attribute.json_name(), "must be a string"))
    };
    match attribute {
        Attribute::UserName => profile.user_name = text()?,
        Attribute::ExternalId => profile.external_id = Some(text()?),
        Attribute::DisplayName => profile.display_name = text()?,
        Attribute::Active => profile.active = Some(boolean(value)?),
        Attribute::Id
        | Attribute::Meta
        | Attribute::Created
        | Attribute::LastModified
        | Attribute::ResourceType => {}
    }
    Ok(())
}

/// Unassigns one attribute; `userName` is required and cannot be.
pub fn unset(profile: &mut PersonProfile, attribute: Attribute) -> Result<(), Error> {
    match attribute {
        Attribute::UserName => {
            return Err(Error::invalid(
                "userName",
                "is required and cannot be removed",
            ));
        }
        Attribute::ExternalId => profile.external_id = None,
        Attribute::DisplayName => profile.display_name.clear(),
        Attribute::Active => profile.active = None,
        Attribute::Id
        | Attribute::Meta
        | Attribute::Created
        | Attribute::LastModified
        | Attribute::ResourceType => {
            return Err(Error::invalid(describe(attribute), "is read-only"));
        }
    }
    Ok(())
}

/// A boolean, also from the strings `"True"`/`"False"` that some identity
/// providers (Entra ID among them) send in PATCH values.
fn boolean(value: &Value) -> Result<bool, Error> {
    match value {
        Value::Bool(flag) => Ok(*flag),
        Value::String(text) if text.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(text) if text.eq_ignore_ascii_case("false") => Ok(false),
        _ => Err(Error::invalid("active", "must be a boolean")),
    }
}

/// Which attributes a response carries (RFC 7644 §3.4.2.5): `attributes`
/// names the only ones returned, `excludedAttributes` ones left out; `id` and
/// `schemas` are always returned.
#[derive(Debug, Default)]
pub struct Projection {
    only: Vec<String>,
    excluded: Vec<String>,
}

impl Projection {
    /// From the comma-separated query parameters.
    pub fn new(attributes: Option<&str>, excluded: Option<&str>) -> Self {
        let list = |text: Option<&str>| -> Vec<String> {
            text.unwrap_or("")
                .split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(|name| {
                    let lower = name.to_ascii_lowercase();
                    let prefix = format!("{}:", USER_SCHEMA.to_ascii_lowercase());
                    lower.strip_prefix(&prefix).unwrap_or(&lower).to_owned()
                })
                .collect()
        };
        Self {
            only: list(attributes),
            excluded: list(excluded),
        }
    }

    /// Applies the projection to a rendered User.
    pub fn apply(&self, mut user: Value) -> Value {
        let Some(object) = user.as_object_mut() else {
            return user;
        };
        let always = |key: &str| key == "id" || key == "schemas";
        if !self.only.is_empty() {
            object.retain(|key, value| {
                let key = key.to_ascii_lowercase();
                if always(&key) || self.only.contains(&key) {
                    return true;
                }
                let inner: Vec<&str> = self
                    .only
                    .iter()
                    .filter_map(|name| name.strip_prefix(&format!("{key}.")))
                    .collect();
                if let (false, Some(sub)) = (inner.is_empty(), value.as_object_mut()) {
                    sub.retain(|sub_key, _| inner.contains(&sub_key.to_ascii_lowercase().as_str()));
                    return !sub.is_empty();
                }
                false
            });
        }
        for name in &self.excluded {
            match name.split_once('.') {
                Some((parent, child)) => {
                    if let Some(sub) = object
                        .iter_mut()
                        .find(|(key, _)| key.eq_ignore_ascii_case(parent))
                        .and_then(|(_, value)| value.as_object_mut())
                    {
                        sub.retain(|key, _| !key.eq_ignore_ascii_case(child));
                    }
                }
                None if always(name) => {}
                None => object.retain(|key, _| !key.eq_ignore_ascii_case(name)),
            }
        }
        user
    }
}

/// An attribute's path as SCIM writes it, for error details.
pub fn describe(attribute: Attribute) -> String {
    if attribute.in_meta() {
        format!("meta.{}", attribute.json_name())
    } else {
        attribute.json_name().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_named_case_insensitively_with_or_without_the_urn() {
        assert_eq!(Attribute::parse("USERNAME"), Some(Attribute::UserName));
        assert_eq!(
            Attribute::parse("urn:ietf:params:scim:schemas:core:2.0:User:displayName"),
            Some(Attribute::DisplayName)
        );
        assert_eq!(
            Attribute::parse("meta.lastModified"),
            Some(Attribute::LastModified)
        );
        assert_eq!(Attribute::parse("emails"), None);
    }

    #[test]
    fn bodies_need_the_user_schema_and_a_user_name() {
        let missing_schema = json!({"userName": "ada"});
        assert!(profile_from_body(&missing_schema).is_err());
        let missing_name = json!({"schemas": [USER_SCHEMA], "displayName": "Ada"});
        assert!(profile_from_body(&missing_name).is_err());
        let full = json!({
            "schemas": [USER_SCHEMA],
            "UserName": "ada",
            "externalId": "00u1",
            "active": "False",
            "emails": [{"value": "ada@example.com"}],
            "id": "ignored",
        });
        let profile = profile_from_body(&full).unwrap();
        assert_eq!(profile.user_name, "ada");
        assert_eq!(profile.external_id.as_deref(), Some("00u1"));
        assert_eq!(profile.active, Some(false));
    }

    #[test]
    fn projections_keep_id_and_schemas_and_reach_into_meta() {
        let user = json!({
            "schemas": [USER_SCHEMA], "id": "x", "userName": "ada", "displayName": "Ada",
            "meta": {"created": "c", "version": "v"},
        });
        let only = Projection::new(Some("userName,meta.created"), None).apply(user.clone());
        assert_eq!(
            only,
            json!({"schemas": [USER_SCHEMA], "id": "x", "userName": "ada", "meta": {"created": "c"}})
        );
        let without = Projection::new(None, Some("displayName,id,meta.version")).apply(user);
        assert_eq!(
            without,
            json!({"schemas": [USER_SCHEMA], "id": "x", "userName": "ada", "meta": {"created": "c"}})
        );
    }

    #[test]
    fn etags_name_revisions() {
        assert_eq!(revision_of("W/\"7\""), Some(7));
        assert_eq!(revision_of("\"7\""), Some(7));
        assert_eq!(revision_of("*"), None);
    }
}
