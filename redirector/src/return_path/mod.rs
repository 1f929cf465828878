//! The return path of `--upstream-source client`: when the proxy dials a backend from the
//! client pod's address, the backend's replies are addressed to the client pod, and the node
//! would route them into the pod (which answers with a reset). The return path brings them to
//! the proxy instead:
//!
//! - an nft table of our own (`inet l7_redirector`, never the CNI's or kube-proxy's chains)
//!   gives connections whose packets carry the proxy's upstream SO_MARK a conntrack mark bit,
//!   and gives the *reply-direction* packets of those connections a packet mark bit, in
//!   prerouting (pods and other nodes) and output (host-networked backends on this node);
//! - `ip rule fwmark <bit>/<bit> lookup <table>` (IPv4 and IPv6) with `local default dev lo`
//!   in that table delivers them locally, where the proxy's socket takes them;
//! - a masquerade for a client whose chosen backend is itself (pod-to-self hairpin), from
//!   sets of the selected Services' ready endpoints.
//!
//! [`rules`] computes all of it from the settings (pure), [`check`] reads it back and says
//! what is missing (pure), [`apply`] does the I/O. [`ReturnPath`] is what the daemon holds: it
//! installs at start, repairs on every check, and keeps the hairpin sets.

pub mod apply;
pub mod check;
pub mod rules;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Mutex,
};

use anyhow::{Result, bail};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use tracing::{info, warn};

pub use check::Missing;
pub use rules::{Settings, UpstreamSource};

use crate::k8s::service::{self, ServiceRef, Verdict};

/// The return path the daemon owns: its settings and the hairpin addresses it last wanted.
#[derive(Debug)]
pub struct ReturnPath {
    settings: Settings,
    hairpin: Mutex<BTreeSet<IpAddr>>,
}

/// What [`ReturnPath::ensure`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ensured {
    /// Everything was there.
    Present,
    /// These were missing and are back.
    Repaired(Vec<Missing>),
}

impl ReturnPath {
    /// Installs the return path (with empty hairpin sets) and returns its owner.
    pub fn install(settings: Settings) -> Result<Self> {
        settings.validate()?;
        apply::install(&settings, &BTreeSet::new())?;
        info!(%settings, "return path installed (upstream source: client)");
        Ok(Self {
            settings,
            hairpin: Mutex::new(BTreeSet::new()),
        })
    }

    /// Its settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Checks that everything is there and re-creates what is not (someone flushed the
    /// ruleset, a CNI rewrote the rules). An error means it is still missing: the proxy must
    /// be reported not ready, or every proxied connection would hang.
    pub fn ensure(&self) -> Result<Ensured> {
        let observed = apply::observe()?;
        let missing = check::missing(&self.settings, &observed);
        let hairpin = self
            .hairpin
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if missing.is_empty() {
            // A hairpin update that failed earlier is retried here.
            if observed.nft.as_ref().map(|t| &t.hairpin) != Some(&hairpin) {
                apply::sync_hairpin(&hairpin)?;
            }
            return Ok(Ensured::Present);
        }
        let names: Vec<String> = missing.iter().map(ToString::to_string).collect();
        warn!(missing = %names.join(", "), "the return path is incomplete; re-creating it");
        apply::install(&self.settings, &hairpin)?;
        let still = apply::check(&self.settings)?;
        if !still.is_empty() {
            let names: Vec<String> = still.iter().map(ToString::to_string).collect();
            bail!("still missing after re-creating it: {}", names.join(", "));
        }
        info!("return path re-created");
        Ok(Ensured::Repaired(missing))
    }

