//! Datasets: named resources that identities are granted access to.

use super::names::DatasetName;
use super::time::UnixMillis;

/// A dataset as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Unique in the authority.
    pub name: DatasetName,
    /// Free text for operators.
    pub description: String,
    /// When it was created.
    pub create_time: UnixMillis,
}

/// The datasets `granted` names that `held` did not: what a write of an
/// identity newly grants, and so what must exist, not being deleted, at the
/// instant of that write. Datasets it already held stay as they are; deleting
/// one of those is DeleteDataset's business.
pub fn newly_granted<'a>(held: &[String], granted: &'a [String]) -> Vec<&'a str> {
    granted
        .iter()
        .filter(|name| !held.contains(name))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(names: &[&str]) -> Vec<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn only_datasets_not_held_before_are_new_grants() {
        assert_eq!(
            newly_granted(&list(&["sales"]), &list(&["sales", "hr"])),
            vec!["hr"]
        );
        assert!(newly_granted(&list(&["sales", "hr"]), &list(&["hr"])).is_empty());
        assert_eq!(newly_granted(&[], &list(&["hr"])), vec!["hr"]);
    }
}
