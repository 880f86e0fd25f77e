//! Replica placement as Kafka's controller does it (`assignReplicasToBrokers`): leaders
//! spread round robin over the brokers from a start index, followers shifted so that
//! replicas of consecutive partitions do not pile up on the same brokers, and, when brokers
//! have racks, replicas of one partition on distinct racks as far as the racks allow.

use std::collections::{BTreeMap, BTreeSet};

/// A broker that can hold replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub id: i32,
    pub rack: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error("Replication factor: {replication_factor} larger than available brokers: {brokers}.")]
    NotEnoughBrokers {
        replication_factor: i16,
        brokers: usize,
    },
    #[error("Replication factor must be larger than 0.")]
    InvalidReplicationFactor,
    #[error("Number of partitions must be larger than 0.")]
    InvalidPartitions,
    #[error("Not all brokers have rack information for replica rack aware assignment.")]
    PartialRackInformation,
}

/// Places `partitions` partitions (numbered from `first_partition`) with `replication_factor`
/// replicas each. `start_index` and `shift` are Kafka's random start and replica shift; a
/// controller draws them from its random source, tests fix them.
pub fn place(
    brokers: &[Candidate],
    partitions: i32,
    replication_factor: i16,
    first_partition: i32,
    start_index: usize,
    shift: usize,
) -> Result<Vec<Vec<i32>>, PlacementError> {
    if replication_factor <= 0 {
        return Err(PlacementError::InvalidReplicationFactor);
    }
    if partitions <= 0 {
        return Err(PlacementError::InvalidPartitions);
    }
    let rf = replication_factor as usize;
    if rf > brokers.len() {
        return Err(PlacementError::NotEnoughBrokers {
            replication_factor,
            brokers: brokers.len(),
        });
    }
    let with_rack = brokers.iter().filter(|b| b.rack.is_some()).count();
    if with_rack == 0 {
        let mut ids: Vec<i32> = brokers.iter().map(|b| b.id).collect();
        ids.sort_unstable();
        return Ok(rack_unaware(
            &ids,
            partitions,
            rf,
            first_partition,
            start_index,
            shift,
        ));
    }
    if with_rack != brokers.len() {
        return Err(PlacementError::PartialRackInformation);
    }
    Ok(rack_aware(
        brokers,
        partitions,
        rf,
        first_partition,
        start_index,
        shift,
    ))
}

fn replica_index(first: usize, shift: usize, j: usize, n: usize) -> usize {
    (first + 1 + (shift + j) % (n - 1)) % n
}

fn rack_unaware(
    ids: &[i32],
    partitions: i32,
    rf: usize,
    first_partition: i32,
    start: usize,
    mut shift: usize,
) -> Vec<Vec<i32>> {
    let n = ids.len();
    let start = start % n;
    let mut out = Vec::with_capacity(partitions as usize);
    let first_partition = first_partition.max(0) as usize;
    for current in first_partition..first_partition + partitions as usize {
        if current > 0 && current % n == 0 {
            shift += 1;
        }
        let first = (current + start) % n;
        let mut replicas = vec![ids[first]];
        for j in 0..rf - 1 {
            replicas.push(ids[replica_index(first, shift, j, n)]);
        }
        out.push(replicas);
    }
    out
}

/// Brokers ordered rack by rack in turn (rack a's first, rack b's first, …, rack a's
/// second, …), so consecutive brokers in the list are on different racks.
fn rack_alternated(brokers: &[Candidate]) -> Vec<(i32, String)> {
    let mut by_rack: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for b in brokers {
        by_rack
            .entry(b.rack.clone().unwrap_or_default())
            .or_default()
            .push(b.id);
    }
    for ids in by_rack.values_mut() {
        ids.sort_unstable();
    }
    let longest = by_rack.values().map(Vec::len).max().unwrap_or(0);
    let mut out = Vec::with_capacity(brokers.len());
    for i in 0..longest {
        for (rack, ids) in &by_rack {
            if let Some(id) = ids.get(i) {
                out.push((*id, rack.clone()));
            }
        }
    }
    out
}

