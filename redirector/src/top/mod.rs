//! `redirector top`: a terminal view of this node's requests as Envoy logs them, updated every
//! second, grouped like `linkerd viz top` (source, destination, method, path: count, best,
//! worst, last, success rate) with p50/p95/p99. It counts from when it starts.
//!
//! Modules:
//! - [`stats`]: the rows and their columns (pure).
//! - [`view`]: one frame (pure, drawn into any backend).

pub mod stats;
pub mod view;

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use tokio::time::Instant;

use self::stats::{SortBy, Table};
use crate::{
    collector::follow::Follower,
    k8s::sources::Source,
    observe::{Names, to_flow},
};

/// What `top` is asked to do.
#[derive(Debug, Clone)]
pub struct TopOptions {
    /// Envoy's JSON access log.
    pub access_log: PathBuf,
    /// Where names come from; `None`: addresses only.
    pub source: Option<Source>,
    /// How long to wait for the names before starting.
    pub sync_timeout: Duration,
    /// The first sort order.
    pub sort: SortBy,
}

/// How often the view is redrawn.
const REFRESH: Duration = Duration::from_secs(1);
/// How long one wait for a key lasts: the loop reads the log between waits.
const KEY_WAIT: Duration = Duration::from_millis(100);

/// Runs until `q`, Esc or Ctrl-C.
pub async fn run(opts: TopOptions) -> Result<()> {
    let mut names = Names::start(opts.source.as_ref(), opts.sync_timeout).await?;
    let mut follower = Follower::open_at_end(&opts.access_log, 1 << 20)
        .with_context(|| format!("cannot open the access log {}", opts.access_log.display()))?;
    let mut terminal = ratatui::try_init().context("cannot take over the terminal")?;
    let outcome = async {
        let mut table = Table::default();
        let mut sort = opts.sort;
        let mut lines = Vec::new();
        let mut next_draw = Instant::now();
        loop {
            lines.clear();
            follower
                .poll(&mut lines)
                .with_context(|| format!("cannot read {}", opts.access_log.display()))?;
            if !lines.is_empty() {
                let index = names.index();
                for flow in lines.iter().filter_map(|l| to_flow(l, &index)) {
                    table.add(&flow);
                }
            }
            if Instant::now() >= next_draw {
                terminal
                    .draw(|frame| view::draw(frame, &table, sort))
                    .context("cannot draw")?;
                next_draw = Instant::now() + REFRESH;
            }
            // A short blocking wait: the runtime's other worker serves the API watchers.
            if event::poll(KEY_WAIT).context("cannot read the keyboard")?
                && let Event::Key(key) = event::read().context("cannot read the keyboard")?
                && key.kind == KeyEventKind::Press
            {
                match key.code {
                    KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                    KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                        return Ok(());
                    }
                    KeyCode::Char('s') => {
                        sort = sort.next();
                        next_draw = Instant::now();
                    }
                    _ => {}
                }
            }
        }
    }
    .await;
    ratatui::restore();
    outcome
}
