//! Reconcile by diff: the desired destinations (from [`selection`](crate::selection)) against
//! what is in the pinned maps; only the difference is written. The daemon is the maps' only
//! writer, so after reading the pins once at start it keeps its own copy of what is there.
//!
//! The maps are behind the [`SelectionMaps`] port, with an error type of the implementation's
//! own: the real one is the dataplane, the tests use [`MemoryMaps`]. A full map is not an error
//! but an outcome: the entries that fit are written and [`Outcome::overflow`] counts the rest.
//!
//! Service ids are stable: a Service keeps the id the pinned `service_names` map gives it, so a
//! restart rewrites nothing that is already right.

use std::{
    collections::{BTreeMap, BTreeSet},
    convert::Infallible,
};

use redirector_common::{ServiceKey, ServiceName, ServiceValue};

use crate::{k8s::service::ServiceRef, selection::Desired};

/// What the pinned maps hold: destinations and the names of their Services.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pinned {
    /// `services`: destination → Service id.
    pub services: BTreeMap<ServiceKey, ServiceValue>,
    /// `service_names`: Service id → namespace/name.
    pub names: BTreeMap<u32, ServiceName>,
}

/// The maps reconcile writes. The real one is the dataplane; tests use [`MemoryMaps`].
pub trait SelectionMaps {
    /// Why a map operation failed.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Everything currently in the maps.
    fn read(&self) -> Result<Pinned, Self::Error>;
    /// Writes destinations. On a full map it writes what fits and returns how many entries
    /// did not fit (0 when all did).
    fn insert_services(
        &mut self,
        entries: &[(ServiceKey, ServiceValue)],
    ) -> Result<usize, Self::Error>;
    /// Removes destinations; ones already absent are fine.
    fn remove_services(&mut self, keys: &[ServiceKey]) -> Result<(), Self::Error>;
    /// Writes Service names.
    fn set_service_names(&mut self, names: &[(u32, ServiceName)]) -> Result<(), Self::Error>;
    /// Removes Service names; ones already absent are fine.
    fn remove_service_names(&mut self, ids: &[u32]) -> Result<(), Self::Error>;
}

/// The writes that turn `current` into `desired`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Names of Services that gain an id.
    pub names_set: Vec<(u32, ServiceName)>,
    /// Destinations to add or to move to another Service.
    pub insert: Vec<(ServiceKey, ServiceValue)>,
    /// Destinations no longer selected.
    pub remove: Vec<ServiceKey>,
    /// Ids of Services no longer selected.
    pub names_remove: Vec<u32>,
}

impl Plan {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.names_set.is_empty()
            && self.insert.is_empty()
            && self.remove.is_empty()
            && self.names_remove.is_empty()
    }
}

/// Computes the writes. Pure.
pub fn plan(current: &Pinned, desired: &Desired) -> Plan {
    let mut ids: BTreeMap<ServiceRef, u32> = current
        .names
        .iter()
        .map(|(id, n)| {
            let (namespace, name) = n.parts();
            (ServiceRef { namespace, name }, *id)
        })
        .collect();
    let wanted: BTreeSet<&ServiceRef> = desired.services();

    let mut out = Plan::default();
    let mut used: BTreeSet<u32> = current.names.keys().copied().collect();
    let mut next_free = 1u32;
    for service in &wanted {
        if ids.contains_key(*service) {
            continue;
        }
        while used.contains(&next_free) {
            next_free += 1;
        }
        used.insert(next_free);
        ids.insert((*service).clone(), next_free);
        out.names_set.push((
            next_free,
            ServiceName::new(&service.namespace, &service.name),
        ));
    }

    for (key, service) in &desired.destinations {
        let value = ServiceValue {
            service_id: ids[service],
            flags: 0,
        };
        if current.services.get(key) != Some(&value) {
            out.insert.push((*key, value));
        }
    }
    out.remove = current
        .services
        .keys()
        .filter(|k| !desired.destinations.contains_key(k))
        .copied()
        .collect();
    out.names_remove = ids
        .iter()
        .filter(|(service, _)| !wanted.contains(service))
        .map(|(_, id)| *id)
        .collect();
    out
}

