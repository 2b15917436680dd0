//! SCIM filters (RFC 7644 §3.4.2.2) over the User attributes keyrack stores:
//! `eq ne co sw ew gt ge lt le pr`, `and`, `or`, `not (...)` and parentheses.
//! Complex-attribute value paths (`emails[type eq "work"]`) name attributes
//! keyrack does not store, so they are refused as `invalidFilter`.

use super::user::{Attribute, AttributeValue, value_of};
use crate::domain::{Identity, UnixMillis};

/// Longest filter accepted.
pub const MAX_FILTER_CHARS: usize = 2048;
/// Deepest nesting of parentheses and `not` accepted.
const MAX_DEPTH: usize = 32;

/// A parsed filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// Both hold.
    And(Box<Filter>, Box<Filter>),
    /// Either holds.
    Or(Box<Filter>, Box<Filter>),
    /// The inner filter does not hold.
    Not(Box<Filter>),
    /// The attribute has a value.
    Present(Attribute),
    /// The attribute compares to a literal.
    Compare(Attribute, Operator, Literal),
}

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    /// equal
    Eq,
    /// not equal
    Ne,
    /// contains
    Co,
    /// starts with
    Sw,
    /// ends with
    Ew,
    /// greater than
    Gt,
    /// greater than or equal
    Ge,
    /// less than
    Lt,
    /// less than or equal
    Le,
}

/// A comparison's right-hand side.
#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    /// A JSON string.
    Text(String),
    /// `true` or `false`.
    Boolean(bool),
    /// `null`.
    Null,
    /// A JSON number (no User attribute keyrack stores is numeric).
    Number(f64),
}

impl Filter {
    /// Parses `text`, or says why it is not a filter keyrack can apply.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.chars().count() > MAX_FILTER_CHARS {
            return Err(format!(
                "the filter is longer than {MAX_FILTER_CHARS} characters"
            ));
        }
        let mut parser = Parser {
            tokens: tokenize(text)?,
            at: 0,
            depth: 0,
        };
        let filter = parser.or()?;
        match parser.tokens.get(parser.at) {
            None => Ok(filter),
            Some(token) => Err(format!("unexpected {token:?} after a complete filter")),
        }
    }

    /// The userName an `userName eq "..."` filter looks for: the one filter
    /// answered from the name index instead of a scan.
    pub fn exact_user_name(&self) -> Option<&str> {
        match self {
            Filter::Compare(Attribute::UserName, Operator::Eq, Literal::Text(name)) => Some(name),
            _ => None,
        }
    }

    /// Whether `person` passes.
    pub fn matches(&self, person: &Identity) -> bool {
        match self {
            Filter::And(left, right) => left.matches(person) && right.matches(person),
            Filter::Or(left, right) => left.matches(person) || right.matches(person),
            Filter::Not(inner) => !inner.matches(person),
            Filter::Present(attribute) => value_of(person, *attribute) != AttributeValue::Missing,
            Filter::Compare(attribute, operator, literal) => {
                compare(&value_of(person, *attribute), *operator, literal)
            }
        }
    }
}

fn compare(value: &AttributeValue, operator: Operator, literal: &Literal) -> bool {
    use std::cmp::Ordering;
    let ordered = |ordering: Ordering| match operator {
        Operator::Eq => ordering == Ordering::Equal,
        Operator::Ne => ordering != Ordering::Equal,
        Operator::Gt => ordering == Ordering::Greater,
        Operator::Ge => ordering != Ordering::Less,
        Operator::Lt => ordering == Ordering::Less,
        Operator::Le => ordering != Ordering::Greater,
        Operator::Co | Operator::Sw | Operator::Ew => false,
    };
    match (value, literal) {
        (AttributeValue::Missing, Literal::Null) => operator == Operator::Eq,
        (_, Literal::Null) => operator == Operator::Ne,
        // An unassigned attribute matches no comparison but "not equal".
        (AttributeValue::Missing, _) => operator == Operator::Ne,
        (AttributeValue::Text { text, case_exact }, Literal::Text(wanted)) => {
            let (text, wanted) = if *case_exact {
                (text.clone(), wanted.clone())
            } else {
                (text.to_lowercase(), wanted.to_lowercase())
            };
            match operator {
                Operator::Co => text.contains(&wanted),
                Operator::Sw => text.starts_with(&wanted),
                Operator::Ew => text.ends_with(&wanted),
                _ => ordered(text.cmp(&wanted)),
            }
        }
        (AttributeValue::Boolean(flag), Literal::Boolean(wanted)) => match operator {
            Operator::Eq => flag == wanted,
            Operator::Ne => flag != wanted,
            _ => false,
        },
        (AttributeValue::Time(time), Literal::Text(wanted)) => match parse_time(wanted) {
            Some(wanted) => ordered(time.cmp(&wanted)),
            None => false,
        },
        _ => operator == Operator::Ne,
    }
}

