//! The ListIdentities and ListKeys filters: a small AIP-160 subset.
//!
//! ```text
//! filter := term ("AND" term)*
//! term   := field "=" value
//! field  := kind | state | dataset | admin | scope     (ListIdentities)
//!         | state | scope                             (ListKeys)
//! ```
//! Values: `kind` SERVICE or PERSON, `state` ACTIVE or DISABLED (the proto
//! enum names are accepted too), `admin` true or false, `dataset` a name,
//! `scope` a scope (granted, wildcards included: `scope = "billing:read"`
//! finds holders of `billing:*` too); bare or in double quotes. Each field at
//! most once.

use crate::domain::identity::IdentityFilter;
use crate::domain::key::{KeyFilter, Origin};
use crate::domain::labels;
use crate::domain::names::parse_name;
use crate::domain::scope::parse_scope;
use crate::domain::{IdentityId, UnixMillis};
use crate::domain::{IdentityKind, State};

/// Longest filter accepted.
const MAX_FILTER_CHARS: usize = 512;

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Operator(Op),
}

/// A term's comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Equals,
    Less,
    Greater,
}

/// Characters of a bare word: a field name, or a value such as a name or a
/// scope (`billing:read`, `/pkg.Service/*`) that needs no quotes.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.:/-*+".contains(c)
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if let Some(op) = match c {
            '=' => Some(Op::Equals),
            '<' => Some(Op::Less),
            '>' => Some(Op::Greater),
            _ => None,
        } {
            chars.next();
            tokens.push(Token::Operator(op));
        } else if c == '"' {
            chars.next();
            let mut value = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some(c) => value.push(c),
                    None => return Err("unterminated quoted value".into()),
                }
            }
            tokens.push(Token::Quoted(value));
        } else if is_word_char(c) {
            let mut word = String::new();
            while let Some(&c) = chars.peek().filter(|c| is_word_char(**c)) {
                word.push(c);
                chars.next();
            }
            tokens.push(Token::Word(word));
        } else {
            return Err(format!(
                "unexpected {c:?}; the filter supports `field = value` terms joined by AND"
            ));
        }
    }
    Ok(tokens)
}

fn value_of(token: Option<Token>, field: &str) -> Result<String, String> {
    match token {
        Some(Token::Word(value)) | Some(Token::Quoted(value)) => Ok(value),
        _ => Err(format!("{field} needs a value after `=`")),
    }
}

/// Splits a filter into its `field op value` terms, refusing a field named
/// twice with the same operator; the empty filter has no terms.
fn terms(text: &str) -> Result<Vec<(String, Op, String)>, String> {
    if text.chars().count() > MAX_FILTER_CHARS {
        return Err(format!("at most {MAX_FILTER_CHARS} characters"));
    }
    let mut terms: Vec<(String, Op, String)> = Vec::new();
    let mut tokens = tokenize(text)?.into_iter();
    loop {
        let field = match tokens.next() {
            None if terms.is_empty() => return Ok(terms),
            None => return Err("a filter may not end with AND".into()),
            Some(Token::Word(field)) => field,
            Some(other) => return Err(format!("expected a field name, found {other:?}")),
        };
        let Some(Token::Operator(op)) = tokens.next() else {
            return Err(format!("expected `=`, `<` or `>` after {field}"));
        };
        let value = value_of(tokens.next(), &field)?;
        if terms
            .iter()
            .any(|(seen, seen_op, _)| *seen == field && *seen_op == op)
        {
            return Err(format!("{field} appears twice"));
        }
        terms.push((field, op, value));
        match tokens.next() {
            None => return Ok(terms),
            Some(Token::Word(and)) if and == "AND" => continue,
            Some(other) => return Err(format!("expected AND, found {other:?}")),
        }
    }
}

/// Only equality is defined on most fields.
fn equality(field: &str, op: Op) -> Result<(), String> {
    if op == Op::Equals {
        Ok(())
    } else {
        Err(format!("{field} supports only `=`"))
    }
}

fn bool_value(field: &str, value: &str) -> Result<bool, String> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(format!("{field} must be true or false, not {value:?}")),
    }
}

/// A `labels.<key> = value` term, if `field` names a label.
fn label_term(field: &str, op: Op, value: &str) -> Option<Result<(String, String), String>> {
    let key = field.strip_prefix("labels.")?;
    Some(equality(field, op).and_then(|()| {
        Ok((
            labels::parse_label_key(key)?,
            labels::parse_label_value(value)?,
        ))
    }))
}