/// The writes that bring the `keys` destinations and the `services` names of `current` to
/// `desired`, when nothing else differs (the rest of `current` already equals `desired`).
/// `selected` tells whether a Service keeps any destination in `desired`. Pure; with the
/// same inputs it writes what [`plan`] would for those keys and Services. `None` when a
/// destination's Service has no id and is not among `services` (the premise does not hold):
/// the caller then plans in full.
pub fn plan_delta(
    current: &Pinned,
    desired: &Desired,
    keys: &BTreeSet<ServiceKey>,
    services: &BTreeSet<ServiceRef>,
    selected: impl Fn(&ServiceRef) -> bool,
) -> Option<Plan> {
    // The id a Service has, found as `plan` finds it (by the name's parts); the cheap
    // comparison of fixed-size names goes first.
    let id_of = |service: &ServiceRef| {
        let wanted = ServiceName::new(&service.namespace, &service.name);
        current
            .names
            .iter()
            .find(|(_, n)| {
                **n == wanted && n.parts() == (service.namespace.clone(), service.name.clone())
            })
            .map(|(id, _)| *id)
    };
    let mut ids: BTreeMap<&ServiceRef, Option<u32>> =
        services.iter().map(|s| (s, id_of(s))).collect();
    let mut out = Plan::default();
    let mut used: BTreeSet<u32> = current.names.keys().copied().collect();
    let mut next_free = 1u32;
    for (service, id) in ids.iter_mut() {
        if id.is_some() || !selected(service) {
            continue;
        }
        while used.contains(&next_free) {
            next_free += 1;
        }
        used.insert(next_free);
        *id = Some(next_free);
        out.names_set.push((
            next_free,
            ServiceName::new(&service.namespace, &service.name),
        ));
    }
    for key in keys {
        match desired.destinations.get(key) {
            Some(service) => {
                let id = match ids.get(&**service) {
                    Some(id) => *id,
                    None => id_of(service),
                };
                // A Service keeping a destination it did not keep before is in `services`,
                // so it has an id by now.
                let service_id = id?;
                let value = ServiceValue {
                    service_id,
                    flags: 0,
                };
                if current.services.get(key) != Some(&value) {
                    out.insert.push((*key, value));
                }
            }
            None => {
                if current.services.contains_key(key) {
                    out.remove.push(*key);
                }
            }
        }
    }
    out.names_remove = ids
        .iter()
        .filter(|(service, _)| !selected(service))
        .filter_map(|(_, id)| *id)
        .collect();
    Some(out)
}

/// What one reconcile did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Destinations written.
    pub inserted: usize,
    /// Destinations removed.
    pub removed: usize,
    /// Desired destinations that did not fit in the map.
    pub overflow: usize,
    /// Destinations in the map now.
    pub entries: usize,
    /// Selected Services.
    pub services: usize,
}

/// Applies plans to the maps, keeping a copy of what they hold.
pub struct Reconciler<M> {
    maps: M,
    current: Pinned,
}

impl<M: SelectionMaps> Reconciler<M> {
    /// Reads what is pinned: the starting point of every diff.
    pub fn new(maps: M) -> Result<Self, M::Error> {
        let current = maps.read()?;
        Ok(Self { maps, current })
    }

    /// What the maps hold.
    pub fn current(&self) -> &Pinned {
        &self.current
    }

    /// The maps, for other writers of the same dataplane (readiness, counters).
    pub fn maps_mut(&mut self) -> &mut M {
        &mut self.maps
    }

    /// Makes the maps hold `desired`, writing only the difference. Removals go first so a
    /// full map has room for new entries; on overflow the entries that fit stay correct and
    /// [`Outcome::overflow`] counts the rest.
    pub fn reconcile(&mut self, desired: &Desired) -> Result<Outcome, M::Error> {
        let plan = plan(&self.current, desired);
        self.apply(plan, desired.services().len())
    }

    /// Like [`reconcile`](Self::reconcile), but diffs only the `keys` destinations and the
    /// `services` names (see [`plan_delta`]): for when the maps held the previous desired
    /// state and only those changed since. After a failed reconcile, use the full one.
    pub fn reconcile_delta(
        &mut self,
        desired: &Desired,
        keys: &BTreeSet<ServiceKey>,
        services: &BTreeSet<ServiceRef>,
        selected: impl Fn(&ServiceRef) -> bool,
        selected_services: usize,
    ) -> Result<Outcome, M::Error> {
        let plan = plan_delta(&self.current, desired, keys, services, selected)
            .unwrap_or_else(|| plan(&self.current, desired));
        self.apply(plan, selected_services)
    }

