//! Reading the return path back (pure): `nft -j list table` and `ip -j rule` / `ip -j route`
//! output parsed into what is there, and compared with what the settings want.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
    net::IpAddr,
};

use serde::Serialize;
use serde_json::Value;

use super::rules::{
    CHAINS, COMMENT_PREFIX, Family, HAIRPIN4, HAIRPIN6, NFT_TABLE, RT_PROTO, Settings, nft_rules,
};

/// Output of a tool that did not have the shape we read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected output of {tool}: {why}")]
pub struct ParseError {
    /// The command.
    pub tool: &'static str,
    /// What was wrong.
    pub why: String,
}

fn parse_error(tool: &'static str, why: impl fmt::Display) -> ParseError {
    ParseError {
        tool,
        why: why.to_string(),
    }
}

/// One base chain as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChainState {
    /// `filter`, `route`, `nat`.
    pub kind: String,
    /// The hook.
    pub hook: String,
    /// The numeric priority.
    pub prio: i64,
    /// The comments of its rules, in order (a rule without a comment gives "").
    pub comments: Vec<String>,
}

/// Our nft table as read back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NftState {
    /// Chains by name.
    pub chains: BTreeMap<String, ChainState>,
    /// The hairpin sets' addresses (each element is an `(a . a)` pair; the first is kept).
    pub hairpin: BTreeSet<IpAddr>,
    /// Which sets exist.
    pub sets: BTreeSet<String>,
}

impl NftState {
    /// The settings the table was made with, from its rule comments.
    pub fn settings(&self) -> Option<Settings> {
        self.chains
            .values()
            .flat_map(|c| &c.comments)
            .find_map(|c| Settings::from_comment(c))
    }
}

/// Parses `nft -j list table inet l7_redirector`.
pub fn parse_nft_table(json: &str) -> Result<NftState, ParseError> {
    const TOOL: &str = "nft -j list table";
    let root: Value = serde_json::from_str(json).map_err(|e| parse_error(TOOL, e))?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| parse_error(TOOL, "no \"nftables\" array"))?;
    let mut state = NftState::default();
    let str_of = |v: &Value, key: &str| v.get(key).and_then(Value::as_str).map(str::to_string);
    for item in items {
        if let Some(chain) = item.get("chain") {
            if str_of(chain, "table").as_deref() != Some(NFT_TABLE) {
                continue;
            }
            let name =
                str_of(chain, "name").ok_or_else(|| parse_error(TOOL, "a nameless chain"))?;
            state.chains.insert(
                name,
                ChainState {
                    kind: str_of(chain, "type").unwrap_or_default(),
                    hook: str_of(chain, "hook").unwrap_or_default(),
                    prio: chain
                        .get("prio")
                        .and_then(Value::as_i64)
                        .unwrap_or(i64::MIN),
                    comments: Vec::new(),
                },
            );
        } else if let Some(rule) = item.get("rule") {
            let chain = str_of(rule, "chain").unwrap_or_default();
            let comment = str_of(rule, "comment").unwrap_or_default();
            // nft lists chains before their rules.
            if let Some(c) = state.chains.get_mut(&chain) {
                c.comments.push(comment);
            }
        } else if let Some(set) = item.get("set") {
            let name = str_of(set, "name").unwrap_or_default();
            if name == HAIRPIN4 || name == HAIRPIN6 {
                for elem in set
                    .get("elem")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let first = elem
                        .get("concat")
                        .and_then(Value::as_array)
                        .and_then(|c| c.first())
                        .and_then(Value::as_str)
                        .ok_or_else(|| parse_error(TOOL, format!("set element {elem}")))?;
                    let addr: IpAddr = first
                        .parse()
                        .map_err(|e| parse_error(TOOL, format!("set element {first}: {e}")))?;
                    state.hairpin.insert(addr);
                }
            }
            state.sets.insert(name);
        }
    }
    Ok(state)
}

/// One `ip rule` as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpRule {
    /// Its family.
    pub family: Family,
    /// `priority`.
    pub priority: u32,
    /// `fwmark`, if it has one.
    pub fwmark: Option<u32>,
    /// `fwmask` (absent in the output means all bits).
    pub fwmask: u32,
    /// The table it looks up (numeric with `ip -N`).
    pub table: String,
    /// The protocol it carries (numeric with `ip -N`).
    pub protocol: Option<String>,
}

