//! Reading Kubernetes YAML (a services file, an `ApplicationLayer`) into JSON values, with the
//! scalar rules of YAML 1.2 that `kubectl -o yaml` output is written in: `n`, `yes` and `0755`
//! are strings, not booleans or octal numbers. The documents are the operator's own, so the
//! parser's size limits (sized for configuration files) are lifted; the protections against
//! alias bombs stay.

use serde_json::Value;

/// Every non-empty document of `text` (one object, or a `---`-separated stream).
pub fn documents(text: &str) -> Result<Vec<Value>, serde_saphyr::Error> {
    serde_saphyr::from_multiple_with_options(text, options())
}

/// What went wrong, without the position (for errors that show it themselves) and the
/// position as (line, column), both 1-based.
pub fn describe(e: &serde_saphyr::Error) -> (String, Option<(usize, usize)>) {
    let text = e.to_string();
    let Some(at) = e.location() else {
        return (text, None);
    };
    let (line, column) = (at.line() as usize, at.column() as usize);
    let suffix = format!(" at line {line}, column {column}");
    let message = text.strip_suffix(&suffix).unwrap_or(&text).to_string();
    (message, Some((line, column)))
}

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = None;
    budget.max_events = usize::MAX;
    budget.max_documents = usize::MAX;
    budget.max_nodes = usize::MAX;
    budget.max_total_scalar_bytes = usize::MAX;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options.strict_booleans = true;
    options.leading_zero_numbers_as_strings = true;
    options.underscored_numbers_as_strings = true;
    options.with_snippet = false;
    options
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scalars_follow_yaml_1_2() {
        let docs =
            documents("a: n\nb: yes\nc: 0755\nd: true\ne: 80\nf: 10.96.0.10\n---\n---\nx: 1\n")
                .unwrap();
        assert_eq!(
            docs,
            [
                json!({"a": "n", "b": "yes", "c": "0755", "d": true, "e": 80, "f": "10.96.0.10"}),
                json!({"x": 1})
            ]
        );
    }

    #[test]
    fn errors_carry_their_position() {
        let e = documents("a: 1\nb: [unclosed\n").unwrap_err();
        let (message, position) = describe(&e);
        assert_eq!(position, Some((2, 4)), "{e}");
        assert!(!message.contains("line"), "{message}");
    }
}