fn parse_time(text: &str) -> Option<UnixMillis> {
    let when = humantime::parse_rfc3339_weak(text.trim_end_matches('Z')).ok()?;
    let millis = when.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    i64::try_from(millis).ok().map(UnixMillis)
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Open,
    Close,
    Word(String),
    Literal(Literal),
}

fn tokenize(text: &str) -> Result<Vec<Token>, String> {
    let mut tokens = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start();
        let Some(first) = rest.chars().next() else {
            return Ok(tokens);
        };
        match first {
            '(' => {
                tokens.push(Token::Open);
                rest = &rest[1..];
            }
            ')' => {
                tokens.push(Token::Close);
                rest = &rest[1..];
            }
            '[' | ']' => {
                return Err(
                    "value paths (`attr[...]`) name complex attributes keyrack does not store"
                        .into(),
                );
            }
            '"' => {
                let end = closing_quote(rest)
                    .ok_or_else(|| "a string literal is not terminated".to_owned())?;
                let literal: String = serde_json::from_str(&rest[..=end])
                    .map_err(|_| "a string literal has an invalid escape".to_owned())?;
                tokens.push(Token::Literal(Literal::Text(literal)));
                rest = &rest[end + 1..];
            }
            _ => {
                let end = rest
                    .find(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | '"' | '[' | ']'))
                    .unwrap_or(rest.len());
                let word = &rest[..end];
                tokens.push(match word {
                    "true" => Token::Literal(Literal::Boolean(true)),
                    "false" => Token::Literal(Literal::Boolean(false)),
                    "null" => Token::Literal(Literal::Null),
                    _ => match word.parse::<f64>() {
                        Ok(number)
                            if word.starts_with(|c: char| c == '-' || c.is_ascii_digit()) =>
                        {
                            Token::Literal(Literal::Number(number))
                        }
                        _ => Token::Word(word.to_owned()),
                    },
                });
                rest = &rest[end..];
            }
        }
    }
}

/// The byte index of the quote that closes the string starting at 0.
fn closing_quote(text: &str) -> Option<usize> {
    let mut escaped = false;
    for (index, c) in text.char_indices().skip(1) {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some(index),
            _ => {}
        }
    }
    None
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
    depth: usize,
}

