//! The return path's I/O: writing it with `nft -f` and `ip`, reading it back with `nft -j`
//! and `ip -j`, removing it.
//!
//! Why `nft -f` and the `ip` command rather than netlink from Rust:
//! - `nft -f` applies a whole script as one kernel transaction: our table is replaced (or
//!   created) atomically, so a re-install never leaves a moment with half the rules, and a
//!   script the kernel refuses changes nothing. The script is plain text a reviewer can read
//!   and an operator can paste (`nft list table inet l7_redirector` prints it back).
//! - `nft` is on every node that runs kube-proxy in nftables mode; the Rust nftables crates
//!   either shell out to `nft -j` themselves or build raw netlink expressions by hand
//!   (`rustables`, `nftnl`), which we would have to keep in step with the kernel's expression
//!   encodings, for a table written once at start and on repair. The cost: the daemon's image
//!   (FROM SCRATCH) must carry `nft` and `ip` for `--upstream-source client`; it does not yet,
//!   and [`remove`] and `status` treat missing tools as "nothing of ours here".
//! - `ip rule` / `ip route` are two idempotent commands per family; `ip -j` reads them back.
//!   The daemon runs them at start, on repair, and reads back once per check interval.
//!
//! Everything here acts on the network namespace of the calling thread (the tests run it
//! inside namespaces they create).

use std::{
    collections::BTreeSet,
    io::Write as _,
    net::IpAddr,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use super::{
    check::{self, Missing, Observed},
    rules::{
        self, Family, NFT_FAMILY, NFT_TABLE, RT_PROTO, Settings, hairpin_update_script, nft_script,
    },
};

/// Runs a tool, with `input` on its stdin; its stdout, or an error with its stderr.
fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let line = || format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {} (is it installed?)", line()))?;
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // Scripts are small (a few KiB plus the hairpin elements); the tool reads them whole
        // before it answers, so writing first cannot deadlock on the output pipes.
        stdin
            .write_all(input.as_bytes())
            .with_context(|| format!("cannot write to {}", line()))?;
    }
    let out = child
        .wait_with_output()
        .with_context(|| format!("cannot wait for {}", line()))?;
    if !out.status.success() {
        bail!(
            "{} failed ({}): {}",
            line(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[String]) -> Result<String> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("ip", &args, None)
}

/// The families this kernel has (IPv6 can be disabled at boot).
pub fn families() -> Vec<Family> {
    if Path::new("/proc/sys/net/ipv6").exists() {
        Family::ALL.to_vec()
    } else {
        vec![Family::V4]
    }
}

/// Reads our nft table, `None` when there is none.
pub fn read_table() -> Result<Option<check::NftState>> {
    let table = format!("{NFT_FAMILY} {NFT_TABLE}");
    // `nft list tables` first: "no such table" and a real failure look alike otherwise.
    let tables = run("nft", &["list", "tables", NFT_FAMILY], None)?;
    if !tables.lines().any(|l| l.trim() == format!("table {table}")) {
        return Ok(None);
    }
    let json = run("nft", &["-j", "list", "table", NFT_FAMILY, NFT_TABLE], None)?;
    Ok(Some(check::parse_nft_table(&json)?))
}

/// Reads everything of the return path on the node: our table, every `ip rule`, our routes.
pub fn observe() -> Result<Observed> {
    let families = families();
    let mut observed = Observed {
        nft: read_table()?,
        families: families.clone(),
        ..Observed::default()
    };
    let proto = RT_PROTO.to_string();
    for family in families {
        let f = family.flag();
        let json = run("ip", &["-j", "-N", f, "rule", "show"], None)?;
        observed.rules.extend(check::parse_ip_rules(family, &json)?);
        let json = run(
            "ip",
            &[
                "-j", "-N", f, "route", "show", "table", "all", "proto", &proto,
            ],
            None,
        )?;
        observed
            .routes
            .extend(check::parse_ip_routes(family, &json)?);
    }
    Ok(observed)
}

/// What of the return path `settings` wants is missing now.
pub fn check(settings: &Settings) -> Result<Vec<Missing>> {
    Ok(check::missing(settings, &observe()?))
}

/// Installs (or repairs) the whole return path: replaces our table atomically with
/// `hairpin` as its sets' elements, deletes our rules and routes of other settings, adds the
/// `ip rule`s that are missing and (re)places the routes. Idempotent.
pub fn install(settings: &Settings, hairpin: &BTreeSet<IpAddr>) -> Result<()> {
    settings.validate()?;
    run("nft", &["-f", "-"], Some(&nft_script(settings, hairpin)))
        .context("cannot write the return path's nft table")?;
    let observed = observe()?;
    let (stale_rules, stale_routes) = check::stale(settings, &observed);
    for r in stale_rules {
        if let (Some(fwmark), Ok(table)) = (r.fwmark, r.table.parse::<u32>()) {
            ip(&rules::rule_args(
                r.family, "del", r.priority, fwmark, table,
            ))
            .context("cannot delete a stale return-path ip rule")?;
        }
    }
    for r in stale_routes {
        if let Ok(table) = r.table.parse::<u32>() {
            ip(&rules::ip_route_args(r.family, "del", table))
                .context("cannot delete a stale return-path route")?;
        }
    }
    for &family in &observed.families {
        if !observed
            .rules
            .iter()
            .any(|r| r.family == family && r.is_wanted(settings))
        {
            ip(&rules::ip_rule_args(settings, family, "add"))
                .context("cannot add the return path's ip rule")?;
        }
        ip(&rules::ip_route_args(family, "replace", settings.table))
            .context("cannot add the return path's local route")?;
    }
    Ok(())
}

/// Makes the hairpin sets hold exactly `want`, by element (no other rule is rewritten).
/// Fails when our table is not there.
pub fn sync_hairpin(want: &BTreeSet<IpAddr>) -> Result<()> {
    let Some(table) = read_table()? else {
        bail!("the nft table inet {NFT_TABLE} is not there");
    };
    let want: BTreeSet<IpAddr> = want.iter().map(IpAddr::to_canonical).collect();
    let add: BTreeSet<IpAddr> = want.difference(&table.hairpin).copied().collect();
    let remove: BTreeSet<IpAddr> = table.hairpin.difference(&want).copied().collect();
    if let Some(script) = hairpin_update_script(&add, &remove) {
        run("nft", &["-f", "-"], Some(&script)).context("cannot update the hairpin sets")?;
    }
    Ok(())
}

/// Adds `addrs` to the hairpin sets (already there is fine).
pub fn add_hairpin(addrs: &BTreeSet<IpAddr>) -> Result<()> {
    if let Some(script) = hairpin_update_script(addrs, &BTreeSet::new()) {
        run("nft", &["-f", "-"], Some(&script)).context("cannot add to the hairpin sets")?;
    }
    Ok(())
}

/// Removes `addrs` from the hairpin sets (absent ones are skipped).
pub fn remove_hairpin(addrs: &BTreeSet<IpAddr>) -> Result<()> {
    let Some(table) = read_table()? else {
        return Ok(());
    };
    let present: BTreeSet<IpAddr> = addrs
        .iter()
        .map(IpAddr::to_canonical)
        .filter(|a| table.hairpin.contains(a))
        .collect();
    if let Some(script) = hairpin_update_script(&BTreeSet::new(), &present) {
        run("nft", &["-f", "-"], Some(&script)).context("cannot delete from the hairpin sets")?;
    }
    Ok(())
}

/// Whether `program` is on `PATH`. The daemon's image may lack `nft` and `ip` (a node in
/// `--upstream-source node` mode needs neither), and then nothing of ours can be on the node.
pub fn installed(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .any(|dir| std::fs::metadata(dir.join(program)).is_ok_and(|m| m.is_file()))
    })
}

