//! One frame of `redirector top`: a title line and the table. Pure (it draws into whatever
//! frame it is given: the terminal's, or a test backend's).

use ratatui::{
    Frame,
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Cell, Row as TableRow, Table as TableWidget},
};

use super::stats::{Row, SortBy, Table};

/// The columns: Linkerd top's, then the percentiles.
const HEADER: [&str; 12] = [
    "SOURCE",
    "DESTINATION",
    "METHOD",
    "PATH",
    "COUNT",
    "BEST",
    "WORST",
    "LAST",
    "SUCCESS",
    "P50",
    "P95",
    "P99",
];

/// The widest a source or destination column grows.
const MAX_NAME: usize = 40;

/// The columns' widths: the source and destination as wide as their longest value (up to
/// [`MAX_NAME`]), the path whatever is left.
fn widths(rows: &[&Row]) -> [Constraint; 12] {
    let widest = |f: fn(&Row) -> &str, header: &str| {
        let w = rows
            .iter()
            .map(|r| f(r).chars().count())
            .chain([header.len()])
            .max()
            .unwrap_or(0);
        Constraint::Length(w.min(MAX_NAME) as u16)
    };
    [
        widest(|r| &r.key.source, HEADER[0]),
        widest(|r| &r.key.destination, HEADER[1]),
        Constraint::Length(7),
        Constraint::Fill(1),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
        Constraint::Length(8),
    ]
}

/// Draws `table` sorted by `sort`.
pub fn draw(frame: &mut Frame<'_>, table: &Table, sort: SortBy) {
    let [title, body] =
        Layout::vertical([Constraint::Length(1), Constraint::Fill(1)]).areas(frame.area());
    let mut heading = format!(
        "redirector top: {} requests, sorted by {} (s: sort, q: quit)",
        table.total,
        sort.name()
    );
    if table.dropped > 0 {
        heading.push_str(&format!("; {} in rows not shown", table.dropped));
    }
    frame.render_widget(Line::from(heading), title);
    let header =
        TableRow::new(HEADER.map(Cell::from)).style(Style::default().add_modifier(Modifier::BOLD));
    let sorted = table.sorted(sort);
    let widths = widths(&sorted);
    frame.render_widget(
        TableWidget::new(sorted.into_iter().map(cells), widths)
            .header(header)
            .column_spacing(1),
        body,
    );
}

fn cells(row: &Row) -> TableRow<'static> {
    let ms = |v: u64| format!("{v}ms");
    TableRow::new([
        row.key.source.clone(),
        row.key.destination.clone(),
        row.key.method.clone(),
        row.key.path.clone(),
        row.count.to_string(),
        ms(row.best),
        ms(row.worst),
        ms(row.last),
        format!("{:.2}%", row.success_rate() * 100.0),
        ms(row.percentile(0.50)),
        ms(row.percentile(0.95)),
        ms(row.percentile(0.99)),
    ])
}

#[cfg(test)]
mod tests {
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::observe::flow::tests::{flow, tcp_flow};

    /// A golden frame: exactly what a 120 × 6 terminal shows.
    #[test]
    fn a_frame_of_top() {
        let mut table = Table::default();
        for (path, status, ms) in [
            ("/users?id=1", 200, 4),
            ("/users?id=2", 200, 2),
            ("/users", 503, 30),
            ("/pay", 200, 11),
        ] {
            let mut f = flow("GET", path, status);
            f.duration_ms = ms;
            table.add(&f);
        }
        table.add(&tcp_flow());
        let mut terminal = Terminal::new(TestBackend::new(120, 6)).unwrap();
        terminal
            .draw(|frame| draw(frame, &table, SortBy::Count))
            .unwrap();
        let lines: Vec<String> = terminal
            .backend()
            .buffer()
            .content
            .chunks(120)
            .map(|cells| cells.iter().map(|c| c.symbol()).collect::<String>())
            .map(|l| l.trim_end().to_string())
            .collect();
        let expected = [
            "redirector top: 5 requests, sorted by count (s: sort, q: quit)",
            "SOURCE             DESTINATION   METHOD  PATH     COUNT   BEST     WORST    LAST     SUCCESS  P50      P95      P99",
            "shop/client-7d9f-* shop/web:80   GET     /users   3       2ms      30ms     30ms     66.67%   4ms      30ms     30ms",
            "10.77.1.1          10.0.0.9:5432 TCP     -        1       1200ms   1200ms   1200ms   100.00%  1200ms   1200ms   1200ms",
            "shop/client-7d9f-* shop/web:80   GET     /pay     1       11ms     11ms     11ms     100.00%  11ms     11ms     11ms",
            "",
        ];
        assert_eq!(lines, expected);
    }
}
