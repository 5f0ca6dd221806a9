//! The dependencies between declarations: every name must be declared, `before` is folded into
//! the others' `after`, the ordering must have no cycle, and an early task may come after early
//! tasks only.

use std::collections::HashMap;

use crate::error::nearest;
use crate::model::Service;

/// A problem with the graph: the line of the declaration it is about, and what is wrong.
pub(crate) type GraphError = (u32, String);

/// Checks the names in `requires`, `after` and `before`, then normalizes `after` to
/// `after ∪ requires ∪ {X : X.before ∋ self}` (deduplicated, in that order) and refuses a cycle,
/// and an early task that comes after a unit that is not early. The early tasks' own edge to
/// every other unit is not written into `after`: the manager keeps it, so that a reload that adds
/// an early task does not change (and restart) every other unit.
pub(crate) fn resolve(services: &mut [Service]) -> Result<(), GraphError> {
    let index: HashMap<&str, usize> = services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    for s in services.iter() {
        let lists = [
            (&s.extras.requires, format!("{} requires", s.name)),
            (&s.extras.after, format!("{}: after names", s.name)),
            (&s.extras.before, format!("{}: before names", s.name)),
        ];
        for (names, says) in lists {
            if let Some(missing) = names.iter().find(|n| !index.contains_key(n.as_str())) {
                return Err((s.line, undeclared(&says, missing, services)));
            }
        }
    }
    let mut preceded_by: Vec<Vec<usize>> = vec![Vec::new(); services.len()];
    for (i, s) in services.iter().enumerate() {
        for b in &s.extras.before {
            if let Some(&j) = index.get(b.as_str()) {
                preceded_by[j].push(i);
            }
        }
    }
    let mut edges: Vec<Vec<usize>> = Vec::with_capacity(services.len());
    for (i, s) in services.iter().enumerate() {
        let mut after: Vec<usize> = Vec::new();
        let written = s
            .extras
            .after
            .iter()
            .chain(&s.extras.requires)
            .filter_map(|n| index.get(n.as_str()));
        for j in written.copied().chain(preceded_by[i].iter().copied()) {
            if !after.contains(&j) {
                after.push(j);
            }
        }
        edges.push(after);
    }
    if let Some(cycle) = find_cycle(&edges) {
        let names: Vec<&str> = cycle.iter().map(|&i| services[i].name.as_str()).collect();
        return Err((
            services[cycle[0]].line,
            format!("dependency cycle: {}", names.join(" -> ")),
        ));
    }
    // An early task runs before every unit that is not early, so it cannot wait for one: that
    // would be a cycle through the implicit edges, reported here with what the file says.
    for (i, s) in services.iter().enumerate() {
        if !s.early {
            continue;
        }
        if let Some(&j) = edges[i].iter().find(|&&j| !services[j].early) {
            return Err((
                s.line,
                format!(
                    "{}: an early task cannot come after {}, which is not early \
                     (requires, after, or its before)",
                    s.name, services[j].name
                ),
            ));
        }
    }
    let names: Vec<String> = services.iter().map(|s| s.name.clone()).collect();
    for (s, after) in services.iter_mut().zip(edges) {
        // Only where there is something to say, or was: most services have no extras box.
        if !after.is_empty() || !s.extras.after.is_empty() {
            s.extras.after = after.into_iter().map(|j| names[j].clone()).collect();
        }
    }
    Ok(())
}

fn undeclared(says: &str, missing: &str, services: &[Service]) -> String {
    let known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    match nearest(missing, &known) {
        Some(near) => format!("{says} {missing}, which is not declared (did you mean {near}?)"),
        None => format!("{says} {missing}, which is not declared"),
    }
}

/// The first cycle met by a depth-first walk from each node in order, as the path
/// `a, b, ..., a` (`a` waits for `b`), or `None`.
fn find_cycle(edges: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; edges.len()];
    // The walk's path: each node with the index of its next edge to follow. Explicit, so a long
    // chain of 16384 declarations does not take 16384 stack frames.
    let mut path: Vec<(usize, usize)> = Vec::new();
    for root in 0..edges.len() {
        if mark[root] != Mark::New {
            continue;
        }
        mark[root] = Mark::OnPath;
        path.push((root, 0));
        while let Some(top) = path.last_mut() {
            let (node, next) = *top;
            let Some(&to) = edges[node].get(next) else {
                mark[node] = Mark::Done;
                path.pop();
                continue;
            };
            top.1 += 1;
            match mark[to] {
                Mark::New => {
                    mark[to] = Mark::OnPath;
                    path.push((to, 0));
                }
                Mark::OnPath => {
                    let start = path.iter().position(|(n, _)| *n == to).unwrap_or(0);
                    let mut cycle: Vec<usize> = path[start..].iter().map(|(n, _)| *n).collect();
                    cycle.push(to);
                    return Some(cycle);
                }
                Mark::Done => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_cycle_as_a_path() {
        assert_eq!(find_cycle(&[vec![1], vec![2], vec![]]), None);
        assert_eq!(
            find_cycle(&[vec![1], vec![2], vec![0]]),
            Some(vec![0, 1, 2, 0])
        );
        assert_eq!(find_cycle(&[vec![], vec![2], vec![1]]), Some(vec![1, 2, 1]));
        assert_eq!(
            find_cycle(&[vec![1, 2], vec![2], vec![3], vec![1]]),
            Some(vec![1, 2, 3, 1])
        );
        // A diamond is no cycle.
        assert_eq!(find_cycle(&[vec![1, 2], vec![3], vec![3], vec![]]), None);
    }

    #[test]
    fn a_long_chain_needs_no_deep_stack() {
        let n = 100_000;
        let mut edges: Vec<Vec<usize>> = (0..n).map(|i| vec![i + 1]).collect();
        edges[n - 1] = vec![];
        assert_eq!(find_cycle(&edges), None);
        edges[n - 1] = vec![0];
        assert_eq!(find_cycle(&edges).map(|c| c.len()), Some(n + 1));
    }
}
