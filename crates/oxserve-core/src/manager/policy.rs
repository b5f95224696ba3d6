//! Version policies (`model_version_policy`): which of the version directories found under a
//! model's base path should be served.

use std::collections::BTreeSet;

use oxserve_proto::tensorflow::serving::file_system_storage_path_source_config::{
    servable_version_policy::PolicyChoice, ServableVersionPolicy,
};

/// TF Serving's `ServableVersionPolicy`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The `n` highest versions (TF Serving's default: `latest { num_versions: 1 }`).
    Latest(u32),
    /// Every version found.
    All,
    /// Exactly these versions, those of them that exist.
    Specific(BTreeSet<i64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The policy of a `ModelConfig`; none set means `latest { num_versions: 1 }`, and
    /// `num_versions: 0` means 1, as in TF Serving's file-system source.
    pub fn from_proto(model: &str, policy: Option<&ServableVersionPolicy>) -> Self {
        match policy.and_then(|policy| policy.policy_choice.as_ref()) {
            None => VersionPolicy::Latest(1),
            Some(PolicyChoice::Latest(latest)) => VersionPolicy::Latest(latest.num_versions.max(1)),
            Some(PolicyChoice::All(_)) => VersionPolicy::All,
            Some(PolicyChoice::Specific(specific)) => {
                // Accepted, as TF Serving accepts it (its source just finds nothing to load).
                if specific.versions.is_empty() {
                    tracing::warn!(
                        "model_version_policy of model {model} is `specific` with no versions: \
                         no version of it will be served"
                    );
                }
                VersionPolicy::Specific(specific.versions.iter().copied().collect())
            }
        }
    }

    /// The versions to serve among those found on disk.
    pub fn select(&self, found: &BTreeSet<i64>) -> BTreeSet<i64> {
        match self {
            VersionPolicy::Latest(n) => found.iter().rev().take(*n as usize).copied().collect(),
            VersionPolicy::All => found.clone(),
            VersionPolicy::Specific(wanted) => found.intersection(wanted).copied().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oxserve_proto::tensorflow::serving::file_system_storage_path_source_config::servable_version_policy::{
        All, Latest, Specific,
    };

    fn set(versions: &[i64]) -> BTreeSet<i64> {
        versions.iter().copied().collect()
    }

    fn proto(choice: PolicyChoice) -> ServableVersionPolicy {
        ServableVersionPolicy {
            policy_choice: Some(choice),
        }
    }

    #[test]
    fn latest_is_the_default_and_takes_the_highest() {
        let found = set(&[1, 3, 2, 10]);
        let policy = VersionPolicy::from_proto("m", None);
        assert_eq!(policy, VersionPolicy::Latest(1));
        assert_eq!(policy.select(&found), set(&[10]));
        let two = VersionPolicy::from_proto(
            "m",
            Some(&proto(PolicyChoice::Latest(Latest { num_versions: 2 }))),
        );
        assert_eq!(two.select(&found), set(&[3, 10]));
        let zero = VersionPolicy::from_proto(
            "m",
            Some(&proto(PolicyChoice::Latest(Latest { num_versions: 0 }))),
        );
        assert_eq!(zero, VersionPolicy::Latest(1));
        assert_eq!(VersionPolicy::Latest(5).select(&found), found);
        assert!(VersionPolicy::Latest(1).select(&set(&[])).is_empty());
    }

    #[test]
    fn all_and_specific() {
        let found = set(&[123, 124]);
        let all = VersionPolicy::from_proto("m", Some(&proto(PolicyChoice::All(All {}))));
        assert_eq!(all.select(&found), found);
        let specific = VersionPolicy::from_proto(
            "m",
            Some(&proto(PolicyChoice::Specific(Specific {
                versions: vec![123, 7],
            }))),
        );
        assert_eq!(specific.select(&found), set(&[123]));
        assert!(specific.select(&set(&[1])).is_empty());
        let none = VersionPolicy::from_proto(
            "m",
            Some(&proto(PolicyChoice::Specific(Specific {
                versions: vec![],
            }))),
        );
        assert!(none.select(&found).is_empty());
    }
}