impl IpRule {
    /// Whether it carries our protocol number.
    pub fn is_ours(&self) -> bool {
        self.protocol.as_deref() == Some(&RT_PROTO.to_string())
    }

    /// Whether it is the rule `s` wants.
    pub fn is_wanted(&self, s: &Settings) -> bool {
        self.priority == s.priority
            && self.fwmark == Some(s.fwmark)
            && self.fwmask == s.fwmark
            && self.table == s.table.to_string()
    }
}

fn hex(v: &Value) -> Option<u32> {
    let s = v.as_str()?;
    super::rules::parse_u32(s).ok()
}

/// Parses `ip -j -N <family> rule show`.
pub fn parse_ip_rules(family: Family, json: &str) -> Result<Vec<IpRule>, ParseError> {
    const TOOL: &str = "ip -j rule show";
    let rules: Vec<Value> = parse_array(TOOL, json)?;
    rules
        .iter()
        .map(|r| {
            Ok(IpRule {
                family,
                priority: r
                    .get("priority")
                    .and_then(Value::as_u64)
                    .and_then(|p| u32::try_from(p).ok())
                    .ok_or_else(|| parse_error(TOOL, format!("no priority in {r}")))?,
                fwmark: r.get("fwmark").and_then(hex),
                fwmask: r.get("fwmask").and_then(hex).unwrap_or(u32::MAX),
                table: scalar(r.get("table")).unwrap_or_default(),
                protocol: scalar(r.get("protocol")),
            })
        })
        .collect()
}

/// One route of ours (`proto 157`) as read back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct IpRoute {
    /// Its family.
    pub family: Family,
    /// `local`, `unicast`, ...
    pub kind: String,
    /// `default` or a prefix.
    pub dst: String,
    /// The device.
    pub dev: String,
    /// Its table (numeric with `ip -N`).
    pub table: String,
}

impl IpRoute {
    /// Whether it is the `local default dev lo` route of `table`.
    pub fn is_wanted(&self, table: u32) -> bool {
        // `ip -N` prints the type as its number too (RTN_LOCAL = 2).
        (self.kind == "local" || self.kind == "2")
            && self.dst == "default"
            && self.dev == "lo"
            && self.table == table.to_string()
    }
}

/// Parses `ip -j -N <family> route show table all proto 157`.
pub fn parse_ip_routes(family: Family, json: &str) -> Result<Vec<IpRoute>, ParseError> {
    const TOOL: &str = "ip -j route show";
    let routes: Vec<Value> = parse_array(TOOL, json)?;
    Ok(routes
        .iter()
        .map(|r| IpRoute {
            family,
            kind: scalar(r.get("type")).unwrap_or_else(|| "unicast".into()),
            dst: scalar(r.get("dst")).unwrap_or_default(),
            dev: scalar(r.get("dev")).unwrap_or_default(),
            table: scalar(r.get("table")).unwrap_or_else(|| "main".into()),
        })
        .collect())
}

/// `ip -j` prints nothing at all for an empty list on some versions.
fn parse_array(tool: &'static str, json: &str) -> Result<Vec<Value>, ParseError> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(json).map_err(|e| parse_error(tool, e))
}

fn scalar(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Everything of the return path that is on the node now.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// Our nft table, `None` when there is none.
    pub nft: Option<NftState>,
    /// Every `ip rule` of the families read (ours and others').
    pub rules: Vec<IpRule>,
    /// Our routes (`proto 157`) in every table.
    pub routes: Vec<IpRoute>,
    /// The families read (IPv6 is skipped on a kernel without it).
    pub families: Vec<Family>,
}

/// A piece of the return path that is not there (or not as the settings want it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Missing {
    /// Our nft table.
    Table,
    /// A chain of it (or one with another hook, type or priority).
    Chain(&'static str),
    /// A rule of a chain (flushed, or made with other settings).
    Rule {
        /// The chain.
        chain: &'static str,
        /// The rule's role.
        role: &'static str,
    },
    /// A hairpin set.
    Set(&'static str),
    /// The `fwmark` rule of a family.
    IpRule(Family),
    /// The `local default dev lo` route of a family.
    LocalRoute(Family),
}

impl fmt::Display for Missing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Table => write!(f, "nft table inet {NFT_TABLE}"),
            Self::Chain(c) => write!(f, "nft chain {c}"),
            Self::Rule { chain, role } => write!(f, "nft rule {role} in chain {chain}"),
            Self::Set(s) => write!(f, "nft set {s}"),
            Self::IpRule(family) => write!(f, "{family} fwmark ip rule"),
            Self::LocalRoute(family) => write!(f, "{family} local default route"),
        }
    }
}

