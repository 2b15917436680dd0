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
use crate::domain::key::KeyFilter;
use crate::domain::names::parse_name;
use crate::domain::scope::parse_scope;
use crate::domain::{IdentityKind, State};

/// Longest filter accepted.
const MAX_FILTER_CHARS: usize = 512;

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Equals,
}

/// Characters of a bare word: a field name, or a value such as a name or a
/// scope (`billing:read`, `/pkg.Service/*`) that needs no quotes.
fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_.:/-*".contains(c)
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut chars = text.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '=' {
            chars.next();
            tokens.push(Token::Equals);
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

/// Splits a filter into its `field = value` terms, refusing a field named
/// twice; the empty filter has no terms.
fn terms(text: &str) -> Result<Vec<(String, String)>, String> {
    if text.chars().count() > MAX_FILTER_CHARS {
        return Err(format!("at most {MAX_FILTER_CHARS} characters"));
    }
    let mut terms: Vec<(String, String)> = Vec::new();
    let mut tokens = tokenize(text)?.into_iter();
    loop {
        let field = match tokens.next() {
            None if terms.is_empty() => return Ok(terms),
            None => return Err("a filter may not end with AND".into()),
            Some(Token::Word(field)) => field,
            Some(other) => return Err(format!("expected a field name, found {other:?}")),
        };
        if tokens.next() != Some(Token::Equals) {
            return Err(format!(
                "expected `=` after {field} (only equality is supported)"
            ));
        }
        let value = value_of(tokens.next(), &field)?;
        if terms.iter().any(|(seen, _)| *seen == field) {
            return Err(format!("{field} appears twice"));
        }
        terms.push((field, value));
        match tokens.next() {
            None => return Ok(terms),
            Some(Token::Word(and)) if and == "AND" => continue,
            Some(other) => return Err(format!("expected AND, found {other:?}")),
        }
    }
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
    for (field, value) in terms(text)? {
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
            "admin" => {
                filter.admin = Some(match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("admin must be true or false, not {value:?}")),
                })
            }
            "dataset" => {
                filter.dataset = Some(parse_name(&value).map_err(|e| format!("dataset {e}"))?)
            }
            "scope" => filter.scope = Some(scope_value(&value)?),
            other => {
                return Err(format!(
                    "unknown field {other:?}; filter on kind, state, dataset, admin or scope"
                ));
            }
        }
    }
    Ok(filter)
}

/// Parses a ListKeys filter; the empty filter matches everything.
pub fn parse_key_filter(text: &str) -> Result<KeyFilter, String> {
    let mut filter = KeyFilter::default();
    for (field, value) in terms(text)? {
        match field.as_str() {
            "state" => filter.state = Some(state_value(&value)?),
            "scope" => filter.scope = Some(scope_value(&value)?),
            other => {
                return Err(format!(
                    "unknown field {other:?}; filter on state or scope"
                ));
            }
        }
    }
    Ok(filter)
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
