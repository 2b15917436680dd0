//! Scopes: what a token may do, and the narrowing rule a key's lists follow.
//!
//! A scope is `^[A-Za-z0-9_.:/-]{1,128}$`, optionally ending in `*`, which
//! grants every scope that starts with what comes before it. The prefix keeps
//! its separator, so `billing:*` grants `billing:read` but not `billingX`.
//!
//! A key's `scopes` (and its `datasets`) narrow its identity's: an empty list
//! means "the identity's", a non-empty one grants only what both grant. The
//! intersection is taken when a token is used, so an identity that loses a
//! grant takes it from its keys at once.

/// Most scopes on one identity or key, and most required by one Verify.
pub const MAX_SCOPES: usize = 64;

/// Longest scope, without its trailing `*`.
pub const MAX_SCOPE_CHARS: usize = 128;

/// Checks one scope's syntax.
pub fn parse_scope(text: &str) -> Result<String, String> {
    check_syntax(text)?;
    Ok(text.to_owned())
}

fn check_syntax(text: &str) -> Result<(), String> {
    let body = text.strip_suffix('*').unwrap_or(text);
    if body.is_empty() {
        return Err(if text.is_empty() {
            "is empty".into()
        } else {
            "a wildcard needs a prefix, e.g. \"billing:*\"".into()
        });
    }
    if body.chars().count() > MAX_SCOPE_CHARS {
        return Err(format!("is longer than {MAX_SCOPE_CHARS} characters"));
    }
    if let Some(bad) = body
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.:/-".contains(*c)))
    {
        return Err(format!(
            "{text:?} contains {bad:?}; scopes use letters, digits and _ . : / - (and a trailing *)"
        ));
    }
    Ok(())
}

/// Whether a grant can hold `wanted` at all. A required scope may be a
/// request's path, the client's to choose: `/orders.v1.OrderService/../reports/x`
/// starts with what `/orders.v1.OrderService/*` grants, yet names what an
/// upstream resolves to `/reports/x`. So a path with a `.` or `..` segment,
/// an escape (`%2e`, `%2f`) or a backslash is held by no grant; any other
/// path is matched as it is (a REST path need not have a scope's syntax).
fn is_holdable(wanted: &str) -> bool {
    !(wanted.starts_with('/')
        && (wanted.contains(['%', '\\'])
            || wanted
                .split('/')
                .any(|segment| segment == "." || segment == "..")))
}

/// Checks a list of scopes (syntax, size, duplicates), naming each bad entry
/// by its index.
pub fn parse_scopes(field: &str, entries: &[String]) -> Result<Vec<String>, Vec<(String, String)>> {
    if entries.len() > MAX_SCOPES {
        return Err(vec![(
            field.to_owned(),
            format!("at most {MAX_SCOPES} scopes"),
        )]);
    }
    let mut errors = Vec::new();
    let mut scopes: Vec<String> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        match parse_scope(entry) {
            Ok(scope) if scopes.contains(&scope) => errors.push((
                format!("{field}[{index}]"),
                format!("{scope:?} is listed twice"),
            )),
            Ok(scope) => scopes.push(scope),
            Err(why) => errors.push((format!("{field}[{index}]"), why)),
        }
    }
    if errors.is_empty() {
        Ok(scopes)
    } else {
        Err(errors)
    }
}

/// Whether the grant `granted` covers `wanted`. Either may be a wildcard: a
/// wildcard is covered only by itself or by a wildcard with a shorter prefix
/// of it, so `billing:*` covers `billing:invoices:*` but `billing:read` does
/// not cover `billing:*`.
pub fn covers(granted: &str, wanted: &str) -> bool {
    match granted.strip_suffix('*') {
        Some(prefix) => wanted.starts_with(prefix),
        None => granted == wanted,
    }
}

/// Whether any scope of `grants` covers `wanted`.
pub fn any_covers(grants: &[String], wanted: &str) -> bool {
    grants.iter().any(|granted| covers(granted, wanted))
}

/// Whether a key with `key_scopes` of an identity with `identity_scopes`
/// holds `wanted`: the identity must grant it, and so must the key's own list
/// when it has one.
pub fn holds(identity_scopes: &[String], key_scopes: &[String], wanted: &str) -> bool {
    is_holdable(wanted)
        && any_covers(identity_scopes, wanted)
        && (key_scopes.is_empty() || any_covers(key_scopes, wanted))
}

/// The scopes a key of an identity effectively grants: the identity's when the
/// key has no list of its own, else each grant of one list that the other
/// covers (the narrower of two overlapping wildcards), without duplicates.
pub fn effective(identity_scopes: &[String], key_scopes: &[String]) -> Vec<String> {
    if key_scopes.is_empty() {
        return identity_scopes.to_vec();
    }
    let mut granted: Vec<String> = Vec::new();
    let mut add = |scope: &String| {
        if !granted.contains(scope) {
            granted.push(scope.clone());
        }
    };
    for key_scope in key_scopes {
        for identity_scope in identity_scopes {
            if covers(identity_scope, key_scope) {
                add(key_scope);
            } else if covers(key_scope, identity_scope) {
                add(identity_scope);
            }
        }
    }
    granted
}