fn rack_aware(
    brokers: &[Candidate],
    partitions: i32,
    rf: usize,
    first_partition: i32,
    start: usize,
    mut shift: usize,
) -> Vec<Vec<i32>> {
    let arranged = rack_alternated(brokers);
    let n = arranged.len();
    let racks = arranged
        .iter()
        .map(|(_, r)| r)
        .collect::<BTreeSet<_>>()
        .len();
    let start = start % n;
    let mut out = Vec::with_capacity(partitions as usize);
    let first_partition = first_partition.max(0) as usize;
    for current in first_partition..first_partition + partitions as usize {
        if current > 0 && current % n == 0 {
            shift += 1;
        }
        let first = (current + start) % n;
        let (leader, leader_rack) = &arranged[first];
        let mut replicas = vec![*leader];
        let mut used_racks: BTreeSet<&String> = [leader_rack].into();
        let mut used: BTreeSet<i32> = [*leader].into();
        let mut k = 0;
        for _ in 0..rf - 1 {
            loop {
                let (broker, rack) = &arranged[replica_index(first, shift * racks, k, n)];
                k += 1;
                let rack_ok = !used_racks.contains(rack) || used_racks.len() == racks;
                let broker_ok = !used.contains(broker) || used.len() == n;
                if rack_ok && broker_ok {
                    replicas.push(*broker);
                    used_racks.insert(rack);
                    used.insert(*broker);
                    break;
                }
            }
        }
        out.push(replicas);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn brokers(n: i32, racks: usize) -> Vec<Candidate> {
        (1..=n)
            .map(|id| Candidate {
                id,
                rack: (racks > 0).then(|| format!("r{}", id as usize % racks)),
            })
            .collect()
    }

    #[test]
    fn six_partitions_on_three_brokers_give_each_two_leaders() {
        let placed = place(&brokers(3, 0), 6, 1, 0, 0, 0).unwrap();
        let mut leaders = BTreeMap::new();
        for replicas in &placed {
            *leaders.entry(replicas[0]).or_insert(0) += 1;
        }
        assert_eq!(leaders.values().copied().collect::<Vec<_>>(), vec![2, 2, 2]);
    }

    #[test]
    fn kafkas_documented_example_without_racks() {
        // Kafka's doc comment: 5 brokers, 10 partitions, rf 3, start index 0, shift 0.
        let placed = place(&brokers(5, 0), 10, 3, 0, 0, 0).unwrap();
        let as_zero_based: Vec<Vec<i32>> = placed
            .iter()
            .map(|r| r.iter().map(|b| b - 1).collect())
            .collect();
        assert_eq!(as_zero_based[0], vec![0, 1, 2]);
        assert_eq!(as_zero_based[4], vec![4, 0, 1]);
        assert_eq!(as_zero_based[5], vec![0, 2, 3]);
        assert_eq!(as_zero_based[9], vec![4, 1, 2]);
    }

    #[test]
    fn errors_match_kafkas() {
        assert!(matches!(
            place(&brokers(2, 0), 1, 3, 0, 0, 0),
            Err(PlacementError::NotEnoughBrokers { .. })
        ));
        assert_eq!(
            place(&brokers(2, 0), 0, 1, 0, 0, 0),
            Err(PlacementError::InvalidPartitions)
        );
        let mut partial = brokers(3, 3);
        partial[0].rack = None;
        assert_eq!(
            place(&partial, 1, 1, 0, 0, 0),
            Err(PlacementError::PartialRackInformation)
        );
    }

    proptest! {
        #[test]
        fn replicas_are_distinct_leaders_balanced_and_racks_spread(
            n in 1i32..10, racks in 0usize..4, partitions in 1i32..40, rf_seed in 1i16..4, start in 0usize..20, shift in 0usize..20,
        ) {
            let rf = rf_seed.min(n as i16);
            let candidates = brokers(n, racks);
            let placed = place(&candidates, partitions, rf, 0, start, shift).unwrap();
            prop_assert_eq!(placed.len(), partitions as usize);
            let mut leaders: BTreeMap<i32, i32> = BTreeMap::new();
            for replicas in &placed {
                prop_assert_eq!(replicas.len(), rf as usize);
                prop_assert_eq!(replicas.iter().collect::<BTreeSet<_>>().len(), rf as usize, "distinct brokers");
                *leaders.entry(replicas[0]).or_default() += 1;
                if racks > 0 {
                    let distinct_racks = replicas.iter().map(|id| id as &i32).map(|id| candidates.iter().find(|c| c.id == *id).unwrap().rack.clone()).collect::<BTreeSet<_>>().len();
                    let racks_present = candidates.iter().map(|c| c.rack.clone()).collect::<BTreeSet<_>>().len();
                    prop_assert_eq!(distinct_racks, (rf as usize).min(racks_present), "replicas spread over racks");
                }
            }
            let (min, max) = (leaders.values().min().copied().unwrap_or(0), leaders.values().max().copied().unwrap_or(0));
            prop_assert!(max - min <= 1 || (leaders.len() as i32) < n, "leaders balanced: {:?}", leaders);
        }
    }
}
