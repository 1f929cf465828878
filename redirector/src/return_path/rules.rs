//! The return path's desired state, from its settings alone (pure): the nft script of our own
//! table, the hairpin set updates, and the `ip rule` / `ip route` commands.

use std::{collections::BTreeSet, fmt, fmt::Write as _, net::IpAddr};

use serde::Serialize;

/// The family of our nft table: one table holds both IPv4 and IPv6 (and its nat chain, which
/// `inet` tables support since Linux 5.2, below the daemon's 5.10 floor).
pub const NFT_FAMILY: &str = "inet";
/// Our nft table's name; nothing else of the node's ruleset is ever touched.
pub const NFT_TABLE: &str = "l7_redirector";
/// The nft set of `(endpoint . endpoint)` IPv4 pairs that are masqueraded (pod-to-self).
pub const HAIRPIN4: &str = "hairpin4";
/// The same for IPv6.
pub const HAIRPIN6: &str = "hairpin6";
/// The routing protocol number our `ip rule`s and routes carry (`protocol 157`), so that
/// `detach` and a daemon with other settings find exactly ours and nothing else. Not one of
/// iproute2's `rt_protos` (0-18, 42, 99, 186-192).
pub const RT_PROTO: u8 = 157;
/// Prefix of every rule comment in our table; the comment also carries the settings.
pub const COMMENT_PREFIX: &str = "l7r";

/// The SO_MARK bit Envoy puts on its upstream sockets (`deploy/envoy.yaml`; it is also the
/// `--exclude-mark` that keeps them from being steered).
pub const DEFAULT_UPSTREAM_MARK: u32 = 0x1000;
/// The packet mark bit of replies routed to the proxy. Outside kube-proxy's 0x4000/0x8000,
/// Calico's 0xffff0000, Cilium's 0x0f00 and 0xf000 and the low bits Istio (0x111, 0x222,
/// 0x539) and the AWS VPC CNI (0x80) use.
pub const DEFAULT_RETURN_MARK: u32 = 0x4;
/// The conntrack mark bit of the proxy's upstream connections (same reasoning).
pub const DEFAULT_RETURN_CT_MARK: u32 = 0x4;
/// The routing table of `local default dev lo`.
pub const DEFAULT_RETURN_TABLE: u32 = 15001;
/// The `ip rule` priority: after `0: local`, before CNI rules that route by destination and
/// the main table (32766).
pub const DEFAULT_RETURN_RULE_PRIORITY: u32 = 90;

/// Where the proxy's upstream connections take their source address from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamSource {
    /// The node's address (no return path needed).
    #[default]
    Node,
    /// The client's own address: needs the return path of this module.
    Client,
}

/// The return path's settings (flags of `redirector run`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Settings {
    /// The SO_MARK bits of the proxy's upstream sockets (`--upstream-mark`).
    pub upstream_mark: u32,
    /// The conntrack mark bit given to their connections (`--return-ct-mark`).
    pub ct_mark: u32,
    /// The packet mark bit of their replies, which the `ip rule` matches (`--return-mark`).
    pub fwmark: u32,
    /// The routing table holding `local default dev lo` (`--return-table`).
    pub table: u32,
    /// The `ip rule` priority (`--return-rule-priority`).
    pub priority: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            upstream_mark: DEFAULT_UPSTREAM_MARK,
            ct_mark: DEFAULT_RETURN_CT_MARK,
            fwmark: DEFAULT_RETURN_MARK,
            table: DEFAULT_RETURN_TABLE,
            priority: DEFAULT_RETURN_RULE_PRIORITY,
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A mark that must be one bit is not.
    #[error("--{flag} {value:#x} must be exactly one bit (e.g. 0x4)")]
    NotOneBit {
        /// The flag.
        flag: &'static str,
        /// Its value.
        value: u32,
    },
    /// No upstream mark: every connection of the node would count as the proxy's.
    #[error("--upstream-mark must not be 0")]
    NoUpstreamMark,
    /// The return mark is part of the upstream mark.
    #[error(
        "--return-mark {fwmark:#x} overlaps --upstream-mark {upstream:#x}: the proxy's own SYNs \
         would be routed into lo"
    )]
    MarkOverlap {
        /// `--return-mark`.
        fwmark: u32,
        /// `--upstream-mark`.
        upstream: u32,
    },
    /// A table the kernel reserves.
    #[error("--return-table {0} is reserved (0 unspec, 253 default, 254 main, 255 local)")]
    ReservedTable(u32),
    /// A priority not before the main table.
    #[error("--return-rule-priority {0} must be 1..=32765, before the main table's rule (32766)")]
    Priority(u32),
}