/// Whether a key of an identity may access `dataset`: the identity must hold
/// it, and so must the key's own list when it has one.
pub fn may_access(identity_datasets: &[String], key_datasets: &[String], dataset: &str) -> bool {
    let listed = |list: &[String]| list.iter().any(|d| d == dataset);
    listed(identity_datasets) && (key_datasets.is_empty() || listed(key_datasets))
}

/// The datasets a key of an identity may access: the identity's, narrowed to
/// the key's own list when it has one.
pub fn effective_datasets(identity_datasets: &[String], key_datasets: &[String]) -> Vec<String> {
    identity_datasets
        .iter()
        .filter(|dataset| may_access(identity_datasets, key_datasets, dataset))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(scopes: &[&str]) -> Vec<String> {
        scopes.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn syntax() {
        for good in [
            "billing:read",
            "billing:*",
            "/billing.v1.Invoices/*",
            "/billing.v1.Invoices/Get",
            "a",
            "a-b_c.d",
        ] {
            assert_eq!(parse_scope(good).as_deref(), Ok(good), "{good}");
        }
        let longest = "a".repeat(MAX_SCOPE_CHARS);
        assert!(parse_scope(&longest).is_ok());
        assert!(parse_scope(&format!("{longest}*")).is_ok());
        for bad in [
            "",
            "*",
            "**",
            "a**",
            "bil ling",
            "a*b",
            "é",
            &format!("{longest}a"),
        ] {
            assert!(parse_scope(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn lists_refuse_duplicates_size_and_name_the_entry() {
        let errors = parse_scopes("scopes", &list(&["a", "b", "a", ""])).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|(field, _)| field.as_str()).collect();
        assert_eq!(fields, ["scopes[2]", "scopes[3]"]);
        let many: Vec<String> = (0..=MAX_SCOPES).map(|i| format!("s{i}")).collect();
        assert_eq!(parse_scopes("scopes", &many).unwrap_err()[0].0, "scopes");
        assert!(parse_scopes("scopes", &many[..MAX_SCOPES]).is_ok());
    }

    #[test]
    fn wildcards_match_by_prefix_only() {
        assert!(covers("billing:*", "billing:read"));
        assert!(covers("billing:*", "billing:invoices:*"));
        assert!(!covers("billing:*", "billingX"));
        assert!(!covers("billing:*", "billing"));
        assert!(!covers("billing:read", "billing:*"));
        assert!(!covers("billing:read", "billing:readonly"));
        assert!(covers("/billing.v1.Invoices/*", "/billing.v1.Invoices/Get"));
        assert!(!covers(
            "/billing.v1.Invoices/*",
            "/billing.v1.Payments/Get"
        ));
    }

    #[test]
    fn a_key_narrows_its_identity() {
        let identity = list(&["billing:*", "reports:read"]);
        assert!(holds(&identity, &[], "reports:read"));
        assert!(holds(&identity, &[], "billing:write"));
        let key = list(&["billing:read"]);
        assert!(holds(&identity, &key, "billing:read"));
        assert!(!holds(&identity, &key, "billing:write"));
        assert!(!holds(&identity, &key, "reports:read"));
        // An identity that loses a grant takes it from its keys.
        assert!(!holds(&list(&["reports:read"]), &key, "billing:read"));
        assert!(!holds(&[], &[], "anything"));
    }

    #[test]
    fn a_path_with_dot_segments_or_foreign_characters_is_never_held() {
        let grants = list(&["/orders.v1.OrderService/*"]);
        assert!(holds(&grants, &[], "/orders.v1.OrderService/GetOrder"));
        assert!(holds(&grants, &[], "/orders.v1.OrderService/a.b/c..d"));
        // A REST path need not have a scope's syntax to be covered.
        assert!(holds(&grants, &[], "/orders.v1.OrderService/~a+b=c,d@e"));
        for escaping in [
            "/orders.v1.OrderService/../reports/x",
            "/orders.v1.OrderService/./GetOrder",
            "/orders.v1.OrderService/GetOrder/..",
            "/orders.v1.OrderService/%2e%2e/reports/x",
            "/orders.v1.OrderService/..%2freports",
            "/orders.v1.OrderService/..\\reports",
        ] {
            assert!(!holds(&grants, &[], escaping), "{escaping}");
        }
    }

    #[test]
    fn effective_grants_are_the_narrower_side() {
        assert_eq!(effective(&list(&["a:*", "b"]), &[]), list(&["a:*", "b"]));
        assert_eq!(
            effective(
                &list(&["billing:*", "reports:read"]),
                &list(&["billing:read"])
            ),
            list(&["billing:read"])
        );
        assert_eq!(
            effective(
                &list(&["billing:read", "billing:write"]),
                &list(&["billing:*"])
            ),
            list(&["billing:read", "billing:write"])
        );
        assert_eq!(
            effective(&list(&["x"]), &list(&["y"])),
            Vec::<String>::new()
        );
        assert_eq!(
            effective_datasets(&list(&["sales", "hr"]), &list(&["hr"])),
            list(&["hr"])
        );
        assert_eq!(
            effective_datasets(&list(&["sales"]), &list(&["hr"])),
            Vec::<String>::new()
        );
        assert_eq!(effective_datasets(&list(&["sales"]), &[]), list(&["sales"]));
    }
}
