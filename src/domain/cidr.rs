//! IP allow-lists. An identity's list says where its keys may be used from; a
//! key's own list narrows it further. An empty list allows anywhere.

use ipnet::IpNet;
use std::net::IpAddr;

/// Most CIDRs on one identity or key.
pub const MAX_CIDRS: usize = 64;

/// Parses one CIDR. A bare address means that address alone (/32 or /128);
/// a network with host bits set is refused, since it usually hides a typo.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err("is empty".into());
    }
    if let Ok(address) = trimmed.parse::<IpAddr>() {
        return Ok(IpNet::from(canonical(address)));
    }
    let net: IpNet = trimmed
        .parse()
        .map_err(|_| format!("{trimmed:?} is not an IPv4 or IPv6 CIDR"))?;
    if net.trunc() != net {
        return Err(format!(
            "{trimmed:?} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// Parses a list of CIDRs, naming each bad entry by its index.
pub fn parse_cidrs(field: &str, entries: &[String]) -> Result<Vec<IpNet>, Vec<(String, String)>> {
    let mut errors = Vec::new();
    if entries.len() > MAX_CIDRS {
        errors.push((field.to_owned(), format!("at most {MAX_CIDRS} entries")));
        return Err(errors);
    }
    let mut nets: Vec<IpNet> = Vec::with_capacity(entries.len());
    for (index, entry) in entries.iter().enumerate() {
        match parse_cidr(entry) {
            Ok(net) if nets.contains(&net) => errors.push((
                format!("{field}[{index}]"),
                format!("{net} is listed twice"),
            )),
            Ok(net) => nets.push(net),
            Err(why) => errors.push((format!("{field}[{index}]"), why)),
        }
    }
    if errors.is_empty() {
        Ok(nets)
    } else {
        Err(errors)
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`) as the IPv4 address it is,
/// so it matches IPv4 ranges.
pub fn canonical(address: IpAddr) -> IpAddr {
    address.to_canonical()
}

/// Whether `address` may use a key: it must fall within every non-empty list.
pub fn permits(lists: &[&[IpNet]], address: Option<IpAddr>) -> bool {
    let restricted = lists.iter().any(|list| !list.is_empty());
    if !restricted {
        return true;
    }
    let Some(address) = address.map(canonical) else {
        // A list applies and the caller's address is unknown: fail closed.
        return false;
    };
    lists
        .iter()
        .all(|list| list.is_empty() || list.iter().any(|net| net.contains(&address)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(entries: &[&str]) -> Vec<IpNet> {
        entries.iter().map(|e| parse_cidr(e).unwrap()).collect()
    }

    #[test]
    fn range_edges_and_mapped_addresses() {
        let list = nets(&["10.0.0.0/24", "2001:db8::/32"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(permits(&[&list], ip("10.0.0.0")));
        assert!(permits(&[&list], ip("10.0.0.255")));
        assert!(!permits(&[&list], ip("10.0.1.0")));
        assert!(!permits(&[&list], ip("9.255.255.255")));
        assert!(permits(&[&list], ip("::ffff:10.0.0.7")));
        assert!(permits(
            &[&list],
            ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff")
        ));
        assert!(!permits(&[&list], ip("2001:db9::")));
        assert!(!permits(&[&list], None));
        assert!(permits(&[&[], &[]], None));
    }

    #[test]
    fn a_key_list_narrows_the_identity_list() {
        let identity = nets(&["10.0.0.0/8"]);
        let key = nets(&["10.1.0.0/16"]);
        let ip = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        assert!(permits(&[&identity, &key], ip("10.1.2.3")));
        assert!(!permits(&[&identity, &key], ip("10.2.0.1")));
        assert!(permits(&[&[], &key], ip("10.1.0.1")));
    }

    #[test]
    fn bad_entries_are_named() {
        let errors = parse_cidrs(
            "allowed_cidrs",
            &[
                "10.0.0.0/8".into(),
                "10.0.0.1/8".into(),
                "nope".into(),
                "10.0.0.0/8".into(),
            ],
        )
        .unwrap_err();
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["allowed_cidrs[1]", "allowed_cidrs[2]", "allowed_cidrs[3]"]
        );
        assert_eq!(parse_cidr("192.0.2.1").unwrap().to_string(), "192.0.2.1/32");
        assert_eq!(
            parse_cidr("::ffff:192.0.2.1").unwrap().to_string(),
            "192.0.2.1/32"
        );
    }
}