    /// Makes the hairpin sets hold exactly `want`. It is remembered first, so a failed update
    /// is retried by the next [`ReturnPath::ensure`], and a repair re-creates the sets with it.
    pub fn set_hairpin(&self, want: BTreeSet<IpAddr>) -> Result<()> {
        let want: BTreeSet<IpAddr> = want.iter().map(IpAddr::to_canonical).collect();
        let mut current = self.hairpin.lock().unwrap_or_else(|e| e.into_inner());
        if *current == want {
            return Ok(());
        }
        *current = want.clone();
        drop(current);
        apply::sync_hairpin(&want)
    }
}

/// The ready endpoint addresses of the Services `annotation` selects: the clients that may
/// be sent to themselves through the proxy, whose SYN must be masqueraded.
pub fn hairpin_endpoints<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    annotation: &str,
) -> BTreeSet<IpAddr> {
    let selected: BTreeSet<ServiceRef> = services
        .into_iter()
        .filter(|svc| {
            service::verdict(svc, annotation) == Verdict::Selected
                && !service::is_external_name(svc)
        })
        .map(ServiceRef::of)
        .collect();
    let mut by_owner: BTreeMap<ServiceRef, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        if let Some(owner) = ServiceRef::owner_of(slice)
            && selected.contains(&owner)
        {
            by_owner.entry(owner).or_default().push(slice);
        }
    }
    by_owner
        .values()
        .flatten()
        .flat_map(|slice| service::slice_endpoints(slice))
        .filter(|e| e.ready)
        .map(|e| e.ip.to_canonical())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::k8s::service::DEFAULT_ANNOTATION;
    use serde_json::json;

    fn svc(name: &str, selected: bool) -> Service {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": name, "namespace": "shop",
                "annotations": { DEFAULT_ANNOTATION: selected.to_string() }},
            "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}}))
        .unwrap()
    }

    fn slice(service: &str, endpoints: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(
            json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("{service}-x"), "namespace": "shop",
                "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"port": 8080, "protocol": "TCP"}],
            "endpoints": endpoints}),
        )
        .unwrap()
    }

    #[test]
    fn hairpin_holds_the_ready_endpoints_of_selected_services_only() {
        let services = [svc("web", true), svc("db", false)];
        let slices = [
            slice(
                "web",
                json!([
                    {"addresses": ["10.1.0.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.1.0.6"], "conditions": {"ready": false}},
                    {"addresses": ["10.1.0.7"]}
                ]),
            ),
            slice("db", json!([{"addresses": ["10.1.0.9"]}])),
            slice("gone", json!([{"addresses": ["10.1.0.10"]}])),
        ];
        let got = hairpin_endpoints(&services, &slices, DEFAULT_ANNOTATION);
        let want: BTreeSet<IpAddr> = ["10.1.0.5", "10.1.0.7"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
    }

    /// `redirector run`'s return-path flags, parsed by the real command line.
    #[test]
    fn the_run_flags_choose_the_mode_and_the_settings() {
        use clap::Parser as _;

        use crate::cli::{Cli, Command};
        let options = |extra: &[&str]| {
            let argv = ["redirector", "run", "--proxy", "10.0.0.1:15001"]
                .iter()
                .chain(extra)
                .copied();
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Run(args)) => args.options().map_err(|e| e.to_string()),
                Ok(other) => Err(format!("{other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        assert_eq!(options(&[]).unwrap().return_path, None, "node by default");
        assert_eq!(
            options(&["--upstream-source", "client"])
                .unwrap()
                .return_path,
            Some(Settings::default())
        );
        let custom = options(&[
            "--upstream-source=client",
            "--upstream-mark=0x20000",
            "--return-mark=0x2",
            "--return-ct-mark=8",
            "--return-table=777",
            "--return-rule-priority=42",
        ])
        .unwrap();
        assert_eq!(
            custom.return_path,
            Some(Settings {
                upstream_mark: 0x20000,
                ct_mark: 8,
                fwmark: 2,
                table: 777,
                priority: 42,
            })
        );
        assert!(options(&["--upstream-source", "pod"]).is_err());
        assert!(options(&["--return-mark", "0xzz"]).is_err());
    }
}
