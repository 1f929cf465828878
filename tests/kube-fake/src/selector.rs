//! Label and field selectors (`labelSelector=`, `fieldSelector=`), parsed the way the API
//! server reads them, so a client that filters gets filtered results rather than everything.

use serde_json::Value;

/// What a selector's keys name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Target {
    /// Keys of `metadata.labels`.
    Labels,
    /// Dotted paths into the object, such as `metadata.name`.
    Fields,
}

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed selector: every term must hold. The empty selector matches everything.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selector {
    target: Target,
    terms: Vec<Term>,
}

impl Selector {
    /// A label selector: `a=b`, `a==b`, `a!=b`, `a in (x,y)`, `a notin (x,y)`, `a`, `!a`,
    /// comma-separated.
    pub fn labels(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_terms(text) {
            terms.push(parse_label_term(term)?);
        }
        Ok(Self {
            target: Target::Labels,
            terms,
        })
    }

    /// A field selector: `path=value`, `path==value`, `path!=value`, comma-separated. Any
    /// dotted path is accepted (the real server allows only a few per resource), so a test
    /// server never rejects what a real one would take.
    pub fn fields(text: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for term in split_terms(text) {
            let parsed = parse_comparison(term)
                .ok_or_else(|| format!("invalid field selector term {term:?}"))?;
            terms.push(parsed);
        }
        Ok(Self {
            target: Target::Fields,
            terms,
        })
    }

    /// Whether `object` satisfies every term.
    pub fn matches(&self, object: &Value) -> bool {
        self.terms.iter().all(|term| {
            let value = |key: &str| self.lookup(object, key);
            match term {
                Term::Equals(key, want) => value(key).as_deref() == Some(want.as_str()),
                // As in Kubernetes, `!=` also holds for a missing key.
                Term::NotEquals(key, want) => value(key).as_deref() != Some(want.as_str()),
                Term::In(key, set) => value(key).is_some_and(|v| set.contains(&v)),
                Term::NotIn(key, set) => !value(key).is_some_and(|v| set.contains(&v)),
                Term::Exists(key) => value(key).is_some(),
                Term::NotExists(key) => value(key).is_none(),
            }
        })
    }

    fn lookup(&self, object: &Value, key: &str) -> Option<String> {
        let found = match self.target {
            Target::Labels => object.pointer("/metadata/labels")?.get(key)?,
            Target::Fields => key
                .split('.')
                .try_fold(object, |value, part| value.get(part))?,
        };
        match found {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            // Field selectors compare booleans and numbers by their text, like the server.
            other => Some(other.to_string()),
        }
    }
}

/// Splits at commas outside parentheses (`a in (x,y),b` is two terms), dropping empty terms.
fn split_terms(text: &str) -> Vec<&str> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&text[start..]);
    terms
        .into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

/// `key!=value`, `key==value` or `key=value`.
fn parse_comparison(term: &str) -> Option<Term> {
    let pair = |sep: &str| {
        term.split_once(sep)
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .filter(|(k, _)| !k.is_empty())
    };
    if let Some((k, v)) = pair("!=") {
        Some(Term::NotEquals(k, v))
    } else if let Some((k, v)) = pair("==").or_else(|| pair("=")) {
        Some(Term::Equals(k, v))
    } else {
        None
    }
}

fn parse_label_term(term: &str) -> Result<Term, String> {
    if term.contains('=') {
        return parse_comparison(term).ok_or_else(|| format!("invalid label selector {term:?}"));
    }
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Term::NotExists(key.trim().to_owned()));
    }
    let mut words = term.splitn(2, char::is_whitespace);
    let key = words.next().unwrap_or_default().to_owned();
    let Some(rest) = words.next().map(str::trim) else {
        return Ok(Term::Exists(key));
    };
    let (negated, set) = if let Some(set) = rest.strip_prefix("notin") {
        (true, set)
    } else if let Some(set) = rest.strip_prefix("in") {
        (false, set)
    } else {
        return Err(format!("invalid label selector {term:?}"));
    };
    let values = set
        .trim()
        .strip_prefix('(')
        .and_then(|s| s.strip_suffix(')'))
        .ok_or_else(|| format!("invalid set in label selector {term:?}"))?
        .split(',')
        .map(|v| v.trim().to_owned())
        .collect();
    Ok(if negated {
        Term::NotIn(key, values)
    } else {
        Term::In(key, values)
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn object() -> Value {
        json!({
            "metadata": {"name": "web", "namespace": "prod", "labels": {"app": "web", "tier": "front"}},
            "spec": {"type": "ClusterIP"}
        })
    }

    #[test]
    fn empty_selectors_match_everything() {
        assert!(Selector::labels("").unwrap().matches(&object()));
        assert!(Selector::fields(" , ").unwrap().matches(&json!({})));
    }

    #[test]
    fn label_terms() {
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app=db", false),
            ("app!=db", true),
            ("missing!=x", true),
            ("app in (db, web)", true),
            ("app notin (db,web)", false),
            ("tier", true),
            ("!tier", false),
            ("!missing", true),
            ("app=web,tier in (front),!missing", true),
            ("app=web,tier=back", false),
        ];
        for (text, want) in cases {
            let selector = Selector::labels(text).unwrap();
            assert_eq!(selector.matches(&object()), want, "{text}");
        }
    }

    #[test]
    fn field_terms() {
        let cases = [
            ("metadata.name=web", true),
            ("metadata.namespace!=prod", false),
            ("metadata.name=web,spec.type==ClusterIP", true),
            ("spec.clusterIP=x", false),
        ];
        for (text, want) in cases {
            let selector = Selector::fields(text).unwrap();
            assert_eq!(selector.matches(&object()), want, "{text}");
        }
    }

    #[test]
    fn malformed_selectors_are_errors() {
        assert!(Selector::labels("app in x").is_err());
        assert!(Selector::labels("app in (x").is_err());
        assert!(Selector::labels("=x").is_err());
        assert!(Selector::fields("metadata.name").is_err());
    }
}