impl Settings {
    /// Checks the settings can work.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.upstream_mark == 0 {
            return Err(SettingsError::NoUpstreamMark);
        }
        for (flag, value) in [
            ("return-mark", self.fwmark),
            ("return-ct-mark", self.ct_mark),
        ] {
            if value.count_ones() != 1 {
                return Err(SettingsError::NotOneBit { flag, value });
            }
        }
        if self.fwmark & self.upstream_mark != 0 {
            return Err(SettingsError::MarkOverlap {
                fwmark: self.fwmark,
                upstream: self.upstream_mark,
            });
        }
        if matches!(self.table, 0 | 253..=255) {
            return Err(SettingsError::ReservedTable(self.table));
        }
        if !(1..=32765).contains(&self.priority) {
            return Err(SettingsError::Priority(self.priority));
        }
        Ok(())
    }

    /// The settings as the words every rule comment carries, so `status` and `detach` can
    /// read them back from the table: `upstream=0x1000 ct=0x4 mark=0x4 table=15001
    /// priority=90`.
    pub fn tag(&self) -> String {
        format!(
            "upstream={:#x} ct={:#x} mark={:#x} table={} priority={}",
            self.upstream_mark, self.ct_mark, self.fwmark, self.table, self.priority
        )
    }

    /// Reads [`Settings::tag`] back from a rule comment (`l7r <role> <tag>`).
    pub fn from_comment(comment: &str) -> Option<Self> {
        let mut words = comment.split_whitespace();
        if words.next()? != COMMENT_PREFIX {
            return None;
        }
        let _role = words.next()?;
        let mut s = Self::default();
        let mut seen = 0;
        for word in words {
            let (key, value) = word.split_once('=')?;
            let value = parse_u32(value).ok()?;
            match key {
                "upstream" => s.upstream_mark = value,
                "ct" => s.ct_mark = value,
                "mark" => s.fwmark = value,
                "table" => s.table = value,
                "priority" => s.priority = value,
                _ => return None,
            }
            seen += 1;
        }
        (seen == 5).then_some(s)
    }
}

impl fmt::Display for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.tag())
    }
}

/// Parses `0x1000` or `4096`: the mark and number flags.
pub fn parse_u32(s: &str) -> Result<u32, String> {
    let parsed = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u32::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|e| format!("{s:?} is not a number (decimal or 0x hex): {e}"))
}

/// An address family of `ip rule` and `ip route`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Family {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Family {
    /// Both, IPv4 first.
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    /// `ip`'s family flag.
    pub fn flag(self) -> &'static str {
        match self {
            Self::V4 => "-4",
            Self::V6 => "-6",
        }
    }

    /// The default route's prefix.
    pub fn default_prefix(self) -> &'static str {
        match self {
            Self::V4 => "0.0.0.0/0",
            Self::V6 => "::/0",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        })
    }
}

/// The chains of our table: name, nft type, hook, and the numeric priority `nft -j` reports.
pub const CHAINS: [Chain; 3] = [
    Chain {
        name: "out",
        kind: "route",
        hook: "output",
        priority: "mangle",
        prio: -150,
    },
    Chain {
        name: "pre",
        kind: "filter",
        hook: "prerouting",
        priority: "mangle",
        prio: -150,
    },
    Chain {
        name: "post",
        kind: "nat",
        hook: "postrouting",
        priority: "srcnat",
        prio: 100,
    },
];

/// One base chain of our table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: &'static str,
    /// `filter`, `route` or `nat`.
    pub kind: &'static str,
    /// The netfilter hook.
    pub hook: &'static str,
    /// The priority as written.
    pub priority: &'static str,
    /// The priority as read back.
    pub prio: i32,
}

/// One rule of our table; its comment names its role and carries the settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NftRule {
    /// The chain it is in.
    pub chain: &'static str,
    /// What it is for, one word.
    pub role: &'static str,
    /// The statement, without the comment.
    pub body: String,
}

impl NftRule {
    /// Its comment: `l7r <role> <settings>`.
    pub fn comment(&self, settings: &Settings) -> String {
        format!("{COMMENT_PREFIX} {} {}", self.role, settings.tag())
    }
}

