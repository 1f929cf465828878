//! Patch semantics: JSON merge patch (RFC 7386), and strategic merge patch approximated by it.

use serde_json::{Map, Value};

/// How a PATCH body is to be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`: RFC 7386. What `kubectl annotate` sends (1.32 and
    /// 1.33), and kube-rs's `Patch::Merge`.
    Merge,
    /// `application/strategic-merge-patch+json` (the default of `kubectl patch`): applied as a
    /// merge patch after honouring `$patch` and dropping the other `$` directives. Lists are
    /// replaced whole, not merged by key: enough for metadata edits.
    StrategicMerge,
    /// `application/apply-patch+yaml` (server-side apply): creates a missing object, else is
    /// merged like a merge patch (fields the manager dropped are not removed).
    Apply,
}

/// RFC 7386 JSON merge patch: objects merge recursively, `null` removes a key, anything else
/// (arrays included) replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target
        .as_object_mut()
        .expect("target was just made an object");
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            merge_patch(target.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

/// A strategic merge patch, approximated: `"$patch": "replace"` replaces a map,
/// `"$patch": "delete"` removes it, other `$` directives (`$setElementOrder/...`,
/// `$retainKeys`, ...) are dropped, and the rest is a merge patch.
pub fn strategic_merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = without_directives(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Null;
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let target = target
        .as_object_mut()
        .expect("target was just made an object");
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            target.remove(key);
            continue;
        }
        let slot = target.entry(key.clone()).or_insert(Value::Null);
        strategic_merge_patch(slot, value);
        if slot.is_null() {
            target.remove(key);
        }
    }
}

fn without_directives(patch: &Map<String, Value>) -> Value {
    Value::Object(
        patch
            .iter()
            .filter(|(k, _)| !k.starts_with('$'))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        // The examples of RFC 7386, appendix A.
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (mut target, patch, want) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, want, "patch {patch}");
        }
    }

    #[test]
    fn strategic_merge_patch_handles_directives() {
        let mut target =
            json!({"metadata": {"annotations": {"a": "1", "b": "2"}, "labels": {"x": "y"}}});
        strategic_merge_patch(
            &mut target,
            &json!({"metadata": {
                "annotations": {"a": null, "c": "3"},
                "labels": {"$patch": "replace", "z": "w"},
                "$setElementOrder/finalizers": []
            }}),
        );
        assert_eq!(
            target,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}, "labels": {"z": "w"}}})
        );
        strategic_merge_patch(
            &mut target,
            &json!({"metadata": {"labels": {"$patch": "delete"}}}),
        );
        assert_eq!(
            target,
            json!({"metadata": {"annotations": {"b": "2", "c": "3"}}})
        );
    }
}