impl Parser {
    fn peek_word(&self, word: &str) -> bool {
        matches!(self.tokens.get(self.at), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn or(&mut self) -> Result<Filter, String> {
        let mut left = self.and()?;
        while self.peek_word("or") {
            self.at += 1;
            left = Filter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<Filter, String> {
        let mut left = self.unary()?;
        while self.peek_word("and") {
            self.at += 1;
            left = Filter::And(Box::new(left), Box::new(self.unary()?));
        }
        Ok(left)
    }

    fn nested(&mut self) -> Result<Filter, String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("the filter nests deeper than {MAX_DEPTH} levels"));
        }
        if self.tokens.get(self.at) != Some(&Token::Open) {
            return Err("expected `(`".into());
        }
        self.at += 1;
        let inner = self.or()?;
        if self.tokens.get(self.at) != Some(&Token::Close) {
            return Err("expected `)`".into());
        }
        self.at += 1;
        self.depth -= 1;
        Ok(inner)
    }

    fn unary(&mut self) -> Result<Filter, String> {
        if self.peek_word("not") {
            self.at += 1;
            return Ok(Filter::Not(Box::new(self.nested()?)));
        }
        if self.tokens.get(self.at) == Some(&Token::Open) {
            return self.nested();
        }
        let Some(Token::Word(path)) = self.tokens.get(self.at).cloned() else {
            return Err("expected an attribute name".into());
        };
        self.at += 1;
        let attribute = Attribute::parse(&path)
            .filter(|attribute| *attribute != Attribute::Meta)
            .ok_or_else(|| format!("{path:?} is not an attribute keyrack can filter on"))?;
        let Some(Token::Word(operator)) = self.tokens.get(self.at).cloned() else {
            return Err(format!("expected an operator after {path:?}"));
        };
        self.at += 1;
        let operator = match operator.to_ascii_lowercase().as_str() {
            "pr" => return Ok(Filter::Present(attribute)),
            "eq" => Operator::Eq,
            "ne" => Operator::Ne,
            "co" => Operator::Co,
            "sw" => Operator::Sw,
            "ew" => Operator::Ew,
            "gt" => Operator::Gt,
            "ge" => Operator::Ge,
            "lt" => Operator::Lt,
            "le" => Operator::Le,
            other => return Err(format!("{other:?} is not a SCIM operator")),
        };
        let Some(Token::Literal(literal)) = self.tokens.get(self.at).cloned() else {
            return Err(format!("expected a value after {path} {operator:?}"));
        };
        self.at += 1;
        Ok(Filter::Compare(attribute, operator, literal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Identity;

    fn person(name: &str, external_id: Option<&str>, active: Option<bool>) -> Identity {
        Identity::new_person(
            crate::domain::names::IdentityName::parse_person(name).unwrap(),
            "Ada Lovelace".to_owned(),
            external_id.map(str::to_owned),
            active,
            UnixMillis(1_700_000_000_000),
        )
    }

    #[test]
    fn the_filters_identity_providers_send_are_understood() {
        let ada = person("ada@example.com", Some("00u1"), Some(true));
        for (filter, expected) in [
            (r#"userName eq "ada@example.com""#, true),
            (r#"USERNAME EQ "ADA@example.com""#, false),
            (r#"externalId eq "00u1""#, true),
            (r#"displayName co "lovelace""#, true),
            (r#"userName sw "ada" and active eq true"#, true),
            (r#"userName eq "bob" or not (active eq false)"#, true),
            (r#"externalId pr and displayName ew "Lovelace""#, true),
            (r#"meta.created gt "2023-01-01T00:00:00Z""#, true),
            (r#"meta.lastModified lt "2023-01-01T00:00:00.000Z""#, false),
            (
                r#"urn:ietf:params:scim:schemas:core:2.0:User:userName ne "x""#,
                true,
            ),
        ] {
            let parsed = Filter::parse(filter).unwrap_or_else(|e| panic!("{filter}: {e}"));
            assert_eq!(parsed.matches(&ada), expected, "{filter}");
        }
        let nameless = person("bob", None, None);
        assert!(
            Filter::parse("externalId eq null")
                .unwrap()
                .matches(&nameless)
        );
        assert!(!Filter::parse("active pr").unwrap().matches(&nameless));
    }

    #[test]
    fn the_name_index_serves_user_name_equality_only() {
        let exact = Filter::parse(r#"userName eq "ada""#).unwrap();
        assert_eq!(exact.exact_user_name(), Some("ada"));
        let other = Filter::parse(r#"userName eq "ada" or userName eq "bob""#).unwrap();
        assert_eq!(other.exact_user_name(), None);
    }

    #[test]
    fn bad_filters_say_why() {
        for filter in [
            "",
            "userName",
            r#"userName zz "a""#,
            r#"emails[type eq "work"].value eq "a""#,
            r#"password eq "a""#,
            r#"userName eq "unterminated"#,
            r#"(userName eq "a""#,
            r#"userName eq "a" extra"#,
            &"not (".repeat(40),
        ] {
            assert!(
                Filter::parse(filter).is_err(),
                "{filter:?} should be refused"
            );
        }
    }
}
