//! The results of a matrix run: each column (a kernel in a VM, or the host) reads the
//! `results.tsv` its runner wrote, and the table prints kernel × test. Pure.

use std::{collections::BTreeMap, fmt::Write as _};

/// How one test ended on one kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// `pass`, `fail` or `timeout`.
    pub result: String,
    /// Wall-clock seconds, start to exit.
    pub seconds: f64,
}

impl Outcome {
    /// Whether the test passed.
    pub fn passed(&self) -> bool {
        self.result == "pass"
    }
}

/// One column of the table: a kernel and what its run gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Column {
    /// The heading: the kernel's name and release, and how it was run.
    pub heading: String,
    /// Test → outcome.
    pub outcomes: BTreeMap<String, Outcome>,
    /// Why the run gave no (or partial) results, if it did not finish.
    pub problem: Option<String>,
    /// Seconds the whole column took (boot included).
    pub seconds: f64,
}

impl Column {
    /// Whether every test of this column passed and the run finished.
    pub fn all_passed(&self) -> bool {
        self.problem.is_none()
            && !self.outcomes.is_empty()
            && self.outcomes.values().all(Outcome::passed)
    }
}

/// Parses a `results.tsv` (a header line, then `test<TAB>result<TAB>seconds`).
pub fn parse_results(text: &str) -> Result<BTreeMap<String, Outcome>, String> {
    let mut out = BTreeMap::new();
    for (number, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        let [test, result, seconds] = fields[..] else {
            return Err(format!(
                "line {}: {line:?} is not test, result, seconds",
                number + 1
            ));
        };
        let seconds: f64 = seconds.parse().map_err(|_| {
            format!(
                "line {}: {seconds:?} is not a number of seconds",
                number + 1
            )
        })?;
        out.insert(
            test.to_string(),
            Outcome {
                result: result.to_string(),
                seconds,
            },
        );
    }
    Ok(out)
}

/// The table: one row per test, one column per kernel (`pass 12.3s`, `FAIL 4.0s`,
/// `TIMEOUT 300.0s`, `-` when that column has no result for the test), then each column's total
/// time and what went wrong where something did.
pub fn render(columns: &[Column]) -> String {
    let mut tests: Vec<&String> = columns.iter().flat_map(|c| c.outcomes.keys()).collect();
    tests.sort();
    tests.dedup();
    let cell = |c: &Column, t: &str| match c.outcomes.get(t) {
        Some(o) if o.passed() => format!("pass {:.1}s", o.seconds),
        Some(o) => format!("{} {:.1}s", o.result.to_uppercase(), o.seconds),
        None => "-".to_string(),
    };
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["test".to_string()];
    header.extend(columns.iter().map(|c| c.heading.clone()));
    rows.push(header);
    for t in &tests {
        let mut row = vec![t.to_string()];
        row.extend(columns.iter().map(|c| cell(c, t)));
        rows.push(row);
    }
    let mut total = vec!["total (boot included)".to_string()];
    total.extend(columns.iter().map(|c| {
        let verdict = if c.all_passed() { "all pass" } else { "FAILED" };
        format!("{verdict}, {:.0}s", c.seconds)
    }));
    rows.push(total);

    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (n, row) in rows.iter().enumerate() {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "| {} |", line.join(" | "));
        if n == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            let _ = writeln!(out, "| {} |", rule.join(" | "));
        }
    }
    for c in columns {
        if let Some(problem) = &c.problem {
            let _ = writeln!(out, "{}: {problem}", c.heading);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(heading: &str, tsv: &str) -> Column {
        Column {
            heading: heading.into(),
            outcomes: parse_results(tsv).unwrap(),
            problem: None,
            seconds: 100.0,
        }
    }

    #[test]
    fn results_parse_and_render_as_kernel_by_test() {
        let a = column(
            "5.10",
            "test\tresult\tseconds\ndatapath::a\tpass\t12.3\ndatapath::b\tfail\t4.0\n",
        );
        let b = column(
            "6.1",
            "test\tresult\tseconds\ndatapath::a\ttimeout\t300.0\n",
        );
        let text = render(&[a.clone(), b.clone()]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].contains("test") && lines[0].contains("5.10") && lines[0].contains("6.1"));
        assert!(lines[2].contains("datapath::a") && lines[2].contains("pass 12.3s"));
        assert!(lines[2].contains("TIMEOUT 300.0s"), "{text}");
        let cells: Vec<&str> = lines[3].split('|').map(str::trim).collect();
        assert_eq!(cells[1..4], ["datapath::b", "FAIL 4.0s", "-"], "{text}");
        assert!(lines[4].contains("FAILED, 100s"), "{text}");
        assert!(!a.all_passed() && !b.all_passed());
        let good = column("host", "test\tresult\tseconds\ndatapath::a\tpass\t1.0\n");
        assert!(good.all_passed());
    }

    #[test]
    fn a_column_without_results_or_with_a_problem_has_not_passed() {
        let mut c = column("6.12", "test\tresult\tseconds\n");
        assert!(!c.all_passed(), "no results is no pass");
        c.outcomes = parse_results("h\ndatapath::a\tpass\t1\n").unwrap();
        c.problem = Some("the VM did not finish".into());
        assert!(!c.all_passed());
        assert!(render(&[c]).contains("6.12: the VM did not finish"));
    }

    #[test]
    fn broken_lines_are_errors() {
        assert!(parse_results("h\na\tpass\n").is_err());
        assert!(parse_results("h\na\tpass\tsoon\n").is_err());
    }
}