    fn apply(&mut self, plan: Plan, services: usize) -> Result<Outcome, M::Error> {
        let mut outcome = Outcome {
            services,
            ..Outcome::default()
        };
        if !plan.names_set.is_empty() {
            self.maps.set_service_names(&plan.names_set)?;
            self.current.names.extend(plan.names_set.iter().copied());
        }
        if !plan.remove.is_empty() {
            self.maps.remove_services(&plan.remove)?;
            for key in &plan.remove {
                self.current.services.remove(key);
            }
            outcome.removed = plan.remove.len();
        }
        if !plan.insert.is_empty() {
            let rejected = self.maps.insert_services(&plan.insert)?;
            if rejected == 0 {
                self.current.services.extend(plan.insert.iter().copied());
            } else {
                // Which ones fit is the map's business; read back what is there.
                self.current = self.maps.read()?;
            }
            outcome.inserted = plan.insert.len() - rejected;
            outcome.overflow = rejected;
        }
        if !plan.names_remove.is_empty() {
            self.maps.remove_service_names(&plan.names_remove)?;
            for id in &plan.names_remove {
                self.current.names.remove(id);
            }
        }
        outcome.entries = self.current.services.len();
        Ok(outcome)
    }
}

/// In-memory maps with a capacity, counting writes: what the reconcile tests run against.
#[derive(Clone, Debug, Default)]
pub struct MemoryMaps {
    /// The contents.
    pub pinned: Pinned,
    /// Capacity of `services`.
    pub capacity: usize,
    /// Number of entries written or removed so far.
    pub writes: usize,
}

impl MemoryMaps {
    /// Empty maps holding at most `capacity` destinations.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }
}

impl SelectionMaps for MemoryMaps {
    type Error = Infallible;

    fn read(&self) -> Result<Pinned, Infallible> {
        Ok(self.pinned.clone())
    }

    fn insert_services(
        &mut self,
        entries: &[(ServiceKey, ServiceValue)],
    ) -> Result<usize, Infallible> {
        let mut rejected = 0;
        for (k, v) in entries {
            if !self.pinned.services.contains_key(k) && self.pinned.services.len() >= self.capacity
            {
                rejected += 1;
                continue;
            }
            self.pinned.services.insert(*k, *v);
            self.writes += 1;
        }
        Ok(rejected)
    }

    fn remove_services(&mut self, keys: &[ServiceKey]) -> Result<(), Infallible> {
        for k in keys {
            self.pinned.services.remove(k);
            self.writes += 1;
        }
        Ok(())
    }

    fn set_service_names(&mut self, names: &[(u32, ServiceName)]) -> Result<(), Infallible> {
        self.writes += names.len();
        self.pinned.names.extend(names.iter().copied());
        Ok(())
    }