/// What of the return path `s` wants is not on the node.
pub fn missing(s: &Settings, observed: &Observed) -> Vec<Missing> {
    let mut out = Vec::new();
    match &observed.nft {
        None => out.push(Missing::Table),
        Some(nft) => {
            let rules = nft_rules(s);
            for chain in CHAINS {
                let Some(got) = nft.chains.get(chain.name) else {
                    out.push(Missing::Chain(chain.name));
                    continue;
                };
                if got.kind != chain.kind
                    || got.hook != chain.hook
                    || got.prio != i64::from(chain.prio)
                {
                    out.push(Missing::Chain(chain.name));
                    continue;
                }
                let want: Vec<String> = rules
                    .iter()
                    .filter(|r| r.chain == chain.name)
                    .map(|r| r.comment(s))
                    .collect();
                // Ours must be all there, and nothing of another version left among them.
                for (rule, comment) in rules.iter().filter(|r| r.chain == chain.name).zip(&want) {
                    if !got.comments.contains(comment) {
                        out.push(Missing::Rule {
                            chain: chain.name,
                            role: rule.role,
                        });
                    }
                }
            }
            for set in [HAIRPIN4, HAIRPIN6] {
                if !nft.sets.contains(set) {
                    out.push(Missing::Set(set));
                }
            }
        }
    }
    for &family in &observed.families {
        if !observed
            .rules
            .iter()
            .any(|r| r.family == family && r.is_wanted(s))
        {
            out.push(Missing::IpRule(family));
        }
        if !observed
            .routes
            .iter()
            .any(|r| r.family == family && r.is_wanted(s.table))
        {
            out.push(Missing::LocalRoute(family));
        }
    }
    out
}

/// Rules and routes of ours that `s` does not want (left by a run with other settings).
pub fn stale<'a>(s: &Settings, observed: &'a Observed) -> (Vec<&'a IpRule>, Vec<&'a IpRoute>) {
    let rules = observed
        .rules
        .iter()
        .filter(|r| r.is_ours() && !r.is_wanted(s))
        .collect();
    let routes = observed
        .routes
        .iter()
        .filter(|r| !r.is_wanted(s.table))
        .collect();
    (rules, routes)
}

/// What `redirector status` says about the return path, from what is on the node alone (it
/// works while the daemon is down, so it cannot know the daemon's flags).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Report {
    /// `client` when any piece of ours is on the node, else `node`.
    pub upstream_source: super::rules::UpstreamSource,
    /// The settings the pieces were made with (from our table's rule comments), when known.
    pub settings: Option<Settings>,
    /// Whether every piece those settings want is there.
    pub complete: bool,
    /// What is missing, one line each.
    pub missing: Vec<String>,
    /// Our `ip rule`s, one line each.
    pub ip_rules: Vec<String>,
}

/// Builds the [`Report`] from what was read.
pub fn report(observed: &Observed) -> Report {
    let ours: Vec<&IpRule> = observed.rules.iter().filter(|r| r.is_ours()).collect();
    let any = observed.nft.is_some() || !ours.is_empty() || !observed.routes.is_empty();
    let settings = observed.nft.as_ref().and_then(NftState::settings);
    let missing: Vec<String> = match &settings {
        Some(s) => missing(s, observed)
            .iter()
            .map(ToString::to_string)
            .collect(),
        None if any => vec![if observed.nft.is_some() {
            "every rule of the nft table (flushed)".to_string()
        } else {
            Missing::Table.to_string()
        }],
        None => Vec::new(),
    };
    Report {
        upstream_source: if any {
            super::rules::UpstreamSource::Client
        } else {
            super::rules::UpstreamSource::Node
        },
        settings,
        complete: any && missing.is_empty(),
        missing,
        ip_rules: ours
            .iter()
            .map(|r| {
                format!(
                    "{} priority {} fwmark {:#x}/{:#x} lookup {}",
                    r.family,
                    r.priority,
                    r.fwmark.unwrap_or(0),
                    r.fwmask,
                    r.table
                )
            })
            .collect(),
    }
}