/// [`observe`] for `status`: `None` when neither `nft` nor `ip` is installed.
pub fn observe_if_installed() -> Result<Option<Observed>> {
    if !installed("nft") && !installed("ip") {
        return Ok(None);
    }
    observe().map(Some)
}

/// Removes everything of ours, whatever settings made it: our table, every `ip rule` and
/// route carrying our protocol number. Returns what it removed, one line each; nothing else
/// is touched. A missing `nft` or `ip` means nothing of that kind can be ours.
pub fn remove() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    if installed("nft") && read_table()?.is_some() {
        run("nft", &["delete", "table", NFT_FAMILY, NFT_TABLE], None)
            .context("cannot delete the return path's nft table")?;
        removed.push(format!("nft table {NFT_FAMILY} {NFT_TABLE}"));
    }
    if !installed("ip") {
        return Ok(removed);
    }
    let proto = RT_PROTO.to_string();
    for family in families() {
        let f = family.flag();
        let json = run("ip", &["-j", "-N", f, "rule", "show"], None)?;
        for r in check::parse_ip_rules(family, &json)?
            .iter()
            .filter(|r| r.is_ours())
        {
            if let (Some(fwmark), Ok(table)) = (r.fwmark, r.table.parse::<u32>()) {
                ip(&rules::rule_args(family, "del", r.priority, fwmark, table))
                    .context("cannot delete the return path's ip rule")?;
                removed.push(format!(
                    "{family} ip rule priority {} fwmark {fwmark:#x}/{fwmark:#x} lookup {table}",
                    r.priority
                ));
            }
        }
        let json = run(
            "ip",
            &[
                "-j", "-N", f, "route", "show", "table", "all", "proto", &proto,
            ],
            None,
        )?;
        for r in check::parse_ip_routes(family, &json)? {
            if let Ok(table) = r.table.parse::<u32>() {
                ip(&rules::ip_route_args(family, "del", table))
                    .context("cannot delete the return path's route")?;
                removed.push(format!("{family} route local default dev lo table {table}"));
            }
        }
    }
    Ok(removed)
}