    fn remove_service_names(&mut self, ids: &[u32]) -> Result<(), Infallible> {
        for id in ids {
            self.pinned.names.remove(id);
            self.writes += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str) -> ServiceRef {
        ServiceRef {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    fn desired(entries: &[(&str, &str)]) -> Desired {
        Desired {
            destinations: entries
                .iter()
                .map(|(dst, svc)| {
                    (
                        ServiceKey::tcp_addr(dst.parse().unwrap()),
                        std::sync::Arc::new(service(svc)),
                    )
                })
                .collect(),
        }
    }

    fn two_services() -> Desired {
        desired(&[
            ("10.96.0.1:80", "a"),
            ("10.244.0.1:8080", "a"),
            ("10.96.0.2:80", "b"),
        ])
    }

    #[test]
    fn first_sync_writes_everything_then_nothing() -> Result<(), Infallible> {
        let mut r = Reconciler::new(MemoryMaps::with_capacity(100))?;
        let o = r.reconcile(&two_services())?;
        assert_eq!((o.inserted, o.removed, o.entries, o.services), (3, 0, 3, 2));
        let writes = r.maps_mut().writes;
        let o = r.reconcile(&two_services())?;
        assert_eq!((o.inserted, o.removed), (0, 0));
        assert_eq!(
            r.maps_mut().writes,
            writes,
            "an unchanged selection writes nothing"
        );
        Ok(())
    }

    #[test]
    fn a_restart_adopts_the_pins_and_rewrites_nothing() -> Result<(), Infallible> {
        let mut first = Reconciler::new(MemoryMaps::with_capacity(100))?;
        first.reconcile(&two_services())?;
        let mut pinned = first.maps_mut().clone();
        pinned.writes = 0;

        let mut second = Reconciler::new(pinned)?;
        let o = second.reconcile(&two_services())?;
        assert_eq!((o.inserted, o.removed), (0, 0));
        assert_eq!(second.maps_mut().writes, 0);
        Ok(())
    }

    #[test]
    fn deselection_removes_entries_and_name_and_keeps_other_ids() -> Result<(), Infallible> {
        let mut r = Reconciler::new(MemoryMaps::with_capacity(100))?;
        r.reconcile(&two_services())?;
        let id_b = r.current().services[&ServiceKey::tcp_addr("10.96.0.2:80".parse().unwrap())];
        let o = r.reconcile(&desired(&[("10.96.0.2:80", "b")]))?;
        assert_eq!((o.inserted, o.removed, o.entries), (0, 2, 1));
        let after = r.current().services[&ServiceKey::tcp_addr("10.96.0.2:80".parse().unwrap())];
        assert_eq!(after, id_b, "b keeps its id");
        assert_eq!(r.current().names.len(), 1);
        let current = r.current().clone();
        assert_eq!(r.maps_mut().pinned, current, "the copy matches the maps");
        // The freed id is reused by the next new Service.
        r.reconcile(&desired(&[("10.96.0.2:80", "b"), ("10.96.0.3:80", "c")]))?;
        let c = r.current().services[&ServiceKey::tcp_addr("10.96.0.3:80".parse().unwrap())];
        assert_eq!(c.service_id, 1);
        Ok(())
    }

    #[test]
    fn a_destination_moving_to_another_service_is_rewritten() {
        let mut current = Pinned::default();
        current.names.insert(1, ServiceName::new("ns", "a"));
        current.services.insert(
            ServiceKey::tcp_addr("10.96.0.1:80".parse().unwrap()),
            ServiceValue {
                service_id: 1,
                flags: 0,
            },
        );
        let p = plan(&current, &desired(&[("10.96.0.1:80", "b")]));
        assert_eq!(p.names_set.len(), 1);
        assert_eq!(p.insert.len(), 1);
        assert_eq!(p.insert[0].1.service_id, 2);
        assert!(p.remove.is_empty());
        assert_eq!(p.names_remove, [1]);
    }

    #[test]
    fn overflow_keeps_what_fits_and_says_how_much_did_not() -> Result<(), Infallible> {
        let mut r = Reconciler::new(MemoryMaps::with_capacity(2))?;
        let o = r.reconcile(&two_services())?;
        assert_eq!((o.entries, o.overflow), (2, 1));
        assert_eq!(r.maps_mut().pinned.services.len(), 2);
        // Shrinking the selection makes room: stale entries are removed before inserts.
        let o = r.reconcile(&desired(&[("10.96.0.2:80", "b"), ("10.96.0.9:80", "b")]))?;
        assert_eq!((o.entries, o.overflow), (2, 0));
        Ok(())
    }

    #[test]
    fn a_delta_only_writes_its_keys_and_refuses_a_broken_premise() -> Result<(), Infallible> {
        let mut r = Reconciler::new(MemoryMaps::with_capacity(100))?;
        r.reconcile(&two_services())?;
        let writes = r.maps_mut().writes;
        // c is new and takes one destination of a: only that key and c's name are written.
        let after = desired(&[
            ("10.96.0.1:80", "c"),
            ("10.244.0.1:8080", "a"),
            ("10.96.0.2:80", "b"),
        ]);
        let key = ServiceKey::tcp_addr("10.96.0.1:80".parse().unwrap());
        let keys: BTreeSet<ServiceKey> = [key].into();
        let services: BTreeSet<ServiceRef> = [service("a"), service("c")].into();
        let wanted = after
            .services()
            .into_iter()
            .cloned()
            .collect::<BTreeSet<_>>();
        let o = r.reconcile_delta(&after, &keys, &services, |s| wanted.contains(s), 3)?;
        assert_eq!((o.inserted, o.removed, o.services), (1, 0, 3));
        assert_eq!(r.maps_mut().writes - writes, 2, "one entry and one name");
        assert_eq!(plan(r.current(), &after), Plan::default());
        // A Service without an id that the delta does not name: no delta plan.
        let d = desired(&[("10.96.0.9:80", "z")]);
        let keys = [ServiceKey::tcp_addr("10.96.0.9:80".parse().unwrap())].into();
        assert_eq!(
            plan_delta(r.current(), &d, &keys, &BTreeSet::new(), |_| true),
            None
        );
        Ok(())
    }
}