/// The rules of our table, in order within each chain.
pub fn nft_rules(s: &Settings) -> Vec<NftRule> {
    let up = s.upstream_mark;
    let ct = s.ct_mark;
    let fw = s.fwmark;
    // Only the reply direction gets the route-to-lo mark: in `out` the proxy's own SYNs (the
    // original direction) carry the same ct mark and must leave normally.
    let reply = format!(
        "ct direction reply ct mark & {ct:#x} == {ct:#x} meta mark set meta mark | {fw:#x}"
    );
    vec![
        NftRule {
            chain: "out",
            role: "tag-upstream",
            body: format!("meta mark & {up:#x} == {up:#x} ct mark set ct mark | {ct:#x}"),
        },
        // Replies produced on this node (host-networked backends) appear in OUTPUT; the
        // `route` chain type re-routes them after the mark changes.
        NftRule {
            chain: "out",
            role: "reply-local",
            body: reply.clone(),
        },
        // Replies from pods on this node and from other nodes.
        NftRule {
            chain: "pre",
            role: "reply-forwarded",
            body: reply,
        },
        // A client whose chosen backend is itself would receive a SYN from its own address,
        // a martian: masquerade it, as kube-proxy's hairpin does.
        NftRule {
            chain: "post",
            role: "hairpin4",
            body: format!(
                "meta mark & {up:#x} == {up:#x} ip saddr . ip daddr @{HAIRPIN4} masquerade"
            ),
        },
        NftRule {
            chain: "post",
            role: "hairpin6",
            body: format!(
                "meta mark & {up:#x} == {up:#x} ip6 saddr . ip6 daddr @{HAIRPIN6} masquerade"
            ),
        },
    ]
}

/// The addresses of a hairpin set, split by family (IPv4-mapped IPv6 counts as IPv4).
fn split(addrs: &BTreeSet<IpAddr>) -> (Vec<IpAddr>, Vec<IpAddr>) {
    let canonical: BTreeSet<IpAddr> = addrs.iter().map(IpAddr::to_canonical).collect();
    canonical.into_iter().partition(IpAddr::is_ipv4)
}

