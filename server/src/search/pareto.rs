//! CARBS's observation groups and performance-cost Pareto front (docs/search-notes.md §1.9).
//! Values here are "larger is better" (the negated objective), as in CARBS.

/// Observations whose basic vectors are all-close (torch `isclose` defaults) form one group.
pub fn is_close(a: &[f64], b: &[f64]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-8 + 1e-5 * y.abs())
}

/// A group of replicate observations.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// Indices of the member observations, in observation order.
    pub members: Vec<usize>,
    pub mean_cost: f64,
    pub mean_value: f64,
    pub max_value: f64,
}

/// Group points (each `(x, value, cost)`), keeping first-seen order.
pub fn group(points: &[(&[f64], f64, f64)]) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for (i, (x, v, c)) in points.iter().enumerate() {
        match groups
            .iter_mut()
            .find(|g| is_close(x, points[g.members[0]].0))
        {
            Some(g) => {
                let n = g.members.len() as f64;
                g.mean_cost = (g.mean_cost * n + c) / (n + 1.0);
                g.mean_value = (g.mean_value * n + v) / (n + 1.0);
                g.max_value = g.max_value.max(*v);
                g.members.push(i);
            }
            None => groups.push(Group {
                members: vec![i],
                mean_cost: *c,
                mean_value: *v,
                max_value: *v,
            }),
        }
    }
    groups
}

/// numpy's default (linear) quantile.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let i = pos.floor() as usize;
    let j = (i + 1).min(v.len() - 1);
    v[i] + (pos - i as f64) * (v[j] - v[i])
}

/// The Pareto front as indices into `groups`, sorted by cost.
///
/// Deviation from CARBS (fixes imbue-ai/carbs#6): the cheap-bucket quantile is taken over
/// *group mean costs*, not individual observation costs, and an empty bucket falls back to
/// the cheapest group, so the front is never empty while any group exists.
pub fn pareto_front(groups: &[Group], min_cost_fraction: f64, conservative: bool) -> Vec<usize> {
    if groups.is_empty() {
        return Vec::new();
    }
    let costs: Vec<f64> = groups.iter().map(|g| g.mean_cost).collect();
    let c_min = quantile(&costs, min_cost_fraction);
    let mut cheap: Vec<usize> = (0..groups.len())
        .filter(|&i| groups[i].mean_cost <= c_min)
        .collect();
    if cheap.is_empty() {
        let cheapest = (0..groups.len())
            .min_by(|&a, &b| costs[a].total_cmp(&costs[b]))
            .unwrap_or(0);
        cheap.push(cheapest);
    }
    if conservative && cheap.iter().any(|&i| groups[i].members.len() >= 2) {
        cheap.retain(|&i| groups[i].members.len() >= 2);
    }
    let first = cheap
        .iter()
        .copied()
        .max_by(|&a, &b| {
            groups[a]
                .mean_value
                .total_cmp(&groups[b].mean_value)
                .then(b.cmp(&a))
        })
        .unwrap_or(0);
    let mut front = vec![first];
    let mut rest: Vec<usize> = (0..groups.len())
        .filter(|&i| groups[i].mean_cost > c_min && i != first)
        .collect();
    rest.sort_by(|&a, &b| costs[a].total_cmp(&costs[b]).then(a.cmp(&b)));
    for g in rest {
        let prev = &groups[front[front.len() - 1]];
        let joins = if conservative && groups[g].members.len() == 1 {
            groups[g].mean_value > prev.max_value
        } else {
            groups[g].mean_value > prev.mean_value
        };
        if joins {
            front.push(g);
        }
    }
    front
}

/// `Σ_{i≥1} (c_i − c_{i−1}) · v_{i−1}` over the front in cost order (CARBS's logged area).
pub fn pareto_area(groups: &[Group], front: &[usize]) -> f64 {
    front
        .windows(2)
        .map(|w| (groups[w[1]].mean_cost - groups[w[0]].mean_cost) * groups[w[0]].mean_value)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CARBS docstring example: A{(0,1),(1,1)}, B{(0.6,2)}, C{(0.55,3),(0.75,3)}, D{(0.8,4)}
    /// as (value, cost); plain front A,B,C,D and conservative front A,C,D.
    #[test]
    fn pareto_groups_match_carbs_docstring() {
        let xa = [0.0];
        let xb = [1.0];
        let xc = [2.0];
        let xd = [3.0];
        let pts: Vec<(&[f64], f64, f64)> = vec![
            (&xa, 0.0, 1.0),
            (&xa, 1.0, 1.0),
            (&xb, 0.6, 2.0),
            (&xc, 0.55, 3.0),
            (&xc, 0.75, 3.0),
            (&xd, 0.8, 4.0),
        ];
        let g = group(&pts);
        assert_eq!(g.len(), 4);
        assert_eq!(pareto_front(&g, 0.2, false), vec![0, 1, 2, 3]);
        assert_eq!(pareto_front(&g, 0.2, true), vec![0, 2, 3]);
    }

    /// carbs#6: duplicate suggestions with different costs made the cheap bucket empty.
    #[test]
    fn cheap_bucket_never_empty() {
        let x = [0.0];
        let y = [1.0];
        let pts: Vec<(&[f64], f64, f64)> = vec![
            (&x, 1.0, 1.0),
            (&x, 1.0, 9.0),
            (&y, 2.0, 4.0),
            (&y, 2.0, 6.0),
        ];
        let g = group(&pts);
        assert!(!pareto_front(&g, 0.2, true).is_empty());
        assert!(pareto_front(&[], 0.2, true).is_empty());
    }
}
