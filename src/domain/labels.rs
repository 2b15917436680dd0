//! Labels: a small map of operator-chosen facts on identities and keys (a
//! tenant, a team), returned by Verify so a service learns them without a
//! second call.

use std::collections::BTreeMap;

/// Labels as stored: ordered, so records and answers are stable.
pub type Labels = BTreeMap<String, String>;

/// Most labels on one identity or key.
pub const MAX_LABELS: usize = 16;
/// Longest label value, in characters.
pub const MAX_LABEL_VALUE_CHARS: usize = 256;
/// Longest label key.
pub const MAX_LABEL_KEY_CHARS: usize = 63;

/// Checks a label key: `^[a-z][a-z0-9_.-]{0,62}$`.
pub fn parse_label_key(key: &str) -> Result<String, String> {
    let mut chars = key.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && key.len() <= MAX_LABEL_KEY_CHARS
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_.-".contains(c));
    if valid {
        Ok(key.to_owned())
    } else {
        Err(format!(
            "label key {key:?} must match ^[a-z][a-z0-9_.-]{{0,62}}$"
        ))
    }
}

/// Checks a label value: at most 256 printable characters.
pub fn parse_label_value(value: &str) -> Result<String, String> {
    if value.chars().count() > MAX_LABEL_VALUE_CHARS {
        return Err(format!(
            "must be at most {MAX_LABEL_VALUE_CHARS} characters"
        ));
    }
    if value.chars().any(char::is_control) {
        return Err("must not contain control characters".into());
    }
    Ok(value.to_owned())
}

/// Checks a whole map, naming each bad entry (`field[key]`).
pub fn parse_labels<'a>(
    field: &str,
    entries: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) -> Result<Labels, Vec<(String, String)>> {
    if entries.len() > MAX_LABELS {
        return Err(vec![(
            field.to_owned(),
            format!("at most {MAX_LABELS} labels"),
        )]);
    }
    let mut labels = Labels::new();
    let mut errors = Vec::new();
    for (key, value) in entries {
        match parse_label_key(key).and_then(|key| Ok((key, parse_label_value(value)?))) {
            Ok((key, value)) => {
                labels.insert(key, value);
            }
            Err(why) => errors.push((format!("{field}[{key:?}]"), why)),
        }
    }
    if errors.is_empty() {
        Ok(labels)
    } else {
        Err(errors)
    }
}

/// An identity's labels with its key's laid over them: the key's value wins.
pub fn merged(identity: &Labels, key: &Labels) -> Labels {
    let mut merged = identity.clone();
    merged.extend(key.iter().map(|(k, v)| (k.clone(), v.clone())));
    merged
}

/// Whether `labels` hold every `(key, value)` of `wanted`.
pub fn matches_all(labels: &Labels, wanted: &[(String, String)]) -> bool {
    wanted
        .iter()
        .all(|(key, value)| labels.get(key).is_some_and(|held| held == value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_values_and_bounds() {
        for good in ["a", "team", "tenant.id", "a-b_c.9", &"a".repeat(63)] {
            assert!(parse_label_key(good).is_ok(), "{good}");
        }
        for bad in ["", "A", "9a", "_a", "a b", "a:b", &"a".repeat(64)] {
            assert!(parse_label_key(bad).is_err(), "{bad:?}");
        }
        assert!(parse_label_value(&"é".repeat(256)).is_ok());
        assert!(parse_label_value(&"é".repeat(257)).is_err());
        assert!(parse_label_value("a\nb").is_err());
        let many: BTreeMap<String, String> =
            (0..17).map(|i| (format!("k{i}"), String::new())).collect();
        assert_eq!(
            parse_labels("labels", many.iter()).unwrap_err()[0].0,
            "labels"
        );
        let bad: BTreeMap<String, String> =
            [("Bad".to_string(), "x".to_string())].into_iter().collect();
        assert_eq!(
            parse_labels("labels", bad.iter()).unwrap_err()[0].0,
            "labels[\"Bad\"]"
        );
    }

    #[test]
    fn the_key_wins_a_merge() {
        let identity: Labels = [("tenant", "acme"), ("team", "billing")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let key: Labels = [("team", "payments")]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        let merged = merged(&identity, &key);
        assert_eq!(merged["tenant"], "acme");
        assert_eq!(merged["team"], "payments");
        assert!(matches_all(&merged, &[("team".into(), "payments".into())]));
        assert!(!matches_all(&merged, &[("team".into(), "billing".into())]));
    }
}