fn pairs(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(|a| format!("{a} . {a}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The whole table as one `nft -f` transaction that replaces any previous version of it
/// atomically (`table` then `delete table` then the definition: the first line makes the
/// delete valid when there is none), with `hairpin` as the hairpin sets' elements.
pub fn nft_script(s: &Settings, hairpin: &BTreeSet<IpAddr>) -> String {
    let (v4, v6) = split(hairpin);
    let mut out = String::new();
    let _ = writeln!(out, "table {NFT_FAMILY} {NFT_TABLE}");
    let _ = writeln!(out, "delete table {NFT_FAMILY} {NFT_TABLE}");
    let _ = writeln!(out, "table {NFT_FAMILY} {NFT_TABLE} {{");
    for (name, kind, elems) in [(HAIRPIN4, "ipv4_addr", &v4), (HAIRPIN6, "ipv6_addr", &v6)] {
        let _ = writeln!(out, "\tset {name} {{");
        let _ = writeln!(out, "\t\ttype {kind} . {kind}");
        if !elems.is_empty() {
            let _ = writeln!(out, "\t\telements = {{ {} }}", pairs(elems));
        }
        let _ = writeln!(out, "\t}}");
    }
    let rules = nft_rules(s);
    for chain in CHAINS {
        let _ = writeln!(out, "\tchain {} {{", chain.name);
        let _ = writeln!(
            out,
            "\t\ttype {} hook {} priority {}; policy accept;",
            chain.kind, chain.hook, chain.priority
        );
        for rule in rules.iter().filter(|r| r.chain == chain.name) {
            let _ = writeln!(out, "\t\t{} comment \"{}\"", rule.body, rule.comment(s));
        }
        let _ = writeln!(out, "\t}}");
    }
    let _ = writeln!(out, "}}");
    out
}

/// One `nft -f` transaction adding `add` to and deleting `remove` from the hairpin sets
/// (`None` when there is nothing to do). A delete of an element that is not there fails the
/// whole transaction, so callers diff against what they read back.
pub fn hairpin_update_script(add: &BTreeSet<IpAddr>, remove: &BTreeSet<IpAddr>) -> Option<String> {
    let mut out = String::new();
    for (verb, addrs) in [("delete", remove), ("add", add)] {
        let (v4, v6) = split(addrs);
        for (set, elems) in [(HAIRPIN4, v4), (HAIRPIN6, v6)] {
            if !elems.is_empty() {
                let _ = writeln!(
                    out,
                    "{verb} element {NFT_FAMILY} {NFT_TABLE} {set} {{ {} }}",
                    pairs(&elems)
                );
            }
        }
    }
    (!out.is_empty()).then_some(out)
}

/// `ip <family> rule <verb> ...` arguments of our rule (`verb`: `add` or `del`).
pub fn ip_rule_args(s: &Settings, family: Family, verb: &str) -> Vec<String> {
    rule_args(family, verb, s.priority, s.fwmark, s.table)
}

/// `ip <family> rule <verb>` arguments of a rule given by its parts (to delete stale ones).
pub fn rule_args(
    family: Family,
    verb: &str,
    priority: u32,
    fwmark: u32,
    table: u32,
) -> Vec<String> {
    [
        family.flag(),
        "rule",
        verb,
        "priority",
        &priority.to_string(),
        "fwmark",
        &format!("{fwmark:#x}/{fwmark:#x}"),
        "lookup",
        &table.to_string(),
        "protocol",
        &RT_PROTO.to_string(),
    ]
    .map(str::to_string)
    .to_vec()
}

/// `ip <family> route <verb> local <default> dev lo table <table> proto 157` arguments
/// (`verb`: `replace`, which is idempotent, or `del`).
pub fn ip_route_args(family: Family, verb: &str, table: u32) -> Vec<String> {
    [
        family.flag(),
        "route",
        verb,
        "local",
        family.default_prefix(),
        "dev",
        "lo",
        "table",
        &table.to_string(),
        "proto",
        &RT_PROTO.to_string(),
    ]
    .map(str::to_string)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> BTreeSet<IpAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn the_defaults_avoid_the_bits_other_datapaths_use() {
        let s = Settings::default();
        assert_eq!(s.validate(), Ok(()));
        // kube-proxy, Calico, Cilium's magic and IPsec nibbles, Istio, AWS VPC CNI.
        for taken in [
            0x4000,
            0x8000,
            0xffff_0000,
            0x0f00,
            0xf000,
            0x111,
            0x222,
            0x539,
            0x80,
        ] {
            assert_eq!(s.fwmark & taken, 0, "return mark overlaps {taken:#x}");
            assert_eq!(s.ct_mark & taken, 0, "ct mark overlaps {taken:#x}");
        }
        assert_eq!(
            s.upstream_mark, 0x1000,
            "Envoy's SO_MARK in deploy/envoy.yaml"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let ok = Settings::default();
        let bad = |f: fn(&mut Settings)| {
            let mut s = ok;
            f(&mut s);
            s.validate().unwrap_err()
        };
        assert_eq!(
            bad(|s| s.fwmark = 0x6),
            SettingsError::NotOneBit {
                flag: "return-mark",
                value: 0x6
            }
        );
        assert_eq!(
            bad(|s| s.ct_mark = 0),
            SettingsError::NotOneBit {
                flag: "return-ct-mark",
                value: 0
            }
        );
        assert!(matches!(
            bad(|s| s.fwmark = 0x1000),
            SettingsError::MarkOverlap { .. }
        ));
        assert_eq!(bad(|s| s.upstream_mark = 0), SettingsError::NoUpstreamMark);
        for t in [0, 253, 254, 255] {
            let mut s = ok;
            s.table = t;
            assert_eq!(s.validate(), Err(SettingsError::ReservedTable(t)));
        }
        assert_eq!(bad(|s| s.priority = 0), SettingsError::Priority(0));
        assert_eq!(bad(|s| s.priority = 32766), SettingsError::Priority(32766));
        let mut s = ok;
        s.priority = 32765;
        s.table = 252;
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn comments_carry_the_settings_back() {
        let s = Settings {
            upstream_mark: 0x20000,
            ct_mark: 0x8,
            fwmark: 0x2,
            table: 777,
            priority: 42,
        };
        let rule = &nft_rules(&s)[0];
        let comment = rule.comment(&s);
        assert_eq!(
            comment,
            "l7r tag-upstream upstream=0x20000 ct=0x8 mark=0x2 table=777 priority=42"
        );
        assert_eq!(Settings::from_comment(&comment), Some(s));
        assert_eq!(
            Settings::from_comment("l7r tag-upstream upstream=0x1"),
            None
        );
        assert_eq!(Settings::from_comment("kube-proxy something"), None);
    }

    #[test]
    fn the_script_replaces_our_table_only_and_marks_replies_only() {
        let s = Settings::default();
        let script = nft_script(&s, &addrs(&["10.1.0.7", "::ffff:10.1.0.8", "fd00::5"]));
        let lines: Vec<&str> = script.lines().map(str::trim).collect();
        assert_eq!(lines[0], "table inet l7_redirector");
        assert_eq!(lines[1], "delete table inet l7_redirector");
        // Every table the script names is ours.
        for line in &lines {
            if let Some(rest) = line
                .strip_prefix("table ")
                .or(line.strip_prefix("delete table "))
            {
                assert!(rest.starts_with("inet l7_redirector"), "{line}");
            }
            assert!(!line.contains("flush ruleset"), "{line}");
        }
        assert!(lines.contains(&"elements = { 10.1.0.7 . 10.1.0.7, 10.1.0.8 . 10.1.0.8 }"));
        assert!(lines.contains(&"elements = { fd00::5 . fd00::5 }"));
        assert!(lines.contains(&"type route hook output priority mangle; policy accept;"));
        assert!(lines.contains(&"type filter hook prerouting priority mangle; policy accept;"));
        assert!(lines.contains(&"type nat hook postrouting priority srcnat; policy accept;"));
        // Whatever sets the route-to-lo mark does so for the reply direction only.
        let setting_fwmark: Vec<&&str> = lines
            .iter()
            .filter(|l| l.contains("meta mark set"))
            .collect();
        assert_eq!(setting_fwmark.len(), 2, "{script}");
        for l in setting_fwmark {
            assert!(
                l.starts_with(
                    "ct direction reply ct mark & 0x4 == 0x4 meta mark set meta mark | 0x4"
                ),
                "{l}"
            );
        }
        assert!(lines.iter().any(|l| l.starts_with(
            "meta mark & 0x1000 == 0x1000 ct mark set ct mark | 0x4 comment \"l7r tag-upstream "
        )));
        assert!(lines.iter().any(|l| {
            l.starts_with("meta mark & 0x1000 == 0x1000 ip saddr . ip daddr @hairpin4 masquerade")
        }));
        // Braces balance: the transaction parses as a whole or not at all.
        assert_eq!(script.matches('{').count(), script.matches('}').count());
    }

    #[test]
    fn an_empty_hairpin_set_has_no_elements_line() {
        let script = nft_script(&Settings::default(), &BTreeSet::new());
        assert!(!script.contains("elements"), "{script}");
        assert!(script.contains("set hairpin4 {\n\t\ttype ipv4_addr . ipv4_addr\n\t}"));
    }

    #[test]
    fn hairpin_updates_delete_then_add_per_family() {
        assert_eq!(
            hairpin_update_script(&BTreeSet::new(), &BTreeSet::new()),
            None
        );
        let script =
            hairpin_update_script(&addrs(&["10.0.0.1", "fd00::1"]), &addrs(&["10.0.0.2"])).unwrap();
        assert_eq!(
            script,
            "delete element inet l7_redirector hairpin4 { 10.0.0.2 . 10.0.0.2 }\n\
             add element inet l7_redirector hairpin4 { 10.0.0.1 . 10.0.0.1 }\n\
             add element inet l7_redirector hairpin6 { fd00::1 . fd00::1 }\n"
        );
    }

    #[test]
    fn ip_commands_carry_our_protocol() {
        let s = Settings::default();
        assert_eq!(
            ip_rule_args(&s, Family::V6, "add").join(" "),
            "-6 rule add priority 90 fwmark 0x4/0x4 lookup 15001 protocol 157"
        );
        assert_eq!(
            ip_route_args(Family::V4, "replace", 15001).join(" "),
            "-4 route replace local 0.0.0.0/0 dev lo table 15001 proto 157"
        );
        assert_eq!(
            ip_route_args(Family::V6, "del", 7).join(" "),
            "-6 route del local ::/0 dev lo table 7 proto 157"
        );
    }

    #[test]
    fn numbers_parse_in_hex_or_decimal() {
        assert_eq!(parse_u32("0x1000"), Ok(0x1000));
        assert_eq!(parse_u32("4096"), Ok(4096));
        assert!(parse_u32("0xg").is_err());
        assert!(parse_u32("").is_err());
    }
}
