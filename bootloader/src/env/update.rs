//! [`EnvUpdate`]: a batch of sets and unsets applied as one write.

use std::collections::BTreeMap;

use super::format::{self, FormatError};

/// A set of changes to apply to an environment at once.
///
/// Each name has at most one pending operation: a later `set`/`unset` of the same name
/// replaces the earlier one. Nothing is validated until [`EnvUpdate::apply_to`], which checks
/// every operation and fails as a whole, naming the first bad variable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvUpdate {
    ops: BTreeMap<String, Option<String>>,
}

impl EnvUpdate {
    /// An empty update.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` to `value` (an empty value is stored as `key=`; U-Boot itself reads such an
    /// entry as "unset").
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.ops.insert(key.into(), Some(value.into()));
        self
    }

    /// Removes `key` (no error if it is absent).
    pub fn unset(mut self, key: impl Into<String>) -> Self {
        self.ops.insert(key.into(), None);
        self
    }

    /// Whether the update has no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The pending operations by name: `Some(value)` sets, `None` removes.
    pub fn ops(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.ops.iter().map(|(k, v)| (k.as_str(), v.as_deref()))
    }

    /// Validates every operation, then returns `vars` with the update applied. `vars` itself
    /// is never modified.
    pub fn apply_to(
        &self,
        vars: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, FormatError> {
        for (key, value) in &self.ops {
            match value {
                Some(value) => format::validate_var(key, value)?,
                None => format::validate_key(key)?,
            }
        }
        let mut out = vars.clone();
        for (key, value) in &self.ops {
            match value {
                Some(value) => out.insert(key.clone(), value.clone()),
                None => out.remove(key),
            };
        }
        Ok(out)
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, Option<V>)> for EnvUpdate {
    /// Builds an update from `(name, Some(value))` sets and `(name, None)` unsets.
    fn from_iter<I: IntoIterator<Item = (K, Option<V>)>>(iter: I) -> Self {
        let ops = iter
            .into_iter()
            .map(|(k, v)| (k.into(), v.map(Into::into)))
            .collect();
        Self { ops }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_unset_in_one_batch() {
        let base: BTreeMap<String, String> = [("a", "1"), ("b", "2")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let update = EnvUpdate::new()
            .set("c", "3")
            .unset("a")
            .set("b", "x")
            .unset("missing");
        let out = update.apply_to(&base).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out["b"], "x");
        assert_eq!(out["c"], "3");
        // The last operation on a name wins.
        let out = EnvUpdate::new()
            .set("a", "9")
            .unset("a")
            .apply_to(&base)
            .unwrap();
        assert!(!out.contains_key("a"));
        let out = EnvUpdate::new()
            .unset("a")
            .set("a", "9")
            .apply_to(&base)
            .unwrap();
        assert_eq!(out["a"], "9");
    }

    #[test]
    fn invalid_operation_fails_whole_update() {
        let base = BTreeMap::new();
        let update = EnvUpdate::new().set("good", "1").set("bad=name", "2");
        let err = update.apply_to(&base).unwrap_err();
        assert!(err.to_string().contains("\"bad=name\""), "{err}");
        let err = EnvUpdate::new().unset("a\nb").apply_to(&base).unwrap_err();
        assert!(matches!(err, FormatError::InvalidKey { .. }));
        let err = EnvUpdate::new()
            .set("k", "a\0")
            .apply_to(&base)
            .unwrap_err();
        assert!(matches!(err, FormatError::InvalidValue { ref key, .. } if key == "k"));
    }

    #[test]
    fn from_iterator() {
        let update: EnvUpdate = [("a", Some("1")), ("b", None)].into_iter().collect();
        let ops: Vec<_> = update.ops().collect();
        assert_eq!(ops, vec![("a", Some("1")), ("b", None)]);
        assert!(!update.is_empty());
        assert!(EnvUpdate::new().is_empty());
    }
}
