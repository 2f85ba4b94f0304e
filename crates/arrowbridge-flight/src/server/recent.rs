//! A bounded memory of recent events: keys noted in the last while, at most so many of them
//! ([`Recent`]). What a server remembers to refuse late arrivals (undone puts, deleted
//! shards, deleted sharded items) is kept in it, so that a flood of them costs bounded memory
//! and constant time each.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::{Duration, Instant};

/// Keys, each with a value, noted in the last `keep`, at most `most` of them (the first
/// noted goes first).
#[derive(Debug)]
pub(crate) struct Recent<K, V> {
    most: usize,
    keep: Duration,
    /// Each key: its value, when it was noted and its place in line.
    when: HashMap<K, (V, Instant, u64)>,
    /// The keys in the order they were noted; a key noted again is here twice, its older
    /// place no longer the one `when` holds (such places are dropped now and then).
    order: VecDeque<(K, u64)>,
    next: u64,
}

impl<K: Hash + Eq + Clone, V> Recent<K, V> {
    pub(crate) fn new(most: usize, keep: Duration) -> Self {
        Recent {
            most,
            keep,
            when: HashMap::new(),
            order: VecDeque::new(),
            next: 0,
        }
    }

    /// Notes `key` now, with `value` (replacing what it had).
    pub(crate) fn note(&mut self, key: K, value: V) {
        let now = Instant::now();
        self.next += 1;
        self.when.insert(key.clone(), (value, now, self.next));
        self.order.push_back((key, self.next));
        if self.order.len() > 2 * self.most.max(1) {
            let when = &self.when;
            self.order
                .retain(|(k, place)| when.get(k).is_some_and(|w| w.2 == *place));
        }
        while let Some((first, place)) = self.order.front() {
            let Some((_, at, held)) = self.when.get(first) else {
                self.order.pop_front();
                continue;
            };
            if held != place {
                self.order.pop_front();
                continue;
            }
            if now.duration_since(*at) < self.keep && self.when.len() <= self.most {
                break;
            }
            self.when.remove(first);
            self.order.pop_front();
        }
    }

    /// The value of `key`, if it was noted in the last `keep` (and not pushed out since).
    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.when
            .get(key)
            .filter(|(_, at, _)| at.elapsed() < self.keep)
            .map(|(value, _, _)| value)
    }

    /// Whether `key` was noted in the last `keep` (and not pushed out since).
    pub(crate) fn contains(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.when.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_keys_are_bounded_in_number_and_time() {
        let mut recent = Recent::new(3, Duration::from_secs(600));
        for key in 0..5 {
            recent.note(key, ());
        }
        assert_eq!(recent.len(), 3);
        assert!(!recent.contains(&1) && recent.contains(&2) && recent.contains(&4));
        // A key noted again moves to the back of the line.
        recent.note(2, ());
        recent.note(5, ());
        assert!(recent.contains(&2) && !recent.contains(&3));
        // Noting the same key over and over keeps the line bounded too.
        for _ in 0..100 {
            recent.note(2, ());
        }
        assert!(recent.order.len() <= 6, "{}", recent.order.len());
        assert!(recent.contains(&2) && recent.contains(&5));
        let mut brief = Recent::new(3, Duration::ZERO);
        brief.note(1, ());
        assert!(!brief.contains(&1));
    }
}
