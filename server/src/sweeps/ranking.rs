//! Which finished trials are best: one rule for the controller's final verdict and the API's
//! summary, so the two never name different winners.

/// The best `(key, value)`; on a tie the earliest in iteration order wins, so a stable order
/// (trial, run) gives a stable answer.
pub fn best<K>(items: impl IntoIterator<Item = (K, f64)>, maximize: bool) -> Option<(K, f64)> {
    items.into_iter().fold(None, |acc, (k, v)| match acc {
        Some((bk, bv)) if !better(v, bv, maximize) => Some((bk, bv)),
        _ => Some((k, v)),
    })
}

/// The performance–cost Pareto front of `(key, value, cost)`: by increasing cost (ties in
/// iteration order), every item that beats everything cheaper.
pub fn pareto_front<K>(items: impl IntoIterator<Item = (K, f64, f64)>, maximize: bool) -> Vec<K> {
    let mut by_cost: Vec<(K, f64, f64)> = items.into_iter().collect();
    // A stable sort keeps iteration order among equal costs.
    by_cost.sort_by(|a, b| a.2.total_cmp(&b.2));
    let mut front = Vec::new();
    let mut best_so_far: Option<f64> = None;
    for (k, v, _) in by_cost {
        if best_so_far.is_none_or(|b| better(v, b, maximize)) {
            best_so_far = Some(v);
            front.push(k);
        }
    }
    front
}

fn better(a: f64, b: f64, maximize: bool) -> bool {
    if maximize { a > b } else { a < b }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_follows_the_direction_and_keeps_the_earliest_tie() {
        let items = [("a", 2.0), ("b", 1.0), ("c", 1.0), ("d", 3.0)];
        assert_eq!(best(items, false), Some(("b", 1.0)));
        assert_eq!(best(items, true), Some(("d", 3.0)));
        assert_eq!(best(Vec::<(u8, f64)>::new(), false), None);
    }

    #[test]
    fn pareto_front_keeps_each_item_that_beats_all_cheaper_ones() {
        // (key, loss, cost)
        let items = [
            ("a", 3.0, 1.0),
            ("b", 2.0, 5.0),
            ("c", 2.5, 3.0),
            ("d", 2.2, 9.0),
        ];
        assert_eq!(pareto_front(items, false), vec!["a", "c", "b"]);
        assert_eq!(pareto_front(items, true), vec!["a"]);
    }
}