/// Whether a comment is one of ours (any settings).
pub fn is_our_comment(comment: &str) -> bool {
    comment.split_whitespace().next() == Some(COMMENT_PREFIX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::return_path::rules::{NftRule, nft_script};

    /// What `nft -j list table` printed (nft 1.0.6) for the table of `nft_script` with the
    /// default settings and one hairpin element, as a template: the comments are generated.
    fn table_json(s: &Settings, drop_role: Option<&str>) -> String {
        let rules: Vec<NftRule> = nft_rules(s);
        let mut items = vec![
            serde_json::json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}}),
            serde_json::json!({"table": {"family": "inet", "name": "l7_redirector", "handle": 3}}),
            serde_json::json!({"set": {"family": "inet", "name": "hairpin4", "table": "l7_redirector",
                "type": ["ipv4_addr", "ipv4_addr"], "handle": 4,
                "elem": [{"concat": ["10.0.0.1", "10.0.0.1"]}]}}),
            serde_json::json!({"set": {"family": "inet", "name": "hairpin6", "table": "l7_redirector",
                "type": ["ipv6_addr", "ipv6_addr"], "handle": 5}}),
        ];
        for c in CHAINS {
            items.push(
                serde_json::json!({"chain": {"family": "inet", "table": "l7_redirector",
                "name": c.name, "handle": 1, "type": c.kind, "hook": c.hook, "prio": c.prio,
                "policy": "accept"}}),
            );
        }
        for r in rules.iter().filter(|r| Some(r.role) != drop_role) {
            items.push(
                serde_json::json!({"rule": {"family": "inet", "table": "l7_redirector",
                "chain": r.chain, "handle": 6, "comment": r.comment(s), "expr": []}}),
            );
        }
        serde_json::json!({ "nftables": items }).to_string()
    }

    const RULES4: &str = r#"[{"priority":0,"src":"all","table":"255"},{"priority":90,"src":"all","fwmark":"0x4","fwmask":"0x4","table":"15001","protocol":"157"},{"priority":32766,"src":"all","table":"254"}]"#;
    const RULES6: &str = r#"[{"priority":0,"src":"all","table":"255"},{"priority":32766,"src":"all","table":"254"}]"#;
    const ROUTES4: &str = r#"[{"type":"local","dst":"default","table":"15001","dev":"lo","protocol":"157","scope":"host","flags":[]}]"#;
    const ROUTES6: &str = r#"[{"type":"2","dst":"default","table":"15001","dev":"lo","protocol":"157","metric":1024,"flags":[],"pref":"medium"}]"#;

    fn observed(nft: Option<&str>, rules6: &str) -> Observed {
        let mut rules = parse_ip_rules(Family::V4, RULES4).unwrap();
        rules.extend(parse_ip_rules(Family::V6, rules6).unwrap());
        let mut routes = parse_ip_routes(Family::V4, ROUTES4).unwrap();
        routes.extend(parse_ip_routes(Family::V6, ROUTES6).unwrap());
        Observed {
            nft: nft.map(|j| parse_nft_table(j).unwrap()),
            rules,
            routes,
            families: Family::ALL.to_vec(),
        }
    }

    #[test]
    fn a_complete_return_path_misses_nothing() {
        let s = Settings::default();
        let json = table_json(&s, None);
        let nft = parse_nft_table(&json).unwrap();
        assert_eq!(nft.settings(), Some(s));
        assert_eq!(nft.hairpin, ["10.0.0.1".parse::<IpAddr>().unwrap()].into());
        let rules6 = RULES4; // the same rule in IPv6
        assert_eq!(missing(&s, &observed(Some(&json), rules6)), vec![]);
    }

    #[test]
    fn each_missing_piece_is_named() {
        let s = Settings::default();
        let json = table_json(&s, Some("reply-forwarded"));
        assert_eq!(
            missing(&s, &observed(Some(&json), RULES6)),
            vec![
                Missing::Rule {
                    chain: "pre",
                    role: "reply-forwarded"
                },
                Missing::IpRule(Family::V6),
            ]
        );
        let none = missing(&s, &observed(None, RULES6));
        assert_eq!(none, vec![Missing::Table, Missing::IpRule(Family::V6)]);
        assert_eq!(none[0].to_string(), "nft table inet l7_redirector");
        assert_eq!(none[1].to_string(), "IPv6 fwmark ip rule");
    }

    #[test]
    fn a_table_made_with_other_settings_counts_as_missing_rules() {
        let old = Settings::default();
        let new = Settings { fwmark: 0x2, ..old };
        let json = table_json(&old, None);
        let got = missing(&new, &observed(Some(&json), RULES4));
        assert_eq!(got.len(), 5 + 2, "every rule and both ip rules: {got:?}");
        // The old ip rule is ours and unwanted now: stale, to be deleted.
        let obs = observed(Some(&json), RULES4);
        let (rules, routes) = stale(&new, &obs);
        assert_eq!(rules.len(), 2);
        assert!(routes.is_empty(), "same table");
        let moved = Settings {
            table: 15002,
            ..old
        };
        assert_eq!(stale(&moved, &obs).1.len(), 2);
    }

    #[test]
    fn foreign_rules_are_never_stale() {
        let s = Settings {
            priority: 91,
            ..Settings::default()
        };
        let foreign =
            r#"[{"priority":90,"src":"all","fwmark":"0x4","fwmask":"0x4","table":"15001"}]"#;
        let obs = Observed {
            rules: parse_ip_rules(Family::V4, foreign).unwrap(),
            families: vec![Family::V4],
            ..Observed::default()
        };
        assert!(stale(&s, &obs).0.is_empty());
        assert!(!obs.rules[0].is_ours());
        assert_eq!(obs.rules[0].fwmark, Some(4));
    }

    #[test]
    fn the_report_says_client_with_its_settings_or_node() {
        let s = Settings::default();
        let json = table_json(&s, None);
        let full = report(&observed(Some(&json), RULES4));
        assert_eq!(
            full.upstream_source,
            crate::return_path::UpstreamSource::Client
        );
        assert_eq!(full.settings, Some(s));
        assert!(full.complete, "{full:?}");
        assert_eq!(
            full.ip_rules,
            vec![
                "IPv4 priority 90 fwmark 0x4/0x4 lookup 15001",
                "IPv6 priority 90 fwmark 0x4/0x4 lookup 15001"
            ]
        );
        let flushed = report(&observed(None, RULES6));
        assert_eq!(
            flushed.upstream_source,
            crate::return_path::UpstreamSource::Client
        );
        assert!(!flushed.complete);
        assert_eq!(flushed.missing, vec!["nft table inet l7_redirector"]);
        let nothing = report(&Observed {
            families: Family::ALL.to_vec(),
            ..Observed::default()
        });
        assert_eq!(
            nothing.upstream_source,
            crate::return_path::UpstreamSource::Node
        );
        assert!(!nothing.complete && nothing.missing.is_empty());
    }

    #[test]
    fn a_chain_on_another_hook_is_missing() {
        let s = Settings::default();
        let json = table_json(&s, None).replace("\"prerouting\"", "\"input\"");
        assert_eq!(
            missing(&s, &observed(Some(&json), RULES4)),
            vec![Missing::Chain("pre")]
        );
    }

    #[test]
    fn bad_output_is_an_error_and_empty_output_an_empty_list() {
        assert!(parse_nft_table("{}").is_err());
        assert!(parse_ip_rules(Family::V4, "not json").is_err());
        assert_eq!(parse_ip_routes(Family::V6, "\n").unwrap(), vec![]);
        let unmasked =
            parse_ip_rules(Family::V4, r#"[{"priority":5,"fwmark":"0x4","table":"9"}]"#).unwrap();
        assert_eq!(unmasked[0].fwmask, u32::MAX);
    }

    #[test]
    fn the_generated_script_and_the_comments_agree() {
        let s = Settings::default();
        let script = nft_script(&s, &BTreeSet::new());
        for rule in nft_rules(&s) {
            assert!(script.contains(&format!("comment \"{}\"", rule.comment(&s))));
            assert!(is_our_comment(&rule.comment(&s)));
        }
    }
}
