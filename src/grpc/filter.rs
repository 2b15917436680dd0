//! The ListIdentities filter: a small AIP-160 subset.
//!
//! ```text
//! filter := term ("AND" term)*
//! term   := field "=" value
//! field  := kind | state | dataset | admin
//! ```
//! Values: `kind` SERVICE or PERSON, `state` ACTIVE or DISABLED (the proto
//! enum names are accepted too), `admin` true or false, `dataset` a name, bare
//! or in double quotes. Each field at most once.

use crate::domain::identity::IdentityFilter;
use crate::domain::names::parse_name;
use crate::domain::{IdentityKind, State};

/// Longest filter accepted.
const MAX_FILTER_CHARS: usize = 512;

#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Quoted(String),
    Equals,
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
        } else if c.is_ascii_alphanumeric() || c == '_' {
            let mut word = String::new();
            while let Some(&c) = chars
                .peek()
                .filter(|c| c.is_ascii_alphanumeric() || **c == '_')
            {
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

/// Parses a filter; the empty filter matches everything.
pub fn parse_identity_filter(text: &str) -> Result<IdentityFilter, String> {
    if text.chars().count() > MAX_FILTER_CHARS {
        return Err(format!("at most {MAX_FILTER_CHARS} characters"));
    }
    let mut filter = IdentityFilter::default();
    let mut tokens = tokenize(text)?.into_iter();
    let mut first = true;
    loop {
        let field = match tokens.next() {
            None if first => return Ok(filter),
            None => return Err("a filter may not end with AND".into()),
            Some(Token::Word(field)) => field,
            Some(other) => return Err(format!("expected a field name, found {other:?}")),
        };
        first = false;
        if tokens.next() != Some(Token::Equals) {
            return Err(format!(
                "expected `=` after {field} (only equality is supported)"
            ));
        }
        let value = value_of(tokens.next(), &field)?;
        let duplicate = || format!("{field} appears twice");
        match field.as_str() {
            "kind" => {
                let kind = match value
                    .trim_start_matches("IDENTITY_KIND_")
                    .to_ascii_uppercase()
                    .as_str()
                {
                    "SERVICE" => IdentityKind::Service,
                    "PERSON" => IdentityKind::Person,
                    _ => return Err(format!("kind must be SERVICE or PERSON, not {value:?}")),
                };
                if filter.kind.replace(kind).is_some() {
                    return Err(duplicate());
                }
            }
            "state" => {
                let state = match value
                    .trim_start_matches("STATE_")
                    .to_ascii_uppercase()
                    .as_str()
                {
                    "ACTIVE" => State::Active,
                    "DISABLED" => State::Disabled,
                    _ => return Err(format!("state must be ACTIVE or DISABLED, not {value:?}")),
                };
                if filter.state.replace(state).is_some() {
                    return Err(duplicate());
                }
            }
            "admin" => {
                let admin = match value.as_str() {
                    "true" => true,
                    "false" => false,
                    _ => return Err(format!("admin must be true or false, not {value:?}")),
                };
                if filter.admin.replace(admin).is_some() {
                    return Err(duplicate());
                }
            }
            "dataset" => {
                let name = parse_name(&value).map_err(|e| format!("dataset {e}"))?;
                if filter.dataset.replace(name).is_some() {
                    return Err(duplicate());
                }
            }
            other => {
                return Err(format!(
                    "unknown field {other:?}; filter on kind, state, dataset or admin"
                ));
            }
        }
        match tokens.next() {
            None => return Ok(filter),
            Some(Token::Word(and)) if and == "AND" => continue,
            Some(other) => return Err(format!("expected AND, found {other:?}")),
        }
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
        ] {
            assert!(parse_identity_filter(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