/// An RFC 3339 time, in UTC (`Z`) or with an offset (`+02:00`).
fn time_value(field: &str, value: &str) -> Result<UnixMillis, String> {
    let time: prost_types::Timestamp = value.parse().map_err(|_| {
        format!(
            "{field} needs an RFC 3339 time, e.g. 2027-01-01T00:00:00Z or 2027-01-01T02:00:00+02:00, not {value:?}"
        )
    })?;
    super::convert::timestamp_in(&time).map_err(|why| format!("{field} {why}"))
}

fn state_value(value: &str) -> Result<State, String> {
    match value
        .trim_start_matches("STATE_")
        .to_ascii_uppercase()
        .as_str()
    {
        "ACTIVE" => Ok(State::Active),
        "DISABLED" => Ok(State::Disabled),
        _ => Err(format!("state must be ACTIVE or DISABLED, not {value:?}")),
    }
}

fn scope_value(value: &str) -> Result<String, String> {
    parse_scope(value).map_err(|e| format!("scope {e}"))
}

/// Parses a ListIdentities filter; the empty filter matches everything.
pub fn parse_identity_filter(text: &str) -> Result<IdentityFilter, String> {
    let mut filter = IdentityFilter::default();
    for (field, op, value) in terms(text)? {
        if let Some(label) = label_term(&field, op, &value) {
            filter.labels.push(label?);
            continue;
        }
        equality(&field, op)?;
        match field.as_str() {
            "kind" => {
                filter.kind = Some(
                    match value
                        .trim_start_matches("IDENTITY_KIND_")
                        .to_ascii_uppercase()
                        .as_str()
                    {
                        "SERVICE" => IdentityKind::Service,
                        "PERSON" => IdentityKind::Person,
                        _ => return Err(format!("kind must be SERVICE or PERSON, not {value:?}")),
                    },
                )
            }
            "state" => filter.state = Some(state_value(&value)?),
            "admin" => filter.admin = Some(bool_value("admin", &value)?),
            "dataset" => {
                filter.dataset = Some(parse_name(&value).map_err(|e| format!("dataset {e}"))?)
            }
            "scope" => filter.scope = Some(scope_value(&value)?),
            other => {
                return Err(format!(
                    "unknown field {other:?}; filter on kind, state, dataset, admin, scope or labels.<key>"
                ));
            }
        }
    }
    Ok(filter)
}

/// Parses a ListKeys filter; the empty filter matches everything.
pub fn parse_key_filter(text: &str) -> Result<KeyFilter, String> {
    let mut filter = KeyFilter::default();
    for (field, op, value) in terms(text)? {
        if let Some(label) = label_term(&field, op, &value) {
            filter.labels.push(label?);
            continue;
        }
        match (field.as_str(), op) {
            ("expire_time", Op::Less) => filter.expire_before = Some(time_value(&field, &value)?),
            ("expire_time", Op::Greater) => filter.expire_after = Some(time_value(&field, &value)?),
            ("last_use_time", Op::Less) => {
                filter.last_use_before = Some(time_value(&field, &value)?)
            }
            ("last_use_time", Op::Greater) => {
                filter.last_use_after = Some(time_value(&field, &value)?)
            }
            ("expire_time" | "last_use_time", Op::Equals) => {
                return Err(format!("{field} supports `<` and `>`"));
            }
            (_, Op::Less | Op::Greater) => return Err(format!("{field} supports only `=`")),
            ("state", _) => filter.state = Some(state_value(&value)?),
            ("scope", _) => filter.scope = Some(scope_value(&value)?),
            ("in_grace", _) => filter.in_grace = Some(bool_value("in_grace", &value)?),
            ("honeytoken", _) => filter.honeytoken = Some(bool_value("honeytoken", &value)?),
            ("origin", _) => filter.origin = Some(origin_value(&value)?),
            ("identity_id", _) => {
                filter.identity_id =
                    Some(IdentityId::parse(&value).map_err(|e| format!("identity_id {e}"))?)
            }
            (other, _) => {
                return Err(format!(
                    "unknown field {other:?}; filter on state, origin, in_grace, honeytoken, identity_id, scope, labels.<key>, expire_time or last_use_time"
                ));
            }
        }
    }
    Ok(filter)
}

