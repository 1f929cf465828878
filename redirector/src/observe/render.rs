//! How `observe` prints a flow: `compact` (one line, like `hubble observe`), `table` (aligned
//! columns under one header) or `json` (one object per line). Pure.

use std::fmt::Write as _;

use clap::ValueEnum;

use super::flow::Flow;

/// `--output`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// One line per request: time, source -> destination, method, path, status, duration.
    #[default]
    Compact,
    /// Aligned columns under a header.
    Table,
    /// One JSON object per line.
    Json,
}

/// Column widths of `table`; longer values are cut with `…`.
const WIDTHS: [usize; 7] = [24, 36, 28, 7, 32, 6, 9];

/// The header `table` prints once, before the first flow.
pub fn header(output: Output) -> Option<String> {
    (output == Output::Table).then(|| {
        row(&[
            "TIME",
            "SOURCE",
            "DESTINATION",
            "METHOD",
            "PATH",
            "STATUS",
            "DURATION",
        ])
    })
}

/// One flow, without a newline.
pub fn line(output: Output, flow: &Flow) -> String {
    match output {
        Output::Json => flow.to_json().to_string(),
        Output::Compact => compact(flow),
        Output::Table => row(&[
            flow.time.as_deref().unwrap_or("-"),
            &flow.source_label(),
            &flow.destination_label(),
            flow.method
                .as_deref()
                .unwrap_or(if flow.is_http() { "-" } else { "TCP" }),
            flow.path.as_deref().unwrap_or("-"),
            &status(flow),
            &format!("{}ms", flow.duration_ms),
        ]),
    }
}

fn compact(flow: &Flow) -> String {
    let mut s = format!(
        "{} {} -> {} ",
        flow.time.as_deref().unwrap_or("-"),
        flow.source_label(),
        flow.destination_label()
    );
    if flow.is_http() {
        let _ = write!(
            s,
            "http {} {} => {}",
            flow.method.as_deref().unwrap_or("-"),
            flow.path.as_deref().unwrap_or("-"),
            status(flow)
        );
    } else {
        let _ = write!(s, "tcp {} B in, {} B out", flow.bytes_in, flow.bytes_out);
    }
    let _ = write!(s, " {}ms", flow.duration_ms);
    if let Some(flags) = &flow.flags {
        let _ = write!(s, " [{flags}]");
    }
    s
}

fn status(flow: &Flow) -> String {
    match (flow.is_http(), flow.status) {
        (false, _) => "-".into(),
        (true, 0) => "none".into(),
        (true, code) => code.to_string(),
    }
}

fn row(cells: &[&str]) -> String {
    let mut out = String::new();
    for (i, (cell, width)) in cells.iter().zip(WIDTHS).enumerate() {
        let text = fit(cell, width);
        if i + 1 == cells.len() {
            out.push_str(&text);
        } else {
            let _ = write!(out, "{text:<width$} ");
        }
    }
    out.trim_end().to_string()
}

/// `text` in at most `width` characters.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        text.to_string()
    } else {
        let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
        cut.push('…');
        cut
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::flow::tests::{flow, tcp_flow};

    /// Golden renderings: what a user sees, exactly.
    #[test]
    fn compact_lines() {
        assert_eq!(
            line(Output::Compact, &flow("GET", "/users/7?x=1", 200)),
            "2026-12-01T10:00:00.123Z shop/client-7d9f-* (10.77.1.2:43210) -> shop/web:80 \
             http GET /users/7?x=1 => 200 3ms"
        );
        let mut failed = flow("POST", "/pay", 503);
        failed.flags = Some("UF".into());
        assert_eq!(
            line(Output::Compact, &failed),
            "2026-12-01T10:00:00.123Z shop/client-7d9f-* (10.77.1.2:43210) -> shop/web:80 \
             http POST /pay => 503 3ms [UF]"
        );
        assert_eq!(
            line(Output::Compact, &tcp_flow()),
            "2026-12-01T10:00:01.000Z 10.77.1.1:50000 -> 10.0.0.9:5432 tcp 16 B in, 124 B out \
             1200ms"
        );
    }

    #[test]
    fn table_rows_line_up_under_the_header() {
        let lines = [
            header(Output::Table).unwrap(),
            line(Output::Table, &flow("GET", "/", 200)),
            line(
                Output::Table,
                &flow(
                    "DELETE",
                    "/a/very/long/path/that/does/not/fit/in/its/column",
                    404,
                ),
            ),
            line(Output::Table, &tcp_flow()),
        ];
        let expected = [
            "TIME                     SOURCE                               DESTINATION                  METHOD  PATH                             STATUS DURATION",
            "2026-12-01T10:00:00.123Z shop/client-7d9f-* (10.77.1.2:43210) shop/web:80                  GET     /                                200    3ms",
            "2026-12-01T10:00:00.123Z shop/client-7d9f-* (10.77.1.2:43210) shop/web:80                  DELETE  /a/very/long/path/that/does/not… 404    3ms",
            "2026-12-01T10:00:01.000Z 10.77.1.1:50000                      10.0.0.9:5432                TCP     -                                -      1200ms",
        ];
        assert_eq!(lines, expected);
        assert_eq!(header(Output::Compact), None);
    }

    #[test]
    fn json_lines_hold_every_field() {
        let v: serde_json::Value =
            serde_json::from_str(&line(Output::Json, &flow("GET", "/a", 200))).unwrap();
        assert_eq!(v["source"]["namespace"], "shop");
        assert_eq!(v["source"]["name"], "client-7d9f-*");
        assert_eq!(v["source"]["address"], "10.77.1.2:43210");
        assert_eq!(v["destination"]["service"]["name"], "web");
        assert_eq!(v["destination"]["service"]["port"], 80);
        assert_eq!(v["destination"]["address"], "10.96.0.10:80");
        assert_eq!(v["status"], 200);
        assert_eq!(v["type"], "http");
        let t: serde_json::Value = serde_json::from_str(&line(Output::Json, &tcp_flow())).unwrap();
        assert_eq!(t["status"], serde_json::Value::Null);
        assert_eq!(t["source"]["name"], serde_json::Value::Null);
        assert_eq!(t["bytes_sent"], 124);
    }
}