fn origin_value(value: &str) -> Result<Origin, String> {
    match value
        .trim_start_matches("ORIGIN_")
        .to_ascii_uppercase()
        .as_str()
    {
        "CREATE_IDENTITY" => Ok(Origin::CreateIdentity),
        "CREATE_KEY" => Ok(Origin::CreateKey),
        "DATASET" => Ok(Origin::Dataset),
        "ROLL" => Ok(Origin::Roll),
        "IMPORT" => Ok(Origin::Import),
        _ => Err(format!(
            "origin must be CREATE_IDENTITY, CREATE_KEY, DATASET, ROLL or IMPORT, not {value:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_subset() {
        assert_eq!(
            parse_identity_filter("").unwrap(),
            IdentityFilter::default()
        );
        let filter = parse_identity_filter(
            r#"kind = SERVICE AND state=STATE_DISABLED AND dataset = "sales" AND admin = false"#,
        )
        .unwrap();
        assert_eq!(filter.kind, Some(IdentityKind::Service));
        assert_eq!(filter.state, Some(State::Disabled));
        assert_eq!(filter.dataset.as_deref(), Some("sales"));
        assert_eq!(filter.admin, Some(false));
        assert_eq!(
            parse_identity_filter("kind = IDENTITY_KIND_PERSON")
                .unwrap()
                .kind,
            Some(IdentityKind::Person)
        );
        assert_eq!(
            parse_identity_filter(r#"scope = "billing:read""#)
                .unwrap()
                .scope
                .as_deref(),
            Some("billing:read")
        );
        let keys = parse_key_filter(r#"scope = "billing:*" AND state = ACTIVE"#).unwrap();
        assert_eq!(keys.scope.as_deref(), Some("billing:*"));
        assert_eq!(keys.state, Some(State::Active));
        assert!(parse_key_filter("kind = SERVICE").is_err());
        let keys = parse_key_filter(
            r#"origin = ROLL AND in_grace = true AND labels.team = "pay ments" AND expire_time > 2027-01-01T00:00:00Z AND expire_time < "2028-01-01T00:00:00Z""#,
        )
        .unwrap();
        assert_eq!(keys.origin, Some(Origin::Roll));
        assert_eq!(keys.in_grace, Some(true));
        assert_eq!(
            parse_key_filter("honeytoken = true").unwrap().honeytoken,
            Some(true)
        );
        assert_eq!(keys.labels, [("team".to_string(), "pay ments".to_string())]);
        assert_eq!(keys.expire_after, Some(UnixMillis(1_798_761_600_000)));
        assert_eq!(keys.expire_before, Some(UnixMillis(1_830_297_600_000)));
        // An offset is the same instant written elsewhere.
        let offset = parse_key_filter("last_use_time > 2027-01-01T02:00:00+02:00").unwrap();
        assert_eq!(offset.last_use_after, Some(UnixMillis(1_798_761_600_000)));
        let fractional = parse_key_filter("last_use_time < 2027-01-01T00:00:00.250Z").unwrap();
        assert_eq!(
            fractional.last_use_before,
            Some(UnixMillis(1_798_761_600_250))
        );
        for bad in [
            "expire_time = 2027-01-01T00:00:00Z",
            "state < ACTIVE",
            "labels.Team = x",
            "labels.team > x",
            "last_use_time > yesterday",
            "last_use_time > 1960-01-01T00:00:00Z",
            "origin = MAGIC",
            "identity_id = short",
        ] {
            assert!(parse_key_filter(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse_identity_filter("labels.tenant = acme")
                .unwrap()
                .labels,
            [("tenant".to_string(), "acme".to_string())]
        );
        assert!(parse_key_filter("scope = a AND scope = b").is_err());
    }

    #[test]
    fn refuses_everything_else() {
        for bad in [
            "kind",
            "kind =",
            "kind = ROBOT",
            "kind = SERVICE AND",
            "kind = SERVICE OR kind = PERSON",
            "kind != SERVICE",
            "color = red",
            "kind = SERVICE AND kind = PERSON",
            "dataset = \"bad name\"",
            "dataset = \"open",
            "admin = yes",
            "scope = \"bad scope\"",
            "scope = *",
        ] {
            assert!(parse_identity_filter(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
